//! Apache Kafka on loopback: one KRaft broker (controller and broker in one
//! process) or a small cluster of them, with on-disk logs in a temp dir, so
//! tests can kill, restart and fail over real brokers.
//!
//! The broker is the pinned release of `kafka/pom.xml`, resolved from Maven
//! Central by `mvn dependency:copy-dependencies` once and cached under
//! `~/.cache/herald/kafka-<version>/` (`HERALD_CACHE_DIR` moves the cache).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::bail;
use base64::Engine as _;

use crate::process::{Spec, Supervised, log_tail, process_running, wait_listening};

/// The pom naming the Apache Kafka release (and its logging binding).
pub const POM: &str = include_str!("../kafka/pom.xml");

/// The pinned Apache Kafka version (`kafka.version` of [`POM`]).
pub fn version() -> &'static str {
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(v, _)| v.trim())
        .unwrap_or("unknown")
}

/// Why Apache Kafka cannot run here, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No Java runtime.
    #[error(
        "Apache Kafka {version} needs Java 17 or newer and none was found (JAVA_HOME, or `java` on PATH): \
         install a JDK (Debian: `apt-get install -y openjdk-17-jre-headless`) \
         or point the tests at a running cluster with HERALD_TEST_KAFKA=host:port"
    )]
    NoJava {
        /// The pinned version.
        version: &'static str,
    },
    /// Java too old.
    #[error(
        "Apache Kafka {version} needs Java 17 or newer; {java} is Java {found}: set JAVA_HOME to a newer JDK \
         or set HERALD_TEST_KAFKA=host:port"
    )]
    OldJava {
        /// The pinned version.
        version: &'static str,
        /// The runtime found.
        java: String,
        /// Its major version.
        found: u32,
    },
    /// No Maven to resolve the jars.
    #[error(
        "Apache Kafka {version} is not in the cache ({cache}) and Maven is not installed to fetch it: \
         install Maven (Debian: `apt-get install -y maven`) or set HERALD_TEST_KAFKA=host:port"
    )]
    NoMaven {
        /// The pinned version.
        version: &'static str,
        /// Where the jars would be.
        cache: String,
    },
    /// Maven failed.
    #[error("resolving Apache Kafka {version} from Maven Central failed:\n{output}")]
    Resolve {
        /// The pinned version.
        version: &'static str,
        /// What Maven printed.
        output: String,
    },
    /// Anything else (file system).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A Java runtime and the jars of the pinned broker.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The `java` binary.
    pub java: PathBuf,
    /// Directory holding every jar the broker needs.
    pub libs: PathBuf,
}

impl Runtime {
    /// Find Java and the cached jars, resolving them with Maven on first use.
    /// Blocking (Maven can take a minute on an empty cache).
    pub fn locate() -> Result<Runtime, SetupError> {
        let java = find_java()?;
        let libs = resolve_jars()?;
        Ok(Runtime { java, libs })
    }

    /// [`Runtime::locate`] off the async threads.
    pub async fn locate_async() -> anyhow::Result<Runtime> {
        Ok(tokio::task::spawn_blocking(Runtime::locate).await??)
    }

    fn classpath(&self) -> String {
        format!("{}/*", self.libs.display())
    }
}

/// Herald's cache directory (`HERALD_CACHE_DIR`, else `~/.cache/herald`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HERALD_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/herald")
}

