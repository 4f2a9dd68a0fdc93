//! The OpenAPI document of the public API, generated from the services' own request and
//! response types: users and products describe their routes themselves; the routes of
//! inventory, orders and notifications are described here against their types.
#![allow(dead_code)] // the functions below only carry their `#[utoipa::path]` descriptions

use serde::Serialize;
use shop_platform::{http::BearerAuth, validation::TextRule};
use utoipa::{Modify, OpenApi, ToSchema};

/// An error (RFC 9457 problem details); `field` names the invalid field of a 422.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier, e.g. `urn:shop:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub field: Option<String>,
}

#[utoipa::path(get, path = "/api/inventory/{product_id}", tag = "inventory",
    params(("product_id" = uuid::Uuid, Path, description = "The product")),
    responses(
        (status = 200, description = "Stock levels", body = shop_inventory::api::StockLevel),
        (status = 404, description = "No stock known for this product yet (`urn:shop:problem:not-yet-known`, with `Retry-After`): inventory learns of a new product by event, a moment after it is created; an unknown id stays so", body = Problem, content_type = "application/problem+json"),
    ))]
fn stock() {}

#[utoipa::path(post, path = "/api/inventory/{product_id}/adjustments", tag = "inventory",
    security(("bearer" = [])),
    params(("product_id" = uuid::Uuid, Path, description = "The product")),
    request_body = shop_inventory::api::StockAdjustment,
    responses(
        (status = 200, description = "Adjusted", body = shop_inventory::api::StockLevel),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stock would go below zero", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
    ))]
fn adjust() {}

#[utoipa::path(post, path = "/api/orders", tag = "orders",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 200 characters; the same key and body from the same user returns the same order, the same key with another body is refused (422 `urn:shop:problem:idempotency-key-reused`)")),
    request_body = shop_orders::api::PlaceOrder,
    responses(
        (status = 202, description = "Accepted: the order is PENDING and its saga runs", body = shop_orders::api::OrderView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid order (lines, quantities, a product in two lines, a total over one million, unknown products), or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
    ))]
fn place_order() {}

#[utoipa::path(get, path = "/api/orders", tag = "orders",
    security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "1 to 100, default 20", minimum = 1, maximum = 100),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = shop_orders::api::OrderPage),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
fn list_orders() {}

#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order with its history", body = shop_orders::api::OrderView),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
fn get_order() {}

#[utoipa::path(get, path = "/api/orders/{id}/events", tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "Server-sent events `status` (a StatusEvent as JSON) until a terminal status",
            body = shop_orders::api::StatusEvent, content_type = "text/event-stream"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
fn order_events() {}

#[utoipa::path(get, path = "/api/notifications", tag = "notifications",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's notifications, newest first", body = shop_notifications::api::NotificationList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
fn notifications() {}

/// `POST /api/auth/session`'s answer: the login's, but the token is in the cookie.
#[derive(Serialize, ToSchema)]
pub struct CookieSession {
    /// Seconds the session lives without use; each authenticated request extends it.
    pub expires_in: u64,
    pub user: shop_users::api::User,
}

/// `GET /api/auth/session`'s answer.
#[derive(Serialize, ToSchema)]
pub struct SessionUser {
    /// The cookie session's user; `null` without a session (or with an ended one).
    pub user: Option<shop_users::api::User>,
}

#[utoipa::path(get, path = "/api/auth/session", tag = "users",
    responses(
        (status = 200, description = "Who the browser's `shop_session` cookie is logged in as, if anyone", body = SessionUser),
    ))]
fn get_session() {}

#[utoipa::path(post, path = "/api/auth/session", tag = "users",
    params(("Origin" = String, Header, description = "The page's origin, which must name the host the request is sent to: the cookie session is for this site's own pages")),
    request_body = shop_users::api::LoginRequest,
    responses(
        (status = 200, description = "Logged in, for a browser: the token is set as the `shop_session` cookie (HttpOnly, SameSite=Strict, Secure when the page is HTTPS), not returned; requests with that cookie and no Authorization are the user's, and any but GET and HEAD must carry this site's Origin", body = CookieSession,
            headers(("Set-Cookie" = String, description = "shop_session=<token>; Path=/; HttpOnly; SameSite=Strict"))),
        (status = 401, description = "Wrong e-mail or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No Origin, or another site's", body = Problem, content_type = "application/problem+json"),
    ))]
