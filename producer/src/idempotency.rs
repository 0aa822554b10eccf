//! Idempotent retries keyed by (account id, event id), per producer instance.
//!
//! The first request carrying a client-supplied event id for an account
//! produces it; until the window (`--idempotency-window-secs`) passes, any
//! request with the same id *for the same account* gets the first result
//! (same topic, partition and offset, flagged `duplicate`) and nothing new is
//! written. The same id sent for another account is another event: ids are
//! chosen by backends, and one backend's id must never suppress (or reveal
//! the position of) another account's event. A request arriving while the
//! first is still waiting for Kafka waits for its outcome; if the first
//! fails, one waiter produces instead. Memory is bounded by
//! `--idempotency-max-entries`: beyond it the oldest keys are forgotten early.
//!
//! The table lives in this process: retries sent to another producer
//! instance, or after a restart, are not recognised (consumers can still
//! deduplicate by account and event id, which the envelope and the
//! `account_id` and `event_id` headers carry).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::publish::Produced;

/// What a retry must repeat to be recognised: the account and the event id.
/// The account is the envelope's (normalised: `42` and `"42"` are one
/// account, as they are one Kafka key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    /// The envelope's `account_id`.
    pub account_id: String,
    /// The envelope's `id`.
    pub id: String,
}

impl EventKey {
    /// The key of event `id` of account `account_id`.
    pub fn new(account_id: &str, id: &str) -> Self {
        EventKey {
            account_id: account_id.to_owned(),
            id: id.to_owned(),
        }
    }
}

enum Slot {
    /// Being produced; waiters watch for the sender to go away.
    Pending(watch::Receiver<()>),
    /// Produced at `at`.
    Done { at: Instant, produced: Produced },
}

#[derive(Default)]
struct Table {
    slots: HashMap<EventKey, Slot>,
    /// Completed keys in completion order, for expiry and eviction.
    order: VecDeque<(Instant, EventKey)>,
}

impl Table {
    fn expire(&mut self, now: Instant, window: Duration, max: usize) {
        while let Some((at, key)) = self.order.front() {
            let old = now.duration_since(*at) >= window;
            if !old && self.slots.len() < max {
                break;
            }
            // Only remove the entry this queue item stands for.
            if matches!(self.slots.get(key), Some(Slot::Done { at: done, .. }) if done == at) {
                self.slots.remove(key);
            }
            self.order.pop_front();
        }
    }
}

/// Remembered (account, event id) keys and their results.
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

/// The right (and duty) to produce one event of one account. Dropping it
/// without [`ClaimGuard::complete`] releases the key so a waiter can try.
pub struct ClaimGuard<'a> {
    cache: &'a IdempotencyCache,
    key: EventKey,
    _done: watch::Sender<()>,
    completed: bool,
}

impl ClaimGuard<'_> {
    /// Record the result of producing the event.
    pub fn complete(mut self, produced: &Produced) {
        let now = Instant::now();
        if let Ok(mut t) = self.cache.table.lock() {
            t.slots.insert(
                self.key.clone(),
                Slot::Done {
                    at: now,
                    produced: produced.clone(),
                },
            );
            t.order.push_back((now, self.key.clone()));
        }
        self.completed = true;
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.completed
            && let Ok(mut t) = self.cache.table.lock()
            && matches!(t.slots.get(&self.key), Some(Slot::Pending(_)))
        {
            t.slots.remove(&self.key);
        }
        // `_done` drops after this, waking the waiters.
    }
}

