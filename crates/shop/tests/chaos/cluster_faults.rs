//! Beyond one machine (the CI variant of issue 11's test): a 3-node RabbitMQ cluster with
//! quorum queues, two instances of orders, inventory and payments, orders flowing all along;
//! the node leading the most queues is killed (`kill -9`) and restarted, then every saga
//! service instance is restarted in turn (SIGTERM, wait until stopped, start, wait until
//! ready). Nothing may be lost or stuck, and both instances of each service must have handled
//! messages.

use std::time::Duration;

use shop_platform::{metrics::sample_sum, testkit::eventually};

use crate::{
    cluster::free_port,
    harness::{Chaos, Expect},
};

/// Stopped with a drain period: readiness 503 first, so callers move away.
const DRAIN: (&str, &str) = ("SHOP_DRAIN_SECS", "2");

/// The saga services that run twice.
const TWICE: [&str; 3] = ["orders", "inventory", "payments"];

/// The second instance's child name and port variable.
fn second(service: &str) -> (&'static str, String) {
    let name = match service {
        "orders" => "orders-2",
        "inventory" => "inventory-2",
        _ => "payments-2",
    };
    (name, format!("SHOP_{}_PORT", service.to_uppercase()))
}

/// Events handled by the instance on `port`, from its /metrics.
async fn handled(c: &Chaos, port: u16) -> f64 {
    let Ok(r) = c
        .cluster
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    sample_sum(&text, "shop_messages_consumed_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_cluster_loses_a_node_and_every_saga_service_restarts_in_turn() {
    let turn = crate::turn().await;
    let mut c = Chaos::start_on(
        "cluster: node killed, rolling restart",
        &[("SHOP_QUEUE_TYPE", "quorum")],
        3,
    )
    .await;
    // The second instance of each saga service, on a port of its own.
    let mut ports = Vec::new();
    for service in TWICE {
        let (name, var) = second(service);
        let port = free_port().to_string();
        c.cluster.spawn_command(
            name,
            &["run", service],
            &[(var.as_str(), port.as_str()), DRAIN],
        );
        ports.push((service, name, var, port));
    }
    for (_, _, _, port) in &ports {
        c.cluster.wait_instance_ready(port.parse().unwrap()).await;
    }
    // The gateway knows both orders instances; orders drains for 2 s when stopped, so the
    // gateway leaves an instance before it stops taking requests.
    let orders_urls = format!(
        "orders=http://127.0.0.1:{},orders=http://127.0.0.1:{}",
        c.cluster.port("orders"),
        ports[0].3
    );
    c.cluster.terminate("orders");
    c.cluster.spawn_with("orders", &[DRAIN]);
    c.cluster
        .wait_instance_ready(c.cluster.port("orders"))
        .await;
    c.cluster.terminate("gateway");
    c.cluster
        .spawn_with("gateway", &[("SHOP_SERVICE_URLS", orders_urls.as_str())]);
    c.cluster.wait_ready(Duration::from_secs(60)).await;
    c.start_trickle().await;

    // The node that leads the most queues dies, and comes back.
    let (at, most) = most_leading(&c).await;
    let victim = node(&c, at).node.clone();
    c.fault(&format!(
        "kill -9 of RabbitMQ node {victim}, which leads {most} queues"
    ));
    node(&c, at).kill().await.expect("the private node dies");
    c.accepted_more(
        10,
        Duration::from_secs(60),
        "orders accepted with a node down",
    )
    .await;
    node(&c, at).start().await.expect("the node starts again");

    // What each instance handled so far (its counters restart with it).
    let mut before = Vec::new();
    for (service, _, _, port) in &ports {
        before.push((
            handled(&c, c.cluster.port(service)).await,
            handled(&c, port.parse().unwrap()).await,
        ));
    }

    // Every saga service instance restarts in turn.
    for (service, name, var, port) in &ports {
        for (child, env) in [
            (*service, vec![DRAIN]),
            (*name, vec![(var.as_str(), port.as_str()), DRAIN]),
        ] {
            c.cluster.sigterm(child);
            let status = c.cluster.wait_exit(child, Duration::from_secs(30)).await;
            assert!(status.success(), "{child} stopped with {status}");
            c.cluster
                .spawn_command(child_static(child), &["run", service], &env);
            let port: u16 = match child == *service {
                true => c.cluster.port(service),
                false => port.parse().unwrap(),
            };
            c.cluster.wait_instance_ready(port).await;
            c.accepted_more(
                3,
                Duration::from_secs(60),
                "orders accepted between restarts",
            )
            .await;
        }
    }
    c.healed("the node is back and every saga service restarted");
    let refused = c.refused();
    c.note(format!(
        "answers other than 2xx seen by the shoppers through it all: {refused}"
    ));
    assert_eq!(refused, 0, "the shoppers saw errors during the restarts");

    c.finish(Expect::normal()).await;
    // Both instances of each saga service handled messages (before the restarts, or since).
    for ((service, name, _, port), (first_before, other_before)) in ports.iter().zip(before) {
        let first = first_before + handled(&c, c.cluster.port(service)).await;
        let other = other_before + handled(&c, port.parse().unwrap()).await;
        println!("[cluster] {service}: {first} / {other} events handled by its two instances");
        assert!(
            first > 0.0 && other > 0.0,
            "{service}: both instances handle messages ({first} / {other})"
        );
        c.cluster.terminate(name);
    }
    drop(c);
    drop(turn);
}

/// The scenario's RabbitMQ node number `at`.
fn node(c: &Chaos, at: usize) -> &shop::local::Rabbit {
    c.servers.rabbits().nth(at).expect("a node of the cluster")
}

/// A child's name as the cluster keeps it (`&'static`: the names of this file).
fn child_static(child: &str) -> &'static str {
    TWICE
        .iter()
        .copied()
        .chain(TWICE.iter().map(|s| second(s).0))
        .find(|n| *n == child)
        .expect("a child of this scenario")
}

