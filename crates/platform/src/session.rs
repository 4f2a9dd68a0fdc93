//! Login sessions in Redis, shared by the users service (which creates and deletes them) and
//! the gateway (which checks them on every request and slides their expiry).
//!
//! The key is `session:{sha256(token)}` rather than the token itself (a refinement of the
//! original blueprint; docs/architecture.md, "Redis"): whoever can read Redis keys still
//! cannot log in as anyone.

use clap::Args;
use redis::AsyncCommands as _;

use crate::redis_util::RedisConn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Settings of sessions, shared by the users service (which creates them) and the gateway
/// (which slides their expiry).
#[derive(Args, Clone, Debug)]
pub struct SessionSettings {
    /// Sliding lifetime of a login session, in seconds.
    #[arg(long, env = "SHOP_SESSION_TTL_SECS", global = true)]
    #[arg(default_value_t = 86_400)]
    pub session_ttl_secs: u64,
}

/// What a session holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: Uuid,
    /// `user` or `admin`.
    pub role: String,
}

/// The Redis key of a token's session.
pub fn key(namespace: &str, token: &str) -> String {
    crate::config::redis_key(namespace, &format!("session:{}", id(token)))
}

/// A session's id: the SHA-256 of its token, in hex (what Redis and assertions name it by;
/// the token itself is never stored).
pub fn id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores a session for `ttl_secs`.
pub async fn create(
    redis: &mut RedisConn,
    namespace: &str,
    token: &str,
    session: &Session,
    ttl_secs: u64,
) -> redis::RedisResult<()> {
    let value = serde_json::to_string(session).expect("sessions serialize");
    redis.set_ex(key(namespace, token), value, ttl_secs).await
}

/// The session of `token`, sliding its expiry by `ttl_secs`; `None` if unknown or expired.
pub async fn touch(
    redis: &mut RedisConn,
    namespace: &str,
    token: &str,
    ttl_secs: u64,
) -> redis::RedisResult<Option<Session>> {
    let value: Option<String> = redis::cmd("GETEX")
        .arg(key(namespace, token))
        .arg("EX")
        .arg(ttl_secs)
        .query_async(redis)
        .await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Deletes the session of `token` (logout): the token stops working at once.
pub async fn delete(redis: &mut RedisConn, namespace: &str, token: &str) -> redis::RedisResult<()> {
    redis.del(key(namespace, token)).await
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_contain_the_token() {
        let k = key("ns", "secret-token");
        assert!(k.starts_with("ns:session:"));
        assert!(!k.contains("secret-token"));
        assert_eq!(k.len(), "ns:session:".len() + 64);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
