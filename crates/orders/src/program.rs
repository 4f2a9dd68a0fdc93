//! The orders program: the saga orchestrator.

use std::time::Duration;

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};
use sqlx::PgPool;
use tokio::sync::broadcast;

use crate::{handlers, http};

pub struct Orders;

#[async_trait]
impl Program for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let pool = ctx.pool().clone();
        let deadline = ctx.config.saga_deadline();
        let (changes, _) = broadcast::channel(1024);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build()?;
        let state = http::AppState {
            pool: pool.clone(),
            http: client,
            products_url: ctx.config.service_url("products"),
            deadline,
            changes: changes.clone(),
            outbox: ctx.outbox.clone(),
        };
        // Status changes reach this instance's event streams from the handler and the
        // deadline scanner after each commit; a change made by another instance is seen at
        // the stream's periodic re-check.
        let tasks = vec![tokio::spawn(handlers::run_deadlines(
            pool,
            deadline,
            ctx.outbox.clone(),
            changes.clone(),
            ctx.stop.clone(),
        ))];
        Ok(Parts {
            router: http::router(state),
            handler: Some(handlers::handler(deadline, changes)),
            tasks,
            ..Default::default()
        })
    }
}
