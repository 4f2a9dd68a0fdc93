//! The order saga end to end: happy path, decline, out of stock, timeout with a late payment,
//! oversell under concurrency, idempotency, object-level access, duplicated and reordered
//! events; after each, the invariants of docs/architecture.md hold.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use shop_platform::{
    Envelope,
    bus::Publisher,
    events::{PaymentSucceeded, StockRejected, StockReserved},
};
use sqlx::Connection as _;
use uuid::Uuid;

use shop_platform::testkit::eventually;

use crate::cluster::Cluster;

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_confirm_decline_reject_and_never_oversell() {
    let shop = Cluster::start(&[]).await;
    let admin = shop.admin().await;
    let (alice, alice_id) = shop.user().await;
    let (bob, _) = shop.user().await;

    // Happy path: confirmed, stock sold, payment captured, one notification; the owner
    // watches it live on the event stream, which ends at the terminal status.
    let widget = shop.product(&admin, 1250, 5).await;
    let o = shop.order(&alice, &[(widget, 2)], "tok_visa").await;
    let id = o["id"].as_str().unwrap().to_string();
    assert_eq!(o["total_cents"], 2500, "priced by the server");
    let stream = shop
        .http
        .get(format!("{}/api/orders/{id}/events", shop.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(SETTLE, stream.text())
        .await
        .expect("the stream ends at a terminal status")
        .unwrap();
    let seen: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d.trim()).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(seen.last().map(String::as_str), Some("CONFIRMED"), "{text}");
    let done = shop.settled(&alice, &id, SETTLE).await;
    assert_eq!(done["status"], "CONFIRMED", "{done}");
    let statuses = history(&done);
    assert_eq!(statuses, ["PENDING", "AWAITING_PAYMENT", "CONFIRMED"]);
    // Inventory turns the reservation into a sale when it sees order.confirmed.
    let shop_ref = &shop;
    eventually("the reservation becomes a sale", SETTLE, || async move {
        shop_ref.stock(widget).await == (3, 0)
    })
    .await;

    // Decline: cancelled (payment_failed), stock back where it was.
    let o = shop.order(&alice, &[(widget, 1)], "tok_decline").await;
    let done = shop
        .settled(&alice, o["id"].as_str().unwrap(), SETTLE)
        .await;
    assert_eq!(
        (done["status"].as_str(), done["cancel_reason"].as_str()),
        (Some("CANCELLED"), Some("payment_failed")),
        "{done}"
    );
    let statuses = history(&done);
    assert_eq!(
        statuses,
        ["PENDING", "AWAITING_PAYMENT", "COMPENSATING", "CANCELLED"]
    );
    assert_eq!(shop.stock(widget).await, (3, 0));

    // Out of stock: cancelled before any payment.
    let o = shop.order(&alice, &[(widget, 4)], "tok_visa").await;
    let done = shop
        .settled(&alice, o["id"].as_str().unwrap(), SETTLE)
        .await;
    assert_eq!(done["cancel_reason"], "out_of_stock", "{done}");
    assert_eq!(shop.stock(widget).await, (3, 0));

    // The same Idempotency-Key twice: one order.
    let body =
        json!({"items": [{"product_id": widget, "quantity": 1}], "payment_token": "tok_visa"});
    let place = |token: &str, body: &serde_json::Value| {
        shop.http
            .post(format!("{}/api/orders", shop.base))
            .bearer_auth(token)
            .header("Idempotency-Key", "checkout-42")
            .json(body)
            .send()
    };
    let first: serde_json::Value = place(&alice, &body).await.unwrap().json().await.unwrap();
    let second = place(&alice, &body).await.unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    shop.settled(&alice, first["id"].as_str().unwrap(), SETTLE)
        .await;
    // The same key with another body is refused, and places nothing; another user's
    // orders are not touched by alice's keys.
    let other =
        json!({"items": [{"product_id": widget, "quantity": 2}], "payment_token": "tok_visa"});
    let reused = place(&alice, &other).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: serde_json::Value = reused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:shop:problem:idempotency-key-reused");
    // (Declined, so that its stock comes back before the next orders.)
    let (carol, _) = shop.user().await;
    let declined =
        json!({"items": [{"product_id": widget, "quantity": 1}], "payment_token": "tok_decline"});
    let carols = place(&carol, &declined).await.unwrap();
    assert_eq!(
        carols.status(),
        StatusCode::ACCEPTED,
        "keys are each user's own"
    );
    let carols: serde_json::Value = carols.json().await.unwrap();
    assert_ne!(carols["id"], first["id"]);
    shop.settled(&carol, carols["id"].as_str().unwrap(), SETTLE)
        .await;
    // One line per product: repeating a product to pass the per-line cap is refused.
    let repeated = json!({"items": [{"product_id": widget, "quantity": 1}, {"product_id": widget, "quantity": 1}], "payment_token": "tok_visa"});
    let (s, problem) = shop
        .call(Method::POST, "/api/orders", Some(&alice), Some(repeated))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "items[1].product_id");

    // Another user cannot see alice's order, nor its event stream.
    let (s, _) = shop
        .call(Method::GET, &format!("/api/orders/{id}"), Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = shop
        .call(
            Method::GET,
            &format!("/api/orders/{id}/events"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, page) = shop
        .call(Method::GET, "/api/orders", Some(&bob), None)
        .await;
    assert_eq!(
        (s, page["items"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let (_, page) = shop
        .call(Method::GET, "/api/orders?limit=2", Some(&alice), None)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string());
    // Following the cursor walks every order once, newest first, to a page without one.
    let (_, all) = shop
        .call(Method::GET, "/api/orders?limit=100", Some(&alice), None)
        .await;
    let all: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    let mut walked: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = shop
            .call(
                Method::GET,
                &format!("/api/orders?limit=2&cursor={cursor}"),
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        walked.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert!(all.len() > 2 && all.is_sorted_by(|a, b| a > b), "{all:?}");
    assert_eq!(walked, all);

    // Alice's notifications: one per terminal order, only hers.
    let (_, notes) = shop
        .call(Method::GET, "/api/notifications", Some(&alice), None)
        .await;
    let order_notes = notes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["order_id"].is_string())
        .count();
    assert_eq!(order_notes, 4, "{notes}");
    let (_, notes) = shop
        .call(Method::GET, "/api/notifications", Some(&bob), None)
        .await;
    assert!(
        notes["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["order_id"].is_null()),
        "{notes}"
    );

    // Oversell: stock 10, 50 concurrent orders of 1 -> exactly 10 confirmed.
    let scarce = shop.product(&admin, 100, 10).await;
    let mut buyers = Vec::new();
    for _ in 0..5 {
        buyers.push(shop.user().await.0);
    }
    let placed = futures::future::join_all((0..50).map(|i| {
        let token = buyers[i % buyers.len()].clone();
        let shop = &shop;
        async move {
            shop.order(&token, &[(scarce, 1)], "tok_visa").await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    }))
    .await;
    let mut confirmed = 0;
    for (i, id) in placed.iter().enumerate() {
        let done = shop
            .settled(&buyers[i % buyers.len()], id, Duration::from_secs(60))
            .await;
        if done["status"] == "CONFIRMED" {
            confirmed += 1;
        } else {
            assert_eq!(done["cancel_reason"], "out_of_stock", "{done}");
        }
    }
    assert_eq!(confirmed, 10);
    eventually("every reservation is sold", SETTLE, || async move {
        shop_ref.stock(scarce).await == (0, 0)
    })
    .await;

    // Duplicated and reordered saga events (copies with the same id, and stale events for a
    // settled order) change nothing.
    let broker = shop.broker().await;
    let o = shop.order(&alice, &[(widget, 1)], "tok_visa").await;
    let oid: Uuid = o["id"].as_str().unwrap().parse().unwrap();
    let done = shop.settled(&alice, &oid.to_string(), SETTLE).await;
    assert_eq!(done["status"], "CONFIRMED");
    let mut db = sqlx::PgConnection::connect(&shop.config.database_url)
        .await
        .unwrap();
    let payment_id: Uuid =
        sqlx::query_scalar("SELECT id FROM payments.payments WHERE order_id = $1")
            .bind(oid)
            .fetch_one(&mut db)
            .await
            .unwrap();
    let stale = [
        Envelope::new(oid, &StockReserved { order_id: oid }, oid, oid),
        Envelope::new(
            oid,
            &StockRejected {
                order_id: oid,
                reason: "out_of_stock".into(),
            },
            oid,
            oid,
        ),
        Envelope::new(
            oid,
            &PaymentSucceeded {
                order_id: oid,
                payment_id,
                amount_cents: 1250,
            },
            oid,
            oid,
        ),
    ];
    for e in stale.iter().chain(stale.iter()) {
        broker.publish(e).await.unwrap();
    }
    let report = shop.audit_clean().await;
    let after = shop.settled(&alice, &oid.to_string(), SETTLE).await;
    assert_eq!(after["status"], "CONFIRMED");
    assert_eq!(
        after["history"], done["history"],
        "no transition from stale or repeated events"
    );
    assert_eq!(report.stuck, 0);
    broker.close().await;
    let _ = alice_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_payment_after_the_deadline_is_refunded_and_the_order_cancelled() {
    let shop = Cluster::start(&[("SHOP_SAGA_DEADLINE_MS", "1500")]).await;
    let admin = shop.admin().await;
    let (alice, _) = shop.user().await;
    let product = shop.product(&admin, 700, 3).await;
    let o = shop.order(&alice, &[(product, 2)], "tok_timeout").await;
    let id = o["id"].as_str().unwrap();
    let done = shop.settled(&alice, id, SETTLE).await;
    assert_eq!(
        (done["status"].as_str(), done["cancel_reason"].as_str()),
        (Some("CANCELLED"), Some("timeout")),
        "{done}"
    );
    assert_eq!(shop.stock(product).await, (3, 0), "stock released");
    // The payment succeeds after the deadline; the saga refunds it. The audit checks the net
    // is zero (captured then refunded).
    let report = shop.audit_clean().await;
    assert!(
        report.refunded_cents >= 1400,
        "the late payment was refunded:\n{}",
        report.table()
    );
    assert_eq!(report.captured_cents, report.refunded_cents);
    // The scanner that fired the deadline times each of its cycles.
    let exposed = shop.metrics_of(shop.port("orders")).await;
    let scans =
        shop_platform::metrics::sample_sum(&exposed, "shop_saga_deadline_scan_seconds_count", &[]);
    let spent =
        shop_platform::metrics::sample_sum(&exposed, "shop_saga_deadline_scan_seconds_sum", &[]);
    assert!(
        scans >= 1.0 && spent > 0.0,
        "deadline scans {scans}, {spent} s"
    );
}

/// The audit is what every other test leans on, so it must see each kind of damage: a stuck
/// order, stock that does not add up, a wrong capture, a missing notification, an unpublished
/// outbox row and a message waiting in a retry queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_names_every_broken_invariant() {
    let mut shop = Cluster::start(&[]).await;
    let admin = shop.admin().await;
    let (alice, _) = shop.user().await;
    let product = shop.product(&admin, 500, 5).await;
    let first = shop.order(&alice, &[(product, 1)], "tok_visa").await;
    let first: Uuid = first["id"].as_str().unwrap().parse().unwrap();
    let second = shop.order(&alice, &[(product, 1)], "tok_visa").await;
    let second: Uuid = second["id"].as_str().unwrap().parse().unwrap();
    for id in [first, second] {
        let done = shop.settled(&alice, &id.to_string(), SETTLE).await;
        assert_eq!(done["status"], "CONFIRMED", "{done}");
    }
    assert!(shop.audit_clean().await.ok());

    // Nothing may repair the damage while the audit looks at it.
    for program in shop::names() {
        shop.kill(program);
    }
    let mut db = sqlx::PgConnection::connect(&shop.config.database_url)
        .await
        .unwrap();
    for (sql, id) in [
        (
            "UPDATE orders.orders SET status = 'AWAITING_PAYMENT' WHERE id = $1",
            second,
        ),
        (
            "UPDATE inventory.stock SET available = available + 1 WHERE product_id = $1",
            product,
        ),
        (
            "UPDATE payments.payments SET amount_cents = amount_cents + 1 WHERE order_id = $1",
            first,
        ),
        (
            "DELETE FROM notifications.notifications WHERE order_id = $1",
            first,
        ),
        (
            "UPDATE orders.outbox SET sent_at = NULL WHERE id = (SELECT max(id) FROM orders.outbox) AND $1::uuid IS NOT NULL",
            first,
        ),
    ] {
        let done = sqlx::query(sql).bind(id).execute(&mut db).await.unwrap();
        assert_eq!(done.rows_affected(), 1, "{sql}");
    }
    db.close().await.unwrap();
    let broker = shop.broker().await;
    let retry = broker.names().retry_queue("inventory", 1);
    let ch = broker.channel().await.unwrap();
    ch.basic_publish(
        "".into(),
        retry.as_str().into(),
        Default::default(),
        b"{}",
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let report = shop::audit::run(&shop.config, &shop.settings, Some(&broker))
        .await
        .unwrap();
    let found = report.violations.join("\n");
    assert!(!report.ok());
    for expected in [
        format!("order {second} is stuck in AWAITING_PAYMENT"),
        format!("product {product}: initial"),
        format!("confirmed order {first}"),
        format!("order {first} (CONFIRMED) has 0 notifications"),
        "orders outbox rows not published".to_string(),
        "messages still waiting in inventory's".to_string(),
    ] {
        assert!(
            found.contains(&expected),
            "missing {expected:?} in:\n{found}"
        );
    }
    let _ = ch.close(200, "test".into()).await;
    broker.close().await;
}

/// The statuses an order went through, from its `history`.
fn history(order: &serde_json::Value) -> Vec<&str> {
    let entries = order["history"].as_array().expect("a history");
    entries
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect()
}
