//! The benchmark scenarios of issue 7. Each one starts what it needs (broker,
//! gateway or raw server, clients), measures, tears everything down and
//! returns its results as JSON; `main` adds the run's description and
//! writes the file. Every scenario ends by itself.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::{Value, json};

use crate::{
    client::{self, Fleet, Target},
    cluster::{self, Broker, GatewayLaunch, ManagedBroker, Server, ServerKind},
    hist::{self, Percentiles},
    procstat::{self, CpuMark},
    prom::{HistogramSummary, Scrape},
    publish::{AtomicStop, EventSink, Publisher},
    stamp::Protocol,
};

/// Settings every scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Client protocol.
    #[arg(long, value_enum, default_value = "stomp")]
    pub protocol: Protocol,
    /// Use this Kafka cluster instead of starting a broker.
    #[arg(long)]
    pub kafka: Option<String>,
    /// The broker started when `--kafka` is not given.
    #[arg(long, value_enum, default_value = "kafka")]
    pub broker: ManagedBroker,
    /// Use this running gateway (WebSocket `host:port`) instead of starting one
    /// (it must read `--kafka` with `--topic-prefix` and accept `--jwt-secret`).
    #[arg(long, requires = "kafka")]
    pub gateway_addr: Option<SocketAddr>,
    /// Ops address of `--gateway-addr`, for its metrics.
    #[arg(long)]
    pub gateway_ops: Option<SocketAddr>,
    /// Pid of `--gateway-addr`, for its memory and CPU.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Topic prefix (default: a fresh one per run).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// The gateway binary (default: `herald-gateway` next to this one).
    #[arg(long)]
    pub gateway_bin: Option<std::path::PathBuf>,
    /// Extra gateway flag, repeatable (`--gateway-arg=--outbound-queue=4096`).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Run the gateway's threads at real-time priority (`SCHED_FIFO` 50,
    /// set with `chrt`; needs root or `CAP_SYS_NICE`), so the broker and the
    /// load generator on the same cores never preempt it: what the gateway
    /// does when it has its cores to itself, as in a deployment.
    #[arg(long)]
    pub gateway_realtime: bool,
    /// Partitions per topic when creating topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Source addresses 127.0.0.x to spread clients over (0: one per 4,000
    /// clients, so ports left in TIME_WAIT by a previous run rarely collide).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    /// First source address 127.0.0.x (0: a random one in 2..=200 per run).
    #[arg(long, default_value_t = 0)]
    pub first_source_ip: u8,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// HS256 secret shared with the gateway.
    #[arg(long, default_value = "herald-bench-secret-0123456789abcdef")]
    pub jwt_secret: String,
    /// First account id (accounts are numbered from it). Load generators
    /// that share one gateway and topic prefix use disjoint ranges, so
    /// each one's audit sees only its own events.
    #[arg(long, default_value_t = 1000)]
    pub account_base: usize,
    /// Bytes of padding added to each event payload.
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
    /// What the padding is made of (`text` and `random` differ per event,
    /// so compression sees realistic content).
    #[arg(long, value_enum, default_value = "repeat")]
    pub pad_kind: crate::stamp::PadKind,
    /// Clients offer permessage-deflate (and a gateway started here gets
    /// `--ws-deflate`); compressed frames are inflated before they count.
    #[arg(long)]
    pub deflate: bool,
    /// Result file (default: bench-results/<scenario>-<protocol>.json).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

impl Common {
    /// The padding each event payload gets.
    pub fn pad_spec(&self) -> crate::stamp::Pad {
        crate::stamp::Pad {
            len: self.pad,
            kind: self.pad_kind,
        }
    }

    /// Extra flags for a gateway started here.
    pub fn gateway_flags(&self) -> Vec<String> {
        let mut flags = self.gateway_args.clone();
        if self.deflate {
            flags.push("--ws-deflate".into());
        }
        flags
    }
}

/// The broker (when Kafka is involved) and the server of one measurement.
pub(crate) struct Setup {
    pub(crate) broker: Option<Broker>,
    pub(crate) server: Server,
    pub(crate) kafka: Option<herald_runtime::KafkaArgs>,
}

/// Source addresses for `connections` clients: `(how many, first)`
/// 127.0.0.x, from `--source-ips` / `--first-source-ip` or their defaults.
pub(crate) fn source_ips(common: &Common, connections: usize) -> (u8, u8) {
    let ips = if common.source_ips == 0 {
        connections.div_ceil(4_000).clamp(1, 50) as u8
    } else {
        common.source_ips
    };
    let first = if common.first_source_ip == 0 {
        2 + (uuid::Uuid::new_v4().as_u128() % 199) as u8
    } else {
        common.first_source_ip
    };
    (ips.min(255 - first), first)
}

