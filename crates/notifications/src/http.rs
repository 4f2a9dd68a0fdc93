//! Notifications' route, served as the gateway forwards it (`/api/notifications`).

use axum::http::Method;
use axum::{Json, Router, extract::State};
use shop_platform::http::{Access, Routes};
use shop_platform::http::{ApiError, Caller};
use sqlx::PgPool;

use crate::{api::NotificationList, store};

/// The notifications service's one route.
pub fn routes() -> Routes<PgPool> {
    Routes::default().route(Method::GET, "/api/notifications", Access::User, list)
}

pub fn router(pool: PgPool) -> Router {
    routes().with_state(pool)
}

/// The caller's own notifications.
async fn list(
    State(pool): State<PgPool>,
    caller: Caller,
) -> Result<Json<NotificationList>, ApiError> {
    let items = store::of_user(&pool, caller.user_id).await?;
    Ok(Json(NotificationList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}
