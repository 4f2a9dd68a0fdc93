//! The RabbitMQ topology of the whole shop: which service queue receives which event types.
//!
//! Every program declares all of it at start-up (idempotently), so an event published before
//! its consumer ever ran is still routed to that consumer's durable queue, never lost.

/// (queue, event types it is bound to).
pub const BINDINGS: &[(&str, &[&str])] = &[
    ("users", &[]),
    ("products", &[]),
    (
        "inventory",
        &[
            "product.created",
            "order.created",
            "stock.release_requested",
            "order.confirmed",
        ],
    ),
    (
        "orders",
        &[
            "stock.reserved",
            "stock.rejected",
            "stock.released",
            "payment.succeeded",
            "payment.failed",
            "payment.refunded",
        ],
    ),
    (
        "payments",
        &["payment.requested", "payment.refund_requested"],
    ),
    (
        "notifications",
        &["order.confirmed", "order.cancelled", "user.registered"],
    ),
];

/// The services that consume events (and so have a queue).
pub fn consuming_services() -> impl Iterator<Item = &'static str> {
    BINDINGS
        .iter()
        .filter(|(_, types)| !types.is_empty())
        .map(|(q, _)| *q)
}

/// Event types this service's queue is bound to.
pub fn bindings_of(service: &str) -> &'static [&'static str] {
    BINDINGS
        .iter()
        .find(|(q, _)| *q == service)
        .map(|(_, t)| *t)
        .unwrap_or(&[])
}

/// Whether some queue receives this event type: publishing one that nobody consumes is a
/// fact for future subscribers, not an error, so only these are published `mandatory`.
pub fn has_consumers(event_type: &str) -> bool {
    BINDINGS
        .iter()
        .any(|(_, types)| types.contains(&event_type))
}

/// Names of exchanges and queues, with the configured namespace.
#[derive(Clone, Debug)]
pub struct Names {
    pub namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Names {
            namespace: namespace.to_string(),
        }
    }
    /// The durable topic exchange every event is published to.
    pub fn exchange(&self) -> String {
        format!("{}shop.events", self.namespace)
    }
    pub fn queue(&self, service: &str) -> String {
        format!("{}{}", self.namespace, service)
    }
    pub fn dead_letter_queue(&self, service: &str) -> String {
        format!("{}{}.dlq", self.namespace, service)
    }
    pub fn retry_queue(&self, service: &str, attempt: usize) -> String {
        format!("{}{}.retry.{}", self.namespace, service, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ALL_TYPES;

    #[test]
    fn every_bound_type_is_in_the_catalogue() {
        for (_, types) in BINDINGS {
            for t in *types {
                assert!(ALL_TYPES.contains(t), "{t}");
            }
        }
    }

    #[test]
    fn saga_events_have_consumers() {
        for t in [
            "order.created",
            "stock.reserved",
            "payment.requested",
            "payment.refund_requested",
        ] {
            assert!(has_consumers(t));
        }
        assert!(!has_consumers("notification.sent"));
    }
}
