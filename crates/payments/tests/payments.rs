//! The payments service against the real servers: requests in through RabbitMQ, payments
//! read from its table, outbox and internal HTTP route.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_payments::{Payments, money_report};
use shop_platform::{
    Envelope, Event,
    config::Config,
    dlq,
    events::{PaymentRefundRequested, PaymentRequested},
    testkit::{TestService, WAIT, eventually},
};
use uuid::Uuid;

/// Payments running on the real servers ([`TestService`]), with its own helpers.
struct Svc(TestService);

shop_platform::deref_to_test_service!(Svc);

impl Svc {
    async fn start() -> Svc {
        Svc::with_deadline(Duration::from_secs(30)).await
    }

    /// Payments whose `tok_timeout` answers just after a saga deadline of `saga_deadline`.
    async fn with_deadline(saga_deadline: Duration) -> Svc {
        Svc::with(saga_deadline, |_| {}).await
    }

    /// ... and with the kernel's settings changed by `tweak`.
    async fn with(saga_deadline: Duration, tweak: impl FnOnce(&mut Config)) -> Svc {
        let payments = Payments {
            settings: shop_platform::config::defaults(),
            saga_deadline,
        };
        Svc(TestService::start(Arc::new(payments), tweak).await)
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    /// (payment id, status, decline code) of every payment of the order.
    async fn payments(&self, order_id: Uuid) -> Vec<(Uuid, String, Option<String>)> {
        sqlx::query_as("SELECT id, status, decline_code FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(&self.env.pool)
            .await
            .unwrap()
    }

    /// The money report holds exactly this order's payment, in that state, of that amount.
    async fn assert_money(&self, order_id: Uuid, status: &str, amount_cents: i64) {
        let report = money_report(&self.env.pool).await.unwrap();
        assert_eq!(report, [(order_id, status.to_string(), amount_cents)]);
    }

    /// Waits for the order's one answer and checks it is the card's decline, as its payment.
    async fn declined(&self, order_id: Uuid) {
        let events = self.wait_emitted(order_id, 1).await;
        assert_eq!(kinds(&events), ["payment.failed"]);
        assert_eq!(
            events[0].payload,
            json!({"order_id": order_id, "reason": "card_declined"})
        );
        let payments = self.payments(order_id).await;
        assert_eq!(payments.len(), 1);
        assert_eq!(
            (payments[0].1.as_str(), payments[0].2.as_deref()),
            ("declined", Some("card_declined"))
        );
    }

    /// Waits until the order's payment is pending, and checks nothing was answered yet.
    async fn pending_unanswered(&self, order_id: Uuid) {
        eventually("the payment is pending", WAIT, || async {
            self.status(order_id).await.as_deref() == Some("pending")
        })
        .await;
        assert!(
            self.emitted(order_id).await.is_empty(),
            "no answer before the provider's"
        );
    }

    async fn status(&self, order_id: Uuid) -> Option<String> {
        self.payments(order_id).await.first().map(|p| p.1.clone())
    }
}

fn requested(order_id: Uuid, amount_cents: i64, token: &str) -> Envelope {
    let p = PaymentRequested {
        order_id,
        user_id: Uuid::now_v7(),
        amount_cents,
        currency: "EUR".into(),
        payment_token: token.into(),
    };
    // The saga's correlation id is the order id; each request is a new event.
    Envelope::new(order_id, &p, order_id, Uuid::now_v7())
}

fn refund_requested(order_id: Uuid, payment_id: Uuid) -> Envelope {
    Envelope::new(
        order_id,
        &PaymentRefundRequested {
            order_id,
            payment_id,
        },
        order_id,
        Uuid::now_v7(),
    )
}

fn kinds(events: &[Envelope]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

#[tokio::test]
async fn an_ordinary_token_is_captured() {
    let svc = Svc::start().await;
    let order = Uuid::now_v7();
    let request = requested(order, 4_250, "tok_visa");
    svc.publish(&request).await;

    let events = svc.wait_emitted(order, 1).await;
    let payments = svc.payments(order).await;
    assert_eq!(payments.len(), 1);
    let (payment_id, status, code) = payments[0].clone();
    assert_eq!((status.as_str(), code), ("captured", None));
    assert_eq!(kinds(&events), ["payment.succeeded"]);
    assert_eq!(
        events[0].payload,
        json!({"order_id": order, "payment_id": payment_id, "amount_cents": 4_250})
    );
    assert_eq!(
        (events[0].correlation_id, events[0].causation_id),
        (request.correlation_id, request.id)
    );

    let path = format!("/internal/payments/{order}");
    let resp = svc.http.get(svc.url(&path)).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "an internal route needs a service assertion"
    );
    let as_orders = |path: String| {
        svc.http
            .get(svc.url(&path))
            .header(
                shop_platform::assertion::HEADER,
                svc.service_assertion("orders"),
            )
            .send()
    };
    let resp = as_orders(path).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], json!(payment_id));
    assert_eq!(body["status"], "captured");
    assert_eq!(body["amount_cents"], 4_250);
    assert!(body["captured_at"].is_string());
    let unknown = format!("/internal/payments/{}", Uuid::now_v7());
    let resp = as_orders(unknown).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    svc.assert_money(order, "captured", 4_250).await;
    svc.stop().await;
}

