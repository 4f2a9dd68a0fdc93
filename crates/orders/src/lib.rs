//! The orders service: places orders and orchestrates their saga across inventory and
//! payments, with deadlines and compensation.

pub mod api;
pub mod handlers;
pub mod http;
pub mod live;
pub mod messages;
pub mod program;
pub mod saga;
pub mod store;

pub use program::Orders;
