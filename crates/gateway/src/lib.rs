//! gateway service.

pub mod program;
pub use program::Gateway;
