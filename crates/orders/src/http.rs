//! The orders API: place (202, the saga runs after), get, list, and a live event stream of
//! status changes.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::http::Method;
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use shop_platform::http::{Access, Routes};
use shop_platform::{
    assertion::{self, Keys, Subject},
    events::OrderLine,
    http::{ApiError, ApiJson, Caller},
    outbox::Waker,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    api::{OrderPage, OrderView, PlaceOrder, PricedProduct, StatusEvent},
    live::{Changes, Watch},
    saga::OrderStatus,
    store::{self, NewOrder},
};

pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: i32 = 1000;
/// The largest total of one order, in cents (one million in the currency).
pub const MAX_TOTAL_CENTS: i64 = 100_000_000;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub http: reqwest::Client,
    /// Where prices come from: the products service's instances.
    pub products: Arc<shop_platform::upstream::Instances>,
    /// Signs the service assertion of orders' calls to products.
    pub keys: Keys,
    pub deadline: Duration,
    /// Status changes of the orders watched by this instance's event streams (told after
    /// each commit of this instance).
    pub changes: Changes,
    /// Wakes the outbox relay once a new order (and its `order.created`) has committed.
    pub outbox: Waker,
}

/// The orders service's routes and who may call each.
pub fn routes() -> Routes<Arc<AppState>> {
    Routes::default()
        .route(Method::GET, "/api/orders", Access::User, list)
        .route(Method::POST, "/api/orders", Access::User, place)
        .route(Method::GET, "/api/orders/{id}", Access::User, get_one)
        .route(Method::GET, "/api/orders/{id}/events", Access::User, events)
        .route(Method::GET, ADMIN_STATS, Access::Admin, admin_stats)
        .route(Method::GET, ADMIN_ORDER, Access::Admin, admin_order)
}

/// How many orders are in each status (the operations page).
pub const ADMIN_STATS: &str = "/api/admin/orders/stats";
/// What orders keeps of one order for its timeline.
pub const ADMIN_ORDER: &str = "/api/admin/orders/{id}";

async fn admin_stats(
    caller: Caller,
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let counts = store::count_by_status(&state.pool).await?;
    let by_status: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(status, n)| (status, n.into()))
        .collect();
    Ok(Json(serde_json::json!({ "by_status": by_status })))
}

async fn admin_order(
    caller: Caller,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<shop_platform::timeline::OrderRecord>, ApiError> {
    caller.require_admin()?;
    let id = id
        .parse::<Uuid>()
        .map_err(|_| ApiError::not_found("order"))?;
    store::record(&state.pool, None, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("order"))
}

pub fn router(state: AppState) -> Router {
    routes().with_state(Arc::new(state))
}

fn validate(body: &PlaceOrder) -> Result<(), ApiError> {
    if body.items.is_empty() || body.items.len() > MAX_LINES {
        return Err(ApiError::validation(
            "items",
            format!("an order has 1 to {MAX_LINES} lines"),
        ));
    }
    for (i, l) in body.items.iter().enumerate() {
        if body.items[..i].iter().any(|e| e.product_id == l.product_id) {
            return Err(ApiError::validation(
                format!("items[{i}].product_id"),
                "this product is in an earlier line: give one line per product",
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&l.quantity) {
            return Err(ApiError::validation(
                format!("items[{i}].quantity"),
                format!("must be 1 to {MAX_QUANTITY}"),
            ));
        }
    }
    // The text rule keeps NUL out too, which PostgreSQL cannot store in text.
    shop_platform::validation::text("payment_token", &body.payment_token, 100)?;
    Ok(())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::validation("Idempotency-Key", "must be visible ASCII"))?
                .trim();
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::validation(
                    "Idempotency-Key",
                    "must be 1 to 200 characters",
                ));
            }
            Ok(Some(k.to_string()))
        }
    }
}

