//! The internal price list orders reads when it places an order.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_platform::testkit::json_of;
use uuid::Uuid;

use crate::helpers::{App, id_of, problem};

#[tokio::test]
async fn internal_prices_for_the_orders_service() {
    let app = App::spawn().await;
    let a = app.created("INT-A", 1099).await;
    let b = app.created("INT-B", 2500).await;
    let (a_id, b_id) = (id_of(&a), id_of(&b));
    let unknown = Uuid::now_v7();

    let path = format!("/internal/products?ids={b_id},{unknown},{a_id},{b_id}");
    // Only another program may ask: no assertion, or a user's, is refused.
    let r = app.http.get(app.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let as_user = app.user_assertion(Uuid::now_v7(), "admin");
    let r = app
        .http
        .get(app.url(&path))
        .header(shop_platform::assertion::HEADER, as_user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.internal(&path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let expected = json!([
        {"id": b_id, "name": "Product INT-B", "price_cents": 2500, "currency": "EUR"},
        {"id": a_id, "name": "Product INT-A", "price_cents": 1099, "currency": "EUR"},
    ]);
    assert_eq!(r.json::<Value>().await.unwrap(), expected);
    // Through the same cache: now both are hits, and the database is not asked again.
    let (hits, loads) = (
        app.counter("cache_hits").await,
        app.counter("db_loads").await,
    );
    let again = json_of(app.internal(&path)).await;
    assert_eq!(again, expected);
    assert_eq!(app.counter("cache_hits").await, hits + 2);
    // The unknown id is looked for again (not cached): one load for it.
    assert_eq!(app.counter("db_loads").await, loads + 1);
    assert_eq!(app.cached(&a_id).await, Some(a));

    let none = json_of(app.internal("/internal/products")).await;
    assert_eq!(none, json!([]));

    let too_many: Vec<String> = (0..101).map(|_| Uuid::now_v7().to_string()).collect();
    for ids in [too_many.join(","), "nope".to_string()] {
        let r = app
            .internal(&format!("/internal/products?ids={ids}"))
            .send()
            .await
            .unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p["field"], "ids");
    }
    let hundred = too_many[..100].join(",");
    let r = app
        .internal(&format!("/internal/products?ids={hundred}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
