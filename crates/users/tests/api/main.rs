//! The users service through its HTTP API, against the real PostgreSQL, Redis and RabbitMQ.
//! Each test gets its own database and namespace (TestEnv) and plays the gateway itself by
//! signing the caller assertion the gateway would.

mod admin;
mod auth;
mod helpers;
mod limits;
