//! The inventory program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::{
    Event as _,
    events::{StockRejected, StockReleased, StockReserved},
    service::{Context, Parts, Program},
};

use crate::{
    handlers::{self, InventoryHandler},
    http,
};

shop_platform::service! {
    /// Who the inventory service is: it keeps stock for every product created, reserves it for
    /// orders, releases it for compensations and turns reservations into sales.
    Inventory: "inventory" on port 8083, consumes handlers::HANDLED,
    publishes &[StockReserved::TYPE, StockRejected::TYPE, StockReleased::TYPE]
}

pub struct Inventory;

#[async_trait]
impl Program for Inventory {
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts {
            router: http::router(ctx.pool().clone()),
            handler: Some(Arc::new(InventoryHandler)),
            ..Default::default()
        })
    }
}
