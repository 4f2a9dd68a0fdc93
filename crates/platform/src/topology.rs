//! The RabbitMQ topology of the whole shop: which service queue receives which event types.
//!
//! Every program declares all of it at start-up (idempotently), so an event published before
//! its consumer ever ran is still routed to that consumer's durable queue, never lost.
//! See docs/architecture.md, "RabbitMQ topology".

use std::sync::Arc;

use sqlx::migrate::Migrator;

/// Who a program is, as the rest of the shop needs to know it. Each program declares its
/// own once, next to its code (`IDENTITY` in its crate's `program.rs`), and the `shop` crate
/// lists every program once; the bindings below, the services the gateway forwards to, the
/// queues `shop audit` and `shop dlq` read and the tests' clusters all derive from that list.
#[derive(Debug)]
pub struct Identity {
    /// The `shop run` argument, the program's PostgreSQL schema and its queue's name.
    pub name: &'static str,
    /// The port it listens on unless `SHOP_<NAME>_PORT` says otherwise.
    pub default_port: u16,
    /// Its schema's migrations (embedded at build time), if it owns a schema.
    pub migrations: Option<&'static Migrator>,
    /// Event types its queue is bound to, as the catalogue's constants (`OrderCreated::TYPE`);
    /// none: it has no queue.
    pub consumes: &'static [&'static str],
    /// Event types it publishes (through its outbox).
    pub publishes: &'static [&'static str],
    /// Whether it owns a PostgreSQL schema (and so an outbox and an inbox).
    pub uses_database: bool,
    /// Whether it talks to RabbitMQ.
    pub uses_broker: bool,
    /// Whether it uses the cache Redis.
    pub uses_cache: bool,
    /// The routes its router serves and who may call each: a service's `http::routes()`
    /// table, the very one its router is built from.
    pub routes: fn() -> Vec<crate::http::RouteInfo>,
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Identity {
    /// A service on `default_port` with its own schema (`migrations`) and broker connection,
    /// whose queue receives `consumes` and whose outbox publishes `publishes`.
    pub const fn service(
        name: &'static str,
        default_port: u16,
        migrations: &'static Migrator,
        consumes: &'static [&'static str],
        publishes: &'static [&'static str],
    ) -> Identity {
        Identity {
            name,
            default_port,
            migrations: Some(migrations),
            consumes,
            publishes,
            uses_database: true,
            uses_broker: true,
            uses_cache: false,
            routes: Vec::new,
        }
    }
}

/// The whole shop's topology: which service queue receives which event types, derived from
/// every program's [`Identity`].
#[derive(Clone, Debug)]
pub struct Topology {
    programs: Arc<[&'static Identity]>,
}

impl Topology {
    pub fn new(programs: impl IntoIterator<Item = &'static Identity>) -> Self {
        Topology {
            programs: programs.into_iter().collect(),
        }
    }

    /// Every program, in the order given.
    pub fn programs(&self) -> impl Iterator<Item = &'static Identity> + '_ {
        self.programs.iter().copied()
    }

    /// The services that consume events (and so have a queue).
    pub fn consuming_services(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.programs()
            .filter(|p| !p.consumes.is_empty())
            .map(|p| p.name)
    }

    /// Event types this service's queue is bound to.
    pub fn bindings_of(&self, service: &str) -> &'static [&'static str] {
        self.programs()
            .find(|p| p.name == service)
            .map(|p| p.consumes)
            .unwrap_or(&[])
    }

    /// Whether some queue receives this event type: publishing one that nobody consumes is a
    /// fact for future subscribers, not an error, so only these are published `mandatory`.
    pub fn has_consumers(&self, event_type: &str) -> bool {
        self.programs().any(|p| p.consumes.contains(&event_type))
    }
}

/// Names of exchanges and queues: `<namespace>.<name>`, or the bare name without one.
#[derive(Clone, Debug)]
pub struct Names {
    /// The namespace and its separator (empty without a namespace).
    prefix: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Names {
            prefix: if namespace.is_empty() {
                String::new()
            } else {
                format!("{namespace}.")
            },
        }
    }
    /// The durable topic exchange every event is published to.
    pub fn exchange(&self) -> String {
        format!("{}shop.events", self.prefix)
    }
    pub fn queue(&self, service: &str) -> String {
        format!("{}{service}", self.prefix)
    }
    pub fn dead_letter_queue(&self, service: &str) -> String {
        format!("{}{service}.dlq", self.prefix)
    }
    pub fn retry_queue(&self, service: &str, attempt: usize) -> String {
        format!("{}{service}.retry.{attempt}", self.prefix)
    }
    /// The name RabbitMQ shows for a program's connection.
    pub fn connection(&self, program: &str) -> String {
        format!("shop-{}{program}", self.prefix)
    }
    /// A program's own RabbitMQ user, when it has one (`SHOP_AMQP_PASSWORDS`).
    pub fn user(&self, program: &str) -> String {
        format!("shop-{}{program}", self.prefix)
    }
    /// What `program`'s own user may do, as RabbitMQ's (configure, write, read) patterns:
    /// declare, bind and consume its own queues (work, retry, dead letters) and publish to
    /// the events exchange; publishing a retry or a dead letter goes through the default
    /// exchange.
    pub fn permissions(&self, program: &str) -> [String; 3] {
        let esc = |s: &str| s.replace('.', "\\.");
        let exchange = esc(&self.exchange());
        let queue = esc(&self.queue(program));
        let own = format!("^({exchange}|{queue}|{queue}\\.dlq|{queue}\\.retry\\.[0-9]+)$");
        let write =
            format!("^(amq\\.default|{exchange}|{queue}|{queue}\\.dlq|{queue}\\.retry\\.[0-9]+)$");
        [own.clone(), write, own]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Event as _;
    use crate::events::{OrderCreated, ProductCreated, StockReserved};

    static NONE: Migrator = Migrator::DEFAULT;
    static A: Identity = Identity::service(
        "a",
        1,
        &NONE,
        &[OrderCreated::TYPE, ProductCreated::TYPE],
        &[],
    );
    static B: Identity = Identity::service("b", 2, &NONE, &[StockReserved::TYPE], &[]);
    static C: Identity = Identity::service("c", 3, &NONE, &[], &[]);

    #[test]
    fn names_are_separated_from_their_namespace() {
        let n = Names::new("rt");
        assert_eq!(n.exchange(), "rt.shop.events");
        assert_eq!(n.queue("orders"), "rt.orders");
        assert_eq!(n.dead_letter_queue("orders"), "rt.orders.dlq");
        assert_eq!(n.retry_queue("orders", 2), "rt.orders.retry.2");
        assert_eq!(n.connection("orders"), "shop-rt.orders");
        let bare = Names::new("");
        assert_eq!(bare.queue("orders"), "orders");
        assert_eq!(bare.exchange(), "shop.events");
    }

    #[test]
    fn bindings_come_from_the_identities() {
        let t = Topology::new([&A, &B, &C]);
        assert_eq!(t.consuming_services().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(t.bindings_of("b"), [StockReserved::TYPE]);
        assert!(t.bindings_of("c").is_empty());
        assert!(t.bindings_of("unknown").is_empty());
        assert!(t.has_consumers("order.created"));
        assert!(!t.has_consumers("notification.sent"));
    }
}
