//! The router: an index from account to this pod's live recipients.
//!
//! A record is decoded once by the consumer and handed to [`Router::dispatch`],
//! which offers it to every recipient of the record's account that is entitled
//! to it. Recipients encode frames through a per-dispatch [`FrameCache`], so
//! every distinct frame is encoded once and its bytes shared by everyone who
//! gets an identical frame.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
};

use crate::{
    core::{
        conflation::Conflation,
        event::RoutedEvent,
        identity::Identity,
        position::{Epochs, TopicPartition},
    },
    routing::history::HistoryBuffer,
    transport::ws::{WsFrame, WsPart},
};

/// Frames and bodies encoded for one event, shared between its recipients.
/// A frame is cached as the complete WebSocket frame, so every connection
/// that gets the same bytes writes the same buffer.
#[derive(Default)]
pub struct FrameCache {
    bodies: Vec<(String, WsPart)>,
    frames: Vec<(String, WsFrame)>,
}

impl FrameCache {
    /// The cached frame for `key`, if any.
    pub fn frame(&self, key: &str) -> Option<WsFrame> {
        self.frames
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The cached frame for `key`, encoding the text `make` returns the first time.
    pub fn frame_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> String) -> WsFrame {
        if let Some(v) = self.frame(key) {
            return v;
        }
        let v = WsFrame::text(&make());
        self.frames.push((key.to_owned(), v.clone()));
        v
    }

    /// The cached body text for `key` (a part several frames embed),
    /// made with `make` the first time.
    pub fn body_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> String) -> WsPart {
        if let Some((_, v)) = self.bodies.iter().find(|(k, _)| k == key) {
            return v.clone();
        }
        let v = WsPart::new(make());
        self.bodies.push((key.to_owned(), v.clone()));
        v
    }

    /// Forget everything (reused between events).
    pub fn clear(&mut self) {
        self.bodies.clear();
        self.frames.clear();
    }
}

/// One event of a dispatch batch, with the frames encoded for it so far.
pub struct Slot {
    /// The event.
    pub event: Arc<RoutedEvent>,
    /// Its frames, shared by every recipient (the consumer is one task, so
    /// a `RefCell` suffices).
    pub cache: RefCell<FrameCache>,
}

impl Slot {
    /// A slot with an empty cache.
    pub fn new(event: Arc<RoutedEvent>) -> Self {
        Slot {
            event,
            cache: RefCell::new(FrameCache::default()),
        }
    }

    /// Run `f` with this event and its cache.
    pub fn with<R>(&self, f: impl FnOnce(&Arc<RoutedEvent>, &mut FrameCache) -> R) -> R {
        match self.cache.try_borrow_mut() {
            Ok(mut cache) => f(&self.event, &mut cache),
            // Not reachable (one borrow at a time); encoding without the
            // shared cache is still correct.
            Err(_) => f(&self.event, &mut FrameCache::default()),
        }
    }
}

/// Something that can receive events: one client connection of one protocol.
pub trait Recipient: Send + Sync {
    /// Who the connection is; the router checks entitlement with it.
    fn identity(&self) -> &Identity;
    /// Queue the frames this recipient's subscriptions produce for `event`.
    /// Must not block: a recipient whose queue is full marks itself slow.
    fn offer(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache);
    /// Several events at once, in order, each already checked for this
    /// recipient's entitlement. A recipient that can queue them with one
    /// queue operation should (see `ConnTx::pusher`); by default they are
    /// offered one by one.
    fn offer_batch(&self, events: &mut dyn Iterator<Item = &Slot>) {
        for slot in events {
            slot.with(|event, cache| self.offer(event, cache));
        }
    }
    /// The log of `topic` (every partition, or one) was reset: forget the
    /// client positions in it that live events are compared with.
    fn forget_stream(&self, _topic: &str, _partition: Option<i32>) {}
    /// The client connection this registration belongs to (one connection
    /// may hold several), for the console's counts; `None` for a
    /// registration that is no client connection.
    fn connection(&self) -> Option<&crate::transport::connection::ConnTx> {
        None
    }
    /// How many client subscriptions this registration stands for.
    fn subscriptions(&self) -> usize {
        1
    }
}

/// The console's view of one account's registrations of one protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountLoad {
    /// The account.
    pub account: String,
    /// Protocol label (`stomp`, `actioncable`, `typeid`), or `console`
    /// for the console's own "watch as" views.
    pub protocol: &'static str,
    /// Distinct connections.
    pub connections: usize,
    /// Subscriptions they hold.
    pub subscriptions: usize,
}

