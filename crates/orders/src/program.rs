//! The orders program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Orders;

#[async_trait]
impl Program for Orders {
    fn name(&self) -> &'static str {
        "orders"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
