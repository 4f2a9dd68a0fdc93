//! The administrators' routes every service serves, the same on each (`/api/admin/...`; the
//! gateway sends one to the service its `?service=` names, or asks every service and puts
//! the answers together): the service's dead letters (list, one with its body, replay one or
//! all), its queue, and what its outbox and inbox hold of one saga (an order's timeline).
//!
//! Each service answers for itself because each one's broker user reaches only its own
//! queues and each one's database role only its own schema; the gateway holds neither.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{Path, Query},
    http::Method,
};
use chrono::{DateTime, Utc};
use lapin::{options::QueueDeclareOptions, types::FieldTable};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    amqp::Broker,
    dlq,
    http::{Access, ApiError, Caller, Routes},
};

/// The public paths of these routes (the gateway's route table names them too).
pub const DEAD_LETTERS: &str = "/api/admin/dead-letters";
pub const DEAD_LETTER: &str = "/api/admin/dead-letters/{id}";
pub const REPLAY_ONE: &str = "/api/admin/dead-letters/{id}/replay";
pub const REPLAY_ALL: &str = "/api/admin/dead-letters/replay";
pub const QUEUE: &str = "/api/admin/queue";
pub const OUTBOX: &str = "/api/admin/outbox";
pub const INBOX: &str = "/api/admin/inbox";

/// How many dead letters one list shows at most (the total is counted apart).
pub const MAX_LIST: usize = 500;
/// How many event ids one inbox lookup may name.
pub const MAX_IDS: usize = 200;

/// What the routes reach: the service's broker and pool (each `None` when it has none).
pub struct Admin {
    pub service: &'static str,
    /// Its broker, when it consumes events (and so has queues).
    pub broker: Option<Arc<Broker>>,
    pub pool: Option<PgPool>,
}

/// The routes, for any service's state (they read [`Admin`] from an extension that
/// [`crate::service::start`] adds).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Routes<S> {
    Routes::default()
        .route(Method::GET, DEAD_LETTERS, Access::Admin, list)
        .route(Method::POST, REPLAY_ALL, Access::Admin, replay_all)
        .route(Method::POST, REPLAY_ONE, Access::Admin, replay_one)
        .route(Method::GET, DEAD_LETTER, Access::Admin, show)
        .route(Method::GET, QUEUE, Access::Admin, queue)
        .route(Method::GET, OUTBOX, Access::Admin, outbox)
        .route(Method::GET, INBOX, Access::Admin, inbox)
}

/// One service's dead letters: how many wait, and the first of them.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetters {
    pub service: String,
    pub total: u32,
    /// Without their bodies.
    pub items: Vec<dlq::DeadLetter>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Which service (the gateway's; a service answers for itself).
    pub service: Option<String>,
    /// At most this many (1 to 500; 100 when absent).
    pub limit: Option<usize>,
    /// Only the messages whose body contains this text (an order's id, say).
    pub contains: Option<String>,
}

fn broker(admin: &Admin) -> Result<&Broker, ApiError> {
    admin
        .broker
        .as_deref()
        .ok_or_else(|| ApiError::not_found("dead-letter queue (this service consumes no events)"))
}

fn unavailable(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %e, "the broker could not be asked");
    ApiError::Unavailable("the broker could not be asked, try again".into())
}

