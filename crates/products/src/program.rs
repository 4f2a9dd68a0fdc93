//! The products program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Products;

#[async_trait]
impl Program for Products {
    fn name(&self) -> &'static str {
        "products"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
