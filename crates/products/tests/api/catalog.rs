//! The catalog routes: create, read, list with cursors, update, validation and access.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_platform::testkit::json_of;
use shop_platform::{
    Envelope,
    events::{ProductCreated, ProductUpdated},
};
use uuid::Uuid;

use crate::helpers::{App, id_of, problem, product};

async fn events(app: &App, event_type: &str) -> Vec<Envelope> {
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM outbox WHERE event_type = $1 ORDER BY id")
            .bind(event_type)
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    bodies
        .iter()
        .map(|b| Envelope::parse(b.as_bytes()).unwrap())
        .collect()
}

#[tokio::test]
async fn only_administrators_create_products() {
    let app = App::spawn().await;
    let body = product("MUG-001", 1299);

    let r = app
        .http
        .post(app.url("/api/products"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);
    // A user is refused before the body is even looked at.
    for b in [&body, &json!({})] {
        let r = app
            .as_user(app.http.post(app.url("/api/products")))
            .json(b)
            .send()
            .await
            .unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(p["type"], "urn:shop:problem:forbidden");
    }

    let r = app.create(&body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let p: Value = r.json().await.unwrap();
    let mut keys: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "currency",
            "description",
            "id",
            "name",
            "price_cents",
            "sku",
            "updated_at"
        ]
    );
    assert_eq!(p["sku"], "MUG-001");
    assert_eq!(p["name"], "Product MUG-001");
    assert_eq!(p["description"], "A fine thing.");
    assert_eq!(p["price_cents"], 1299);
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["created_at"], p["updated_at"]);
    let id: Uuid = id_of(&p).parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
    chrono::DateTime::parse_from_rfc3339(p["created_at"].as_str().unwrap()).unwrap();

    // The initial stock travels to the inventory service in product.created.
    let created = events(&app, "product.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].aggregate_id, id);
    assert_eq!(
        created[0].decode::<ProductCreated>().unwrap(),
        ProductCreated {
            product_id: id,
            sku: "MUG-001".into(),
            name: "Product MUG-001".into(),
            price_cents: 1299,
            currency: "EUR".into(),
            initial_stock: 10,
        }
    );

    assert_eq!(app.get_ok(&id.to_string()).await, p);
    app.stop().await;
}

#[tokio::test]
async fn a_taken_sku_is_a_conflict() {
    let app = App::spawn().await;
    app.created("DUP-1", 100).await;
    let (status, p) = problem(app.create(&product("DUP-1", 200)).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(p["type"], "urn:shop:problem:conflict");
    assert_eq!(events(&app, "product.created").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn invalid_products_are_422_naming_the_field() {
    let app = App::spawn().await;
    let with = |field: &str, value: Value| {
        let mut b = product("OK-1", 100);
        b[field] = value;
        b
    };
    let cases = [
        (with("sku", json!("")), "sku"),
        (with("sku", json!("has space")), "sku"),
        (with("sku", json!("x".repeat(65))), "sku"),
        (with("name", json!("  ")), "name"),
        (with("name", json!("n".repeat(201))), "name"),
        (with("description", json!("d".repeat(2001))), "description"),
        (with("price_cents", json!(-1)), "price_cents"),
        (with("price_cents", json!(100_000_001)), "price_cents"),
        (with("price_cents", json!(12.5)), "price_cents"),
        (with("initial_stock", json!(-1)), "initial_stock"),
        (with("initial_stock", json!(1_000_001)), "initial_stock"),
        (with("currency", json!("USD")), "currency"),
        (with("id", json!(Uuid::now_v7())), "id"),
        (json!({"name": "No sku", "price_cents": 1}), "sku"),
    ];
    for (body, field) in cases {
        let (status, p) = problem(app.create(&body).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(p["field"], field, "{body}: {p}");
    }
    // The limits themselves are fine; description and initial_stock may be left out.
    let mut edge = with("sku", json!("x".repeat(64)));
    edge["name"] = json!("n".repeat(200));
    edge["description"] = json!("d".repeat(2000));
    edge["price_cents"] = json!(100_000_000);
    edge["initial_stock"] = json!(1_000_000);
    assert_eq!(app.create(&edge).await.status(), StatusCode::CREATED);
    let minimal = json!({"sku": "MIN-1", "name": "Minimal", "price_cents": 0});
    let r = app.create(&minimal).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["description"], "");
    app.stop().await;
}

#[tokio::test]
async fn administrators_update_products() {
    let app = App::spawn().await;
    let p = app.created("UPD-1", 1000).await;
    let id = id_of(&p);

    let r = app
        .as_user(app.http.patch(app.url(&format!("/api/products/{id}"))))
        .json(&json!({"price_cents": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::FORBIDDEN);
    let r = app
        .http
        .patch(app.url(&format!("/api/products/{id}")))
        .json(&json!({"price_cents": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await.0, StatusCode::UNAUTHORIZED);

    for (body, field) in [
        (json!({}), "body"),
        (json!({"price_cents": -5}), "price_cents"),
        (json!({"name": ""}), "name"),
        (json!({"sku": "NEW"}), "sku"),
    ] {
        let (status, pr) = problem(app.patch(&id, &body).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(pr["field"], field, "{body}");
    }
    for unknown in [Uuid::now_v7().to_string(), "not-a-uuid".to_string()] {
        let (status, _) = problem(app.patch(&unknown, &json!({"price_cents": 5})).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    let r = app
        .patch(&id, &json!({"price_cents": 1500, "description": "Better."}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["price_cents"], 1500);
    assert_eq!(updated["description"], "Better.");
    assert_eq!(updated["name"], p["name"]);
    assert_eq!(updated["sku"], p["sku"]);
    assert_eq!(updated["created_at"], p["created_at"]);
    assert_ne!(updated["updated_at"], p["updated_at"]);

    let ev = events(&app, "product.updated").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].decode::<ProductUpdated>().unwrap(),
        ProductUpdated {
            product_id: id.parse().unwrap(),
            name: "Product UPD-1".into(),
            description: "Better.".into(),
            price_cents: 1500,
        }
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_products_are_404() {
    let app = App::spawn().await;
    for id in [Uuid::now_v7().to_string(), "nope".to_string()] {
        let (status, p) = problem(app.get(&id).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(p["type"], "urn:shop:problem:not-found");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_catalogue_pages_through_every_product_once() {
    let app = App::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id_of(&app.created(&format!("PAGE-{i}"), 100 + i).await));
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url("/api/products?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = json_of(app.http.get(url)).await;
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every product once, in creation order");

    // The default page holds them all.
    let page = json_of(app.http.get(app.url("/api/products"))).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert_eq!(page["next_cursor"], Value::Null);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("cursor=garbage!", "cursor"),
        (&format!("cursor={}", ids[0]) as &str, "cursor"),
    ] {
        let r = app
            .http
            .get(app.url(&format!("/api/products?{query}")))
            .send()
            .await
            .unwrap();
        let (status, p) = problem(r).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(p["field"], field, "{query}");
    }
    app.stop().await;
}

#[tokio::test]
async fn openapi_describes_the_public_routes() {
    let doc = serde_json::to_value(shop_products::openapi()).unwrap();
    assert!(doc["paths"]["/api/products"]["get"].is_object());
    assert!(doc["paths"]["/api/products"]["post"].is_object());
    assert!(doc["paths"]["/api/products/{id}"]["get"].is_object());
    assert!(doc["paths"]["/api/products/{id}"]["patch"].is_object());
    assert!(doc["paths"].get("/internal/products").is_none());
    for schema in ["Product", "ProductPage", "CreateProduct", "UpdateProduct"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema}"
        );
    }
}
