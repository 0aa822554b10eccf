//! Herald against its peers (issue 17): the same load-generator clients and
//! the same load against Herald (fed through Kafka) and against AnyCable,
//! Centrifugo, RabbitMQ Web-STOMP and Rails ActionCable, each driven with
//! its own protocol and publish path, one system after the other in one run.
//!
//! Each peer runs as a child process of the load generator, on loopback,
//! from the binaries `scripts/peers.sh install` put under `--peers-dir`, and
//! is stopped (with its whole process group) when its measurement ends. Its
//! memory and CPU are read from `/proc` over its process tree (puma's
//! master and workers, RabbitMQ's beam and helpers).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncWriteExt, BufWriter},
    process::{Child, Command},
};

use crate::{
    client::{self, Conn, Credential, Fleet, Target},
    cluster::{ServerKind, free_port},
    hist::{self, Percentiles},
    procstat,
    publish::{AtomicStop, EventSink, Publisher},
    reconnect,
    resuming::{self, ResumingFleet},
    scenario::{self, Common, Setup},
    stamp::{self, Protocol},
};
use tokio_util::sync::CancellationToken;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Herald's gateway, ActionCable RoomChannel clients, events through Kafka.
    Herald,
    /// anycable-go standalone: ActionCable protocol, JWT identification,
    /// public streams, HTTP broadcasts.
    Anycable,
    /// Centrifugo v6: its JSON protocol, JWT connect, HTTP API publish.
    Centrifugo,
    /// RabbitMQ Web-STOMP: STOMP over WebSocket, STOMP SEND to /topic/<account>.
    Rabbitmq,
    /// Rails ActionCable on puma with the Redis adapter, broadcasts from Ruby.
    Rails,
}

impl System {
    /// Name in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            System::Herald => "Herald",
            System::Anycable => "AnyCable",
            System::Centrifugo => "Centrifugo",
            System::Rabbitmq => "RabbitMQ Web-STOMP",
            System::Rails => "Rails ActionCable",
        }
    }
}

/// How a client speaks to a peer.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    /// Which peer.
    pub system: System,
}

impl PeerTarget {
    /// Whether the protocol has an application-level ping to answer.
    pub fn app_pong(&self) -> bool {
        self.system == System::Centrifugo
    }
}

/// The stream (channel, destination) of an account on every peer.
pub fn stream_of(account: &str) -> String {
    format!("account-{account}")
}

/// Connect, authenticate and subscribe the way `peer`'s own clients do.
pub(crate) async fn handshake(
    peer: &PeerTarget,
    conn: &mut Conn,
    host: &str,
    cred: &Credential,
) -> anyhow::Result<()> {
    let stream = stream_of(&cred.account);
    let (path, protocol) = match peer.system {
        System::Anycable => (
            format!("/cable?jid={}", cred.token),
            Some("actioncable-v1-json"),
        ),
        System::Rails => (
            format!("/cable?token={}", cred.token),
            Some("actioncable-v1-json, actioncable-unsupported"),
        ),
        System::Centrifugo => ("/connection/websocket".to_owned(), None),
        System::Rabbitmq => ("/ws".to_owned(), Some("v12.stomp")),
        System::Herald => bail!("Herald's clients use the Herald protocols"),
    };
    conn.upgrade(&crate::ws::upgrade_request(host, &path, protocol, None))
        .await?;
    match peer.system {
        System::Anycable => {
            let identifier = json!({"channel": "$pubsub", "stream_name": stream}).to_string();
            conn.cable_subscribe(&identifier).await
        }
        System::Rails => {
            conn.cable_subscribe(r#"{"channel":"AccountChannel"}"#)
                .await
        }
        System::Centrifugo => {
            conn.send(&centrifugo_connect(1, &cred.token)).await?;
            let reply = conn.expect(|f| reply_to(f, 1), "connect reply").await?;
            ensure_no_error(&reply)?;
            conn.send(&centrifugo_subscribe(2, &stream)).await?;
            let reply = conn.expect(|f| reply_to(f, 2), "subscribe reply").await?;
            ensure_no_error(&reply)
        }
        System::Rabbitmq => {
            conn.send(&stomp_connect()).await?;
            conn.expect(|f| f.starts_with(b"CONNECTED\n"), "CONNECTED")
                .await?;
            conn.send(&stomp_subscribe(&stream)).await?;
            conn.expect(|f| f.starts_with(b"RECEIPT\n"), "RECEIPT")
                .await?;
            Ok(())
        }
        // Refused before the upgrade.
        System::Herald => Ok(()),
    }
}

/// Centrifugo JSON protocol: connect command `id` with a JWT.
pub fn centrifugo_connect(id: u32, token: &str) -> String {
    json!({"id": id, "connect": {"token": token, "name": "herald-loadgen"}}).to_string()
}

/// Centrifugo JSON protocol: subscribe command `id` to `channel`.
pub fn centrifugo_subscribe(id: u32, channel: &str) -> String {
    json!({"id": id, "subscribe": {"channel": channel}}).to_string()
}

/// Whether a Centrifugo frame (one or more newline-separated replies)
/// holds the reply to command `id`.
pub fn reply_to(frame: &[u8], id: u64) -> bool {
    frame.split(|b| *b == b'\n').any(|line| {
        serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("id")?.as_u64())
            == Some(id)
    })
}

fn ensure_no_error(frame: &[u8]) -> anyhow::Result<()> {
    for line in frame.split(|b| *b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<Value>(line)
            && let Some(e) = v.get("error")
        {
            bail!("refused: {e}");
        }
    }
    Ok(())
}

/// STOMP CONNECT for RabbitMQ (guest, allowed on loopback only; no heart-beats).
pub fn stomp_connect() -> String {
    "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0".into()
}

/// STOMP SUBSCRIBE to an account's topic, with a receipt.
pub fn stomp_subscribe(stream: &str) -> String {
    format!("SUBSCRIBE\nid:sub-0\ndestination:/topic/{stream}\nack:auto\nreceipt:r-0\n\n\0")
}

/// STOMP SEND of `body` to an account's topic.
pub fn stomp_send(stream: &str, body: &str) -> String {
    format!(
        "SEND\ndestination:/topic/{stream}\ncontent-type:application/json\ncontent-length:{}\n\n{body}\0",
        body.len()
    )
}