/// Issue 11's whole test: two instances of every program (two gateways included, each its
/// own process and port) on a 3-node cluster with quorum queues, the shoppers spread over
/// both gateways, ordering and browsing all along; then, in order: `kill -9` of the node
/// leading the most queues and its restart, a rolling restart of every program instance, a
/// rolling restart of the three nodes. Each phase must settle (every order accepted so far
/// CONFIRMED or CANCELLED) within 30 s, no shopper may see a 5xx while the programs restart,
/// and both instances of every program must have served requests and handled messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn two_of_every_program_through_a_node_loss_and_rolling_restarts_of_programs_and_nodes() {
    const PHASE_SETTLE: Duration = Duration::from_secs(30);
    let turn = crate::turn().await;
    let mut c = Chaos::start_on(
        "scale-out: 2 of every program, node killed, rolling restarts",
        &[("SHOP_QUEUE_TYPE", "quorum"), DRAIN],
        3,
    )
    .await;
    // The second instance of every program, on ports of its own; every caller knows both
    // instances of each service.
    let mut fleet: Vec<Instance> = Vec::new();
    for program in shop::names() {
        fleet.push(Instance::first(&c, program));
        fleet.push(Instance::second(program));
    }
    let urls: Vec<String> = fleet
        .iter()
        .filter(|i| i.program != "gateway")
        .map(|i| format!("{}=http://127.0.0.1:{}", i.program, i.port))
        .collect();
    c.cluster.set_env("SHOP_SERVICE_URLS", &urls.join(","));
    for i in &fleet {
        if i.second || matches!(i.program, "gateway" | "orders") {
            i.restart(&mut c, false).await;
        }
    }
    c.cluster.wait_ready(Duration::from_secs(60)).await;
    let second_gateway = fleet.iter().find(|i| i.second && i.program == "gateway");
    c.gateways
        .push(format!("http://127.0.0.1:{}", second_gateway.unwrap().port));
    c.habits.browse = true;
    c.start_trickle().await;

    let mut phases: Vec<String> = Vec::new();
    let mut counted = vec![Counts::default(); fleet.len()];

    // 1. The node leading the most queues dies, and comes back.
    let began = (tokio::time::Instant::now(), c.accepted(), c.server_errors());
    let (victim, led) = most_leading(&c).await;
    c.fault(&format!(
        "kill -9 of RabbitMQ node {}, which leads {led} queues",
        node(&c, victim).node
    ));
    node(&c, victim)
        .kill()
        .await
        .expect("the private node dies");
    c.accepted_more(
        10,
        Duration::from_secs(60),
        "orders accepted with a node down",
    )
    .await;
    node(&c, victim)
        .start()
        .await
        .expect("the node starts again");
    phases.push(phase(&mut c, "node killed and restarted", began, PHASE_SETTLE).await);

    // 2. Every program instance restarts in turn, gateways last.
    let began = (tokio::time::Instant::now(), c.accepted(), c.server_errors());
    let mut order: Vec<usize> = (0..fleet.len()).collect();
    order.sort_by_key(|&k| fleet[k].program == "gateway");
    for k in order {
        counted[k].add(fleet[k].counts(&c).await);
        fleet[k].restart(&mut c, true).await;
        c.accepted_more(
            3,
            Duration::from_secs(60),
            "orders accepted between restarts",
        )
        .await;
    }
    let errors = c.server_errors() - began.2;
    phases.push(
        phase(
            &mut c,
            "rolling restart of the 14 program instances",
            began,
            PHASE_SETTLE,
        )
        .await,
    );
    if errors > 0 {
        c.violation(format!(
            "the shoppers saw {errors} 5xx answers while the programs restarted"
        ));
    }

    // 3. Every node restarts in turn, each once its queues have all their members again.
    let began = (tokio::time::Instant::now(), c.accepted(), c.server_errors());
    for at in 0..3 {
        all_members_online(&c).await;
        node(&c, at).stop().await.expect("the node stops");
        c.accepted_more(
            3,
            Duration::from_secs(60),
            "orders accepted with a node stopped",
        )
        .await;
        node(&c, at).start().await.expect("the node starts again");
    }
    phases.push(
        phase(
            &mut c,
            "rolling restart of the 3 RabbitMQ nodes",
            began,
            PHASE_SETTLE,
        )
        .await,
    );
    c.healed("every phase done");

    c.finish(Expect::normal()).await;
    for (k, i) in fleet.iter().enumerate() {
        counted[k].add(i.counts(&c).await);
    }
    let mut idle = Vec::new();
    for (i, n) in fleet.iter().zip(&counted) {
        println!(
            "[scale-out] {}: {} requests served, {} events handled",
            i.name, n.requests, n.messages
        );
        let consumes = shop::PROGRAMS
            .iter()
            .any(|e| e.identity.name == i.program && !e.identity.consumes.is_empty());
        // Payments serves nobody behind the gateways (its one route is internal).
        let serves = i.program != "payments";
        if (serves && n.requests == 0.0) || (consumes && n.messages == 0.0) {
            idle.push(i.name);
        }
    }
    for p in &phases {
        println!("[scale-out] {p}");
    }
    assert!(
        idle.is_empty(),
        "instances that served no requests or handled no events: {idle:?}"
    );
    drop(c);
    drop(turn);
}

