//! `herald-loadgen simulate`: the capacity model of docs/scaling.md as a
//! program. No broker, no sockets: it builds a workload (accounts with a
//! Zipf-distributed number of connections, an event rate per account, the
//! Kafka partition each account's key lands in) and computes what every pod
//! reads, writes and holds under two designs:
//!
//! - **all partitions** (what the gateway does today): every pod reads every
//!   partition, connections are spread over all pods;
//! - **partition-affine groups** (a design, not implemented): group `g` of
//!   `G` reads only the partitions `p` with `p % G == g`, and a client is
//!   connected to a pod of the group that owns its account's partition.
//!
//! The capacity constants default to the measurements of docs/benchmarks.md
//! and `bench-results/*.json`; every one is a flag. Deterministic: the same
//! arguments and `--seed` print the same numbers.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

/// The workload and the capacity constants.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Accounts (tenants). Account ids are "1" ..= "<accounts>", the Kafka
    /// record key, as Herald's producer writes it.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Connections over all accounts.
    #[arg(long, default_value_t = 1_000_000)]
    pub connections: u64,
    /// Zipf exponent of connections per account: the account of rank r gets
    /// a share proportional to r^-s (0: every account the same size).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Events per second over all accounts and topics.
    #[arg(long, default_value_t = 50_000.0)]
    pub events_per_second: f64,
    /// An account's event rate is proportional to connections^k (1: events
    /// in proportion to connections; 0: every account publishes the same).
    #[arg(long, default_value_t = 1.0)]
    pub rate_exponent: f64,
    /// Share of an account's connections one event reaches (entitlement,
    /// audiences and subscriptions narrow it; 1: every connection of the
    /// account, as in the benchmarks).
    #[arg(long, default_value_t = 1.0)]
    pub audience: f64,
    /// At most this many connections receive one event (teams, inboxes,
    /// one conversation's agents; 0: no cap). Recipients of an event of an
    /// account with c connections: min(c × audience, max).
    #[arg(long, default_value_t = 0.0)]
    pub max_recipients: f64,
    /// Partitions of every served topic (all topics have the same count, as
    /// deploy/kafka/create-topics.sh creates them).
    #[arg(long, default_value_t = 48)]
    pub partitions: u32,
    /// Served topics (Herald has 11 event families; only the history
    /// buffer's size depends on it).
    #[arg(long, default_value_t = 11)]
    pub topics: u32,
    /// Gateway pods for the per-pod report (0: only the pods needed).
    #[arg(long, default_value_t = 0)]
    pub pods: u32,
    /// Partition-affine groups; must divide --partitions. Group g reads the
    /// partitions p with p % groups == g.
    #[arg(long, default_value_t = 4)]
    pub groups: u32,
    /// Seed of the random choices (which account ids get which size, the
    /// rounding of connection counts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Records/s one pod's Kafka consumer reads when it has no recipient for
    /// them (`bench-results/ingest-stomp.json`: 867,223/s; 0.80-0.89 M/s over
    /// the runs of docs/benchmarks.md). One consumer per pod: more cores do
    /// not raise it.
    #[arg(long, default_value_t = 867_000.0)]
    pub ingest_records_per_second: f64,
    /// CPU per record read, microseconds (the same run: 1.21 cores for
    /// 867,223 records/s, librdkafka's threads included).
    #[arg(long, default_value_t = 1.40)]
    pub ingest_cpu_us: f64,
    /// Extra work of the record loop for a record this pod has a connection
    /// of the account for, microseconds (criterion: `Envelope::decode` 0.32
    /// µs + `Router::dispatch` to one recipient 0.49 µs).
    #[arg(long, default_value_t = 0.8)]
    pub decode_us: f64,
    /// Record-loop work per recipient (a local connection entitled to the
    /// event: checked and queued), nanoseconds (criterion:
    /// `Router::dispatch`, 69 ns per recipient at 1,000 recipients).
    #[arg(long, default_value_t = 69.0)]
    pub dispatch_ns: f64,
    /// Record-loop work per local connection of the account that is not
    /// entitled to the event (checked, not queued), nanoseconds (assumed: not
    /// measured on its own).
    #[arg(long, default_value_t = 10.0)]
    pub check_ns: f64,
    /// Frames/s one pod core writes when a connection's frames are coalesced
    /// into few writes (`fanout-stomp-layout.json`: 2.90 M frames/s on 0.97
    /// cores, 100 connections per account, closed loop).
    #[arg(long, default_value_t = 2_900_000.0)]
    pub fanout_frames_per_second: f64,
    /// CPU per frame when each frame is its own write, microseconds
    /// (docs/benchmarks.md, latency runs: 8.8 µs per frame on loopback, the
    /// receiving side's kernel work included, so an upper bound).
    #[arg(long, default_value_t = 8.8)]
    pub write_us: f64,
    /// Frames per write system call. 1: every frame its own write, what a
    /// connection receiving far less than an event per millisecond gets.
    #[arg(long, default_value_t = 1.0)]
    pub frames_per_write: f64,
    /// Gateway RSS per idle subscribed connection, bytes
    /// (`idle-stomp-layout.json`: 7,714).
    #[arg(long, default_value_t = 7_714.0)]
    pub connection_bytes: f64,
    /// Gateway RSS with no connection, bytes (same run: 15,880,192).
    #[arg(long, default_value_t = 15_880_192.0)]
    pub base_bytes: f64,
    /// `--history-buffer-events` of the gateway (records per partition).
    #[arg(long, default_value_t = 10_000)]
    pub history_buffer_events: u64,
    /// `--history-buffer-bytes` of the gateway (over every partition).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub history_buffer_bytes: u64,
    /// `--resume-max-age-secs` of the gateway (records older leave the buffer).
    #[arg(long, default_value_t = 86_400)]
    pub resume_max_age_secs: u64,
    /// Event payload bytes (assumed: no benchmark measures a realistic
    /// payload; the benchmarks' are about 90 bytes).
    #[arg(long, default_value_t = 300.0)]
    pub payload_bytes: f64,
    /// WebSocket frame bytes per delivered event (assumed: payload plus the
    /// STOMP MESSAGE headers and the WebSocket header).
    #[arg(long, default_value_t = 450.0)]
    pub frame_bytes: f64,
    /// Bytes a pod fetches from Kafka per record (assumed: the envelope,
    /// headers and record overhead, uncompressed).
    #[arg(long, default_value_t = 500.0)]
    pub record_bytes: f64,
    /// Cores per pod, at the speed of the benchmark machine's (AMD EPYC
    /// vCPU); the Helm chart requests 1. Raises the fan-out capacity, not
    /// the ingest ceiling.
    #[arg(long, default_value_t = 1.0)]
    pub pod_cores: f64,
    /// Memory per pod, MiB (the Helm chart's limit: 2 GiB).
    #[arg(long, default_value_t = 2048.0)]
    pub pod_memory_mib: f64,
    /// Fewest pods of a design, and of each group, when counting the pods
    /// needed: one pod is no redundancy (a group without a pod serves none
    /// of its accounts).
    #[arg(long, default_value_t = 2)]
    pub min_pods: u32,
    /// Highest utilisation a pod may run at (ingest, record loop, CPU,
    /// memory) when counting the pods needed.
    #[arg(long, default_value_t = 0.7)]
    pub target_utilisation: f64,
}