impl IdempotencyCache {
    /// A cache remembering keys for `window` (zero disables it), at most `max_entries`.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        IdempotencyCache {
            table: Mutex::new(Table::default()),
            window,
            max_entries: max_entries.max(1),
        }
    }

    /// Keys currently remembered (pending or produced).
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.slots.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claim `key`: replay its result, or produce it. Resolves without
    /// waiting unless another request is producing the same key right now.
    pub async fn claim(&self, key: &EventKey) -> Claim<'_> {
        if self.window.is_zero() {
            return Claim::Disabled;
        }
        loop {
            let mut waiting = {
                let Ok(mut t) = self.table.lock() else {
                    return Claim::Disabled;
                };
                t.expire(Instant::now(), self.window, self.max_entries);
                match t.slots.get(key) {
                    Some(Slot::Done { produced, .. }) => {
                        let mut replay = produced.clone();
                        replay.duplicate = true;
                        return Claim::Replay(replay);
                    }
                    Some(Slot::Pending(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(());
                        t.slots.insert(key.clone(), Slot::Pending(rx));
                        return Claim::Produce(ClaimGuard {
                            cache: self,
                            key: key.clone(),
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

    /// Event `id` of account 1.
    fn k(id: &str) -> EventKey {
        EventKey::new("1", id)
    }

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
        let Claim::Produce(guard) = cache.claim(&k("e1")).await else {
            panic!("first claim must produce")
        };
        guard.complete(&produced(7));
        match cache.claim(&k("e1")).await {
            Claim::Replay(p) => {
                assert_eq!(p.offset, 7);
                assert!(p.duplicate);
            }
            _ => panic!("second claim must replay"),
        }
        assert!(matches!(cache.claim(&k("e2")).await, Claim::Produce(_)));
    }

    #[tokio::test]
    async fn a_failed_attempt_releases_the_id() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let first = cache.claim(&k("e1")).await;
        assert!(matches!(first, Claim::Produce(_)));
        drop(first);
        assert!(matches!(cache.claim(&k("e1")).await, Claim::Produce(_)));
    }

    #[tokio::test]
    async fn concurrent_claims_wait_for_the_first() {
        let cache = std::sync::Arc::new(IdempotencyCache::new(Duration::from_secs(60), 10));
        let Claim::Produce(guard) = cache.claim(&k("e1")).await else {
            panic!("first claim must produce")
        };
        let c = cache.clone();
        let waiter = tokio::spawn(async move {
            match c.claim(&k("e1")).await {
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
        let Claim::Produce(g) = cache.claim(&k("e1")).await else {
            panic!()
        };
        g.complete(&produced(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(cache.claim(&k("e1")).await, Claim::Produce(_)));

        let small = IdempotencyCache::new(Duration::from_secs(60), 2);
        for id in ["a", "b", "c"] {
            let Claim::Produce(g) = small.claim(&k(id)).await else {
                panic!()
            };
            g.complete(&produced(1));
        }
        assert!(small.len() <= 2, "{}", small.len());
        assert!(matches!(small.claim(&k("a")).await, Claim::Produce(_)));
        assert!(matches!(
            IdempotencyCache::new(Duration::ZERO, 2)
                .claim(&k("a"))
                .await,
            Claim::Disabled
        ));
    }

    #[tokio::test]
    async fn one_id_in_two_accounts_is_two_events() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let (a, b) = (EventKey::new("a", "e1"), EventKey::new("b", "e1"));
        let Claim::Produce(guard) = cache.claim(&a).await else {
            panic!("first claim of a must produce")
        };
        guard.complete(&produced(7));
        // Account b's event with the same id is not a retry of a's.
        let Claim::Produce(guard) = cache.claim(&b).await else {
            panic!("b's event must be produced, not answered with a's position")
        };
        guard.complete(&produced(9));
        for (key, offset) in [(&a, 7), (&b, 9)] {
            match cache.claim(key).await {
                Claim::Replay(p) => {
                    assert_eq!(p.offset, offset, "{key:?}");
                    assert!(p.duplicate);
                }
                _ => panic!("{key:?} must replay"),
            }
        }
        assert_eq!(cache.len(), 2);
        // Fields stay apart: no separator a crafted id could forge.
        assert!(matches!(
            cache.claim(&EventKey::new("a:e", "1")).await,
            Claim::Produce(_)
        ));
        assert!(matches!(
            cache.claim(&EventKey::new("", "ae1")).await,
            Claim::Produce(_)
        ));
    }

    #[tokio::test]
    async fn a_pending_claim_holds_up_only_its_own_account() {
        use futures_util::FutureExt as _;
        let cache = IdempotencyCache::new(Duration::from_secs(60), 10);
        let Claim::Produce(pending) = cache.claim(&EventKey::new("a", "e1")).await else {
            panic!("first claim must produce")
        };
        // Resolves at once: nothing of account b is in flight.
        let other = cache
            .claim(&EventKey::new("b", "e1"))
            .now_or_never()
            .expect("b's claim must not wait for a's produce");
        assert!(matches!(other, Claim::Produce(_)));
        // a's retry does wait.
        assert!(
            cache
                .claim(&EventKey::new("a", "e1"))
                .now_or_never()
                .is_none()
        );
        // a's attempt fails: a's id is free again, b's claim is untouched.
        drop(pending);
        assert!(matches!(
            cache.claim(&EventKey::new("a", "e1")).now_or_never(),
            Some(Claim::Produce(_))
        ));
        let Claim::Produce(b) = other else {
            unreachable!()
        };
        b.complete(&produced(4));
        assert!(matches!(
            cache.claim(&EventKey::new("b", "e1")).await,
            Claim::Replay(p) if p.offset == 4
        ));
    }

    #[tokio::test]
    async fn the_bound_counts_keys_of_every_account() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        for account in ["a", "b", "c"] {
            let Claim::Produce(g) = cache.claim(&EventKey::new(account, "same")).await else {
                panic!("{account} must produce")
            };
            g.complete(&produced(1));
        }
        assert!(cache.len() <= 2, "{}", cache.len());
        // The oldest (a's) was forgotten; the newest (c's) is remembered.
        assert!(matches!(
            cache.claim(&EventKey::new("c", "same")).await,
            Claim::Replay(_)
        ));
        assert!(matches!(
            cache.claim(&EventKey::new("a", "same")).await,
            Claim::Produce(_)
        ));
    }
}
