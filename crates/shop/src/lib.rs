//! The `shop` binary's library: the command line and the registry of programs.

pub mod audit;
pub mod cli;
pub mod load;

use std::sync::Arc;

use shop_platform::service::Program;

/// Every program, services first and the gateway last (the order `shop up` starts them in).
pub const PROGRAMS: &[&str] = &[
    "users",
    "products",
    "inventory",
    "orders",
    "payments",
    "notifications",
    "gateway",
];

/// The program called `name`.
pub fn program(name: &str) -> Option<Arc<dyn Program>> {
    Some(match name {
        "users" => Arc::new(shop_users::Users),
        "products" => Arc::new(shop_products::Products),
        "inventory" => Arc::new(shop_inventory::Inventory),
        "orders" => Arc::new(shop_orders::Orders),
        "payments" => Arc::new(shop_payments::Payments),
        "notifications" => Arc::new(shop_notifications::Notifications),
        "gateway" => Arc::new(shop_gateway::Gateway),
        _ => return None,
    })
}
