//! Shared helpers of the producer's integration tests: Apache Kafka (the
//! run's shared broker, or one a test can kill and restart), a private
//! PostgreSQL schema per test, the `herald-producer` binary as a child
//! process, and reading topics back.
//!
//! Nothing here mocks anything: tests fail with instructions when Java,
//! Maven or the PostgreSQL server binaries are missing.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use herald_runtime::KafkaArgs;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};
use serde_json::{Value, json};

#[allow(unused_imports)]
pub use herald_testkit::{Broker, free_port, init_logging, retry, unique};

/// Kafka settings and topics of a test on `broker`.
pub trait BrokerExt {
    /// Kafka settings for `prefix`.
    fn kafka(&self, prefix: &str) -> KafkaArgs;
    /// Create topics (retrying while the broker warms up).
    fn create_topics(
        &self,
        prefix: &str,
        topics: &[String],
        compacted: &[String],
        partitions: i32,
    ) -> impl std::future::Future<Output = anyhow::Result<()>>;
}

impl BrokerExt for Broker {
    fn kafka(&self, prefix: &str) -> KafkaArgs {
        let mut k = KafkaArgs::for_brokers(&self.bootstrap);
        k.topic_prefix = prefix.to_owned();
        k
    }

    async fn create_topics(
        &self,
        prefix: &str,
        topics: &[String],
        compacted: &[String],
        partitions: i32,
    ) -> anyhow::Result<()> {
        let kafka = self.kafka(prefix);
        let layout = herald_runtime::kafka::TopicLayout::partitions(partitions);
        retry(Duration::from_secs(30), || {
            herald_runtime::kafka::ensure_topics(&kafka, topics, compacted, &layout)
        })
        .await
    }
}

/// Wait until `check` returns true, failing with `what` after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) | Err(_) if Instant::now() <= deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(false) => bail!("timed out waiting for {what}"),
            Err(e) => return Err(e.context(format!("waiting for {what}"))),
        }
    }
}

/// A private schema in the test database (the run's shared server,
/// `HERALD_TEST_POSTGRES`, or a throwaway server of this test's own),
/// dropped when the value is.
pub struct TestDb {
    /// The database URL.
    pub url: String,
    /// The server (kept alive while the schema is used).
    _server: std::sync::Arc<herald_testkit::Database>,
    /// The schema of this test.
    pub schema: String,
    /// A connection.
    pub client: tokio_postgres::Client,
}

impl TestDb {
    /// Connect and create a fresh schema.
    pub async fn create() -> anyhow::Result<TestDb> {
        let server = std::sync::Arc::new(herald_testkit::Database::shared().await?);
        let url = server.url().to_owned();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("cannot connect to the test database {url}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let schema = unique("herald_t_");
        client
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .await?;
        Ok(TestDb {
            url,
            _server: server,
            schema,
            client,
        })
    }

    /// The outbox table of this test, quoted.
    pub fn outbox(&self) -> String {
        format!("\"{}\".herald_outbox", self.schema)
    }

    /// Rows waiting in the outbox.
    pub async fn backlog(&self) -> anyhow::Result<i64> {
        Ok(self
            .client
            .query_one(&format!("SELECT count(*) FROM {}", self.outbox()), &[])
            .await?
            .get(0))
    }

    /// Insert events (JSON values) into the outbox in one transaction.
    pub async fn insert(&self, events: &[Value]) -> anyhow::Result<()> {
        let text: Vec<String> = events.iter().map(Value::to_string).collect();
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (event) SELECT e::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS t(e, i) ORDER BY i",
                    self.outbox()
                ),
                &[&text],
            )
            .await?;
        Ok(())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort, on a thread of its own: Drop cannot await.
        let url = self.url.clone();
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A `tag.updated` event whose payload id is `<account>-<n>`.
pub fn tag_event(account: &str, n: u64) -> Value {
    json!({
        "type": "tag.updated",
        "account_id": account,
        "payload": {"id": format!("{account}-{n}"), "name": format!("n{n}"), "color": "tag-red"}
    })
}

/// A Kafka record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key as text.
    pub key: Option<String>,
    /// Value as JSON (`None` for a tombstone).
    pub value: Option<Value>,
    /// Headers as text.
    pub headers: HashMap<String, String>,
}

/// Key of the end markers [`read_topic`] writes; never returned.
pub const END_MARKER: &str = "__herald_test_end__";

/// Every record of `topic`, partition by partition in offset order.
///
/// The end of each partition is found by producing an end marker to it and
/// reading up to the marker's offset: watermarks are not trusted, because
/// tansu's in-memory storage reports a high watermark of the last batch's
/// base offset + 1 instead of the offset after its last record.
pub async fn read_topic(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("herald-test-reader-"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let t = topic.to_owned();
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&t), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::Ok((consumer, partitions))
    })
    .await??;
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut ends = HashMap::new();
    for p in &partitions {
        let delivery = producer
            .send(
                FutureRecord::to(topic)
                    .partition(*p)
                    .key(END_MARKER)
                    .payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        ends.insert(*p, delivery.offset);
    }
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_until(&consumer, &topic, ends)).await?
}