impl Setup {
    pub(crate) async fn start(common: &Common, kind: ServerKind) -> anyhow::Result<Setup> {
        match kind {
            ServerKind::Raw => Ok(Setup {
                broker: None,
                server: Server::raw(common.protocol).await?,
                kafka: None,
            }),
            ServerKind::Gateway => {
                let broker = cluster::start_broker(common.kafka.as_deref(), common.broker).await?;
                let prefix = common.topic_prefix.clone().unwrap_or_else(|| {
                    format!("bench{}.", &uuid::Uuid::new_v4().simple().to_string()[..8])
                });
                cluster::create_topics(&broker, &prefix, common.partitions).await?;
                let server = match common.gateway_addr {
                    Some(addr) => Server::external(addr, common.gateway_ops, common.gateway_pid),
                    None => {
                        Server::gateway(
                            &broker,
                            &prefix,
                            &GatewayLaunch {
                                binary: common.gateway_bin.clone(),
                                extra_args: common.gateway_flags(),
                                jwt_secret: common.jwt_secret.clone(),
                            },
                        )
                        .await?
                    }
                };
                if common.gateway_realtime {
                    let pid = server
                        .pid
                        .context("--gateway-realtime needs the gateway's pid")?;
                    realtime(pid)?;
                }
                let kafka = cluster::kafka_args(&broker, &prefix);
                Ok(Setup {
                    broker: Some(broker),
                    server,
                    kafka: Some(kafka),
                })
            }
        }
    }

    fn target(&self, common: &Common, connections: usize) -> Target {
        let (source_ips, first_source_ip) = source_ips(common, connections);
        Target {
            addr: self.server.ws_addr,
            protocol: common.protocol,
            source_ips,
            first_source_ip,
            stomp_heartbeat_ms: 0,
            peer: None,
            deflate: common.deflate,
        }
    }

    pub(crate) async fn publisher(
        &self,
        common: &Common,
        accounts: usize,
        linger_ms: u64,
    ) -> anyhow::Result<Publisher> {
        let sink = match (&self.kafka, self.server.control_addr) {
            (Some(kafka), _) => EventSink::kafka(kafka, common.protocol, linger_ms)?,
            (None, Some(control)) => EventSink::raw(control).await?,
            (None, None) => anyhow::bail!("nowhere to publish"),
        };
        Ok(Publisher::new(
            sink,
            common.protocol,
            accounts,
            common.pad_spec(),
        ))
    }

    /// Open `connections` subscribed clients over `accounts` and wait until
    /// they are (or two minutes passed).
    async fn open_fleet(
        &self,
        common: &Common,
        connections: usize,
        accounts: usize,
    ) -> anyhow::Result<Fleet> {
        let creds = client::credentials(connections, accounts, &common.jwt_secret)?;
        let fleet = Fleet::open(&self.target(common, connections), creds, common.concurrency);
        fleet.wait_open(Duration::from_secs(120)).await;
        Ok(fleet)
    }

    /// Wait `warmup`, then measure `duration`: frames the fleet received,
    /// CPU of every process, the gateway's metrics over the window. The
    /// latency histograms start empty at the window's start.
    async fn measure(&self, fleet: &Fleet, warmup: Duration, duration: Duration) -> Window {
        tokio::time::sleep(warmup).await;
        let r0 = fleet.received();
        let t0 = Instant::now();
        let s0 = self.scrape().await;
        let cpu = self.cpu_marks();
        hist::DELIVERY.take();
        hist::KAFKA.take();
        tokio::time::sleep(duration).await;
        let frames = fleet.received() - r0;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu.read();
        let s1 = self.scrape().await;
        Window {
            frames,
            secs,
            cpu,
            gateway: gateway_window(&s0, &s1),
        }
    }

    pub(crate) async fn scrape(&self) -> Option<Scrape> {
        Scrape::fetch(self.server.ops_addr?).await.ok()
    }

    pub(crate) fn cpu_marks(&self) -> CpuMarks {
        CpuMarks {
            server: self.server.pid.map(CpuMark::start),
            broker: self
                .broker
                .as_ref()
                .and_then(cluster::broker_pid)
                .map(CpuMark::start),
            loadgen: CpuMark::start(std::process::id()),
        }
    }

    pub(crate) async fn stop(self) {
        self.server.stop().await;
        drop(self.broker);
    }
}

/// Put every thread of process `pid` in `SCHED_FIFO` at priority 50 (threads
/// it starts later inherit the policy from their creator).
fn realtime(pid: u32) -> anyhow::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?.file_name();
        let status = std::process::Command::new("chrt")
            .args(["-f", "-p", "50"])
            .arg(&tid)
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run chrt (util-linux)")?;
        anyhow::ensure!(
            status.success(),
            "chrt -f -p 50 {} failed: real-time priority needs root or CAP_SYS_NICE",
            tid.to_string_lossy()
        );
    }
    Ok(())
}

/// What [`Setup::measure`] saw over its window.
struct Window {
    frames: u64,
    secs: f64,
    cpu: Value,
    gateway: Value,
}

pub(crate) struct CpuMarks {
    pub(crate) server: Option<CpuMark>,
    pub(crate) broker: Option<CpuMark>,
    pub(crate) loadgen: CpuMark,
}

