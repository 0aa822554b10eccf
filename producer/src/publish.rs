//! Kafka records from validated envelopes and identity changes, through an
//! idempotent producer (`enable.idempotence=true`, `acks=all`). Shared by the
//! HTTP API and the outbox relay so both write exactly the same records:
//! key = account id, value = the envelope JSON, headers `type`, `account_id`
//! and `event_id`.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use herald_runtime::{
    KafkaArgs,
    otlp::{Array, Otlp, Span, SpanKind, StringValue, Value},
    trace::{self, TraceParent},
};
use herald_schemas::{Envelope, Family};
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
    types::RDKafkaErrorCode,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::Metrics;

/// The trace context a publish continues (W3C Trace Context).
#[derive(Debug, Clone)]
pub struct Trace {
    /// The publishing span: the caller's trace with a new span id, or a
    /// new trace.
    pub parent: TraceParent,
    /// The caller's `tracestate`, carried on unchanged.
    pub state: Option<String>,
}

impl Trace {
    /// Continue the caller's `traceparent` (and `tracestate`) if valid,
    /// else start a new, unsampled trace.
    pub fn continue_from(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(TraceParent::parse) {
            Some(parent) => Trace {
                parent: parent.child(),
                state: tracestate.and_then(trace::tracestate).map(str::to_owned),
            },
            None => Trace::start(),
        }
    }

    /// A new, unsampled trace (a publish nobody traced).
    pub fn start() -> Self {
        Trace {
            parent: TraceParent::root(false),
            state: None,
        }
    }

    /// Begin the publishing span `name`: a child of the caller's
    /// `traceparent` if valid, else the root of a new trace. The context
    /// carried on names this span (its id is the exported span's), and the
    /// span is inert unless `otlp` exports and the trace is sampled.
    pub fn begin(
        otlp: &Otlp,
        name: &'static str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> (Self, Span) {
        let caller = traceparent.and_then(TraceParent::parse);
        let (parent, mut span) = otlp.start_span(name, SpanKind::Producer, caller.as_ref(), None);
        span.set("messaging.system", "kafka");
        let state = caller
            .and(tracestate)
            .and_then(trace::tracestate)
            .map(str::to_owned);
        (Trace { parent, state }, span)
    }
}

/// Describe on a publishing span where its events landed: topic,
/// partition, offset and event type, scalar for one event, arrays (in
/// request order) for a batch. Nothing of the payload.
pub fn describe_span(span: &mut Span, produced: &[Produced]) {
    if !span.is_recording() {
        return;
    }
    span.set("messaging.batch.message_count", produced.len() as i64);
    match produced {
        [one] => {
            span.set("messaging.destination.name", one.topic.clone());
            span.set(
                "messaging.destination.partition.id",
                one.partition.to_string(),
            );
            span.set("messaging.kafka.offset", one.offset);
            span.set("herald.event.type", one.event_type.clone());
            span.set("herald.event.id", one.id.clone());
        }
        many => {
            let strings = |f: fn(&Produced) -> String| {
                Value::Array(Array::String(
                    many.iter().map(|p| StringValue::from(f(p))).collect(),
                ))
            };
            span.set("messaging.destination.name", strings(|p| p.topic.clone()));
            span.set(
                "messaging.destination.partition.id",
                strings(|p| p.partition.to_string()),
            );
            span.set(
                "messaging.kafka.offset",
                Value::Array(Array::I64(many.iter().map(|p| p.offset).collect())),
            );
            span.set("herald.event.type", strings(|p| p.event_type.clone()));
            span.set("herald.event.id", strings(|p| p.id.clone()));
        }
    }
}

/// Where an event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Produced {
    /// Event id (generated when the request had none).
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// True when this event id was already produced for this account inside
    /// the idempotency window: nothing new was written and this is the
    /// original position.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The envelope could not be serialised (never expected).
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    /// Kafka refused or did not acknowledge the record.
    #[error("Kafka did not acknowledge: {0}")]
    Kafka(#[from] KafkaError),
}

impl PublishError {
    /// Whether retrying the same record can never succeed (it is too large,
    /// or the broker calls it invalid), as opposed to an outage.
    pub fn is_permanent(&self) -> bool {
        match self {
            PublishError::Encode(_) => true,
            PublishError::Kafka(e) => matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::InvalidRecord
                )
            ),
        }
    }
}

/// Build an idempotent Kafka producer whose records time out after `timeout`.
pub fn create_producer(
    kafka: &KafkaArgs,
    timeout: Duration,
    client_id: &str,
) -> anyhow::Result<FutureProducer> {
    let mut cfg = kafka.producer_config()?;
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("client.id", client_id);
    Ok(cfg.create()?)
}

