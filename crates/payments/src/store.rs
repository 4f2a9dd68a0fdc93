//! All payments SQL. Writes take the caller's connection, so that a use case combines them
//! with its outbox rows (and the inbox row) in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::PaymentStatus;

/// A payment as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub decline_code: Option<String>,
    pub capture_at: Option<DateTime<Utc>>,
    pub correlation_id: Uuid,
    pub request_event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub captured_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    order_id: Uuid,
    user_id: Uuid,
    amount_cents: i64,
    currency: String,
    status: String,
    decline_code: Option<String>,
    capture_at: Option<DateTime<Utc>>,
    correlation_id: Uuid,
    request_event_id: Uuid,
    created_at: DateTime<Utc>,
    captured_at: Option<DateTime<Utc>>,
    refunded_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for Payment {
    type Error = anyhow::Error;

    fn try_from(r: Row) -> anyhow::Result<Payment> {
        Ok(Payment {
            id: r.id,
            order_id: r.order_id,
            user_id: r.user_id,
            amount_cents: r.amount_cents,
            currency: r.currency,
            status: r.status.parse().map_err(anyhow::Error::msg)?,
            decline_code: r.decline_code,
            capture_at: r.capture_at,
            correlation_id: r.correlation_id,
            request_event_id: r.request_event_id,
            created_at: r.created_at,
            captured_at: r.captured_at,
            refunded_at: r.refunded_at,
        })
    }
}

const COLUMNS: &str = "id, order_id, user_id, amount_cents, currency, status, decline_code, capture_at, \
                       correlation_id, request_event_id, created_at, captured_at, refunded_at";

/// A payment about to be charged.
pub struct NewPayment<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount_cents: i64,
    pub currency: &'a str,
    /// For a slow provider: how long until the capturer settles it (`None`: settled inline).
    pub capture_in: Option<Duration>,
    /// For a slow provider: the decline it will answer, if it will decline (kept in
    /// `decline_code` while the payment is pending; the capturer declines it when due).
    pub will_decline: Option<&'a str>,
    pub correlation_id: Uuid,
    pub request_event_id: Uuid,
}

/// Records a pending payment unless the order already has one; `false` if it had. A
/// concurrent insert for the same order waits here until the first commits, so an order is
/// charged by one handler only.
pub async fn insert_pending(tx: &mut PgConnection, p: &NewPayment<'_>) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, amount_cents, currency, status, capture_at,
                               correlation_id, request_event_id, decline_code)
         VALUES ($1, $2, $3, $4, $5, 'pending', now() + $6::bigint * interval '1 millisecond', $7, $8, $9)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(p.id)
    .bind(p.order_id)
    .bind(p.user_id)
    .bind(p.amount_cents)
    .bind(p.currency)
    .bind(p.capture_in.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    .bind(p.correlation_id)
    .bind(p.request_event_id)
    .bind(p.will_decline)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The order's payment.
pub async fn by_order(pool: &PgPool, order_id: Uuid) -> anyhow::Result<Option<Payment>> {
    select_by_order(pool, order_id, "").await
}

/// Takes a transaction lock on each of `orders` (an advisory lock: the payment rows of new
/// requests do not exist yet), in the order of their keys, the same for every transaction.
pub async fn lock_orders(tx: &mut PgConnection, orders: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k.class, k.key) FROM (
             SELECT DISTINCT hashtext('shop-payments-order') AS class, hashtext(id::text) AS key
             FROM unnest($1::uuid[]) AS id ORDER BY key
         ) k",
    )
    .bind(orders)
    .execute(tx)
    .await?;
    Ok(())
}

/// The order's payment, locked until the end of the transaction.
pub async fn lock_by_order(
    tx: &mut PgConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<Payment>> {
    select_by_order(tx, order_id, " FOR UPDATE").await
}

async fn select_by_order<'e>(
    db: impl sqlx::PgExecutor<'e>,
    order_id: Uuid,
    lock: &str,
) -> anyhow::Result<Option<Payment>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE order_id = $1{lock}"
    ))
    .bind(order_id)
    .fetch_optional(db)
    .await?;
    row.map(Payment::try_from).transpose()
}

pub async fn mark_captured(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET status = 'captured', captured_at = now() WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn mark_declined(tx: &mut PgConnection, id: Uuid, code: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET status = 'declined', decline_code = $2 WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .bind(code)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn mark_refunded(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET status = 'refunded', refunded_at = now() WHERE id = $1 AND status = 'captured'")
        .bind(id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Pending payments whose provider has answered by now, locked; rows another capturer holds
/// are skipped, so several instances share the work.
pub async fn lock_due(tx: &mut PgConnection, limit: i64) -> anyhow::Result<Vec<Payment>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payments WHERE status = 'pending' AND capture_at <= now()
         ORDER BY capture_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(tx)
    .await?;
    rows.into_iter().map(Payment::try_from).collect()
}

/// Every payment `(order_id, status, amount_cents)`, for the money audit. The table is
/// schema-qualified so that any pool on the shop's database can run it.
pub async fn money_report(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, String, i64)>> {
    sqlx::query_as("SELECT order_id, status, amount_cents FROM payments.payments ORDER BY created_at, order_id")
        .fetch_all(pool)
        .await
}
