//! Test support (behind the `testkit` feature, for the crates' tests only): an isolated
//! environment on the real servers (own database, own exchange/queue namespace), removed
//! afterwards even when the test fails; one service started in it ([`TestService`]); a TCP
//! proxy to cut connections; and waiting on conditions with a deadline instead of sleeping.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    Envelope,
    amqp::{Broker, BrokerConfig},
    bus::Publisher as _,
    config::Config,
    db,
    metrics::{self, Metrics},
    service::{Fleet, Program, Running},
    topology::{self, Identity, Topology},
};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};

pub mod otlp;
pub mod smtp;

/// The Python of a virtualenv `target/<venv>` that can `import <module>`, made on first use
/// with `pip install <requirement>` (PyPI): the test tools written in Python (aiosmtpd,
/// kubernetes-validate), pinned, and never installed into the machine's own Python.
pub fn python_with(venv: &str, requirement: &str, module: &str) -> std::path::PathBuf {
    use std::{path::Path, process::Command, process::Stdio};
    static MADE: Mutex<()> = Mutex::new(());
    let _once = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join(venv);
    let python = dir.join("bin/python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return python;
    }
    // Built beside and moved in place, so that test processes running at once never see a
    // half-made one.
    let tmp = target.join(format!("{venv}.{}", std::process::id()));
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("running python3");
        assert!(
            out.status.success(),
            "installing {requirement} for the tests failed (python3 with venv and pip is \
             needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&tmp));
    run(Command::new(tmp.join("bin/pip")).args(["install", "--quiet", requirement]));
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process was first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(has(&python), "{} cannot import {module}", python.display());
    python
}

/// A port nobody listens on right now, never the same twice in one test process, and
/// below the kernel's ephemeral range (32768 and up on Linux), where the outgoing
/// connections of other tests take their local ports: a port from `bind(0)` could be taken
/// by one of those, or handed to two clusters, between this check and the program's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test process starts at its own place in the range.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN);
}

/// Polls `cond` every 25 ms until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, deadline, || {
        let holds = cond();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// Polls `probe` every 25 ms until it gives a value, and returns it; panics with `what`
/// once `deadline` has passed.
pub async fn eventually_some<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub struct TestEnv {
    pub config: Config,
    /// The programs under test: their bindings are declared, their queues removed afterwards.
    pub topology: Topology,
    /// The broker itself (the test's own URL may go through a proxy that is gone by cleanup).
    admin_amqp_url: String,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
}

impl TestEnv {
    /// A fresh namespace and database for the service `identity` (its schema, its queue).
    pub async fn new(identity: &'static Identity, tweak: impl FnOnce(&mut Config)) -> TestEnv {
        let schema = identity.name;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ns = format!("t{}", &id[..12]);
        let mut config = Config::defaults();
        config.namespace = ns.clone();
        config.database_url = format!("postgres://postgres@127.0.0.1:5432/shop_{ns}");
        config.retry_delays_ms = vec![100, 200];
        config.assertion_keys = Some(crate::assertion::Keys::generate());
        // Tests stop their services at once (the drain is tested end to end).
        config.drain_secs = Some(0);
        let admin_amqp_url = config.amqp_url.clone();
        tweak(&mut config);
        let pool = db::connect(&config.database_url, schema, 5)
            .await
            .expect("database");
        TestEnv {
            config,
            topology: Topology::new([identity]),
            admin_amqp_url,
            pool,
            metrics: Arc::new(Metrics::new(schema)),
        }
    }

    /// Starts a program in this process on a free port, against the real servers.
    pub async fn start(&self, program: Arc<dyn Program>) -> Running {
        self.start_with(program, self.config.clone()).await
    }

    /// Starts a program with its own configuration (e.g. a server reached through a
    /// [`Proxy`]), while the environment keeps the real servers for inspection and cleanup.
    pub async fn start_with(&self, program: Arc<dyn Program>, config: Config) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        crate::service::start(
            program,
            config,
            Fleet::new(self.topology.clone(), []),
            listener,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("program starts")
    }

    /// A Redis connection (keys must be made with `config.redis_key`, so cleanup finds them).
    pub async fn redis(&self) -> crate::redis_util::RedisConn {
        crate::redis_util::connect(&self.config.redis_url)
            .await
            .expect("redis")
    }

