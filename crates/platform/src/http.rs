//! HTTP conventions shared by every program: errors as `application/problem+json` with a
//! stable `type` (never internals), a JSON extractor whose rejections are problems too,
//! request ids, timeouts, body limits, and the health and metrics routes.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRequest, MatchedPath, Request, State, rejection::JsonRejection},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use opentelemetry_semantic_conventions::attribute::{
    HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, URL_PATH,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use tracing::{error, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    assertion,
    health::{Check, readiness},
    metrics::{HttpLabel, Metrics, RouteLabel},
    telemetry,
};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
pub const PROBLEM_JSON: &str = "application/problem+json";
pub const X_REQUEST_ID: &str = "x-request-id";

/// Every error a program answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Not known here yet, though it may exist: this service learns of it by an event that
    /// may still be on its way. Answered 404 with `Retry-After`.
    #[error("{0}")]
    NotYetKnown(String),
    #[error("this method is not allowed on this route")]
    /// Carries the methods the route allows (its `Allow` header).
    MethodNotAllowed(Vec<String>),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error(
        "the request's headers are too large: at most {max_bytes} bytes in at most {max_fields} fields"
    )]
    HeadersTooLarge { max_bytes: usize, max_fields: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// An `Idempotency-Key` already used for a request with another body.
    #[error("this Idempotency-Key was used for another request: use a new key for a new request")]
    IdempotencyKeyReused,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::NotYetKnown(_) => (StatusCode::NOT_FOUND, "not-yet-known", "Not yet known"),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request header fields too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Validation failed",
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::unavailable(&e) {
            error!(error = %e, "database unavailable");
            ApiError::Unavailable("the database is unavailable, try again".into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// Builds a problem response.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("urn:shop:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            ApiError::Internal(e) => {
                error!(error = %format!("{e:#}"), "internal error");
                "an unexpected error occurred; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = problem(status, slug, title, &detail);
        if let ApiError::Validation { field, .. } = &self {
            // Also name the field in a machine-readable member.
            let body = json!({
                "type": format!("urn:shop:problem:{slug}"), "title": title, "status": status.as_u16(),
                "detail": detail, "field": field,
            });
            resp = (
                status,
                [(header::CONTENT_TYPE, PROBLEM_JSON)],
                body.to_string(),
            )
                .into_response();
        }
        if let ApiError::MethodNotAllowed(allowed) = &self
            && let Ok(v) = HeaderValue::from_str(&allowed.join(", "))
        {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        let retry_after = match self {
            ApiError::TooManyRequests { retry_after_secs } => Some(retry_after_secs.max(1)),
            ApiError::NotYetKnown(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// JSON body extractor whose rejections are problems: 415 without a JSON content type, 400
/// for malformed JSON, 422 (naming the field) for JSON of the wrong shape or unknown fields,
/// 413 past the body limit.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            // serde_path_to_error puts the path before ": "
            let detail = text
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ");
            let (field, message) = match detail.split_once(": ") {
                Some((path, msg)) if !path.contains(' ') => (path.to_string(), msg.to_string()),
                _ => (field_from_message(detail), detail.to_string()),
            };
            ApiError::Validation { field, message }
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// Pulls a field name out of serde messages such as "unknown field `role`" or
/// "missing field `email`".
fn field_from_message(msg: &str) -> String {
    msg.split('`').nth(1).unwrap_or("body").to_string()
}

/// Who may call a route. The router is built from the same table ([`Routes`]), so a test
/// can walk every route a service serves and hold it to its access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, through the gateway (the catalogue, registration, login).
    Public,
    /// A signed-in user, asserted by the gateway; the answer is about that user only.
    User,
    /// An administrator, asserted by the gateway.
    Admin,
    /// Another program, with a service assertion (the `/internal/...` routes).
    Service,
}

/// One route of a service: method, path (axum's syntax) and who may call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: axum::http::Method,
    pub path: &'static str,
    pub access: Access,
}

/// A service's routes and their table, built together: a route cannot be served without
/// being in the table.
pub struct Routes<S> {
    router: Router<S>,
    table: Vec<RouteInfo>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Serves `handler` for `method` on `path`, for callers of `access`.
    pub fn route<H, T>(
        mut self,
        method: axum::http::Method,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self
    where
        H: axum::handler::Handler<T, S>,
        T: 'static,
    {
        let filter = axum::routing::MethodFilter::try_from(method.clone())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        self.router = self.router.route(path, axum::routing::on(filter, handler));
        self.table.push(RouteInfo {
            method,
            path,
            access,
        });
        self
    }

    /// Serves `other`'s routes too.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    pub fn table(&self) -> &[RouteInfo] {
        &self.table
    }

    pub fn with_state(self, state: S) -> Router {
        self.router.with_state(state)
    }
}

/// Shared state of the health and metrics routes.
#[derive(Clone)]
pub struct Ops {
    pub checks: Arc<Vec<Arc<dyn Check>>>,
    pub metrics: Arc<Metrics>,
    /// Refreshes gauges (e.g. outbox depth) before a scrape.
    pub before_scrape:
        Option<Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>>,
}

/// What a public port says of the program's health: `/health/live`, and `/health/ready`
/// as `{"status": "ok"}` or a 503 `{"status": "unavailable"}`, naming nothing of what is
/// behind it (the details and `/metrics` are on the admin port, [`ops_router`]). The answer
/// is reused for [`PUBLIC_READINESS_TTL`], so a client polling it cannot make the program
/// check its dependencies (for the gateway: call every service) once per request.
pub fn public_health_router(ops: Ops) -> Router {
    let last: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>> = Arc::default();
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route(
            "/health/ready",
            get(move |State(ops): State<Ops>| async move {
                let ready = {
                    let mut last = last.lock().await;
                    match *last {
                        Some((at, ready)) if at.elapsed() < PUBLIC_READINESS_TTL => ready,
                        _ => {
                            let ready = readiness(&ops.checks).await.0;
                            *last = Some((tokio::time::Instant::now(), ready));
                            ready
                        }
                    }
                };
                if ready {
                    (StatusCode::OK, Json(json!({"status": "ok"})))
                } else {
                    let down = json!({"status": "unavailable"});
                    (StatusCode::SERVICE_UNAVAILABLE, Json(down))
                }
            }),
        )
        .with_state(ops)
}

/// How long the public readiness answer is reused.
pub const PUBLIC_READINESS_TTL: Duration = Duration::from_secs(1);

/// `/health/live`, `/health/ready` (each check's state) and `/metrics`.
pub fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn ready(State(ops): State<Ops>) -> Response {
    let (ok, body) = readiness(&ops.checks).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(ops): State<Ops>) -> Response {
    ops.metrics.refresh_process();
    if let Some(refresh) = &ops.before_scrape {
        refresh().await;
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}

/// Wraps a router with the layers every program uses: request ids (generated or kept, and
/// returned), a trace span per request carrying the id (a server span of `program`,
/// continuing the caller's `traceparent`), a timeout answered 503, a body limit, a 404
/// problem for unknown routes, and request counting and timing by route.
pub fn with_common_layers(
    router: Router,
    program: &'static str,
    metrics: Arc<Metrics>,
    timeout: Duration,
) -> Router {
    let x_request_id = HeaderName::from_static(X_REQUEST_ID);
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        // Outside the timeout, so that its bare 503 becomes a problem too.
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(middleware::from_fn(limit_headers))
        .layer(middleware::from_fn_with_state(metrics, observe_requests))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request| request_span(program, req)),
        )
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unsafe_request_id))
}

/// The route template of a request (`unmatched` when no route matched).
fn route_of(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched")
}

/// A request's span: method, path and request id for the logs; for the trace, a server span
/// named `METHOD /route` with the HTTP attributes of the semantic conventions.
fn request_span(program: &'static str, req: &Request) -> tracing::Span {
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = route_of(req);
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id,
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
    );
    if telemetry::exporting() {
        telemetry::adopt(&span, program, telemetry::extract_http(req.headers()));
        span.set_attribute(HTTP_REQUEST_METHOD, req.method().to_string());
        // A catch-all (the gateway's) names no route: its handler does (`telemetry::route`).
        if !route.contains("{*") {
            span.set_attribute(HTTP_ROUTE, route.to_string());
        }
        span.set_attribute(URL_PATH, req.uri().path().to_string());
    }
    span
}