/// Prices every line from the products service (which serves them through its cache).
async fn price(
    state: &AppState,
    body: &PlaceOrder,
) -> Result<(Vec<OrderLine>, i64, String), ApiError> {
    let mut ids: Vec<Uuid> = body.items.iter().map(|l| l.product_id).collect();
    ids.sort();
    ids.dedup();
    let list = ids
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let unavailable =
        |_| ApiError::Unavailable("the products service is unavailable, try again".into());
    // An assertion per attempt: one is good for one use.
    let request = |base: &str| {
        let assertion = state.keys.sign(
            Subject::Service {
                name: crate::program::IDENTITY.name.into(),
            },
            crate::program::PRICES_FROM,
            None,
            None,
            None,
        );
        state
            .http
            .get(format!("{base}/internal/products"))
            .header(assertion::HEADER, assertion.as_str())
            .query(&[("ids", list.as_str())])
    };
    let resp = state
        .products
        .send("GET", true, request)
        .await
        .map_err(unavailable)?;
    if !resp.status().is_success() {
        return Err(ApiError::Unavailable(format!(
            "the products service answered {}",
            resp.status()
        )));
    }
    let priced: Vec<PricedProduct> = resp.json().await.map_err(unavailable)?;
    let mut lines = Vec::with_capacity(body.items.len());
    let mut total: i64 = 0;
    let mut currency: Option<String> = None;
    for (i, l) in body.items.iter().enumerate() {
        let p = priced
            .iter()
            .find(|p| p.id == l.product_id)
            .ok_or_else(|| {
                ApiError::validation(format!("items[{i}].product_id"), "unknown product")
            })?;
        if currency.as_ref().is_some_and(|c| *c != p.currency) {
            return Err(ApiError::validation(
                "items",
                "all products of an order must share one currency",
            ));
        }
        currency = Some(p.currency.clone());
        total = total
            .checked_add(
                p.price_cents
                    .checked_mul(i64::from(l.quantity))
                    .unwrap_or(i64::MAX),
            )
            .ok_or_else(|| ApiError::validation("items", "total too large"))?;
        lines.push(OrderLine {
            product_id: l.product_id,
            name: p.name.clone(),
            quantity: l.quantity,
            unit_price_cents: p.price_cents,
        });
    }
    Ok((lines, total, currency.unwrap_or_else(|| "EUR".into())))
}

async fn place(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrder>,
) -> Result<Response, ApiError> {
    validate(&body)?;
    let key = idempotency_key(&headers)?;
    let fingerprint = key.as_ref().map(|_| fingerprint(&body));
    if let Some(k) = &key
        && let Some(found) = store::by_idempotency_key(&state.pool, caller.user_id, k).await?
    {
        return same_request(&state, found, fingerprint.as_deref()).await;
    }
    let (lines, total_cents, currency) = price(&state, &body).await?;
    if total_cents > MAX_TOTAL_CENTS {
        return Err(ApiError::validation(
            "items",
            format!("an order's total is at most {MAX_TOTAL_CENTS} cents"),
        ));
    }
    let order = NewOrder {
        id: Uuid::now_v7(),
        user_id: caller.user_id,
        lines,
        total_cents,
        currency,
        payment_token: body.payment_token.trim().to_string(),
        idempotency_key: key.clone(),
        idempotency_fingerprint: fingerprint.clone(),
        deadline: state.deadline,
    };
    if let Some(placed) = store::insert_order(&state.pool, &order).await? {
        state.outbox.wake();
        return Ok(accepted_view(placed));
    }
    // The same key raced us: answer with the order that won, if it asked the same.
    let found = store::by_idempotency_key(
        &state.pool,
        caller.user_id,
        key.as_deref().unwrap_or_default(),
    )
    .await?
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("idempotent order vanished")))?;
    same_request(&state, found, fingerprint.as_deref()).await
}

