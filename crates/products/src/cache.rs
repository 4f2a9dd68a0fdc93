//! The product cache in Redis (cache-aside): `product:{id}` holds the product's JSON with a
//! TTL of `cache_ttl_secs` plus up to 10% random jitter (so keys filled together do not
//! expire together).
//!
//! The cache is an optimisation, never a dependency: every operation has a short timeout,
//! and a failure (counted in `cache_errors`) opens a breaker for a moment during which the
//! cache is skipped, so that with Redis away products are served from PostgreSQL at
//! PostgreSQL's speed, not at the speed of a timeout. The connection manager reconnects by
//! itself; the first operation after the breaker closes probes it.
//!
//! # No stale value over an invalidation
//!
//! A loader that read PostgreSQL before an update committed must not write its old value
//! after the update's invalidation. Each product has a generation key
//! `product:{id}:gen`; an invalidation (after the update's commit) atomically sets it to a
//! fresh random token and deletes the value. A loader reads the generation *before* it reads
//! PostgreSQL, and writes only if the generation is still the one it read (a compare-and-set
//! in a Lua script). If the loader's read saw the old row, it happened before the commit, so
//! before the invalidation; then either its write lands before the invalidation (which
//! deletes it), or after (the generation changed: the write is refused).
//!
//! A random token rather than a counter: if the generation key is evicted (an `allkeys-lru`
//! cache) or expires, a counter could come back to the value a loader read; a fresh token
//! never does, and a missing key matches no token a loader can hold except "missing", which
//! any invalidation replaces.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use rand::Rng as _;
use redis::{RedisResult, Script};
use shop_platform::{config::Config, metrics::Metrics, redis_util::RedisConn};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::api::Product;

/// Longest wait for one cache operation before PostgreSQL is used instead.
const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the cache is skipped after a failure.
const BREAK_FOR: Duration = Duration::from_secs(1);
/// Life of a generation key: far longer than any load, refreshed by every invalidation.
const GENERATION_TTL_MS: u64 = 24 * 3600 * 1000;
/// How long a failed invalidation is retried in the background (every 100 ms at first,
/// then every 500 ms, so a stale value goes soon after Redis is back); after that the
/// value's TTL bounds how long it can be stale.
const INVALIDATION_RETRY_FOR: Duration = Duration::from_secs(30);
const INVALIDATION_RETRY_MAX_DELAY: Duration = Duration::from_millis(500);

/// SET the value only if the generation is still the one the loader read ('' = missing).
const SET_IF_GENERATION: &str = r"
local g = redis.call('GET', KEYS[2])
if g == false then g = '' end
if g == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// The generation a loader saw before reading PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket(String);

pub struct ProductCache {
    conn: RedisConn,
    /// The namespace prefix of every key.
    config: Config,
    ttl_ms: u64,
    metrics: Arc<Metrics>,
    set_if_generation: Script,
    /// Until when the cache is skipped after a failure.
    broken_until: Mutex<Option<Instant>>,
    /// Ends background invalidation retries when the program stops.
    stop: CancellationToken,
}

impl ProductCache {
    pub fn new(
        conn: RedisConn,
        config: &Config,
        ttl_secs: u64,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        ProductCache {
            conn,
            config: config.clone(),
            ttl_ms: ttl_secs.saturating_mul(1000).max(1),
            metrics,
            set_if_generation: Script::new(SET_IF_GENERATION),
            broken_until: Mutex::new(None),
            stop,
        }
    }

    pub fn key(&self, id: Uuid) -> String {
        self.config.redis_key(&format!("product:{id}"))
    }

    pub fn generation_key(&self, id: Uuid) -> String {
        self.config.redis_key(&format!("product:{id}:gen"))
    }

    /// The TTL of a value written now: the configured TTL plus up to 10% jitter.
    fn ttl_with_jitter(&self) -> u64 {
        self.ttl_ms + rand::rng().random_range(0..=self.ttl_ms / 10)
    }

    fn is_broken(&self) -> bool {
        let mut until = self.broken_until.lock().expect("breaker lock");
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.metrics.cache_errors.inc();
        let mut until = self.broken_until.lock().expect("breaker lock");
        if until.is_none() {
            warn!(operation = what, %error, "product cache unavailable; serving from PostgreSQL");
        } else {
            debug!(operation = what, %error, "product cache still unavailable");
        }
        *until = Some(Instant::now() + BREAK_FOR);
    }