impl SimulateArgs {
    /// Connections one event of an account with `connections` reaches.
    pub fn recipients(&self, connections: u64) -> f64 {
        let r = connections as f64 * self.audience;
        if self.max_recipients > 0.0 {
            r.min(self.max_recipients)
        } else {
            r
        }
    }

    /// Refuse a workload the model cannot describe, saying which flag.
    pub fn validate(&self) -> Result<()> {
        if self.accounts == 0 {
            bail!("--accounts must be at least 1");
        }
        if self.accounts > 10_000_000 {
            bail!("--accounts above 10,000,000 is not supported (the workload is held in memory)");
        }
        if self.partitions == 0 || self.topics == 0 {
            bail!("--partitions and --topics must be at least 1");
        }
        if self.partitions > 100_000 || self.topics > 10_000 {
            bail!("--partitions is at most 100,000 and --topics at most 10,000");
        }
        if self.pods > 100_000 {
            bail!("--pods is at most 100,000 (each pod is placed one at a time)");
        }
        if self.groups == 0 || !self.partitions.is_multiple_of(self.groups) {
            bail!(
                "--groups ({}) must divide --partitions ({}): a group owns the partitions p with p % groups == g in every topic",
                self.groups,
                self.partitions
            );
        }
        if self.pods != 0 && self.pods < self.groups {
            bail!(
                "--pods ({}) must be at least --groups ({}): every group needs a pod",
                self.pods,
                self.groups
            );
        }
        let finite_nonneg = [
            ("--zipf-exponent", self.zipf_exponent),
            ("--events-per-second", self.events_per_second),
            ("--rate-exponent", self.rate_exponent),
            ("--audience", self.audience),
            ("--max-recipients", self.max_recipients),
            ("--decode-us", self.decode_us),
            ("--dispatch-ns", self.dispatch_ns),
            ("--check-ns", self.check_ns),
            ("--connection-bytes", self.connection_bytes),
            ("--base-bytes", self.base_bytes),
            ("--payload-bytes", self.payload_bytes),
            ("--frame-bytes", self.frame_bytes),
            ("--record-bytes", self.record_bytes),
            ("--ingest-cpu-us", self.ingest_cpu_us),
            ("--write-us", self.write_us),
        ];
        for (flag, v) in finite_nonneg {
            if !v.is_finite() || v < 0.0 {
                bail!("{flag} must be a finite number >= 0 (got {v})");
            }
        }
        let positive = [
            (
                "--ingest-records-per-second",
                self.ingest_records_per_second,
            ),
            ("--fanout-frames-per-second", self.fanout_frames_per_second),
            ("--frames-per-write", self.frames_per_write),
            ("--pod-cores", self.pod_cores),
            ("--pod-memory-mib", self.pod_memory_mib),
            ("--target-utilisation", self.target_utilisation),
        ];
        for (flag, v) in positive {
            if !v.is_finite() || v <= 0.0 {
                bail!("{flag} must be a finite number > 0 (got {v})");
            }
        }
        if self.frames_per_write < 1.0 {
            bail!("--frames-per-write must be at least 1");
        }
        if self.audience > 1.0 {
            bail!("--audience must be at most 1 (a share of the account's connections)");
        }
        if self.target_utilisation > 1.0 {
            bail!("--target-utilisation must be at most 1");
        }
        Ok(())
    }
}

