//! The Kafka side of a gateway pod: every partition of every served topic is
//! *assigned* (no consumer group, so pods never take partitions from each
//! other) — or, with `--partition-groups G`, every partition `p` with
//! `p % G` equal to the pod's group — starting at the end offset read at startup; partitions and topics
//! that appear later are assigned from their beginning so nothing produced
//! to them is missed. Records are routed by their `account_id`/`type`
//! headers first and parsed only when this pod has a recipient.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use herald_runtime::{
    KafkaArgs,
    otlp::{Otlp, SpanKind},
    topic_ids::{self, TopicId},
    trace::{self, TraceParent},
};
use herald_schemas::Envelope;
use prometheus::IntCounter;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::{BorrowedMessage, Headers},
};
use tokio_util::sync::CancellationToken;

use crate::{
    core::{event::RoutedEvent, identity::PrincipalKind},
    metrics::Metrics,
    routing::{
        groups::PartitionGroups,
        presence::PresenceTable,
        router::{Router, RouterView, Slot},
    },
};

/// What the consumer needs to know.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Kafka connection settings.
    pub kafka: KafkaArgs,
    /// Full names of the topics to read.
    pub topics: Vec<String>,
    /// How often to look for new topics and partitions.
    pub metadata_refresh: Duration,
    /// `fetch.wait.max.ms` unless a Kafka property sets it.
    pub fetch_wait_ms: u64,
    /// Which partitions this pod reads (every one unless groups split them).
    pub groups: PartitionGroups,
    /// `herald_owned_partitions`, set per topic as partitions are assigned.
    pub owned_partitions: prometheus::IntGaugeVec,
    /// Readiness condition `partition-groups`: false while a served topic
    /// has a partition count the groups do not divide.
    pub divisible: Arc<AtomicBool>,
}

