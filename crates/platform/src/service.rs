//! The one start-up every program runs, as named steps: [`Connections::open`] (PostgreSQL
//! in the program's own schema, migrated; Redis; RabbitMQ, each with a clear error naming
//! what is unreachable), the program's own `build`, [`Workers::spawn`] (the consumer of its
//! queue and the relay of its outbox), then serving HTTP until asked to stop.
//!
//! Stopping is graceful, ordered and bounded ([`Shutdown`]): stop accepting requests and
//! finish those in flight, stop taking messages and finish (and ack) those in flight, flush
//! the outbox, stop background tasks, close the connections. Past
//! `SHOP_SHUTDOWN_TIMEOUT_SECS` the rest is abandoned; nothing is lost by that (unacked
//! messages are redelivered, the outbox stays). See docs/architecture.md, "Start-up and
//! shutdown".

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_trait::async_trait;
use axum::Router;
use futures::{FutureExt as _, future::BoxFuture};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::{
    amqp::{Broker, BrokerConfig},
    assertion::Verifier,
    bus::Handler,
    config::Config,
    db,
    health::{Check, PostgresCheck, RabbitCheck, RedisCheck, Stopping},
    http::{Ops, ops_router, with_common_layers},
    metrics::Metrics,
    outbox::{self, Relay},
    redis_util::{self, RedisConn},
    topology::{Identity, Topology},
    upstream::Instances,
};

