//! The products service through its HTTP API, against the real PostgreSQL, Redis and
//! RabbitMQ. Each test gets its own database and namespace (TestEnv) and plays the gateway
//! itself by signing the caller assertion the gateway would.

mod cache;
mod catalog;
mod helpers;
mod internal;
mod seed;
