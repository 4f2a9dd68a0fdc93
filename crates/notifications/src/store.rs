//! All notifications SQL.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Message;

/// A recorded notification.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Notification {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub order_id: Option<Uuid>,
    pub source_event_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// How many notifications a user's list shows.
pub const LIST_LIMIT: i64 = 100;

/// Records `message` as the answer to event `source_event_id`, unless that event, or the same
/// fact (one per order and kind, one welcome per user), was already answered: then `None`.
/// A concurrent insert of the same fact waits here until the first commits.
pub async fn record(
    tx: &mut PgConnection,
    message: &Message,
    source_event_id: Uuid,
) -> sqlx::Result<Option<Notification>> {
    sqlx::query_as(
        "INSERT INTO notifications (id, user_id, kind, subject, body, order_id, source_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING
         RETURNING id, user_id, kind, subject, body, order_id, source_event_id, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(message.user_id)
    .bind(message.kind.as_str())
    .bind(&message.subject)
    .bind(&message.body)
    .bind(message.order_id)
    .bind(source_event_id)
    .fetch_optional(tx)
    .await
}

/// A user's notifications, newest first, at most [`LIST_LIMIT`].
pub async fn of_user(pool: &PgPool, user_id: Uuid) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as(
        "SELECT id, user_id, kind, subject, body, order_id, source_event_id, created_at
         FROM notifications WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(LIST_LIMIT)
    .fetch_all(pool)
    .await
}

/// How many notifications each order has, for the invariant audit (schema-qualified, so
/// that any pool on the shop's database can run it).
pub async fn per_order(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "SELECT order_id, count(*) FROM notifications.notifications
         WHERE order_id IS NOT NULL GROUP BY order_id",
    )
    .fetch_all(pool)
    .await
}
