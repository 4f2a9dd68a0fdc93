//! How a notification reaches the user. The default only logs that it was sent; a real
//! deployment plugs an e-mail or push provider in behind [`Sender`].

use async_trait::async_trait;
use tracing::info;

use crate::store::Notification;

/// Delivers a recorded notification. An error makes the event handler fail transiently: the
/// notification is not recorded and the event is retried.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    async fn send(&self, n: &Notification) -> anyhow::Result<()>;
}

/// Writes one log line per notification: its id, kind, user and order, never its text or
/// the user's address.
pub struct LogSender;

#[async_trait]
impl Sender for LogSender {
    async fn send(&self, n: &Notification) -> anyhow::Result<()> {
        info!(
            notification_id = %n.id,
            kind = %n.kind,
            user_id = %n.user_id,
            order_id = ?n.order_id,
            "notification sent"
        );
        Ok(())
    }
}