/// One account of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// The Kafka record key.
    pub id: String,
    pub connections: u64,
    pub events_per_second: f64,
    pub partition: u32,
}

/// The partition librdkafka's default partitioner (`consistent_random`,
/// what Herald's producer and gateway use unless `--partitioner` says
/// otherwise) picks for a keyed record: CRC-32 of the key modulo the
/// partition count.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    herald_runtime::partitioner::Partitioner::ConsistentRandom
        .partition(key.as_bytes(), partitions)
        .unwrap_or(0)
}

/// Accounts with Zipf-distributed connection counts (rounded at random so
/// the total stays close to `connections`), sizes assigned to account ids
/// in a seeded random order, and event rates proportional to
/// connections^rate_exponent.
pub fn workload(args: &SimulateArgs) -> Vec<Account> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let n = args.accounts;
    let weights: Vec<f64> = (1..=n)
        .map(|rank| (rank as f64).powf(-args.zipf_exponent))
        .collect();
    let total_weight: f64 = weights.iter().sum();
    let mut ids: Vec<usize> = (1..=n).collect();
    ids.shuffle(&mut rng);
    let counts: Vec<u64> = weights
        .iter()
        .map(|w| {
            let expected = args.connections as f64 * w / total_weight;
            let floor = expected.floor();
            floor as u64 + u64::from(rng.random::<f64>() < expected - floor)
        })
        .collect();
    let rate_weight = |c: u64| {
        if args.rate_exponent == 0.0 {
            1.0
        } else {
            (c as f64).powf(args.rate_exponent)
        }
    };
    let total_rate_weight: f64 = counts.iter().map(|&c| rate_weight(c)).sum();
    ids.into_iter()
        .zip(counts)
        .map(|(id, connections)| {
            let id = id.to_string();
            let events_per_second = if total_rate_weight > 0.0 {
                args.events_per_second * rate_weight(connections) / total_rate_weight
            } else {
                0.0
            };
            Account {
                partition: partition_of(&id, args.partitions),
                id,
                connections,
                events_per_second,
            }
        })
        .collect()
}

/// What one pod reads, writes and holds, and how busy that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodLoad {
    /// Records/s read from Kafka (every topic of the pod's partitions).
    pub records_per_second: f64,
    /// Of those, records of an account with a connection on this pod.
    pub decoded_per_second: f64,
    /// Frames/s written to clients.
    pub frames_per_second: f64,
    pub connections: f64,
    /// Resident memory, bytes.
    pub memory_bytes: f64,
    /// Bytes/s fetched from Kafka.
    pub fetch_bytes_per_second: f64,
    /// Bytes/s written to clients.
    pub egress_bytes_per_second: f64,
    /// records/s ÷ the ingest ceiling.
    pub ingest_utilisation: f64,
    /// The record loop's share of one core's time: ingest, decoding and
    /// dispatching to local recipients (serial: more cores do not help).
    pub loop_utilisation: f64,
    /// Frame writing's share of the pod's cores.
    pub fanout_utilisation: f64,
    /// All CPU (ingest, decode, frames) over the pod's cores.
    pub cpu_utilisation: f64,
    pub memory_utilisation: f64,
}

impl PodLoad {
    /// The binding utilisation (the highest of the four limits).
    pub fn worst(&self) -> f64 {
        self.ingest_utilisation
            .max(self.loop_utilisation)
            .max(self.cpu_utilisation)
            .max(self.memory_utilisation)
    }

    /// Which limit [`worst`](Self::worst) is.
    pub fn binding(&self) -> &'static str {
        let w = self.worst();
        if w == self.memory_utilisation {
            "memory"
        } else if w == self.ingest_utilisation {
            "ingest"
        } else if w == self.loop_utilisation {
            "record loop"
        } else {
            "cpu"
        }
    }
}

/// The accounts one set of pods serves, reduced to what the model needs.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    /// Records/s of the slice's partitions (every account in them).
    pub records_per_second: f64,
    /// Topic-partitions read (topics × partitions of the slice), and the
    /// records/s of each partition index.
    pub partition_rates: Vec<f64>,
    pub topics: u32,
    pub connections: u64,
    /// Σ rate × recipients: frames/s over the slice.
    pub frames_per_second: f64,
    /// Σ rate × connections: (event, connection) pairs the router looks
    /// at (it checks every connection of the account for entitlement).
    pub checks_per_second: f64,
    /// (connections, events/s) of each account with both.
    pub served: Vec<(u64, f64)>,
    pub account_bytes: f64,
}

