//! The messaging guarantees against the real RabbitMQ and PostgreSQL: nothing lost between
//! commit and publish, effects once under redelivery, poison and expired messages
//! dead-lettered with a reason and replayable, retries, reconnection, graceful stop, readiness.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use lapin::{BasicProperties, options::BasicPublishOptions};
use shop_platform::testkit::{Proxy, TestEnv, eventually, eventually_some};
use shop_platform::{
    Envelope, Event as _,
    amqp::Broker,
    bus::{Handler, HandlerError, Publisher},
    dlq,
    events::{PaymentRefundRequested, PaymentRequested},
    outbox::{self, Relay},
    topology::Identity,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The service whose queue (bound to payment.requested) these tests use.
/// These tests migrate nothing: they create the tables their handler needs.
static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
static SERVICE: Identity = Identity::service(
    "payments",
    0,
    &NO_MIGRATIONS,
    &[PaymentRequested::TYPE, PaymentRefundRequested::TYPE],
    &[],
);
const SVC: &str = SERVICE.name;
const WAIT: Duration = Duration::from_secs(15);

/// Records each handled event in a table, and fails or stalls on request.
#[derive(Default)]
struct Recorder {
    /// Transient failures still to produce, per event id.
    fail_transient: Mutex<HashMap<Uuid, usize>>,
    /// "Database unavailable" failures still to produce, per event id.
    fail_unavailable: Mutex<HashMap<Uuid, usize>>,
    /// Events that fail permanently while set.
    fail_permanent: Mutex<Vec<Uuid>>,
    /// Events whose handler panics.
    panic_on: Mutex<Vec<Uuid>>,
    delay: Mutex<Duration>,
    started: AtomicUsize,
    finished: AtomicBool,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.panic_on.lock().unwrap().contains(&event.id) {
            panic!("boom");
        }
        if let Some(n) = self.fail_transient.lock().unwrap().get_mut(&event.id)
            && *n > 0
        {
            *n -= 1;
            return Err(HandlerError::Transient(anyhow::anyhow!("database hiccup")));
        }
        if let Some(n) = self.fail_unavailable.lock().unwrap().get_mut(&event.id)
            && *n > 0
        {
            *n -= 1;
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        if self.fail_permanent.lock().unwrap().contains(&event.id) {
            return Err(HandlerError::Permanent("amount is negative".into()));
        }
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await; // simulated slow work inside the handler
        }
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(event.id)
            .execute(&mut *tx)
            .await?;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

async fn effects_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS effects (id BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn effects(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn event() -> Envelope {
    let order = Uuid::now_v7();
    Envelope::new(
        order,
        &PaymentRequested {
            order_id: order,
            user_id: Uuid::now_v7(),
            amount_cents: 1299,
            currency: "EUR".into(),
            payment_token: "tok_ok".into(),
        },
        order,
        order,
    )
}

struct Harness {
    env: TestEnv,
    broker: Arc<Broker>,
    handler: Arc<Recorder>,
    stop: CancellationToken,
    consumer: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn new(tweak: impl FnOnce(&mut shop_platform::config::Config)) -> Harness {
        let env = TestEnv::new(&SERVICE, tweak).await;
        effects_table(&env.pool).await;
        let broker = env.broker().await;
        Harness {
            env,
            broker,
            handler: Arc::new(Recorder::default()),
            stop: CancellationToken::new(),
            consumer: None,
        }
    }

    fn start_consumer(&mut self) {
        self.consumer = Some(self.broker.consume(
            SVC,
            self.env.pool.clone(),
            self.handler.clone(),
            self.stop.clone(),
        ));
    }

    fn relay(&self) -> Relay {
        Relay {
            pool: self.env.pool.clone(),
            program: SVC,
            publisher: self.broker.clone(),
            metrics: self.env.metrics.clone(),
            batch: 100,
            retention_hours: 1,
        }
    }

    async fn dead_letters(&self) -> Vec<dlq::DeadLetter> {
        dlq::list(&self.broker, Some(SVC)).await.unwrap()
    }

    async fn queue_depth(&self) -> u32 {
        let ch = self.broker.channel().await.unwrap();
        let queue = self.broker.names().queue(SVC);
        shop_platform::amqp::depth(&ch, queue.as_str())
            .await
            .unwrap()
    }

    async fn publish_raw(&self, body: &[u8], routing_key: &str) {
        let ch = self.broker.channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        ch.basic_publish(
            self.broker.names().exchange().as_str().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_message_id("poison-1".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(c) = self.consumer.take() {
            c.await.unwrap();
        }
        self.broker.close().await;
    }
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_published_once_after_restart() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    // The service committed its business row and its event, then "crashed" before any relay ran.
    let e = event();
    let mut tx = h.env.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &e).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        outbox::stats(&h.env.pool).await.unwrap().0,
        1,
        "the event waits in the outbox"
    );

    // After the restart the relay publishes it.
    let stop = CancellationToken::new();
    let relay = tokio::spawn(h.relay().run(stop.clone()));
    let pool = h.env.pool.clone();
    eventually("the event is handled", WAIT, || async {
        effects(&pool, e.id).await == 1
    })
    .await;
    eventually("the outbox is drained", WAIT, || async {
        outbox::stats(&pool).await.unwrap().0 == 0
    })
    .await;

    // A relay that crashed after publishing but before marking the row sent publishes it again:
    // the consumer's inbox absorbs the copy.
    h.broker.publish(&e).await.unwrap();
    let m = h.env.metrics.clone();
    eventually("the copy is seen as a duplicate", WAIT, || async {
        m.duplicates
            .get_or_create(&shop_platform::metrics::Metrics::label("payment.requested"))
            .get()
            == 1
    })
    .await;
    assert_eq!(effects(&pool, e.id).await, 1, "effects exactly once");
    stop.cancel();
    relay.await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn the_relay_publishes_in_commit_order_and_backs_off_while_the_broker_is_away() {
    let h = Harness::new(|_| {}).await;
    let bus = shop_platform::memory::MemoryBus::new();
    bus.fail_next(3); // the broker is away for the first attempts
    let relay = Relay {
        publisher: Arc::new(bus.clone()),
        ..h.relay()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    let events: Vec<Envelope> = (0..5).map(|_| event()).collect();
    let mut tx = h.env.pool.begin().await.unwrap();
    for e in &events {
        outbox::enqueue(&mut tx, e).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert!(bus.wait_for(5, WAIT).await, "published after the outage");
    let ids: Vec<Uuid> = bus.published().iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        events.iter().map(|e| e.id).collect::<Vec<_>>(),
        "in commit order, each once"
    );
    stop.cancel();
    task.await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn the_same_message_delivered_twice_has_its_effects_once() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    let e = event();
    h.broker.publish(&e).await.unwrap();
    h.broker.publish(&e).await.unwrap();
    let m = h.env.metrics.clone();
    let label = shop_platform::metrics::Metrics::label("payment.requested");
    eventually("both deliveries are processed", WAIT, || async {
        m.consumed.get_or_create(&label).get() + m.duplicates.get_or_create(&label).get() == 2
    })
    .await;
    assert_eq!(effects(&h.env.pool, e.id).await, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_a_reason_while_others_flow_and_can_be_replayed() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    // Unparseable, a newer envelope version, and a handler that rejects the payload.
    h.publish_raw(b"{not json", "payment.requested").await;
    let mut newer = event();
    newer.version = 2;
    h.broker.publish(&newer).await.unwrap();
    let rejected = event();
    h.handler.fail_permanent.lock().unwrap().push(rejected.id);
    h.broker.publish(&rejected).await.unwrap();
    let good = event();
    h.broker.publish(&good).await.unwrap();

    let pool = h.env.pool.clone();
    eventually("the good message is handled", WAIT, || async {
        effects(&pool, good.id).await == 1
    })
    .await;
    let letters = eventually_some("three dead letters", WAIT, || async {
        Some(h.dead_letters().await).filter(|l| l.len() == 3)
    })
    .await;
    let reason_of = |id: &str| {
        letters
            .iter()
            .find(|l| l.message_id == id)
            .map(|l| l.reason.clone())
            .unwrap()
    };
    assert!(
        reason_of("poison-1").contains("malformed envelope"),
        "{}",
        reason_of("poison-1")
    );
    assert!(reason_of(&newer.id.to_string()).contains("unsupported envelope version 2"));
    assert!(reason_of(&rejected.id.to_string()).contains("amount is negative"));
    assert!(
        letters
            .iter()
            .all(|l| l.first_death_at.is_some() && l.source_queue == h.broker.names().queue(SVC))
    );

    // Listing leaves them in place; once the cause is fixed, a replay re-drives one.
    assert_eq!(h.dead_letters().await.len(), 3);
    h.handler.fail_permanent.lock().unwrap().clear();
    let n = dlq::replay(&h.broker, SVC, Some(&rejected.id.to_string()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    eventually("the replayed message is handled", WAIT, || async {
        effects(&pool, rejected.id).await == 1
    })
    .await;
    assert_eq!(h.dead_letters().await.len(), 2, "the other two stay parked");
    h.shutdown().await;
}

/// Deliveries handled per transaction so far: (transactions, deliveries).
fn batches(h: &Harness) -> (f64, f64) {
    use shop_platform::metrics::sample_sum;
    let text = h.env.metrics.render();
    (
        sample_sum(&text, "shop_consumer_batch_size_count", &[]),
        sample_sum(&text, "shop_consumer_batch_size_sum", &[]),
    )
}

#[tokio::test]
async fn deliveries_that_wait_together_are_handled_in_shared_transactions_and_all_acked() {
    let mut h = Harness::new(|_| {}).await;
    // All waiting before the consumer starts: they arrive together.
    let events: Vec<Envelope> = (0..40).map(|_| event()).collect();
    for e in &events {
        h.broker.publish(e).await.unwrap();
    }
    eventually("all forty are queued", WAIT, || async {
        h.queue_depth().await == 40
    })
    .await;
    h.start_consumer();
    let pool = h.env.pool.clone();
    eventually("every one is handled", WAIT, || async {
        let done: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM effects")
            .fetch_one(&pool)
            .await
            .unwrap();
        done == 40
    })
    .await;
    for e in &events {
        assert_eq!(effects(&pool, e.id).await, 1, "{} once", e.id);
    }
    let (transactions, handled) = batches(&h);
    assert_eq!(handled, 40.0);
    assert!(
        transactions < 40.0,
        "some shared a transaction: {transactions} transactions for 40"
    );
    // Acked (together): nothing held, nothing left in the queue, nothing redelivered.
    let m = h.env.metrics.clone();
    eventually("every delivery is acked", WAIT, || async {
        m.in_flight.get() == 0
    })
    .await;
    assert_eq!(h.queue_depth().await, 0);
    let label = shop_platform::metrics::Metrics::label("payment.requested");
    assert_eq!(m.duplicates.get_or_create(&label).get(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_poison_message_or_a_failing_handler_in_a_batch_costs_its_neighbours_nothing() {
    let mut h = Harness::new(|_| {}).await;
    let before: Vec<Envelope> = (0..10).map(|_| event()).collect();
    let after: Vec<Envelope> = (0..10).map(|_| event()).collect();
    let flaky = event();
    let rejected = event();
    h.handler.fail_transient.lock().unwrap().insert(flaky.id, 1);
    h.handler.fail_permanent.lock().unwrap().push(rejected.id);
    for e in &before {
        h.broker.publish(e).await.unwrap();
    }
    h.publish_raw(b"{not json", "payment.requested").await;
    h.broker.publish(&flaky).await.unwrap();
    h.broker.publish(&rejected).await.unwrap();
    for e in &after {
        h.broker.publish(e).await.unwrap();
    }
    eventually("all twenty-three are queued", WAIT, || async {
        h.queue_depth().await == 23
    })
    .await;
    h.start_consumer();

    let pool = h.env.pool.clone();
    eventually(
        "the neighbours and the flaky one are handled",
        WAIT,
        || async {
            let mut all = true;
            for e in before.iter().chain(&after).chain([&flaky]) {
                all &= effects(&pool, e.id).await == 1;
            }
            all
        },
    )
    .await;
    let letters = eventually_some("two dead letters", WAIT, || async {
        Some(h.dead_letters().await).filter(|l| l.len() == 2)
    })
    .await;
    let ids: Vec<&str> = letters.iter().map(|l| l.message_id.as_str()).collect();
    assert!(ids.contains(&"poison-1") && ids.contains(&rejected.id.to_string().as_str()));
    let m = &h.env.metrics;
    let label = shop_platform::metrics::Metrics::label("payment.requested");
    // The flaky one fails once: in the batch (which it splits; alone it then succeeds) or,
    // if it came alone, on its own (one retry). No neighbour ever fails.
    assert!(
        m.retried.get_or_create(&label).get() <= 1,
        "only the flaky one may have been retried"
    );
    assert!(
        m.batches_split.get() >= 1,
        "the failing handlers' batch was split, each message on its own"
    );
    assert_eq!(effects(&pool, rejected.id).await, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_does_not_kill_the_consumer() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    let bad = event();
    h.handler.panic_on.lock().unwrap().push(bad.id);
    h.broker.publish(&bad).await.unwrap();
    let good = event();
    h.broker.publish(&good).await.unwrap();
    let pool = h.env.pool.clone();
    eventually("the next message is handled", WAIT, || async {
        effects(&pool, good.id).await == 1
    })
    .await;
    let broker = h.broker.clone();
    eventually(
        "the panicking one is parked after its retries",
        WAIT,
        || async {
            dlq::list(&broker, Some(SVC))
                .await
                .unwrap()
                .iter()
                .any(|l| l.reason.contains("handler panicked"))
        },
    )
    .await;
    h.shutdown().await;
}

/// A handler that panics once after its transaction committed (in `committed`, outside the
/// handler's own panic guard).
#[derive(Default)]
struct PanicsAfterCommit {
    inner: Recorder,
    panicked: AtomicBool,
}

#[async_trait]
impl Handler for PanicsAfterCommit {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        self.inner.handle(event, tx).await
    }

    fn committed(&self, _event: &Envelope) {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("boom after the commit");
        }
    }
}

#[tokio::test]
async fn a_panic_after_the_commit_returns_the_message_which_changes_nothing_twice() {
    let h = Harness::new(|_| {}).await;
    let handler = Arc::new(PanicsAfterCommit::default());
    let consumer = h
        .broker
        .consume(SVC, h.env.pool.clone(), handler.clone(), h.stop.clone());
    let e = event();
    h.broker.publish(&e).await.unwrap();
    // Not left unacked: redelivered, recognised by the inbox, acked.
    let m = h.env.metrics.clone();
    let label = shop_platform::metrics::Metrics::label("payment.requested");
    eventually("the message comes back and is suppressed", WAIT, || async {
        m.duplicates.get_or_create(&label).get() == 1
    })
    .await;
    assert!(handler.panicked.load(Ordering::SeqCst));
    assert_eq!(effects(&h.env.pool, e.id).await, 1);
    assert!(h.dead_letters().await.is_empty());
    h.stop.cancel();
    consumer.await.unwrap();
    h.broker.close().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_delays_then_succeeds() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    let e = event();
    h.handler.fail_transient.lock().unwrap().insert(e.id, 2);
    h.broker.publish(&e).await.unwrap();
    let pool = h.env.pool.clone();
    eventually("handled on the third attempt", WAIT, || async {
        effects(&pool, e.id).await == 1
    })
    .await;
    assert_eq!(h.handler.started.load(Ordering::SeqCst), 3);
    assert_eq!(
        h.env
            .metrics
            .retried
            .get_or_create(&shop_platform::metrics::Metrics::label("payment.requested"))
            .get(),
        2
    );
    assert!(h.dead_letters().await.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_with_its_last_error() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    let e = event();
    h.handler
        .fail_transient
        .lock()
        .unwrap()
        .insert(e.id, usize::MAX);
    h.broker.publish(&e).await.unwrap();
    let broker = h.broker.clone();
    eventually("dead-lettered after all attempts", WAIT, || async {
        dlq::list(&broker, Some(SVC)).await.unwrap().len() == 1
    })
    .await;
    let letter = &h.dead_letters().await[0];
    assert_eq!(letter.attempts, 3, "first attempt + two retries");
    assert!(
        letter.reason.contains("failed after 3 attempts")
            && letter.reason.contains("database hiccup"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.event_type, "payment.requested");
    h.shutdown().await;
}

/// A database outage longer than every retry delay: the message waits it out, using none of
/// its attempts, and is handled once the database is back instead of being dead-lettered.
#[tokio::test]
async fn a_database_outage_postpones_without_using_up_attempts() {
    let mut h = Harness::new(|_| {}).await;
    h.start_consumer();
    let e = event();
    // Two retries are configured (three attempts); the database is away for five.
    h.handler.fail_unavailable.lock().unwrap().insert(e.id, 5);
    h.broker.publish(&e).await.unwrap();
    let pool = h.env.pool.clone();
    eventually("handled once the database is back", WAIT, || async {
        effects(&pool, e.id).await == 1
    })
    .await;
    let label = shop_platform::metrics::Metrics::label("payment.requested");
    assert_eq!(h.env.metrics.postponed.get_or_create(&label).get(), 5);
    assert_eq!(h.env.metrics.retried.get_or_create(&label).get(), 0);
    assert!(h.dead_letters().await.is_empty());
    h.shutdown().await;
}

/// A delivery counts as in flight from its receipt until its ack, so the audit can tell a
/// consumer that holds a message unacknowledged.
#[tokio::test]
async fn a_delivery_is_in_flight_until_acked() {
    let mut h = Harness::new(|_| {}).await;
    *h.handler.delay.lock().unwrap() = Duration::from_millis(1500);
    h.start_consumer();
    let e = event();
    h.broker.publish(&e).await.unwrap();
    let handler = h.handler.clone();
    eventually("the handler has started", WAIT, || async {
        handler.started.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(h.env.metrics.in_flight.get(), 1, "held while handled");
    let pool = h.env.pool.clone();
    eventually("handled", WAIT, || async {
        effects(&pool, e.id).await == 1
    })
    .await;
    let metrics = h.env.metrics.clone();
    eventually("no longer in flight once acked", WAIT, || async {
        metrics.in_flight.get() == 0
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn an_expired_message_is_dead_lettered_not_dropped() {
    let h = Harness::new(|c| c.message_ttl_ms = 200).await;
    // No consumer is running: the message outlives its TTL.
    let e = event();
    h.broker.publish(&e).await.unwrap();
    let broker = h.broker.clone();
    eventually(
        "the expired message is in the dead-letter queue",
        WAIT,
        || async { dlq::list(&broker, Some(SVC)).await.unwrap().len() == 1 },
    )
    .await;
    let letter = &h.dead_letters().await[0];
    assert_eq!(letter.message_id, e.id.to_string());
    assert!(letter.reason.starts_with("expired"), "{}", letter.reason);
    assert!(letter.first_death_at.is_some());
    h.shutdown().await;
}

#[tokio::test]
async fn publishing_and_consuming_resume_after_the_connections_drop() {
    let upstream = "127.0.0.1:5672";
    let proxy = Proxy::start(upstream).await;
    let mut h =
        Harness::new(|c| c.amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port))
            .await;
    h.start_consumer();
    let first = event();
    h.broker.publish(&first).await.unwrap();
    let pool = h.env.pool.clone();
    eventually("handled before the cut", WAIT, || async {
        effects(&pool, first.id).await == 1
    })
    .await;

    // Every connection of this test is closed under the clients' feet, and new ones are refused
    // for a while.
    proxy.refuse(true);
    proxy.cut();
    let broker = h.broker.clone();
    eventually("the loss is noticed", WAIT, || async {
        !broker.is_connected()
    })
    .await;
    assert!(
        h.broker.publish(&event()).await.is_err(),
        "publishing fails fast while away"
    );
    proxy.refuse(false);
    assert!(h.broker.wait_connected(WAIT).await, "reconnected by itself");

    let second = event();
    h.broker.publish(&second).await.unwrap();
    eventually("the consumer resumed by itself", WAIT, || async {
        effects(&pool, second.id).await == 1
    })
    .await;
    h.shutdown().await;
}

/// With quorum queues (work, retry and dead-letter queues alike) the same rules hold: a
/// transient failure is retried through the delay queues (their TTL dead-letters back into
/// the work queue), one that keeps failing is dead-lettered after every attempt with its last
/// error, a poison message at once, and a replay re-drives it.
#[tokio::test]
async fn quorum_queues_retry_and_dead_letter_as_classic_ones_do() {
    let mut h = Harness::new(|c| c.queue_type = shop_platform::config::QueueType::Quorum).await;
    h.start_consumer();
    let retried = event();
    h.handler
        .fail_transient
        .lock()
        .unwrap()
        .insert(retried.id, 2);
    let doomed = event();
    h.handler
        .fail_transient
        .lock()
        .unwrap()
        .insert(doomed.id, usize::MAX);
    h.publish_raw(b"{not json", "payment.requested").await;
    h.broker.publish(&retried).await.unwrap();
    h.broker.publish(&doomed).await.unwrap();
    let pool = h.env.pool.clone();
    eventually("handled on its third attempt", WAIT, || async {
        effects(&pool, retried.id).await == 1
    })
    .await;
    let letters = eventually_some("two dead letters", WAIT, || async {
        Some(h.dead_letters().await).filter(|l| l.len() == 2)
    })
    .await;
    let doomed_letter = letters
        .iter()
        .find(|l| l.message_id == doomed.id.to_string())
        .expect("the failing one");
    assert_eq!(doomed_letter.attempts, 3, "first attempt + two retries");
    assert!(
        doomed_letter.reason.contains("database hiccup"),
        "{}",
        doomed_letter.reason
    );
    let poison = letters.iter().find(|l| l.message_id == "poison-1").unwrap();
    assert!(
        poison.reason.contains("malformed envelope"),
        "{}",
        poison.reason
    );
    // The queues really are quorum queues (as the broker lists them).
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type"])
        .output()
        .expect("rabbitmqctl lists the broker's queues");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let names = h.broker.names();
    for queue in [
        names.queue(SVC),
        names.dead_letter_queue(SVC),
        names.retry_queue(SVC, 1),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "quorum"]),
            "{queue} is not a quorum queue:\n{listed}"
        );
    }

    // Fixed, the failing one is replayed and handled once.
    h.handler.fail_transient.lock().unwrap().clear();
    let n = dlq::replay(&h.broker, SVC, Some(&doomed.id.to_string()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    eventually("the replayed message is handled", WAIT, || async {
        effects(&pool, doomed.id).await == 1
    })
    .await;
    h.shutdown().await;
}

/// Two "nodes" (proxies to the one broker of this machine: what matters here is the client):
/// a program starts on whichever node answers, and when its node is lost it moves to the
/// other, publishing and consuming as before.
#[tokio::test]
async fn a_program_moves_to_another_node_when_its_node_is_lost() {
    let upstream = "127.0.0.1:5672";
    let (a, b) = (Proxy::start(upstream).await, Proxy::start(upstream).await);
    let url = |p: &Proxy| format!("amqp://guest:guest@127.0.0.1:{}/%2f", p.port);
    // Node a is down at start-up: the program connects to b.
    a.refuse(true);
    let urls = format!("{},{}", url(&a), url(&b));
    let mut h = Harness::new(|c| c.amqp_url = urls).await;
    h.start_consumer();
    let pool = h.env.pool.clone();
    let first = event();
    h.broker.publish(&first).await.unwrap();
    eventually("handled through node b", WAIT, || async {
        effects(&pool, first.id).await == 1
    })
    .await;

    // Node a is back, node b dies: the program reconnects to a by itself.
    a.refuse(false);
    b.refuse(true);
    b.cut();
    let broker = h.broker.clone();
    eventually("the loss of b is noticed", WAIT, || async {
        !broker.is_connected()
    })
    .await;
    assert!(h.broker.wait_connected(WAIT).await, "reconnected to node a");
    let second = event();
    h.broker.publish(&second).await.unwrap();
    eventually("handled through node a", WAIT, || async {
        effects(&pool, second.id).await == 1
    })
    .await;
    h.shutdown().await;
}

/// A link that silently drops everything (packets lost, connections left open): the
/// supervisor's round trip notices within 15 s (readiness turns 503, publishing fails fast
/// instead of hanging), and once the link heals everything resumes.
#[tokio::test]
async fn a_silent_broker_link_is_noticed_within_15_s_and_recovers() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let mut h = Harness::new(|c| c.amqp_url = url).await;
    h.start_consumer();
    assert!(h.broker.wait_connected(WAIT).await);
    let started = std::time::Instant::now();
    proxy.blackhole(true);
    let broker = h.broker.clone();
    eventually(
        "the silent link is noticed",
        Duration::from_secs(15),
        || async { !broker.is_connected() },
    )
    .await;
    println!(
        "a blackholed broker link noticed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        h.broker.publish(&event()).await.is_err(),
        "publishing fails fast while away"
    );
    proxy.blackhole(false);
    assert!(
        h.broker.wait_connected(WAIT).await,
        "reconnected once healed"
    );
    let healed = std::time::Instant::now();
    let e = event();
    h.broker.publish(&e).await.unwrap();
    let pool = h.env.pool.clone();
    // The broker may still hand a delivery to the old, abandoned connection until it drops
    // it for missing heartbeats (20 s): delayed, then redelivered, never lost.
    eventually(
        "handled after the heal",
        Duration::from_secs(60),
        || async { effects(&pool, e.id).await == 1 },
    )
    .await;
    println!(
        "handled {:.1} s after the heal",
        healed.elapsed().as_secs_f64()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn no_node_answering_is_one_error_naming_each() {
    let (a, b) = (
        Proxy::start("127.0.0.1:5672").await,
        Proxy::start("127.0.0.1:5672").await,
    );
    a.refuse(true);
    b.refuse(true);
    let mut config = shop_platform::config::Config::defaults();
    config.amqp_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f,amqp://guest:guest@127.0.0.1:{}/%2f",
        a.port, b.port
    );
    let cfg = shop_platform::amqp::BrokerConfig::for_tools(
        &config,
        "test",
        shop_platform::topology::Topology::new(std::iter::empty()),
    );
    let err =
        match Broker::connect(cfg, Arc::new(shop_platform::metrics::Metrics::new("test"))).await {
            Ok(_) => panic!("connected to a refusing node"),
            Err(e) => format!("{e:#}"),
        };
    assert!(
        err.starts_with("cannot connect to any RabbitMQ node"),
        "{err}"
    );
    for p in [&a, &b] {
        assert!(err.contains(&format!("127.0.0.1:{}", p.port)), "{err}");
    }
    assert!(
        !err.contains("guest:guest"),
        "credentials are redacted: {err}"
    );
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_message_in_flight() {
    let mut h = Harness::new(|_| {}).await;
    *h.handler.delay.lock().unwrap() = Duration::from_millis(700);
    h.start_consumer();
    let e = event();
    h.broker.publish(&e).await.unwrap();
    let handler = h.handler.clone();
    eventually("the handler started", WAIT, || async {
        handler.started.load(Ordering::SeqCst) == 1
    })
    .await;
    // Stop while the handler is still working.
    h.stop.cancel();
    h.consumer.take().unwrap().await.unwrap();
    assert!(h.handler.finished.load(Ordering::SeqCst));
    assert_eq!(effects(&h.env.pool, e.id).await, 1, "committed");
    assert_eq!(h.queue_depth().await, 0, "acked, not returned to the queue");
    h.shutdown().await;
}