/// What a program knows of the whole shop: every program's identity (from which the
/// broker topology derives) and where each program's HTTP is reached (one or several
/// instances, [`Instances`]). Built once, by the `shop` crate, from its list of programs.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub topology: Topology,
    programs: Arc<[(&'static str, Arc<Instances>)]>,
}

impl Fleet {
    /// `urls`: each program's base URL; a program named more than once has that many
    /// instances.
    pub fn new(topology: Topology, urls: impl IntoIterator<Item = (&'static str, String)>) -> Self {
        let mut grouped: Vec<(&'static str, Vec<String>)> = Vec::new();
        for (name, url) in urls {
            match grouped.iter_mut().find(|(n, _)| *n == name) {
                Some((_, list)) => list.push(url),
                None => grouped.push((name, vec![url])),
            }
        }
        Fleet {
            topology,
            programs: grouped
                .into_iter()
                .map(|(name, urls)| (name, Arc::new(Instances::new(name, urls))))
                .collect(),
        }
    }

    /// Base URL of a program's HTTP (its first instance's).
    pub fn url(&self, program: &str) -> anyhow::Result<&str> {
        Ok(self
            .instances(program)?
            .urls()
            .next()
            .expect("a program has at least one instance"))
    }

    /// A program's instances, shared by everything in this program that calls it.
    pub fn instances(&self, program: &str) -> anyhow::Result<&Arc<Instances>> {
        self.programs
            .iter()
            .find(|(name, _)| *name == program)
            .map(|(_, i)| i)
            .with_context(|| format!("no program called {program} in this shop"))
    }

    /// Every program's instances, but `except`'s.
    pub fn others<'a>(&'a self, except: &'a str) -> impl Iterator<Item = &'a Arc<Instances>> + 'a {
        self.programs
            .iter()
            .filter(move |(name, _)| *name != except)
            .map(|(_, i)| i)
    }
}

/// What a program needs to build itself.
#[derive(Clone)]
pub struct Context {
    pub name: &'static str,
    pub config: Config,
    /// The other programs: where they are, what they consume.
    pub fleet: Fleet,
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
    /// Where `/metrics` and the detailed readiness are served instead of the program's own
    /// port (which then answers only [`crate::http::public_health_router`]): for a program
    /// whose port is public.
    pub admin: Option<TcpListener>,
}

/// Who a program is: declared once, in its own crate, by [`crate::service!`] (or by hand for
/// a program without a schema, as the gateway).
pub trait Identify {
    fn identity(&self) -> &'static Identity;
}

/// Declares, once, who a service is: `MIGRATOR` (its `migrations/` directory, embedded at
/// build time), `IDENTITY` (its name, default port, migrations and the event types it
/// consumes and publishes, as [`Identity::service`]; `with` changes other fields) and its
/// program type's [`Identify`]. Its routes are the crate's `http::routes()` table.
///
/// ```text
/// shop_platform::service! {
///     /// Who the notifications service is: ...
///     Notifications: "notifications" on port 8086,
///     consumes handlers::HANDLED, publishes &[events::NotificationSent::TYPE]
/// }
/// ```
#[macro_export]
// `crate::http::routes` is the calling service's own route table, on purpose.
#[allow(clippy::crate_in_macro_def)]
macro_rules! service {
    (
        $(#[$doc:meta])*
        $program:ty: $name:literal on port $port:literal,
        consumes $consumes:expr, publishes $publishes:expr
        $(, with $($field:ident: $value:expr),+)? $(,)?
    ) => {
        /// The schema's migrations, embedded at build time.
        pub static MIGRATOR: ::sqlx::migrate::Migrator = ::sqlx::migrate!("./migrations");

        $(#[$doc])*
        pub static IDENTITY: $crate::topology::Identity = $crate::topology::Identity {
            $($($field: $value,)+)?
            routes: || {
                let mut table = crate::http::routes().table().to_vec();
                table.extend_from_slice($crate::admin::routes::<()>().table());
                table
            },
            ..$crate::topology::Identity::service($name, $port, &MIGRATOR, $consumes, $publishes)
        };

        impl $crate::service::Identify for $program {
            fn identity(&self) -> &'static $crate::topology::Identity {
                &IDENTITY
            }
        }
    };
}

/// One of the seven programs.
#[async_trait]
pub trait Program: Identify + Send + Sync + 'static {
    fn name(&self) -> &'static str {
        self.identity().name
    }
    /// Applies its migrations (its pool's search_path is its schema).
    async fn migrate(&self, pool: &PgPool) -> anyhow::Result<()> {
        if let Some(m) = self.identity().migrations {
            m.run(pool).await?;
        }
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
    if program.identity().uses_database {
        let pool = db::connect_service(config, program.name(), 2).await?;
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
    fleet: Fleet,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let name = program.name();
    let metrics = Arc::new(Metrics::new(name));
    let identity = program.identity();
    metrics.declare_event_types(identity.consumes, identity.publishes);
    let conns = Connections::open(program.as_ref(), &config, &fleet, &metrics).await?;

    let stop = CancellationToken::new();
    let outbox_waker = outbox::Waker::default();
    let ctx = Context {
        name,
        config: config.clone(),
        fleet,
        metrics: metrics.clone(),
        pool: conns.pool.clone(),
        redis: Some(conns.redis.clone()),
        cache: conns.cache.clone(),
        broker: conns.broker.clone(),
        outbox: outbox_waker.clone(),
        stop: stop.clone(),
    };
    let parts = program
        .build(&ctx)
        .await
        .with_context(|| format!("starting {name}"))?;
    let workers = Workers::spawn(name, &conns, parts.handler, outbox_waker, &config, &metrics);

    let mut checks = conns.checks.clone();
    checks.extend(parts.checks);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    checks.push(Arc::new(Stopping(stopping.clone())));
    let ops = Ops {
        checks: Arc::new(checks),
        metrics: metrics.clone(),
        before_scrape: conns
            .pool
            .clone()
            .map(|pool| outbox_gauges(pool, metrics.clone())),
    };
    let verifier = Arc::new(Verifier::new(
        config.assertion_keys()?,
        name,
        conns.redis.clone(),
        &config.namespace,
    ));
    let request_timeout = Duration::from_secs(config.http_timeout_secs);
    let limits = config.server_limits();
    let http_stop = CancellationToken::new();
    let mut servers = Vec::new();
    let health = match parts.admin {
        Some(admin) => {
            info!(program = name, addr = %admin.local_addr()?, "serving metrics and readiness");
            let admin_app = with_common_layers(
                ops_router(ops.clone()),
                name,
                metrics.clone(),
                request_timeout,
            );
            servers.push(tokio::spawn(crate::server::serve(
                admin,
                admin_app,
                limits,
                http_stop.clone(),
            )));
            crate::http::public_health_router(ops)
        }
        None => ops_router(ops),
    };
    // A service's administrators' routes (`admin`), the same on each.
    let router = if identity.migrations.is_some() {
        let admin = Arc::new(crate::admin::Admin {
            service: name,
            broker: conns
                .broker
                .clone()
                .filter(|_| !identity.consumes.is_empty()),
            pool: conns.pool.clone(),
        });
        let routes = crate::admin::routes::<()>().with_state(());
        parts.router.merge(routes.layer(axum::Extension(admin)))
    } else {
        parts.router
    };
    let app = with_common_layers(
        router.merge(health).layer(axum::Extension(verifier)),
        name,
        metrics.clone(),
        request_timeout,
    );
    let addr = listener.local_addr()?;
    info!(program = name, %addr, "serving");
    servers.push(tokio::spawn(crate::server::serve(
        listener,
        app,
        limits,
        http_stop.clone(),
    )));

    let steps = Shutdown {
        stopping,
        drain: config.drain(),
        http_stop,
        servers,
        workers,
        tasks_stop: stop,
        tasks: parts.tasks,
        conns,
        timeout: config.shutdown_timeout(),
    };
    let own_stop = CancellationToken::new();
    let task = tokio::spawn({
        let own_stop = own_stop.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = own_stop.cancelled() => {}
            }
            steps.run().await;
            Ok(())
        }
        .instrument(info_span!("program", name))
    });
    Ok(Running {
        name,
        addr,
        stop: own_stop,
        task,
    })
}

/// A program's connections to the three servers (those its identity says it uses), and the
/// readiness checks that watch them.
struct Connections {
    pool: Option<PgPool>,
    redis: RedisConn,
    cache: Option<RedisConn>,
    broker: Option<Arc<Broker>>,
    checks: Vec<Arc<dyn Check>>,
}

impl Connections {
    async fn open(
        program: &dyn Program,
        config: &Config,
        fleet: &Fleet,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Connections> {
        let identity = program.identity();
        let name = identity.name;
        let mut checks: Vec<Arc<dyn Check>> = Vec::new();
        let pool = if identity.uses_database {
            let pool = db::connect_service(config, name, config.db_pool_size).await?;
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
        let cache = if !identity.uses_cache {
            None
        } else if config.cache_redis_url.is_some() {
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
        };

        let broker = if identity.uses_broker {
            let cfg = BrokerConfig::from_config(config, name, fleet.topology.clone());
            let broker = Broker::connect(cfg, metrics.clone()).await?;
            checks.push(Arc::new(RabbitCheck(broker.clone())));
            Some(broker)
        } else {
            None
        };
        Ok(Connections {
            pool,
            redis,
            cache,
            broker,
            checks,
        })
    }

    async fn close(self) {
        if let Some(b) = self.broker {
            b.close().await;
        }
        if let Some(p) = self.pool {
            p.close().await;
        }
    }
}

/// The consumer of a program's queue and the relay of its outbox, each with its own stop so
/// that they end in order (consumer first: its last commits may add outbox rows).
struct Workers {
    consumer_stop: CancellationToken,
    consumer: Option<JoinHandle<()>>,
    relay_stop: CancellationToken,
    relay: Option<JoinHandle<()>>,
}

impl Workers {
    fn spawn(
        name: &'static str,
        conns: &Connections,
        handler: Option<Arc<dyn Handler>>,
        waker: outbox::Waker,
        config: &Config,
        metrics: &Arc<Metrics>,
    ) -> Workers {
        let consumer_stop = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        let (Some(broker), Some(pool)) = (&conns.broker, &conns.pool) else {
            return Workers {
                consumer_stop,
                consumer: None,
                relay_stop,
                relay: None,
            };
        };
        let consumer = handler.map(|inner| {
            let handler = Arc::new(WakeRelay::new(inner, waker.clone()));
            broker.consume(name, pool.clone(), handler, consumer_stop.clone())
        });
        let relay = Relay {
            pool: pool.clone(),
            program: name,
            publisher: broker.clone(),
            metrics: metrics.clone(),
            batch: config.outbox_batch,
            retention_hours: config.retention_hours,
        };
        let relay = tokio::spawn(
            relay
                .run_woken_by(relay_stop.clone(), waker)
                .instrument(info_span!("outbox", program = name)),
        );
        Workers {
            consumer_stop,
            consumer,
            relay_stop,
            relay: Some(relay),
        }
    }
}

/// Everything a running program must stop, in the order it must stop it.
struct Shutdown {
    /// Set first: readiness answers 503 while the program drains.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// How long it keeps serving with readiness at 503 before the graceful stop.
    drain: Duration,
    http_stop: CancellationToken,
    /// The program's HTTP servers (its port, and its admin port if it has one).
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    workers: Workers,
    /// Ends the program's background tasks.
    tasks_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    conns: Connections,
    timeout: Duration,
}

impl Shutdown {
    async fn run(self) {
        let Shutdown {
            stopping,
            drain,
            http_stop,
            servers,
            workers,
            tasks_stop,
            tasks,
            conns,
            timeout,
        } = self;
        stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if !drain.is_zero() {
            // Still serving and consuming: load balancers see the 503 and move away.
            info!(
                ?drain,
                "draining: readiness answers 503, requests still served"
            );
            tokio::time::sleep(drain).await;
        }
        info!("stopping");
        let graceful = async {
            http_stop.cancel();
            for server in servers {
                let _ = server.await;
            }
            workers.consumer_stop.cancel();
            if let Some(c) = workers.consumer {
                let _ = c.await;
            }
            workers.relay_stop.cancel();
            if let Some(r) = workers.relay {
                let _ = r.await;
            }
            tasks_stop.cancel();
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(timeout, graceful).await.is_err() {
            warn!(
                ?timeout,
                "graceful stop timed out; exiting anyway (unacked work is redelivered)"
            );
        }
        conns.close().await;
        info!("stopped");
    }
}

/// Refreshes the outbox gauges before each scrape of `/metrics`.
fn outbox_gauges(
    pool: PgPool,
    metrics: Arc<Metrics>,
) -> Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync> {
    Arc::new(move || {
        let pool = pool.clone();
        let metrics = metrics.clone();
        async move {
            let idle = pool.num_idle() as i64;
            metrics
                .db_connections_in_use
                .set(i64::from(pool.size()) - idle);
            if let Ok((depth, age)) = outbox::stats(&pool).await {
                metrics.outbox_depth.set(depth);
                metrics.outbox_oldest_age_seconds.set(age);
            }
        }
        .boxed()
    })
}

/// A program's handler that also wakes the outbox relay once a handled event's transaction
/// that wrote outbox rows has committed (a wake for one that wrote none would only send the
/// relay to find nothing).
struct WakeRelay {
    inner: Arc<dyn Handler>,
    waker: outbox::Waker,
    /// Events whose handling wrote outbox rows (or may have: the count is the process's),
    /// not yet committed.
    writing: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
}

/// Bound on [`WakeRelay::writing`]: entries of transactions that never committed (their event
/// dead-lettered) are dropped past it (a wake then lost is made up by the relay's poll).
const MAX_WRITING: usize = 10_000;

impl WakeRelay {
    fn new(inner: Arc<dyn Handler>, waker: outbox::Waker) -> Self {
        WakeRelay {
            inner,
            waker,
            writing: Default::default(),
        }
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<uuid::Uuid>> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Handler for WakeRelay {
    async fn handle(
        &self,
        event: &crate::envelope::Envelope,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), crate::bus::HandlerError> {
        let before = outbox::enqueued();
        self.inner.handle(event, tx).await?;
        if outbox::enqueued() != before {
            let mut writing = self.writing();
            if writing.len() >= MAX_WRITING {
                writing.clear();
            }
            writing.insert(event.id);
        }
        Ok(())
    }

    fn committed(&self, event: &crate::envelope::Envelope) {
        if self.writing().remove(&event.id) {
            self.waker.wake();
        }
        self.inner.committed(event);
    }

    // Everything else is the service's own handler's.
    fn batched(&self) -> bool {
        self.inner.batched()
    }

    async fn lock_batch(
        &self,
        events: &[&crate::envelope::Envelope],
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), crate::bus::HandlerError> {
        self.inner.lock_batch(events, tx).await
    }
}

/// Binds `bind:port` with a clear error.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrapper every service's handler runs in keeps what the handler says of batches
    /// (a wrapper that answered with the defaults would batch payments' slow provider calls
    /// and skip inventory's lock order).
    #[test]
    fn the_relay_waking_wrapper_keeps_the_handlers_batching() {
        struct Alone;
        #[async_trait]
        impl Handler for Alone {
            async fn handle(
                &self,
                _: &crate::envelope::Envelope,
                _: &mut sqlx::PgConnection,
            ) -> Result<(), crate::bus::HandlerError> {
                Ok(())
            }
            fn batched(&self) -> bool {
                false
            }
        }
        let wrapped = WakeRelay::new(Arc::new(Alone), outbox::Waker::default());
        assert!(!wrapped.batched());
    }

    /// The relay is woken by the commit of a handler's transaction that wrote outbox rows,
    /// and only by such a commit (another would send it to find nothing).
    #[tokio::test]
    async fn only_a_commit_that_wrote_outbox_rows_wakes_the_relay() {
        use futures::FutureExt as _;
        use sqlx::Connection as _;

        /// Writes an outbox row for events of type `writes`, nothing for others.
        struct Writes;
        #[async_trait]
        impl Handler for Writes {
            async fn handle(
                &self,
                event: &crate::envelope::Envelope,
                tx: &mut sqlx::PgConnection,
            ) -> Result<(), crate::bus::HandlerError> {
                if event.event_type == "writes" {
                    outbox::enqueue(tx, event).await?;
                }
                Ok(())
            }
        }
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        // The session's own outbox (a temporary table, gone with the connection).
        sqlx::query("CREATE TEMPORARY TABLE outbox (event_id uuid, event_type text, body text, trace_context text)")
            .execute(&mut db)
            .await
            .unwrap();
        let waker = outbox::Waker::default();
        let relay = WakeRelay::new(Arc::new(Writes), waker.clone());
        let event = |kind: &str| crate::envelope::Envelope {
            event_type: kind.into(),
            ..crate::envelope::Envelope::new(
                uuid::Uuid::now_v7(),
                &crate::events::UserRegistered {
                    user_id: uuid::Uuid::now_v7(),
                    email: "a@b.test".into(),
                    name: "A".into(),
                },
                uuid::Uuid::now_v7(),
                uuid::Uuid::now_v7(),
            )
        };
        let woken = || waker.woken().now_or_never().is_some();
        for (kind, wakes) in [("writes", true), ("reads", false), ("writes", true)] {
            let e = event(kind);
            let mut tx = db.begin().await.unwrap();
            relay.handle(&e, &mut tx).await.unwrap();
            assert!(!woken(), "{kind}: not before the commit");
            tx.commit().await.unwrap();
            relay.committed(&e);
            assert_eq!(woken(), wakes, "{kind}");
        }
    }
}
