//! inventory service.

pub mod program;
pub use program::Inventory;
