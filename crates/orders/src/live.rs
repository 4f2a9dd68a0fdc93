//! Live status changes of this instance's orders, for their event streams: told after each
//! commit, and kept by order, so that a stream wakes for its own order only and needs no read
//! of the database to say what changed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use uuid::Uuid;

use crate::api::StatusEvent;

/// The orders being watched, each with the last change told of it.
#[derive(Clone, Default)]
pub struct Changes {
    watched: Arc<Mutex<HashMap<Uuid, watch::Sender<Option<StatusEvent>>>>>,
}

impl Changes {
    /// Starts watching order `id`: the watch sees the changes told from now on.
    pub fn watch(&self, id: Uuid) -> Watch {
        let rx = self
            .lock()
            .entry(id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Watch {
            changes: self.clone(),
            id,
            rx: Some(rx),
        }
    }

    /// Tells the streams watching the order of `change`, if any.
    pub fn tell(&self, change: StatusEvent) {
        if let Some(tx) = self.lock().get(&change.order_id) {
            tx.send_replace(Some(change));
        }
    }

    /// Orders watched now (for tests of the bookkeeping).
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, watch::Sender<Option<StatusEvent>>>> {
        // Nothing panics while holding it; a poisoned map is still a valid map.
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One stream's watch of one order; dropping it stops the watching.
pub struct Watch {
    changes: Changes,
    id: Uuid,
    rx: Option<watch::Receiver<Option<StatusEvent>>>,
}

impl Watch {
    /// The next change told of the order: the latest one when several came since the last
    /// call (a stream shows the current status, not every step it missed).
    pub async fn changed(&mut self) -> Option<StatusEvent> {
        let rx = self.rx.as_mut()?;
        // The sender stays in the map while a receiver of it lives: this does not fail.
        rx.changed().await.ok()?;
        rx.borrow_and_update().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.changes.lock();
        self.rx = None;
        if watched
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            watched.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(order_id: Uuid, status: &str) -> StatusEvent {
        StatusEvent {
            order_id,
            status: status.into(),
            cancel_reason: None,
            at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_watch_sees_its_orders_changes_and_leaves_nothing_behind() {
        let changes = Changes::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // Told before anyone watches: nobody hears it, nothing is kept.
        changes.tell(change(a, "PENDING"));
        assert_eq!(changes.watched(), 0);
        let mut first = changes.watch(a);
        let mut second = changes.watch(a);
        changes.tell(change(b, "CONFIRMED"));
        changes.tell(change(a, "AWAITING_PAYMENT"));
        changes.tell(change(a, "CONFIRMED"));
        // Each watch of `a` sees the latest of `a`, never `b`'s.
        for w in [&mut first, &mut second] {
            let seen = w.changed().await.unwrap();
            assert_eq!((seen.order_id, seen.status.as_str()), (a, "CONFIRMED"));
        }
        drop(first);
        assert_eq!(changes.watched(), 1, "the second watch still watches");
        drop(second);
        assert_eq!(changes.watched(), 0, "the last watch removed its order");
    }
}
