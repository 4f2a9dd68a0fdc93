//! Fixed one-minute windows counted in Redis, shared by every instance of a program: the
//! gateway's per-user and per-address limits, and the users service's login and
//! registration limits (where the password work happens). If Redis is away, requests pass
//! (availability over strictness) and a warning is logged.

use std::time::Duration;

use tracing::warn;

use crate::{http::ApiError, redis_util::RedisConn};

/// Counts one request of `scope`/`id` in this minute's window: 429 (with the seconds left
/// in the window as `Retry-After`) past `per_minute`.
pub async fn check(
    redis: &RedisConn,
    namespace: &str,
    scope: &str,
    id: &str,
    per_minute: u32,
) -> Result<(), ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let key = crate::config::redis_key(namespace, &format!("rl:{scope}:{id}:{}", now / 60));
    let mut redis = redis.clone();
    let counted = tokio::time::timeout(
        Duration::from_millis(300),
        redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 61)
            .ignore()
            .query_async::<(u64,)>(&mut redis),
    )
    .await;
    match counted {
        Ok(Ok((n,))) if n > u64::from(per_minute) => Err(ApiError::TooManyRequests {
            retry_after_secs: 60 - now % 60,
        }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, scope, "rate limiter unavailable; letting the request through");
            Ok(())
        }
        Err(_) => {
            warn!(scope, "rate limiter timed out; letting the request through");
            Ok(())
        }
    }
}
