//! The gateway program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Gateway;

#[async_trait]
impl Program for Gateway {
    fn name(&self) -> &'static str {
        "gateway"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
