//! The inventory program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::{
    Event as _, events,
    service::{Context, Parts, Program},
    topology::Identity,
};
use sqlx::migrate::Migrator;

use crate::{
    handlers::{self, InventoryHandler},
    http,
};

/// The schema's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Who the inventory service is: it keeps stock for every product created, reserves it for
/// orders, releases it for compensations and turns reservations into sales.
pub static IDENTITY: Identity = Identity::service(
    "inventory",
    8083,
    &MIGRATOR,
    handlers::HANDLED,
    &[
        events::StockReserved::TYPE,
        events::StockRejected::TYPE,
        events::StockReleased::TYPE,
    ],
);

pub struct Inventory;

#[async_trait]
impl Program for Inventory {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts {
            router: http::router(ctx.pool().clone()),
            handler: Some(Arc::new(InventoryHandler)),
            ..Default::default()
        })
    }
}
