//! The products service's request and response bodies. The gateway builds `/openapi.json`
//! from these types (and from [`crate::openapi`]), so they are the contract: request bodies
//! reject unknown fields, money is integer cents, times are RFC 3339.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A product of the catalogue. Also the JSON kept in the Redis cache.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema, sqlx::FromRow)]
pub struct Product {
    pub id: Uuid,
    #[schema(example = "MUG-001")]
    pub sku: String,
    #[schema(example = "Coffee mug")]
    pub name: String,
    pub description: String,
    /// Unit price in cents of `currency`.
    #[schema(example = 1299)]
    pub price_cents: i64,
    /// ISO 4217 code.
    #[schema(example = "EUR")]
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One page of the catalogue, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<Product>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /api/products` (administrators).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// 1 to 64 characters of letters, digits, `-` and `_`; unique.
    #[schema(
        example = "MUG-001",
        max_length = 64,
        pattern = r"^[A-Za-z0-9_-]{1,64}$"
    )]
    pub sku: String,
    /// 1 to 200 characters (trimmed), no control characters.
    #[schema(
        example = "Coffee mug",
        min_length = 1,
        max_length = 200,
        format = "text"
    )]
    pub name: String,
    /// At most 2000 characters; no control characters but line breaks and tabs.
    #[serde(default)]
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]*$"
    )]
    pub description: String,
    /// 0 to 100000000.
    #[schema(example = 1299, minimum = 0, maximum = 100_000_000)]
    pub price_cents: i64,
    /// Units in stock at creation (0 to 1000000), passed on to the inventory service.
    #[serde(default)]
    #[schema(example = 100, minimum = 0, maximum = 1_000_000)]
    pub initial_stock: i64,
}

/// `PATCH /api/products/{id}` (administrators): at least one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    /// 1 to 200 characters (trimmed), no control characters.
    #[schema(min_length = 1, max_length = 200, format = "text")]
    pub name: Option<String>,
    /// At most 2000 characters; no control characters but line breaks and tabs.
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]*$"
    )]
    pub description: Option<String>,
    /// 0 to 100000000.
    #[schema(minimum = 0, maximum = 100_000_000)]
    pub price_cents: Option<i64>,
}

/// What the orders service needs to price an order line
/// (`GET /internal/products?ids=...`, not part of the public API).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ProductPrice {
    pub id: Uuid,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
}

impl From<&Product> for ProductPrice {
    fn from(p: &Product) -> Self {
        ProductPrice {
            id: p.id,
            name: p.name.clone(),
            price_cents: p.price_cents,
            currency: p.currency.clone(),
        }
    }
}