impl CpuMarks {
    pub(crate) fn read(&self) -> Value {
        json!({
            "server": self.server.map(|m| m.read()),
            "broker": self.broker.map(|m| m.read()),
            "loadgen": self.loadgen.read(),
        })
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn fleet_health(fleet: &Fleet) -> Value {
    json!({
        "failed": fleet.failed.load(std::sync::atomic::Ordering::Relaxed),
        "closed_by_server": fleet.closed(),
        "first_error": fleet.first_error.lock().ok().and_then(|e| e.clone()),
    })
}

fn gateway_window(before: &Option<Scrape>, after: &Option<Scrape>) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let h =
        |name: &str| -> HistogramSummary { a.histogram(name).since(&b.histogram(name)).summary() };
    let d = |name: &str| a.sum(name, "") - b.sum(name, "");
    json!({
        "dispatch_latency": h("herald_dispatch_latency_seconds"),
        "delivery_latency": h("herald_delivery_latency_seconds"),
        "gateway_latency": h("herald_gateway_latency_seconds"),
        "frames_sent": d("herald_frames_sent_total"),
        "frames_dropped": d("herald_frames_dropped_total"),
        "slow_client_disconnects": d("herald_slow_client_disconnects_total"),
        "records_consumed": d("herald_records_consumed_total"),
    })
}

/// `idle`: gateway memory per idle subscribed connection.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Accounts they belong to (0: one per 100 connections).
    #[arg(long, default_value_t = 0)]
    pub accounts: usize,
    /// Memory is sampled after each of this many equal steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Seconds to wait after a step before sampling memory.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// Seconds over which idle CPU is measured once everyone is connected.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Server.
    #[arg(long, value_enum, default_value = "gateway")]
    pub server: ServerKind,
}

