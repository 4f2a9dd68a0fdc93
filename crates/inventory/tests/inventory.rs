//! The inventory service against the real servers: events in through RabbitMQ, effects read
//! from its tables and outbox, stock read and adjusted over HTTP.

use std::{collections::HashMap, sync::Arc};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_inventory::{Inventory, stock_report};
use shop_platform::{
    Envelope, Event,
    assertion::HEADER as ASSERTION,
    events::{OrderConfirmed, OrderCreated, OrderLine, ProductCreated, StockReleaseRequested},
    testkit::{TestService, WAIT, eventually},
};
use uuid::Uuid;

/// Inventory running on the real servers ([`TestService`]), with its own helpers.
struct Svc(TestService);

shop_platform::deref_to_test_service!(Svc);

impl Svc {
    async fn start() -> Svc {
        Svc::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut shop_platform::config::Config)) -> Svc {
        Svc(TestService::start(Arc::new(Inventory), tweak).await)
    }

    /// The events inventory emitted about `order_id`, oldest first: (type, payload).
    async fn emitted(&self, order_id: Uuid) -> Vec<(String, Value)> {
        pairs(self.0.emitted(order_id).await)
    }

    /// Waits until inventory emitted `n` events about `order_id`, and returns them.
    async fn wait_emitted(&self, order_id: Uuid, n: usize) -> Vec<(String, Value)> {
        pairs(self.0.wait_emitted(order_id, n).await)
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    /// A product with `stock` units, once inventory has seen its product.created.
    async fn product(&self, stock: i64) -> Uuid {
        let product_id = Uuid::now_v7();
        self.publish(&product_created(product_id, stock)).await;
        let pool = self.env.pool.clone();
        eventually("the stock row exists", WAIT, || async {
            level(&pool, product_id).await.is_some()
        })
        .await;
        product_id
    }

    async fn level(&self, product_id: Uuid) -> (i64, i64, i64) {
        level(&self.env.pool, product_id)
            .await
            .expect("stock exists")
    }

    async fn adjust(
        &self,
        product_id: Uuid,
        role: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/api/inventory/{product_id}/adjustments")))
            .json(&body);
        if let Some(role) = role {
            req = req.header(ASSERTION, self.user_assertion(Uuid::now_v7(), role));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn product_created(product_id: Uuid, initial_stock: i64) -> Envelope {
    let p = ProductCreated {
        product_id,
        sku: format!("SKU-{product_id}"),
        name: "Lamp".into(),
        price_cents: 1_000,
        currency: "EUR".into(),
        initial_stock,
    };
    Envelope::new(product_id, &p, product_id, product_id)
}

fn order_created(order_id: Uuid, lines: &[(Uuid, i32)]) -> Envelope {
    let items: Vec<OrderLine> = lines
        .iter()
        .map(|&(product_id, quantity)| OrderLine {
            product_id,
            name: String::new(),
            quantity,
            unit_price_cents: 1_000,
        })
        .collect();
    let total_cents = items
        .iter()
        .map(|l| i64::from(l.quantity) * l.unit_price_cents)
        .sum();
    let o = OrderCreated {
        order_id,
        user_id: Uuid::now_v7(),
        items,
        total_cents,
        currency: "EUR".into(),
    };
    Envelope::new(order_id, &o, order_id, order_id)
}

fn release_requested(order_id: Uuid) -> Envelope {
    Envelope::new(
        order_id,
        &StockReleaseRequested { order_id },
        order_id,
        Uuid::now_v7(),
    )
}

fn confirmed(order_id: Uuid) -> Envelope {
    Envelope::new(
        order_id,
        &OrderConfirmed {
            order_id,
            user_id: Uuid::now_v7(),
            total_cents: 1,
            currency: "EUR".into(),
            items: Vec::new(),
        },
        order_id,
        order_id,
    )
}

/// (type, payload) of each envelope.
fn pairs(events: Vec<Envelope>) -> Vec<(String, Value)> {
    events
        .into_iter()
        .map(|e| (e.event_type, e.payload))
        .collect()
}

/// (available, reserved, sold)
async fn level(pool: &sqlx::PgPool, product_id: Uuid) -> Option<(i64, i64, i64)> {
    sqlx::query_as("SELECT available, reserved, sold FROM stock WHERE product_id = $1")
        .bind(product_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn reservation_status(pool: &sqlx::PgPool, order_id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

fn types(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(t, _)| t.as_str()).collect()
}

async fn assert_balanced(pool: &sqlx::PgPool) {
    for (product_id, initial, adjusted, available, reserved, sold) in
        stock_report(pool).await.unwrap()
    {
        assert_eq!(
            initial + adjusted,
            available + reserved + sold,
            "stock of {product_id} does not balance"
        );
        assert!(available >= 0 && reserved >= 0 && sold >= 0);
    }
}

#[tokio::test]
async fn an_order_is_reserved_when_every_line_is_in_stock() {
    let svc = Svc::start().await;
    let (lamp, desk) = (svc.product(10).await, svc.product(3).await);
    let order = Uuid::now_v7();
    // Two lines of the same product are merged.
    let placed = order_created(order, &[(lamp, 2), (desk, 3), (lamp, 1)]);
    svc.publish(&placed).await;

    let events = svc.wait_emitted(order, 1).await;
    assert_eq!(types(&events), ["stock.reserved"]);
    assert_eq!(events[0].1, json!({"order_id": order}));
    assert_eq!(svc.level(lamp).await, (7, 3, 0));
    assert_eq!(svc.level(desk).await, (0, 3, 0));
    assert_eq!(
        reservation_status(&svc.env.pool, order).await.as_deref(),
        Some("reserved")
    );

    // The emitted event continues the saga: same correlation, caused by the order.created.
    let body: String =
        sqlx::query_scalar("SELECT body FROM outbox WHERE event_type = 'stock.reserved'")
            .fetch_one(&svc.env.pool)
            .await
            .unwrap();
    let env: Envelope = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (env.aggregate_id, env.correlation_id, env.causation_id),
        (order, placed.correlation_id, placed.id)
    );

    // Served over HTTP too.
    let resp = svc
        .http
        .get(svc.url(&format!("/api/inventory/{lamp}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"product_id": lamp, "available": 7, "reserved": 3})
    );
    let resp = svc
        .http
        .get(svc.url(&format!("/api/inventory/{}", Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // A client can act on it: try again shortly, it may be a product just created.
    assert_eq!(resp.headers()["retry-after"], "1");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["type"], "urn:shop:problem:not-yet-known");
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

#[tokio::test]
async fn a_short_line_rejects_the_whole_order_and_changes_nothing() {
    let svc = Svc::start().await;
    let (plenty, scarce) = (svc.product(5).await, svc.product(1).await);
    let order = Uuid::now_v7();
    svc.publish(&order_created(order, &[(plenty, 2), (scarce, 3)]))
        .await;

    let events = svc.wait_emitted(order, 1).await;
    assert_eq!(types(&events), ["stock.rejected"]);
    assert_eq!(
        events[0].1,
        json!({"order_id": order, "reason": "out_of_stock"})
    );
    assert_eq!(
        svc.level(plenty).await,
        (5, 0, 0),
        "the first line was not reserved either"
    );
    assert_eq!(svc.level(scarce).await, (1, 0, 0));
    assert_eq!(
        reservation_status(&svc.env.pool, order).await.as_deref(),
        Some("rejected")
    );

    // The same order again (a new event id): the same answer, still nothing reserved.
    svc.publish(&order_created(order, &[(plenty, 2), (scarce, 3)]))
        .await;
    let events = svc.wait_emitted(order, 2).await;
    assert_eq!(types(&events), ["stock.rejected", "stock.rejected"]);
    assert_eq!(svc.level(plenty).await, (5, 0, 0));
    svc.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_orders_for_ten_units_reserve_exactly_ten() {
    let svc = Svc::start().await;
    let product = svc.product(10).await;
    let orders: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let events: Vec<Envelope> = orders
        .iter()
        .map(|&o| order_created(o, &[(product, 1)]))
        .collect();
    svc.publish_all(&events).await;

    let pool = svc.env.pool.clone();
    let outcomes = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT event_type, count(*) FROM outbox WHERE event_type LIKE 'stock.%' GROUP BY event_type",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect::<HashMap<_, _>>()
    };
    eventually("every order is answered", WAIT, || async {
        outcomes().await.values().sum::<i64>() == 50
    })
    .await;
    let outcomes = outcomes().await;
    assert_eq!(outcomes.get("stock.reserved"), Some(&10));
    assert_eq!(outcomes.get("stock.rejected"), Some(&40));
    assert_eq!(svc.level(product).await, (0, 10, 0));
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

/// Batches handled at once over the same products never deadlock, though each batch's
/// orders take those products in another order (the locks of a batch's handlers are taken
/// first, in key order: `lock_batch`). Without that, PostgreSQL aborts one of two batches
/// waiting on each other, and the batch fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_over_the_same_products_do_not_deadlock() {
    let svc = Svc::start().await;
    let mut products = Vec::new();
    for _ in 0..6 {
        products.push(svc.product(1_000).await);
    }
    let (workers, rounds, size) = (8, 10, 6);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let pool = svc.env.pool.clone();
        let products = products.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                // Each order takes two products; half the workers walk them forwards, half
                // backwards, each from another start.
                let batch: Vec<Envelope> = (0..size)
                    .map(|k| {
                        let i = if w % 2 == 0 {
                            w + round + k
                        } else {
                            60 + w + round - k
                        };
                        let (a, b) = (products[i % 6], products[(i + 1) % 6]);
                        let lines = if w % 2 == 0 {
                            [(a, 1), (b, 1)]
                        } else {
                            [(b, 1), (a, 1)]
                        };
                        order_created(Uuid::now_v7(), &lines)
                    })
                    .collect();
                let spans: Vec<(&Envelope, tracing::Span)> =
                    batch.iter().map(|e| (e, tracing::Span::none())).collect();
                let applied = shop_platform::inbox::process_batch(
                    &pool,
                    &spans,
                    &shop_inventory::handlers::InventoryHandler,
                )
                .await
                .map_err(|e| format!("worker {w}, round {round}: {e}"))?;
                assert!(applied.iter().all(|fresh| *fresh));
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every batch committed");
    }
    // 8 workers x 10 batches x 6 orders x 2 units, spread evenly over the six products.
    let each = (workers * rounds * size * 2 / 6) as i64;
    for p in &products {
        assert_eq!(svc.level(*p).await, (1_000 - each, each, 0));
    }
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

#[tokio::test]
async fn a_release_returns_the_stock_once_and_is_answered_every_time() {
    let svc = Svc::start().await;
    let product = svc.product(4).await;
    let order = Uuid::now_v7();
    svc.publish(&order_created(order, &[(product, 3)])).await;
    svc.wait_emitted(order, 1).await;
    assert_eq!(svc.level(product).await, (1, 3, 0));

    svc.publish(&release_requested(order)).await;
    let events = svc.wait_emitted(order, 2).await;
    assert_eq!(types(&events), ["stock.reserved", "stock.released"]);
    assert_eq!(events[1].1, json!({"order_id": order}));
    assert_eq!(svc.level(product).await, (4, 0, 0));
    assert_eq!(
        reservation_status(&svc.env.pool, order).await.as_deref(),
        Some("released")
    );

    // The orchestrator retries on its deadline: answered again, nothing returned twice.
    svc.publish(&release_requested(order)).await;
    let events = svc.wait_emitted(order, 3).await;
    assert_eq!(
        types(&events),
        ["stock.reserved", "stock.released", "stock.released"]
    );
    assert_eq!(svc.level(product).await, (4, 0, 0));

    // A repeated order.created after the release reserves nothing.
    svc.publish(&order_created(order, &[(product, 3)])).await;
    let events = svc.wait_emitted(order, 4).await;
    assert_eq!(
        events[3],
        (
            "stock.rejected".into(),
            json!({"order_id": order, "reason": "released"})
        )
    );
    assert_eq!(svc.level(product).await, (4, 0, 0));
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

#[tokio::test]
async fn a_release_before_the_order_leaves_a_tombstone_that_rejects_the_late_order() {
    let svc = Svc::start().await;
    let product = svc.product(4).await;
    let order = Uuid::now_v7();
    svc.publish(&release_requested(order)).await;
    let events = svc.wait_emitted(order, 1).await;
    assert_eq!(types(&events), ["stock.released"]);
    assert_eq!(
        reservation_status(&svc.env.pool, order).await.as_deref(),
        Some("released")
    );

    svc.publish(&order_created(order, &[(product, 2)])).await;
    let events = svc.wait_emitted(order, 2).await;
    assert_eq!(
        events[1],
        (
            "stock.rejected".into(),
            json!({"order_id": order, "reason": "released"})
        )
    );
    assert_eq!(
        svc.level(product).await,
        (4, 0, 0),
        "the late order reserved nothing"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_confirmed_order_turns_its_reservation_into_a_sale() {
    let svc = Svc::start().await;
    let product = svc.product(5).await;
    let order = Uuid::now_v7();
    svc.publish(&order_created(order, &[(product, 2)])).await;
    svc.wait_emitted(order, 1).await;

    svc.publish(&confirmed(order)).await;
    let pool = svc.env.pool.clone();
    eventually("the reservation is sold", WAIT, || async {
        reservation_status(&pool, order).await.as_deref() == Some("sold")
    })
    .await;
    assert_eq!(svc.level(product).await, (3, 0, 2));

    // Confirmed again, and a (wrong) release after the sale: both change nothing, emit nothing.
    svc.publish(&confirmed(order)).await;
    svc.publish(&release_requested(order)).await;
    svc.wait_handled(OrderConfirmed::TYPE, 2).await;
    svc.wait_handled(StockReleaseRequested::TYPE, 1).await;
    assert_eq!(svc.level(product).await, (3, 0, 2));
    assert_eq!(types(&svc.emitted(order).await), ["stock.reserved"]);
    // A repeated order.created is answered with its (successful) reservation.
    svc.publish(&order_created(order, &[(product, 2)])).await;
    let events = svc.wait_emitted(order, 2).await;
    assert_eq!(types(&events), ["stock.reserved", "stock.reserved"]);
    assert_eq!(svc.level(product).await, (3, 0, 2));
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_has_one_effect() {
    let svc = Svc::start().await;
    let product = Uuid::now_v7();
    let created = product_created(product, 6);
    svc.publish(&created).await;
    svc.publish(&created).await;
    svc.wait_handled(ProductCreated::TYPE, 2).await;
    assert_eq!(svc.level(product).await, (6, 0, 0));

    let order = Uuid::now_v7();
    let placed = order_created(order, &[(product, 2)]);
    svc.publish(&placed).await;
    svc.publish(&placed).await;
    svc.wait_handled(OrderCreated::TYPE, 2).await;
    assert_eq!(types(&svc.emitted(order).await), ["stock.reserved"]);
    assert_eq!(svc.level(product).await, (4, 2, 0));

    let release = release_requested(order);
    svc.publish(&release).await;
    svc.publish(&release).await;
    svc.wait_handled(StockReleaseRequested::TYPE, 2).await;
    assert_eq!(
        types(&svc.emitted(order).await),
        ["stock.reserved", "stock.released"]
    );
    assert_eq!(svc.level(product).await, (6, 0, 0));
    svc.stop().await;
}

#[tokio::test]
async fn an_order_for_a_product_not_yet_known_waits_for_its_stock() {
    // Generous retries: the order must outlive the wait for product.created.
    let svc = Svc::start_with(|c| c.retry_delays_ms = vec![200, 400, 800, 1600, 3200]).await;
    let product = Uuid::now_v7();
    let order = Uuid::now_v7();
    svc.publish(&order_created(order, &[(product, 1)])).await;
    // Refused as transient (so retried) while the product is unknown; nothing is kept.
    eventually("the order is retried", WAIT, || async {
        svc.metric("shop_messages_retried_total", OrderCreated::TYPE)
            .await
            >= 1
    })
    .await;
    assert!(reservation_status(&svc.env.pool, order).await.is_none());
    svc.publish(&product_created(product, 1)).await;
    let events = svc.wait_emitted(order, 1).await;
    assert_eq!(types(&events), ["stock.reserved"]);
    assert_eq!(svc.level(product).await, (0, 1, 0));
    svc.stop().await;
}

#[tokio::test]
async fn administrators_adjust_stock_within_bounds() {
    let svc = Svc::start().await;
    let product = svc.product(2).await;
    let order = Uuid::now_v7();
    svc.publish(&order_created(order, &[(product, 1)])).await;
    svc.wait_emitted(order, 1).await;

    let (status, body) = svc
        .adjust(
            product,
            Some("admin"),
            json!({"delta": 10, "reason": "delivery"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"product_id": product, "available": 11, "reserved": 1})
    );
    let (status, body) = svc
        .adjust(
            product,
            Some("admin"),
            json!({"delta": -11, "reason": "  broken  "}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["available"], 0);

    // Reserved units cannot be taken away: never below zero.
    let (status, body) = svc
        .adjust(
            product,
            Some("admin"),
            json!({"delta": -1, "reason": "lost"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:shop:problem:conflict");

    for (bad, field) in [
        (json!({"delta": 0, "reason": "x"}), "delta"),
        (json!({"delta": 1_000_001, "reason": "x"}), "delta"),
        (json!({"delta": 1, "reason": ""}), "reason"),
        (json!({"delta": 1, "reason": "x".repeat(201)}), "reason"),
        (json!({"delta": 1, "reason": "x", "extra": true}), "extra"),
        (json!({"delta": 1.5, "reason": "x"}), "delta"),
    ] {
        let (status, body) = svc.adjust(product, Some("admin"), bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} -> {body}");
        assert_eq!(body["field"], field, "{bad} -> {body}");
    }
    let (status, _) = svc
        .adjust(
            product,
            Some("customer"),
            json!({"delta": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = svc
        .adjust(product, None, json!({"delta": 1, "reason": "x"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = svc
        .adjust(
            Uuid::now_v7(),
            Some("admin"),
            json!({"delta": 1, "reason": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let recorded: Vec<(i64, String)> =
        sqlx::query_as("SELECT delta, reason FROM adjustments WHERE product_id = $1 ORDER BY created_at, delta DESC")
            .bind(product)
            .fetch_all(&svc.env.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        [(10, "delivery".to_string()), (-11, "broken".to_string())]
    );
    let adjusted: i64 = sqlx::query_scalar("SELECT adjusted FROM stock WHERE product_id = $1")
        .bind(product)
        .fetch_one(&svc.env.pool)
        .await
        .unwrap();
    assert_eq!(adjusted, -1);
    assert_eq!(svc.level(product).await, (0, 1, 0));
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

#[tokio::test]
async fn orders_racing_their_own_releases_always_give_the_stock_back() {
    let svc = Svc::start().await;
    let product = svc.product(100).await;
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    // Each order's creation and release arrive together, in either order.
    let events: Vec<Envelope> = orders
        .iter()
        .enumerate()
        .flat_map(|(i, &o)| {
            let (created, release) = (order_created(o, &[(product, 2)]), release_requested(o));
            if i % 2 == 0 {
                [created, release]
            } else {
                [release, created]
            }
        })
        .collect();
    svc.publish_all(&events).await;

    for &order in &orders {
        let events = svc.wait_emitted(order, 2).await;
        let mut kinds = types(&events);
        kinds.sort();
        assert!(
            kinds == ["stock.released", "stock.reserved"]
                || kinds == ["stock.rejected", "stock.released"],
            "{order}: {kinds:?}"
        );
        assert_eq!(
            reservation_status(&svc.env.pool, order).await.as_deref(),
            Some("released")
        );
    }
    assert_eq!(svc.level(product).await, (100, 0, 0), "every unit is back");
    assert_balanced(&svc.env.pool).await;
    svc.stop().await;
}

/// Nothing behind the gateway trusts a caller it has not verified: an administrator's
/// request without an assertion, with the old headers, forged, expired, for another
/// service, from a service, or replayed, is refused with 401 and changes nothing.
#[tokio::test]
async fn unverified_callers_are_refused() {
    use shop_platform::assertion::{Claims, Keys, Subject};
    let svc = Svc::start().await;
    let product = svc.product(5).await;
    let url = svc.url(&format!("/api/inventory/{product}/adjustments"));
    let body = json!({"delta": 10, "reason": "restock"});
    let admin = Subject::User {
        id: Uuid::now_v7(),
        role: "admin".into(),
    };
    let claims = |aud: &str, exp: u64| Claims {
        sub: admin.clone(),
        aud: aud.into(),
        exp,
        jti: Uuid::new_v4(),
        rid: None,
        sid: None,
        cip: None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let keys = svc.keys();
    let other = Keys::parse(&Keys::generate()).unwrap();
    let send = |assertion: Option<String>| {
        let mut req = svc.http.post(&url).json(&body);
        if let Some(a) = assertion {
            req = req.header(ASSERTION, a);
        }
        async move { req.send().await.unwrap().status() }
    };
    // What an attacker on the network could send.
    let old_headers = svc
        .http
        .post(&url)
        .header("x-user-id", Uuid::now_v7().to_string())
        .header("x-user-role", "admin")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        old_headers,
        StatusCode::UNAUTHORIZED,
        "x-user-* headers mean nothing"
    );
    for (what, assertion) in [
        ("none", None),
        ("garbage", Some("not.an-assertion".to_string())),
        (
            "forged",
            Some(other.sign_claims(&claims("inventory", now + 30))),
        ),
        (
            "expired",
            Some(keys.sign_claims(&claims("inventory", now - 1))),
        ),
        (
            "for another service",
            Some(keys.sign_claims(&claims("orders", now + 30))),
        ),
        ("from a service", Some(svc.service_assertion("orders"))),
    ] {
        assert_eq!(send(assertion).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(svc.level(product).await.0, 5, "nothing changed");
    // A valid one works once; the same one again is a replay.
    let once = keys.sign_claims(&claims("inventory", now + 30));
    assert_eq!(send(Some(once.clone())).await, StatusCode::OK);
    assert_eq!(send(Some(once)).await, StatusCode::UNAUTHORIZED, "replayed");
    assert_eq!(svc.level(product).await.0, 15);
    svc.stop().await;
}
