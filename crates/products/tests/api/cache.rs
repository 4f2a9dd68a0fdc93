//! The product cache: cache-aside, single flight, invalidation, and serving while Redis is away.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use shop_platform::{
    metrics::Metrics,
    redis_util,
    testkit::{Proxy, TestEnv, eventually},
};
use shop_products::{api::Product, cache::ProductCache};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{App, id_of};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn get_fills_the_cache_and_an_update_invalidates_it() {
    let app = App::spawn().await;
    let p = app.created("CACHE-1", 1000).await;
    let id = id_of(&p);
    assert_eq!(app.cached(&id).await, None);

    let (hits, misses) = (
        app.counter("cache_hits").await,
        app.counter("cache_misses").await,
    );
    assert_eq!(app.get_ok(&id).await, p);
    assert_eq!(app.cached(&id).await, Some(p.clone()));
    assert_eq!(app.counter("cache_misses").await, misses + 1);
    // TTL: 60 s plus up to 10% jitter.
    let mut redis = app.env.redis().await;
    let key = app.env.config.redis_key(&format!("product:{id}"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((55_000..=66_000).contains(&pttl), "{pttl}");

    assert_eq!(app.get_ok(&id).await, p);
    assert_eq!(app.counter("cache_hits").await, hits + 1);

    let r = app.patch(&id, &json!({"price_cents": 2000})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.cached(&id).await, None, "invalidated after the commit");

    let fresh = app.get_ok(&id).await;
    assert_eq!(fresh["price_cents"], 2000);
    assert_eq!(app.cached(&id).await.unwrap()["price_cents"], 2000);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_misses_load_the_database_once() {
    let app = App::spawn().await;
    let p = app.created("FLIGHT-1", 1234).await;
    let id = id_of(&p);
    app.get_ok(&id).await;
    let mut redis = app.env.redis().await;
    let key = app.env.config.redis_key(&format!("product:{id}"));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();

    let before = app.counter("db_loads").await;
    let answers = join_all((0..100).map(|_| app.get_ok(&id))).await;
    assert!(answers.iter().all(|a| *a == p));
    assert_eq!(app.counter("db_loads").await - before, 1);
    assert_eq!(app.cached(&id).await, Some(p));
    app.stop().await;
}

#[tokio::test]
async fn with_redis_down_products_come_from_postgres() {
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let env = TestEnv::new(&shop_products::program::IDENTITY, |_| {}).await;
    let mut config = env.config.clone();
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    config.redis_url = through_proxy.clone();
    config.cache_redis_url = Some(through_proxy);
    let app = App::spawn_with(env, config).await;

    let p = app.created("DOWN-1", 500).await;
    let id = id_of(&p);
    assert_eq!(app.get_ok(&id).await, p);
    assert_eq!(app.cached(&id).await, Some(p.clone()));

    proxy.refuse(true);
    proxy.cut();
    let errors = app.counter("cache_errors").await;
    let loads = app.counter("db_loads").await;
    for _ in 0..3 {
        assert_eq!(app.get_ok(&id).await, p);
    }
    assert!(app.counter("cache_errors").await > errors);
    assert_eq!(app.counter("db_loads").await, loads + 3);

    // An update while Redis is away succeeds; its invalidation is retried in the background.
    let r = app.patch(&id, &json!({"price_cents": 600})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.get_ok(&id).await["price_cents"], 600);
    assert_eq!(
        app.cached(&id).await.unwrap()["price_cents"],
        500,
        "still stale"
    );

    proxy.refuse(false);
    eventually(
        "the cache to work again, with the new price",
        WAIT,
        || async {
            let served = app.get_ok(&id).await;
            let cached = app.cached(&id).await;
            served["price_cents"] == 600 && cached.is_some_and(|c| c["price_cents"] == 600)
        },
    )
    .await;
    let hits = app.counter("cache_hits").await;
    assert_eq!(app.get_ok(&id).await["price_cents"], 600);
    assert_eq!(app.counter("cache_hits").await, hits + 1);
    app.stop().await;
}

fn sample(price_cents: i64) -> Product {
    Product {
        id: Uuid::now_v7(),
        sku: "GUARD-1".into(),
        name: "Guard".into(),
        description: String::new(),
        price_cents,
        currency: "EUR".into(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_load_that_raced_an_invalidation_does_not_cache_its_old_value() {
    let env = TestEnv::new(&shop_products::program::IDENTITY, |_| {}).await;
    let conn = redis_util::connect(&env.config.redis_url).await.unwrap();
    let cache = ProductCache::new(
        conn,
        &env.config,
        60,
        Arc::new(Metrics::new("products")),
        CancellationToken::new(),
    );
    let mut redis = env.redis().await;
    let get = |id: Uuid| {
        let key = cache.key(id);
        let mut redis = redis.clone();
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            v.map(|s| serde_json::from_str::<Product>(&s).unwrap())
        }
    };

    // A load without interference fills the cache.
    let p = sample(100);
    let seen = cache.read_for_fill(&[p.id]).await.unwrap();
    assert_eq!(seen[0].0, None);
    assert_eq!(cache.fill(&[(&p, seen[0].1.clone())]).await, 1);
    assert_eq!(get(p.id).await, Some(p.clone()));
    assert_eq!(cache.read(&[p.id]).await, Some(vec![Some(p.clone())]));

    // A loader reads the generation, then (in PostgreSQL) the old row; meanwhile an update
    // commits and invalidates. The loader's late write is refused.
    let old = sample(100);
    let ticket = cache.read_for_fill(&[old.id]).await.unwrap()[0].1.clone();
    cache.invalidate(old.id).await.unwrap();
    assert_eq!(cache.fill(&[(&old, ticket)]).await, 0);
    assert_eq!(get(old.id).await, None);

    // Same when the product had been invalidated before (a generation already exists).
    let ticket = cache.read_for_fill(&[old.id]).await.unwrap()[0].1.clone();
    cache.invalidate(old.id).await.unwrap();
    assert_eq!(cache.fill(&[(&old, ticket)]).await, 0);
    assert_eq!(get(old.id).await, None);

    // A load that starts after the invalidation caches the new value.
    let mut new = old.clone();
    new.price_cents = 200;
    let ticket = cache.read_for_fill(&[new.id]).await.unwrap()[0].1.clone();
    assert_eq!(cache.fill(&[(&new, ticket)]).await, 1);
    assert_eq!(get(new.id).await, Some(new.clone()));

    // A value written just before an invalidation is deleted by it.
    cache.invalidate(new.id).await.unwrap();
    assert_eq!(get(new.id).await, None);

    // An undecodable value is a miss, not an error.
    let _: () = redis::cmd("SET")
        .arg(cache.key(p.id))
        .arg("{not json")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(cache.read(&[p.id]).await, Some(vec![None]));
}
