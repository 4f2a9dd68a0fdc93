//! The inbox: a handler's effects and the id of the event it handled commit in one
//! transaction, so a redelivered event is recognised and changes nothing. Delivery is at
//! least once; effects are exactly once.

use std::collections::HashSet;

use sqlx::PgPool;
use tracing::Instrument as _;
use uuid::Uuid;

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

/// Handles `events` (each with its consumer span) in one transaction with one inbox insert
/// for all: returns, in their order, whether each was applied now (`false`: a duplicate, of
/// an earlier delivery or of one in this batch). On any handler error nothing commits and
/// the error is returned: the caller then handles each event on its own ([`process`]), so
/// one event's failure never becomes its neighbours'.
///
/// The inbox ids are inserted in id order, and [`Handler::lock_batch`] takes the handlers'
/// shared row locks in a fixed order, so concurrent batches cannot deadlock on either.
pub async fn process_batch(
    pool: &PgPool,
    events: &[(&Envelope, tracing::Span)],
    handler: &dyn Handler,
) -> Result<Vec<bool>, HandlerError> {
    let mut tx = pool.begin().await?;
    let mut keys: Vec<(Uuid, &str)> = events
        .iter()
        .map(|(e, _)| (e.id, e.event_type.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup_by_key(|k| k.0);
    let (ids, types): (Vec<Uuid>, Vec<&str>) = keys.into_iter().unzip();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (event_id, event_type)
         SELECT id, kind FROM unnest($1::uuid[], $2::text[]) AS t(id, kind) ORDER BY id
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .bind(&types)
    .fetch_all(&mut *tx)
    .await?;
    let mut fresh: HashSet<Uuid> = inserted.into_iter().collect();
    let mut todo: Vec<&Envelope> = Vec::new();
    let mut seen = HashSet::new();
    for (e, _) in events {
        if fresh.contains(&e.id) && seen.insert(e.id) {
            todo.push(e);
        }
    }
    handler.lock_batch(&todo, &mut tx).await?;
    let mut applied = Vec::with_capacity(events.len());
    for (event, span) in events {
        // The first copy of a fresh id is applied; a second copy in the batch is a duplicate.
        if fresh.remove(&event.id) {
            telemetry::in_db_span(
                || format!("handle {}", event.event_type),
                handler.handle(event, &mut tx),
            )
            .instrument(span.clone())
            .await?;
            applied.push(true);
        } else {
            applied.push(false);
        }
    }
    tx.commit().await?;
    Ok(applied)
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
