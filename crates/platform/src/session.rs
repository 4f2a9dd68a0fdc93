//! Login sessions in Redis, shared by the users service (which creates and deletes them) and
//! the gateway (which checks them on every request and slides their expiry).
//!
//! The key is `session:{sha256(token)}` rather than the token itself (a refinement of the
//! original blueprint; docs/architecture.md, "Redis"): whoever can read Redis keys still
//! cannot log in as anyone. Each user's session ids are also kept in `user-sessions:{id}`,
//! so that changing a password or a role can end all of them ([`revoke_all`]); that index
//! lives at least as long as the user's longest-lived session (every create and touch
//! extends it).

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

/// The Redis key of the index of a user's sessions.
fn index_key(namespace: &str, user_id: Uuid) -> String {
    crate::config::redis_key(namespace, &format!("user-sessions:{user_id}"))
}

/// Stores a session for `ttl_secs`, and its id in the user's index.
pub async fn create(
    redis: &mut RedisConn,
    namespace: &str,
    token: &str,
    session: &Session,
    ttl_secs: u64,
) -> redis::RedisResult<()> {
    let value = serde_json::to_string(session).expect("sessions serialize");
    let index = index_key(namespace, session.user_id);
    redis::pipe()
        .atomic()
        .set_ex(key(namespace, token), value, ttl_secs)
        .sadd(&index, id(token))
        .expire(&index, ttl_secs as i64)
        .query_async(redis)
        .await
}

/// Slides a session's expiry and its user's index's; answers the session's value.
const TOUCH: &str = r"
local v = redis.call('GETEX', KEYS[1], 'EX', ARGV[1])
if v then
  local ok, s = pcall(cjson.decode, v)
  if ok and type(s) == 'table' and s.user_id then
    redis.call('EXPIRE', ARGV[2] .. s.user_id, ARGV[1])
  end
end
return v
";

/// The session of `token`, sliding its expiry by `ttl_secs`; `None` if unknown or expired.
pub async fn touch(
    redis: &mut RedisConn,
    namespace: &str,
    token: &str,
    ttl_secs: u64,
) -> redis::RedisResult<Option<Session>> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(TOUCH));
    let index_prefix = crate::config::redis_key(namespace, "user-sessions:");
    let value: Option<String> = SCRIPT
        .key(key(namespace, token))
        .arg(ttl_secs)
        .arg(index_prefix)
        .invoke_async(redis)
        .await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Ends every session of a user at once (after a password or role change); how many there
/// were.
pub async fn revoke_all(
    redis: &mut RedisConn,
    namespace: &str,
    user_id: Uuid,
) -> redis::RedisResult<usize> {
    const REVOKE: &str = r"
local ids = redis.call('SMEMBERS', KEYS[1])
local ended = 0
for _, id in ipairs(ids) do
  ended = ended + redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return ended
";
    let session_prefix = crate::config::redis_key(namespace, "session:");
    redis::Script::new(REVOKE)
        .key(index_key(namespace, user_id))
        .arg(session_prefix)
        .invoke_async(redis)
        .await
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