/// Run `idle`.
pub async fn idle(common: &Common, args: &IdleArgs) -> anyhow::Result<Value> {
    let accounts = if args.accounts == 0 {
        args.connections.div_ceil(100).max(1)
    } else {
        args.accounts
    };
    let setup = Setup::start(common, args.server).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = setup.server.rss().unwrap_or(0);
    let loadgen_before = procstat::rss_bytes(std::process::id()).unwrap_or(0);
    let creds = client::credentials(args.connections, accounts, &common.jwt_secret)?;
    let target = setup.target(common, args.connections);
    let steps = args.steps.max(1);
    let per_step = args.connections.div_ceil(steps);
    let mut fleets: Vec<Fleet> = Vec::new();
    let mut points = vec![json!({"connections": 0, "rss_bytes": rss_before})];
    let mut open_time = Duration::ZERO;
    let cpu = setup.cpu_marks();
    let mut rest = creds;
    let mut opened = 0usize;
    while !rest.is_empty() {
        let chunk: Vec<_> = rest.drain(..per_step.min(rest.len())).collect();
        let fleet = Fleet::open(&target, chunk, common.concurrency);
        open_time += fleet.wait_open(Duration::from_secs(120)).await;
        opened += fleet.subscribed.load(std::sync::atomic::Ordering::Relaxed) as usize;
        fleets.push(fleet);
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let rss = setup.server.rss().unwrap_or(0);
        eprintln!("idle: {opened} connections, server RSS {:.1} MiB", mib(rss));
        points.push(json!({"connections": opened, "rss_bytes": rss}));
    }
    let connect_cpu = cpu.read();
    let rss_after = setup.server.rss().unwrap_or(0);
    let idle_cpu = setup.cpu_marks();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let idle_cpu = idle_cpu.read();
    let live: usize = fleets.iter().map(Fleet::live).sum();

    // One event per account: proves every connection is live and shows
    // what a connection costs once it has carried traffic.
    let mut publisher = setup.publisher(common, accounts, 0).await?;
    for a in 0..accounts {
        publisher.send(a).await?;
    }
    publisher.flush().await?;
    publisher.finish();
    let mut complete = true;
    for f in &fleets {
        complete &= f
            .wait_delivered(&publisher.sent, Duration::from_secs(30))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_after_event = setup.server.rss().unwrap_or(0);
    let (mut lost, mut dups) = (0, 0);
    for f in &fleets {
        let (l, d) = f.audit(&publisher.sent);
        lost += l;
        dups += d;
    }
    let loadgen_after = procstat::rss_bytes(std::process::id()).unwrap_or(0);
    let health: Vec<Value> = fleets.iter().map(fleet_health).collect();
    for f in fleets {
        f.close().await;
    }
    setup.stop().await;
    let n = opened.max(1) as f64;
    let per_conn = rss_after.saturating_sub(rss_before) as f64 / n;
    let per_conn_event = rss_after_event.saturating_sub(rss_before) as f64 / n;
    eprintln!(
        "idle: {opened} subscribed; {:.0} B/connection idle, {:.0} B after one event; idle CPU {:.3} cores",
        per_conn,
        per_conn_event,
        idle_cpu["server"]["cores"].as_f64().unwrap_or(0.0)
    );
    Ok(json!({
        "server": args.server,
        "params": {"connections": args.connections, "accounts": accounts, "steps": steps},
        "connections_subscribed": opened,
        "connections_live_at_end_of_idle": live,
        "connect_seconds": open_time.as_secs_f64(),
        "connects_per_second": opened as f64 / open_time.as_secs_f64().max(1e-9),
        "connect_latency": Percentiles::of(&hist::CONNECT.take()),
        "cpu_while_connecting": connect_cpu,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_connection_bytes": per_conn,
        "rss_after_one_event_bytes": rss_after_event,
        "rss_per_connection_after_one_event_bytes": per_conn_event,
        "idle_cpu": idle_cpu,
        "loadgen_rss_bytes": {"before": loadgen_before, "after": loadgen_after},
        "memory_points": points,
        "events_sent": publisher.total,
        "delivered_all": complete,
        "lost": lost,
        "duplicated": dups,
        "clients": health,
    }))
}

/// `fanout`: the most frames per second the server sustains, closed loop.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Connections.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Accounts (fan-out = connections / accounts).
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Undelivered events allowed per account (the closed loop's window:
    /// large enough to cover the Kafka round trip, below `--outbound-queue`).
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Seconds of publishing before the measurement window.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Producer `linger.ms`.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Servers, in order (the ratio is gateway / raw).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gateway,raw")]
    pub servers: Vec<ServerKind>,
}

/// Run `fanout`.
pub async fn fanout(common: &Common, args: &FanoutArgs) -> anyhow::Result<Value> {
    let mut runs = serde_json::Map::new();
    let mut fps = std::collections::HashMap::new();
    for &kind in &args.servers {
        let setup = Setup::start(common, kind).await?;
        let fleet = setup
            .open_fleet(common, args.connections, args.accounts)
            .await?;
        let fanout = fleet.recipients_per_account(args.accounts);
        let mut publisher = setup
            .publisher(common, args.accounts, args.linger_ms)
            .await?;
        let stop = AtomicStop::default();
        let total = Duration::from_secs(args.warmup_secs + args.duration_secs);
        let measure = async {
            let w = setup
                .measure(
                    &fleet,
                    Duration::from_secs(args.warmup_secs),
                    Duration::from_secs(args.duration_secs),
                )
                .await;
            (w, Percentiles::of(&hist::DELIVERY.take()))
        };
        let (published, (window, latency)) = tokio::join!(
            publisher.windowed(&fleet, args.window, total, &stop),
            measure
        );
        let (frames, secs, cpu, gw) = (window.frames, window.secs, window.cpu, window.gateway);
        published?;
        publisher.flush().await?;
        publisher.finish();
        let complete = fleet
            .wait_delivered(&publisher.sent, Duration::from_secs(30))
            .await;
        let (lost, dups) = fleet.audit(&publisher.sent);
        let rate = frames as f64 / secs;
        // Everything read over the run (frames, heart-beats, replies) per
        // event frame received: what one delivery costs on the wire.
        let wire_per_frame = fleet.wire_bytes() as f64 / fleet.received().max(1) as f64;
        eprintln!(
            "fanout[{kind:?}]: {rate:.0} frames/s ({:.0} events/s), p99 {:.2} ms, {wire_per_frame:.0} wire bytes/frame, lost {lost}, duplicated {dups}",
            rate / (args.connections as f64 / args.accounts as f64),
            latency.p99_ms
        );
        fps.insert(format!("{kind:?}"), rate);
        runs.insert(
            format!("{kind:?}").to_lowercase(),
            json!({
                "connections_subscribed": fleet.subscribed.load(std::sync::atomic::Ordering::Relaxed),
                "recipients_per_account_min": fanout.iter().min(),
                "frames_per_second": rate,
                "wire_bytes_per_frame": wire_per_frame,
                "events_per_second": rate / (fleet.subscribed.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64 / args.accounts as f64),
                "window_seconds": secs,
                "latency_closed_loop": latency,
                "cpu": cpu,
                "gateway": gw,
                "server_rss_bytes": setup.server.rss(),
                "events_sent": publisher.total,
                "delivered_all": complete,
                "lost": lost,
                "duplicated": dups,
                "clients": fleet_health(&fleet),
            }),
        );
        fleet.close().await;
        setup.stop().await;
    }
    let ratio = match (fps.get("Gateway"), fps.get("Raw")) {
        (Some(g), Some(r)) if *r > 0.0 => Some(g / r),
        _ => None,
    };
    if let Some(r) = ratio {
        eprintln!("fanout: gateway / raw = {:.1}%", r * 100.0);
    }
    Ok(json!({
        "params": {"connections": args.connections, "accounts": args.accounts, "fanout": args.connections / args.accounts.max(1),
                   "deflate": common.deflate, "pad": common.pad, "pad_kind": common.pad_kind,
                   "window": args.window, "warmup_secs": args.warmup_secs, "duration_secs": args.duration_secs},
        "runs": runs,
        "gateway_to_raw_ratio": ratio,
    }))
}

/// `latency`: end-to-end latency at fixed publish rates, open loop.
#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Connections.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Accounts (recipients per event = connections / accounts).
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Publish rates to step through, events/s. Each rate gets a fresh
    /// broker, gateway and set of connections, so no rate pays for the
    /// records or connections of another (tansu's cost per fetch even grows
    /// with every batch it holds).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub rates: Vec<f64>,
    /// Seconds per rate before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// Seconds measured per rate.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Producer `linger.ms`. 5 is what Herald's own producer service and
    /// librdkafka use by default; the send time is stamped before the
    /// linger, so it is part of the measured latency. 0 sends every record
    /// alone, which the test broker cannot sustain beyond a few hundred
    /// records/s.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Servers, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gateway")]
    pub servers: Vec<ServerKind>,
    /// `fetch.wait.max.ms` of the gateway's consumer (passed as
    /// `--kafka-fetch-wait-ms`) and of the bare probe consumer; 0 leaves the
    /// gateway's default (100 ms). Apache Kafka answers a fetch as soon as
    /// records arrive, so this bounds only idle fetches; tansu (`--broker
    /// tansu`) holds every fetch for the full wait, so there the broker's
    /// share of the latency is one to two times this wait.
    #[arg(long, default_value_t = 0)]
    pub fetch_wait_ms: u64,
    /// Do not run the bare consumer that measures the broker's share
    /// (`kafka_only_latency`); its fetches cost the test broker CPU.
    #[arg(long)]
    pub no_probe: bool,
}

