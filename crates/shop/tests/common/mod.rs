#![allow(dead_code)]
//! Shared by the end-to-end and fault-injection tests.
//!
//! A whole shop for one test: every program as its own `shop run` process, on free ports, with
//! its own database, exchange/queue namespace and Redis key prefix, all removed afterwards.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use shop::{
    Settings,
    client::{ApiClient, NewProduct},
    port_variable,
};
use shop_platform::{
    amqp::{Broker, BrokerConfig},
    config::Config,
    db,
    metrics::Metrics,
    testkit::{delete_redis_keys, delete_topology, eventually},
};
use uuid::Uuid;

pub const ADMIN_EMAIL: &str = "admin@shop.test";
pub const ADMIN_PASSWORD: &str = "admin-password-123";

pub struct Cluster {
    pub config: Config,
    /// The programs' settings as the processes get them (ports, administrator).
    pub settings: Settings,
    pub base: String,
    /// The gateway's admin port: `/metrics` and the detailed readiness.
    pub admin: String,
    pub http: Client,
    pub log_dir: PathBuf,
    env: Vec<(String, String)>,
    children: HashMap<&'static str, Child>,
}

/// Who has a PostgreSQL role of its own: every service with a schema, and the audit.
pub fn role_names() -> Vec<&'static str> {
    shop::PROGRAMS
        .iter()
        .filter(|e| e.identity.uses_database)
        .map(|e| e.identity.name)
        .chain(["audit"])
        .collect()
}

/// A fresh password for each of [`role_names`], as `SHOP_DB_PASSWORDS` takes them.
fn db_passwords() -> String {
    passwords(role_names())
}

/// A fresh password for each program that uses RabbitMQ, as `SHOP_AMQP_PASSWORDS` takes
/// them (for a broker whose management API the test knows: the fault suite's).
pub fn amqp_passwords() -> String {
    passwords(
        shop::PROGRAMS
            .iter()
            .filter(|e| e.identity.uses_broker)
            .map(|e| e.identity.name)
            .collect(),
    )
}

fn passwords(names: Vec<&str>) -> String {
    names
        .iter()
        .map(|name| format!("{name}={}", Uuid::new_v4().simple()))
        .collect::<Vec<_>>()
        .join(",")
}

pub use shop_platform::testkit::free_port;

impl Cluster {
    /// Starts every program with the given extra environment and waits until the gateway
    /// reports all of them ready.
    pub async fn start(extra: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::prepare(extra).await;
        for p in shop::names() {
            cluster.spawn(p);
        }
        cluster.wait_ready(Duration::from_secs(90)).await;
        cluster
    }

    /// Like [`Cluster::start`], with every program in one `shop up` process (the child
    /// called `up`).
    pub async fn start_up(extra: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::prepare(extra).await;
        cluster.spawn_command("up", &["up"], &[]);
        cluster.wait_ready(Duration::from_secs(90)).await;
        cluster
    }

    /// The servers, database, settings and environment of a cluster, nothing started.
    async fn prepare(extra: &[(&str, &str)]) -> Cluster {
        let id = Uuid::new_v4().simple().to_string();
        let ns = format!("e{}", &id[..12]);
        let db_url = format!("postgres://postgres@127.0.0.1:5432/shop_{ns}");
        let mut env: Vec<(String, String)> = vec![
            ("SHOP_NAMESPACE".into(), ns.clone()),
            ("SHOP_DATABASE_URL".into(), db_url.clone()),
            ("SHOP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            ("SHOP_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            ("SHOP_RETRY_DELAYS_MS".into(), "200,500".into()),
            // Stopped at once (tests/e2e/drain.rs sets its own).
            ("SHOP_DRAIN_SECS".into(), "0".into()),
            (
                "SHOP_ASSERTION_KEYS".into(),
                shop_platform::assertion::Keys::generate(),
            ),
            ("SHOP_LOG".into(), "info,sqlx=warn,lapin=warn".into()),
            // Least privilege: each service as its own PostgreSQL role, the audit read-only.
            ("SHOP_DB_PASSWORDS".into(), db_passwords()),
            // Every client of a test is 127.0.0.1: per-address limits would count them all
            // as one (the per-account and gateway limits still apply).
            ("SHOP_LOGINS_PER_ADDRESS_PER_MIN".into(), "100000".into()),
            (
                "SHOP_REGISTRATIONS_PER_ADDRESS_PER_MIN".into(),
                "100000".into(),
            ),
        ];
        let mut settings = Settings::defaults();
        settings.users.admin_email = Some(ADMIN_EMAIL.into());
        settings.users.admin_password = Some(ADMIN_PASSWORD.into());
        settings.users.logins_per_address_per_min = 100_000;
        settings.users.registrations_per_address_per_min = 100_000;
        for name in shop::names() {
            let port = free_port();
            settings.ports.set(name, port);
            env.push((port_variable(name), port.to_string()));
        }
        settings.gateway.admin_port = free_port();
        env.push((
            "SHOP_GATEWAY_ADMIN_PORT".into(),
            settings.gateway.admin_port.to_string(),
        ));
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut config = Config::defaults();
        for (k, v) in &env {
            match k.as_str() {
                "SHOP_NAMESPACE" => config.namespace = v.clone(),
                "SHOP_DATABASE_URL" => config.database_url = v.clone(),
                "SHOP_DB_PASSWORDS" => config.db_passwords = Some(v.clone()),
                "SHOP_AMQP_PASSWORDS" => config.amqp_passwords = Some(v.clone()),
                "SHOP_AMQP_ADMIN_URL" => config.amqp_admin_url = Some(v.clone()),
                "SHOP_AMQP_URL" => config.amqp_url = v.clone(),
                "SHOP_REDIS_URL" => config.redis_url = v.clone(),
                "SHOP_RETRY_DELAYS_MS" => {
                    config.retry_delays_ms = v.split(',').filter_map(|x| x.parse().ok()).collect()
                }
                "SHOP_MESSAGE_TTL_MS" => config.message_ttl_ms = v.parse().unwrap(),
                "SHOP_QUEUE_TYPE" => {
                    config.queue_type = clap::ValueEnum::from_str(v, true).expect("a queue type")
                }
                _ => {}
            }
        }
        let gateway_port = settings.ports.of(shop_gateway::program::IDENTITY.name);
        // Create the database once, before seven processes race to.
        let _ = db_url;
        db::ensure_database(&config.database_url).await.unwrap();
        shop::setup_roles(&config).await.unwrap();
        shop::setup_broker_users(&config).await.unwrap();
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e-logs")
            .join(&ns);
        std::fs::create_dir_all(&log_dir).unwrap();
        let admin = format!("http://127.0.0.1:{}", settings.gateway.admin_port);
        Cluster {
            config,
            settings,
            base: format!("http://127.0.0.1:{gateway_port}"),
            admin,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Config::defaults().client_idle_timeout())
                .build()
                .unwrap(),
            log_dir,
            env,
            children: HashMap::new(),
        }
    }

