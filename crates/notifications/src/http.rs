//! Notifications' route, served as the gateway forwards it (`/api/notifications`).

use axum::{Json, Router, extract::State, routing::get};
use shop_platform::http::{ApiError, Caller};
use sqlx::PgPool;

use crate::{api::NotificationList, store};

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/api/notifications", get(list))
        .with_state(pool)
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
