//! The storefront in a real browser: every program as its own process on the real servers,
//! a catalogue, then `web-tests/storefront.test.mjs` (node's test runner driving Debian's
//! Chromium with playwright-core) against the gateway. It needs `node`, `npm ci` done in
//! `web-tests/` and `/usr/bin/chromium` (or `CHROMIUM`); `scripts/test` installs them. The
//! screenshots land in `target/web-screenshots/`.

use std::{path::Path, process::Command, time::Duration};

use crate::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_storefront_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let web_tests = root.join("web-tests");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no browser at {chromium}: `apt-get install chromium` (scripts/test does)"
    );
    assert!(
        web_tests.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: `npm ci` in web-tests/ (scripts/test does)"
    );

    // The payment provider answers after 1.5 s: an order's page shows it on its way first,
    // then its outcome arriving live.
    let mut shop = Cluster::start(&[("SHOP_PAYMENT_LATENCY_MS", "1500")]).await;
    // A catalogue worth a screenshot (`shop seed`), and the test's own products.
    shop.spawn_command("seed", &["seed"], &[]);
    let seeded = shop.wait_exit("seed", Duration::from_secs(60)).await;
    assert!(seeded.success(), "shop seed: {seeded}");
    let admin = shop.admin().await;
    let plenty = [
        shop.product(&admin, 1250, 1000).await,
        shop.product(&admin, 799, 1000).await,
    ];
    let scarce = shop.product(&admin, 4200, 1).await;
    let products = format!("{},{}", plenty[0], plenty[1]);
    let planted = plant_dead_letter(&shop).await;
    let shots = root.join("target/web-screenshots");

    let run = tokio::task::spawn_blocking({
        let base = shop.base.clone();
        move || {
            Command::new("node")
                .args([
                    "--test",
                    "--test-reporter=spec",
                    "--test-concurrency=1",
                    "storefront.test.mjs",
                    "ops.test.mjs",
                ])
                .current_dir(&web_tests)
                .env("SHOP_BASE", base)
                .env("SHOP_PRODUCTS", products)
                .env("SHOP_SCARCE", scarce.to_string())
                .env("SHOP_SCREENSHOTS", &shots)
                .env("SHOP_ADMIN_EMAIL", ADMIN_EMAIL)
                .env("SHOP_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .env("SHOP_PLANTED", planted)
                .env("CHROMIUM", chromium)
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    println!("{out}{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        run.status.success(),
        "the browser tests failed (logs in {})",
        shop.log_dir.display()
    );
    // Each test ran; none was skipped.
    assert!(out.contains("pass 5"), "five browser tests passed:\n{out}");
}

/// A dead letter for the operations page to replay: a `product.created` of a product only
/// inventory will know, parked in inventory's dead-letter queue as a consumer parks one.
/// Replayed, inventory handles it and the product's stock appears: 7 units. Returns
/// `service:message id:product id`.
async fn plant_dead_letter(shop: &Cluster) -> String {
    use lapin::{
        BasicProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions},
        types::{AMQPValue, FieldTable, ShortString},
    };
    use shop_platform::{
        amqp::{H_ATTEMPTS, H_DEAD_AT, H_QUEUE, H_REASON},
        envelope::{Envelope, Event as _},
        events::ProductCreated,
    };
    let service = shop_inventory::program::IDENTITY.name;
    let product = uuid::Uuid::now_v7();
    let event = ProductCreated {
        product_id: product,
        sku: format!("PLANTED-{}", product.simple()),
        name: "Planted".into(),
        price_cents: 100,
        currency: "EUR".into(),
        initial_stock: 7,
    };
    let env = Envelope::new(product, &event, product, product);
    let broker = shop.broker().await;
    let names = broker.names();
    let mut headers = FieldTable::default();
    headers.insert(
        H_REASON.into(),
        AMQPValue::LongString("planted by the browser test".into()),
    );
    headers.insert(H_ATTEMPTS.into(), AMQPValue::LongLongInt(5));
    headers.insert(
        H_DEAD_AT.into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    headers.insert(
        H_QUEUE.into(),
        AMQPValue::LongString(names.queue(service).into()),
    );
    let props = BasicProperties::default()
        .with_message_id(env.id.to_string().into())
        .with_type(ProductCreated::TYPE.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    let ch = broker.channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            ShortString::from(""),
            ShortString::from(names.dead_letter_queue(service)),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &env.to_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the planted dead letter is confirmed");
    let _ = ch.close(200, "planted".into()).await;
    broker.close().await;
    format!("{service}:{}:{product}", env.id)
}
