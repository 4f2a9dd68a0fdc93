//! One scenario's world: private servers, every program as its own process against them, a
//! catalogue, a few shoppers and the order trickle; then, after the fault, the settling and
//! the verdict: the audit of the invariants of docs/architecture.md, dead letters, accepted orders, crashed
//! programs, and the figures printed and appended to the report.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::json;
use shop_platform::{
    dlq::{self, DeadLetter},
    testkit::{eventually, eventually_some},
};
use sqlx::{Connection as _, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    cluster::Cluster,
    load::{Catalogue, Habits, Shopper, Tally, Trickle},
    report,
    servers::Servers,
};

/// Time between two orders of one shopper.
const PACE: Duration = Duration::from_millis(300);
/// Shoppers placing orders at once.
const SHOPPERS: usize = 4;
/// The saga deadline in these clusters: long enough that no fault of a scenario should reach
/// it, so an order cancelled for `timeout` means an event was lost or stuck.
const SAGA_DEADLINE_MS: &str = "45000";
/// Orders the trickle must place after the heal before it stops.
const AFTER_HEAL: usize = 20;
/// How long the system may take to settle after the fault is healed.
const SETTLE_DEADLINE: Duration = Duration::from_secs(150);

/// What a scenario expects besides the invariants.
#[derive(Default)]
pub struct Expect {
    /// Dead letters that must be there, by message id, each with a fragment its reason must
    /// contain; any other dead letter is unexplained. Empty: none may exist.
    pub dead_letters: BTreeMap<String, String>,
    /// At least this many redeliveries suppressed by the inboxes.
    pub min_duplicates: u64,
    /// Orders must be accepted again after the heal.
    pub orders_after_heal: bool,
}

impl Expect {
    pub fn normal() -> Expect {
        Expect {
            orders_after_heal: true,
            ..Default::default()
        }
    }
}

/// A scenario's figures.
#[derive(Debug, Default)]
pub struct Outcome {
    pub scenario: String,
    pub accepted: usize,
    pub refused: BTreeMap<String, u64>,
    pub confirmed: i64,
    pub cancelled: i64,
    pub violations: Vec<String>,
    pub dead_letters: usize,
    pub duplicates: u64,
    pub settle: Option<Duration>,
    pub fault: Duration,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

pub struct Chaos {
    pub name: String,
    /// Dropped before `servers` (fields drop in order): its cleanup needs them.
    pub cluster: Cluster,
    pub servers: Servers,
    pub shoppers: Vec<Shopper>,
    pub catalogue: Catalogue,
    /// The gateways the trickle spreads its shoppers over (the cluster's own at first).
    pub gateways: Vec<String>,
    /// How the trickle's shoppers behave.
    pub habits: Habits,
    trickle: Option<Trickle>,
    tally: Option<Tally>,
    fault_at: Option<Instant>,
    healed_at: Option<Instant>,
    notes: Vec<String>,
    /// Violations a scenario found itself (reported with the audit's).
    violations: Vec<String>,
}

impl Drop for Chaos {
    fn drop(&mut self) {
        // A frozen broker would hang the cluster's cleanup.
        self.servers.unfreeze();
    }
}

impl Chaos {
    /// A scenario's start: its turn (scenarios never overlap; hold the guard until the end,
    /// after the `Chaos`, which is dropped first), then [`Chaos::start`] and the trickle of
    /// orders.
    pub async fn begin(
        name: &str,
        extra: &[(&str, &str)],
    ) -> (tokio::sync::MutexGuard<'static, ()>, Chaos) {
        let turn = crate::turn().await;
        let mut c = Chaos::start(name, extra).await;
        c.start_trickle().await;
        (turn, c)
    }

    /// Private servers, the seven programs (with `extra` environment), a catalogue and the
    /// shoppers.
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Chaos {
        Chaos::start_on(name, extra, 1).await
    }