#[tokio::test]
async fn the_decline_token_is_declined() {
    let svc = Svc::start().await;
    let order = Uuid::now_v7();
    svc.publish(&requested(order, 999, "tok_decline")).await;

    svc.declined(order).await;
    svc.stop().await;
}

/// A provider slower than the handler waits for: the payment stays pending, and what the
/// provider answers when it does is what the saga hears (a decline too, not a capture).
#[tokio::test]
async fn a_slow_provider_that_declines_declines() {
    let mut settings: shop_payments::program::PaymentsSettings = shop_platform::config::defaults();
    settings.payment_latency_ms = 1_500;
    let payments = Payments {
        settings,
        saga_deadline: Duration::from_secs(30),
    };
    let svc = Svc(TestService::start(Arc::new(payments), |_| {}).await);
    let order = Uuid::now_v7();
    svc.publish(&requested(order, 999, "tok_decline")).await;
    svc.pending_unanswered(order).await;

    svc.declined(order).await;
    svc.assert_money(order, "declined", 999).await;
    svc.stop().await;
}

#[tokio::test]
async fn a_repeated_request_charges_once_and_answers_with_the_first_result() {
    let svc = Svc::start().await;
    let (paid, declined) = (Uuid::now_v7(), Uuid::now_v7());
    svc.publish(&requested(paid, 1_000, "tok_visa")).await;
    svc.publish(&requested(declined, 1_000, "tok_decline"))
        .await;
    svc.wait_emitted(paid, 1).await;
    svc.wait_emitted(declined, 1).await;

    // The orchestrator asks again with new event ids, several at once; a different token
    // does not change the first result.
    // A third order's first request arrives five times at once.
    let racing = Uuid::now_v7();
    let copies: Vec<Envelope> = (0..4)
        .flat_map(|_| {
            [
                requested(paid, 1_000, "tok_decline"),
                requested(declined, 1_000, "tok_visa"),
            ]
        })
        .chain((0..5).map(|_| requested(racing, 1_000, "tok_visa")))
        .collect();
    svc.publish_all(&copies).await;

    let events = svc.wait_emitted(paid, 5).await;
    let payment_id = svc.payments(paid).await[0].0;
    assert_eq!(svc.payments(paid).await.len(), 1, "one payment per order");
    assert!(events.iter().all(|e| e.event_type == "payment.succeeded"
        && e.payload
            == json!({"order_id": paid, "payment_id": payment_id, "amount_cents": 1_000})));
    let events = svc.wait_emitted(declined, 5).await;
    assert_eq!(svc.payments(declined).await.len(), 1);
    assert!(events.iter().all(|e| e.event_type == "payment.failed"
        && e.payload == json!({"order_id": declined, "reason": "card_declined"})));
    let events = svc.wait_emitted(racing, 5).await;
    let payments = svc.payments(racing).await;
    assert_eq!(
        payments.len(),
        1,
        "one payment per order under concurrent requests"
    );
    assert!(events.iter().all(|e| e.event_type == "payment.succeeded"
        && e.payload
            == json!({"order_id": racing, "payment_id": payments[0].0, "amount_cents": 1_000})));
    svc.stop().await;
}

