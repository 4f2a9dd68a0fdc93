//! Users, products and the gateway.
