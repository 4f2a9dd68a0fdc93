//! `shop up --local-servers` on a machine where the shop's servers are not where its URLs
//! say (every URL points at a port nobody listens on): it starts its own RabbitMQ, Redis and
//! PostgreSQL from the installed binaries, takes and confirms an order, stops them all when
//! it stops, and a second start finds the first run's data.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use shop::client::{ApiClient, NewProduct};
use shop_platform::testkit::{eventually, eventually_some};
use uuid::Uuid;

use crate::cluster::free_port;

const ADMIN: (&str, &str) = ("admin@local.test", "local-admin-password");

struct Up {
    child: Child,
    base: String,
}

fn start(dir: &str, env: &[(String, String)], log: &std::path::Path) -> Up {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["up", "--local-servers", "--local-dir", dir])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn shop up");
    let port = &env
        .iter()
        .find(|(k, _)| k == "SHOP_GATEWAY_PORT")
        .unwrap()
        .1;
    Up {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

impl Up {
    async fn ready(&self, log: &std::path::Path) {
        let http = reqwest::Client::new();
        let url = format!("{}/health/ready", self.base);
        let log = log.display().to_string();
        eventually(
            &format!("shop up ready (log {log})"),
            Duration::from_secs(180),
            || async {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            },
        )
        .await;
    }

    /// SIGTERM, and waits for a clean exit.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = eventually_some("shop up stopped", Duration::from_secs(90), || {
            let s = self.child.try_wait().ok().flatten();
            async move { s }
        })
        .await;
        assert!(status.success(), "shop up exited with {status}");
    }
}

/// Processes (other than ours) whose command line names `dir`.
fn processes_in(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(dir) && !cmdline.contains("--local-dir") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[tokio::test]
async fn up_with_local_servers_needs_no_server_running_and_keeps_its_data() {
    let id = Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("shop-local-{}", &id[..12]));
    let dir_s = dir.display().to_string();
    let log = std::env::temp_dir().join(format!("shop-local-{}.log", &id[..12]));
    let nobody = free_port();
    let mut env: Vec<(String, String)> = vec![
        (
            "SHOP_AMQP_URL".into(),
            format!("amqp://guest:guest@127.0.0.1:{nobody}/%2f"),
        ),
        (
            "SHOP_REDIS_URL".into(),
            format!("redis://127.0.0.1:{nobody}"),
        ),
        (
            "SHOP_DATABASE_URL".into(),
            format!("postgres://postgres@127.0.0.1:{nobody}/shop"),
        ),
        ("SHOP_ADMIN_EMAIL".into(), ADMIN.0.into()),
        ("SHOP_ADMIN_PASSWORD".into(), ADMIN.1.into()),
        ("SHOP_LOG".into(), "info,sqlx=warn,lapin=warn".into()),
    ];
    for name in shop::names() {
        env.push((shop::port_variable(name), free_port().to_string()));
    }
    env.push(("SHOP_GATEWAY_ADMIN_PORT".into(), free_port().to_string()));

    // First run: an order goes through.
    let up = start(&dir_s, &env, &log);
    up.ready(&log).await;
    let api = ApiClient::new(reqwest::Client::new(), up.base.clone());
    let admin = api.login(ADMIN.0, ADMIN.1).await.unwrap();
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    let admin = admin.body["token"].as_str().unwrap().to_string();
    let sku = format!("LOCAL-{}", &id[..8]);
    let product = api
        .create_product(
            &admin,
            &NewProduct {
                sku: &sku,
                name: "Local mug",
                description: "kept",
                price_cents: 900,
                initial_stock: 5,
            },
        )
        .await
        .unwrap()
        .id()
        .unwrap();
    let email = format!("local{}@example.com", &id[..8]);
    let registered = api
        .register(&email, "correct-horse-battery", "Local")
        .await
        .unwrap();
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.body
    );
    let token = api
        .login(&email, "correct-horse-battery")
        .await
        .unwrap()
        .body["token"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        "inventory knows the product",
        Duration::from_secs(30),
        || async { api.stock(product).await.unwrap().status == StatusCode::OK },
    )
    .await;
    let placed = api
        .place_order(&token, &[(product, 1)], "tok_visa")
        .await
        .unwrap();
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let order = placed.id().unwrap();
    eventually("the order confirmed", Duration::from_secs(30), || async {
        api.order(&token, order).await.unwrap().body["status"] == "CONFIRMED"
    })
    .await;
    assert!(
        !processes_in(&dir_s).is_empty(),
        "the servers run from {dir_s}"
    );
    // The containers' healthcheck: the shop binary itself.
    let health = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(["health", &url])
            .output()
            .unwrap()
    };
    let ok = health(format!("{}/health/ready", up.base));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let down = health(format!("http://127.0.0.1:{nobody}/health/ready"));
    assert!(!down.status.success(), "nothing listens there");
    up.stop().await;
    let left = processes_in(&dir_s);
    assert!(left.is_empty(), "server processes left behind: {left:#?}");

    // Second run on the same directory: the account and its order are still there.
    let up = start(&dir_s, &env, &log);
    up.ready(&log).await;
    let api = ApiClient::new(reqwest::Client::new(), up.base.clone());
    let again = api.login(&email, "correct-horse-battery").await.unwrap();
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the account was kept: {}",
        again.body
    );
    let token = again.body["token"].as_str().unwrap().to_string();
    let kept = api.order(&token, order).await.unwrap();
    assert_eq!(kept.body["status"], "CONFIRMED", "{}", kept.body);
    up.stop().await;
    let left = processes_in(&dir_s);
    assert!(left.is_empty(), "server processes left behind: {left:#?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}
