//! Liveness and readiness: `/health/ready` checks each dependency and answers
//! `{status, info, error, details}` (the shape of NestJS terminus), 503 when one is down.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::future::join_all;
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::{
    amqp::Broker,
    redis_util::{self, RedisConn},
};

/// One dependency check; `Ok` carries details shown beside `"status": "up"`.
#[async_trait]
pub trait Check: Send + Sync {
    fn name(&self) -> String;
    async fn check(&self) -> Result<Map<String, Value>, String>;
}

pub struct PostgresCheck(pub PgPool);

#[async_trait]
impl Check for PostgresCheck {
    fn name(&self) -> String {
        "postgres".into()
    }
    async fn check(&self) -> Result<Map<String, Value>, String> {
        let q = sqlx::query("SELECT 1").execute(&self.0);
        match tokio::time::timeout(Duration::from_secs(2), q).await {
            Ok(Ok(_)) => Ok(Map::new()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// Up while the program runs; down from the moment it starts stopping, so that its readiness
/// answers 503 while it drains (it still serves meanwhile).
pub struct Stopping(pub Arc<std::sync::atomic::AtomicBool>);

#[async_trait]
impl Check for Stopping {
    fn name(&self) -> String {
        "lifecycle".into()
    }
    async fn check(&self) -> Result<Map<String, Value>, String> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Err("stopping: draining before the graceful stop".into())
        } else {
            Ok(Map::new())
        }
    }
}

pub struct RedisCheck {
    pub name: &'static str,
    pub conn: RedisConn,
    /// A cache server: a missing eviction policy is reported as a warning.
    pub is_cache: bool,
}

#[async_trait]
impl Check for RedisCheck {
    fn name(&self) -> String {
        self.name.into()
    }
    async fn check(&self) -> Result<Map<String, Value>, String> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(
            Duration::from_secs(2),
            redis_util::memory_settings(&mut conn),
        )
        .await
        {
            Ok(Ok((max, policy))) => {
                let mut m = Map::new();
                m.insert("maxmemory".into(), json!(max));
                m.insert("maxmemory_policy".into(), json!(policy));
                if self.is_cache
                    && let Some(w) = redis_util::cache_risk(max, &policy)
                {
                    m.insert("warning".into(), json!(w));
                }
                Ok(m)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

pub struct RabbitCheck(pub Arc<Broker>);

#[async_trait]
impl Check for RabbitCheck {
    fn name(&self) -> String {
        "rabbitmq".into()
    }
    async fn check(&self) -> Result<Map<String, Value>, String> {
        if self.0.is_connected() {
            Ok(Map::new())
        } else {
            Err("not connected (reconnecting)".into())
        }
    }
}

/// Runs every check concurrently; returns (all up, body).
pub async fn readiness(checks: &[Arc<dyn Check>]) -> (bool, Value) {
    let results = join_all(
        checks
            .iter()
            .map(|c| async move { (c.name(), c.check().await) }),
    )
    .await;
    let (mut info, mut error, mut details) = (Map::new(), Map::new(), Map::new());
    for (name, r) in results {
        let entry = match r {
            Ok(mut m) => {
                m.insert("status".into(), json!("up"));
                info.insert(name.clone(), Value::Object(m.clone()));
                Value::Object(m)
            }
            Err(message) => {
                let v = json!({"status": "down", "message": message});
                error.insert(name.clone(), v.clone());
                v
            }
        };
        details.insert(name, entry);
    }
    let ok = error.is_empty();
    (
        ok,
        json!({"status": if ok { "ok" } else { "error" }, "info": info, "error": error, "details": details}),
    )
}
