//! The administrator from configuration: created at start-up, idempotent, promoting an existing
//! account.

use reqwest::StatusCode;
use serde_json::Value;
use shop_users::program::UsersSettings;

use crate::helpers::{App, PASSWORD, id_of, users};

const ADMIN: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "admin password 1";

async fn users_with_email(app: &App, email: &str) -> Vec<(uuid::Uuid, String)> {
    sqlx::query_as("SELECT id, role FROM users WHERE email = $1")
        .bind(email)
        .fetch_all(&app.env.pool)
        .await
        .unwrap()
}

async fn registered_events(app: &App) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'user.registered'")
        .fetch_one(&app.env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn administrator_is_created_at_start_and_restarts_are_idempotent() {
    let admin = |s: &mut UsersSettings| {
        s.admin_email = Some(ADMIN.into());
        s.admin_password = Some(ADMIN_PASSWORD.into());
    };
    let app = App::spawn_with(admin).await;

    let r = app.login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["role"], "admin");
    let admin_id = id_of(&body["user"]);

    // Two more instances starting at the same moment: neither fails, nothing is duplicated.
    let (a, b) = tokio::join!(app.env.start(users(admin)), app.env.start(users(admin)));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_eq!(
        users_with_email(&app, ADMIN).await,
        vec![(admin_id, "admin".to_string())]
    );
    assert_eq!(registered_events(&app).await, 1);
    assert_eq!(
        app.login(ADMIN, ADMIN_PASSWORD).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn an_existing_account_is_promoted_with_the_configured_password() {
    let app = App::spawn().await;
    let user = app.registered("erin@example.com").await;
    assert_eq!(user["role"], "user");

    let second = app
        .env
        .start(users(|s| {
            s.admin_email = Some("Erin@Example.com".into());
            s.admin_password = Some(ADMIN_PASSWORD.into());
        }))
        .await;
    second.stop().await.unwrap();

    assert_eq!(
        users_with_email(&app, "erin@example.com").await,
        vec![(id_of(&user), "admin".to_string())]
    );
    assert_eq!(
        app.login("erin@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app.login("erin@example.com", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["user"]["role"], "admin");
    // Promotion is not a registration.
    assert_eq!(registered_events(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_changed_administrator_password_ends_the_old_sessions() {
    let with_password = |password: &'static str| {
        move |s: &mut UsersSettings| {
            s.admin_email = Some(ADMIN.into());
            s.admin_password = Some(password.into());
        }
    };
    let app = App::spawn_with(with_password(ADMIN_PASSWORD)).await;
    let token_of = |body: Value| body["token"].as_str().unwrap().to_string();
    let first = token_of(app.login(ADMIN, ADMIN_PASSWORD).await.json().await.unwrap());
    let second = token_of(app.login(ADMIN, ADMIN_PASSWORD).await.json().await.unwrap());
    let other_user = app.registered("frank@example.com").await;
    let frank = token_of(
        app.login("frank@example.com", PASSWORD)
            .await
            .json()
            .await
            .unwrap(),
    );
    let redis = app.env.redis().await;
    let ns = app.env.config.namespace.clone();
    let alive = |token: String| {
        let (mut redis, ns) = (redis.clone(), ns.clone());
        async move {
            shop_platform::session::touch(&mut redis, &ns, &token, 60)
                .await
                .unwrap()
                .is_some()
        }
    };

    // A restart with the same password keeps the sessions.
    app.env
        .start(users(with_password(ADMIN_PASSWORD)))
        .await
        .stop()
        .await
        .unwrap();
    assert!(alive(first.clone()).await && alive(second.clone()).await);

    // A restart with another password ends every session of the administrator, and only those.
    app.env
        .start(users(with_password("admin password 2")))
        .await
        .stop()
        .await
        .unwrap();
    assert!(
        !alive(first).await,
        "an old administrator token still works"
    );
    assert!(
        !alive(second).await,
        "an old administrator token still works"
    );
    assert!(alive(frank).await, "{other_user} lost their session");
    assert_eq!(
        app.login(ADMIN, "admin password 2").await.status(),
        StatusCode::OK
    );
    app.stop().await;
}
