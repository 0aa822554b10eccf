//! The Kafka side of a gateway pod: every partition of every served topic is
//! *assigned* (no consumer group, so pods never take partitions from each
//! other), starting at the end offset read at startup; partitions and topics
//! that appear later are assigned from their beginning so nothing produced
//! to them is missed. Records are routed by their `account_id`/`type`
//! headers first and parsed only when this pod has a recipient.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use herald_runtime::KafkaArgs;
use herald_schemas::Envelope;
use prometheus::IntCounter;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::{BorrowedMessage, Headers},
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::PrincipalKind,
    metrics::Metrics,
    presence::PresenceTable,
    router::{RoutedEvent, Router, RouterView, Slot},
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
    let mut cfg = settings.kafka.client_config()?;
    cfg.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A position the broker no longer has (retention passed it, or the
        // topic was recreated after an outage): continue from the oldest
        // record still there rather than skip to the end and lose records.
        .set("auto.offset.reset", "earliest")
        .set("client.id", "herald-gateway")
        // No consumer group is joined (partitions are assigned, never
        // subscribed), but librdkafka's incremental assignment needs a group
        // handle; a unique id keeps pods from ever sharing offsets.
        .set(
            "group.id",
            format!("herald-gateway-{}", uuid::Uuid::new_v4().simple()),
        );
    // Latency: a broker holds each fetch up to this long when it has no new
    // data; the default (500 ms) and even 50 ms showed up in end-to-end
    // latency. Operators can still override it with --kafka-property.
    if cfg.get("fetch.wait.max.ms").is_none() {
        cfg.set("fetch.wait.max.ms", "10");
    }
    Ok(Arc::new(cfg.create()?))
}

/// Keep the assignment complete until `shutdown`: discover topics and
/// partitions, assign the new ones, and keep `ready` true while every served
/// topic is assigned and the broker answers.
pub async fn maintain_assignment(
    consumer: Arc<StreamConsumer>,
    router: Arc<Router>,
    settings: ConsumerSettings,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut assigned: HashSet<(String, i32)> = HashSet::new();
    let mut first_round = true;
    loop {
        let c = consumer.clone();
        let topics = settings.topics.clone();
        let known = assigned.clone();
        let from_end = first_round;
        let outcome =
            tokio::task::spawn_blocking(move || discover(c.as_ref(), &topics, &known, from_end))
                .await;
        match outcome {
            Ok(Ok(found)) => {
                let mut complete = found.missing.is_empty();
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
                                let start = match offset {
                                    Offset::Offset(o) => o,
                                    _ => 0,
                                };
                                router.init_frontier((Arc::from(topic.as_str()), partition), start);
                                assigned.insert((topic, partition));
                            }
                        }
                        Err(e) => {
                            complete = false;
                            tracing::warn!(error = %e, "cannot assign partitions; retrying");
                        }
                    }
                }
                if !found.missing.is_empty() {
                    tracing::warn!(missing = ?found.missing, "served topics do not exist yet; not ready");
                }
                // Whatever appears after the first successful look is new:
                // it is read from its beginning so none of it is missed.
                first_round = false;
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
        }
    }
}

struct Discovery {
    new: Vec<(String, i32, Offset)>,
    missing: Vec<String>,
}

/// Blocking metadata walk: partitions not yet assigned, with their start offset.
fn discover(
    consumer: &StreamConsumer,
    topics: &[String],
    assigned: &HashSet<(String, i32)>,
    from_end: bool,
) -> Result<Discovery, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let mut new = Vec::new();
    let mut missing = Vec::new();
    for topic in topics {
        let Some(md) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        else {
            missing.push(topic.clone());
            continue;
        };
        for p in md.partitions() {
            if assigned.contains(&(topic.clone(), p.id())) {
                continue;
            }
            let offset = if from_end {
                // An explicit end offset (rather than Offset::End) means a
                // record produced after this point is never skipped, even if
                // the fetcher starts later.
                let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                Offset::Offset(high)
            } else {
                Offset::Beginning
            };
            new.push((topic.clone(), p.id(), offset));
        }
    }
    Ok(Discovery { new, missing })
}

