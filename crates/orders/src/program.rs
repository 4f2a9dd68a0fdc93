//! The orders program: the saga orchestrator.

use std::time::Duration;

use crate::{handlers, http, live::Changes, messages};
use async_trait::async_trait;
use clap::Args;
use shop_platform::service::{Context, Parts, Program};

shop_platform::service! {
    /// Who the orders service is: the saga's orchestrator, hearing from inventory and payments.
    Orders: "orders" on port 8084, consumes messages::CONSUMES, publishes messages::PUBLISHES
}

/// The program whose internal price list orders reads when it places an order.
pub const PRICES_FROM: &str = "products";

/// The orders service's own settings.
#[derive(Args, Clone, Debug)]
pub struct OrdersSettings {
    /// Deadline of each waiting saga state, in milliseconds; when it passes the saga compensates.
    #[arg(long, env = "SHOP_SAGA_DEADLINE_MS", global = true)]
    #[arg(default_value_t = 30_000)]
    pub saga_deadline_ms: u64,
}

impl OrdersSettings {
    pub fn saga_deadline(&self) -> Duration {
        Duration::from_millis(self.saga_deadline_ms)
    }
}

pub struct Orders {
    pub settings: OrdersSettings,
}

#[async_trait]
impl Program for Orders {
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let pool = ctx.pool().clone();
        let deadline = self.settings.saga_deadline();
        let changes = Changes::default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(ctx.config.client_idle_timeout())
            .build()?;
        let client_for_watch = client.clone();
        let products = ctx.fleet.instances(PRICES_FROM)?.clone();
        let state = http::AppState {
            pool: pool.clone(),
            http: client,
            products: products.clone(),
            keys: ctx.config.assertion_keys()?,
            deadline,
            changes: changes.clone(),
            outbox: ctx.outbox.clone(),
        };
        // Status changes reach this instance's event streams from the handler and the
        // deadline scanner after each commit; a change made by another instance is seen at
        // the stream's periodic re-check.
        let mut tasks = vec![tokio::spawn(handlers::run_deadlines(
            pool,
            deadline,
            ctx.outbox.clone(),
            changes.clone(),
            ctx.metrics.clone(),
            ctx.stop.clone(),
        ))];
        // Several products instances: their readiness decides which get the price requests.
        if products.len() > 1 {
            let (http, stop) = (client_for_watch, ctx.stop.clone());
            tasks.push(tokio::spawn(async move {
                products.watch(http, Duration::from_secs(1), stop).await
            }));
        }
        Ok(Parts {
            router: http::router(state),
            handler: Some(handlers::handler(deadline, changes, ctx.metrics.clone())),
            tasks,
            ..Default::default()
        })
    }
}
