//! Public API types (filled in by the services).
