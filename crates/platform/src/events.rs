//! The event catalogue: one typed payload per event type, the one place events are defined
//! (docs/architecture.md, "The event envelope and the event catalogue").

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{Envelope, EnvelopeError, Event};

macro_rules! events {
    ($( $ty:ident = $name:literal { $($(#[$fm:meta])* $field:ident : $fty:ty),* $(,)? } )*) => {
        $(
            // Tolerant readers: a field added by a newer producer is ignored, so producers can
            // be upgraded before their consumers (docs/architecture.md, "Schema evolution").
            #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
            pub struct $ty { $($(#[$fm])* pub $field: $fty),* }
            impl Event for $ty { const TYPE: &'static str = $name; }
        )*
        /// Every event type of the catalogue.
        pub const ALL_TYPES: &[&str] = &[$($name),*];

        /// Every event type with the name of its payload's schema.
        pub const TYPES_AND_SCHEMAS: &[(&str, &str)] = &[$(($name, stringify!($ty))),*];

        /// The JSON schema of every payload (and of the types they contain), by name.
        pub fn schemas() -> Vec<(String, serde_json::Value)> {
            use utoipa::{PartialSchema as _, ToSchema as _};
            let mut all = Vec::new();
            $(
                all.push(($ty::name().into_owned(), $ty::schema()));
                $ty::schemas(&mut all);
            )*
            let mut out: Vec<(String, serde_json::Value)> = Vec::new();
            for (name, schema) in all {
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, serde_json::to_value(schema).expect("schemas serialize")));
                }
            }
            out
        }

        /// Checks that an envelope's payload matches the schema of its type.
        pub fn validate_payload(env: &Envelope) -> Result<(), EnvelopeError> {
            match env.event_type.as_str() {
                $($name => env.decode::<$ty>().map(|_| ()),)*
                other => Err(EnvelopeError::UnknownType(other.to_string())),
            }
        }
    };
}

/// One line of an order as it travels in events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    /// The product's name when the order was placed (empty in events of older versions).
    #[serde(default)]
    pub name: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

events! {
    UserRegistered = "user.registered" { user_id: Uuid, email: String, name: String }
    ProductCreated = "product.created" {
        product_id: Uuid, sku: String, name: String, price_cents: i64, currency: String, initial_stock: i64
    }
    ProductUpdated = "product.updated" { product_id: Uuid, name: String, description: String, price_cents: i64 }
    OrderCreated = "order.created" {
        order_id: Uuid, user_id: Uuid, items: Vec<OrderLine>, total_cents: i64, currency: String
    }
    StockReserved = "stock.reserved" { order_id: Uuid }
    StockRejected = "stock.rejected" { order_id: Uuid, reason: String }
    StockReleaseRequested = "stock.release_requested" { order_id: Uuid }
    StockReleased = "stock.released" { order_id: Uuid }
    PaymentRequested = "payment.requested" {
        order_id: Uuid, user_id: Uuid, amount_cents: i64, currency: String, payment_token: String
    }
    PaymentSucceeded = "payment.succeeded" { order_id: Uuid, payment_id: Uuid, amount_cents: i64 }
    PaymentFailed = "payment.failed" { order_id: Uuid, reason: String }
    PaymentRefundRequested = "payment.refund_requested" { order_id: Uuid, payment_id: Uuid }
    PaymentRefunded = "payment.refunded" {
        order_id: Uuid, payment_id: Uuid, amount_cents: i64,
        /// Whose money it is, and its currency (nil and empty from older versions).
        #[serde(default)] user_id: Uuid,
        #[serde(default)] currency: String
    }
    OrderConfirmed = "order.confirmed" {
        order_id: Uuid, user_id: Uuid, total_cents: i64, currency: String,
        /// What was bought (empty in events of older versions).
        #[serde(default)] items: Vec<OrderLine>
    }
    OrderCancelled = "order.cancelled" { order_id: Uuid, user_id: Uuid, reason: String }
    NotificationSent = "notification.sent" { notification_id: Uuid, user_id: Uuid, kind: String }
}

/// One envelope of every type of the catalogue, for tests (in the catalogue's order).
#[cfg(any(test, feature = "testkit"))]
pub fn samples() -> Vec<Envelope> {
    use serde_json::json;
    let id = Uuid::now_v7();
    let line = json!([{"product_id": id, "name": "Mug", "quantity": 2, "unit_price_cents": 100}]);
    vec![
        sample::<UserRegistered>(json!({"user_id": id, "email": "a@b.c", "name": "A"})),
        sample::<ProductCreated>(json!({"product_id": id, "sku": "S", "name": "N",
            "price_cents": 5, "currency": "EUR", "initial_stock": 3})),
        sample::<ProductUpdated>(json!({"product_id": id, "name": "N", "description": "D",
            "price_cents": 1})),
        sample::<OrderCreated>(json!({"order_id": id, "user_id": id, "items": line.clone(),
            "total_cents": 200, "currency": "EUR"})),
        sample::<StockReserved>(json!({"order_id": id})),
        sample::<StockRejected>(json!({"order_id": id, "reason": "x"})),
        sample::<StockReleaseRequested>(json!({"order_id": id})),
        sample::<StockReleased>(json!({"order_id": id})),
        sample::<PaymentRequested>(json!({"order_id": id, "user_id": id, "amount_cents": 1,
            "currency": "EUR", "payment_token": "tok"})),
        sample::<PaymentSucceeded>(json!({"order_id": id, "payment_id": id, "amount_cents": 1})),
        sample::<PaymentFailed>(json!({"order_id": id, "reason": "card_declined"})),
        sample::<PaymentRefundRequested>(json!({"order_id": id, "payment_id": id})),
        sample::<PaymentRefunded>(json!({"order_id": id, "payment_id": id, "amount_cents": 1,
            "user_id": id, "currency": "EUR"})),
        sample::<OrderConfirmed>(json!({"order_id": id, "user_id": id, "total_cents": 200,
            "currency": "EUR", "items": line})),
        sample::<OrderCancelled>(json!({"order_id": id, "user_id": id, "reason": "timeout"})),
        sample::<NotificationSent>(json!({"notification_id": id, "user_id": id, "kind": "k"})),
    ]
}

/// An envelope of `E` around `payload`, which must be a valid `E` (or this panics).
#[cfg(any(test, feature = "testkit"))]
fn sample<E: Event + serde::de::DeserializeOwned>(payload: serde_json::Value) -> Envelope {
    let event: E = serde_json::from_value(payload.clone())
        .unwrap_or_else(|e| panic!("not a {}: {e}: {payload}", E::TYPE));
    let id = Uuid::now_v7();
    Envelope::new(id, &event, id, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_from_a_newer_producer_is_ignored_and_a_missing_one_is_refused() {
        for env in samples() {
            let mut newer = serde_json::to_value(&env).unwrap();
            newer["payload"]["added_in_a_later_version"] = serde_json::json!({"any": [1, 2]});
            let parsed = Envelope::parse(newer.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", env.event_type));
            validate_payload(&parsed).unwrap();
            assert_eq!(parsed.id, env.id);
        }
        let mut lines = serde_json::to_value(samples().remove(3)).unwrap();
        assert_eq!(lines["type"], "order.created");
        lines["payload"]["items"][0]["colour"] = serde_json::json!("blue");
        assert!(
            Envelope::parse(lines.to_string().as_bytes()).is_ok(),
            "nested too"
        );
        let mut older = serde_json::to_value(samples().remove(3)).unwrap();
        older["payload"]
            .as_object_mut()
            .unwrap()
            .remove("total_cents");
        assert!(
            Envelope::parse(older.to_string().as_bytes()).is_err(),
            "a field the consumer needs is still required"
        );
    }

    #[test]
    fn every_type_round_trips() {
        let samples = samples();
        let mut seen: Vec<_> = samples.iter().map(|e| e.event_type.clone()).collect();
        seen.sort();
        let mut all: Vec<_> = ALL_TYPES.iter().map(|s| s.to_string()).collect();
        all.sort();
        assert_eq!(seen, all, "one sample per catalogue type");
        for env in samples {
            assert_eq!(Envelope::parse(&env.to_bytes()).unwrap(), env);
        }
    }
}