/// Produces envelopes and identity records, counting them in [`Metrics`].
///
/// The Kafka producer inside can be replaced ([`Publisher::renew`]) when it
/// can no longer deliver, e.g. after a fatal idempotence error.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RwLock<FutureProducer>>,
    kafka: KafkaArgs,
    client_id: String,
    timeout: Duration,
    metrics: Metrics,
    otlp: Otlp,
}

impl Publisher {
    /// Create the Kafka producer and wrap it.
    pub fn create(
        kafka: &KafkaArgs,
        timeout: Duration,
        client_id: &str,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        Ok(Publisher {
            producer: Arc::new(RwLock::new(create_producer(kafka, timeout, client_id)?)),
            kafka: kafka.clone(),
            client_id: client_id.to_owned(),
            timeout,
            metrics,
            otlp: Otlp::disabled(),
        })
    }

    /// Export the publishing spans through `otlp`.
    pub fn with_otlp(mut self, otlp: Otlp) -> Self {
        self.otlp = otlp;
        self
    }

    /// The span exporter (disabled unless set with [`Publisher::with_otlp`]).
    pub fn otlp(&self) -> &Otlp {
        &self.otlp
    }

    /// The current Kafka producer.
    pub fn producer(&self) -> FutureProducer {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The topic prefix.
    pub fn topic_prefix(&self) -> &str {
        &self.kafka.topic_prefix
    }

    /// Replace the Kafka producer with a new one (a new producer id).
    /// Records still in flight in the old one are still delivered or failed
    /// by it.
    pub fn renew(&self) -> anyhow::Result<()> {
        let fresh = create_producer(&self.kafka, self.timeout, &self.client_id)?;
        match self.producer.write() {
            Ok(mut p) => *p = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Replace the producer if it hit a fatal error (it would never deliver
    /// again); returns whether it did.
    pub fn renew_if_fatal(&self) -> bool {
        let Some((code, reason)) = self.producer().client().fatal_error() else {
            return false;
        };
        tracing::warn!(
            ?code,
            reason,
            "Kafka producer hit a fatal error; replacing it"
        );
        match self.renew() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new Kafka producer");
                false
            }
        }
    }

    /// Produce one envelope to its family's topic; resolves once Kafka
    /// acknowledged it. The record is handed to the client on the first
    /// poll, so futures polled together keep their order.
    ///
    /// `trace` is the publishing span's context, carried in the record's
    /// `traceparent` header (and `tracestate`, when the caller had one) so
    /// the gateway can tie the delivery to the request that caused it.
    pub async fn send_envelope(
        &self,
        envelope: &Envelope,
        family: Family,
        trace: &Trace,
    ) -> Result<Produced, PublishError> {
        let topic = family.topic(self.topic_prefix());
        let value = serde_json::to_vec(envelope)?;
        let traceparent = trace.parent.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "type",
                value: Some(envelope.event_type.as_bytes()),
            })
            .insert(Header {
                key: "account_id",
                value: Some(envelope.account_id.as_bytes()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(envelope.id.as_bytes()),
            })
            .insert(Header {
                key: trace::TRACEPARENT,
                value: Some(traceparent.as_bytes()),
            });
        if let Some(state) = &trace.state {
            headers = headers.insert(Header {
                key: trace::TRACESTATE,
                value: Some(state.as_bytes()),
            });
        }
        let record = FutureRecord::to(&topic)
            .key(envelope.account_id.as_str())
            .payload(value.as_slice())
            .headers(headers);
        let position = self.send(record).await?;
        self.metrics
            .events_produced
            .with_label_values(&[&topic])
            .inc();
        Ok(Produced {
            id: envelope.id.clone(),
            event_type: envelope.event_type.clone(),
            topic,
            partition: position.partition,
            offset: position.offset,
            duplicate: false,
        })
    }

    /// Produce a record to `topic` with `key`; `None` is a tombstone.
    pub async fn send_keyed(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Position, PublishError> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.send(record).await
    }

    async fn send(&self, record: FutureRecord<'_, str, [u8]>) -> Result<Position, PublishError> {
        let started = Instant::now();
        let producer = self.producer();
        match producer.send(record, self.timeout).await {
            Ok(delivery) => {
                self.metrics
                    .produce_latency
                    .observe(started.elapsed().as_secs_f64());
                Ok(Position {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((e, _)) => Err(PublishError::Kafka(e)),
        }
    }
}