/// Credentials for `system`: Herald's HS256 tokens; AnyCable's JWT
/// identification wants the identifiers in an `ext` claim.
pub fn credentials(
    system: System,
    connections: usize,
    accounts: usize,
    secret: &str,
) -> anyhow::Result<Vec<Credential>> {
    let mut creds = client::credentials(connections, accounts, secret)?;
    if system == System::Anycable {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let exp = stamp::now_us() / 1_000_000 + 6 * 3600;
        for c in &mut creds {
            let ext = json!({"user_id": c.user, "account_id": c.account}).to_string();
            c.token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &json!({"ext": ext, "exp": exp}),
                &key,
            )?;
        }
    }
    Ok(creds)
}

// ---------------------------------------------------------------------------
// Publishing to a peer.

/// Publishes to a peer through its native path. HTTP publishers run
/// `lanes` keep-alive request loops; account `a` always goes through lane
/// `a % lanes`, so its events stay in order.
pub enum PeerSink {
    /// HTTP (AnyCable broadcast endpoint, Centrifugo API, the Rails app).
    Http {
        /// One queue per lane.
        lanes: Vec<tokio::sync::mpsc::Sender<(String, String)>>,
        /// Requests not answered yet.
        pending: Arc<AtomicU64>,
        /// Requests that failed.
        failed: Arc<AtomicU64>,
    },
    /// A STOMP publisher connection (RabbitMQ).
    Stomp(BufWriter<tokio::net::TcpStream>),
}

impl PeerSink {
    async fn http(system: System, base: String, api_key: Option<String>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()?;
        let pending = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut lanes = Vec::new();
        for _ in 0..16 {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(4096);
            let (client, base, key) = (client.clone(), base.clone(), api_key.clone());
            let (pending, failed) = (pending.clone(), failed.clone());
            tokio::spawn(async move {
                while let Some((stream, payload)) = rx.recv().await {
                    let req = match system {
                        System::Anycable => client
                            .post(format!("{base}/_broadcast"))
                            .header("content-type", "application/json")
                            .body(json!({"stream": stream, "data": payload}).to_string()),
                        System::Centrifugo => client
                            .post(format!("{base}/api/publish"))
                            .header("content-type", "application/json")
                            .header("X-API-Key", key.as_deref().unwrap_or_default())
                            .body(format!(r#"{{"channel":"{stream}","data":{payload}}}"#)),
                        _ => client
                            .post(format!("{base}/broadcast?stream={stream}"))
                            .header("content-type", "application/json")
                            .body(payload),
                    };
                    let ok = match req.send().await {
                        Ok(r) => {
                            let good = r.status().is_success();
                            let body = r.bytes().await.unwrap_or_default();
                            // Centrifugo answers API errors with 200 and an error object.
                            good && memchr::memmem::find(&body, b"\"error\"").is_none()
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    pending.fetch_sub(1, Ordering::Release);
                }
            });
            lanes.push(tx);
        }
        Ok(PeerSink::Http {
            lanes,
            pending,
            failed,
        })
    }

    async fn stomp(addr: SocketAddr) -> anyhow::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut w = BufWriter::with_capacity(64 * 1024, s);
        w.write_all(stomp_connect().as_bytes()).await?;
        w.flush().await?;
        // CONNECTED comes back; nothing else is read (SEND has no receipt).
        let mut head = [0u8; 9];
        tokio::io::AsyncReadExt::read_exact(w.get_mut(), &mut head).await?;
        anyhow::ensure!(&head == b"CONNECTED", "STOMP publisher not connected");
        let mut rest = [0u8; 1];
        while rest[0] != 0 {
            tokio::io::AsyncReadExt::read_exact(w.get_mut(), &mut rest).await?;
        }
        Ok(PeerSink::Stomp(w))
    }

    /// Publish `payload` to `account`.
    pub async fn send(&mut self, a: usize, account: &str, payload: String) -> anyhow::Result<()> {
        let stream = stream_of(account);
        match self {
            PeerSink::Http { lanes, pending, .. } => {
                pending.fetch_add(1, Ordering::Relaxed);
                lanes[a % lanes.len()]
                    .send((stream, payload))
                    .await
                    .context("publisher lane closed")?;
            }
            PeerSink::Stomp(w) => {
                w.write_all(stomp_send(&stream, &payload).as_bytes())
                    .await?
            }
        }
        Ok(())
    }

    /// Push buffered frames out.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if let PeerSink::Stomp(w) = self {
            w.flush().await?;
        }
        Ok(())
    }

    /// Wait until every request was answered (up to 30 s); failures so far.
    pub async fn drain(&self) -> u64 {
        if let PeerSink::Http {
            pending, failed, ..
        } = self
        {
            let t0 = Instant::now();
            while pending.load(Ordering::Acquire) > 0 && t0.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return failed.load(Ordering::Relaxed);
        }
        0
    }
}

// ---------------------------------------------------------------------------
// Running a peer.

/// Where the peers are installed and how to run them.
#[derive(Debug, Clone, clap::Args)]
pub struct PeersArgs {
    /// Systems, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "herald,anycable,centrifugo,rabbitmq,rails"
    )]
    pub systems: Vec<System>,
    /// Scenarios, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "idle,fanout,latency,storm,jitter"
    )]
    pub scenarios: Vec<PeerScenario>,
    /// Subscribed connections per system.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections for Rails ActionCable, if it cannot hold `--connections`.
    #[arg(long)]
    pub rails_connections: Option<usize>,
    /// Connections per stream (account).
    #[arg(long, default_value_t = 100)]
    pub per_stream: usize,
    /// Where `scripts/peers.sh install` put anycable-go and centrifugo.
    #[arg(long, default_value = "~/.cache/herald/peers")]
    pub peers_dir: String,
    /// The Rails app (config.ru, puma.rb).
    #[arg(long, default_value = "bench/peers/rails")]
    pub rails_app: PathBuf,
    /// Events per second of the latency scenario.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Undelivered events allowed per stream in the fan-out closed loop.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Herald's publisher `linger.ms` in the open-loop scenarios (latency,
    /// jitter). 2 is what Herald's producer service sets; the send time is
    /// stamped before the linger, so it is part of the measured latency.
    /// The closed-loop fan-out uses 1.
    #[arg(long, default_value_t = 2)]
    pub herald_linger_ms: u64,
    /// Seconds before each measurement.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Jitter: connections per system (`--connections` when not given).
    #[arg(long)]
    pub jitter_connections: Option<usize>,
    /// Jitter: events published per stream.
    #[arg(long, default_value_t = 120)]
    pub jitter_events: u64,
    /// Jitter: events per second per stream.
    #[arg(long, default_value_t = 2.0)]
    pub jitter_rate: f64,
    /// Jitter: mean seconds between two resets of one client's socket.
    #[arg(long, default_value_t = 15.0)]
    pub jitter_period_secs: f64,
    /// Jitter: seconds offline after a reset (± 10 %).
    #[arg(long, default_value_t = 2.0)]
    pub jitter_offline_secs: f64,
    /// Jitter: seconds to wait, once publishing is over, for every client
    /// to have every event.
    #[arg(long, default_value_t = 60)]
    pub jitter_settle_secs: u64,
}