/// Answers a request whose headers pass [`crate::server::MAX_HEADER_BYTES`] or
/// [`crate::server::MAX_HEADERS`] with a 431 problem, before anything reads them.
async fn limit_headers(req: Request, next: Next) -> Response {
    use crate::server::{MAX_HEADER_BYTES, MAX_HEADERS};
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES || headers.len() > MAX_HEADERS {
        return ApiError::HeadersTooLarge {
            max_bytes: MAX_HEADER_BYTES,
            max_fields: MAX_HEADERS,
        }
        .into_response();
    }
    next.run(req).await
}

/// Whether a client's request id may be kept: short, and only characters that cannot forge
/// a log line or a header (letters, digits, `.`, `_`, `-`).
pub fn is_safe_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Drops a request id that is not [`is_safe_request_id`], so a fresh one is made for it.
async fn drop_unsafe_request_id(mut req: Request, next: Next) -> Response {
    if req
        .headers()
        .get(X_REQUEST_ID)
        .is_some_and(|v| !is_safe_request_id(v.as_bytes()))
    {
        req.headers_mut().remove(X_REQUEST_ID);
    }
    next.run(req).await
}

/// Counts and times each request by method, route and status, and gives the status to the
/// request's span.
async fn observe_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let route = route_of(&req).to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    if telemetry::exporting() {
        let span = tracing::Span::current();
        span.set_attribute(HTTP_RESPONSE_STATUS_CODE, i64::from(status));
        if resp.status().is_server_error() {
            telemetry::set_error(&span, "http.5xx", status.to_string());
        }
    }
    metrics
        .http_duration
        .get_or_create(&RouteLabel {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabel {
            method,
            route,
            status,
        })
        .inc();
    resp
}

