//! The notifications service: tells users about their account and orders, once per fact,
//! by e-mail.
//!
//! * [`domain`]: what each message says (templates in `templates/`), without I/O;
//! * [`store`]: all SQL;
//! * [`handlers`]: `user.registered`, `order.confirmed`, `order.cancelled`,
//!   `payment.refunded`, each recorded as a pending notification;
//! * [`delivery`]: the worker that sends pending notifications and marks them sent;
//! * [`sender`]: how a message leaves (SMTP, or the log by default);
//! * [`http`]: `GET /api/notifications`; [`api`]: its body.

pub mod api;
pub mod delivery;
pub mod domain;
pub mod handlers;
pub mod http;
pub mod program;
pub mod sender;
pub mod store;

pub use program::{Notifications, NotificationsSettings};
pub use sender::{Email, LogSender, SendError, Sender, SmtpSender};
