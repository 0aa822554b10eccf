//! The load generator's clients: N WebSocket connections, each bound to a
//! source address among 127.0.0.1..k (so N can exceed one address's
//! ephemeral ports), authenticated and subscribed the way real clients are
//! (STOMP CONNECT + SUBSCRIBE with receipt; ActionCable subscribe + confirm),
//! then reading frames until told to stop.
//!
//! Each connection keeps its counters in a [`ConnStats`] the run reads
//! without stopping it: frames with a stamp received, the next per-account
//! sequence number it expects (events of one account arrive in order, so a
//! jump is a loss and a step back a duplicate), and the losses and duplicates
//! seen. Latencies go to the per-thread [`hist::DELIVERY`] recorder.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    hist,
    stamp::{self, Protocol},
    ws,
};

/// Largest frame a client accepts.
const MAX_FRAME: usize = 16 << 20;

/// Connection states.
pub mod state {
    /// Not yet subscribed.
    pub const CONNECTING: u8 = 0;
    /// Subscribed and reading.
    pub const SUBSCRIBED: u8 = 1;
    /// Could not connect or subscribe.
    pub const FAILED: u8 = 2;
    /// Closed by the server or the network after subscribing.
    pub const CLOSED: u8 = 3;
}

/// Counters of one connection, readable while it runs.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Stamped frames received.
    pub received: AtomicU64,
    /// Next per-account sequence number expected.
    pub next_seq: AtomicU64,
    /// Frames whose sequence number was already seen.
    pub duplicates: AtomicU64,
    /// Sequence numbers skipped (lost) so far.
    pub gaps: AtomicU64,
    /// One of [`state`].
    pub state: AtomicU8,
    /// Bytes read from the socket after the upgrade (frames as sent on the wire).
    pub wire_bytes: AtomicU64,
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Account id.
    pub account: String,
    /// Index of the account in the run's account list.
    pub account_index: usize,
    /// User id.
    pub user: String,
    /// JWT.
    pub token: String,
}

/// Where and how clients connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's WebSocket address.
    pub addr: SocketAddr,
    /// Protocol to speak.
    pub protocol: Protocol,
    /// Number of 127.0.0.x source addresses to spread over.
    pub source_ips: u8,
    /// First source address is 127.0.0.`first_source_ip`.
    pub first_source_ip: u8,
    /// STOMP heart-beat the client asks for, ms (0: none).
    pub stomp_heartbeat_ms: u64,
    /// Speak a peer's protocol instead of Herald's (`protocol` then only
    /// names the payload shape).
    pub peer: Option<crate::peers::PeerTarget>,
    /// Offer permessage-deflate (and require it).
    pub deflate: bool,
}