/// A digest of what an order request asks for (lines and payment token, as sent).
fn fingerprint(body: &PlaceOrder) -> String {
    use sha2::{Digest as _, Sha256};
    let bytes = serde_json::to_vec(body).expect("a request serializes");
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The answer to a request whose Idempotency-Key already placed `found`: that order again
/// if the request is the same, 422 if the key is reused for another one.
async fn same_request(
    state: &AppState,
    (id, placed_with): (Uuid, Option<String>),
    fingerprint: Option<&str>,
) -> Result<Response, ApiError> {
    match (placed_with.as_deref(), fingerprint) {
        (Some(placed), Some(now)) if placed != now => Err(ApiError::IdempotencyKeyReused),
        _ => accepted(state, id).await,
    }
}

async fn accepted(state: &AppState, id: Uuid) -> Result<Response, ApiError> {
    let view = store::view(&state.pool, id, None)
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(accepted_view(view))
}

/// 202 with the order and where to follow it.
fn accepted_view(view: OrderView) -> Response {
    let id = view.id;
    let mut resp = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(v) = format!("/api/orders/{id}").parse() {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    resp
}

fn owner_filter(caller: &Caller) -> Option<Uuid> {
    if caller.is_admin {
        None
    } else {
        Some(caller.user_id)
    }
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    // Another user's order and a malformed id look the same as a missing one: 404.
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("order"))?;
    let view = store::view(&state.pool, id, owner_filter(&caller))
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let limit: i64 = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::validation("limit", "must be 1 to 100"))?,
    };
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<Uuid>()
                .map_err(|_| ApiError::validation("cursor", "invalid cursor"))?,
        ),
    };
    let mut items = store::page(&state.pool, caller.user_id, before, limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|o| o.id.to_string())
    } else {
        None
    };
    Ok(Json(OrderPage { items, next_cursor }))
}

/// How long an event stream waits for a change told by this instance before it reads the
/// order again (a change made by another instance of the service is seen this way).
const RECHECK: Duration = Duration::from_secs(1);

/// Server-sent events: the current status at once, then every change, until a terminal one.
/// Changes made by this instance come with their status (no read of the database); the order
/// is read again only after [`RECHECK`] without one.
async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("order"))?;
    // Watching before the read: a change committed after it is not missed.
    let watch = state.changes.watch(id);
    let view = store::view(&state.pool, id, owner_filter(&caller))
        .await?
        .ok_or_else(|| ApiError::not_found("order"))?;
    let now = StatusEvent {
        order_id: id,
        at: view.history.last().map_or(view.updated_at, |h| h.at),
        status: view.status,
        cancel_reason: view.cancel_reason,
    };
    struct S {
        pool: PgPool,
        watch: Watch,
        /// The event to send first (the status when the stream opened).
        first: Option<StatusEvent>,
        last: Option<StatusEvent>,
    }
    let init = S {
        pool: state.pool.clone(),
        watch,
        first: Some(now),
        last: None,
    };
    let stream = futures::stream::unfold(init, move |mut s| async move {
        if s.last.as_ref().is_some_and(|l| is_terminal(&l.status)) {
            return None;
        }
        loop {
            let seen = match s.first.take() {
                Some(first) => first,
                None => match tokio::time::timeout(RECHECK, s.watch.changed()).await {
                    Ok(Some(change)) => change,
                    _ => match store::status(&s.pool, id).await {
                        Ok(Some(now)) => now,
                        _ => continue,
                    },
                },
            };
            // Same status, or an older change told late: nothing new.
            if s.last
                .as_ref()
                .is_some_and(|l| l.status == seen.status || l.at > seen.at)
            {
                continue;
            }
            let event = SseEvent::default()
                .event("status")
                .json_data(&seen)
                .unwrap_or_default();
            s.last = Some(seen);
            return Some((Ok(event), s));
        }
    })
    .boxed();
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn is_terminal(status: &str) -> bool {
    status.parse::<OrderStatus>().is_ok_and(|s| s.is_terminal())
}
