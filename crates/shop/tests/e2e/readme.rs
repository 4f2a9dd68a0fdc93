//! The README's curl walk-through, taken from the README itself (so the two cannot drift),
//! run as pasted, twice, against a running shop whose only administrator is the development
//! one that `shop up` announces.

use std::time::Duration;

use crate::cluster::Cluster;

/// The first `sh` block of the README's "Using the API with curl" section.
fn curl_block(readme: &str) -> &str {
    let section = readme
        .split_once("## Using the API with curl")
        .expect("the README has its curl section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the section has a sh block")
        .1;
    block.split_once("```").expect("the block ends").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_walk_through_works_as_pasted_twice() {
    let readme = include_str!("../../../../README.md");
    let block = curl_block(readme);
    let (email, password) = shop::cli::DEVELOPMENT_ADMIN;
    assert!(
        block.contains(email) && block.contains(password),
        "the walk-through logs in as the development administrator"
    );
    let shop = Cluster::start(&[
        ("SHOP_ADMIN_EMAIL", email),
        ("SHOP_ADMIN_PASSWORD", password),
    ])
    .await;
    let script = block.replace("http://127.0.0.1:8080", &shop.base);
    assert_ne!(
        script, block,
        "the block talks to the default gateway address"
    );
    for run in 1..=2 {
        // The output goes to a file as well, so that a run that hangs still says where.
        let transcript = shop.log_dir.join(format!("readme-run-{run}.txt"));
        let traced = format!("exec > >(tee {}) 2>&1\n{script}", transcript.display());
        let child = tokio::process::Command::new("bash")
            .args(["-eu", "-o", "pipefail", "-c", &traced])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(90), child)
            .await
            .unwrap_or_else(|_| {
                let so_far = std::fs::read_to_string(&transcript).unwrap_or_default();
                panic!(
                    "run {run} of the walk-through did not finish in 90 s; it printed:\n{so_far}"
                )
            })
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "run {run} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        // Each step's answer, in order: the account, the catalog page, the stock, the live
        // status stream up to CONFIRMED, the confirmation message.
        let steps = [
            ("the new account", r#""role":"user""#),
            ("a page of products", r#""items":["#),
            ("the stock of the new product", r#""available":10"#),
            ("the order confirmed on its event stream", "CONFIRMED"),
            (
                "the confirmation notification",
                "1 x Mug at EUR 12.00 = EUR 12.00",
            ),
        ];
        let mut rest: &str = &stdout;
        for (what, expected) in steps {
            let at = rest.find(expected).unwrap_or_else(|| {
                panic!("run {run}: {what} ({expected}) missing from:\n{stdout}")
            });
            rest = &rest[at + expected.len()..];
        }
        assert!(
            !stdout.contains("urn:shop:problem"),
            "run {run}: a step was refused:\n{stdout}"
        );
    }
    shop.audit_clean().await;
}