/// Run `latency`.
pub async fn latency(common: &Common, args: &LatencyArgs) -> anyhow::Result<Value> {
    let mut common = common.clone();
    if args.fetch_wait_ms > 0 {
        common
            .gateway_args
            .push(format!("--kafka-fetch-wait-ms={}", args.fetch_wait_ms));
    }
    let fetch_wait_ms = if args.fetch_wait_ms > 0 {
        args.fetch_wait_ms
    } else {
        // The gateway's default (`--kafka-fetch-wait-ms`).
        100
    };
    let mut runs = serde_json::Map::new();
    for &kind in &args.servers {
        let mut steps = Vec::new();
        let (mut sent, mut lost, mut dups) = (0u64, 0u64, 0u64);
        for &rate in &args.rates {
            let step = latency_step(&common, args, kind, rate, fetch_wait_ms).await?;
            sent += step["events_sent"].as_u64().unwrap_or(0);
            lost += step["lost"].as_u64().unwrap_or(0);
            dups += step["duplicated"].as_u64().unwrap_or(0);
            steps.push(step);
        }
        runs.insert(
            format!("{kind:?}").to_lowercase(),
            json!({"steps": steps, "events_sent": sent, "lost": lost, "duplicated": dups}),
        );
    }
    Ok(json!({
        "params": {"connections": args.connections, "accounts": args.accounts,
                   "recipients_per_event": args.connections / args.accounts.max(1),
                   "rates": args.rates, "warmup_secs": args.warmup_secs, "duration_secs": args.duration_secs,
                   "linger_ms": args.linger_ms, "fetch_wait_ms": fetch_wait_ms,
                   "partitions": common.partitions, "fresh_setup_per_rate": true,
                   "gateway_realtime": common.gateway_realtime},
        "runs": runs,
    }))
}