/// A consumer that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Bad Kafka settings.
    #[error(transparent)]
    Config(#[from] herald_runtime::kafka::KafkaConfigError),
    /// librdkafka refused the configuration.
    #[error("cannot create Kafka consumer: {0}")]
    Create(#[from] rdkafka::error::KafkaError),
}

/// Create the consumer (fails fast on bad settings).
pub fn create(settings: &ConsumerSettings) -> Result<Arc<StreamConsumer>, ConsumerError> {
    // No consumer group is joined (partitions are assigned, never
    // subscribed), but librdkafka's incremental assignment needs a group
    // handle; a unique id keeps pods from ever sharing offsets.
    let mut cfg = settings.kafka.consumer_config("herald-gateway")?;
    cfg.set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A position the broker no longer has (retention passed it, or the
        // topic was recreated): continue from the oldest record still
        // there rather than skip to the end and lose records.
        .set("auto.offset.reset", "earliest")
        .set("client.id", "herald-gateway");
    // How long the broker may hold a fetch while it has nothing new. Apache
    // Kafka answers as soon as a record arrives (fetch.min.bytes is 1), so
    // this bounds idle fetches, not latency: measured on Apache Kafka 4.3
    // (docs/benchmarks.md), 10 ms and 100 ms (the default) give the same
    // latency, and an idle pod reading 40 partitions costs the broker 4.8 %
    // of a core at 10 ms against 0.4 % at 100 ms.
    if cfg.get("fetch.wait.max.ms").is_none() {
        cfg.set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string());
    }
    Ok(Arc::new(cfg.create()?))
}

/// What the assignment task and the record loop tell each other.
#[derive(Default)]
pub struct Link {
    /// The record loop saw offsets go backwards: compare topic IDs now.
    recheck: tokio::sync::Notify,
    /// Partitions of recreated topics to read again from the new log's
    /// beginning. The record loop rewinds them between batches, so no
    /// record it already holds is dispatched after the rewind (and again
    /// after it); bounded by the number of served partitions.
    /// Each with the new topic's ID.
    rewinds: Mutex<HashMap<(String, i32), String>>,
    rewind: tokio::sync::Notify,
}

impl Link {
    /// A new link.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Keep the assignment complete until `shutdown`: discover topics and
/// partitions, assign the new ones this pod owns, notice topics that were deleted and
/// created again (their Kafka topic ID changed), and keep `ready` true
/// while every served topic is assigned and the broker answers. The record
/// loop can make it look at once through `link` (it saw offsets go backwards).
pub async fn maintain_assignment(
    consumer: Arc<StreamConsumer>,
    router: Arc<Router>,
    settings: ConsumerSettings,
    ready: Arc<AtomicBool>,
    link: Arc<Link>,
    shutdown: CancellationToken,
) {
    let mut assigned: HashSet<(String, i32)> = HashSet::new();
    // The topic ID each served topic had when its partitions were assigned.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut first_round = true;
    // Topics whose partition count the groups do not divide, as last logged.
    let mut indivisible: HashMap<String, usize> = HashMap::new();
    loop {
        let c = consumer.clone();
        let topics = settings.topics.clone();
        let known = assigned.clone();
        let known_ids = ids.clone();
        let from_end = first_round;
        let groups = settings.groups.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            discover(c.as_ref(), &topics, &groups, &known, &known_ids, from_end)
        })
        .await;
        match outcome {
            Ok(Ok(found)) => {
                for (topic, count) in &found.indivisible {
                    if indivisible.get(topic) != Some(count) {
                        let reason = settings
                            .groups
                            .check_partition_count(topic, *count)
                            .err()
                            .unwrap_or_default();
                        tracing::error!(
                            topic,
                            partitions = count,
                            groups = settings.groups.groups(),
                            "not ready: {reason}"
                        );
                    }
                }
                indivisible = found.indivisible.iter().cloned().collect();
                settings
                    .divisible
                    .store(found.indivisible.is_empty(), Ordering::Release);
                for (topic, partitions) in &found.recreated {
                    let id = found.ids.get(topic).cloned().unwrap_or_default();
                    follow_recreated(
                        &consumer,
                        &router,
                        &link,
                        &mut assigned,
                        topic,
                        &id,
                        partitions,
                    );
                }
                router.checked_topics(
                    settings
                        .topics
                        .iter()
                        .filter(|t| !found.recreated.iter().any(|(r, _)| r == *t)),
                );
                for (topic, id) in &found.ids {
                    router.epochs().set_topic_id(topic, id);
                }
                ids.extend(found.ids);
                let mut complete = found.missing.is_empty() && found.indivisible.is_empty();
                if !found.new.is_empty() {
                    let mut tpl = TopicPartitionList::new();
                    for (topic, partition, offset) in &found.new {
                        if let Err(e) = tpl.add_partition_offset(topic, *partition, *offset) {
                            tracing::warn!(error = %e, topic, partition, "cannot add partition to assignment");
                        }
                    }
                    match consumer.incremental_assign(&tpl) {
                        Ok(()) => {
                            for (topic, partition, offset) in found.new {
                                tracing::info!(topic, partition, ?offset, "assigned partition");
                                let (start, unseen_until) = match offset {
                                    // From the end: what came before is not in the buffer.
                                    Offset::Offset(o) => (o, crate::core::clock::now_ms()),
                                    _ => (0, i64::MIN),
                                };
                                let stream = (Arc::from(topic.as_str()), partition);
                                router.history().cover(&stream, unseen_until);
                                router.init_frontier(stream, start);
                                assigned.insert((topic, partition));
                            }
                        }
                        Err(e) => {
                            complete = false;
                            tracing::warn!(error = %e, "cannot assign partitions; retrying");
                        }
                    }
                }
                for topic in &settings.topics {
                    let owned = assigned.iter().filter(|(t, _)| t == topic).count();
                    settings
                        .owned_partitions
                        .with_label_values(&[topic])
                        .set(owned as i64);
                }
                if !found.missing.is_empty() {
                    tracing::warn!(missing = ?found.missing, "served topics do not exist yet; not ready");
                }
                // Whatever appears after the first successful look is new:
                // it is read from its beginning so none of it is missed. A
                // topic the groups cannot split is not a new one: once its
                // partition count is fixed it starts from its end, as at
                // startup (the pod is not ready meanwhile).
                if found.indivisible.is_empty() {
                    first_round = false;
                }
                ready.store(complete, Ordering::Release);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Kafka metadata unavailable; not ready");
                ready.store(false, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "metadata task failed"),
        }
        let wait = if ready.load(Ordering::Acquire) {
            settings.metadata_refresh
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = link.recheck.notified() => {}
        }
    }
}

/// A served topic was deleted and created again (its topic ID changed):
/// every partition whose records did not already go backwards under the
/// consumer (librdkafka jumps to the new log's start only when the old
/// position is past its end) may be reading the new log at the old offset,
/// silently past its first records: such partitions are handed to the
/// record loop to be read again from the new log's beginning (see
/// [`rewind`]). Partitions the new topic no longer has are dropped.
fn follow_recreated(
    consumer: &StreamConsumer,
    router: &Router,
    link: &Link,
    assigned: &mut HashSet<(String, i32)>,
    topic: &str,
    id: &str,
    partitions: &[i32],
) {
    tracing::warn!(
        topic,
        "topic was deleted and created again (its topic ID changed): positions, history and \
         resume floors reset; reading the new topic from its beginning"
    );
    let mine: Vec<i32> = assigned
        .iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| *p)
        .collect();
    let mut gone = TopicPartitionList::new();
    for p in mine {
        if !partitions.contains(&p) {
            gone.add_partition(topic, p);
            assigned.remove(&(topic.to_owned(), p));
            router.forget_partition(&(Arc::from(topic), p));
            continue;
        }
        if let Ok(mut pending) = link.rewinds.lock() {
            pending.insert((topic.to_owned(), p), id.to_owned());
        }
    }
    link.rewind.notify_one();
    if gone.count() > 0
        && let Err(e) = consumer.incremental_unassign(&gone)
    {
        tracing::warn!(topic, error = %e, "cannot unassign partitions the new topic lacks");
    }
}

