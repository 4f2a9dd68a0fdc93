//! The capturer: settles payments whose (slow) provider answers after the handler returned.
//! Each due payment is marked captured and its `payment.succeeded` enqueued, or, when the
//! provider's answer is a decline, marked declined and its `payment.failed` enqueued, in one
//! transaction, continuing the saga of the request that started it.

use std::time::Duration;

use shop_platform::{
    Envelope,
    events::{PaymentFailed, PaymentSucceeded},
    outbox,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store;

/// How often due payments are looked for.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Payments settled per transaction.
const BATCH: i64 = 100;

/// Captures every pending payment that is due now; returns how many.
pub async fn capture_due(pool: &PgPool) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let due = store::lock_due(&mut tx, BATCH).await?;
        for p in &due {
            let event = match &p.decline_code {
                Some(code) => {
                    store::mark_declined(&mut tx, p.id, code).await?;
                    info!(order_id = %p.order_id, payment_id = %p.id, code, "late payment declined");
                    let failed = PaymentFailed {
                        order_id: p.order_id,
                        reason: code.clone(),
                    };
                    Envelope::new(p.order_id, &failed, p.correlation_id, p.request_event_id)
                }
                None => {
                    store::mark_captured(&mut tx, p.id).await?;
                    info!(order_id = %p.order_id, payment_id = %p.id, amount_cents = p.amount_cents, "late payment captured");
                    let succeeded = PaymentSucceeded {
                        order_id: p.order_id,
                        payment_id: p.id,
                        amount_cents: p.amount_cents,
                    };
                    Envelope::new(p.order_id, &succeeded, p.correlation_id, p.request_event_id)
                }
            };
            outbox::enqueue(&mut tx, &event).await?;
        }
        tx.commit().await?;
        total += due.len();
        if (due.len() as i64) < BATCH {
            return Ok(total);
        }
    }
}

/// Captures due payments every [`POLL_EVERY`] until `stop`, waking the outbox relay after
/// each capture.
pub async fn run(pool: PgPool, outbox: outbox::Waker, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
        match capture_due(&pool).await {
            Ok(0) => {}
            Ok(_) => outbox.wake(),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "capturer could not settle due payments; retrying")
            }
        }
    }
}
