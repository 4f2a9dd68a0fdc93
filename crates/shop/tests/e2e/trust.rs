//! Zero trust behind the gateway, walked over every route of every service's router (each
//! service's router is built from the table its `Identity::routes` returns, so no route is
//! left out): called straight at the service's port with an identity claimed only in
//! headers, every route that is not public answers 401; through the gateway, another user
//! learns nothing of the owner's data, a plain user is refused the administrators' routes,
//! and internal routes are not routed at all.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use shop_platform::{http::Access, testkit::eventually};
use uuid::Uuid;

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_of_every_service_holds_to_its_access() {
    let shop = Cluster::start(&[]).await;
    let (alice, alice_id, widget, order) = shop.confirmed_order().await;
    // Alice has a payment and notifications to leak, if a route would.
    let (shop_ref, alice_ref) = (&shop, &alice);
    eventually(
        "alice is notified",
        Duration::from_secs(30),
        || async move {
            let (_, list) = shop_ref
                .call(Method::GET, "/api/notifications", Some(alice_ref), None)
                .await;
            list["items"].as_array().is_some_and(|i| i.len() >= 2)
        },
    )
    .await;
    let alices = [alice_id.to_string(), order.clone()];
    let someone = Uuid::now_v7().to_string();

    let mut walked = Vec::new();
    let mut bob: Option<String> = None;
    for entry in shop::PROGRAMS {
        for route in (entry.identity.routes)() {
            let service = entry.identity.name;
            let path = route
                .path
                .replace("{order_id}", &order)
                .replace("{product_id}", &widget.to_string())
                .replace(
                    "{id}",
                    &if route.path.starts_with("/api/orders") {
                        order.clone()
                    } else {
                        widget.to_string()
                    },
                );
            assert!(
                !path.contains('{'),
                "{path}: a parameter this walk cannot fill"
            );
            walked.push(format!("{} {}", route.method, route.path));

            // Straight at the service, claiming to be an administrator in headers.
            let direct = send(
                shop.http
                    .request(
                        route.method.clone(),
                        format!("http://127.0.0.1:{}{path}", shop.port(service)),
                    )
                    .header("x-user-id", &someone)
                    .header("x-user-role", "admin"),
            );
            let status = direct.await.status();
            if route.access == Access::Public {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{} {path}", route.method);
            } else {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{} {path} straight to {service}",
                    route.method
                );
            }

            // Through the gateway, as another user (a fresh one after a logout, which ends
            // its session; one for the rest, within the gateway's login rate limit).
            if bob.is_none() {
                bob = Some(shop.user().await.0);
            }
            let bob_token = bob.clone().unwrap();
            if route.path.ends_with("/logout") {
                bob = None;
            }
            let through = send(
                shop.http
                    .request(route.method.clone(), format!("{}{path}", shop.base))
                    .bearer_auth(&bob_token),
            )
            .await;
            let status = through.status();
            let body = tokio::time::timeout(Duration::from_secs(10), through.text())
                .await
                .expect("the answer ends")
                .unwrap();
            let what = format!("{} {path} as another user: {status} {body}", route.method);
            match route.access {
                Access::Public => {}
                Access::User => {
                    for secret in &alices {
                        assert!(!body.contains(secret.as_str()), "{what}");
                    }
                }
                Access::Admin => assert_eq!(status, StatusCode::FORBIDDEN, "{what}"),
                Access::Service => assert_eq!(status, StatusCode::NOT_FOUND, "{what}"),
            }
        }
    }
    // Every kind of access was walked, on every service with routes.
    for expected in [
        "POST /api/auth/login",
        "GET /api/me",
        "PATCH /api/products/{id}",
        "GET /internal/products",
        "POST /api/inventory/{product_id}/adjustments",
        "GET /api/orders/{id}/events",
        "GET /internal/payments/{order_id}",
        "GET /api/notifications",
        "POST /api/admin/dead-letters/replay",
        "GET /api/admin/outbox",
        "GET /api/admin/orders/{id}",
    ] {
        assert!(
            walked.iter().any(|w| w == expected),
            "{expected} not walked: {walked:?}"
        );
    }
}

/// Sends `request` with an empty JSON object as its body (ignored where none is read).
async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
}

/// Each service's PostgreSQL role reads and writes its own schema only, and the audit's
/// role only reads (the whole e2e suite runs with these roles).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_service_holds_only_its_own_tables() {
    use sqlx::Connection as _;
    let shop = Cluster::start(&[]).await;
    shop.confirmed_order().await;
    let connect = |name: &'static str| {
        let opts = shop_platform::db::login(&shop.config, name).unwrap();
        async move { sqlx::PgConnection::connect_with(&opts).await.unwrap() }
    };
    let denied = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, what: &str| {
        let e = r.expect_err(what);
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{what}: {e}");
    };

    let mut orders = connect("orders").await;
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(&mut orders)
        .await
        .unwrap();
    assert_eq!(own, 1, "orders reads its own table");
    denied(
        sqlx::query("SELECT * FROM users.users")
            .execute(&mut orders)
            .await,
        "orders reads users",
    );
    denied(
        sqlx::query("UPDATE payments.payments SET amount_cents = 1")
            .execute(&mut orders)
            .await,
        "orders writes payments",
    );
    denied(
        sqlx::query("CREATE SCHEMA elsewhere")
            .execute(&mut orders)
            .await,
        "orders makes a schema",
    );

    let mut audit = connect("audit").await;
    let orders_seen: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(&mut audit)
        .await
        .unwrap();
    assert_eq!(orders_seen, 1, "the audit reads every schema");
    denied(
        sqlx::query("DELETE FROM orders.orders")
            .execute(&mut audit)
            .await,
        "the audit deletes",
    );
    shop.audit_clean().await;
}
