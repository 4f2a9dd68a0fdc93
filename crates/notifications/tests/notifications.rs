//! The notifications service against the real servers: facts in through RabbitMQ, one
//! notification (and one send) per fact, listed over HTTP to their owner only.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::Value;
use shop_notifications::{Notifications, Sender, store::Notification};
use shop_platform::{
    Envelope, Event,
    assertion::HEADER as ASSERTION,
    events::{OrderCancelled, OrderConfirmed, UserRegistered},
    testkit::{TestService, WAIT, eventually},
};
use uuid::Uuid;

/// Records what was sent; fails the first `fail` sends.
#[derive(Default)]
struct Outbox {
    sent: Mutex<Vec<Notification>>,
    fail: Mutex<usize>,
}

#[async_trait]
impl Sender for Outbox {
    async fn send(&self, n: &Notification) -> anyhow::Result<()> {
        let mut fail = self.fail.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            anyhow::bail!("mail server unavailable");
        }
        self.sent.lock().unwrap().push(n.clone());
        Ok(())
    }
}

/// Notifications running on the real servers ([`TestService`]), with its own helpers.
struct Svc(TestService, Arc<Outbox>);

shop_platform::deref_to_test_service!(Svc);

impl Svc {
    async fn start() -> Svc {
        let sender = Arc::new(Outbox::default());
        let notifications = Notifications {
            sender: sender.clone(),
        };
        Svc(
            TestService::start(Arc::new(notifications), |_| {}).await,
            sender,
        )
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    /// (kind, subject, body) of the user's recorded notifications, oldest first.
    async fn recorded(&self, user_id: Uuid) -> Vec<(String, String, String)> {
        sqlx::query_as("SELECT kind, subject, body FROM notifications WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user_id)
            .fetch_all(&self.env.pool)
            .await
            .unwrap()
    }

    async fn sent_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'notification.sent'")
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    async fn list(&self, user_id: Option<Uuid>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .get(format!("http://{}/api/notifications", self.running.addr));
        if let Some(id) = user_id {
            req = req.header(ASSERTION, self.user_assertion(id, "user"));
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }
}

fn registered(user_id: Uuid) -> Envelope {
    let e = UserRegistered {
        user_id,
        email: "ada@example.com".into(),
        name: "Ada".into(),
    };
    Envelope::new(user_id, &e, user_id, user_id)
}

fn confirmed(user_id: Uuid, order_id: Uuid) -> Envelope {
    Envelope::new(
        order_id,
        &OrderConfirmed {
            order_id,
            user_id,
            total_cents: 4_250,
            currency: "EUR".into(),
        },
        order_id,
        Uuid::now_v7(),
    )
}

fn cancelled(user_id: Uuid, order_id: Uuid, reason: &str) -> Envelope {
    let e = OrderCancelled {
        order_id,
        user_id,
        reason: reason.into(),
    };
    Envelope::new(order_id, &e, order_id, Uuid::now_v7())
}

#[tokio::test]
async fn each_fact_is_notified_once_however_often_it_arrives() {
    let svc = Svc::start().await;
    let user = Uuid::now_v7();
    let (kept, lost) = (Uuid::now_v7(), Uuid::now_v7());
    let facts = [
        registered(user),
        confirmed(user, kept),
        cancelled(user, lost, "out_of_stock"),
    ];
    for fact in &facts {
        // The same event twice, and the same fact again under a new id.
        svc.publish(fact).await;
        svc.publish(fact).await;
        let mut again = fact.clone();
        again.id = Uuid::now_v7();
        svc.publish(&again).await;
    }
    svc.wait_handled(UserRegistered::TYPE, 3).await;
    svc.wait_handled(OrderConfirmed::TYPE, 3).await;
    svc.wait_handled(OrderCancelled::TYPE, 3).await;

    let recorded = svc.recorded(user).await;
    let kinds: Vec<&str> = recorded.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds.len(), 3, "{recorded:?}");
    for kind in ["welcome", "order_confirmed", "order_cancelled"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let (_, subject, body) = recorded
        .iter()
        .find(|(k, _, _)| k == "order_cancelled")
        .unwrap();
    assert_eq!(subject, "Your order was cancelled");
    assert!(
        body.contains("some items are out of stock") && body.contains(&lost.to_string()),
        "{body}"
    );
    let (_, _, body) = recorded
        .iter()
        .find(|(k, _, _)| k == "order_confirmed")
        .unwrap();
    assert!(body.contains("42.50"), "{body}");
    assert!(
        body.contains("EUR 42.50 charged"),
        "the currency is named: {body}"
    );
    let (_, _, body) = recorded.iter().find(|(k, _, _)| k == "welcome").unwrap();
    assert!(
        body.contains("Ada") && !body.contains("ada@example.com"),
        "{body}"
    );

    assert_eq!(svc.1.sent.lock().unwrap().len(), 3, "each sent once");
    assert_eq!(svc.sent_events().await, 3, "one notification.sent each");
    let per_order: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FROM notifications WHERE order_id IS NOT NULL GROUP BY order_id ORDER BY order_id",
    )
    .fetch_all(&svc.env.pool)
    .await
    .unwrap();
    let mut expected = vec![(kept, 1), (lost, 1)];
    expected.sort();
    assert_eq!(
        per_order, expected,
        "exactly one notification per terminal order"
    );
    svc.stop().await;
}

#[tokio::test]
async fn cancel_reasons_are_explained_in_words() {
    let svc = Svc::start().await;
    let user = Uuid::now_v7();
    for reason in ["out_of_stock", "payment_failed", "timeout"] {
        svc.publish(&cancelled(user, Uuid::now_v7(), reason)).await;
    }
    svc.wait_handled(OrderCancelled::TYPE, 3).await;
    let bodies: Vec<String> = svc
        .recorded(user)
        .await
        .into_iter()
        .map(|(_, _, b)| b)
        .collect();
    for words in [
        "some items are out of stock",
        "the payment was declined",
        "could not be completed in time",
    ] {
        assert!(
            bodies.iter().any(|b| b.contains(words)),
            "{words}: {bodies:?}"
        );
    }
    svc.stop().await;
}

#[tokio::test]
async fn a_failed_send_is_retried_and_recorded_once() {
    let svc = Svc::start().await;
    *svc.1.fail.lock().unwrap() = 1;
    let (user, order) = (Uuid::now_v7(), Uuid::now_v7());
    svc.publish(&confirmed(user, order)).await;
    eventually("sent after a retry", WAIT, || async {
        svc.1.sent.lock().unwrap().len() == 1
    })
    .await;
    svc.wait_handled(OrderConfirmed::TYPE, 1).await;
    assert!(
        svc.metric("shop_messages_retried_total", OrderConfirmed::TYPE)
            .await
            >= 1
    );
    assert_eq!(svc.recorded(user).await.len(), 1);
    assert_eq!(svc.sent_events().await, 1);
    svc.stop().await;
}

#[tokio::test]
async fn users_list_only_their_own_notifications_newest_first() {
    let svc = Svc::start().await;
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let order = Uuid::now_v7();
    svc.publish(&registered(ada)).await;
    svc.wait_handled(UserRegistered::TYPE, 1).await;
    svc.publish(&confirmed(ada, order)).await;
    svc.wait_handled(OrderConfirmed::TYPE, 1).await;
    svc.publish(&registered(bob)).await;
    svc.wait_handled(UserRegistered::TYPE, 2).await;

    let (status, body) = svc.list(Some(ada)).await;
    assert_eq!(status, StatusCode::OK);
    let items = body["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["order_confirmed", "welcome"], "newest first");
    assert_eq!(items[0]["order_id"], order.to_string());
    assert!(items[1]["order_id"].is_null());
    let mut keys: Vec<&String> = items[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["body", "created_at", "id", "kind", "order_id", "subject"]
    );

    let (status, body) = svc.list(Some(bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (status, body) = svc.list(Some(Uuid::now_v7())).await;
    assert_eq!(
        (status, body["items"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (status, body) = svc.list(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["type"], "urn:shop:problem:unauthorized");
    svc.stop().await;
}
