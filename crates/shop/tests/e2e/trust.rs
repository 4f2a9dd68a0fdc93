//! Zero trust behind the gateway: calling a service's own port directly, every operation
//! the public document marks as protected (each walked from the served document and sent
//! to the service the gateway would route it to, not from a hand-kept list) and every
//! internal route refuses a caller who only claims an identity in headers.

use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_refuse_callers_they_cannot_verify() {
    let shop = Cluster::start(&[]).await;
    let (s, doc) = shop.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let someone = Uuid::now_v7().to_string();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["security"].as_array().is_none_or(|s| s.is_empty()) {
                continue;
            }
            let method: Method = method.to_uppercase().parse().unwrap();
            let concrete = path
                .replace("{id}", &Uuid::now_v7().to_string())
                .replace("{product_id}", &Uuid::now_v7().to_string());
            let route = shop_gateway::proxy::classify(&method, &concrete).expect("routed");
            let url = format!("http://127.0.0.1:{}{concrete}", shop.port(route.service));
            let status = shop
                .http
                .request(method.clone(), &url)
                .header("x-user-id", &someone)
                .header("x-user-role", "admin")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} straight to {}",
                route.service
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} protected operations walked");
    for (service, path) in [
        ("products", format!("/internal/products?ids={someone}")),
        ("payments", format!("/internal/payments/{someone}")),
    ] {
        let url = format!("http://127.0.0.1:{}{path}", shop.port(service));
        let status = shop
            .http
            .get(&url)
            .header("x-user-id", &someone)
            .header("x-user-role", "admin")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} on {service}");
    }
}
