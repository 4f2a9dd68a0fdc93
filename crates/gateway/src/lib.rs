//! The API gateway: the public API of Shop (authentication, rate limits, limits, routing to
//! the services), its OpenAPI document and browsable docs, aggregated readiness, and the
//! storefront's pages with the browser's cookie session.

pub mod client;
pub mod openapi;
pub mod ops;
pub mod program;
pub mod proxy;
pub mod web;

pub use program::Gateway;