impl Slice {
    /// The accounts whose partition is in `owned` (a partition → owned map).
    pub fn of(accounts: &[Account], args: &SimulateArgs, owned: impl Fn(u32) -> bool) -> Self {
        let partitions = args.partitions;
        let mut rates = vec![0.0; partitions as usize];
        let mut s = Slice {
            topics: args.topics,
            ..Slice::default()
        };
        let mut id_bytes = 0usize;
        for a in accounts {
            if !owned(a.partition) {
                continue;
            }
            rates[a.partition as usize] += a.events_per_second;
            s.records_per_second += a.events_per_second;
            s.connections += a.connections;
            s.frames_per_second += a.events_per_second * args.recipients(a.connections);
            s.checks_per_second += a.events_per_second * a.connections as f64;
            id_bytes += a.id.len();
            if a.connections > 0 && a.events_per_second > 0.0 {
                s.served.push((a.connections, a.events_per_second));
            }
        }
        let n = accounts
            .iter()
            .filter(|a| owned(a.partition))
            .count()
            .max(1);
        s.account_bytes = id_bytes as f64 / n as f64;
        s.partition_rates = (0..partitions)
            .filter(|&p| owned(p))
            .map(|p| rates[p as usize])
            .collect();
        s
    }

    /// Load of each of `pods` pods sharing this slice: every pod reads all
    /// of the slice's partitions, its connections are spread evenly.
    pub fn per_pod(&self, pods: u32, args: &SimulateArgs) -> PodLoad {
        let n = f64::from(pods.max(1));
        let records = self.records_per_second;
        // An account's record is decoded on a pod if one of its
        // connections is there: 1 - (1 - 1/n)^c, connections spread at random.
        let decoded: f64 = self
            .served
            .iter()
            .map(|&(c, r)| r * (1.0 - (1.0 - 1.0 / n).powf(c as f64)))
            .sum();
        let frames = self.frames_per_second / n;
        let checks = self.checks_per_second / n;
        let connections = self.connections as f64 / n;
        let coalesced_us = 1e6 / args.fanout_frames_per_second;
        let frame_us =
            coalesced_us + (args.write_us - coalesced_us).max(0.0) / args.frames_per_write;
        let loop_seconds = records / args.ingest_records_per_second
            + decoded * args.decode_us * 1e-6
            + frames * args.dispatch_ns * 1e-9
            + (checks - frames).max(0.0) * args.check_ns * 1e-9;
        let fanout_seconds = frames * frame_us * 1e-6;
        let cpu_seconds =
            records * args.ingest_cpu_us * 1e-6 + decoded * args.decode_us * 1e-6 + fanout_seconds;
        let memory = args.base_bytes
            + connections * args.connection_bytes
            + self.history_bytes(decoded, args);
        PodLoad {
            records_per_second: records,
            decoded_per_second: decoded,
            frames_per_second: frames,
            connections,
            memory_bytes: memory,
            fetch_bytes_per_second: records * args.record_bytes,
            egress_bytes_per_second: frames * args.frame_bytes,
            ingest_utilisation: records / args.ingest_records_per_second,
            loop_utilisation: loop_seconds,
            fanout_utilisation: fanout_seconds / args.pod_cores,
            cpu_utilisation: cpu_seconds / args.pod_cores,
            memory_utilisation: memory / (args.pod_memory_mib * 1024.0 * 1024.0),
        }
    }

    /// The history buffer of a pod of this slice: per topic-partition the
    /// newest `--history-buffer-events` records younger than the maximum
    /// age, costed as gateway/src/routing/history.rs estimates them (a
    /// decoded record carries its event, a skipped one only its account),
    /// at most `--history-buffer-bytes` in all.
    fn history_bytes(&self, decoded: f64, args: &SimulateArgs) -> f64 {
        if self.records_per_second <= 0.0 {
            return 0.0;
        }
        let decoded_share = (decoded / self.records_per_second).clamp(0.0, 1.0);
        let acct = self.account_bytes;
        let decoded_cost = args.payload_bytes + 36.0 + 24.0 + acct + 256.0 + acct + 64.0;
        let skipped_cost = acct + 64.0;
        let per_record = decoded_share * decoded_cost + (1.0 - decoded_share) * skipped_cost;
        let topics = f64::from(self.topics);
        let kept: f64 = self
            .partition_rates
            .iter()
            .map(|rate| {
                let per_topic = rate / topics;
                topics
                    * (args.history_buffer_events as f64)
                        .min(per_topic * args.resume_max_age_secs as f64)
            })
            .sum();
        (kept * per_record).min(args.history_buffer_bytes as f64)
    }

