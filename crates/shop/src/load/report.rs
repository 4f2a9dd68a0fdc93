//! The report of a run: rates, latency percentiles, errors, outcomes; as a table or JSON.

#[allow(unused_imports)]
use super::*;

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
    pub(super) fn of(h: &Histogram<u64>) -> Latency {
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
    /// Client latency of POST /api/orders, GET /api/products/{id} or GET /api/orders (from
    /// when it was due).
    pub http_latency: Latency,
    /// Created to terminal, the server's timestamps.
    pub saga_latency: Latency,
    /// Accepted to terminal as the client saw it on the order's event stream.
    pub observed_saga_latency: Latency,
    /// Order event streams opened (one per order, more if one broke off).
    pub status_streams: u64,
    pub errors: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    /// Orders that ended otherwise than their payment token and product implied.
    pub unexpected_outcomes: u64,
    pub audit: Option<audit::Report>,
}

impl Report {
    pub(super) fn build(shared: &Shared, sent_for: Duration, total: Duration) -> Report {
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
            status_streams: shared.streams.load(Ordering::Relaxed),
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
                row("saga latency (as seen)", self.observed_saga_latency.row());
                row("status streams opened", self.status_streams.to_string());
                for (k, v) in &self.outcomes {
                    row(&format!("  {k}"), v.to_string());
                }
                row("unexpected outcomes", self.unexpected_outcomes.to_string());
            }
            Mode::GetProduct | Mode::ListOrders => {
                let (read, route) = match self.mode {
                    Mode::ListOrders => ("order pages read", "GET /api/orders latency"),
                    _ => ("products read", "GET /api/products/{id} latency"),
                };
                row(
                    read,
                    format!("{} ({:.1}/s)", self.succeeded, self.succeeded_per_sec),
                );
                row(route, self.http_latency.row());
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
pub(super) async fn audit_when_quiet(
    config: &Config,
    settings: &Settings,
) -> anyhow::Result<audit::Report> {
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
