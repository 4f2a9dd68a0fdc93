//! Reading products: cache-aside over PostgreSQL with single flight.
//!
//! Concurrent misses of one product in this process load PostgreSQL once: the first miss
//! starts a load (a spawned task, so a client hanging up cannot abandon it half-way) and
//! records it in the in-flight map; later misses await the same shared result. The load
//! looks in the cache once more before going to PostgreSQL: a miss observed just before an
//! earlier load wrote the value and left the map would otherwise cause a second load.
//!
//! A batch (`/internal/products`) joins the loads already in flight for some of its ids and
//! loads the rest with one query.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared, join_all},
};
use shop_platform::{http::ApiError, metrics::Metrics, outbox::Waker};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{api::Product, cache::ProductCache, store};

/// Why a load failed; cloneable, as every waiter of a load gets the outcome.
#[derive(Clone, Debug)]
pub enum LoadError {
    Unavailable,
    Failed(Arc<str>),
}

impl From<sqlx::Error> for LoadError {
    fn from(e: sqlx::Error) -> Self {
        if shop_platform::db::unavailable(&e) {
            LoadError::Unavailable
        } else {
            LoadError::Failed(format!("loading products: {e}").into())
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Unavailable => {
                ApiError::Unavailable("the database is unavailable, try again".into())
            }
            LoadError::Failed(m) => ApiError::Internal(anyhow::anyhow!("{m}")),
        }
    }
}

type Batch = Arc<HashMap<Uuid, Product>>;
type Flight = Shared<BoxFuture<'static, Result<Option<Product>, LoadError>>>;

pub struct Catalog {
    pool: PgPool,
    cache: Arc<ProductCache>,
    metrics: Arc<Metrics>,
    in_flight: Mutex<HashMap<Uuid, Flight>>,
    /// Wakes the outbox relay after a product's change (and its event) has committed.
    outbox: Waker,
}

impl Catalog {
    pub fn new(pool: PgPool, cache: Arc<ProductCache>, metrics: Arc<Metrics>) -> Self {
        Catalog {
            pool,
            cache,
            metrics,
            in_flight: Mutex::new(HashMap::new()),
            outbox: Waker::default(),
        }
    }

    /// The catalogue, waking this relay after each committed change.
    pub fn with_outbox(self, outbox: Waker) -> Self {
        Catalog { outbox, ..self }
    }

    pub fn outbox(&self) -> &Waker {
        &self.outbox
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn cache(&self) -> &Arc<ProductCache> {
        &self.cache
    }

    /// One product, `None` if unknown.
    pub async fn get(self: &Arc<Self>, id: Uuid) -> Result<Option<Product>, ApiError> {
        Ok(self.get_many(&[id]).await?.pop())
    }

    /// The known products among `ids`, in the order asked (duplicates once).
    pub async fn get_many(self: &Arc<Self>, ids: &[Uuid]) -> Result<Vec<Product>, ApiError> {
        let mut ids = ids.to_vec();
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(*id));

        let mut found: HashMap<Uuid, Product> = HashMap::with_capacity(ids.len());
        let missing: Vec<Uuid> = match self.cache.read(&ids).await {
            Some(values) => {
                let mut missing = Vec::new();
                for (id, value) in ids.iter().zip(values) {
                    match value {
                        Some(p) => {
                            self.metrics.cache_hits.inc();
                            found.insert(*id, p);
                        }
                        None => {
                            self.metrics.cache_misses.inc();
                            missing.push(*id);
                        }
                    }
                }
                missing
            }
            // Redis is away (already counted as a cache error): straight to PostgreSQL.
            None => ids.clone(),
        };
        if !missing.is_empty() {
            for loaded in join_all(self.flights(&missing)).await {
                if let Some(p) = loaded? {
                    found.insert(p.id, p);
                }
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The in-flight load of each id, starting one load for those that have none.
    fn flights(self: &Arc<Self>, ids: &[Uuid]) -> Vec<Flight> {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        let fresh: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| !in_flight.contains_key(id))
            .collect();
        if !fresh.is_empty() {
            let catalog = self.clone();
            let landing = Landing {
                catalog: self.clone(),
                ids: fresh.clone(),
            };
            let to_load = fresh.clone();
            // Spawned, so that the load finishes (and leaves the map) even if every waiter
            // goes away. The map entries are inserted below, before this lock is released,
            // so the task's removal can only come after.
            let task = tokio::spawn(async move {
                let _landing = landing;
                catalog.load(&to_load).await
            });
            let batch: Shared<BoxFuture<'static, Result<Batch, LoadError>>> = async move {
                task.await.unwrap_or_else(|e| {
                    Err(LoadError::Failed(format!("product load task: {e}").into()))
                })
            }
            .boxed()
            .shared();
            for id in fresh {
                let batch = batch.clone();
                let flight = async move { batch.await.map(|found| found.get(&id).cloned()) }
                    .boxed()
                    .shared();
                in_flight.insert(id, flight);
            }
        }
        ids.iter().map(|id| in_flight[id].clone()).collect()
    }

    /// Loads `ids` (which no one else in this process is loading): from the cache if a load
    /// that just finished filled them, otherwise from PostgreSQL, then fills the cache.
    async fn load(&self, ids: &[Uuid]) -> Result<Batch, LoadError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut tickets = HashMap::new();
        let mut to_load = Vec::new();
        match self.cache.read_for_fill(ids).await {
            Some(seen) => {
                for (id, (value, ticket)) in ids.iter().zip(seen) {
                    match value {
                        Some(p) => {
                            found.insert(*id, p);
                        }
                        None => {
                            tickets.insert(*id, ticket);
                            to_load.push(*id);
                        }
                    }
                }
            }
            None => to_load = ids.to_vec(),
        }
        if !to_load.is_empty() {
            self.metrics.db_loads.inc();
            let loaded = store::get_many(&self.pool, &to_load).await?;
            let fills: Vec<_> = loaded
                .iter()
                .filter_map(|p| tickets.remove(&p.id).map(|t| (p, t)))
                .collect();
            self.cache.fill(&fills).await;
            found.extend(loaded.into_iter().map(|p| (p.id, p)));
        }
        Ok(Arc::new(found))
    }
}

/// Removes a load's ids from the in-flight map when the load ends, however it ends.
struct Landing {
    catalog: Arc<Catalog>,
    ids: Vec<Uuid>,
}

impl Drop for Landing {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.catalog.in_flight.lock() {
            for id in &self.ids {
                in_flight.remove(id);
            }
        }
    }
}
