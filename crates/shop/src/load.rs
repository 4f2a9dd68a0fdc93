//! `shop load`: a load generator against the gateway's public API, for benchmarks and soak
//! runs on a loopback machine.
//!
//! Orders mode (the default) registers and logs in `--users` users, creates `--products`
//! products with plenty of stock as the administrator (plus one with none when
//! `--out-of-stock-pct` asks for rejected orders), then places orders either as fast as
//! `--concurrency` clients can (closed loop) or at a fixed `--rate` (open loop: latencies
//! count from the time each request was due, so a slow server cannot hide its queueing), for
//! `--count` orders or `--duration` seconds. Every accepted order is followed to CONFIRMED or
//! CANCELLED by polling `GET /api/orders/{id}` (few polls in flight, each order with its own
//! deadline); its saga latency is taken from the order's own history (PENDING to the terminal
//! status, server timestamps), so polling intervals do not blur it. At most `--max-pending`
//! orders are unsettled at a time, so a saturated system is measured at the rate it
//! completes sagas rather than with an ever-growing backlog.
//!
//! Get-product mode reads `GET /api/products/{id}` (the cached read path) round-robin.
//!
//! The report (a table, or `--json`) gives the rates, latency percentiles, errors by kind and
//! the outcome of every order; then `shop audit` runs (`--audit false` skips it). The command
//! fails if an order did not settle in time or the audit finds a violation.
//!
//! Everything is bounded: requests by count or duration, waits by deadlines, and only a
//! loopback gateway is accepted.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_platform::{
    amqp::{Broker, BrokerConfig},
    config::Config,
    metrics::Metrics,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{Settings, audit};

/// What to load.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Place orders and follow each saga to its end.
    Orders,
    /// Read products one at a time (`GET /api/products/{id}`, served through the cache).
    GetProduct,
}

/// `shop load`: the administrator who creates the products is `--admin-email` /
/// `--admin-password` (SHOP_ADMIN_EMAIL / SHOP_ADMIN_PASSWORD); the audit at the end uses the
/// same database and broker settings as every other command.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Base URL of the gateway (a loopback address).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// `orders` (place orders, follow their sagas) or `get-product` (cached product reads).
    #[arg(long, value_enum, default_value_t = Mode::Orders)]
    pub mode: Mode,
    /// Users registered and logged in to place the orders.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Products created, each with plenty of stock.
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// Requests in flight at most (the number of closed-loop clients without --rate).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second (open loop); without it, as fast as --concurrency clients can.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests to send in all.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds to send for (the default is 10 when --count is not given either).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Percentage of orders paid with `tok_decline` (cancelled with payment_failed).
    #[arg(long, default_value_t = 0.0)]
    pub decline_pct: f64,
    /// Percentage of orders for a product without stock (cancelled with out_of_stock).
    #[arg(long, default_value_t = 0.0)]
    pub out_of_stock_pct: f64,
    /// Orders accepted but not yet seen settled, at most; placing waits beyond it.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    /// Order status polls in flight at most.
    #[arg(long, default_value_t = 32)]
    pub poll_concurrency: usize,
    /// Seconds an accepted order may take to settle before it counts as unsettled.
    #[arg(long, default_value_t = 120.0)]
    pub settle_timeout: f64,
    /// Run `shop audit` at the end (`--audit false` to skip).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub audit: bool,
    /// Print the report as JSON on stdout (progress stays on stderr; log lines also go to
    /// stdout, so set SHOP_LOG=off for a clean document).
    #[arg(long)]
    pub json: bool,
}

/// Slowest a single request may be before it counts as a transport timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for products to reach inventory, and for the audit to come out clean.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
const AUDIT_DEADLINE: Duration = Duration::from_secs(60);
/// Polling of an order's status: never sooner or later than this after the previous look.
const MIN_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(1000);
/// Seconds of sending when neither --count nor --duration is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;

