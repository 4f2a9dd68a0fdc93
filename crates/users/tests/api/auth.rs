//! Registration, login, logout and sessions, against the real servers.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_platform::{
    Envelope,
    events::UserRegistered,
    session::{self, Session},
};
use shop_users::domain;
use uuid::Uuid;

use crate::helpers::{App, PASSWORD, id_of, problem};

#[tokio::test]
async fn register_login_me_logout() {
    let app = App::spawn().await;

    let r = app
        .register(" Alice@Example.COM ", PASSWORD, " Alice ")
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    let mut keys: Vec<_> = user.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["email", "id", "name", "role"]);
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["name"], "Alice");
    assert_eq!(user["role"], "user");
    let id = id_of(&user);

    let r = app.login("ALICE@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), domain::SESSION_TOKEN_LEN);
    assert_eq!(
        body["expires_in"],
        shop_platform::config::defaults::<shop_platform::session::SessionSettings>()
            .session_ttl_secs
    );
    assert_eq!(body["user"], user);

    let mut redis = app.env.redis().await;
    let ns = app.env.config.namespace.clone();
    let s = session::touch(&mut redis, &ns, &token, 60).await.unwrap();
    assert_eq!(
        s,
        Some(Session {
            user_id: id,
            role: "user".into()
        })
    );

    let r = app.me(id).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), user);

    let r = app.logout(&token).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        session::touch(&mut redis, &ns, &token, 60).await.unwrap(),
        None
    );
    // The token is dead: logging out again is refused.
    let (status, _) = problem(app.logout(&token).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    app.stop().await;
}

#[tokio::test]
async fn logout_needs_a_live_bearer_token() {
    let app = App::spawn().await;
    let r = app
        .http
        .post(app.url("/api/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .post(app.url("/api/auth/logout"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let unknown = domain::new_session_token();
    assert_eq!(
        problem(app.logout(&unknown).await).await.0,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

#[tokio::test]
async fn me_needs_a_caller_and_an_existing_user() {
    let app = App::spawn().await;
    let r = app.http.get(app.url("/api/me")).send().await.unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = problem(app.me(Uuid::now_v7()).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "urn:shop:problem:not-found");
    app.stop().await;
}

#[tokio::test]
async fn duplicate_email_is_a_conflict() {
    let app = App::spawn().await;
    app.registered("bob@example.com").await;
    // Same address once normalised.
    let (status, body) = problem(app.register(" BOB@example.com", PASSWORD, "Bob 2").await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["type"], "urn:shop:problem:conflict");
    assert_eq!(app.user_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn invalid_input_is_422_naming_the_field() {
    let app = App::spawn().await;
    for (body, field) in [
        (
            json!({"email": "c@example.com", "password": "short", "name": "C"}),
            "password",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD, "name": "C"}),
            "email",
        ),
        (
            json!({"email": "c@example.com", "password": PASSWORD, "name": "  "}),
            "name",
        ),
        (
            json!({"email": "c@example.com", "password": PASSWORD, "name": "C", "role": "admin"}),
            "role",
        ),
        (json!({"email": "c@example.com", "name": "C"}), "password"),
    ] {
        let r = app
            .http
            .post(app.url("/api/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(r).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert_eq!(problem["type"], "urn:shop:problem:validation");
    }
    // Nothing was stored by any of them, and no role could be chosen.
    assert_eq!(app.user_count().await, 0);

    let r = app
        .http
        .post(app.url("/api/auth/register"))
        .body("email=c@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.stop().await;
}

#[tokio::test]
async fn bad_credentials_get_one_answer() {
    let app = App::spawn().await;
    app.registered("carol@example.com").await;

    let (s1, wrong_password) =
        problem(app.login("carol@example.com", "wrong password").await).await;
    let (s2, unknown_email) = problem(app.login("nobody@example.com", PASSWORD).await).await;
    let (s3, malformed_email) = problem(app.login("nobody", PASSWORD).await).await;
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!(s2, StatusCode::UNAUTHORIZED);
    assert_eq!(s3, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password, unknown_email);
    assert_eq!(wrong_password, malformed_email);
    assert_eq!(wrong_password["type"], "urn:shop:problem:unauthorized");
    app.stop().await;
}

#[tokio::test]
async fn registration_is_stored_with_argon2id_and_announced() {
    let app = App::spawn().await;
    let user = app.registered("dave@example.com").await;
    let id = id_of(&user);

    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert_eq!(domain::hash_params(&hash), Some((19456, 2, 1)));
    assert!(domain::verify_password(PASSWORD, &hash));

    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM outbox WHERE event_type = 'user.registered'")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(bodies.len(), 1);
    let env = Envelope::parse(bodies[0].as_bytes()).unwrap();
    assert_eq!(env.aggregate_id, id);
    assert_eq!(
        env.decode::<UserRegistered>().unwrap(),
        UserRegistered {
            user_id: id,
            email: "dave@example.com".into(),
            name: "Alice".into()
        }
    );
    app.stop().await;
}

#[tokio::test]
async fn openapi_describes_the_routes() {
    let doc = serde_json::to_value(shop_users::openapi()).unwrap();
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/logout",
        "/api/me",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    for schema in [
        "RegisterRequest",
        "LoginRequest",
        "LoginResponse",
        "User",
        "Role",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema}"
        );
    }
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
}
