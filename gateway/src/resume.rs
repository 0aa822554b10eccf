//! Reliable delivery across reconnects and pods.
//!
//! Every delivered event carries its position (topic, partition, offset). A
//! client that comes back with its last positions gets exactly what it
//! missed, in order, then continues live:
//!
//! 1. its subscription is registered *holding* live events
//!    ([`ResumeGate`]), and the router hands back the frontier — for every
//!    partition, the next offset it will dispatch ([`Router::insert_resuming`]);
//! 2. for every stream the client names, the events from its position up to
//!    the frontier come from this pod's [`HistoryBuffer`] when it covers
//!    them, otherwise are read back from Kafka ([`read_back`]), within the
//!    configured limits;
//! 3. those are delivered, then the held live events, then the gate opens.
//!
//! A position that can no longer be served (older than retention or the
//! limits) yields an explicit gap instead of a silent hole.
//!
//! [`Router::insert_resuming`]: crate::router::Router::insert_resuming

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use herald_runtime::KafkaArgs;
use herald_schemas::Envelope;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

use crate::{
    connection::{ConnTx, Outbound},
    router::{RoutedEvent, now_ms},
    ws::WsFrame,
};

/// A topic-partition.
pub type TopicPartition = (Arc<str>, i32);

/// Resume limits.
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// Events kept per partition in the per-pod history buffer.
    pub buffer_events: usize,
    /// Bytes the history buffer holds at most, over every partition.
    pub buffer_bytes: usize,
    /// Oldest event age the buffer keeps, and the oldest position served at all.
    pub max_age: Duration,
    /// Most events one stream may replay (beyond: a gap).
    pub max_events: usize,
    /// Kafka settings for read-back consumers.
    pub kafka: KafkaArgs,
    /// Epoch reported to AnyCable ext clients (changes when history is reset).
    pub epoch: String,
    /// Kafka reads (read-backs, offset and watermark lookups) at once, pod-wide:
    /// a resume storm queues here instead of opening a consumer per client.
    pub kafka_reads: Arc<tokio::sync::Semaphore>,
    /// The consumer time lookups share (created on first use).
    pub time_reader: TimeReader,
}

/// One Kafka consumer kept for looking up offsets by time
/// (`offsets_for_times`): creating a consumer per lookup (a bootstrap and
/// connections each time) made a storm of `since` resumes take minutes.
#[derive(Clone, Default)]
pub struct TimeReader(Arc<TimeReaderState>);

#[derive(Default)]
struct TimeReaderState {
    consumer: Mutex<Option<Arc<BaseConsumer>>>,
    /// One lookup at a time per `since`: the clients of a storm that resume
    /// from the same second wait for the first one's answer.
    asking: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for TimeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimeReader")
    }
}

impl TimeReader {
    fn get(&self, config: &ResumeConfig) -> Option<Arc<BaseConsumer>> {
        let mut slot = self.0.consumer.lock().ok()?;
        if slot.is_none() {
            *slot = reader(config).map(Arc::new);
        }
        slot.clone()
    }

    /// The lock of lookups for `since_ms`.
    fn asking(&self, since_ms: i64) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut asking) = self.0.asking.lock() else {
            return Arc::default();
        };
        asking.entry(since_ms).or_default().clone()
    }

    /// Done asking for `since_ms`: forget its lock unless someone waits.
    fn done_asking(&self, since_ms: i64, lock: Arc<tokio::sync::Mutex<()>>) {
        if let Ok(mut asking) = self.0.asking.lock()
            && Arc::strong_count(&lock) <= 2
        {
            asking.remove(&since_ms);
        }
    }
}

/// The AnyCable `epoch` of each stream: the configured `--resume-epoch`
/// joined with the topic's Kafka ID once it is known, so a position in a
/// topic that was deleted and recreated (a new ID) is never taken for a
/// position in the new one. Positions carrying the bare configured epoch
/// (clients of a gateway that did not know the IDs) are still accepted.
#[derive(Debug)]
pub struct Epochs {
    base: Arc<str>,
    per_topic: std::sync::RwLock<HashMap<String, Arc<str>>>,
}

impl Epochs {
    /// Epochs derived from the configured one.
    pub fn new(base: &str) -> Self {
        Epochs {
            base: Arc::from(base),
            per_topic: std::sync::RwLock::new(HashMap::new()),
        }
    }

    /// The topic's Kafka ID is `id` (changes when it is recreated).
    pub fn set_topic_id(&self, topic: &str, id: &str) {
        let epoch: Arc<str> = Arc::from(format!("{}.{id}", self.base));
        if let Ok(mut m) = self.per_topic.write()
            && m.get(topic).is_none_or(|e| *e != epoch)
        {
            m.insert(topic.to_owned(), epoch);
        }
    }

    /// The epoch of `topic`'s streams.
    pub fn of(&self, topic: &str) -> Arc<str> {
        self.per_topic
            .read()
            .ok()
            .and_then(|m| m.get(topic).cloned())
            .unwrap_or_else(|| self.base.clone())
    }

    /// Whether a client's `epoch` for a stream of `topic` is this log's.
    pub fn accepts(&self, topic: &str, epoch: &str) -> bool {
        epoch == &*self.of(topic) || epoch == &*self.base
    }
}

/// One record of the history buffer: the event when it was decoded, or only
/// its account when the pod skipped it (nobody here could receive it).
struct Buffered {
    offset: i64,
    timestamp_ms: Option<i64>,
    account: Arc<str>,
    event: Option<Arc<RoutedEvent>>,
}

/// The recent records of each partition, bounded by count and age per
/// partition and by bytes over all of them.
#[derive(Default)]
pub struct HistoryBuffer {
    parts: Mutex<Parts>,
    max_events: usize,
    max_age_ms: i64,
    max_bytes: usize,
}

#[derive(Default)]
struct Parts {
    queues: HashMap<TopicPartition, VecDeque<Buffered>>,
    /// Estimated memory of every buffered record.
    bytes: usize,
    /// Per partition, the newest record timestamp the buffer may lack: every
    /// record stamped later passed through it and is still there. Absent:
    /// unknown (a time lookup must ask Kafka).
    covered_after: HashMap<TopicPartition, i64>,
    /// What Kafka answered for a time in a partition the buffer did not
    /// cover (`offsets_for_times`), kept so a storm of clients resuming by
    /// the same `since` (AnyCable sends whole seconds) asks Kafka once.
    kafka_times: HashMap<(TopicPartition, i64), KafkaTime>,
    /// Incremented by every [`HistoryBuffer::clear`]: a read-back that began
    /// before belongs to another incarnation of the log.
    generation: u64,
}

