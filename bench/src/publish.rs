//! Publishing stamped events: to Kafka (what the gateway consumes) or to the
//! raw baseline server's control socket, open-loop at a fixed rate or
//! closed-loop with a bounded number of undelivered events per account.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    ClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::{
    client::{Fleet, account_id},
    stamp::{self, Protocol},
};

/// Counts Kafka acknowledgements.
#[derive(Default)]
pub struct DeliveryCounter {
    /// Records acknowledged.
    pub delivered: AtomicU64,
    /// Records that failed.
    pub failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A Kafka producer for benchmark records.
pub fn kafka_producer(
    kafka: &herald_runtime::KafkaArgs,
    linger_ms: u64,
) -> anyhow::Result<ThreadedProducer<DeliveryCounter>> {
    let mut cfg = kafka.client_config()?;
    cfg.set("linger.ms", linger_ms.to_string())
        .set("acks", "1")
        .set("enable.idempotence", "false")
        .set("queue.buffering.max.messages", "2000000")
        .set("client.id", "herald-loadgen");
    Ok(cfg.create_with_context(DeliveryCounter::default())?)
}

/// Send one record, waiting while librdkafka's queue is full.
pub fn send_record(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    key: &str,
    value: &str,
    event_type: &str,
    headers: bool,
) -> anyhow::Result<()> {
    loop {
        let mut record = BaseRecord::to(topic).key(key).payload(value);
        if headers {
            record = record.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "type",
                        value: Some(event_type),
                    })
                    .insert(Header {
                        key: "account_id",
                        value: Some(key),
                    }),
            );
        }
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Where events go.
pub enum EventSink {
    /// To Kafka, for the gateway.
    Kafka {
        /// Producer.
        producer: ThreadedProducer<DeliveryCounter>,
        /// Topic of the protocol's event type.
        topic: String,
    },
    /// To the raw server's control socket: `account seq g sent_us` lines.
    Raw(BufWriter<tokio::net::TcpStream>),
    /// Through a peer's own publish path (`herald-loadgen peers`).
    Peer(crate::peers::PeerSink),
}

impl EventSink {
    /// A Kafka sink for `protocol`'s event type under `kafka.topic_prefix`.
    pub fn kafka(
        kafka: &herald_runtime::KafkaArgs,
        protocol: Protocol,
        linger_ms: u64,
    ) -> anyhow::Result<Self> {
        let family = herald_schemas::family_of(protocol.event_type())
            .context("event type without a family")?;
        Ok(EventSink::Kafka {
            producer: kafka_producer(kafka, linger_ms)?,
            topic: family.topic(&kafka.topic_prefix),
        })
    }

    /// A sink to a raw server's control address.
    pub async fn raw(control: std::net::SocketAddr) -> anyhow::Result<Self> {
        let s = tokio::net::TcpStream::connect(control).await?;
        s.set_nodelay(true)?;
        Ok(EventSink::Raw(BufWriter::with_capacity(64 * 1024, s)))
    }
}

/// Publishes events and remembers how many each account was sent.
pub struct Publisher {
    sink: EventSink,
    protocol: Protocol,
    accounts: Vec<String>,
    pad: stamp::Pad,
    /// Events sent per account.
    pub sent: Vec<u64>,
    /// Events sent in total (the next global number).
    pub total: u64,
    occurred_at: (u64, String),
    /// `sent`, readable by other tasks while publishing (see [`Publisher::share_counts`]).
    shared: Option<Arc<[AtomicU64]>>,
}

impl Publisher {
    /// A publisher for `accounts` accounts.
    pub fn new(sink: EventSink, protocol: Protocol, accounts: usize, pad: stamp::Pad) -> Self {
        Publisher {
            sink,
            protocol,
            accounts: (0..accounts).map(account_id).collect(),
            pad,
            sent: vec![0; accounts],
            total: 0,
            occurred_at: (0, String::new()),
            shared: None,
        }
    }

    /// Events sent per account so far, updated as each one is handed to
    /// the sink, for tasks that need to know what was published by when.
    pub fn share_counts(&mut self) -> Arc<[AtomicU64]> {
        self.shared
            .get_or_insert_with(|| self.sent.iter().map(|&n| AtomicU64::new(n)).collect())
            .clone()
    }

