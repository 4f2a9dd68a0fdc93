//! The transactional outbox: a service writes the events it emits into its `outbox` table in
//! the same transaction as its business rows; the [`Relay`] publishes them with confirms and
//! marks them sent. A crash at any point loses nothing: an event is either not committed at
//! all (and neither are its business rows) or it is in the outbox until confirmed.
//!
//! The relay is woken by its own process as soon as a transaction that wrote outbox rows has
//! committed ([`Waker`]; every event handler's commit does it, and so do the services' own
//! writes), and polls every [`POLL_EVERY`] as a safety net for rows written by other processes.
//! It publishes in id order in batches with pipelined confirms, backs off while the broker is
//! away, and locks its batch with `FOR UPDATE SKIP LOCKED`, so several instances share the
//! work safely.
//!
//! Why not `LISTEN/NOTIFY`: PostgreSQL serialises the commits of every transaction that sent
//! a `NOTIFY` (in the whole cluster) on one lock held through the commit's WAL flush, so a
//! trigger on every outbox insert turned the services' write path into a single queue (it was
//! the first bottleneck under load, see the README's Performance section).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use opentelemetry_semantic_conventions::attribute::{
    DB_OPERATION_NAME, DB_SYSTEM_NAME, MESSAGING_BATCH_MESSAGE_COUNT, MESSAGING_DESTINATION_NAME,
    MESSAGING_MESSAGE_CONVERSATION_ID, MESSAGING_MESSAGE_ID, MESSAGING_OPERATION_TYPE,
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, MESSAGING_SYSTEM,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{bus::Publisher, envelope::Envelope, metrics::Metrics, telemetry};

/// Links a relay batch's span keeps (the SDK's default limit).
const MAX_LINKS: usize = 128;

/// The producer span of one event's publish, in the trace of the transaction that wrote it
/// (`traceparent`, kept in its row), not the relay's: a batch carries many orders.
fn send_span(program: &'static str, event: &Envelope, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {}", event.event_type),
        otel.kind = "producer",
    );
    let parent = traceparent
        .map(telemetry::context_of_traceparent)
        .unwrap_or_default();
    telemetry::adopt(&span, program, parent);
    messaging_attributes(&span, event, "send");
    span
}

/// The messaging attributes of a span about `event` (semantic conventions 1.42), and the
/// ids a search by order finds.
pub(crate) fn messaging_attributes(
    span: &tracing::Span,
    event: &Envelope,
    operation: &'static str,
) {
    span.set_attribute(MESSAGING_SYSTEM, "rabbitmq");
    span.set_attribute(MESSAGING_OPERATION_TYPE, operation);
    span.set_attribute(MESSAGING_DESTINATION_NAME, event.event_type.clone());
    span.set_attribute(
        MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
        event.event_type.clone(),
    );
    span.set_attribute(MESSAGING_MESSAGE_ID, event.id.to_string());
    span.set_attribute(
        MESSAGING_MESSAGE_CONVERSATION_ID,
        event.correlation_id.to_string(),
    );
    span.set_attribute("shop.correlation_id", event.correlation_id.to_string());
    if let Some(order) = event.payload.get("order_id").and_then(|v| v.as_str()) {
        span.set_attribute("shop.order_id", order.to_string());
    } else if event.event_type.starts_with("order.") {
        span.set_attribute("shop.order_id", event.aggregate_id.to_string());
    }
}

/// Outbox rows written in this process so far (by [`enqueue`], committed or not).
static ENQUEUED: AtomicU64 = AtomicU64::new(0);

/// How many outbox rows this process has written so far: a transaction that wrote none leaves
/// it as it was (so its commit need not wake the relay), though rows written meanwhile by
/// other tasks change it too.
pub fn enqueued() -> u64 {
    ENQUEUED.load(Ordering::SeqCst)
}

/// Adds an event to the outbox inside the caller's transaction, with the trace context of the
/// current span (the transaction's), in which the relay will publish it.
pub async fn enqueue(tx: &mut PgConnection, event: &Envelope) -> sqlx::Result<()> {
    ENQUEUED.fetch_add(1, Ordering::SeqCst);
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, body, trace_context) VALUES ($1, $2, $3, $4)",
    )
    .bind(event.id)
    .bind(&event.event_type)
    .bind(serde_json::to_string(event).expect("envelopes always serialize"))
    .bind(telemetry::current_traceparent())
    .execute(tx)
    .await?;
    Ok(())
}

/// Unsent rows and the age of the oldest, in seconds.
pub async fn stats(pool: &PgPool) -> sqlx::Result<(i64, f64)> {
    let row: (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.0, row.1.unwrap_or(0.0)))
}

/// Rows of `schema`'s outbox not yet published (0 if it has no outbox), for the audit.
pub async fn unsent_in(pool: &PgPool, schema: &str) -> sqlx::Result<i64> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'outbox')",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(0);
    }
    // The schema name is a program's name from the shop's list, never input.
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".outbox WHERE sent_at IS NULL"
    ))
    .fetch_one(pool)
    .await
}