/// Kafka's answer for a time in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KafkaTime {
    /// The first record at or after the time (offsets never move).
    At(i64),
    /// No record at or after the time below this offset (the asking
    /// subscription's frontier, at most the partition's end when Kafka was
    /// asked): later records come through this pod and its buffer.
    NoneBefore(i64),
}

/// Time answers kept at most (a few per `since` second and partition).
const KAFKA_TIMES_KEPT: usize = 16_384;

/// Where a time lands in a partition, as far as the buffer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtTime {
    /// The first record at or after the time.
    Offset(i64),
    /// No record at or after the time: nothing to replay.
    Nothing,
    /// The buffer does not reach back that far: ask Kafka.
    Unknown,
}

impl Buffered {
    /// What keeping this record costs, estimated: the decoded event's text
    /// (shared with recipients while it is delivered) plus bookkeeping.
    fn cost(&self) -> usize {
        let event = self.event.as_ref().map_or(0, |e| {
            e.envelope.payload.get().len()
                + e.envelope.id.len()
                + e.envelope.event_type.len()
                + e.envelope.account_id.len()
                + 256
        });
        event + self.account.len() + 64
    }
}

impl HistoryBuffer {
    /// A buffer keeping `max_events` per partition, none older than `max_age`.
    pub fn new(max_events: usize, max_age: Duration) -> Self {
        Self::with_budget(max_events, max_age, usize::MAX)
    }

    /// [`new`](Self::new), and at most `max_bytes` over all partitions
    /// (the oldest records of the partition being appended to go first).
    pub fn with_budget(max_events: usize, max_age: Duration, max_bytes: usize) -> Self {
        HistoryBuffer {
            parts: Mutex::new(Parts::default()),
            max_events,
            max_age_ms: max_age.as_millis() as i64,
            max_bytes,
        }
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.parts.lock().map(|p| p.bytes).unwrap_or(0)
    }

    /// Append a dispatched event (records of a partition arrive in offset order).
    pub fn append(&self, event: &Arc<RoutedEvent>) {
        self.push(
            (event.topic.clone(), event.partition),
            Buffered {
                offset: event.offset,
                timestamp_ms: event.kafka_timestamp_ms,
                account: Arc::from(event.envelope.account_id.as_str()),
                event: Some(event.clone()),
            },
        );
    }

    /// Note a record this pod did not decode (its account had nobody here).
    pub fn append_skipped(
        &self,
        stream: TopicPartition,
        offset: i64,
        timestamp_ms: Option<i64>,
        account: &str,
    ) {
        self.push(
            stream,
            Buffered {
                offset,
                timestamp_ms,
                account: Arc::from(account),
                event: None,
            },
        );
    }

    fn push(&self, stream: TopicPartition, record: Buffered) {
        if self.max_events == 0 {
            return;
        }
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        let Parts {
            queues,
            bytes,
            covered_after,
            ..
        } = &mut *parts;
        *bytes += record.cost();
        let queue = queues.entry(stream.clone()).or_default();
        queue.push_back(record);
        let oldest_allowed = now_ms() - self.max_age_ms;
        while queue.len() > self.max_events
            || queue
                .front()
                .is_some_and(|e| e.timestamp_ms.is_some_and(|t| t < oldest_allowed))
            || (*bytes > self.max_bytes && queue.len() > 1)
        {
            if let Some(old) = queue.pop_front() {
                *bytes = bytes.saturating_sub(old.cost());
                evicted(covered_after, &stream, &old);
            }
        }
        // Still over budget (this partition is down to its newest record):
        // the others give up their oldest.
        if *bytes > self.max_bytes {
            for (key, other) in queues.iter_mut() {
                if *key == stream {
                    continue;
                }
                while *bytes > self.max_bytes
                    && let Some(old) = other.pop_front()
                {
                    *bytes = bytes.saturating_sub(old.cost());
                    evicted(covered_after, key, &old);
                }
                if *bytes <= self.max_bytes {
                    break;
                }
            }
            queues.retain(|_, q| !q.is_empty());
        }
    }

    /// Forget what is buffered for `topic` (every partition, or one): its
    /// offsets went backwards, so the buffered records belong to another
    /// incarnation of the log.
    pub fn clear(&self, topic: &str, partition: Option<i32>) {
        if let Ok(mut parts) = self.parts.lock() {
            let Parts {
                queues,
                bytes,
                covered_after,
                kafka_times,
                generation,
            } = &mut *parts;
            *generation += 1;
            let gone =
                |(t, p): &TopicPartition| **t == *topic && partition.is_none_or(|want| *p == want);
            // What the new log holds is read from its beginning again, but
            // be conservative: time lookups go to Kafka.
            covered_after.retain(|stream, _| !gone(stream));
            kafka_times.retain(|(stream, _), _| !gone(stream));
            queues.retain(|stream, q| {
                let gone = gone(stream);
                if gone {
                    *bytes = bytes.saturating_sub(q.iter().map(Buffered::cost).sum());
                }
                !gone
            });
        }
    }

    /// Records `events` read back from Kafka, the whole of `[_, read_to)`
    /// of `stream` in offset order, extend the buffer backwards when they
    /// join its oldest record (or it holds nothing of the stream yet, as
    /// `read_to` is then where this pod began reading): the next clients
    /// resuming from before this pod's start are served from memory. Only
    /// the newest that fit the count, age and byte budgets are kept.
    pub fn backfill(
        &self,
        stream: &TopicPartition,
        events: &[Arc<RoutedEvent>],
        read_to: i64,
        generation: u64,
    ) {
        if self.max_events == 0 || events.is_empty() {
            return;
        }
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        if parts.generation != generation {
            return;
        }
        let Parts { queues, bytes, .. } = &mut *parts;
        let queue = queues.entry(stream.clone()).or_default();
        let front = queue.front().map_or(read_to, |r| r.offset);
        if read_to < front {
            // A hole between what was read and what the buffer holds.
            return;
        }
        let oldest_allowed = now_ms() - self.max_age_ms;
        for event in events.iter().rev().filter(|e| e.offset < front) {
            let record = Buffered {
                offset: event.offset,
                timestamp_ms: event.kafka_timestamp_ms,
                account: Arc::from(event.envelope.account_id.as_str()),
                event: Some(event.clone()),
            };
            if queue.len() >= self.max_events
                || *bytes + record.cost() > self.max_bytes
                || record.timestamp_ms.is_some_and(|t| t < oldest_allowed)
            {
                break;
            }
            *bytes += record.cost();
            queue.push_front(record);
        }
        if queue.is_empty() {
            queues.remove(stream);
        }
    }

    /// The current incarnation, for [`backfill`](Self::backfill).
    pub fn generation(&self) -> u64 {
        self.parts.lock().map_or(0, |p| p.generation)
    }