#[tokio::test]
async fn the_timeout_token_stays_pending_until_the_capturer_settles_it_after_the_deadline() {
    // tok_timeout answers after the saga deadline + 2 s: 2.3 s here.
    let svc = Svc::with_deadline(Duration::from_millis(300)).await;
    let order = Uuid::now_v7();
    let request = requested(order, 7_000, "tok_timeout");
    svc.publish(&request).await;

    svc.pending_unanswered(order).await;
    // Asked again meanwhile: still pending, no answer, no second charge.
    svc.publish(&requested(order, 7_000, "tok_timeout")).await;
    svc.wait_handled(PaymentRequested::TYPE, 2).await;
    assert!(svc.emitted(order).await.is_empty());
    assert_eq!(svc.status(order).await.as_deref(), Some("pending"));

    let events = svc.wait_emitted(order, 1).await;
    assert_eq!(svc.status(order).await.as_deref(), Some("captured"));
    let payment_id = svc.payments(order).await[0].0;
    assert_eq!(kinds(&events), ["payment.succeeded"]);
    assert_eq!(
        events[0].payload,
        json!({"order_id": order, "payment_id": payment_id, "amount_cents": 7_000})
    );
    assert_eq!(
        (events[0].correlation_id, events[0].causation_id),
        (request.correlation_id, request.id),
        "the late answer continues the request's saga"
    );
    let (created, captured): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT created_at, captured_at FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&svc.env.pool)
            .await
            .unwrap();
    assert!(
        captured - created >= chrono::Duration::milliseconds(2_300),
        "captured after the provider's delay"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_refund_returns_the_money_once() {
    let svc = Svc::start().await;
    let order = Uuid::now_v7();
    svc.publish(&requested(order, 2_500, "tok_visa")).await;
    svc.wait_emitted(order, 1).await;
    let payment_id = svc.payments(order).await[0].0;

    svc.publish(&refund_requested(order, payment_id)).await;
    let events = svc.wait_emitted(order, 2).await;
    assert_eq!(kinds(&events), ["payment.succeeded", "payment.refunded"]);
    let user_id: Uuid = sqlx::query_scalar("SELECT user_id FROM payments WHERE order_id = $1")
        .bind(order)
        .fetch_one(&svc.env.pool)
        .await
        .unwrap();
    assert_eq!(
        events[1].payload,
        json!({"order_id": order, "payment_id": payment_id, "amount_cents": 2_500,
            "user_id": user_id, "currency": "EUR"}),
        "whose money and its currency, for the customer's refund notice"
    );
    assert_eq!(svc.status(order).await.as_deref(), Some("refunded"));
    let first_refund: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT refunded_at FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&svc.env.pool)
            .await
            .unwrap();
    assert!(first_refund.is_some());

    // Retried by the orchestrator: announced again, no money moves again.
    svc.publish(&refund_requested(order, payment_id)).await;
    let events = svc.wait_emitted(order, 3).await;
    assert_eq!(
        kinds(&events),
        ["payment.succeeded", "payment.refunded", "payment.refunded"]
    );
    assert_eq!(events[2].payload, events[1].payload);
    let again: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT refunded_at FROM payments WHERE order_id = $1")
            .bind(order)
            .fetch_one(&svc.env.pool)
            .await
            .unwrap();
    assert_eq!(again, first_refund, "refunded once");

    // A payment request after the refund never announces a success again.
    svc.publish(&requested(order, 2_500, "tok_visa")).await;
    svc.wait_handled(PaymentRequested::TYPE, 2).await;
    assert_eq!(svc.emitted(order).await.len(), 3);
    svc.assert_money(order, "refunded", 2_500).await;
    svc.stop().await;
}

