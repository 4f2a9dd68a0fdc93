//! The products program: migrations, the cache, the routes.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use shop_platform::{
    Event as _,
    events::{ProductCreated, ProductUpdated},
    service::{Context, Parts, Program},
};

use crate::{cache::ProductCache, catalog::Catalog, http};

shop_platform::service! {
    /// Who the products service is: it consumes no events and keeps a cache.
    Products: "products" on port 8082,
    consumes &[], publishes &[ProductCreated::TYPE, ProductUpdated::TYPE], with uses_cache: true
}

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
