//! `shop seed`: the demo catalog is added once.

use shop_platform::{Envelope, events::ProductCreated, testkit::TestEnv};

#[tokio::test]
async fn seeding_is_idempotent() {
    let env = TestEnv::new(&shop_products::program::IDENTITY, |_| {}).await;
    assert_eq!(shop_products::seed(&env.pool).await.unwrap(), 20);
    assert_eq!(shop_products::seed(&env.pool).await.unwrap(), 0);

    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(products, 20);
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM outbox WHERE event_type = 'product.created'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(bodies.len(), 20, "one event per product actually created");
    for body in bodies {
        let created: ProductCreated = Envelope::parse(body.as_bytes()).unwrap().decode().unwrap();
        assert!(created.initial_stock > 0, "{created:?}");
        assert_eq!(created.currency, "EUR");
    }
}