    /// The fewest pods (at least `--min-pods`) that keep every pod of this
    /// slice at or below the target, or `None` when no count does (the records alone, or the
    /// record loop, exceed it).
    pub fn pods_needed(&self, args: &SimulateArgs) -> Option<u32> {
        const MOST: u32 = 1 << 20;
        let fits = |n: u32| self.per_pod(n, args).worst() <= args.target_utilisation;
        let least = args.min_pods.max(1);
        if !fits(MOST) {
            return None;
        }
        let (mut lo, mut hi) = (least, MOST);
        if fits(least) {
            return Some(least);
        }
        // Utilisations only fall as pods are added: binary search.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) { hi = mid } else { lo = mid }
        }
        Some(hi)
    }
}

/// Today's design: every pod reads every partition and holds 1/pods of the
/// connections. Written without groups, so the tests can hold the grouped
/// model with one group against it.
pub fn all_partitions(accounts: &[Account], pods: u32, args: &SimulateArgs) -> PodLoad {
    Slice::of(accounts, args, |_| true).per_pod(pods, args)
}

/// The slices of `groups` partition-affine groups.
pub fn group_slices(accounts: &[Account], groups: u32, args: &SimulateArgs) -> Vec<Slice> {
    (0..groups)
        .map(|g| Slice::of(accounts, args, |p| p % groups == g))
        .collect()
}

/// Spread `pods` over the groups: one each, then every further pod to the
/// group whose pods are the most utilised.
pub fn allocate(slices: &[Slice], pods: u32, args: &SimulateArgs) -> Vec<u32> {
    let mut counts = vec![1u32; slices.len()];
    let mut worst: Vec<f64> = slices.iter().map(|s| s.per_pod(1, args).worst()).collect();
    for _ in slices.len() as u32..pods {
        let Some((g, _)) = worst
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        else {
            break;
        };
        counts[g] += 1;
        worst[g] = slices[g].per_pod(counts[g], args).worst();
    }
    counts
}

fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

fn mib(v: f64) -> String {
    format!("{:.0} MiB", v / (1024.0 * 1024.0))
}

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

/// The per-pod table's header, after `first` leading columns.
fn header(first: &[&str]) -> String {
    let cols = [
        "records/s read",
        "ingest",
        "loop",
        "frames/s",
        "fan-out",
        "cpu",
        "connections",
        "memory",
        "mem",
        "Kafka fetch/s",
        "egress/s",
        "binding",
    ];
    let mut h = String::from("|");
    let mut sep = String::from("|");
    for c in first {
        h.push_str(&format!(" {c} |"));
        sep.push_str("---|");
    }
    for c in cols {
        h.push_str(&format!(" {c} |"));
        sep.push_str(if c == "binding" { "---|" } else { "---:|" });
    }
    format!("{h}\n{sep}\n")
}

fn row(label: &str, l: &PodLoad) -> String {
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}B | {}B | {} |\n",
        si(l.records_per_second),
        pct(l.ingest_utilisation),
        pct(l.loop_utilisation),
        si(l.frames_per_second),
        pct(l.fanout_utilisation),
        pct(l.cpu_utilisation),
        si(l.connections),
        mib(l.memory_bytes),
        pct(l.memory_utilisation),
        si(l.fetch_bytes_per_second),
        si(l.egress_bytes_per_second),
        l.binding(),
    )
}

/// Why no pod count brings a slice under the target: what its pods carry
/// however many there are (at 2^20 pods, where only the records read and
/// the history buffer stay).
fn why_not(slice: &Slice, args: &SimulateArgs) -> String {
    let l = slice.per_pod(1 << 20, args);
    format!(
        "at any pod count its record loop stays at {} ({} of it reading, the rest decoding and dispatching), CPU at {}, above the target {}",
        pct(l.loop_utilisation),
        pct(l.ingest_utilisation),
        pct(l.cpu_utilisation),
        pct(args.target_utilisation)
    )
}

fn needed_text(n: Option<u32>) -> String {
    n.map_or_else(|| "none suffices".to_owned(), |n| n.to_string())
}