fn find_java() -> Result<PathBuf, SetupError> {
    let version = version();
    let candidates = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("java"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    for java in candidates.filter(|p| p.is_file()) {
        let Ok(out) = std::process::Command::new(&java).arg("-version").output() else {
            continue;
        };
        // `openjdk version "17.0.15" 2025-04-15` (or `"1.8.0_..."` for 8).
        let text = String::from_utf8_lossy(&out.stderr);
        let major = text
            .split('"')
            .nth(1)
            .and_then(|v| {
                let mut parts = v.split('.');
                match parts.next()? {
                    "1" => parts.next(),
                    m => Some(m),
                }
            })
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        if major >= 17 {
            return Ok(java);
        }
        return Err(SetupError::OldJava {
            version,
            java: java.display().to_string(),
            found: major,
        });
    }
    Err(SetupError::NoJava { version })
}

/// The directory of the pinned broker's jars, filled by Maven when missing.
/// Concurrent callers are safe: each resolves into its own directory and
/// the first rename wins.
fn resolve_jars() -> Result<PathBuf, SetupError> {
    let version = version();
    let home = cache_dir().join(format!("kafka-{version}"));
    let libs = home.join("libs");
    if libs.join(".complete").is_file() {
        return Ok(libs);
    }
    let mvn = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mvn"))
                .find(|m| m.is_file())
        })
        .ok_or_else(|| SetupError::NoMaven {
            version,
            cache: libs.display().to_string(),
        })?;
    std::fs::create_dir_all(&home)?;
    let work = tempfile::Builder::new()
        .prefix("resolve-")
        .tempdir_in(&home)?;
    let pom = work.path().join("pom.xml");
    std::fs::write(&pom, POM)?;
    let out_dir = work.path().join("libs");
    let out = std::process::Command::new(mvn)
        .arg("-B")
        .arg("-q")
        .arg("-f")
        .arg(&pom)
        .arg(format!(
            "-Dmaven.repo.local={}",
            cache_dir().join("m2").display()
        ))
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", out_dir.display()))
        .output()?;
    if !out.status.success() || !out_dir.join(format!("kafka_2.13-{version}.jar")).is_file() {
        return Err(SetupError::Resolve {
            version,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    std::fs::write(out_dir.join(".complete"), version)?;
    match std::fs::rename(&out_dir, &libs) {
        Ok(()) => {}
        // Another process finished first; its copy is as good.
        Err(_) if libs.join(".complete").is_file() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(libs)
}

/// How to run a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of nodes, each a KRaft controller and a broker.
    pub nodes: usize,
    /// Java heap of each node, in MiB.
    pub heap_mib: u32,
    /// Broker properties added to (or overriding) the defaults.
    pub properties: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 1,
            heap_mib: 768,
            properties: Vec::new(),
        }
    }
}

impl Options {
    /// `nodes` nodes with defaults.
    pub fn nodes(nodes: usize) -> Options {
        Options {
            nodes,
            ..Options::default()
        }
    }

    /// Add a broker property.
    pub fn property(mut self, key: &str, value: impl ToString) -> Options {
        self.properties.push((key.to_owned(), value.to_string()));
        self
    }
}

struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    process: Option<Supervised>,
}

impl Node {
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A running Apache Kafka cluster on loopback, stopped on drop.
pub struct Cluster {
    runtime: Runtime,
    options: Options,
    nodes: Vec<Node>,
    // Last field: dropped after the nodes are stopped.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bootstrap", &self.bootstrap())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Cluster {
    /// One broker with default settings.
    pub async fn single() -> anyhow::Result<Cluster> {
        Cluster::start(Options::default()).await
    }

    /// Format and start every node; wait until every broker is registered.
    pub async fn start(options: Options) -> anyhow::Result<Cluster> {
        anyhow::ensure!(options.nodes >= 1, "a cluster needs a node");
        let runtime = Runtime::locate_async().await?;
        // A port can be taken between choosing and binding: try afresh.
        let mut last = None;
        for _ in 0..3 {
            match Cluster::try_start(runtime.clone(), options.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("Apache Kafka did not start")))
    }

    async fn try_start(runtime: Runtime, options: Options) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("herald-kafka-").tempdir()?;
        let ports = crate::free_ports(options.nodes * 2)?;
        let nodes: Vec<Node> = (0..options.nodes)
            .map(|i| Node {
                id: i as u32 + 1,
                port: ports[2 * i],
                controller_port: ports[2 * i + 1],
                dir: dir.path().join(format!("node-{}", i + 1)),
                process: None,
            })
            .collect();
        let mut cluster = Cluster {
            runtime,
            options,
            nodes,
            dir,
        };
        cluster.write_configs()?;
        cluster.format().await?;
        let all: Vec<usize> = (0..cluster.nodes.len()).collect();
        cluster.launch(&all).await?;
        cluster.wait_registered(Duration::from_secs(90)).await?;
        Ok(cluster)
    }