/// Turns bare error responses from layers (timeouts, 405s) into problems.
async fn problem_for_bare_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    // Only bare responses (no body type, or plain text from a layer) are rewritten; JSON
    // answers such as a 503 readiness report pass through.
    let bare = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if (status.is_client_error() || status.is_server_error()) && bare {
        let (slug, title) = match status {
            StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "Service unavailable"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Payload too large"),
            StatusCode::NOT_FOUND => ("not-found", "Not found"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported-media-type", "Unsupported media type")
            }
            s if s.is_server_error() => ("internal", "Internal error"),
            _ => ("bad-request", "Bad request"),
        };
        let mut p = problem(
            status,
            slug,
            title,
            status.canonical_reason().unwrap_or("error"),
        );
        if let Some(allow) = resp.headers().get(header::ALLOW) {
            p.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return p;
    }
    resp
}

/// A JSON response with a status.
pub fn json_with<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, Json(body)).into_response()
}

/// The verified assertion of a request's caller (see [`crate::assertion`]): 401 when it is
/// missing, forged, expired, for another program or replayed (why is logged, not told).
/// Verified once per request: later extractors of the same request read the claims kept in
/// its extensions (a second verification would look like a replay).
async fn verified(parts: &mut axum::http::request::Parts) -> Result<assertion::Claims, ApiError> {
    if let Some(claims) = parts.extensions.get::<assertion::Claims>() {
        return Ok(claims.clone());
    }
    let Some(verifier) = parts.extensions.get::<Arc<assertion::Verifier>>() else {
        error!("no assertion verifier installed: refusing the request");
        return Err(ApiError::Unauthorized);
    };
    let header = parts
        .headers
        .get(assertion::HEADER)
        .and_then(|v| v.to_str().ok());
    let claims = verifier.verify(header).await.map_err(|refused| {
        warn!(reason = %refused, path = %parts.uri.path(), "caller refused");
        ApiError::Unauthorized
    })?;
    parts.extensions.insert(claims.clone());
    Ok(claims)
}

/// The client's address: the one the gateway put in its verified assertion or, for a caller
/// without a valid assertion (one that reached the service directly), the TCP peer. For
/// per-address limits on public routes (logins, registrations).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(assertion::HEADER)
            && let Ok(assertion::Claims { cip: Some(ip), .. }) = verified(parts).await
        {
            return Ok(ClientAddress(ip));
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        peer.map(ClientAddress).ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "no peer address: the server was not started with connect info"
            ))
        })
    }
}

/// Makes a type an extractor that verifies the caller's assertion and builds the type from
/// its subject with the given function (which refuses the wrong kind of caller).
macro_rules! from_verified_subject {
    ($t:ty, $from:expr) => {
        impl<S: Send + Sync> axum::extract::FromRequestParts<S> for $t {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                _: &S,
            ) -> Result<Self, Self::Rejection> {
                $from(verified(parts).await?.sub)
            }
        }
    };
}

/// The user calling, as the gateway asserted after checking their session.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: uuid::Uuid,
    pub is_admin: bool,
}

