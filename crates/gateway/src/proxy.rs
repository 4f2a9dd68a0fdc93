//! The public API: every `/api/...` request is classified (which service, who may call it),
//! rate-limited, authenticated against the session store, size-limited, and forwarded over
//! pooled HTTP to the service that owns the data, which also enforces object-level access.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use shop_platform::{
    assertion::{self, Keys, Subject},
    config::Config,
    http::{ApiError, BODY_LIMIT, X_REQUEST_ID},
    ratelimit,
    redis_util::RedisConn,
    service::Fleet,
    session::{self, Session, SessionSettings},
    telemetry,
};

use crate::{
    client, ops,
    program::{GatewaySettings, IDENTITY},
    web,
};

/// The services that own the public routes (each declared by its own crate).
const USERS: &str = shop_users::program::IDENTITY.name;
const PRODUCTS: &str = shop_products::program::IDENTITY.name;
const INVENTORY: &str = shop_inventory::program::IDENTITY.name;
const ORDERS: &str = shop_orders::program::IDENTITY.name;
const NOTIFICATIONS: &str = shop_notifications::program::IDENTITY.name;
/// The gateway's own routes (answered from what it asks the services: [`crate::ops`]).
pub(crate) const GATEWAY: &str = IDENTITY.name;
/// The administrators' routes every service serves ([`shop_platform::admin`]): for the
/// service the request's `?service=` names.
pub(crate) const NAMED: &str = "(the service named by ?service=)";
use tracing::warn;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    User,
    Admin,
}

/// Where a public route goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub service: &'static str,
    pub access: Access,
    /// Logins get a stricter per-IP limit.
    pub is_login: bool,
    /// A long-lived event stream (no request timeout).
    pub is_stream: bool,
}

/// Classifies a request: `Ok(route)`, or the error for an unknown path (404) or a known
/// path with another method (405).
pub fn classify(method: &Method, path: &str) -> Result<Route, ApiError> {
    // The path is forwarded as it is: refuse whatever a URL parser downstream could turn
    // into another path than the one classified here (dot segments, backslashes, encoded
    // dots, slashes and backslashes, empty segments).
    let confusing = path.contains('\\')
        || ["%2e", "%2f", "%5c", "%00"]
            .iter()
            .any(|e| path.to_ascii_lowercase().contains(e));
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if confusing || segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(ApiError::NotFound("no such route".into()));
    }
    let r = |service, access| Route {
        service,
        access,
        is_login: false,
        is_stream: false,
    };
    use Access::*;
    let found: Option<Vec<(Method, Route)>> = match segs.as_slice() {
        ["api", "auth", "register"] => Some(vec![(Method::POST, r(USERS, Public))]),
        ["api", "auth", "login"] => Some(vec![(
            Method::POST,
            Route {
                is_login: true,
                ..r(USERS, Public)
            },
        )]),
        ["api", "auth", "logout"] => Some(vec![(Method::POST, r(USERS, User))]),
        // A browser's cookie session (`web`): who it is, a login, and a logout that needs
        // no token.
        ["api", "auth", "session"] => Some(vec![
            (Method::GET, r(USERS, Public)),
            (
                Method::POST,
                Route {
                    is_login: true,
                    ..r(USERS, Public)
                },
            ),
            (Method::DELETE, r(USERS, Public)),
        ]),
        ["api", "me"] => Some(vec![(Method::GET, r(USERS, User))]),
        ["api", "products"] => Some(vec![
            (Method::GET, r(PRODUCTS, Public)),
            (Method::POST, r(PRODUCTS, Admin)),
        ]),
        ["api", "products", _] => Some(vec![
            (Method::GET, r(PRODUCTS, Public)),
            (Method::PATCH, r(PRODUCTS, Admin)),
        ]),
        ["api", "inventory", _] => Some(vec![(Method::GET, r(INVENTORY, Public))]),
        ["api", "inventory", _, "adjustments"] => Some(vec![(Method::POST, r(INVENTORY, Admin))]),
        ["api", "orders"] => Some(vec![
            (Method::GET, r(ORDERS, User)),
            (Method::POST, r(ORDERS, User)),
        ]),
        ["api", "orders", _] => Some(vec![(Method::GET, r(ORDERS, User))]),
        ["api", "orders", _, "events"] => Some(vec![(
            Method::GET,
            Route {
                is_stream: true,
                ..r(ORDERS, User)
            },
        )]),
        ["api", "notifications"] => Some(vec![(Method::GET, r(NOTIFICATIONS, User))]),
        // The operations page's: each service's own (`?service=`; the list of dead letters
        // without one is every service's), the orders service's, and the gateway's.
        ["api", "admin", "dead-letters"] => Some(vec![(Method::GET, r(NAMED, Admin))]),
        ["api", "admin", "dead-letters", "replay"] => Some(vec![(Method::POST, r(NAMED, Admin))]),
        ["api", "admin", "dead-letters", _] => Some(vec![(Method::GET, r(NAMED, Admin))]),
        ["api", "admin", "dead-letters", _, "replay"] => {
            Some(vec![(Method::POST, r(NAMED, Admin))])
        }
        ["api", "admin", "queue" | "outbox" | "inbox"] => {
            Some(vec![(Method::GET, r(NAMED, Admin))])
        }
        ["api", "admin", "orders", "stats"] => Some(vec![(Method::GET, r(ORDERS, Admin))]),
        ["api", "admin", "orders", _] => Some(vec![(Method::GET, r(ORDERS, Admin))]),
        ["api", "admin", "orders", _, "timeline"] => Some(vec![(Method::GET, r(GATEWAY, Admin))]),
        ["api", "admin", "overview"] => Some(vec![(Method::GET, r(GATEWAY, Admin))]),
        _ => None,
    };
    let Some(methods) = found else {
        return Err(ApiError::NotFound("no such route".into()));
    };
    methods
        .iter()
        .find(|(m, _)| m == method)
        .map(|(_, r)| *r)
        .ok_or_else(|| {
            ApiError::MethodNotAllowed(methods.iter().map(|(m, _)| m.to_string()).collect())
        })
}

