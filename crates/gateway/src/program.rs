//! The gateway program: the only public HTTP surface.

use anyhow::Context as _;
use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use axum::{
    Router,
    routing::{any, get},
};
use clap::Args;
use serde_json::{Map, Value};
use shop_platform::{
    health::Check,
    service::{Context, Identify, Parts, Program},
    session::SessionSettings,
    topology::Identity,
    upstream::Instances,
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{openapi, proxy, web};

/// Who the gateway is: no schema, no queue; it reaches the services over HTTP.
pub static IDENTITY: Identity = Identity {
    name: "gateway",
    default_port: 8080,
    migrations: None,
    consumes: &[],
    publishes: &[],
    uses_database: false,
    uses_broker: false,
    uses_cache: false,
    // None of a service's kind: it serves public documents and forwards `/api/...` to the
    // services, which hold each route to its access.
    routes: Vec::new,
};

/// The gateway's own settings.
#[derive(Args, Clone, Debug)]
pub struct GatewaySettings {
    /// Requests per minute allowed to one user or IP at the gateway.
    #[arg(long, env = "SHOP_RATE_LIMIT_PER_MIN", global = true)]
    #[arg(default_value_t = 6000)]
    pub rate_limit_per_min: u32,

    /// Login attempts per minute allowed to one IP.
    #[arg(long, env = "SHOP_LOGIN_RATE_LIMIT_PER_MIN", global = true)]
    #[arg(default_value_t = 30)]
    pub login_rate_limit_per_min: u32,

    /// Proxies in front of the gateway (`10.0.0.0/8,192.168.1.7`) whose `Forwarded` or
    /// `X-Forwarded-For` names the client; from any other peer the peer is the client.
    #[arg(long, env = "SHOP_TRUSTED_PROXIES", global = true)]
    #[arg(value_delimiter = ',', value_parser = crate::client::parse_network)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// The gateway's admin port: `/metrics` and the detailed `/health/ready` (each
    /// service's state), kept off the public port, which answers only whether it is ready.
    #[arg(long, env = "SHOP_GATEWAY_ADMIN_PORT", global = true)]
    #[arg(default_value_t = 9080)]
    pub admin_port: u16,

    /// Address the admin port listens on (keep it private: loopback, or a pod network
    /// that only the monitoring reaches).
    #[arg(long, env = "SHOP_GATEWAY_ADMIN_BIND", global = true)]
    #[arg(default_value = "127.0.0.1")]
    pub admin_bind: String,
}

/// The gateway: forwards the public API to the services of its [`Context::fleet`] and
/// aggregates their readiness.
pub struct Gateway {
    pub settings: GatewaySettings,
    pub sessions: SessionSettings,
}

#[async_trait]
impl Program for Gateway {
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let timeout = Duration::from_secs(ctx.config.http_timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(ctx.config.client_idle_timeout())
            .tcp_nodelay(true)
            .build()?;
        // Event streams are long and few: no idle pool, so a stream's connection closes
        // when it ends or its client leaves, instead of idling for a minute and a half.
        let streams = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .build()?;
        let gw = Arc::new(proxy::Gateway {
            config: ctx.config.clone(),
            settings: self.settings.clone(),
            sessions: self.sessions.clone(),
            fleet: ctx.fleet.clone(),
            keys: ctx.config.assertion_keys()?,
            redis: ctx.redis.clone().expect("the gateway uses Redis"),
            http: http.clone(),
            streams,
            sagas: Default::default(),
        });
        let admin_services = proxy::admin_services(&gw);
        let router = Router::new()
            .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::served(&admin_services)))
            .route(
                "/asyncapi.json",
                get(axum::Json(shop_platform::asyncapi::document(
                    ctx.fleet.topology.programs(),
                ))),
            )
            .route("/", get(web::index))
            .route("/ops", get(web::ops))
            .route("/assets/{name}", get(web::asset))
            .route("/api/{*rest}", any(proxy::proxy))
            .with_state(gw);
        let checks: Vec<Arc<dyn Check>> = ctx
            .fleet
            .others(IDENTITY.name)
            .map(|instances| {
                Arc::new(UpstreamCheck {
                    instances: instances.clone(),
                    http: http.clone(),
                }) as Arc<dyn Check>
            })
            .collect();
        // A service with several instances: each one's readiness, watched, decides whether
        // requests go to it.
        let tasks = ctx
            .fleet
            .others(IDENTITY.name)
            .filter(|i| i.len() > 1)
            .map(|i| {
                let (i, http, stop) = (i.clone(), http.clone(), ctx.stop.clone());
                tokio::spawn(async move { i.watch(http, WATCH_EVERY, stop).await })
            })
            .collect();
        let admin =
            shop_platform::service::bind(&self.settings.admin_bind, self.settings.admin_port)
                .await
                .context("the gateway's admin port (SHOP_GATEWAY_ADMIN_PORT)")?;
        Ok(Parts {
            router,
            checks,
            tasks,
            admin: Some(admin),
            ..Default::default()
        })
    }
}

impl Identify for Gateway {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }
}

/// A service's own readiness, as part of the gateway's.
/// How often the readiness of each instance of a service with several is asked.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A service is ready when one of its instances is.
struct UpstreamCheck {
    instances: Arc<Instances>,
    http: reqwest::Client,
}

#[async_trait]
impl Check for UpstreamCheck {
    fn name(&self) -> String {
        self.instances.program().to_string()
    }
    async fn check(&self) -> Result<Map<String, Value>, String> {
        let mut errors = Vec::new();
        for url in self.instances.urls() {
            match self.check_one(url).await {
                Ok(details) => return Ok(details),
                Err(e) if self.instances.len() > 1 => errors.push(format!("{url}: {e}")),
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }
}

impl UpstreamCheck {
    async fn check_one(&self, url: &str) -> Result<Map<String, Value>, String> {
        let resp = self
            .http
            .get(format!("{url}/health/ready"))
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
