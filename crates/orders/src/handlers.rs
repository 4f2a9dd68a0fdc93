//! The orchestrator's I/O: saga events from inventory and payments (translated by
//! [`crate::messages`]), and passed deadlines, turned into transitions of the pure state
//! machine ([`crate::saga`]) and applied with [`crate::store::apply`] in the consumer's
//! (inbox) transaction.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shop_platform::{
    Envelope,
    bus::{Handler, HandlerError},
    metrics::{Metrics, SagaLabel},
    outbox::Waker,
    telemetry,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};
use uuid::Uuid;

use crate::{
    api::StatusEvent,
    live::Changes,
    messages::translate,
    saga::{CancelReason, OrderStatus, SagaEvent, Transition, decide},
    store,
};

pub struct SagaHandler {
    /// Deadline of each waiting state.
    pub deadline: Duration,
    /// Told each status change once it has committed (for this instance's event streams).
    pub changes: Changes,
    pub metrics: Arc<Metrics>,
    /// What a transaction not yet committed did, by the id of the event it handled: told and
    /// counted once it commits (a rolled-back one is handled again, and does it again).
    committing: Mutex<HashMap<Uuid, Committing>>,
}

/// A status change of a saga, and its end if it ended, waiting for their commit.
struct Committing {
    change: StatusEvent,
    ended: Option<Ended>,
}

/// A saga that reached its terminal state: how, and how long after its order was accepted.
#[derive(Clone, Debug)]
pub struct Ended {
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub seconds: f64,
}

impl Ended {
    /// Ended by `t` (from `row`), if `t` makes it terminal.
    pub fn by(row: &store::SagaRow, t: &Transition) -> Option<Ended> {
        (t.state.status.is_terminal() && t.state.status != row.state.status).then(|| Ended {
            status: t.state.status,
            reason: t.state.cancel_reason,
            seconds: (chrono::Utc::now() - row.created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        })
    }

    /// Counts it in `shop_sagas_ended_total` and `shop_saga_duration_seconds`.
    pub fn count(&self, metrics: &Metrics) {
        metrics
            .sagas_ended
            .get_or_create(&SagaLabel {
                status: self.status.as_str().into(),
                reason: self.reason.map(|r| r.as_str()).unwrap_or("").into(),
            })
            .inc();
        metrics.saga_duration.observe(self.seconds);
    }
}

/// Bound on [`SagaHandler::committing`]: entries of transactions that never committed (their
/// event dead-lettered) are dropped past it.
const MAX_COMMITTING: usize = 10_000;

/// The change `t` makes to `row`'s status at `at`, if it changes it.
fn status_change(row: &store::SagaRow, t: &Transition, at: DateTime<Utc>) -> Option<StatusEvent> {
    (t.state.status != row.state.status).then(|| StatusEvent {
        order_id: row.id,
        status: t.state.status.as_str().into(),
        cancel_reason: t.state.cancel_reason.map(|r| r.as_str().into()),
        at,
    })
}

#[async_trait]
impl Handler for SagaHandler {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let (order_id, saga_event) = translate(event)?;
        let Some(row) = store::load_for_update(tx, order_id).await? else {
            return Err(HandlerError::Permanent(format!("unknown order {order_id}")));
        };
        let t = decide(&row.state, &saga_event);
        if !t.changed {
            debug!(%order_id, ?saga_event, status = %row.state.status, "event does not apply; ignored");
            return Ok(());
        }
        let Some(at) = store::apply(tx, &row, &t, Some(event), self.deadline).await? else {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "order {order_id} changed concurrently"
            )));
        };
        if let Some(change) = status_change(&row, &t, at) {
            info!(%order_id, from = %row.state.status, to = %t.state.status, "order status changed");
            let ended = Ended::by(&row, &t);
            let mut committing = self.committing.lock().expect("not poisoned");
            if committing.len() >= MAX_COMMITTING {
                committing.clear();
            }
            committing.insert(event.id, Committing { change, ended });
        }
        Ok(())
    }

    fn committed(&self, event: &Envelope) {
        let done = self
            .committing
            .lock()
            .expect("not poisoned")
            .remove(&event.id);
        if let Some(Committing { change, ended }) = done {
            if let Some(ended) = ended {
                ended.count(&self.metrics);
            }
            self.changes.tell(change);
        }
    }
}

/// Fires passed deadlines: every waiting state that outlived its deadline gets a
/// `DeadlinePassed` transition (compensate, or retry a compensation). Several instances share
/// the work through `FOR UPDATE SKIP LOCKED`.
pub async fn run_deadlines(
    pool: PgPool,
    deadline: Duration,
    outbox: Waker,
    changes: Changes,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let tick = (deadline / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        let scan = std::time::Instant::now();
        let result = fire_due_ids(&pool, deadline).await;
        metrics.deadline_scan.observe(scan.elapsed().as_secs_f64());
        match result {
            Ok(fired) if !fired.is_empty() => {
                outbox.wake();
                for (change, ended) in fired {
                    if let Some(ended) = ended {
                        ended.count(&metrics);
                    }
                    if let Some(change) = change {
                        changes.tell(change);
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "deadline scan failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// One batch of passed deadlines; returns the orders whose deadline fired (with their status
/// change, if any), and the sagas that ended by it.
async fn fire_due_ids(
    pool: &PgPool,
    deadline: Duration,
) -> sqlx::Result<Vec<(Option<StatusEvent>, Option<Ended>)>> {
    let mut tx = pool.begin().await?;
    let rows = store::due(&mut tx, 100).await?;
    let mut fired = Vec::new();
    for row in &rows {
        let t = decide(&row.state, &SagaEvent::DeadlinePassed);
        // The compensation's events continue a trace of its own, linked to the order's.
        let applied = if telemetry::exporting() {
            let span = tracing::info_span!(
                "deadline",
                otel.name = "saga deadline passed",
                otel.kind = "internal",
                order_id = %row.id,
            );
            telemetry::adopt_linked(
                &span,
                crate::program::IDENTITY.name,
                row.trace_context.as_deref(),
            );
            telemetry::annotate(&span, "shop.order_id", row.id);
            store::apply(&mut tx, row, &t, None, deadline)
                .instrument(span)
                .await?
        } else {
            store::apply(&mut tx, row, &t, None, deadline).await?
        };
        if let Some(at) = applied {
            let change = status_change(row, &t, at);
            if change.is_some() {
                info!(order_id = %row.id, from = %row.state.status, to = %t.state.status, "deadline passed");
            }
            fired.push((change, Ended::by(row, &t)));
        }
    }
    tx.commit().await?;
    Ok(fired)
}

/// Shared so the HTTP layer can hand it to the consumer.
pub fn handler(deadline: Duration, changes: Changes, metrics: Arc<Metrics>) -> Arc<dyn Handler> {
    Arc::new(SagaHandler {
        deadline,
        changes,
        metrics,
        committing: Mutex::default(),
    })
}
