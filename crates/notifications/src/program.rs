//! The notifications program: start-up wiring.

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};

pub struct Notifications;

#[async_trait]
impl Program for Notifications {
    fn name(&self) -> &'static str {
        "notifications"
    }

    async fn build(&self, _ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts::default())
    }
}
