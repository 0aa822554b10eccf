//! Test harness for Herald's cross-service tests.
//!
//! [`Broker`] gives each test Apache Kafka: the run's shared broker named by
//! `HERALD_TEST_KAFKA` (which `scripts/test.sh` starts), else a broker of the
//! test's own; tests that kill or restart brokers always get their own
//! cluster (`herald-testkit` starts them). There is no silent skip: without
//! Java or Maven the harness fails with what to install.
//!
//! [`Stack`] adds the producer and the gateway, in-process, on free ports,
//! with a per-test topic prefix so tests sharing a cluster never interfere.

pub mod cable;
pub mod numbered;
pub mod stomp;
pub mod typeid;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use herald_gateway::{GatewayConfig, GatewayHandle};
use herald_producer::{ProducerConfig, ProducerHandle};
use herald_runtime::{KafkaArgs, kafka::TopicLayout};
use herald_schemas::Family;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Debian's Chromium, which the browser tests drive through playwright-core.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The directory of the browser drivers (`tests/js`), once Chromium and the
/// npm packages they need are there (`scripts/test.sh` installs both).
pub fn browser_drivers() -> anyhow::Result<&'static str> {
    anyhow::ensure!(
        std::path::Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
    );
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
    anyhow::ensure!(
        std::path::Path::new(js)
            .join("node_modules/playwright-core")
            .exists(),
        "npm clients are not installed: run scripts/test.sh (it runs `npm ci` in tests/js)"
    );
    Ok(js)
}

/// Shared secret of every test gateway.
pub const JWT_SECRET: &str = "herald-test-secret-0123456789abcdef";

pub use herald_testkit::{Broker, free_port, init_logging, retry, unique, wait_until};

