//! All SQL of the orders service. Every saga transition is one transaction: the order row
//! (state, version, deadline), its history and the outbox rows of the commands it issues.

use chrono::{DateTime, Utc};
use shop_platform::{
    Envelope,
    events::{OrderCreated, OrderLine},
    outbox, telemetry,
};
use sqlx::{FromRow as _, PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::{
    api::{OrderView, StatusEvent},
    messages::command_event,
    saga::{OrderStatus, SagaState, Transition},
};

/// An order's saga as loaded for a transition.
#[derive(sqlx::FromRow)]
pub struct SagaRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub total_cents: i64,
    pub currency: String,
    pub payment_token: String,
    pub correlation_id: Uuid,
    pub version: i64,
    #[sqlx(rename = "saga", json)]
    pub state: SagaState,
    /// When the order was accepted.
    pub created_at: DateTime<Utc>,
    /// The `traceparent` of the request that placed it.
    pub trace_context: Option<String>,
}

/// A new order, priced.
pub struct NewOrder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_token: String,
    pub idempotency_key: Option<String>,
    /// What the request with that key asked for (a digest of its body).
    pub idempotency_fingerprint: Option<String>,
    pub deadline: std::time::Duration,
}

/// Stores the order, its first history entry and `order.created` in one transaction, and
/// returns the order as it was placed (read before the commit: once committed, the saga may
/// move it on before the caller is answered). `None` if the user already has an order with
/// that idempotency key.
pub async fn insert_order(pool: &PgPool, o: &NewOrder) -> sqlx::Result<Option<OrderView>> {
    // On the request's span: a search by order id finds the trace.
    telemetry::annotate(&tracing::Span::current(), "shop.order_id", o.id);
    telemetry::in_db_span(|| "place order".into(), insert(pool, o)).await
}

async fn insert(pool: &PgPool, o: &NewOrder) -> sqlx::Result<Option<OrderView>> {
    let mut tx = pool.begin().await?;
    let state = SagaState::new();
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_cents, currency, payment_token, saga, deadline_at, correlation_id, idempotency_key, idempotency_fingerprint, trace_context)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $1, $9, $10, $11)
         ON CONFLICT ON CONSTRAINT orders_idempotency DO NOTHING",
    )
    .bind(o.id)
    .bind(o.user_id)
    .bind(state.status.as_str())
    .bind(o.total_cents)
    .bind(&o.currency)
    .bind(&o.payment_token)
    .bind(sqlx::types::Json(&state))
    .bind(o.deadline.as_secs_f64())
    .bind(&o.idempotency_key)
    .bind(&o.idempotency_fingerprint)
    .bind(telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.rollback().await?;
        return Ok(None);
    }
    for (i, l) in o.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line, product_id, name, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(o.id)
        .bind(i as i32)
        .bind(l.product_id)
        .bind(&l.name)
        .bind(l.quantity)
        .bind(l.unit_price_cents)
        .execute(&mut *tx)
        .await?;
    }
    history(&mut tx, o.id, state.status).await?;
    let event = Envelope::new(
        o.id,
        &OrderCreated {
            order_id: o.id,
            user_id: o.user_id,
            items: o.lines.clone(),
            total_cents: o.total_cents,
            currency: o.currency.clone(),
        },
        o.id,
        o.id,
    );
    outbox::enqueue(&mut tx, &event).await?;
    let placed = view(&mut *tx, o.id, None).await?;
    tx.commit().await?;
    Ok(placed)
}

/// Records a status change. Live event streams of this instance are told after the commit
/// (see `program.rs`), not by a NOTIFY, which would serialise the commits.
async fn history(tx: &mut PgConnection, id: Uuid, status: OrderStatus) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO order_history (order_id, status) VALUES ($1, $2)")
        .bind(id)
        .bind(status.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A query of the columns of [`SagaRow`] from `orders`, followed by `$rest`.
macro_rules! saga_query {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, total_cents, currency, payment_token, correlation_id, version, saga, created_at, trace_context FROM orders ",
            $rest
        )
    };
}

