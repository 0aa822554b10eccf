//! The producer's Prometheus metrics (bounded labels only).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Every producer metric.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served at `/metrics`.
    pub registry: Registry,
    /// HTTP requests by route and status code.
    pub requests: IntCounterVec,
    /// Events acknowledged by Kafka, by topic.
    pub events_produced: IntCounterVec,
    /// Events refused by validation.
    pub events_invalid: IntCounterVec,
    /// Seconds from handing a record to the Kafka client to its acknowledgement.
    pub produce_latency: Histogram,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter(
            "herald_producer_requests_total",
            "HTTP requests",
            &["route", "status"],
        );
        let events_produced = counter(
            "herald_producer_events_total",
            "Events acknowledged by Kafka",
            &["topic"],
        );
        let events_invalid = counter(
            "herald_producer_events_invalid_total",
            "Events refused by validation",
            &["route"],
        );
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "herald_producer_produce_latency_seconds",
                "Kafka acknowledgement latency",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(produce_latency.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            requests,
            events_produced,
            events_invalid,
            produce_latency,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
