//! A Prometheus registry that remembers what was registered in it, so the
//! metrics reference (`docs/reference/metrics.md`) is generated from the
//! code rather than kept by hand: labelled metrics that have not been used
//! yet are missing from a scrape, not from the catalogue.

use std::sync::{Arc, Mutex};

use prometheus::{Registry, core::Collector, proto::MetricType};

/// One metric as documented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricDoc {
    /// Full name (`herald_…`).
    pub name: String,
    /// Its help text.
    pub help: String,
    /// Label names.
    pub labels: Vec<String>,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
}

/// A registry and the list of what it holds.
#[derive(Clone, Default)]
pub struct Catalogue {
    registry: Registry,
    registered: Arc<Mutex<Vec<Box<dyn Collector>>>>,
}

impl Catalogue {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry to serve at `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Register `collector` (its name must be unique: a duplicate is a
    /// programming error caught by every test that builds the metrics).
    pub fn register<C: Collector + Clone + 'static>(&self, collector: &C) {
        self.registry
            .register(Box::new(collector.clone()))
            .expect("unique metric");
        if let Ok(mut registered) = self.registered.lock() {
            registered.push(Box::new(collector.clone()));
        }
    }

    /// Every registered metric, sorted by name.
    pub fn reference(&self) -> Vec<MetricDoc> {
        let Ok(registered) = self.registered.lock() else {
            return Vec::new();
        };
        let mut docs: Vec<MetricDoc> = registered
            .iter()
            .flat_map(|c| {
                let kind =
                    c.collect()
                        .first()
                        .map_or("untyped", |family| match family.get_field_type() {
                            MetricType::COUNTER => "counter",
                            MetricType::GAUGE => "gauge",
                            MetricType::HISTOGRAM => "histogram",
                            MetricType::SUMMARY => "summary",
                            MetricType::UNTYPED => "untyped",
                        });
                c.desc()
                    .into_iter()
                    .map(move |d| MetricDoc {
                        name: d.fq_name.clone(),
                        help: d.help.clone(),
                        labels: d.variable_labels.clone(),
                        kind,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        docs.sort_by(|a, b| a.name.cmp(&b.name));
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_labelled_metrics_are_listed() {
        let c = Catalogue::new();
        let v =
            prometheus::IntCounterVec::new(prometheus::Opts::new("b_total", "B"), &["x"]).unwrap();
        let g = prometheus::IntGauge::new("a", "A").unwrap();
        c.register(&v);
        c.register(&g);
        assert!(c.registry().gather().iter().all(|f| f.name() != "b_total"));
        assert_eq!(
            c.reference(),
            [
                MetricDoc {
                    name: "a".into(),
                    help: "A".into(),
                    labels: vec![],
                    kind: "gauge"
                },
                MetricDoc {
                    name: "b_total".into(),
                    help: "B".into(),
                    labels: vec!["x".into()],
                    kind: "counter"
                },
            ]
        );
    }
}
