//! Response bodies of the payments API (internal: used by the audit and operators).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// An order's payment (`GET /internal/payments/{order_id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    /// One payment per order.
    pub order_id: Uuid,
    /// Who placed the order.
    pub user_id: Uuid,
    /// The order's total, in cents of `currency`.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// pending, captured, declined or refunded.
    pub status: String,
    /// Why the provider declined it (card_declined, random_decline).
    pub decline_code: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the provider took the money, if it did.
    pub captured_at: Option<DateTime<Utc>>,
    /// When it was given back (the saga cancelled the order after the capture).
    pub refunded_at: Option<DateTime<Utc>>,
}

impl From<crate::store::Payment> for PaymentView {
    fn from(p: crate::store::Payment) -> Self {
        PaymentView {
            id: p.id,
            order_id: p.order_id,
            user_id: p.user_id,
            amount_cents: p.amount_cents,
            currency: p.currency,
            status: p.status.as_str().to_string(),
            decline_code: p.decline_code,
            created_at: p.created_at,
            captured_at: p.captured_at,
            refunded_at: p.refunded_at,
        }
    }
}
