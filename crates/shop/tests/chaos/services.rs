//! Program faults: a service killed with `kill -9` and restarted; each saga service aborting
//! at each crash point (after committing but before publishing; after publishing but before
//! marking its outbox rows sent; after committing a message's effects but before acking it)
//! and restarted without it; and a backlog, the consumers stopped while orders pile up, then
//! started again one after the other.

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use crate::harness::{Chaos, Expect};

async fn service_killed(program: &'static str, name: &str) {
    let (_turn, mut c) = Chaos::begin(name, &[]).await;
    c.fault(&format!("kill -9 of {program}"));
    c.cluster.kill(program);
    if program == "orders" {
        // The gateway cannot place orders without it: clients see it.
        c.refused_more(
            4,
            Duration::from_secs(30),
            "orders refused while orders is down",
        )
        .await;
    } else {
        // Its work waits in its queue.
        let depth = c.piles_up(program, 20).await;
        c.note(format!("{depth} messages waiting in {program}'s queue"));
    }
    c.cluster.spawn(program);
    c.healed(&format!("{program} started again"));
    c.finish(Expect::normal()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn orders_killed_and_restarted() {
    service_killed("orders", "orders killed (kill -9) and restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn inventory_killed_and_restarted() {
    service_killed("inventory", "inventory killed (kill -9) and restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn payments_killed_and_restarted() {
    service_killed("payments", "payments killed (kill -9) and restarted").await;
}

/// Restarts `program` with `SHOP_CRASH_POINT=point`, waits for it to abort there, and starts
/// it again without: what it had done before the crash is done once, what it had not is
/// done after.
async fn crash_point(program: &'static str, point: &str, name: &str) {
    let (_turn, mut c) = Chaos::begin(name, &[]).await;
    c.fault(&format!(
        "{program} restarted with SHOP_CRASH_POINT={point}"
    ));
    c.cluster.kill(program);
    c.cluster
        .spawn_with(program, &[("SHOP_CRASH_POINT", point)]);
    let status = c.cluster.wait_exit(program, Duration::from_secs(90)).await;
    assert_eq!(
        status.signal(),
        Some(6),
        "{program} aborted at the crash point ({status})"
    );
    assert!(
        c.cluster.logs().contains("crash point"),
        "the crash point said so in the log"
    );
    c.note(format!("{program} aborted at {point} ({status})"));
    c.cluster.spawn(program);
    c.healed(&format!("{program} started again without the crash point"));
    c.finish(Expect {
        // What was published (or handled) but not recorded is delivered again and suppressed.
        min_duplicates: if point.starts_with("relay.before_publish") {
            0
        } else {
            1
        },
        ..Expect::normal()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_crash_after_publish_before_marking_sent() {
    crash_point(
        "orders",
        "relay.after_publish:5",
        "orders crash point relay.after_publish:5",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn payments_crash_after_commit_before_ack() {
    crash_point(
        "payments",
        "consumer.before_ack:8",
        "payments crash point consumer.before_ack:8",
    )
    .await;
}

/// The other worst points of each saga service (the full suite): committed but not yet
/// published, and effects committed but not acked.
macro_rules! crash_points {
    ($($test:ident: $program:literal at $point:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "full suite: scripts/chaos"]
        async fn $test() {
            crash_point(
                $program,
                $point,
                concat!($program, " crash point ", $point),
            )
            .await;
        }
    )*};
}

crash_points! {
    orders_crash_after_commit_before_publish: "orders" at "relay.before_publish:3";
    orders_crash_after_commit_before_ack: "orders" at "consumer.before_ack:6";
    inventory_crash_after_commit_before_publish: "inventory" at "relay.before_publish:3";
    inventory_crash_after_commit_before_ack: "inventory" at "consumer.before_ack:6";
    payments_crash_after_commit_before_publish: "payments" at "relay.before_publish:3";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "full suite: scripts/chaos"]
async fn backlog_of_stopped_consumers() {
    const NAME: &str = "backlog: inventory, orders, payments stopped, then restarted";
    let (_turn, mut c) = Chaos::begin(NAME, &[]).await;
    c.fault("inventory and payments stopped (SIGTERM) while orders keep coming");
    for p in ["inventory", "payments"] {
        let st = c.cluster.terminate(p);
        assert!(st.success(), "{p} stopped cleanly ({st})");
    }
    let n = c.piles_up("inventory", 40).await;
    c.note(format!("{n} order.created waiting for inventory"));
    // Orders stops too; inventory works through its backlog into orders' queue.
    let st = c.cluster.terminate("orders");
    assert!(st.success(), "orders stopped cleanly ({st})");
    c.cluster.spawn("inventory");
    c.drained("inventory").await;
    let n = c.piles_up("orders", 1).await;
    c.note(format!(
        "inventory drained its backlog; {n} stock events waiting for orders"
    ));
    // Orders works through its backlog into payments' queue.
    c.cluster.spawn("orders");
    c.drained("orders").await;
    let n = c.piles_up("payments", 1).await;
    c.note(format!(
        "orders drained its backlog; {n} payment requests waiting for payments"
    ));
    c.cluster.spawn("payments");
    c.healed("payments started: every consumer runs again");
    c.finish(Expect::normal()).await;
}
