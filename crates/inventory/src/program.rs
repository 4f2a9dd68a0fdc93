//! The inventory program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};
use sqlx::PgPool;

use crate::{handlers::InventoryHandler, http};

pub struct Inventory;

#[async_trait]
impl Program for Inventory {
    fn name(&self) -> &'static str {
        "inventory"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts {
            router: http::router(ctx.pool().clone()),
            handler: Some(Arc::new(InventoryHandler)),
            ..Default::default()
        })
    }
}
