//! The limits the OpenAPI document states are the ones the handlers enforce: for a sample
//! of them, read from the served document itself, a value just inside is accepted and one
//! just outside is refused with 422 naming the field.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cluster::Cluster;

/// A constraint of a schema's property, as the served document states it.
fn limit(doc: &Value, schema: &str, property: &str, keyword: &str) -> i64 {
    doc["components"]["schemas"][schema]["properties"][property][keyword]
        .as_i64()
        .unwrap_or_else(|| panic!("{schema}.{property} states no {keyword}"))
}

/// Asserts that `just_inside` is accepted with `ok` and `just_outside` refused with 422
/// naming `field`.
async fn holds(
    shop: &Cluster,
    what: &str,
    (method, path, token): (Method, &str, Option<&str>),
    just_inside: Value,
    just_outside: Value,
    ok: StatusCode,
    field: &str,
) {
    let (s, body) = shop
        .call(method.clone(), path, token, Some(just_inside))
        .await;
    assert_eq!(s, ok, "{what}: the value just inside the limit: {body}");
    let (s, body) = shop.call(method, path, token, Some(just_outside)).await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{what}: the value just outside: {body}"
    );
    assert_eq!(body["field"], field, "{what}: {body}");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &Uuid::new_v4().simple().to_string()[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documented_limits_are_the_enforced_ones() {
    let shop = Cluster::start(&[]).await;
    let (s, doc) = shop.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let admin = shop.admin().await;
    let (user, _) = shop.user().await;

    // A display name at its longest, and one character more.
    let n = limit(&doc, "RegisterRequest", "name", "maxLength") as usize;
    let register = |name: String| json!({"email": format!("{}@limits.test", unique("u")), "password": "limits-password-1", "name": name});
    holds(
        &shop,
        "RegisterRequest.name maxLength",
        (Method::POST, "/api/auth/register", None),
        register("n".repeat(n)),
        register("n".repeat(n + 1)),
        StatusCode::CREATED,
        "name",
    )
    .await;

    // A SKU at its longest, and a price at its highest.
    let l = limit(&doc, "CreateProduct", "sku", "maxLength") as usize;
    let p = limit(&doc, "CreateProduct", "price_cents", "maximum");
    let product = |sku: String, price: i64| json!({"sku": sku, "name": "Limit", "description": "", "price_cents": price, "initial_stock": 5});
    let long_sku = |len: usize| {
        let u = unique("S");
        format!("{u}{}", "K".repeat(len - u.len()))
    };
    holds(
        &shop,
        "CreateProduct.sku maxLength",
        (Method::POST, "/api/products", Some(&admin)),
        product(long_sku(l), 100),
        product(long_sku(l + 1), 100),
        StatusCode::CREATED,
        "sku",
    )
    .await;
    holds(
        &shop,
        "CreateProduct.price_cents maximum",
        (Method::POST, "/api/products", Some(&admin)),
        product(unique("P"), p),
        product(unique("P"), p + 1),
        StatusCode::CREATED,
        "price_cents",
    )
    .await;

    // A stock adjustment at its largest.
    let id = shop.product(&admin, 100, 5).await;
    let d = limit(&doc, "StockAdjustment", "delta", "maximum");
    let path = format!("/api/inventory/{id}/adjustments");
    holds(
        &shop,
        "StockAdjustment.delta maximum",
        (Method::POST, &path, Some(&admin)),
        json!({"delta": d, "reason": "limits"}),
        json!({"delta": d + 1, "reason": "limits"}),
        StatusCode::OK,
        "delta",
    )
    .await;

    // An order line's largest quantity.
    let q = limit(&doc, "PlaceOrderLine", "quantity", "maximum");
    let order = |quantity: i64| json!({"items": [{"product_id": id, "quantity": quantity}], "payment_token": "tok_visa"});
    holds(
        &shop,
        "PlaceOrderLine.quantity maximum",
        (Method::POST, "/api/orders", Some(&user)),
        order(q),
        order(q + 1),
        StatusCode::ACCEPTED,
        "items[0].quantity",
    )
    .await;

    // The largest page of products.
    let params = &doc["paths"]["/api/products"]["get"]["parameters"];
    let max = params
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
        .and_then(|p| p["schema"]["maximum"].as_i64())
        .expect("the page size states its maximum");
    let (s, _) = shop
        .call(
            Method::GET,
            &format!("/api/products?limit={max}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "limit={max}");
    let (s, body) = shop
        .call(
            Method::GET,
            &format!("/api/products?limit={}", max + 1),
            None,
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "limit={}: {body}",
        max + 1
    );
}
