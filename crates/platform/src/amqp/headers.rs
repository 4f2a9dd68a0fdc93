//! The headers Shop adds to messages (attempts, reasons, origin) and reading them back.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::{BasicProperties, types::AMQPValue};

/// Header: how many times this message has been attempted (1 on first delivery).
pub const H_ATTEMPTS: &str = "x-shop-attempts";
/// Header: why the message is in the dead-letter queue.
pub const H_REASON: &str = "x-shop-reason";
/// Header: the last transient error, on retried messages.
pub const H_LAST_ERROR: &str = "x-shop-last-error";
/// Header: the queue the message was consumed from.
pub const H_QUEUE: &str = "x-shop-queue";
/// Header: when the message was first dead-lettered (unix ms).
pub const H_DEAD_AT: &str = "x-shop-dead-lettered-at";

/// Reads an integer header.
pub fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v as i64),
        _ => None,
    }
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A copy of `props` with some headers set.
pub fn with_headers(props: &BasicProperties, set: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in set {
        headers.insert((*k).into(), v.clone());
    }
    props.clone().with_headers(headers)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An integer header value.
pub(crate) fn long(v: u64) -> AMQPValue {
    AMQPValue::LongLongInt(v as i64)
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;

    #[test]
    fn a_retried_message_keeps_its_trace_context_and_other_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        headers.insert(H_ATTEMPTS.into(), long(1));
        let props = BasicProperties::default().with_headers(headers);
        let retried = with_headers(&props, &[(H_ATTEMPTS, long(2))]);
        assert_eq!(header_str(&retried, "traceparent").as_deref(), Some(tp));
        assert_eq!(header_int(&retried, H_ATTEMPTS), Some(2));
    }
}