/// In the record loop, between batches: read the partitions of recreated
/// topics again from the new log's beginning, unless the loop already saw
/// them start over in the new topic (`restarted`: the topic ID read when
/// a partition's offsets went backwards), and reset their positions,
/// history and client floors (events dispatched from the new log meanwhile
/// come again; none is skipped). The loop dispatches nothing until the
/// seek is done; records fetched before it are discarded by librdkafka.
async fn rewind(
    consumer: &Arc<StreamConsumer>,
    router: &Router,
    metrics: &Metrics,
    link: &Link,
    restarted: &HashMap<(String, i32), String>,
) {
    let pending = match link.rewinds.lock() {
        Ok(mut pending) => std::mem::take(&mut *pending),
        Err(_) => return,
    };
    for ((topic, p), id) in pending {
        let stream: crate::core::position::TopicPartition = (Arc::from(topic.as_str()), p);
        router.take_reset(&stream);
        if !id.is_empty() && restarted.get(&(topic.clone(), p)) == Some(&id) {
            tracing::info!(
                topic,
                partition = p,
                "recreated partition already read from its start"
            );
            continue;
        }
        tracing::info!(
            topic,
            partition = p,
            "reading the recreated partition from its start"
        );
        let c = consumer.clone();
        let t = topic.clone();
        // librdkafka's seek blocks until the fetcher has moved.
        let sought = tokio::task::spawn_blocking(move || {
            c.seek(&t, p, Offset::Beginning, Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(e)) = sought {
            tracing::warn!(topic, partition = p, error = %e, "cannot rewind to the new topic's start");
        }
        router.reset_stream(&stream, 0);
        router.take_reset(&stream);
        metrics.partition_resets.with_label_values(&[&topic]).inc();
    }
}

struct Discovery {
    new: Vec<(String, i32, Offset)>,
    missing: Vec<String>,
    /// Served topics whose partition count the groups do not divide, with
    /// that count: none of their new partitions is assigned.
    indivisible: Vec<(String, usize)>,
    /// Served topics whose ID differs from the one they were assigned
    /// with, and the new topic's partitions.
    recreated: Vec<(String, Vec<i32>)>,
    /// The ID of each served topic that has one.
    ids: HashMap<String, String>,
}

/// Blocking metadata walk (one DescribeTopics of the served topics):
/// partitions this pod owns and has not assigned yet, with their start
/// offset, and recreated topics.
fn discover(
    consumer: &StreamConsumer,
    topics: &[String],
    groups: &PartitionGroups,
    assigned: &HashSet<(String, i32)>,
    known_ids: &HashMap<String, String>,
    from_end: bool,
) -> Result<Discovery, DiscoverError> {
    let timeout = Duration::from_secs(5);
    let described = topic_ids::describe(consumer.client(), topics, timeout)?;
    let mut found = Discovery {
        new: Vec::new(),
        missing: Vec::new(),
        indivisible: Vec::new(),
        recreated: Vec::new(),
        ids: HashMap::new(),
    };
    for topic in topics {
        let Some(info) = described.get(topic).filter(|i| i.id != TopicId::Missing) else {
            found.missing.push(topic.clone());
            continue;
        };
        if let TopicId::Id(id) = &info.id {
            if known_ids.get(topic).is_some_and(|old| old != id) {
                found
                    .recreated
                    .push((topic.clone(), info.partitions.clone()));
            }
            found.ids.insert(topic.clone(), id.clone());
        }
        if groups
            .check_partition_count(topic, info.partitions.len())
            .is_err()
        {
            found
                .indivisible
                .push((topic.clone(), info.partitions.len()));
            continue;
        }
        for &p in &info.partitions {
            if !groups.owns_partition(p) || assigned.contains(&(topic.clone(), p)) {
                continue;
            }
            let offset = if from_end {
                // An explicit end offset (rather than Offset::End) means a
                // record produced after this point is never skipped, even if
                // the fetcher starts later.
                let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
                Offset::Offset(high)
            } else {
                Offset::Beginning
            };
            found.new.push((topic.clone(), p, offset));
        }
    }
    Ok(found)
}

/// Why topics and partitions could not be discovered.
#[derive(Debug, thiserror::Error)]
enum DiscoverError {
    #[error(transparent)]
    Describe(#[from] topic_ids::TopicIdError),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What the record loop ([`consume`]) delivers to and reports through.
pub struct Sinks {
    /// The gateway's metrics.
    pub metrics: Metrics,
    /// Who is online (presence heartbeats are applied here).
    pub presence: Arc<PresenceTable>,
    /// Which partitions this pod owns.
    pub groups: PartitionGroups,
    /// Where the "deliver" spans of sampled records go.
    pub otlp: Otlp,
}

/// Read records until `shutdown`, routing each to the router. A record
/// below the partition's next expected offset means the log went backwards
/// (the topic was recreated, or a broker truncated it): the partition's
/// positions, history and client floors are reset first, and `link` asks
/// the assignment task to compare topic IDs now.
pub async fn consume(
    consumer: Arc<StreamConsumer>,
    router: Arc<Router>,
    sinks: Sinks,
    link: Arc<Link>,
    shutdown: CancellationToken,
) {
    let Sinks {
        metrics,
        presence,
        groups,
        otlp,
    } = sinks;
    let mut batch: Vec<Slot> = Vec::with_capacity(MAX_BATCH);
    // The sampled records of the batch, when spans are exported (empty,
    // never allocated, otherwise).
    let export = otlp.enabled();
    let mut traced: Vec<Traced> = Vec::new();
    let mut topics = Topics {
        metrics: metrics.clone(),
        by_name: HashMap::new(),
        groups,
    };
    let mut last_error_log: Option<Instant> = None;
    // Partitions seen starting over, with the topic ID they started over in.
    let mut restarted: HashMap<(String, i32), String> = HashMap::new();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = link.rewind.notified() => {
                rewind(&consumer, &router, &metrics, &link, &restarted).await;
                continue;
            }
            m = consumer.recv() => m,
        };
        match msg {
            Ok(msg) => {
                let mut pending = Some(msg);
                while let Some(msg) = pending.take() {
                    if topics.went_back(&msg, &router) {
                        // Before anything of the new log is dispatched, learn
                        // its topic ID, so no frame carries the old epoch.
                        if let Some(id) = refresh_epoch(&consumer, &router, msg.topic()).await {
                            restarted.insert((msg.topic().to_owned(), msg.partition()), id);
                        }
                        link.recheck.notify_one();
                    }
                    // Decoded before the router is locked: registrations
                    // and removals wait only for the routing below, never
                    // for JSON parsing.
                    let mut read = vec![prepare(msg, &router, &presence, &mut topics)];
                    // Records the client library has already fetched are taken
                    // now, without waiting, and dispatched together.
                    while read.len() < MAX_BATCH {
                        match consumer.recv().now_or_never() {
                            Some(Ok(next)) if topics.is_behind(&next) => {
                                // Dispatch what came before it, then reset.
                                pending = Some(next);
                                break;
                            }
                            Some(Ok(next)) => {
                                read.push(prepare(next, &router, &presence, &mut topics))
                            }
                            _ => break,
                        }
                    }
                    let Some(view) = router.view() else { break };
                    for record in read {
                        route(record, &view, &topics, &mut batch, export, &mut traced);
                    }
                    if !batch.is_empty() {
                        view.dispatch_batch(&batch);
                        for t in &mut traced {
                            t.recipients = view.recipients(&batch[t.index].event);
                        }
                        drop(view);
                        if !traced.is_empty() {
                            deliver_spans(&otlp, &batch, &mut traced);
                        }
                        for slot in batch.drain(..) {
                            metrics
                                .dispatch_latency
                                .observe(slot.event.received.elapsed().as_secs_f64());
                        }
                    }
                }
            }
            Err(e) => {
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Look up `topic`'s ID now and make it the epoch of its streams.
async fn refresh_epoch(
    consumer: &Arc<StreamConsumer>,
    router: &Router,
    topic: &str,
) -> Option<String> {
    let c = consumer.clone();
    let name = topic.to_owned();
    let described = tokio::task::spawn_blocking(move || {
        topic_ids::describe(
            c.client(),
            std::slice::from_ref(&name),
            Duration::from_secs(5),
        )
    })
    .await;
    match described {
        Ok(Ok(found)) => {
            if let Some(TopicId::Id(id)) = found.get(topic).map(|i| &i.id) {
                router.epochs().set_topic_id(topic, id);
                return Some(id.clone());
            }
        }
        Ok(Err(e)) => tracing::warn!(topic, error = %e, "cannot read the topic's ID"),
        Err(e) => tracing::warn!(topic, error = %e, "topic ID task failed"),
    }
    None
}

/// What the consumer task keeps per topic, looked up once per record.
struct TopicState {
    /// One shared name, so events do not allocate it.
    name: Arc<str>,
    consumed: IntCounter,
    /// Per partition, the offset after the last record handled (-1: none yet).
    next: Vec<i64>,
}

impl TopicState {
    /// Whether a record at `offset` lies below what `partition` already had.
    fn behind(&self, partition: i32, offset: i64) -> bool {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.next.get(p))
            .is_some_and(|&next| offset < next)
    }

    fn handled(&mut self, partition: i32, offset: i64) {
        let Ok(p) = usize::try_from(partition) else {
            return;
        };
        if self.next.len() <= p {
            self.next.resize(p + 1, -1);
        }
        self.next[p] = offset + 1;
    }
}

struct Topics {
    metrics: Metrics,
    by_name: HashMap<String, TopicState>,
    groups: PartitionGroups,
}

impl Topics {
    fn state(&mut self, topic: &str) -> &mut TopicState {
        if !self.by_name.contains_key(topic) {
            let state = TopicState {
                name: Arc::from(topic),
                consumed: self.metrics.records_consumed.with_label_values(&[topic]),
                next: Vec::new(),
            };
            self.by_name.insert(topic.to_owned(), state);
        }
        self.by_name.get_mut(topic).expect("inserted above")
    }

    /// Whether `msg` lies below its partition's next expected offset.
    fn is_behind(&self, msg: &BorrowedMessage<'_>) -> bool {
        self.by_name
            .get(msg.topic())
            .is_some_and(|s| s.behind(msg.partition(), msg.offset()))
    }

    /// Check `msg` against its partition's next expected offset; when the
    /// log went backwards (and the assignment task has not reset the topic
    /// already), reset the partition in the router. True on a reset.
    fn went_back(&mut self, msg: &BorrowedMessage<'_>, router: &Router) -> bool {
        let (partition, offset) = (msg.partition(), msg.offset());
        let metrics = self.metrics.clone();
        let state = self.state(msg.topic());
        if !state.behind(partition, offset) {
            return false;
        }
        let stream = (state.name.clone(), partition);
        let expected = state.next.get(partition as usize).copied();
        state.handled(partition, offset - 1);
        if router
            .next_offset(&stream)
            .is_none_or(|next| next <= offset)
        {
            // The topic was reset already (its ID changed): nothing stale.
            return false;
        }
        tracing::warn!(
            topic = %stream.0,
            partition,
            offset,
            ?expected,
            "offsets went backwards (topic recreated or log truncated): \
             positions, history and resume floors of the partition reset"
        );
        metrics
            .partition_resets
            .with_label_values(&[&stream.0])
            .inc();
        router.reset_stream(&stream, offset);
        true
    }
}

fn skipped(metrics: &Metrics, topic: &str, reason: &'static str) {
    metrics
        .records_skipped
        .with_label_values(&[topic, reason])
        .inc();
}

fn header<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Most records dispatched together (taken only when already fetched).
const MAX_BATCH: usize = 64;

/// A record read from Kafka, parsed as far as it needs to be before the
/// router is locked.
struct Read<'a> {
    msg: BorrowedMessage<'a>,
    topic: Arc<str>,
    received: Instant,
    parsed: Parsed,
}

enum Parsed {
    /// A presence heartbeat, already applied to the online table.
    Presence,
    /// Not deliverable: counted in `herald_records_skipped_total` by reason.
    Invalid(&'static str),
    /// Its header names an account nobody here had when it was read: not
    /// decoded (decoded under the lock after all if one arrived meanwhile).
    Undecoded,
    Decoded(Envelope),
}

/// Take one record in: count it, apply presence heartbeats, and decode
/// its envelope unless its header says nobody here can receive it. No
/// router lock is held here (`has_account` takes a read lock for a lookup).
fn prepare<'a>(
    msg: BorrowedMessage<'a>,
    router: &Router,
    presence: &PresenceTable,
    topics: &mut Topics,
) -> Read<'a> {
    let received = Instant::now();
    let state = topics.state(msg.topic());
    state.consumed.inc();
    state.handled(msg.partition(), msg.offset());
    let topic = state.name.clone();
    let account = header(&msg, "account_id");
    let parsed = if topics.groups.partitioned()
        && account.is_some_and(|a| {
            topics.groups.group_of(a) as i32 != msg.partition() % topics.groups.groups() as i32
        }) {
        // Produced with another partitioner: its account's clients are
        // served by another group (this one redirects them), so it is
        // counted, never delivered here.
        topics
            .metrics
            .foreign_partition_records
            .with_label_values(&[&topic])
            .inc();
        Parsed::Invalid("foreign_partition")
    } else if header(&msg, "type") == Some("presence.heartbeat") {
        // Every pod keeps the whole online table, subscribers here or not.
        record_heartbeat(&msg, presence, &topics.metrics);
        Parsed::Presence
    } else if account.is_some_and(|a| !router.has_account(a)) {
        Parsed::Undecoded
    } else {
        decode(&msg)
    };
    Read {
        msg,
        topic,
        received,
        parsed,
    }
}

/// Decode a record's envelope and check it against its headers.
fn decode(msg: &BorrowedMessage<'_>) -> Parsed {
    let Some(payload) = msg.payload() else {
        return Parsed::Invalid("empty");
    };
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %e, "skipping invalid record");
            return Parsed::Invalid("invalid_envelope");
        }
    };
    if header(msg, "account_id").is_some_and(|a| a != envelope.account_id) {
        return Parsed::Invalid("account_mismatch");
    }
    if header(msg, "type").is_some_and(|t| t != envelope.event_type) {
        return Parsed::Invalid("type_mismatch");
    }
    Parsed::Decoded(envelope)
}

