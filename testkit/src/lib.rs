//! The real services Herald is tested and benchmarked against, started by
//! the tests themselves on loopback: Apache Kafka ([`kafka`]: one KRaft
//! broker, or a cluster for failover), PostgreSQL ([`postgres`]) and nginx
//! ([`nginx`], the shipped proxy configuration).
//!
//! A whole test run shares one broker and one database server, started by
//! `herald-test-services` (see `scripts/test.sh`) and named by
//! `HERALD_TEST_KAFKA` and `HERALD_TEST_POSTGRES`; a test run some other way
//! (plain `cargo test`) starts its own. Tests that kill, restart or
//! reconfigure brokers always start their own [`kafka::Cluster`].
//! Nothing is mocked and nothing is skipped: without Java, Maven or the
//! PostgreSQL binaries, the error says what to install or set.

pub mod docker;
pub mod kafka;
pub mod nginx;
pub mod postgres;
pub mod process;

use std::time::{Duration, Instant};

/// The Kafka cluster one test or benchmark runs on: the run's shared Apache
/// Kafka broker ([`KAFKA_ENV`], started by `scripts/test.sh`), or one of its
/// own (a fresh single broker when the variable is unset, or a cluster the
/// test asked for to kill and restart), or one the caller names
/// ([`Broker::external`]) or runs as a child process ([`Broker::process`]:
/// tansu). The one broker start-up type of `tests/`, `producer/tests` and
/// the load generator (`herald-loadgen --kafka`, `--broker`).
pub struct Broker {
    /// `host:port,...` bootstrap servers.
    pub bootstrap: String,
    kafka: Kafka,
}

impl Broker {
    /// The shared cluster (or, outside `scripts/test.sh`, a fresh broker).
    pub async fn start() -> anyhow::Result<Broker> {
        let kafka = Kafka::shared().await?;
        Ok(Broker {
            bootstrap: kafka.bootstrap(),
            kafka,
        })
    }

    /// A cluster of this test's own, which it may kill and restart.
    pub async fn own(options: kafka::Options) -> anyhow::Result<Broker> {
        let cluster = kafka::Cluster::start(options).await?;
        Ok(Broker {
            bootstrap: cluster.bootstrap(),
            kafka: Kafka::Own(Box::new(cluster)),
        })
    }

    /// A single broker of this test's own.
    pub async fn start_own() -> anyhow::Result<Broker> {
        let cluster = kafka::Cluster::single().await?;
        Ok(Broker {
            bootstrap: cluster.bootstrap(),
            kafka: Kafka::Own(Box::new(cluster)),
        })
    }

    /// A running cluster at `bootstrap` (`host:port,...`), never stopped here.
    pub fn external(bootstrap: &str) -> Broker {
        Broker {
            bootstrap: bootstrap.to_owned(),
            kafka: Kafka::External(bootstrap.to_owned()),
        }
    }

    /// A Kafka-protocol broker run as a child process, `program args`, that
    /// listens on `127.0.0.1:port` (tansu: the caller finds the binary and
    /// its arguments). It runs under the same watchdog as every test
    /// service ([`process::Supervised`]), its output in a log file of its
    /// own; this waits until it accepts connections, and it is stopped on
    /// drop.
    pub async fn process(
        name: &str,
        program: &std::path::Path,
        args: &[String],
        port: u16,
    ) -> anyhow::Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("herald-broker-")
            .tempdir()?;
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().cloned());
        let spec = process::Spec {
            argv,
            cwd: dir.path().to_path_buf(),
            env: vec![],
            log: dir.path().join(format!("{name}.log")),
            stop_signal: "KILL",
        };
        let service = process::Supervised::spawn(&spec).await?;
        let bootstrap = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&bootstrap).await.is_err() {
            if !service.alive() {
                anyhow::bail!(
                    "{name} exited before listening on {bootstrap}: {}",
                    service.log_tail(20)
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} is not listening on {bootstrap} after 20 s: {}",
                service.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Broker {
            bootstrap: bootstrap.clone(),
            kafka: Kafka::Process(Box::new(BrokerProcess {
                name: name.to_owned(),
                bootstrap,
                service,
                _dir: dir,
            })),
        })
    }

    /// What runs the broker, for reports: `Apache Kafka <version>`, the
    /// child process's name, or `external <bootstrap>`.
    pub fn describe(&self) -> String {
        match &self.kafka {
            Kafka::External(a) => format!("external {a}"),
            Kafka::Own(_) => format!("Apache Kafka {}", kafka::version()),
            Kafka::Process(p) => p.name.clone(),
        }
    }

    /// The cluster, when this test owns it.
    pub fn cluster(&mut self) -> anyhow::Result<&mut kafka::Cluster> {
        self.kafka.own().ok_or_else(|| {
            anyhow::anyhow!(
                "this test shares the run's broker; start a broker of its own to stop it"
            )
        })
    }

    /// Whether this is the run's shared cluster (not the test's own).
    pub fn is_shared(&self) -> bool {
        matches!(self.kafka, Kafka::External(_))
    }

    /// Process id of node `id` of the test's own cluster (of the child
    /// process for [`Broker::process`]), while it runs.
    pub fn pid(&self, id: u32) -> Option<u32> {
        match &self.kafka {
            Kafka::Own(c) => c.pid(id),
            Kafka::Process(p) => Some(p.service.pid()),
            Kafka::External(_) => None,
        }
    }

    /// `kill -9` every node of the test's own cluster (an outage).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let c = self.cluster()?;
        for id in 1..=c.len() as u32 {
            c.kill(id).await;
        }
        Ok(())
    }

    /// Start every node again with the logs they left on disk.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.cluster()?.restart_all().await
    }
}

