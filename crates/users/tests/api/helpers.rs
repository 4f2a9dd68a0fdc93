//! The users service started for a test, and typed requests to it.

use std::sync::Arc;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use shop_platform::{assertion::HEADER as ASSERTION, config::defaults, testkit::TestService};
use shop_users::{Users, program::UsersSettings};
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";

/// The users service on the real servers ([`TestService`]), with its own helpers.
pub struct App(pub TestService);

shop_platform::deref_to_test_service!(App);

/// The users program with default settings, changed by `tweak`.
pub fn users(tweak: impl FnOnce(&mut UsersSettings)) -> Arc<Users> {
    let mut settings: UsersSettings = defaults();
    tweak(&mut settings);
    Arc::new(Users {
        settings,
        sessions: defaults(),
    })
}

impl App {
    pub async fn spawn() -> App {
        App::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut UsersSettings)) -> App {
        App(TestService::start(users(tweak), |_| {}).await)
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Response {
        self.http
            .post(self.url("/api/auth/register"))
            .json(&json!({"email": email, "password": password, "name": name}))
            .send()
            .await
            .unwrap()
    }

    /// Registers and returns the new user's JSON.
    pub async fn registered(&self, email: &str) -> Value {
        let r = self.register(email, PASSWORD, "Alice").await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.http
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn me(&self, user_id: Uuid) -> Response {
        self.http
            .get(self.url("/api/me"))
            .header(ASSERTION, self.user_assertion(user_id, "user"))
            .send()
            .await
            .unwrap()
    }

    /// How many accounts exist.
    pub async fn user_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    pub async fn logout(&self, token: &str) -> Response {
        self.http
            .post(self.url("/api/auth/logout"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

pub use shop_platform::testkit::problem;

pub fn id_of(v: &Value) -> Uuid {
    v["id"].as_str().unwrap().parse().unwrap()
}
