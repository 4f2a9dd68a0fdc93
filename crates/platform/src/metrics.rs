//! Prometheus metrics of one program. Each program (even inside `shop up`) has its own
//! registry, served on its own `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub method: String,
    pub status: u16,
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
    pub outbox_depth: Gauge,
    pub outbox_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
    pub db_loads: Counter,
    pub http_requests: Family<HttpLabel, Counter>,
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
            outbox_depth: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_errors: Counter::default(),
            db_loads: Counter::default(),
            http_requests: Family::default(),
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
        let text = m.render();
        assert!(text.contains("shop_messages_published_total{"), "{text}");
        assert!(text.contains("event_type=\"order.created\""));
        assert!(
            text.contains("shop_outbox_depth{program=\"orders\"} 3"),
            "{text}"
        );
    }
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
}
