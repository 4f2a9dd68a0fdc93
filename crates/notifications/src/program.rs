//! The notifications program: start-up wiring.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use clap::Args;
use shop_platform::{
    Event as _,
    config::redact_url,
    events::NotificationSent,
    service::{Context, Parts, Program},
};
use tracing::info;

use crate::{
    delivery::Worker,
    handlers::{self, NotificationsHandler},
    http,
    sender::{LogSender, Sender, SmtpSender},
};

shop_platform::service! {
    /// Who the notifications service is: it tells users about their orders and welcomes them.
    Notifications: "notifications" on port 8086,
    consumes handlers::HANDLED, publishes &[NotificationSent::TYPE]
}

/// The notifications service's own settings: where e-mail goes.
#[derive(Args, Clone, Debug)]
pub struct NotificationsSettings {
    /// SMTP server for e-mail: smtp://[user:password@]host[:port] (no TLS), or with the
    /// smtp-tls build feature smtp://...?tls=required (STARTTLS) or smtps://... (implicit
    /// TLS). Unset: notifications are written to the log only.
    #[arg(long, env = "SHOP_SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// The sender of e-mail (also the domain of each message's Message-ID).
    #[arg(long, env = "SHOP_SMTP_FROM", global = true)]
    #[arg(default_value = "Shop <shop@localhost>")]
    pub smtp_from: String,

    /// Seconds the SMTP server may take to answer each command.
    #[arg(long, env = "SHOP_SMTP_TIMEOUT_SECS", global = true)]
    #[arg(default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub smtp_timeout_secs: u64,
}

impl NotificationsSettings {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.smtp_timeout_secs)
    }

    /// How long a delivery may take before the notification may be claimed again: the
    /// sender's deadline for one delivery and a margin.
    pub fn lease(&self) -> Duration {
        self.timeout() * crate::sender::STEPS + Duration::from_secs(5)
    }
}

/// The notifications program, sending as its settings say (or through `sender`, in tests).
pub struct Notifications {
    pub settings: NotificationsSettings,
    pub sender: Option<Arc<dyn Sender>>,
}

impl Notifications {
    pub fn new(settings: NotificationsSettings) -> Self {
        Notifications {
            settings,
            sender: None,
        }
    }

    fn sender(&self) -> anyhow::Result<Arc<dyn Sender>> {
        if let Some(sender) = &self.sender {
            return Ok(sender.clone());
        }
        Ok(match &self.settings.smtp_url {
            Some(url) => {
                let smtp = SmtpSender::new(url, &self.settings.smtp_from, self.timeout())?;
                info!(smtp = %redact_url(url), from = %self.settings.smtp_from, "notifications are sent by e-mail");
                Arc::new(smtp)
            }
            None => {
                info!(
                    "SHOP_SMTP_URL is not set: notifications are written to the log, not e-mailed"
                );
                Arc::new(LogSender)
            }
        })
    }

    fn timeout(&self) -> Duration {
        self.settings.timeout()
    }
}

#[async_trait]
impl Program for Notifications {
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts> {
        let recorded = Arc::new(tokio::sync::Notify::new());
        let worker = Worker {
            pool: ctx.pool().clone(),
            sender: self.sender()?,
            metrics: ctx.metrics.clone(),
            outbox: ctx.outbox.clone(),
            wake: recorded.clone(),
            lease: self.settings.lease(),
        };
        Ok(Parts {
            router: http::router(ctx.pool().clone()),
            handler: Some(Arc::new(NotificationsHandler { recorded })),
            tasks: vec![tokio::spawn(worker.run(ctx.stop.clone()))],
            ..Default::default()
        })
    }
}
