//! The products program: migrations, the cache, the routes.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};
use sqlx::{PgPool, migrate::Migrator};

use crate::{cache::ProductCache, catalog::Catalog, http};

/// The schema's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub struct Products;

#[async_trait]
impl Program for Products {
    fn name(&self) -> &'static str {
        "products"
    }

    fn uses_cache(&self) -> bool {
        true
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        MIGRATOR.run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let conn = ctx
            .cache
            .clone()
            .context("the products service needs the cache Redis")?;
        let cache = Arc::new(ProductCache::new(
            conn,
            &ctx.config,
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
