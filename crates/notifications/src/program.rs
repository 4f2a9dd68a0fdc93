//! The notifications program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::service::{Context, Parts, Program};
use sqlx::PgPool;

use crate::{
    handlers::NotificationsHandler,
    http,
    sender::{LogSender, Sender},
};

/// The notifications program, sending through the log ([`LogSender`]).
pub struct Notifications;

/// The notifications program sending through another [`Sender`] (a provider, a test double).
pub struct NotificationsVia(pub Arc<dyn Sender>);

#[async_trait]
impl Program for Notifications {
    fn name(&self) -> &'static str {
        "notifications"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        migrate(pool).await
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        Ok(parts(ctx, Arc::new(LogSender)))
    }
}

#[async_trait]
impl Program for NotificationsVia {
    fn name(&self) -> &'static str {
        "notifications"
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        migrate(pool).await
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        Ok(parts(ctx, self.0.clone()))
    }
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

fn parts(ctx: &Context, sender: Arc<dyn Sender>) -> Parts {
    Parts {
        router: http::router(ctx.pool().clone()),
        handler: Some(Arc::new(NotificationsHandler { sender })),
        ..Default::default()
    }
}
