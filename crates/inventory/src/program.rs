//! The inventory program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use clap::Args;
use shop_platform::{
    Event as _, events,
    service::{Context, Parts, Program},
    topology::Identity,
};
use sqlx::PgPool;

use crate::{
    handlers::{self, InventoryHandler},
    http,
};

/// Who the inventory service is: it keeps stock for every product created, reserves it for
/// orders, releases it for compensations and turns reservations into sales.
pub static IDENTITY: Identity = Identity::service(
    "inventory",
    handlers::HANDLED,
    &[
        events::StockReserved::TYPE,
        events::StockRejected::TYPE,
        events::StockReleased::TYPE,
    ],
);

/// The inventory service's own settings.
#[derive(Args, Clone, Debug)]
pub struct InventorySettings {
    /// Port of the inventory service.
    #[arg(
        long,
        env = "SHOP_INVENTORY_PORT",
        default_value_t = 8083,
        global = true
    )]
    pub inventory_port: u16,
}

pub struct Inventory {
    pub settings: InventorySettings,
}

#[async_trait]
impl Program for Inventory {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }
    fn port(&self) -> u16 {
        self.settings.inventory_port
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
