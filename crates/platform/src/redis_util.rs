//! Redis connections (auto-reconnecting) and the memory report of docs/architecture.md
//! ("Redis"): a cache that could fill memory with no eviction policy is warned about at
//! start-up and in health.

use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use redis::{
    Cmd, Pipeline, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};
use tracing::{debug, warn};

use crate::config::redact_url;

/// A Redis connection that reconnects by itself and does not fail a request because of a
/// connection that died while idle.
///
/// The connection manager only learns that its connection is dead when a command fails on
/// it (after Redis restarted, say), and then reconnects for the next command. So the first
/// command of each program after an outage would fail although Redis is back: a login or an
/// authenticated request answered 503. A command that fails because the connection was
/// dropped is therefore sent once more, on the new connection. (A refused connection is not
/// retried: Redis is down, the caller decides.)
#[derive(Clone)]
pub struct RedisConn(ConnectionManager);

fn dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() && !e.is_connection_refusal()
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            match self.0.send_packed_command(cmd).await {
                Err(e) if dropped(&e) => {
                    debug!(error = %e, "Redis connection was dropped; sending again on a new one");
                    self.0.send_packed_command(cmd).await
                }
                other => other,
            }
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            match self.0.send_packed_commands(pipeline, offset, count).await {
                Err(e) if dropped(&e) => {
                    debug!(error = %e, "Redis connection was dropped; sending again on a new one");
                    self.0.send_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A connection that reconnects by itself; fails with the URL if Redis is away now.
pub async fn connect(url: &str) -> anyhow::Result<RedisConn> {
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid Redis URL {}", redact_url(url)))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .map(RedisConn)
        .with_context(|| format!("cannot connect to Redis at {}", redact_url(url)))
}

/// `maxmemory` (bytes, 0 = unlimited) and `maxmemory-policy`, read from `INFO memory`
/// (works where `CONFIG GET` is disabled).
pub async fn memory_settings(conn: &mut RedisConn) -> redis::RedisResult<(u64, String)> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let mut max = 0;
    let mut policy = String::from("unknown");
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("maxmemory:") {
            max = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("maxmemory_policy:") {
            policy = v.trim().to_string();
        }
    }
    Ok((max, policy))
}

/// Whether a cache on this server could grow until memory runs out or writes fail.
pub fn cache_risk(maxmemory: u64, policy: &str) -> Option<String> {
    if maxmemory == 0 {
        Some(
            "the cache Redis has no maxmemory: it can grow until the host runs out of memory"
                .into(),
        )
    } else if policy == "noeviction" {
        Some("the cache Redis uses maxmemory-policy noeviction: when full, cache writes fail instead of evicting (use allkeys-lru on a cache instance, SHOP_CACHE_REDIS_URL)".into())
    } else {
        None
    }
}

/// Logs a warning when the cache server could fill memory with no eviction policy.
pub async fn warn_about_cache(conn: &mut RedisConn) {
    if let Ok((max, policy)) = memory_settings(conn).await
        && let Some(risk) = cache_risk(max, &policy)
    {
        warn!(maxmemory = max, maxmemory_policy = %policy, "{risk}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection dies while idle (Redis restarted, a proxy or firewall dropped it): the
    /// next command still succeeds, on a new connection.
    #[tokio::test]
    async fn a_command_after_the_connection_dropped_succeeds() {
        use redis::AsyncCommands as _;
        let proxy = crate::testkit::Proxy::start("127.0.0.1:6379").await;
        let mut conn = connect(&format!("redis://127.0.0.1:{}", proxy.port))
            .await
            .expect("the shared Redis");
        let key = format!("t{}_dropped", uuid::Uuid::new_v4().simple());
        let _: () = conn.set_ex(&key, "v", 60).await.unwrap();
        proxy.cut();
        let got: Option<String> = conn.get(&key).await.expect("answered after the drop");
        assert_eq!(got.as_deref(), Some("v"));
        let _: () = conn.del(&key).await.unwrap();
    }

    #[test]
    fn risk_is_reported_for_unbounded_or_noeviction() {
        assert!(cache_risk(0, "noeviction").is_some());
        assert!(cache_risk(1 << 20, "noeviction").is_some());
        assert!(cache_risk(1 << 20, "allkeys-lru").is_none());
    }
}
