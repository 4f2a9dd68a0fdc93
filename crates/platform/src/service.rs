//! The one start-up every program runs: connect to PostgreSQL (its own schema), Redis and
//! RabbitMQ with clear errors, migrate, build the program's routes and handler, then serve
//! HTTP, consume its queue and relay its outbox until asked to stop.
//!
//! Stopping is graceful and bounded: stop accepting requests and finish those in flight,
//! stop taking messages and finish (and ack) those in flight, flush the outbox, stop
//! background tasks, close the connections. Past `SHOP_SHUTDOWN_TIMEOUT_SECS` the rest is
//! abandoned; nothing is lost by that (unacked messages are redelivered, the outbox stays).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use async_trait::async_trait;
use axum::Router;
use futures::FutureExt as _;
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::{
    amqp::{Broker, BrokerConfig},
    bus::Handler,
    config::Config,
    db,
    health::{Check, PostgresCheck, RabbitCheck, RedisCheck},
    http::{Ops, ops_router, with_common_layers},
    metrics::Metrics,
    outbox::{self, Relay},
    redis_util::{self, RedisConn},
};

/// What a program needs to build itself.
#[derive(Clone)]
pub struct Context {
    pub name: &'static str,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// The program's pool (search_path = its schema), if it uses the database.
    pub pool: Option<PgPool>,
    /// Redis for sessions and rate limits.
    pub redis: Option<RedisConn>,
    /// Redis for the cache (the same server unless SHOP_CACHE_REDIS_URL says otherwise).
    pub cache: Option<RedisConn>,
    pub broker: Option<Arc<Broker>>,
    /// Wakes the program's outbox relay: call `wake()` after committing outbox rows outside
    /// an event handler (event handlers' commits wake it by themselves). Without it the rows
    /// wait for the relay's next poll.
    pub outbox: outbox::Waker,
    /// Cancelled when the program stops: background tasks end on it.
    pub stop: CancellationToken,
}

impl Context {
    pub fn pool(&self) -> &PgPool {
        self.pool.as_ref().expect("this program uses the database")
    }
}

/// What a program contributes.
#[derive(Default)]
pub struct Parts {
    pub router: Router,
    pub handler: Option<Arc<dyn Handler>>,
    pub checks: Vec<Arc<dyn Check>>,
    /// Background tasks; they must end when `Context::stop` is cancelled.
    pub tasks: Vec<JoinHandle<()>>,
}

/// One of the seven programs.
#[async_trait]
pub trait Program: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether it owns a PostgreSQL schema (and so an outbox and inbox).
    fn uses_database(&self) -> bool {
        true
    }
    /// Whether it talks to RabbitMQ.
    fn uses_broker(&self) -> bool {
        true
    }
    /// Whether it uses the cache Redis.
    fn uses_cache(&self) -> bool {
        false
    }
    /// Applies its migrations (its pool's search_path is its schema).
    async fn migrate(&self, _pool: &PgPool) -> anyhow::Result<()> {
        Ok(())
    }
    async fn build(&self, ctx: &Context) -> anyhow::Result<Parts>;
}

/// A started program.
pub struct Running {
    pub name: &'static str,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks it to stop and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("program task panicked")?
    }

    /// Waits until it stops (after `stop` is cancelled elsewhere).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("program task panicked")?
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Connects and migrates a program's schema (for `shop migrate`).
pub async fn migrate(program: &dyn Program, config: &Config) -> anyhow::Result<()> {
    if program.uses_database() {
        let pool = db::connect(&config.database_url, program.name(), 2).await?;
        program
            .migrate(&pool)
            .await
            .with_context(|| format!("migrating {}", program.name()))?;
        pool.close().await;
    }
    Ok(())
}

