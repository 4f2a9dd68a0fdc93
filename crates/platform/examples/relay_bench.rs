//! Measures the outbox relay against the real PostgreSQL and RabbitMQ:
//! - throughput: 20,000 events committed at once, published with confirms;
//! - latency: single events committed one at a time, from commit to the broker's confirm
//!   (as recorded by `sent_at - created_at`).
//!
//! `cargo run --release -p shop-platform --example relay_bench`
//! Uses its own database and namespace and removes them afterwards.

use std::{sync::Arc, time::Instant};

use shop_platform::{
    Envelope,
    events::PaymentRequested,
    outbox::{self, Relay},
    testkit::TestEnv,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event() -> Envelope {
    let id = Uuid::now_v7();
    Envelope::new(
        id,
        &PaymentRequested {
            order_id: id,
            user_id: id,
            amount_cents: 1000,
            currency: "EUR".into(),
            payment_token: "tok".into(),
        },
        id,
        id,
    )
}

/// A service with an outbox and no queue: the relay publishes to nobody's queue.
static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
static SERVICE: shop_platform::topology::Identity =
    shop_platform::topology::Identity::service("payments", 0, &NO_MIGRATIONS, &[], &[]);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = TestEnv::new(&SERVICE, |_| {}).await;
    let broker = env.broker().await;
    let relay = |batch| Relay {
        pool: env.pool.clone(),
        program: "payments",
        publisher: broker.clone(),
        metrics: env.metrics.clone(),
        batch,
        retention_hours: 1,
    };

    // Throughput.
    let n = 20_000;
    let mut tx = env.pool.begin().await?;
    for _ in 0..n {
        outbox::enqueue(&mut tx, &event()).await?;
    }
    tx.commit().await?;
    for batch in [200] {
        let started = Instant::now();
        let published = relay(batch).flush().await?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "relay throughput: {published} events in {secs:.2} s = {:.0} events/s (batch {batch}, confirms, persistent)",
            published as f64 / secs
        );
    }

    // Latency: the relay runs, woken after each commit (as the services' commits wake it);
    // 200 single commits 5 ms apart.
    let stop = CancellationToken::new();
    let r = if std::env::var("MEMBUS").is_ok() {
        Relay {
            publisher: Arc::new(shop_platform::memory::MemoryBus::new()),
            ..relay(200)
        }
    } else {
        relay(200)
    };
    let waker = outbox::Waker::default();
    let task = tokio::spawn(r.run_woken_by(stop.clone(), waker.clone()));
    sqlx::query("DELETE FROM outbox").execute(&env.pool).await?;
    for _ in 0..200 {
        let mut tx = env.pool.begin().await?;
        outbox::enqueue(&mut tx, &event()).await?;
        tx.commit().await?;
        waker.wake();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await; // pacing, not waiting
    }
    let until = Instant::now() + std::time::Duration::from_secs(30);
    while outbox::stats(&env.pool).await?.0 > 0 && Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lat: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM sent_at - created_at)::float8 * 1000 FROM outbox WHERE sent_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await?;
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "relay latency commit -> confirmed: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(0.0),
        lat.len()
    );
    stop.cancel();
    task.await?;
    broker.close().await;
    Ok(())
}
