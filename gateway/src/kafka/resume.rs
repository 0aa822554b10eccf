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
//! [`Router::insert_resuming`]: crate::routing::router::Router::insert_resuming

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use herald_runtime::KafkaArgs;
use herald_schemas::Envelope;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

use crate::{
    core::{
        clock::now_ms,
        event::RoutedEvent,
        position::{ResumeRequest, TopicPartition},
    },
    routing::{
        gate::{ResumeGate, Taken},
        history::{AtTime, HistoryBuffer},
    },
    transport::{
        connection::{ConnTx, Outbound},
        ws::WsFrame,
    },
};

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
    pub router: &'a crate::routing::router::Router,
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
