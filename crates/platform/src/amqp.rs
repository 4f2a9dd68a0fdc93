//! RabbitMQ with lapin: topology, confirmed publishing, consumers with manual acks, retries
//! through delay queues, dead-lettering with a reason, and reconnection.
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

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt as _};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event as LapinEvent,
    ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::{
    bus::{Handler, HandlerError, PublishError, Publisher},
    config::{Config, QueueType, redact_url},
    db,
    envelope::Envelope,
    inbox,
    metrics::Metrics,
    topology::{Names, Topology},
};

/// Header: how many times this message has been attempted (1 on first delivery).
pub const H_ATTEMPTS: &str = "x-shop-attempts";
/// Header: why the message is in the dead-letter queue.
pub const H_REASON: &str = "x-shop-reason";
/// Header: the last transient error, on retried messages.
pub const H_LAST_ERROR: &str = "x-shop-last-error";
/// Header: the queue the message was consumed from.
pub const H_QUEUE: &str = "x-shop-queue";
/// Header: when the message was first dead-lettered (unix ms).
pub const H_DEAD_AT: &str = "x-shop-dead-lettered-at";

/// How long a publish waits for its confirm before the connection is deemed broken (a
/// half-open TCP connection would otherwise hold it forever).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

/// Broker settings, taken from [`Config`].
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub url: String,
    pub names: Names,
    pub prefetch: u16,
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
}

