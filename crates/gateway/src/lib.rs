//! The API gateway: the public API of Shop (authentication, rate limits, limits, routing to
//! the services), its OpenAPI document and browsable docs, and aggregated readiness.

pub mod client;
pub mod openapi;
pub mod program;
pub mod proxy;

pub use program::Gateway;
