//! The products service started for a test, and typed requests to it.

use std::sync::Arc;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use shop_platform::{
    assertion::HEADER as ASSERTION,
    config::Config,
    testkit::{TestEnv, TestService},
};
use shop_products::Products;
use uuid::Uuid;

/// The products service on the real servers ([`TestService`]), with its own helpers.
pub struct App(pub TestService);

shop_platform::deref_to_test_service!(App);

/// The products program with default settings.
pub fn products() -> Arc<Products> {
    Arc::new(Products {
        settings: shop_platform::config::defaults(),
    })
}

impl App {
    pub async fn spawn() -> App {
        App(TestService::start(products(), |_| {}).await)
    }

    /// Starts the program with its own configuration (e.g. Redis through a proxy), while
    /// `env` keeps the real servers for inspection and cleanup.
    pub async fn spawn_with(env: TestEnv, config: Config) -> App {
        App(TestService::start_in(env, products(), config).await)
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }

    /// A call of an internal route, as the orders service makes it.
    pub fn internal(&self, path: &str) -> RequestBuilder {
        self.http
            .get(self.url(path))
            .header(ASSERTION, self.service_assertion("orders"))
    }

    pub fn as_admin(&self, req: RequestBuilder) -> RequestBuilder {
        req.header(ASSERTION, self.user_assertion(Uuid::now_v7(), "admin"))
    }

    pub fn as_user(&self, req: RequestBuilder) -> RequestBuilder {
        req.header(ASSERTION, self.user_assertion(Uuid::now_v7(), "user"))
    }

    pub async fn create(&self, body: &Value) -> Response {
        self.as_admin(self.http.post(self.url("/api/products")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a product as an administrator and returns it.
    pub async fn created(&self, sku: &str, price_cents: i64) -> Value {
        let r = self.create(&product(sku, price_cents)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    pub async fn get(&self, id: &str) -> Response {
        self.http
            .get(self.url(&format!("/api/products/{id}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_ok(&self, id: &str) -> Value {
        let r = self.get(id).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn patch(&self, id: &str, body: &Value) -> Response {
        self.as_admin(self.http.patch(self.url(&format!("/api/products/{id}"))))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The cached JSON of a product, read straight from Redis.
    pub async fn cached(&self, id: &str) -> Option<Value> {
        let mut redis = self.env.redis().await;
        let key = self.env.config.redis_key(&format!("product:{id}"));
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        v.map(|s| serde_json::from_str(&s).unwrap())
    }
}

pub fn product(sku: &str, price_cents: i64) -> Value {
    json!({
        "sku": sku,
        "name": format!("Product {sku}"),
        "description": "A fine thing.",
        "price_cents": price_cents,
        "initial_stock": 10,
    })
}

pub use shop_platform::testkit::problem;

pub fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}
