//! One order's timeline (`shop order <id>`, and the operations page's through the gateway):
//! its status history, every event of its saga with the service that wrote it, when it was
//! published, which services handled it and when, the consumers still waiting for one, its
//! dead letters and the trace id. The readers differ (the command reads every schema, the
//! gateway asks each service: [`crate::admin`]); the assembly is this one.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{admin::Published, topology::Topology};

/// How long after its last change an order's events may still come (a refund of a late
/// payment): with a minute before it was placed, the window of outbox rows searched.
pub fn window(
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        placed_at - Duration::seconds(60),
        updated_at + Duration::seconds(3600),
    )
}

/// What the orders service keeps of an order, for its timeline.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderRecord {
    pub order_id: Uuid,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The W3C traceparent of the request that placed it.
    pub trace_context: Option<String>,
    /// Each status it went through, with when.
    #[schema(value_type = Vec<Vec<String>>)]
    pub history: Vec<(String, DateTime<Utc>)>,
}

/// What the services recorded of one order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timeline {
    pub order_id: Uuid,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The trace of the request that placed it (when traced).
    pub trace_id: Option<String>,
    /// Each status the order went through, with when.
    #[schema(value_type = Vec<Vec<String>>)]
    pub history: Vec<(String, DateTime<Utc>)>,
    /// The saga's events, in the order they were written.
    pub events: Vec<Step>,
    /// Its messages in dead-letter queues (`None`: the broker could not be asked).
    pub dead_letters: Option<Vec<DeadLetterStep>>,
}

/// One event of the saga.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = Vec<Vec<String>>)]
    pub handled_by: Vec<(String, DateTime<Utc>)>,
    /// The services bound to it that have not handled it (yet).
    pub waiting_for: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterStep {
    pub service: String,
    pub event_id: String,
    pub event_type: String,
    pub reason: String,
    pub attempts: i64,
}

impl From<crate::dlq::DeadLetter> for DeadLetterStep {
    fn from(d: crate::dlq::DeadLetter) -> Self {
        DeadLetterStep {
            service: d.service,
            event_id: d.message_id,
            event_type: d.event_type,
            reason: d.reason,
            attempts: d.attempts,
        }
    }
}

/// Puts a timeline together: `published` holds each service's outbox rows of the saga,
/// `handled` each service's inbox rows of those events.
pub fn assemble(
    order: OrderRecord,
    published: Vec<(String, Published)>,
    handled: Vec<(String, Uuid, DateTime<Utc>)>,
    topology: &Topology,
    dead_letters: Option<Vec<DeadLetterStep>>,
) -> Timeline {
    let mut by_event: HashMap<Uuid, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    for (service, id, at) in handled {
        by_event.entry(id).or_default().push((service, at));
    }
    let mut events: Vec<Step> = published
        .into_iter()
        .map(|(service, p)| {
            let mut by = by_event.remove(&p.event_id).unwrap_or_default();
            by.sort_by_key(|(_, at)| *at);
            let waiting_for = topology
                .programs()
                .filter(|prog| prog.consumes.contains(&p.event_type.as_str()))
                .map(|prog| prog.name.to_string())
                .filter(|name| !by.iter().any(|(s, _)| s == name))
                .collect();
            Step {
                event_id: p.event_id,
                event_type: p.event_type,
                published_by: service,
                written_at: p.written_at,
                sent_at: p.sent_at,
                trace_id: p.trace_context.as_deref().and_then(trace_id),
                handled_by: by,
                waiting_for,
            }
        })
        .collect();
    events.sort_by_key(|e| e.written_at);
    Timeline {
        order_id: order.order_id,
        trace_id: order.trace_context.as_deref().and_then(trace_id),
        status: order.status,
        cancel_reason: order.cancel_reason,
        placed_at: order.placed_at,
        updated_at: order.updated_at,
        history: order.history,
        events,
        dead_letters,
    }
}

/// The trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<String> {
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
