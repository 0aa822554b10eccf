//! Resuming clients, shared by the `jitter` and `avalanche` scenarios: each
//! one keeps its account's stream position across connections and, when a
//! connection is gone, reconnects and resumes from it the way real clients
//! do —
//!
//! - STOMP: `SUBSCRIBE` with `x-stream-offset:<message-id>,...` (the last
//!   `message-id` seen per stream; `timestamp=<ms>` of the first
//!   subscription when it has seen none yet);
//! - ActionCable: `actioncable-v1-ext-json`, and every `subscribe` carries
//!   `history: {since, streams: {stream_id: {epoch, offset}}}` as
//!   `@anycable/web` sends it (`since`: the last `ping`'s second, at first
//!   the client's creation).
//!
//! The same clients resume against the peers that offer recovery
//! ([`crate::peers`]): AnyCable (the same extended ActionCable protocol, a
//! `$pubsub` stream subscription, JWT in `?jid=`) and Centrifugo (its JSON
//! protocol: `subscribe` with `recover: true` and the last `offset` and
//! `epoch`; the missed publications come in the subscribe reply).
//!
//! A client loses its connection either on purpose ([`Jitter`]: the TCP
//! socket is reset, no close frame, every period ± a spread, then it stays
//! offline a while) or because the server or the network closed it (a drain
//! notice, a restart); then it reconnects after a short random delay.
//!
//! What it checks and measures is the plain client's audit (the per-account
//! `seq` of each stamped event: a jump is a loss, a step back a duplicate)
//! plus, per loss of connection: time to the next confirmed subscription
//! ([`hist::RECONNECT`]), time until every event published up to the
//! reconnect was received ([`hist::CAUGHT_UP`]), and for events published
//! before the resubscribe and delivered after it (replayed), publish →
//! delivery ([`hist::REPLAY`]) and resubscribe → delivery
//! ([`hist::REPLAY_AFTER_RESUBSCRIBE`]). Live events go to
//! [`hist::DELIVERY`].

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::{Buf, BytesMut};
use memchr::memmem;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    client::Credential,
    hist,
    peers::{self, System},
    stamp::{self, Protocol},
    ws,
};

/// Largest frame a client accepts.
const MAX_FRAME: usize = 16 << 20;

/// Skipped sequence numbers a client remembers (to tell a late event from
/// a duplicate); more are counted as lost without being remembered.
const MAX_MISSING: u64 = 4096;

/// Client states.
pub mod state {
    /// Opening its first connection.
    pub const CONNECTING: u8 = 0;
    /// Subscribed (receipt or confirmation received) and reading.
    pub const SUBSCRIBED: u8 = 1;
    /// Between connections.
    pub const OFFLINE: u8 = 2;
}

/// Counters of one client over all its connections, readable while it runs.
#[derive(Debug, Default)]
pub struct ResumeStats {
    /// Stamped events received (duplicates included).
    pub received: AtomicU64,
    /// Next per-account sequence number expected.
    pub next_seq: AtomicU64,
    /// Events whose sequence number was already seen.
    pub duplicates: AtomicU64,
    /// Sequence numbers skipped and not received since (lost).
    pub gaps: AtomicU64,
    /// Events that arrived after a later one of their stream (out of
    /// order, counted once: neither lost nor duplicated).
    pub reordered: AtomicU64,
    /// One of [`state`].
    pub state: AtomicU8,
    /// Subscriptions confirmed, the first one included.
    pub subscriptions: AtomicU64,
    /// Connections this client reset on purpose ([`Jitter`]).
    pub jitter_drops: AtomicU64,
    /// Subscribed connections the server or the network closed.
    pub server_drops: AtomicU64,
    /// Of those, how many came with a reconnect notice (STOMP `ERROR server
    /// restart`, ActionCable `disconnect` with `reconnect: true`).
    pub restart_notices: AtomicU64,
    /// Connection attempts that failed before their subscription was confirmed.
    pub failed_attempts: AtomicU64,
    /// Events published before a resubscribe and delivered after it.
    pub replayed: AtomicU64,
    /// Gap signals: a STOMP `herald-gap` message, an ActionCable `reject_history`.
    pub gap_signals: AtomicU64,
    /// `confirm_history` received (ActionCable).
    pub history_confirmed: AtomicU64,
    /// Resubscriptions without any stream position (STOMP `timestamp=`,
    /// ActionCable `since` only): the client had received nothing yet.
    pub positionless_resumes: AtomicU64,
    /// A loss of connection not yet caught up.
    pub catching_up: AtomicBool,
}

/// Dropping connections on purpose: the TCP socket is reset (no close
/// frame) about every `period`, and the client stays offline for about
/// `offline` before it reconnects and resumes. A client's first drop comes
/// at a random phase of its period after its first event (so it always
/// has a position to resume from).
#[derive(Debug, Clone)]
pub struct Jitter {
    /// Mean time between two drops of one client.
    pub period: Duration,
    /// Each client's own period is `period × (1 ± spread)`, drawn once.
    pub spread: f64,
    /// Time offline after a drop (± 10 %).
    pub offline: Duration,
    /// No more drops once cancelled.
    pub until: CancellationToken,
}

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Drop connections on purpose.
    pub jitter: Option<Jitter>,
    /// After the server closed a connection, wait a random time up to this
    /// before reconnecting.
    pub reconnect_delay: Duration,
    /// An attempt whose subscription is not confirmed within this fails.
    pub attempt_timeout: Duration,
    /// Wait about this (± 50 %) after a failed attempt.
    pub retry_delay: Duration,
    /// ActionCable: send `history.since` in every `subscribe`, as
    /// `@anycable/web` does (false: `history` only with known positions,
    /// and only `streams`).
    pub cable_since: bool,
}

/// Where the clients connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The gateway's (or the proxy's) WebSocket address.
    pub addr: SocketAddr,
    /// [`Protocol::Stomp`] or [`Protocol::Room`].
    pub protocol: Protocol,
    /// Number of 127.0.0.x source addresses to spread over.
    pub source_ips: u8,
    /// First source address is 127.0.0.`first_source_ip`.
    pub first_source_ip: u8,
    /// A peer instead of Herald ([`crate::peers::System::Anycable`] or
    /// [`crate::peers::System::Centrifugo`], with [`Protocol::Room`]).
    pub peer: Option<System>,
}

