//! A program stopping for a deploy: on SIGTERM its readiness answers 503 at once, while it
//! keeps serving for the drain period (`SHOP_DRAIN_SECS`), then it stops gracefully.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use shop_platform::testkit::{eventually, eventually_some};

use crate::cluster::Cluster;

#[tokio::test]
async fn a_stopping_program_turns_unready_keeps_serving_then_exits() {
    let mut shop = Cluster::start(&[]).await;
    shop.kill("products");
    shop.spawn_with("products", &[("SHOP_DRAIN_SECS", "5")]);
    let direct = format!("http://127.0.0.1:{}", shop.port("products"));
    eventually("products ready again", Duration::from_secs(60), || async {
        let r = shop.http.get(format!("{direct}/health/ready")).send().await;
        r.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;

    shop.sigterm("products");
    let body: Value = eventually_some(
        "products' readiness turns 503",
        Duration::from_secs(10),
        || async {
            let r = shop
                .http
                .get(format!("{direct}/health/ready"))
                .send()
                .await
                .ok()?;
            if r.status() != StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            r.json().await.ok()
        },
    )
    .await;
    assert_eq!(body["error"]["lifecycle"]["status"], "down", "{body}");
    // Still serving while it drains: alive, and the catalogue answers through the gateway.
    let live = shop
        .http
        .get(format!("{direct}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let (status, page) = shop
        .call(Method::GET, "/api/products?limit=1", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let exit = shop.wait_exit("products", Duration::from_secs(30)).await;
    assert!(exit.success(), "a graceful stop exits 0 ({exit})");
}
