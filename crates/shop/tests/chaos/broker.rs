//! RabbitMQ faults: stopped, killed, paused, connections closed, memory alarm. Orders keep
//! being accepted meanwhile (they wait in the outboxes); afterwards every program has
//! reconnected, its consumers resumed, and every saga completed.

use std::time::Duration;

use shop_platform::testkit::eventually;

use crate::harness::{Chaos, Expect};

/// Holds a fault that freezes publishing until the programs have felt it: publisher confirms
/// timed out (after 15 s), so they gave up on the stuck connection, while orders kept being
/// accepted.
async fn until_publishers_gave_up(c: &Chaos, failures_before: u64) {
    let from = c.accepted();
    eventually(
        "publishes time out while orders are still accepted",
        Duration::from_secs(90),
        || async move {
            c.accepted() >= from + 10
                && c.metric_sum("shop_publish_failures_total").await > failures_before
        },
    )
    .await;
}

/// The broker goes away (`stop` or `kill -9`) while orders keep coming, then starts again.
async fn broker_down_and_back(name: &str, fault: &str, kill: bool) {
    let (_turn, mut c) = Chaos::begin(name, &[]).await;
    c.fault(fault);
    if kill {
        c.servers
            .rabbit
            .kill()
            .await
            .expect("the private server does as told");
    } else {
        c.servers
            .rabbit
            .stop()
            .await
            .expect("the private server does as told");
    }
    c.accepted_more(
        10,
        Duration::from_secs(60),
        "orders accepted while the broker is down",
    )
    .await;
    c.servers
        .rabbit
        .start()
        .await
        .expect("the private server does as told");
    c.healed("broker started again");
    c.finish(Expect::normal()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn broker_stopped_gracefully_and_restarted() {
    let name = "broker stopped gracefully and restarted";
    broker_down_and_back(name, "rabbitmqctl stop", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_and_restarted() {
    let name = "broker killed (kill -9) and restarted";
    broker_down_and_back(name, "kill -9 of the broker", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn broker_paused_then_resumed() {
    const NAME: &str = "broker paused (SIGSTOP) then resumed";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    let failures = c.metric_sum("shop_publish_failures_total").await;
    c.fault("kill -STOP of the broker");
    c.servers.rabbit.pause();
    until_publishers_gave_up(&c, failures).await;
    c.servers.rabbit.resume();
    c.healed("kill -CONT");
    c.finish(Expect::normal()).await;
}

/// Connections of this shop's programs, as the broker lists them.
async fn shop_connections(c: &Chaos) -> usize {
    c.servers
        .rabbit
        .ctl(&["list_connections", "client_properties"])
        .await
        .expect("rabbitmqctl")
        .lines()
        .filter(|l| l.contains("shop-"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn all_client_connections_closed() {
    const NAME: &str = "all client connections closed (3 times)";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    let programs = shop_connections(&c).await;
    assert!(programs >= 6, "the programs are connected ({programs})");
    c.fault("rabbitmqctl close_all_connections, three times");
    for round in 1..=3 {
        let out = c
            .servers
            .rabbit
            .ctl(&["close_all_connections", "test"])
            .await
            .expect("rabbitmqctl");
        let closed = out
            .lines()
            .find_map(|l| l.strip_prefix("Closed "))
            .unwrap_or("?")
            .to_string();
        c.note(format!("round {round}: {closed}"));
        // Every program connects again before the next round.
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while shop_connections(&c).await < programs {
            assert!(
                tokio::time::Instant::now() < until,
                "the programs did not reconnect within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.healed("programs reconnected after the third close");
    c.finish(Expect::normal()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn broker_memory_alarm() {
    const NAME: &str = "broker memory alarm (publishers blocked)";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    let failures = c.metric_sum("shop_publish_failures_total").await;
    c.fault("vm_memory_high_watermark 0.0000001");
    c.servers
        .rabbit
        .ctl(&["set_vm_memory_high_watermark", "0.0000001"])
        .await
        .expect("rabbitmqctl");
    let from = c.accepted();
    until_publishers_gave_up(&c, failures).await;
    c.note(format!(
        "{} orders accepted during the alarm",
        c.accepted() - from
    ));
    c.servers
        .rabbit
        .ctl(&["set_vm_memory_high_watermark", "0.4"])
        .await
        .expect("rabbitmqctl");
    c.healed("watermark restored to 0.4");
    c.finish(Expect::normal()).await;
}

/// Least privilege in the broker: every program runs as its own RabbitMQ user (as in every
/// scenario here), the saga goes through, and payments' user may take messages from its own
/// queues only: not from the orders queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_program_consumes_only_its_own_queues() {
    use lapin::{options::BasicConsumeOptions, types::FieldTable};
    use shop_platform::{amqp::BrokerConfig, topology::Names};
    let _turn = crate::turn().await;
    let servers = crate::servers::Servers::start().await;
    let mut env = servers.env();
    env.push((
        "SHOP_AMQP_PASSWORDS".into(),
        crate::cluster::amqp_passwords(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let shop = crate::cluster::Cluster::start(&env).await;
    shop.confirmed_order().await;

    let payments = BrokerConfig::from_config(&shop.config, "payments", shop::topology());
    assert!(
        payments.urls[0].contains("shop-"),
        "payments connects as its own user"
    );
    let conn = lapin::Connection::connect(&payments.urls[0], Default::default())
        .await
        .unwrap();
    let names = Names::new(&shop.config.namespace);
    let consume = |queue: String| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            ch.basic_consume(
                queue.as_str().into(),
                "least-privilege-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    let refused = consume(names.queue("orders"))
        .await
        .expect_err("payments consumed orders' queue");
    assert!(refused.to_string().contains("ACCESS_REFUSED"), "{refused}");
    consume(names.dead_letter_queue("payments"))
        .await
        .expect("payments may consume its own dead letters");
    let _ = conn.close(200, "done".into()).await;
}