/// The report `herald-loadgen simulate` prints (Markdown).
pub fn report(args: &SimulateArgs) -> Result<String> {
    args.validate()?;
    let accounts = workload(args);
    let mut out = String::new();
    let conns: u64 = accounts.iter().map(|a| a.connections).sum();
    let frames: f64 = accounts
        .iter()
        .map(|a| a.events_per_second * args.recipients(a.connections))
        .sum();
    let biggest = accounts
        .iter()
        .max_by(|a, b| a.connections.cmp(&b.connections).then(b.id.cmp(&a.id)))
        .expect("validated: at least one account");
    let mut part_rates = vec![0.0; args.partitions as usize];
    for a in &accounts {
        part_rates[a.partition as usize] += a.events_per_second;
    }
    let hottest = part_rates.iter().cloned().fold(0.0, f64::max);
    let mean = args.events_per_second / f64::from(args.partitions);
    let coalesced_us = 1e6 / args.fanout_frames_per_second;
    let frame_us = coalesced_us + (args.write_us - coalesced_us).max(0.0) / args.frames_per_write;
    writeln!(out, "## Workload\n")?;
    writeln!(
        out,
        "- {} accounts, {} connections (Zipf s = {}), {} events/s (rate ∝ connections^{}), an event reaches {} of its account's connections{}: {} frames/s to deliver ({:.2} per connection)",
        args.accounts,
        conns,
        args.zipf_exponent,
        si(args.events_per_second),
        args.rate_exponent,
        pct(args.audience),
        if args.max_recipients > 0.0 {
            format!(", at most {}", args.max_recipients)
        } else {
            String::new()
        },
        si(frames),
        frames / conns.max(1) as f64
    )?;
    writeln!(
        out,
        "- largest account: id {} with {} connections ({}) and {} events/s, in partition {}",
        biggest.id,
        biggest.connections,
        pct(biggest.connections as f64 / conns.max(1) as f64),
        si(biggest.events_per_second),
        biggest.partition
    )?;
    writeln!(
        out,
        "- {} partitions × {} topics; hottest partition {} records/s ({:.2}× the mean {})",
        args.partitions,
        args.topics,
        si(hottest),
        if mean > 0.0 { hottest / mean } else { 0.0 },
        si(mean)
    )?;
    writeln!(
        out,
        "- pod: {} CPU, {} MiB; ingest ceiling {} records/s; {:.2} µs per frame ({} frames per write); target utilisation {}; seed {}\n",
        args.pod_cores,
        args.pod_memory_mib,
        si(args.ingest_records_per_second),
        frame_us,
        args.frames_per_write,
        pct(args.target_utilisation),
        args.seed
    )?;

    let all = Slice::of(&accounts, args, |_| true);
    let all_needed = all.pods_needed(args);
    writeln!(out, "## Every pod reads every partition (today)\n")?;
    if args.pods > 0 || all_needed.is_some() {
        write!(out, "{}", header(&["pods"]))?;
    }
    if args.pods > 0 {
        write!(
            out,
            "{}",
            row(
                &format!("{} (each)", args.pods),
                &all_partitions(&accounts, args.pods, args)
            )
        )?;
    }
    if let Some(n) = all_needed {
        write!(
            out,
            "{}",
            row(&format!("{n} (each), needed"), &all.per_pod(n, args))
        )?;
    }
    if args.pods > 0 || all_needed.is_some() {
        writeln!(out)?;
    }
    match all_needed {
        Some(n) => writeln!(out, "Pods needed: **{n}**.\n")?,
        None => writeln!(
            out,
            "Pods needed: **none suffices**: every pod reads {} records/s; {}.\n",
            si(args.events_per_second),
            why_not(&all, args)
        )?,
    }

    let slices = group_slices(&accounts, args.groups, args);
    let per_group: Vec<Option<u32>> = slices.iter().map(|s| s.pods_needed(args)).collect();
    let total: Option<u32> = per_group.iter().copied().sum();
    writeln!(
        out,
        "## {} partition-affine groups (design; group g reads partitions p % {} == g)\n",
        args.groups, args.groups
    )?;
    let shown_alloc = if args.pods > 0 {
        writeln!(out, "{} pods, spread over the groups by load:\n", args.pods)?;
        Some(allocate(&slices, args.pods, args))
    } else if total.is_some() {
        writeln!(out, "Each group with the pods it needs:\n")?;
        Some(per_group.iter().map(|n| n.unwrap_or(1)).collect())
    } else {
        None
    };
    if let Some(alloc) = shown_alloc {
        write!(out, "{}", header(&["group", "pods"]))?;
        let mut order: Vec<usize> = (0..slices.len()).collect();
        let worst: Vec<f64> = (0..slices.len())
            .map(|g| slices[g].per_pod(alloc[g], args).worst())
            .collect();
        order.sort_by(|&a, &b| worst[b].total_cmp(&worst[a]).then(a.cmp(&b)));
        let shown = if order.len() > 12 { 8 } else { order.len() };
        for &g in &order[..shown] {
            let l = slices[g].per_pod(alloc[g], args);
            write!(out, "| {g} {}", row(&format!("{} (each)", alloc[g]), &l))?;
        }
        if shown < order.len() {
            writeln!(
                out,
                "\n({} less busy groups not shown)",
                order.len() - shown
            )?;
        }
        writeln!(out)?;
    }
    match total {
        Some(t) => {
            let most = per_group.iter().flatten().max().copied().unwrap_or(0);
            let least = per_group.iter().flatten().min().copied().unwrap_or(0);
            writeln!(
                out,
                "Pods needed: **{t}** ({least}–{most} per group; a group's pods at most {} busy).\n",
                pct(args.target_utilisation)
            )?;
        }
        None => {
            let stuck: Vec<String> = per_group
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_none())
                .map(|(g, _)| {
                    format!(
                        "group {g} reads {} records/s; {}",
                        si(slices[g].records_per_second),
                        why_not(&slices[g], args)
                    )
                })
                .collect();
            writeln!(
                out,
                "Pods needed: **none suffices** with {} groups: {}.\n",
                args.groups,
                stuck.join("; ")
            )?;
        }
    }

    writeln!(out, "## Pods needed by group count\n")?;
    writeln!(
        out,
        "| groups | pods needed | busiest group's records/s | pods per group |"
    )?;
    writeln!(out, "|---:|---:|---:|---|")?;
    writeln!(
        out,
        "| 1 (today) | {} | {} | {} |",
        needed_text(all_needed),
        si(all.records_per_second),
        needed_text(all_needed)
    )?;
    for g in (2..=args.partitions).filter(|g| args.partitions.is_multiple_of(*g)) {
        let slices = group_slices(&accounts, g, args);
        let needs: Vec<Option<u32>> = slices.iter().map(|s| s.pods_needed(args)).collect();
        let total: Option<u32> = needs.iter().copied().sum();
        let busiest = slices
            .iter()
            .map(|s| s.records_per_second)
            .fold(0.0, f64::max);
        let spread = match total {
            Some(_) => {
                let v: Vec<u32> = needs.iter().flatten().copied().collect();
                format!(
                    "{}–{}",
                    v.iter().min().copied().unwrap_or(0),
                    v.iter().max().copied().unwrap_or(0)
                )
            }
            None => "—".to_owned(),
        };
        writeln!(
            out,
            "| {g} | {} | {} | {spread} |",
            needed_text(total),
            si(busiest)
        )?;
    }
    Ok(out)
}