    /// Like [`Chaos::start`], on a RabbitMQ cluster of `nodes` nodes.
    pub async fn start_on(name: &str, extra: &[(&str, &str)], nodes: usize) -> Chaos {
        let began = Instant::now();
        let servers = Servers::start_with(nodes).await;
        let mut env: Vec<(String, String)> = servers.env();
        env.push(("SHOP_SAGA_DEADLINE_MS".into(), SAGA_DEADLINE_MS.into()));
        // Least privilege in the broker too: each program as its own user.
        env.push((
            "SHOP_AMQP_PASSWORDS".into(),
            crate::cluster::amqp_passwords(),
        ));
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cluster = Cluster::start(&env_refs).await;
        let admin = cluster.admin().await;
        let mut products = Vec::new();
        for price in [1250, 799, 4200] {
            products.push(cluster.product(&admin, price, 1_000_000).await);
        }
        let scarce = cluster.product(&admin, 1999, 8).await;
        let mut shoppers = Vec::new();
        for _ in 0..SHOPPERS {
            let email = format!("c{}@shop.test", &Uuid::new_v4().simple().to_string()[..10]);
            let password = "correct-horse-battery".to_string();
            let (s, body) = cluster.register(&email, &password).await;
            assert_eq!(s, StatusCode::CREATED, "{body}");
            let token = cluster.login(&email, &password).await;
            shoppers.push(Shopper {
                email,
                password,
                token: Arc::new(Mutex::new(token)),
            });
        }
        println!(
            "[{name}] private servers (amqp {}, redis {}, postgres {}) and 7 programs ready in {:.1} s; logs in {}",
            servers.rabbit.port,
            servers.redis.port,
            servers.postgres.port,
            began.elapsed().as_secs_f64(),
            cluster.log_dir.display()
        );
        Chaos {
            name: name.to_string(),
            gateways: vec![cluster.base.clone()],
            habits: Habits::default(),
            cluster,
            servers,
            shoppers,
            catalogue: Catalogue { products, scarce },
            trickle: None,
            tally: None,
            fault_at: None,
            healed_at: None,
            notes: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Starts the order trickle and waits until orders go through end to end.
    pub async fn start_trickle(&mut self) {
        let seed = Uuid::new_v4().as_u128() as u64;
        self.trickle = Some(Trickle::start(
            &self.gateways,
            &self.shoppers,
            &self.catalogue,
            PACE,
            seed,
            self.habits.clone(),
        ));
        let url = self.cluster.config.database_url.clone();
        let trickle = self.trickle.as_ref().unwrap();
        eventually(
            "the trickle's first orders are accepted and settled",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                let accepted = trickle.accepted();
                async move { accepted >= 8 && count(&url, "status = 'CONFIRMED'").await >= 3 }
            },
        )
        .await;
    }

    pub fn accepted(&self) -> usize {
        self.trickle.as_ref().map_or(0, Trickle::accepted)
    }

    /// How long until every order accepted so far is CONFIRMED or CANCELLED (`None`: not
    /// within `deadline`); the trickle goes on meanwhile.
    pub async fn settled_within(&self, deadline: Duration) -> Option<Duration> {
        let ids = self.trickle.as_ref().map(Trickle::accepted_ids)?;
        let (from, url) = (Instant::now(), &self.cluster.config.database_url);
        loop {
            if let Ok(mut db) = PgConnection::connect(url).await {
                let open: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(*) FROM orders.orders
                     WHERE id = ANY($1) AND status NOT IN ('CONFIRMED', 'CANCELLED')",
                )
                .bind(&ids)
                .fetch_one(&mut db)
                .await;
                let _ = db.close().await;
                if matches!(open, Ok(0)) {
                    return Some(from.elapsed());
                }
            }
            if from.elapsed() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn refused(&self) -> u64 {
        self.trickle.as_ref().map_or(0, Trickle::refused)
    }

    /// 5xx answers the shoppers got so far (orders and browsing).
    pub fn server_errors(&self) -> u64 {
        self.trickle.as_ref().map_or(0, Trickle::server_errors)
    }

    /// Waits until `n` more orders are accepted (the trickle keeps going during the fault).
    pub async fn accepted_more(&self, n: usize, deadline: Duration, what: &str) {
        let from = self.accepted();
        eventually(
            what,
            deadline,
            || async move { self.accepted() >= from + n },
        )
        .await;
    }

    /// Waits until `n` more order attempts are refused (the fault is visible to clients).
    pub async fn refused_more(&self, n: u64, deadline: Duration, what: &str) {
        let from = self.refused();
        eventually(what, deadline, || async move { self.refused() >= from + n }).await;
    }

    /// Marks the start of the fault.
    pub fn fault(&mut self, what: &str) {
        println!(
            "[{}] fault: {what} (after {} orders accepted)",
            self.name,
            self.accepted()
        );
        self.fault_at = Some(Instant::now());
    }

    /// Marks the fault as healed (the server is back, the program restarted...).
    pub fn healed(&mut self, what: &str) {
        let at = Instant::now();
        let lasted = self.fault_at.map(|f| at - f).unwrap_or_default();
        println!(
            "[{}] healed: {what} (fault lasted {:.1} s)",
            self.name,
            lasted.as_secs_f64()
        );
        self.healed_at = Some(at);
    }

    /// Records a violation found by the scenario itself; `finish` fails on it.
    pub fn violation(&mut self, v: impl Into<String>) {
        let v = v.into();
        println!("[{}] VIOLATION: {v}", self.name);
        self.violations.push(v);
    }

    /// Waits until the audit is clean and no dead letter exists (before a fault that comes
    /// after the fact).
    pub async fn wait_clean(&self, deadline: Duration) {
        let broker = self.cluster.broker().await;
        let (config, settings) = (&self.cluster.config, &self.cluster.settings);
        let broker_ref = &broker;
        eventually("the audit is clean", deadline, || async move {
            let audit = shop::audit::run(config, settings, Some(broker_ref)).await;
            let dead = dlq::list(broker_ref, None).await;
            matches!((audit, dead), (Ok(a), Ok(d)) if a.ok() && d.is_empty())
        })
        .await;
        broker.close().await;
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("[{}] {note}", self.name);
        self.notes.push(note);
    }

    /// Stops the trickle (if running) and keeps what it saw.
    pub async fn stop_trickle(&mut self) {
        if let Some(t) = self.trickle.take() {
            self.tally = Some(t.stop().await);
        }
    }

    /// The depth of a service's work queue.
    pub async fn queue_depth(&self, service: &str) -> u32 {
        let broker = self.cluster.broker().await;
        let ch = broker.channel().await.expect("channel");
        let queue = broker.names().queue(service);
        let depth = shop_platform::amqp::depth(&ch, queue.as_str())
            .await
            .expect("queue exists");
        let _ = ch.close(200, "depth".into()).await;
        broker.close().await;
        depth
    }

    /// Waits until `service`'s work queue holds at least `n` messages; returns its depth.
    pub async fn piles_up(&self, service: &str, n: u32) -> u32 {
        let what = format!("{service}'s queue to hold {n} messages");
        eventually_some(&what, Duration::from_secs(60), || async {
            Some(self.queue_depth(service).await).filter(|depth| *depth >= n)
        })
        .await
    }

    /// Waits until `service`'s work queue is empty.
    pub async fn drained(&self, service: &str) {
        let what = format!("{service}'s queue to be empty");
        let empty = || async { self.queue_depth(service).await == 0 };
        eventually(&what, Duration::from_secs(60), empty).await;
    }

    /// Sum of a metric (all its label sets) over every program's `/metrics`.
    pub async fn metric_sum(&self, name: &str) -> u64 {
        let mut total = 0.0;
        for p in shop::names() {
            let url = format!("http://127.0.0.1:{}/metrics", self.cluster.port(p));
            let Ok(r) = self.cluster.http.get(&url).send().await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            total += shop_platform::metrics::sample_sum(&text, name, &[]);
        }
        total as u64
    }

    /// Redeliveries suppressed by the inboxes, over every program.
    pub async fn duplicates(&self) -> u64 {
        self.metric_sum("shop_messages_duplicate_total").await
    }

    /// A snapshot of every row of every service's tables (to show that something changed
    /// nothing).
    pub async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut db = PgConnection::connect(&self.cluster.config.database_url)
            .await
            .unwrap();
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_schema::text, table_name::text FROM information_schema.tables
             WHERE table_schema IN ('users','products','inventory','orders','payments','notifications')
               AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'
             ORDER BY 1, 2",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        let mut snap = BTreeMap::new();
        for (schema, table) in tables {
            let rows: String = sqlx::query_scalar(&format!(
                "SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM {schema}.{table} t"
            ))
            .fetch_one(&mut db)
            .await
            .unwrap();
            snap.insert(format!("{schema}.{table}"), rows);
        }
        let _ = db.close().await;
        snap
    }

    /// Waits for the system to settle, checks everything, prints and records the figures,
    /// and fails the test if anything is wrong.
    pub async fn finish(&mut self, expect: Expect) -> Outcome {
        let mut o = Outcome {
            scenario: self.name.clone(),
            violations: std::mem::take(&mut self.violations),
            ..Default::default()
        };
        let healed_at = self.healed_at.unwrap_or_else(Instant::now);
        o.fault = self
            .fault_at
            .map(|f| healed_at.saturating_duration_since(f))
            .unwrap_or_default();
        // Keep ordering a little after the heal: the shop must take orders again.
        if self.trickle.is_some() {
            let from = self.accepted();
            let until = Instant::now() + Duration::from_secs(60);
            while self.accepted() < from + AFTER_HEAL {
                if Instant::now() > until {
                    if expect.orders_after_heal {
                        o.violations.push(format!(
                            "no orders accepted in 60 s after the heal ({} more)",
                            self.accepted() - from
                        ));
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.stop_trickle().await;
        let tally = self.tally.take().unwrap_or_default();
        o.accepted = tally.accepted.len();
        o.refused = tally.refused.clone();
        if let Some(n) = tally.refused.get("500") {
            o.violations.push(format!(
                "{n} orders answered 500 (a dependency that is down is a 503)"
            ));
        }
        if tally.relogins > 0 {
            self.note(format!("{} shoppers logged in again", tally.relogins));
        }
        if tally.failovers > 0 {
            self.note(format!(
                "{} requests sent again to another gateway after no answer",
                tally.failovers
            ));
        }
        if !tally.browse_refused.is_empty() {
            self.note(format!(
                "browsing answers other than 2xx: {:?}",
                tally.browse_refused
            ));
        }

        // Settle: every program ready, and the audit clean (dead letters as expected).
        let broker = self.cluster.broker().await;
        let mut last = None;
        let mut last_dead: Vec<DeadLetter> = Vec::new();
        loop {
            let ready = self
                .cluster
                .http
                .get(format!("{}/health/ready", self.cluster.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                let audit =
                    shop::audit::run(&self.cluster.config, &self.cluster.settings, Some(&broker))
                        .await;
                let dead = dlq::list(&broker, None).await;
                if let (Ok(audit), Ok(dead)) = (audit, dead) {
                    let ids: BTreeSet<&str> = dead.iter().map(|d| d.message_id.as_str()).collect();
                    let expected: BTreeSet<&str> =
                        expect.dead_letters.keys().map(String::as_str).collect();
                    let settled = audit.ok() && ids == expected;
                    last = Some(audit);
                    last_dead = dead;
                    if settled {
                        o.settle = Some(healed_at.elapsed());
                        break;
                    }
                }
            }
            if healed_at.elapsed() > SETTLE_DEADLINE {
                o.violations.push(format!(
                    "not settled {} s after the heal",
                    SETTLE_DEADLINE.as_secs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        broker.close().await;
        match &last {
            Some(audit) => {
                o.confirmed = audit.confirmed;
                o.cancelled = audit.cancelled;
                o.violations.extend(audit.violations.iter().cloned());
                if o.settle.is_none() {
                    println!("[{}] last audit:\n{}", self.name, audit.table());
                }
            }
            None => o.violations.push("the audit never ran".into()),
        }

        // Dead letters: exactly the expected ones, each with its reason.
        o.dead_letters = last_dead.len();
        for d in &last_dead {
            match expect.dead_letters.get(&d.message_id) {
                None => o.violations.push(format!(
                    "unexplained dead letter in {}: {} {} ({} attempts): {}",
                    d.service, d.event_type, d.message_id, d.attempts, d.reason
                )),
                Some(fragment) if !d.reason.contains(fragment.as_str()) => {
                    o.violations.push(format!(
                        "dead letter {} in {} has reason {:?}, expected one containing {fragment:?}",
                        d.message_id, d.service, d.reason
                    ))
                }
                Some(_) => {}
            }
        }
        let seen: BTreeSet<&str> = last_dead.iter().map(|d| d.message_id.as_str()).collect();
        for id in expect.dead_letters.keys() {
            if !seen.contains(id.as_str()) {
                o.violations
                    .push(format!("message {id} was not dead-lettered"));
            }
        }

        // Every accepted order exists (and, by the audit, is terminal); none timed out.
        let url = &self.cluster.config.database_url;
        let mut db = PgConnection::connect(url).await.unwrap();
        let ids: Vec<Uuid> = tally.accepted.iter().map(|(id, _)| *id).collect();
        let found: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM orders.orders WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut db)
                .await
                .unwrap();
        let found: BTreeSet<Uuid> = found.into_iter().collect();
        let lost = ids.iter().filter(|id| !found.contains(id)).count();
        if lost > 0 {
            o.violations.push(format!(
                "{lost} accepted orders are missing from the database"
            ));
        }
        let timeouts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders.orders WHERE cancel_reason = 'timeout'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        let _ = db.close().await;
        if timeouts > 0 {
            o.violations.push(format!(
                "{timeouts} orders cancelled for timeout (an event was late by the saga deadline)"
            ));
        }

        // No program died by itself, none panicked.
        for p in self.cluster.exited() {
            o.violations.push(format!("program exited by itself: {p}"));
        }
        let panics = self
            .cluster
            .logs()
            .lines()
            .filter(|l| l.contains("panicked"))
            .count();
        if panics > 0 {
            o.violations
                .push(format!("{panics} panics in the programs' logs"));
        }

        o.duplicates = self.duplicates().await;
        if o.duplicates < expect.min_duplicates {
            o.violations.push(format!(
                "{} duplicates suppressed, expected at least {}",
                o.duplicates, expect.min_duplicates
            ));
        }
        o.notes = std::mem::take(&mut self.notes);
        report::print(&o);
        report::append(&o);
        assert!(
            o.passed(),
            "[{}] {} violations:\n  {}\n(logs in {})",
            self.name,
            o.violations.len(),
            o.violations.join("\n  "),
            self.cluster.log_dir.display()
        );
        o
    }

    // ---- small API helpers used by scenarios ----

    pub async fn get(&self, path: &str, token: Option<&str>) -> StatusCode {
        let mut req = self
            .cluster
            .http
            .request(Method::GET, format!("{}{path}", self.cluster.base))
            .timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) => r.status(),
            Err(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> StatusCode {
        let mut req = self
            .cluster
            .http
            .request(Method::POST, format!("{}{path}", self.cluster.base))
            .timeout(Duration::from_secs(10))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) => r.status(),
            Err(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn shopper_token(&self, i: usize) -> String {
        self.shoppers[i].token.lock().unwrap().clone()
    }

    pub fn login_body(&self, i: usize) -> serde_json::Value {
        json!({"email": self.shoppers[i].email, "password": self.shoppers[i].password})
    }
}

/// `SELECT count(*) FROM orders.orders WHERE <cond>` (0 if the database does not answer).
pub async fn count(url: &str, cond: &str) -> i64 {
    let Ok(mut db) = PgConnection::connect(url).await else {
        return 0;
    };
    let n = sqlx::query_scalar(&format!("SELECT count(*) FROM orders.orders WHERE {cond}"))
        .fetch_one(&mut db)
        .await
        .unwrap_or(0);
    let _ = db.close().await;
    n
}
