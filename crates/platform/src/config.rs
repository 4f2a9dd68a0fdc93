//! The kernel's configuration: the infrastructure every program shares (server URLs,
//! namespace, messaging, pools, timeouts). Every field is a `--flag` and an environment
//! variable, so that `shop --help` is the configuration reference. What belongs to one
//! service (its port, the saga deadline, cache lifetimes, rate limits, the payment
//! simulator) is a `clap::Args` struct in that service's crate, flattened into the `shop`
//! command line beside this one.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// The kind of RabbitMQ queue declared for every service queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    /// Classic durable queues: right for a single broker node.
    Classic,
    /// Quorum queues: replicated, for a RabbitMQ cluster.
    Quorum,
}

/// Settings shared by every program. Defaults work against RabbitMQ, Redis and PostgreSQL
/// on their standard loopback ports.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// RabbitMQ URL, or the URLs of a cluster's nodes separated by commas: a program
    /// connects to one of them (tried in a shuffled order) and, when that node is lost,
    /// to another.
    #[arg(long, env = "SHOP_AMQP_URL", global = true)]
    #[arg(default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,

    /// Redis URL for sessions and rate limits (keep it on a `noeviction` server).
    #[arg(long, env = "SHOP_REDIS_URL", global = true)]
    #[arg(default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Redis URL for the product cache (may be an `allkeys-lru` server); defaults to SHOP_REDIS_URL.
    #[arg(long, env = "SHOP_CACHE_REDIS_URL", global = true)]
    pub cache_redis_url: Option<String>,

    /// PostgreSQL URL; the database is created if missing, each service keeps its own schema.
    #[arg(long, env = "SHOP_DATABASE_URL", global = true)]
    #[arg(default_value = "postgres://postgres@127.0.0.1:5432/shop")]
    pub database_url: String,

    /// Least privilege in RabbitMQ: `users=secret1,orders=secret2,...`. A program with a
    /// password here connects as its own user (`shop-<namespace>.<program>`), allowed to
    /// declare, read and write only its own queues and the events exchange, and declares
    /// only its own queues. `shop migrate` (and `shop up`) make the users and declare every
    /// queue, through the management API at `SHOP_AMQP_ADMIN_URL`. Never logged.
    #[arg(
        long,
        env = "SHOP_AMQP_PASSWORDS",
        global = true,
        hide_env_values = true
    )]
    pub amqp_passwords: Option<String>,

    /// RabbitMQ's management API with an administrator's credentials
    /// (`http://admin:secret@rabbitmq:15672`), for `shop migrate` to make the users of
    /// `SHOP_AMQP_PASSWORDS`.
    #[arg(
        long,
        env = "SHOP_AMQP_ADMIN_URL",
        global = true,
        hide_env_values = true
    )]
    pub amqp_admin_url: Option<String>,

    /// Least privilege in PostgreSQL: `users=secret1,orders=secret2,...,audit=secret7`. A
    /// service with a password here connects as its own role (`<database>_<service>`), which
    /// owns its schema and cannot read another's; `audit` is `shop audit`'s read-only role.
    /// `shop migrate` (and `shop up`) create the roles from `SHOP_DATABASE_URL`'s
    /// administrator; a deployment of one service needs only its own entry. Unset: every
    /// program connects as `SHOP_DATABASE_URL`'s user. Never logged.
    #[arg(long, env = "SHOP_DB_PASSWORDS", global = true, hide_env_values = true)]
    pub db_passwords: Option<String>,

    /// Prefix of every exchange, queue and Redis key (lets several shops or test runs share servers).
    #[arg(long, env = "SHOP_NAMESPACE", default_value = "", global = true)]
    pub namespace: String,

    /// Address the HTTP servers bind to.
    #[arg(long, env = "SHOP_BIND", default_value = "127.0.0.1", global = true)]
    pub bind: String,

    /// Host the gateway uses to reach the services.
    #[arg(long, env = "SHOP_SERVICES_HOST", global = true)]
    #[arg(default_value = "127.0.0.1")]
    pub services_host: String,

    /// Per-service base URLs overriding host and port, e.g.
    /// `orders=http://shop-orders:8084,products=http://shop-products:8082` (one host per service,
    /// as in Kubernetes or Compose). A name given more than once is several instances:
    /// `orders=http://a:8084,orders=http://b:9084`; callers spread their requests over them and
    /// skip one that refuses connections or is not ready.
    #[arg(long, env = "SHOP_SERVICE_URLS", value_delimiter = ',', global = true)]
    pub service_urls: Vec<String>,

    /// Messages a consumer may hold unacknowledged (and process concurrently). 50 rather than
    /// the original blueprint's 10: at saturation a service's handlers wait mostly on commits, and more
    /// messages in flight let more of them share the database's WAL flushes and the relay's
    /// batches (+15-20% completed sagas/s on two cores, the same latency at 100 orders/s).
    /// Concurrency on the database stays bounded by the pool.
    #[arg(long, env = "SHOP_PREFETCH", default_value_t = 50, global = true)]
    pub prefetch: u16,

    /// The most deliveries a consumer handles in one database transaction: those it holds
    /// when it starts one, with one inbox insert for all, acked together after the commit
    /// (20-30% more completed sagas/s at saturation than one transaction each, measured in
    /// alternating runs on two cores). 1: each delivery in a task and a transaction of its
    /// own, up to the prefetch at once. A handler that waits inside its transaction on
    /// something slow (payments, on its provider) handles each in its own regardless.
    #[arg(long, env = "SHOP_CONSUMER_BATCH", default_value_t = 32, global = true)]
    pub consumer_batch: u16,

    /// How many such transactions one consumer runs at once.
    #[arg(
        long,
        env = "SHOP_CONSUMER_TRANSACTIONS",
        default_value_t = 2,
        global = true
    )]
    pub consumer_transactions: u16,

    /// Time-to-live of a message in a service queue, in milliseconds; an expired message is
    /// dead-lettered, never dropped.
    #[arg(long, env = "SHOP_MESSAGE_TTL_MS", global = true)]
    #[arg(default_value_t = 60_000)]
    pub message_ttl_ms: u32,

    /// Delays between attempts of a transiently failing handler, in milliseconds; after the
    /// last one the message is dead-lettered with its last error.
    #[arg(
        long,
        env = "SHOP_RETRY_DELAYS_MS",
        default_value = "1000,5000,30000",
        value_delimiter = ',',
        global = true
    )]
    pub retry_delays_ms: Vec<u32>,

    /// Queue type of service queues.
    #[arg(long, env = "SHOP_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic, global = true)]
    pub queue_type: QueueType,

    /// Connections in each service's PostgreSQL pool.
    #[arg(long, env = "SHOP_DB_POOL_SIZE", default_value_t = 8, global = true)]
    pub db_pool_size: u32,

    /// Outbox rows published per relay batch.
    #[arg(long, env = "SHOP_OUTBOX_BATCH", default_value_t = 200, global = true)]
    pub outbox_batch: i64,

    /// How long published outbox rows and processed inbox ids are kept, in hours.
    #[arg(long, env = "SHOP_RETENTION_HOURS", global = true)]
    #[arg(default_value_t = 168)]
    pub retention_hours: u32,

    /// Seconds a program keeps serving after SIGTERM with its readiness answering 503, so
    /// that load balancers stop sending to it before it stops taking work (then the graceful
    /// stop begins). Default 5 for `shop run`, 0 for `shop up`.
    #[arg(long, env = "SHOP_DRAIN_SECS", global = true)]
    pub drain_secs: Option<u64>,

    /// Seconds a graceful stop may take before the process exits anyway.
    #[arg(long, env = "SHOP_SHUTDOWN_TIMEOUT_SECS", global = true)]
    #[arg(default_value_t = 15)]
    pub shutdown_timeout_secs: u64,

    /// Seconds an HTTP request may take before it is answered 503.
    #[arg(long, env = "SHOP_HTTP_TIMEOUT_SECS", global = true)]
    #[arg(default_value_t = 10)]
    pub http_timeout_secs: u64,

    /// Seconds a client has to send a request's headers, from when its connection opens or
    /// falls idle after a response; then the connection is closed.
    #[arg(long, env = "SHOP_HTTP_HEADER_TIMEOUT_SECS", global = true)]
    #[arg(default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Open HTTP connections a program holds at most; more wait to be accepted.
    #[arg(long, env = "SHOP_HTTP_MAX_CONNECTIONS", global = true)]
    #[arg(default_value_t = 2048)]
    pub http_max_connections: usize,

    /// Keys that sign and verify caller assertions between the programs, comma-separated,
    /// each at least 32 bytes: the first signs, every one verifies (list the new key first,
    /// keep the old one until every program runs with the new). Never logged. Without one,
    /// `shop up` makes one per run and `shop run` on a loopback address uses a development
    /// key (with a warning); bound elsewhere, `shop run` refuses to start.
    #[arg(
        long,
        env = "SHOP_ASSERTION_KEYS",
        global = true,
        hide_env_values = true
    )]
    pub assertion_keys: Option<String>,

    /// A file holding the assertion keys instead (same format), e.g. a mounted secret.
    #[arg(long, env = "SHOP_ASSERTION_KEY_FILE", global = true)]
    pub assertion_key_file: Option<std::path::PathBuf>,

    /// Log filter (tracing's EnvFilter syntax, e.g. `info,sqlx=warn` or `off`); RUST_LOG is
    /// read when it is unset. Default: `info,sqlx=warn,lapin=off,tower_http=info`.
    #[arg(long, env = "SHOP_LOG", global = true)]
    pub log: Option<String>,

    /// Log format: `text` (coloured only on a terminal, never with NO_COLOR set) or `json`.
    #[arg(long, env = "SHOP_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
}