    fn write_configs(&self) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let voters = self
            .nodes
            .iter()
            .map(|nd| format!("{}@127.0.0.1:{}", nd.id, nd.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let rf = n.min(3);
        let isr = n.min(2);
        for node in &self.nodes {
            std::fs::create_dir_all(node.dir.join("data"))?;
            let mut props: Vec<(String, String)> = [
                ("process.roles", "broker,controller".to_owned()),
                ("node.id", node.id.to_string()),
                ("controller.quorum.voters", voters.clone()),
                (
                    "listeners",
                    format!(
                        "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                        node.port, node.controller_port
                    ),
                ),
                (
                    "advertised.listeners",
                    format!("PLAINTEXT://{}", node.address()),
                ),
                ("controller.listener.names", "CONTROLLER".to_owned()),
                ("inter.broker.listener.name", "PLAINTEXT".to_owned()),
                (
                    "listener.security.protocol.map",
                    "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned(),
                ),
                ("log.dirs", node.dir.join("data").display().to_string()),
                ("num.partitions", "1".to_owned()),
                ("default.replication.factor", rf.to_string()),
                ("offsets.topic.replication.factor", rf.to_string()),
                ("transaction.state.log.replication.factor", rf.to_string()),
                ("transaction.state.log.min.isr", isr.to_string()),
                (
                    "share.coordinator.state.topic.replication.factor",
                    rf.to_string(),
                ),
                ("share.coordinator.state.topic.min.isr", isr.to_string()),
                ("group.initial.rebalance.delay.ms", "0".to_owned()),
                // Topics exist because someone created them, as in production
                // set-ups that manage topics; a typo never creates one.
                ("auto.create.topics.enable", "false".to_owned()),
                // Retention and compaction act within seconds, so tests can
                // watch them happen (production brokers check every 5 min).
                ("log.retention.check.interval.ms", "1000".to_owned()),
                ("log.initial.task.delay.ms", "0".to_owned()),
                ("log.cleaner.backoff.ms", "500".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            for (k, v) in &self.options.properties {
                props.retain(|(pk, _)| pk != k);
                props.push((k.clone(), v.clone()));
            }
            let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            std::fs::write(node.dir.join("server.properties"), text)?;
            std::fs::write(node.dir.join("log4j2.properties"), LOG4J2)?;
        }
        Ok(())
    }

    async fn format(&self) -> anyhow::Result<()> {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        let mut jobs = Vec::new();
        for node in &self.nodes {
            let out = tokio::process::Command::new(&self.runtime.java)
                .args(self.jvm_args(node, 256))
                .arg("kafka.tools.StorageTool")
                .args(["format", "-t", &id, "-c"])
                .arg(node.dir.join("server.properties"))
                .output();
            jobs.push(out);
        }
        for (out, node) in futures_util::future::join_all(jobs)
            .await
            .into_iter()
            .zip(&self.nodes)
        {
            let out = out?;
            if !out.status.success() {
                bail!(
                    "formatting Kafka node {} failed: {}{}",
                    node.id,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    fn jvm_args(&self, node: &Node, heap_mib: u32) -> Vec<String> {
        vec![
            format!("-Xms{heap_mib}m"),
            format!("-Xmx{heap_mib}m"),
            "-XX:+UseG1GC".into(),
            "-XX:MaxGCPauseMillis=20".into(),
            "-XX:+ExplicitGCInvokesConcurrent".into(),
            "-Djava.awt.headless=true".into(),
            format!(
                "-Dlog4j2.configurationFile={}",
                node.dir.join("log4j2.properties").display()
            ),
            format!("-Dkafka.logs.dir={}", node.dir.display()),
            "-cp".into(),
            self.runtime.classpath(),
        ]
    }

    /// Start node `i`'s process (without waiting for it).
    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let mut argv = vec![self.runtime.java.display().to_string()];
        argv.extend(self.jvm_args(node, self.options.heap_mib));
        argv.push("kafka.Kafka".into());
        argv.push(node.dir.join("server.properties").display().to_string());
        let spec = Spec {
            argv,
            cwd: node.dir.clone(),
            env: vec![],
            log: node.dir.join("kafka.log"),
            stop_signal: "KILL",
        };
        self.nodes[i].process = Some(Supervised::spawn(&spec).await?);
        Ok(())
    }

    /// Wait until node `i` listens; a node that died or never listens is
    /// killed and its log tail returned in the error.
    async fn wait_listening(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let Some(pid) = node.process.as_ref().map(Supervised::pid) else {
            bail!("Kafka node {} is not running", node.id);
        };
        let waited = wait_listening(&node.address(), Duration::from_secs(90), || {
            process_running(pid)
        })
        .await;
        if let Err(e) = waited {
            let process = self.nodes[i].process.take();
            let tail = process.as_ref().map(|p| p.log_tail(30)).unwrap_or_default();
            if let Some(p) = process {
                p.kill().await;
            }
            bail!("Kafka node {} did not start: {e}\n{tail}", i + 1);
        }
        Ok(())
    }

    /// Start the nodes `which` together (a quorum forms only when enough of
    /// them run) and wait until each listens.
    async fn launch(&mut self, which: &[usize]) -> anyhow::Result<()> {
        for &i in which {
            self.spawn(i).await?;
        }
        for &i in which {
            self.wait_listening(i).await?;
        }
        Ok(())
    }

    /// Every running node's broker is in the cluster metadata.
    pub async fn wait_registered(&self, within: Duration) -> anyhow::Result<()> {
        let want: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.id as i32)
            .collect();
        let bootstrap = self.bootstrap();
        let deadline = Instant::now() + within;
        loop {
            let b = bootstrap.clone();
            let seen = tokio::task::spawn_blocking(move || registered_brokers(&b)).await?;
            if let Ok(ids) = &seen
                && want.iter().all(|w| ids.contains(w))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Kafka brokers {want:?} did not register (saw {seen:?}); last log lines:\n{}",
                    self.log_tails(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `host:port` of every node, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `host:port` of node `id` (1-based, as Kafka's `node.id`).
    pub fn address(&self, id: u32) -> String {
        self.node(id).address()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has a node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn node(&self, id: u32) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Process id of node `id`, while it runs.
    pub fn pid(&self, id: u32) -> Option<u32> {
        self.node(id).process.as_ref().map(Supervised::pid)
    }

    /// `kill -9` node `id` (its logs stay on disk).
    pub async fn kill(&mut self, id: u32) {
        if let Some(p) = self.nodes[(id - 1) as usize].process.take() {
            p.kill().await;
        }
    }

    /// Stop node `id` gracefully (SIGTERM: controlled shutdown).
    pub async fn stop(&mut self, id: u32) {
        if let Some(p) = self.nodes[(id - 1) as usize].process.take() {
            p.stop("TERM", Duration::from_secs(60)).await;
        }
    }

    /// Start node `id` again on its ports with the logs it left on disk,
    /// and wait until it is registered.
    pub async fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.kill(id).await;
        let i = (id - 1) as usize;
        // The old listener can linger a moment after a kill.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.launch(&[i]).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        self.wait_registered(Duration::from_secs(90)).await
    }

    /// Start every stopped node again (a whole cluster's restart: a lone
    /// node of several cannot register before a quorum is back).
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].process.is_none())
            .collect();
        // The old listeners can linger a moment after a kill.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.launch(&stopped).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {
                    for &i in &stopped {
                        if let Some(p) = self.nodes[i].process.take() {
                            p.kill().await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
            }
        }
        self.wait_registered(Duration::from_secs(90)).await
    }

    /// The last lines of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- node {} ---\n{}",
                    n.id,
                    log_tail(&n.dir.join("kafka.log"), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.node(id).dir.join("data")
    }

    /// Where the cluster keeps its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Broker ids in a metadata response from `bootstrap`.
pub(crate) fn registered_brokers(bootstrap: &str) -> anyhow::Result<Vec<i32>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(3))?;
    Ok(md.brokers().iter().map(|b| b.id()).collect())
}

/// Warnings and errors to the node's log, as the distribution's defaults
/// would log them, without the per-request chatter.
const LOG4J2: &str = "\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_pom() {
        let v = version();
        assert!(v.starts_with("4."), "{v}");
        assert!(POM.contains("<artifactId>kafka_2.13</artifactId>"));
    }
}
