//! Request and response bodies of the inventory API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A product's stock (`GET /api/inventory/{product_id}`, and the answer to an adjustment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockLevel {
    pub product_id: Uuid,
    /// Units that can be ordered now.
    pub available: i64,
    /// Units held for orders awaiting payment.
    pub reserved: i64,
}

/// A manual change of a product's available stock (admin).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockAdjustment {
    /// Units added (positive) or removed (negative); not zero, at most 1 000 000 either way.
    /// Stock never goes below zero, and reserved units cannot be removed.
    #[schema(minimum = -1_000_000, maximum = 1_000_000, example = 10)]
    pub delta: i64,
    /// Why (1 to 200 characters, trimmed), kept with the adjustment.
    #[schema(min_length = 1, max_length = 200, format = "text", example = "restock")]
    pub reason: String,
}
