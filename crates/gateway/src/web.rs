//! The browser's side of the gateway (docs/architecture.md, "Browser pages"):
//!
//! - the storefront's files, embedded at build time and served from `/` and `/assets/...`
//!   with an `ETag` (revalidated on each load, answered 304 when unchanged) and the security
//!   headers of a page: a Content-Security-Policy that allows only this origin's scripts,
//!   styles and API (no inline script), `nosniff`, no framing, no referrer;
//! - the cookie session: `POST /api/auth/session` logs in like `POST /api/auth/login` but puts
//!   the token in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the page is served
//!   over HTTPS) instead of the answer, so a page's script never holds it and `EventSource`
//!   sends it; `DELETE /api/auth/session` logs out and clears it. A request authenticated by
//!   the cookie that may change something (any method but GET and HEAD) must carry an
//!   `Origin` naming the host it was sent to, so another site cannot make a browser act with
//!   its user's session; the session endpoints themselves ask the same. The Bearer API is
//!   unchanged.

use std::{
    net::SocketAddr,
    sync::{Arc, LazyLock},
};

use axum::{
    Json,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use shop_platform::http::{ApiError, BODY_LIMIT};
use tracing::warn;

use crate::proxy::{self, Gateway};

/// The session cookie's name.
pub const COOKIE: &str = "shop_session";
/// Where a browser opens and closes its session.
pub const SESSION_PATH: &str = "/api/auth/session";
/// What a page may load and do: this origin's scripts, styles and API only; no inline
/// script or style, no plugin, no frame, no form posted elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: String,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        (
            $name,
            $content_type,
            include_bytes!(concat!("../web/", $name)).as_slice(),
        )
    };
}

/// The storefront's files (`crates/gateway/web`).
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        asset!("index.html", "text/html; charset=utf-8"),
        asset!("ops.html", "text/html; charset=utf-8"),
        asset!("app.js", "text/javascript; charset=utf-8"),
        asset!("ops.js", "text/javascript; charset=utf-8"),
        asset!("common.js", "text/javascript; charset=utf-8"),
        asset!("style.css", "text/css; charset=utf-8"),
    ]
    .into_iter()
    .map(|(name, content_type, body)| Asset {
        name,
        content_type,
        body,
        etag: etag(body),
    })
    .collect()
});

/// A strong validator of a file's bytes.
fn etag(body: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// `GET /`: the storefront.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /assets/{name}`: its scripts and styles (the pages are served by their routes).
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name.ends_with(".html") {
        return ApiError::NotFound("no such file".into()).into_response();
    }
    serve(&name, &headers)
}

/// Where a browser without a session is sent from a page that needs one.
pub const LOGIN_THEN_OPS: &str = "/#/login?next=%2Fops";

/// What a signed-in user who is no administrator gets at `/ops`.
const NOT_FOR_YOU: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
    <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
    <title>Administrators only · Shop</title><link rel=\"stylesheet\" href=\"/assets/style.css\">\
    <link rel=\"icon\" href=\"data:,\">\
    </head><body><main id=\"view\"><h1>Administrators only</h1><p>The operations page is for \
    administrators. <a href=\"/\">Back to the shop</a></p></main></body></html>";

/// `GET /ops`: the operations page, for administrators only; a visitor without a session is
/// sent to log in, a signed-in user who is no administrator gets a 403 page.
pub async fn ops(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let session = match cookie_token(&headers) {
        Some(token) => proxy::authenticate(&gw, token).await,
        None => Err(ApiError::Unauthorized),
    };
    let mut resp = match session {
        Ok(s) if s.role == "admin" => serve("ops.html", &headers),
        Ok(_) => {
            let mut page = (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                NOT_FOR_YOU,
            )
                .into_response();
            page_headers(page.headers_mut());
            page
        }
        Err(ApiError::Unauthorized) => {
            let mut to_login =
                (StatusCode::SEE_OTHER, [(header::LOCATION, LOGIN_THEN_OPS)]).into_response();
            page_headers(to_login.headers_mut());
            to_login
        }
        Err(e) => e.into_response(),
    };
    // The answer depends on who asks: no shared cache keeps it.
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Cookie"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    resp
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::NotFound("no such file".into()).into_response();
    };
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == a.etag));
    let mut resp = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&a.etag) {
        h.insert(header::ETAG, tag);
    }
    // Asked again at each load (a 304 while unchanged), so a new build shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    page_headers(h);
    resp
}

/// The security headers of every page and its files.
pub fn page_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// The token in the session cookie, if the request carries one.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, token)| token)
        .filter(|token| !token.is_empty())
}

/// A cookie-authenticated request that may change something must come from one of this
/// site's pages: its `Origin` names the host the request was sent to. Returns whether that
/// origin is HTTPS (the cookie is then `Secure`).
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<bool, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (host, origin.and_then(|o| o.split_once("://"))) {
        (Some(host), Some((scheme, authority))) if authority.eq_ignore_ascii_case(host) => {
            Ok(scheme.eq_ignore_ascii_case("https"))
        }
        _ => Err(ApiError::Forbidden(
            "refused: a request with the session cookie must come from this site's pages (its Origin names another site, or none)".into(),
        )),
    }
}

/// `Set-Cookie` for a session (no `Max-Age`: it ends with the browser session, or sooner when
/// the server's session expires) or, with no token, for its removal.
fn set_cookie(token: Option<&str>, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    let value = match token {
        Some(token) => format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("a session token that is no cookie value")))
}

