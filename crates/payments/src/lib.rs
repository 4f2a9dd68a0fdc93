//! payments service.

pub mod provider;

pub mod program;
pub use program::Payments;
