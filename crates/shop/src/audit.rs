//! `shop audit`: checks the invariants of docs/architecture.md ("Invariants") across every service's data and the
//! broker, once the system is quiet.
//!
//! 1. every order is CONFIRMED or CANCELLED (none stuck);
//! 2. stock is conserved per product: initial + adjustments = available + reserved + sold,
//!    never negative, nothing left reserved, and sold = the confirmed orders' quantities;
//! 3. money: one capture per confirmed order for its exact total; a cancelled order's net
//!    (captured minus refunded) is zero;
//! 4. exactly one order notification per terminal order, one refund notice per refunded
//!    payment, and every notification delivered or refused with a reason (none pending);
//! 5. every outbox row published, work and retry queues drained, no delivery held
//!    unacknowledged by a consumer, every dead letter listed with its reason.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use serde::Serialize;
use shop_platform::{
    amqp::Broker,
    config::{Config, redact_url},
    dlq, metrics, outbox,
};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::{PROGRAMS, Settings};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub orders: i64,
    pub confirmed: i64,
    pub cancelled: i64,
    pub stuck: i64,
    pub products: i64,
    pub captured_cents: i64,
    pub refunded_cents: i64,
    pub notifications: i64,
    pub refund_notices: i64,
    /// Notifications delivered (to the mail server, or the log).
    pub notifications_sent: i64,
    /// Notifications the mail server refused for good: "id kind: reason".
    pub notifications_refused: Vec<String>,
    pub outbox_unsent: i64,
    pub queued_messages: u64,
    /// Deliveries the consumers hold unacknowledged (read from each program's `/metrics`).
    pub unacked_messages: u64,
    /// Programs whose unacknowledged deliveries could not be read (not running here).
    pub unacked_unchecked: Vec<String>,
    pub dead_letters: Vec<String>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let row = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<34} {v:>12}\n"));
        row(&mut s, "orders", self.orders.to_string());
        row(&mut s, "  confirmed", self.confirmed.to_string());
        row(&mut s, "  cancelled", self.cancelled.to_string());
        row(&mut s, "  not terminal (stuck)", self.stuck.to_string());
        row(&mut s, "products checked", self.products.to_string());
        row(
            &mut s,
            "money captured (cents)",
            self.captured_cents.to_string(),
        );
        row(
            &mut s,
            "money refunded (cents)",
            self.refunded_cents.to_string(),
        );
        row(
            &mut s,
            "order notifications",
            self.notifications.to_string(),
        );
        for (k, v) in [
            ("refund notices", self.refund_notices),
            ("notifications delivered", self.notifications_sent),
            (
                "notifications refused",
                self.notifications_refused.len() as i64,
            ),
        ] {
            row(&mut s, k, v.to_string());
        }
        for n in &self.notifications_refused {
            s.push_str(&format!("  {n}\n"));
        }
        row(&mut s, "outbox rows unsent", self.outbox_unsent.to_string());
        row(
            &mut s,
            "messages waiting in work queues",
            self.queued_messages.to_string(),
        );
        row(
            &mut s,
            "messages held unacknowledged",
            self.unacked_messages.to_string(),
        );
        if !self.unacked_unchecked.is_empty() {
            s.push_str(&format!(
                "  (not read: {} did not answer on /metrics)\n",
                self.unacked_unchecked.join(", ")
            ));
        }
        row(&mut s, "dead letters", self.dead_letters.len().to_string());
        for d in &self.dead_letters {
            s.push_str(&format!("  {d}\n"));
        }
        row(&mut s, "violations", self.violations.len().to_string());
        for v in &self.violations {
            s.push_str(&format!("  VIOLATION: {v}\n"));
        }
        s
    }
}

/// `shop_messages_in_flight` of the program at `base_url`, or `None` if it does not answer.
async fn in_flight(http: &reqwest::Client, base_url: &str) -> Option<u64> {
    let text = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    let n = metrics::sample_sum(&text, "shop_messages_in_flight", &[]);
    Some(n.max(0.0) as u64)
}

/// One connection to the shop's database as the read-only `audit` role (when
/// SHOP_DB_PASSWORDS has one): what the audit and `shop order` read with.
pub async fn read_only_pool(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(shop_platform::db::login(config, "audit")?)
        .await
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {}",
                redact_url(&config.database_url)
            )
        })
}

