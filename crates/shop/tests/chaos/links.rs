//! Network faults between hosts: each saga service (orders, inventory, payments) reaches one
//! server (RabbitMQ, PostgreSQL or Redis) through a TCP proxy of its own, and that link
//! fails for 30 s while orders flow, in one of two ways:
//!
//! - **reset**: every open connection is closed at once and new ones are closed as soon as
//!   they are accepted, as when a host's link goes down;
//! - **blackhole**: connections stay open and nothing passes either way, as over a link that
//!   silently drops packets: nothing answers and nothing fails, which only heartbeats and
//!   timeouts notice; once it heals, what was held arrives (as TCP retransmits it), late.
//!
//! Each service must notice within 15 s (its readiness answers 503: a load balancer takes it
//! out, nothing hangs forever) and, once the link heals, recover by itself with nothing lost
//! (the audit, as in every scenario). The detection and recovery times per service are
//! printed and recorded in the report.

use std::time::Duration;

use reqwest::StatusCode;
use shop_platform::testkit::Proxy;
use tokio::time::Instant;

use crate::harness::{Chaos, Expect};

/// The services whose links fail.
const SAGA: [&str; 3] = ["orders", "inventory", "payments"];
/// How long a link stays down.
const OUTAGE: Duration = Duration::from_secs(30);
/// A failed link must show in the service's readiness within this.
const DETECT_WITHIN: Duration = Duration::from_secs(15);
/// After the heal, the service must be ready again within this.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Link {
    Broker,
    Postgres,
    Redis,
}

#[derive(Clone, Copy, PartialEq)]
enum Cut {
    Reset,
    Blackhole,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Broker => "RabbitMQ",
            Link::Postgres => "PostgreSQL",
            Link::Redis => "Redis",
        }
    }

    /// The variable that points a program at this server.
    fn variable(self) -> &'static str {
        match self {
            Link::Broker => "SHOP_AMQP_URL",
            Link::Postgres => "SHOP_DATABASE_URL",
            Link::Redis => "SHOP_REDIS_URL",
        }
    }

    /// The server's URL for the programs, and its port.
    fn target(self, c: &Chaos) -> (String, u16) {
        let s = &c.servers;
        match self {
            Link::Broker => (s.rabbit.url(), s.rabbit.port),
            Link::Postgres => (s.postgres.url(), s.postgres.port),
            Link::Redis => (s.redis.url(), s.redis.port),
        }
    }
}

/// The readiness status of the service on `port` (`None`: no answer within 5 s).
async fn readiness(c: &Chaos, port: u16) -> Option<StatusCode> {
    c.cluster
        .http
        .get(format!("http://127.0.0.1:{port}/health/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// How long after `from` the service on `port` answers its readiness with `want` (or
/// `within` passed: `None`). Probes every 100 ms, each probe bounded.
async fn time_until(
    c: &Chaos,
    port: u16,
    want: fn(Option<StatusCode>) -> bool,
    from: Instant,
    within: Duration,
) -> Option<Duration> {
    loop {
        if want(readiness(c, port).await) {
            return Some(from.elapsed());
        }
        if from.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn link_fault(link: Link, cut: Cut) {
    let how = match cut {
        Cut::Reset => "reset",
        Cut::Blackhole => "blackholed",
    };
    let name = format!(
        "{} link of each saga service {how} for {} s",
        link.name(),
        OUTAGE.as_secs()
    );
    let turn = crate::turn().await;
    let mut c = Chaos::start(&name, &[]).await;
    // Each saga service again, through a proxy of its own.
    let (url, port) = link.target(&c);
    let target = format!("127.0.0.1:{port}");
    let mut proxies = Vec::new();
    for service in SAGA {
        let proxy = Proxy::start(&target).await;
        let proxied = url.replace(&target, &format!("127.0.0.1:{}", proxy.port));
        c.cluster.terminate(service);
        c.cluster
            .spawn_with(service, &[(link.variable(), proxied.as_str())]);
        c.cluster.wait_instance_ready(c.cluster.port(service)).await;
        proxies.push(proxy);
    }
    c.start_trickle().await;
    c.accepted_more(10, Duration::from_secs(60), "orders before the fault")
        .await;

    c.fault(&format!(
        "every saga service's link to {} {how}",
        link.name()
    ));
    let at = Instant::now();
    for p in &proxies {
        match cut {
            Cut::Reset => {
                p.refuse(true);
                p.cut();
            }
            Cut::Blackhole => p.blackhole(true),
        }
    }
    let down = |s: Option<StatusCode>| s != Some(StatusCode::OK);
    let detected = futures::future::join_all(
        SAGA.iter()
            .map(|s| time_until(&c, c.cluster.port(s), down, at, DETECT_WITHIN)),
    )
    .await;
    tokio::time::sleep_until(at + OUTAGE).await;
    for p in &proxies {
        p.refuse(false);
        p.blackhole(false);
    }
    let healed = Instant::now();
    let up = |s: Option<StatusCode>| s == Some(StatusCode::OK);
    let recovered = futures::future::join_all(
        SAGA.iter()
            .map(|s| time_until(&c, c.cluster.port(s), up, healed, RECOVER_WITHIN)),
    )
    .await;
    c.healed(&format!(
        "the links pass again after {} s",
        OUTAGE.as_secs()
    ));

    let secs =
        |d: &Option<Duration>| d.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    for ((service, detected), recovered) in SAGA.iter().zip(&detected).zip(&recovered) {
        c.note(format!(
            "{service}: {how} link to {} seen (readiness 503) after {}, ready again {} after the heal",
            link.name(),
            secs(detected),
            secs(recovered)
        ));
        if detected.is_none() {
            c.violation(format!(
                "{service} did not notice its {how} link to {} within {} s",
                link.name(),
                DETECT_WITHIN.as_secs()
            ));
        }
        if recovered.is_none() {
            c.violation(format!(
                "{service} not ready {} s after its link to {} healed",
                RECOVER_WITHIN.as_secs(),
                link.name()
            ));
        }
    }
    c.finish(Expect::normal()).await;
    drop(c);
    drop(proxies);
    drop(turn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn broker_link_reset() {
    link_fault(Link::Broker, Cut::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn broker_link_blackholed() {
    link_fault(Link::Broker, Cut::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn postgres_link_reset() {
    link_fault(Link::Postgres, Cut::Reset).await;
}

/// In the CI subset: the fault that needs timeouts everywhere (a query that never comes back
/// holds its connection and its locks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_link_blackholed() {
    link_fault(Link::Postgres, Cut::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn redis_link_reset() {
    link_fault(Link::Redis, Cut::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn redis_link_blackholed() {
    link_fault(Link::Redis, Cut::Blackhole).await;
}