/// A sampled record in the batch being dispatched: its span is exported.
struct Traced {
    /// Its slot in the batch.
    index: usize,
    /// The record's `traceparent` (the producer's publishing span).
    parent: TraceParent,
    /// Connections it was offered to.
    recipients: usize,
}

/// One "deliver" span per sampled record of a dispatched batch, a child of
/// the publishing span: from the record's receipt to its frames handed to
/// every recipient's queue. Runs after the router's lock is released.
fn deliver_spans(otlp: &Otlp, batch: &[Slot], traced: &mut Vec<Traced>) {
    let (now, now_instant) = (std::time::SystemTime::now(), Instant::now());
    for t in traced.drain(..) {
        let event = &batch[t.index].event;
        let waited = now_instant.saturating_duration_since(event.received);
        let received = now.checked_sub(waited).unwrap_or(now);
        let (_, mut span) = otlp.start_span(
            "deliver",
            SpanKind::Consumer,
            Some(&t.parent),
            Some(received),
        );
        span.set("messaging.system", "kafka");
        span.set("messaging.destination.name", event.topic.to_string());
        span.set(
            "messaging.destination.partition.id",
            event.partition.to_string(),
        );
        span.set("messaging.kafka.offset", event.offset);
        span.set("herald.event.type", event.envelope.event_type.clone());
        span.set("herald.event.id", event.envelope.id.clone());
        span.set("herald.recipients", t.recipients as i64);
        if let Some(produced) = event.kafka_timestamp_ms {
            let received_ms = received
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            span.set("herald.kafka_lag_ms", (received_ms - produced).max(0));
        }
        span.end_at(now);
    }
}

