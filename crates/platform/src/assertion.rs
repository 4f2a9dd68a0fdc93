//! Caller assertions: how a service knows who calls it. Nothing behind the gateway trusts
//! a header it cannot verify: the gateway, having checked the session, signs a short-lived
//! assertion of the caller (user id, role, session, request id) for the one service it
//! forwards to; a service calling another (orders pricing at products) signs one naming
//! itself. Each service verifies the assertion on every route that is not public, and
//! refuses a missing, forged, expired, wrong-audience or replayed one with 401 (the reason
//! is logged, never told to the caller).
//!
//! The token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, claims part))`.
//! HMAC with a shared key rather than Ed25519: every program is the same binary in one
//! trust domain, the services sign too (service-to-service calls), so each would hold a
//! private key anyway; a shared secret keeps rotation to one setting. Several keys are
//! accepted at once (`SHOP_ASSERTION_KEYS=new,old`): the first signs, all verify, so a key
//! rotates without downtime. See docs/architecture.md, "HTTP conventions".

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::redis_util::RedisConn;

/// The header that carries an assertion.
pub const HEADER: &str = "x-shop-assertion";

/// How long an assertion is valid: one hop, a little clock skew.
pub const LIFETIME: Duration = Duration::from_secs(30);

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    /// A user, authenticated by the gateway from their session.
    User {
        id: Uuid,
        /// `user` or `admin`.
        role: String,
    },
    /// Another program of the shop.
    Service { name: String },
}

/// What an assertion says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub sub: Subject,
    /// The one program it is for.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Unique per assertion: a second use is a replay.
    pub jti: Uuid,
    /// The request id it was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// A digest of the session it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The client's address as the gateway determined it (the peer, or the address a trusted
    /// proxy forwarded): what per-address limits behind the gateway count by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cip: Option<std::net::IpAddr>,
}

/// Why an assertion was refused (logged; the caller only hears 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no assertion")]
    Missing,
    #[error("malformed assertion")]
    Malformed,
    #[error("assertion signature does not verify")]
    Forged,
    #[error("assertion expired")]
    Expired,
    #[error("assertion is for another program")]
    WrongAudience,
    #[error("assertion already used")]
    Replayed,
}

/// The signing keys: the first signs, every one verifies.
#[derive(Clone)]
pub struct Keys(Arc<[Vec<u8>]>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} key(s), ***)", self.0.len())
    }
}

impl Keys {
    /// Keys from a comma-separated list; each at least [`MIN_KEY_BYTES`] long.
    pub fn parse(list: &str) -> Result<Keys, String> {
        let keys: Vec<Vec<u8>> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            return Err("no assertion key given".into());
        }
        if let Some(short) = keys.iter().position(|k| k.len() < MIN_KEY_BYTES) {
            return Err(format!(
                "assertion key {} is shorter than {MIN_KEY_BYTES} bytes",
                short + 1
            ));
        }
        Ok(Keys(keys.into()))
    }

    /// A fresh random key (for one `shop up` run, or a test).
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An assertion of `sub` for `aud`, valid for [`LIFETIME`].
    pub fn sign(
        &self,
        sub: Subject,
        aud: &str,
        rid: Option<String>,
        sid: Option<String>,
        cip: Option<std::net::IpAddr>,
    ) -> String {
        let claims = Claims {
            sub,
            aud: aud.to_string(),
            exp: now() + LIFETIME.as_secs(),
            jti: Uuid::new_v4(),
            rid,
            sid,
            cip,
        };
        self.sign_claims(&claims)
    }

    /// The token of exactly these claims (tests make expired or misdirected ones with it).
    pub fn sign_claims(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let tag = mac(&self.0[0], body.as_bytes()).finalize().into_bytes();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The claims of `token` if one of the keys signed it, it has not expired and it is for
    /// `audience`. (Replays are checked by [`Verifier`].)
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, Refused> {
        let (body, tag) = token.split_once('.').ok_or(Refused::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Refused::Malformed)?;
        if !self
            .0
            .iter()
            .any(|k| mac(k, body.as_bytes()).verify_slice(&tag).is_ok())
        {
            return Err(Refused::Forged);
        }
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| Refused::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| Refused::Malformed)?;
        if claims.exp < now() {
            return Err(Refused::Expired);
        }
        if claims.aud != audience {
            return Err(Refused::WrongAudience);
        }
        Ok(claims)
    }
}