/// One rate of `latency`, against a fresh setup.
async fn latency_step(
    common: &Common,
    args: &LatencyArgs,
    kind: ServerKind,
    rate: f64,
    fetch_wait_ms: u64,
) -> anyhow::Result<Value> {
    let setup = Setup::start(common, kind).await?;
    let fleet = setup
        .open_fleet(common, args.connections, args.accounts)
        .await?;
    let mut publisher = setup
        .publisher(common, args.accounts, args.linger_ms)
        .await?;
    let probe_stop = AtomicStop::default();
    let probe = match &setup.kafka {
        Some(kafka) if !args.no_probe => {
            let topics: Vec<String> = herald_schemas::Family::ALL
                .iter()
                .filter(|f| **f != herald_schemas::Family::ClientCommands)
                .map(|f| f.topic(&kafka.topic_prefix))
                .collect();
            Some(crate::publish::kafka_probe(
                kafka,
                &topics,
                fetch_wait_ms,
                probe_stop.clone(),
            )?)
        }
        _ => None,
    };
    let total = Duration::from_secs(args.warmup_secs + args.duration_secs);
    let measure = setup.measure(
        &fleet,
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.duration_secs),
    );
    let (published, window) = tokio::join!(publisher.at_rate(rate, total), measure);
    let (frames, secs, cpu, gw) = (window.frames, window.secs, window.cpu, window.gateway);
    published?;
    // Late frames of the window still count in its latency.
    let complete = fleet
        .wait_delivered(&publisher.sent, Duration::from_secs(20))
        .await;
    let latency = Percentiles::of(&hist::DELIVERY.take());
    let kafka_only = Percentiles::of(&hist::KAFKA.take());
    publisher.finish();
    probe_stop.set();
    if let Some(p) = probe {
        let _ = p.join();
    }
    let (lost, dups) = fleet.audit(&publisher.sent);
    if kafka_only.count > 0 {
        eprintln!(
            "latency[{kind:?}] {rate} events/s: kafka-only p50 {:.2} p99 {:.2} ms",
            kafka_only.p50_ms, kafka_only.p99_ms
        );
    }
    eprintln!(
        "latency[{kind:?}] {rate} events/s: {:.0} frames/s, p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms; gateway dispatch p99 {:?} ms, received -> written p50 {:?} p99 {:?} ms; cpu {cpu}; lost {lost} dup {dups}",
        frames as f64 / secs,
        latency.p50_ms,
        latency.p99_ms,
        latency.p999_ms,
        latency.max_ms,
        gw["dispatch_latency"]["p99_ms"].as_f64(),
        gw["gateway_latency"]["p50_ms"].as_f64(),
        gw["gateway_latency"]["p99_ms"].as_f64()
    );
    let step = json!({
        "rate_events_per_second": rate,
        "frames_per_second": frames as f64 / secs,
        "latency": latency,
        "kafka_only_latency": (kafka_only.count > 0).then_some(kafka_only),
        "cpu": cpu,
        "gateway": gw,
        "delivered_all": complete,
        "connections_subscribed": fleet.subscribed.load(std::sync::atomic::Ordering::Relaxed),
        "events_sent": publisher.total,
        "lost": lost,
        "duplicated": dups,
        "clients": fleet_health(&fleet),
    });
    fleet.close().await;
    setup.stop().await;
    Ok(step)
}

/// `storm`: new authenticated, subscribed connections per second.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Accounts.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Servers, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gateway,raw")]
    pub servers: Vec<ServerKind>,
}

/// Run `storm`.
pub async fn storm(common: &Common, args: &StormArgs) -> anyhow::Result<Value> {
    let mut runs = serde_json::Map::new();
    for &kind in &args.servers {
        let setup = Setup::start(common, kind).await?;
        let creds = client::credentials(args.connections, args.accounts, &common.jwt_secret)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        hist::CONNECT.take();
        let cpu = setup.cpu_marks();
        let fleet = Fleet::open(
            &setup.target(common, args.connections),
            creds,
            common.concurrency,
        );
        let took = fleet.wait_open(Duration::from_secs(150)).await;
        let cpu = cpu.read();
        let ok = fleet.subscribed.load(std::sync::atomic::Ordering::Relaxed);
        let rate = ok as f64 / took.as_secs_f64();
        let connect = Percentiles::of(&hist::CONNECT.take());
        eprintln!(
            "storm[{kind:?}]: {ok} subscribed in {:.2} s = {rate:.0}/s; connect p50 {:.2} p99 {:.2} ms",
            took.as_secs_f64(),
            connect.p50_ms,
            connect.p99_ms
        );
        runs.insert(
            format!("{kind:?}").to_lowercase(),
            json!({
                "connections_subscribed": ok,
                "seconds": took.as_secs_f64(),
                "connections_per_second": rate,
                "connect_latency": connect,
                "cpu": cpu,
                "server_rss_bytes": setup.server.rss(),
                "clients": fleet_health(&fleet),
            }),
        );
        fleet.close().await;
        setup.stop().await;
    }
    let ratio = match (
        runs.get("gateway")
            .and_then(|r| r["connections_per_second"].as_f64()),
        runs.get("raw")
            .and_then(|r| r["connections_per_second"].as_f64()),
    ) {
        (Some(g), Some(r)) if r > 0.0 => Some(g / r),
        _ => None,
    };
    Ok(json!({
        "params": {"connections": args.connections, "accounts": args.accounts, "concurrency": common.concurrency},
        "runs": runs,
        "gateway_to_raw_ratio": ratio,
    }))
}

/// `ingest`: records/s consumed with no matching subscriber, gateway vs a
/// bare rdkafka consumer reading the same records from the same broker.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Records to produce and consume.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Send without `type`/`account_id` headers (the gateway must then parse every record).
    #[arg(long)]
    pub no_headers: bool,
}

