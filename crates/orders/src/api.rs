//! Request and response bodies of the orders API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// One line of a new order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderLine {
    pub product_id: Uuid,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000, example = 1)]
    pub quantity: i32,
}

/// A new order. Prices and the total are set by the server.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// 1 to 50 lines.
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<PlaceOrderLine>,
    /// The payment method's token, 1 to 100 characters (trimmed) (`tok_decline` is
    /// declined, `tok_timeout` answers late).
    #[schema(
        min_length = 1,
        max_length = 100,
        format = "text",
        example = "tok_visa"
    )]
    pub payment_token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct OrderLineView {
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct HistoryEntry {
    pub status: String,
    pub at: DateTime<Utc>,
}

/// An order and how it got where it is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, sqlx::FromRow)]
pub struct OrderView {
    pub id: Uuid,
    /// PENDING, AWAITING_PAYMENT, CONFIRMED, COMPENSATING or CANCELLED.
    pub status: String,
    /// out_of_stock, payment_failed or timeout, when cancelled.
    pub cancel_reason: Option<String>,
    #[sqlx(json)]
    pub items: Vec<OrderLineView>,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(json)]
    pub history: Vec<HistoryEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A status change, as sent on the order's event stream.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusEvent {
    pub order_id: Uuid,
    /// The status it entered, as in [`OrderView::status`].
    pub status: String,
    /// out_of_stock, payment_failed or timeout, when it entered CANCELLED.
    pub cancel_reason: Option<String>,
    /// When it entered the status (as in the order's history).
    pub at: DateTime<Utc>,
}

/// A product's price as the products service reports it (`GET /internal/products?ids=`).
#[derive(Clone, Debug, Deserialize)]
pub struct PricedProduct {
    pub id: Uuid,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
}
