//! The metrics the operations files depend on exist: every name in
//! `deploy/metrics.txt` is exported by a running gateway or producer (apart
//! from those only partition groups export), and the Grafana dashboard and
//! the Prometheus alert rules use no other Herald metric.
//! (`scripts/validate-deploy.sh` checks the files' syntax and PromQL.)

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use herald_tests::{Stack, StackOptions, airy_message, stomp::RawStomp, token};
use serde_json::{Value, json};

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// The names listed in `deploy/metrics.txt`.
fn listed_metrics() -> BTreeSet<String> {
    read("deploy/metrics.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every `herald_…` identifier in `text` (PromQL metric names; alert names
/// are CamelCase and job names use dashes, so neither matches).
fn herald_identifiers(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("herald_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_ident);
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            found.insert(tail[..len].to_owned());
        }
        rest = &tail[len.max(1)..];
    }
    found
}

/// `herald_…` label names the operations files use, which are not metrics:
/// the Helm chart's ServiceMonitor adds each gateway pod's
/// `herald.io/partition-group` label to its series under this name.
const LABELS: &[&str] = &["herald_io_partition_group"];

/// Listed metrics a gateway without partition groups never exports: they
/// count only with `--partition-groups` above 1, and a labelled metric
/// appears with its first count.
const ONLY_WITH_PARTITION_GROUPS: &[&str] = &["herald_foreign_partition_records_total"];

/// A histogram series name maps to its family (`x_bucket` -> `x`).
fn family_of(name: &str, listed: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && listed.contains(base)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

#[test]
fn dashboard_and_alert_rules_use_only_listed_metrics() {
    let listed = listed_metrics();
    assert!(!listed.is_empty(), "deploy/metrics.txt lists no metric");
    let mut used = BTreeSet::new();
    for file in [
        "deploy/grafana/herald-dashboard.json",
        "deploy/prometheus/alerts.yml",
    ] {
        for name in herald_identifiers(&read(file)) {
            if LABELS.contains(&name.as_str()) {
                continue;
            }
            let family = family_of(&name, &listed);
            assert!(
                listed.contains(&family),
                "{file} uses {name}, which deploy/metrics.txt does not list"
            );
            used.insert(family);
        }
    }
    let unused: Vec<_> = listed.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "deploy/metrics.txt lists metrics that neither the dashboard nor the alerts use: {unused:?}"
    );
}

/// Metric families in a Prometheus text exposition (`# TYPE <name> <type>`).
fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(stack: &Stack) -> anyhow::Result<BTreeSet<String>> {
    let mut families = exported_families(&stack.gateway_metrics().await?);
    let producer = stack
        .http
        .get(format!("http://{}/metrics", stack.producer.ops_addr))
        .send()
        .await?
        .text()
        .await?;
    families.extend(exported_families(&producer));
    Ok(families)
}

/// Labelled metrics appear once a label set is used, so the test first
/// drives the traffic that touches each: a delivered event, a refused
/// credential, a slow client cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_metric_is_exported_by_the_services() -> anyhow::Result<()> {
    // A one-frame outbound queue: a client that stops reading is cut off
    // as soon as its socket buffers are full.
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--outbound-queue".into(), "1".into()],
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");

    // Delivered event: connections, subscriptions, consumption, frames,
    // latencies; producer requests, events, produce latency.
    let mut reader = RawStomp::connect(&url, &token("1", "7", "agent")).await?;
    reader.subscribe("s", "/queue/message").await?;
    stack.publish(&airy_message("1", 1)).await?;
    let frame = reader.next_frame().await?;
    assert_eq!(frame.command, "MESSAGE", "{}", frame.raw);
    drop(reader);

    // Refused credential.
    let mut refused = RawStomp::open(&url, "v12.stomp", None).await?;
    refused
        .send("CONNECT\naccept-version:1.2\nAuthorization:Bearer nonsense\n\n\0")
        .await?;
    assert_eq!(refused.next_frame().await?.command, "ERROR");

    // Slow client: subscribed, never reads; large events until it is cut off.
    let mut slow = RawStomp::connect(&url, &token("1", "8", "agent")).await?;
    slow.subscribe("s", "/queue/message").await?;
    let filler = "z".repeat(90 * 1024);
    let mut cut_off = false;
    for batch in 0..60u64 {
        let events: Vec<Value> = (0..10)
            .map(|i| {
                let mut e = airy_message("1", 100 + batch * 10 + i);
                e["payload"]["message"]["content"] = json!({ "text": filler });
                e
            })
            .collect();
        stack.publish(&Value::Array(events)).await?;
        if stack
            .gateway_metrics()
            .await?
            .contains("herald_slow_client_disconnects_total{")
        {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the slow client was never disconnected");

    // Gauges refreshed periodically (consumer lag, readiness) may need a moment.
    let listed = listed_metrics();
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let exported = scrape(&stack).await?;
        let missing: Vec<String> = listed
            .difference(&exported)
            .filter(|m| !ONLY_WITH_PARTITION_GROUPS.contains(&m.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "deploy/metrics.txt names metrics that neither the gateway nor the producer exports \
         (the dashboard and alert rules would show nothing): {missing:?}"
    );
    drop(slow);
    stack.stop().await;
    Ok(())
}

#[test]
fn identifiers_are_found_in_promql() {
    let found = herald_identifiers(
        r#"sum(rate(herald_frames_sent_total{job="herald-gateway"}[5m])) / x_herald_y + herald_ready"#,
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["herald_frames_sent_total", "herald_ready"]
    );
}
