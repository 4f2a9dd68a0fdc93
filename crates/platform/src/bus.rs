//! The two seams every service is written against: a [`Publisher`] that sends envelopes and a
//! [`Handler`] that consumes them inside a database transaction. RabbitMQ ([`crate::amqp`])
//! and the in-memory bus ([`crate::memory`]) both sit behind them.

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::envelope::{Envelope, EnvelopeError};

/// Why a publish did not reach the broker's durable storage. Every variant means "not
/// published": the caller keeps the event (in the outbox) and tries again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker is unavailable")]
    Unavailable,
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("unroutable: no queue is bound for {0}")]
    Unroutable(String),
    #[error("amqp error: {0}")]
    Amqp(String),
}

/// Sends events; returns only once the broker has confirmed each one.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes several events in order, pipelining their confirms. One result per event.
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), PublishError>>;

    /// Like [`Publisher::publish_batch`], each event continuing the trace context of the same
    /// index in `traces` (its producer span's; missing ones continue none). A bus that
    /// carries no headers ignores them.
    async fn publish_traced(
        &self,
        events: &[Envelope],
        traces: &[opentelemetry::Context],
    ) -> Vec<Result<(), PublishError>> {
        let _ = traces;
        self.publish_batch(events).await
    }

    async fn publish(&self, event: &Envelope) -> Result<(), PublishError> {
        self.publish_batch(std::slice::from_ref(event))
            .await
            .pop()
            .unwrap_or(Err(PublishError::Unavailable))
    }
}

/// How a handler failed, which decides the message's fate.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (database away, a lock timeout...): retried with growing delays, then
    /// dead-lettered with this error.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never succeed (a payload that breaks a rule): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
    }
}

impl From<EnvelopeError> for HandlerError {
    fn from(e: EnvelopeError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

impl From<anyhow::Error> for HandlerError {
    fn from(e: anyhow::Error) -> Self {
        HandlerError::Transient(e)
    }
}

/// Consumes the events a service's queue is bound to.
///
/// `handle` runs inside the transaction that also records the event id in the inbox: its
/// writes, the outbox rows of the events it emits and the inbox row commit together, and the
/// message is acked only after that commit.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError>;

    /// Called once the transaction in which `handle` applied `event` has committed (never for
    /// a duplicate), to tell this process's listeners (live streams, the outbox relay) without
    /// a PostgreSQL NOTIFY. Must be quick and must not fail.
    fn committed(&self, _event: &Envelope) {}

    /// Whether several deliveries may be handled in one transaction (see
    /// [`crate::inbox::process_batch`]): not for a handler that waits on something slow
    /// inside its transaction, whose neighbours would wait with it.
    fn batched(&self) -> bool {
        true
    }

    /// Before a batch's handlers run in one transaction: takes, in a fixed order, the row
    /// locks that several of them will take, so that two batches over the same rows cannot
    /// deadlock (each handler on its own would take its rows in its own order). `events`
    /// are those the batch will handle.
    async fn lock_batch(
        &self,
        _events: &[&Envelope],
        _tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}
