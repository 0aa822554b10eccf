//! The producer's Prometheus metrics (bounded labels only), served on the
//! ops port.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every producer metric.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served at `/metrics`.
    pub registry: Registry,
    /// What `registry` holds, for the metrics reference.
    pub catalogue: herald_runtime::metrics::Catalogue,
    /// HTTP requests by route (the route template) and status code.
    pub requests: IntCounterVec,
    /// Events acknowledged by Kafka, by topic (HTTP API and outbox relay).
    pub events_produced: IntCounterVec,
    /// Events refused by validation, by route (`/v1/events`, `outbox`).
    pub events_invalid: IntCounterVec,
    /// Seconds from handing a record to the Kafka client to its acknowledgement.
    pub produce_latency: Histogram,
    /// Refused API requests by reason (`missing`, `invalid`, `expired`,
    /// `insufficient_scope`, `not_configured`).
    pub auth_failures: IntCounterVec,
    /// Events answered from the idempotency window instead of being produced again.
    pub idempotent_replays: IntCounter,
    /// Identity records produced, by operation (`register`, `revoke`).
    pub identities: IntCounterVec,
    /// Rows waiting in the outbox table.
    pub outbox_backlog: IntGauge,
    /// Age of the oldest row waiting in the outbox table, seconds (0 when empty).
    pub outbox_oldest_age: Gauge,
    /// 1 while this instance holds the outbox leader lock.
    pub outbox_leader: IntGauge,
    /// Outbox batches published (acknowledged by Kafka and removed from the table).
    pub outbox_batches: IntCounter,
    /// Outbox rows published to Kafka.
    pub outbox_rows: IntCounter,
    /// Outbox rows moved to the dead-letter table.
    pub outbox_poison_rows: IntCounter,
    /// Relay failures by kind (`postgres`, `kafka`).
    pub outbox_errors: IntCounterVec,
    /// Seconds to publish one outbox batch (read, produce, acknowledge, delete).
    pub outbox_batch_latency: Histogram,
}

const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let catalogue = herald_runtime::metrics::Catalogue::new();
        let registry = catalogue.registry().clone();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            catalogue.register(&c);
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            catalogue.register(&c);
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric");
            catalogue.register(&h);
            h
        };
        let requests = counter_vec(
            "herald_producer_requests_total",
            "HTTP requests",
            &["route", "status"],
        );
        let events_produced = counter_vec(
            "herald_producer_events_total",
            "Events acknowledged by Kafka",
            &["topic"],
        );
        let events_invalid = counter_vec(
            "herald_producer_events_invalid_total",
            "Events refused by validation",
            &["route"],
        );
        let produce_latency = histogram(
            "herald_producer_produce_latency_seconds",
            "Kafka acknowledgement latency",
        );
        let auth_failures = counter_vec(
            "herald_producer_auth_failures_total",
            "API requests refused by authentication or authorisation",
            &["reason"],
        );
        let idempotent_replays = counter(
            "herald_producer_idempotent_replays_total",
            "Events answered from the idempotency window instead of produced again",
        );
        let identities = counter_vec(
            "herald_producer_identities_total",
            "Identity records produced",
            &["operation"],
        );
        let outbox_backlog = IntGauge::new(
            "herald_producer_outbox_backlog_rows",
            "Rows waiting in the outbox table",
        )
        .expect("valid metric");
        catalogue.register(&outbox_backlog);
        let outbox_oldest_age = Gauge::new(
            "herald_producer_outbox_oldest_age_seconds",
            "Age of the oldest row waiting in the outbox table",
        )
        .expect("valid metric");
        catalogue.register(&outbox_oldest_age);
        let outbox_leader = IntGauge::new(
            "herald_producer_outbox_leader",
            "1 while this instance holds the outbox leader lock",
        )
        .expect("valid metric");
        catalogue.register(&outbox_leader);
        let outbox_batches = counter(
            "herald_producer_outbox_batches_total",
            "Outbox batches published",
        );
        let outbox_rows = counter(
            "herald_producer_outbox_rows_total",
            "Outbox rows published to Kafka",
        );
        let outbox_poison_rows = counter(
            "herald_producer_outbox_poison_rows_total",
            "Outbox rows moved to the dead-letter table",
        );
        let outbox_errors = counter_vec(
            "herald_producer_outbox_errors_total",
            "Outbox relay failures",
            &["kind"],
        );
        let outbox_batch_latency = histogram(
            "herald_producer_outbox_batch_latency_seconds",
            "Time to publish one outbox batch",
        );
        Metrics {
            registry,
            catalogue,
            requests,
            events_produced,
            events_invalid,
            produce_latency,
            auth_failures,
            idempotent_replays,
            identities,
            outbox_backlog,
            outbox_oldest_age,
            outbox_leader,
            outbox_batches,
            outbox_rows,
            outbox_poison_rows,
            outbox_errors,
            outbox_batch_latency,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
