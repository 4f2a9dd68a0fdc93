//! The consumer of a service's queue and the fate of each message, decided only after the
//! handler's transaction (see the module doc of [`super`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use lapin::{
    Acker,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use super::{
    Broker,
    connection::Live,
    headers::{
        H_ATTEMPTS, H_DEAD_AT, H_LAST_ERROR, H_QUEUE, H_REASON, header_int, long, now_ms,
        with_headers,
    },
};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    bus::{Handler, HandlerError},
    db,
    envelope::Envelope,
    inbox,
    metrics::{Metrics, TypeLabel},
    telemetry,
};
use opentelemetry_semantic_conventions::attribute::{
    MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_OPERATION_TYPE,
    MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, MESSAGING_SYSTEM,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

impl Broker {
    /// Starts consuming `service`'s queue with `handler`, whose effects commit in `pool`.
    /// The task resumes after reconnections and ends when `stop` is cancelled, after the
    /// messages in flight are finished and acked.
    pub fn consume(
        self: &Arc<Self>,
        service: &'static str,
        pool: PgPool,
        handler: Arc<dyn Handler>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let consumer = Arc::new(Consumer {
            broker: self.clone(),
            service,
            queue: self.cfg.names.queue(service),
            pool,
            handler,
        });
        tokio::spawn(async move { consumer.run(stop).await })
    }
}

struct Consumer {
    broker: Arc<Broker>,
    service: &'static str,
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

/// A copy of a message on its way to another queue: where, with which headers, counted by
/// which metric.
struct Forward {
    queue: String,
    headers: Vec<(&'static str, AMQPValue)>,
    counter: fn(&Metrics) -> &Family<TypeLabel, Counter>,
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
            match self
                .clone()
                .consume_on(&live, &stop, &inflight, &mut rx)
                .await
            {
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
    ///
    /// Deliveries are taken in batches: when a transaction slot is free, the first delivery
    /// is awaited and every one already received joins it, up to the batch size; the batch
    /// is handled in one transaction ([`Consumer::handle_batch`]) while the next one forms.
    /// A handler that is not [`Handler::batched`], or a batch size of 1, gets batches of
    /// one and as many slots as the prefetch (a task per delivery).
    async fn consume_on(
        self: Arc<Self>,
        live: &Live,
        stop: &CancellationToken,
        inflight: &TaskTracker,
        connection: &mut tokio::sync::watch::Receiver<Option<Arc<Live>>>,
    ) -> anyhow::Result<()> {
        let cfg = &self.broker.cfg;
        let ch = live.conn.create_channel().await?;
        ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
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
        let (batch_max, slots) = if self.handler.batched() && cfg.batch > 1 {
            (cfg.batch, cfg.transactions)
        } else {
            (1, usize::from(cfg.prefetch.max(1)))
        };
        info!(queue = %self.queue, prefetch = cfg.prefetch, batch = batch_max, transactions = slots, "consuming");
        let slots = Arc::new(Semaphore::new(slots));
        let acks = Arc::new(Acks::new(&self.broker.metrics));
        let stopping = async |stream: &lapin::Consumer| {
            // Stop taking messages; those in flight finish and are acked on this channel,
            // which stays open until they are done.
            let _ = ch
                .basic_cancel(stream.tag(), BasicCancelOptions::default())
                .await;
            inflight.close();
            inflight.wait().await;
            let _ = ch.close(200, "shutdown".into()).await;
        };
        loop {
            let slot = tokio::select! {
                _ = stop.cancelled() => {
                    stopping(&stream).await;
                    return Ok(());
                }
                _ = connection.changed() => anyhow::bail!("the broker connection was replaced"),
                slot = slots.clone().acquire_owned() => slot.expect("the slots are never closed"),
            };
            let first = tokio::select! {
                _ = stop.cancelled() => {
                    stopping(&stream).await;
                    return Ok(());
                }
                // The supervisor gave up this connection (a silent link, say, where no
                // error ever reaches the stream): resume on the next one.
                _ = connection.changed() => anyhow::bail!("the broker connection was replaced"),
                item = stream.next() => match item {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                }
            };
            let mut batch = vec![first];
            let mut ended = None;
            while batch.len() < batch_max {
                match stream.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(e))) => {
                        ended = Some(anyhow::Error::from(e));
                        break;
                    }
                    Some(None) => {
                        ended = Some(anyhow::anyhow!("the broker cancelled the consumer"));
                        break;
                    }
                    None => break,
                }
            }
            acks.receive(&batch).await;
            let me = self.clone();
            let acks = acks.clone();
            let queue = self.queue.clone();
            inflight.spawn(async move {
                let _slot = slot;
                let tags: Vec<u64> = batch.iter().map(|d| d.delivery_tag).collect();
                // A panic outside the handlers (whose panics are caught) would leave the
                // messages unacked for as long as the channel lives: their sagas stall until
                // the deadline. Return them to the queue instead.
                let run = std::panic::AssertUnwindSafe(me.handle_batch(batch, &acks));
                if run.catch_unwind().await.is_err() {
                    error!(%queue, "processing messages panicked; returning them to the queue");
                    acks.abandon(&tags).await;
                }
            });
            if let Some(e) = ended {
                return Err(e);
            }
        }
    }

    /// Handles a batch: each delivery that is no event of this queue is settled at once
    /// (dead-lettered); the others are handled in one transaction, or, if it fails, each in
    /// its own, and settled by what became of each.
    async fn handle_batch(self: Arc<Self>, deliveries: Vec<Delivery>, acks: &Acks) {
        let started = std::time::Instant::now();
        // The handled deliveries, acked together once their fates are all known.
        let mut acked = Vec::new();
        let mut events = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let (attempts, span) = self.span_of(&delivery);
            match self.check(&delivery, attempts, &span) {
                Ok(env) => events.push((delivery, attempts, span, env)),
                Err(fate) => {
                    self.finish(delivery, fate, span, started, acks, &mut acked)
                        .await
                }
            }
        }
        if events.len() > 1 {
            let batch: Vec<(&Envelope, tracing::Span)> = events
                .iter()
                .map(|(_, _, span, env)| (env, span.clone()))
                .collect();
            let run = std::panic::AssertUnwindSafe(inbox::process_batch(
                &self.pool,
                &batch,
                self.handler.as_ref(),
            ))
            .catch_unwind();
            match run.await {
                Ok(Ok(applied)) => {
                    let m = &self.broker.metrics;
                    m.batch_size.observe(events.len() as f64);
                    for ((delivery, _, span, env), fresh) in events.into_iter().zip(applied) {
                        let label = Metrics::label(&env.event_type);
                        if fresh {
                            m.consumed.get_or_create(&label).inc();
                            self.handler.committed(&env);
                        } else {
                            m.duplicates.get_or_create(&label).inc();
                        }
                        self.finish(delivery, Fate::Ack, span, started, acks, &mut acked)
                            .await;
                    }
                    Self::ack(acks, &acked).await;
                    return;
                }
                Ok(Err(e)) => {
                    debug!(queue = %self.queue, error = %e, size = events.len(), "a batch failed; handling its messages one by one");
                    self.broker.metrics.batches_split.inc();
                }
                Err(_) => {
                    warn!(queue = %self.queue, size = events.len(), "a handler panicked in a batch; handling its messages one by one");
                    self.broker.metrics.batches_split.inc();
                }
            }
        }
        for (delivery, attempts, span, env) in events {
            let fate = self.decide(&env, attempts).instrument(span.clone()).await;
            self.broker.metrics.batch_size.observe(1.0);
            self.finish(delivery, fate, span, started, acks, &mut acked)
                .await;
            Self::ack(acks, &acked).await;
            acked.clear();
        }
    }

    /// Acks handled deliveries (after their commit).
    async fn ack(acks: &Acks, tags: &[u64]) {
        if !tags.is_empty() {
            crate::crash::point("consumer.before_ack");
            acks.ack(tags).await;
        }
    }

    /// The consumer span of a delivery, and its attempt.
    fn span_of(&self, delivery: &Delivery) -> (i64, tracing::Span) {
        let attempts = header_int(&delivery.properties, H_ATTEMPTS)
            .unwrap_or(1)
            .max(1);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map(|k| k.as_str())
            .unwrap_or("message");
        let span = info_span!(
            "message",
            queue = %self.queue,
            id = %message_id,
            attempt = attempts,
            otel.name = %format_args!("process {kind}"),
            otel.kind = "consumer",
        );
        if telemetry::exporting() {
            // The parent is the producer's span, carried in the headers (kept through the
            // retry queues, redeliveries and replays): one trace per saga.
            telemetry::adopt(
                &span,
                self.service,
                telemetry::extract_amqp(delivery.properties.headers().as_ref()),
            );
            span.set_attribute(
                MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                delivery.delivery_tag as i64,
            );
            span.set_attribute(MESSAGING_CONSUMER_GROUP_NAME, self.queue.clone());
            span.set_attribute("shop.attempt", attempts);
            span.set_attribute("shop.redelivered", delivery.redelivered);
        }
        (attempts, span)
    }

    /// Carries out a message's fate in its span (attached to each future, never entered
    /// across an await: a guard held over awaits corrupts the span stack of whatever else
    /// runs on that thread).
    async fn finish(
        &self,
        delivery: Delivery,
        fate: Fate,
        span: tracing::Span,
        started: std::time::Instant,
        acks: &Acks,
        acked: &mut Vec<u64>,
    ) {
        if telemetry::exporting() {
            match &fate {
                Fate::Ack => {}
                Fate::Retry { error, .. } | Fate::Postpone { error, .. } => {
                    telemetry::set_error(&span, "retry", error.clone())
                }
                Fate::DeadLetter { reason, .. } => {
                    telemetry::set_error(&span, "dead_letter", reason.clone())
                }
            }
        }
        let label = Metrics::label(
            &delivery
                .properties
                .kind()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
        // A settle span when the message goes elsewhere (a retry or dead-letter queue): a
        // plain ack is the end of the consumer span (a span for it cost more than the ack).
        if telemetry::exporting() && !matches!(fate, Fate::Ack) {
            let settle = info_span!(
                parent: &span,
                "settle",
                otel.name = %format_args!("settle {}", label.event_type),
                otel.kind = "client",
            );
            settle.set_attribute(MESSAGING_SYSTEM, "rabbitmq");
            settle.set_attribute(MESSAGING_OPERATION_TYPE, "settle");
            self.settle(delivery, fate, &label, acks, acked)
                .instrument(settle)
                .instrument(span)
                .await;
        } else {
            self.settle(delivery, fate, &label, acks, acked)
                .instrument(span)
                .await;
        }
        self.broker
            .metrics
            .handler_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Acks the message, or forwards it to a retry or dead-letter queue and then acks it.
    /// Forwards the message when its fate says so; its ack is left to the caller (with its
    /// batch's, in `acked`), or, after a forward, sent at once.
    async fn settle(
        &self,
        delivery: Delivery,
        fate: Fate,
        label: &TypeLabel,
        acks: &Acks,
        acked: &mut Vec<u64>,
    ) {
        if matches!(fate, Fate::Ack) {
            acked.push(delivery.delivery_tag);
            return;
        }
        let forwarded = match self.forward(fate) {
            None => Ok(()),
            Some(f) => {
                let props = with_headers(&delivery.properties, &f.headers);
                let r = self
                    .broker
                    .publish_to_queue(&f.queue, &delivery.data, props)
                    .await;
                if r.is_ok() {
                    (f.counter)(&self.broker.metrics).get_or_create(label).inc();
                }
                r
            }
        };
        match forwarded {
            Ok(()) => {
                crate::crash::point("consumer.before_ack");
                acks.ack(&[delivery.delivery_tag]).await;
            }
            Err(e) => {
                warn!(error = %e, "could not forward the message; returning it to the queue");
                acks.requeue(delivery.delivery_tag).await;
            }
        }
    }

    /// The delivery's event, if it is one this queue handles; else its fate.
    fn check(
        &self,
        delivery: &Delivery,
        attempts: i64,
        span: &tracing::Span,
    ) -> Result<Envelope, Fate> {
        let env = Envelope::parse(&delivery.data).map_err(|e| Fate::DeadLetter {
            attempts,
            reason: e.to_string(),
        })?;
        if !self
            .broker
            .cfg
            .topology
            .bindings_of(self.service)
            .contains(&env.event_type.as_str())
        {
            return Err(Fate::DeadLetter {
                attempts,
                reason: format!("{} has no handler for {}", self.service, env.event_type),
            });
        }
        if telemetry::exporting() {
            crate::outbox::messaging_attributes(span, &env, "process");
        }
        Ok(env)
    }

    /// Handles one event in a transaction of its own, and says what becomes of it.
    async fn decide(&self, env: &Envelope, attempts: i64) -> Fate {
        let m = &self.broker.metrics;
        let label = Metrics::label(&env.event_type);
        let run =
            std::panic::AssertUnwindSafe(inbox::process(&self.pool, env, self.handler.as_ref()))
                .catch_unwind();
        match run.await {
            Ok(Ok(true)) => {
                m.consumed.get_or_create(&label).inc();
                self.handler.committed(env);
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

    /// Where a message goes instead of being acked where it is: the one table of message
    /// fates (none for a handled one).
    fn forward(&self, fate: Fate) -> Option<Forward> {
        let names = &self.broker.cfg.names;
        let text = |s: String| AMQPValue::LongString(s.into());
        Some(match fate {
            Fate::Ack => return None,
            Fate::Retry { attempts, error } => {
                // The 1-based retry queue of the attempt that failed.
                let idx = attempts as usize;
                let delay = self.broker.cfg.retry_delays[idx - 1];
                debug!(%error, delay_ms = delay.as_millis() as u64, "retrying later");
                Forward {
                    queue: names.retry_queue(self.service, idx),
                    headers: vec![
                        (H_ATTEMPTS, long(attempts as u64 + 1)),
                        (H_LAST_ERROR, text(error)),
                    ],
                    counter: |m| &m.retried,
                }
            }
            Fate::Postpone { attempts, error } => {
                debug!(%error, "database away; postponing without using an attempt");
                Forward {
                    queue: names.retry_queue(self.service, 1),
                    headers: vec![
                        (H_ATTEMPTS, long(attempts as u64)),
                        (H_LAST_ERROR, text(error)),
                    ],
                    counter: |m| &m.postponed,
                }
            }
            Fate::DeadLetter { attempts, reason } => {
                warn!(%reason, "dead-lettering message");
                Forward {
                    queue: names.dead_letter_queue(self.service),
                    headers: vec![
                        (H_ATTEMPTS, long(attempts as u64)),
                        (H_REASON, text(reason)),
                        (H_QUEUE, text(self.queue.clone())),
                        (H_DEAD_AT, long(now_ms())),
                    ],
                    counter: |m| &m.dead_lettered,
                }
            }
        })
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

/// A channel's deliveries from their arrival until they are acked or returned. A batch's acks
/// go out together: one `basic.ack` with `multiple` for its deliveries when none below them
/// is still being handled (a multiple ack acks every tag up to its own, so none may be open
/// below it), else one each; in tag order (the lock is held while they are sent).
struct Acks {
    metrics: Arc<Metrics>,
    state: tokio::sync::Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    /// Received, not settled yet.
    open: BTreeMap<u64, (Acker, Held)>,
    /// Settled for an ack, being acked (empty between calls).
    settled: BTreeMap<u64, (Acker, Held)>,
}

impl Acks {
    fn new(metrics: &Arc<Metrics>) -> Acks {
        Acks {
            metrics: metrics.clone(),
            state: Default::default(),
        }
    }

    async fn receive(&self, deliveries: &[Delivery]) {
        let mut state = self.state.lock().await;
        for d in deliveries {
            let held = Held::new(&self.metrics);
            state.open.insert(d.delivery_tag, (d.acker.clone(), held));
        }
    }

    /// These deliveries are done with: acked, those below every open delivery with one
    /// multiple ack, the others (an open delivery below them) each at once.
    async fn ack(&self, tags: &[u64]) {
        let mut state = self.state.lock().await;
        for tag in tags {
            if let Some(entry) = state.open.remove(tag) {
                state.settled.insert(*tag, entry);
            }
        }
        Self::flush(&mut state).await;
    }

    /// Returns the delivery to the queue (alone), then acks what it held back.
    async fn requeue(&self, tag: u64) {
        let mut state = self.state.lock().await;
        if let Some((acker, _held)) = state.open.remove(&tag) {
            nack(&acker).await;
        }
        Self::flush(&mut state).await;
    }

    /// Returns every one of `tags` still open to the queue (their task panicked).
    async fn abandon(&self, tags: &[u64]) {
        let mut state = self.state.lock().await;
        for tag in tags {
            if let Some((acker, _held)) = state.open.remove(tag) {
                nack(&acker).await;
            }
        }
        Self::flush(&mut state).await;
    }

    /// Sends the acks of every settled delivery: one multiple ack for those below the lowest
    /// open one, one ack each for the rest (holding them until the open one is done would
    /// hold the prefetch window, and with it the consumer, behind a slow message).
    async fn flush(state: &mut AckState) {
        let below = state.open.keys().next().copied().unwrap_or(u64::MAX);
        let above = state.settled.split_off(&below);
        let prefix = std::mem::take(&mut state.settled);
        let count = prefix.len();
        if let Some((_, (acker, _held))) = prefix.into_iter().next_back() {
            send_ack(&acker, count > 1, count).await;
        }
        for (_, (acker, _held)) in above {
            send_ack(&acker, false, 1).await;
        }
    }
}

async fn send_ack(acker: &Acker, multiple: bool, count: usize) {
    if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
        // The channel is gone: the broker redelivers the messages, the inbox makes that safe.
        warn!(error = %e, count, "ack failed; the messages will be redelivered");
    }
}

async fn nack(acker: &Acker) {
    let sent = acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await;
    if let Err(e) = sent {
        warn!(error = %e, "returning a message failed; the broker redelivers it");
    }
}

/// Counts a delivery in `shop_messages_in_flight` until it is acked or returned (dropped
/// with its entry in [`Acks`]).
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