    /// Send the next event of account `a`.
    pub async fn send(&mut self, a: usize) -> anyhow::Result<()> {
        let seq = self.sent[a];
        let g = self.total;
        let sent_us = stamp::now_us();
        let payload = stamp::payload(self.protocol, g, seq, sent_us, self.pad);
        match &mut self.sink {
            EventSink::Kafka { producer, topic } => {
                // `occurred_at` is formatted at most once per millisecond.
                if self.occurred_at.0 != sent_us / 1000 {
                    let t = time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(sent_us) * 1000,
                    )?;
                    self.occurred_at = (
                        sent_us / 1000,
                        t.format(&time::format_description::well_known::Rfc3339)?,
                    );
                }
                let account = &self.accounts[a];
                let value =
                    stamp::envelope(self.protocol, g, account, &self.occurred_at.1, &payload);
                send_record(
                    producer,
                    topic,
                    account,
                    &value,
                    self.protocol.event_type(),
                    true,
                )?;
            }
            EventSink::Raw(w) => {
                w.write_all(format!("{a} {seq} {g} {sent_us}\n").as_bytes())
                    .await?;
            }
            EventSink::Peer(sink) => sink.send(a, &self.accounts[a], payload).await?,
        }
        self.sent[a] += 1;
        self.total += 1;
        if let Some(shared) = &self.shared {
            shared[a].store(self.sent[a], Ordering::Release);
        }
        Ok(())
    }

    /// Push buffered events out.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match &mut self.sink {
            EventSink::Raw(w) => w.flush().await?,
            EventSink::Peer(sink) => sink.flush().await?,
            EventSink::Kafka { .. } => {}
        }
        Ok(())
    }

    /// Flush, then wait until the sink has handed over everything sent
    /// (Kafka acknowledgements, HTTP answers). Publishes that failed.
    pub async fn finish_all(&mut self) -> anyhow::Result<u64> {
        self.flush().await?;
        match &self.sink {
            EventSink::Kafka { .. } => {
                self.finish();
                Ok(self.acks().1)
            }
            EventSink::Peer(sink) => Ok(sink.drain().await),
            EventSink::Raw(_) => Ok(0),
        }
    }

    /// Kafka acknowledgements so far: `(delivered, failed)`.
    pub fn acks(&self) -> (u64, u64) {
        match &self.sink {
            EventSink::Kafka { producer, .. } => (
                producer.context().delivered.load(Ordering::Relaxed),
                producer.context().failed.load(Ordering::Relaxed),
            ),
            EventSink::Raw(_) | EventSink::Peer(_) => (self.total, 0),
        }
    }

    /// Wait for Kafka to acknowledge everything sent.
    pub fn finish(&self) {
        if let EventSink::Kafka { producer, .. } = &self.sink {
            let _ = producer.flush(Duration::from_secs(30));
        }
    }

    /// Open loop: `rate` events/s round-robin over the accounts for `duration`.
    pub async fn at_rate(&mut self, rate: f64, duration: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut done = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let accounts = self.accounts.len();
        loop {
            tick.tick().await;
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            let due = (rate * elapsed.as_secs_f64()) as u64;
            while done < due {
                let a = (self.total % accounts as u64) as usize;
                self.send(a).await?;
                done += 1;
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Open loop: `count` events, `rate` per second, round-robin over the
    /// accounts (so each account gets `count / accounts`).
    pub async fn at_rate_count(&mut self, rate: f64, count: u64) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut done = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let accounts = self.accounts.len() as u64;
        while done < count {
            tick.tick().await;
            let due = ((rate * start.elapsed().as_secs_f64()) as u64 + 1).min(count);
            while done < due {
                let a = (self.total % accounts) as usize;
                self.send(a).await?;
                done += 1;
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Closed loop: keep at most `window` undelivered events per account
    /// (delivered = received by every subscribed connection of the
    /// account) for `duration`. Saturates the server without ever letting a
    /// connection's backlog exceed `window` frames, so no client is cut off
    /// as slow and the measured rate is what the server sustains.
    pub async fn windowed(
        &mut self,
        fleet: &Fleet,
        window: u64,
        duration: Duration,
        stop: &AtomicStop,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut frontier = Vec::new();
        let accounts = self.accounts.len();
        while start.elapsed() < duration && !stop.is_set() {
            fleet.frontiers(accounts, &mut frontier);
            let mut sent_any = false;
            for (a, &done) in frontier.iter().enumerate() {
                if done == u64::MAX {
                    continue;
                }
                while self.sent[a] < done + window {
                    self.send(a).await?;
                    sent_any = true;
                }
            }
            self.flush().await?;
            if !sent_any {
                tokio::time::sleep(Duration::from_micros(500)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }
}

/// A flag to end a publishing loop early.
#[derive(Clone, Default)]
pub struct AtomicStop(Arc<std::sync::atomic::AtomicBool>);

impl AtomicStop {
    /// Whether the loop should end.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// End the loop.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A bare consumer of `topics` (the gateway's: fetch requests then cover
/// the same partitions), from their current end, that records each stamped
/// record's produce → receipt time in [`crate::hist::KAFKA`] until `stop`:
/// the broker's (and librdkafka's) share of the end-to-end latency, with the
/// same `fetch.wait.max.ms` the gateway uses.
pub fn kafka_probe(
    kafka: &herald_runtime::KafkaArgs,
    topics: &[String],
    fetch_wait_ms: u64,
    stop: AtomicStop,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use rdkafka::{
        Message as _, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
    };
    let c: BaseConsumer = kafka
        .client_config()?
        .set(
            "group.id",
            format!("herald-bench-probe-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
        }
    }
    c.assign(&tpl)?;
    Ok(std::thread::spawn(move || {
        while !stop.is_set() {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100))
                && let Some((_, sent)) = m.payload().and_then(stamp::parse)
            {
                crate::hist::KAFKA.record(&[stamp::now_us().saturating_sub(sent)]);
            }
        }
    }))
}