    /// Sets a variable of the environment that every later spawn gets.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Starts (or restarts) one program.
    pub fn spawn(&mut self, program: &'static str) {
        self.spawn_with(program, &[]);
    }

    /// Starts (or restarts) one program with extra environment on top of the cluster's (for
    /// example `SHOP_CRASH_POINT`); a later `spawn` starts it without.
    pub fn spawn_with(&mut self, program: &'static str, extra: &[(&str, &str)]) {
        self.spawn_command(program, &["run", program], extra);
    }

    /// Starts `shop <args>` as the child called `program` (a second instance, say),
    /// logging to `<program>.log`.
    pub fn spawn_command(&mut self, program: &'static str, args: &[&str], extra: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{program}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn shop");
        self.children.insert(program, child);
    }

    /// The Prometheus text a program instance serves on `port` (its own, not the gateway's
    /// public one).
    pub async fn metrics_of(&self, port: u16) -> String {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("the program answers /metrics");
        assert!(
            r.status().is_success(),
            "/metrics on {port}: {}",
            r.status()
        );
        r.text().await.unwrap()
    }

    /// `shop <args>` with this cluster's environment (a command line tool's run, not a
    /// program of the cluster).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"));
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        command
    }

    /// Kills one program hard (SIGKILL).
    pub fn kill(&mut self, program: &str) {
        if let Some(mut c) = self.children.remove(program) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one program SIGTERM and returns at once (see [`Cluster::wait_exit`]).
    pub fn sigterm(&self, program: &str) {
        unsafe_free_sigterm(self.children[program].id());
    }

    /// Stops one program with SIGTERM and returns its exit status.
    pub fn terminate(&mut self, program: &str) -> std::process::ExitStatus {
        let mut c = self.children.remove(program).expect("running");
        unsafe_free_sigterm(c.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How a program's process ended, if it has (`None` while it runs or when not started).
    pub fn exit_status(&mut self, program: &str) -> Option<std::process::ExitStatus> {
        self.children
            .get_mut(program)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until a program's process ends by itself (a crash point, say) and forgets it.
    pub async fn wait_exit(
        &mut self,
        program: &str,
        deadline: Duration,
    ) -> std::process::ExitStatus {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(st) = self.exit_status(program) {
                self.children.remove(program);
                return st;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{program} still running after {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The programs whose process has ended although the test did not stop them.
    pub fn exited(&mut self) -> Vec<String> {
        let names: Vec<&'static str> = self.children.keys().copied().collect();
        names
            .into_iter()
            .filter_map(|p| self.exit_status(p).map(|st| format!("{p} ({st})")))
            .collect()
    }

    pub fn port(&self, program: &str) -> u16 {
        self.settings.ports.of(program)
    }

    pub async fn wait_ready(&self, deadline: Duration) {
        let url = format!("{}/health/ready", self.base);
        let http = self.http.clone();
        eventually("every program is ready", deadline, || {
            let http = http.clone();
            let url = url.clone();
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        })
        .await;
    }

    /// Waits until the program instance on `port` (one the cluster did not start with, say)
    /// answers its readiness with 2xx.
    pub async fn wait_instance_ready(&self, port: u16) {
        let (http, url) = (&self.http, format!("http://127.0.0.1:{port}/health/ready"));
        eventually("the instance is ready", Duration::from_secs(60), || async {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Every log line the programs wrote so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for p in shop::names() {
            all.push_str(
                &std::fs::read_to_string(self.log_dir.join(format!("{p}.log"))).unwrap_or_default(),
            );
        }
        all
    }

    pub async fn broker(&self) -> std::sync::Arc<Broker> {
        Broker::connect(
            BrokerConfig::for_tools(&self.config, "e2e-test", shop::topology()),
            std::sync::Arc::new(Metrics::new("e2e")),
        )
        .await
        .unwrap()
    }

    // ---- typed API helpers ----

    /// The typed client of the public API at this shop's gateway.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(self.http.clone(), self.base.clone())
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let a = self
            .api()
            .call(method, path, token, body.as_ref())
            .await
            .expect("gateway answers");
        (a.status, a.body)
    }

    pub async fn register(&self, email: &str, password: &str) -> (StatusCode, Value) {
        let a = self.api().register(email, password, "Test User").await;
        let a = a.expect("gateway answers");
        (a.status, a.body)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let a = self
            .api()
            .login(email, password)
            .await
            .expect("gateway answers");
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.body["token"].as_str().unwrap().to_string()
    }

    /// A new user, logged in: (token, user id).
    pub async fn user(&self) -> (String, Uuid) {
        let email = format!("u{}@shop.test", &Uuid::new_v4().simple().to_string()[..10]);
        let (s, body) = self.register(&email, "correct-horse-battery").await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        (
            self.login(&email, "correct-horse-battery").await,
            body["id"].as_str().unwrap().parse().unwrap(),
        )
    }

    pub async fn admin(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a product with stock and waits until inventory knows it.
    pub async fn product(&self, admin: &str, price_cents: i64, stock: i64) -> Uuid {
        let sku = format!("SKU-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let product = NewProduct {
            sku: &sku,
            name: "Thing",
            description: "A thing",
            price_cents,
            initial_stock: stock,
        };
        let api = self.api();
        let a = api.create_product(admin, &product).await.unwrap();
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let id = a.id().unwrap();
        let api = &api;
        eventually(
            "inventory knows the product",
            Duration::from_secs(20),
            || async move { api.stock(id).await.unwrap().status == StatusCode::OK },
        )
        .await;
        id
    }

    pub async fn stock(&self, product: Uuid) -> (i64, i64) {
        let a = self.api().stock(product).await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        (
            a.body["available"].as_i64().unwrap(),
            a.body["reserved"].as_i64().unwrap(),
        )
    }

    pub async fn order(&self, token: &str, items: &[(Uuid, i32)], payment_token: &str) -> Value {
        let a = self.api().place_order(token, items, payment_token).await;
        let a = a.unwrap();
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        assert_eq!(a.body["status"], "PENDING");
        a.body
    }

    /// A new user with a confirmed order of a new product: (user's token, user id, product,
    /// order id).
    pub async fn confirmed_order(&self) -> (String, Uuid, Uuid, String) {
        let admin = self.admin().await;
        let (token, user_id) = self.user().await;
        let product = self.product(&admin, 100, 1000).await;
        let order = self.order(&token, &[(product, 1)], "tok_visa").await;
        let order = order["id"].as_str().unwrap().to_string();
        let done = self.settled(&token, &order, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "CONFIRMED", "{done}");
        (token, user_id, product, order)
    }

    /// Polls an order until it is CONFIRMED or CANCELLED.
    pub async fn settled(&self, token: &str, order_id: &str, deadline: Duration) -> Value {
        let until = tokio::time::Instant::now() + deadline;
        let (api, id) = (self.api(), order_id.parse().expect("an order id"));
        loop {
            let a = api.order(token, id).await.unwrap();
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            if a.body["status"] == "CONFIRMED" || a.body["status"] == "CANCELLED" {
                return a.body;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "order {order_id} still {} after {deadline:?}",
                a.body["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the audit passes (the system settles after the last order), and returns it.
    pub async fn audit_clean(&self) -> shop::audit::Report {
        let broker = self.broker().await;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = shop::audit::run(&self.config, &self.settings, Some(&broker))
                .await
                .unwrap();
            if r.ok() && r.dead_letters.is_empty() {
                broker.close().await;
                return r;
            }
            if tokio::time::Instant::now() > until {
                panic!("the invariants do not hold:\n{}", r.table());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// SIGTERM without unsafe code: the `kill` command.
fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let config = self.config.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = db::drop_database(&config.database_url).await;
                let _ = db::drop_roles(&config, &role_names()).await;
                delete_topology(&config, &shop::topology()).await;
                delete_redis_keys(&config).await;
            });
        })
        .join();
    }
}
