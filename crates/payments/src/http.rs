//! Payments' routes. Internal only: the gateway does not expose them.

use axum::http::Method;
use axum::{
    Json, Router,
    extract::{Path, State},
};
use shop_platform::http::{Access, Routes};
use shop_platform::http::{ApiError, ServiceCaller};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{api::PaymentView, store};

/// The payments service's one route: internal.
pub fn routes() -> Routes<PgPool> {
    Routes::default().route(
        Method::GET,
        "/internal/payments/{order_id}",
        Access::Service,
        get_payment,
    )
}

pub fn router(pool: PgPool) -> Router {
    routes().with_state(pool)
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
