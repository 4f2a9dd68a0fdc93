//! Redis connections (auto-reconnecting) and the memory report of DESIGN.md: a cache that
//! could fill memory with no eviction policy is warned about at start-up and in health.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::warn;

use crate::config::redact_url;

/// A connection manager that reconnects by itself; fails with the URL if Redis is away now.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid Redis URL {}", redact_url(url)))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("cannot connect to Redis at {}", redact_url(url)))
}

/// `maxmemory` (bytes, 0 = unlimited) and `maxmemory-policy`, read from `INFO memory`
/// (works where `CONFIG GET` is disabled).
pub async fn memory_settings(conn: &mut ConnectionManager) -> redis::RedisResult<(u64, String)> {
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
pub async fn warn_about_cache(conn: &mut ConnectionManager) {
    if let Ok((max, policy)) = memory_settings(conn).await {
        if let Some(risk) = cache_risk(max, &policy) {
            warn!(maxmemory = max, maxmemory_policy = %policy, "{risk}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_is_reported_for_unbounded_or_noeviction() {
        assert!(cache_risk(0, "noeviction").is_some());
        assert!(cache_risk(1 << 20, "noeviction").is_some());
        assert!(cache_risk(1 << 20, "allkeys-lru").is_none());
    }
}
