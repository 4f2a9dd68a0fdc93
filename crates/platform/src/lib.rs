//! Shared kernel of Shop.
//!
//! Every service is built from the same parts, written once here: the event [`envelope`] and
//! its typed [`events`], the RabbitMQ [`amqp`] bus (publisher confirms, manual acks, retries
//! with growing delays, dead-letter queues, reconnection), the transactional [`outbox`] and
//! its relay, the idempotent [`inbox`], the in-memory [`memory`] bus for unit tests,
//! [`config`], [`telemetry`], [`health`], [`metrics`], [`http`] helpers and the one
//! start-up function every program runs ([`service`]).

pub mod admin;
pub mod amqp;
pub mod api;
pub mod assertion;
pub mod asyncapi;
pub mod bus;
pub mod config;
pub mod crash;
pub mod db;
pub mod dlq;
pub mod envelope;
pub mod events;
pub mod health;
pub mod http;
pub mod inbox;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod ratelimit;
pub mod redis_util;
pub mod server;
pub mod service;
pub mod session;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod timeline;
pub mod topology;
pub mod upstream;
pub mod validation;

pub use envelope::{Envelope, Event};

/// `Display` and `FromStr` for an enum that is stored and shown as the strings of its
/// `as_str` (a status, a reason, a kind): `FromStr` accepts exactly those of its `ALL`
/// variants and refuses any other string with the error `make_error(s)`.
#[macro_export]
macro_rules! named_variants {
    ($ty:ty, $err:ty, $make_error:expr) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ($make_error)(s))
            }
        }
    };
}
