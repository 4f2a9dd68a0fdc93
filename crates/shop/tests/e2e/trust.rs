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

            // Through the gateway, as another user (a fresh one: logout ends its session).
            let (bob, _) = shop.user().await;
            let through = send(
                shop.http
                    .request(route.method.clone(), format!("{}{path}", shop.base))
                    .bearer_auth(&bob),
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
