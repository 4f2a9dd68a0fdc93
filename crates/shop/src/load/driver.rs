//! The run itself: planning requests (closed or open loop), placing and following orders,
//! reading products, and the progress display.

#[allow(unused_imports)]
use super::*;

/// What an order is meant to end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Confirmed,
    PaymentFailed,
    OutOfStock,
}

impl Expect {
    /// Spreads the outcomes evenly over the sequence (a low-discrepancy sequence, so any
    /// stretch of orders has close to the asked mix).
    pub(super) fn of(i: u64, decline_pct: f64, out_of_stock_pct: f64) -> Expect {
        let u = (i as f64 * 0.618_033_988_749_895).fract() * 100.0;
        if u < out_of_stock_pct {
            Expect::OutOfStock
        } else if u < out_of_stock_pct + decline_pct {
            Expect::PaymentFailed
        } else {
            Expect::Confirmed
        }
    }

    pub(super) fn matches(self, status: &str, reason: Option<&str>) -> bool {
        match self {
            Expect::Confirmed => status == "CONFIRMED",
            Expect::PaymentFailed => status == "CANCELLED" && reason == Some("payment_failed"),
            Expect::OutOfStock => status == "CANCELLED" && reason == Some("out_of_stock"),
        }
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Everything the report is made of.
pub(super) struct Stats {
    pub(super) http: Histogram<u64>,
    pub(super) saga: Histogram<u64>,
    pub(super) observed: Histogram<u64>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) outcomes: BTreeMap<String, u64>,
    pub(super) unexpected: u64,
    pub(super) unsettled: Vec<Uuid>,
    /// Server times of the first acceptance and the last terminal transition.
    pub(super) first_created: Option<DateTime<Utc>>,
    pub(super) last_terminal: Option<DateTime<Utc>>,
}

pub(super) struct Shared {
    pub(super) args: LoadArgs,
    pub(super) api: ApiClient,
    pub(super) users: Vec<LoadUser>,
    pub(super) catalog: Catalog,
    /// Index of the next request.
    pub(super) next: AtomicU64,
    /// Requests answered successfully (accepted orders, or products read).
    pub(super) ok: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) settled: AtomicU64,
    /// Order event streams opened.
    pub(super) streams: AtomicU64,
    pub(super) stats: Mutex<Stats>,
    pub(super) pending: Arc<Semaphore>,
}

impl Shared {
    pub(super) fn new(
        args: &LoadArgs,
        api: ApiClient,
        users: Vec<LoadUser>,
        catalog: Catalog,
    ) -> Self {
        Shared {
            args: args.clone(),
            api,
            users,
            catalog,
            next: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            streams: AtomicU64::new(0),
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
        }
    }

    pub(super) fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().expect("stats lock")
    }

    pub(super) fn error(&self, what: &str, kind: impl std::fmt::Display) {
        *self
            .stats()
            .errors
            .entry(format!("{what}: {kind}"))
            .or_default() += 1;
    }
}

/// When sending stops: after `count` requests or at `until`, whichever comes first.
pub(super) struct Plan {
    pub(super) count: Option<u64>,
    pub(super) until: Option<Instant>,
}