/// Route one record under the router's read lock: pass it (not
/// delivered here) or record it and add it to `batch`; a sampled record
/// (when `export`) is noted in `traced` too.
fn route(
    record: Read<'_>,
    view: &RouterView<'_>,
    topics: &Topics,
    batch: &mut Vec<Slot>,
    export: bool,
    traced: &mut Vec<Traced>,
) {
    let Read {
        msg,
        topic,
        received,
        mut parsed,
    } = record;
    let (partition, offset, timestamp) =
        (msg.partition(), msg.offset(), msg.timestamp().to_millis());
    let header_account = header(&msg, "account_id");
    if let Parsed::Undecoded = parsed {
        match header_account {
            // A connection of this account registered since the record was
            // read: it must get the record live, so decode it now.
            Some(account) if view.has_account(account) => parsed = decode(&msg),
            _ => {}
        }
    }
    let envelope = match parsed {
        Parsed::Presence => {
            view.pass(&topic, partition, offset, timestamp, None);
            return;
        }
        Parsed::Undecoded => {
            view.pass(&topic, partition, offset, timestamp, header_account);
            return;
        }
        Parsed::Invalid(reason) => {
            skipped(&topics.metrics, &topic, reason);
            view.pass(&topic, partition, offset, timestamp, None);
            return;
        }
        Parsed::Decoded(envelope) => envelope,
    };
    if !view.has_account(&envelope.account_id) {
        view.pass(
            &topic,
            partition,
            offset,
            timestamp,
            Some(&envelope.account_id),
        );
        return;
    }
    let mut event = RoutedEvent::new(topic, partition, offset, envelope, timestamp);
    event.received = received;
    view.mark_subject(&mut event);
    let parent = header(&msg, trace::TRACEPARENT).and_then(TraceParent::parse);
    event.trace_id = parent.map_or([0; 16], |t| t.trace_id);
    if export && let Some(parent) = parent.filter(TraceParent::sampled) {
        traced.push(Traced {
            index: batch.len(),
            parent,
            recipients: 0,
        });
    }
    let event = Arc::new(event);
    view.record(&event);
    batch.push(Slot::new(event));
}

