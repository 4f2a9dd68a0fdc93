//! The demo catalogue of `shop seed`.

use anyhow::Context as _;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::{Description, InitialStock, NewProduct, Price, ProductName, Sku},
    store,
};

/// (sku, name, description, price in cents, initial stock)
const DEMO: &[(&str, &str, &str, i64, i64)] = &[
    (
        "DEMO-MUG",
        "Coffee mug",
        "Stoneware, 350 ml, dishwasher safe.",
        1299,
        120,
    ),
    (
        "DEMO-TEE-M",
        "T-shirt (M)",
        "Organic cotton, medium.",
        1999,
        80,
    ),
    (
        "DEMO-TEE-L",
        "T-shirt (L)",
        "Organic cotton, large.",
        1999,
        60,
    ),
    (
        "DEMO-HOODIE",
        "Hoodie",
        "Heavyweight fleece with a front pocket.",
        4999,
        40,
    ),
    (
        "DEMO-CAP",
        "Baseball cap",
        "Adjustable strap, one size.",
        1499,
        75,
    ),
    ("DEMO-SOCKS", "Socks (3 pairs)", "Merino blend.", 1799, 150),
    (
        "DEMO-BOTTLE",
        "Water bottle",
        "Insulated steel, 750 ml.",
        2499,
        90,
    ),
    ("DEMO-TOTE", "Tote bag", "Canvas, long handles.", 999, 200),
    (
        "DEMO-NOTEBOOK",
        "Notebook",
        "A5, dotted, 192 pages.",
        1199,
        180,
    ),
    (
        "DEMO-PEN",
        "Fountain pen",
        "Steel nib, refillable.",
        3499,
        30,
    ),
    (
        "DEMO-STICKERS",
        "Sticker pack",
        "Ten vinyl stickers.",
        499,
        500,
    ),
    ("DEMO-POSTER", "Poster", "A2, matte paper.", 1599, 50),
    (
        "DEMO-KEYBOARD",
        "Mechanical keyboard",
        "Tenkeyless, hot-swappable switches.",
        11999,
        15,
    ),
    (
        "DEMO-MOUSE",
        "Wireless mouse",
        "Six buttons, USB-C charging.",
        3999,
        45,
    ),
    (
        "DEMO-DESKMAT",
        "Desk mat",
        "90 x 40 cm, stitched edges.",
        2299,
        70,
    ),
    (
        "DEMO-LAMP",
        "Desk lamp",
        "LED, dimmable, warm to cool.",
        5499,
        25,
    ),
    (
        "DEMO-HEADPHONES",
        "Headphones",
        "Over-ear, closed back.",
        8999,
        20,
    ),
    (
        "DEMO-CHARGER",
        "USB-C charger",
        "65 W, two ports.",
        3299,
        100,
    ),
    ("DEMO-CABLE", "USB-C cable", "2 m, braided.", 1299, 250),
    (
        "DEMO-GIFTCARD",
        "Gift card",
        "Printed card with a code inside.",
        2500,
        1000,
    ),
];

/// Inserts the demo catalogue (about 20 products), skipping skus that exist, with each new
/// product's `product.created` event (carrying its initial stock) in the same transaction.
/// Idempotent; returns how many products were created. Applies the migrations first, so
/// it works on a fresh database. `pool` must use the `products` schema.
pub async fn seed(pool: &PgPool) -> anyhow::Result<usize> {
    crate::program::MIGRATOR
        .run(pool)
        .await
        .context("migrating products")?;
    let mut tx = pool.begin().await?;
    // One seeding run is one chain of consequences.
    let correlation_id = Uuid::now_v7();
    let mut created = 0;
    for (sku, name, description, price, stock) in DEMO {
        let new = NewProduct {
            sku: Sku::parse(sku)?,
            name: ProductName::parse(name)?,
            description: Description::parse(description)?,
            price: Price::parse(*price)?,
            initial_stock: InitialStock::parse(*stock)?,
        };
        if store::insert(&mut tx, &new, correlation_id)
            .await
            .with_context(|| format!("seeding {sku}"))?
            .is_some()
        {
            created += 1;
        }
    }
    tx.commit().await?;
    Ok(created)
}