/// Requests served (health and metrics aside) and events handled by one instance.
#[derive(Clone, Default)]
struct Counts {
    requests: f64,
    messages: f64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.messages += other.messages;
    }
}

/// One instance of a program in the scale-out scenario.
struct Instance {
    program: &'static str,
    /// Its child's name in the cluster.
    name: &'static str,
    second: bool,
    port: u16,
    /// Where its `/metrics` is (the gateway's admin port).
    metrics_port: u16,
    env: Vec<(String, String)>,
}

impl Instance {
    fn first(c: &Chaos, program: &'static str) -> Instance {
        let port = c.cluster.port(program);
        let metrics_port = match program {
            "gateway" => c.cluster.settings.gateway.admin_port,
            _ => port,
        };
        Instance {
            program,
            name: program,
            second: false,
            port,
            metrics_port,
            env: Vec::new(),
        }
    }

    fn second(program: &'static str) -> Instance {
        let (port, admin) = (free_port(), free_port());
        let mut env = vec![(shop::port_variable(program), port.to_string())];
        let mut metrics_port = port;
        if program == "gateway" {
            env.push(("SHOP_GATEWAY_ADMIN_PORT".into(), admin.to_string()));
            metrics_port = admin;
        }
        Instance {
            program,
            name: Box::leak(format!("{program}-2").into_boxed_str()),
            second: true,
            port,
            metrics_port,
            env,
        }
    }

