//! The event envelope: the one JSON shape of every message on the bus
//! (docs/architecture.md, "The event envelope and the event catalogue").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::events;

/// The envelope version this build writes and understands.
pub const CURRENT_VERSION: u32 = 1;

/// A typed event payload of the catalogue.
pub trait Event: Serialize + DeserializeOwned + Send + Sync {
    /// The routing key and `type` field, e.g. `order.created`.
    const TYPE: &'static str;
}

/// Every message body on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub version: u32,
    /// Shared by every event of one saga (or one request's consequences).
    pub correlation_id: Uuid,
    /// The event or request that caused this one.
    pub causation_id: Uuid,
    pub payload: serde_json::Value,
}

/// Why a message body is not an event this build can handle.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error(
        "unsupported envelope version {found} (this build understands up to {CURRENT_VERSION})"
    )]
    UnsupportedVersion { found: u32 },
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("payload of {event_type} does not match its schema: {error}")]
    BadPayload { event_type: String, error: String },
}

impl Envelope {
    /// A new event starting a chain: its correlation and causation ids are `cause`.
    pub fn new<E: Event>(
        aggregate_id: Uuid,
        payload: &E,
        correlation_id: Uuid,
        causation_id: Uuid,
    ) -> Self {
        Envelope {
            id: Uuid::now_v7(),
            event_type: E::TYPE.to_string(),
            aggregate_id,
            occurred_at: Utc::now(),
            version: CURRENT_VERSION,
            correlation_id,
            causation_id,
            payload: serde_json::to_value(payload).expect("event payloads always serialize"),
        }
    }

    /// An event caused by this one: same correlation id, causation id = this id.
    pub fn caused<E: Event>(&self, aggregate_id: Uuid, payload: &E) -> Self {
        Envelope::new(aggregate_id, payload, self.correlation_id, self.id)
    }

    /// Parses and validates a message body: well-formed, a version this build understands,
    /// a type of the catalogue and a payload that matches that type's schema.
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let env: Envelope =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.version > CURRENT_VERSION || env.version == 0 {
            return Err(EnvelopeError::UnsupportedVersion { found: env.version });
        }
        events::validate_payload(&env)?;
        Ok(env)
    }

    /// The typed payload.
    pub fn decode<E: Event>(&self) -> Result<E, EnvelopeError> {
        if self.event_type != E::TYPE {
            return Err(EnvelopeError::BadPayload {
                event_type: self.event_type.clone(),
                error: format!("expected {}", E::TYPE),
            });
        }
        serde_json::from_value(self.payload.clone()).map_err(|e| EnvelopeError::BadPayload {
            event_type: self.event_type.clone(),
            error: e.to_string(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;

    fn sample() -> Envelope {
        let order = Uuid::now_v7();
        Envelope::new(order, &StockReserved { order_id: order }, order, order)
    }

    #[test]
    fn round_trips_through_bytes() {
        let env = sample();
        let back = Envelope::parse(&env.to_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(
            back.decode::<StockReserved>().unwrap().order_id,
            env.aggregate_id
        );
    }

    #[test]
    fn wire_shape_matches_design() {
        let v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "aggregate_id",
                "causation_id",
                "correlation_id",
                "id",
                "occurred_at",
                "payload",
                "type",
                "version"
            ]
        );
        assert_eq!(v["type"], "stock.reserved");
        assert_eq!(v["version"], 1);
        // uuid v7: time ordered ids
        assert_eq!(sample().id.get_version_num(), 7);
    }

    #[test]
    fn newer_version_is_rejected_with_reason() {
        let mut env = sample();
        env.version = 2;
        let err = Envelope::parse(&env.to_bytes()).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::UnsupportedVersion { found: 2 }),
            "{err}"
        );
    }

    #[test]
    fn unknown_type_is_rejected_with_reason() {
        let mut env = sample();
        env.event_type = "order.teleported".into();
        let err = Envelope::parse(&env.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("order.teleported"));
    }

    #[test]
    fn payload_must_match_its_type() {
        let mut env = sample();
        env.payload = serde_json::json!({"nope": 1});
        assert!(matches!(
            Envelope::parse(&env.to_bytes()),
            Err(EnvelopeError::BadPayload { .. })
        ));
    }

    #[test]
    fn caused_event_keeps_correlation() {
        let first = sample();
        let next = first.caused(
            first.aggregate_id,
            &StockReleased {
                order_id: first.aggregate_id,
            },
        );
        assert_eq!(next.correlation_id, first.correlation_id);
        assert_eq!(next.causation_id, first.id);
        assert_ne!(next.id, first.id);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Envelope::parse(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(s in "\\PC{0,300}") {
            let _ = Envelope::parse(s.as_bytes());
        }
    }
}
