//! The events payments consumes. Each runs inside the inbox transaction: the payment row and
//! the events it emits commit together.
//!
//! Money never moves twice: the payment row is unique per order, so a repeated
//! `payment.requested` (whatever its event id) answers with the first result, and a repeated
//! `payment.refund_requested` announces the refund again without moving money.

use std::time::Duration;

use async_trait::async_trait;
use shop_platform::{
    Envelope, Event,
    bus::{Handler, HandlerError},
    events::{
        PaymentFailed, PaymentRefundRequested, PaymentRefunded, PaymentRequested, PaymentSucceeded,
    },
    outbox,
};
use sqlx::PgConnection;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    domain::{self, RefundDecision, RepeatAnswer},
    provider::{self, ChargeOutcome, ProviderConfig},
    store::{self, NewPayment, Payment},
};

/// The event types payments handles (its queue's bindings).
pub const HANDLED: &[&str] = &[PaymentRequested::TYPE, PaymentRefundRequested::TYPE];

/// Provider answers slower than this are not awaited inside the handler: the payment stays
/// pending and the capturer settles it when it is due.
pub const INLINE_LIMIT: Duration = Duration::from_secs(1);

pub struct PaymentsHandler {
    pub provider: ProviderConfig,
}

#[async_trait]
impl Handler for PaymentsHandler {
    /// A payment may wait on the provider inside its transaction (up to [`INLINE_LIMIT`]):
    /// then each has its own, so that none waits on another's provider. A provider that
    /// answers at once (the simulated one without `SHOP_PAYMENT_LATENCY_MS`) holds nobody up.
    fn batched(&self) -> bool {
        self.provider.latency.is_zero()
    }

    /// Two payments of one order in two batches (a redelivered request, a refund) would wait
    /// on each other's payment row in the order each batch met them: the batch locks its
    /// orders first, in a fixed order.
    async fn lock_batch(
        &self,
        events: &[&Envelope],
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let mut orders: Vec<Uuid> = events
            .iter()
            .filter_map(|e| match e.event_type.as_str() {
                PaymentRequested::TYPE => e.decode::<PaymentRequested>().ok().map(|r| r.order_id),
                PaymentRefundRequested::TYPE => e
                    .decode::<PaymentRefundRequested>()
                    .ok()
                    .map(|r| r.order_id),
                _ => None,
            })
            .collect();
        orders.sort_unstable();
        orders.dedup();
        // One order's transaction cannot wait on itself in a cycle.
        if orders.len() > 1 {
            store::lock_orders(tx, &orders).await?;
        }
        Ok(())
    }

    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            PaymentRequested::TYPE => self.payment_requested(event, tx).await,
            PaymentRefundRequested::TYPE => refund_requested(event, tx).await,
            other => Err(HandlerError::Permanent(format!(
                "payments does not handle {other}"
            ))),
        }
    }
}

impl PaymentsHandler {
    async fn payment_requested(
        &self,
        event: &Envelope,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let req: PaymentRequested = event.decode()?;
        if req.amount_cents <= 0 {
            return Err(HandlerError::Permanent(format!(
                "amount {} is not positive",
                req.amount_cents
            )));
        }
        let plan =
            provider::plan_charge(&self.provider, &req.payment_token, provider::random_roll());
        let inline = plan.delay <= INLINE_LIMIT;
        let new = NewPayment {
            id: Uuid::now_v7(),
            order_id: req.order_id,
            user_id: req.user_id,
            amount_cents: req.amount_cents,
            currency: &req.currency,
            capture_in: (!inline).then_some(plan.delay),
            will_decline: match plan.outcome {
                ChargeOutcome::Declined { code } if !inline => Some(code),
                _ => None,
            },
            correlation_id: event.correlation_id,
            request_event_id: event.id,
        };
        if !store::insert_pending(tx, &new).await? {
            let existing = store::lock_by_order(tx, req.order_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("payment of {} vanished", req.order_id))?;
            return answer_repeat(event, tx, &existing, &req).await;
        }
        if !inline {
            info!(order_id = %req.order_id, delay = ?plan.delay, "slow provider; payment pending until it answers");
            return Ok(());
        }
        // The provider call, simulated. The order's row is held meanwhile, so a concurrent
        // copy of the request waits and then answers with this result.
        tokio::time::sleep(plan.delay).await;
        let answer = match plan.outcome {
            ChargeOutcome::Captured => {
                store::mark_captured(tx, new.id).await?;
                info!(order_id = %req.order_id, payment_id = %new.id, amount_cents = req.amount_cents, "payment captured");
                event.caused(
                    req.order_id,
                    &PaymentSucceeded {
                        order_id: req.order_id,
                        payment_id: new.id,
                        amount_cents: req.amount_cents,
                    },
                )
            }
            ChargeOutcome::Declined { code } => {
                store::mark_declined(tx, new.id, code).await?;
                info!(order_id = %req.order_id, payment_id = %new.id, code, "payment declined");
                event.caused(
                    req.order_id,
                    &PaymentFailed {
                        order_id: req.order_id,
                        reason: code.to_string(),
                    },
                )
            }
        };
        outbox::enqueue(tx, &answer).await?;
        Ok(())
    }
}

