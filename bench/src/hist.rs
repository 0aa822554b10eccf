//! Latency recording from many tasks without a shared hot lock: each worker
//! thread records into its own histogram (registered once in a global list),
//! and the run merges them when it reads a window.

use std::{
    cell::OnceCell,
    sync::{Arc, Mutex},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency tracked, microseconds (values above are clamped).
const MAX_US: u64 = 120_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// A set of per-thread histograms read as one.
pub struct Recorder {
    /// Index of this recorder's histogram in each thread's [`LOCAL`].
    slot: usize,
    threads: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>>,
}

/// End-to-end latency of delivered events.
pub static DELIVERY: Recorder = Recorder::new(0);
/// Time from starting a connection to its subscription being confirmed.
pub static CONNECT: Recorder = Recorder::new(1);
/// Produce to receipt by a bare Kafka consumer (the broker's share).
pub static KAFKA: Recorder = Recorder::new(2);
/// Resuming clients: publish → delivery of events that arrived on a
/// resumed connection and were published before it resubscribed (missed
/// while offline, replayed by the gateway).
pub static REPLAY: Recorder = Recorder::new(3);
/// Resuming clients: resubscribe → delivery of the same replayed events
/// (the part the gateway controls: the offline time is not in it).
pub static REPLAY_AFTER_RESUBSCRIBE: Recorder = Recorder::new(4);
/// Resuming clients: connection lost → subscription confirmed again.
pub static RECONNECT: Recorder = Recorder::new(5);
/// Resuming clients: connection lost → every event published up to the
/// reconnect received.
pub static CAUGHT_UP: Recorder = Recorder::new(6);

const SLOTS: usize = 7;

thread_local! {
    static LOCAL: [OnceCell<Arc<Mutex<Histogram<u64>>>>; SLOTS] = const { [const { OnceCell::new() }; SLOTS] };
}

impl Recorder {
    const fn new(slot: usize) -> Self {
        assert!(slot < SLOTS);
        Recorder {
            slot,
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Record values (microseconds) on this thread's histogram.
    pub fn record(&'static self, values: &[u64]) {
        if values.is_empty() {
            return;
        }
        LOCAL.with(|cells| {
            let h = cells[self.slot].get_or_init(|| {
                let h = Arc::new(Mutex::new(new_histogram()));
                if let Ok(mut all) = self.threads.lock() {
                    all.push(h.clone());
                }
                h
            });
            if let Ok(mut h) = h.lock() {
                for &v in values {
                    h.saturating_record(v.clamp(1, MAX_US));
                }
            }
        });
    }

    /// Merge every thread's values recorded since the last call, and reset.
    pub fn take(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        if let Ok(all) = self.threads.lock() {
            for h in all.iter() {
                if let Ok(mut h) = h.lock() {
                    let _ = out.add(&*h);
                    h.reset();
                }
            }
        }
        out
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarise a microsecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_merge_and_reset() {
        let t = std::thread::spawn(|| CONNECT.record(&[1000, 2000]));
        t.join().unwrap();
        CONNECT.record(&[3000]);
        let h = CONNECT.take();
        assert_eq!(h.len(), 3);
        let p = Percentiles::of(&h);
        assert!((p.max_ms - 3.0).abs() < 0.01);
        assert_eq!(CONNECT.take().len(), 0);
    }
}
