//! The inventory program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Inventory;

#[async_trait]
impl Program for Inventory {
    fn name(&self) -> &'static str {
        "inventory"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