/// Runs every check. `broker` adds the queue checks (pass `None` to check the databases only).
/// Each service's crate reads its own tables; this combines what they report.
pub async fn run(
    config: &Config,
    settings: &Settings,
    broker: Option<&Broker>,
) -> anyhow::Result<Report> {
    let pool = read_only_pool(config).await?;
    let mut r = Report::default();

    // 1. orders
    let orders = shop_orders::store::report(&pool).await?;
    r.orders = orders.len() as i64;
    for (id, status, reason, _) in &orders {
        match status.as_str() {
            "CONFIRMED" => r.confirmed += 1,
            "CANCELLED" => {
                r.cancelled += 1;
                if reason.is_none() {
                    r.violations
                        .push(format!("order {id} is CANCELLED without a reason"));
                }
            }
            other => {
                r.stuck += 1;
                r.violations.push(format!("order {id} is stuck in {other}"));
            }
        }
    }

    // 2. stock
    let stock = shop_inventory::stock_report(&pool).await?;
    let sold_by_orders: HashMap<Uuid, i64> = shop_orders::store::sold_by_product(&pool)
        .await?
        .into_iter()
        .collect();
    r.products = stock.len() as i64;
    for (p, initial, adjusted, available, reserved, sold) in &stock {
        if initial + adjusted != available + reserved + sold {
            r.violations.push(format!(
                "product {p}: initial {initial} + adjusted {adjusted} != available {available} + reserved {reserved} + sold {sold}"
            ));
        }
        if *available < 0 || *reserved < 0 || *sold < 0 {
            r.violations.push(format!(
                "product {p}: negative stock ({available}/{reserved}/{sold})"
            ));
        }
        if r.stuck == 0 && *reserved != 0 {
            r.violations.push(format!(
                "product {p}: {reserved} still reserved although every order is terminal"
            ));
        }
        let expected = sold_by_orders.get(p).copied().unwrap_or(0);
        if *sold != expected {
            r.violations.push(format!(
                "product {p}: sold {sold} but confirmed orders hold {expected}"
            ));
        }
    }

    // 3. money
    let payments: HashMap<Uuid, (String, i64)> = shop_payments::money_report(&pool)
        .await?
        .into_iter()
        .map(|(o, s, a)| (o, (s, a)))
        .collect();
    for (id, status, _, total) in &orders {
        let p = payments.get(id);
        match (status.as_str(), p) {
            ("CONFIRMED", Some((s, amount))) if s == "captured" && amount == total => r.captured_cents += amount,
            ("CONFIRMED", other) => {
                r.violations.push(format!("confirmed order {id} (total {total}) has payment {other:?}, not one capture of its total"))
            }
            ("CANCELLED", None) => {}
            ("CANCELLED", Some((s, amount))) => match s.as_str() {
                "declined" => {}
                "refunded" => {
                    r.captured_cents += amount;
                    r.refunded_cents += amount;
                }
                other => r.violations.push(format!("cancelled order {id} has a {other} payment of {amount}: net not zero")),
            },
            _ => {}
        }
    }

    // 4. notifications
    let notes: HashMap<Uuid, i64> = shop_notifications::store::per_order(&pool)
        .await?
        .into_iter()
        .collect();
    for (id, status, _, _) in &orders {
        if status == "CONFIRMED" || status == "CANCELLED" {
            let n = notes.get(id).copied().unwrap_or(0);
            r.notifications += n;
            if n != 1 {
                r.violations.push(format!(
                    "order {id} ({status}) has {n} notifications, not 1"
                ));
            }
        }
    }

    let refund_notices: HashMap<Uuid, i64> = shop_notifications::store::refund_notices(&pool)
        .await?
        .into_iter()
        .collect();
    for (id, status, _, _) in &orders {
        let refunded = matches!(payments.get(id), Some((s, _)) if s == "refunded");
        let n = refund_notices.get(id).copied().unwrap_or(0);
        r.refund_notices += n;
        if n != i64::from(refunded) {
            r.violations.push(format!(
                "order {id} ({status}) has {n} refund notices, not {}",
                i64::from(refunded)
            ));
        }
    }
    let delivery = shop_notifications::store::delivery(&pool).await?;
    r.notifications_sent = delivery.sent;
    if delivery.pending > 0 {
        r.violations.push(format!(
            "{} notifications not yet delivered (pending)",
            delivery.pending
        ));
    }
    for (id, kind, reason) in delivery.refused {
        if reason.is_empty() {
            r.violations.push(format!(
                "notification {id} ({kind}) refused without a reason"
            ));
        }
        r.notifications_refused
            .push(format!("{id} {kind}: {reason}"));
    }

    // 5. outboxes and queues
    for e in PROGRAMS.iter().filter(|e| e.identity.uses_database) {
        let schema = e.identity.name;
        let unsent = outbox::unsent_in(&pool, schema).await?;
        if unsent > 0 {
            r.violations
                .push(format!("{unsent} {schema} outbox rows not published"));
        }
        r.outbox_unsent += unsent;
    }
    if let Some(broker) = broker {
        let ch = broker.channel().await?;
        let topology = crate::topology();
        for svc in topology.consuming_services() {
            // The work queue, then the retry queues (a message waiting out its retry delay is
            // work not yet done). Unacknowledged messages are not counted here: a consumer
            // holding one forever shows as a stuck order, a missing notification or a
            // reservation never turned into a sale, all checked above.
            let names = broker.names();
            let queues = std::iter::once((names.queue(svc), "queue".to_string())).chain(
                (1..=config.retry_delays_ms.len())
                    .map(|i| (names.retry_queue(svc, i), format!("retry queue {i}"))),
            );
            for (queue, what) in queues {
                let waiting = shop_platform::amqp::depth(&ch, queue.as_str())
                    .await
                    .with_context(|| format!("looking at queue {queue}"))?;
                if waiting > 0 {
                    r.violations.push(format!(
                        "{waiting} messages still waiting in {svc}'s {what}"
                    ));
                }
                r.queued_messages += u64::from(waiting);
            }
        }
        let _ = ch.close(200, "audit".into()).await;
        // Deliveries a consumer took and never acked (a stuck handler) are invisible to a
        // queue declaration; each program counts its own.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let fleet = crate::fleet(config, settings);
        for svc in topology.consuming_services() {
            match in_flight(&http, fleet.url(svc)?).await {
                Some(n) => {
                    if n > 0 {
                        r.violations.push(format!(
                            "{n} messages delivered to {svc} and not yet acknowledged"
                        ));
                    }
                    r.unacked_messages += n;
                }
                None => r.unacked_unchecked.push(svc.to_string()),
            }
        }
        for d in dlq::list(broker, None).await? {
            r.dead_letters.push(format!(
                "{} {} {} ({} attempts): {}",
                d.service, d.event_type, d.message_id, d.attempts, d.reason
            ));
        }
    }
    pool.close().await;
    Ok(r)
}
