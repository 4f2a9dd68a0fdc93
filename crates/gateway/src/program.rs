//! The gateway program: the only public HTTP surface.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{Router, routing::any};
use serde_json::{Map, Value};
use shop_platform::{
    health::Check,
    service::{Context, Parts, Program},
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{openapi, proxy};

/// The services the gateway forwards to (and whose readiness it aggregates).
pub const SERVICES: &[&str] = &[
    "users",
    "products",
    "inventory",
    "orders",
    "payments",
    "notifications",
];

pub struct Gateway;

#[async_trait]
impl Program for Gateway {
    fn name(&self) -> &'static str {
        "gateway"
    }
    fn uses_database(&self) -> bool {
        false
    }
    fn uses_broker(&self) -> bool {
        false
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let timeout = Duration::from_secs(ctx.config.http_timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let streams = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        let gw = Arc::new(proxy::Gateway {
            config: ctx.config.clone(),
            redis: ctx.redis.clone().expect("the gateway uses Redis"),
            http: http.clone(),
            streams,
        });
        let router = Router::new()
            .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::document()))
            .route("/api/{*rest}", any(proxy::proxy))
            .with_state(gw);
        let checks: Vec<Arc<dyn Check>> = SERVICES
            .iter()
            .map(|s| {
                Arc::new(UpstreamCheck {
                    name: s,
                    url: format!("{}/health/ready", ctx.config.service_url(s)),
                    http: http.clone(),
                }) as Arc<dyn Check>
            })
            .collect();
        Ok(Parts {
            router,
            checks,
            ..Default::default()
        })
    }
}

/// A service's own readiness, as part of the gateway's.
struct UpstreamCheck {
    name: &'static str,
    url: String,
    http: reqwest::Client,
}

#[async_trait]
impl Check for UpstreamCheck {
    fn name(&self) -> String {
        self.name.to_string()
    }
    async fn check(&self) -> Result<Map<String, Value>, String> {
        let resp = self
            .http
            .get(&self.url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let ok = resp.status().is_success();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let details = body
            .get("details")
            .and_then(|d| d.as_object())
            .cloned()
            .unwrap_or_default();
        if ok {
            Ok(details)
        } else {
            Err(format!("not ready: {}", Value::Object(details)))
        }
    }
}