from_verified_subject!(Caller, |sub| match sub {
    assertion::Subject::User { id, role } => Ok(Caller {
        user_id: id,
        is_admin: role == "admin",
    }),
    assertion::Subject::Service { name } => {
        warn!(service = %name, "a service assertion on a user route");
        Err(ApiError::Unauthorized)
    }
});

/// Another program calling (internal routes accept only these).
#[derive(Clone, Debug)]
pub struct ServiceCaller {
    pub name: String,
}

from_verified_subject!(ServiceCaller, |sub| match sub {
    assertion::Subject::Service { name } => Ok(ServiceCaller { name }),
    assertion::Subject::User { .. } => {
        warn!("a user assertion on an internal route");
        Err(ApiError::Unauthorized)
    }
});

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("administrators only".into()))
        }
    }
}

/// Declares the `bearer` security scheme (the token returned by `POST /api/auth/login`)
/// that the OpenAPI descriptions of protected routes refer to.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The token returned by POST /api/auth/login"))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public readiness is checked at most once per [`PUBLIC_READINESS_TTL`], however
    /// often it is asked, and names nothing.
    #[tokio::test(start_paused = true)]
    async fn public_readiness_is_reused_for_a_second() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::ServiceExt as _;
        struct Counting(Arc<AtomicUsize>);
        #[async_trait::async_trait]
        impl crate::health::Check for Counting {
            fn name(&self) -> String {
                "counted".into()
            }
            async fn check(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Err("down".into())
            }
        }
        let checks = Arc::new(AtomicUsize::new(0));
        let app = public_health_router(Ops {
            checks: Arc::new(vec![
                Arc::new(Counting(checks.clone())) as Arc<dyn crate::health::Check>
            ]),
            metrics: Arc::new(Metrics::new("test")),
            before_scrape: None,
        });
        let ask = || async {
            let r = app
                .clone()
                .oneshot(
                    Request::get("/health/ready")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
            (status, body)
        };
        for _ in 0..5 {
            let (status, body) = ask().await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(&body[..], br#"{"status":"unavailable"}"#);
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        tokio::time::advance(PUBLIC_READINESS_TTL).await;
        ask().await;
        assert_eq!(checks.load(Ordering::SeqCst), 2);
    }

    /// A client's request id is kept only if it is short and of safe characters; a forged
    /// log line or an 8 KB id gets a fresh id instead. A timeout is a problem too.
    #[tokio::test]
    async fn request_ids_are_sanitised_and_timeouts_are_problems() {
        use tower::ServiceExt as _;
        let app = with_common_layers(
            Router::new().route("/ok", get(|| async { "ok" })).route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            ),
            "test",
            Arc::new(Metrics::new("test")),
            Duration::from_millis(50),
        );
        let id_of = |id: &str| {
            let app = app.clone();
            let req = Request::builder()
                .uri("/ok")
                .header(X_REQUEST_ID, id)
                .body(axum::body::Body::empty())
                .unwrap();
            async move {
                let resp = app.oneshot(req).await.unwrap();
                resp.headers()[X_REQUEST_ID].to_str().unwrap().to_string()
            }
        };
        assert_eq!(id_of("abc-123_x.y").await, "abc-123_x.y");
        for bad in [
            r#"forged" level=ERROR user=admin"#.to_string(),
            "x".repeat(8192),
            "tab\there".to_string(),
        ] {
            let got = id_of(&bad).await;
            assert_ne!(got, bad);
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{got}");
        }
        let slow = Request::builder()
            .uri("/slow")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(slow).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    /// A request whose database connection is ended under it (PostgreSQL restarting, or an
    /// administrator terminating backends) is told to try again, not that something broke.
    #[tokio::test]
    async fn a_connection_ended_by_the_server_is_unavailable_not_internal() {
        use sqlx::Connection as _;
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        let mut victim = sqlx::PgConnection::connect(url).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut victim)
            .await
            .unwrap();
        let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
        let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        let e = sqlx::query("SELECT 1")
            .execute(&mut victim)
            .await
            .expect_err("the connection was terminated");
        let status = ApiError::from(e).parts().0;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn field_names_are_extracted() {
        assert_eq!(
            field_from_message("unknown field `role`, expected one of `a`"),
            "role"
        );
        assert_eq!(
            field_from_message("missing field `email` at line 1"),
            "email"
        );
        assert_eq!(field_from_message("nothing here"), "body");
    }
}
