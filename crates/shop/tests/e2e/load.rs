//! `shop load` against a running shop, as the benchmark's curves use it: users and products
//! given in files (a population seeded in bulk) instead of made by the run, and the order
//! list read by those users.

use serde_json::Value;

use crate::cluster::Cluster;

/// Runs `shop load <args> --json` with the cluster's settings: (success, report or null,
/// standard error).
async fn load(shop: &Cluster, args: &[&str]) -> (bool, Value, String) {
    let mut all = vec!["load", "--gateway", shop.base.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = shop
        .command(&all)
        .env("SHOP_LOG", "off")
        .output()
        .await
        .expect("shop load runs");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_takes_users_and_products_from_files_and_reads_order_lists() {
    let shop = Cluster::start(&[]).await;
    let admin = shop.admin().await;
    let (ann, _) = shop.user().await;
    let (bob, _) = shop.user().await;
    let product = shop.product(&admin, 300, 100).await;
    let dir = &shop.log_dir;
    let tokens = dir.join("tokens.txt");
    let products = dir.join("products.txt");
    std::fs::write(&tokens, format!("{ann}\n{bob}\n\n")).unwrap();
    std::fs::write(&products, format!("{product}\n")).unwrap();
    let (tokens, products) = (tokens.to_str().unwrap(), products.to_str().unwrap());

    // Orders by the two given users for the given product (plus the sold-out product the
    // run makes for its out-of-stock share), followed to their ends and audited.
    let (ok, report, stderr) = load(
        &shop,
        &[
            "--tokens",
            tokens,
            "--product-ids",
            products,
            "--count",
            "8",
            "--concurrency",
            "2",
            "--out-of-stock-pct",
            "25",
        ],
    )
    .await;
    assert!(ok, "{stderr}\n{report}");
    assert_eq!(report["succeeded"], 8, "{report}");
    assert_eq!(report["settled"], 8, "{report}");
    assert_eq!(report["unexpected_outcomes"], 0, "{report}");
    let confirmed = report["outcomes"]["CONFIRMED"].as_i64().unwrap_or(0);
    let rejected = report["outcomes"]["CANCELLED (out_of_stock)"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        confirmed > 0 && rejected > 0 && confirmed + rejected == 8,
        "{report}"
    );
    assert!(
        stderr.contains("2 user(s) and 2 product(s) ready"),
        "{stderr}"
    );
    assert_eq!(
        report["audit"]["violations"],
        serde_json::json!([]),
        "{report}"
    );
    // The given product sold what the confirmed orders asked; Ann placed every other order.
    assert_eq!(shop.stock(product).await, (100 - confirmed, 0));
    let (_, page) = shop
        .call(
            reqwest::Method::GET,
            "/api/orders?limit=100",
            Some(&ann),
            None,
        )
        .await;
    let mine = page["items"].as_array().unwrap();
    assert_eq!(mine.len(), 4, "{page}");

    // Their order lists, the users in turn.
    let (ok, report, stderr) = load(
        &shop,
        &[
            "--mode",
            "list-orders",
            "--tokens",
            tokens,
            "--count",
            "10",
            "--audit",
            "false",
        ],
    )
    .await;
    assert!(ok, "{stderr}\n{report}");
    assert_eq!(report["mode"], "list-orders");
    assert_eq!(
        (
            report["succeeded"].as_u64(),
            report["failed_requests"].as_u64()
        ),
        (Some(10), Some(0)),
        "{report}"
    );
    assert_eq!(report["http_latency"]["count"], 10, "{report}");

    // A file without a token is refused before anything is sent.
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    let (ok, _, stderr) = load(
        &shop,
        &[
            "--mode",
            "list-orders",
            "--tokens",
            empty.to_str().unwrap(),
            "--count",
            "1",
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("has no lines"), "{stderr}");
}
