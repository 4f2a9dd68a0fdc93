//! A typed client of the gateway's public API, shared by `shop load` and the end-to-end and
//! fault-injection tests: one place that knows the routes and bodies a client sends.

use anyhow::Context as _;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// The gateway at `base` (e.g. `http://127.0.0.1:8080`).
#[derive(Clone, Debug)]
pub struct ApiClient {
    pub http: Client,
    base: String,
}

/// An answer: its status, its body (JSON, or the text as a JSON string), and `Retry-After`
/// in seconds when given.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<u64>,
}

impl Answer {
    /// The `id` of the body, as a UUID.
    pub fn id(&self) -> anyhow::Result<Uuid> {
        self.body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no id in {}", self.body))
    }
}

/// A product as the administrator creates it.
#[derive(Clone, Debug)]
pub struct NewProduct<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub price_cents: i64,
    pub initial_stock: i64,
}

impl ApiClient {
    pub fn new(http: Client, base: impl Into<String>) -> Self {
        ApiClient {
            http,
            base: base.into(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A JSON call, authenticated with `token` when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> anyhow::Result<Answer> {
        let body = json!({"email": email, "password": password, "name": name});
        self.call(Method::POST, "/api/auth/register", None, Some(&body))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Answer> {
        let body = json!({"email": email, "password": password});
        self.call(Method::POST, "/api/auth/login", None, Some(&body))
            .await
    }

    pub async fn create_product(&self, admin: &str, p: &NewProduct<'_>) -> anyhow::Result<Answer> {
        let body = json!({
            "sku": p.sku,
            "name": p.name,
            "description": p.description,
            "price_cents": p.price_cents,
            "initial_stock": p.initial_stock,
        });
        self.call(Method::POST, "/api/products", Some(admin), Some(&body))
            .await
    }

    /// The stock of a product (`{product_id, available, reserved}`).
    pub async fn stock(&self, product: Uuid) -> anyhow::Result<Answer> {
        self.call(
            Method::GET,
            &format!("/api/inventory/{product}"),
            None,
            None,
        )
        .await
    }

    /// Places an order of `(product, quantity)` lines.
    pub async fn place_order(
        &self,
        token: &str,
        items: &[(Uuid, i32)],
        payment_token: &str,
    ) -> anyhow::Result<Answer> {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        let body = json!({"items": items, "payment_token": payment_token});
        self.call(Method::POST, "/api/orders", Some(token), Some(&body))
            .await
    }

    /// One order of the caller.
    pub async fn order(&self, token: &str, id: Uuid) -> anyhow::Result<Answer> {
        self.call(Method::GET, &format!("/api/orders/{id}"), Some(token), None)
            .await
    }
}
