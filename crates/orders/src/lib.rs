//! orders service.

pub mod saga;

pub mod program;
pub use program::Orders;
