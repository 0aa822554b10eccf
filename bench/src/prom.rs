//! Scraping the gateway's Prometheus text (`/metrics`): counters summed
//! over label sets, histograms diffed between two scrapes and turned into
//! quantiles the way PromQL's `histogram_quantile` does.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` from `addr` with a bare HTTP/1.0 request; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// One scrape of a metrics page.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    text: String,
}

impl Scrape {
    /// Fetch `/metrics` from `ops`.
    pub async fn fetch(ops: SocketAddr) -> anyhow::Result<Scrape> {
        let (status, text) = http_get(ops, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(Scrape { text })
    }

    /// Wrap text (tests).
    pub fn from_text(text: &str) -> Scrape {
        Scrape {
            text: text.to_owned(),
        }
    }

    /// Samples of `name` (exact metric name) whose labels contain `filter`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        filter: &'a str,
    ) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.text.lines().filter_map(move |line| {
            if line.starts_with('#') {
                return None;
            }
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (l, v) = r.split_once('}')?;
                    (l, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if !labels.contains(filter) {
                return None;
            }
            Some((labels, value.trim().parse().ok()?))
        })
    }

    /// Every sample of `name`: its label text and value.
    pub fn series(&self, name: &str) -> Vec<(String, f64)> {
        self.samples(name, "")
            .map(|(labels, v)| (labels.to_owned(), v))
            .collect()
    }

    /// Sum of every sample of `name` whose labels contain `filter`.
    pub fn sum(&self, name: &str, filter: &str) -> f64 {
        self.samples(name, filter).map(|(_, v)| v).sum()
    }

    /// The cumulative buckets, sum and count of histogram `name`.
    pub fn histogram(&self, name: &str) -> PromHistogram {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples(&bucket, "")
            .filter_map(|(labels, v)| {
                let le = labels.split(',').find_map(|l| l.strip_prefix("le="))?;
                let le = le.trim_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        PromHistogram {
            buckets,
            sum: self.sum(&format!("{name}_sum"), ""),
            count: self.sum(&format!("{name}_count"), ""),
        }
    }
}

/// A Prometheus histogram (cumulative buckets, seconds).
#[derive(Debug, Clone, Default)]
pub struct PromHistogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl PromHistogram {
    /// Observations in `self` but not in `earlier`.
    pub fn since(&self, earlier: &PromHistogram) -> PromHistogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, c)| *c);
                (*le, c - before)
            })
            .collect();
        PromHistogram {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// Quantile `q` in seconds by linear interpolation inside the bucket
    /// (PromQL `histogram_quantile`); the highest finite bound when the
    /// quantile falls in `+Inf`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_c = 0.0;
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let inside = c - prev_c;
                let frac = if inside > 0.0 {
                    (rank - prev_c) / inside
                } else {
                    1.0
                };
                return Some(prev_le + (le - prev_le) * frac);
            }
            prev_le = le;
            prev_c = c;
        }
        Some(prev_le)
    }

    /// A summary in milliseconds.
    pub fn summary(&self) -> HistogramSummary {
        let ms = |q| self.quantile(q).map(|s| s * 1000.0);
        HistogramSummary {
            count: self.count as u64,
            mean_ms: (self.count > 0.0).then(|| self.sum / self.count * 1000.0),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
        }
    }
}

/// Quantiles of a gateway histogram over a window (bucket-interpolated, so
/// only as precise as the bucket bounds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistogramSummary {
    /// Observations.
    pub count: u64,
    /// Mean.
    pub mean_ms: Option<f64>,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile.
    pub p999_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
h_bucket{le="0.001"} 50
h_bucket{le="0.002"} 90
h_bucket{le="0.005"} 100
h_bucket{le="+Inf"} 100
h_sum 0.15
h_count 100
c_total{topic="a"} 3
c_total{topic="b"} 4
"#;

    #[test]
    fn parses_and_interpolates() {
        let s = Scrape::from_text(TEXT);
        assert_eq!(s.sum("c_total", ""), 7.0);
        assert_eq!(s.sum("c_total", "topic=\"b\""), 4.0);
        let h = s.histogram("h");
        assert!((h.quantile(0.5).unwrap() - 0.001).abs() < 1e-9);
        assert!((h.quantile(0.7).unwrap() - 0.0015).abs() < 1e-9);
        let none = h.since(&h);
        assert_eq!(none.quantile(0.5), None);
        assert_eq!(h.since(&PromHistogram::default()).summary().count, 100);
    }
}