fn read_until(
    consumer: &BaseConsumer,
    topic: &str,
    mut ends: HashMap<i32, i64>,
) -> anyhow::Result<Vec<Record>> {
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} took too long");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = message?;
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() >= *end)
        {
            ends.remove(&m.partition());
        }
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        if key.as_deref() == Some(END_MARKER) {
            continue;
        }
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key,
            value: m.payload().map(serde_json::from_slice).transpose()?,
            headers,
        });
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// Per-account check of outbox deliveries (`tag_event`s): every one of the
/// `expected[account]` events is present; the first copy of each arrives in
/// insertion order; every copy of one event carries the same event id.
/// Returns the number of duplicate records.
pub fn check_deliveries(
    records: &[Record],
    expected: &HashMap<String, u64>,
) -> anyhow::Result<usize> {
    // account -> (n -> event id), and the next n expected.
    let mut ids: HashMap<String, HashMap<u64, String>> = HashMap::new();
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut duplicates = 0;
    for r in records {
        let v = r.value.as_ref().context("unexpected tombstone")?;
        let account = v["account_id"].as_str().context("account_id")?.to_owned();
        anyhow::ensure!(
            r.key.as_deref() == Some(account.as_str()),
            "key is not the account"
        );
        let id = v["id"].as_str().context("id")?.to_owned();
        anyhow::ensure!(
            r.headers.get("event_id") == Some(&id),
            "event_id header differs from the envelope id"
        );
        let payload_id = v["payload"]["id"].as_str().context("payload.id")?;
        let n: u64 = payload_id
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .context("payload id number")?;
        let seen = ids.entry(account.clone()).or_default();
        match seen.get(&n) {
            Some(first) => {
                anyhow::ensure!(
                    *first == id,
                    "event {account}-{n} was published under two ids: {first} and {id}"
                );
                duplicates += 1;
            }
            None => {
                let want = next.entry(account.clone()).or_insert(0);
                anyhow::ensure!(
                    n == *want,
                    "account {account}: event {n} arrived first where {want} was due (order broken)"
                );
                *want += 1;
                seen.insert(n, id);
            }
        }
    }
    for (account, count) in expected {
        let got = next.get(account).copied().unwrap_or(0);
        anyhow::ensure!(
            got == *count,
            "account {account}: {got} of {count} events were published"
        );
    }
    for account in next.keys() {
        anyhow::ensure!(
            expected.contains_key(account),
            "unexpected account {account}"
        );
    }
    Ok(duplicates)
}

/// The `tag_event` number of a record (`payload.id` is `<account>-<n>`).
fn event_number(v: &Value) -> anyhow::Result<u64> {
    v["payload"]["id"]
        .as_str()
        .and_then(|id| id.rsplit('-').next())
        .and_then(|s| s.parse().ok())
        .context("payload id number")
}

/// The first copy of every `tag_event` per account, in arrival order:
/// account -> event numbers, plus the number of later copies. Checks that
/// each record is keyed by its account, carries its envelope id in the
/// `event_id` header, and that every copy of one event has one id.
pub fn first_copies(records: &[Record]) -> anyhow::Result<(HashMap<String, Vec<u64>>, usize)> {
    let mut ids: HashMap<(String, u64), String> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    let mut duplicates = 0;
    for r in records {
        let v = r.value.as_ref().context("unexpected tombstone")?;
        let account = v["account_id"].as_str().context("account_id")?.to_owned();
        anyhow::ensure!(
            r.key.as_deref() == Some(account.as_str()),
            "key is not the account"
        );
        let id = v["id"].as_str().context("id")?.to_owned();
        anyhow::ensure!(
            r.headers.get("event_id") == Some(&id),
            "event_id header differs from the envelope id"
        );
        let n = event_number(v)?;
        match ids.get(&(account.clone(), n)) {
            Some(first) => {
                anyhow::ensure!(
                    *first == id,
                    "event {account}-{n} was published under two ids: {first} and {id}"
                );
                duplicates += 1;
            }
            None => {
                ids.insert((account.clone(), n), id);
                order.entry(account).or_default().push(n);
            }
        }
    }
    Ok((order, duplicates))
}

/// `herald-producer` as a child process.
pub struct ProducerProcess {
    child: Child,
    /// Its ops address.
    pub ops: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

impl ProducerProcess {
    /// Run the binary with `args` plus loopback listeners.
    pub fn spawn(args: &[String]) -> anyhow::Result<ProducerProcess> {
        let ops: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", unique("producer-")));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_herald-producer"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--ops-listen", &ops.to_string()])
            .env("RUST_LOG", "info,herald_producer=debug")
            .env_remove("HERALD_CONFIG")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("cannot run herald-producer")?;
        Ok(ProducerProcess { child, ops, log })
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fetch one of its metrics (sum over label sets matching `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.ops))
            .await?
            .text()
            .await?;
        Ok(metric_value(&text, name, labels))
    }

    /// Status of `/readyz`.
    pub async fn readyz(&self) -> anyhow::Result<u16> {
        Ok(reqwest::get(format!("http://{}/readyz", self.ops))
            .await?
            .status()
            .as_u16())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProducerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sum of the samples of `name` whose label text contains `labels`.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
