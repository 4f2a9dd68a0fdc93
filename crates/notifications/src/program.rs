//! The notifications program: start-up wiring.

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
    handlers::{self, NotificationsHandler},
    http,
    sender::{LogSender, Sender},
};

/// Who the notifications service is: it tells users about their orders and welcomes them.
pub static IDENTITY: Identity = Identity::service(
    "notifications",
    handlers::HANDLED,
    &[events::NotificationSent::TYPE],
);

/// The notifications service's own settings.
#[derive(Args, Clone, Debug)]
pub struct NotificationsSettings {
    /// Port of the notifications service.
    #[arg(
        long,
        env = "SHOP_NOTIFICATIONS_PORT",
        default_value_t = 8086,
        global = true
    )]
    pub notifications_port: u16,
}

/// The notifications program, sending through `sender`.
pub struct Notifications {
    pub settings: NotificationsSettings,
    pub sender: Arc<dyn Sender>,
}

impl Notifications {
    /// Sending through the log ([`LogSender`]).
    pub fn new(settings: NotificationsSettings) -> Self {
        Notifications {
            settings,
            sender: Arc::new(LogSender),
        }
    }
}

#[async_trait]
impl Program for Notifications {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
    }
    fn port(&self) -> u16 {
        self.settings.notifications_port
    }

    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::migrate!("./migrations").run(pool).await?;
        Ok(())
    }

    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        Ok(Parts {
            router: http::router(ctx.pool().clone()),
            handler: Some(Arc::new(NotificationsHandler {
                sender: self.sender.clone(),
            })),
            ..Default::default()
        })
    }
}