/// Starts `program` on `listener`; returns once it serves. Errors name what is unreachable.
/// The program stops when `shutdown` is cancelled.
pub async fn start(
    program: Arc<dyn Program>,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let name = program.name();
    let metrics = Arc::new(Metrics::new(name));
    let mut checks: Vec<Arc<dyn Check>> = Vec::new();

    let pool = if program.uses_database() {
        let pool = db::connect(&config.database_url, name, config.db_pool_size).await?;
        program
            .migrate(&pool)
            .await
            .with_context(|| format!("migrating {name}"))?;
        checks.push(Arc::new(PostgresCheck(pool.clone())));
        Some(pool)
    } else {
        None
    };

    let redis = redis_util::connect(&config.redis_url).await?;
    checks.push(Arc::new(RedisCheck {
        name: "redis",
        conn: redis.clone(),
        is_cache: false,
    }));
    let cache = if program.uses_cache() {
        if config.cache_redis_url.is_some() {
            let mut cache = redis_util::connect(config.cache_redis_url()).await?;
            redis_util::warn_about_cache(&mut cache).await;
            checks.push(Arc::new(RedisCheck {
                name: "redis_cache",
                conn: cache.clone(),
                is_cache: true,
            }));
            Some(cache)
        } else {
            let mut cache = redis.clone();
            redis_util::warn_about_cache(&mut cache).await;
            Some(cache)
        }
    } else {
        None
    };

    let broker = if program.uses_broker() {
        let broker =
            Broker::connect(BrokerConfig::from_config(&config, name), metrics.clone()).await?;
        checks.push(Arc::new(RabbitCheck(broker.clone())));
        Some(broker)
    } else {
        None
    };

    let stop = CancellationToken::new();
    let outbox_waker = outbox::Waker::default();
    let ctx = Context {
        name,
        config: config.clone(),
        metrics: metrics.clone(),
        pool: pool.clone(),
        redis: Some(redis),
        cache,
        broker: broker.clone(),
        outbox: outbox_waker.clone(),
        stop: stop.clone(),
    };
    let parts = program
        .build(&ctx)
        .await
        .with_context(|| format!("starting {name}"))?;
    checks.extend(parts.checks);

    // Consumer and outbox relay.
    let consumer_stop = CancellationToken::new();
    let relay_stop = CancellationToken::new();
    let consumer = match (&parts.handler, &broker, &pool) {
        (Some(handler), Some(broker), Some(pool)) => {
            let handler = Arc::new(WakeRelay {
                inner: handler.clone(),
                waker: outbox_waker.clone(),
            });
            Some(broker.consume(name, pool.clone(), handler, consumer_stop.clone()))
        }
        _ => None,
    };
    let relay = match (&broker, &pool) {
        (Some(broker), Some(pool)) => {
            let relay = Relay {
                pool: pool.clone(),
                schema: name.to_string(),
                publisher: broker.clone(),
                metrics: metrics.clone(),
                batch: config.outbox_batch,
                retention_hours: config.retention_hours,
            };
            Some(tokio::spawn(
                relay
                    .run_woken_by(relay_stop.clone(), outbox_waker.clone())
                    .instrument(info_span!("outbox", program = name)),
            ))
        }
        _ => None,
    };

    let before_scrape: Option<
        Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    > = pool.clone().map(|pool| {
        let metrics = metrics.clone();
        Arc::new(move || {
            let pool = pool.clone();
            let metrics = metrics.clone();
            async move {
                if let Ok((depth, age)) = outbox::stats(&pool).await {
                    metrics.outbox_depth.set(depth);
                    metrics.outbox_oldest_age_seconds.set(age);
                }
            }
            .boxed()
        }) as Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>
    });
    let ops = Ops {
        checks: Arc::new(checks),
        metrics: metrics.clone(),
        before_scrape,
    };
    let app = with_common_layers(
        parts.router.merge(ops_router(ops)),
        metrics.clone(),
        std::time::Duration::from_secs(config.http_timeout_secs),
    );

    let addr = listener.local_addr()?;
    info!(program = name, %addr, "serving");
    let http_stop = CancellationToken::new();
    let http = {
        let http_stop = http_stop.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
        })
    };

    let own_stop = CancellationToken::new();
    let task = {
        let own_stop = own_stop.clone();
        let timeout = config.shutdown_timeout();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = own_stop.cancelled() => {}
                }
                info!("stopping");
                let graceful = async {
                    http_stop.cancel();
                    let _ = http.await;
                    consumer_stop.cancel();
                    if let Some(c) = consumer {
                        let _ = c.await;
                    }
                    relay_stop.cancel();
                    if let Some(r) = relay {
                        let _ = r.await;
                    }
                    stop.cancel();
                    for t in parts.tasks {
                        let _ = t.await;
                    }
                };
                if tokio::time::timeout(timeout, graceful).await.is_err() {
                    warn!(
                        ?timeout,
                        "graceful stop timed out; exiting anyway (unacked work is redelivered)"
                    );
                }
                if let Some(b) = broker {
                    b.close().await;
                }
                if let Some(p) = pool {
                    p.close().await;
                }
                info!("stopped");
                Ok(())
            }
            .instrument(info_span!("program", name)),
        )
    };
    Ok(Running {
        name,
        addr,
        stop: own_stop,
        task,
    })
}

/// A program's handler that also wakes the outbox relay once a handled event's transaction
/// (which may have written outbox rows) has committed.
struct WakeRelay {
    inner: Arc<dyn Handler>,
    waker: outbox::Waker,
}

#[async_trait]
impl Handler for WakeRelay {
    async fn handle(
        &self,
        event: &crate::envelope::Envelope,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), crate::bus::HandlerError> {
        self.inner.handle(event, tx).await
    }

    fn committed(&self, event: &crate::envelope::Envelope) {
        self.waker.wake();
        self.inner.committed(event);
    }
}

/// Binds `bind:port` with a clear error.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}
