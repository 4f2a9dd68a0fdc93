//! products service.

pub mod program;
pub use program::Products;