    /// The events of `account` in `stream` with offsets in `[from, to)`, if
    /// the buffer holds all of them: it reaches back to `from` and decoded
    /// every record of that account in the range.
    pub fn range(
        &self,
        stream: &TopicPartition,
        from: i64,
        to: i64,
        account: &str,
    ) -> Option<Vec<Arc<RoutedEvent>>> {
        if from >= to {
            return Some(Vec::new());
        }
        let parts = self.parts.lock().ok()?;
        let queue = parts.queues.get(stream)?;
        if queue.front()?.offset > from {
            return None;
        }
        let mut out = Vec::new();
        for record in queue
            .iter()
            .filter(|r| r.offset >= from && r.offset < to && *r.account == *account)
        {
            out.push(record.event.clone()?);
        }
        Some(out)
    }

    /// This pod reads `stream` from here on and every record it reads
    /// passes through the buffer: records it lacks are stamped at most
    /// `after_ms` (the wall time when reading began at the log's end, or
    /// `i64::MIN` when reading from the log's beginning).
    pub fn cover(&self, stream: &TopicPartition, after_ms: i64) {
        if self.max_events == 0 {
            return;
        }
        if let Ok(mut parts) = self.parts.lock() {
            parts
                .covered_after
                .entry(stream.clone())
                .or_insert(after_ms);
        }
    }

    /// Where `since_ms` lands in `stream`, as far as the buffer knows: a
    /// time after everything it may lack is answered from the buffer alone
    /// (even when it holds nothing), so resuming by time (`since`,
    /// `timestamp=`) asks Kafka only for times the pod did not see.
    pub fn offset_at(&self, stream: &TopicPartition, since_ms: i64) -> AtTime {
        let Ok(parts) = self.parts.lock() else {
            return AtTime::Unknown;
        };
        let queue = parts.queues.get(stream);
        let found = || {
            queue
                .and_then(|q| q.iter().find(|e| e.timestamp_ms.unwrap_or(0) >= since_ms))
                .map_or(AtTime::Nothing, |e| AtTime::Offset(e.offset))
        };
        if parts
            .covered_after
            .get(stream)
            .is_some_and(|&after| since_ms > after)
        {
            return found();
        }
        match queue.and_then(|q| q.front()) {
            Some(first) if first.timestamp_ms.unwrap_or(0) <= since_ms => match found() {
                AtTime::Nothing => {
                    AtTime::Offset(queue.and_then(|q| q.back()).map_or(0, |b| b.offset + 1))
                }
                at => at,
            },
            _ => AtTime::Unknown,
        }
    }

    /// [`offset_at`](Self::offset_at), completed with what Kafka answered
    /// before for the same time, for a subscription whose frontier in
    /// `stream` is `end`.
    pub fn offset_at_known(&self, stream: &TopicPartition, since_ms: i64, end: i64) -> AtTime {
        match self.offset_at(stream, since_ms) {
            AtTime::Unknown => {}
            at => return at,
        }
        let Ok(parts) = self.parts.lock() else {
            return AtTime::Unknown;
        };
        match parts.kafka_times.get(&(stream.clone(), since_ms)) {
            Some(KafkaTime::At(offset)) => AtTime::Offset(*offset),
            Some(KafkaTime::NoneBefore(bound)) if end <= *bound => AtTime::Nothing,
            Some(KafkaTime::NoneBefore(bound)) => {
                // Records from `bound` on passed through this pod: the
                // buffer answers if it still holds them all.
                let Some(queue) = parts.queues.get(stream) else {
                    return AtTime::Unknown;
                };
                if queue.front().is_none_or(|first| first.offset > *bound) {
                    return AtTime::Unknown;
                }
                queue
                    .iter()
                    .find(|r| r.offset >= *bound && r.timestamp_ms.unwrap_or(0) >= since_ms)
                    .map_or(AtTime::Nothing, |r| AtTime::Offset(r.offset))
            }
            None => AtTime::Unknown,
        }
    }

    /// Keep Kafka's answer for `since_ms` in `stream` (`None`: no record at
    /// or after it below `end`, the asking subscription's frontier), unless
    /// the log was recreated since the lookup began (`generation`).
    fn remember_kafka_time(
        &self,
        stream: &TopicPartition,
        since_ms: i64,
        found: Option<i64>,
        end: i64,
        generation: u64,
    ) {
        let Ok(mut parts) = self.parts.lock() else {
            return;
        };
        if parts.generation != generation {
            return;
        }
        let times = &mut parts.kafka_times;
        if times.len() >= KAFKA_TIMES_KEPT {
            let oldest_allowed = now_ms() - self.max_age_ms;
            times.retain(|(_, since), _| *since >= oldest_allowed);
            if times.len() >= KAFKA_TIMES_KEPT {
                times.clear();
            }
        }
        let answer = match found {
            Some(offset) => KafkaTime::At(offset),
            None => KafkaTime::NoneBefore(end),
        };
        let slot = times.entry((stream.clone(), since_ms)).or_insert(answer);
        // An offset, or a "nothing below" further along, says more.
        match (*slot, answer) {
            (KafkaTime::NoneBefore(_), KafkaTime::At(_)) => *slot = answer,
            (KafkaTime::NoneBefore(old), KafkaTime::NoneBefore(new)) if new > old => *slot = answer,
            _ => {}
        }
    }
}

/// A record left the buffer: what it held may now be missing.
fn evicted(
    covered_after: &mut HashMap<TopicPartition, i64>,
    stream: &TopicPartition,
    old: &Buffered,
) {
    let stamp = old.timestamp_ms.unwrap_or(i64::MAX);
    if let Some(after) = covered_after.get_mut(stream) {
        *after = (*after).max(stamp);
    }
}

/// Holds live events while a subscription replays what it missed, and
/// drops live events the client already has: this pod may be behind the pod
/// the client came from, so it can still dispatch events at or below the
/// client's positions.
///
/// Held events are bounded: past the limit the gate drops them (they are
/// in Kafka) and says so ([`Taken::Overflowed`]), and the catch-up reads
/// them again, so a client that reads slower than its account's live
/// traffic is paced, never left with an unbounded list.
#[derive(Default)]
pub struct ResumeGate {
    /// Fast path: once open, live events never touch the lock.
    open: AtomicBool,
    held: Mutex<Held>,
    /// Per stream, the client's last offset; removed once the stream passes it.
    floors: Mutex<Vec<(TopicPartition, i64)>>,
    has_floors: AtomicBool,
}

#[derive(Default)]
struct Held {
    /// `None` once the gate is open.
    events: Option<Vec<Arc<RoutedEvent>>>,
    /// Events were dropped since the last [`ResumeGate::rearm`].
    overflowed: bool,
    limit: usize,
}

/// What [`ResumeGate::take_held`] found.
pub enum Taken {
    /// The events held so far, in arrival order (possibly none).
    Events(Vec<Arc<RoutedEvent>>),
    /// Too many arrived: they were dropped and must be read again.
    Overflowed,
}

