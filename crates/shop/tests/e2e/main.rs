//! End-to-end tests: every program runs as its own `shop run` process against the real
//! RabbitMQ, Redis and PostgreSQL; the tests speak only to the public gateway (and read the
//! databases for the invariant audit).

mod api;
mod browser;
#[path = "../common/mod.rs"]
mod cluster;
mod drain;
mod instances;
mod limits;
mod load;
mod local;
mod mail;
mod readme;
mod saga;
mod streams;
mod traces;
mod trust;
