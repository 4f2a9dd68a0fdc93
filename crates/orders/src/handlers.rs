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
use shop_platform::{
    Envelope,
    bus::{Handler, HandlerError},
    metrics::{Metrics, SagaLabel},
    outbox::Waker,
    telemetry,
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};
use uuid::Uuid;

use crate::{
    messages::translate,
    saga::{CancelReason, OrderStatus, SagaEvent, Transition, decide},
    store,
};

pub struct SagaHandler {
    /// Deadline of each waiting state.
    pub deadline: Duration,
    /// Told the order id once a transition has committed (for this instance's event streams).
    pub changes: broadcast::Sender<Uuid>,
    pub metrics: Arc<Metrics>,
    /// Sagas ended by a transaction not yet committed, by the id of the event that ended
    /// them: counted once it commits (a rolled-back one is retried and ends again).
    ending: Mutex<HashMap<Uuid, Ended>>,
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

/// Bound on [`SagaHandler::ending`]: entries of transactions that never committed (their
/// event dead-lettered) are dropped past it.
const MAX_ENDING: usize = 10_000;

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
        if !store::apply(tx, &row, &t, Some(event), self.deadline).await? {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "order {order_id} changed concurrently"
            )));
        }
        if t.state.status != row.state.status {
            info!(%order_id, from = %row.state.status, to = %t.state.status, "order status changed");
        }
        if let Some(ended) = Ended::by(&row, &t) {
            let mut ending = self.ending.lock().expect("not poisoned");
            if ending.len() >= MAX_ENDING {
                ending.clear();
            }
            ending.insert(event.id, ended);
        }
        Ok(())
    }

    fn committed(&self, event: &Envelope) {
        if let Ok((order_id, _)) = translate(event) {
            let _ = self.changes.send(order_id);
        }
        let ended = self.ending.lock().expect("not poisoned").remove(&event.id);
        if let Some(ended) = ended {
            ended.count(&self.metrics);
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
    changes: broadcast::Sender<Uuid>,
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
                for (id, ended) in fired {
                    if let Some(ended) = ended {
                        ended.count(&metrics);
                    }
                    let _ = changes.send(id);
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

/// One batch of passed deadlines; returns the orders whose deadline fired, and the sagas
/// that ended by it.
async fn fire_due_ids(
    pool: &PgPool,
    deadline: Duration,
) -> sqlx::Result<Vec<(Uuid, Option<Ended>)>> {
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
        if applied {
            fired.push((row.id, Ended::by(row, &t)));
            if t.state.status != row.state.status {
                info!(order_id = %row.id, from = %row.state.status, to = %t.state.status, "deadline passed");
            }
        }
    }
    tx.commit().await?;
    Ok(fired)
}

/// Shared so the HTTP layer can hand it to the consumer.
pub fn handler(
    deadline: Duration,
    changes: broadcast::Sender<Uuid>,
    metrics: Arc<Metrics>,
) -> Arc<dyn Handler> {
    Arc::new(SagaHandler {
        deadline,
        changes,
        metrics,
        ending: Mutex::default(),
    })
}
