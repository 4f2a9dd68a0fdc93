//! The consumer of a service's queue and the fate of each message, decided only after the
//! handler's transaction (see the module doc of [`super`]).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::PgPool;
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
    async fn consume_on(
        self: Arc<Self>,
        live: &Live,
        stop: &CancellationToken,
        inflight: &TaskTracker,
        connection: &mut tokio::sync::watch::Receiver<Option<Arc<Live>>>,
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
                // The supervisor gave up this connection (a silent link, say, where no
                // error ever reaches the stream): resume on the next one.
                _ = connection.changed() => anyhow::bail!("the broker connection was replaced"),
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
        // The span is attached to the future, never entered across an await (a guard held
        // over awaits corrupts the span stack of whatever else runs on that thread).
        self.process_in_span(delivery, attempts)
            .instrument(span)
            .await
    }

    /// Decides a message's fate and carries it out.
    async fn process_in_span(&self, delivery: Delivery, attempts: i64) {
        let started = std::time::Instant::now();
        let fate = self.decide(&delivery, attempts).await;
        if telemetry::exporting() {
            let span = tracing::Span::current();
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
                "settle",
                otel.name = %format_args!("settle {}", label.event_type),
                otel.kind = "client",
            );
            settle.set_attribute(MESSAGING_SYSTEM, "rabbitmq");
            settle.set_attribute(MESSAGING_OPERATION_TYPE, "settle");
            self.settle(delivery, fate, &label).instrument(settle).await;
        } else {
            self.settle(delivery, fate, &label).await;
        }
        self.broker
            .metrics
            .handler_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Acks the message, or forwards it to a retry or dead-letter queue and then acks it.
    async fn settle(&self, delivery: Delivery, fate: Fate, label: &TypeLabel) {
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
            .bindings_of(self.service)
            .contains(&env.event_type.as_str())
        {
            return Fate::DeadLetter {
                attempts,
                reason: format!("{} has no handler for {}", self.service, env.event_type),
            };
        }
        if telemetry::exporting() {
            crate::outbox::messaging_attributes(&tracing::Span::current(), &env, "process");
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