/// Run `ingest`.
pub async fn ingest(common: &Common, args: &IngestArgs) -> anyhow::Result<Value> {
    let setup = Setup::start(common, ServerKind::Gateway).await?;
    let kafka = setup.kafka.clone().context("ingest needs Kafka")?;
    let topic = herald_schemas::Family::Tag.topic(&kafka.topic_prefix);
    let records = args.records;

    // Where the backlog starts, per partition.
    let start_offsets = {
        let kafka = kafka.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
            let c: BaseConsumer = kafka
                .client_config()?
                .set("group.id", "herald-bench-offsets")
                .create()?;
            let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let parts: Vec<i32> = md
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            parts
                .into_iter()
                .map(|p| Ok((p, c.fetch_watermarks(&topic, p, Duration::from_secs(10))?.1)))
                .collect()
        })
        .await??
    };

    // A bare consumer, connected and assigned now, then paused, so that
    // like the gateway it has its connection and fetch session ready when
    // the backlog is released.
    let bare = {
        let kafka = kafka.clone();
        let topic = topic.clone();
        let start_offsets = start_offsets.clone();
        tokio::task::spawn_blocking(
            move || -> anyhow::Result<(BaseConsumer, TopicPartitionList)> {
                let c: BaseConsumer = kafka
                    .client_config()?
                    .set(
                        "group.id",
                        format!("herald-bench-{}", uuid::Uuid::new_v4().simple()),
                    )
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "false")
                    // The gateway's fetch setting: the test broker holds every
                    // fetch for this long, so it sets the pace of both.
                    .set("fetch.wait.max.ms", "50")
                    .create()?;
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &start_offsets {
                    tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))?;
                }
                c.assign(&tpl)?;
                let warm = Instant::now();
                while warm.elapsed() < Duration::from_secs(1) {
                    let _ = c.poll(Duration::from_millis(50));
                }
                c.pause(&tpl)?;
                Ok((c, tpl))
            },
        )
        .await??
    };

    // Freeze the gateway so the whole backlog is waiting when it resumes.
    let consumed = |s: &Scrape| {
        s.sum(
            "herald_records_consumed_total",
            &format!("topic=\"{topic}\""),
        )
    };
    let ops = setup
        .server
        .ops_addr
        .context("gateway ops address unknown")?;
    let c0 = consumed(&Scrape::fetch(ops).await?);
    setup.server.signal("-STOP").await?;
    let produce_start = Instant::now();
    let producer = crate::publish::kafka_producer(&kafka, 5)?;
    let pad = "x".repeat(common.pad);
    for i in 0..records {
        // Accounts nobody is connected for, spread over every partition.
        let account = (900_000 + i % 64).to_string();
        let payload = format!(r#"{{"id":"t-{i}","name":"ingest{pad}","color":"tag-red"}}"#);
        let value = crate::stamp::envelope(
            Protocol::Stomp,
            i,
            &account,
            "2026-01-01T00:00:00.000Z",
            &payload,
        );
        crate::publish::send_record(
            &producer,
            &topic,
            &account,
            &value,
            "tag.updated",
            !args.no_headers,
        )?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60))?;
    let produce_secs = produce_start.elapsed().as_secs_f64();
    let failed = rdkafka::producer::Producer::context(&producer)
        .failed
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("ingest: produced {records} records in {produce_secs:.2} s ({failed} failed)");

    setup.server.signal("-CONT").await?;
    let cpu = setup.cpu_marks();
    let t0 = Instant::now();
    let mut gateway_read = 0.0;
    while t0.elapsed() < Duration::from_secs(60) {
        gateway_read = consumed(&Scrape::fetch(ops).await?) - c0;
        if gateway_read >= records as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gateway_secs = t0.elapsed().as_secs_f64();
    let gateway_cpu = cpu.read();
    let gateway_rate = gateway_read / gateway_secs;
    eprintln!(
        "ingest: gateway consumed {gateway_read} in {gateway_secs:.2} s = {gateway_rate:.0}/s"
    );

    // The same records again, read by the bare consumer.
    let cpu = setup.cpu_marks();
    let (bare_read, bare_secs) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, f64)> {
            let (c, tpl) = bare;
            c.resume(&tpl)?;
            let t0 = Instant::now();
            let mut n = 0u64;
            let mut bytes = 0usize;
            while n < records && t0.elapsed() < Duration::from_secs(60) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    n += 1;
                }
            }
            std::hint::black_box(bytes);
            Ok((n, t0.elapsed().as_secs_f64()))
        })
        .await??;
    let bare_cpu = cpu.read();
    let bare_rate = bare_read as f64 / bare_secs;
    let ratio = gateway_rate / bare_rate.max(1e-9);
    eprintln!(
        "ingest: bare consumer read {bare_read} in {bare_secs:.2} s = {bare_rate:.0}/s; gateway / bare = {:.1}%",
        ratio * 100.0
    );
    setup.stop().await;
    Ok(json!({
        "params": {"records": records, "headers": !args.no_headers, "partitions": common.partitions},
        "produce_seconds": produce_secs,
        "produce_failed": failed,
        "gateway": {"records": gateway_read, "seconds": gateway_secs, "records_per_second": gateway_rate, "cpu": gateway_cpu},
        "bare_consumer": {"records": bare_read, "seconds": bare_secs, "records_per_second": bare_rate, "cpu": bare_cpu},
        "gateway_to_bare_ratio": ratio,
        "lost": records.saturating_sub(gateway_read as u64),
    }))
}

