//! The delivery worker: the notifications' own outbox. Event handlers only record a
//! notification as pending (in their inbox transaction); this worker claims pending ones,
//! sends them outside any transaction, and marks those of a claim that were sent, with their
//! `notification.sent`, in one transaction. A mail server that is away or slow delays
//! delivery with backoff and never holds an event handler; a refusal for good is recorded with
//! its reason.
//!
//! A crash between sending and marking sends the message again once the claim's lease runs
//! out, with the same `Message-ID` (at least once, recognisably so: SMTP allows no better).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use shop_platform::{
    Envelope, crash, events::NotificationSent, metrics::Metrics, outbox, telemetry,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, warn};

use crate::{
    sender::{Email, SendError, Sender},
    store::{self, Due},
};

/// How often due notifications are looked for when nothing wakes the worker (retries that
/// come due, and rows another instance recorded).
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Notifications claimed at a time.
const BATCH: i64 = 32;
/// Deliveries in progress at once (over the transport's pooled connections).
const CONCURRENCY: usize = 8;
/// The pending gauges are counted again at most this often (a count is a query).
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// The first retry's delay; each further failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a notification waits for its user's address (a `user.registered` still on its
/// way) before it is refused.
pub const ADDRESS_WAIT: Duration = Duration::from_secs(3600);

/// The delay before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Everything the worker needs.
pub struct Worker {
    pub pool: PgPool,
    pub sender: Arc<dyn Sender>,
    pub metrics: Arc<Metrics>,
    /// Wakes this program's outbox relay after `notification.sent` rows are committed.
    pub outbox: outbox::Waker,
    /// Woken by the event handler after it committed a new notification.
    pub wake: Arc<Notify>,
    /// How long a claim keeps other instances (and this one) off a notification: longer than
    /// a delivery can take.
    pub lease: Duration,
}

impl Worker {
    /// Delivers until `stop`; what is in flight then is finished first.
    pub async fn run(self, stop: CancellationToken) {
        let mut counted: Option<Instant> = None;
        while !stop.is_cancelled() {
            let full = match self.deliver_due().await {
                Ok(n) => n as i64 == BATCH,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "could not deliver notifications; retrying");
                    false
                }
            };
            if counted.is_none_or(|at| at.elapsed() >= GAUGE_EVERY) {
                self.gauge().await;
                counted = Some(Instant::now());
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }

