//! Test harness for Herald's cross-service tests.
//!
//! [`Broker`] gives each test a real Kafka-protocol broker: the cluster named
//! by `HERALD_TEST_KAFKA=host:port` when set, otherwise a `tansu` broker
//! (in-memory storage) started on a free loopback port and killed when the
//! test ends. `scripts/test.sh` installs tansu when it is missing. There is
//! no silent skip: without a broker the harness fails with instructions.
//!
//! [`Stack`] adds the producer and the gateway, in-process, on free ports,
//! with a per-test topic prefix so tests sharing a cluster never interfere.

pub mod cable;
pub mod stomp;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use herald_gateway::{GatewayConfig, GatewayHandle};
use herald_producer::{ProducerConfig, ProducerHandle};
use herald_runtime::KafkaArgs;
use herald_schemas::Family;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Shared secret of every test gateway.
pub const JWT_SECRET: &str = "herald-test-secret-0123456789abcdef";

/// A real broker for one test.
pub struct Broker {
    /// `host:port` bootstrap address.
    pub bootstrap: String,
    child: Option<Child>,
}

impl Broker {
    /// The external cluster, or a fresh tansu broker.
    pub async fn start() -> anyhow::Result<Broker> {
        if let Ok(addr) = std::env::var("HERALD_TEST_KAFKA")
            && !addr.trim().is_empty()
        {
            return Ok(Broker {
                bootstrap: addr,
                child: None,
            });
        }
        let bin = herald_runtime::tansu::require("set HERALD_TEST_KAFKA=host:port")?;
        // A port can be taken between probing and binding; retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let child = spawn_tansu(&bin, port)?;
            let mut broker = Broker {
                bootstrap: format!("127.0.0.1:{port}"),
                child: Some(child),
            };
            match broker.wait_listening(Duration::from_secs(20)).await {
                Ok(()) => return Ok(broker),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("broker did not start")))
    }

    async fn wait_listening(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("tansu exited early with {status}");
            }
            if tokio::net::TcpStream::connect(&self.bootstrap)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tansu did not listen on {} in time", self.bootstrap);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the managed broker (simulates an outage).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Start a managed broker again on the same address (in-memory storage:
    /// it comes back empty, as after losing a single-node cluster's disk).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let bin = herald_runtime::tansu::find(None).context("no tansu binary")?;
        let port: u16 = self
            .bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the broker's address has no port")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let child = spawn_tansu(&bin, port)?;
            self.child = Some(child);
            match self.wait_listening(Duration::from_secs(5)).await {
                Ok(()) => return Ok(()),
                // The port may linger a moment after the kill.
                Err(_) if Instant::now() < deadline => self.kill().await,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A tansu broker on `127.0.0.1:port` (in-memory storage), killed with its handle.
fn spawn_tansu(bin: &std::path::Path, port: u16) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(herald_runtime::tansu::broker_args(port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))
}

/// A loopback port free right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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
    kafka_producer: std::sync::OnceLock<rdkafka::producer::FutureProducer>,
    shutdown: CancellationToken,
}

/// Options for [`Stack::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra gateway flags.
    pub gateway_args: Vec<String>,
}

impl Stack {
    /// Start everything with defaults.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with(StackOptions::default()).await
    }

    /// Start everything.
    pub async fn start_with(opts: StackOptions) -> anyhow::Result<Stack> {
        init_logging();
        let broker = Broker::start().await?;
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut kafka = KafkaArgs::for_brokers(&broker.bootstrap);
        kafka.topic_prefix = prefix.clone();
        let mut topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(&prefix)).collect();
        let identities = herald_schemas::identities_topic(&prefix);
        topics.push(identities.clone());
        retry(Duration::from_secs(20), || {
            herald_runtime::kafka::ensure_topics(
                &kafka,
                &topics,
                std::slice::from_ref(&identities),
                2,
            )
        })
        .await?;

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
                // Tests publish without credentials; the API's own auth has its tests.
                "--allow-unauthenticated",
            ])
            .map_err(|e| anyhow::anyhow!("{e}"))?,
            shutdown.clone(),
        )
        .await?;
        let mut args: Vec<String> = [
            "herald-gateway",
            "--kafka-brokers",
            &broker.bootstrap,
            "--topic-prefix",
            &prefix,
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
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(opts.gateway_args);
        let gateway = herald_gateway::start(
            GatewayConfig::from_args(args).map_err(|e| anyhow::anyhow!("{e}"))?,
            shutdown.clone(),
        )
        .await?;
        let stack = Stack {
            broker,
            prefix,
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

    /// Forget the cached Kafka producer (its idempotence state is tied to
    /// the broker it talked to; needed after a broker restart).
    pub fn reset_producer(&mut self) {
        self.kafka_producer = std::sync::OnceLock::new();
    }

    /// Create this stack's topics (again, e.g. after a broker restart).
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        let mut kafka = KafkaArgs::for_brokers(&self.broker.bootstrap);
        kafka.topic_prefix = self.prefix.clone();
        let mut topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(&self.prefix)).collect();
        let identities = herald_schemas::identities_topic(&self.prefix);
        topics.push(identities.clone());
        retry(Duration::from_secs(20), || {
            herald_runtime::kafka::ensure_topics(
                &kafka,
                &topics,
                std::slice::from_ref(&identities),
                2,
            )
        })
        .await
    }

    /// Whether the gateway's `/readyz` answers 200.
    pub async fn gateway_ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.gateway.ops_addr);
        matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// Gateway arguments for another pod of this stack (ports chosen by the OS).
    pub fn gateway_args(&self) -> Vec<String> {
        [
            "--kafka-brokers",
            &self.broker.bootstrap,
            "--topic-prefix",
            &self.prefix,
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
        ]
        .into_iter()
        .map(String::from)
        .collect()
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
        let mut out = Vec::with_capacity(events.len());
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
            let d = producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            out.push((topic, d.partition, d.offset));
        }
        Ok(out)
    }

    /// Write an identity for an opaque token straight to the identities topic.
    pub async fn put_identity(&self, token: &str, record: &Value) -> anyhow::Result<()> {
        self.write_identity(token, Some(record.to_string())).await
    }

    /// Revoke an opaque token (tombstone).
    pub async fn revoke_identity(&self, token: &str) -> anyhow::Result<()> {
        self.write_identity(token, None).await
    }

    async fn write_identity(&self, token: &str, value: Option<String>) -> anyhow::Result<()> {
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
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// Stop producer and gateway.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.gateway.stopped().await;
        self.producer.stopped().await;
    }
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

/// Retry an async operation until it succeeds or `within` passes.
pub async fn retry<F, Fut, T>(within: Duration, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Log to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
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