impl ResumeGate {
    /// A gate that is already open (no resume).
    pub fn open() -> Self {
        ResumeGate {
            open: AtomicBool::new(true),
            ..Default::default()
        }
    }

    /// A closed gate: live events are held (at most `limit` at a time)
    /// until it opens; events at or below the client's `positions` are dropped.
    pub fn holding(positions: &[(String, i32, i64)], limit: usize) -> Self {
        let floors: Vec<(TopicPartition, i64)> = positions
            .iter()
            .map(|(t, p, o)| ((Arc::from(t.as_str()), *p), *o))
            .collect();
        ResumeGate {
            open: AtomicBool::new(false),
            held: Mutex::new(Held {
                events: Some(Vec::new()),
                overflowed: false,
                limit: limit.max(1),
            }),
            has_floors: AtomicBool::new(!floors.is_empty()),
            floors: Mutex::new(floors),
        }
    }

    /// Whether `event` is one the client already has (at or below its position).
    pub fn already_seen(&self, event: &RoutedEvent) -> bool {
        if !self.has_floors.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut floors) = self.floors.lock() else {
            return false;
        };
        let Some(i) = floors
            .iter()
            .position(|((t, p), _)| **t == *event.topic && *p == event.partition)
        else {
            return false;
        };
        if event.offset <= floors[i].1 {
            return true;
        }
        // The stream moved past the client's position: no more checks for it.
        floors.swap_remove(i);
        if floors.is_empty() {
            self.has_floors.store(false, Ordering::Release);
        }
        false
    }

    /// Drop the client's positions in `topic` (every partition, or one):
    /// they belong to a log that was reset, and live events of the new one
    /// must not be taken for events the client already has.
    pub fn forget(&self, topic: &str, partition: Option<i32>) {
        if !self.has_floors.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut floors) = self.floors.lock() {
            floors
                .retain(|((t, p), _)| !(**t == *topic && partition.is_none_or(|want| *p == want)));
            if floors.is_empty() {
                self.has_floors.store(false, Ordering::Release);
            }
        }
    }

    /// Hold `event` if the gate is closed (or drop it, past the limit);
    /// false when it is open.
    pub fn hold(&self, event: &Arc<RoutedEvent>) -> bool {
        if self.open.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        let Held {
            events,
            overflowed,
            limit,
        } = &mut *held;
        let Some(list) = events.as_mut() else {
            return false;
        };
        if *overflowed {
            return true;
        }
        if list.len() >= *limit {
            *overflowed = true;
            *list = Vec::new();
            return true;
        }
        list.push(event.clone());
        true
    }

    /// Take what is held so far (the gate keeps holding).
    pub fn take_held(&self) -> Taken {
        let Ok(mut held) = self.held.lock() else {
            return Taken::Events(Vec::new());
        };
        if held.overflowed {
            return Taken::Overflowed;
        }
        Taken::Events(held.events.as_mut().map(std::mem::take).unwrap_or_default())
    }

    /// Open the gate if nothing is held (live events then pass straight
    /// through); false when events arrived meanwhile or were dropped.
    pub fn try_open(&self) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return true;
        };
        if held.overflowed || held.events.as_ref().is_some_and(|e| !e.is_empty()) {
            return false;
        }
        held.events = None;
        self.open.store(true, Ordering::Release);
        true
    }

    /// Hold again from empty after an overflow (call while no record is
    /// dispatched, see [`Router::exclusive`](crate::router::Router::exclusive)).
    pub fn rearm(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.overflowed = false;
            if let Some(list) = held.events.as_mut() {
                list.clear();
            }
        }
    }
}

/// A subscription's part of a catch-up: how it frames events and tells
/// the client about gaps.
pub trait Replayer {
    /// The frame of `event` for this subscription, if it takes it
    /// (entitlement is checked here: replayed events bypass the router).
    fn frame(&self, event: &RoutedEvent) -> Option<WsFrame>;
    /// What tells the client about `gaps` (STOMP's gap messages).
    fn gap_frames(&self, gaps: &[Gap]) -> Vec<WsFrame>;
    /// What follows the first replay (AnyCable's `confirm_history` or
    /// `reject_history`).
    fn verdict(&self, replay: &Replay) -> Option<WsFrame>;
}

/// Where a catch-up reads and writes.
pub struct CatchUp<'a> {
    /// The router (frontier, history, exclusive registration).
    pub router: &'a crate::router::Router,
    /// Resume limits and Kafka settings.
    pub config: &'a ResumeConfig,
    /// The subscription's account.
    pub account: &'a str,
    /// The subscription's gate.
    pub gate: &'a ResumeGate,
    /// The connection's queue.
    pub conn: &'a ConnTx,
    /// Metrics, and the protocol label.
    pub metrics: &'a crate::metrics::Metrics,
    /// Protocol label.
    pub protocol: &'static str,
    /// Fires when the connection is gone: the catch-up stops, and so do
    /// its Kafka reads.
    pub cancel: &'a tokio_util::sync::CancellationToken,
}

impl CatchUp<'_> {
    /// Replay what `request` asks for up to `frontier`, then the live events
    /// held meanwhile, then open the gate. Everything is written paced by
    /// the client (the task waits for room; no lock is held while it
    /// waits, so the consumer and other clients never wait for it). If
    /// live events outgrow the gate while the client reads, they are read
    /// again from where the delivery got to. Returns when the gate is open
    /// or the connection is gone.
    pub async fn run(
        &self,
        request: ResumeRequest,
        frontier: HashMap<TopicPartition, i64>,
        replayer: &impl Replayer,
    ) {
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = self.run_until_open(request, frontier, replayer) => {}
        }
    }

    async fn run_until_open(
        &self,
        mut request: ResumeRequest,
        mut frontier: HashMap<TopicPartition, i64>,
        replayer: &impl Replayer,
    ) {
        // The last offset delivered per stream.
        let mut delivered: HashMap<TopicPartition, i64> = HashMap::new();
        let mut first = true;
        loop {
            let replay = plan(
                &request,
                self.account,
                &frontier,
                self.router.history(),
                self.config,
                self.cancel,
            )
            .await;
            replay.release_stale_floors(self.gate);
            for gap in &replay.gaps {
                self.metrics
                    .resume_gaps
                    .with_label_values(&[self.protocol, gap.reason])
                    .inc();
            }
            for frame in replayer.gap_frames(&replay.gaps) {
                if !self.conn.send(Outbound::Frame { frame, stamp: None }).await {
                    return;
                }
            }
            let mut replayed = 0u64;
            for event in &replay.events {
                if let Some(frame) = replayer.frame(event) {
                    if !self.conn.push_paced(frame, Some(event.stamp())).await {
                        return;
                    }
                    replayed += 1;
                }
                delivered.insert((event.topic.clone(), event.partition), event.offset);
            }
            replay.record(self.metrics, self.protocol, replayed);
            if first {
                first = false;
                if let Some(frame) = replayer.verdict(&replay)
                    && !self.conn.send(Outbound::Frame { frame, stamp: None }).await
                {
                    return;
                }
            }
            // Then the held live events, a batch at a time.
            loop {
                match self.gate.take_held() {
                    Taken::Events(batch) if batch.is_empty() => {
                        if self.gate.try_open() {
                            return;
                        }
                    }
                    Taken::Events(batch) => {
                        for event in batch {
                            if self.gate.already_seen(&event) {
                                continue;
                            }
                            if let Some(frame) = replayer.frame(&event)
                                && !self.conn.push_paced(frame, Some(event.stamp())).await
                            {
                                return;
                            }
                            delivered.insert((event.topic.clone(), event.partition), event.offset);
                        }
                    }
                    Taken::Overflowed => {
                        // Read again what was dropped: everything after what
                        // was delivered, up to the frontier at this instant.
                        let ((), next) = self.router.exclusive(|| self.gate.rearm());
                        request = ResumeRequest {
                            positions: next
                                .keys()
                                .map(|stream| {
                                    let replayed_to = frontier.get(stream).map_or(-1, |f| f - 1);
                                    let got = delivered.get(stream).copied().unwrap_or(-1);
                                    (stream.0.to_string(), stream.1, replayed_to.max(got))
                                })
                                .collect(),
                            since_ms: None,
                        };
                        frontier = next;
                        break;
                    }
                }
            }
        }
    }
}

