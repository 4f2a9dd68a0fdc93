//! PostgreSQL and Redis faults: the database crashed and restarted, a database's connections
//! terminated under the programs, Redis killed and restarted empty (sessions lost: the old
//! token is refused with 401, never a 500; product reads go on throughout).

use std::time::Duration;

use reqwest::StatusCode;
use shop_platform::{Envelope, bus::Publisher as _};
use sqlx::{Connection as _, PgConnection};

use shop_platform::testkit::{eventually, eventually_some};

use crate::harness::{Chaos, Expect};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn postgres_crashed_and_restarted() {
    const NAME: &str = "PostgreSQL stopped -m immediate and restarted";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    c.fault("pg_ctl stop -m immediate");
    c.servers
        .postgres
        .crash()
        .await
        .expect("the private server does as told");
    c.refused_more(
        4,
        Duration::from_secs(30),
        "orders refused while the database is down",
    )
    .await;
    c.servers
        .postgres
        .start()
        .await
        .expect("the private server does as told");
    c.healed("pg_ctl start (crash recovery)");
    c.finish(Expect::normal()).await;
}

/// An outage longer than every retry delay (shortened to 100 ms and 200 ms here): messages
/// handled while the database is away go back to wait without using their attempts, and
/// none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn postgres_down_longer_than_every_retry_delay() {
    const NAME: &str = "PostgreSQL down longer than every retry delay";
    let (_turn, mut c) = Chaos::begin(NAME, &[("SHOP_RETRY_DELAYS_MS", "100,200")]).await;
    c.accepted_more(10, Duration::from_secs(60), "orders before the outage")
        .await;
    // Real saga events to deliver while the database is down, so that consumers certainly
    // have work then (afterwards their inboxes recognise them as duplicates).
    let mut db = PgConnection::connect(&c.cluster.config.database_url)
        .await
        .unwrap();
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM orders.outbox ORDER BY id DESC LIMIT 10")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let _ = db.close().await;
    c.fault("pg_ctl stop -m immediate, longer than every retry delay");
    c.servers
        .postgres
        .crash()
        .await
        .expect("the private server does as told");
    let broker = c.cluster.broker().await;
    for body in &bodies {
        let event: Envelope = serde_json::from_str(body).unwrap();
        broker.publish(&event).await.unwrap();
    }
    let postponed = eventually_some(
        "30 deliveries postponed while the database is away",
        Duration::from_secs(60),
        || async { Some(c.metric_sum("shop_messages_postponed_total").await).filter(|n| *n >= 30) },
    )
    .await;
    c.note(format!(
        "{postponed} deliveries postponed while the database was away"
    ));
    broker.close().await;
    c.servers
        .postgres
        .start()
        .await
        .expect("the private server does as told");
    c.healed("pg_ctl start (crash recovery)");
    c.finish(Expect::normal()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn postgres_connections_terminated() {
    const NAME: &str = "PostgreSQL connections terminated (3 times)";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    c.fault("pg_terminate_backend of every connection to the shop database, three times");
    let url = c.servers.postgres.url();
    for round in 1..=3 {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        let _ = admin.close().await;
        c.note(format!(
            "round {round}: {} connections terminated",
            killed.len()
        ));
        // The programs take orders again before the next round.
        c.accepted_more(
            4,
            Duration::from_secs(60),
            "orders accepted after the connections were terminated",
        )
        .await;
    }
    c.healed("third round done");
    c.finish(Expect::normal()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn redis_killed_and_restarted() {
    const NAME: &str = "Redis killed (kill -9) and restarted empty";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    let old_token = c.shopper_token(0);
    let products = c.catalogue.products.clone();
    for p in &products {
        assert_eq!(
            c.get(&format!("/api/products/{p}"), None).await,
            StatusCode::OK
        );
    }
    assert_eq!(c.get("/api/me", Some(&old_token)).await, StatusCode::OK);

    c.fault("kill -9 of redis-server");
    c.servers.redis.kill();
    // Product reads go on, from PostgreSQL.
    for p in &products {
        assert_eq!(
            c.get(&format!("/api/products/{p}"), None).await,
            StatusCode::OK,
            "a product is read while Redis is down"
        );
    }
    assert_eq!(c.get("/api/products?limit=5", None).await, StatusCode::OK);
    // Sessions cannot be checked: 503, not 500.
    assert_eq!(
        c.get("/api/me", Some(&old_token)).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "an authenticated call while the session store is down"
    );
    c.refused_more(
        4,
        Duration::from_secs(30),
        "orders refused while sessions are unreachable",
    )
    .await;
    c.servers
        .redis
        .start()
        .await
        .expect("the private server does as told");
    c.healed("redis-server started again, empty");

    // The session is gone: the old token gets 401 (after the reconnection, never 500).
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(
        "the old token answered 401",
        Duration::from_secs(30),
        || async {
            let s = c.get("/api/me", Some(&old_token)).await;
            let mut seen = seen.lock().unwrap();
            seen.push(s.as_u16());
            assert!(
                s == StatusCode::UNAUTHORIZED || s == StatusCode::SERVICE_UNAVAILABLE,
                "the old token after Redis lost its sessions: {seen:?}"
            );
            s == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    c.note(format!(
        "old token after the restart: {:?}",
        seen.into_inner().unwrap()
    ));
    for p in &products {
        assert_eq!(
            c.get(&format!("/api/products/{p}"), None).await,
            StatusCode::OK
        );
    }
    // Logging in again works.
    assert_eq!(
        c.post("/api/auth/login", None, c.login_body(1)).await,
        StatusCode::OK
    );
    c.finish(Expect::normal()).await;
}
