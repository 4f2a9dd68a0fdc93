//! The broker's reference figure for `scripts/bench`: persistent 500-byte messages published
//! with publisher confirms to a durable queue and consumed with manual acks at prefetch 100,
//! at the same time; prints messages per second (first publish to last ack).
//!
//! `cargo run --release --example broker_bench -p shop-platform [-- MESSAGES]`; the broker is
//! SHOP_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f). The queue is its own and is
//! deleted afterwards.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{FieldTable, ShortString},
};

const PREFETCH: u16 = 100;
/// Publishes awaiting their confirm at most (a pipelined publisher, like the outbox relay).
const WINDOW: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("MESSAGES must be a number")?
        .unwrap_or(20_000);
    let url = std::env::var("SHOP_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = format!("bench.broker.{}", uuid::Uuid::new_v4().simple());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let setup = conn.create_channel().await?;
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let result = tokio::time::timeout(DEADLINE, measure(&conn, &queue, messages)).await;
    let _ = setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    let (published_in, total) = result.context("the benchmark took too long")??;
    println!(
        "broker: {messages} persistent 500-byte messages, confirms + manual acks, prefetch {PREFETCH}: \
         {:.0} msg/s end to end (publishing with confirms alone {:.0} msg/s)",
        messages as f64 / total.as_secs_f64(),
        messages as f64 / published_in.as_secs_f64(),
    );
    Ok(())
}

/// Publishes and consumes `messages` at once; returns the time to the last confirm and to
/// the last ack.
async fn measure(
    conn: &Connection,
    queue: &str,
    messages: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let start = Instant::now();
    let consumer_task = tokio::spawn(async move {
        let mut n = 0;
        while n < messages {
            match consumer.next().await {
                Some(Ok(d)) => {
                    d.acker.ack(BasicAckOptions::default()).await?;
                    n += 1;
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => anyhow::bail!("the consumer was cancelled"),
            }
        }
        Ok(start.elapsed())
    });

    let body = vec![b'x'; 500];
    let (tx, mut rx) = tokio::sync::mpsc::channel(WINDOW);
    let confirms = tokio::spawn(async move {
        while let Some(confirm) = rx.recv().await {
            let confirm: lapin::PublisherConfirm = confirm;
            match confirm.await? {
                Confirmation::Ack(_) => {}
                other => anyhow::bail!("publish not confirmed: {other:?}"),
            }
        }
        Ok(start.elapsed())
    });
    for _ in 0..messages {
        let confirm = publish
            .basic_publish(
                ShortString::from(""),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        if tx.send(confirm).await.is_err() {
            break;
        }
    }
    drop(tx);
    let published_in = confirms.await??;
    let total = consumer_task.await??;
    Ok((published_in, total))
}