/// A scenario of the peers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerScenario {
    /// Memory per idle subscribed connection.
    Idle,
    /// Frames per second, closed loop.
    Fanout,
    /// Latency at a fixed rate.
    Latency,
    /// Subscribed connections per second.
    Storm,
    /// Clients whose sockets are reset about every 15 s resume from their
    /// last position (Herald, AnyCable, Centrifugo: the peers with recovery).
    Jitter,
}

impl PeerScenario {
    /// Whether `system` takes part (only the peers with recovery resume).
    pub fn runs_on(self, system: System) -> bool {
        self != PeerScenario::Jitter
            || matches!(
                system,
                System::Herald | System::Anycable | System::Centrifugo
            )
    }
}

/// A peer server process (or Herald's setup) under test.
struct Running {
    system: System,
    ws_addr: SocketAddr,
    /// Roots of the server's process trees.
    server_pids: Vec<u32>,
    /// Processes the system needs besides the server (Kafka, Redis).
    broker_pids: Vec<u32>,
    children: Vec<Child>,
    herald: Option<Setup>,
    sink: Option<SinkSpec>,
    version: String,
    _dir: Option<tempfile::TempDir>,
}

enum SinkSpec {
    Http(String, Option<String>),
    Stomp(SocketAddr),
}

fn expand(dir: &str) -> PathBuf {
    match dir.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
        None => PathBuf::from(dir),
    }
}

fn find_binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{} (run scripts/peers.sh install)", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no {name} under {} (run scripts/peers.sh install)",
            dir.display()
        )
    })
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let c = cmd.spawn().context("cannot start")?;
    // scripts/peers.sh stops these process groups even if the load
    // generator itself dies.
    if let (Ok(file), Some(pid)) = (std::env::var("HERALD_PEERS_PIDFILE"), c.id()) {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = writeln!(f, "{pid}");
        }
    }
    Ok(c)
}

