//! Payments' routes. Internal only: the gateway does not expose them.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use shop_platform::http::{ApiError, ServiceCaller};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{api::PaymentView, store};

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/internal/payments/{order_id}", get(get_payment))
        .with_state(pool)
}

/// Another program's (an operator tool's, a test's) look at an order's payment: a service
/// assertion is required.
async fn get_payment(
    State(pool): State<PgPool>,
    _caller: ServiceCaller,
    Path(order_id): Path<Uuid>,
) -> Result<Json<PaymentView>, ApiError> {
    let payment = store::by_order(&pool, order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    Ok(Json(payment.into()))
}
