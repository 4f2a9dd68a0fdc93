//! The events notifications consumes: each fact is recorded once, as a pending
//! notification, in the inbox transaction. Nothing is sent here: the delivery worker
//! ([`crate::delivery`]) sends it after the commit, so a mail server that is away never
//! holds the queue and a rolled-back transaction never sends anything.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::{
    Envelope, Event,
    bus::{Handler, HandlerError},
    events::{OrderCancelled, OrderConfirmed, PaymentRefunded, UserRegistered},
};
use sqlx::PgConnection;
use tokio::sync::Notify;
use tracing::info;

use crate::{domain, store};

/// The event types notifications handles (its queue's bindings).
pub const HANDLED: &[&str] = &[
    OrderConfirmed::TYPE,
    OrderCancelled::TYPE,
    PaymentRefunded::TYPE,
    UserRegistered::TYPE,
];

pub struct NotificationsHandler {
    /// Told after a commit, so that the delivery worker does not wait for its next poll.
    pub recorded: Arc<Notify>,
}

#[async_trait]
impl Handler for NotificationsHandler {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let message = match event.event_type.as_str() {
            UserRegistered::TYPE => {
                let e: UserRegistered = event.decode()?;
                store::remember_recipient(tx, e.user_id, &e.email, &e.name).await?;
                domain::welcome(e.user_id, &e.name)
            }
            OrderConfirmed::TYPE => {
                let e: OrderConfirmed = event.decode()?;
                domain::order_confirmed(e.user_id, e.order_id, &e.items, e.total_cents, &e.currency)
            }
            OrderCancelled::TYPE => {
                let e: OrderCancelled = event.decode()?;
                domain::order_cancelled(e.user_id, e.order_id, &e.reason)
            }
            PaymentRefunded::TYPE => {
                let e: PaymentRefunded = event.decode()?;
                if e.user_id.is_nil() {
                    return Err(HandlerError::Permanent(format!(
                        "payment.refunded of order {} names no user (published by an older payments): no refund notice",
                        e.order_id
                    )));
                }
                domain::payment_refunded(e.user_id, e.order_id, e.amount_cents, &e.currency)
            }
            other => {
                return Err(HandlerError::Permanent(format!(
                    "notifications does not handle {other}"
                )));
            }
        };
        match store::record(tx, &message, event.id, event.correlation_id).await? {
            Some(id) => {
                info!(notification_id = %id, kind = %message.kind, user_id = %message.user_id, order_id = ?message.order_id, "notification recorded")
            }
            None => {
                info!(kind = %message.kind, user_id = %message.user_id, order_id = ?message.order_id, "already notified")
            }
        }
        Ok(())
    }

    fn committed(&self, _event: &Envelope) {
        self.recorded.notify_one();
    }
}
