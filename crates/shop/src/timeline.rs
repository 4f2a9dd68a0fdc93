//! `shop order <id>`: one order's path across the services, from what they recorded, with no
//! tracing backend: its status history (orders), every event of its saga with the service
//! that wrote it, when it was published, and which services handled it and when (each
//! service's outbox and inbox), the consumers still waiting for one, its dead letters, and the
//! trace id. The answer to "where is this order stuck?" in one command.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use shop_platform::{amqp::Broker, config::Config, dlq};
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::{PROGRAMS, topology};

/// What the services recorded of one order.
#[derive(Debug, Serialize)]
pub struct Timeline {
    pub order_id: Uuid,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The trace of the request that placed it (when traced).
    pub trace_id: Option<String>,
    /// Each status the order went through, with when.
    pub history: Vec<(String, DateTime<Utc>)>,
    /// The saga's events, in the order they were written.
    pub events: Vec<Step>,
    /// Its messages in dead-letter queues (`None`: the broker could not be asked).
    pub dead_letters: Option<Vec<DeadLetterStep>>,
}

/// One event of the saga.
#[derive(Debug, Serialize)]
pub struct Step {
    pub event_id: Uuid,
    pub event_type: String,
    /// The service whose outbox it was written in.
    pub published_by: String,
    pub written_at: DateTime<Utc>,
    /// When the relay had it confirmed by the broker (`None`: still in the outbox).
    pub sent_at: Option<DateTime<Utc>>,
    pub trace_id: Option<String>,
    /// The services that handled it (their inbox), with when.
    pub handled_by: Vec<(String, DateTime<Utc>)>,
    /// The services bound to it that have not handled it (yet).
    pub waiting_for: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetterStep {
    pub service: String,
    pub event_id: String,
    pub event_type: String,
    pub reason: String,
    pub attempts: i64,
}

/// How long after its last change an order's events may still come (a refund of a late
/// payment): the window of outbox rows searched.
const AFTER: i64 = 3600;

/// Reads the timeline of `order_id` (read-only, as the `audit` role when it has a password);
/// `broker` adds the dead letters.
pub async fn read(
    config: &Config,
    order_id: Uuid,
    broker: Option<&Broker>,
) -> anyhow::Result<Timeline> {
    let pool = crate::audit::read_only_pool(config).await?;
    let result = read_from(&pool, order_id, broker).await;
    pool.close().await;
    result
}

async fn read_from(
    pool: &PgPool,
    order_id: Uuid,
    broker: Option<&Broker>,
) -> anyhow::Result<Timeline> {
    let orders = shop_orders::program::IDENTITY.name;
    let row = sqlx::query(&format!(
        "SELECT status, cancel_reason, created_at, updated_at, trace_context FROM \"{orders}\".orders WHERE id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await?
    .with_context(|| format!("no order {order_id}"))?;
    let placed_at: DateTime<Utc> = row.get("created_at");
    let updated_at: DateTime<Utc> = row.get("updated_at");
    let history = sqlx::query_as(&format!(
        "SELECT status, at FROM \"{orders}\".order_history WHERE order_id = $1 ORDER BY id"
    ))
    .bind(order_id)
    .fetch_all(pool)
    .await?;

    // Each service's outbox, within the order's time window (the index on sent_at), and
    // its inbox by event id.
    let with_schema: Vec<&'static str> = PROGRAMS
        .iter()
        .filter(|e| e.identity.uses_database)
        .map(|e| e.identity.name)
        .collect();
    let mut events = Vec::new();
    for schema in &with_schema {
        let rows = sqlx::query(&format!(
            "SELECT event_id, event_type, created_at, sent_at, trace_context FROM \"{schema}\".outbox
             WHERE (sent_at BETWEEN $2 AND $3 OR sent_at IS NULL)
               AND (body::jsonb ->> 'correlation_id') = $1
             ORDER BY id"
        ))
        .bind(order_id.to_string())
        .bind(placed_at - Duration::seconds(60))
        .bind(updated_at + Duration::seconds(AFTER))
        .fetch_all(pool)
        .await?;
        for r in rows {
            let trace: Option<String> = r.get("trace_context");
            events.push(Step {
                event_id: r.get("event_id"),
                event_type: r.get("event_type"),
                published_by: schema.to_string(),
                written_at: r.get("created_at"),
                sent_at: r.get("sent_at"),
                trace_id: trace.as_deref().and_then(trace_id),
                handled_by: Vec::new(),
                waiting_for: Vec::new(),
            });
        }
    }
    events.sort_by_key(|e| e.written_at);
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let mut handled: HashMap<Uuid, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    for schema in &with_schema {
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT event_id, processed_at FROM \"{schema}\".inbox WHERE event_id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        for (id, at) in rows {
            handled
                .entry(id)
                .or_default()
                .push((schema.to_string(), at));
        }
    }
    let topology = topology();
    for e in &mut events {
        let mut by = handled.remove(&e.event_id).unwrap_or_default();
        by.sort_by_key(|(_, at)| *at);
        e.waiting_for = topology
            .programs()
            .filter(|p| p.consumes.contains(&e.event_type.as_str()))
            .map(|p| p.name.to_string())
            .filter(|name| !by.iter().any(|(s, _)| s == name))
            .collect();
        e.handled_by = by;
    }

    let dead_letters = match broker {
        Some(broker) => {
            let needle = order_id.to_string();
            let all = dlq::list(broker, None).await?;
            Some(
                all.into_iter()
                    .filter(|d| d.body.contains(&needle))
                    .map(|d| DeadLetterStep {
                        service: d.service,
                        event_id: d.message_id,
                        event_type: d.event_type,
                        reason: d.reason,
                        attempts: d.attempts,
                    })
                    .collect(),
            )
        }
        None => None,
    };
    let trace: Option<String> = row.get("trace_context");
    Ok(Timeline {
        order_id,
        status: row.get("status"),
        cancel_reason: row.get("cancel_reason"),
        placed_at,
        updated_at,
        trace_id: trace.as_deref().and_then(trace_id),
        history,
        events,
        dead_letters,
    })
}

/// The trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_string())
}

impl Timeline {
    /// The timeline for a terminal: times in milliseconds after the order was placed.
    pub fn table(&self) -> String {
        let ms = |at: DateTime<Utc>| (at - self.placed_at).num_milliseconds();
        let mut out = format!(
            "order {}  {}{}\nplaced {}, last change +{} ms\ntrace {}\n\nstatus:",
            self.order_id,
            self.status,
            self.cancel_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            self.placed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ms(self.updated_at),
            self.trace_id.as_deref().unwrap_or("- (not traced)"),
        );
        for (i, (status, at)) in self.history.iter().enumerate() {
            let arrow = if i == 0 { " " } else { " -> " };
            out.push_str(&format!("{arrow}{status} +{}ms", ms(*at)));
        }
        out.push_str(&format!(
            "\n\n{:>8}  {:<26} {:<14} {:>10}  HANDLED BY\n",
            "+MS", "EVENT", "FROM", "CONFIRMED"
        ));
        for e in &self.events {
            let sent = e
                .sent_at
                .map(|at| format!("+{}", ms(at)))
                .unwrap_or_else(|| "UNSENT".into());
            let mut by: Vec<String> = e
                .handled_by
                .iter()
                .map(|(s, at)| format!("{s} +{}", ms(*at)))
                .collect();
            by.extend(e.waiting_for.iter().map(|s| format!("{s} WAITING")));
            if by.is_empty() {
                by.push("-".into());
            }
            out.push_str(&format!(
                "{:>8}  {:<26} {:<14} {:>10}  {}\n",
                ms(e.written_at),
                e.event_type,
                e.published_by,
                sent,
                by.join(", ")
            ));
            if e.trace_id != self.trace_id
                && let Some(t) = &e.trace_id
            {
                out.push_str(&format!("{:>10}(in trace {t})\n", ""));
            }
        }
        out.push_str(
            "(ms after the order was placed; CONFIRMED: when the relay recorded the broker's \
             confirm, which may come after a consumer handled the event)\n",
        );
        match &self.dead_letters {
            None => out.push_str("\ndead letters: not checked (the broker is unreachable)\n"),
            Some(d) if d.is_empty() => out.push_str("\ndead letters: none\n"),
            Some(d) => {
                out.push_str("\ndead letters:\n");
                for d in d {
                    out.push_str(&format!(
                        "  {} {} {} after {} attempt(s): {}\n",
                        d.service, d.event_type, d.event_id, d.attempts, d.reason
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn trace_ids_of_traceparents() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
