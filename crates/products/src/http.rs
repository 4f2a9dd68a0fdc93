//! HTTP routes of the products service: the public catalogue paths (forwarded unchanged by
//! the gateway, which signs a caller assertion for authenticated callers) and the
//! internal price lookup of the orders service.

use shop_platform::{http::BearerAuth, validation::TextRule};
use std::sync::Arc;

use axum::http::Method;
use axum::{
    Json, Router,
    extract::{FromRequestParts, Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, request::Parts},
};
use serde::Deserialize;
use shop_platform::http::{Access, Routes};
use shop_platform::http::{ApiError, ApiJson, Caller, ServiceCaller};
use tracing::info;
use uuid::Uuid;

use crate::{
    api::{CreateProduct, Product, ProductPage, ProductPrice, UpdateProduct},
    catalog::Catalog,
    domain::{
        self, Cursor, Description, InitialStock, NewProduct, Price, ProductChanges, ProductName,
        Sku,
    },
    store::{self, CreateError},
};

/// The products service's routes and who may call each.
pub fn routes() -> Routes<Arc<Catalog>> {
    Routes::default()
        .route(Method::GET, "/api/products", Access::Public, list)
        .route(Method::POST, "/api/products", Access::Admin, create)
        .route(Method::GET, "/api/products/{id}", Access::Public, get_one)
        .route(Method::PATCH, "/api/products/{id}", Access::Admin, update)
        .route(Method::GET, "/internal/products", Access::Service, prices)
}

pub fn router(catalog: Arc<Catalog>) -> Router {
    routes().with_state(catalog)
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::validation("query", e.body_text())
}

/// A malformed id names no product: the same 404 as an unknown one.
fn product_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("product"))
}

/// An administrator, as authenticated by the gateway: 401 without a caller, 403 for
/// anyone else. An extractor, so that it is checked before the body is read.
pub struct Admin(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_admin()?;
        Ok(Admin(caller))
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// The catalogue, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "products",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 20)", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 422, description = "Bad `limit` or `cursor`"),
    )
)]
pub async fn list(
    State(catalog): State<Arc<Catalog>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ProductPage>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let limit = domain::page_limit(q.limit.as_deref())?;
    let after = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    // One more than asked tells whether there is a next page.
    let mut items = store::page(catalog.pool(), after.map(|c| c.0), limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|p| Cursor(p.id).encode()))
        .flatten();
    Ok(Json(ProductPage { items, next_cursor }))
}

/// One product (served through the Redis cache).
#[utoipa::path(
    get,
    path = "/api/products/{id}",
    tag = "products",
    params(("id" = Uuid, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product"),
    )
)]
pub async fn get_one(
    State(catalog): State<Arc<Catalog>>,
    Path(id): Path<String>,
) -> Result<Json<Product>, ApiError> {
    let id = product_id(&id)?;
    catalog
        .get(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("product"))
}

/// Add a product (administrators); its initial stock goes to the inventory service.
#[utoipa::path(
    post,
    path = "/api/products",
    tag = "products",
    security(("bearer" = [])),
    request_body = CreateProduct,
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 401, description = "Not authenticated"),
        (status = 403, description = "Not an administrator"),
        (status = 409, description = "The sku is taken"),
        (status = 422, description = "A field is invalid; the problem's `field` names it"),
    )
)]
pub async fn create(
    State(catalog): State<Arc<Catalog>>,
    Admin(caller): Admin,
    ApiJson(req): ApiJson<CreateProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    let new = NewProduct {
        sku: Sku::parse(&req.sku)?,
        name: ProductName::parse(&req.name)?,
        description: Description::parse(&req.description)?,
        price: Price::parse(req.price_cents)?,
        initial_stock: InitialStock::parse(req.initial_stock)?,
    };
    match store::create(catalog.pool(), &new).await {
        Ok(p) => {
            catalog.outbox().wake();
            info!(product_id = %p.id, sku = %p.sku, by = %caller.user_id, "product created");
            Ok((StatusCode::CREATED, Json(p)))
        }
        Err(e @ CreateError::SkuTaken) => Err(ApiError::Conflict(e.to_string())),
        Err(CreateError::Db(e)) => Err(e.into()),
    }
}

/// Change a product's name, description or price (administrators).
#[utoipa::path(
    patch,
    path = "/api/products/{id}",
    tag = "products",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Product id")),
    request_body = UpdateProduct,
    responses(
        (status = 200, description = "The changed product", body = Product),
        (status = 401, description = "Not authenticated"),
        (status = 403, description = "Not an administrator"),
        (status = 404, description = "No such product"),
        (status = 422, description = "A field is invalid, or none was given"),
    )
)]
pub async fn update(
    State(catalog): State<Arc<Catalog>>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateProduct>,
) -> Result<Json<Product>, ApiError> {
    let id = product_id(&id)?;
    let changes = ProductChanges::parse(
        req.name.as_deref(),
        req.description.as_deref(),
        req.price_cents,
    )?;
    let product = store::update(catalog.pool(), id, &changes)
        .await?
        .ok_or_else(|| ApiError::not_found("product"))?;
    catalog.outbox().wake();
    // After the commit, never before: a reader between an earlier DEL and the commit would
    // cache the old row again.
    catalog.cache().invalidate_or_retry(id).await;
    info!(product_id = %id, by = %caller.user_id, "product updated");
    Ok(Json(product))
}

#[derive(Deserialize)]
pub struct PricesQuery {
    ids: Option<String>,
}

/// `GET /internal/products?ids=<uuid>,...`: name and price of the known ones (for the
/// orders service; not public).
pub async fn prices(
    State(catalog): State<Arc<Catalog>>,
    _caller: ServiceCaller,
    query: Result<Query<PricesQuery>, QueryRejection>,
) -> Result<Json<Vec<ProductPrice>>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let ids = domain::id_list(q.ids.as_deref())?;
    let products = catalog.get_many(&ids).await?;
    Ok(Json(products.iter().map(ProductPrice::from).collect()))
}

/// The OpenAPI description of the public routes, for the gateway's `/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, get_one, create, update),
    components(schemas(Product, ProductPage, CreateProduct, UpdateProduct, ProductPrice)),
    modifiers(&BearerAuth, &TextRule),
    tags((name = "products", description = "The catalogue"))
)]
pub struct ApiDoc;
