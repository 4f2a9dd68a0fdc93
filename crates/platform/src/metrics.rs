//! Prometheus metrics of one program. Each program (even inside `shop up`) has its own
//! registry, served on its own `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub method: String,
    /// The route's template (`/api/orders/{id}`), `unmatched` for a path of no route.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
}

/// A saga's end: its terminal status and, for a cancelled one, the reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaLabel {
    pub status: String,
    pub reason: String,
}

/// A histogram family whose members are made with the same buckets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 1 ms to about 16 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The counters and gauges every program exposes.
pub struct Metrics {
    registry: Registry,
    pub published: Family<TypeLabel, Counter>,
    pub publish_failures: Counter,
    pub consumed: Family<TypeLabel, Counter>,
    pub duplicates: Family<TypeLabel, Counter>,
    pub retried: Family<TypeLabel, Counter>,
    pub postponed: Family<TypeLabel, Counter>,
    pub dead_lettered: Family<TypeLabel, Counter>,
    /// Deliveries taken from the broker and not yet acked or returned (0 on a quiet system).
    pub in_flight: Gauge,
    /// Deliveries handled per consumer transaction.
    pub batch_size: Histogram,
    /// Batches whose transaction failed, so that each of their messages was handled alone.
    pub batches_split: Counter,
    pub outbox_depth: Gauge,
    pub outbox_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
    pub db_loads: Counter,
    pub http_requests: Family<HttpLabel, Counter>,
    pub http_duration: Histograms<RouteLabel>,
    /// Time from a delivery's arrival to its fate (handled, retried, dead-lettered), by type.
    pub handler_duration: Histograms<TypeLabel>,
    /// Database connections in use (taken from the pool), at scrape time.
    pub db_connections_in_use: Gauge,
    /// CPU time of the program's process (all seven programs' under `shop up`), at scrape.
    pub process_cpu_seconds: Counter<f64, AtomicU64>,
    /// Resident memory of the program's process, at scrape.
    pub process_resident_memory_bytes: Gauge,
    /// Orders' sagas (zero in the other programs).
    pub sagas_ended: Family<SagaLabel, Counter>,
    /// From acceptance of the order to its terminal state.
    pub saga_duration: Histogram,
    /// One scan of orders for passed deadlines (whatever it found), the deadline scanner's
    /// cost per cycle.
    pub deadline_scan: Histogram,
    /// Notifications' delivery (zero in the other programs).
    pub notifications_sent: Counter,
    pub notifications_retried: Counter,
    pub notifications_refused: Counter,
    pub notifications_pending: Gauge,
    pub notifications_oldest_pending_age_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new(program: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "shop",
            [("program".into(), program.to_string().into())].into_iter(),
        );
        let m = Metrics {
            published: Family::default(),
            publish_failures: Counter::default(),
            consumed: Family::default(),
            duplicates: Family::default(),
            retried: Family::default(),
            postponed: Family::default(),
            dead_lettered: Family::default(),
            in_flight: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            batches_split: Counter::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_errors: Counter::default(),
            db_loads: Counter::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            handler_duration: Family::new_with_constructor(latency),
            db_connections_in_use: Gauge::default(),
            process_cpu_seconds: Counter::default(),
            process_resident_memory_bytes: Gauge::default(),
            sagas_ended: Family::default(),
            saga_duration: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            deadline_scan: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            notifications_sent: Counter::default(),
            notifications_retried: Counter::default(),
            notifications_refused: Counter::default(),
            notifications_pending: Gauge::default(),
            notifications_oldest_pending_age_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_published",
            "Events published with a broker confirm",
            m.published.clone(),
        );
        registry.register(
            "publish_failures",
            "Publishes that were not confirmed",
            m.publish_failures.clone(),
        );
        registry.register(
            "messages_consumed",
            "Events handled and acked",
            m.consumed.clone(),
        );
        registry.register(
            "messages_duplicate",
            "Redeliveries suppressed by the inbox",
            m.duplicates.clone(),
        );
        registry.register(
            "messages_retried",
            "Deliveries sent to a retry delay queue",
            m.retried.clone(),
        );
        registry.register(
            "messages_postponed",
            "Deliveries put back for later because the database was away (no attempt used)",
            m.postponed.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Deliveries received and not yet acknowledged or returned to the broker",
            m.in_flight.clone(),
        );
        registry.register(
            "consumer_batch_size",
            "Deliveries handled per consumer transaction",
            m.batch_size.clone(),
        );
        registry.register(
            "consumer_batches_split",
            "Batches whose transaction failed, each of their messages then handled alone",
            m.batches_split.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages parked in the dead-letter queue",
            m.dead_lettered.clone(),
        );
        registry.register(
            "outbox_depth",
            "Outbox rows not yet published",
            m.outbox_depth.clone(),
        );
        registry.register(
            "outbox_oldest_unsent_age_seconds",
            "Age of the oldest unpublished outbox row",
            m.outbox_oldest_age_seconds.clone(),
        );
        registry.register("cache_hits", "Product cache hits", m.cache_hits.clone());
        registry.register(
            "cache_misses",
            "Product cache misses",
            m.cache_misses.clone(),
        );
        registry.register(
            "cache_errors",
            "Cache operations that failed (Redis away)",
            m.cache_errors.clone(),
        );
        registry.register(
            "db_loads",
            "Product loads from PostgreSQL",
            m.db_loads.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            m.http_duration.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Time from a delivery's arrival to its fate (handled and committed, retried or dead-lettered)",
            m.handler_duration.clone(),
        );
        registry.register(
            "db_connections_in_use",
            "Database connections taken from the pool",
            m.db_connections_in_use.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "CPU time of the program's process (the one process of shop up: all seven programs)",
            m.process_cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the program's process",
            m.process_resident_memory_bytes.clone(),
        );
        registry.register(
            "sagas_ended",
            "Order sagas that reached a terminal state, by status and cancel reason",
            m.sagas_ended.clone(),
        );
        registry.register(
            "saga_duration_seconds",
            "From an order's acceptance to its terminal state",
            m.saga_duration.clone(),
        );
        registry.register(
            "saga_deadline_scan_seconds",
            "One scan of orders for passed saga deadlines, and the transitions it fired",
            m.deadline_scan.clone(),
        );
        registry.register(
            "notifications_sent",
            "Notifications delivered (to the mail server, or the log)",
            m.notifications_sent.clone(),
        );
        registry.register(
            "notifications_retried",
            "Deliveries that failed for now and wait for a retry",
            m.notifications_retried.clone(),
        );
        registry.register(
            "notifications_refused",
            "Notifications the mail server refused for good (recorded with the reason)",
            m.notifications_refused.clone(),
        );
        registry.register(
            "notifications_pending",
            "Notifications recorded and not yet delivered or refused",
            m.notifications_pending.clone(),
        );
        registry.register(
            "notifications_oldest_pending_age_seconds",
            "Age of the oldest notification waiting for delivery",
            m.notifications_oldest_pending_age_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Starts the per-type series of the events a program consumes and publishes at 0, so
    /// each is exposed (and its rate defined) before its first message.
    pub fn declare_event_types(&self, consumes: &[&str], publishes: &[&str]) {
        for t in consumes {
            let label = Metrics::label(t);
            for family in [
                &self.consumed,
                &self.duplicates,
                &self.retried,
                &self.postponed,
                &self.dead_lettered,
            ] {
                let _ = family.get_or_create(&label);
            }
            let _ = self.handler_duration.get_or_create(&label);
        }
        for t in publishes {
            let _ = self.published.get_or_create(&Metrics::label(t));
        }
    }

    /// Reads the process's CPU time and resident memory from /proc (Linux; elsewhere they
    /// stay 0).
    pub fn refresh_process(&self) {
        if let Some(cpu) = process_cpu_seconds() {
            let seen = self.process_cpu_seconds.get();
            if cpu > seen {
                self.process_cpu_seconds.inc_by(cpu - seen);
            }
        }
        if let Some(rss) = resident_bytes() {
            self.process_resident_memory_bytes.set(rss);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn label(event_type: &str) -> TypeLabel {
        TypeLabel {
            event_type: event_type.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new("orders");
        m.published
            .get_or_create(&Metrics::label("order.created"))
            .inc();
        m.outbox_depth.set(3);
        m.refresh_process();
        let text = m.render();
        if cfg!(target_os = "linux") {
            let rss = sample_sum(&text, "shop_process_resident_memory_bytes", &[]);
            assert!(rss > 1e6, "resident memory {rss}");
            assert!(text.contains("shop_process_cpu_seconds_total{"), "{text}");
        }
        assert!(text.contains("shop_messages_published_total{"), "{text}");
        assert!(text.contains("event_type=\"order.created\""));
        assert!(
            text.contains("shop_outbox_depth{program=\"orders\"} 3"),
            "{text}"
        );
    }
}

/// User and system CPU time of this process: fields 14 and 15 of /proc/self/stat, in
/// USER_HZ ticks, which the kernel's ABI fixes at 100 a second for userspace.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (which may hold spaces), in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// VmRSS of /proc/self/status (kB).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The sum of metric `name` over its samples in a Prometheus text exposition whose labels
/// include every pair of `labels` (all samples when `labels` is empty); 0 when absent. The
/// one reader of `/metrics` text: `shop audit` and the tests use it.
pub fn sample_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let matches = labels.iter().all(|(k, v)| {
                label_set
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if !matches {
                return None;
            }
            value.split(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The cumulative buckets `(le, count)` of histogram `name` (without `_bucket`) in an
/// exposition, summed over its label sets (several instances' scrapes may be joined), in
/// rising order of `le` (`+Inf` last).
pub fn buckets(exposition: &str, name: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let prefix = format!("{name}_bucket{{");
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|pair| pair.strip_prefix("le=\""))
            .map(|v| v.trim_end_matches('"'))
            .and_then(|v| match v {
                "+Inf" => Some(f64::INFINITY),
                v => v.parse::<f64>().ok(),
            });
        let count = value.split(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(count)) = (le, count) {
            match out.iter_mut().find(|(l, _)| *l == le) {
                Some((_, c)) => *c += count,
                None => out.push((le, count)),
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile (0 to 1) of cumulative buckets, interpolated within its bucket as
/// Prometheus's `histogram_quantile` does; `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

#[cfg(test)]
mod sample_tests {
    use super::sample_sum;

    const TEXT: &str = "# HELP shop_x_total x\n# TYPE shop_x_total counter\n\
        shop_x_total{program=\"a\",event_type=\"order.created\"} 3\n\
        shop_x_total{program=\"a\",event_type=\"stock.reserved\"} 4\n\
        shop_x_total_more 100\n\
        shop_y 2.5\n";

    #[test]
    fn sums_the_samples_whose_labels_match() {
        assert_eq!(sample_sum(TEXT, "shop_x_total", &[]), 7.0);
        assert_eq!(
            sample_sum(TEXT, "shop_x_total", &[("event_type", "order.created")]),
            3.0
        );
        assert_eq!(sample_sum(TEXT, "shop_y", &[]), 2.5);
        assert_eq!(sample_sum(TEXT, "shop_z", &[]), 0.0);
    }

    #[test]
    fn histograms_are_read_summed_and_their_quantiles_interpolated() {
        let text = "shop_d_bucket{program=\"a\",le=\"0.1\"} 2\n\
            shop_d_bucket{program=\"a\",le=\"0.2\"} 4\n\
            shop_d_bucket{program=\"a\",le=\"+Inf\"} 4\n\
            shop_d_bucket{program=\"b\",le=\"0.1\"} 0\n\
            shop_d_bucket{program=\"b\",le=\"0.2\"} 4\n\
            shop_d_bucket{program=\"b\",le=\"+Inf\"} 4\n\
            shop_d_sum{program=\"a\"} 9\n";
        let b = super::buckets(text, "shop_d");
        assert_eq!(b, vec![(0.1, 2.0), (0.2, 8.0), (f64::INFINITY, 8.0)]);
        assert_eq!(super::quantile(&b, 0.25), Some(0.1));
        let median = super::quantile(&b, 0.5).unwrap();
        assert!(
            (median - (0.1 + 0.1 * (2.0 / 6.0))).abs() < 1e-9,
            "{median}"
        );
        assert_eq!(
            super::quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5),
            None
        );
        // Past the last finite bound: that bound.
        assert_eq!(
            super::quantile(&[(0.1, 1.0), (f64::INFINITY, 3.0)], 0.9),
            Some(0.1)
        );
    }
}