fn open_session() {}

#[utoipa::path(delete, path = "/api/auth/session", tag = "users",
    params(("Origin" = String, Header, description = "The page's origin, which must name the host the request is sent to")),
    responses(
        (status = 204, description = "The cookie's session (if any) is logged out and the cookie cleared",
            headers(("Set-Cookie" = String, description = "shop_session=; Max-Age=0"))),
        (status = 403, description = "No Origin, or another site's", body = Problem, content_type = "application/problem+json"),
    ))]
fn close_session() {}

// The administrators' routes (the operations page). `?service=` names the service a route of
// every service is for (`shop_platform::admin`): any program but the gateway.

#[utoipa::path(get, path = "/api/admin/overview", tag = "admin", operation_id = "admin_overview",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every program instance's readiness (with each check), outbox backlog, oldest unsent event, deliveries held unacked and memory; every service's queue (ready, consumers, dead letters); the orders by status; the sagas ended (`sagas.ended`) and, over the last 15 s of readings (`sagas.window`, null until two are apart), sagas per second by outcome and saga latency p50/p90/p99 in ms", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_overview() {}

#[utoipa::path(get, path = "/api/admin/dead-letters", tag = "admin", operation_id = "admin_dead_letters",
    security(("bearer" = [])),
    params(("service" = Option<String>, Query, description = "One service's (a `shop_platform::admin::DeadLetters`); without it, every consuming service's: `{total, services: [{service, total} or {service, error}], items}`"),
           ("limit" = Option<usize>, Query, description = "At most this many per service, 1 to 500 (100)", minimum = 1, maximum = 500),
           ("contains" = Option<String>, Query, description = "Only messages whose body contains this text (an order id)")),
    responses(
        (status = 200, description = "Dead letters, without their bodies (left in their queues)", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The named service consumes no events", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_dead_letters() {}

#[utoipa::path(get, path = "/api/admin/dead-letters/{id}", tag = "admin", operation_id = "admin_dead_letter",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The message id"),
           ("service" = String, Query, description = "The service whose dead letter it is")),
    responses(
        (status = 200, description = "The dead letter with its body", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_dead_letter() {}

#[utoipa::path(post, path = "/api/admin/dead-letters/{id}/replay", tag = "admin", operation_id = "admin_replay_one",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The message id"),
           ("service" = String, Query, description = "The service whose dead letter it is")),
    responses(
        (status = 200, description = "`{service, replayed: 1}`: published to its queue again as a first attempt (with a broker confirm), then removed from the dead letters", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter, or the service consumes no events", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_replay_one() {}

#[utoipa::path(post, path = "/api/admin/dead-letters/replay", tag = "admin", operation_id = "admin_replay_all",
    security(("bearer" = [])),
    params(("service" = String, Query, description = "The service whose dead letters to replay, every one")),
    responses(
        (status = 200, description = "`{service, replayed}`: each published to its queue again as a first attempt (with a broker confirm), then removed from the dead letters", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The service consumes no events", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_replay_all() {}

#[utoipa::path(get, path = "/api/admin/queue", tag = "admin", operation_id = "admin_queue",
    security(("bearer" = [])),
    params(("service" = String, Query, description = "The service")),
    responses(
        (status = 200, description = "The service's queue as the broker counts it", body = shop_platform::admin::QueueState),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The service consumes no events", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_queue() {}

#[utoipa::path(get, path = "/api/admin/outbox", tag = "admin", operation_id = "admin_outbox",
    security(("bearer" = [])),
    params(("service" = String, Query, description = "The service"),
           ("correlation_id" = uuid::Uuid, Query, description = "The saga (an order id)"),
           ("since" = chrono::DateTime<chrono::Utc>, Query, description = "Sent from"),
           ("until" = chrono::DateTime<chrono::Utc>, Query, description = "Sent until (unsent rows show always)")),
    responses(
        (status = 200, description = "`{service, items}`: the saga's events in the service's outbox", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_outbox() {}

#[utoipa::path(get, path = "/api/admin/inbox", tag = "admin", operation_id = "admin_inbox",
    security(("bearer" = [])),
    params(("service" = String, Query, description = "The service"),
           ("ids" = String, Query, description = "1 to 200 event ids separated by commas")),
    responses(
        (status = 200, description = "`{service, items: [{event_id, processed_at}]}`: which of them the service handled, and when", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_inbox() {}

#[utoipa::path(get, path = "/api/admin/orders/stats", tag = "admin", operation_id = "admin_order_stats",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{by_status: {STATUS: count}}`", body = Object),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_order_stats() {}

#[utoipa::path(get, path = "/api/admin/orders/{id}", tag = "admin", operation_id = "admin_order",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "What the orders service keeps of any user's order for its timeline", body = shop_platform::timeline::OrderRecord),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_order() {}

#[utoipa::path(get, path = "/api/admin/orders/{id}/timeline", tag = "admin", operation_id = "admin_timeline",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order's timeline, as `shop order` prints it: status history, each saga event with who wrote it, when the broker confirmed it, who handled it and when, who has not yet, and its dead letters (null when a service could not be asked)", body = shop_platform::timeline::Timeline),
        (status = 403, description = "Administrators only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    ))]
fn admin_timeline() {}

/// The answers any operation can give because of the gateway and the shared conventions:
/// malformed input, limits, rate limiting, a service away; and 401 where a token is required.
struct CommonResponses;

impl CommonResponses {
    fn problem(description: &str) -> utoipa::openapi::Response {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for op in operations(openapi) {
            let mut add = |code: &str, description: &str| {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| Self::problem(description).into());
            };
            add(
                "400",
                "Malformed request (JSON syntax, path or query parameters)",
            );
            add("422", "A field is invalid; `field` names it");
            add("429", "Too many requests; see Retry-After");
            add("503", "A service or server is unavailable; try again");
            if op.request_body.is_some() {
                add("413", "Body larger than 64 KiB");
                add("415", "Content-Type is not application/json");
            }
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add("401", "Missing, unknown or expired token");
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Shop API", description = "The public API of Shop. Money is integer cents; ids are UUIDs; errors are application/problem+json."),
    paths(stock, adjust, place_order, list_orders, get_order, order_events, notifications, get_session, open_session, close_session,
        admin_overview, admin_dead_letters, admin_dead_letter, admin_replay_one, admin_replay_all, admin_queue, admin_outbox, admin_inbox,
        admin_order_stats, admin_order, admin_timeline),
    components(schemas(Problem, CookieSession, SessionUser)),
    modifiers(&BearerAuth, &TextRule),
)]
struct ApiDoc;

/// The links between operations: which answer supplies the id another operation takes
/// (OpenAPI `links`), so that a client, and schemathesis's stateful phase, can chain them.
/// Each is "operation status link-name target-operation target-parameter runtime-expression".
const LINKS: &[&str] = &[
    "create 201 GetProduct get_one id $response.body#/id",
    "create 201 UpdateProduct update id $response.body#/id",
    "create 201 GetStock stock product_id $response.body#/id",
    "create 201 AdjustStock adjust product_id $response.body#/id",
    "list 200 GetFirstProduct get_one id $response.body#/items/0/id",
    "update 200 GetUpdatedProduct get_one id $response.body#/id",
    "stock 200 AdjustThisStock adjust product_id $response.body#/product_id",
    "place_order 202 GetOrder get_order id $response.body#/id",
    "list_orders 200 GetFirstOrder get_order id $response.body#/items/0/id",
    "place_order 202 GetTimeline admin_timeline id $response.body#/id",
    "list_orders 200 GetFirstTimeline admin_timeline id $response.body#/items/0/id",
    "admin_dead_letters 200 ShowFirst admin_dead_letter id $response.body#/items/0/message_id",
];

/// Every operation of the document.
fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

/// [`LINKS`], each as its six words.
fn links() -> impl Iterator<Item = [&'static str; 6]> {
    LINKS.iter().map(|link| {
        let words: Vec<_> = link.split(' ').collect();
        words
            .try_into()
            .unwrap_or_else(|_| panic!("a link is six words: {link}"))
    })
}

/// Adds [`LINKS`] to the responses they start from.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, extensions::Extensions, link::LinkBuilder};
        for op in operations(openapi) {
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            for [from, status, name, target, parameter, expression] in links() {
                if from != id {
                    continue;
                }
                if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
                    // utoipa 5.5 writes `operation_id` as is, not as OpenAPI's
                    // `operationId`: set the field by its OpenAPI name.
                    let link = LinkBuilder::new()
                        .parameter(parameter, expression)
                        .extensions(Some(Extensions::from_iter([("operationId", target)])))
                        .build();
                    response.links.insert(name.to_string(), RefOr::T(link));
                }
            }
        }
    }
}

/// Constraints the derive cannot state: a product update names at least one field
/// (utoipa 5.5 writes a struct's `min_properties` as `maxProperties`).
struct AtLeastOneField;

impl Modify for AtLeastOneField {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, schema::Schema};
        let schemas = openapi.components.as_mut().map(|c| &mut c.schemas);
        if let Some(RefOr::T(Schema::Object(o))) = schemas.and_then(|s| s.get_mut("UpdateProduct"))
        {
            o.min_properties = Some(1);
        }
    }
}

/// What the administrators' query parameters take: `ids` [`admin::IDS_PATTERN`] and, when
/// the document is served by a running gateway, `service` one of its services' names.
struct AdminParams<'a>(&'a [&'a str]);

impl Modify for AdminParams<'_> {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use shop_platform::admin;
        use utoipa::openapi::{RefOr, schema::Schema};
        for op in operations(openapi) {
            for p in op.parameters.iter_mut().flatten() {
                let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() else {
                    continue;
                };
                match p.name.as_str() {
                    "ids" => o.pattern = Some(admin::IDS_PATTERN.to_owned()),
                    "service" if !self.0.is_empty() => {
                        o.enum_values = Some(self.0.iter().map(|s| (*s).into()).collect())
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The whole public API.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(shop_users::openapi());
    doc.merge(shop_products::openapi());
    CommonResponses.modify(&mut doc);
    Links.modify(&mut doc);
    AtLeastOneField.modify(&mut doc);
    AdminParams(&[]).modify(&mut doc);
    doc
}

/// [`document`] as a gateway serves it: `?service=` names one of `services`.
pub fn served(services: &[&str]) -> utoipa::openapi::OpenApi {
    let mut doc = document();
    AdminParams(services).modify(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    /// Every documented operation is routed by the gateway with the access it documents.
    #[test]
    fn the_document_matches_the_routes() {
        let doc = document();
        let mut operations = 0;
        for (path, item) in &doc.paths.paths {
            let concrete = path.replace("{id}", "x").replace("{product_id}", "x");
            for (method, op) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PATCH, &item.patch),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
            ] {
                let Some(op) = op else { continue };
                operations += 1;
                let route = crate::proxy::classify(&method, &concrete)
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                assert_eq!(
                    secured,
                    route.access != crate::proxy::Access::Public,
                    "{method} {path}"
                );
            }
        }
        assert_eq!(operations, 29, "every public operation is documented");
    }

    /// Every link starts from a documented answer and names an operation and a parameter of
    /// it that exist.
    #[test]
    fn every_link_joins_existing_operations() {
        let doc = serde_json::to_value(document()).unwrap();
        let ops: Vec<&serde_json::Value> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .collect();
        let by_id = |id: &str| {
            ops.iter()
                .find(|o| o["operationId"] == id)
                .unwrap_or_else(|| panic!("no operation {id}"))
        };
        for [from, status, name, target, parameter, _] in links() {
            let link = &by_id(from)["responses"][status]["links"][name];
            assert_eq!(link["operationId"], target, "{from} {status} {name}");
            let params = by_id(target)["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                params.iter().any(|p| p["name"] == parameter),
                "{target} has no parameter {parameter}"
            );
        }
    }
}
