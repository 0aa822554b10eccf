//! Recent delivery latency: the histograms are cumulative since the pod
//! started, so the console keeps one snapshot a second and reports the
//! quantiles of the difference between the newest and the oldest one (the
//! last minute), interpolated within buckets as Prometheus'
//! `histogram_quantile` does.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use prometheus::{Histogram, core::Metric};
use serde_json::{Value, json};

/// Cumulative counts of one histogram: (upper bounds, counts per bound,
/// total count).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    bounds: Vec<f64>,
    cumulative: Vec<u64>,
    count: u64,
}

impl Snapshot {
    /// Read `h` now.
    pub fn of(h: &Histogram) -> Snapshot {
        let m = h.metric();
        let proto = m.get_histogram();
        let buckets = proto.get_bucket();
        Snapshot {
            bounds: buckets.iter().map(|b| b.upper_bound()).collect(),
            cumulative: buckets.iter().map(|b| b.cumulative_count()).collect(),
            count: proto.get_sample_count(),
        }
    }

    /// Observations between `older` and `self`, as a snapshot.
    fn since(&self, older: &Snapshot) -> Snapshot {
        if older.bounds != self.bounds {
            return self.clone();
        }
        Snapshot {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .zip(&older.cumulative)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(older.count),
        }
    }

    /// The `q` quantile in seconds (None without observations). Past the
    /// last bucket it is the last bound (a lower bound of the truth).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for (bound, cum) in self.bounds.iter().zip(&self.cumulative) {
            if *cum as f64 >= rank {
                let in_bucket = (*cum - lower.1) as f64;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (bound - lower.0) * fraction.clamp(0.0, 1.0));
            }
            lower = (*bound, *cum);
        }
        self.bounds.last().copied()
    }

    fn summary(&self) -> Value {
        let ms = |q: f64| self.quantile(q).map(|s| (s * 1e6).round() / 1e3);
        json!({"count": self.count, "p50_ms": ms(0.5), "p95_ms": ms(0.95), "p99_ms": ms(0.99)})
    }
}

/// One snapshot of the delivery and gateway latency histograms per sample.
pub struct LatencyWindow {
    window: Duration,
    samples: VecDeque<(Instant, Snapshot, Snapshot)>,
}

impl LatencyWindow {
    /// Keep samples spanning `window`.
    pub fn new(window: Duration) -> Self {
        LatencyWindow {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Record the histograms as of `now`.
    pub fn sample(&mut self, now: Instant, delivery: &Histogram, gateway: &Histogram) {
        self.samples
            .push_back((now, Snapshot::of(delivery), Snapshot::of(gateway)));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _, _)| now.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Quantiles of what was observed between the oldest and the newest sample.
    pub fn summary(&self) -> Value {
        let (Some(old), Some(new)) = (self.samples.front(), self.samples.back()) else {
            return json!({"window_secs": 0, "delivery": null, "gateway": null});
        };
        json!({
            "window_secs": new.0.duration_since(old.0).as_secs(),
            "delivery": new.1.since(&old.1).summary(),
            "gateway": new.2.since(&old.2).summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn histogram() -> Histogram {
        Histogram::with_opts(HistogramOpts::new("h", "h").buckets(vec![0.001, 0.01, 0.1, 1.0]))
            .unwrap()
    }

    #[test]
    fn quantiles_come_from_the_window_not_from_all_time() {
        let (d, g) = (histogram(), histogram());
        // Before the window: slow deliveries.
        for _ in 0..100 {
            d.observe(0.5);
        }
        let mut w = LatencyWindow::new(Duration::from_secs(60));
        let t0 = Instant::now();
        w.sample(t0, &d, &g);
        for _ in 0..100 {
            d.observe(0.005);
        }
        w.sample(t0 + Duration::from_secs(1), &d, &g);
        let s = w.summary();
        assert_eq!(s["delivery"]["count"], 100);
        let p50 = s["delivery"]["p50_ms"].as_f64().unwrap();
        assert!((1.0..=10.0).contains(&p50), "{s}");
        assert_eq!(s["gateway"]["count"], 0);
        assert!(s["gateway"]["p50_ms"].is_null());
        // Older samples leave the window.
        w.sample(t0 + Duration::from_secs(120), &d, &g);
        w.sample(t0 + Duration::from_secs(121), &d, &g);
        assert_eq!(w.summary()["delivery"]["count"], 0);
    }

    #[test]
    fn quantile_interpolates_and_saturates() {
        let h = histogram();
        for _ in 0..10 {
            h.observe(0.05);
        }
        let s = Snapshot::of(&h);
        let p50 = s.quantile(0.5).unwrap();
        assert!(p50 > 0.01 && p50 <= 0.1, "{p50}");
        h.observe(30.0);
        let s = Snapshot::of(&h);
        assert_eq!(s.quantile(1.0), Some(1.0));
        assert_eq!(Snapshot::of(&histogram()).quantile(0.5), None);
    }
}
