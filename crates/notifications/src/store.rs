//! All notifications SQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Kind, Message};

/// A recorded notification.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Notification {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub html: String,
    pub order_id: Option<Uuid>,
    pub source_event_id: Uuid,
    /// The saga (or registration) it belongs to; none for rows older than delivery.
    pub correlation_id: Option<Uuid>,
    /// pending, sent or refused.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The `traceparent` of the transaction that recorded it.
    pub trace_context: Option<String>,
}

/// The columns of [`Notification`], for queries on `notifications` aliased `n`.
macro_rules! columns {
    () => {
        "n.id, n.user_id, n.kind, n.subject, n.body, n.html, n.order_id, n.source_event_id, \
         n.correlation_id, n.status, n.attempts, n.last_error, n.created_at, n.trace_context"
    };
}

/// A pending notification claimed for delivery, with its recipient's address if known.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Due {
    #[sqlx(flatten)]
    pub notification: Notification,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// How many notifications a user's list shows.
pub const LIST_LIMIT: i64 = 100;

/// Remembers where a user's mail goes (the latest registration wins).
pub async fn remember_recipient(
    tx: &mut PgConnection,
    user_id: Uuid,
    email: &str,
    name: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO recipients (user_id, email, name) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name",
    )
    .bind(user_id)
    .bind(email)
    .bind(name)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records `message`, pending delivery, as the answer to event `source_event_id`, unless that
/// event, or the same fact (one per order and kind, one welcome per user), was already
/// answered: then `None`. A concurrent insert of the same fact waits here until the first
/// commits.
pub async fn record(
    tx: &mut PgConnection,
    message: &Message,
    source_event_id: Uuid,
    correlation_id: Uuid,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "INSERT INTO notifications (id, user_id, kind, subject, body, html, order_id, source_event_id, correlation_id, status, trace_context)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10)
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(message.user_id)
    .bind(message.kind.as_str())
    .bind(&message.subject)
    .bind(&message.body)
    .bind(&message.html)
    .bind(message.order_id)
    .bind(source_event_id)
    .bind(correlation_id)
    .bind(shop_platform::telemetry::current_traceparent())
    .fetch_optional(tx)
    .await
}

/// Claims up to `limit` pending notifications that are due, oldest first, for `lease`: each
/// gets an attempt counted and is not due again until the lease runs out (so a sender that
/// dies mid-delivery leaves it to be tried again, and another instance skips it meanwhile).
pub async fn claim_due(pool: &PgPool, limit: i64, lease: Duration) -> sqlx::Result<Vec<Due>> {
    let query = concat!(
        "WITH due AS (
             SELECT id FROM notifications
             WHERE status = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE notifications n SET attempts = n.attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE n.id = due.id
             RETURNING ",
        columns!(),
        "
         )
         SELECT n.*, r.email, r.name FROM claimed n LEFT JOIN recipients r ON r.user_id = n.user_id
         ORDER BY n.id"
    );
    sqlx::query_as(query)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await
}

/// Marks delivered notifications sent; returns those it marked (not one that was not pending
/// any more: another instance marked it first, or it was refused meanwhile).
pub async fn mark_sent(tx: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "UPDATE notifications SET status = 'sent', sent_at = now(), last_error = NULL
         WHERE id = ANY($1) AND status = 'pending' RETURNING id",
    )
    .bind(ids)
    .fetch_all(tx)
    .await
}

/// Leaves a notification pending, to be tried again after `delay`, with the failure.
pub async fn postpone(pool: &PgPool, id: Uuid, delay: Duration, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notifications SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(delay.as_secs_f64())
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that a notification cannot be delivered (the server refused it for good).
pub async fn refuse(pool: &PgPool, id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notifications SET status = 'refused', last_error = $2 WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// How many notifications wait for delivery, and the age in seconds of the oldest (0 when
/// none does).
pub async fn pending(pool: &PgPool) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
         FROM notifications WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await
}

/// A user's notifications, newest first, at most [`LIST_LIMIT`].
pub async fn of_user(pool: &PgPool, user_id: Uuid) -> sqlx::Result<Vec<Notification>> {
    let query = concat!(
        "SELECT ",
        columns!(),
        " FROM notifications n WHERE n.user_id = $1 ORDER BY n.created_at DESC, n.id DESC LIMIT $2"
    );
    sqlx::query_as(query)
        .bind(user_id)
        .bind(LIST_LIMIT)
        .fetch_all(pool)
        .await
}

/// How many order-outcome notifications (confirmed or cancelled) each order has, for the
/// invariant audit (schema-qualified, so that any pool on the shop's database can run it).
pub async fn per_order(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "SELECT order_id, count(*) FROM notifications.notifications
         WHERE order_id IS NOT NULL AND kind = ANY($1) GROUP BY order_id",
    )
    .bind(Kind::ORDER_OUTCOMES.map(Kind::as_str).to_vec())
    .fetch_all(pool)
    .await
}

/// The orders that have a refund notice, for the audit.
pub async fn refund_notices(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "SELECT order_id, count(*) FROM notifications.notifications
         WHERE kind = $1 GROUP BY order_id",
    )
    .bind(Kind::PaymentRefunded.as_str())
    .fetch_all(pool)
    .await
}

/// Delivery as the audit sees it: how many notifications are pending and sent, and each
/// refused one (id, kind, reason).
pub async fn delivery(pool: &PgPool) -> sqlx::Result<Delivery> {
    let (pending, sent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'sent')
         FROM notifications.notifications",
    )
    .fetch_one(pool)
    .await?;
    let refused = sqlx::query_as(
        "SELECT id, kind, coalesce(last_error, '') FROM notifications.notifications
         WHERE status = 'refused' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    Ok(Delivery {
        pending,
        sent,
        refused,
    })
}

/// See [`delivery`].
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    pub pending: i64,
    pub sent: i64,
    pub refused: Vec<(Uuid, String, String)>,
}