    pub async fn broker(&self) -> Arc<Broker> {
        Broker::connect(
            BrokerConfig::from_config(&self.config, "test", self.topology.clone()),
            self.metrics.clone(),
        )
        .await
        .expect("broker")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let mut config = self.config.clone();
        config.amqp_url = self.admin_amqp_url.clone();
        let pool = self.pool.clone();
        let topology = self.topology.clone();
        // Clean up on a thread of its own: this runs inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                // No pool.close(): tasks of the (blocked) test runtime may hold connections;
                // dropping the database WITH (FORCE) ends them.
                drop(pool);
                let _ = db::drop_database(&config.database_url).await;
                delete_topology(&config, &topology).await;
                delete_redis_keys(&config).await;
            });
        })
        .join();
    }
}

/// Deletes every Redis key of a namespace.
pub async fn delete_redis_keys(config: &Config) {
    let Ok(client) = redis::Client::open(config.redis_url.as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let pattern = config.redis_key("*");
    let keys: Vec<String> = match redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
    {
        Ok(k) => k,
        Err(_) => return,
    };
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
}

/// Deletes every queue and the exchange of a namespace.
pub async fn delete_topology(config: &Config, topology: &Topology) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let first = config.amqp_urls().into_iter().next().unwrap_or_default();
    let Ok(conn) = lapin::Connection::connect(&first, Default::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let names = topology::Names::new(&config.namespace);
    for svc in topology.consuming_services() {
        let mut queues = vec![names.queue(svc), names.dead_letter_queue(svc)];
        for i in 1..=config.retry_delays_ms.len() {
            queues.push(names.retry_queue(svc, i));
        }
        for q in queues {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = ch
        .exchange_delete(
            names.exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "cleanup".into()).await;
}

/// One service started on the real servers in a [`TestEnv`] of its own, with a broker
/// connection to publish to it and an HTTP client: the one way a crate's tests run their
/// service.
pub struct TestService {
    pub env: TestEnv,
    pub running: Running,
    pub broker: Arc<Broker>,
    pub http: reqwest::Client,
}

impl TestService {
    /// Starts `program` in a fresh environment (`tweak` adjusts the kernel's settings).
    pub async fn start(program: Arc<dyn Program>, tweak: impl FnOnce(&mut Config)) -> Self {
        let env = TestEnv::new(program.identity(), tweak).await;
        let config = env.config.clone();
        Self::start_in(env, program, config).await
    }

    /// Starts `program` with `config` in `env` (see [`TestEnv::start_with`]).
    pub async fn start_in(env: TestEnv, program: Arc<dyn Program>, config: Config) -> Self {
        let running = env.start_with(program, config).await;
        let broker = env.broker().await;
        TestService {
            env,
            running,
            broker,
            http: reqwest::Client::builder()
                // Below the servers' idle timeout (see `Config::client_idle_timeout`).
                .pool_idle_timeout(Config::defaults().client_idle_timeout())
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Stops the service gracefully (and the test's broker connection).
    pub async fn stop(self) {
        self.running
            .stop()
            .await
            .expect("the service stops cleanly");
        self.broker.close().await;
    }

    /// An assertion for this service that a user calls it (as the gateway signs it).
    pub fn user_assertion(&self, user_id: uuid::Uuid, role: &str) -> String {
        self.keys().sign(
            crate::assertion::Subject::User {
                id: user_id,
                role: role.into(),
            },
            self.running.name,
            None,
            None,
            None,
        )
    }

    /// An assertion for this service that another program (`name`) calls it.
    pub fn service_assertion(&self, name: &str) -> String {
        self.keys().sign(
            crate::assertion::Subject::Service { name: name.into() },
            self.running.name,
            None,
            None,
            None,
        )
    }

    /// The keys of this environment.
    pub fn keys(&self) -> crate::assertion::Keys {
        self.env.config.assertion_keys().expect("the test keys")
    }

    /// The service's URL for `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    /// Publishes an event to the shop's exchange, with confirms.
    pub async fn publish(&self, event: &Envelope) {
        self.broker.publish(event).await.expect("published");
    }

    /// Publishes events in one batch, with confirms.
    pub async fn publish_all(&self, events: &[Envelope]) {
        for r in self.broker.publish_batch(events).await {
            r.expect("published");
        }
    }

    /// The envelopes the service wrote to its outbox about `aggregate_id`, oldest first.
    pub async fn emitted(&self, aggregate_id: uuid::Uuid) -> Vec<Envelope> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM outbox WHERE (body::jsonb ->> 'aggregate_id')::uuid = $1 ORDER BY id",
        )
        .bind(aggregate_id)
        .fetch_all(&self.env.pool)
        .await
        .expect("outbox rows");
        rows.iter()
            .map(|b| Envelope::parse(b.as_bytes()).expect("outbox envelope"))
            .collect()
    }

    /// Waits until the service emitted `n` events about `aggregate_id`, and returns them.
    pub async fn wait_emitted(&self, aggregate_id: uuid::Uuid, n: usize) -> Vec<Envelope> {
        eventually(
            &format!("{n} events about {aggregate_id}"),
            WAIT,
            || async { self.emitted(aggregate_id).await.len() >= n },
        )
        .await;
        self.emitted(aggregate_id).await
    }

    /// A per-event-type counter of the service's `/metrics`.
    pub async fn metric(&self, name: &str, event_type: &str) -> u64 {
        let text = self.metrics_text().await;
        metrics::sample_sum(&text, name, &[("event_type", event_type)]) as u64
    }

    /// Counter `shop_<name>_total` of the program's `/metrics` (0 if not yet reported).
    pub async fn counter(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        metrics::sample_sum(&text, &format!("shop_{name}_total"), &[]) as u64
    }

    /// The program's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// Deliveries of `event_type` finished (handled or recognised as duplicates).
    pub async fn handled(&self, event_type: &str) -> u64 {
        self.metric("shop_messages_consumed_total", event_type)
            .await
            + self
                .metric("shop_messages_duplicate_total", event_type)
                .await
    }

    /// Waits until `n` deliveries of `event_type` were finished.
    pub async fn wait_handled(&self, event_type: &str, n: u64) {
        eventually(&format!("{n} {event_type} handled"), WAIT, || async {
            self.handled(event_type).await >= n
        })
        .await;
    }
}

/// Lets a crate's own test wrapper `struct Name(TestService, ...)` be used as the
/// [`TestService`] it wraps (its own helpers beside the shared ones).
#[macro_export]
macro_rules! deref_to_test_service {
    ($name:ident) => {
        impl std::ops::Deref for $name {
            type Target = $crate::testkit::TestService;
            fn deref(&self) -> &$crate::testkit::TestService {
                &self.0
            }
        }
    };
}

/// Sends a request and reads its answer as JSON (panicking, as a test does, if it cannot).
/// Every variant of a [`crate::named_variants!`] enum reads back from the string it shows, and
/// a string that is none of them is refused.
pub fn assert_named_variants<T>(all: &[T])
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    for v in all {
        let text = v.to_string();
        assert!(
            text.parse::<T>().is_ok_and(|back| back == *v),
            "{v:?} does not read back from {text:?}"
        );
    }
    assert!("lost".parse::<T>().is_err());
}

/// The status and problem body of an error answer, checking its content type.
pub async fn problem(r: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = r.status();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/problem+json"), "{ct}");
    (status, r.json().await.unwrap())
}

pub async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send()
        .await
        .expect("the request is answered")
        .json()
        .await
        .expect("the answer is JSON")
}

/// How long a [`TestService`] waits for the effects of a message.
pub const WAIT: Duration = Duration::from_secs(20);

/// A TCP proxy in front of a server, to cut or refuse connections of one test only.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    refuse: bool,
    conns: Vec<tokio::task::AbortHandle>,
    /// While set, nothing is forwarded in either direction (connections stay open).
    blackhole: Arc<std::sync::atomic::AtomicBool>,
}

/// Forwards `from` to `to` until either closes, holding what arrives while `hole` is set
/// until it is cleared: as over a link that drops every packet until it heals and TCP
/// retransmits them then (a stream never loses bytes in its middle).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while hole.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let target = target.to_string();
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if st.lock().unwrap().refuse {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let hole = st.lock().unwrap().blackhole.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, hole.clone()),
                            pump(out_read, in_write, hole),
                        );
                    }
                });
                st.lock().unwrap().conns.push(task.abort_handle());
            }
        });
        Proxy {
            port,
            state,
            accept,
        }
    }

    /// Closes every connection through the proxy now.
    pub fn cut(&self) {
        for c in self.state.lock().unwrap().conns.drain(..) {
            c.abort();
        }
    }

    /// While `on`, no byte passes the proxy (open connections and new ones): connections
    /// stay open and nothing answers, as over a link that silently drops packets. What was
    /// sent meanwhile arrives once it is off, as TCP retransmits it after a partition heals.
    pub fn blackhole(&self, on: bool) {
        self.state
            .lock()
            .unwrap()
            .blackhole
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refuses (closes at once) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.state.lock().unwrap().refuse = on;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
