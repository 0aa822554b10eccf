//! The gateway's Prometheus metrics, in one place. Label sets are bounded:
//! protocol, topic, and fixed reason names — never ids or tokens. One
//! exception, by design: [`SlowestDelivery`] names one trace id at a time.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every gateway metric.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served at `/metrics`.
    pub registry: Registry,
    /// What `registry` holds, for the metrics reference.
    pub catalogue: herald_runtime::metrics::Catalogue,
    /// Open connections by protocol.
    pub connections: IntGaugeVec,
    /// Live subscriptions by protocol.
    pub subscriptions: IntGaugeVec,
    /// Records read from Kafka by topic.
    pub records_consumed: IntCounterVec,
    /// Records skipped by topic and reason (`invalid_envelope`, `account_mismatch`, ...).
    pub records_skipped: IntCounterVec,
    /// Frames written to clients by protocol.
    pub frames_sent: IntCounterVec,
    /// Frames dropped because the recipient was too slow, by protocol.
    pub frames_dropped: IntCounterVec,
    /// Undelivered frames replaced by a newer one about the same subject, by protocol.
    pub frames_conflated: IntCounterVec,
    /// Connections that negotiated permessage-deflate, by protocol.
    pub deflate_connections: IntCounterVec,
    /// Distinct frames compressed (once each, however many recipients).
    pub deflated_frames: IntCounter,
    /// Payload bytes into (`in`) and out of (`out`) the compressor.
    pub deflate_bytes: IntCounterVec,
    /// Clients disconnected for falling behind, by protocol.
    pub slow_disconnects: IntCounterVec,
    /// Clients cut off by their outbound side, by protocol and reason
    /// (`slow`, `outbound_bytes`, `write_timeout`).
    pub outbound_disconnects: IntCounterVec,
    /// Refused credentials by protocol and reason.
    pub auth_failures: IntCounterVec,
    /// Protocol errors sent to clients by protocol.
    pub protocol_errors: IntCounterVec,
    /// Connections, subscriptions or commands refused by an abuse limit.
    pub limit_rejections: IntCounterVec,
    /// Resume requests that could not be served, by protocol and reason.
    pub resume_gaps: IntCounterVec,
    /// Events replayed to resuming clients, by protocol.
    pub resumed_events: IntCounterVec,
    /// Resumed streams by where their events came from (`buffer`, `kafka`).
    pub resume_reads: IntCounterVec,
    /// Kafka `offsets_for_times` requests for clients resuming by time.
    pub resume_time_lookups: IntCounterVec,
    /// Records between each topic's high watermark and what was dispatched.
    pub consumer_lag: prometheus::IntGaugeVec,
    /// 1 when `/readyz` would answer 200.
    pub ready: prometheus::IntGauge,
    /// Opaque tokens in this pod's identities table.
    pub identities: prometheus::IntGauge,
    /// Live connections watched for revocation of their opaque token.
    pub identity_watchers: prometheus::IntGauge,
    /// Estimated bytes in the recent-history buffer.
    pub history_bytes: prometheus::IntGauge,
    /// Partitions whose positions this pod reset because their offsets went
    /// backwards (topic deleted and recreated, or the log truncated), by topic.
    pub partition_resets: IntCounterVec,
    /// Partitions of each served topic this pod reads (all of them unless
    /// `--partition-groups` splits them).
    pub owned_partitions: IntGaugeVec,
    /// Clients sent to the group owning their account, by protocol.
    pub group_redirects: IntCounterVec,
    /// Records whose `account_id` belongs to another partition group than
    /// the partition they were read from (a producer with another
    /// partitioner), by topic; only counted with `--partition-groups` > 1.
    pub foreign_partition_records: IntCounterVec,
    /// TypeID joins by outcome.
    pub typeid_joins: IntCounterVec,
    /// TypeID message requests by outcome.
    pub typeid_requests: IntCounterVec,
    /// Seconds from the Kafka record timestamp to the frame written to the socket.
    pub delivery_latency: Histogram,
    /// Seconds from a record's arrival in the gateway to its frames being queued.
    pub dispatch_latency: Histogram,
    /// Seconds from a record's arrival in the gateway to a frame carrying it
    /// written to the socket: the gateway's own share of delivery latency.
    pub gateway_latency: Histogram,
    /// The slowest traced delivery of the last window, with its trace id.
    pub slowest_delivery: Arc<SlowestDelivery>,
}

