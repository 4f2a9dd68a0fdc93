//! The payments program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Payments;

#[async_trait]
impl Program for Payments {
    fn name(&self) -> &'static str {
        "payments"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
