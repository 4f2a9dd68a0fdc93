//! `shop load`: a load generator against the gateway's public API, for benchmarks and soak
//! runs on a loopback machine.
//!
//! Orders mode (the default) registers and logs in `--users` users, creates `--products`
//! products with plenty of stock as the administrator (plus one with none when
//! `--out-of-stock-pct` asks for rejected orders), then places orders either as fast as
//! `--concurrency` clients can (closed loop) or at a fixed `--rate` (open loop: latencies
//! count from the time each request was due, so a slow server cannot hide its queueing), for
//! `--count` orders or `--duration` seconds. Every accepted order is followed to CONFIRMED or
//! CANCELLED on its event stream `GET /api/orders/{id}/events`, as the storefront follows it
//! (each order with its own deadline); its saga latency is taken from the server's timestamps
//! (the order's creation to its terminal status). At most `--max-pending`
//! orders are unsettled at a time, so a saturated system is measured at the rate it
//! completes sagas rather than with an ever-growing backlog.
//!
//! Get-product mode reads `GET /api/products/{id}` (the cached read path) round-robin;
//! list-orders mode reads each user's first page of `GET /api/orders`, the users in turn.
//!
//! `--tokens` and `--product-ids` take users (their session tokens) and products from files
//! instead of making new ones: a population seeded in bulk, or the same one across runs.
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
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use eventsource_stream::{EventStreamError, Eventsource as _};
use futures::StreamExt as _;
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

use crate::{
    Settings, audit,
    client::{ApiClient, NewProduct},
};

/// What to load.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Place orders and follow each saga to its end.
    Orders,
    /// Read products one at a time (`GET /api/products/{id}`, served through the cache).
    GetProduct,
    /// Read the users' first page of orders (`GET /api/orders`), one user after another.
    ListOrders,
}

impl Mode {
    /// Whether the mode acts as users (who must be registered, or given by --tokens).
    fn needs_users(self) -> bool {
        matches!(self, Mode::Orders | Mode::ListOrders)
    }
}

/// `shop load`: the administrator who creates the products is `--admin-email` /
/// `--admin-password` (SHOP_ADMIN_EMAIL / SHOP_ADMIN_PASSWORD); the audit at the end uses the
/// same database and broker settings as every other command.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Base URL of the gateway (a loopback address).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// `orders` (place orders, follow their sagas), `get-product` (cached product reads) or
    /// `list-orders` (users' first page of orders).
    #[arg(long, value_enum, default_value_t = Mode::Orders)]
    pub mode: Mode,
    /// Users registered and logged in to place the orders.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// A file of session tokens of existing users, one per line, used instead of
    /// registering --users new ones.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// Products created, each with plenty of stock.
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// A file of ids of existing products, one per line, ordered or read instead of creating
    /// --products new ones (for orders, each needs stock that inventory already knows).
    #[arg(long, value_name = "FILE")]
    pub product_ids: Option<PathBuf>,
    /// Requests in flight at most (the number of closed-loop clients without --rate).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second (open loop); without it, as fast as --concurrency clients can.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests to send in all.
    #[arg(long)]
    pub count: Option<u64>,
    /// How long to send for: `20s`, `2m`, `1m30s` or plain seconds (`20`, `0.5`); the
    /// default is 10 s when --count is not given either.
    #[arg(long, value_parser = seconds)]
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
/// Wait before opening an order's event stream again after it broke off.
const STREAM_RETRY: Duration = Duration::from_millis(100);
/// Seconds of sending when neither --count nor --duration is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;

/// Runs the load and prints the report; fails if an order did not settle or the audit fails.
pub async fn run(config: &Config, settings: &Settings, args: LoadArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let base = args.gateway.trim_end_matches('/').to_string();
    let http = Client::builder()
        // Requests in flight, and an event stream for each order not yet settled.
        .pool_max_idle_per_host(args.concurrency + args.max_pending + 8)
        // The gateway closes connections idle past its header-read timeout.
        .pool_idle_timeout(config.client_idle_timeout())
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let api = ApiClient::new(http, base.clone());
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
    let run_id = Uuid::new_v4().simple().to_string()[..10].to_string();
    let catalog = match &args.product_ids {
        // Given products are known to inventory already; only a sold-out one is made.
        Some(file) => {
            let in_stock = read_lines(file, "--product-ids")?
                .iter()
                .map(|l| {
                    l.parse::<Uuid>()
                        .with_context(|| format!("{}: {l:?} is not a product id", file.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let sold_out = if wants_sold_out(&args) {
                let admin = admin_token(settings, &api).await?;
                let sold_out = create_sold_out(&api, &admin, &args, &run_id).await?;
                wait_for_inventory(&api, &[sold_out]).await?;
                Some(sold_out)
            } else {
                None
            };
            Catalog { in_stock, sold_out }
        }
        None if args.mode == Mode::ListOrders => Catalog {
            in_stock: Vec::new(),
            sold_out: None,
        },
        None => {
            let admin = admin_token(settings, &api).await?;
            let catalog = create_products(&api, &admin, &args, &run_id).await?;
            if args.mode == Mode::Orders {
                let ids: Vec<Uuid> = catalog
                    .in_stock
                    .iter()
                    .chain(&catalog.sold_out)
                    .copied()
                    .collect();
                wait_for_inventory(&api, &ids).await?;
            }
            catalog
        }
    };
    let users = match (&args.tokens, args.mode.needs_users()) {
        (_, false) => Vec::new(),
        (Some(file), true) => read_lines(file, "--tokens")?
            .into_iter()
            .map(|token| LoadUser { token })
            .collect(),
        (None, true) => create_users(&api, args.users, &run_id).await?,
    };
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
        Mode::GetProduct => run_reads(shared, read_product).await,
        Mode::ListOrders => run_reads(shared, list_orders).await,
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
    if args.mode.needs_users() && args.tokens.is_none() && (args.users == 0 || args.users > 10_000)
    {
        bail!("--users must be 1 to 10000");
    }
    if args.product_ids.is_none() && (args.products == 0 || args.products > 10_000) {
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
        bail!("--duration must be above 0 and at most 24h");
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
    if args.max_pending == 0 {
        bail!("--max-pending must be at least 1");
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
        Mode::ListOrders => "order list reads",
    };
    format!("{what} at {pace} for {until}")
}

mod driver;
mod report;
mod setup;

use driver::*;
use report::audit_when_quiet;
pub use report::{Latency, Report};
use setup::*;

/// The non-empty lines of a file given as `flag`, trimmed; at least one.
fn read_lines(file: &Path, flag: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading {flag} {}", file.display()))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        bail!("{flag} {} has no lines", file.display());
    }
    Ok(lines)
}

/// A duration in seconds from `20s`, `2m`, `1m30s` (humantime) or plain seconds.
fn seconds(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Ok(n);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs_f64())
        .map_err(|e| format!("{e}: give seconds (20), or a unit (20s, 2m, 1m30s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(seconds("20"), Ok(20.0));
        assert_eq!(seconds("0.5"), Ok(0.5));
        assert_eq!(seconds("20s"), Ok(20.0));
        assert_eq!(seconds("2m"), Ok(120.0));
        assert_eq!(seconds("1m30s"), Ok(90.0));
        assert!(seconds("soon").is_err());
    }

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
            tokens: None,
            products: 1,
            product_ids: None,
            concurrency: 1,
            rate: None,
            count: Some(1),
            duration: None,
            decline_pct: 0.0,
            out_of_stock_pct: 0.0,
            max_pending: 1,
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
