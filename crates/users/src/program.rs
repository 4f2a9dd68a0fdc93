//! The users program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Users;

#[async_trait]
impl Program for Users {
    fn name(&self) -> &'static str {
        "users"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