/// What a client asked to resume from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeRequest {
    /// Last delivered offset per stream.
    pub positions: Vec<(String, i32, i64)>,
    /// For streams without a position: events at or after this time (ms).
    pub since_ms: Option<i64>,
}

impl ResumeRequest {
    /// Parse a STOMP `x-stream-offset` value: comma-separated
    /// `topic:partition:offset` (the `message-id`s last received) and/or
    /// `timestamp=<ms>`.
    pub fn parse_stomp(value: &str) -> Result<ResumeRequest, String> {
        let mut req = ResumeRequest::default();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(ts) = item.strip_prefix("timestamp=") {
                let ms: i64 = ts.parse().map_err(|_| format!("bad timestamp `{ts}`"))?;
                req.since_ms = Some(ms.max(0));
                continue;
            }
            let mut parts = item.rsplitn(3, ':');
            let (Some(offset), Some(partition), Some(topic)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "bad position `{item}` (expected topic:partition:offset)"
                ));
            };
            let offset = offset
                .parse()
                .map_err(|_| format!("bad offset in `{item}`"))?;
            let partition = partition
                .parse()
                .map_err(|_| format!("bad partition in `{item}`"))?;
            req.positions.push((topic.to_owned(), partition, offset));
        }
        Ok(req)
    }
}

/// Why a stream cannot be resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The stream.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// The first offset the client needed.
    pub from: i64,
    /// `retention` (gone from Kafka), `age` or `count` (beyond the limits),
    /// `reset` (the position is past the partition's end: the topic was
    /// recreated or its log truncated), `unavailable`.
    pub reason: &'static str,
}

/// The events one subscription must replay, per stream, or the gaps.
#[derive(Debug, Default)]
pub struct Replay {
    /// Events to deliver, in offset order per stream.
    pub events: Vec<Arc<RoutedEvent>>,
    /// Streams that could not be served.
    pub gaps: Vec<Gap>,
    /// Streams served from this pod's history buffer.
    pub from_buffer: u64,
    /// Streams read back from Kafka.
    pub from_kafka: u64,
    /// Kafka requests made to find where a time lands.
    pub time_lookups: u64,
}

impl Replay {
    /// Positions found stale (`reset` gaps) must not filter live events.
    pub fn release_stale_floors(&self, gate: &ResumeGate) {
        for gap in self.gaps.iter().filter(|g| g.reason == "reset") {
            gate.forget(&gap.topic, Some(gap.partition));
        }
    }

    /// Count where the replay came from and how many events were delivered.
    pub fn record(&self, metrics: &crate::metrics::Metrics, protocol: &str, delivered: u64) {
        metrics
            .resume_reads
            .with_label_values(&["buffer"])
            .inc_by(self.from_buffer);
        metrics
            .resume_reads
            .with_label_values(&["kafka"])
            .inc_by(self.from_kafka);
        metrics
            .resume_time_lookups
            .with_label_values::<&str>(&[])
            .inc_by(self.time_lookups);
        metrics
            .resumed_events
            .with_label_values(&[protocol])
            .inc_by(delivered);
    }
}

