//! Producer throughput through a real broker (a program, not a test):
//! outbox rows/s drained by the relay, and HTTP events/s through
//! `POST /v1/events`, single events and batches.
//!
//! ```sh
//! cargo bench -p herald-producer --bench throughput
//! ```
//!
//! Uses the Apache Kafka broker of `HERALD_TEST_KAFKA` (else a fresh one)
//! and the PostgreSQL of `HERALD_TEST_POSTGRES` (else a throwaway server),
//! in a schema of its own, dropped at the end. Sizes: `HERALD_BENCH_ROWS`
//! (default 50000), `HERALD_BENCH_EVENTS` (default 20000),
//! `HERALD_BENCH_CONCURRENCY` (default 32).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use herald_producer::ProducerConfig;
use herald_schemas::Family;
use serde_json::Value;
use support::{Broker, BrokerExt as _, TestDb, tag_event, unique};
use tokio_util::sync::CancellationToken;

const API_KEY: &str = "bench-api-key-0123456789";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_usize("HERALD_BENCH_ROWS", 50_000);
    let events = env_usize("HERALD_BENCH_EVENTS", 20_000);
    let concurrency = env_usize("HERALD_BENCH_CONCURRENCY", 32).max(1);

    let broker = Broker::start().await?;
    let prefix = format!("{}.", unique("bench"));
    let topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(&prefix)).collect();
    broker.create_topics(&prefix, &topics, &[], 4).await?;
    println!("broker {} ({} partitions per topic)", broker.bootstrap, 4);

    // Outbox: a backlog of `rows` rows, drained by one relay.
    let db = TestDb::create().await?;
    let shutdown = CancellationToken::new();
    let producer = herald_producer::start(
        ProducerConfig::from_args([
            "herald-producer",
            "--kafka-brokers",
            &broker.bootstrap,
            "--topic-prefix",
            &prefix,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--api-key",
            API_KEY,
            "--outbox-database-url",
            &db.url,
            "--outbox-schema",
            &db.schema,
            "--outbox-migrate",
            "--outbox-poll-ms",
            "100000",
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?,
        shutdown.clone(),
    )
    .await?;
    // Warm up the relay's producer with one row.
    db.insert(&[tag_event("warm", 0)]).await?;
    support::wait_until(Duration::from_secs(30), "warm-up", || async {
        Ok(db.backlog().await? == 0)
    })
    .await?;

    // Fill the table while the relay waits (inserts notify, so hold it off
    // with one transaction holding all rows), then time the drain.
    let mut chunk = Vec::new();
    let tx_client = &db.client;
    tx_client.batch_execute("BEGIN").await?;
    for n in 0..rows {
        chunk.push(tag_event(&format!("acct{}", n % 100), n as u64));
        if chunk.len() == 5_000 {
            db.insert(&chunk).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        db.insert(&chunk).await?;
    }
    let started = Instant::now();
    tx_client.batch_execute("COMMIT").await?;
    support::wait_until(Duration::from_secs(600), "the outbox to drain", || async {
        Ok(db.backlog().await? == 0)
    })
    .await?;
    let outbox_elapsed = started.elapsed();
    println!(
        "outbox relay: {rows} rows in {:.2} s = {:.0} rows/s (batches of 500)",
        outbox_elapsed.as_secs_f64(),
        rows as f64 / outbox_elapsed.as_secs_f64()
    );

    // HTTP: `concurrency` clients, single events then batches of 100.
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/events", producer.addr);
    for batch in [1usize, 100] {
        let requests = (events / batch).max(1);
        let per_client = requests.div_ceil(concurrency);
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..concurrency {
            let (http, url) = (http.clone(), url.clone());
            clients.spawn(async move {
                for r in 0..per_client {
                    let body = Value::Array(
                        (0..batch)
                            .map(|i| tag_event(&format!("acct{c}"), (r * batch + i) as u64))
                            .collect(),
                    );
                    let response = http
                        .post(&url)
                        .bearer_auth(API_KEY)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "POST failed: {}",
                        response.status()
                    );
                }
                anyhow::Ok(())
            });
        }
        while let Some(result) = clients.join_next().await {
            result??;
        }
        let elapsed = started.elapsed();
        let sent = per_client * concurrency * batch;
        println!(
            "http: {sent} events in requests of {batch} by {concurrency} clients in {:.2} s = {:.0} events/s ({:.0} requests/s)",
            elapsed.as_secs_f64(),
            sent as f64 / elapsed.as_secs_f64(),
            (per_client * concurrency) as f64 / elapsed.as_secs_f64(),
        );
    }
    shutdown.cancel();
    producer.stopped().await;
    Ok(())
}
