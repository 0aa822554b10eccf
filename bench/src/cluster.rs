//! The systems under test, each a child process so its memory and CPU can be
//! read alone: an Apache Kafka broker (or tansu, selectable), the
//! `herald-gateway` release binary, and the raw baseline server (this same
//! binary's hidden `raw-server` command). An external broker or gateway can
//! be named instead.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use herald_runtime::KafkaArgs;
use herald_schemas::Family;
use tokio::process::{Child, Command};

use crate::stamp::Protocol;

pub use herald_testkit::free_port;

/// Which broker the load generator manages when no `--kafka` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManagedBroker {
    /// Apache Kafka (the pinned 4.x release, KRaft, one node, logs on disk).
    #[default]
    Kafka,
    /// tansu, a Kafka-compatible broker from crates.io (in memory).
    Tansu,
}

/// The broker: [`herald_testkit::Broker`], the same start-up type the
/// tests use, started by [`start_broker`].
pub use herald_testkit::Broker;

/// Use `external` when given, else start the `managed` broker on loopback:
/// Apache Kafka through `herald_testkit` (a 2 GiB heap), or tansu as a
/// child process.
pub async fn start_broker(
    external: Option<&str>,
    managed: ManagedBroker,
) -> anyhow::Result<Broker> {
    if let Some(addr) = external {
        return Ok(Broker::external(addr));
    }
    match managed {
        ManagedBroker::Kafka => {
            Broker::own(herald_testkit::kafka::Options {
                heap_mib: 2048,
                ..Default::default()
            })
            .await
        }
        ManagedBroker::Tansu => {
            let bin = herald_runtime::tansu::require("pass --kafka host:port")?;
            let port = free_port()?;
            Broker::process(
                "tansu",
                &bin,
                &herald_runtime::tansu::broker_args(port),
                port,
            )
            .await
        }
    }
}

/// Kafka settings for clients of `broker` under `prefix`.
pub fn kafka_args(broker: &Broker, prefix: &str) -> KafkaArgs {
    let mut k = KafkaArgs::for_brokers(&broker.bootstrap);
    k.topic_prefix = prefix.to_owned();
    k
}

/// The broker's (first node's) pid when it runs here, for its CPU.
pub fn broker_pid(broker: &Broker) -> Option<u32> {
    broker.pid(1)
}

/// Create every family's topic under `prefix` with `partitions` partitions.
pub async fn create_topics(broker: &Broker, prefix: &str, partitions: i32) -> anyhow::Result<()> {
    let kafka = kafka_args(broker, prefix);
    let topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(prefix)).collect();
    let layout = herald_runtime::kafka::TopicLayout::partitions(partitions);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match herald_runtime::kafka::ensure_topics(&kafka, &topics, &[], &layout).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn wait_tcp(addr: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{addr} is not listening");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// The Herald gateway (release binary, child process) fed by Kafka.
    Gateway,
    /// The raw baseline: pre-encoded frames, no Kafka, no protocol logic.
    Raw,
}

/// A running server under test.
pub struct Server {
    /// Which one.
    pub kind: ServerKind,
    /// WebSocket address.
    pub ws_addr: SocketAddr,
    /// Ops address (gateway only).
    pub ops_addr: Option<SocketAddr>,
    /// Raw server control address (raw only).
    pub control_addr: Option<SocketAddr>,
    /// Process id, when known.
    pub pid: Option<u32>,
    child: Option<Child>,
}

/// How to start the gateway.
#[derive(Debug, Clone)]
pub struct GatewayLaunch {
    /// The binary (default: `herald-gateway` next to this executable).
    pub binary: Option<PathBuf>,
    /// Extra flags.
    pub extra_args: Vec<String>,
    /// JWT secret.
    pub jwt_secret: String,
}

/// Path of a binary built next to this one.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("executable has no directory")?
        .join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built: run `cargo build --release -p herald-gateway -p herald-bench` (or pass --gateway-bin)",
        path.display()
    );
    Ok(path)
}

