//! Inspecting and re-driving dead-lettered messages (`shop dlq list|show|replay`).
//!
//! Messages are read with `basic.get` without acking and put back by closing the channel, so
//! looking never removes anything. A replay publishes a fresh first attempt to the service
//! queue with a confirm, and only then acks (removes) the dead letter.

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicGetOptions},
    types::{AMQPValue, FieldTable},
};
use serde::{Deserialize, Serialize};

use crate::{
    amqp::{self, Broker, H_ATTEMPTS, H_DEAD_AT, H_QUEUE, H_REASON, header_int, header_str},
    bus::PublishError,
};

/// A dead-lettered message as an operator sees it (in a list, without its body).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub service: String,
    pub message_id: String,
    pub event_type: String,
    pub reason: String,
    pub attempts: i64,
    pub first_death_at: Option<DateTime<Utc>>,
    /// The queue it came from (where a replay sends it).
    pub source_queue: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

fn x_death(props: &BasicProperties) -> Option<(String, Option<DateTime<Utc>>, Option<String>)> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    // The last entry is the first death.
    let AMQPValue::FieldTable(first) = deaths.as_slice().last()? else {
        return None;
    };
    let get = |k: &str| first.inner().get(k).cloned();
    let reason = match get("reason") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "dead-lettered by the broker".into(),
    };
    let at = match get("time") {
        Some(AMQPValue::Timestamp(t)) => DateTime::from_timestamp(t as i64, 0),
        _ => None,
    };
    let queue = match get("queue") {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    Some((reason, at, queue))
}

fn describe(service: &str, broker: &Broker, props: &BasicProperties, body: &[u8]) -> DeadLetter {
    let death = x_death(props);
    let reason = header_str(props, H_REASON)
        .or_else(|| {
            death.as_ref().map(|(r, _, _)| {
                format!("{r} (by the broker: the message outlived its queue TTL or was rejected)")
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let first_death_at = header_int(props, H_DEAD_AT)
        .and_then(DateTime::from_timestamp_millis)
        .or_else(|| death.as_ref().and_then(|(_, at, _)| *at));
    let source_queue = header_str(props, H_QUEUE)
        .or_else(|| death.as_ref().and_then(|(_, _, q)| q.clone()))
        .unwrap_or_else(|| broker.names().queue(service));
    DeadLetter {
        service: service.to_string(),
        message_id: props
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        event_type: props
            .kind()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "?".into()),
        reason,
        attempts: header_int(props, H_ATTEMPTS).unwrap_or(1),
        first_death_at,
        source_queue,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Services whose dead-letter queues exist.
pub fn services(broker: &Broker) -> Vec<&'static str> {
    broker.config().topology.consuming_services().collect()
}

/// Every dead letter of `service` (or of every service), left in place.
pub async fn list(broker: &Broker, service: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
    let all = services(broker);
    if let Some(s) = service
        && !all.contains(&s)
    {
        anyhow::bail!(
            "{s} has no dead-letter queue: the services that consume events are {}",
            all.join(", ")
        );
    }
    let mut out = Vec::new();
    for svc in all.into_iter().filter(|s| service.is_none_or(|x| x == *s)) {
        out.extend(peek(broker, svc, usize::MAX, |_| true).await?.1);
    }
    Ok(out)
}

/// How many dead letters `service` has, and the first `limit` of them that `wanted` keeps,
/// left in place.
pub async fn peek(
    broker: &Broker,
    service: &str,
    limit: usize,
    wanted: impl Fn(&DeadLetter) -> bool,
) -> anyhow::Result<(u32, Vec<DeadLetter>)> {
    let ch = broker.channel().await?;
    let dlq = broker.names().dead_letter_queue(service);
    let count = match amqp::depth(&ch, dlq.as_str()).await {
        Ok(count) => count,
        // Not declared yet: the service never ran in this namespace, so nothing is in it.
        Err(e) if is_not_found(&e) => return Ok((0, Vec::new())),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for _ in 0..count {
        if out.len() >= limit {
            break;
        }
        match ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => {
                let d = describe(service, broker, &m.delivery.properties, &m.delivery.data);
                if wanted(&d) {
                    out.push(d);
                }
            }
            None => break,
        }
    }
    // Closing the channel returns every message we looked at to the queue.
    let _ = ch.close(200, "listed".into()).await;
    Ok((count, out))
}

/// Whether RabbitMQ answered that the queue does not exist.
fn is_not_found(e: &lapin::Error) -> bool {
    use lapin::{
        ErrorKind,
        protocol::{AMQPErrorKind, AMQPSoftError},
    };
    matches!(e.kind(), ErrorKind::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Re-drives dead letters of `service` to their queue: the one with `message_id`, or all.
/// Returns how many were replayed.
pub async fn replay(
    broker: &Broker,
    service: &str,
    message_id: Option<&str>,
) -> anyhow::Result<usize> {
    let ch = broker.channel().await?;
    let dlq = broker.names().dead_letter_queue(service);
    let count = amqp::depth(&ch, dlq.as_str()).await?;
    let mut replayed = 0;
    for _ in 0..count {
        let Some(m) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let d = describe(service, broker, &m.delivery.properties, &m.delivery.data);
        if message_id.is_some_and(|id| id != d.message_id) {
            continue; // stays unacked; returned to the queue when the channel closes
        }
        replay_to_queue(
            broker,
            &d.source_queue,
            &m.delivery.data,
            &m.delivery.properties,
        )
        .await?;
        m.delivery.acker.ack(BasicAckOptions::default()).await?;
        replayed += 1;
        if message_id.is_some() {
            break;
        }
    }
    let _ = ch.close(200, "replayed".into()).await;
    Ok(replayed)
}

/// Re-publishes a dead-lettered message body to `queue` as a fresh first attempt.
async fn replay_to_queue(
    broker: &Broker,
    queue: &str,
    body: &[u8],
    props: &BasicProperties,
) -> Result<(), PublishError> {
    let headers = replay_headers(&props.headers().clone().unwrap_or_default());
    broker
        .publish_to_queue(queue, body, props.clone().with_headers(headers))
        .await
}

/// The headers a replayed message keeps: not Shop's attempt count and reasons, nor the
/// broker's death records (it is a fresh first attempt); everything else, its
/// `traceparent` included (a replay stays in its order's trace).
fn replay_headers(headers: &FieldTable) -> FieldTable {
    headers
        .inner()
        .iter()
        .filter(|(k, _)| {
            !k.as_str().starts_with("x-shop-")
                && k.as_str() != "x-death"
                && !k.as_str().starts_with("x-first-death")
                && !k.as_str().starts_with("x-last-death")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_a_first_attempt_in_the_same_trace() {
        let mut headers = FieldTable::default();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        headers.insert("x-shop-attempts".into(), AMQPValue::LongLongInt(3));
        headers.insert("x-shop-reason".into(), AMQPValue::LongString("no".into()));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let kept = replay_headers(&headers);
        let names: Vec<&str> = kept.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["traceparent"]);
    }
}