/// Runs the load and prints the report; fails if an order did not settle or the audit fails.
pub async fn run(config: &Config, settings: &Settings, args: LoadArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let base = args.gateway.trim_end_matches('/').to_string();
    let http = Client::builder()
        .pool_max_idle_per_host(args.concurrency + args.poll_concurrency + 8)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let api = Api {
        http,
        base: base.clone(),
    };
    let live = api
        .http
        .get(format!("{base}/health/live"))
        .send()
        .await
        .with_context(|| format!("the gateway at {base} does not answer"))?;
    if !live.status().is_success() {
        bail!(
            "the gateway at {base} answers {} to /health/live",
            live.status()
        );
    }

    let setup = Instant::now();
    let admin = admin_token(settings, &api).await?;
    let run_id = Uuid::new_v4().simple().to_string()[..10].to_string();
    let catalog = create_products(&api, &admin, &args, &run_id).await?;
    let users = match args.mode {
        Mode::Orders => create_users(&api, args.users, &run_id).await?,
        Mode::GetProduct => Vec::new(),
    };
    if args.mode == Mode::Orders {
        wait_for_inventory(&api, &catalog).await?;
    }
    eprintln!(
        "load: {} user(s) and {} product(s) ready in {:.1}s; {}",
        users.len(),
        catalog.in_stock.len() + usize::from(catalog.sold_out.is_some()),
        setup.elapsed().as_secs_f64(),
        describe(&args)
    );

    let shared = Arc::new(Shared::new(&args, api, users, catalog));
    let mut report = match args.mode {
        Mode::Orders => run_orders(shared).await,
        Mode::GetProduct => run_reads(shared).await,
    };

    if args.audit {
        eprintln!("load: auditing (waiting up to {AUDIT_DEADLINE:?} for the system to settle)");
        report.audit = Some(audit_when_quiet(config, settings).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        if let Some(a) = &report.audit {
            println!("\naudit");
            print!("{}", a.table());
        }
    }
    let mut failures = Vec::new();
    if report.unsettled > 0 {
        failures.push(format!(
            "{} order(s) did not settle within {}s",
            report.unsettled, args.settle_timeout
        ));
    }
    if let Some(a) = &report.audit
        && !a.ok()
    {
        failures.push(format!("{} audit violation(s)", a.violations.len()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

fn validate(args: &LoadArgs) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(&args.gateway).context("--gateway is not a URL")?;
    let loopback = url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if !loopback || url.scheme() != "http" {
        bail!(
            "--gateway must be http:// on a loopback address (127.0.0.1, ::1 or localhost), not {}",
            args.gateway
        );
    }
    if args.concurrency == 0 || args.concurrency > 4096 {
        bail!("--concurrency must be 1 to 4096");
    }
    if args.mode == Mode::Orders && (args.users == 0 || args.users > 10_000) {
        bail!("--users must be 1 to 10000");
    }
    if args.products == 0 || args.products > 10_000 {
        bail!("--products must be 1 to 10000");
    }
    if let Some(r) = args.rate
        && !(r > 0.0 && r <= 1_000_000.0)
    {
        bail!("--rate must be above 0 and at most 1000000");
    }
    if let Some(d) = args.duration
        && !(d > 0.0 && d <= 86_400.0)
    {
        bail!("--duration must be above 0 and at most 86400 seconds");
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    for (name, p) in [
        ("--decline-pct", args.decline_pct),
        ("--out-of-stock-pct", args.out_of_stock_pct),
    ] {
        if !(0.0..=100.0).contains(&p) {
            bail!("{name} must be 0 to 100");
        }
    }
    if args.decline_pct + args.out_of_stock_pct > 100.0 {
        bail!("--decline-pct and --out-of-stock-pct add up to more than 100");
    }
    if args.max_pending == 0 || args.poll_concurrency == 0 {
        bail!("--max-pending and --poll-concurrency must be at least 1");
    }
    if !(args.settle_timeout > 0.0 && args.settle_timeout <= 3600.0) {
        bail!("--settle-timeout must be above 0 and at most 3600 seconds");
    }
    Ok(())
}

fn describe(args: &LoadArgs) -> String {
    let pace = match args.rate {
        Some(r) => format!("{r}/s (at most {} in flight)", args.concurrency),
        None => format!("{} concurrent client(s)", args.concurrency),
    };
    let until = match (args.count, args.duration) {
        (Some(c), Some(d)) => format!("{c} requests or {d}s"),
        (Some(c), None) => format!("{c} requests"),
        (None, Some(d)) => format!("{d}s"),
        (None, None) => "10s".into(),
    };
    let what = match args.mode {
        Mode::Orders => "orders",
        Mode::GetProduct => "product reads",
    };
    format!("{what} at {pace} for {until}")
}

// ---- the API, as a client sees it ----

struct Api {
    http: Client,
    base: String,
}

/// Why a request failed, as counted in the report.
fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "other"
    }
}

impl Api {
    /// A JSON call for the setup phase: the status and the parsed body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value, Option<u64>)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, value, retry_after))
    }

    /// Logs in, waiting out the login rate limit a few times if it is hit.
    async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        for _ in 0..3 {
            let (status, body, retry_after) = self
                .call(
                    reqwest::Method::POST,
                    "/api/auth/login",
                    None,
                    Some(json!({"email": email, "password": password})),
                )
                .await?;
            match status {
                StatusCode::OK => {
                    return body["token"]
                        .as_str()
                        .map(str::to_string)
                        .context("login answered without a token");
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after.unwrap_or(5).clamp(1, 61);
                    eprintln!(
                        "load: login rate limit hit; waiting {wait}s (raise SHOP_LOGIN_RATE_LIMIT_PER_MIN for big runs)"
                    );
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                other => bail!("login of {email} answered {other}: {body}"),
            }
        }
        bail!("login of {email} kept hitting the rate limit")
    }
}

async fn admin_token(settings: &Settings, api: &Api) -> anyhow::Result<String> {
    let (Some(email), Some(password)) =
        (&settings.users.admin_email, &settings.users.admin_password)
    else {
        bail!(
            "creating products needs the administrator: set --admin-email and --admin-password (SHOP_ADMIN_EMAIL, SHOP_ADMIN_PASSWORD)"
        );
    };
    api.login(email, password)
        .await
        .context("logging in as the administrator")
}

/// A logged-in user placing orders.
struct LoadUser {
    token: String,
}

async fn create_users(api: &Api, n: usize, run_id: &str) -> anyhow::Result<Vec<LoadUser>> {
    let password = format!("load-password-{run_id}");
    let mut users = Vec::with_capacity(n);
    // A few at a time: each registration and login is an Argon2 hash on the server.
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let made = futures::future::join_all(chunk.iter().map(|i| {
            let email = format!("load-{run_id}-{i}@load.test");
            let password = password.clone();
            async move {
                let (status, body, _) = api
                    .call(
                        reqwest::Method::POST,
                        "/api/auth/register",
                        None,
                        Some(json!({"email": email, "password": password, "name": format!("Load user {i}")})),
                    )
                    .await?;
                if status != StatusCode::CREATED {
                    bail!("registering {email} answered {status}: {body}");
                }
                let token = api.login(&email, &password).await?;
                Ok(LoadUser { token })
            }
        }))
        .await;
        for u in made {
            users.push(u?);
        }
    }
    Ok(users)
}

/// The products orders are placed for.
struct Catalog {
    in_stock: Vec<Uuid>,
    /// A product created without stock, for out-of-stock orders.
    sold_out: Option<Uuid>,
}

/// Units of stock of each product: the most a product may be created with.
const PLENTY: i64 = 1_000_000;

async fn create_products(
    api: &Api,
    admin: &str,
    args: &LoadArgs,
    run_id: &str,
) -> anyhow::Result<Catalog> {
    let create = |i: usize, stock: i64| async move {
        let (status, body, _) = api
            .call(
                reqwest::Method::POST,
                "/api/products",
                Some(admin),
                Some(json!({
                    "sku": format!("LOAD-{run_id}-{i}"),
                    "name": format!("Load product {i}"),
                    "description": "created by shop load",
                    "price_cents": 100 + (i as i64 % 50) * 10,
                    "initial_stock": stock,
                })),
            )
            .await?;
        if status != StatusCode::CREATED {
            bail!("creating a product answered {status}: {body}");
        }
        body["id"]
            .as_str()
            .and_then(|s| s.parse::<Uuid>().ok())
            .context("the new product has no id")
    };
    let mut in_stock = Vec::with_capacity(args.products);
    for chunk in (0..args.products).collect::<Vec<_>>().chunks(8) {
        for id in futures::future::join_all(chunk.iter().map(|i| create(*i, PLENTY))).await {
            in_stock.push(id?);
        }
    }
    let sold_out = if args.mode == Mode::Orders && args.out_of_stock_pct > 0.0 {
        Some(create(args.products, 0).await?)
    } else {
        None
    };
    Ok(Catalog { in_stock, sold_out })
}

/// Waits until inventory has the stock of every product (it learns of them by event).
async fn wait_for_inventory(api: &Api, catalog: &Catalog) -> anyhow::Result<()> {
    let until = Instant::now() + SETUP_DEADLINE;
    for id in catalog.in_stock.iter().chain(&catalog.sold_out) {
        loop {
            let (status, _, _) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/inventory/{id}"),
                    None,
                    None,
                )
                .await?;
            if status == StatusCode::OK {
                break;
            }
            if Instant::now() > until {
                bail!("inventory does not know product {id} after {SETUP_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

// ---- the run ----

/// What an order is meant to end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Confirmed,
    PaymentFailed,
    OutOfStock,
}

impl Expect {
    /// Spreads the outcomes evenly over the sequence (a low-discrepancy sequence, so any
    /// stretch of orders has close to the asked mix).
    fn of(i: u64, decline_pct: f64, out_of_stock_pct: f64) -> Expect {
        let u = (i as f64 * 0.618_033_988_749_895).fract() * 100.0;
        if u < out_of_stock_pct {
            Expect::OutOfStock
        } else if u < out_of_stock_pct + decline_pct {
            Expect::PaymentFailed
        } else {
            Expect::Confirmed
        }
    }

    fn matches(self, status: &str, reason: Option<&str>) -> bool {
        match self {
            Expect::Confirmed => status == "CONFIRMED",
            Expect::PaymentFailed => status == "CANCELLED" && reason == Some("payment_failed"),
            Expect::OutOfStock => status == "CANCELLED" && reason == Some("out_of_stock"),
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Everything the report is made of.
struct Stats {
    http: Histogram<u64>,
    saga: Histogram<u64>,
    observed: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    unexpected: u64,
    unsettled: Vec<Uuid>,
    /// Server times of the first acceptance and the last terminal transition.
    first_created: Option<DateTime<Utc>>,
    last_terminal: Option<DateTime<Utc>>,
}

struct Shared {
    args: LoadArgs,
    api: Api,
    users: Vec<LoadUser>,
    catalog: Catalog,
    /// Index of the next request.
    next: AtomicU64,
    /// Requests answered successfully (accepted orders, or products read).
    ok: AtomicU64,
    failed: AtomicU64,
    settled: AtomicU64,
    polls: AtomicU64,
    /// Recent saga latency (µs), to time the first poll of the next orders.
    recent_saga_us: AtomicU64,
    stats: Mutex<Stats>,
    pending: Arc<Semaphore>,
    poll_slots: Semaphore,
}

impl Shared {
    fn new(args: &LoadArgs, api: Api, users: Vec<LoadUser>, catalog: Catalog) -> Self {
        Shared {
            args: args.clone(),
            api,
            users,
            catalog,
            next: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            recent_saga_us: AtomicU64::new(50_000),
            stats: Mutex::new(Stats {
                http: histogram(),
                saga: histogram(),
                observed: histogram(),
                errors: BTreeMap::new(),
                outcomes: BTreeMap::new(),
                unexpected: 0,
                unsettled: Vec::new(),
                first_created: None,
                last_terminal: None,
            }),
            pending: Arc::new(Semaphore::new(args.max_pending)),
            poll_slots: Semaphore::new(args.poll_concurrency),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().expect("stats lock")
    }

    fn error(&self, what: &str, kind: impl std::fmt::Display) {
        *self
            .stats()
            .errors
            .entry(format!("{what}: {kind}"))
            .or_default() += 1;
    }
}

/// When sending stops: after `count` requests or at `until`, whichever comes first.
struct Plan {
    count: Option<u64>,
    until: Option<Instant>,
}

impl Plan {
    fn new(args: &LoadArgs, start: Instant) -> Plan {
        let duration = match (args.count, args.duration) {
            (None, None) => Some(DEFAULT_DURATION_SECS),
            (_, d) => d,
        };
        Plan {
            count: args.count,
            until: duration.map(|d| start + Duration::from_secs_f64(d)),
        }
    }

    /// The index of the next request, or `None` when sending is over.
    fn next(&self, shared: &Shared) -> Option<u64> {
        if self.until.is_some_and(|u| Instant::now() >= u) {
            return None;
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if self.count.is_some_and(|c| i >= c) {
            return None;
        }
        Some(i)
    }
}

/// Shows progress on stderr until `stop`: a live bar on a terminal, otherwise (a pipe, a log
/// file) a line every second. Returns the bar, so that other messages can be printed above
/// it ([`ProgressBar::suspend`]).
fn progress(shared: Arc<Shared>, start: Instant, stop: CancellationToken) -> ProgressBar {
    let args = &shared.args;
    // The bar fills with requests sent for --count, with time for --duration.
    let (len, template) = match args.count {
        Some(n) => (
            n,
            "{elapsed:>4} [{bar:24.cyan/blue}] {pos}/{len} {wide_msg}",
        ),
        None => (
            (args.duration.unwrap_or(DEFAULT_DURATION_SECS) * 10.0) as u64,
            "{elapsed:>4} [{bar:24.cyan/blue}] {percent:>3}% {wide_msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    let live = !bar.is_hidden();
    let handle = bar.clone();
    tokio::spawn(async move {
        let every = if live {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut last = (0, 0, Instant::now());
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let ok = shared.ok.load(Ordering::Relaxed);
            let settled = shared.settled.load(Ordering::Relaxed);
            let failed = shared.failed.load(Ordering::Relaxed);
            let dt = last.2.elapsed().as_secs_f64().max(1e-3);
            let rate = |now: u64, before: u64| ((now - before) as f64 / dt).round();
            let msg = match shared.args.mode {
                Mode::Orders => format!(
                    "accepted {ok} ({}/s)  settled {settled} ({}/s)  unsettled {}  failed requests {failed}",
                    rate(ok, last.0),
                    rate(settled, last.1),
                    ok.saturating_sub(settled),
                ),
                Mode::GetProduct => format!("reads {ok} ({}/s)  failed {failed}", rate(ok, last.0)),
            };
            if !live {
                eprintln!("[{:6.1}s] {msg}", start.elapsed().as_secs_f64());
                last = (ok, settled, Instant::now());
                continue;
            }
            // Refresh the rates once a second; the bar itself moves every tick.
            if dt >= 1.0 {
                bar.set_message(msg);
                last = (ok, settled, Instant::now());
            }
            bar.set_position(match shared.args.count {
                Some(_) => ok + failed,
                None => (start.elapsed().as_secs_f64() * 10.0) as u64,
            });
        }
        bar.finish_and_clear();
    });
    handle
}

/// Runs `one(index, due)` for every planned request: closed loop with `concurrency` clients,
/// or open loop at `rate` with at most `concurrency` in flight. `due` is when the request was
/// meant to start (its latency counts from then). Returns when every request has finished.
async fn drive<F, Fut>(shared: &Arc<Shared>, plan: Arc<Plan>, start: Instant, one: F)
where
    F: Fn(Arc<Shared>, u64, Instant) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
    match shared.args.rate {
        None => {
            for _ in 0..shared.args.concurrency {
                let (shared, plan, one) = (shared.clone(), plan.clone(), one.clone());
                tasks.spawn(async move {
                    while let Some(i) = plan.next(&shared) {
                        one(shared.clone(), i, Instant::now()).await;
                    }
                });
            }
        }
        Some(rate) => {
            let slots = Arc::new(Semaphore::new(shared.args.concurrency));
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut k: u32 = 0;
            loop {
                // Due times from the start, so rounding never drifts the rate.
                let due = start + interval.mul_f64(f64::from(k));
                k = k.saturating_add(1);
                tokio::time::sleep_until(due.into()).await;
                let Some(i) = plan.next(shared) else { break };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (shared, one) = (shared.clone(), one.clone());
                tasks.spawn(async move {
                    one(shared, i, due).await;
                    drop(slot);
                });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

async fn run_orders(shared: Arc<Shared>) -> Report {
    let start = Instant::now();
    let plan = Arc::new(Plan::new(&shared.args, start));
    let stop_progress = CancellationToken::new();
    let bar = progress(shared.clone(), start, stop_progress.clone());
    let trackers = TaskTracker::new();
    let place = {
        let trackers = trackers.clone();
        move |shared: Arc<Shared>, i: u64, due: Instant| {
            let trackers = trackers.clone();
            async move { place_order(shared, &trackers, i, due).await }
        }
    };
    drive(&shared, plan, start, place).await;
    let sent_for = start.elapsed();
    bar.suspend(|| {
        eprintln!(
            "load: sending done after {:.1}s; waiting for {} order(s) to settle",
            sent_for.as_secs_f64(),
            shared
                .ok
                .load(Ordering::Relaxed)
                .saturating_sub(shared.settled.load(Ordering::Relaxed))
        )
    });
    trackers.close();
    trackers.wait().await;
    stop_progress.cancel();
    Report::build(&shared, sent_for, start.elapsed())
}

async fn run_reads(shared: Arc<Shared>) -> Report {
    let start = Instant::now();
    let plan = Arc::new(Plan::new(&shared.args, start));
    let stop_progress = CancellationToken::new();
    progress(shared.clone(), start, stop_progress.clone());
    drive(&shared, plan, start, read_product).await;
    let sent_for = start.elapsed();
    stop_progress.cancel();
    Report::build(&shared, sent_for, sent_for)
}

#[derive(Deserialize)]
struct Accepted {
    id: Uuid,
}

async fn place_order(shared: Arc<Shared>, trackers: &TaskTracker, i: u64, due: Instant) {
    let Ok(permit) = shared.pending.clone().acquire_owned().await else {
        return;
    };
    let args = &shared.args;
    let expect = Expect::of(i, args.decline_pct, args.out_of_stock_pct);
    let product = match (expect, shared.catalog.sold_out) {
        (Expect::OutOfStock, Some(p)) => p,
        _ => shared.catalog.in_stock[(i as usize) % shared.catalog.in_stock.len()],
    };
    let token = if expect == Expect::PaymentFailed {
        "tok_decline"
    } else {
        "tok_visa"
    };
    let user = (i as usize) % shared.users.len();
    let body = json!({"items": [{"product_id": product, "quantity": 1}], "payment_token": token});
    let sent = shared
        .api
        .http
        .post(format!("{}/api/orders", shared.api.base))
        .bearer_auth(&shared.users[user].token)
        .json(&body)
        .send()
        .await;
    let answer = match sent {
        Ok(resp) if resp.status() == StatusCode::ACCEPTED => resp.json::<Accepted>().await.ok(),
        Ok(resp) => {
            shared.error(
                "POST /api/orders",
                format!("HTTP {}", resp.status().as_u16()),
            );
            let _ = resp.bytes().await;
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(e) => {
            shared.error("POST /api/orders", transport_kind(&e));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let accepted_at = Instant::now();
    shared
        .stats()
        .http
        .saturating_record(micros(accepted_at - due));
    let Some(Accepted { id }) = answer else {
        shared.error("POST /api/orders", "unreadable 202 body");
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.ok.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    trackers.spawn(async move {
        track(&shared, user, id, accepted_at, expect).await;
        drop(permit);
    });
}

#[derive(Deserialize)]
struct OrderSeen {
    status: String,
    cancel_reason: Option<String>,
    history: Vec<HistorySeen>,
}

#[derive(Deserialize)]
struct HistorySeen {
    at: DateTime<Utc>,
}

/// Polls an order until it is CONFIRMED or CANCELLED, or its deadline passes.
async fn track(shared: &Shared, user: usize, id: Uuid, accepted_at: Instant, expect: Expect) {
    let deadline = accepted_at + Duration::from_secs_f64(shared.args.settle_timeout);
    // First look a little after most sagas end, then back off.
    let recent = Duration::from_micros(shared.recent_saga_us.load(Ordering::Relaxed));
    let mut wait = recent.mul_f64(1.5).clamp(MIN_POLL, MAX_POLL);
    let url = format!("{}/api/orders/{id}", shared.api.base);
    loop {
        let next = (Instant::now() + wait).min(deadline);
        tokio::time::sleep_until(next.into()).await;
        let seen = {
            let Ok(_slot) = shared.poll_slots.acquire().await else {
                return;
            };
            shared.polls.fetch_add(1, Ordering::Relaxed);
            poll_order(shared, &url, &shared.users[user].token).await
        };
        match seen {
            Ok(o) if o.status == "CONFIRMED" || o.status == "CANCELLED" => {
                settle(shared, o, accepted_at, expect);
                return;
            }
            Ok(_) => {}
            Err(kind) => shared.error("GET /api/orders/{id}", kind),
        }
        if Instant::now() >= deadline {
            shared.stats().unsettled.push(id);
            return;
        }
        wait = (wait * 2).clamp(MIN_POLL, MAX_POLL);
    }
}

async fn poll_order(shared: &Shared, url: &str, token: &str) -> Result<OrderSeen, String> {
    let resp = shared
        .api
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| transport_kind(&e).to_string())?;
    if resp.status() != StatusCode::OK {
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        return Err(format!("HTTP {status}"));
    }
    resp.json::<OrderSeen>()
        .await
        .map_err(|e| transport_kind(&e).to_string())
}

fn settle(shared: &Shared, o: OrderSeen, accepted_at: Instant, expect: Expect) {
    let observed = micros(accepted_at.elapsed());
    let span = match (o.history.first(), o.history.last()) {
        (Some(first), Some(last)) => Some((first.at, last.at)),
        _ => None,
    };
    let outcome = match &o.cancel_reason {
        Some(r) => format!("{} ({r})", o.status),
        None => o.status.clone(),
    };
    let mut s = shared.stats();
    if let Some((created, terminal)) = span {
        let saga_us = (terminal - created).num_microseconds().unwrap_or(0).max(0) as u64;
        s.saga.saturating_record(saga_us.max(1));
        // A smoothed recent latency times the first poll of later orders.
        let prev = shared.recent_saga_us.load(Ordering::Relaxed);
        shared
            .recent_saga_us
            .store((prev * 7 + saga_us) / 8, Ordering::Relaxed);
        s.first_created = Some(s.first_created.map_or(created, |f| f.min(created)));
        s.last_terminal = Some(s.last_terminal.map_or(terminal, |l| l.max(terminal)));
    }
    s.observed.saturating_record(observed);
    if !expect.matches(&o.status, o.cancel_reason.as_deref()) {
        s.unexpected += 1;
    }
    *s.outcomes.entry(outcome).or_default() += 1;
    drop(s);
    shared.settled.fetch_add(1, Ordering::Relaxed);
}

async fn read_product(shared: Arc<Shared>, i: u64, due: Instant) {
    let products = &shared.catalog.in_stock;
    let id = products[(i as usize) % products.len()];
    let sent = shared
        .api
        .http
        .get(format!("{}/api/products/{id}", shared.api.base))
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
            Ok(_) => {
                shared.stats().http.saturating_record(micros(due.elapsed()));
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.error("GET /api/products/{id}", transport_kind(&e));
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        },
        Ok(resp) => {
            shared.error(
                "GET /api/products/{id}",
                format!("HTTP {}", resp.status().as_u16()),
            );
            let _ = resp.bytes().await;
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            shared.error("GET /api/products/{id}", transport_kind(&e));
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

// ---- the report ----

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }

    fn row(&self) -> String {
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// The outcome of a run (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub concurrency: usize,
    pub rate: Option<f64>,
    /// Seconds requests were sent for.
    pub send_seconds: f64,
    /// Seconds until the last order was seen settled.
    pub total_seconds: f64,
    /// Orders accepted (202), or products read (200).
    pub succeeded: u64,
    /// Of the above, per second of sending.
    pub succeeded_per_sec: f64,
    pub failed_requests: u64,
    /// Orders seen CONFIRMED or CANCELLED.
    pub settled: u64,
    /// Settled orders per second, from the first acceptance to the last terminal transition
    /// (the server's timestamps).
    pub completed_sagas_per_sec: f64,
    pub unsettled: u64,
    /// Some orders that did not settle.
    pub unsettled_examples: Vec<Uuid>,
    /// Client latency of POST /api/orders or GET /api/products/{id} (from when it was due).
    pub http_latency: Latency,
    /// Accepted to terminal, from the order's history.
    pub saga_latency: Latency,
    /// Accepted to terminal as the client saw it (bounded below by the polling interval).
    pub observed_saga_latency: Latency,
    pub status_polls: u64,
    pub errors: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    /// Orders that ended otherwise than their payment token and product implied.
    pub unexpected_outcomes: u64,
    pub audit: Option<audit::Report>,
}

impl Report {
    fn build(shared: &Shared, sent_for: Duration, total: Duration) -> Report {
        let s = shared.stats();
        let succeeded = shared.ok.load(Ordering::Relaxed);
        let settled = shared.settled.load(Ordering::Relaxed);
        let saga_window = match (s.first_created, s.last_terminal) {
            (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
            _ => 0.0,
        };
        let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Report {
            mode: shared.args.mode,
            concurrency: shared.args.concurrency,
            rate: shared.args.rate,
            send_seconds: sent_for.as_secs_f64(),
            total_seconds: total.as_secs_f64(),
            succeeded,
            succeeded_per_sec: per_sec(succeeded, sent_for.as_secs_f64()),
            failed_requests: shared.failed.load(Ordering::Relaxed),
            settled,
            completed_sagas_per_sec: per_sec(settled, saga_window),
            unsettled: s.unsettled.len() as u64,
            unsettled_examples: s.unsettled.iter().take(10).copied().collect(),
            http_latency: Latency::of(&s.http),
            saga_latency: Latency::of(&s.saga),
            observed_saga_latency: Latency::of(&s.observed),
            status_polls: shared.polls.load(Ordering::Relaxed),
            errors: s.errors.clone(),
            outcomes: s.outcomes.clone(),
            unexpected_outcomes: s.unexpected,
            audit: None,
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<34} {v}\n"));
        let pace = match self.rate {
            Some(r) => format!("{r}/s open loop, at most {} in flight", self.concurrency),
            None => format!("closed loop, {} clients", self.concurrency),
        };
        row("load", pace);
        row("sent for", format!("{:.1} s", self.send_seconds));
        match self.mode {
            Mode::Orders => {
                row(
                    "orders accepted",
                    format!("{} ({:.1}/s)", self.succeeded, self.succeeded_per_sec),
                );
                row(
                    "sagas completed",
                    format!(
                        "{} ({:.1}/s, first acceptance to last terminal state)",
                        self.settled, self.completed_sagas_per_sec
                    ),
                );
                row("orders not settled", self.unsettled.to_string());
                row("POST /api/orders latency", self.http_latency.row());
                row("saga latency (server)", self.saga_latency.row());
                row("saga latency (as polled)", self.observed_saga_latency.row());
                row("status polls", self.status_polls.to_string());
                for (k, v) in &self.outcomes {
                    row(&format!("  {k}"), v.to_string());
                }
                row("unexpected outcomes", self.unexpected_outcomes.to_string());
            }
            Mode::GetProduct => {
                row(
                    "products read",
                    format!("{} ({:.1}/s)", self.succeeded, self.succeeded_per_sec),
                );
                row("GET /api/products/{id} latency", self.http_latency.row());
            }
        }
        row("failed requests", self.failed_requests.to_string());
        for (k, v) in &self.errors {
            row(&format!("  {k}"), v.to_string());
        }
        for id in &self.unsettled_examples {
            row("  not settled", id.to_string());
        }
        out
    }
}

/// Runs the audit until it passes (the system settles shortly after the last order), or
/// returns the last report after the deadline.
async fn audit_when_quiet(config: &Config, settings: &Settings) -> anyhow::Result<audit::Report> {
    let broker = Broker::connect(
        BrokerConfig::for_tools(config, "shop-load", crate::topology()),
        Arc::new(Metrics::new("load")),
    )
    .await?;
    let until = Instant::now() + AUDIT_DEADLINE;
    let result = loop {
        match audit::run(config, settings, Some(&broker)).await {
            Ok(r) if r.ok() || Instant::now() > until => break Ok(r),
            Ok(_) => {}
            Err(e) if Instant::now() > until => break Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    broker.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_mix_follows_the_percentages() {
        let n = 10_000u64;
        let count = |e: Expect| (0..n).filter(|i| Expect::of(*i, 10.0, 5.0) == e).count();
        let decline = count(Expect::PaymentFailed) as f64 / n as f64;
        let oos = count(Expect::OutOfStock) as f64 / n as f64;
        assert!((decline - 0.10).abs() < 0.005, "{decline}");
        assert!((oos - 0.05).abs() < 0.005, "{oos}");
        assert!((0..n).all(|i| Expect::of(i, 0.0, 0.0) == Expect::Confirmed));
    }

    #[test]
    fn only_loopback_gateways() {
        let args = |g: &str| LoadArgs {
            gateway: g.into(),
            mode: Mode::Orders,
            users: 1,
            products: 1,
            concurrency: 1,
            rate: None,
            count: Some(1),
            duration: None,
            decline_pct: 0.0,
            out_of_stock_pct: 0.0,
            max_pending: 1,
            poll_concurrency: 1,
            settle_timeout: 1.0,
            audit: false,
            json: false,
        };
        assert!(validate(&args("http://127.0.0.1:8080")).is_ok());
        assert!(validate(&args("http://localhost:8080/")).is_ok());
        assert!(validate(&args("http://[::1]:8080")).is_ok());
        assert!(validate(&args("http://10.0.0.1:8080")).is_err());
        assert!(validate(&args("http://example.com")).is_err());
    }

    #[test]
    fn latency_is_in_milliseconds() {
        let mut h = histogram();
        for us in [1000, 2000, 3000, 4000, 100_000] {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 5);
        assert!((l.p50_ms - 3.0).abs() < 0.01);
        assert!((l.max_ms - 100.0).abs() < 0.2);
    }
}