impl Config {
    /// The configuration with every default, as if no flag or variable were set.
    pub fn defaults() -> Self {
        defaults()
    }

    pub fn cache_redis_url(&self) -> &str {
        self.cache_redis_url.as_deref().unwrap_or(&self.redis_url)
    }

    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_ms
            .iter()
            .map(|ms| Duration::from_millis(u64::from(*ms)))
            .collect()
    }

    /// The assertion keys, from SHOP_ASSERTION_KEYS or SHOP_ASSERTION_KEY_FILE.
    pub fn assertion_keys(&self) -> anyhow::Result<crate::assertion::Keys> {
        use anyhow::Context as _;
        let list = match (&self.assertion_keys, &self.assertion_key_file) {
            (Some(list), _) => list.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading SHOP_ASSERTION_KEY_FILE {}", path.display()))?,
            (None, None) => anyhow::bail!(
                "no assertion key: set SHOP_ASSERTION_KEYS or SHOP_ASSERTION_KEY_FILE (the same for every program)"
            ),
        };
        crate::assertion::Keys::parse(&list).map_err(anyhow::Error::msg)
    }

    /// The password of `name`'s own PostgreSQL role, from [`Config::db_passwords`].
    pub fn db_password(&self, name: &str) -> Option<String> {
        password_of(self.db_passwords.as_deref()?, name)
    }

    /// The password of `name`'s own RabbitMQ user, from [`Config::amqp_passwords`].
    pub fn amqp_password(&self, name: &str) -> Option<String> {
        password_of(self.amqp_passwords.as_deref()?, name)
    }

    /// How long a stopping program drains ([`Config::drain_secs`]; 5 s when unset).
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs.unwrap_or(5))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// How long a program keeps an idle pooled connection to another: less than the
    /// servers' header-read timeout, which closes idle connections, so that a request is
    /// never sent on a connection the server is closing at that moment.
    pub fn client_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_secs.max(1) * 1000 / 2)
    }

    /// What one client may hold of a program's HTTP server.
    pub fn server_limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            header_read_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            max_connections: self.http_max_connections,
        }
    }

    /// The broker nodes' URLs of SHOP_AMQP_URL (one or more, comma-separated).
    pub fn amqp_urls(&self) -> Vec<String> {
        self.amqp_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Base URLs at which `program` is reached on `port`: its entries in SHOP_SERVICE_URLS
    /// (one per instance: a name may be repeated), or SHOP_SERVICES_HOST and the port.
    pub fn service_urls_of(&self, program: &str, port: u16) -> Vec<String> {
        let listed: Vec<String> = self
            .service_urls
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(name, _)| name.trim() == program)
            .map(|(_, url)| url.trim().trim_end_matches('/').to_string())
            .collect();
        match listed.is_empty() {
            true => vec![format!("http://{}:{port}", self.services_host)],
            false => listed,
        }
    }

    /// A Redis key with this shop's namespace: `<namespace>:<key>`, or `key` without one.
    pub fn redis_key(&self, key: &str) -> String {
        redis_key(&self.namespace, key)
    }
}