/// Log to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

/// Environment variable naming an existing Kafka cluster (`host:port,...`).
pub const KAFKA_ENV: &str = "HERALD_TEST_KAFKA";
/// Environment variable naming an existing PostgreSQL database (a URL).
pub const POSTGRES_ENV: &str = "HERALD_TEST_POSTGRES";

/// The Kafka cluster of a test: the shared one, or one of its own.
#[derive(Debug)]
pub enum Kafka {
    /// Named by [`KAFKA_ENV`].
    External(String),
    /// Started for this test (stopped on drop).
    Own(Box<kafka::Cluster>),
    /// A Kafka-protocol broker process started by [`Broker::process`]
    /// (stopped on drop).
    Process(Box<BrokerProcess>),
}

/// A broker process of [`Broker::process`].
#[derive(Debug)]
pub struct BrokerProcess {
    /// What it is (`tansu`).
    name: String,
    /// `127.0.0.1:<port>`.
    bootstrap: String,
    service: process::Supervised,
    _dir: tempfile::TempDir,
}

impl Kafka {
    /// The cluster named by [`KAFKA_ENV`], else a fresh single broker.
    pub async fn shared() -> anyhow::Result<Kafka> {
        match env(KAFKA_ENV) {
            Some(addr) => Ok(Kafka::External(addr)),
            None => Ok(Kafka::Own(Box::new(kafka::Cluster::single().await?))),
        }
    }

    /// Bootstrap servers.
    pub fn bootstrap(&self) -> String {
        match self {
            Kafka::External(a) => a.clone(),
            Kafka::Own(c) => c.bootstrap(),
            Kafka::Process(p) => p.bootstrap.clone(),
        }
    }

    /// The cluster, when this test started it.
    pub fn own(&mut self) -> Option<&mut kafka::Cluster> {
        match self {
            Kafka::External(_) | Kafka::Process(_) => None,
            Kafka::Own(c) => Some(c),
        }
    }
}

/// The PostgreSQL database of a test: the shared one, or a server of its own.
#[derive(Debug)]
pub enum Database {
    /// Named by [`POSTGRES_ENV`].
    External(String),
    /// Started for this test (stopped on drop).
    Own(Box<postgres::Postgres>),
}

impl Database {
    /// The database named by [`POSTGRES_ENV`], else a fresh server.
    pub async fn shared() -> anyhow::Result<Database> {
        match env(POSTGRES_ENV) {
            Some(url) => Ok(Database::External(url)),
            None => Ok(Database::Own(Box::new(postgres::Postgres::start().await?))),
        }
    }

    /// Connection URL.
    pub fn url(&self) -> &str {
        match self {
            Database::External(u) => u,
            Database::Own(p) => p.url(),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `n` distinct loopback ports free right now.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Below the kernel's ephemeral range (32768+ by default): a port the OS
    // hands out for `:0` may be taken by any outgoing connection (a client
    // of the test, Kafka's own) between this probe and the server binding
    // it. Every listener is held until all are chosen, so none repeats.
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n.saturating_mul(1000).max(1000) {
        if listeners.len() == n {
            break;
        }
        let port = 10_000 + (uuid::Uuid::new_v4().as_u128() % 22_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    anyhow::ensure!(
        listeners.len() == n,
        "no {n} free loopback ports in 10000..32000"
    );
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A loopback port free right now (outside the ephemeral range).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// A short unique name (`prefix` and ten hex digits).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
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
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Wait until `check` returns true, failing with `what` after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_cluster_is_only_named() {
        let b = Broker::external("127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!(b.bootstrap, "127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!(b.describe(), "external 127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!(b.pid(1), None);
        assert!(b.is_shared());
    }

    #[tokio::test]
    async fn a_broker_process_serves_kafka_and_stops_on_drop() -> anyhow::Result<()> {
        let bin = herald_runtime::tansu::require("set HERALD_TANSU_BIN")?;
        let port = free_port()?;
        let mut broker = Broker::process(
            "tansu",
            &bin,
            &herald_runtime::tansu::broker_args(port),
            port,
        )
        .await?;
        assert_eq!(broker.bootstrap, format!("127.0.0.1:{port}"));
        assert_eq!(broker.describe(), "tansu");
        assert!(!broker.is_shared());
        assert!(
            broker.cluster().is_err(),
            "not a cluster to kill and restart"
        );
        let pid = broker.pid(1).expect("the process's pid");
        assert!(process::process_running(pid));
        // It speaks Kafka: a metadata request is answered.
        let b = broker.bootstrap.clone();
        let brokers = tokio::task::spawn_blocking(move || kafka::registered_brokers(&b)).await??;
        assert!(!brokers.is_empty());
        drop(broker);
        wait_until(
            Duration::from_secs(10),
            "the broker process to stop",
            || async move { !process::process_running(pid) },
        )
        .await
    }

    #[tokio::test]
    async fn a_broker_process_that_exits_is_an_error() {
        let err = Broker::process(
            "false",
            std::path::Path::new("/bin/false"),
            &[],
            free_port().unwrap(),
        )
        .await
        .err()
        .expect("an error");
        assert!(
            format!("{err:#}").contains("false exited before listening"),
            "{err:#}"
        );
    }
}