    /// Stops the instance if it runs (SIGTERM, waiting until it is stopped) and starts it
    /// again, waiting until it is ready.
    async fn restart(&self, c: &mut Chaos, running: bool) {
        if running || !self.second {
            c.cluster.sigterm(self.name);
            let status = c
                .cluster
                .wait_exit(self.name, Duration::from_secs(30))
                .await;
            assert!(status.success(), "{} stopped with {status}", self.name);
        }
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        c.cluster
            .spawn_command(self.name, &["run", self.program], &env);
        c.cluster.wait_instance_ready(self.port).await;
    }

    /// What it served and handled since it started (its counters start with it).
    async fn counts(&self, c: &Chaos) -> Counts {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let text = match c.cluster.http.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let requests = text
            .lines()
            .filter(|l| l.starts_with("shop_http_requests_total{"))
            .filter(|l| !l.contains("route=\"/health") && !l.contains("route=\"/metrics"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Counts {
            requests,
            messages: sample_sum(&text, "shop_messages_consumed_total", &[]),
        }
    }
}

/// Ends a phase: waits until every order accepted so far is settled and describes the phase
/// (recorded in the report); a phase that does not settle within `deadline` is a violation.
async fn phase(
    c: &mut Chaos,
    what: &str,
    (began, accepted, errors): (tokio::time::Instant, usize, u64),
    deadline: Duration,
) -> String {
    let lasted = began.elapsed();
    let settled = c.settled_within(deadline).await;
    let line = format!(
        "phase {what}: {:.1} s, {} orders accepted, {} 5xx, settled {}",
        lasted.as_secs_f64(),
        c.accepted() - accepted,
        c.server_errors() - errors,
        settled.map_or("never".into(), |d| format!("in {:.1} s", d.as_secs_f64()))
    );
    c.note(line.clone());
    if settled.is_none() {
        c.violation(format!(
            "{what}: not settled within {} s",
            deadline.as_secs()
        ));
    }
    line
}

/// The node (its number) that leads the most of the scenario's queues, and how many.
async fn most_leading(c: &Chaos) -> (usize, usize) {
    let listed = c
        .servers
        .rabbit
        .ctl(&[
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "leader",
        ])
        .await
        .expect("the queues and their leaders");
    let namespace = &c.cluster.config.namespace;
    let led: Vec<usize> = c
        .servers
        .rabbits()
        .map(|r| {
            listed
                .lines()
                .filter(|l| l.starts_with(namespace.as_str()) && l.trim_end().ends_with(&r.node))
                .count()
        })
        .collect();
    let (at, most) = led.iter().enumerate().max_by_key(|(_, n)| **n).unwrap();
    assert!(*most > 0, "no quorum queue has a leader:\n{listed}");
    (at, *most)
}

/// Waits until every quorum queue of the scenario has its three members online (a node may
/// be stopped without losing a majority).
async fn all_members_online(c: &Chaos) {
    let namespace = c.cluster.config.namespace.clone();
    eventually(
        "every queue has its 3 members online",
        Duration::from_secs(60),
        || async {
            // Asked of a node that runs: the first one may be the one that just came back.
            for r in c.servers.rabbits() {
                if let Ok(listed) = r
                    .ctl(&[
                        "list_queues",
                        "--quiet",
                        "--no-table-headers",
                        "name",
                        "online",
                    ])
                    .await
                {
                    return listed
                        .lines()
                        .filter(|l| l.starts_with(namespace.as_str()))
                        .all(|l| l.matches('@').count() == 3);
                }
            }
            false
        },
    )
    .await;
}
