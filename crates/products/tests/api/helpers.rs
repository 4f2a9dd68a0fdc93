use std::sync::Arc;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use shop_platform::{
    config::Config,
    http::{X_USER_ID, X_USER_ROLE},
    service::{self, Running},
    testkit::TestEnv,
};
use shop_products::Products;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct App {
    pub env: TestEnv,
    pub running: Running,
    pub base: String,
    pub http: reqwest::Client,
}

impl App {
    pub async fn spawn() -> App {
        let env = TestEnv::new("products", |_| {}).await;
        let running = env.start(Arc::new(Products)).await;
        App::new(env, running)
    }

    /// Starts the program with its own configuration (e.g. Redis through a proxy), while
    /// `env` keeps the real servers for inspection and cleanup.
    pub async fn spawn_with(env: TestEnv, config: Config) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = service::start(
            Arc::new(Products),
            config,
            listener,
            CancellationToken::new(),
        )
        .await
        .expect("products starts");
        App::new(env, running)
    }

    fn new(env: TestEnv, running: Running) -> App {
        let base = format!("http://{}", running.addr);
        App {
            env,
            running,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn stop(self) {
        self.running.stop().await.expect("products stops");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn as_admin(&self, req: RequestBuilder) -> RequestBuilder {
        req.header(X_USER_ID, Uuid::now_v7().to_string())
            .header(X_USER_ROLE, "admin")
    }

    pub fn as_user(&self, req: RequestBuilder) -> RequestBuilder {
        req.header(X_USER_ID, Uuid::now_v7().to_string())
            .header(X_USER_ROLE, "user")
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

    /// A counter of the program's `/metrics` (0 if not yet reported).
    pub async fn counter(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("shop_{name}_total{{");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |v| v.parse().unwrap())
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

/// The status and problem body of an error answer, checking its content type.
pub async fn problem(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    (status, r.json().await.unwrap())
}

pub fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}
