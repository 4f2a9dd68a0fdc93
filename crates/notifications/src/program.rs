//! The notifications program: start-up wiring.

use std::sync::Arc;

use async_trait::async_trait;
use shop_platform::{
    Event as _,
    events::NotificationSent,
    service::{Context, Parts, Program},
};

use crate::{
    handlers::{self, NotificationsHandler},
    http,
    sender::{LogSender, Sender},
};

shop_platform::service! {
    /// Who the notifications service is: it tells users about their orders and welcomes them.
    Notifications: "notifications" on port 8086,
    consumes handlers::HANDLED, publishes &[NotificationSent::TYPE]
}

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