/// `hostile`: healthy subscribed clients at a steady event rate, first
/// alone and then with hostile clients of every pattern in
/// [`crate::hostile::PATTERNS`], on the same gateway in the same run.
#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    /// Healthy subscribed connections.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Accounts of the healthy connections.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Events per second published throughout.
    #[arg(long, default_value_t = 250.0)]
    pub rate: f64,
    /// Hostile clients (spread over the patterns).
    #[arg(long, default_value_t = 100)]
    pub hostile: usize,
    /// Seconds measured without the hostile clients.
    #[arg(long, default_value_t = 20)]
    pub calm_secs: u64,
    /// Seconds measured with them.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Seconds before each measurement.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
}

/// Run `hostile`.
pub async fn hostile(common: &Common, args: &HostileArgs) -> anyhow::Result<Value> {
    use crate::hostile::{self, Tally};
    let setup = Setup::start(common, ServerKind::Gateway).await?;
    let pid = setup.server.pid;
    let fleet = setup
        .open_fleet(common, args.connections, args.accounts)
        .await?;
    let mut publisher = setup.publisher(common, args.accounts, 5).await?;
    let rss_before = setup.server.rss().unwrap_or(0);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = pid.and_then(procstat::rss_bytes) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let phase = async |publisher: &mut Publisher, secs: u64| -> anyhow::Result<Value> {
        let total = Duration::from_secs(args.warmup_secs + secs);
        let measure = setup.measure(
            &fleet,
            Duration::from_secs(args.warmup_secs),
            Duration::from_secs(secs),
        );
        let (published, window) = tokio::join!(publisher.at_rate(args.rate, total), measure);
        published?;
        let latency = Percentiles::of(&hist::DELIVERY.take());
        Ok(
            json!({"latency": latency, "frames_per_second": window.frames as f64 / window.secs,
                  "cpu": window.cpu, "gateway": window.gateway}),
        )
    };
    let calm = phase(&mut publisher, args.calm_secs).await?;
    let calm_peak = peak.load(std::sync::atomic::Ordering::Relaxed);

    let tally = std::sync::Arc::new(Tally::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let creds = client::credentials(args.hostile, 1, &common.jwt_secret)?;
    let mut attackers = tokio::task::JoinSet::new();
    for (i, cred) in creds.into_iter().enumerate() {
        let pattern = hostile::PATTERNS[i % hostile::PATTERNS.len()];
        attackers.spawn(hostile::run(
            pattern,
            setup.server.ws_addr,
            (cred.user.parse().unwrap_or_default(), cred.token),
            tally.clone(),
            stop.clone(),
        ));
    }
    let attacked = phase(&mut publisher, args.duration_secs).await?;
    stop.cancel();
    while attackers.join_next().await.is_some() {}
    sampler.abort();
    let complete = fleet
        .wait_delivered(&publisher.sent, Duration::from_secs(30))
        .await;
    publisher.finish();
    let (lost, dups) = fleet.audit(&publisher.sent);
    let scrape = setup.scrape().await;
    let cut: serde_json::Map<String, Value> = scrape
        .as_ref()
        .map(|s| {
            s.series("herald_outbound_disconnects_total")
                .into_iter()
                .map(|(labels, v)| (labels, json!(v)))
                .collect()
        })
        .unwrap_or_default();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let p99 = |v: &Value| v["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "hostile: {} healthy clients at {} events/s; p99 {:.1} ms alone, {:.1} ms with {} hostile clients ({} connections, {} messages, {} dropped by the gateway); gateway RSS {:.1} MiB before, peak {:.1} MiB alone, {:.1} MiB with them; lost {lost} duplicated {dups}",
        args.connections,
        args.rate,
        p99(&calm),
        p99(&attacked),
        args.hostile,
        tally.connections.load(std::sync::atomic::Ordering::Relaxed),
        tally.messages.load(std::sync::atomic::Ordering::Relaxed),
        tally.dropped.load(std::sync::atomic::Ordering::Relaxed),
        mib(rss_before),
        mib(calm_peak),
        mib(peak),
    );
    let result = json!({
        "params": {"connections": args.connections, "accounts": args.accounts, "rate": args.rate,
                   "hostile": args.hostile, "patterns": hostile::PATTERNS.iter().map(|p| p.name()).collect::<Vec<_>>(),
                   "calm_secs": args.calm_secs, "duration_secs": args.duration_secs},
        "calm": calm,
        "attacked": attacked,
        "gateway_rss_bytes": {"before": rss_before, "peak_calm": calm_peak, "peak_attacked": peak},
        "hostile_clients": {"connections": tally.connections.load(std::sync::atomic::Ordering::Relaxed),
                             "messages": tally.messages.load(std::sync::atomic::Ordering::Relaxed),
                             "dropped_by_gateway": tally.dropped.load(std::sync::atomic::Ordering::Relaxed)},
        "outbound_disconnects": cut,
        "delivered_all": complete,
        "events_sent": publisher.total,
        "lost": lost,
        "duplicated": dups,
        "clients": fleet_health(&fleet),
    });
    fleet.close().await;
    setup.stop().await;
    Ok(result)
}
