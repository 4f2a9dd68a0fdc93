//! Confirmed publishing: events to the topic exchange (`mandatory` where a queue is bound),
//! and single messages straight to a queue (retries, dead letters, replays). A publish
//! whose confirm does not come in time marks the connection broken.

use std::time::Duration;

use async_trait::async_trait;
use lapin::{
    BasicProperties, Confirmation,
    options::BasicPublishOptions,
    types::{FieldTable, ShortString},
};

use super::Broker;
use crate::{
    bus::{PublishError, Publisher},
    envelope::Envelope,
    metrics::Metrics,
    telemetry,
};

/// How long a publish waits for its confirm before the connection is deemed broken (a
/// half-open TCP connection would otherwise hold it forever).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

impl Broker {
    /// Publishes one message with a publisher confirm (used for retries, dead letters and
    /// replays, which go through the default exchange straight to a queue).
    pub(crate) async fn publish_to_queue(
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
}

#[async_trait]
impl Publisher for Broker {
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), PublishError>> {
        self.publish_traced(events, &[]).await
    }

    async fn publish_traced(
        &self,
        events: &[Envelope],
        traces: &[opentelemetry::Context],
    ) -> Vec<Result<(), PublishError>> {
        let Some(live) = self.current() else {
            self.metrics.publish_failures.inc_by(events.len() as u64);
            return events
                .iter()
                .map(|_| Err(PublishError::Unavailable))
                .collect();
        };
        let exchange = ShortString::from(self.cfg.names.exchange());
        let mut pending = Vec::with_capacity(events.len());
        for (i, env) in events.iter().enumerate() {
            let props = properties(env, traces.get(i));
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

/// AMQP properties of an event: id, type, JSON, persistent, timestamp, correlation id, and
/// the W3C `traceparent` of its producer span (when traced).
fn properties(env: &Envelope, trace: Option<&opentelemetry::Context>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(cx) = trace {
        telemetry::inject_amqp(cx, &mut headers);
    }
    BasicProperties::default()
        .with_message_id(env.id.to_string().into())
        .with_type(env.event_type.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(env.occurred_at.timestamp().max(0) as u64)
        .with_correlation_id(env.correlation_id.to_string().into())
        .with_headers(headers)
}
