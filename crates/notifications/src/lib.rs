//! The notifications service: tells users about their account and orders, once per fact.
//!
//! * [`domain`]: what each message says, without I/O;
//! * [`store`]: all SQL;
//! * [`sender`]: how a message leaves (the [`sender::Sender`] seam; the log by default);
//! * [`handlers`]: `user.registered`, `order.confirmed`, `order.cancelled`;
//! * [`http`]: `GET /api/notifications`; [`api`]: its body.

pub mod api;
pub mod domain;
pub mod handlers;
pub mod http;
pub mod program;
pub mod sender;
pub mod store;

pub use program::Notifications;
pub use sender::{LogSender, Sender};