async fn wait_tcp(addr: SocketAddr, within: Duration, what: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if t0.elapsed() > within {
            bail!("{what} is not listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn version_of(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

fn dpkg_version(pkg: &str) -> String {
    version_of("dpkg-query", &["-W", "-f=${Version}", pkg])
}

impl Running {
    /// Start `system` as `sc` wants it (`jitter`: with its recovery on).
    async fn start(
        common: &Common,
        args: &PeersArgs,
        system: System,
        sc: PeerScenario,
    ) -> anyhow::Result<Running> {
        let history = sc == PeerScenario::Jitter;
        let secret = common.jwt_secret.clone();
        let peers = expand(&args.peers_dir);
        let mut r = Running {
            system,
            ws_addr: loopback(0),
            server_pids: vec![],
            broker_pids: vec![],
            children: vec![],
            herald: None,
            sink: None,
            version: String::new(),
            _dir: None,
        };
        match system {
            System::Herald => {
                let mut common = common.clone();
                common.protocol = Protocol::Room;
                let setup = Setup::start(&common, ServerKind::Gateway).await?;
                r.ws_addr = setup.server.ws_addr;
                r.server_pids = setup.server.pid.into_iter().collect();
                r.broker_pids = setup
                    .broker
                    .as_ref()
                    .and_then(crate::cluster::broker_pid)
                    .into_iter()
                    .collect();
                r.version = format!(
                    "herald-gateway {} (release), {}",
                    env!("CARGO_PKG_VERSION"),
                    setup
                        .broker
                        .as_ref()
                        .map(|b| b.describe())
                        .unwrap_or_default()
                );
                r.herald = Some(setup);
            }
            System::Anycable => {
                let bin = find_binary(&peers, "anycable-go")?;
                let (port, bport) = (free_port()?, free_port()?);
                let mut cmd = Command::new(&bin);
                if history {
                    // Reliable streams: the in-memory broker keeps each
                    // stream's history (its defaults: the last 100
                    // messages, 300 s) and answers `history` requests.
                    cmd.arg("--broker=memory");
                }
                let child = spawn(
                    cmd.arg("--host=127.0.0.1")
                        .arg(format!("--port={port}"))
                        .arg("--norpc")
                        .arg(format!("--jwt_secret={secret}"))
                        .arg("--enforce_jwt")
                        .arg("--public_streams")
                        .arg("--broadcast_adapter=http")
                        .arg(format!("--http_broadcast_port={bport}"))
                        .arg("--log_level=warn")
                        .env("ANYCABLE_DISABLE_TELEMETRY", "true")
                        .stderr(Stdio::null()),
                )?;
                r.server_pids = child.id().into_iter().collect();
                r.children.push(child);
                r.ws_addr = loopback(port);
                wait_tcp(r.ws_addr, Duration::from_secs(20), "anycable-go").await?;
                wait_tcp(
                    loopback(bport),
                    Duration::from_secs(20),
                    "anycable-go broadcast",
                )
                .await?;
                r.sink = Some(SinkSpec::Http(format!("http://127.0.0.1:{bport}"), None));
                r.version = version_of(bin.to_str().unwrap_or_default(), &["-v"]);
            }
            System::Centrifugo => {
                let bin = find_binary(&peers, "centrifugo")?;
                let dir = tempfile::tempdir()?;
                let port = free_port()?;
                let mut channel = json!({"allow_subscribe_for_client": true});
                if history {
                    // History in memory (the same window as AnyCable's
                    // defaults) and recovery for clients that ask for it.
                    channel["history_size"] = json!(100);
                    channel["history_ttl"] = json!("300s");
                    channel["allow_recovery"] = json!(true);
                }
                let cfg = json!({
                    "http_server": {"address": "127.0.0.1", "port": port},
                    "log": {"level": "warn"},
                    "client": {"token": {"hmac_secret_key": secret}},
                    "http_api": {"key": "herald-bench-api-key"},
                    "channel": {"without_namespace": channel},
                    "usage_stats": {"disabled": true},
                });
                let path = dir.path().join("config.json");
                std::fs::write(&path, cfg.to_string())?;
                let child = spawn(
                    Command::new(&bin)
                        .arg("--config")
                        .arg(&path)
                        .current_dir(dir.path())
                        .stderr(Stdio::null()),
                )?;
                r.server_pids = child.id().into_iter().collect();
                r.children.push(child);
                r.ws_addr = loopback(port);
                wait_tcp(r.ws_addr, Duration::from_secs(20), "centrifugo").await?;
                r.sink = Some(SinkSpec::Http(
                    format!("http://127.0.0.1:{port}"),
                    Some("herald-bench-api-key".into()),
                ));
                // Built from the module, so `centrifugo version` says v0.0.0:
                // the install directory names the pinned version.
                r.version = bin
                    .parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                r._dir = Some(dir);
            }
            System::Rabbitmq => {
                let dir = tempfile::tempdir()?;
                let d = dir.path();
                let (epmd, amqp, stomp, web, dist) = (
                    free_port()?,
                    free_port()?,
                    free_port()?,
                    free_port()?,
                    free_port()?,
                );
                let epmd_child = spawn(
                    Command::new("epmd")
                        .args(["-port", &epmd.to_string(), "-address", "127.0.0.1"])
                        .stderr(Stdio::null()),
                )?;
                r.children.push(epmd_child);
                // Defaults but for loopback listeners and Cowboy's idle
                // timeout: it closes a WebSocket without client traffic after
                // 60 s, and these clients ask for no STOMP heart-beats.
                std::fs::write(
                    d.join("rabbitmq.conf"),
                    format!(
                        "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                         stomp.listeners.tcp.1 = 127.0.0.1:{stomp}\n\
                         web_stomp.tcp.ip = 127.0.0.1\n\
                         web_stomp.tcp.port = {web}\n\
                         web_stomp.ws_opts.idle_timeout = 600000\n\
                         loopback_users.guest = true\n\
                         log.console = false\n\
                         log.file.level = warning\n"
                    ),
                )?;
                std::fs::write(d.join("enabled_plugins"), "[rabbitmq_web_stomp].\n")?;
                std::fs::create_dir_all(d.join("mnesia"))?;
                std::fs::create_dir_all(d.join("log"))?;
                let node = format!(
                    "herald-peers-{}@localhost",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                let child = spawn(
                    Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
                        .env("HOME", d)
                        .env("RABBITMQ_HOME", "/usr/lib/rabbitmq")
                        .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
                        .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
                        .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
                        .env("RABBITMQ_LOG_BASE", d.join("log"))
                        .env("RABBITMQ_NODENAME", &node)
                        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                        .env("RABBITMQ_NODE_PORT", amqp.to_string())
                        .env("RABBITMQ_DIST_PORT", dist.to_string())
                        .env("ERL_EPMD_PORT", epmd.to_string())
                        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                        // The machine is shared with the load generator:
                        // RabbitMQ's docs advise against scheduler busy-waiting there.
                        .env(
                            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                            "+sbwt none +sbwtdcpu none +sbwtdio none",
                        )
                        .stderr(Stdio::null()),
                )?;
                r.server_pids = child.id().into_iter().collect();
                r.children.push(child);
                r.ws_addr = loopback(web);
                wait_tcp(r.ws_addr, Duration::from_secs(90), "rabbitmq web-stomp").await?;
                wait_tcp(loopback(stomp), Duration::from_secs(30), "rabbitmq stomp").await?;
                r.sink = Some(SinkSpec::Stomp(loopback(stomp)));
                r.version = format!("rabbitmq-server {}", dpkg_version("rabbitmq-server"));
                r._dir = Some(dir);
            }
            System::Rails => {
                let app = std::fs::canonicalize(&args.rails_app)
                    .with_context(|| format!("{}", args.rails_app.display()))?;
                let (port, redis) = (free_port()?, free_port()?);
                let redis_child = spawn(
                    Command::new("redis-server")
                        .args(["--bind", "127.0.0.1", "--port", &redis.to_string()])
                        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                        .stderr(Stdio::null()),
                )?;
                r.broker_pids = redis_child.id().into_iter().collect();
                r.children.push(redis_child);
                wait_tcp(loopback(redis), Duration::from_secs(10), "redis").await?;
                let child = spawn(
                    Command::new("puma")
                        .arg("-C")
                        .arg(app.join("puma.rb"))
                        .arg(app.join("config.ru"))
                        .current_dir(&app)
                        .env("PORT", port.to_string())
                        .env("REDIS_URL", format!("redis://127.0.0.1:{redis}/0"))
                        .env("JWT_SECRET", &secret)
                        .env("WEB_CONCURRENCY", "2")
                        .env("RAILS_MAX_THREADS", "5")
                        .env("RACK_ENV", "production")
                        .stderr(Stdio::inherit()),
                )?;
                r.server_pids = child.id().into_iter().collect();
                r.children.push(child);
                r.ws_addr = loopback(port);
                wait_tcp(r.ws_addr, Duration::from_secs(60), "puma").await?;
                // Both workers booted.
                let t0 = Instant::now();
                while procstat_tree(&r.server_pids).len() < 3
                    && t0.elapsed() < Duration::from_secs(60)
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r.sink = Some(SinkSpec::Http(format!("http://127.0.0.1:{port}"), None));
                r.version = format!(
                    "ruby-actioncable {}, puma {}, redis-server {}, {}",
                    dpkg_version("ruby-actioncable"),
                    dpkg_version("puma"),
                    dpkg_version("redis-server"),
                    version_of("ruby", &["-v"])
                );
            }
        }
        Ok(r)
    }

    fn target(&self, common: &Common, connections: usize) -> Target {
        let (source_ips, first_source_ip) = scenario::source_ips(common, connections);
        Target {
            addr: self.ws_addr,
            protocol: Protocol::Room,
            source_ips,
            first_source_ip,
            stomp_heartbeat_ms: 0,
            peer: (self.system != System::Herald).then_some(PeerTarget {
                system: self.system,
            }),
            deflate: false,
        }
    }

    async fn publisher(
        &self,
        common: &Common,
        accounts: usize,
        linger_ms: u64,
    ) -> anyhow::Result<Publisher> {
        if let Some(setup) = &self.herald {
            let mut common = common.clone();
            common.protocol = Protocol::Room;
            return setup.publisher(&common, accounts, linger_ms).await;
        }
        let sink = match self.sink.as_ref().context("no publish path")? {
            SinkSpec::Http(base, key) => {
                PeerSink::http(self.system, base.clone(), key.clone()).await?
            }
            SinkSpec::Stomp(addr) => PeerSink::stomp(*addr).await?,
        };
        Ok(Publisher::new(
            EventSink::Peer(sink),
            Protocol::Room,
            accounts,
            common.pad_spec(),
        ))
    }

    fn rss(&self) -> u64 {
        procstat_tree(&self.server_pids)
            .iter()
            .filter_map(|p| procstat::rss_bytes(*p))
            .sum()
    }

    fn cpu(&self) -> TreeCpu {
        TreeCpu::start(&self.server_pids, &self.broker_pids)
    }

    async fn stop(mut self) {
        if let Some(setup) = self.herald.take() {
            setup.stop().await;
        }
        for c in self.children.iter_mut().rev() {
            if let Some(pid) = c.id() {
                // The whole process group: puma's workers, beam's helpers.
                let _ = Command::new("kill")
                    .args(["-TERM", "--", &format!("-{pid}")])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(20), c.wait())
                .await
                .is_err()
            {
                if let Some(pid) = c.id() {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .status()
                        .await;
                }
                let _ = c.kill().await;
            }
        }
    }
}

/// `roots` and every process descending from them.
fn procstat_tree(roots: &[u32]) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// CPU of the server's and the broker's process trees and of the load generator.
struct TreeCpu {
    server: Vec<u32>,
    broker: Vec<u32>,
    s0: f64,
    b0: f64,
    l0: f64,
    at: Instant,
}

fn cpu_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| procstat::cpu_seconds(*p)).sum()
}

impl TreeCpu {
    fn start(server: &[u32], broker: &[u32]) -> TreeCpu {
        let server = procstat_tree(server);
        let broker = procstat_tree(broker);
        TreeCpu {
            s0: cpu_sum(&server),
            b0: cpu_sum(&broker),
            l0: procstat::cpu_seconds(std::process::id()).unwrap_or(0.0),
            server,
            broker,
            at: Instant::now(),
        }
    }

    fn read(&self) -> Value {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let s = cpu_sum(&self.server) - self.s0;
        let b = cpu_sum(&self.broker) - self.b0;
        let l = procstat::cpu_seconds(std::process::id()).unwrap_or(0.0) - self.l0;
        json!({
            "server": {"cpu_seconds": s, "cores": s / wall},
            "broker": {"cpu_seconds": b, "cores": b / wall},
            "loadgen": {"cpu_seconds": l, "cores": l / wall},
        })
    }
}

fn health(fleet: &Fleet) -> Value {
    json!({
        "subscribed": fleet.subscribed.load(Ordering::Relaxed),
        "failed": fleet.failed.load(Ordering::Relaxed),
        "closed_by_server": fleet.closed(),
        "first_error": fleet.first_error.lock().ok().and_then(|e| e.clone()),
    })
}

/// Run the peers comparison.
pub async fn run(common: &Common, args: &PeersArgs) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    let mut tables = String::new();
    let mut versions = serde_json::Map::new();
    for &sc in &args.scenarios {
        let mut results: Vec<(System, Value)> = Vec::new();
        for &system in args.systems.iter().filter(|s| sc.runs_on(**s)) {
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            eprintln!("peers: {sc:?} on {} (load {})", system.name(), load.trim());
            let running = Running::start(common, args, system, sc).await?;
            versions.insert(system.name().into(), json!(running.version));
            let r = match sc {
                PeerScenario::Idle => idle(common, args, &running).await,
                PeerScenario::Fanout => fanout(common, args, &running).await,
                PeerScenario::Latency => latency(common, args, &running).await,
                PeerScenario::Storm => storm(common, args, &running).await,
                PeerScenario::Jitter => jitter(common, args, &running).await,
            };
            running.stop().await;
            let mut r = r.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
            r["loadavg_before"] = json!(load.trim());
            eprintln!("peers: {sc:?} {}: {}", system.name(), summary(sc, &r));
            results.push((system, r));
        }
        let table = table(sc, &results);
        println!("{table}");
        tables.push_str(&table);
        tables.push('\n');
        out.insert(
            format!("{sc:?}").to_lowercase(),
            Value::Object(
                results
                    .into_iter()
                    .map(|(s, v)| (s.name().to_owned(), v))
                    .collect(),
            ),
        );
    }
    Ok(json!({
        "params": {"connections": args.connections, "rails_connections": args.rails_connections,
                   "per_stream": args.per_stream, "rate": args.rate, "window": args.window,
                   "warmup_secs": args.warmup_secs, "duration_secs": args.duration_secs,
                   "jitter_connections": args.jitter_connections, "jitter_events": args.jitter_events,
                   "jitter_rate": args.jitter_rate, "jitter_period_secs": args.jitter_period_secs,
                   "jitter_offline_secs": args.jitter_offline_secs,
                   "herald_linger_ms": args.herald_linger_ms},
        "versions": versions,
        "scenarios": out,
        "tables_markdown": tables,
    }))
}

fn summary(sc: PeerScenario, r: &Value) -> String {
    if let Some(e) = r.get("error") {
        return format!("error {e}");
    }
    match sc {
        PeerScenario::Idle => format!(
            "{:.0} B/connection",
            r["rss_per_connection_bytes"].as_f64().unwrap_or(0.0)
        ),
        PeerScenario::Fanout => format!(
            "{:.0} frames/s",
            r["frames_per_second"].as_f64().unwrap_or(0.0)
        ),
        PeerScenario::Latency => format!(
            "p50 {} p99 {} ms",
            r["latency"]["p50_ms"], r["latency"]["p99_ms"]
        ),
        PeerScenario::Storm => format!(
            "{:.0} connections/s",
            r["connections_per_second"].as_f64().unwrap_or(0.0)
        ),
        PeerScenario::Jitter => format!(
            "delivery {:.3} %, replay p99 {:.0} ms, lost {} dup {}",
            f(&r["fleet"]["delivery_rate"]["mean_percent"]),
            f(&r["latency"]["replay_publish_to_delivery"]["p99_ms"]),
            r["lost"],
            r["duplicated"]
        ),
    }
}

/// Connections and accounts (streams) of `system` in this run.
fn sizes(args: &PeersArgs, system: System, sc: PeerScenario) -> (usize, usize) {
    let connections = match (sc, system, args.rails_connections, args.jitter_connections) {
        (PeerScenario::Jitter, _, _, Some(n)) => n,
        (_, System::Rails, Some(n), _) => n,
        _ => args.connections,
    };
    (connections, connections.div_ceil(args.per_stream).max(1))
}

async fn open(
    common: &Common,
    running: &Running,
    connections: usize,
    accounts: usize,
) -> anyhow::Result<(Fleet, Duration)> {
    let creds = credentials(running.system, connections, accounts, &common.jwt_secret)?;
    let fleet = Fleet::open(
        &running.target(common, connections),
        creds,
        common.concurrency,
    );
    let took = fleet.wait_open(Duration::from_secs(180)).await;
    Ok((fleet, took))
}

/// What one measurement window saw.
struct Window {
    frames: u64,
    secs: f64,
    cpu: Value,
    /// Delivery latency within the window (`None`: still recording).
    latency: Option<Percentiles>,
}

/// After the warm-up, frames received and CPU over `--duration-secs`; the
/// delivery histogram is emptied at its start and, when `take_latency`,
/// read at its end.
async fn window(args: &PeersArgs, fleet: &Fleet, running: &Running, take_latency: bool) -> Window {
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
    let r0 = fleet.received();
    let t0 = Instant::now();
    let cpu = running.cpu();
    hist::DELIVERY.take();
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    Window {
        frames: fleet.received() - r0,
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu.read(),
        latency: take_latency.then(|| Percentiles::of(&hist::DELIVERY.take())),
    }
}

/// Once publishing is over: wait up to `within` for every event to arrive,
/// audit, close the fleet. The fields every delivering scenario reports.
async fn settle(
    fleet: Fleet,
    publisher: &mut Publisher,
    within: Duration,
) -> anyhow::Result<Value> {
    let failed = publisher.finish_all().await?;
    let complete = fleet.wait_delivered(&publisher.sent, within).await;
    let (lost, dups) = fleet.audit(&publisher.sent);
    let subscribed = fleet.subscribed.load(Ordering::Relaxed);
    let h = health(&fleet);
    fleet.close().await;
    Ok(json!({
        "connections_subscribed": subscribed, "events_sent": publisher.total,
        "publish_failed": failed, "delivered_all": complete, "lost": lost, "duplicated": dups,
        "clients": h,
    }))
}

/// `a` with the fields of `b` added.
fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

async fn idle(common: &Common, args: &PeersArgs, running: &Running) -> anyhow::Result<Value> {
    let (connections, accounts) = sizes(args, running.system, PeerScenario::Idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = running.rss();
    let (fleet, took) = open(common, running, connections, accounts).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = running.rss();
    let cpu = running.cpu();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = cpu.read();
    let live = fleet.live();
    let subscribed = fleet.subscribed.load(Ordering::Relaxed);
    let mut publisher = running.publisher(common, accounts, 0).await?;
    for a in 0..accounts {
        publisher.send(a).await?;
    }
    let delivery = settle(fleet, &mut publisher, Duration::from_secs(30)).await?;
    let per = after.saturating_sub(before) as f64 / subscribed.max(1) as f64;
    Ok(merge(
        json!({
            "connections": connections, "live_after_idle": live,
            "connect_seconds": took.as_secs_f64(),
            "rss_before_bytes": before, "rss_after_bytes": after, "rss_per_connection_bytes": per,
            "idle_cpu": idle_cpu,
        }),
        delivery,
    ))
}

/// How `fanout` and `latency` publish.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// At most `--window` undelivered events per stream.
    ClosedLoop,
    /// `--rate` events/s.
    Rate,
}

/// Subscribe the fleet, publish with `load` through the warm-up and the
/// window, settle. `(connections, window, server RSS, delivery)`.
async fn measured(
    common: &Common,
    args: &PeersArgs,
    running: &Running,
    sc: PeerScenario,
    load: Load,
) -> anyhow::Result<(usize, Window, u64, Value)> {
    let (connections, accounts) = sizes(args, running.system, sc);
    let (fleet, _) = open(common, running, connections, accounts).await?;
    let closed = load == Load::ClosedLoop;
    let mut publisher = running
        .publisher(
            common,
            accounts,
            if closed { 1 } else { args.herald_linger_ms },
        )
        .await?;
    let stop = AtomicStop::default();
    let total = Duration::from_secs(args.warmup_secs + args.duration_secs);
    let publish = async {
        match load {
            Load::ClosedLoop => publisher.windowed(&fleet, args.window, total, &stop).await,
            Load::Rate => publisher.at_rate(args.rate, total).await,
        }
    };
    let (published, w) = tokio::join!(publish, window(args, &fleet, running, closed));
    published?;
    let rss = running.rss();
    let within = Duration::from_secs(if closed { 30 } else { 20 });
    let delivery = settle(fleet, &mut publisher, within).await?;
    Ok((connections, w, rss, delivery))
}

async fn fanout(common: &Common, args: &PeersArgs, running: &Running) -> anyhow::Result<Value> {
    let (connections, w, rss, delivery) = measured(
        common,
        args,
        running,
        PeerScenario::Fanout,
        Load::ClosedLoop,
    )
    .await?;
    Ok(merge(
        json!({
            "connections": connections, "frames_per_second": w.frames as f64 / w.secs,
            "window_seconds": w.secs, "latency_closed_loop": w.latency, "cpu": w.cpu,
            "server_rss_bytes": rss,
        }),
        delivery,
    ))
}

async fn latency(common: &Common, args: &PeersArgs, running: &Running) -> anyhow::Result<Value> {
    let (connections, w, _, delivery) =
        measured(common, args, running, PeerScenario::Latency, Load::Rate).await?;
    // From the window's start to the last delivery: the events still in
    // flight when the window closed count too.
    let latency = Percentiles::of(&hist::DELIVERY.take());
    Ok(merge(
        json!({
            "connections": connections, "rate_events_per_second": args.rate,
            "frames_per_second": w.frames as f64 / w.secs, "latency": latency, "cpu": w.cpu,
        }),
        delivery,
    ))
}

async fn storm(common: &Common, args: &PeersArgs, running: &Running) -> anyhow::Result<Value> {
    let (connections, accounts) = sizes(args, running.system, PeerScenario::Storm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    hist::CONNECT.take();
    let cpu = running.cpu();
    let (fleet, took) = open(common, running, connections, accounts).await?;
    let cpu = cpu.read();
    let ok = fleet.subscribed.load(Ordering::Relaxed);
    let connect = Percentiles::of(&hist::CONNECT.take());
    let h = health(&fleet);
    let rss = running.rss();
    fleet.close().await;
    Ok(json!({
        "connections": connections, "connections_subscribed": ok, "seconds": took.as_secs_f64(),
        "connections_per_second": ok as f64 / took.as_secs_f64(), "connect_latency": connect,
        "cpu": cpu, "server_rss_bytes": rss, "clients": h,
    }))
}

/// The jitter scenario of `herald-loadgen jitter` (issue 16's methodology)
/// on Herald, AnyCable and Centrifugo: resuming clients, each socket reset
/// about every `--jitter-period-secs`, offline about
/// `--jitter-offline-secs`, then reconnecting and resuming from the last
/// position, while each stream gets `--jitter-events` at `--jitter-rate`.
async fn jitter(common: &Common, args: &PeersArgs, running: &Running) -> anyhow::Result<Value> {
    let (clients, accounts) = sizes(args, running.system, PeerScenario::Jitter);
    let mut publisher = running
        .publisher(common, accounts, args.herald_linger_ms)
        .await?;
    let published = publisher.share_counts();
    let (source_ips, first_source_ip) = scenario::source_ips(common, clients);
    let target = resuming::Target {
        addr: running.ws_addr,
        protocol: Protocol::Room,
        source_ips,
        first_source_ip,
        peer: (running.system != System::Herald).then_some(running.system),
    };
    let until = CancellationToken::new();
    let behaviour = reconnect::jitter_behaviour(
        &reconnect::JitterArgs {
            clients,
            clients_per_account: args.per_stream,
            events: args.jitter_events,
            rate_per_stream: args.jitter_rate,
            period_secs: args.jitter_period_secs,
            spread: 0.2,
            offline_secs: args.jitter_offline_secs,
            settle_secs: args.jitter_settle_secs,
            cable_since: true,
        },
        until.clone(),
    );
    let creds = credentials(running.system, clients, accounts, &common.jwt_secret)?;
    reconnect::reset_histograms();
    let fleet = ResumingFleet::open(&target, creds, &behaviour, published, common.concurrency)?;
    let opened = fleet.wait_subscribed(Duration::from_secs(180)).await;
    let connect = Percentiles::of(&hist::CONNECT.take());
    let cpu = running.cpu();
    let started = Instant::now();
    publisher
        .at_rate_count(
            args.jitter_rate * accounts as f64,
            args.jitter_events * accounts as u64,
        )
        .await?;
    let publish_secs = started.elapsed().as_secs_f64();
    until.cancel();
    let failed = publisher.finish_all().await?;
    let complete = fleet
        .wait_delivered(
            &publisher.sent,
            Duration::from_secs(args.jitter_settle_secs),
        )
        .await;
    let cpu = cpu.read();
    let report = reconnect::fleet_report(&fleet, &publisher.sent);
    let latency = reconnect::latencies();
    let rss = running.rss();
    fleet.close().await;
    Ok(json!({
        "connections": clients, "connections_subscribed": opened, "streams": accounts,
        "events_per_stream": args.jitter_events, "rate_per_stream": args.jitter_rate,
        "period_secs": args.jitter_period_secs, "offline_secs": args.jitter_offline_secs,
        "connect_latency": connect, "events_sent": publisher.total, "publish_failed": failed,
        "publish_seconds": publish_secs, "delivered_all": complete,
        "lost": report["lost"], "duplicated": report["duplicated"],
        "fleet": report, "latency": latency, "cpu": cpu, "server_rss_bytes": rss,
    }))
}

// ---------------------------------------------------------------------------
// Tables.

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The markdown table of one scenario: absolute figures, CPU, Herald's ratio.
pub fn table(sc: PeerScenario, results: &[(System, Value)]) -> String {
    // (headline, higher is better)
    let headline = |r: &Value| -> f64 {
        match sc {
            PeerScenario::Idle => f(&r["rss_per_connection_bytes"]),
            PeerScenario::Fanout => f(&r["frames_per_second"]),
            PeerScenario::Latency => f(&r["latency"]["p99_ms"]),
            PeerScenario::Storm => f(&r["connections_per_second"]),
            PeerScenario::Jitter => f(&r["latency"]["replay_resubscribe_to_delivery"]["p99_ms"]),
        }
    };
    let higher_better = matches!(sc, PeerScenario::Fanout | PeerScenario::Storm);
    let herald = results
        .iter()
        .find(|(s, r)| *s == System::Herald && r.get("error").is_none())
        .map(|(_, r)| headline(r));
    let mut t = match sc {
        PeerScenario::Idle => "| system | subscribed | RSS per idle connection | RSS at N | idle CPU (server) | delivered / lost | Herald's lead (>1: Herald better) |\n|---|---:|---:|---:|---:|---|---|\n".to_owned(),
        PeerScenario::Fanout => "| system | subscribed | frames/s | p50 / p99 ms (closed loop) | CPU server | CPU broker | CPU loadgen | lost / dup / closed by server | Herald's lead (>1: Herald better) |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n".to_owned(),
        PeerScenario::Latency => "| system | subscribed | events/s → frames/s | p50 / p90 / p99 / p99.9 / max ms | CPU server | CPU broker | CPU loadgen | lost / dup / closed by server | Herald's lead (>1: Herald better) |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n".to_owned(),
        PeerScenario::Storm => "| system | subscribed | connections/s | connect p50 / p99 ms | CPU server | CPU loadgen | failed | Herald's lead (>1: Herald better) |\n|---|---:|---:|---:|---:|---:|---|---|\n".to_owned(),
        PeerScenario::Jitter => "| system | subscribed | delivery mean / min % | resets → resubscribed | replayed | replay p50 / p95 / p99 / max ms (publish → delivery) | resubscribe → replay p50 / p99 ms | live p99 ms | CPU server | CPU broker | CPU loadgen | lost / dup / late / gap signals | Herald's lead (resubscribe → replay p99; >1: Herald better) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n".to_owned(),
    };
    for (s, r) in results {
        if let Some(e) = r.get("error") {
            t.push_str(&format!(
                "| {} | error: {} |\n",
                s.name(),
                e.as_str().unwrap_or_default()
            ));
            continue;
        }
        let ratio = match herald {
            Some(h) if *s != System::Herald => {
                let x = headline(r);
                let q = if higher_better { h / x } else { x / h };
                format!("{q:.2}×")
            }
            _ => "—".into(),
        };
        let sub = format!("{} / {}", r["connections_subscribed"], r["connections"]);
        let cpu = |who: &str, k: &str| format!("{:.2}", f(&r[k][who]["cores"]));
        let lost = format!(
            "{} / {} / {}",
            r["lost"], r["duplicated"], r["clients"]["closed_by_server"]
        );
        let lat = |k: &str, p: &str| f(&r["latency"][k][p]);
        let row = match sc {
            PeerScenario::Idle => format!(
                "| {} | {sub} | {:.1} KiB | {:.1} MiB | {:.3} | {} / {} | {ratio} |\n",
                s.name(),
                headline(r) / 1024.0,
                f(&r["rss_after_bytes"]) / 1048576.0,
                f(&r["idle_cpu"]["server"]["cores"]),
                r["delivered_all"],
                r["lost"]
            ),
            PeerScenario::Fanout => format!(
                "| {} | {sub} | {:.0} | {:.1} / {:.1} | {} | {} | {} | {lost} | {ratio} |\n",
                s.name(),
                headline(r),
                f(&r["latency_closed_loop"]["p50_ms"]),
                f(&r["latency_closed_loop"]["p99_ms"]),
                cpu("server", "cpu"),
                cpu("broker", "cpu"),
                cpu("loadgen", "cpu")
            ),
            PeerScenario::Latency => format!(
                "| {} | {sub} | {} → {:.0} | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} | {} | {} | {} | {lost} | {ratio} |\n",
                s.name(),
                r["rate_events_per_second"],
                f(&r["frames_per_second"]),
                f(&r["latency"]["p50_ms"]),
                f(&r["latency"]["p90_ms"]),
                f(&r["latency"]["p99_ms"]),
                f(&r["latency"]["p999_ms"]),
                f(&r["latency"]["max_ms"]),
                cpu("server", "cpu"),
                cpu("broker", "cpu"),
                cpu("loadgen", "cpu")
            ),
            PeerScenario::Storm => format!(
                "| {} | {sub} | {:.0} | {:.1} / {:.1} | {} | {} | {} | {ratio} |\n",
                s.name(),
                headline(r),
                f(&r["connect_latency"]["p50_ms"]),
                f(&r["connect_latency"]["p99_ms"]),
                cpu("server", "cpu"),
                cpu("loadgen", "cpu"),
                r["clients"]["failed"]
            ),
            PeerScenario::Jitter => format!(
                "| {} | {sub} | {:.3} / {:.3} | {} → {} | {} | {:.0} / {:.0} / {:.0} / {:.0} | {:.1} / {:.1} | {:.1} | {} | {} | {} | {} / {} / {} / {} | {ratio} |\n",
                s.name(),
                f(&r["fleet"]["delivery_rate"]["mean_percent"]),
                f(&r["fleet"]["delivery_rate"]["min_percent"]),
                r["fleet"]["jitter_drops"],
                f(&r["fleet"]["subscriptions"]) - f(&r["fleet"]["clients"]),
                r["fleet"]["events_replayed"],
                lat("replay_publish_to_delivery", "p50_ms"),
                lat("replay_publish_to_delivery", "p95_ms"),
                lat("replay_publish_to_delivery", "p99_ms"),
                lat("replay_publish_to_delivery", "max_ms"),
                lat("replay_resubscribe_to_delivery", "p50_ms"),
                lat("replay_resubscribe_to_delivery", "p99_ms"),
                lat("live", "p99_ms"),
                cpu("server", "cpu"),
                cpu("broker", "cpu"),
                cpu("loadgen", "cpu"),
                r["lost"],
                r["duplicated"],
                r["fleet"]["reordered"],
                r["fleet"]["gap_signals"]
            ),
        };
        t.push_str(&row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_frames() {
        let c: Value = serde_json::from_str(&centrifugo_connect(1, "t")).unwrap();
        assert_eq!(c["connect"]["token"], "t");
        let s: Value = serde_json::from_str(&centrifugo_subscribe(2, "account-1")).unwrap();
        assert_eq!(s["subscribe"]["channel"], "account-1");
        assert!(reply_to(br#"{"id":1,"connect":{"client":"x"}}"#, 1));
        assert!(reply_to(b"{}\n{\"id\":2,\"subscribe\":{}}", 2));
        assert!(!reply_to(br#"{"id":2,"subscribe":{}}"#, 1));
        assert!(!reply_to(b"{}", 1));
        assert!(
            ensure_no_error(br#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#)
                .is_err()
        );
        assert!(ensure_no_error(br#"{"id":2,"subscribe":{}}"#).is_ok());
    }

    #[test]
    fn stomp_frames() {
        let send = stomp_send("account-7", r#"{"seq":1}"#);
        assert!(send.starts_with("SEND\ndestination:/topic/account-7\n"));
        assert!(send.contains("content-length:9\n\n{\"seq\":1}\0"));
        assert!(stomp_subscribe("account-7").contains("destination:/topic/account-7\n"));
        assert!(stomp_connect().ends_with("\n\n\0"));
    }

    #[test]
    fn anycable_tokens_carry_identifiers() {
        let creds = credentials(System::Anycable, 2, 1, "s3cret").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        let d = jsonwebtoken::decode::<Value>(
            &creds[1].token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .unwrap();
        let ext: Value = serde_json::from_str(d.claims["ext"].as_str().unwrap()).unwrap();
        assert_eq!(ext["user_id"], creds[1].user);
    }

    #[test]
    fn tree_contains_self() {
        assert!(procstat_tree(&[std::process::id()]).contains(&std::process::id()));
    }
}