/// How often an idle relay looks for rows nobody woke it for (written by another process).
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// Wakes a relay of this process at once. Call [`Waker::wake`] after committing a transaction
/// that wrote outbox rows; a wake while the relay is busy is remembered, never lost.
#[derive(Clone, Debug, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.0.notified().await;
    }
}

/// Publishes a service's outbox.
pub struct Relay {
    pub pool: PgPool,
    /// The program whose outbox (schema) this is.
    pub program: &'static str,
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Arc<Metrics>,
    pub batch: i64,
    pub retention_hours: u32,
}

impl Relay {
    /// Publishes one batch; returns how many rows were published.
    pub async fn drain_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
            "SELECT id, body, trace_context FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        let mut spans = Vec::new();
        let mut contexts = Vec::new();
        for (id, body, trace) in rows {
            match serde_json::from_str::<Envelope>(&body) {
                Ok(e) => {
                    ids.push(id);
                    if telemetry::exporting() {
                        spans.push(send_span(self.program, &e, trace.as_deref()));
                        contexts.extend(trace);
                    }
                    events.push(e);
                }
                Err(e) => {
                    warn!(id, error = %e, "outbox row is not an envelope; leaving it for an operator")
                }
            }
        }
        // The batch's own transaction (claimed, published, marked): a trace of its own,
        // linked to the traces of the rows it carries.
        let batch = telemetry::exporting().then(|| {
            let span = tracing::info_span!(
                "relay",
                otel.name = "outbox relay batch",
                otel.kind = "client",
                rows = events.len(),
            );
            telemetry::adopt_linked(
                &span,
                self.program,
                contexts.iter().take(MAX_LINKS).map(String::as_str),
            );
            span.set_attribute(DB_SYSTEM_NAME, "postgresql");
            span.set_attribute(DB_OPERATION_NAME, "relay outbox batch");
            span.set_attribute(MESSAGING_BATCH_MESSAGE_COUNT, events.len() as i64);
            span
        });
        crate::crash::point("relay.before_publish");
        let traces: Vec<opentelemetry::Context> = spans.iter().map(|s| s.context()).collect();
        let results = self.publisher.publish_traced(&events, &traces).await;
        for (span, result) in spans.iter().zip(&results) {
            if let Err(e) = result {
                telemetry::set_error(span, "publish", e.to_string());
            }
        }
        // The sends end when confirmed (or refused).
        drop(spans);
        crate::crash::point("relay.after_publish");
        // Stop at the first failure so that events stay in order: the rest go next time.
        let sent: Vec<i64> = ids
            .iter()
            .zip(&results)
            .take_while(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        let failure = results.into_iter().find_map(Result::err);
        // Marking rows sent need not wait for the WAL flush: if a crash loses the mark, the
        // rows are published again and consumers' inboxes drop the copies (the same as a
        // crash between the confirms and this update). Saves an fsync per batch.
        // (One statement: the setting for this transaction, then the update.)
        sqlx::query(
            "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE outbox SET sent_at = clock_timestamp() FROM async WHERE id = ANY($1)",
        )
        .bind(&sent)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let (Some(span), Some(e)) = (&batch, &failure) {
            telemetry::set_error(span, "publish", e.to_string());
        }
        match failure {
            Some(e) if sent.is_empty() => Err(e.into()),
            Some(e) => {
                warn!(error = %e, published = sent.len(), "outbox batch partly published");
                Ok(sent.len())
            }
            None => Ok(sent.len()),
        }
    }

    /// Publishes everything unsent now (used at shutdown); stops at the first error.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self.drain_once().await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Runs until `stop`, then flushes what is left (bounded by the caller's timeout); wakes
    /// only on its safety-net poll (see [`Relay::run_woken_by`]).
    pub async fn run(self, stop: CancellationToken) {
        self.run_woken_by(stop, Waker::default()).await
    }

    /// Like [`Relay::run`], also woken at once by `waker`.
    pub async fn run_woken_by(self, stop: CancellationToken, waker: Waker) {
        let mut backoff = Duration::from_millis(50);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.drain_once().await {
                Ok(n) if n as i64 >= self.batch => continue,
                Ok(_) => {
                    backoff = Duration::from_millis(50);
                    if last_prune.elapsed() > Duration::from_secs(60) {
                        last_prune = tokio::time::Instant::now();
                        self.prune().await;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = waker.woken() => {}
                        _ = tokio::time::sleep(POLL_EVERY) => {}
                    }
                }
                Err(e) => {
                    debug!(error = %format!("{e:#}"), ?backoff, "outbox relay waiting for the broker or database");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        match self.flush().await {
            Ok(n) => info!(program = self.program, published = n, "outbox flushed"),
            Err(e) => {
                warn!(program = self.program, error = %format!("{e:#}"), "outbox not fully flushed; it will be published at the next start")
            }
        }
    }

    async fn prune(&self) {
        let r =
            sqlx::query("DELETE FROM outbox WHERE sent_at < now() - make_interval(hours => $1)")
                .bind(self.retention_hours as i32)
                .execute(&self.pool)
                .await;
        if let Err(e) = r {
            debug!(error = %e, "outbox prune failed");
        }
        if let Err(e) = crate::inbox::prune(&self.pool, self.retention_hours).await {
            debug!(error = %e, "inbox prune failed");
        }
    }
}
