//! Inventory's routes, served as the gateway forwards them (`/api/inventory/...`).

use axum::http::Method;
use axum::{
    Json, Router,
    extract::{Path, State},
};
use shop_platform::http::{Access, Routes};
use shop_platform::http::{ApiError, ApiJson, Caller};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    api::{StockAdjustment, StockLevel},
    domain::Adjustment,
    store::{self, AdjustError},
};

/// The inventory service's routes and who may call each.
pub fn routes() -> Routes<PgPool> {
    Routes::default()
        .route(
            Method::GET,
            "/api/inventory/{product_id}",
            Access::Public,
            get_stock,
        )
        .route(
            Method::POST,
            "/api/inventory/{product_id}/adjustments",
            Access::Admin,
            adjust_stock,
        )
}

pub fn router(pool: PgPool) -> Router {
    routes().with_state(pool)
}

/// Anyone may read a product's stock. Inventory learns of a product from its
/// `product.created` event, a moment after the product is created: until then (or for an
/// id that is no product at all) the answer is 404 `urn:shop:problem:not-yet-known` with
/// `Retry-After: 1`.
async fn get_stock(
    State(pool): State<PgPool>,
    Path(product_id): Path<Uuid>,
) -> Result<Json<StockLevel>, ApiError> {
    let level = store::level(&pool, product_id).await?.ok_or_else(|| {
        ApiError::NotYetKnown(format!(
            "inventory has no stock for product {product_id} yet: a product created a moment ago appears within seconds; an unknown id never does"
        ))
    })?;
    Ok(Json(StockLevel {
        product_id,
        available: level.available,
        reserved: level.reserved,
    }))
}

/// Administrators add or remove available stock.
async fn adjust_stock(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(product_id): Path<Uuid>,
    ApiJson(body): ApiJson<StockAdjustment>,
) -> Result<Json<StockLevel>, ApiError> {
    caller.require_admin()?;
    let adjustment = Adjustment::parse(body.delta, &body.reason)
        .map_err(|e| ApiError::validation(e.field(), e.to_string()))?;
    match store::adjust(&pool, product_id, &adjustment).await {
        Ok(level) => {
            tracing::info!(%product_id, delta = adjustment.delta(), admin = %caller.user_id, "stock adjusted");
            Ok(Json(StockLevel {
                product_id,
                available: level.available,
                reserved: level.reserved,
            }))
        }
        Err(AdjustError::UnknownProduct) => Err(ApiError::not_found("stock")),
        Err(e @ AdjustError::BelowZero { .. }) => Err(ApiError::Conflict(e.to_string())),
        Err(AdjustError::Database(e)) => Err(e.into()),
    }
}