/// A classified path as a route template: its ids become `{id}` (`/api/orders/{id}/events`).
fn template(path: &str) -> String {
    path.trim_end_matches('/')
        .split('/')
        .map(|seg| match seg.parse::<uuid::Uuid>() {
            Ok(_) => "{id}",
            Err(_) => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Shared state of the gateway.
pub struct Gateway {
    pub config: Config,
    pub settings: GatewaySettings,
    pub sessions: SessionSettings,
    /// Where each service is reached.
    pub fleet: Fleet,
    /// Signs the caller assertion each forwarded request carries.
    pub keys: Keys,
    pub redis: RedisConn,
    /// For ordinary requests: pooled connections, connect and total timeouts.
    pub http: reqwest::Client,
    /// For event streams: no total timeout.
    pub streams: reqwest::Client,
    /// The operations page's recent samples of the sagas' counters.
    pub sagas: ops::Samples,
}

/// Headers copied from the client to the service.
const FORWARDED_REQUEST: &[&str] = &["content-type", "accept", "idempotency-key", X_REQUEST_ID];
/// Headers copied from the service to the client.
const FORWARDED_RESPONSE: &[&str] = &[
    "content-type",
    "location",
    "retry-after",
    "cache-control",
    "allow",
];

pub async fn proxy(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let answer = if req.uri().path().trim_end_matches('/') == web::SESSION_PATH {
        web::session(&gw, peer, req).await
    } else if ops::owns(&req) {
        ops::serve(&gw, peer, req).await
    } else {
        forward(&gw, peer, req).await
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// A request let in: its route, who is calling (their session and its id) and from where.
pub(crate) struct Admitted<'a> {
    pub route: Route,
    pub caller: Option<(Session, String)>,
    /// The session's token (from the Authorization header or the browser's cookie).
    pub session_token: Option<&'a str>,
    pub client_ip: std::net::IpAddr,
    pub request_id: Option<String>,
}

impl Admitted<'_> {
    /// The assertion a request for `service` carries: the user's identity when there is one,
    /// else the gateway's own; both with the client's address. Good for one use.
    pub fn assertion(&self, gw: &Gateway, service: &str) -> String {
        let (subject, session_id) = match &self.caller {
            Some((s, session_id)) => {
                let user = Subject::User {
                    id: s.user_id,
                    role: s.role.clone(),
                };
                (user, Some(session_id.clone()))
            }
            None => {
                let gateway = Subject::Service {
                    name: IDENTITY.name.into(),
                };
                (gateway, None)
            }
        };
        gw.keys.sign(
            subject,
            service,
            self.request_id.clone(),
            session_id,
            Some(self.client_ip),
        )
    }
}

/// Classifies, rate-limits and authenticates a request: 404/405 for no route, 401 without a
/// session a route needs, 403 for a plain user on an administrators' route, 429 over a limit.
pub(crate) async fn admit<'a>(
    gw: &Gateway,
    peer: SocketAddr,
    parts: &'a axum::http::request::Parts,
) -> Result<Admitted<'a>, ApiError> {
    let route = classify(&parts.method, parts.uri.path())?;
    if telemetry::exporting() {
        telemetry::route(parts.method.as_str(), &template(parts.uri.path()));
    }
    let client_ip = client::address(peer, &parts.headers, &gw.settings.trusted_proxies);
    let ip = client_ip.to_string();

    if route.is_login {
        rate_limit(gw, "login", &ip, gw.settings.login_rate_limit_per_min).await?;
    }
    let bearer = session::bearer(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    // A browser's session cookie stands for the token when there is no Authorization; to
    // change anything with it, the request must come from this site's pages.
    let session_token = match (bearer, web::cookie_token(&parts.headers)) {
        (Some(token), _) => Some(token),
        (None, Some(token)) if route.access != Access::Public => {
            if !matches!(parts.method, Method::GET | Method::HEAD) {
                web::same_origin(&parts.headers, &parts.uri)?;
            }
            Some(token)
        }
        _ => None,
    };
    let caller = match (route.access, session_token) {
        (Access::Public, _) => None,
        (_, None) => return Err(ApiError::Unauthorized),
        (_, Some(token)) => Some((authenticate(gw, token).await?, session::id(token))),
    };
    if route.access == Access::Admin && caller.as_ref().is_none_or(|(s, _)| s.role != "admin") {
        return Err(ApiError::Forbidden("administrators only".into()));
    }
    match &caller {
        Some((s, _)) => {
            rate_limit(
                gw,
                "user",
                &s.user_id.to_string(),
                gw.settings.rate_limit_per_min,
            )
            .await?
        }
        None => rate_limit(gw, "ip", &ip, gw.settings.rate_limit_per_min).await?,
    }
    let request_id = parts
        .headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(Admitted {
        route,
        caller,
        session_token,
        client_ip,
        request_id,
    })
}

/// The service a `?service=` route is for: one that serves the administrators' routes.
pub(crate) fn named_service(gw: &Gateway, uri: &axum::http::Uri) -> Result<&'static str, ApiError> {
    let asked =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(uri)
            .ok()
            .and_then(|q| q.0.get("service").cloned());
    let served = admin_services(gw);
    match asked {
        Some(name) => served.into_iter().find(|s| *s == name).ok_or_else(|| {
            ApiError::validation(
                "service",
                format!("no such service: one of {}", admin_services(gw).join(", ")),
            )
        }),
        None => Err(ApiError::validation(
            "service",
            format!("name the service: one of {}", served.join(", ")),
        )),
    }
}

/// The services that serve the administrators' routes ([`shop_platform::admin`]).
pub(crate) fn admin_services(gw: &Gateway) -> Vec<&'static str> {
    gw.fleet
        .topology
        .programs()
        .filter(|p| p.migrations.is_some())
        .map(|p| p.name)
        .collect()
}