fn mac(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A program's check of the assertions it receives: signature, expiry, audience (itself),
/// and that each is used once: its id is recorded in Redis until it expires, so a replay
/// to any instance is refused. While Redis is away the ids are recorded in this process
/// instead (a replay to another instance within the assertion's 30 s then goes unnoticed;
/// signature, expiry and audience are still checked), so that the services keep working
/// without Redis, as they are meant to.
pub struct Verifier {
    pub keys: Keys,
    pub audience: &'static str,
    redis: RedisConn,
    namespace: String,
    /// Ids seen while Redis was away, with their expiry.
    local: std::sync::Mutex<std::collections::HashMap<Uuid, u64>>,
}

/// Most ids kept in the local record; past it, the expired ones are dropped (and if none
/// has expired, the record starts again rather than grow).
const LOCAL_MAX: usize = 100_000;

impl Verifier {
    pub fn new(keys: Keys, audience: &'static str, redis: RedisConn, namespace: &str) -> Self {
        Verifier {
            keys,
            audience,
            redis,
            namespace: namespace.to_string(),
            local: Default::default(),
        }
    }

    /// The claims of a header value, or why it is refused.
    pub async fn verify(&self, header: Option<&str>) -> Result<Claims, Refused> {
        let token = header.ok_or(Refused::Missing)?;
        let claims = self.keys.verify(token, self.audience)?;
        let ttl = claims.exp.saturating_sub(now()).max(1);
        let key = crate::config::redis_key(&self.namespace, &format!("assertion:{}", claims.jti));
        let mut redis = self.redis.clone();
        let recorded: Result<Result<Option<String>, _>, _> = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl)
                .query_async(&mut redis),
        )
        .await;
        let first = match recorded {
            Ok(Ok(first)) => first.is_some(),
            _ => {
                tracing::debug!("Redis away: recording the assertion in this process");
                self.first_here(claims.jti, claims.exp)
            }
        };
        if !first {
            return Err(Refused::Replayed);
        }
        Ok(claims)
    }

    /// Records `jti` in this process; whether it was new.
    fn first_here(&self, jti: Uuid, exp: u64) -> bool {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.len() >= LOCAL_MAX {
            let t = now();
            local.retain(|_, e| *e >= t);
            if local.len() >= LOCAL_MAX {
                local.clear();
            }
        }
        local.insert(jti, exp).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(k: &str) -> Keys {
        Keys::parse(k).unwrap()
    }

    const A: &str = "a-key-of-at-least-thirty-two-bytes-0001";
    const B: &str = "b-key-of-at-least-thirty-two-bytes-0002";

    fn user() -> Subject {
        Subject::User {
            id: Uuid::nil(),
            role: "user".into(),
        }
    }

    #[test]
    fn a_signed_assertion_verifies_for_its_audience_only() {
        let k = keys(A);
        let t = k.sign(user(), "orders", Some("rid-1".into()), None, None);
        let c = k.verify(&t, "orders").unwrap();
        assert_eq!(c.sub, user());
        assert_eq!(c.rid.as_deref(), Some("rid-1"));
        assert_eq!(k.verify(&t, "payments"), Err(Refused::WrongAudience));
    }

    #[test]
    fn forged_expired_and_malformed_ones_are_refused() {
        let (a, b) = (keys(A), keys(B));
        let t = b.sign(user(), "orders", None, None, None);
        assert_eq!(a.verify(&t, "orders"), Err(Refused::Forged));
        // A changed claim breaks the signature.
        let (body, tag) = t.split_once('.').unwrap();
        let mut claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        claims.sub = Subject::User {
            id: Uuid::nil(),
            role: "admin".into(),
        };
        let tampered = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert_eq!(b.verify(&tampered, "orders"), Err(Refused::Forged));
        let expired = b.sign_claims(&Claims {
            exp: now() - 1,
            ..claims
        });
        assert_eq!(b.verify(&expired, "orders"), Err(Refused::Expired));
        for junk in ["", ".", "abc", "a.b.c", "!!.??"] {
            assert!(b.verify(junk, "orders").is_err(), "{junk:?}");
        }
    }

    #[test]
    fn keys_rotate_the_first_signs_and_every_one_verifies() {
        let old = keys(A).sign(user(), "orders", None, None, None);
        let both = keys(&format!("{B},{A}"));
        assert!(both.verify(&old, "orders").is_ok());
        let new = both.sign(user(), "orders", None, None, None);
        assert!(keys(B).verify(&new, "orders").is_ok());
        assert_eq!(keys(A).verify(&new, "orders"), Err(Refused::Forged));
    }

    #[test]
    fn short_or_missing_keys_are_refused_and_never_shown() {
        assert!(Keys::parse("").is_err());
        assert!(Keys::parse("short").is_err());
        assert!(Keys::parse(&Keys::generate()).is_ok());
        assert!(!format!("{:?}", keys(A)).contains(A));
    }

    proptest! {
        /// Arbitrary bytes never panic the parser, and never verify.
        #[test]
        fn arbitrary_input_never_panics(s in ".*", raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let k = keys(A);
            prop_assert!(k.verify(&s, "orders").is_err());
            let text = String::from_utf8_lossy(&raw);
            prop_assert!(k.verify(&text, "orders").is_err());
        }
    }
}