impl BrokerConfig {
    pub fn from_config(cfg: &Config, program: &str, topology: Topology) -> Self {
        BrokerConfig {
            topology,
            url: cfg.amqp_url.clone(),
            names: Names::new(&cfg.namespace),
            prefetch: cfg.prefetch,
            message_ttl_ms: cfg.message_ttl_ms,
            retry_delays: cfg.retry_delays(),
            queue_type: cfg.queue_type,
            connection_name: format!("shop-{}{program}", cfg.namespace),
            declare_topology: true,
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

struct Live {
    conn: Connection,
    publish: Channel,
}

/// A self-healing connection to RabbitMQ.
pub struct Broker {
    cfg: BrokerConfig,
    metrics: Arc<Metrics>,
    live: watch::Sender<Option<Arc<Live>>>,
    closed: CancellationToken,
    /// Asks the supervisor to drop the current connection and build a new one.
    broken: tokio::sync::Notify,
}

impl Broker {
    /// Connects (failing with a one-line error naming the URL if the broker cannot be
    /// reached), declares the topology, and starts the supervisor that reconnects.
    pub async fn connect(cfg: BrokerConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Broker>> {
        let live = connect_live(&cfg)
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {}", redact_url(&cfg.url)))?;
        let (tx, _) = watch::channel(Some(Arc::new(live)));
        let broker = Arc::new(Broker {
            cfg,
            metrics,
            live: tx,
            closed: CancellationToken::new(),
            broken: tokio::sync::Notify::new(),
        });
        tokio::spawn(broker.clone().supervise());
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    pub fn names(&self) -> &Names {
        &self.cfg.names
    }

    /// Whether a connection with a usable publishing channel is up.
    pub fn is_connected(&self) -> bool {
        self.live
            .borrow()
            .as_ref()
            .is_some_and(|l| l.conn.status().connected() && l.publish.status().connected())
    }

    /// Waits until the broker is connected, or the timeout passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.live.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.is_connected() {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// A new channel on the current connection (for tools such as `shop dlq`).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let live = self
            .current()
            .ok_or_else(|| anyhow::anyhow!("the broker is unavailable"))?;
        Ok(live.conn.create_channel().await?)
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.closed.cancel();
        let live = self.live.send_replace(None);
        if let Some(live) = live {
            let _ = live.conn.close(200, "shutdown".into()).await;
        }
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone()
    }

    async fn supervise(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(live) = self.current() {
                let mut events = live.conn.events_listener();
                let mut check = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = self.closed.cancelled() => return,
                        _ = self.broken.notified() => break,
                        ev = events.next() => match ev {
                            Some(LapinEvent::Error(e)) => { warn!(error = %e, "RabbitMQ connection lost"); break }
                            Some(LapinEvent::ConnectionBlocked(r)) => warn!(reason = %r, "RabbitMQ blocked publishing (resource alarm)"),
                            Some(LapinEvent::ConnectionUnblocked) => info!("RabbitMQ unblocked publishing"),
                            Some(_) => {}
                            None => break,
                        },
                        _ = check.tick() => {
                            if !(live.conn.status().connected() && live.publish.status().connected()) {
                                warn!("RabbitMQ connection or publishing channel closed");
                                break;
                            }
                        }
                    }
                }
                self.live.send_replace(None);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    live.conn.close(320, "reconnecting".into()),
                )
                .await;
            }
            // Reconnect with growing delays until it works or we are closed.
            loop {
                if self.closed.is_cancelled() {
                    return;
                }
                match connect_live(&self.cfg).await {
                    Ok(live) => {
                        info!(url = %redact_url(&self.cfg.url), "RabbitMQ connected; topology declared");
                        self.live.send_replace(Some(Arc::new(live)));
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        debug!(error = %format!("{e:#}"), "RabbitMQ still unavailable");
                        tokio::select! {
                            _ = self.closed.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Publishes one message with a publisher confirm (used for retries, dead letters and
    /// replays, which go through the default exchange straight to a queue).
    async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let live = self.current().ok_or(PublishError::Unavailable)?;
        let confirm = live
            .publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                props,
            )
            .await
            .map_err(|e| self.publish_failed(e))?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(c) => check_confirm(c, queue).map_err(|e| self.note_failure(e)),
            Err(_) => {
                self.broken.notify_one();
                Err(self.note_failure(PublishError::Amqp("no publisher confirm in time".into())))
            }
        }
    }

    fn publish_failed(&self, e: lapin::Error) -> PublishError {
        self.broken.notify_one();
        self.note_failure(PublishError::Amqp(e.to_string()))
    }

    fn note_failure(&self, e: PublishError) -> PublishError {
        self.metrics.publish_failures.inc();
        e
    }

    /// Starts consuming `service`'s queue with `handler`, whose effects commit in `pool`.
    /// The task resumes after reconnections and ends when `stop` is cancelled, after the
    /// messages in flight are finished and acked.
    pub fn consume(
        self: &Arc<Self>,
        service: &str,
        pool: PgPool,
        handler: Arc<dyn Handler>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let consumer = Arc::new(Consumer {
            broker: self.clone(),
            service: service.to_string(),
            queue: self.cfg.names.queue(service),
            pool,
            handler,
        });
        tokio::spawn(async move { consumer.run(stop).await })
    }
}

#[async_trait]
impl Publisher for Broker {
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let Some(live) = self.current() else {
            self.metrics.publish_failures.inc_by(events.len() as u64);
            return events
                .iter()
                .map(|_| Err(PublishError::Unavailable))
                .collect();
        };
        let exchange = ShortString::from(self.cfg.names.exchange());
        let mut pending = Vec::with_capacity(events.len());
        for env in events {
            let props = properties(env);
            let opts = BasicPublishOptions {
                mandatory: self.cfg.topology.has_consumers(&env.event_type),
                immediate: false,
            };
            let sent = live
                .publish
                .basic_publish(
                    exchange.clone(),
                    ShortString::from(env.event_type.as_str()),
                    opts,
                    &env.to_bytes(),
                    props,
                )
                .await;
            pending.push(sent);
        }
        let mut results = Vec::with_capacity(events.len());
        for (env, sent) in events.iter().zip(pending) {
            let result = match sent {
                Ok(confirm) => match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Ok(c) => check_confirm(c, &env.event_type),
                    Err(_) => {
                        self.broken.notify_one();
                        Err(PublishError::Amqp("no publisher confirm in time".into()))
                    }
                },
                Err(e) => {
                    self.broken.notify_one();
                    Err(PublishError::Amqp(e.to_string()))
                }
            };
            match &result {
                Ok(()) => {
                    self.metrics
                        .published
                        .get_or_create(&Metrics::label(&env.event_type))
                        .inc();
                }
                Err(_) => {
                    self.metrics.publish_failures.inc();
                }
            }
            results.push(result);
        }
        results
    }
}

fn check_confirm(confirm: lapin::Result<Confirmation>, target: &str) -> Result<(), PublishError> {
    match confirm {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable(target.to_string())),
        Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
        Ok(Confirmation::NotRequested) => {
            Err(PublishError::Amqp("publisher confirms not enabled".into()))
        }
        Err(e) => Err(PublishError::Amqp(e.to_string())),
    }
}

/// AMQP properties of an event: id, type, JSON, persistent, timestamp, and a W3C
/// `traceparent` whose trace id is the saga's correlation id, so one trace spans the saga.
fn properties(env: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    let span = &env.id.as_simple().to_string()[16..];
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{}-{}-01", env.correlation_id.as_simple(), span).into()),
    );
    BasicProperties::default()
        .with_message_id(env.id.to_string().into())
        .with_type(env.event_type.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(env.occurred_at.timestamp().max(0) as u64)
        .with_correlation_id(env.correlation_id.to_string().into())
        .with_headers(headers)
}

async fn connect_live(cfg: &BrokerConfig) -> anyhow::Result<Live> {
    let props =
        ConnectionProperties::default().with_connection_name(cfg.connection_name.clone().into());
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&cfg.url, props),
    )
    .await
    .context("timed out")??;
    if cfg.declare_topology {
        let setup = conn.create_channel().await?;
        declare_topology(&setup, cfg).await?;
        let _ = setup.close(200, "topology declared".into()).await;
    }
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(Live { conn, publish })
}

