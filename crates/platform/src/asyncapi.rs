//! The AsyncAPI 3 document of the shop's events, generated from the one place events are
//! defined (the catalogue, [`crate::events`]) and from every program's [`Identity`] (who
//! publishes and who consumes each type). The gateway serves it at `/asyncapi.json`,
//! `shop asyncapi` prints it, and a copy is committed as `docs/asyncapi.json`.

use serde_json::{Map, Value, json};

use crate::{events, topology::Identity};

/// The document for these programs.
pub fn document(programs: impl IntoIterator<Item = &'static Identity>) -> Value {
    let programs: Vec<&Identity> = programs.into_iter().collect();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for (name, schema) in events::schemas() {
        schemas.insert(name, schema);
    }
    for (event_type, schema_name) in events::TYPES_AND_SCHEMAS {
        let message = json!({
            "name": event_type,
            "title": event_type,
            "contentType": "application/json",
            "payload": envelope_schema(event_type, schema_name),
            "bindings": {"amqp": {"deliveryMode": 2, "messageType": event_type}},
        });
        messages.insert((*event_type).to_string(), message);
        channels.insert(
            (*event_type).to_string(),
            json!({
                "address": event_type,
                "description": format!("Events of type {event_type}: the routing key on the topic exchange."),
                "messages": {*event_type: {"$ref": format!("#/components/messages/{event_type}")}},
                "bindings": {"amqp": {
                    "is": "routingKey",
                    "exchange": {"name": "shop.events", "type": "topic", "durable": true, "autoDelete": false, "vhost": "/"},
                }},
            }),
        );
        let channel = json!({"$ref": format!("#/channels/{event_type}")});
        let consumed = programs.iter().any(|c| c.consumes.contains(event_type));
        for p in &programs {
            let roles = [
                (
                    p.publishes,
                    "send",
                    format!(
                        "{} publishes {event_type} through its outbox, with publisher confirms.",
                        p.name
                    ),
                    json!({"amqp": {"deliveryMode": 2, "mandatory": consumed}}),
                ),
                (
                    p.consumes,
                    "receive",
                    format!(
                        "{} consumes {event_type} from its queue `{}` (manual acks, inbox).",
                        p.name, p.name
                    ),
                    json!({"amqp": {"ack": true}}),
                ),
            ];
            for (types, action, summary, bindings) in roles {
                if types.contains(event_type) {
                    operations.insert(
                        format!("{}.{action}.{event_type}", p.name),
                        json!({"action": action, "channel": channel, "summary": summary, "bindings": bindings}),
                    );
                }
            }
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Shop events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every event of the shop, on the durable topic exchange `shop.events` \
                (prefixed by SHOP_NAMESPACE), routing key = event type. Each body is the JSON \
                envelope; its `payload` is the type's schema. See docs/architecture.md.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    })
}

/// The envelope around a payload of `schema_name`.
fn envelope_schema(event_type: &str, schema_name: &str) -> Value {
    json!({
        "type": "object",
        "required": ["id", "type", "aggregate_id", "occurred_at", "version", "correlation_id", "causation_id", "payload"],
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "The event id (UUID v7), also the AMQP message_id."},
            "type": {"const": event_type},
            "aggregate_id": {"type": "string", "format": "uuid"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "version": {"type": "integer", "minimum": 1},
            "correlation_id": {"type": "string", "format": "uuid", "description": "Shared by every event of one saga."},
            "causation_id": {"type": "string", "format": "uuid"},
            "payload": {"$ref": format!("#/components/schemas/{schema_name}")},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event as _, events::OrderCreated};

    static NONE: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
    static A: Identity = Identity::service("a", 1, &NONE, &[OrderCreated::TYPE], &[]);
    static B: Identity = Identity::service("b", 2, &NONE, &[], &[OrderCreated::TYPE]);

    #[test]
    fn every_catalogue_type_has_a_channel_and_message_and_operations_follow_identities() {
        let doc = document([&A, &B]);
        for t in events::ALL_TYPES {
            assert!(doc["channels"][t].is_object(), "{t}");
            assert!(doc["components"]["messages"][t].is_object(), "{t}");
        }
        assert_eq!(
            doc["operations"]["a.receive.order.created"]["action"],
            "receive"
        );
        assert_eq!(doc["operations"]["b.send.order.created"]["action"], "send");
        assert_eq!(doc["operations"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn every_sample_validates_against_its_message_and_a_wrong_one_does_not() {
        let doc = document([&A, &B]);
        for env in events::samples() {
            let v = serde_json::to_value(&env).unwrap();
            let mut root = doc.clone();
            root["$ref"] = json!(format!("#/components/messages/{}/payload", env.event_type));
            let validator = jsonschema::validator_for(&root).expect("a valid schema");
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", env.event_type);
            // Tolerant readers: a newer producer's extra field is valid, a missing one is not.
            let mut newer = v.clone();
            newer["payload"]["added_later"] = json!(1);
            assert!(validator.is_valid(&newer), "{}", env.event_type);
            let mut wrong = v.clone();
            wrong["payload"] = json!({});
            assert!(
                !validator.is_valid(&wrong),
                "{} accepts a payload without its fields",
                env.event_type
            );
        }
    }
}
