//! All inventory SQL. Writes take the caller's connection, so that a use case combines them
//! with its outbox rows (and the inbox row) in one transaction.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool, types::Json};
use uuid::Uuid;

use crate::domain::{Adjustment, Line, ReservationStatus};

/// What inventory holds for one order.
#[derive(Debug)]
pub struct Reservation {
    pub status: ReservationStatus,
    /// What was asked for (and, when reserved, is held).
    pub lines: Vec<Line>,
    /// Why it was refused, when it was.
    pub reason: Option<String>,
}

/// A product's stock as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Units that can be reserved.
    pub available: i64,
    /// Units held for orders not yet confirmed or released.
    pub reserved: i64,
}

/// Creates a product's stock; `false` if it already had one.
pub async fn create_stock(
    tx: &mut PgConnection,
    product_id: Uuid,
    initial: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO stock (product_id, initial, available) VALUES ($1, $2, $2) ON CONFLICT (product_id) DO NOTHING",
    )
    .bind(product_id)
    .bind(initial)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Creates the order's reservation row unless one exists; `false` if one did. A concurrent
/// insert for the same order waits here until the first commits, so exactly one handler
/// "owns" each order's first decision.
pub async fn claim_reservation(
    tx: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
    lines: &[Line],
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO reservations (order_id, status, lines, reason) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(Json(lines))
    .bind(reason)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The order's reservation, locked until the end of the transaction.
pub async fn lock_reservation(
    tx: &mut PgConnection,
    order_id: Uuid,
) -> anyhow::Result<Option<Reservation>> {
    let row: Option<(String, Json<Vec<Line>>, Option<String>)> = sqlx::query_as(
        "SELECT status, lines, reason FROM reservations WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(tx)
    .await?;
    row.map(|(status, Json(lines), reason)| {
        Ok(Reservation {
            status: status.parse().map_err(anyhow::Error::msg)?,
            lines,
            reason,
        })
    })
    .transpose()
}

pub async fn set_reservation_status(
    tx: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE reservations SET status = $2, reason = $3, updated_at = now() WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status.as_str())
    .bind(reason)
    .execute(tx)
    .await?;
    Ok(())
}

/// Locks the existing reservations of `orders` in order id order, and returns the products
/// they hold.
pub async fn lock_reservations(tx: &mut PgConnection, orders: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    let rows: Vec<(Json<Vec<Line>>,)> = sqlx::query_as(
        "SELECT lines FROM reservations WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(orders)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .flat_map(|(Json(lines),)| lines.into_iter().map(|l| l.product_id))
        .collect())
}

/// Locks the stock rows of `products` in product id order (every writer locks in that order,
/// so they never deadlock) and returns their available quantities. Unknown products are
/// absent from the map.
pub async fn lock_stock(
    tx: &mut PgConnection,
    products: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, i64>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT product_id, available FROM stock WHERE product_id = ANY($1) ORDER BY product_id FOR UPDATE",
    )
    .bind(products)
    .fetch_all(tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Moves `line.quantity` from available to reserved; `false` if not enough is available.
pub async fn reserve(tx: &mut PgConnection, line: &Line) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE stock SET available = available - $2, reserved = reserved + $2, updated_at = now()
         WHERE product_id = $1 AND available >= $2",
    )
    .bind(line.product_id)
    .bind(line.quantity)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves `line.quantity` from reserved back to available; `false` if not that much is reserved.
pub async fn release(tx: &mut PgConnection, line: &Line) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE stock SET available = available + $2, reserved = reserved - $2, updated_at = now()
         WHERE product_id = $1 AND reserved >= $2",
    )
    .bind(line.product_id)
    .bind(line.quantity)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves `line.quantity` from reserved to sold; `false` if not that much is reserved.
pub async fn sell(tx: &mut PgConnection, line: &Line) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE stock SET reserved = reserved - $2, sold = sold + $2, updated_at = now()
         WHERE product_id = $1 AND reserved >= $2",
    )
    .bind(line.product_id)
    .bind(line.quantity)
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn level(pool: &PgPool, product_id: Uuid) -> sqlx::Result<Option<Level>> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT available, reserved FROM stock WHERE product_id = $1")
            .bind(product_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(available, reserved)| Level {
        available,
        reserved,
    }))
}

/// Why an adjustment was not applied.
#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("no stock for this product")]
    UnknownProduct,
    #[error("only {available} available: the adjustment would take stock below zero")]
    BelowZero { available: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies an adjustment to the available stock and records it, in one transaction. Stock
/// never goes below zero, and only available (not reserved) stock can be taken away.
pub async fn adjust(
    pool: &PgPool,
    product_id: Uuid,
    adjustment: &Adjustment,
) -> Result<Level, AdjustError> {
    let mut tx = pool.begin().await?;
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE stock SET available = available + $2, adjusted = adjusted + $2, updated_at = now()
         WHERE product_id = $1 AND available + $2 >= 0
         RETURNING available, reserved",
    )
    .bind(product_id)
    .bind(adjustment.delta())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((available, reserved)) = row else {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
                .bind(product_id)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match current {
            None => AdjustError::UnknownProduct,
            Some(available) => AdjustError::BelowZero { available },
        });
    };
    sqlx::query("INSERT INTO adjustments (id, product_id, delta, reason) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(product_id)
        .bind(adjustment.delta())
        .bind(adjustment.reason())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Level {
        available,
        reserved,
    })
}

/// Every product's counters `(product_id, initial, adjusted, available, reserved, sold)`, in
/// product id order. The table is schema-qualified so that any pool on the shop's database
/// can run it (the audit's need not have `inventory` on its search path).
pub async fn stock_report(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, i64, i64, i64, i64, i64)>> {
    sqlx::query_as(
        "SELECT product_id, initial, adjusted, available, reserved, sold FROM inventory.stock ORDER BY product_id",
    )
    .fetch_all(pool)
    .await
}
