//! Fault injection: each scenario starts its own RabbitMQ, Redis and PostgreSQL, runs every
//! program as its own process against them, drives a steady trickle of orders through the
//! gateway, injects one fault mid-run, waits for the system to settle and audits it: no
//! violated invariant, no unexplained dead letter, no stuck or lost order.
//!
//! By default only a representative subset runs (broker killed, a crash point, the poison
//! burst, the mail server stopped, notifications crashed between sending and marking, the
//! check that each program's broker user reaches only its own queues, a 3-node RabbitMQ
//! cluster with quorum queues losing a node while two instances of each saga service restart
//! in turn, and the saga services' links to PostgreSQL blackholed for 30 s): the
//! others are `#[ignore = "full suite: scripts/chaos"]`, so a report counts them
//! as ignored, never as passed. `scripts/chaos` runs them all:
//!
//! ```sh
//! cargo test -p shop --test chaos -- --include-ignored --test-threads 1
//! ```
//!
//! Scenarios never overlap (a static lock), whatever the number of test threads. Each prints
//! its figures and appends a row to `target/chaos-report.md` (or `$SHOP_CHAOS_REPORT`).

mod broker;
#[path = "../common/mod.rs"]
mod cluster;
mod cluster_faults;
mod harness;
mod links;
mod load;
mod mail;
mod messages;
mod report;
mod servers;
mod services;
mod stores;

use tokio::sync::{Mutex, MutexGuard};

/// One scenario at a time: each one starts three servers and seven programs on two cores.
static TURN: Mutex<()> = Mutex::const_new(());

/// Waits for this scenario's turn: scenarios run one at a time (each starts its own servers
/// and seven programs). The CI subset runs by default; the rest are
/// `#[ignore = "full suite: scripts/chaos"]`, which `scripts/chaos` includes.
pub async fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().await
}