/// The exemplar of `herald_delivery_latency_seconds`: the slowest delivery
/// of the last window whose record carried a `traceparent`, published as
/// `herald_delivery_latency_slowest_seconds{trace_id}` — one series at a
/// time, so a latency spike on a dashboard leads to the trace that caused
/// it (the `prometheus` crate writes no OpenMetrics exemplars).
pub struct SlowestDelivery {
    gauge: GaugeVec,
    /// Latency (f64 bits) a delivery must beat to be looked at, so writers
    /// take the lock only for a new maximum.
    floor: AtomicU64,
    worst: Mutex<Option<(f64, [u8; 16])>>,
}

impl SlowestDelivery {
    /// Offer a delivery of `seconds` for trace `trace_id`.
    pub fn offer(&self, seconds: f64, trace_id: [u8; 16]) {
        if seconds <= f64::from_bits(self.floor.load(Ordering::Relaxed)) {
            return;
        }
        if let Ok(mut worst) = self.worst.lock()
            && worst.is_none_or(|(s, _)| seconds > s)
        {
            *worst = Some((seconds, trace_id));
            self.floor.store(seconds.to_bits(), Ordering::Relaxed);
        }
    }

    /// End the window: publish its slowest delivery (replacing the last
    /// window's series; none if nothing traced was delivered) and start anew.
    pub fn publish(&self) {
        let worst = self.worst.lock().ok().and_then(|mut w| w.take());
        self.floor.store(0f64.to_bits(), Ordering::Relaxed);
        self.gauge.reset();
        if let Some((seconds, trace_id)) = worst {
            let hex: String = trace_id.iter().map(|b| format!("{b:02x}")).collect();
            self.gauge.with_label_values(&[&hex]).set(seconds);
        }
    }
}

