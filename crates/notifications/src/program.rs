//! The notifications program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::{
    Event as _, events,
    service::{Context, Parts, Program},
    topology::Identity,
};
use sqlx::migrate::Migrator;

use crate::{
    handlers::{self, NotificationsHandler},
    http,
    sender::{LogSender, Sender},
};

/// The schema's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Who the notifications service is: it tells users about their orders and welcomes them.
pub static IDENTITY: Identity = Identity::service(
    "notifications",
    8086,
    &MIGRATOR,
    handlers::HANDLED,
    &[events::NotificationSent::TYPE],
);

/// The notifications program, sending through `sender`.
pub struct Notifications {
    pub sender: Arc<dyn Sender>,
}

impl Default for Notifications {
    /// Sending through the log ([`LogSender`]).
    fn default() -> Self {
        Notifications {
            sender: Arc::new(LogSender),
        }
    }
}

#[async_trait]
impl Program for Notifications {
    fn identity(&self) -> &'static Identity {
        &IDENTITY
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
