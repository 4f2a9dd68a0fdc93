//! The inbox: a handler's effects and the id of the event it handled commit in one
//! transaction, so a redelivered event is recognised and changes nothing. Delivery is at
//! least once; effects are exactly once.

use sqlx::PgPool;

use crate::{
    bus::{Handler, HandlerError},
    envelope::Envelope,
    telemetry,
};

/// Handles `event` once: returns `Ok(true)` if its effects were applied and committed now,
/// `Ok(false)` if it had already been processed (a duplicate), and the handler's error
/// otherwise (nothing committed).
pub async fn process(
    pool: &PgPool,
    event: &Envelope,
    handler: &dyn Handler,
) -> Result<bool, HandlerError> {
    telemetry::in_db_span(
        || format!("handle {}", event.event_type),
        transaction(pool, event, handler),
    )
    .await
}

/// The handler's transaction, with the inbox insert.
async fn transaction(
    pool: &PgPool,
    event: &Envelope,
    handler: &dyn Handler,
) -> Result<bool, HandlerError> {
    let mut tx = pool.begin().await?;
    // A concurrent duplicate blocks here on the primary key until the first commits, then
    // inserts nothing.
    let fresh = sqlx::query(
        "INSERT INTO inbox (event_id, event_type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(event.id)
    .bind(&event.event_type)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if fresh {
        handler.handle(event, &mut tx).await?;
    }
    tx.commit().await?;
    Ok(fresh)
}

/// Deletes inbox ids older than the retention period (a replay of an older message would be
/// applied again: keep retention longer than anything is kept in a dead-letter queue).
pub async fn prune(pool: &PgPool, retention_hours: u32) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM inbox WHERE processed_at < now() - make_interval(hours => $1)")
            .bind(retention_hours as i32)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