/// Gather the events `request` asks for, up to `frontier`, for `account`.
/// Reads from Kafka wait for one of the pod's read permits and stop when
/// `cancel` fires (the client went away).
pub async fn plan(
    request: &ResumeRequest,
    account: &str,
    frontier: &HashMap<TopicPartition, i64>,
    history: &HistoryBuffer,
    config: &ResumeConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> Replay {
    let mut replay = Replay::default();
    let position_of = |stream: &TopicPartition| {
        request
            .positions
            .iter()
            .find(|(t, p, _)| **t == *stream.0 && *p == stream.1)
            // A client's offset is any i64: the next one saturates, and
            // nothing is before the log's first offset.
            .map(|(_, _, o)| o.saturating_add(1).max(0))
    };
    if let Some(since) = request.since_ms
        && learn_times(since, frontier, &position_of, history, config, cancel).await
    {
        replay.time_lookups += 1;
    }
    for (stream, &end) in frontier {
        let position = position_of(stream);
        let start = match (position, request.since_ms) {
            (Some(start), _) => start,
            (None, Some(since)) => match history.offset_at_known(stream, since, end) {
                AtTime::Offset(o) => o,
                AtTime::Nothing => continue,
                AtTime::Unknown => {
                    // Kafka could not be asked: say so, never a silent hole.
                    replay.gaps.push(Gap {
                        topic: stream.0.to_string(),
                        partition: stream.1,
                        from: end,
                        reason: "unavailable",
                    });
                    continue;
                }
            },
            (None, None) => continue,
        };
        let gap = |reason| Gap {
            topic: stream.0.to_string(),
            partition: stream.1,
            from: start,
            reason,
        };
        if start > end && position.is_some() {
            // The client claims a record this pod has not dispatched yet:
            // either it came from a pod further along (its floor then drops
            // the live events it already has), or the record does not exist
            // in this log at all — the topic was recreated or truncated
            // since — and the client must hear so.
            if let Some(high) = high_watermark(config, stream, cancel).await
                && start > high
            {
                replay.gaps.push(gap("reset"));
            }
            continue;
        }
        if start >= end {
            continue;
        }
        if (end - start) as usize > config.max_events {
            replay.gaps.push(gap("count"));
            continue;
        }
        let generation = history.generation();
        let events = match history.range(stream, start, end, account) {
            Some(events) => {
                replay.from_buffer += 1;
                events
            }
            None => {
                // Wait for a read permit, then look again: a read-back
                // meanwhile (a storm resuming from before this pod's start)
                // may have backfilled the buffer.
                let Some(permit) = read_permit(config, cancel).await else {
                    replay.gaps.push(gap("unavailable"));
                    continue;
                };
                match history.range(stream, start, end, account) {
                    Some(events) => {
                        replay.from_buffer += 1;
                        events
                    }
                    None => match read_back(&permit, config, stream, start, end, cancel).await {
                        Ok(events) => {
                            replay.from_kafka += 1;
                            // Before the permit goes to the next client.
                            history.backfill(stream, &events, end, generation);
                            drop(permit);
                            events
                        }
                        Err(reason) => {
                            replay.gaps.push(gap(reason));
                            continue;
                        }
                    },
                }
            }
        };
        let oldest_allowed = now_ms() - config.max_age.as_millis() as i64;
        if events
            .first()
            .is_some_and(|e| e.kafka_timestamp_ms.is_some_and(|t| t < oldest_allowed))
        {
            replay.gaps.push(gap("age"));
            continue;
        }
        replay.events.extend(
            events
                .into_iter()
                .filter(|e| e.envelope.account_id == account),
        );
    }
    replay
}

fn reader(config: &ResumeConfig) -> Option<BaseConsumer> {
    let mut cfg = config.kafka.consumer_config("herald-resume").ok()?;
    cfg.set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error");
    cfg.create().ok()
}

/// Make sure the history buffer can say where `since_ms` lands in every
/// stream of `frontier` resumed by time: the times it does not cover are
/// asked of Kafka in one request, at most one request per `since` at once
/// pod-wide, and the answers kept for the next subscriptions. True when it
/// asked Kafka.
async fn learn_times(
    since_ms: i64,
    frontier: &HashMap<TopicPartition, i64>,
    position_of: &impl Fn(&TopicPartition) -> Option<i64>,
    history: &HistoryBuffer,
    config: &ResumeConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> bool {
    let unknown = || -> Vec<(TopicPartition, i64)> {
        frontier
            .iter()
            .filter(|(s, end)| {
                position_of(s).is_none()
                    && history.offset_at_known(s, since_ms, **end) == AtTime::Unknown
            })
            .map(|(s, end)| (s.clone(), *end))
            .collect()
    };
    if unknown().is_empty() {
        return false;
    }
    let lock = config.time_reader.asking(since_ms);
    let mut asked = false;
    {
        let _asking = tokio::select! {
            _ = cancel.cancelled() => None,
            guard = lock.lock() => Some(guard),
        };
        // Whoever asked before may have learnt it meanwhile.
        let unknown = unknown();
        if !unknown.is_empty() {
            let streams: Vec<TopicPartition> = unknown.iter().map(|(s, _)| s.clone()).collect();
            asked = true;
            let generation = history.generation();
            if let Some(found) = offsets_for_time(config, &streams, since_ms, cancel).await {
                for (stream, end) in &unknown {
                    if let Some(offset) = found.get(stream) {
                        history.remember_kafka_time(stream, since_ms, *offset, *end, generation);
                    }
                }
            }
        }
    }
    config.time_reader.done_asking(since_ms, lock);
    asked
}

/// The first offset at or after `since_ms` of each of `streams` (None: no
/// record that late), in one request on the shared time reader; `None` when
/// Kafka could not be asked.
async fn offsets_for_time(
    config: &ResumeConfig,
    streams: &[TopicPartition],
    since_ms: i64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<HashMap<TopicPartition, Option<i64>>> {
    let _permit = read_permit(config, cancel).await?;
    let config = config.clone();
    let streams = streams.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = HashMap::new();
        let consumer = config.time_reader.get(&config)?;
        // Drain what librdkafka queued meanwhile (errors, logs): nothing
        // else polls this consumer.
        while consumer.poll(Duration::ZERO).is_some() {}
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &streams {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(since_ms))
                .ok()?;
        }
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(5))
            .ok()?;
        for stream in streams {
            let Some(part) = found.find_partition(&stream.0, stream.1) else {
                continue;
            };
            if part.error().is_err() {
                continue;
            }
            let offset = match part.offset() {
                Offset::Offset(o) => Some(o),
                // No record at or after `since`: nothing to replay.
                _ => None,
            };
            out.insert(stream, offset);
        }
        Some(out)
    })
    .await
    .ok()
    .flatten()
}

/// One of the pod's Kafka read permits, unless the client goes away first.
async fn read_permit(
    config: &ResumeConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        permit = config.kafka_reads.clone().acquire_owned() => permit.ok(),
    }
}

/// The next offset Kafka will write to `stream` (None when unknown).
async fn high_watermark(
    config: &ResumeConfig,
    stream: &TopicPartition,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<i64> {
    let _permit = read_permit(config, cancel).await?;
    let config = config.clone();
    let (topic, partition) = (stream.0.to_string(), stream.1);
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&config)?;
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .ok()
            .map(|(_, high)| high)
    })
    .await
    .ok()
    .flatten()
}

