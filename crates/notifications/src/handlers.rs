//! The events notifications consumes: each fact is recorded once, sent, and announced with
//! `notification.sent`, all inside the inbox transaction.
//!
//! Sending happens before the commit: if the commit then fails, the event is retried and the
//! user may get the message twice (at least once), but the record stays unique.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::{
    Envelope, Event,
    bus::{Handler, HandlerError},
    events::{NotificationSent, OrderCancelled, OrderConfirmed, UserRegistered},
    outbox,
};
use sqlx::PgConnection;
use tracing::info;

use crate::{domain, sender::Sender, store};

/// The event types notifications handles (its queue's bindings).
pub const HANDLED: &[&str] = &[
    OrderConfirmed::TYPE,
    OrderCancelled::TYPE,
    UserRegistered::TYPE,
];

pub struct NotificationsHandler {
    pub sender: Arc<dyn Sender>,
}

#[async_trait]
impl Handler for NotificationsHandler {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let message = match event.event_type.as_str() {
            UserRegistered::TYPE => {
                let e: UserRegistered = event.decode()?;
                domain::welcome(e.user_id, &e.name)
            }
            OrderConfirmed::TYPE => {
                let e: OrderConfirmed = event.decode()?;
                domain::order_confirmed(e.user_id, e.order_id, e.total_cents, &e.currency)
            }
            OrderCancelled::TYPE => {
                let e: OrderCancelled = event.decode()?;
                domain::order_cancelled(e.user_id, e.order_id, &e.reason)
            }
            other => {
                return Err(HandlerError::Permanent(format!(
                    "notifications does not handle {other}"
                )));
            }
        };
        let Some(n) = store::record(tx, &message, event.id).await? else {
            info!(kind = %message.kind, user_id = %message.user_id, order_id = ?message.order_id, "already notified");
            return Ok(());
        };
        self.sender
            .send(&n)
            .await
            .map_err(HandlerError::Transient)?;
        let sent = NotificationSent {
            notification_id: n.id,
            user_id: n.user_id,
            kind: n.kind.clone(),
        };
        outbox::enqueue(tx, &event.caused(n.id, &sent)).await?;
        Ok(())
    }
}
