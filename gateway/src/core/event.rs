//! A decoded record on its way to the clients: what the consumer hands the
//! router, what the history buffer keeps and what codecs encode.

use std::{sync::Arc, time::Instant};

use herald_schemas::Envelope;

use crate::core::clock::now_ms;

/// A decoded record ready to be delivered.
#[derive(Debug)]
pub struct RoutedEvent {
    /// Kafka topic the record came from.
    pub topic: Arc<str>,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// The decoded envelope.
    pub envelope: Envelope,
    /// The record's Kafka timestamp (ms since the epoch), if it has one.
    pub kafka_timestamp_ms: Option<i64>,
    /// When the gateway received the record.
    pub received: Instant,
    /// The payload parsed once, on first use, for recipients that look inside it.
    pub parsed: std::sync::OnceLock<Option<serde_json::Value>>,
    /// What the event is about when a newer event about the same subject
    /// makes it obsolete for a client that has not been sent it yet
    /// ([`crate::core::conflation`]); `None`: always delivered.
    pub subject: Option<Arc<str>>,
    /// The trace id of the record's `traceparent` header (the publish that
    /// produced it); all zero (never a valid trace id) when it had none.
    pub trace_id: [u8; 16],
}

impl RoutedEvent {
    /// Wrap a decoded envelope.
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        envelope: Envelope,
        kafka_timestamp_ms: Option<i64>,
    ) -> Self {
        RoutedEvent {
            topic,
            partition,
            offset,
            envelope,
            kafka_timestamp_ms,
            received: Instant::now(),
            parsed: std::sync::OnceLock::new(),
            subject: None,
            trace_id: [0; 16],
        }
    }

    /// The payload as a JSON value (parsed at most once per event).
    pub fn payload_json(&self) -> Option<&serde_json::Value> {
        self.parsed
            .get_or_init(|| serde_json::from_str(self.envelope.payload.get()).ok())
            .as_ref()
    }

    /// What the writer needs for the latency histograms.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            kafka_ts_ms: self.kafka_timestamp_ms,
            received: self.received,
            trace_id: self.trace_id,
        }
    }

    /// The record's position as `topic:partition:offset`, unique per event.
    pub fn position(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }

    /// The event time in ms since the epoch: `occurred_at` when it parses,
    /// else the Kafka timestamp, else now.
    pub fn timestamp_ms(&self) -> i64 {
        self.envelope
            .occurred_at
            .as_deref()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .or(self.kafka_timestamp_ms)
            .unwrap_or_else(now_ms)
    }
}

/// When an event's record reached the gateway, and its Kafka timestamp:
/// what the writer needs for the latency histograms.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// The record's Kafka timestamp (ms since the epoch).
    pub kafka_ts_ms: Option<i64>,
    /// When the gateway received the record.
    pub received: Instant,
    /// The publish's trace id, for the slowest-delivery exemplar (all zero:
    /// none; kept without an `Option` so every queued frame stays small).
    pub trace_id: [u8; 16],
}
