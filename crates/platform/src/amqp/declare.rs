//! Declaring the topology: the exchange and, for every consuming service, its queue, its
//! dead-letter queue, its retry delay queues and its bindings (names in
//! [`crate::topology::Names`]).

use anyhow::Context as _;
use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use super::{BrokerConfig, QueueType, headers::long};

fn queue_type_args(cfg: &BrokerConfig) -> FieldTable {
    let mut args = FieldTable::default();
    let kind = match cfg.queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    args
}

/// A queue's arguments: messages live `ttl_ms`, then go (by the default exchange) to `target`.
fn expiring_into(cfg: &BrokerConfig, ttl_ms: u64, target: &str) -> FieldTable {
    let mut args = queue_type_args(cfg);
    args.insert("x-message-ttl".into(), long(ttl_ms));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(target.into()),
    );
    args
}

/// The number of messages ready in `queue`, without declaring it (an error if it does not
/// exist; the channel is then closed by the broker).
pub async fn depth(ch: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(q.message_count())
}

/// Declares the exchange and, for every consuming service, its queue (TTL, dead-letter to its
/// DLQ), its DLQ, its retry delay queues, and its bindings. Idempotent.
pub async fn declare_topology(ch: &Channel, cfg: &BrokerConfig) -> anyhow::Result<()> {
    let names = &cfg.names;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        names.exchange().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .context("declaring the events exchange")?;
    let own = |service: &&str| cfg.declare_only.as_deref().is_none_or(|o| o == *service);
    for service in cfg.topology.consuming_services().filter(own) {
        let queue = names.queue(service);
        let dlq = names.dead_letter_queue(service);
        let args = expiring_into(cfg, u64::from(cfg.message_ttl_ms), dlq.as_str());
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await
            .with_context(|| format!("declaring queue {queue} (if its arguments changed, delete it or keep the old settings)"))?;
        ch.queue_declare(dlq.as_str().into(), durable, queue_type_args(cfg))
            .await
            .with_context(|| format!("declaring queue {dlq}"))?;
        for (i, delay) in cfg.retry_delays.iter().enumerate() {
            let retry = names.retry_queue(service, i + 1);
            let args = expiring_into(cfg, delay.as_millis() as u64, queue.as_str());
            ch.queue_declare(retry.as_str().into(), durable, args)
                .await
                .with_context(|| format!("declaring queue {retry}"))?;
        }
        for event_type in cfg.topology.bindings_of(service) {
            ch.queue_bind(
                queue.as_str().into(),
                names.exchange().into(),
                (*event_type).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    Ok(())
}
