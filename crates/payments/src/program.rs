//! The payments program: start-up wiring.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use shop_platform::{
    Event as _,
    events::{PaymentFailed, PaymentRefunded, PaymentSucceeded},
    service::{Context, Parts, Program},
};

use crate::{
    capture,
    handlers::{self, PaymentsHandler},
    http,
    provider::ProviderConfig,
};

/// How much later than the saga's deadline `tok_timeout` answers.
pub const TIMEOUT_TOKEN_MARGIN: Duration = Duration::from_secs(2);

shop_platform::service! {
    /// Who the payments service is: it charges and refunds as the saga asks.
    Payments: "payments" on port 8085, consumes handlers::HANDLED,
    publishes &[PaymentSucceeded::TYPE, PaymentFailed::TYPE, PaymentRefunded::TYPE]
}

/// The payments service's own settings (the simulated provider's, for load tests).
#[derive(Args, Clone, Debug)]
pub struct PaymentsSettings {
    /// Share of payments the simulated provider declines at random (0.0 to 1.0), for load tests.
    #[arg(long, env = "SHOP_PAYMENT_FAILURE_RATE", global = true)]
    #[arg(default_value_t = 0.0)]
    pub payment_failure_rate: f64,

    /// Latency of the simulated payment provider, in milliseconds.
    #[arg(long, env = "SHOP_PAYMENT_LATENCY_MS", global = true)]
    #[arg(default_value_t = 0)]
    pub payment_latency_ms: u64,
}

pub struct Payments {
    pub settings: PaymentsSettings,
    /// The saga's deadline: `tok_timeout` answers only after it.
    pub saga_deadline: Duration,
}

impl Payments {
    /// The simulated provider as configured.
    pub fn provider_config(&self) -> anyhow::Result<ProviderConfig> {
        let cfg = ProviderConfig {
            failure_rate: self.settings.payment_failure_rate,
            latency: Duration::from_millis(self.settings.payment_latency_ms),
            timeout_token_delay: self.saga_deadline + TIMEOUT_TOKEN_MARGIN,
        };
        cfg.validate()
            .map_err(anyhow::Error::msg)
            .context("SHOP_PAYMENT_FAILURE_RATE")?;
        Ok(cfg)
    }
}

#[async_trait]
impl Program for Payments {
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let provider = self.provider_config()?;
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