/// A fleet of connections being opened or running.
pub struct Fleet {
    /// Per connection, in start order.
    pub conns: Vec<Arc<ConnStats>>,
    /// Account index of each connection.
    pub account_of: Vec<usize>,
    /// Connections opened and subscribed.
    pub subscribed: Arc<AtomicU64>,
    /// Connections that failed to open.
    pub failed: Arc<AtomicU64>,
    /// First failure, for the report.
    pub first_error: Arc<std::sync::Mutex<Option<String>>>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Start opening one connection per credential, at most `concurrency` at
    /// a time (the rest wait for a slot). Returns at once.
    pub fn open(target: &Target, credentials: Vec<Credential>, concurrency: usize) -> Fleet {
        let stop = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let subscribed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None));
        let mut conns = Vec::with_capacity(credentials.len());
        let mut account_of = Vec::with_capacity(credentials.len());
        let mut tasks = JoinSet::new();
        for (i, cred) in credentials.into_iter().enumerate() {
            let stats = Arc::new(ConnStats::default());
            conns.push(stats.clone());
            account_of.push(cred.account_index);
            let source = Ipv4Addr::new(
                127,
                0,
                0,
                target
                    .first_source_ip
                    .saturating_add((i % usize::from(target.source_ips.max(1))) as u8),
            );
            let (target, slots, stop) = (target.clone(), slots.clone(), stop.clone());
            let (subscribed, failed, first_error) =
                (subscribed.clone(), failed.clone(), first_error.clone());
            tasks.spawn(async move {
                let Ok(slot) = slots.acquire_owned().await else {
                    return;
                };
                let started = Instant::now();
                let opened = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tokio::time::timeout(Duration::from_secs(30), open_one(&target, source, &cred)) => r,
                };
                drop(slot);
                let conn = match opened {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        fail(&stats, &failed, &first_error, format!("{e:#}"));
                        return;
                    }
                    Err(_) => {
                        fail(&stats, &failed, &first_error, "timed out opening".into());
                        return;
                    }
                };
                hist::CONNECT.record(&[started.elapsed().as_micros() as u64]);
                stats.state.store(state::SUBSCRIBED, Ordering::Release);
                subscribed.fetch_add(1, Ordering::Relaxed);
                conn.read_until(&stats, &stop).await;
            });
        }
        Fleet {
            conns,
            account_of,
            subscribed,
            failed,
            first_error,
            stop,
            tasks,
        }
    }

    /// Wait until every connection is subscribed or failed, or `within`.
    /// Returns the time it took.
    pub async fn wait_open(&self, within: Duration) -> Duration {
        let start = Instant::now();
        let total = self.conns.len() as u64;
        while self.subscribed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) < total
            && start.elapsed() < within
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        start.elapsed()
    }

    /// Connections currently subscribed (not failed, not closed).
    pub fn live(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state.load(Ordering::Relaxed) == state::SUBSCRIBED)
            .count()
    }

    /// Connections closed by the server after subscribing.
    pub fn closed(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state.load(Ordering::Relaxed) == state::CLOSED)
            .count()
    }

    /// Bytes all connections read from their sockets after the upgrade.
    pub fn wire_bytes(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.wire_bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Stamped frames received by all connections.
    pub fn received(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum()
    }

    /// Per account, the lowest `next_seq` among its subscribed connections
    /// (`u64::MAX` for an account without one): everything below it has
    /// reached every recipient.
    pub fn frontiers(&self, accounts: usize, out: &mut Vec<u64>) {
        out.clear();
        out.resize(accounts, u64::MAX);
        for (c, &a) in self.conns.iter().zip(&self.account_of) {
            if c.state.load(Ordering::Relaxed) == state::FAILED {
                continue;
            }
            let n = c.next_seq.load(Ordering::Relaxed);
            if n < out[a] {
                out[a] = n;
            }
        }
    }

    /// Subscribed (non-failed) connections per account.
    pub fn recipients_per_account(&self, accounts: usize) -> Vec<u64> {
        let mut out = vec![0; accounts];
        for (c, &a) in self.conns.iter().zip(&self.account_of) {
            if c.state.load(Ordering::Relaxed) != state::FAILED {
                out[a] += 1;
            }
        }
        out
    }

    /// Wait until every non-failed connection has seen `sent[account]`
    /// events, or `within`. True when complete.
    pub async fn wait_delivered(&self, sent: &[u64], within: Duration) -> bool {
        let start = Instant::now();
        let mut frontier = Vec::new();
        loop {
            self.frontiers(sent.len(), &mut frontier);
            if frontier
                .iter()
                .zip(sent)
                .all(|(f, s)| *f == u64::MAX || f >= s)
            {
                return true;
            }
            if start.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Losses and duplicates given how many events each account was sent:
    /// `(lost, duplicated)`.
    pub fn audit(&self, sent: &[u64]) -> (u64, u64) {
        let mut lost = 0;
        let mut dups = 0;
        for (c, &a) in self.conns.iter().zip(&self.account_of) {
            if c.state.load(Ordering::Relaxed) == state::FAILED {
                continue;
            }
            lost += c.gaps.load(Ordering::Relaxed)
                + sent[a].saturating_sub(c.next_seq.load(Ordering::Relaxed));
            dups += c.duplicates.load(Ordering::Relaxed);
        }
        (lost, dups)
    }

    /// Close every connection and wait for the tasks.
    pub async fn close(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

fn fail(
    stats: &ConnStats,
    failed: &AtomicU64,
    first: &std::sync::Mutex<Option<String>>,
    e: String,
) {
    stats.state.store(state::FAILED, Ordering::Release);
    failed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut f) = first.lock()
        && f.is_none()
    {
        *f = Some(e);
    }
}

/// An open, subscribed connection.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Text frame to answer a text frame `{}` with (Centrifugo's
    /// application-level ping wants a pong).
    app_pong: bool,
    /// permessage-deflate was offered, so must be accepted.
    deflate: bool,
}

async fn open_one(target: &Target, source: Ipv4Addr, cred: &Credential) -> anyhow::Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(target.addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let host = target.addr.to_string();
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(2048),
        app_pong: false,
        deflate: false,
    };
    if let Some(peer) = &target.peer {
        conn.app_pong = peer.app_pong();
        crate::peers::handshake(peer, &mut conn, &host, cred).await?;
        return Ok(conn);
    }
    let request = |path: &str, protocols: Option<&str>| {
        let mut req = ws::upgrade_request(&host, path, protocols, None);
        if target.deflate {
            req.insert_str(req.len() - 2, ws::DEFLATE_OFFER);
        }
        req
    };
    conn.deflate = target.deflate;
    match target.protocol {
        Protocol::Stomp => {
            conn.upgrade(&request(
                &format!("/ws.communication?bench_account={}", cred.account_index),
                Some("v12.stomp"),
            ))
            .await?;
            let hb = target.stomp_heartbeat_ms;
            conn.send(&format!(
                "CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:{hb},{hb}\nAuthorization:Bearer {}\n\n\0",
                cred.token
            ))
            .await?;
            conn.expect(|f| f.starts_with(b"CONNECTED\n"), "CONNECTED")
                .await?;
            conn.send("SUBSCRIBE\nid:sub-0\ndestination:/events\nreceipt:r-0\n\n\0")
                .await?;
            conn.expect(|f| f.starts_with(b"RECEIPT\n"), "RECEIPT")
                .await?;
        }
        Protocol::Room => {
            conn.upgrade(&request(
                &format!("/cable?bench_account={}", cred.account_index),
                Some("actioncable-v1-json, actioncable-unsupported"),
            ))
            .await?;
            let identifier = serde_json::json!({
                "channel": "RoomChannel",
                "pubsub_token": cred.token,
                "account_id": cred.account.parse::<u64>().map_or_else(|_| serde_json::json!(cred.account), |n| serde_json::json!(n)),
                "user_id": cred.user.parse::<u64>().map_or_else(|_| serde_json::json!(cred.user), |n| serde_json::json!(n)),
            })
            .to_string();
            conn.cable_subscribe(&identifier).await?;
        }
        Protocol::Notifications => {
            conn.upgrade(&request(
                &format!(
                    "/stream?account_id={}&token={}&bench_account={}",
                    cred.account, cred.token, cred.account_index
                ),
                None,
            ))
            .await?;
            conn.cable_subscribe(r#"{"channel":"NotificationsChannel"}"#)
                .await?;
        }
    }
    Ok(conn)
}

impl Conn {
    pub(crate) async fn upgrade(&mut self, request: &str) -> anyhow::Result<()> {
        self.stream.write_all(request.as_bytes()).await?;
        let head_len = loop {
            if let Some(n) = ws::http_head_len(&self.buf) {
                break n;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("closed during the upgrade");
            }
        };
        if !ws::is_switching_protocols(&self.buf[..head_len]) {
            let head = String::from_utf8_lossy(&self.buf[..head_len]);
            bail!(
                "upgrade refused: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        if self.deflate {
            let head = String::from_utf8_lossy(&self.buf[..head_len]);
            if !ws::http_header(&head, "sec-websocket-extensions")
                .is_some_and(|v| v.starts_with("permessage-deflate"))
            {
                bail!("permessage-deflate was offered and not accepted (is --ws-deflate on?)");
            }
        }
        self.buf.advance(head_len);
        Ok(())
    }

    pub(crate) async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream.write_all(&ws::client_text(text)).await?;
        Ok(())
    }

    pub(crate) async fn cable_subscribe(&mut self, identifier: &str) -> anyhow::Result<()> {
        let cmd = serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string();
        self.send(&cmd).await?;
        let reply = self
            .expect(
                |f| {
                    memchr::memmem::find(f, b"confirm_subscription").is_some()
                        || memchr::memmem::find(f, b"reject_subscription").is_some()
                        || memchr::memmem::find(f, b"\"disconnect\"").is_some()
                },
                "confirm_subscription",
            )
            .await?;
        if memchr::memmem::find(&reply, b"confirm_subscription").is_none() {
            bail!("subscription refused: {}", String::from_utf8_lossy(&reply));
        }
        Ok(())
    }

    /// Read text frames until one satisfies `want` (others, like `welcome`
    /// or pings, are skipped); an ERROR or close fails.
    pub(crate) async fn expect(
        &mut self,
        want: impl Fn(&[u8]) -> bool,
        what: &str,
    ) -> anyhow::Result<Vec<u8>> {
        loop {
            while let Some(head) = ws::parse_head(&self.buf, MAX_FRAME)? {
                if self.buf.len() < head.frame_len() {
                    break;
                }
                let mut payload = self.buf[head.payload_start..head.frame_len()].to_vec();
                if head.rsv1 {
                    let packed = std::mem::take(&mut payload);
                    ws::inflate_into(&packed, &mut payload)?;
                }
                self.buf.advance(head.frame_len());
                match head.opcode {
                    ws::opcode::CLOSE => bail!("closed while waiting for {what}"),
                    ws::opcode::TEXT | ws::opcode::BINARY => {
                        if want(&payload) {
                            return Ok(payload);
                        }
                        if payload.starts_with(b"ERROR\n") {
                            bail!("server error: {}", String::from_utf8_lossy(&payload));
                        }
                    }
                    _ => {}
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("closed while waiting for {what}");
            }
        }
    }

    /// Read until `stop` or the server closes, counting stamped frames.
    async fn read_until(mut self, stats: &ConnStats, stop: &CancellationToken) {
        let mut latencies: Vec<u64> = Vec::new();
        let mut received = 0u64;
        let mut next = 0u64;
        let mut dups = 0u64;
        let mut gaps = 0u64;
        let mut wire = 0u64;
        let mut inflated = Vec::new();
        loop {
            // Room for a whole coalesced batch in one read; untouched
            // capacity costs no resident memory while the socket is idle.
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(64 * 1024);
            }
            let n = tokio::select! {
                _ = stop.cancelled() => return,
                n = self.stream.read_buf(&mut self.buf) => n,
            };
            let Ok(n) = n else { break };
            if n == 0 {
                break;
            }
            wire += n as u64;
            let now = stamp::now_us();
            let mut closed = false;
            let mut pong = None;
            let mut app_pong = false;
            while let Ok(Some(head)) = ws::parse_head(&self.buf, MAX_FRAME) {
                let len = head.frame_len();
                if self.buf.len() < len {
                    // Make room for the rest of a large frame in one go.
                    self.buf.reserve(len - self.buf.len());
                    break;
                }
                let mut payload = &self.buf[head.payload_start..len];
                if head.rsv1 {
                    if ws::inflate_into(payload, &mut inflated).is_err() {
                        closed = true;
                        break;
                    }
                    payload = &inflated;
                }
                match head.opcode {
                    ws::opcode::TEXT | ws::opcode::BINARY | ws::opcode::CONTINUATION => {
                        // Centrifugo's ping, possibly batched with publications.
                        if self.app_pong && payload.split(|b| *b == b'\n').any(|l| l == b"{}") {
                            app_pong = true;
                        }
                        // Some servers (Centrifugo) put several messages in one frame.
                        for (seq, sent) in stamp::parse_all(payload) {
                            received += 1;
                            latencies.push(now.saturating_sub(sent));
                            if seq == next {
                                next += 1;
                            } else if seq > next {
                                gaps += seq - next;
                                next = seq + 1;
                            } else {
                                dups += 1;
                            }
                        }
                    }
                    ws::opcode::PING => pong = Some(payload.to_vec()),
                    ws::opcode::CLOSE => closed = true,
                    _ => {}
                }
                self.buf.advance(len);
            }
            if !latencies.is_empty() {
                hist::DELIVERY.record(&latencies);
                latencies.clear();
                stats.received.store(received, Ordering::Relaxed);
                stats.duplicates.store(dups, Ordering::Relaxed);
                stats.gaps.store(gaps, Ordering::Relaxed);
                stats.next_seq.store(next, Ordering::Release);
            }
            stats.wire_bytes.store(wire, Ordering::Relaxed);
            if app_pong && self.stream.write_all(&ws::client_text("{}")).await.is_err() {
                break;
            }
            if let Some(p) = pong {
                let frame = ws::encode_frame(ws::opcode::PONG, &p, Some(ws::CLIENT_MASK));
                if self.stream.write_all(&frame).await.is_err() {
                    break;
                }
            }
            if closed {
                break;
            }
        }
        stats.state.store(state::CLOSED, Ordering::Release);
    }
}

/// Mint `connections` credentials spread over `accounts` accounts
/// (connection i belongs to account i % accounts), HS256-signed with `secret`.
pub fn credentials(
    connections: usize,
    accounts: usize,
    secret: &str,
) -> anyhow::Result<Vec<Credential>> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let header = jsonwebtoken::Header::default();
    let exp = stamp::now_us() / 1_000_000 + 6 * 3600;
    (0..connections)
        .map(|i| {
            let account_index = i % accounts.max(1);
            let account = account_id(account_index);
            let user = format!("{}", 100_000 + i);
            let token = jsonwebtoken::encode(
                &header,
                &serde_json::json!({"sub": user, "account_id": account, "role": "agent", "exp": exp}),
                &key,
            )?;
            Ok(Credential {
                account,
                account_index,
                user,
                token,
            })
        })
        .collect()
}

/// The account id of account index `i`.
pub fn account_id(i: usize) -> String {
    (ACCOUNT_BASE.load(std::sync::atomic::Ordering::Relaxed) + i).to_string()
}

/// The first account id (`--account-base`).
pub static ACCOUNT_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1000);
