//! Two instances of a service behind the gateway, without Kubernetes: `SHOP_SERVICE_URLS`
//! names orders twice. Requests are spread over both; a client placing and reading orders
//! without pause sees no 5xx while one instance drains and stops (SIGTERM) and while the other
//! is killed outright.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_platform::{metrics::sample_sum, testkit::free_port};
use uuid::Uuid;

use crate::cluster::Cluster;

/// Requests answered by an orders instance for the order routes, from its /metrics.
async fn served(cluster: &Cluster, port: u16) -> f64 {
    let text = cluster.metrics_of(port).await;
    ["/api/orders", "/api/orders/{id}"]
        .iter()
        .map(|route| sample_sum(&text, "shop_http_requests_total", &[("route", route)]))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_spread_over_two_instances_and_survive_each_stopping() {
    let mut cluster = Cluster::start(&[]).await;
    let a = cluster.port("orders");
    let b = free_port();
    let b_port = b.to_string();
    // Instance b drains for 2 s after SIGTERM (readiness 503 while it still serves).
    let b_env = [
        ("SHOP_ORDERS_PORT", b_port.as_str()),
        ("SHOP_DRAIN_SECS", "2"),
    ];
    cluster.spawn_command("orders-b", &["run", "orders"], &b_env);
    cluster.wait_instance_ready(b).await;
    let urls = format!("orders=http://127.0.0.1:{a},orders=http://127.0.0.1:{b}");
    cluster.terminate("gateway");
    cluster.spawn_with("gateway", &[("SHOP_SERVICE_URLS", urls.as_str())]);
    cluster.wait_ready(Duration::from_secs(30)).await;

    let admin = cluster.admin().await;
    let (token, _) = cluster.user().await;
    let product = cluster.product(&admin, 100, 100_000).await;

    // A client that places an order (with an Idempotency-Key) and reads it, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let client = {
        let (http, base, token) = (cluster.http.clone(), cluster.base.clone(), token.clone());
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let placed = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(&token)
                    .header("idempotency-key", Uuid::new_v4().to_string())
                    .json(&json!({"items": [{"product_id": product, "quantity": 1}], "payment_token": "tok_visa"}))
                    .send()
                    .await;
                let id = match placed {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let body: Value = r.json().await.unwrap();
                        body["id"].as_str().unwrap().to_string()
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("POST: {}", r.status()));
                        continue;
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("POST: {e}"));
                        continue;
                    }
                };
                match http
                    .get(format!("{base}/api/orders/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => ok.fetch_add(2, Ordering::Relaxed),
                    Ok(r) => {
                        errors.lock().unwrap().push(format!("GET: {}", r.status()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(format!("GET: {e}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                // Pacing of the client's loop (a steady load), not a wait for anything.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let progress = |n: u64| {
        let ok = ok.clone();
        async move {
            let from = ok.load(Ordering::Relaxed);
            shop_platform::testkit::eventually("requests flow", Duration::from_secs(30), || {
                let ok = ok.clone();
                async move { ok.load(Ordering::Relaxed) >= from + n }
            })
            .await;
        }
    };

    // Both instances serve.
    progress(40).await;
    for port in [a, b] {
        let n = served(&cluster, port).await;
        assert!(n > 0.0, "the instance on {port} served no request ({urls})");
    }

    // b is stopped for a deploy: the gateway moves away during its drain, nothing fails.
    cluster.sigterm("orders-b");
    let status = cluster.wait_exit("orders-b", Duration::from_secs(30)).await;
    assert!(status.success(), "orders-b stopped with {status}");
    progress(20).await;

    // b is back; a is killed outright: its pooled connections die under the gateway.
    cluster.spawn_command("orders-b", &["run", "orders"], &b_env);
    cluster.wait_instance_ready(b).await;
    progress(20).await;
    cluster.kill("orders");
    progress(40).await;
    cluster.spawn("orders");
    cluster.wait_instance_ready(a).await;
    progress(20).await;

    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let errors = errors.lock().unwrap().clone();
    println!(
        "{} requests answered, {} failed, across a drain and a kill",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    cluster.audit_clean().await;
    cluster.terminate("orders-b");
}