/// Run `herald-loadgen simulate`: print the report.
pub fn run(args: &SimulateArgs) -> Result<()> {
    print!("{}", report(args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn args(extra: &[&str]) -> SimulateArgs {
        let mut argv = vec!["simulate"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("valid arguments").args
    }

    #[test]
    fn crc32_is_librdkafkas_consistent_partitioner() {
        // The CRC-32 check value, and the partition it implies.
        assert_eq!(partition_of("123456789", 48), 0xCBF4_3926 % 48);
    }

    #[test]
    fn the_workload_is_deterministic_per_seed() {
        let a = args(&["--accounts", "500", "--connections", "20000"]);
        assert_eq!(workload(&a), workload(&a));
        let b = args(&["--accounts", "500", "--connections", "20000", "--seed", "2"]);
        assert_ne!(workload(&a), workload(&b));
        assert_eq!(report(&a).unwrap(), report(&a).unwrap());
    }

    #[test]
    fn zipf_sizes_keep_the_totals() {
        let a = args(&[
            "--accounts",
            "1000",
            "--connections",
            "1000000",
            "--zipf-exponent",
            "1.2",
        ]);
        let w = workload(&a);
        let conns: u64 = w.iter().map(|x| x.connections).sum();
        assert!(conns.abs_diff(1_000_000) < 1_000, "{conns}");
        let rate: f64 = w.iter().map(|x| x.events_per_second).sum();
        assert!((rate - 50_000.0).abs() < 1e-6, "{rate}");
        let biggest = w.iter().map(|x| x.connections).max().unwrap();
        // Rank 1's share of a Zipf(1.2) over 1,000 ranks is about 20 %.
        assert!(biggest > 150_000 && biggest < 250_000, "{biggest}");
        // Rates follow connections (exponent 1).
        let top = w.iter().max_by_key(|x| x.connections).unwrap();
        assert!(
            (top.events_per_second / rate - top.connections as f64 / conns as f64).abs() < 1e-9
        );
    }

    #[test]
    fn one_group_is_the_all_partitions_design() {
        let a = args(&[
            "--accounts",
            "3000",
            "--connections",
            "300000",
            "--pods",
            "7",
            "--groups",
            "1",
        ]);
        let w = workload(&a);
        let slices = group_slices(&w, 1, &a);
        assert_eq!(slices.len(), 1);
        assert_eq!(allocate(&slices, 7, &a), vec![7]);
        let today = all_partitions(&w, 7, &a);
        assert_eq!(slices[0].per_pod(7, &a), today);
        // And today's figures are the workload's totals over 7 pods.
        assert!((today.records_per_second - 50_000.0).abs() < 1e-6);
        let conns: u64 = w.iter().map(|x| x.connections).sum();
        assert!((today.connections - conns as f64 / 7.0).abs() < 1e-6);
        let frames: f64 = w
            .iter()
            .map(|x| x.events_per_second * x.connections as f64)
            .sum();
        assert!((today.frames_per_second - frames / 7.0).abs() < 1e-6 * frames);
        assert_eq!(
            slices[0].pods_needed(&a),
            Slice::of(&w, &a, |_| true).pods_needed(&a)
        );
    }

    #[test]
    fn uniform_accounts_divide_ingest_by_the_group_count() {
        let a = args(&[
            "--accounts",
            "100000",
            "--connections",
            "1000000",
            "--zipf-exponent",
            "0",
            "--rate-exponent",
            "0",
            "--events-per-second",
            "2000000",
            "--partitions",
            "48",
        ]);
        let w = workload(&a);
        let everything = all_partitions(&w, 8, &a).records_per_second;
        assert!((everything - 2_000_000.0).abs() < 1e-3);
        for groups in [2u32, 4, 8, 16] {
            for s in group_slices(&w, groups, &a) {
                let share = s.records_per_second / (everything / f64::from(groups));
                assert!((0.95..1.05).contains(&share), "{groups} groups: {share}");
                assert_eq!(s.partition_rates.len() as u32, 48 / groups);
            }
        }
    }

    #[test]
    fn a_hot_accounts_partition_bounds_its_group() {
        // Zipf 2 over 1,000 accounts: the biggest has ~61 % of everything,
        // here 0.91 M events/s, more than one pod's ingest ceiling.
        let a = args(&[
            "--accounts",
            "1000",
            "--connections",
            "1000000",
            "--zipf-exponent",
            "2",
            "--events-per-second",
            "1500000",
            "--partitions",
            "48",
            "--audience",
            "0.001",
        ]);
        let w = workload(&a);
        let hot = w.iter().max_by_key(|x| x.connections).unwrap();
        assert!(
            hot.events_per_second > 867_000.0,
            "{}",
            hot.events_per_second
        );
        for groups in [1u32, 2, 4, 8, 16, 24, 48] {
            let slices = group_slices(&w, groups, &a);
            let owner = &slices[(hot.partition % groups) as usize];
            assert!(owner.records_per_second >= hot.events_per_second);
            // No pod count of the owning group suffices, whatever the
            // group count: one account's events are in one partition.
            assert_eq!(owner.pods_needed(&a), None, "{groups} groups");
        }
        // Today's design cannot either: every pod reads 1.5 M records/s.
        assert_eq!(Slice::of(&w, &a, |_| true).pods_needed(&a), None);
    }

    #[test]
    fn groups_lift_the_ingest_ceiling_of_today() {
        // 2 M events/s over 100,000 accounts: above one pod's ingest, so
        // today no pod count suffices; 8 groups read 0.25 M/s each.
        let a = args(&[
            "--accounts",
            "100000",
            "--connections",
            "10000000",
            "--zipf-exponent",
            "0.8",
            "--events-per-second",
            "2000000",
            "--groups",
            "8",
        ]);
        let w = workload(&a);
        assert_eq!(Slice::of(&w, &a, |_| true).pods_needed(&a), None);
        let slices = group_slices(&w, 8, &a);
        for s in &slices {
            let n = s.pods_needed(&a).expect("a group of 6 partitions fits");
            let l = s.per_pod(n, &a);
            assert!(l.worst() <= a.target_utilisation);
            assert!(n == a.min_pods || s.per_pod(n - 1, &a).worst() > a.target_utilisation);
        }
    }

    #[test]
    fn more_pods_never_load_a_pod_more() {
        let a = args(&["--accounts", "2000", "--connections", "500000"]);
        let w = workload(&a);
        let mut last = all_partitions(&w, 1, &a);
        for n in 2..40 {
            let l = all_partitions(&w, n, &a);
            assert!(l.cpu_utilisation <= last.cpu_utilisation);
            assert!(l.memory_bytes <= last.memory_bytes);
            assert!(l.decoded_per_second <= last.decoded_per_second);
            assert_eq!(l.records_per_second, last.records_per_second);
            last = l;
        }
    }

    #[test]
    fn allocation_gives_every_group_a_pod_and_uses_all() {
        let a = args(&[
            "--accounts",
            "5000",
            "--connections",
            "2000000",
            "--zipf-exponent",
            "1.1",
            "--groups",
            "6",
        ]);
        let w = workload(&a);
        let slices = group_slices(&w, 6, &a);
        let alloc = allocate(&slices, 40, &a);
        assert_eq!(alloc.iter().sum::<u32>(), 40);
        assert!(alloc.iter().all(|&n| n >= 1));
    }

    #[test]
    fn bad_workloads_are_refused_with_the_flag() {
        for (extra, needle) in [
            (
                &["--groups", "5"][..],
                "--groups (5) must divide --partitions (48)",
            ),
            (&["--accounts", "0"][..], "--accounts"),
            (
                &["--pods", "2", "--groups", "4"][..],
                "--pods (2) must be at least --groups (4)",
            ),
            (&["--zipf-exponent=-1"][..], "--zipf-exponent"),
            (&["--pod-cores", "0"][..], "--pod-cores"),
            (&["--target-utilisation", "1.5"][..], "--target-utilisation"),
            (&["--frames-per-write", "0.5"][..], "--frames-per-write"),
            (
                &["--accounts", "20000000"][..],
                "--accounts above 10,000,000",
            ),
            (&["--pods", "200000"][..], "--pods is at most 100,000"),
            (&["--audience", "2"][..], "--audience must be at most 1"),
        ] {
            let err = report(&args(extra)).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        assert!(Cli::try_parse_from(["simulate", "--events-per-second", "nan"]).is_ok());
        let err = report(&args(&["--events-per-second", "nan"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--events-per-second"), "{err}");
    }
}