/// `GET`, `POST` and `DELETE /api/auth/session`.
pub async fn session(gw: &Gateway, peer: SocketAddr, req: Request) -> Result<Response, ApiError> {
    // Any other method: the 405 of the route table.
    proxy::classify(req.method(), req.uri().path())?;
    if req.method() == Method::GET {
        return current(gw, peer, req).await;
    }
    let secure = same_origin(req.headers(), req.uri())?;
    if req.method() == Method::DELETE {
        return close(gw, peer, req, secure).await;
    }
    // A login, forwarded as such (its rate limit included), whose token goes into the cookie.
    let (mut parts, body) = req.into_parts();
    parts.uri = Uri::from_static("/api/auth/login");
    parts.headers.remove(header::COOKIE);
    parts.headers.remove(header::AUTHORIZATION);
    let resp = proxy::forward(gw, peer, Request::from_parts(parts, body)).await?;
    if resp.status() != StatusCode::OK {
        return Ok(resp);
    }
    let bytes = axum::body::to_bytes(resp.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading the login's answer: {e}")))?;
    let mut login: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the login's answer: {e}")))?;
    let token = login
        .as_object_mut()
        .and_then(|o| o.remove("token"))
        .and_then(|t| t.as_str().map(str::to_string))
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a login answer without a token")))?;
    let mut out = (StatusCode::OK, Json(login)).into_response();
    out.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(Some(&token), secure)?);
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(out)
}

/// Who the cookie's session is: `{"user": ...}`, with `null` when there is no session (a
/// page asks this at each load; an anonymous visitor is no error).
async fn current(gw: &Gateway, peer: SocketAddr, req: Request) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    let mut user = Value::Null;
    if let Some(token) = cookie_token(&parts.headers).map(str::to_string) {
        parts.uri = Uri::from_static("/api/me");
        parts.headers.remove(header::COOKIE);
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ApiError::Unauthorized)?;
        parts.headers.insert(header::AUTHORIZATION, bearer);
        match proxy::forward(gw, peer, Request::from_parts(parts, Default::default())).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                let bytes = axum::body::to_bytes(resp.into_body(), BODY_LIMIT)
                    .await
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading /api/me: {e}")))?;
                user = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("/api/me's answer: {e}")))?;
            }
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {}
            Ok(resp) => return Ok(resp),
            Err(ApiError::Unauthorized) => {}
            Err(e) => return Err(e),
        }
    }
    let mut out = Json(serde_json::json!({ "user": user })).into_response();
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(out)
}

/// Logs the cookie's session out (if it is still one) and clears the cookie: 204 either way.
async fn close(
    gw: &Gateway,
    peer: SocketAddr,
    req: Request,
    secure: bool,
) -> Result<Response, ApiError> {
    let (mut parts, _) = req.into_parts();
    if let Some(token) = cookie_token(&parts.headers).map(str::to_string) {
        parts.method = Method::POST;
        parts.uri = Uri::from_static("/api/auth/logout");
        parts.headers.remove(header::COOKIE);
        parts.headers.remove(header::CONTENT_TYPE);
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ApiError::Unauthorized)?;
        parts.headers.insert(header::AUTHORIZATION, bearer);
        match proxy::forward(gw, peer, Request::from_parts(parts, Default::default())).await {
            Ok(_) | Err(ApiError::Unauthorized) => {}
            Err(e) => {
                warn!(error = %e, "logging a cookie session out failed");
                return Err(e);
            }
        }
    }
    let mut out = StatusCode::NO_CONTENT.into_response();
    out.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(None, secure)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; shop_session=tok-1; b=2")]);
        assert_eq!(cookie_token(&h), Some("tok-1"));
        assert_eq!(cookie_token(&headers(&[("cookie", "shop_session=")])), None);
        assert_eq!(
            cookie_token(&headers(&[("cookie", "xshop_session=t")])),
            None
        );
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn only_this_sites_origin_may_use_the_cookie_to_change_things() {
        let uri = Uri::from_static("/api/orders");
        let same = headers(&[
            ("host", "shop.test:8080"),
            ("origin", "http://shop.test:8080"),
        ]);
        assert!(!same_origin(&same, &uri).unwrap(), "plain HTTP: no Secure");
        let tls = headers(&[("host", "shop.test"), ("origin", "https://shop.test")]);
        assert!(
            same_origin(&tls, &uri).unwrap(),
            "an HTTPS page: a Secure cookie"
        );
        for bad in [
            headers(&[("host", "shop.test")]),
            headers(&[("host", "shop.test"), ("origin", "https://evil.test")]),
            headers(&[("host", "shop.test"), ("origin", "null")]),
            headers(&[
                ("host", "shop.test"),
                ("origin", "https://shop.test.evil.test"),
            ]),
        ] {
            assert!(matches!(
                same_origin(&bad, &uri),
                Err(ApiError::Forbidden(_))
            ));
        }
    }

    #[test]
    fn files_are_served_with_a_validator_and_the_page_headers() {
        let resp = serve("index.html", &HeaderMap::new());
        assert_eq!(resp.status(), StatusCode::OK);
        let tag = resp.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let again = serve("index.html", &headers(&[("if-none-match", &tag)]));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve("nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    /// The pages load nothing from elsewhere and run no inline script (the CSP would block
    /// it anyway).
    #[test]
    fn the_pages_reference_only_this_origin() {
        for a in ASSETS.iter() {
            let text = std::str::from_utf8(a.body).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{}",
                a.name
            );
        }
        for page in ASSETS.iter().filter(|a| a.name.ends_with(".html")) {
            let text = std::str::from_utf8(page.body).unwrap();
            assert!(
                !text.contains("<script>"),
                "{}: no inline script",
                page.name
            );
            assert!(!text.contains("style="), "{}: no inline style", page.name);
        }
        assert!(!NOT_FOR_YOU.contains("<script") && !NOT_FOR_YOU.contains("style="));
    }
}