/// Read records until `shutdown`, routing each to the router.
pub async fn consume(
    consumer: Arc<StreamConsumer>,
    router: Arc<Router>,
    metrics: Metrics,
    presence: Arc<PresenceTable>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<Slot> = Vec::with_capacity(MAX_BATCH);
    let mut counters = TopicCounters {
        metrics: metrics.clone(),
        consumed: HashMap::new(),
        names: HashMap::new(),
    };
    let mut last_error_log: Option<Instant> = None;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = consumer.recv() => m,
        };
        match msg {
            Ok(msg) => {
                let Some(view) = router.view() else { continue };
                handle(&msg, &view, &presence, &mut counters, &mut batch);
                // Records the client library has already fetched are taken
                // now, without waiting, and dispatched together.
                while batch.len() < MAX_BATCH {
                    match consumer.recv().now_or_never() {
                        Some(Ok(msg)) => handle(&msg, &view, &presence, &mut counters, &mut batch),
                        _ => break,
                    }
                }
                if !batch.is_empty() {
                    view.dispatch_batch(&batch);
                    for slot in batch.drain(..) {
                        metrics
                            .dispatch_latency
                            .observe(slot.event.received.elapsed().as_secs_f64());
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

struct TopicCounters {
    metrics: Metrics,
    consumed: HashMap<String, IntCounter>,
    names: HashMap<String, Arc<str>>,
}

impl TopicCounters {
    /// One shared name per topic, so events do not allocate it.
    fn topic_arc(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.names.get(topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.names.insert(topic.to_owned(), t.clone());
        t
    }

    fn consumed(&mut self, topic: &str) {
        if let Some(c) = self.consumed.get(topic) {
            c.inc();
            return;
        }
        let c = self.metrics.records_consumed.with_label_values(&[topic]);
        c.inc();
        self.consumed.insert(topic.to_owned(), c);
    }

    fn skipped(&self, topic: &str, reason: &'static str) {
        self.metrics
            .records_skipped
            .with_label_values(&[topic, reason])
            .inc();
    }
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

/// Route one record: skip, pass or record it, and add what is to be
/// delivered to `batch`.
fn handle(
    msg: &BorrowedMessage<'_>,
    view: &RouterView<'_>,
    presence: &PresenceTable,
    counters: &mut TopicCounters,
    batch: &mut Vec<Slot>,
) {
    let received = Instant::now();
    let topic = msg.topic();
    counters.consumed(topic);
    let topic_arc = counters.topic_arc(topic);
    let (partition, offset, timestamp) =
        (msg.partition(), msg.offset(), msg.timestamp().to_millis());
    let header_account = header(msg, "account_id");
    if header(msg, "type") == Some("presence.heartbeat") {
        // Every pod keeps the whole online table, subscribers here or not.
        record_heartbeat(msg, presence, counters);
        view.pass(&topic_arc, partition, offset, timestamp, None);
        return;
    }
    if let Some(account) = header_account
        && !view.has_account(account)
    {
        view.pass(&topic_arc, partition, offset, timestamp, Some(account));
        return;
    }
    let skip = |reason: &'static str| {
        counters.skipped(topic, reason);
        view.pass(&topic_arc, partition, offset, timestamp, None);
    };
    let Some(payload) = msg.payload() else {
        skip("empty");
        return;
    };
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(topic, partition, offset, error = %e, "skipping invalid record");
            skip("invalid_envelope");
            return;
        }
    };
    if header_account.is_some_and(|a| a != envelope.account_id) {
        skip("account_mismatch");
        return;
    }
    if header(msg, "type").is_some_and(|t| t != envelope.event_type) {
        skip("type_mismatch");
        return;
    }
    if header_account.is_none() && !view.has_account(&envelope.account_id) {
        view.pass(
            &topic_arc,
            partition,
            offset,
            timestamp,
            Some(&envelope.account_id),
        );
        return;
    }
    let mut event = RoutedEvent::new(topic_arc.clone(), partition, offset, envelope, timestamp);
    event.received = received;
    let event = Arc::new(event);
    view.record(&event);
    batch.push(Slot::new(event));
}

fn record_heartbeat(msg: &BorrowedMessage<'_>, presence: &PresenceTable, counters: &TopicCounters) {
    let topic = msg.topic();
    let Some(envelope) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
        counters.skipped(topic, "invalid_envelope");
        return;
    };
    let Ok(beat) =
        serde_json::from_str::<herald_schemas::chatwoot::PresenceHeartbeat>(envelope.payload.get())
    else {
        counters.skipped(topic, "invalid_payload");
        return;
    };
    let kind = match beat.kind.as_str() {
        "user" => PrincipalKind::User,
        "contact" => PrincipalKind::Contact,
        _ => {
            counters.skipped(topic, "invalid_payload");
            return;
        }
    };
    let at = msg
        .timestamp()
        .to_millis()
        .unwrap_or_else(crate::router::now_ms);
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
            for ((topic, partition), next) in frontier {
                if let Ok((_, high)) = c.fetch_watermarks(&topic, partition, Duration::from_secs(2))
                {
                    *per_topic.entry(topic.to_string()).or_default() += (high - next).max(0);
                }
            }
            per_topic
        })
        .await
        .unwrap_or_default();
        for (topic, lag) in lags {
            metrics.consumer_lag.with_label_values(&[&topic]).set(lag);
        }
    }
}
