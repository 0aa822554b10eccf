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
pub struct TimeReader(Arc<Mutex<Option<Arc<BaseConsumer>>>>);

impl std::fmt::Debug for TimeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimeReader")
    }
}

impl TimeReader {
    fn get(&self, config: &ResumeConfig) -> Option<Arc<BaseConsumer>> {
        let mut slot = self.0.lock().ok()?;
        if slot.is_none() {
            *slot = reader(config).map(Arc::new);
        }
        slot.clone()
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
}

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
            } = &mut *parts;
            // What the new log holds is read from its beginning again, but
            // be conservative: time lookups go to Kafka.
            covered_after
                .retain(|(t, p), _| !(**t == *topic && partition.is_none_or(|want| *p == want)));
            queues.retain(|(t, p), q| {
                let gone = **t == *topic && partition.is_none_or(|want| *p == want);
                if gone {
                    *bytes = bytes.saturating_sub(q.iter().map(Buffered::cost).sum());
                }
                !gone
            });
        }
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
    // Streams resumed by time that the buffer cannot answer: one Kafka
    // request for all of them.
    let by_time: HashMap<TopicPartition, Option<i64>> = match request.since_ms {
        Some(since) => {
            let unknown: Vec<TopicPartition> = frontier
                .keys()
                .filter(|s| {
                    position_of(s).is_none() && history.offset_at(s, since) == AtTime::Unknown
                })
                .cloned()
                .collect();
            if unknown.is_empty() {
                HashMap::new()
            } else {
                offsets_for_time(config, &unknown, since, cancel).await
            }
        }
        None => HashMap::new(),
    };
    for (stream, &end) in frontier {
        let position = position_of(stream);
        let start = match (position, request.since_ms) {
            (Some(start), _) => start,
            (None, Some(since)) => match history.offset_at(stream, since) {
                AtTime::Offset(o) => o,
                AtTime::Nothing => continue,
                AtTime::Unknown => match by_time.get(stream).copied().flatten() {
                    Some(o) => o,
                    None => continue,
                },
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
        let events = match history.range(stream, start, end, account) {
            Some(events) => {
                replay.from_buffer += 1;
                events
            }
            None => match read_back(config, stream, start, end, cancel).await {
                Ok(events) => {
                    replay.from_kafka += 1;
                    events
                }
                Err(reason) => {
                    replay.gaps.push(gap(reason));
                    continue;
                }
            },
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

/// The first offset at or after `since_ms` of each of `streams` (None: no
/// record that late), in one request on the shared time reader.
async fn offsets_for_time(
    config: &ResumeConfig,
    streams: &[TopicPartition],
    since_ms: i64,
    cancel: &tokio_util::sync::CancellationToken,
) -> HashMap<TopicPartition, Option<i64>> {
    let Some(_permit) = read_permit(config, cancel).await else {
        return HashMap::new();
    };
    let config = config.clone();
    let streams = streams.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = HashMap::new();
        let Some(consumer) = config.time_reader.get(&config) else {
            return out;
        };
        // Drain what librdkafka queued meanwhile (errors, logs): nothing
        // else polls this consumer.
        while consumer.poll(Duration::ZERO).is_some() {}
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &streams {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(since_ms))
                .is_err()
            {
                return out;
            }
        }
        let Ok(found) = consumer.offsets_for_times(tpl, Duration::from_secs(5)) else {
            return out;
        };
        for stream in streams {
            let offset = match found
                .find_partition(&stream.0, stream.1)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(o)) => Some(o),
                // No record at or after `since`: nothing to replay.
                _ => None,
            };
            out.insert(stream, offset);
        }
        out
    })
    .await
    .unwrap_or_default()
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

/// Read `[from, to)` of `stream` back from Kafka (stops early, with
/// `unavailable`, once `cancel` fires).
pub async fn read_back(
    config: &ResumeConfig,
    stream: &TopicPartition,
    from: i64,
    to: i64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Vec<Arc<RoutedEvent>>, &'static str> {
    let _permit = read_permit(config, cancel).await.ok_or("unavailable")?;
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
}
