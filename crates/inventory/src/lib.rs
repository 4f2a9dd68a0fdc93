//! The inventory service: stock per product, reserved for orders all-or-nothing, released
//! when a saga compensates and sold when an order is confirmed.
//!
//! * [`domain`]: the rules, without I/O;
//! * [`store`]: all SQL;
//! * [`handlers`]: `product.created`, `order.created`, `stock.release_requested`,
//!   `order.confirmed`;
//! * [`http`]: `GET /api/inventory/{product_id}`, `POST /api/inventory/{product_id}/adjustments`;
//! * [`api`]: their request and response bodies.

pub mod api;
pub mod domain;
pub mod handlers;
pub mod http;
pub mod program;
pub mod store;

pub use program::Inventory;
pub use store::stock_report;