/// Read `[from, to)` of `stream` back from Kafka, holding one of the pod's
/// read permits (stops early, with `unavailable`, once `cancel` fires).
async fn read_back(
    _permit: &tokio::sync::OwnedSemaphorePermit,
    config: &ResumeConfig,
    stream: &TopicPartition,
    from: i64,
    to: i64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<Arc<RoutedEvent>>, &'static str> {
    let cancel = cancel.clone();
    let config = config.clone();
    let topic: Arc<str> = stream.0.clone();
    let partition = stream.1;
    tokio::task::spawn_blocking(move || {
        let consumer = reader(&config).ok_or("unavailable")?;
        let (low, _) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .map_err(|_| "unavailable")?;
        if from < low {
            return Err("retention");
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(from))
            .map_err(|_| "unavailable")?;
        consumer.assign(&tpl).map_err(|_| "unavailable")?;
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut next = from;
        while next < to {
            if std::time::Instant::now() > deadline || cancel.is_cancelled() {
                return Err("unavailable");
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = match msg {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                    // The frontier was read from this pod's consumer; the
                    // broker has everything before it. EOF early means a
                    // compacted or truncated range: nothing more to read.
                    break;
                }
                Err(_) => return Err("unavailable"),
            };
            next = msg.offset() + 1;
            if msg.offset() >= to {
                break;
            }
            let Some(envelope) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
                continue;
            };
            out.push(Arc::new(RoutedEvent::new(
                topic.clone(),
                partition,
                msg.offset(),
                envelope,
                msg.timestamp().to_millis(),
            )));
        }
        Ok(out)
    })
    .await
    .map_err(|_| "unavailable")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: i64, ts: i64) -> Arc<RoutedEvent> {
        let env =
            Envelope::decode(br#"{"id":"e","type":"tag.updated","account_id":"1","payload":{}}"#)
                .unwrap();
        Arc::new(RoutedEvent::new("t".into(), 0, offset, env, Some(ts)))
    }

    #[test]
    fn buffer_serves_ranges_it_covers() {
        let b = HistoryBuffer::new(3, Duration::from_secs(3600));
        let now = now_ms();
        for o in 10..15 {
            b.append(&event(o, now));
        }
        let s: TopicPartition = ("t".into(), 0);
        assert!(b.range(&s, 11, 15, "1").is_none(), "offset 11 was evicted");
        let r = b.range(&s, 12, 15, "1").unwrap();
        assert_eq!(
            r.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![12, 13, 14]
        );
        assert_eq!(b.range(&s, 14, 14, "1").unwrap().len(), 0);
        assert!(b.range(&("u".into(), 0), 1, 2, "1").is_none());
        // A record of the account that was skipped undecoded: the buffer cannot serve it.
        b.append_skipped(s.clone(), 15, Some(now), "1");
        b.append_skipped(s.clone(), 16, Some(now), "2");
        assert!(b.range(&s, 14, 17, "1").is_none());
        assert_eq!(
            b.range(&s, 16, 17, "1").unwrap().len(),
            0,
            "other accounts' skips do not matter"
        );
    }

    #[test]
    fn gate_holds_then_releases_in_order() {
        let g = ResumeGate::holding(&[("t".into(), 0, 1)], 10);
        assert!(g.already_seen(&event(0, 0)));
        assert!(g.already_seen(&event(1, 0)), "the client's own position");
        assert!(g.hold(&event(1, 0)));
        assert!(g.hold(&event(2, 0)));
        assert!(!g.try_open(), "events are held");
        let Taken::Events(held) = g.take_held() else {
            panic!("no overflow")
        };
        let seen: Vec<i64> = held.iter().map(|e| e.offset).collect();
        assert_eq!(seen, vec![1, 2]);
        assert!(g.try_open());
        assert!(!g.already_seen(&event(2, 0)));
        assert!(
            !g.already_seen(&event(1, 0)),
            "floors are dropped once passed"
        );
        assert!(!g.hold(&event(3, 0)));
        assert!(!ResumeGate::open().hold(&event(1, 0)));
    }

    #[test]
    fn the_buffer_stays_within_its_byte_budget() {
        let one = Buffered {
            offset: 0,
            timestamp_ms: None,
            account: Arc::from("1"),
            event: Some(event(0, 0)),
        }
        .cost();
        let b = HistoryBuffer::with_budget(1000, Duration::from_secs(3600), one * 10);
        let now = now_ms();
        for o in 0..100 {
            b.append(&event(o, now));
        }
        assert!(b.bytes() <= one * 10, "{} > {}", b.bytes(), one * 10);
        let s: TopicPartition = ("t".into(), 0);
        assert!(b.range(&s, 89, 100, "1").is_none(), "the oldest went first");
        assert_eq!(b.range(&s, 90, 100, "1").unwrap().len(), 10);
        // Another partition's records push the first one's out.
        let other = |o| {
            let env = Envelope::decode(
                br#"{"id":"e","type":"tag.updated","account_id":"1","payload":{}}"#,
            )
            .unwrap();
            Arc::new(RoutedEvent::new("u".into(), 0, o, env, Some(now)))
        };
        for o in 0..10 {
            b.append(&other(o));
        }
        assert!(b.bytes() <= one * 10);
        b.clear("u", None);
        b.clear("t", None);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn a_reset_log_forgets_floors_and_history() {
        let b = HistoryBuffer::new(10, Duration::from_secs(3600));
        let now = now_ms();
        for o in 0..3 {
            b.append(&event(o, now));
        }
        let s: TopicPartition = ("t".into(), 0);
        assert!(b.range(&s, 0, 3, "1").is_some());
        b.clear("t", Some(1));
        assert!(b.range(&s, 0, 3, "1").is_some(), "another partition");
        b.clear("t", None);
        assert!(b.range(&s, 0, 3, "1").is_none());

        let g = ResumeGate::holding(&[("t".into(), 0, 5)], 10);
        assert!(g.already_seen(&event(2, 0)));
        g.forget("u", None);
        assert!(g.already_seen(&event(3, 0)), "another topic");
        g.forget("t", Some(0));
        assert!(
            !g.already_seen(&event(4, 0)),
            "the new log's records are new"
        );
    }

    #[test]
    fn epochs_follow_topic_ids() {
        let e = Epochs::new("herald");
        assert_eq!(&*e.of("t"), "herald");
        e.set_topic_id("t", "ID1");
        assert_eq!(&*e.of("t"), "herald.ID1");
        assert!(e.accepts("t", "herald.ID1"));
        assert!(
            e.accepts("t", "herald"),
            "positions from before IDs were known"
        );
        e.set_topic_id("t", "ID2");
        assert!(!e.accepts("t", "herald.ID1"), "the old incarnation");
        assert!(!e.accepts("t", "other"));
    }

    #[test]
    fn held_events_past_the_limit_are_dropped_and_reported() {
        let g = ResumeGate::holding(&[], 2);
        for o in 0..5 {
            assert!(
                g.hold(&event(o, 0)),
                "held or dropped, never delivered live"
            );
        }
        assert!(matches!(g.take_held(), Taken::Overflowed));
        assert!(!g.try_open(), "an overflowed gate stays closed");
        g.rearm();
        assert!(g.hold(&event(9, 0)));
        let Taken::Events(held) = g.take_held() else {
            panic!("rearmed")
        };
        assert_eq!(held.len(), 1);
        assert!(g.try_open());
        assert!(!g.hold(&event(10, 0)), "open: live events pass");
    }

    #[test]
    fn stomp_resume_header() {
        let r = ResumeRequest::parse_stomp(
            "herald.message:2:41, herald.tag:0:7,timestamp=1700000000000",
        )
        .unwrap();
        assert_eq!(
            r.positions,
            vec![
                ("herald.message".into(), 2, 41),
                ("herald.tag".into(), 0, 7)
            ]
        );
        assert_eq!(r.since_ms, Some(1_700_000_000_000));
        assert!(ResumeRequest::parse_stomp("nope").is_err());
        assert!(ResumeRequest::parse_stomp("a:b:c").is_err());
        assert!(ResumeRequest::parse_stomp("timestamp=x").is_err());
    }
}

#[cfg(test)]
mod time_lookup_tests {
    use super::*;

    #[test]
    fn times_the_pod_saw_are_answered_from_the_buffer_alone() {
        let buffer = HistoryBuffer::new(2, Duration::from_secs(3600 * 24 * 365 * 100));
        let stream: TopicPartition = (Arc::from("t"), 0);
        let quiet: TopicPartition = (Arc::from("t"), 1);
        // Nothing known yet: Kafka must be asked.
        assert_eq!(buffer.offset_at(&stream, 1_500), AtTime::Unknown);
        // Reading began at the log's end at t=1000.
        buffer.cover(&stream, 1_000);
        buffer.cover(&quiet, 1_000);
        buffer.append_skipped(stream.clone(), 10, Some(2_000), "a");
        buffer.append_skipped(stream.clone(), 11, Some(3_000), "a");
        assert_eq!(buffer.offset_at(&stream, 1_500), AtTime::Offset(10));
        assert_eq!(buffer.offset_at(&stream, 2_500), AtTime::Offset(11));
        assert_eq!(buffer.offset_at(&stream, 3_500), AtTime::Nothing);
        // Before reading began: only Kafka knows.
        assert_eq!(buffer.offset_at(&stream, 900), AtTime::Unknown);
        // A partition with no record since: nothing to replay, no lookup.
        assert_eq!(buffer.offset_at(&quiet, 1_500), AtTime::Nothing);
        // The oldest record leaves (count bound): times up to its stamp are
        // no longer covered.
        buffer.append_skipped(stream.clone(), 12, Some(4_000), "a");
        assert_eq!(buffer.offset_at(&stream, 1_500), AtTime::Unknown);
        assert_eq!(buffer.offset_at(&stream, 2_500), AtTime::Offset(11));
        // A reset forgets what is covered.
        buffer.clear("t", Some(0));
        assert_eq!(buffer.offset_at(&stream, 2_500), AtTime::Unknown);
        // Read from the log's beginning: everything is covered.
        let full = HistoryBuffer::new(10, Duration::from_secs(3600 * 24 * 365 * 100));
        full.cover(&stream, i64::MIN);
        assert_eq!(full.offset_at(&stream, 0), AtTime::Nothing);
    }

    #[test]
    fn kafka_answers_are_kept_for_the_next_subscriptions() {
        let buffer = HistoryBuffer::new(100, Duration::from_secs(3600 * 24 * 365 * 100));
        let stream: TopicPartition = (Arc::from("t"), 0);
        let other: TopicPartition = (Arc::from("t"), 1);
        buffer.cover(&stream, 5_000);
        buffer.cover(&other, 5_000);
        // 1,000 predates what the pod saw: unknown until Kafka answered.
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Unknown);
        buffer.remember_kafka_time(&stream, 1_000, Some(3), 7, 0);
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Offset(3));
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 9), AtTime::Offset(3));
        // Another time is another question.
        assert_eq!(buffer.offset_at_known(&stream, 1_001, 7), AtTime::Unknown);

        // Kafka had nothing that late below offset 20 (the asker's frontier).
        buffer.remember_kafka_time(&other, 1_000, None, 20, 0);
        assert_eq!(buffer.offset_at_known(&other, 1_000, 20), AtTime::Nothing);
        // A later subscription is further along: records from 20 on passed
        // through the buffer, which answers for them...
        buffer.append_skipped(other.clone(), 20, Some(900), "a");
        buffer.append_skipped(other.clone(), 21, Some(6_000), "a");
        assert_eq!(
            buffer.offset_at_known(&other, 1_000, 22),
            AtTime::Offset(21)
        );
        // (For a subscription whose frontier is 21, that is past its end:
        // nothing to replay.)
        assert_eq!(
            buffer.offset_at_known(&other, 1_000, 21),
            AtTime::Offset(21)
        );
        // ...unless it no longer holds them all.
        let small = HistoryBuffer::new(1, Duration::from_secs(3600 * 24 * 365 * 100));
        small.cover(&other, 5_000);
        small.remember_kafka_time(&other, 1_000, None, 20, 0);
        small.append_skipped(other.clone(), 20, Some(900), "a");
        small.append_skipped(other.clone(), 21, Some(6_000), "a");
        assert_eq!(small.offset_at_known(&other, 1_000, 22), AtTime::Unknown);
        // An offset found later replaces "nothing below".
        small.remember_kafka_time(&other, 1_000, Some(21), 22, 0);
        assert_eq!(small.offset_at_known(&other, 1_000, 22), AtTime::Offset(21));

        // A recreated topic forgets Kafka's answers too, and answers asked
        // before it are not kept.
        buffer.clear("t", None);
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Unknown);
        buffer.remember_kafka_time(&stream, 1_000, Some(3), 7, 0);
        assert_eq!(buffer.offset_at_known(&stream, 1_000, 7), AtTime::Unknown);
    }

    #[test]
    fn read_backs_that_join_the_buffer_extend_it_backwards() {
        let now = now_ms();
        let event = |offset: i64, account: &str| {
            let env = Envelope::decode(
                format!(
                    r#"{{"id":"e","type":"tag.updated","account_id":"{account}","payload":{{}}}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            Arc::new(RoutedEvent::new("t".into(), 0, offset, env, Some(now)))
        };
        let s: TopicPartition = ("t".into(), 0);
        let b = HistoryBuffer::new(5, Duration::from_secs(3600));
        // The pod began reading at 10; a client needed 6..10 from Kafka.
        b.append(&event(10, "1"));
        let read: Vec<_> = (6..10)
            .map(|o| event(o, if o == 7 { "2" } else { "1" }))
            .collect();
        b.backfill(&s, &read, 10, b.generation());
        let got = b.range(&s, 6, 11, "1").expect("served from memory");
        assert_eq!(
            got.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [6, 8, 9, 10]
        );
        // Full (5 records): an older read keeps nothing more.
        b.backfill(&s, &[event(5, "1")], 6, b.generation());
        assert!(b.range(&s, 5, 11, "1").is_none());
        // A read that does not reach the buffer's front leaves a hole: not kept.
        let c = HistoryBuffer::new(100, Duration::from_secs(3600));
        c.append(&event(10, "1"));
        c.backfill(&s, &[event(7, "1"), event(8, "1")], 9, c.generation());
        assert!(c.range(&s, 7, 11, "1").is_none());
        // A partition the pod holds nothing of yet: the read ends where it began.
        c.backfill(&("t".into(), 1), &[event(3, "1")], 4, c.generation());
        // Read before the log was recreated: not kept.
        let generation = c.generation();
        c.clear("t", None);
        c.backfill(&s, &[event(9, "1")], 10, generation);
        assert!(c.range(&s, 9, 10, "1").is_none());
    }
}
