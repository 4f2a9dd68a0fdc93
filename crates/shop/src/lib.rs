//! The `shop` binary's library: the command line ([`cli`]), the list of programs (this
//! file: the one place that names them all), `shop audit` ([`audit`]), `shop load`
//! ([`load`]) and the typed client of the public API they and the tests use ([`client`]).

pub mod audit;
pub mod cli;
pub mod client;
pub mod load;
pub mod local;
pub mod timeline;

use std::sync::Arc;

use clap::Args;
use shop_platform::{
    config::Config,
    service::{Fleet, Program},
    session::SessionSettings,
    topology::{Identity, Topology},
};

/// Every program's own settings, flattened into the command line beside the kernel's
/// [`Config`] (each struct lives in its program's crate), and every program's port.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    #[command(flatten)]
    pub ports: Ports,
    #[command(flatten)]
    pub sessions: SessionSettings,
    #[command(flatten)]
    pub users: shop_users::program::UsersSettings,
    #[command(flatten)]
    pub products: shop_products::program::ProductsSettings,
    #[command(flatten)]
    pub orders: shop_orders::program::OrdersSettings,
    #[command(flatten)]
    pub payments: shop_payments::program::PaymentsSettings,
    #[command(flatten)]
    pub notifications: shop_notifications::NotificationsSettings,
    #[command(flatten)]
    pub gateway: shop_gateway::program::GatewaySettings,
}

impl Settings {
    /// Every default, as if no flag or variable were set.
    pub fn defaults() -> Self {
        shop_platform::config::defaults()
    }
}

/// One program of the shop: who it is, and how it is built from the settings.
pub struct Entry {
    pub identity: &'static Identity,
    pub build: fn(&Settings) -> Arc<dyn Program>,
}

/// Every program, services first and the gateway last (the order `shop up` starts them in).
/// Everything that needs all programs iterates this list: the broker topology, the
/// gateway's services, the ports, `shop migrate`, `shop audit`, the tests' clusters.
pub const PROGRAMS: &[Entry] = &[
    Entry {
        identity: &shop_users::program::IDENTITY,
        build: |s| {
            Arc::new(shop_users::Users {
                settings: s.users.clone(),
                sessions: s.sessions.clone(),
            })
        },
    },
    Entry {
        identity: &shop_products::program::IDENTITY,
        build: |s| {
            Arc::new(shop_products::Products {
                settings: s.products.clone(),
            })
        },
    },
    Entry {
        identity: &shop_inventory::program::IDENTITY,
        build: |_| Arc::new(shop_inventory::Inventory),
    },
    Entry {
        identity: &shop_orders::program::IDENTITY,
        build: |s| {
            Arc::new(shop_orders::Orders {
                settings: s.orders.clone(),
            })
        },
    },
    Entry {
        identity: &shop_payments::program::IDENTITY,
        build: |s| {
            Arc::new(shop_payments::Payments {
                settings: s.payments.clone(),
                saga_deadline: s.orders.saga_deadline(),
            })
        },
    },
    Entry {
        identity: &shop_notifications::program::IDENTITY,
        build: |s| {
            Arc::new(shop_notifications::Notifications::new(
                s.notifications.clone(),
            ))
        },
    },
    Entry {
        identity: &shop_gateway::program::IDENTITY,
        build: |s| {
            Arc::new(shop_gateway::Gateway {
                settings: s.gateway.clone(),
                sessions: s.sessions.clone(),
            })
        },
    },
];

/// The port of every program: `--<name>-port` and `SHOP_<NAME>_PORT`, by default its
/// identity's. One setting per program of [`PROGRAMS`], so a new program gets its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports(Vec<(&'static str, u16)>);

impl Ports {
    /// The port of `program` (0 for a name outside the list, which binds any free port).
    pub fn of(&self, program: &str) -> u16 {
        self.0
            .iter()
            .find(|(name, _)| *name == program)
            .map_or(0, |(_, port)| *port)
    }

    /// Moves `program` to `port` (tests place every program on a free port).
    pub fn set(&mut self, program: &str, port: u16) {
        if let Some(entry) = self.0.iter_mut().find(|(name, _)| *name == program) {
            entry.1 = port;
        }
    }
}

/// The argument id (and long flag) of a program's port.
fn port_flag(program: &str) -> String {
    format!("{program}-port")
}

