//! Message faults: a burst of poison messages on every service queue (each dead-lettered with
//! its reason, the orders around them unaffected), and every saga event delivered again,
//! twice and out of order, after the fact (nothing changes).

use std::{collections::BTreeMap, time::Duration};

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use serde_json::json;
use shop_platform::{
    Envelope,
    bus::Publisher as _,
    events::{
        NotificationSent, OrderCreated, OrderLine, PaymentRequested, ProductCreated, StockReserved,
    },
};
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::{
    harness::{Chaos, Expect},
    load::Dice,
};

/// A message to put straight on a service queue.
struct Poison {
    service: &'static str,
    id: String,
    kind: String,
    body: Vec<u8>,
    /// A fragment of the reason it must be dead-lettered with.
    reason: &'static str,
}

fn envelope_bytes(env: &Envelope, tweak: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(env).unwrap();
    tweak(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// One of each kind of poison for every service queue, and for some services a well-formed
/// event its handler always refuses.
fn poison_set() -> Vec<Poison> {
    let mut all = Vec::new();
    let any = Uuid::now_v7();
    let topology = shop::topology();
    for service in topology.consuming_services() {
        let handled = topology.bindings_of(service)[0];
        // Bytes that are not JSON at all.
        all.push(Poison {
            service,
            id: Uuid::now_v7().to_string(),
            kind: handled.into(),
            body: b"\x00\xff{not json".to_vec(),
            reason: "malformed envelope",
        });
        // An envelope, changed by `tweak` into a poison of `kind`.
        let tweaked = |kind: &str, reason, tweak: &dyn Fn(&mut serde_json::Value)| {
            let env = Envelope::new(any, &StockReserved { order_id: any }, any, any);
            Poison {
                service,
                id: env.id.to_string(),
                kind: kind.into(),
                body: envelope_bytes(&env, tweak),
                reason,
            }
        };
        // An envelope from a newer version of the shop.
        all.push(tweaked(handled, "unsupported envelope version", &|v| {
            v["version"] = json!(99);
            v["type"] = json!(handled);
        }));
        // A type nobody knows.
        all.push(tweaked("bogus.happened", "unknown event type", &|v| {
            v["type"] = json!("bogus.happened")
        }));
        // A known type whose payload does not match its schema.
        all.push(tweaked(handled, "does not match its schema", &|v| {
            v["type"] = json!(handled);
            v["payload"] = json!({"unexpected": true});
        }));
        // A valid event of a type this service does not handle.
        let env = Envelope::new(
            any,
            &NotificationSent {
                notification_id: any,
                user_id: any,
                kind: "welcome".into(),
            },
            any,
            any,
        );
        all.push(Poison {
            service,
            id: env.id.to_string(),
            kind: env.event_type.clone(),
            body: env.to_bytes(),
            reason: "has no handler for",
        });
    }
    // Well-formed events the handlers always refuse.
    let refused: Vec<(&'static str, Envelope, &'static str)> = vec![
        (
            "inventory",
            Envelope::new(
                any,
                &ProductCreated {
                    product_id: Uuid::now_v7(),
                    sku: "NEG".into(),
                    name: "Negative".into(),
                    price_cents: 1,
                    currency: "EUR".into(),
                    initial_stock: -5,
                },
                any,
                any,
            ),
            "is negative",
        ),
        (
            // A transient failure every time: retried through the delay queues, then parked.
            "inventory",
            Envelope::new(
                any,
                &OrderCreated {
                    order_id: Uuid::now_v7(),
                    user_id: any,
                    items: vec![OrderLine {
                        product_id: Uuid::now_v7(),
                        name: "Mug".into(),
                        quantity: 1,
                        unit_price_cents: 100,
                    }],
                    total_cents: 100,
                    currency: "EUR".into(),
                },
                any,
                any,
            ),
            "failed after 3 attempts",
        ),
        (
            "orders",
            Envelope::new(
                any,
                &StockReserved {
                    order_id: Uuid::now_v7(),
                },
                any,
                any,
            ),
            "unknown order",
        ),
        (
            "payments",
            Envelope::new(
                any,
                &PaymentRequested {
                    order_id: Uuid::now_v7(),
                    user_id: any,
                    amount_cents: 0,
                    currency: "EUR".into(),
                    payment_token: "tok_visa".into(),
                },
                any,
                any,
            ),
            "is not positive",
        ),
    ];
    for (service, env, reason) in refused {
        all.push(Poison {
            service,
            id: env.id.to_string(),
            kind: env.event_type.clone(),
            body: env.to_bytes(),
            reason,
        });
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_burst_is_dead_lettered_with_reasons() {
    const NAME: &str = "poison burst on every service queue";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    let broker = c.cluster.broker().await;
    let ch = broker.channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut expected = BTreeMap::new();
    let mut sent = 0;
    c.fault("a burst of poison messages on every service queue, in three waves");
    for wave in 0..3 {
        if wave > 0 {
            // Orders keep flowing between the waves.
            c.accepted_more(5, Duration::from_secs(30), "orders between poison waves")
                .await;
        }
        for p in poison_set() {
            let props = BasicProperties::default()
                .with_message_id(p.id.as_str().into())
                .with_type(p.kind.as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let confirm = ch
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(broker.names().queue(p.service)),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &p.body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "poison {} confirmed", p.id);
            expected.insert(p.id, p.reason.to_string());
            sent += 1;
        }
    }
    let _ = ch.close(200, "poisoned".into()).await;
    broker.close().await;
    c.note(format!("{sent} poison messages published"));
    c.healed("burst published");
    c.finish(Expect {
        dead_letters: expected,
        ..Expect::normal()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn saga_events_duplicated_and_reordered_change_nothing() {
    const NAME: &str = "every saga event delivered twice more, shuffled";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    c.accepted_more(40, Duration::from_secs(60), "orders to replay")
        .await;
    c.stop_trickle().await;
    c.wait_clean(Duration::from_secs(120)).await;
    let before = c.snapshot().await;
    let duplicates_before = c.duplicates().await;

    // Every event orders, inventory and payments ever published, from their outboxes.
    let mut db = PgConnection::connect(&c.cluster.config.database_url)
        .await
        .unwrap();
    let mut events = Vec::new();
    for schema in ["orders", "inventory", "payments"] {
        let bodies: Vec<String> =
            sqlx::query_scalar(&format!("SELECT body FROM {schema}.outbox ORDER BY id"))
                .fetch_all(&mut db)
                .await
                .unwrap();
        events.extend(
            bodies
                .iter()
                .map(|b| serde_json::from_str::<Envelope>(b).unwrap()),
        );
    }
    let _ = db.close().await;
    // Twice each, shuffled: a payment.succeeded may now come before its stock.reserved.
    let mut deliveries: Vec<Envelope> = events.iter().chain(events.iter()).cloned().collect();
    let mut dice = Dice::new(Uuid::new_v4().as_u128() as u64);
    for i in (1..deliveries.len()).rev() {
        let j = dice.below(i as u64 + 1) as usize;
        deliveries.swap(i, j);
    }
    let topology = shop::topology();
    let expected: u64 = deliveries
        .iter()
        .map(|e| {
            topology
                .consuming_services()
                .filter(|s| topology.bindings_of(s).contains(&e.event_type.as_str()))
                .count() as u64
        })
        .sum();
    c.fault(&format!(
        "{} saga events published again twice each ({} deliveries, shuffled)",
        events.len(),
        deliveries.len()
    ));
    let broker = c.cluster.broker().await;
    for chunk in deliveries.chunks(100) {
        for r in broker.publish_batch(chunk).await {
            r.expect("republished with a confirm");
        }
    }
    broker.close().await;
    c.healed("all copies published");
    let until = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = c.duplicates().await - duplicates_before;
        if now >= expected {
            if now != expected {
                c.violation(format!(
                    "{now} duplicates suppressed, expected exactly {expected}"
                ));
            }
            break;
        }
        if tokio::time::Instant::now() > until {
            c.violation(format!(
                "only {now} of {expected} copies were suppressed as duplicates"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.note(format!(
        "{expected} copies delivered to consumers, every one suppressed"
    ));
    let after = c.snapshot().await;
    for (table, rows) in &before {
        if Some(rows) != after.get(table) {
            c.violation(format!("{table} changed after duplicated deliveries"));
        }
    }
    c.finish(Expect::default()).await;
}