/// Forwards one request of the public API to the service that owns its route.
pub(crate) async fn forward(
    gw: &Gateway,
    peer: SocketAddr,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let admitted = admit(gw, peer, &parts).await?;
    let route = admitted.route;
    let service = match route.service {
        NAMED => named_service(gw, &parts.uri)?,
        s => s,
    };
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    if matches!(parts.method, Method::POST | Method::PATCH)
        && !bytes.is_empty()
        && !is_json(&parts.headers)
    {
        return Err(ApiError::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }

    let instances = gw.fleet.instances(service).map_err(|e| {
        warn!(error = %e, "no URL for a routed service");
        ApiError::Unavailable(format!("{service} is unavailable"))
    })?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let client = if route.is_stream {
        &gw.streams
    } else {
        &gw.http
    };
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // The request as sent to one instance (built again for the next when a connection to
    // one failed: see `upstream`), each time with an assertion of its own (an assertion is
    // good for one use, and the failed attempt may have used it).
    let build = |base: &str| {
        let mut out = client.request(method.clone(), format!("{base}{path}"));
        for name in FORWARDED_REQUEST {
            if let Some(v) = parts.headers.get(*name) {
                out = out.header(*name, v.as_bytes());
            }
        }
        if service == USERS
            && let Some(session_token) = admitted.session_token
        {
            out = out.bearer_auth(session_token);
        }
        out = out.header(assertion::HEADER, admitted.assertion(gw, service));
        if !bytes.is_empty() {
            out = out.body(bytes.clone());
        }
        out
    };
    // Safe to send again after a failed connection: nothing it does happens twice.
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD)
        || parts.headers.contains_key("idempotency-key");
    let sent = instances
        .send(parts.method.as_str(), idempotent, build)
        .await;
    let upstream = sent.map_err(|e| {
        warn!(service, error = %e, "service unreachable");
        ApiError::Unavailable(format!("the {service} service is unavailable, try again"))
    })?;

    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in FORWARDED_RESPONSE {
        if let Some(v) = upstream.headers().get(*name)
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(v.as_bytes()),
            )
        {
            headers.insert(n, v);
        }
    }
    let body = if route.is_stream {
        Body::from_stream(upstream.bytes_stream())
    } else {
        let b = upstream.bytes().await.map_err(|_| {
            ApiError::Unavailable(format!(
                "the {service} service stopped answering, try again"
            ))
        })?;
        Body::from(b)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// The session of a bearer token (sliding its expiry): 401 if unknown or expired, 503 if the
/// session store is unreachable.
pub(crate) async fn authenticate(gw: &Gateway, token: &str) -> Result<Session, ApiError> {
    let mut redis = gw.redis.clone();
    let found = tokio::time::timeout(
        Duration::from_secs(1),
        session::touch(
            &mut redis,
            &gw.config.namespace,
            token,
            gw.sessions.session_ttl_secs,
        ),
    )
    .await;
    match found {
        Ok(Ok(Some(s))) => Ok(s),
        Ok(Ok(None)) => Err(ApiError::Unauthorized),
        Ok(Err(e)) => {
            warn!(error = %e, "session store unavailable");
            Err(ApiError::Unavailable(
                "the session store is unavailable, try again".into(),
            ))
        }
        Err(_) => Err(ApiError::Unavailable(
            "the session store is unavailable, try again".into(),
        )),
    }
}

/// Counts a request against a limit of the gateway (see [`shop_platform::ratelimit`]).
async fn rate_limit(gw: &Gateway, scope: &str, id: &str, per_minute: u32) -> Result<(), ApiError> {
    ratelimit::check(&gw.redis, &gw.config.namespace, scope, id, per_minute).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified() {
        let r = classify(&Method::POST, "/api/auth/login").unwrap();
        assert_eq!(
            (r.service, r.access, r.is_login),
            ("users", Access::Public, true)
        );
        assert_eq!(
            classify(&Method::POST, "/api/products").unwrap().access,
            Access::Admin
        );
        assert_eq!(
            classify(&Method::GET, "/api/products/x").unwrap().access,
            Access::Public
        );
        assert_eq!(
            classify(&Method::PATCH, "/api/products/x").unwrap().access,
            Access::Admin
        );
        assert!(
            classify(&Method::GET, "/api/orders/x/events")
                .unwrap()
                .is_stream
        );
        assert!(matches!(
            classify(&Method::GET, "/api/nope"),
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            classify(&Method::DELETE, "/api/orders"),
            Err(ApiError::MethodNotAllowed(allowed)) if allowed == ["GET", "POST"]
        ));
    }

    #[test]
    fn paths_a_downstream_parser_could_rewrite_are_refused() {
        for path in [
            "/api/products/..\\..\\internal\\products",
            "/api/products/../../internal/products",
            "/api/products/%2e%2e%2finternal",
            "/api/products/%2E%2E",
            "/api/products/a%2Fb",
            "/api/products/a%5cb",
            "/api//products",
            "/api/products/./x",
        ] {
            assert!(
                matches!(classify(&Method::GET, path), Err(ApiError::NotFound(_))),
                "{path}"
            );
        }
        assert!(
            classify(&Method::GET, "/api/products/").is_ok(),
            "a trailing slash is fine"
        );
    }

    #[test]
    fn templates_name_ids() {
        assert_eq!(template("/api/orders"), "/api/orders");
        assert_eq!(
            template("/api/orders/0192f0c8-1d2e-7b3a-9c4d-5e6f7a8b9c0d/events"),
            "/api/orders/{id}/events"
        );
        assert_eq!(template("/api/products/"), "/api/products");
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }
}
