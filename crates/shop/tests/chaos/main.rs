//! Fault injection: each scenario starts its own RabbitMQ, Redis and PostgreSQL, runs every
//! program as its own process against them, drives a steady trickle of orders through the
//! gateway, injects one fault mid-run, waits for the system to settle and audits it: no
//! violated invariant, no unexplained dead letter, no stuck or lost order.
//!
//! By default only a representative subset runs (broker killed, a crash point, the poison
//! burst); the others print how to run them:
//!
//! ```sh
//! SHOP_CHAOS_FULL=1 cargo test -p shop --test chaos -- --test-threads 1
//! ```
//!
//! Scenarios never overlap (a static lock), whatever the number of test threads. Each prints
//! its figures and appends a row to `target/chaos-report.md` (or `$SHOP_CHAOS_REPORT`).

mod broker;
#[path = "../common/mod.rs"]
mod cluster;
mod harness;
mod load;
mod messages;
mod report;
mod servers;
mod services;
mod stores;

use tokio::sync::{Mutex, MutexGuard};

/// One scenario at a time: each one starts three servers and seven programs on two cores.
static TURN: Mutex<()> = Mutex::const_new(());

/// Whether a scenario runs in the default (CI) subset or only in the full suite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Ci,
    Full,
}

fn full_suite() -> bool {
    std::env::var("SHOP_CHAOS_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Waits for this scenario's turn; `None` (after saying so) when it is not to run.
pub async fn turn(scenario: &str, suite: Suite) -> Option<MutexGuard<'static, ()>> {
    if suite == Suite::Full && !full_suite() {
        println!("{scenario}: skipped: set SHOP_CHAOS_FULL=1");
        return None;
    }
    Some(TURN.lock().await)
}
