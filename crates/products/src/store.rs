//! All SQL of the products service. Writes that emit events take the transaction they
//! share with their outbox row.

use shop_platform::{
    Envelope,
    events::{ProductCreated, ProductUpdated},
    outbox,
};
use sqlx::{FromRow as _, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    api::Product,
    domain::{CURRENCY, NewProduct, ProductChanges},
};

/// Name of the unique constraint on `products.sku` (see migrations/0001_init.sql).
const SKU_UNIQUE: &str = "products_sku_unique";

const COLUMNS: &str = "id, sku, name, description, price_cents, currency, created_at, updated_at";

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a product with this sku already exists")]
    SkuTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Inserts a product unless its sku exists; on insert, its `product.created` event goes
/// into the outbox of the same transaction. `None` when the sku was taken.
pub async fn insert(
    tx: &mut PgConnection,
    new: &NewProduct,
    correlation_id: Uuid,
) -> sqlx::Result<Option<Product>> {
    let row = sqlx::query(&format!(
        "INSERT INTO products (id, sku, name, description, price_cents, currency) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT ON CONSTRAINT {SKU_UNIQUE} DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.sku.as_str())
    .bind(new.name.as_str())
    .bind(new.description.as_str())
    .bind(new.price.cents())
    .bind(CURRENCY)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let p = Product::from_row(&row)?;
    let event = ProductCreated {
        product_id: p.id,
        sku: p.sku.clone(),
        name: p.name.clone(),
        price_cents: p.price_cents,
        currency: p.currency.clone(),
        initial_stock: new.initial_stock.units(),
    };
    outbox::enqueue(
        tx,
        &Envelope::new(p.id, &event, correlation_id, correlation_id),
    )
    .await?;
    Ok(Some(p))
}

/// Creates a product and its `product.created` event in one transaction.
pub async fn create(pool: &PgPool, new: &NewProduct) -> Result<Product, CreateError> {
    let mut tx = pool.begin().await?;
    // A request starts a new chain of consequences: fresh correlation/causation id.
    let created = insert(&mut tx, new, Uuid::now_v7()).await?;
    let Some(p) = created else {
        return Err(CreateError::SkuTaken);
    };
    tx.commit().await?;
    Ok(p)
}

/// Applies changes and emits `product.updated` (with the full new state) in one
/// transaction. `None` if there is no such product.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    changes: &ProductChanges,
) -> sqlx::Result<Option<Product>> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "UPDATE products SET \
             name = COALESCE($2, name), \
             description = COALESCE($3, description), \
             price_cents = COALESCE($4, price_cents), \
             updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(changes.name.as_ref().map(|n| n.as_str()))
    .bind(changes.description.as_ref().map(|d| d.as_str()))
    .bind(changes.price.map(|p| p.cents()))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let p = Product::from_row(&row)?;
    let event = ProductUpdated {
        product_id: p.id,
        name: p.name.clone(),
        description: p.description.clone(),
        price_cents: p.price_cents,
    };
    let cause = Uuid::now_v7();
    outbox::enqueue(&mut tx, &Envelope::new(p.id, &event, cause, cause)).await?;
    tx.commit().await?;
    Ok(Some(p))
}

/// The products among `ids` (unknown ids are left out), in no particular order.
pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<Product>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Up to `limit` products after `after`, in id (= creation) order.
pub async fn page(pool: &PgPool, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<Product>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