#[tokio::test]
async fn a_refund_of_a_pending_payment_waits_for_its_capture() {
    let svc = Svc::with(Duration::from_millis(300), |c| {
        c.retry_delays_ms = vec![500, 1_000, 2_000, 4_000, 8_000];
    })
    .await;
    let order = Uuid::now_v7();
    svc.publish(&requested(order, 300, "tok_timeout")).await;
    eventually("the payment is pending", WAIT, || async {
        svc.status(order).await.as_deref() == Some("pending")
    })
    .await;
    let payment_id = svc.payments(order).await[0].0;

    svc.publish(&refund_requested(order, payment_id)).await;
    eventually("the refund is retried", WAIT, || async {
        svc.metric("shop_messages_retried_total", PaymentRefundRequested::TYPE)
            .await
            >= 1
    })
    .await;
    let events = svc.wait_emitted(order, 2).await;
    assert_eq!(kinds(&events), ["payment.succeeded", "payment.refunded"]);
    assert_eq!(svc.status(order).await.as_deref(), Some("refunded"));
    svc.stop().await;
}

#[tokio::test]
async fn impossible_refunds_are_dead_lettered_with_a_reason() {
    let svc = Svc::start().await;
    let unknown = Uuid::now_v7();
    svc.publish(&refund_requested(unknown, Uuid::now_v7()))
        .await;
    let declined = Uuid::now_v7();
    svc.publish(&requested(declined, 100, "tok_decline")).await;
    svc.wait_emitted(declined, 1).await;
    let payment_id = svc.payments(declined).await[0].0;
    svc.publish(&refund_requested(declined, payment_id)).await;

    let broker = svc.broker.clone();
    eventually("both are parked", WAIT, || async {
        dlq::list(&broker, Some("payments")).await.unwrap().len() == 2
    })
    .await;
    let reasons: Vec<String> = dlq::list(&broker, Some("payments"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.reason)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("no payment for order {unknown}"))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("nothing to refund")),
        "{reasons:?}"
    );
    assert_eq!(svc.status(declined).await.as_deref(), Some("declined"));
    assert_eq!(svc.emitted(declined).await.len(), 1);
    svc.stop().await;
}

/// Batches handled at once over the same orders never deadlock, though each batch meets the
/// orders in another order (redelivered requests: the first insert of an order's payment makes
/// a second wait for it). The batch locks its orders first, in key order (`lock_batch`);
/// without that, PostgreSQL aborts one of two batches waiting on each other. Money still
/// moves once per order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_over_the_same_orders_do_not_deadlock() {
    let svc = Svc::start().await;
    let handler = shop_payments::handlers::PaymentsHandler {
        provider: Payments {
            settings: shop_platform::config::defaults(),
            saga_deadline: Duration::from_secs(30),
        }
        .provider_config()
        .unwrap(),
    };
    assert!(
        shop_platform::bus::Handler::batched(&handler),
        "a provider that answers at once is batched"
    );
    let handler = Arc::new(handler);
    let orders: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let (workers, rounds) = (8, 10);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (pool, orders, handler) = (svc.env.pool.clone(), orders.clone(), handler.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                // Every order in each batch: half the workers walk them forwards, half
                // backwards, each from another start.
                let batch: Vec<Envelope> = (0..orders.len())
                    .map(|k| {
                        let i = if w % 2 == 0 {
                            w + round + k
                        } else {
                            60 + w + round - k
                        };
                        requested(orders[i % orders.len()], 1_000, "tok_visa")
                    })
                    .collect();
                let spans: Vec<(&Envelope, tracing::Span)> =
                    batch.iter().map(|e| (e, tracing::Span::none())).collect();
                shop_platform::inbox::process_batch(&pool, &spans, handler.as_ref())
                    .await
                    .map_err(|e| format!("worker {w}, round {round}: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every batch committed");
    }
    for order in &orders {
        let payments = svc.payments(*order).await;
        assert_eq!(payments.len(), 1, "one payment per order");
        assert_eq!(payments[0].1, "captured");
    }
    svc.stop().await;
}
