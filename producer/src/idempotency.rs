//! Idempotent retries keyed by event id, per producer instance.
//!
//! The first request carrying a client-supplied event id produces it; until
//! the window (`--idempotency-window-secs`) passes, any request with the same
//! id gets the first result (same topic, partition and offset, flagged
//! `duplicate`) and nothing new is written. A request arriving while the
//! first is still waiting for Kafka waits for its outcome; if the first
//! fails, one waiter produces instead. Memory is bounded by
//! `--idempotency-max-entries`: beyond it the oldest ids are forgotten early.
//!
//! The table lives in this process: retries sent to another producer
//! instance, or after a restart, are not recognised (consumers can still
//! deduplicate by event id, which the envelope and the `event_id` header carry).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::publish::Produced;

enum Slot {
    /// Being produced; waiters watch for the sender to go away.
    Pending(watch::Receiver<()>),
    /// Produced at `at`.
    Done { at: Instant, produced: Produced },
}

#[derive(Default)]
struct Table {
    slots: HashMap<String, Slot>,
    /// Completed ids in completion order, for expiry and eviction.
    order: VecDeque<(Instant, String)>,
}

impl Table {
    fn expire(&mut self, now: Instant, window: Duration, max: usize) {
        while let Some((at, id)) = self.order.front() {
            let old = now.duration_since(*at) >= window;
            if !old && self.slots.len() < max {
                break;
            }
            // Only remove the entry this queue item stands for.
            if matches!(self.slots.get(id), Some(Slot::Done { at: done, .. }) if done == at) {
                self.slots.remove(id);
            }
            self.order.pop_front();
        }
    }
}

/// Remembered event ids and their results.
pub struct IdempotencyCache {
    table: Mutex<Table>,
    window: Duration,
    max_entries: usize,
}

/// The outcome of [`IdempotencyCache::claim`].
pub enum Claim<'a> {
    /// Produced already inside the window: here is the first result.
    Replay(Produced),
    /// The caller must produce the event and report through the guard.
    Produce(ClaimGuard<'a>),
    /// Idempotency is disabled.
    Disabled,
}

/// The right (and duty) to produce one event id. Dropping it without
/// [`ClaimGuard::complete`] releases the id so a waiter can try.
pub struct ClaimGuard<'a> {
    cache: &'a IdempotencyCache,
    id: String,
    _done: watch::Sender<()>,
    completed: bool,
}

impl ClaimGuard<'_> {
    /// Record the result of producing the event.
    pub fn complete(mut self, produced: &Produced) {
        let now = Instant::now();
        if let Ok(mut t) = self.cache.table.lock() {
            t.slots.insert(
                self.id.clone(),
                Slot::Done {
                    at: now,
                    produced: produced.clone(),
                },
            );
            t.order.push_back((now, self.id.clone()));
        }
        self.completed = true;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.completed
            && let Ok(mut t) = self.cache.table.lock()
            && matches!(t.slots.get(&self.id), Some(Slot::Pending(_)))
        {
            t.slots.remove(&self.id);
        }
        // `_done` drops after this, waking the waiters.
    }
}

impl IdempotencyCache {
    /// A cache remembering ids for `window` (zero disables it), at most `max_entries`.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        IdempotencyCache {
            table: Mutex::new(Table::default()),
            window,
            max_entries: max_entries.max(1),
        }
    }

    /// Ids currently remembered (pending or produced).
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.slots.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claim `id`: replay its result, or produce it. Resolves without waiting
    /// unless another request is producing the same id right now.
    pub async fn claim(&self, id: &str) -> Claim<'_> {
        if self.window.is_zero() {
            return Claim::Disabled;
        }
        loop {
            let mut waiting = {
                let Ok(mut t) = self.table.lock() else {
                    return Claim::Disabled;
                };
                t.expire(Instant::now(), self.window, self.max_entries);
                match t.slots.get(id) {
                    Some(Slot::Done { produced, .. }) => {
                        let mut replay = produced.clone();
                        replay.duplicate = true;
                        return Claim::Replay(replay);
                    }
                    Some(Slot::Pending(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(());
                        t.slots.insert(id.to_owned(), Slot::Pending(rx));
                        return Claim::Produce(ClaimGuard {
                            cache: self,
                            id: id.to_owned(),
                            _done: tx,
                            completed: false,
                        });
                    }
                }
            };
            // Resolves (with an error) once the producing request's guard is gone.
            while waiting.changed().await.is_ok() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produced(offset: i64) -> Produced {
        Produced {
            id: "e1".into(),
            event_type: "tag.updated".into(),
            topic: "herald.tag".into(),
            partition: 0,
            offset,
            duplicate: false,
        }
    }

    #[tokio::test]
    async fn replays_within_the_window() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let Claim::Produce(guard) = cache.claim("e1").await else {
            panic!("first claim must produce")
        };
        guard.complete(&produced(7));
        match cache.claim("e1").await {
            Claim::Replay(p) => {
                assert_eq!(p.offset, 7);
                assert!(p.duplicate);
            }
            _ => panic!("second claim must replay"),
        }
        assert!(matches!(cache.claim("e2").await, Claim::Produce(_)));
    }

    #[tokio::test]
    async fn a_failed_attempt_releases_the_id() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let first = cache.claim("e1").await;
        assert!(matches!(first, Claim::Produce(_)));
        drop(first);
        assert!(matches!(cache.claim("e1").await, Claim::Produce(_)));
    }

    #[tokio::test]
    async fn concurrent_claims_wait_for_the_first() {
        let cache = std::sync::Arc::new(IdempotencyCache::new(Duration::from_secs(60), 10));
        let Claim::Produce(guard) = cache.claim("e1").await else {
            panic!("first claim must produce")
        };
        let c = cache.clone();
        let waiter = tokio::spawn(async move {
            match c.claim("e1").await {
                Claim::Replay(p) => p.offset,
                _ => -1,
            }
        });
        tokio::task::yield_now().await;
        guard.complete(&produced(3));
        assert_eq!(waiter.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn expiry_and_bounds() {
        let cache = IdempotencyCache::new(Duration::from_millis(1), 10);
        let Claim::Produce(g) = cache.claim("e1").await else {
            panic!()
        };
        g.complete(&produced(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(cache.claim("e1").await, Claim::Produce(_)));

        let small = IdempotencyCache::new(Duration::from_secs(60), 2);
        for id in ["a", "b", "c"] {
            let Claim::Produce(g) = small.claim(id).await else {
                panic!()
            };
            g.complete(&produced(1));
        }
        assert!(small.len() <= 2, "{}", small.len());
        assert!(matches!(small.claim("a").await, Claim::Produce(_)));
        assert!(matches!(
            IdempotencyCache::new(Duration::ZERO, 2).claim("a").await,
            Claim::Disabled
        ));
    }
}
