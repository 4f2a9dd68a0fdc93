//! The storefront in a real browser: every program as its own process on the real servers,
//! a catalogue, then `web-tests/storefront.test.mjs` (node's test runner driving Debian's
//! Chromium with playwright-core) against the gateway. It needs `node`, `npm ci` done in
//! `web-tests/` and `/usr/bin/chromium` (or `CHROMIUM`); `scripts/test` installs them. The
//! screenshots land in `target/web-screenshots/`.

use std::{path::Path, process::Command, time::Duration};

use crate::cluster::Cluster;

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
    let shots = root.join("target/web-screenshots");

    let run = tokio::task::spawn_blocking({
        let base = shop.base.clone();
        move || {
            Command::new("node")
                .args(["--test", "--test-reporter=spec", "storefront.test.mjs"])
                .current_dir(&web_tests)
                .env("SHOP_BASE", base)
                .env("SHOP_PRODUCTS", products)
                .env("SHOP_SCARCE", scarce.to_string())
                .env("SHOP_SCREENSHOTS", &shots)
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
    assert!(out.contains("pass 3"), "three browser tests passed:\n{out}");
}
