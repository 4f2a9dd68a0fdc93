//! users service.

pub mod domain;

pub mod program;
pub use program::Users;