/// A Redis key in `namespace`: `<namespace>:<key>`, or `key` without a namespace.
pub fn redis_key(namespace: &str, key: &str) -> String {
    if namespace.is_empty() {
        key.to_string()
    } else {
        format!("{namespace}:{key}")
    }
}

/// Any settings struct with every default, as if no flag or variable were set.
/// `name`'s entry of a `name=password,...` list.
fn password_of(list: &str, name: &str) -> Option<String> {
    list.split(',').find_map(|entry| {
        let (who, password) = entry.split_once('=')?;
        (who.trim() == name).then(|| password.to_string())
    })
}

pub fn defaults<T: Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("shop").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(Vec::<String>::new())
        .expect("defaults parse");
    T::from_arg_matches(&m).expect("defaults parse")
}

/// A URL with its password masked, safe for logs and error messages.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_loopback() {
        let c = Config::defaults();
        assert_eq!(c.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.prefetch, 50);
        assert_eq!(c.message_ttl_ms, 60_000);
        assert_eq!(c.retry_delays_ms, vec![1000, 5000, 30000]);
        assert_eq!(c.cache_redis_url(), "redis://127.0.0.1:6379");
        assert_eq!(c.service_urls_of("orders", 8084), ["http://127.0.0.1:8084"]);
    }

    #[test]
    fn several_broker_nodes_are_comma_separated() {
        let mut c = Config::defaults();
        assert_eq!(c.amqp_urls(), [c.amqp_url.clone()]);
        c.amqp_url = "amqp://a:5672/%2f, amqp://b:5672/%2f,".into();
        assert_eq!(c.amqp_urls(), ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]);
    }

    #[test]
    fn service_urls_override_host_and_port() {
        let mut c = Config::defaults();
        c.service_urls = vec!["orders=http://shop-orders:9000/".into()];
        assert_eq!(
            c.service_urls_of("orders", 8084),
            ["http://shop-orders:9000"]
        );
        assert_eq!(c.service_urls_of("users", 8081), ["http://127.0.0.1:8081"]);
        // A repeated name is another instance.
        c.service_urls.push("orders=http://b:9084".into());
        assert_eq!(
            c.service_urls_of("orders", 8084),
            ["http://shop-orders:9000", "http://b:9084"]
        );
    }

    #[test]
    fn redis_keys_are_separated_from_their_namespace() {
        assert_eq!(redis_key("rt", "session:ab"), "rt:session:ab");
        assert_eq!(redis_key("", "session:ab"), "session:ab");
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
    }
}