impl Plan {
    pub(super) fn new(args: &LoadArgs, start: Instant) -> Plan {
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
    pub(super) fn next(&self, shared: &Shared) -> Option<u64> {
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
pub(super) fn progress(
    shared: Arc<Shared>,
    start: Instant,
    stop: CancellationToken,
) -> ProgressBar {
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
                Mode::GetProduct | Mode::ListOrders => {
                    format!("reads {ok} ({}/s)  failed {failed}", rate(ok, last.0))
                }
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
pub(super) async fn drive<F, Fut>(shared: &Arc<Shared>, plan: Arc<Plan>, start: Instant, one: F)
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

pub(super) async fn run_orders(shared: Arc<Shared>) -> Report {
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

/// Runs `one` (a read: a product, or a user's orders) for every planned request.
pub(super) async fn run_reads<F, Fut>(shared: Arc<Shared>, one: F) -> Report
where
    F: Fn(Arc<Shared>, u64, Instant) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let plan = Arc::new(Plan::new(&shared.args, start));
    let stop_progress = CancellationToken::new();
    progress(shared.clone(), start, stop_progress.clone());
    drive(&shared, plan, start, one).await;
    let sent_for = start.elapsed();
    stop_progress.cancel();
    Report::build(&shared, sent_for, sent_for)
}

/// What the 202 of a placed order says that the load generator uses.
#[derive(Deserialize)]
pub(super) struct Accepted {
    pub(super) id: Uuid,
    pub(super) created_at: DateTime<Utc>,
}

pub(super) async fn place_order(shared: Arc<Shared>, trackers: &TaskTracker, i: u64, due: Instant) {
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
        .post(format!("{}/api/orders", shared.api.base()))
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
    let Some(placed) = answer else {
        shared.error("POST /api/orders", "unreadable 202 body");
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.ok.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    trackers.spawn(async move {
        track(&shared, user, placed, accepted_at, expect).await;
        drop(permit);
    });
}

/// A status of an order, as its event stream tells it.
#[derive(Deserialize)]
pub(super) struct StatusSeen {
    pub(super) status: String,
    pub(super) cancel_reason: Option<String>,
    /// When the order entered it (the server's time).
    pub(super) at: DateTime<Utc>,
}

impl StatusSeen {
    fn is_terminal(&self) -> bool {
        self.status == "CONFIRMED" || self.status == "CANCELLED"
    }
}

/// Follows an order on its event stream until it is CONFIRMED or CANCELLED, or its deadline
/// passes; a stream that breaks off is opened again.
pub(super) async fn track(
    shared: &Shared,
    user: usize,
    placed: Accepted,
    accepted_at: Instant,
    expect: Expect,
) {
    let deadline = accepted_at + Duration::from_secs_f64(shared.args.settle_timeout);
    let url = format!("{}/api/orders/{}/events", shared.api.base(), placed.id);
    loop {
        shared.streams.fetch_add(1, Ordering::Relaxed);
        let followed = tokio::time::timeout_at(
            deadline.into(),
            follow(shared, &url, &shared.users[user].token, deadline),
        )
        .await;
        match followed {
            Ok(Ok(end)) => {
                settle(shared, &placed, end, accepted_at, expect);
                return;
            }
            Ok(Err(kind)) => shared.error("GET /api/orders/{id}/events", kind),
            Err(_) => {}
        }
        if Instant::now() + STREAM_RETRY >= deadline {
            shared.stats().unsettled.push(placed.id);
            return;
        }
        tokio::time::sleep(STREAM_RETRY).await;
    }
}

/// Reads an order's event stream to its terminal status.
async fn follow(
    shared: &Shared,
    url: &str,
    token: &str,
    deadline: Instant,
) -> Result<StatusSeen, String> {
    let resp = shared
        .api
        .http
        .get(url)
        .bearer_auth(token)
        // The stream lasts as long as the saga: bounded by the order's deadline instead.
        .timeout(deadline.saturating_duration_since(Instant::now()))
        .send()
        .await
        .map_err(|e| transport_kind(&e).to_string())?;
    if resp.status() != StatusCode::OK {
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        return Err(format!("HTTP {status}"));
    }
    let mut events = resp.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(e) => transport_kind(&e).to_string(),
            other => format!("unreadable stream: {other}"),
        })?;
        if event.event != "status" {
            continue;
        }
        let seen: StatusSeen = serde_json::from_str(&event.data)
            .map_err(|e| format!("unreadable status event: {e}"))?;
        if seen.is_terminal() {
            return Ok(seen);
        }
    }
    Err("the stream ended before a terminal status".into())
}

pub(super) fn settle(
    shared: &Shared,
    placed: &Accepted,
    end: StatusSeen,
    accepted_at: Instant,
    expect: Expect,
) {
    let observed = micros(accepted_at.elapsed());
    let outcome = match &end.cancel_reason {
        Some(r) => format!("{} ({r})", end.status),
        None => end.status.clone(),
    };
    let mut s = shared.stats();
    let (created, terminal) = (placed.created_at, end.at);
    let saga_us = (terminal - created).num_microseconds().unwrap_or(0).max(0) as u64;
    s.saga.saturating_record(saga_us.max(1));
    s.first_created = Some(s.first_created.map_or(created, |f| f.min(created)));
    s.last_terminal = Some(s.last_terminal.map_or(terminal, |l| l.max(terminal)));
    s.observed.saturating_record(observed);
    if !expect.matches(&end.status, end.cancel_reason.as_deref()) {
        s.unexpected += 1;
    }
    *s.outcomes.entry(outcome).or_default() += 1;
    drop(s);
    shared.settled.fetch_add(1, Ordering::Relaxed);
}

pub(super) async fn read_product(shared: Arc<Shared>, i: u64, due: Instant) {
    let products = &shared.catalog.in_stock;
    let id = products[(i as usize) % products.len()];
    let request = shared
        .api
        .http
        .get(format!("{}/api/products/{id}", shared.api.base()));
    read(&shared, "GET /api/products/{id}", request, due).await;
}

/// The first page of one user's orders, the users in turn.
pub(super) async fn list_orders(shared: Arc<Shared>, i: u64, due: Instant) {
    let user = &shared.users[(i as usize) % shared.users.len()];
    let request = shared
        .api
        .http
        .get(format!("{}/api/orders", shared.api.base()))
        .bearer_auth(&user.token);
    read(&shared, "GET /api/orders", request, due).await;
}

/// Sends a read and counts it: its latency from `due` when it answers 200 with a whole body,
/// else an error of its kind.
async fn read(shared: &Shared, what: &str, request: reqwest::RequestBuilder, due: Instant) {
    let failure = match request.send().await {
        Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
            Ok(_) => {
                let accepted_at = Instant::now();
                shared
                    .stats()
                    .http
                    .saturating_record(micros(accepted_at - due));
                shared.ok.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => transport_kind(&e).to_string(),
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            format!("HTTP {status}")
        }
        Err(e) => transport_kind(&e).to_string(),
    };
    shared.error(what, failure);
    shared.failed.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}