/// Loads an order's saga, locking the row for the transition.
pub async fn load_for_update(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<SagaRow>> {
    let query = saga_query!("WHERE id = $1 FOR UPDATE");
    sqlx::query_as(query).bind(id).fetch_optional(tx).await
}

/// Orders whose deadline has passed, locked (others skip them).
pub async fn due(tx: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<SagaRow>> {
    let query = saga_query!(
        "WHERE deadline_at <= now() ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    sqlx::query_as(query).bind(limit).fetch_all(tx).await
}

/// Applies a transition: state, version, deadline, history, and the outbox rows of its
/// commands, all on `tx`. Returns the time it is recorded at (the transaction's, as in the
/// history), or `None` if the row changed since it was read (nothing applied).
pub async fn apply(
    tx: &mut PgConnection,
    row: &SagaRow,
    t: &Transition,
    cause: Option<&Envelope>,
    deadline: std::time::Duration,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    let status_changed = t.state.status != row.state.status;
    let updated: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE orders SET status = $2, cancel_reason = $3, saga = $4, version = version + 1,
             deadline_at = CASE WHEN $5 THEN now() + make_interval(secs => $6) ELSE NULL END, updated_at = now()
         WHERE id = $1 AND version = $7 RETURNING updated_at",
    )
    .bind(row.id)
    .bind(t.state.status.as_str())
    .bind(t.state.cancel_reason.map(|r| r.as_str()))
    .bind(sqlx::types::Json(&t.state))
    .bind(t.deadline.is_some())
    .bind(deadline.as_secs_f64())
    .bind(row.version)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(at) = updated else {
        return Ok(None);
    };
    if status_changed {
        history(tx, row.id, t.state.status).await?;
    }
    // Only a confirmation tells what was bought (for the customer's receipt).
    let items = if t.commands.contains(&crate::saga::Command::Confirm) {
        lines(tx, row.id).await?
    } else {
        Vec::new()
    };
    for command in &t.commands {
        let event = command_event(row, command, cause, &items);
        outbox::enqueue(tx, &event).await?;
    }
    Ok(Some(at))
}

/// An order's lines, in the order they were placed.
async fn lines(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<Vec<OrderLine>> {
    sqlx::query_as::<_, (Uuid, String, i32, i64)>(
        "SELECT product_id, name, quantity, unit_price_cents FROM order_items WHERE order_id = $1 ORDER BY line",
    )
    .bind(id)
    .fetch_all(tx)
    .await
    .map(|rows| {
        rows.into_iter()
            .map(|(product_id, name, quantity, unit_price_cents)| OrderLine {
                product_id,
                name,
                quantity,
                unit_price_cents,
            })
            .collect()
    })
}

/// A query of an [`OrderView`]'s columns from `orders o` (lines and history aggregated in the
/// same statement), followed by `$rest`.
macro_rules! view_query {
    ($rest:literal) => {
        concat!(
            "SELECT o.id, o.user_id, o.status, o.cancel_reason, o.total_cents, o.currency, o.created_at, o.updated_at,
                 (SELECT coalesce(json_agg(json_build_object('product_id', i.product_id, 'quantity', i.quantity,
                                                             'unit_price_cents', i.unit_price_cents) ORDER BY i.line), '[]')
                    FROM order_items i WHERE i.order_id = o.id) AS items,
                 (SELECT coalesce(json_agg(json_build_object('status', h.status, 'at', h.at) ORDER BY h.id), '[]')
                    FROM order_history h WHERE h.order_id = o.id) AS history
             FROM orders o ",
            $rest
        )
    };
}

/// The order as its owner sees it (None if it is not theirs or does not exist). One query:
/// it is read after every placement and by every status poll.
pub async fn view(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    owner: Option<Uuid>,
) -> sqlx::Result<Option<OrderView>> {
    let Some(r) = sqlx::query(view_query!("WHERE o.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    if owner.is_some_and(|o| o != r.try_get::<Uuid, _>("user_id").unwrap_or_default()) {
        return Ok(None);
    }
    OrderView::from_row(&r).map(Some)
}

/// The id of a user's order with that idempotency key, and the fingerprint of the request
/// that placed it (none for orders placed before fingerprints were kept).
pub async fn by_idempotency_key(
    pool: &PgPool,
    user_id: Uuid,
    key: &str,
) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
    sqlx::query_as(
        "SELECT id, idempotency_fingerprint FROM orders WHERE user_id = $1 AND idempotency_key = $2",
    )
        .bind(user_id)
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// A page of a user's orders as they see them, newest first (ids are time-ordered uuid v7),
/// older than `before` if given: `limit` at most, in one query. Each form reads the
/// `(user_id, id DESC)` index from where the page starts.
pub async fn page(
    pool: &PgPool,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<OrderView>> {
    let rows = match before {
        None => {
            sqlx::query(view_query!(
                "WHERE o.user_id = $1 ORDER BY o.id DESC LIMIT $2"
            ))
            .bind(user_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
        Some(before) => {
            sqlx::query(view_query!(
                "WHERE o.user_id = $1 AND o.id < $3 ORDER BY o.id DESC LIMIT $2"
            ))
            .bind(user_id)
            .bind(limit)
            .bind(before)
            .fetch_all(pool)
            .await?
        }
    };
    rows.iter().map(OrderView::from_row).collect()
}

/// An order's status now, as its event stream tells it.
pub async fn status(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<StatusEvent>> {
    let row: Option<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT status, cancel_reason,
                coalesce((SELECT max(at) FROM order_history h WHERE h.order_id = o.id), o.updated_at)
         FROM orders o WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(status, cancel_reason, at)| StatusEvent {
        order_id: id,
        status,
        cancel_reason,
        at,
    }))
}

/// What the orders service keeps of order `id` for its timeline, from the `orders` tables
/// of `schema` (or of the pool's own search path).
pub async fn record(
    pool: &PgPool,
    schema: Option<&str>,
    id: Uuid,
) -> sqlx::Result<Option<shop_platform::timeline::OrderRecord>> {
    let prefix = schema.map(|s| format!("\"{s}\".")).unwrap_or_default();
    let row = sqlx::query(&format!(
        "SELECT status, cancel_reason, created_at, updated_at, trace_context FROM {prefix}orders WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let history = sqlx::query_as(&format!(
        "SELECT status, at FROM {prefix}order_history WHERE order_id = $1 ORDER BY id"
    ))
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(shop_platform::timeline::OrderRecord {
        order_id: id,
        status: row.get("status"),
        cancel_reason: row.get("cancel_reason"),
        placed_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        trace_context: row.get("trace_context"),
        history,
    }))
}

/// How many orders are in each status.
pub async fn count_by_status(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
}

/// One line per order for the invariant audit: (id, status, cancel reason, total). The
/// tables of these audit queries are schema-qualified so that any pool on the shop's
/// database can run them.
pub async fn report(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, String, Option<String>, i64)>> {
    sqlx::query_as("SELECT id, status, cancel_reason, total_cents FROM orders.orders ORDER BY id")
        .fetch_all(pool)
        .await
}

/// Units of each product that confirmed orders hold, for the invariant audit.
pub async fn sold_by_product(pool: &PgPool) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "SELECT i.product_id, sum(i.quantity)::int8 FROM orders.order_items i
         JOIN orders.orders o ON o.id = i.order_id
         WHERE o.status = 'CONFIRMED' GROUP BY i.product_id",
    )
    .fetch_all(pool)
    .await
}
