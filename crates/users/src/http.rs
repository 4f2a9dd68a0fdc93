//! HTTP routes of the users service: the public paths, which the gateway forwards unchanged
//! (after authenticating `me` and `logout`, for which it signs the caller's assertion).

use axum::http::Method;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
};
use shop_platform::http::{Access, Routes};
use shop_platform::{http::BearerAuth, validation::TextRule};
use shop_platform::{
    http::{ApiError, ApiJson, Caller, ClientAddress, problem},
    outbox::Waker,
    ratelimit,
    redis_util::RedisConn,
    session::{self, Session},
};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::{
    api::{LoginRequest, LoginResponse, RegisterRequest, User},
    domain::{self, Email, Name, Password},
    hasher::Hasher,
    program::UsersSettings,
    store::{self, RegisterError},
};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The sessions Redis (not the cache: sessions must never be evicted).
    pub redis: RedisConn,
    /// Prefix of every Redis key.
    pub namespace: String,
    pub session_ttl_secs: u64,
    pub hasher: Hasher,
    /// Wakes the outbox relay once a registration (and `user.registered`) has committed.
    pub outbox: Waker,
    /// The login and registration limits among them.
    pub settings: UsersSettings,
}

/// The users service's routes and who may call each.
pub fn routes() -> Routes<AppState> {
    Routes::default()
        .route(Method::POST, "/api/auth/register", Access::Public, register)
        .route(Method::POST, "/api/auth/login", Access::Public, login)
        .route(Method::POST, "/api/auth/logout", Access::User, logout)
        .route(Method::GET, "/api/me", Access::User, me)
}

pub fn router(state: AppState) -> Router {
    routes().with_state(state)
}

fn sessions_unavailable(e: redis::RedisError) -> ApiError {
    warn!(error = %e, "session store unavailable");
    ApiError::Unavailable("sessions are unavailable, try again".into())
}

/// Create an account (role `user`).
#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account was created", body = User),
        (status = 409, description = "The e-mail address is already registered"),
        (status = 422, description = "A field is invalid; the problem's `field` names it"),
    )
)]
pub async fn register(
    State(s): State<AppState>,
    ClientAddress(client): ClientAddress,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let email = Email::parse(&req.email)?;
    let password = Password::parse_for(req.password, &email)?;
    let name = Name::parse(&req.name)?;
    // Counted once valid: what the limit bounds is the Argon2 work a registration costs.
    let per_address = s.settings.registrations_per_address_per_min;
    let ip = client.to_string();
    ratelimit::check(&s.redis, &s.namespace, "register-ip", &ip, per_address).await?;
    let hash = s
        .hasher
        .run(move || domain::hash_password(&password))
        .await??;
    match store::register(&s.pool, &email, &name, &hash).await {
        Ok(user) => {
            s.outbox.wake();
            info!(user_id = %user.id, "user registered");
            Ok((StatusCode::CREATED, Json(user)))
        }
        Err(e @ RegisterError::EmailTaken) => Err(ApiError::Conflict(e.to_string())),
        Err(RegisterError::Db(e)) => Err(e.into()),
    }
}

/// Why a login failed.
pub enum LoginError {
    /// Unknown e-mail or wrong password: one answer for both, so that nobody can tell
    /// which accounts exist.
    BadCredentials,
    Api(ApiError),
}

impl<E: Into<ApiError>> From<E> for LoginError {
    fn from(e: E) -> Self {
        LoginError::Api(e.into())
    }
}

impl IntoResponse for LoginError {
    fn into_response(self) -> Response {
        match self {
            LoginError::BadCredentials => problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "invalid e-mail or password",
            ),
            LoginError::Api(e) => e.into_response(),
        }
    }
}

/// Exchange an e-mail and password for a session token.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Unknown e-mail or wrong password (one answer for both)"),
    )
)]
pub async fn login(
    State(mut s): State<AppState>,
    ClientAddress(client): ClientAddress,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, LoginError> {
    // Limited before any password work: by the client's address, then by the account (a
    // digest of the address as typed, so that Redis holds no e-mail addresses).
    let limits = &s.settings;
    let ip = client.to_string();
    ratelimit::check(
        &s.redis,
        &s.namespace,
        "login-ip",
        &ip,
        limits.logins_per_address_per_min,
    )
    .await?;
    let account = session::id(&req.email.trim().to_lowercase());
    ratelimit::check(
        &s.redis,
        &s.namespace,
        "login-account",
        &account,
        limits.logins_per_account_per_min,
    )
    .await?;
    // A malformed e-mail cannot be an account: it gets the same answer, after the same work.
    let found = match Email::parse(&req.email) {
        Ok(email) => store::credentials(&s.pool, &email).await?,
        Err(_) => None,
    };
    let candidate = req.password;
    let user = match found {
        Some(c) => {
            let phc = c.password_hash;
            let ok = s
                .hasher
                .run(move || domain::verify_password(&candidate, &phc))
                .await?;
            ok.then_some(c.user)
        }
        None => {
            // Spend the time of a real verification, so that timing does not tell either.
            s.hasher
                .run(move || domain::verify_against_dummy(&candidate))
                .await?;
            None
        }
    };
    let Some(user) = user else {
        info!("login refused");
        return Err(LoginError::BadCredentials);
    };
    let token = domain::new_session_token();
    let session = Session {
        user_id: user.id,
        role: user.role.as_str().to_string(),
    };
    session::create(
        &mut s.redis,
        &s.namespace,
        &token,
        &session,
        s.session_ttl_secs,
    )
    .await
    .map_err(sessions_unavailable)?;
    info!(user_id = %user.id, "user logged in");
    Ok(Json(LoginResponse {
        token,
        expires_in: s.session_ttl_secs,
        user,
    }))
}

/// End the session of the bearer token; the token stops working at once.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No token, or not a live session"),
    )
)]
pub async fn logout(
    State(mut s): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = session::bearer(header).ok_or(ApiError::Unauthorized)?;
    // DEL through the platform's key function (rather than session::delete) to learn whether
    // the session existed: logging out with a dead token is a 401, not a silent success.
    let deleted: i64 = redis::cmd("DEL")
        .arg(session::key(&s.namespace, token))
        .query_async(&mut s.redis)
        .await
        .map_err(sessions_unavailable)?;
    if deleted == 0 {
        return Err(ApiError::Unauthorized);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The authenticated user.
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 401, description = "Not authenticated"),
        (status = 404, description = "The account no longer exists"),
    )
)]
pub async fn me(State(s): State<AppState>, caller: Caller) -> Result<Json<User>, ApiError> {
    store::find(&s.pool, caller.user_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("user"))
}

/// The OpenAPI description of these routes, for the gateway's `/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(register, login, logout, me),
    components(schemas(RegisterRequest, LoginRequest, LoginResponse, User, crate::api::Role)),
    modifiers(&BearerAuth, &TextRule),
    tags((name = "auth", description = "Accounts and sessions"))
)]
pub struct ApiDoc;