    /// Claims the due notifications, delivers them, and marks those delivered sent in one
    /// transaction; returns how many were claimed.
    pub async fn deliver_due(&self) -> anyhow::Result<usize> {
        let due = store::claim_due(&self.pool, BATCH, self.lease).await?;
        let n = due.len();
        let delivered = Mutex::new(Vec::with_capacity(n));
        futures::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |d| async {
                if let Some(d) = self.deliver(d).await {
                    delivered.lock().expect("not poisoned").push(d);
                }
            })
            .await;
        let delivered = delivered.into_inner().expect("not poisoned");
        if !delivered.is_empty() {
            crash::point("notifications.after_send");
            if let Err(e) = self.mark_sent(&delivered).await {
                // Delivered, not recorded: sent again (same Message-ID) after the lease.
                warn!(notifications = delivered.len(), error = %format!("{e:#}"), "delivered but not marked sent");
            }
        }
        Ok(n)
    }

    /// Delivers one notification, in the trace of the transaction that recorded it; returns
    /// it if it was delivered (to be marked sent), with the delivery's span (its
    /// `notification.sent` continues that trace).
    async fn deliver(&self, due: Due) -> Option<(Due, tracing::Span)> {
        if !telemetry::exporting() {
            let delivered = self.deliver_in_span(due).await?;
            return Some((delivered, tracing::Span::none()));
        }
        let span = tracing::info_span!(
            "deliver",
            otel.name = %format_args!("deliver {}", due.notification.kind),
            otel.kind = "client",
            notification_id = %due.notification.id,
        );
        let parent = due
            .notification
            .trace_context
            .as_deref()
            .map(telemetry::context_of_traceparent)
            .unwrap_or_default();
        telemetry::adopt(&span, crate::program::IDENTITY.name, parent);
        telemetry::annotate(&span, "shop.attempt", due.notification.attempts);
        if let Some(order) = due.notification.order_id {
            telemetry::annotate(&span, "shop.order_id", order);
        }
        let delivered = self.deliver_in_span(due).instrument(span.clone()).await?;
        Some((delivered, span))
    }

    async fn deliver_in_span(&self, due: Due) -> Option<Due> {
        let n = &due.notification;
        let Some(address) = due.email.clone() else {
            let age = (chrono::Utc::now() - n.created_at)
                .to_std()
                .unwrap_or_default();
            if age > ADDRESS_WAIT {
                self.refuse(
                    n.id,
                    &format!("no e-mail address is known for user {}", n.user_id),
                )
                .await;
            } else {
                self.postpone(
                    n.id,
                    n.attempts,
                    "no address yet (user.registered not handled)",
                )
                .await;
            }
            return None;
        };
        let email = Email {
            notification_id: n.id,
            kind: n.kind.clone(),
            user_id: n.user_id,
            order_id: n.order_id,
            to_address: address,
            to_name: due.name.clone().unwrap_or_default(),
            subject: n.subject.clone(),
            text: n.body.clone(),
            html: n.html.clone(),
        };
        match self.sender.send(&email).await {
            Ok(()) => return Some(due),
            Err(SendError::Transient(e)) => {
                telemetry::set_error(&tracing::Span::current(), "smtp.transient", e.clone());
                self.metrics.notifications_retried.inc();
                warn!(notification_id = %n.id, attempts = n.attempts, error = %e, "delivery failed; retried later");
                self.postpone(n.id, n.attempts, &e).await;
            }
            Err(SendError::Permanent(e)) => {
                telemetry::set_error(&tracing::Span::current(), "smtp.refused", e.clone());
                self.refuse(n.id, &e).await
            }
        }
        None
    }

    /// Marks delivered notifications sent, each with its `notification.sent`, in one
    /// transaction (one that is no longer pending, refused meanwhile, is left as it is).
    async fn mark_sent(&self, delivered: &[(Due, tracing::Span)]) -> anyhow::Result<()> {
        let ids: Vec<uuid::Uuid> = delivered.iter().map(|(d, _)| d.notification.id).collect();
        let mut tx = self.pool.begin().await?;
        let marked = store::mark_sent(&mut tx, &ids).await?;
        for (d, span) in delivered
            .iter()
            .filter(|(d, _)| marked.contains(&d.notification.id))
        {
            let n = &d.notification;
            let sent = NotificationSent {
                notification_id: n.id,
                user_id: n.user_id,
                kind: n.kind.clone(),
            };
            let correlation = n.correlation_id.unwrap_or(n.id);
            let event = Envelope::new(n.id, &sent, correlation, n.source_event_id);
            outbox::enqueue(&mut tx, &event)
                .instrument(span.clone())
                .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        for (d, _) in delivered {
            let n = &d.notification;
            self.metrics.notifications_sent.inc();
            info!(notification_id = %n.id, kind = %n.kind, user_id = %n.user_id, order_id = ?n.order_id, attempts = n.attempts, "notification delivered");
        }
        Ok(())
    }

    async fn postpone(&self, id: uuid::Uuid, attempts: i32, error: &str) {
        if let Err(e) = store::postpone(&self.pool, id, backoff(attempts), error).await {
            // The claim's lease brings it back anyway.
            warn!(notification_id = %id, error = %e, "could not record a failed delivery");
        }
    }

    async fn refuse(&self, id: uuid::Uuid, reason: &str) {
        self.metrics.notifications_refused.inc();
        warn!(notification_id = %id, reason, "notification refused for good; not retried");
        if let Err(e) = store::refuse(&self.pool, id, reason).await {
            warn!(notification_id = %id, error = %e, "could not record a refusal; tried again after the lease");
        }
    }

    /// Sets the pending gauges.
    async fn gauge(&self) {
        match store::pending(&self.pool).await {
            Ok((count, oldest)) => {
                self.metrics.notifications_pending.set(count);
                self.metrics
                    .notifications_oldest_pending_age_seconds
                    .set(oldest);
            }
            Err(e) => warn!(error = %e, "could not count pending notifications"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let s = |a| backoff(a).as_secs();
        assert_eq!([s(0), s(1), s(2), s(3), s(4)], [1, 1, 2, 4, 8]);
        assert_eq!(s(9), 256);
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(i32::MAX), MAX_BACKOFF);
    }
}