impl Metrics {
    /// Create and register every metric in a fresh registry.
    pub fn new() -> Self {
        let catalogue = herald_runtime::metrics::Catalogue::new();
        let registry = catalogue.registry().clone();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            catalogue.register(&g);
            g
        };
        let single_gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            catalogue.register(&g);
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            catalogue.register(&c);
            c
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            catalogue.register(&c);
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            catalogue.register(&h);
            h
        };
        let latency_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let dispatch_buckets = vec![
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05,
        ];
        let slowest = GaugeVec::new(
            Opts::new(
                "herald_delivery_latency_slowest_seconds",
                "The slowest delivery (Kafka record timestamp to frame written) of the last 10 s among records with a traceparent, labelled with its trace id",
            ),
            &["trace_id"],
        )
        .expect("valid metric");
        catalogue.register(&slowest);
        Metrics {
            slowest_delivery: Arc::new(SlowestDelivery {
                gauge: slowest,
                floor: AtomicU64::new(0f64.to_bits()),
                worst: Mutex::new(None),
            }),
            connections: gauge(
                "herald_connections",
                "Open client connections",
                &["protocol"],
            ),
            subscriptions: gauge(
                "herald_subscriptions",
                "Live client subscriptions",
                &["protocol"],
            ),
            records_consumed: counter(
                "herald_records_consumed_total",
                "Records read from Kafka",
                &["topic"],
            ),
            records_skipped: counter(
                "herald_records_skipped_total",
                "Records skipped, by reason",
                &["topic", "reason"],
            ),
            frames_sent: counter(
                "herald_frames_sent_total",
                "Frames written to clients",
                &["protocol"],
            ),
            frames_dropped: counter(
                "herald_frames_dropped_total",
                "Frames dropped because the client was too slow",
                &["protocol"],
            ),
            frames_conflated: counter(
                "herald_frames_conflated_total",
                "Undelivered event frames replaced in a connection's queue by a newer one about the same subject (conflation)",
                &["protocol"],
            ),
            deflate_connections: counter(
                "herald_deflate_connections_total",
                "Connections that negotiated permessage-deflate",
                &["protocol"],
            ),
            deflated_frames: plain_counter(
                "herald_deflated_frames_total",
                "Distinct frames compressed for permessage-deflate connections (each once, shared by all its recipients)",
            ),
            deflate_bytes: counter(
                "herald_deflate_bytes_total",
                "Payload bytes into (stage=in) and out of (stage=out) the permessage-deflate compressor",
                &["stage"],
            ),
            slow_disconnects: counter(
                "herald_slow_client_disconnects_total",
                "Clients disconnected for falling behind",
                &["protocol"],
            ),
            outbound_disconnects: counter(
                "herald_outbound_disconnects_total",
                "Clients cut off by their outbound side: live events did not fit (slow), replies past the byte bound (outbound_bytes), writes without progress (write_timeout)",
                &["protocol", "reason"],
            ),
            auth_failures: counter(
                "herald_auth_failures_total",
                "Refused credentials, by reason",
                &["protocol", "reason"],
            ),
            protocol_errors: counter(
                "herald_protocol_errors_total",
                "Protocol errors answered to clients",
                &["protocol"],
            ),
            limit_rejections: counter(
                "herald_limit_rejections_total",
                "Refusals by abuse limit",
                &["limit"],
            ),
            resume_gaps: counter(
                "herald_resume_gaps_total",
                "Resume positions that could not be served (gap signalled)",
                &["protocol", "reason"],
            ),
            resumed_events: counter(
                "herald_resumed_events_total",
                "Events replayed to resuming clients",
                &["protocol"],
            ),
            resume_reads: counter(
                "herald_resume_reads_total",
                "Resumed streams by source of their events",
                &["source"],
            ),
            resume_time_lookups: counter(
                "herald_resume_time_lookups_total",
                "Kafka offsets_for_times requests for clients resuming by time (answers are shared by the subscriptions that resume from the same time)",
                &[],
            ),
            consumer_lag: gauge(
                "herald_consumer_lag_records",
                "Records not yet dispatched, per topic",
                &["topic"],
            ),
            ready: single_gauge("herald_ready", "1 when the gateway is ready"),
            identities: single_gauge(
                "herald_identities",
                "Opaque tokens in this pod's identities table",
            ),
            history_bytes: single_gauge(
                "herald_history_buffer_bytes",
                "Estimated bytes held by the recent-history buffer (bounded by --history-buffer-bytes)",
            ),
            identity_watchers: single_gauge(
                "herald_identity_watchers",
                "Connections watched for the revocation of the opaque token they use",
            ),
            partition_resets: counter(
                "herald_partition_resets_total",
                "Partitions whose offsets went backwards (topic recreated or log truncated); positions, history and resume floors were reset",
                &["topic"],
            ),
            owned_partitions: gauge(
                "herald_owned_partitions",
                "Partitions of the topic this pod reads (with --partition-groups G, those p with p % G equal to its group)",
                &["topic"],
            ),
            group_redirects: counter(
                "herald_group_redirects_total",
                "Clients redirected to the partition group that owns their account",
                &["protocol"],
            ),
            foreign_partition_records: counter(
                "herald_foreign_partition_records_total",
                "Records whose account hashes to another partition group than their partition's (a producer uses another partitioner than --partitioner); never delivered by this group",
                &["topic"],
            ),
            typeid_joins: counter(
                "herald_typeid_joins_total",
                "TypeID joins by status",
                &["status"],
            ),
            typeid_requests: counter(
                "herald_typeid_requests_total",
                "TypeID message requests by status",
                &["status"],
            ),
            delivery_latency: histogram(
                "herald_delivery_latency_seconds",
                "Kafka record timestamp to frame written to the socket",
                latency_buckets,
            ),
            dispatch_latency: histogram(
                "herald_dispatch_latency_seconds",
                "Record received by the gateway to frames queued for every recipient",
                dispatch_buckets,
            ),
            gateway_latency: histogram(
                "herald_gateway_latency_seconds",
                "Record received by the gateway to a frame carrying it written to the socket",
                vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01,
                    0.025, 0.05, 0.1, 0.25, 1.0,
                ],
            ),
            registry,
            catalogue,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder as _;

    use super::*;

    #[test]
    fn the_slowest_traced_delivery_of_a_window_is_published_alone() {
        let metrics = Metrics::new();
        let slowest = &metrics.slowest_delivery;
        let text = || {
            let mut out = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&metrics.registry.gather(), &mut out)
                .expect("encode");
            String::from_utf8(out).expect("utf-8")
        };
        slowest.offer(0.2, [1; 16]);
        slowest.offer(0.5, [2; 16]);
        slowest.offer(0.3, [3; 16]);
        slowest.publish();
        let first = text();
        let two = "02".repeat(16);
        assert!(
            first.contains(&format!(
                "herald_delivery_latency_slowest_seconds{{trace_id=\"{two}\"}} 0.5"
            )),
            "{first}"
        );
        assert_eq!(
            first
                .matches("herald_delivery_latency_slowest_seconds{")
                .count(),
            1
        );
        // The next window starts from nothing: a faster delivery is its worst.
        slowest.offer(0.1, [4; 16]);
        slowest.publish();
        let second = text();
        assert!(second.contains(&"04".repeat(16)), "{second}");
        assert!(!second.contains(&two), "{second}");
        // A window without traced deliveries leaves no series.
        slowest.publish();
        assert!(!text().contains("herald_delivery_latency_slowest_seconds{"));
    }
}
