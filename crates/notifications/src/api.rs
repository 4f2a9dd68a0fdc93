//! Response bodies of the notifications API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// One message sent to the user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    /// welcome, order_confirmed or order_cancelled.
    pub kind: String,
    /// One line, as an e-mail's subject.
    #[schema(example = "Your order is confirmed")]
    pub subject: String,
    /// Plain text.
    pub body: String,
    /// The order it is about, if any.
    pub order_id: Option<Uuid>,
    /// Delivery: pending, sent or refused (the mail server would not take it).
    #[schema(example = "sent")]
    pub status: String,
    /// When it was recorded (once per event it answers).
    pub created_at: DateTime<Utc>,
}

/// The caller's notifications, newest first (at most 100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    pub items: Vec<NotificationView>,
}

impl From<crate::store::Notification> for NotificationView {
    fn from(n: crate::store::Notification) -> Self {
        NotificationView {
            id: n.id,
            kind: n.kind,
            subject: n.subject,
            body: n.body,
            order_id: n.order_id,
            status: n.status,
            created_at: n.created_at,
        }
    }
}
