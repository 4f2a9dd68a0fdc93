//! Crash points for fault-injection tests: `SHOP_CRASH_POINT=<point>[:<n>]` makes the
//! process abort (as `kill -9` would) the n-th time (default 1st) it reaches `<point>`.
//! Unset in production; reading it costs one check of a static.
//!
//! Points: `relay.before_publish` (events committed, not yet published),
//! `relay.after_publish` (published and confirmed, not yet marked sent),
//! `consumer.before_ack` (effects committed, message not yet acked),
//! `notifications.after_send` (an e-mail delivered, not yet marked sent).

use std::sync::{
    LazyLock,
    atomic::{AtomicU64, Ordering},
};

static ARMED: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
    let raw = std::env::var("SHOP_CRASH_POINT").ok()?;
    let (name, n) = match raw.split_once(':') {
        Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
        None => (raw, 1),
    };
    Some((name, n))
});
static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if this crash point is armed and its count is reached.
pub fn point(name: &str) {
    if let Some((armed, n)) = ARMED.as_ref()
        && armed == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *n
    {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}