/// One account's connections on this pod, by connection id.
type AccountConnections = HashMap<u64, Arc<dyn Recipient>>;

/// Account -> connection id -> recipient, plus what resuming clients need:
/// the recent-history buffer and the dispatch frontier.
pub struct Router {
    accounts: RwLock<HashMap<Arc<str>, AccountConnections>>,
    history: HistoryBuffer,
    /// Per partition, the next offset the consumer will hand to the router.
    frontier: Mutex<HashMap<TopicPartition, i64>>,
    /// The resume epoch of each topic's streams.
    epochs: Arc<Epochs>,
    /// Partitions reset because their offsets went backwards, since the
    /// assignment task last compared topic IDs.
    resets: Mutex<std::collections::HashSet<TopicPartition>>,
    /// Per partition, the high watermark last read by the lag reporter.
    watermarks: Mutex<HashMap<TopicPartition, i64>>,
    /// Which events supersede older undelivered ones.
    conflation: Conflation,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            accounts: RwLock::default(),
            history: HistoryBuffer::default(),
            frontier: Mutex::default(),
            epochs: Arc::new(Epochs::new("herald")),
            resets: Mutex::default(),
            watermarks: Mutex::default(),
            conflation: Conflation::default(),
        }
    }
}

impl Router {
    /// An empty router without a history buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty router with a history buffer and resume epochs.
    pub fn with_history(history: HistoryBuffer, epochs: Epochs) -> Self {
        Router {
            history,
            epochs: Arc::new(epochs),
            ..Self::default()
        }
    }

    /// Conflate the superseding events of `conflation`'s families.
    pub fn with_conflation(mut self, conflation: Conflation) -> Self {
        self.conflation = conflation;
        self
    }

    /// The resume epoch of each topic's streams.
    pub fn epochs(&self) -> &Arc<Epochs> {
        &self.epochs
    }

    /// The next offset to dispatch in `stream`, if known.
    pub fn next_offset(&self, stream: &TopicPartition) -> Option<i64> {
        self.frontier.lock().ok()?.get(stream).copied()
    }

    /// The log of `stream` went backwards (its next record is at `next`):
    /// forget its frontier, history and every client position in it, with
    /// no record being dispatched meanwhile.
    pub fn reset_stream(&self, stream: &TopicPartition, next: i64) {
        let Ok(map) = self.accounts.write() else {
            return;
        };
        if let Ok(mut f) = self.frontier.lock() {
            f.insert(stream.clone(), next);
        }
        self.history.clear(&stream.0, Some(stream.1));
        for recipient in map.values().flat_map(HashMap::values) {
            recipient.forget_stream(&stream.0, Some(stream.1));
        }
        if let Ok(mut r) = self.resets.lock() {
            r.insert(stream.clone());
        }
    }

    /// The recent-history buffer.
    pub fn history(&self) -> &HistoryBuffer {
        &self.history
    }

    /// Whether `stream` was reset (offsets went backwards) since the topic
    /// IDs were last compared; forgets it.
    pub fn take_reset(&self, stream: &TopicPartition) -> bool {
        self.resets.lock().is_ok_and(|mut r| r.remove(stream))
    }