impl Target {
    fn centrifugo(&self) -> bool {
        self.peer == Some(System::Centrifugo)
    }
}

/// A fleet of resuming clients.
pub struct ResumingFleet {
    /// Per client, in start order.
    pub clients: Vec<Arc<ResumeStats>>,
    /// Account index of each client.
    pub account_of: Vec<usize>,
    /// First error of a failed attempt, for the report.
    pub first_error: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// A number in [0, 1), good enough to spread timers.
fn unit() -> f64 {
    // The low 53 bits of a v4 UUID are all random (version and variant
    // bits sit higher).
    (uuid::Uuid::new_v4().as_u128() & ((1u128 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

impl ResumingFleet {
    /// Start one client per credential; first connections open at most
    /// `concurrency` at a time, reconnections are not throttled.
    /// `published[account]` is the number of events of each account
    /// published so far (see [`crate::publish::Publisher::share_counts`]).
    pub fn open(
        target: &Target,
        credentials: Vec<Credential>,
        behaviour: &Behaviour,
        published: Arc<[AtomicU64]>,
        concurrency: usize,
    ) -> anyhow::Result<ResumingFleet> {
        anyhow::ensure!(
            matches!(target.protocol, Protocol::Stomp | Protocol::Room),
            "resuming clients speak stomp or room"
        );
        anyhow::ensure!(
            matches!(
                target.peer,
                None | Some(System::Anycable | System::Centrifugo)
            ) && (target.peer.is_none() || target.protocol == Protocol::Room),
            "of the peers, AnyCable and Centrifugo offer recovery"
        );
        let stop = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let first_error = Arc::new(Mutex::new(None));
        let mut clients = Vec::with_capacity(credentials.len());
        let mut account_of = Vec::with_capacity(credentials.len());
        let mut tasks = JoinSet::new();
        for (i, cred) in credentials.into_iter().enumerate() {
            anyhow::ensure!(
                cred.account_index < published.len(),
                "credential of an account without a publish counter"
            );
            let stats = Arc::new(ResumeStats::default());
            clients.push(stats.clone());
            account_of.push(cred.account_index);
            let source = Ipv4Addr::new(
                127,
                0,
                0,
                target
                    .first_source_ip
                    .saturating_add((i % usize::from(target.source_ips.max(1))) as u8),
            );
            let client = Client {
                target: target.clone(),
                source,
                cred,
                behaviour: behaviour.clone(),
                published: published.clone(),
                stats,
                stop: stop.clone(),
                first_error: first_error.clone(),
                progress: Progress::new(),
            };
            tasks.spawn(client.run(slots.clone()));
        }
        Ok(ResumingFleet {
            clients,
            account_of,
            first_error,
            stop,
            tasks,
        })
    }

    /// Wait until every client has been subscribed once, or `within`.
    /// Returns how many were.
    pub async fn wait_subscribed(&self, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            let n = self
                .clients
                .iter()
                .filter(|c| c.subscriptions.load(Ordering::Relaxed) > 0)
                .count();
            if n == self.clients.len() || start.elapsed() > within {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until every client has seen `sent[account]` events and is
    /// caught up, or `within`. True when complete.
    pub async fn wait_delivered(&self, sent: &[u64], within: Duration) -> bool {
        let start = Instant::now();
        loop {
            let done = self.clients.iter().zip(&self.account_of).all(|(c, &a)| {
                c.next_seq.load(Ordering::Acquire) >= sent[a]
                    && c.state.load(Ordering::Relaxed) == state::SUBSCRIBED
            });
            if done {
                return true;
            }
            if start.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sum of one counter over the clients.
    pub fn sum(&self, field: impl Fn(&ResumeStats) -> &AtomicU64) -> u64 {
        self.clients
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum()
    }

    /// Clients whose state is `s` now.
    pub fn in_state(&self, s: u8) -> usize {
        self.clients
            .iter()
            .filter(|c| c.state.load(Ordering::Relaxed) == s)
            .count()
    }

    /// Clients that lost a connection and are not subscribed again.
    pub fn never_came_back(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| {
                c.jitter_drops.load(Ordering::Relaxed) + c.server_drops.load(Ordering::Relaxed) > 0
                    && c.state.load(Ordering::Relaxed) != state::SUBSCRIBED
            })
            .count()
    }

    /// Losses and duplicates given how many events each account was sent:
    /// `(lost, duplicated)`.
    pub fn audit(&self, sent: &[u64]) -> (u64, u64) {
        let mut lost = 0;
        let mut dups = 0;
        for (c, &a) in self.clients.iter().zip(&self.account_of) {
            lost += c.gaps.load(Ordering::Relaxed)
                + sent[a].saturating_sub(c.next_seq.load(Ordering::Relaxed));
            dups += c.duplicates.load(Ordering::Relaxed);
        }
        (lost, dups)
    }

    /// Per client, the share of its account's events it received (each
    /// counted once), sorted ascending.
    pub fn delivery_rates(&self, sent: &[u64]) -> Vec<f64> {
        let mut rates: Vec<f64> = self
            .clients
            .iter()
            .zip(&self.account_of)
            .map(|(c, &a)| {
                if sent[a] == 0 {
                    return 1.0;
                }
                let next = c.next_seq.load(Ordering::Relaxed).min(sent[a]);
                let got = next.saturating_sub(c.gaps.load(Ordering::Relaxed));
                got as f64 / sent[a] as f64
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates
    }

    /// The first error of a failed attempt.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    /// Stop every client and wait for the tasks.
    pub async fn close(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// One stream's last position.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    /// `<topic>:<partition>`.
    stream: String,
    /// ActionCable epoch (empty for STOMP).
    epoch: String,
    /// Last offset received.
    offset: i64,
}

/// What a client knows across its connections.
#[derive(Debug)]
struct Progress {
    next: u64,
    received: u64,
    dups: u64,
    /// Skipped sequence numbers not received since (at most
    /// [`MAX_MISSING`]; beyond, only counted in `missing_overflow`).
    missing: std::collections::BTreeSet<u64>,
    missing_overflow: u64,
    reordered: u64,
    positions: Vec<Position>,
    /// `@anycable/web`'s `since`: its creation, then each `ping`'s second.
    since_s: u64,
    /// When the first subscription was sent, ms (STOMP `timestamp=` while
    /// no position is known).
    first_subscribe_ms: Option<u64>,
    /// When the connection was lost, µs, until caught up.
    lost_at_us: Option<u64>,
    /// Events of the account published when the client resubscribed.
    catch_up_to: u64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            next: 0,
            received: 0,
            dups: 0,
            missing: std::collections::BTreeSet::new(),
            missing_overflow: 0,
            reordered: 0,
            positions: Vec::new(),
            since_s: stamp::now_us() / 1_000_000,
            first_subscribe_ms: None,
            lost_at_us: None,
            catch_up_to: 0,
        }
    }

    /// Account for event `seq` of the stream: in order, a jump (the skipped
    /// ones are missing until they come), a late one, or a duplicate.
    fn audit(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            let skipped = seq - self.next;
            if self.missing.len() as u64 + skipped <= MAX_MISSING {
                self.missing.extend(self.next..seq);
            } else {
                self.missing_overflow += skipped;
            }
            self.next = seq + 1;
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
        } else {
            self.dups += 1;
        }
    }

    fn track(&mut self, stream: &str, epoch: &str, offset: i64) {
        match self.positions.iter_mut().find(|p| p.stream == stream) {
            Some(p) => {
                p.offset = offset;
                if p.epoch != epoch {
                    p.epoch = epoch.to_owned();
                }
            }
            None => self.positions.push(Position {
                stream: stream.to_owned(),
                epoch: epoch.to_owned(),
                offset,
            }),
        }
    }
}

/// How a connection ended.
enum End {
    /// The run is over.
    Stop,
    /// Reset on purpose.
    Jitter,
    /// Closed by the server or the network after the subscription was
    /// confirmed (`notice`: with a reconnect notice).
    Closed { notice: bool },
    /// The attempt failed before its subscription was confirmed.
    Failed(String),
}

/// What a control frame means.
#[derive(Debug, PartialEq, Eq)]
enum Control {
    /// STOMP `CONNECTED`.
    Connected,
    /// The subscription is confirmed (STOMP `RECEIPT`, ActionCable `confirm_subscription`).
    Confirmed,
    /// The server is closing (`notice`: it asked the client to reconnect).
    Closing { notice: bool },
    /// The server refused (ERROR before the subscription, `reject_subscription`).
    Refused(String),
    /// A gap signal.
    Gap,
    /// `confirm_history`.
    HistoryConfirmed,
    /// ActionCable `ping`.
    Ping,
    /// Centrifugo's ping (`{}`), answered with `{}`.
    AppPing,
    /// Anything else (welcome, heart-beats).
    Other,
}

struct Client {
    target: Target,
    source: Ipv4Addr,
    cred: Credential,
    behaviour: Behaviour,
    published: Arc<[AtomicU64]>,
    stats: Arc<ResumeStats>,
    stop: CancellationToken,
    first_error: Arc<Mutex<Option<String>>>,
    progress: Progress,
}

/// Per-connection state of the read loop.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Subscription sent at this wall-clock time, µs (`None`: not yet).
    resubscribed_us: Option<u64>,
    /// A reconnection (not the client's first connection).
    resumed: bool,
    confirmed: bool,
}

impl Client {
    async fn run(mut self, slots: Arc<Semaphore>) {
        let jitter_period = self.behaviour.jitter.as_ref().map(|j| {
            j.period
                .mul_f64((1.0 + j.spread * (2.0 * unit() - 1.0)).max(0.05))
        });
        let mut next_drop: Option<Instant> = None;
        let mut first = true;
        loop {
            let permit = if first {
                match slots.clone().acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                }
            } else {
                None
            };
            let end = self
                .connection(!first, permit, jitter_period, &mut next_drop)
                .await;
            let now_us = stamp::now_us();
            self.stats.state.store(state::OFFLINE, Ordering::Release);
            match end {
                End::Stop => return,
                End::Jitter => {
                    first = false;
                    self.stats.jitter_drops.fetch_add(1, Ordering::Relaxed);
                    self.lost(now_us);
                    let offline = self
                        .behaviour
                        .jitter
                        .as_ref()
                        .map_or(Duration::ZERO, |j| j.offline.mul_f64(0.9 + 0.2 * unit()));
                    if self.pause(offline).await {
                        return;
                    }
                }
                End::Closed { notice } => {
                    first = false;
                    self.stats.server_drops.fetch_add(1, Ordering::Relaxed);
                    if notice {
                        self.stats.restart_notices.fetch_add(1, Ordering::Relaxed);
                    }
                    self.lost(now_us);
                    let delay = self.behaviour.reconnect_delay.mul_f64(unit());
                    if self.pause(delay).await {
                        return;
                    }
                }
                End::Failed(e) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = self.first_error.lock()
                        && f.is_none()
                    {
                        *f = Some(e);
                    }
                    let delay = self.behaviour.retry_delay.mul_f64(0.5 + unit());
                    if self.pause(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Wait `d` unless the run stops first (true then).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    fn lost(&mut self, now_us: u64) {
        if self.progress.lost_at_us.is_none() {
            self.progress.lost_at_us = Some(now_us);
            self.stats.catching_up.store(true, Ordering::Relaxed);
        }
    }

    /// One connection, from connect to its end.
    async fn connection(
        &mut self,
        resumed: bool,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        jitter_period: Option<Duration>,
        next_drop: &mut Option<Instant>,
    ) -> End {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.behaviour.attempt_timeout;
        let opened = tokio::select! {
            _ = self.stop.cancelled() => return End::Stop,
            r = tokio::time::timeout_at(deadline, self.open()) => r,
        };
        let mut conn = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return End::Failed(format!("{e:#}")),
            Err(_) => return End::Failed("timed out opening".into()),
        };
        conn.resumed = resumed;
        // STOMP and Centrifugo subscribe once connected; ActionCable at once.
        if self.target.protocol == Protocol::Room
            && !self.target.centrifugo()
            && let Err(e) = self.subscribe(&mut conn).await
        {
            return End::Failed(format!("{e:#}"));
        }
        let mut permit = permit;
        let mut latencies = Latencies::default();
        loop {
            if let Some(p) = jitter_period
                && next_drop.is_none()
                && !self.progress.positions.is_empty()
            {
                // The first drop at a random phase of the period.
                *next_drop = Some(Instant::now() + p.mul_f64(0.1 + 0.9 * unit()));
            }
            let drop_at = match (conn.confirmed, &self.behaviour.jitter) {
                (true, Some(j)) if !j.until.is_cancelled() => *next_drop,
                _ => None,
            };
            if conn.buf.capacity() - conn.buf.len() < 8192 {
                conn.buf.reserve(64 * 1024);
            }
            let read = tokio::select! {
                _ = self.stop.cancelled() => return End::Stop,
                _ = tokio::time::sleep_until(deadline), if !conn.confirmed => {
                    return End::Failed("timed out subscribing".into());
                }
                _ = sleep_until_opt(drop_at) => {
                    let period = jitter_period.unwrap_or(Duration::from_secs(15));
                    *next_drop = drop_at.map(|t| t + period);
                    // A reset, no close frame: the peer sees the socket die.
                    let _ = conn.stream.set_zero_linger();
                    drop(conn);
                    return End::Jitter;
                }
                n = conn.stream.read_buf(&mut conn.buf) => n,
            };
            let closed = match read {
                Ok(0) | Err(_) => true,
                Ok(_) => false,
            };
            let now = stamp::now_us();
            let mut control = Vec::new();
            let mut pong = None;
            let mut app_pong = false;
            let mut close_frame = false;
            loop {
                let head = match ws::parse_head(&conn.buf, MAX_FRAME) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return self.ended(&conn, format!("bad frame: {e}"), false),
                };
                let len = head.frame_len();
                if conn.buf.len() < len {
                    conn.buf.reserve(len - conn.buf.len());
                    break;
                }
                let payload = &conn.buf[head.payload_start..len];
                match head.opcode {
                    ws::opcode::TEXT | ws::opcode::BINARY | ws::opcode::CONTINUATION => {
                        if self.target.centrifugo() {
                            self.on_centrifugo_frame(
                                payload,
                                now,
                                &conn,
                                &mut latencies,
                                &mut control,
                            );
                        } else if let Some(c) = self.on_frame(payload, now, &conn, &mut latencies) {
                            control.push(c);
                        }
                    }
                    ws::opcode::PING => pong = Some(payload.to_vec()),
                    ws::opcode::CLOSE => close_frame = true,
                    _ => {}
                }
                conn.buf.advance(len);
            }
            latencies.flush();
            self.publish_stats();
            for c in control {
                match c {
                    Control::Connected if conn.resubscribed_us.is_none() => {
                        if let Err(e) = self.subscribe(&mut conn).await {
                            return End::Failed(format!("{e:#}"));
                        }
                    }
                    Control::Confirmed if !conn.confirmed => {
                        conn.confirmed = true;
                        drop(permit.take());
                        self.stats.state.store(state::SUBSCRIBED, Ordering::Release);
                        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                        if let Some(lost) = self.progress.lost_at_us {
                            hist::RECONNECT.record(&[now.saturating_sub(lost)]);
                        } else {
                            hist::CONNECT.record(&[started.elapsed().as_micros() as u64]);
                        }
                        if let Some(t) = next_drop.as_mut() {
                            *t = (*t).max(Instant::now() + Duration::from_secs(1));
                        }
                    }
                    Control::Closing { notice } => {
                        return self.ended(&conn, "closed by the server".into(), notice);
                    }
                    Control::Refused(why) => {
                        return self.ended(&conn, why, false);
                    }
                    Control::Gap => {
                        self.stats.gap_signals.fetch_add(1, Ordering::Relaxed);
                    }
                    Control::HistoryConfirmed => {
                        self.stats.history_confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    Control::Ping => self.progress.since_s = now / 1_000_000,
                    Control::AppPing => app_pong = true,
                    _ => {}
                }
            }
            self.check_caught_up(&conn, now);
            if let Some(p) = pong {
                let frame = ws::encode_frame(ws::opcode::PONG, &p, Some(ws::CLIENT_MASK));
                if conn.stream.write_all(&frame).await.is_err() {
                    return self.ended(&conn, "write failed".into(), false);
                }
            }
            if app_pong && conn.stream.write_all(&ws::client_text("{}")).await.is_err() {
                return self.ended(&conn, "write failed".into(), false);
            }
            if closed || close_frame {
                return self.ended(&conn, "connection closed".into(), false);
            }
        }
    }

    /// How a connection that the other side ended counts.
    fn ended(&self, conn: &Conn, why: String, notice: bool) -> End {
        if conn.confirmed {
            End::Closed { notice }
        } else {
            End::Failed(why)
        }
    }

    fn publish_stats(&self) {
        let p = &self.progress;
        self.stats.received.store(p.received, Ordering::Relaxed);
        self.stats.duplicates.store(p.dups, Ordering::Relaxed);
        self.stats.gaps.store(
            p.missing.len() as u64 + p.missing_overflow,
            Ordering::Relaxed,
        );
        self.stats.reordered.store(p.reordered, Ordering::Relaxed);
        self.stats.next_seq.store(p.next, Ordering::Release);
    }

    fn check_caught_up(&mut self, conn: &Conn, now: u64) {
        if let Some(lost) = self.progress.lost_at_us
            && conn.confirmed
            && self.progress.next >= self.progress.catch_up_to
        {
            hist::CAUGHT_UP.record(&[now.saturating_sub(lost)]);
            self.progress.lost_at_us = None;
            self.stats.catching_up.store(false, Ordering::Relaxed);
        }
    }

    /// Handle one text frame: events are audited and timed here; control
    /// frames are returned.
    fn on_frame(
        &mut self,
        payload: &[u8],
        now: u64,
        conn: &Conn,
        latencies: &mut Latencies,
    ) -> Option<Control> {
        let protocol = self.target.protocol;
        if let Some((seq, sent)) = stamp::parse(payload) {
            self.on_event(seq, sent, now, conn, latencies);
            let p = &mut self.progress;
            let position = match protocol {
                Protocol::Stomp => stomp_position(payload),
                _ => cable_position(payload),
            };
            if let Some((stream, epoch, offset)) = position {
                p.track(&stream, &epoch, offset);
            }
            return None;
        }
        Some(match protocol {
            Protocol::Stomp => stomp_control(payload, conn.confirmed),
            _ => cable_control(payload),
        })
    }

    /// Audit and time one stamped event.
    fn on_event(&mut self, seq: u64, sent: u64, now: u64, conn: &Conn, latencies: &mut Latencies) {
        let p = &mut self.progress;
        p.received += 1;
        p.audit(seq);
        match conn.resubscribed_us {
            Some(resub) if conn.resumed && sent < resub => {
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                latencies.replay.push(now.saturating_sub(sent));
                latencies.after_resubscribe.push(now.saturating_sub(resub));
            }
            _ => latencies.live.push(now.saturating_sub(sent)),
        }
    }

    /// One Centrifugo frame: one or more newline-separated replies and
    /// pushes. Events (live publications and those the subscribe reply
    /// recovered) are audited here, the rest become controls.
    fn on_centrifugo_frame(
        &mut self,
        payload: &[u8],
        now: u64,
        conn: &Conn,
        latencies: &mut Latencies,
        control: &mut Vec<Control>,
    ) {
        for line in payload.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            if line == b"{}" {
                control.push(Control::AppPing);
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                control.push(Control::Refused("not JSON".into()));
                continue;
            };
            match centrifugo_message(&v) {
                // After the subscription an error reply ends the connection.
                Centrifugo::Error(_) if conn.confirmed => {
                    control.push(Control::Closing { notice: false })
                }
                Centrifugo::Error(e) => control.push(Control::Refused(e)),
                Centrifugo::Connected => control.push(Control::Connected),
                Centrifugo::Subscribed {
                    epoch,
                    offset,
                    publications,
                    recovered,
                    ..
                } => {
                    let channel = peers::stream_of(&self.cred.account);
                    let epoch = epoch.unwrap_or_default();
                    let mut top = offset;
                    for (data, off) in publications {
                        if let Some((seq, sent)) = stamp::parse(data.as_bytes()) {
                            self.on_event(seq, sent, now, conn, latencies);
                        }
                        top = top.max(off);
                    }
                    if !epoch.is_empty() {
                        self.progress.track(&channel, &epoch, top);
                    }
                    match recovered {
                        Some(false) => control.push(Control::Gap),
                        Some(true) => control.push(Control::HistoryConfirmed),
                        None => {}
                    }
                    control.push(Control::Confirmed);
                }
                Centrifugo::Publication {
                    channel,
                    data,
                    offset,
                } => {
                    if let Some((seq, sent)) = stamp::parse(data.as_bytes()) {
                        self.on_event(seq, sent, now, conn, latencies);
                    }
                    if let Some(off) = offset {
                        let epoch = self
                            .progress
                            .positions
                            .iter()
                            .find(|p| p.stream == channel)
                            .map(|p| p.epoch.clone())
                            .unwrap_or_default();
                        self.progress.track(&channel, &epoch, off);
                    }
                }
                Centrifugo::Disconnect { reconnect } => {
                    control.push(Control::Closing { notice: reconnect })
                }
                Centrifugo::Other => {}
            }
        }
    }

    async fn open(&self) -> anyhow::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(self.source.into(), 0))
            .with_context(|| format!("bind {}", self.source))?;
        let stream = socket.connect(self.target.addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(2048),
            resubscribed_us: None,
            resumed: false,
            confirmed: false,
        };
        let host = self.target.addr.to_string();
        let (path, protocol) = match (self.target.protocol, self.target.peer) {
            (Protocol::Stomp, _) => ("/ws.communication".to_owned(), Some("v12.stomp")),
            (_, Some(System::Centrifugo)) => ("/connection/websocket".to_owned(), None),
            (_, Some(_)) => (
                format!("/cable?jid={}", self.cred.token),
                Some("actioncable-v1-ext-json"),
            ),
            _ => ("/cable".to_owned(), Some("actioncable-v1-ext-json")),
        };
        let request = ws::upgrade_request(&host, &path, protocol, None);
        conn.stream.write_all(request.as_bytes()).await?;
        let head_len = loop {
            if let Some(n) = ws::http_head_len(&conn.buf) {
                break n;
            }
            if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                bail!("closed during the upgrade");
            }
        };
        let head = String::from_utf8_lossy(&conn.buf[..head_len]).into_owned();
        if !ws::is_switching_protocols(head.as_bytes()) {
            bail!(
                "upgrade refused: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        if let Some(protocol) = protocol
            && ws::http_header(&head, "sec-websocket-protocol") != Some(protocol)
        {
            bail!("the server did not choose {protocol}");
        }
        conn.buf.advance(head_len);
        if self.target.protocol == Protocol::Stomp {
            let connect = format!(
                "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
                self.cred.token
            );
            conn.stream.write_all(&ws::client_text(&connect)).await?;
        }
        if self.target.centrifugo() {
            let connect = peers::centrifugo_connect(1, &self.cred.token);
            conn.stream.write_all(&ws::client_text(&connect)).await?;
        }
        Ok(conn)
    }

    /// Send the subscription, resuming from the known positions.
    async fn subscribe(&mut self, conn: &mut Conn) -> anyhow::Result<()> {
        let now = stamp::now_us();
        let first_ms = *self.progress.first_subscribe_ms.get_or_insert(now / 1000);
        let since = self.behaviour.cable_since.then_some(self.progress.since_s);
        let text = match (self.target.protocol, self.target.peer) {
            (Protocol::Stomp, _) => {
                stomp_subscribe(&self.progress.positions, conn.resumed, first_ms)
            }
            (_, Some(System::Centrifugo)) => centrifugo_subscribe(
                &peers::stream_of(&self.cred.account),
                &self.progress.positions,
            ),
            (_, Some(_)) => cable_subscribe(
                anycable_identifier(&self.cred),
                &self.progress.positions,
                since,
            ),
            _ => cable_subscribe(
                herald_identifier(&self.cred),
                &self.progress.positions,
                since,
            ),
        };
        if conn.resumed && self.progress.positions.is_empty() {
            self.stats
                .positionless_resumes
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.progress.lost_at_us.is_some() {
            self.progress.catch_up_to =
                self.published[self.cred.account_index].load(Ordering::Acquire);
        }
        conn.resubscribed_us = Some(now);
        conn.stream.write_all(&ws::client_text(&text)).await?;
        Ok(())
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Latencies of one read, recorded together.
#[derive(Default)]
struct Latencies {
    live: Vec<u64>,
    replay: Vec<u64>,
    after_resubscribe: Vec<u64>,
}

impl Latencies {
    fn flush(&mut self) {
        hist::DELIVERY.record(&self.live);
        hist::REPLAY.record(&self.replay);
        hist::REPLAY_AFTER_RESUBSCRIBE.record(&self.after_resubscribe);
        self.live.clear();
        self.replay.clear();
        self.after_resubscribe.clear();
    }
}

/// The STOMP `SUBSCRIBE`: with the last `message-id` of every stream seen,
/// or, on a reconnection before any event, the first subscription's time.
fn stomp_subscribe(positions: &[Position], resumed: bool, first_ms: u64) -> String {
    let offsets: Vec<String> = positions
        .iter()
        .map(|p| stomp_escape(&format!("{}:{}", p.stream, p.offset)))
        .collect();
    let resume = if !offsets.is_empty() {
        format!("x-stream-offset:{}\n", offsets.join(","))
    } else if resumed {
        format!("x-stream-offset:timestamp={first_ms}\n")
    } else {
        String::new()
    };
    format!("SUBSCRIBE\nid:sub-0\ndestination:/events\n{resume}receipt:r-0\n\n\0")
}

/// Herald's RoomChannel identifier of a client.
fn herald_identifier(cred: &Credential) -> String {
    let number = |s: &str| {
        s.parse::<u64>()
            .map_or_else(|_| serde_json::json!(s), |n| serde_json::json!(n))
    };
    serde_json::json!({
        "channel": "RoomChannel",
        "pubsub_token": cred.token,
        "account_id": number(&cred.account),
        "user_id": number(&cred.user),
    })
    .to_string()
}

/// AnyCable's public-stream identifier of a client's account stream.
fn anycable_identifier(cred: &Credential) -> String {
    serde_json::json!({"channel": "$pubsub", "stream_name": peers::stream_of(&cred.account)})
        .to_string()
}

/// The ActionCable `subscribe` of `identifier` with `history`, as
/// `@anycable/web` builds it (with `since_s`), or with only the known
/// positions.
fn cable_subscribe(identifier: String, positions: &[Position], since_s: Option<u64>) -> String {
    let streams: serde_json::Map<String, serde_json::Value> = positions
        .iter()
        .map(|p| {
            (
                p.stream.clone(),
                serde_json::json!({"epoch": p.epoch, "offset": p.offset}),
            )
        })
        .collect();
    let mut command = serde_json::json!({"command": "subscribe", "identifier": identifier});
    match since_s {
        Some(since) => command["history"] = serde_json::json!({"since": since, "streams": streams}),
        None if !streams.is_empty() => command["history"] = serde_json::json!({"streams": streams}),
        None => {}
    }
    command.to_string()
}

/// Centrifugo's `subscribe` (command 2) to `channel`: asking for a
/// recoverable subscription (as `centrifuge-js` does with `recoverable:
/// true`: the reply then carries the stream's epoch and offset), and
/// recovering from the last known offset and epoch when there is one.
fn centrifugo_subscribe(channel: &str, positions: &[Position]) -> String {
    let mut sub = serde_json::json!({"channel": channel, "recoverable": true});
    if let Some(p) = positions.iter().find(|p| p.stream == channel) {
        sub["recover"] = true.into();
        sub["offset"] = p.offset.into();
        sub["epoch"] = p.epoch.clone().into();
    }
    serde_json::json!({"id": 2, "subscribe": sub}).to_string()
}

/// One Centrifugo reply or push, as far as a resuming client cares.
#[derive(Debug, PartialEq)]
enum Centrifugo {
    /// A reply with an error.
    Error(String),
    /// The connect reply (command 1).
    Connected,
    /// The subscribe reply (command 2): the stream's epoch and top offset,
    /// the recovered publications (data, offset) and, when recovery was
    /// asked for, whether it succeeded.
    Subscribed {
        epoch: Option<String>,
        offset: i64,
        publications: Vec<(String, i64)>,
        recovered: Option<bool>,
    },
    /// A publication push.
    Publication {
        channel: String,
        data: String,
        offset: Option<i64>,
    },
    /// A disconnect push.
    Disconnect { reconnect: bool },
    /// Anything else.
    Other,
}

fn centrifugo_message(v: &serde_json::Value) -> Centrifugo {
    if let Some(e) = v.get("error") {
        return Centrifugo::Error(format!("refused: {e}"));
    }
    match v.get("id").and_then(serde_json::Value::as_u64) {
        Some(1) => return Centrifugo::Connected,
        Some(2) => {
            let r = &v["subscribe"];
            let publications = r["publications"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| (p["data"].to_string(), p["offset"].as_i64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            // The reply does not name the channel: each client has one
            // subscription, to its account's stream.
            return Centrifugo::Subscribed {
                epoch: r["epoch"].as_str().map(str::to_owned),
                offset: r["offset"].as_i64().unwrap_or(0),
                publications,
                recovered: r["was_recovering"]
                    .as_bool()
                    .unwrap_or(false)
                    .then(|| r["recovered"].as_bool().unwrap_or(false)),
            };
        }
        Some(_) => return Centrifugo::Other,
        None => {}
    }
    let push = &v["push"];
    if let Some(p) = push.get("pub") {
        return Centrifugo::Publication {
            channel: push["channel"].as_str().unwrap_or_default().to_owned(),
            data: p["data"].to_string(),
            offset: p["offset"].as_i64(),
        };
    }
    if let Some(d) = push.get("disconnect") {
        return Centrifugo::Disconnect {
            reconnect: d["reconnect"].as_bool().unwrap_or(false),
        };
    }
    Centrifugo::Other
}

/// STOMP 1.2 header value escaping.
fn stomp_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ':' => out.push_str("\\c"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// STOMP 1.2 header value unescaping (`None` on an undefined escape).
fn stomp_unescape(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match it.next()? {
            b'\\' => b'\\',
            b'c' => b':',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    String::from_utf8(out).ok()
}

/// The value of header `name` in a STOMP frame's head.
fn stomp_header<'a>(frame: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let head_end = memmem::find(frame, b"\n\n").unwrap_or(frame.len());
    let head = &frame[..head_end];
    head.split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| line.strip_prefix(name.as_bytes())?.strip_prefix(b":"))
        .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
}

/// A STOMP `MESSAGE`'s position: `(stream, "", offset)` from its
/// `message-id` (`<topic>:<partition>:<offset>`).
fn stomp_position(frame: &[u8]) -> Option<(String, String, i64)> {
    if !frame.starts_with(b"MESSAGE") {
        return None;
    }
    let id = stomp_unescape(stomp_header(frame, "message-id")?)?;
    let (stream, offset) = id.rsplit_once(':')?;
    let (_, partition) = stream.rsplit_once(':')?;
    partition.parse::<i32>().ok()?;
    Some((stream.to_owned(), String::new(), offset.parse().ok()?))
}

fn stomp_control(frame: &[u8], subscribed: bool) -> Control {
    let frame = frame.strip_prefix(b"\r").unwrap_or(frame);
    if frame.starts_with(b"CONNECTED") {
        Control::Connected
    } else if frame.starts_with(b"RECEIPT") {
        Control::Confirmed
    } else if frame.starts_with(b"MESSAGE") && stomp_header(frame, "herald-gap").is_some() {
        Control::Gap
    } else if frame.starts_with(b"ERROR") {
        let message = stomp_header(frame, "message")
            .and_then(stomp_unescape)
            .unwrap_or_default();
        if subscribed {
            Control::Closing {
                notice: message.contains("reconnect"),
            }
        } else {
            Control::Refused(format!("ERROR {message}"))
        }
    } else {
        Control::Other
    }
}

/// A JSON string value starting right after `key` (`"key":"`), without
/// escapes.
fn json_str_after<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = memmem::rfind(frame, key)? + key.len();
    let rest = frame.get(at..)?;
    let end = memchr::memchr(b'"', rest)?;
    let value = &rest[..end];
    if value.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// An extended-protocol broadcast's position: `(stream_id, epoch, offset)`.
fn cable_position(frame: &[u8]) -> Option<(String, String, i64)> {
    let stream = json_str_after(frame, b"\"stream_id\":\"")?;
    let epoch = json_str_after(frame, b"\"epoch\":\"")?;
    let at = memmem::rfind(frame, b"\"offset\":")? + 9;
    let rest = frame.get(at..)?;
    let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let offset = std::str::from_utf8(&rest[..len]).ok()?.parse().ok()?;
    Some((stream.to_owned(), epoch.to_owned(), offset))
}

fn cable_control(frame: &[u8]) -> Control {
    match json_str_after(frame, b"\"type\":\"") {
        Some("confirm_subscription") => Control::Confirmed,
        Some("reject_subscription") => Control::Refused("reject_subscription".into()),
        Some("confirm_history") => Control::HistoryConfirmed,
        Some("reject_history") => Control::Gap,
        Some("ping") => Control::Ping,
        Some("disconnect") => Control::Closing {
            notice: memmem::find(frame, b"\"reconnect\":true").is_some(),
        },
        _ => Control::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stomp_positions_round_trip() {
        let frame = b"MESSAGE\nsubscription:sub-0\nmessage-id:bench.tag\\c2\\c41\ndestination:/events\n\n{\"seq\":1,\"sent_us\":2}\0";
        let (stream, epoch, offset) = stomp_position(frame).unwrap();
        assert_eq!(
            (stream.as_str(), epoch.as_str(), offset),
            ("bench.tag:2", "", 41)
        );
        let mut p = Progress::new();
        p.track(&stream, &epoch, offset);
        let sub = stomp_subscribe(&p.positions, true, 5);
        assert!(
            sub.contains("\nx-stream-offset:bench.tag\\c2\\c41\n"),
            "{sub}"
        );
        assert!(stomp_subscribe(&[], true, 5).contains("x-stream-offset:timestamp=5\n"));
        assert!(!stomp_subscribe(&[], false, 5).contains("x-stream-offset"));
        assert_eq!(stomp_position(b"MESSAGE\nmessage-id:x\n\n\0"), None);
        assert_eq!(stomp_position(b"MESSAGE\nmessage-id:a:b:c\\q\n\n\0"), None);
    }

    #[test]
    fn stomp_controls() {
        assert_eq!(
            stomp_control(b"RECEIPT\nreceipt-id:r-0\n\n\0", false),
            Control::Confirmed
        );
        assert_eq!(
            stomp_control(b"ERROR\nmessage:server restart\\c reconnect\n\n\0", true),
            Control::Closing { notice: true }
        );
        assert!(matches!(
            stomp_control(b"ERROR\nmessage:401 Unauthorized\n\n\0", false),
            Control::Refused(_)
        ));
        assert_eq!(
            stomp_control(b"MESSAGE\nherald-gap:t:0:5\n\n{}\0", true),
            Control::Gap
        );
        assert_eq!(stomp_control(b"\n", true), Control::Other);
    }

    #[test]
    fn cable_positions_and_controls() {
        let frame = br#"{"identifier":"{\"channel\":\"RoomChannel\",\"type\":\"x\"}","message":{"event":"message.created","data":{"seq":3,"sent_us":9}},"stream_id":"bench.message:1","epoch":"herald.AbC","offset":17}"#;
        assert_eq!(
            cable_position(frame),
            Some(("bench.message:1".into(), "herald.AbC".into(), 17))
        );
        assert_eq!(
            cable_control(
                br#"{"identifier":"{\"channel\":\"RoomChannel\"}","type":"confirm_subscription"}"#
            ),
            Control::Confirmed
        );
        assert_eq!(
            cable_control(br#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#),
            Control::Closing { notice: true }
        );
        assert_eq!(
            cable_control(br#"{"type":"ping","message":1}"#),
            Control::Ping
        );
        assert_eq!(
            cable_control(br#"{"identifier":"x","type":"reject_history"}"#),
            Control::Gap
        );
        assert_eq!(cable_control(b"{}"), Control::Other);
        let cred = Credential {
            account: "1000".into(),
            account_index: 0,
            user: "7".into(),
            token: "t".into(),
        };
        let positions = [Position {
            stream: "bench.message:1".into(),
            epoch: "herald.AbC".into(),
            offset: 17,
        }];
        let sub: serde_json::Value = serde_json::from_str(&cable_subscribe(
            herald_identifier(&cred),
            &positions,
            Some(1_700_000_000),
        ))
        .unwrap();
        assert_eq!(sub["history"]["since"], 1_700_000_000);
        assert_eq!(
            sub["history"]["streams"]["bench.message:1"],
            serde_json::json!({"epoch": "herald.AbC", "offset": 17})
        );
        let ident: serde_json::Value =
            serde_json::from_str(sub["identifier"].as_str().unwrap()).unwrap();
        assert_eq!(ident["account_id"], 1000);
        let bare: serde_json::Value =
            serde_json::from_str(&cable_subscribe(herald_identifier(&cred), &positions, None))
                .unwrap();
        assert!(bare["history"].get("since").is_none());
        assert_eq!(bare["history"]["streams"]["bench.message:1"]["offset"], 17);
        let first: serde_json::Value =
            serde_json::from_str(&cable_subscribe(herald_identifier(&cred), &[], None)).unwrap();
        assert!(first.get("history").is_none());
    }

    #[test]
    fn centrifugo_recovery_frames() {
        let first: serde_json::Value =
            serde_json::from_str(&centrifugo_subscribe("account-1", &[])).unwrap();
        assert_eq!(first["id"], 2);
        assert_eq!(first["subscribe"]["channel"], "account-1");
        assert!(first["subscribe"].get("recover").is_none());
        assert_eq!(first["subscribe"]["recoverable"], true);
        let positions = [Position {
            stream: "account-1".into(),
            epoch: "XyZ".into(),
            offset: 41,
        }];
        let again: serde_json::Value =
            serde_json::from_str(&centrifugo_subscribe("account-1", &positions)).unwrap();
        assert_eq!(
            again["subscribe"],
            serde_json::json!({"channel": "account-1", "recoverable": true, "recover": true, "offset": 41, "epoch": "XyZ"})
        );
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            centrifugo_message(&v(r#"{"id":1,"connect":{"client":"c"}}"#)),
            Centrifugo::Connected
        );
        let Centrifugo::Subscribed {
            epoch,
            offset,
            publications,
            recovered,
        } = centrifugo_message(&v(
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"XyZ","offset":44,"was_recovering":true,"recovered":true,
                "publications":[{"data":{"seq":3,"sent_us":9},"offset":42},{"data":{"seq":4,"sent_us":10},"offset":43}]}}"#,
        ))
        else {
            panic!("not a subscribe reply");
        };
        assert_eq!(
            (epoch.as_deref(), offset, recovered),
            (Some("XyZ"), 44, Some(true))
        );
        let replayed: Vec<_> = publications
            .iter()
            .map(|(d, o)| (stamp::parse(d.as_bytes()), *o))
            .collect();
        assert_eq!(replayed, [(Some((3, 9)), 42), (Some((4, 10)), 43)]);
        assert!(matches!(
            centrifugo_message(&v(
                r#"{"id":2,"subscribe":{"epoch":"e","offset":1,"was_recovering":true}}"#
            )),
            Centrifugo::Subscribed {
                recovered: Some(false),
                ..
            }
        ));
        assert!(matches!(
            centrifugo_message(&v(r#"{"id":2,"subscribe":{"epoch":"e","offset":1}}"#)),
            Centrifugo::Subscribed {
                recovered: None,
                ..
            }
        ));
        let Centrifugo::Publication {
            channel,
            data,
            offset,
        } = centrifugo_message(&v(
            r#"{"push":{"channel":"account-1","pub":{"data":{"seq":5,"sent_us":11},"offset":45}}}"#,
        ))
        else {
            panic!("not a publication");
        };
        assert_eq!(
            (channel.as_str(), stamp::parse(data.as_bytes()), offset),
            ("account-1", Some((5, 11)), Some(45))
        );
        assert_eq!(
            centrifugo_message(&v(
                r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}"#
            )),
            Centrifugo::Disconnect { reconnect: true }
        );
        assert!(matches!(
            centrifugo_message(&v(
                r#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#
            )),
            Centrifugo::Error(_)
        ));
    }

    #[test]
    fn anycable_subscribes_to_its_public_stream() {
        let cred = Credential {
            account: "1000".into(),
            account_index: 0,
            user: "7".into(),
            token: "t".into(),
        };
        let sub: serde_json::Value =
            serde_json::from_str(&cable_subscribe(anycable_identifier(&cred), &[], Some(5)))
                .unwrap();
        let ident: serde_json::Value =
            serde_json::from_str(sub["identifier"].as_str().unwrap()).unwrap();
        assert_eq!(
            ident,
            serde_json::json!({"channel": "$pubsub", "stream_name": "account-1000"})
        );
        assert_eq!(sub["history"]["since"], 5);
    }

    #[test]
    fn late_events_are_neither_lost_nor_duplicated() {
        let mut p = Progress::new();
        for seq in [0, 1, 3, 2, 4, 4, 7] {
            p.audit(seq);
        }
        assert_eq!(p.next, 8);
        assert_eq!(p.reordered, 1, "2 came after 3");
        assert_eq!(p.dups, 1, "4 twice");
        assert_eq!(p.missing.iter().copied().collect::<Vec<_>>(), [5, 6]);
        // A wild jump is counted, not remembered.
        p.audit(8 + MAX_MISSING + 10);
        assert_eq!(p.missing.len(), 2);
        assert_eq!(p.missing_overflow, MAX_MISSING + 10);
    }

    #[test]
    fn unit_is_in_range() {
        for _ in 0..1000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