impl clap::FromArgMatches for Ports {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Ports(
            PROGRAMS
                .iter()
                .map(|e| {
                    let name = e.identity.name;
                    let port = m.get_one::<u16>(&port_flag(name)).copied();
                    (name, port.unwrap_or(e.identity.default_port))
                })
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for Ports {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for e in PROGRAMS {
            let name = e.identity.name;
            cmd = cmd.arg(
                clap::Arg::new(port_flag(name))
                    .long(port_flag(name))
                    .env(port_variable(name))
                    .value_parser(clap::value_parser!(u16))
                    .default_value(e.identity.default_port.to_string())
                    .global(true)
                    .help(format!("Port of the {name} program")),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The names of every program, in [`PROGRAMS`] order.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROGRAMS.iter().map(|e| e.identity.name)
}

/// The program called `name`, built from `settings`.
pub fn program(name: &str, settings: &Settings) -> Option<Arc<dyn Program>> {
    PROGRAMS
        .iter()
        .find(|e| e.identity.name == name)
        .map(|e| (e.build)(settings))
}

/// Every program's bindings.
pub fn topology() -> Topology {
    Topology::new(PROGRAMS.iter().map(|e| e.identity))
}

/// The AsyncAPI document of the shop's events.
pub fn asyncapi() -> serde_json::Value {
    shop_platform::asyncapi::document(PROGRAMS.iter().map(|e| e.identity))
}

/// The whole shop as each program sees it: the topology, and each program's URLs (from
/// SHOP_SERVICE_URLS, one per instance, or SHOP_SERVICES_HOST and the program's port).
pub fn fleet(config: &Config, settings: &Settings) -> Fleet {
    let urls = names().flat_map(|name| {
        config
            .service_urls_of(name, settings.ports.of(name))
            .into_iter()
            .map(move |url| (name, url))
    });
    Fleet::new(topology(), urls)
}

/// The environment variable of a program's port.
/// The PostgreSQL roles of every service with a schema (and `shop audit`'s), when
/// `SHOP_DB_PASSWORDS` asks for them; see [`shop_platform::db::setup_roles`].
pub async fn setup_roles(config: &Config) -> anyhow::Result<()> {
    let schemas: Vec<&str> = PROGRAMS
        .iter()
        .filter(|e| e.identity.uses_database)
        .map(|e| e.identity.name)
        .collect();
    shop_platform::db::setup_roles(config, &schemas).await
}

/// Each broker-using program's own RabbitMQ user with its permissions (through the
/// management API at `SHOP_AMQP_ADMIN_URL`), then every queue declared as `SHOP_AMQP_URL`'s
/// user, when `SHOP_AMQP_PASSWORDS` asks for users; see [`shop_platform::topology::Names::permissions`].
pub async fn setup_broker_users(config: &Config) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if config.amqp_passwords.is_none() {
        return Ok(());
    }
    let admin = config.amqp_admin_url.as_deref().context(
        "SHOP_AMQP_PASSWORDS needs SHOP_AMQP_ADMIN_URL (RabbitMQ's management API) to make the users",
    )?;
    let mut base = url::Url::parse(admin).context("SHOP_AMQP_ADMIN_URL is not a URL")?;
    let (login, password) = (
        base.username().to_string(),
        base.password().map(str::to_string),
    );
    let _ = base.set_username("");
    let _ = base.set_password(None);
    // The vhost is the same on every node of a cluster: the first URL names it.
    let first = config.amqp_urls().into_iter().next().unwrap_or_default();
    let amqp = url::Url::parse(&first).context("SHOP_AMQP_URL is not a URL")?;
    let vhost = match amqp.path().trim_start_matches('/') {
        "" => "/".to_string(),
        v => percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned(),
    };
    let api = |segments: &[&str]| {
        let mut u = base.clone();
        u.path_segments_mut()
            .expect("an http URL")
            .pop_if_empty()
            .extend(segments);
        u
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let names = shop_platform::topology::Names::new(&config.namespace);
    for e in PROGRAMS.iter().filter(|e| e.identity.uses_broker) {
        let name = e.identity.name;
        let secret = config.amqp_password(name).with_context(|| {
            format!("SHOP_AMQP_PASSWORDS has no password for {name} (it needs one per program that uses RabbitMQ)")
        })?;
        let user = names.user(name);
        let [configure, write, read] = names.permissions(name);
        for (url, body) in [
            (
                api(&["api", "users", &user]),
                serde_json::json!({"password": secret, "tags": ""}),
            ),
            (
                api(&["api", "permissions", &vhost, &user]),
                serde_json::json!({"configure": configure, "write": write, "read": read}),
            ),
        ] {
            http.put(url.clone())
                .basic_auth(&login, password.as_deref())
                .json(&body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("making RabbitMQ user {user} at {}", url.path()))?;
        }
    }
    let broker = shop_platform::amqp::Broker::connect(
        shop_platform::amqp::BrokerConfig::for_setup(config, topology()),
        Arc::new(shop_platform::metrics::Metrics::new("shop-setup")),
    )
    .await?;
    broker.close().await;
    Ok(())
}

pub fn port_variable(program: &str) -> String {
    format!("SHOP_{}_PORT", program.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use shop_platform::events::ALL_TYPES;

    /// The public document lists exactly the services' `/api/...` routes, each secured
    /// unless the service serves it to anyone; no internal route is in it.
    #[test]
    fn the_public_document_lists_exactly_the_services_public_routes() {
        use shop_platform::http::Access;
        use std::collections::BTreeSet;
        let doc = serde_json::to_value(shop_gateway::openapi::document()).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                documented.insert((method.to_uppercase(), path.clone(), secured));
            }
        }
        let served: BTreeSet<_> = PROGRAMS
            .iter()
            .flat_map(|e| (e.identity.routes)())
            .filter(|r| r.access != Access::Service)
            .map(|r| {
                (
                    r.method.to_string(),
                    r.path.to_string(),
                    r.access != Access::Public,
                )
            })
            .collect();
        assert!(
            documented.is_superset(&served),
            "served, not documented: {:?}",
            served.difference(&documented).collect::<Vec<_>>()
        );
        // The gateway's own: its documents and the browser's cookie session.
        let gateway_own = [
            "/openapi.json",
            "/asyncapi.json",
            "/docs",
            shop_gateway::web::SESSION_PATH,
            shop_gateway::ops::OVERVIEW,
            shop_gateway::ops::TIMELINE,
        ];
        let extra: Vec<_> = documented
            .difference(&served)
            .filter(|(_, p, _)| !gateway_own.iter().any(|g| p.starts_with(g)))
            .collect();
        assert!(extra.is_empty(), "documented, not served: {extra:?}");
    }

    #[test]
    fn every_program_is_built_as_itself_and_listed_once() {
        let settings = Settings::defaults();
        let mut seen = std::collections::HashSet::new();
        for e in PROGRAMS {
            assert!(seen.insert(e.identity.name), "{} twice", e.identity.name);
            assert_eq!((e.build)(&settings).identity(), e.identity);
        }
    }

    #[test]
    fn every_bound_type_is_in_the_catalogue() {
        for e in PROGRAMS {
            for t in e.identity.consumes {
                assert!(ALL_TYPES.contains(t), "{}: {t}", e.identity.name);
            }
        }
    }

    #[test]
    fn the_saga_events_have_consumers() {
        let t = topology();
        for ty in [
            "order.created",
            "stock.reserved",
            "payment.requested",
            "payment.refund_requested",
        ] {
            assert!(t.has_consumers(ty), "{ty}");
        }
        assert!(!t.has_consumers("notification.sent"));
    }

    #[test]
    fn the_asyncapi_document_covers_every_binding_and_publication_and_is_committed() {
        let doc = asyncapi();
        for e in PROGRAMS {
            let name = e.identity.name;
            for t in e.identity.consumes {
                assert!(doc["channels"][t].is_object(), "{t}");
                let op = &doc["operations"][format!("{name}.receive.{t}")];
                assert_eq!(op["action"], "receive", "{name} {t}");
            }
            for t in e.identity.publishes {
                let op = &doc["operations"][format!("{name}.send.{t}")];
                assert_eq!(op["action"], "send", "{name} {t}");
            }
        }
        let committed = include_str!("../../../docs/asyncapi.json");
        let committed: serde_json::Value = serde_json::from_str(committed).expect("JSON");
        assert!(
            committed == doc,
            "docs/asyncapi.json is out of date: run `cargo run -- asyncapi > docs/asyncapi.json`"
        );
    }

    #[test]
    fn every_program_has_a_port_setting_with_a_distinct_default() {
        let help = cli::Cli::command().render_long_help().to_string();
        let settings = Settings::defaults();
        let mut ports = std::collections::HashSet::new();
        for name in names() {
            let var = port_variable(name);
            assert!(help.contains(&var), "--help lacks {var}");
            assert!(ports.insert(settings.ports.of(name)), "{var} shared");
        }
        assert_eq!(settings.ports.of("gateway"), 8080);
        let fleet = fleet(&Config::defaults(), &settings);
        assert_eq!(fleet.url("orders").unwrap(), "http://127.0.0.1:8084");
        assert!(fleet.url("nobody").is_err());
    }

    #[test]
    fn a_port_is_set_by_its_flag() {
        use clap::Parser as _;
        let cli = cli::Cli::try_parse_from(["shop", "--orders-port", "9184", "up"]).unwrap();
        assert_eq!(cli.settings.ports.of("orders"), 9184);
        assert_eq!(cli.settings.ports.of("users"), 8081);
        assert!(cli::Cli::try_parse_from(["shop", "--orders-port", "nope", "up"]).is_err());
    }
}
