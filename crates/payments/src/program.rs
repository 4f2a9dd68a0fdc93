//! The payments program: start-up wiring.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use shop_platform::{
    config::Config,
    service::{Context, Parts, Program},
};
use sqlx::PgPool;

use crate::{capture, handlers::PaymentsHandler, http, provider::ProviderConfig};

/// How much later than the saga's deadline `tok_timeout` answers.
pub const TIMEOUT_TOKEN_MARGIN: Duration = Duration::from_secs(2);

pub struct Payments;

/// The simulated provider as configured.
pub fn provider_config(config: &Config) -> anyhow::Result<ProviderConfig> {
    let cfg = ProviderConfig {
        failure_rate: config.payment_failure_rate,
        latency: Duration::from_millis(config.payment_latency_ms),
        timeout_token_delay: config.saga_deadline() + TIMEOUT_TOKEN_MARGIN,
    };
    cfg.validate()
        .map_err(anyhow::Error::msg)
        .context("SHOP_PAYMENT_FAILURE_RATE")?;
    Ok(cfg)
}

#[async_trait]
impl Program for Payments {
    fn name(&self) -> &'static str {
        "payments"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let provider = provider_config(&ctx.config)?;
        let pool = ctx.pool().clone();
        Ok(Parts {
            router: http::router(pool.clone()),
            handler: Some(Arc::new(PaymentsHandler { provider })),
            tasks: vec![tokio::spawn(capture::run(
                pool,
                ctx.outbox.clone(),
                ctx.stop.clone(),
            ))],
            ..Default::default()
        })
    }
}
