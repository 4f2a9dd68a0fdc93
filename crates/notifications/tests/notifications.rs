//! The notifications service against the real servers: facts in through RabbitMQ, one
//! notification per fact, recorded in the inbox transaction and delivered afterwards by the
//! worker (through a recording sender, and through a real SMTP server, aiosmtpd), listed
//! over HTTP to their owner only.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::Value;
use shop_notifications::{
    Email, Notifications, NotificationsSettings, SendError, Sender, delivery,
};
use shop_platform::{
    Envelope, Event,
    assertion::HEADER as ASSERTION,
    events::{OrderCancelled, OrderConfirmed, OrderLine, PaymentRefunded, UserRegistered},
    testkit::{TestService, WAIT, eventually, free_port, smtp::Smtpd},
};
use uuid::Uuid;

/// Records what was sent; fails the first `fail` sends for now, and refuses for good any
/// address at `refused.test`.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Email>>,
    fail: Mutex<usize>,
}

#[async_trait]
impl Sender for Recorder {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        if email.to_address.ends_with("@refused.test") {
            return Err(SendError::Permanent("550 no such mailbox".into()));
        }
        let mut fail = self.fail.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(SendError::Transient("mail server unavailable".into()));
        }
        self.sent.lock().unwrap().push(email.clone());
        Ok(())
    }
}

fn settings(smtp_url: Option<String>) -> NotificationsSettings {
    let mut s: NotificationsSettings = shop_platform::config::defaults();
    s.smtp_url = smtp_url;
    s.smtp_from = "Shop <shop@shop.test>".into();
    s.smtp_timeout_secs = 2;
    s
}

/// Notifications running on the real servers ([`TestService`]), with its own helpers.
struct Svc(TestService, Arc<Recorder>);

shop_platform::deref_to_test_service!(Svc);

impl Svc {
    /// Sending through a [`Recorder`].
    async fn start() -> Svc {
        let recorder = Arc::new(Recorder::default());
        let notifications = Notifications {
            settings: settings(None),
            sender: Some(recorder.clone()),
        };
        Svc(
            TestService::start(Arc::new(notifications), |_| {}).await,
            recorder,
        )
    }

    /// Sending by SMTP to `smtp`.
    async fn smtp(smtp: &Smtpd) -> Svc {
        Svc::smtp_at(smtp.url()).await
    }