fn record_heartbeat(msg: &BorrowedMessage<'_>, presence: &PresenceTable, metrics: &Metrics) {
    let topic = msg.topic();
    let Some(envelope) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
        skipped(metrics, topic, "invalid_envelope");
        return;
    };
    let Ok(beat) =
        serde_json::from_str::<herald_schemas::chatwoot::PresenceHeartbeat>(envelope.payload.get())
    else {
        skipped(metrics, topic, "invalid_payload");
        return;
    };
    let kind = match beat.kind.as_str() {
        "user" => PrincipalKind::User,
        "contact" => PrincipalKind::Contact,
        _ => {
            skipped(metrics, topic, "invalid_payload");
            return;
        }
    };
    let at = msg
        .timestamp()
        .to_millis()
        .unwrap_or_else(crate::core::clock::now_ms);
    presence.beat(&envelope.account_id, kind, &beat.id, at);
}

/// Every `every`, publish per-topic lag (high watermark minus the next offset
/// to dispatch) as `herald_consumer_lag_records`.
pub async fn report_lag(
    consumer: Arc<StreamConsumer>,
    router: Arc<Router>,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let frontier = router.frontier();
        let c = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let mut per_topic: HashMap<String, i64> = HashMap::new();
            let mut highs = Vec::new();
            for ((topic, partition), next) in frontier {
                if let Ok((_, high)) = c.fetch_watermarks(&topic, partition, Duration::from_secs(2))
                {
                    *per_topic.entry(topic.to_string()).or_default() += (high - next).max(0);
                    highs.push(((topic, partition), high));
                }
            }
            (per_topic, highs)
        })
        .await
        .unwrap_or_default();
        let (lags, highs) = lags;
        for (stream, high) in highs {
            router.set_watermark(stream, high);
        }
        for (topic, lag) in lags {
            metrics.consumer_lag.with_label_values(&[&topic]).set(lag);
        }
    }
}
