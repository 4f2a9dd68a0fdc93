//! The `shop` binary's library: the command line ([`cli`]), the list of programs (this
//! file: the one place that names them all), `shop audit` ([`audit`]), `shop load`
//! ([`load`]) and the typed client of the public API they and the tests use ([`client`]).

pub mod audit;
pub mod cli;
pub mod client;
pub mod load;

use std::sync::Arc;

use clap::Args;
use shop_platform::{
    config::Config,
    service::{Fleet, Program},
    session::SessionSettings,
    topology::{Identity, Topology},
};

/// Every program's own settings, flattened into the command line beside the kernel's
/// [`Config`] (each struct lives in its program's crate).
#[derive(Args, Clone, Debug)]
pub struct Settings {
    #[command(flatten)]
    pub sessions: SessionSettings,
    #[command(flatten)]
    pub users: shop_users::program::UsersSettings,
    #[command(flatten)]
    pub products: shop_products::program::ProductsSettings,
    #[command(flatten)]
    pub inventory: shop_inventory::program::InventorySettings,
    #[command(flatten)]
    pub orders: shop_orders::program::OrdersSettings,
    #[command(flatten)]
    pub payments: shop_payments::program::PaymentsSettings,
    #[command(flatten)]
    pub notifications: shop_notifications::program::NotificationsSettings,
    #[command(flatten)]
    pub gateway: shop_gateway::program::GatewaySettings,
}

impl Settings {
    /// Every default, as if no flag or variable were set.
    pub fn defaults() -> Self {
        shop_platform::config::defaults()
    }
}

/// One program of the shop: who it is, how it is built from the settings, and where its
/// port setting is (so that tools and tests can place every program on a port of theirs).
pub struct Entry {
    pub identity: &'static Identity,
    pub build: fn(&Settings) -> Arc<dyn Program>,
    pub port: fn(&mut Settings) -> &mut u16,
}

/// Every program, services first and the gateway last (the order `shop up` starts them in).
/// Everything that needs all programs iterates this list: the broker topology, the
/// gateway's services, `shop migrate`, `shop audit`, the tests' clusters.
pub const PROGRAMS: &[Entry] = &[
    Entry {
        identity: &shop_users::program::IDENTITY,
        build: |s| {
            Arc::new(shop_users::Users {
                settings: s.users.clone(),
                sessions: s.sessions.clone(),
            })
        },
        port: |s| &mut s.users.users_port,
    },
    Entry {
        identity: &shop_products::program::IDENTITY,
        build: |s| {
            Arc::new(shop_products::Products {
                settings: s.products.clone(),
            })
        },
        port: |s| &mut s.products.products_port,
    },
    Entry {
        identity: &shop_inventory::program::IDENTITY,
        build: |s| {
            Arc::new(shop_inventory::Inventory {
                settings: s.inventory.clone(),
            })
        },
        port: |s| &mut s.inventory.inventory_port,
    },
    Entry {
        identity: &shop_orders::program::IDENTITY,
        build: |s| {
            Arc::new(shop_orders::Orders {
                settings: s.orders.clone(),
            })
        },
        port: |s| &mut s.orders.orders_port,
    },
    Entry {
        identity: &shop_payments::program::IDENTITY,
        build: |s| {
            Arc::new(shop_payments::Payments {
                settings: s.payments.clone(),
                saga_deadline: s.orders.saga_deadline(),
            })
        },
        port: |s| &mut s.payments.payments_port,
    },
    Entry {
        identity: &shop_notifications::program::IDENTITY,
        build: |s| {
            Arc::new(shop_notifications::Notifications::new(
                s.notifications.clone(),
            ))
        },
        port: |s| &mut s.notifications.notifications_port,
    },
    Entry {
        identity: &shop_gateway::program::IDENTITY,
        build: |s| {
            Arc::new(shop_gateway::Gateway {
                settings: s.gateway.clone(),
                sessions: s.sessions.clone(),
            })
        },
        port: |s| &mut s.gateway.gateway_port,
    },
];

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

/// The whole shop as each program sees it: the topology, and each program's URL (from
/// SHOP_SERVICE_URLS, or SHOP_SERVICES_HOST and the program's port).
pub fn fleet(config: &Config, settings: &Settings) -> Fleet {
    let urls = PROGRAMS.iter().map(|e| {
        let port = (e.build)(settings).port();
        (e.identity.name, config.service_url(e.identity.name, port))
    });
    Fleet::new(topology(), urls)
}

/// The environment variable of a program's port (`SHOP_<NAME>_PORT`, as each crate's
/// settings declare it; a test below holds them to it).
pub fn port_variable(program: &str) -> String {
    format!("SHOP_{}_PORT", program.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use shop_platform::events::ALL_TYPES;

    #[test]
    fn every_program_is_built_as_itself_and_listed_once() {
        let settings = Settings::defaults();
        let mut seen = std::collections::HashSet::new();
        for e in PROGRAMS {
            assert!(seen.insert(e.identity.name), "{} twice", e.identity.name);
            let program = (e.build)(&settings);
            assert_eq!(program.identity(), e.identity);
            let mut moved = settings.clone();
            *(e.port)(&mut moved) = 1;
            assert_eq!((e.build)(&moved).port(), 1, "{}", e.identity.name);
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
    fn every_port_has_its_variable_and_a_distinct_default() {
        let help = cli::Cli::command().render_long_help().to_string();
        let settings = Settings::defaults();
        let mut ports = std::collections::HashSet::new();
        for e in PROGRAMS {
            let var = port_variable(e.identity.name);
            assert!(help.contains(&var), "--help lacks {var}");
            assert!(ports.insert((e.build)(&settings).port()), "{var} shared");
        }
        let fleet = fleet(&Config::defaults(), &settings);
        assert_eq!(fleet.url("orders").unwrap(), "http://127.0.0.1:8084");
        assert!(fleet.url("nobody").is_err());
    }
}