    /// Sending by SMTP to the server at `url`.
    async fn smtp_at(url: String) -> Svc {
        let notifications = Notifications::new(settings(Some(url)));
        Svc(
            TestService::start(Arc::new(notifications), |_| {}).await,
            Arc::default(),
        )
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    /// (kind, subject, body, status) of the user's notifications, oldest first.
    async fn recorded(&self, user_id: Uuid) -> Vec<(String, String, String, String)> {
        sqlx::query_as(
            "SELECT kind, subject, body, status FROM notifications WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.env.pool)
        .await
        .unwrap()
    }

    /// (status, attempts, last error) of the one notification about `order_id`.
    async fn delivery(&self, order_id: Uuid) -> (String, i32, Option<String>) {
        self.delivery_if_any(order_id)
            .await
            .expect("the order's notification is recorded")
    }

    async fn delivery_if_any(&self, order_id: Uuid) -> Option<(String, i32, Option<String>)> {
        sqlx::query_as("SELECT status, attempts, last_error FROM notifications WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.env.pool)
            .await
            .unwrap()
    }

    async fn wait_status(&self, order_id: Uuid, status: &str) -> (String, i32, Option<String>) {
        shop_platform::testkit::eventually_some(
            &format!("the notification of {order_id} {status}"),
            WAIT,
            || async {
                let d = self.delivery_if_any(order_id).await;
                d.filter(|d| d.0 == status)
            },
        )
        .await
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

fn registered(user_id: Uuid, email: &str) -> Envelope {
    let e = UserRegistered {
        user_id,
        email: email.into(),
        name: "Ada".into(),
    };
    Envelope::new(user_id, &e, user_id, user_id)
}

fn confirmed(user_id: Uuid, order_id: Uuid) -> Envelope {
    let line = |name: &str, quantity, unit_price_cents| OrderLine {
        product_id: Uuid::now_v7(),
        name: name.into(),
        quantity,
        unit_price_cents,
    };
    Envelope::new(
        order_id,
        &OrderConfirmed {
            order_id,
            user_id,
            total_cents: 4_250,
            currency: "EUR".into(),
            items: vec![line("Mug", 2, 1_250), line("Tea & <Biscuits>", 1, 1_750)],
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

fn refunded(user_id: Uuid, order_id: Uuid) -> Envelope {
    let e = PaymentRefunded {
        order_id,
        payment_id: Uuid::now_v7(),
        amount_cents: 1_999,
        user_id,
        currency: "EUR".into(),
    };
    Envelope::new(order_id, &e, order_id, Uuid::now_v7())
}

#[tokio::test]
async fn each_fact_is_recorded_once_and_delivered_once_however_often_it_arrives() {
    let svc = Svc::start().await;
    let user = Uuid::now_v7();
    let (kept, lost) = (Uuid::now_v7(), Uuid::now_v7());
    let facts = [
        registered(user, "ada@example.com"),
        confirmed(user, kept),
        cancelled(user, lost, "out_of_stock"),
        refunded(user, lost),
    ];
    for fact in &facts {
        // The same event twice, and the same fact again under a new id.
        svc.publish(fact).await;
        svc.publish(fact).await;
        let mut again = fact.clone();
        again.id = Uuid::now_v7();
        svc.publish(&again).await;
    }
    for t in [
        UserRegistered::TYPE,
        OrderConfirmed::TYPE,
        OrderCancelled::TYPE,
        PaymentRefunded::TYPE,
    ] {
        svc.wait_handled(t, 3).await;
    }
    eventually("all four delivered", WAIT, || async {
        svc.1.sent.lock().unwrap().len() >= 4
    })
    .await;

    let recorded = svc.recorded(user).await;
    let kinds: Vec<&str> = recorded.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(kinds.len(), 4, "{recorded:?}");
    for kind in [
        "welcome",
        "order_confirmed",
        "order_cancelled",
        "payment_refunded",
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let body = |kind: &str| recorded.iter().find(|r| r.0 == kind).unwrap().2.clone();
    let cancelled = body("order_cancelled");
    assert!(
        cancelled.contains("some items are out of stock") && cancelled.contains(&lost.to_string()),
        "{cancelled}"
    );
    let receipt = body("order_confirmed");
    assert!(
        receipt.contains("2 x Mug at EUR 12.50 = EUR 25.00")
            && receipt.contains("Total: EUR 42.50 charged."),
        "{receipt}"
    );
    assert!(body("payment_refunded").contains("EUR 19.99"));
    let welcome = body("welcome");
    assert!(
        welcome.contains("Ada") && !welcome.contains("ada@example.com"),
        "{welcome}"
    );

    let sent = svc.1.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 4, "each delivered once: {sent:?}");
    assert!(sent.iter().all(|e| e.to_address == "ada@example.com"));
    let html = &sent
        .iter()
        .find(|e| e.kind == "order_confirmed")
        .unwrap()
        .html;
    assert!(html.contains("Tea &amp; &lt;Biscuits&gt;"), "{html}");
    // The delivery worker marks them after sending: wait for the last mark.
    eventually("all marked sent", WAIT, || async {
        svc.recorded(user).await.iter().all(|r| r.3 == "sent")
    })
    .await;
    assert_eq!(svc.sent_events().await, 4, "one notification.sent each");
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
    let bodies: Vec<String> = svc.recorded(user).await.into_iter().map(|r| r.2).collect();
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
async fn a_failing_mail_server_delays_delivery_and_never_the_event() {
    let svc = Svc::start().await;
    let (user, order) = (Uuid::now_v7(), Uuid::now_v7());
    svc.publish(&registered(user, "ada@example.com")).await;
    eventually("the welcome sent", WAIT, || async {
        svc.1.sent.lock().unwrap().len() == 1
    })
    .await;
    *svc.1.fail.lock().unwrap() = 2;
    svc.publish(&confirmed(user, order)).await;
    svc.wait_handled(OrderConfirmed::TYPE, 1).await;
    let (status, attempts, _) = svc.wait_status(order, "sent").await;
    assert_eq!(
        (status.as_str(), attempts),
        ("sent", 3),
        "two failures, then sent"
    );
    assert_eq!(
        svc.metric("shop_messages_retried_total", OrderConfirmed::TYPE)
            .await,
        0,
        "the event was handled once: the mail server's failures are the worker's"
    );
    let sent = svc.1.sent.lock().unwrap().clone();
    assert_eq!(sent.iter().filter(|e| e.order_id == Some(order)).count(), 1);
    assert!(svc.counter("notifications_retried").await >= 2);
    assert!(svc.counter("notifications_sent").await >= 2);
    assert_eq!(svc.recorded(user).await.len(), 2);
    svc.stop().await;
}

#[tokio::test]
async fn a_notification_waits_for_its_address_and_a_refusal_is_kept_with_its_reason() {
    let svc = Svc::start().await;
    let (early, refused) = (Uuid::now_v7(), Uuid::now_v7());
    let (o1, o2) = (Uuid::now_v7(), Uuid::now_v7());
    // The order's news arrives before the registration: it waits for the address.
    svc.publish(&confirmed(early, o1)).await;
    svc.wait_handled(OrderConfirmed::TYPE, 1).await;
    let (status, _, error) = svc.wait_status(o1, "pending").await;
    eventually("the missing address noticed", WAIT, || async {
        svc.delivery(o1).await.2.is_some()
    })
    .await;
    assert_eq!(status, "pending", "{error:?}");
    svc.publish(&registered(early, "late@example.com")).await;
    svc.wait_status(o1, "sent").await;

    svc.publish(&registered(refused, "nobody@refused.test"))
        .await;
    svc.publish(&confirmed(refused, o2)).await;
    let (_, attempts, reason) = svc.wait_status(o2, "refused").await;
    assert_eq!(attempts, 1, "a refusal is not retried");
    assert_eq!(reason.as_deref(), Some("550 no such mailbox"));
    let (code, body) = svc.list(Some(refused)).await;
    assert_eq!(code, StatusCode::OK);
    let statuses: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["refused", "refused"], "{body}");
    assert!(delivery::ADDRESS_WAIT > Duration::from_secs(60));
    svc.stop().await;
}

#[tokio::test]
async fn delivers_by_smtp_to_a_real_server_and_holds_mail_while_it_is_away() {
    let mut smtpd = Smtpd::start(free_port()).await;
    let svc = Svc::smtp(&smtpd).await;
    let (ada, nobody) = (Uuid::now_v7(), Uuid::now_v7());
    let order = Uuid::now_v7();
    svc.publish(&registered(ada, "ada@example.com")).await;
    svc.publish(&registered(nobody, "nobody@refused.test"))
        .await;
    svc.publish(&confirmed(ada, order)).await;
    let mail = smtpd.wait_mail(2, WAIT).await;
    let receipt = mail
        .iter()
        .find(|m| m.subject == "Your order is confirmed")
        .expect("the receipt");
    let id: Uuid = sqlx::query_scalar("SELECT id FROM notifications WHERE order_id = $1")
        .bind(order)
        .fetch_one(&svc.env.pool)
        .await
        .unwrap();
    assert_eq!(receipt.to, "ada@example.com");
    assert_eq!(receipt.to_header, "Ada <ada@example.com>");
    assert_eq!(receipt.message_id, format!("<{id}@shop.test>"));
    assert!(
        receipt.text.contains("1 x Tea & <Biscuits> at EUR 17.50"),
        "{}",
        receipt.text
    );
    assert!(
        receipt.html.contains("<td>Tea &amp; &lt;Biscuits&gt;</td>"),
        "{}",
        receipt.html
    );
    let (_, _, reason) = {
        let refused: Uuid = sqlx::query_scalar("SELECT id FROM notifications WHERE user_id = $1")
            .bind(nobody)
            .fetch_one(&svc.env.pool)
            .await
            .unwrap();
        shop_platform::testkit::eventually_some("the refusal recorded", WAIT, || async {
            let r: (String, i32, Option<String>) = sqlx::query_as(
                "SELECT status, attempts, last_error FROM notifications WHERE id = $1",
            )
            .bind(refused)
            .fetch_one(&svc.env.pool)
            .await
            .unwrap();
            (r.0 == "refused").then_some(r)
        })
        .await
    };
    assert!(
        reason
            .as_deref()
            .unwrap_or_default()
            .contains("No such mailbox"),
        "the server's own words: {reason:?}"
    );

    // The server goes away: the event is still handled at once, the mail waits.
    smtpd.pause();
    let later = Uuid::now_v7();
    svc.publish(&cancelled(ada, later, "payment_failed")).await;
    svc.wait_handled(OrderCancelled::TYPE, 1).await;
    eventually("a failed attempt recorded", WAIT, || async {
        let (status, attempts, error) = svc.delivery(later).await;
        status == "pending" && attempts >= 1 && error.is_some()
    })
    .await;
    smtpd.resume().await;
    svc.wait_status(later, "sent").await;
    let mail = smtpd.wait_mail(3, WAIT).await;
    let cancelled: Vec<_> = mail
        .iter()
        .filter(|m| m.subject == "Your order was cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "{mail:?}");
    assert!(cancelled[0].text.contains("the payment was declined"));
    let ids: std::collections::HashSet<_> = mail.iter().map(|m| &m.message_id).collect();
    assert_eq!(ids.len(), mail.len(), "no message twice: {mail:?}");
    svc.stop().await;
}

#[tokio::test]
async fn logs_in_to_a_server_that_requires_it_and_waits_while_the_login_is_wrong() {
    let smtpd = Smtpd::start_with_login(free_port(), "shop", "s3cret/+").await;
    let url = format!("smtp://shop:{}@127.0.0.1:{}", "s3cret%2F%2B", smtpd.port);
    let svc = Svc::smtp_at(url).await;
    let (ada, order) = (Uuid::now_v7(), Uuid::now_v7());
    svc.publish(&registered(ada, "ada@example.com")).await;
    svc.publish(&confirmed(ada, order)).await;
    let mail = smtpd.wait_mail(2, WAIT).await;
    assert!(mail.iter().all(|m| m.to == "ada@example.com"), "{mail:?}");
    svc.stop().await;

    let wrong = format!("smtp://shop:wrong@127.0.0.1:{}", smtpd.port);
    let svc = Svc::smtp_at(wrong).await;
    let order = Uuid::now_v7();
    svc.publish(&registered(ada, "ada@example.com")).await;
    svc.publish(&confirmed(ada, order)).await;
    // (On a loaded machine an attempt may time out first; the next ones are refused.)
    shop_platform::testkit::eventually_some("a refused login recorded", WAIT, || async {
        let error = svc.delivery_if_any(order).await.and_then(|d| d.2)?;
        error.contains("refused the shop's login").then_some(error)
    })
    .await;
    assert_eq!(
        svc.delivery(order).await.0,
        "pending",
        "a wrong password refuses no message for good"
    );
    assert_eq!(smtpd.mail().len(), 2, "nothing more arrived");
    svc.stop().await;
}

#[tokio::test]
async fn a_server_that_never_answers_delays_mail_and_holds_nothing() {
    // Accepts connections and says nothing, ever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let svc = Svc::smtp_at(format!("smtp://127.0.0.1:{port}")).await;
    let (ada, order) = (Uuid::now_v7(), Uuid::now_v7());
    svc.publish(&registered(ada, "ada@example.com")).await;
    // Her address first: events are not ordered (two transactions may commit in either
    // order), and a notification without one yet waits for it instead of trying the server.
    svc.wait_handled(UserRegistered::TYPE, 1).await;
    svc.publish(&confirmed(ada, order)).await;
    svc.wait_handled(OrderConfirmed::TYPE, 1).await;
    let error = shop_platform::testkit::eventually_some("a timed-out delivery", WAIT, || async {
        svc.delivery_if_any(order).await.and_then(|d| d.2)
    })
    .await;
    assert!(
        error.contains("did not finish within 6 s") || error.contains("timed out"),
        "{error}"
    );
    assert_eq!(svc.delivery(order).await.0, "pending");
    held.abort();
    svc.stop().await;
}

#[tokio::test]
async fn users_list_only_their_own_notifications_newest_first() {
    let svc = Svc::start().await;
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let order = Uuid::now_v7();
    svc.publish(&registered(ada, "ada@example.com")).await;
    svc.wait_handled(UserRegistered::TYPE, 1).await;
    svc.publish(&confirmed(ada, order)).await;
    svc.wait_handled(OrderConfirmed::TYPE, 1).await;
    svc.publish(&registered(bob, "bob@example.com")).await;
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
        [
            "body",
            "created_at",
            "id",
            "kind",
            "order_id",
            "status",
            "subject"
        ]
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
