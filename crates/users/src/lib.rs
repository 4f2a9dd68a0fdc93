//! The users service: accounts, password login and sessions.
//!
//! `domain` holds the pure rules, `store` the SQL, `http` the routes, `api` the public
//! request and response bodies, `program` the start-up (migrations, administrator).

pub mod api;
pub mod domain;
pub mod hasher;
pub mod http;
pub mod program;
pub mod store;

pub use program::Users;

/// The OpenAPI description of the users routes (paths, bodies, the `bearer` scheme), for
/// the gateway to merge into `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <http::ApiDoc as utoipa::OpenApi>::openapi()
}
