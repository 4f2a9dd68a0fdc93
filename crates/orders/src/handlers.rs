//! The orchestrator's I/O: saga events from inventory and payments (translated by
//! [`crate::messages`]), and passed deadlines, turned into transitions of the pure state
//! machine ([`crate::saga`]) and applied with [`crate::store::apply`] in the consumer's
//! (inbox) transaction.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use shop_platform::{
    Envelope,
    bus::{Handler, HandlerError},
    outbox::Waker,
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::{
    messages::translate,
    saga::{SagaEvent, decide},
    store,
};

pub struct SagaHandler {
    /// Deadline of each waiting state.
    pub deadline: Duration,
    /// Told the order id once a transition has committed (for this instance's event streams).
    pub changes: broadcast::Sender<Uuid>,
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
        if !store::apply(tx, &row, &t, Some(event), self.deadline).await? {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "order {order_id} changed concurrently"
            )));
        }
        if t.state.status != row.state.status {
            info!(%order_id, from = %row.state.status, to = %t.state.status, "order status changed");
        }
        Ok(())
    }

    fn committed(&self, event: &Envelope) {
        if let Ok((order_id, _)) = translate(event) {
            let _ = self.changes.send(order_id);
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
    stop: CancellationToken,
) {
    let tick = (deadline / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        match fire_due_ids(&pool, deadline).await {
            Ok(ids) if !ids.is_empty() => {
                outbox.wake();
                for id in ids {
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

/// One batch of passed deadlines; returns the orders whose deadline fired.
async fn fire_due_ids(pool: &PgPool, deadline: Duration) -> sqlx::Result<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    let rows = store::due(&mut tx, 100).await?;
    let mut fired = Vec::new();
    for row in &rows {
        let t = decide(&row.state, &SagaEvent::DeadlinePassed);
        if store::apply(&mut tx, row, &t, None, deadline).await? {
            fired.push(row.id);
            if t.state.status != row.state.status {
                info!(order_id = %row.id, from = %row.state.status, to = %t.state.status, "deadline passed");
            }
        }
    }
    tx.commit().await?;
    Ok(fired)
}

/// Shared so the HTTP layer can hand it to the consumer.
pub fn handler(deadline: Duration, changes: broadcast::Sender<Uuid>) -> Arc<dyn Handler> {
    Arc::new(SagaHandler { deadline, changes })
}