/// A repeated request for an order that already has a payment: its first result again.
async fn answer_repeat(
    event: &Envelope,
    tx: &mut PgConnection,
    p: &Payment,
    req: &PaymentRequested,
) -> Result<(), HandlerError> {
    if p.amount_cents != req.amount_cents || p.currency != req.currency {
        warn!(order_id = %p.order_id, "repeated payment request differs from the first; answering with the first");
    }
    let answer = match domain::repeated_request(p.status, p.decline_code.as_deref()) {
        RepeatAnswer::Succeeded => event.caused(
            p.order_id,
            &PaymentSucceeded {
                order_id: p.order_id,
                payment_id: p.id,
                amount_cents: p.amount_cents,
            },
        ),
        RepeatAnswer::Failed { reason } => event.caused(
            p.order_id,
            &PaymentFailed {
                order_id: p.order_id,
                reason,
            },
        ),
        RepeatAnswer::Nothing => {
            if p.status == domain::PaymentStatus::Refunded {
                warn!(order_id = %p.order_id, "payment requested again after its refund; ignored");
            } else {
                info!(order_id = %p.order_id, "payment requested again while pending; the capture will answer");
            }
            return Ok(());
        }
    };
    info!(order_id = %p.order_id, status = %p.status, "payment requested again; first result re-sent");
    outbox::enqueue(tx, &answer).await?;
    Ok(())
}

async fn refund_requested(event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
    let req: PaymentRefundRequested = event.decode()?;
    let Some(p) = store::lock_by_order(tx, req.order_id).await? else {
        return Err(HandlerError::Permanent(format!(
            "no payment for order {}",
            req.order_id
        )));
    };
    if p.id != req.payment_id {
        return Err(HandlerError::Permanent(format!(
            "payment {} is not the payment of order {} ({})",
            req.payment_id, req.order_id, p.id
        )));
    }
    match domain::refund(p.status) {
        RefundDecision::Refund => {
            store::mark_refunded(tx, p.id).await?;
            info!(order_id = %p.order_id, payment_id = %p.id, amount_cents = p.amount_cents, "payment refunded");
        }
        RefundDecision::AlreadyRefunded => {
            info!(order_id = %p.order_id, payment_id = %p.id, "already refunded; payment.refunded re-sent");
        }
        RefundDecision::NotYetCaptured => {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "payment {} of order {} is not captured yet; refund retried later",
                p.id,
                p.order_id
            )));
        }
        RefundDecision::NothingTaken => {
            return Err(HandlerError::Permanent(format!(
                "payment {} of order {} was declined: nothing to refund",
                p.id, p.order_id
            )));
        }
    }
    let refunded = PaymentRefunded {
        order_id: p.order_id,
        payment_id: p.id,
        amount_cents: p.amount_cents,
        user_id: p.user_id,
        currency: p.currency.clone(),
    };
    outbox::enqueue(tx, &event.caused(p.order_id, &refunded)).await?;
    Ok(())
}