    /// Runs one operation with the timeout; `None` (and a counted error) if it fails.
    async fn run<T>(&self, what: &str, op: impl Future<Output = RedisResult<T>>) -> Option<T> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(what, &e);
                None
            }
            Err(_) => {
                self.failed(what, &"timed out");
                None
            }
        }
    }

    /// The cached products of `ids` (`None` for a miss), or `None` if the cache cannot be
    /// used now.
    pub async fn read(&self, ids: &[Uuid]) -> Option<Vec<Option<Product>>> {
        if ids.is_empty() {
            return Some(vec![]);
        }
        if self.is_broken() {
            return None;
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(*id)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = self
            .run("read", redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await?;
        Some(
            values
                .iter()
                .map(|v| v.as_deref().and_then(decode))
                .collect(),
        )
    }

    /// Like [`read`](Self::read), and for each id the generation to fill it with.
    pub async fn read_for_fill(&self, ids: &[Uuid]) -> Option<Vec<(Option<Product>, Ticket)>> {
        if ids.is_empty() {
            return Some(vec![]);
        }
        if self.is_broken() {
            return None;
        }
        let keys: Vec<String> = ids
            .iter()
            .flat_map(|id| [self.key(*id), self.generation_key(*id)])
            .collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = self
            .run(
                "read for fill",
                redis::cmd("MGET").arg(&keys).query_async(&mut conn),
            )
            .await?;
        Some(
            values
                .chunks(2)
                .map(|pair| {
                    let product = pair[0].as_deref().and_then(decode);
                    (product, Ticket(pair[1].clone().unwrap_or_default()))
                })
                .collect(),
        )
    }

    /// Caches products loaded from PostgreSQL, each only if no invalidation happened since
    /// its ticket was read. Best effort. Returns how many were written.
    pub async fn fill(&self, loaded: &[(&Product, Ticket)]) -> usize {
        if loaded.is_empty() || self.is_broken() {
            return 0;
        }
        let writes = loaded.iter().map(|(p, ticket)| {
            let mut conn = self.conn.clone();
            let json = serde_json::to_string(p).expect("products serialize");
            let mut call = self.set_if_generation.prepare_invoke();
            call.key(self.key(p.id))
                .key(self.generation_key(p.id))
                .arg(&ticket.0)
                .arg(json)
                .arg(self.ttl_with_jitter());
            async move { self.run("fill", call.invoke_async::<i64>(&mut conn)).await }
        });
        let written = join_all(writes).await;
        let refused = written.iter().filter(|w| **w == Some(0)).count();
        if refused > 0 {
            debug!(refused, "cache fill refused: invalidated while loading");
        }
        written.iter().filter(|w| **w == Some(1)).count()
    }

    /// Removes a product's cached value and bars in-flight loads from writing theirs. Call
    /// after the change has committed.
    pub async fn invalidate(&self, id: Uuid) -> RedisResult<()> {
        let token = Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.generation_key(id))
            .arg(token)
            .arg("PX")
            .arg(GENERATION_TTL_MS)
            .ignore()
            .cmd("DEL")
            .arg(self.key(id))
            .ignore();
        match tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "invalidation timed out",
            ))),
        }
    }

    /// Invalidates now, or keeps trying in the background (ignoring the breaker) while Redis
    /// is away: a value left behind would be served stale to every instance until its TTL.
    pub async fn invalidate_or_retry(self: &Arc<Self>, id: Uuid) {
        let Err(e) = self.invalidate(id).await else {
            return;
        };
        self.failed("invalidate", &e);
        let cache = self.clone();
        tokio::spawn(async move {
            let until = Instant::now() + INVALIDATION_RETRY_FOR;
            let mut delay = Duration::from_millis(100);
            while Instant::now() < until {
                tokio::select! {
                    _ = cache.stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                match cache.invalidate(id).await {
                    Ok(()) => {
                        info!(product_id = %id, "product cache invalidated after a retry");
                        return;
                    }
                    Err(e) => debug!(product_id = %id, error = %e, "invalidation retry failed"),
                }
                delay = (delay * 2).min(INVALIDATION_RETRY_MAX_DELAY);
            }
            warn!(product_id = %id, "could not invalidate the cached product; it expires with its TTL");
        });
    }
}

/// A cached value; an undecodable one (e.g. written by another version) is a miss.
fn decode(json: &str) -> Option<Product> {
    serde_json::from_str(json).ok()
}
