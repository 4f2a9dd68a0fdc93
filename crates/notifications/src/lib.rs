//! notifications service.

pub mod program;
pub use program::Notifications;