fn long(v: u64) -> AMQPValue {
    AMQPValue::LongLongInt(v as i64)
}

fn queue_type_args(cfg: &BrokerConfig) -> FieldTable {
    let mut args = FieldTable::default();
    let kind = match cfg.queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    args
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
    for service in cfg.topology.consuming_services() {
        let queue = names.queue(service);
        let dlq = names.dead_letter_queue(service);
        let mut args = queue_type_args(cfg);
        args.insert("x-message-ttl".into(), long(u64::from(cfg.message_ttl_ms)));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dlq.as_str().into()),
        );
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await
            .with_context(|| format!("declaring queue {queue} (if its arguments changed, delete it or keep the old settings)"))?;
        ch.queue_declare(dlq.as_str().into(), durable, queue_type_args(cfg))
            .await
            .with_context(|| format!("declaring queue {dlq}"))?;
        for (i, delay) in cfg.retry_delays.iter().enumerate() {
            let retry = names.retry_queue(service, i + 1);
            let mut args = queue_type_args(cfg);
            args.insert("x-message-ttl".into(), long(delay.as_millis() as u64));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(queue.as_str().into()),
            );
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

/// Reads an integer header.
pub fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v as i64),
        _ => None,
    }
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A copy of `props` with some headers set.
pub fn with_headers(props: &BasicProperties, set: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in set {
        headers.insert((*k).into(), v.clone());
    }
    props.clone().with_headers(headers)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Consumer {
    broker: Arc<Broker>,
    service: String,
    queue: String,
    pool: PgPool,
    handler: Arc<dyn Handler>,
}

enum Fate {
    Ack,
    Retry {
        attempts: i64,
        error: String,
    },
    /// The database is away: back through the first retry queue, the attempt not counted
    /// (an outage longer than every retry delay must not dead-letter the work it holds up).
    Postpone {
        attempts: i64,
        error: String,
    },
    DeadLetter {
        attempts: i64,
        reason: String,
    },
}

impl Consumer {
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut rx = self.broker.live.subscribe();
        let inflight = TaskTracker::new();
        loop {
            if stop.is_cancelled() {
                break;
            }
            let live = rx.borrow_and_update().clone();
            let Some(live) = live else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = rx.changed() => if changed.is_err() { break },
                }
                continue;
            };
            match self.clone().consume_on(&live, &stop, &inflight).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(queue = %self.queue, error = %format!("{e:#}"), "consumer interrupted; resuming when the broker is back");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        inflight.close();
        inflight.wait().await;
        info!(queue = %self.queue, "consumer stopped");
    }

    /// Consumes until `stop` (Ok) or until the channel fails (Err).
    async fn consume_on(
        self: Arc<Self>,
        live: &Live,
        stop: &CancellationToken,
        inflight: &TaskTracker,
    ) -> anyhow::Result<()> {
        let ch = live.conn.create_channel().await?;
        ch.basic_qos(self.broker.cfg.prefetch, BasicQosOptions::default())
            .await?;
        let mut stream = ch
            .basic_consume(
                self.queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {}", self.queue))?;
        info!(queue = %self.queue, prefetch = self.broker.cfg.prefetch, "consuming");
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    // Stop taking messages; those in flight finish and are acked on this
                    // channel, which stays open until they are done.
                    let _ = ch.basic_cancel(stream.tag(), BasicCancelOptions::default()).await;
                    inflight.close();
                    inflight.wait().await;
                    let _ = ch.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                item = stream.next() => match item {
                    Some(Ok(delivery)) => {
                        let me = self.clone();
                        let acker = delivery.acker.clone();
                        let queue = self.queue.clone();
                        let held = Held::new(&self.broker.metrics);
                        inflight.spawn(async move {
                            let _held = held;
                            // A panic outside the handler (whose panics `decide` catches) would
                            // leave the message unacked for as long as the channel lives: its
                            // saga stalls until the deadline. Return it to the queue instead.
                            let run = std::panic::AssertUnwindSafe(me.process(delivery));
                            if run.catch_unwind().await.is_err() {
                                error!(%queue, "processing a message panicked; returning it to the queue");
                                let _ = acker
                                    .nack(BasicNackOptions {
                                        requeue: true,
                                        multiple: false,
                                    })
                                    .await;
                            }
                        });
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                }
            }
        }
    }

    async fn process(self: Arc<Self>, delivery: Delivery) {
        let attempts = header_int(&delivery.properties, H_ATTEMPTS)
            .unwrap_or(1)
            .max(1);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let span = info_span!("message", queue = %self.queue, id = %message_id, attempt = attempts);
        // The span is attached to the future, never entered across an await (a guard held
        // over awaits corrupts the span stack of whatever else runs on that thread).
        self.process_in_span(delivery, attempts)
            .instrument(span)
            .await
    }

    /// Decides a message's fate and carries it out.
    async fn process_in_span(&self, delivery: Delivery, attempts: i64) {
        let fate = self.decide(&delivery, attempts).await;
        let label = Metrics::label(
            &delivery
                .properties
                .kind()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
        let m = &self.broker.metrics;
        let forwarded = match fate {
            Fate::Ack => Ok(()),
            Fate::Retry { attempts, error } => {
                let delays = &self.broker.cfg.retry_delays;
                let idx = attempts as usize; // 1-based retry queue for the attempt that failed
                debug!(%error, delay_ms = delays[idx - 1].as_millis() as u64, "retrying later");
                let props = with_headers(
                    &delivery.properties,
                    &[
                        (H_ATTEMPTS, long(attempts as u64 + 1)),
                        (H_LAST_ERROR, AMQPValue::LongString(error.into())),
                    ],
                );
                let r = self
                    .broker
                    .publish_to_queue(
                        &self.broker.cfg.names.retry_queue(&self.service, idx),
                        &delivery.data,
                        props,
                    )
                    .await;
                if r.is_ok() {
                    m.retried.get_or_create(&label).inc();
                }
                r
            }
            Fate::Postpone { attempts, error } => {
                debug!(%error, "database away; postponing without using an attempt");
                let props = with_headers(
                    &delivery.properties,
                    &[
                        (H_ATTEMPTS, long(attempts as u64)),
                        (H_LAST_ERROR, AMQPValue::LongString(error.into())),
                    ],
                );
                let r = self
                    .broker
                    .publish_to_queue(
                        &self.broker.cfg.names.retry_queue(&self.service, 1),
                        &delivery.data,
                        props,
                    )
                    .await;
                if r.is_ok() {
                    m.postponed.get_or_create(&label).inc();
                }
                r
            }
            Fate::DeadLetter { attempts, reason } => {
                warn!(%reason, "dead-lettering message");
                let props = with_headers(
                    &delivery.properties,
                    &[
                        (H_ATTEMPTS, long(attempts as u64)),
                        (H_REASON, AMQPValue::LongString(reason.into())),
                        (H_QUEUE, AMQPValue::LongString(self.queue.as_str().into())),
                        (H_DEAD_AT, long(now_ms())),
                    ],
                );
                let r = self
                    .broker
                    .publish_to_queue(
                        &self.broker.cfg.names.dead_letter_queue(&self.service),
                        &delivery.data,
                        props,
                    )
                    .await;
                if r.is_ok() {
                    m.dead_lettered.get_or_create(&label).inc();
                }
                r
            }
        };
        let acked = match forwarded {
            Ok(()) => {
                crate::crash::point("consumer.before_ack");
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            Err(e) => {
                warn!(error = %e, "could not forward the message; returning it to the queue");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
        };
        if let Err(e) = acked {
            // The channel is gone: the broker redelivers the message, the inbox makes that safe.
            warn!(error = %e, "ack failed; the message will be redelivered");
        }
    }

    async fn decide(&self, delivery: &Delivery, attempts: i64) -> Fate {
        let env = match Envelope::parse(&delivery.data) {
            Ok(env) => env,
            Err(e) => {
                return Fate::DeadLetter {
                    attempts,
                    reason: e.to_string(),
                };
            }
        };
        if !self
            .broker
            .cfg
            .topology
            .bindings_of(&self.service)
            .contains(&env.event_type.as_str())
        {
            return Fate::DeadLetter {
                attempts,
                reason: format!("{} has no handler for {}", self.service, env.event_type),
            };
        }
        let m = &self.broker.metrics;
        let label = Metrics::label(&env.event_type);
        let run =
            std::panic::AssertUnwindSafe(inbox::process(&self.pool, &env, self.handler.as_ref()))
                .catch_unwind();
        match run.await {
            Ok(Ok(true)) => {
                m.consumed.get_or_create(&label).inc();
                self.handler.committed(&env);
                Fate::Ack
            }
            Ok(Ok(false)) => {
                debug!("duplicate delivery suppressed by the inbox");
                m.duplicates.get_or_create(&label).inc();
                Fate::Ack
            }
            Ok(Err(HandlerError::Permanent(reason))) => Fate::DeadLetter { attempts, reason },
            Ok(Err(HandlerError::Transient(e)))
                if !self.broker.cfg.retry_delays.is_empty()
                    && e.downcast_ref::<sqlx::Error>().is_some_and(db::unavailable) =>
            {
                Fate::Postpone {
                    attempts,
                    error: format!("{e:#}"),
                }
            }
            Ok(Err(HandlerError::Transient(e))) => {
                self.retry_or_give_up(attempts, format!("{e:#}"))
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                error!(panic = %what, "handler panicked");
                self.retry_or_give_up(attempts, format!("handler panicked: {what}"))
            }
        }
    }

    fn retry_or_give_up(&self, attempts: i64, error: String) -> Fate {
        if (attempts as usize) <= self.broker.cfg.retry_delays.len() {
            Fate::Retry { attempts, error }
        } else {
            Fate::DeadLetter {
                attempts,
                reason: format!("failed after {attempts} attempts: {error}"),
            }
        }
    }
}

/// Counts a delivery in `shop_messages_in_flight` until it is acked or returned (dropped at
/// the end of its task, whatever way the task ends).
struct Held(Arc<Metrics>);

impl Held {
    fn new(metrics: &Arc<Metrics>) -> Held {
        metrics.in_flight.inc();
        Held(metrics.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Re-publishes a dead-lettered message body to `queue` as a fresh first attempt.
pub async fn replay_to_queue(
    broker: &Broker,
    queue: &str,
    body: &[u8],
    props: &BasicProperties,
) -> Result<(), PublishError> {
    let mut headers = props.headers().clone().unwrap_or_default();
    let kept: FieldTable = headers
        .inner()
        .iter()
        .filter(|(k, _)| {
            !k.as_str().starts_with("x-shop-")
                && k.as_str() != "x-death"
                && !k.as_str().starts_with("x-first-death")
                && !k.as_str().starts_with("x-last-death")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    headers = kept;
    broker
        .publish_to_queue(queue, body, props.clone().with_headers(headers))
        .await
}
