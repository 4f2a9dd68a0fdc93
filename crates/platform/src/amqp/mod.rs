//! RabbitMQ with lapin: topology, confirmed publishing, consumers with manual acks, retries
//! through delay queues, dead-lettering with a reason, and reconnection. By what it holds:
//! [`connection`] (the self-healing connection and its supervisor), [`publish`] (confirmed
//! publishing), [`declare`] (the topology's queues and bindings, named in
//! [`crate::topology`]), [`consumer`] (the consumer and its message fates) and [`headers`].
//!
//! A [`Broker`] owns one connection and a confirm-mode publishing channel. A supervisor task
//! watches the connection; when it breaks (broker restart, connections closed, network cut)
//! it reconnects with backoff, declares the topology again and hands the new connection to
//! every consumer task, which resumes by itself. While there is no connection, publishing
//! fails fast with [`PublishError::Unavailable`] (the outbox keeps the event) and readiness
//! reports the broker down.
//!
//! Message fate in a consumer, decided only after the handler's transaction:
//! - handled (or a duplicate suppressed by the inbox): acked;
//! - transient failure: a copy goes to `<queue>.retry.<n>` (a queue whose TTL is the n-th
//!   delay and whose dead-letter target is the service queue), then the original is acked;
//! - permanent failure, unparseable body, unknown type or newer version, or attempts used up:
//!   a copy goes to `<queue>.dlq` with `x-shop-reason`, then the original is acked;
//! - if that copy cannot be confirmed, the original is nacked back to the queue: never lost.
//!
//! Messages that outlive the queue TTL are dead-lettered by RabbitMQ itself to the same
//! `<queue>.dlq`, with its `x-death` header saying `expired`.

use std::time::Duration;

use crate::{
    config::{Config, QueueType},
    topology::{Names, Topology},
};

mod connection;
pub mod consumer;
mod declare;
pub mod headers;
mod publish;

pub use connection::Broker;
pub use declare::{declare_topology, depth};
pub use headers::{
    H_ATTEMPTS, H_DEAD_AT, H_LAST_ERROR, H_QUEUE, H_REASON, header_int, header_str, with_headers,
};

/// Broker settings, taken from [`Config`].
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The nodes' URLs (with the program's credentials): one is used at a time.
    pub urls: Vec<String>,
    pub names: Names,
    pub prefetch: u16,
    /// Deliveries per consumer transaction, and transactions at once ([`Config`]'s).
    pub batch: usize,
    pub transactions: usize,
    pub message_ttl_ms: u32,
    pub retry_delays: Vec<Duration>,
    pub queue_type: QueueType,
    /// Shown in RabbitMQ's connection list.
    pub connection_name: String,
    /// Every program's bindings: what to declare, and which event types have consumers.
    pub topology: Topology,
    /// Whether to declare the topology on (re)connect. Tools that only inspect queues
    /// (`shop dlq`, `shop audit`) do not, so their settings cannot clash with the services'.
    pub declare_topology: bool,
    /// Declare only this service's queues (and the exchange): it connects as its own user,
    /// which may not declare others' (`shop migrate` declared them all).
    pub declare_only: Option<String>,
}

impl BrokerConfig {
    pub fn from_config(cfg: &Config, program: &str, topology: Topology) -> Self {
        let names = Names::new(&cfg.namespace);
        let own_user = cfg.amqp_password(program);
        BrokerConfig {
            topology,
            urls: cfg
                .amqp_urls()
                .iter()
                .map(|url| match &own_user {
                    Some(password) => with_credentials(url, &names.user(program), password),
                    None => url.clone(),
                })
                .map(with_heartbeat)
                .collect(),
            declare_only: own_user.map(|_| program.to_string()),
            names,
            prefetch: cfg.prefetch,
            batch: usize::from(cfg.consumer_batch.clamp(1, cfg.prefetch.max(1))),
            transactions: usize::from(cfg.consumer_transactions.max(1)),
            message_ttl_ms: cfg.message_ttl_ms,
            retry_delays: cfg.retry_delays(),
            queue_type: cfg.queue_type,
            connection_name: Names::new(&cfg.namespace).connection(program),
            declare_topology: true,
        }
    }

    /// For `shop migrate`: as `SHOP_AMQP_URL`'s (administrator's) user, declaring everything.
    pub fn for_setup(cfg: &Config, topology: Topology) -> Self {
        BrokerConfig {
            urls: cfg.amqp_urls().into_iter().map(with_heartbeat).collect(),
            declare_only: None,
            ..Self::from_config(cfg, "shop-setup", topology)
        }
    }

    /// For tools that inspect and re-drive messages without declaring anything.
    pub fn for_tools(cfg: &Config, tool: &str, topology: Topology) -> Self {
        BrokerConfig {
            declare_topology: false,
            ..Self::from_config(cfg, tool, topology)
        }
    }
}

/// The AMQP heartbeat Shop asks for unless a URL sets its own (`?heartbeat=`): the broker
/// drops a connection whose client went silent after two of them (20 s) and gives its
/// unacknowledged deliveries to other consumers, instead of after its default 60 s.
const HEARTBEAT_SECS: u16 = 10;

/// `url` with `heartbeat` set, unless it has one.
fn with_heartbeat(url: String) -> String {
    let Ok(mut parsed) = url::Url::parse(&url) else {
        return url;
    };
    if parsed.query_pairs().any(|(k, _)| k == "heartbeat") {
        return url;
    }
    parsed
        .query_pairs_mut()
        .append_pair("heartbeat", &HEARTBEAT_SECS.to_string());
    parsed.to_string()
}

/// `url` with its user and password replaced (percent-encoded as a URL needs).
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.set_username(user).is_err() || parsed.set_password(Some(password)).is_err() {
        return url.to_string();
    }
    parsed.to_string()
}