    /// The topic IDs of `topics` were compared and found unchanged: resets
    /// seen so far were truncations, not recreations.
    pub fn checked_topics<'t>(&self, topics: impl Iterator<Item = &'t String>) {
        if let Ok(mut r) = self.resets.lock()
            && !r.is_empty()
        {
            for t in topics {
                r.retain(|(rt, _)| **rt != **t);
            }
        }
    }

    /// A partition the topic no longer has: forget its frontier and history.
    pub fn forget_partition(&self, stream: &TopicPartition) {
        let Ok(map) = self.accounts.write() else {
            return;
        };
        if let Ok(mut f) = self.frontier.lock() {
            f.remove(stream);
        }
        self.history.clear(&stream.0, Some(stream.1));
        for recipient in map.values().flat_map(HashMap::values) {
            recipient.forget_stream(&stream.0, Some(stream.1));
        }
    }

    /// Record where the consumer starts reading a partition (kept if known;
    /// a topic reset forgets it first).
    pub fn init_frontier(&self, stream: TopicPartition, offset: i64) {
        if let Ok(mut f) = self.frontier.lock() {
            f.entry(stream).or_insert(offset);
        }
    }

    /// A copy of the frontier (next offset to dispatch per partition).
    pub fn frontier(&self) -> HashMap<TopicPartition, i64> {
        self.frontier.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Register a resuming connection and return the frontier at that
    /// instant: records below it were dispatched before (replay them),
    /// records from it on will be offered live.
    pub fn insert_resuming(
        &self,
        conn_id: u64,
        recipient: Arc<dyn Recipient>,
    ) -> HashMap<TopicPartition, i64> {
        let account = recipient.identity().account_id.clone();
        let Ok(mut map) = self.accounts.write() else {
            return HashMap::new();
        };
        map.entry(account).or_default().insert(conn_id, recipient);
        self.frontier.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Run `f` while no record is being dispatched, and return the frontier
    /// at that instant (for subscriptions added to an existing recipient).
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> (R, HashMap<TopicPartition, i64>) {
        let guard = self.accounts.write();
        let result = f();
        let frontier = self.frontier.lock().map(|f| f.clone()).unwrap_or_default();
        drop(guard);
        (result, frontier)
    }

    /// A read view for the consumer: routing decisions and frontier updates
    /// happen under one read lock, so a resuming registration sees either
    /// all of a record's handling or none of it.
    pub fn view(&self) -> Option<RouterView<'_>> {
        Some(RouterView {
            router: self,
            map: self.accounts.read().ok()?,
        })
    }

    /// Register a connection under its identity's account.
    pub fn insert(&self, conn_id: u64, recipient: Arc<dyn Recipient>) {
        let account = recipient.identity().account_id.clone();
        if let Ok(mut map) = self.accounts.write() {
            map.entry(account).or_default().insert(conn_id, recipient);
        }
    }

    /// Remove a connection.
    pub fn remove(&self, account: &str, conn_id: u64) {
        if let Ok(mut map) = self.accounts.write()
            && let Some(conns) = map.get_mut(account)
        {
            conns.remove(&conn_id);
            if conns.is_empty() {
                map.remove(account);
            }
        }
    }

    /// Whether any connection of `account` is on this pod (lets the consumer
    /// skip parsing records nobody here can receive).
    pub fn has_account(&self, account: &str) -> bool {
        self.accounts
            .read()
            .map(|m| m.contains_key(account))
            .unwrap_or(false)
    }

    /// Registrations per account and protocol, sorted by account.
    pub fn loads(&self) -> Vec<AccountLoad> {
        let Ok(map) = self.accounts.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (account, conns) in map.iter() {
            // protocol -> (connection keys, subscriptions)
            let mut per: Vec<(&'static str, std::collections::HashSet<usize>, usize)> = Vec::new();
            for (id, r) in conns {
                let (protocol, key) = match r.connection() {
                    Some(c) => (c.protocol(), c.key()),
                    None => ("console", *id as usize),
                };
                match per.iter_mut().find(|(p, _, _)| *p == protocol) {
                    Some((_, keys, subs)) => {
                        keys.insert(key);
                        *subs += r.subscriptions();
                    }
                    None => per.push((protocol, [key].into(), r.subscriptions())),
                }
            }
            out.extend(
                per.into_iter()
                    .map(|(protocol, keys, subscriptions)| AccountLoad {
                        account: account.to_string(),
                        protocol,
                        connections: keys.len(),
                        subscriptions,
                    }),
            );
        }
        out.sort_by(|a, b| (&a.account, a.protocol).cmp(&(&b.account, b.protocol)));
        out
    }

    /// Remember the high watermark of `stream` (for the console).
    pub fn set_watermark(&self, stream: TopicPartition, high: i64) {
        if let Ok(mut w) = self.watermarks.lock() {
            w.insert(stream, high);
        }
    }

    /// The high watermarks last read, per partition.
    pub fn watermarks(&self) -> HashMap<TopicPartition, i64> {
        self.watermarks
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.accounts
            .read()
            .map(|m| m.values().map(HashMap::len).sum())
            .unwrap_or(0)
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offer `event` to every entitled recipient of its account (and record
    /// it in the history). Returns the number of recipients it was offered to.
    pub fn dispatch(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) -> usize {
        self.view().map(|v| v.dispatch(event, cache)).unwrap_or(0)
    }
}

/// The consumer's view of the router for one record.
pub struct RouterView<'a> {
    router: &'a Router,
    map: RwLockReadGuard<'a, HashMap<Arc<str>, AccountConnections>>,
}

impl RouterView<'_> {
    /// Whether any connection of `account` is on this pod (lets the consumer
    /// skip decoding records nobody here can receive).
    pub fn has_account(&self, account: &str) -> bool {
        self.map.contains_key(account)
    }

    /// Set what `event` is about, if it supersedes older events for
    /// clients not yet sent them ([`Conflation::subject`]).
    pub fn mark_subject(&self, event: &mut RoutedEvent) {
        let conflation = &self.router.conflation;
        if conflation.families().is_empty() {
            return;
        }
        event.subject = conflation.subject(&event.envelope, event.payload_json());
    }

    fn advance(&self, stream: TopicPartition, offset: i64) {
        if let Ok(mut f) = self.router.frontier.lock() {
            let next = f.entry(stream).or_insert(offset + 1);
            *next = (*next).max(offset + 1);
        }
    }

    /// A record that is not delivered (no recipient here, or invalid).
    pub fn pass(
        &self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        account: Option<&str>,
    ) {
        if let Some(account) = account {
            self.router.history.append_skipped(
                (topic.clone(), partition),
                offset,
                timestamp_ms,
                account,
            );
        }
        self.advance((topic.clone(), partition), offset);
    }

    /// Offer `event` to every entitled recipient of its account, and record it.
    pub fn dispatch(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) -> usize {
        cache.clear();
        let offered = self.offer_all(event, cache);
        self.record(event);
        offered
    }

    /// Record a delivered event in the history and the frontier. With
    /// [`dispatch_batch`](Self::dispatch_batch), every event of a batch is
    /// recorded (in order) before the batch is offered; both happen under
    /// this one read lock, so a resuming registration sees all of it or none.
    pub fn record(&self, event: &Arc<RoutedEvent>) {
        self.router.history.append(event);
        self.advance((event.topic.clone(), event.partition), event.offset);
    }

    /// Offer a batch of recorded events: per account, each entitled
    /// recipient gets all of that account's events of the batch in one
    /// call, in order, so it can queue them with one queue operation
    /// instead of one per frame (the largest per-frame cost under fan-out
    /// was that queue operation's cross-core traffic). Returns the number of
    /// (recipient, event) offers.
    pub fn dispatch_batch(&self, slots: &[Slot]) -> usize {
        let mut offered = 0;
        let mut done = vec![false; slots.len()];
        let mut group: Vec<&Slot> = Vec::with_capacity(slots.len());
        for i in 0..slots.len() {
            if done[i] {
                continue;
            }
            let account = slots[i].event.envelope.account_id.as_str();
            group.clear();
            for (j, slot) in slots.iter().enumerate().skip(i) {
                if !done[j] && slot.event.envelope.account_id == account {
                    done[j] = true;
                    group.push(slot);
                }
            }
            let Some(conns) = self.map.get(account) else {
                continue;
            };
            for recipient in conns.values() {
                let identity = recipient.identity();
                // Defence in depth: the index is keyed by account, and the
                // identity must agree before anything is offered.
                let mut entitled = group
                    .iter()
                    .copied()
                    .filter(|s| {
                        *identity.account_id == *s.event.envelope.account_id
                            && identity.entitled(s.event.envelope.audience.as_ref())
                    })
                    .inspect(|_| offered += 1);
                recipient.offer_batch(&mut entitled);
            }
        }
        offered
    }

    /// How many connections [`RouterView::dispatch_batch`] offers `event`
    /// to (the same checks; for a traced event's span, under the same view).
    pub fn recipients(&self, event: &RoutedEvent) -> usize {
        let Some(conns) = self.map.get(event.envelope.account_id.as_str()) else {
            return 0;
        };
        let audience = event.envelope.audience.as_ref();
        conns
            .values()
            .filter(|recipient| {
                let identity = recipient.identity();
                *identity.account_id == *event.envelope.account_id && identity.entitled(audience)
            })
            .count()
    }

    fn offer_all(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) -> usize {
        let Some(conns) = self.map.get(event.envelope.account_id.as_str()) else {
            return 0;
        };
        let audience = event.envelope.audience.as_ref();
        let mut offered = 0;
        for recipient in conns.values() {
            let identity = recipient.identity();
            // Defence in depth: the index is keyed by account, and the
            // identity must agree before anything is offered.
            if *identity.account_id != *event.envelope.account_id || !identity.entitled(audience) {
                continue;
            }
            recipient.offer(event, cache);
            offered += 1;
        }
        offered
    }
}