async fn list(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            format!("from 1 to {MAX_LIST}"),
        ));
    }
    let broker = broker(&admin)?;
    let contains = q.contains.as_deref();
    let wanted = |d: &dlq::DeadLetter| contains.is_none_or(|c| d.body.contains(c));
    let (total, found) = dlq::peek(broker, admin.service, limit, wanted)
        .await
        .map_err(unavailable)?;
    Ok(Json(DeadLetters {
        service: admin.service.to_string(),
        total,
        items: found
            .into_iter()
            .map(|d| dlq::DeadLetter {
                body: String::new(),
                ..d
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ServiceQuery {
    /// Which service (the gateway's; a service answers for itself).
    pub service: Option<String>,
}

async fn show(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Path(id): Path<String>,
    Query(_): Query<ServiceQuery>,
) -> Result<Json<dlq::DeadLetter>, ApiError> {
    caller.require_admin()?;
    let broker = broker(&admin)?;
    let (_, found) = dlq::peek(broker, admin.service, 1, |d| d.message_id == id)
        .await
        .map_err(unavailable)?;
    found
        .into_iter()
        .find(|d| d.message_id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("dead letter"))
}

async fn replay_one(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Path(id): Path<String>,
    Query(_): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    replay(caller, &admin, Some(&id)).await
}

async fn replay_all(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Query(_): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    replay(caller, &admin, None).await
}

/// Sends the dead letter `one` (or all) back to the service's queue: 404 when `one` is not
/// there.
async fn replay(caller: Caller, admin: &Admin, one: Option<&str>) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let broker = broker(admin)?;
    let replayed = dlq::replay(broker, admin.service, one)
        .await
        .map_err(unavailable)?;
    if one.is_some() && replayed == 0 {
        return Err(ApiError::not_found("dead letter"));
    }
    tracing::info!(service = admin.service, replayed, caller = %caller.user_id, "dead letters replayed");
    Ok(Json(
        json!({ "service": admin.service, "replayed": replayed }),
    ))
}

/// A service's queue as the broker counts it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueState {
    pub service: String,
    pub queue: String,
    /// Messages ready for delivery (not counting those delivered and not yet acked).
    pub ready: u32,
    pub consumers: u32,
    pub dead_letters: u32,
}

async fn queue(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Query(_): Query<ServiceQuery>,
) -> Result<Json<QueueState>, ApiError> {
    caller.require_admin()?;
    let broker = broker(&admin)?;
    let names = broker.names();
    let (queue, dead) = (
        names.queue(admin.service),
        names.dead_letter_queue(admin.service),
    );
    let asked = async {
        let ch = broker.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await?;
        let d = ch
            .queue_declare(dead.as_str().into(), passive, FieldTable::default())
            .await?;
        let _ = ch.close(200, "counted".into()).await;
        anyhow::Ok((q.message_count(), q.consumer_count(), d.message_count()))
    };
    let (ready, consumers, dead_letters) = asked.await.map_err(unavailable)?;
    Ok(Json(QueueState {
        service: admin.service.to_string(),
        queue,
        ready,
        consumers,
        dead_letters,
    }))
}

/// An event a service wrote to its outbox.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Published {
    pub event_id: Uuid,
    pub event_type: String,
    /// When the transaction that decided it committed the row.
    pub written_at: DateTime<Utc>,
    /// When the broker confirmed it (`None`: still in the outbox).
    pub sent_at: Option<DateTime<Utc>>,
    /// The W3C traceparent of the transaction that wrote it.
    pub trace_context: Option<String>,
}

/// The events of saga `correlation_id` in an outbox (of `schema`, or of the pool's own
/// search path), sent between `since` and `until` or not sent yet (the window keeps the
/// search on the `sent_at` index).
pub async fn published(
    pool: &PgPool,
    schema: Option<&str>,
    correlation_id: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Vec<Published>> {
    let table = qualified(schema, "outbox");
    sqlx::query_as(&format!(
        "SELECT event_id, event_type, created_at AS written_at, sent_at, trace_context FROM {table}
         WHERE (sent_at BETWEEN $2 AND $3 OR sent_at IS NULL)
           AND (body::jsonb ->> 'correlation_id') = $1
         ORDER BY id"
    ))
    .bind(correlation_id.to_string())
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await
}

/// Which of `ids` an inbox (of `schema`, or the pool's own) has handled, with when.
pub async fn handled(
    pool: &PgPool,
    schema: Option<&str>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, DateTime<Utc>)>> {
    let table = qualified(schema, "inbox");
    sqlx::query_as(&format!(
        "SELECT event_id, processed_at FROM {table} WHERE event_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

fn qualified(schema: Option<&str>, table: &str) -> String {
    match schema {
        Some(s) => format!("\"{s}\".{table}"),
        None => table.to_string(),
    }
}

fn pool(admin: &Admin) -> Result<&PgPool, ApiError> {
    admin
        .pool
        .as_ref()
        .ok_or_else(|| ApiError::not_found("outbox (this service keeps no data)"))
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "an administrators' read failed");
    ApiError::Unavailable("the database could not be asked, try again".into())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutboxQuery {
    pub service: Option<String>,
    /// The saga (an order's id).
    pub correlation_id: Uuid,
    /// Sent from this instant on (unsent rows always show).
    pub since: DateTime<Utc>,
    /// Sent until this instant.
    pub until: DateTime<Utc>,
}

async fn outbox(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let found = published(pool(&admin)?, None, q.correlation_id, q.since, q.until)
        .await
        .map_err(db_error)?;
    Ok(Json(json!({ "service": admin.service, "items": found })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    pub service: Option<String>,
    /// Event ids, separated by commas (at most 200).
    pub ids: String,
}

async fn inbox(
    caller: Caller,
    Extension(admin): Extension<Arc<Admin>>,
    Query(q): Query<InboxQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let ids = parse_ids(&q.ids)?;
    let found = handled(pool(&admin)?, None, &ids).await.map_err(db_error)?;
    let items: Vec<Value> = found
        .into_iter()
        .map(|(event_id, at)| json!({ "event_id": event_id, "processed_at": at }))
        .collect();
    Ok(Json(json!({ "service": admin.service, "items": items })))
}

/// `a,b,c` as event ids: 1 to [`MAX_IDS`] UUIDs in their hyphenated form, nothing else
/// ([`IDS_PATTERN`]).
pub fn parse_ids(text: &str) -> Result<Vec<Uuid>, ApiError> {
    let ids = text
        .split(',')
        .map(|s| {
            let hyphenated = s.len() == 36 && s.as_bytes()[8] == b'-';
            hyphenated
                .then(|| s.parse::<Uuid>().ok())
                .flatten()
                .ok_or_else(|| ApiError::validation("ids", format!("{s:?} is not an event id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_IDS {
        return Err(ApiError::validation(
            "ids",
            format!("at most {MAX_IDS} at once"),
        ));
    }
    Ok(ids)
}

/// [`parse_ids`]'s rule as the JSON Schema pattern the OpenAPI document gives.
pub const IDS_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}){0,199}$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_parsed_and_bounded() {
        let a = Uuid::now_v7();
        assert_eq!(parse_ids(&format!("{a},{a}")).unwrap(), vec![a, a]);
        let schema = serde_json::json!({"type": "string", "pattern": IDS_PATTERN});
        let pattern = jsonschema::validator_for(&schema).unwrap();
        let pattern = |s: &str| pattern.is_valid(&serde_json::json!(s));
        let upper = a.to_string().to_uppercase();
        for good in [a.to_string(), format!("{a},{upper}")] {
            assert!(parse_ids(&good).is_ok() && pattern(&good), "{good}");
        }
        let many = vec![a.to_string(); MAX_IDS + 1].join(",");
        for bad in [
            String::new(),
            "nope".into(),
            format!(" {a}"),
            format!("{a},"),
            a.simple().to_string(),
            format!("{{{a}}}"),
            many,
        ] {
            assert!(parse_ids(&bad).is_err(), "{bad}");
            assert!(!pattern(&bad), "{bad}");
        }
    }
}
