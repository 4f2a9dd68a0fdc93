//! The products service: the catalogue, its Redis cache and the demo seed.
//!
//! `domain` holds the pure rules, `store` the SQL, `cache` the Redis cache-aside with its
//! invalidation guard, `catalog` the single-flight reads through it, `http` the routes, `api`
//! the request and response bodies, `seed` the demo catalogue.

pub mod api;
pub mod cache;
pub mod catalog;
pub mod domain;
pub mod http;
pub mod program;
pub mod seed;
pub mod store;

pub use program::Products;
pub use seed::seed;

/// The OpenAPI description of the public products routes (paths, bodies, the `bearer`
/// scheme), for the gateway to merge into `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <http::ApiDoc as utoipa::OpenApi>::openapi()
}
