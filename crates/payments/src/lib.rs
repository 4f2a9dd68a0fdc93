//! The payments service: charges an order once through the simulated [`provider`], answers
//! repeated requests with the first result, settles slow (late) captures in the background
//! and refunds captured payments on request.
//!
//! * [`domain`]: payment states and what each request does in them, without I/O;
//! * [`store`]: all SQL;
//! * [`handlers`]: `payment.requested`, `payment.refund_requested`;
//! * [`capture`]: the background capturer of slow payments;
//! * [`http`]: `GET /internal/payments/{order_id}`; [`api`]: its body.

pub mod api;
pub mod capture;
pub mod domain;
pub mod handlers;
pub mod http;
pub mod program;
pub mod provider;
pub mod store;

pub use program::Payments;
pub use store::money_report;
