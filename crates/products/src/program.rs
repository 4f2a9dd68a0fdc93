//! The products program: migrations, the cache, the routes.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use shop_platform::{
    Event as _, events,
    service::{Context, Parts, Program},
    topology::Identity,
};
use sqlx::migrate::Migrator;

use crate::{cache::ProductCache, catalog::Catalog, http};

/// The schema's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Who the products service is: it consumes no events and keeps a cache.
pub static IDENTITY: Identity = Identity {
    uses_cache: true,
    ..Identity::service(
        "products",
        8082,
        &MIGRATOR,
        &[],
        &[events::ProductCreated::TYPE, events::ProductUpdated::TYPE],
    )
};

/// The products service's own settings.
#[derive(Args, Clone, Debug)]
pub struct ProductsSettings {
    /// Lifetime of a cached product, in seconds (a random jitter of up to 10% is added).
    #[arg(long, env = "SHOP_CACHE_TTL_SECS", default_value_t = 60, global = true)]
    pub cache_ttl_secs: u64,
}

pub struct Products {
    pub settings: ProductsSettings,
}

#[async_trait]
impl Program for Products {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let conn = ctx
            .cache
            .clone()
            .context("the products service needs the cache Redis")?;
        let cache = Arc::new(ProductCache::new(
            conn,
            &ctx.config,
            self.settings.cache_ttl_secs,
            ctx.metrics.clone(),
            ctx.stop.clone(),
        ));
        let catalog = Arc::new(
            Catalog::new(ctx.pool().clone(), cache, ctx.metrics.clone())
                .with_outbox(ctx.outbox.clone()),
        );
        Ok(Parts {
            router: http::router(catalog),
            ..Parts::default()
        })
    }
}