/// Mint a test token.
pub fn token(account: &str, sub: &str, role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    encode(
        &Header::default(),
        &json!({"sub": sub, "account_id": account, "role": role, "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encodable claims")
}

/// Broker + producer + gateway for one test.
pub struct Stack {
    /// The broker.
    pub broker: Broker,
    /// Topic prefix of this test.
    pub prefix: String,
    /// The producer.
    pub producer: ProducerHandle,
    /// The gateway.
    pub gateway: GatewayHandle,
    /// HTTP client.
    pub http: reqwest::Client,
    /// How the topics were created.
    pub layout: TopicLayout,
    kafka_producer: std::sync::OnceLock<rdkafka::producer::FutureProducer>,
    shutdown: CancellationToken,
}

/// Options for [`Stack::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra gateway flags.
    pub gateway_args: Vec<String>,
    /// Extra producer flags.
    pub producer_args: Vec<String>,
    /// Run on a Kafka cluster of the test's own, started with these
    /// options, instead of the shared broker (to kill, restart or
    /// reconfigure it).
    pub own_kafka: Option<herald_testkit::kafka::Options>,
    /// How the stack's topics are created (default: 2 partitions, 1 replica).
    pub topics: Option<TopicLayout>,
}

impl Stack {
    /// Start everything with defaults.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with(StackOptions::default()).await
    }

    /// Start everything.
    pub async fn start_with(opts: StackOptions) -> anyhow::Result<Stack> {
        init_logging();
        let broker = match opts.own_kafka {
            Some(o) => Broker::own(o).await?,
            None => Broker::start().await?,
        };
        let prefix = unique("t") + ".";
        let layout = opts.topics.unwrap_or_else(|| TopicLayout::partitions(2));
        create_topics(&broker.bootstrap, &prefix, &layout).await?;

        let shutdown = CancellationToken::new();
        let mut producer_args: Vec<String> = [
            "herald-producer",
            "--kafka-brokers",
            &broker.bootstrap,
            "--topic-prefix",
            &prefix,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            // Tests publish without credentials; the API's own auth has its tests.
            "--allow-unauthenticated",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        producer_args.extend(opts.producer_args);
        let producer = herald_producer::start(
            ProducerConfig::from_args(producer_args).map_err(|e| anyhow::anyhow!("{e}"))?,
            shutdown.clone(),
        )
        .await?;
        let mut args = vec!["herald-gateway".to_owned()];
        args.extend(gateway_flags(&broker.bootstrap, &prefix));
        args.extend(opts.gateway_args);
        let gateway = herald_gateway::start(
            GatewayConfig::from_args(args).map_err(|e| anyhow::anyhow!("{e}"))?,
            shutdown.clone(),
        )
        .await?;
        let stack = Stack {
            broker,
            prefix,
            layout,
            producer,
            gateway,
            http: reqwest::Client::new(),
            kafka_producer: std::sync::OnceLock::new(),
            shutdown,
        };
        stack.wait_ready(stack.gateway.ops_addr).await?;
        stack.wait_ready(stack.producer.ops_addr).await?;
        Ok(stack)
    }

    async fn wait_ready(&self, ops: SocketAddr) -> anyhow::Result<()> {
        let url = format!("http://{ops}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{url} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// WebSocket URL of a gateway path.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.gateway.ws_addr, path)
    }

    /// Producer events URL.
    pub fn events_url(&self) -> String {
        format!("http://{}/v1/events", self.producer.addr)
    }

    /// POST events; returns status and JSON body.
    pub async fn post_events(&self, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self.http.post(self.events_url()).json(body).send().await?;
        let status = r.status().as_u16();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// POST events as part of the trace `traceparent` and require a 200.
    pub async fn publish_traced(&self, body: &Value, traceparent: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .post(self.events_url())
            .header("traceparent", traceparent)
            .json(body)
            .send()
            .await?;
        if r.status() != 200 {
            bail!("publish failed with {}", r.status());
        }
        Ok(())
    }

    /// POST events and require a 200.
    pub async fn publish(&self, body: &Value) -> anyhow::Result<Value> {
        let (status, body) = self.post_events(body).await?;
        if status != 200 {
            bail!("publish failed with {status}: {body}");
        }
        Ok(body)
    }

    /// The gateway's metrics text.
    pub async fn gateway_metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://{}/metrics", self.gateway.ops_addr))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Create this stack's topics (again, e.g. after they were deleted).
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        create_topics(&self.broker.bootstrap, &self.prefix, &self.layout).await
    }

    /// Names of this stack's topics (every family's and the identities').
    pub fn topics(&self) -> Vec<String> {
        stack_topics(&self.prefix).0
    }

    /// Whether the gateway's `/readyz` answers 200.
    pub async fn gateway_ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.gateway.ops_addr);
        matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// Gateway arguments for another pod of this stack (ports chosen by the OS).
    pub fn gateway_args(&self) -> Vec<String> {
        gateway_flags(&self.broker.bootstrap, &self.prefix)
    }

    /// Produce envelopes straight to Kafka (as a backend would without the
    /// producer service), in order; returns (topic, partition, offset) of each.
    pub async fn produce(&self, events: &[Value]) -> anyhow::Result<Vec<(String, i32, i64)>> {
        use rdkafka::{
            message::{Header, OwnedHeaders},
            producer::{FutureProducer, FutureRecord},
        };
        let producer: FutureProducer = match self.kafka_producer.get() {
            Some(p) => p.clone(),
            None => {
                let mut cfg = KafkaArgs::for_brokers(&self.broker.bootstrap).client_config()?;
                cfg.set("enable.idempotence", "true")
                    .set("linger.ms", "1")
                    .set("message.timeout.ms", "15000");
                let p: FutureProducer = cfg.create()?;
                self.kafka_producer.get_or_init(|| p).clone()
            }
        };
        // Every record is handed to the producer first, then the
        // acknowledgements are awaited in order (idempotence keeps the
        // order per partition): thousands of events take milliseconds.
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let mut e = e.clone();
            if e.get("id").is_none() {
                e["id"] = Value::from(uuid::Uuid::new_v4().to_string());
            }
            let ty = e["type"].as_str().unwrap_or_default().to_owned();
            let account = e["account_id"].as_str().unwrap_or_default().to_owned();
            let family = herald_schemas::family_of(&ty).context("unknown event type")?;
            let topic = family.topic(&self.prefix);
            let payload = e.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "type",
                    value: Some(ty.as_str()),
                })
                .insert(Header {
                    key: "account_id",
                    value: Some(account.as_str()),
                });
            let record = FutureRecord::to(&topic)
                .key(&account)
                .payload(&payload)
                .headers(headers);
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            pending.push((topic, delivery));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (topic, delivery) in pending {
            let d = delivery
                .await
                .map_err(|_| anyhow::anyhow!("the producer went away"))?
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            out.push((topic, d.partition, d.offset));
        }
        Ok(out)
    }

    /// Delete the records of `topic`/`partition` before `before` (Kafka's
    /// DeleteRecords: the log start moves there, as retention would move it).
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: i32,
        before: i64,
    ) -> anyhow::Result<()> {
        use rdkafka::{
            Offset, TopicPartitionList,
            admin::{AdminClient, AdminOptions},
            client::DefaultClientContext,
        };
        let admin: AdminClient<DefaultClientContext> =
            KafkaArgs::for_brokers(&self.broker.bootstrap)
                .client_config()?
                .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(before))?;
        let done = admin
            .delete_records(
                &tpl,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for e in done.elements() {
            if let Err(err) = e.error() {
                bail!("DeleteRecords {topic}/{partition} before {before}: {err}");
            }
        }
        Ok(())
    }

    /// Write an identity for an opaque token straight to the identities
    /// topic; returns the record's offset.
    pub async fn put_identity(&self, token: &str, record: &Value) -> anyhow::Result<i64> {
        self.write_identity(token, Some(record.to_string())).await
    }

    /// Revoke an opaque token (tombstone); returns the record's offset.
    pub async fn revoke_identity(&self, token: &str) -> anyhow::Result<i64> {
        self.write_identity(token, None).await
    }

    async fn write_identity(&self, token: &str, value: Option<String>) -> anyhow::Result<i64> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = KafkaArgs::for_brokers(&self.broker.bootstrap)
            .client_config()?
            .create()?;
        let topic = herald_schemas::identities_topic(&self.prefix);
        let key = herald_schemas::token_key(token);
        let mut record: FutureRecord<'_, String, String> = FutureRecord::to(&topic).key(&key);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        let delivered = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        Ok(delivered.offset)
    }

    /// Stop producer and gateway, and delete the topics from a shared broker.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.gateway.stopped().await;
        self.producer.stopped().await;
        if self.broker.is_shared() {
            let mut kafka = KafkaArgs::for_brokers(&self.broker.bootstrap);
            kafka.topic_prefix = self.prefix.clone();
            // Hygiene only: a run's broker is thrown away at its end anyway.
            let _ =
                herald_runtime::kafka::delete_topics(&kafka, &stack_topics(&self.prefix).0).await;
        }
    }
}