impl Server {
    /// Start `herald-gateway` against `broker` under `prefix`, and wait for `/readyz`.
    pub async fn gateway(
        broker: &Broker,
        prefix: &str,
        launch: &GatewayLaunch,
    ) -> anyhow::Result<Server> {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let ops: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        Server::gateway_at(broker, prefix, launch, ws, ops).await
    }

    /// [`Server::gateway`] on given WebSocket and ops addresses (a new pod
    /// taking the place of one that exited).
    pub async fn gateway_at(
        broker: &Broker,
        prefix: &str,
        launch: &GatewayLaunch,
        ws: SocketAddr,
        ops: SocketAddr,
    ) -> anyhow::Result<Server> {
        let bin = match &launch.binary {
            Some(b) => b.clone(),
            None => sibling_binary("herald-gateway")?,
        };
        let mut args: Vec<String> = vec![
            "--kafka-brokers".into(),
            broker.bootstrap.clone(),
            "--topic-prefix".into(),
            prefix.into(),
            "--listen".into(),
            ws.to_string(),
            "--ops-listen".into(),
            ops.to_string(),
            "--jwt-secret".into(),
            launch.jwt_secret.clone(),
            "--identities".into(),
            "false".into(),
            "--metadata-refresh-secs".into(),
            "2".into(),
        ];
        // Defaults the extra flags may replace (clap refuses a flag twice).
        let mut defaults: Vec<(&str, &str)> = vec![("--drain-delay-secs", "0")];
        // Every load client comes from a handful of loopback addresses: lift
        // the per-address admission limit (when this gateway has one) so it
        // does not cap the run. `--gateway-arg` can set it back.
        let help = Command::new(&bin).arg("--help").output().await?;
        if String::from_utf8_lossy(&help.stdout).contains("--max-connections-per-ip") {
            defaults.push(("--max-connections-per-ip", "0"));
        }
        for (flag, value) in defaults {
            let overridden = launch
                .extra_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if !overridden {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(launch.extra_args.iter().cloned());
        let child = Command::new(&bin)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let server = Server {
            kind: ServerKind::Gateway,
            ws_addr: ws,
            ops_addr: Some(ops),
            control_addr: None,
            pid: child.id(),
            child: Some(child),
        };
        server.wait_ready(Duration::from_secs(60)).await?;
        Ok(server)
    }

    /// An already running gateway.
    pub fn external(ws_addr: SocketAddr, ops_addr: Option<SocketAddr>, pid: Option<u32>) -> Server {
        Server {
            kind: ServerKind::Gateway,
            ws_addr,
            ops_addr,
            control_addr: None,
            pid,
            child: None,
        }
    }

    /// Start the raw baseline server for `protocol`.
    pub async fn raw(protocol: Protocol) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let control: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(exe)
            .args([
                "raw-server",
                "--listen",
                &ws.to_string(),
                "--control",
                &control.to_string(),
            ])
            .args(["--protocol", protocol.as_str()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the raw server")?;
        let server = Server {
            kind: ServerKind::Raw,
            ws_addr: ws,
            ops_addr: None,
            control_addr: Some(control),
            pid: child.id(),
            child: Some(child),
        };
        wait_tcp(&ws.to_string(), Duration::from_secs(10)).await?;
        Ok(server)
    }

    async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let Some(ops) = self.ops_addr else {
            return Ok(());
        };
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = crate::prom::http_get(ops, "/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gateway at {ops} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory now, bytes.
    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(crate::procstat::rss_bytes)
    }

    /// Pause or resume the process (SIGSTOP / SIGCONT), for the ingest
    /// scenario's backlog.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid.context("server pid unknown")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// SIGTERM, as a rolling deploy does, and wait up to `within` for the
    /// process to exit by itself (SIGKILL after that). Its exit status, if
    /// it exited in time.
    pub async fn terminate(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = self.signal("-TERM").await;
        match tokio::time::timeout(within, c.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = c.kill().await;
                None
            }
        }
    }

    /// Stop the process: SIGTERM (the clients are gone, so the drain is
    /// short, and profilers wrapping the binary get to write their output),
    /// then SIGKILL after 20 s.
    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.signal("-TERM").await;
            if tokio::time::timeout(Duration::from_secs(20), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}
