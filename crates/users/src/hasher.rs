//! Argon2 work, off the async executor and bounded. Each hash or verification holds 19 MiB
//! and a core for tens of milliseconds: a burst of logins must queue for a permit rather
//! than start hundreds of blocking threads (and gigabytes of memory) at once.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        // CPU-bound work: more concurrent hashes than cores only adds memory and latency.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores)
    }
}

impl Hasher {
    pub fn new(max_concurrent: usize) -> Self {
        Hasher {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// Runs `f` on the blocking pool once a permit is free.
    pub async fn run<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher closed")?;
        tokio::task::spawn_blocking(f)
            .await
            .context("password hashing task failed")
    }
}