/// The flags of a test gateway on `bootstrap` under `prefix` (ports chosen
/// by the OS).
fn gateway_flags(bootstrap: &str, prefix: &str) -> Vec<String> {
    [
        "--kafka-brokers",
        bootstrap,
        "--topic-prefix",
        prefix,
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--jwt-secret",
        JWT_SECRET,
        "--metadata-refresh-secs",
        "2",
        "--drain-secs",
        "2",
        // Tests stop gateways at once; the drain test sets its own delay.
        "--drain-delay-secs",
        "0",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Every topic of a stack under `prefix`, and the compacted ones among them.
fn stack_topics(prefix: &str) -> (Vec<String>, Vec<String>) {
    let mut topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(prefix)).collect();
    let identities = herald_schemas::identities_topic(prefix);
    topics.push(identities.clone());
    (topics, vec![identities])
}

/// Create a stack's topics (retrying while a broker warms up).
async fn create_topics(bootstrap: &str, prefix: &str, layout: &TopicLayout) -> anyhow::Result<()> {
    let mut kafka = KafkaArgs::for_brokers(bootstrap);
    kafka.topic_prefix = prefix.to_owned();
    let (topics, compacted) = stack_topics(prefix);
    retry(Duration::from_secs(30), || {
        herald_runtime::kafka::ensure_topics(&kafka, &topics, &compacted, layout)
    })
    .await
}

/// A second gateway pod as a separate OS process (the `herald-gateway`
/// binary built next to the test executable); killed on drop.
pub struct GatewayProcess {
    /// The child.
    pub child: Child,
    /// WebSocket address.
    pub ws_addr: SocketAddr,
    /// Ops address.
    pub ops_addr: SocketAddr,
}

impl GatewayProcess {
    /// Start `herald-gateway` with `args` on free ports and wait for `/readyz`.
    pub async fn start(args: Vec<String>) -> anyhow::Result<GatewayProcess> {
        Self::start_on(args, free_port()?).await
    }

    /// Start on a given WebSocket port (to restart a pod in place).
    pub async fn start_on(mut args: Vec<String>, ws: u16) -> anyhow::Result<GatewayProcess> {
        let bin = bin_path("herald-gateway")?;
        let ops = free_port()?;
        for (flag, port) in [("--listen", ws), ("--ops-listen", ops)] {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args[i + 1] = format!("127.0.0.1:{port}");
            }
        }
        let child = Command::new(&bin)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let p = GatewayProcess {
            child,
            ws_addr: format!("127.0.0.1:{ws}").parse()?,
            ops_addr: format!("127.0.0.1:{ops}").parse()?,
        };
        let http = reqwest::Client::new();
        let url = format!("http://{}/readyz", p.ops_addr);
        retry(Duration::from_secs(30), || async {
            let r = http.get(&url).send().await?;
            anyhow::ensure!(r.status().is_success(), "not ready");
            Ok(())
        })
        .await?;
        Ok(p)
    }

    /// Send SIGTERM (graceful drain).
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("gateway already exited")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// WebSocket URL of a path on this pod.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws_addr, path)
    }
}

/// Path of a workspace binary next to the running test executable.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("test executable has no target dir")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built (scripts/test.sh builds it: `cargo build --workspace --bins`)",
        path.display()
    );
    Ok(path)
}

/// An Airy `/events`-style `message.created` event.
pub fn airy_message(account: &str, n: u64) -> Value {
    json!({
        "type": "message.created",
        "account_id": account,
        "payload": {
            "conversation_id": format!("conv-{account}"),
            "channel_id": "chan-1",
            "message": {
                "id": format!("m-{account}-{n}"),
                "content": {"text": format!("hello {n}")},
                "delivery_state": "delivered",
                "from_contact": true,
                "sent_at": "2026-11-25T10:00:00.000Z",
                "source": "facebook",
                "sender": {"id": "github:1"}
            }
        }
    })
}
