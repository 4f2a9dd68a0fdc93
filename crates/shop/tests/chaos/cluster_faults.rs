//! Beyond one machine (the CI variant of issue 11's test): a 3-node RabbitMQ cluster with
//! quorum queues, two instances of orders, inventory and payments, orders flowing all along;
//! the node leading the most queues is killed (`kill -9`) and restarted, then every saga
//! service instance is restarted in turn (SIGTERM, wait until stopped, start, wait until
//! ready). Nothing may be lost or stuck, and both instances of each service must have handled
//! messages.

use std::time::Duration;

use shop_platform::metrics::sample_sum;

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
    let mut led: Vec<(usize, String)> = c
        .servers
        .rabbits()
        .map(|r| {
            let n = listed
                .lines()
                .filter(|l| l.starts_with(namespace.as_str()) && l.trim_end().ends_with(&r.node))
                .count();
            (n, r.node.clone())
        })
        .collect();
    led.sort();
    let (most, victim) = led.last().cloned().unwrap();
    assert!(most > 0, "no quorum queue has a leader:\n{listed}");
    c.fault(&format!(
        "kill -9 of RabbitMQ node {victim}, which leads {most} queues"
    ));
    let at = c.servers.rabbits().position(|r| r.node == victim).unwrap();
    node(&c, at).kill().await.expect("the private node dies");
    c.accepted_more(
        10,
        Duration::from_secs(60),
        "orders accepted with a node down",
    )
    .await;
    node(&c, at).start().await.expect("the node starts again");
    c.note(format!("queue leaders before the kill: {led:?}"));

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
