//! An in-memory bus behind the same [`Publisher`] trait, for unit tests: it records what was
//! published (the Rust twin of "spy on emit and assert OrderCreated was published") and can be
//! told to fail, to test what happens when the broker is away.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;

use crate::{
    bus::{PublishError, Publisher},
    envelope::{Envelope, Event},
};

#[derive(Clone, Default)]
pub struct MemoryBus {
    published: Arc<Mutex<Vec<Envelope>>>,
    failures_left: Arc<AtomicUsize>,
    notify: Arc<tokio::sync::Notify>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` publish calls fail, every event in them with
    /// [`PublishError::Unavailable`], as when the broker is away.
    pub fn fail_next(&self, n: usize) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<Envelope> {
        self.published.lock().expect("lock").clone()
    }

    /// The payloads of every published event of type `E`.
    pub fn of_type<E: Event>(&self) -> Vec<E> {
        self.published()
            .iter()
            .filter(|e| e.event_type == E::TYPE)
            .map(|e| e.decode::<E>().expect("published payloads are valid"))
            .collect()
    }

    /// Waits until at least `n` events have been published, or the deadline passes.
    pub async fn wait_for(&self, n: usize, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.notify.notified();
            if self.published.lock().expect("lock").len() >= n {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.published.lock().expect("lock").len() >= n;
            }
        }
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish_batch(&self, events: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            if failing {
                out.push(Err(PublishError::Unavailable));
            } else {
                self.published.lock().expect("lock").push(e.clone());
                out.push(Ok(()));
            }
        }
        self.notify.notify_waiters();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::StockReserved;
    use uuid::Uuid;

    #[tokio::test]
    async fn records_and_fails_on_request() {
        let bus = MemoryBus::new();
        let id = Uuid::now_v7();
        let e = Envelope::new(id, &StockReserved { order_id: id }, id, id);
        bus.fail_next(1);
        assert!(bus.publish(&e).await.is_err());
        bus.publish(&e).await.unwrap();
        assert_eq!(
            bus.of_type::<StockReserved>(),
            vec![StockReserved { order_id: id }]
        );
        assert!(bus.wait_for(1, std::time::Duration::from_millis(10)).await);
    }
}
