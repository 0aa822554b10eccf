//! One STOMP connection: CONNECT/authentication, heart-beats, subscriptions,
//! receipts, errors — the bytes docs/protocols/stomp.md pins down.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Command, Decoded, Frame, Limits, Version};
use super::destination::Destination;
use crate::{
    core::{
        event::RoutedEvent,
        identity::Identity,
        position::{ResumeRequest, TopicPartition},
    },
    kafka::resume,
    kafka::resume::ResumeConfig,
    limits::AccountSlot,
    protocols::shared::Shared,
    routing::{
        gate::ResumeGate,
        groups::REDIRECT_CLOSE_CODE,
        router::{FrameCache, Recipient, Slot},
    },
    transport::{
        connection::{self, ConnTx, HeartBeatKind, Outbound, Supersede},
        session::{Conn, Interrupt, cold},
        ws::{Message, WsFrame, WsSocket, WsStream},
    },
};

const PROTOCOL: &str = "stomp";

/// STOMP endpoint settings.
#[derive(Debug, Clone)]
pub struct StompConfig {
    /// Heart-beat interval the server offers to send, ms (0 = none).
    pub heartbeat_send_ms: u64,
    /// Heart-beat interval the server wants from clients, ms (0 = none).
    pub heartbeat_recv_ms: u64,
    /// Time allowed between the upgrade and the CONNECT frame.
    pub connect_timeout: Duration,
    /// Longest a connection without negotiated heart-beats may stay silent.
    pub idle_timeout: Duration,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Frame and header size limits.
    pub limits: Limits,
}

/// What STOMP sessions need besides the [`Shared`] part.
pub struct StompDeps {
    /// STOMP settings.
    pub config: StompConfig,
    /// Resume limits and the pod-wide Kafka read-back bounds (shared with
    /// ActionCable).
    pub resume: Arc<ResumeConfig>,
}

/// The acknowledgement mode of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    fn parse(s: Option<&str>) -> Option<AckMode> {
        match s {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            Some(_) => None,
        }
    }
}

struct Subscription {
    id: String,
    destination: Destination,
    ack: AckMode,
    /// Key of this subscription's MESSAGE frame in the per-event cache:
    /// connections with the same version, destination, ack mode and
    /// subscription id share one encoded frame.
    cache_key: String,
    /// Holds live events while this subscription replays what it missed.
    gate: Arc<ResumeGate>,
    /// Unique in the process: a superseding event's frame replaces only an
    /// older one queued for the same subscription.
    lane: u64,
}

/// A connected STOMP client as the router sees it.
struct StompRecipient {
    identity: Identity,
    version: Version,
    subscriptions: Mutex<Vec<Subscription>>,
    conn: ConnTx,
}

impl Recipient for StompRecipient {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn offer(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) {
        let Ok(subs) = self.subscriptions.lock() else {
            return;
        };
        for sub in subs
            .iter()
            .filter(|s| s.destination.accepts(&event.envelope.event_type))
        {
            if sub.gate.already_seen(event) || sub.gate.hold(event) {
                continue;
            }
            if !self.deliver(sub, event, cache) {
                break;
            }
        }
    }

    fn offer_batch(&self, events: &mut dyn Iterator<Item = &Slot>) {
        // Frames are made first and queued together afterwards: the queue
        // is never locked while a subscription's gate is (a resuming gate
        // queues its held events under its own lock).
        connection::push_batch(&self.conn, |frames| {
            let Ok(subs) = self.subscriptions.lock() else {
                return;
            };
            for slot in events {
                slot.with(|event, cache| {
                    for sub in subs
                        .iter()
                        .filter(|s| s.destination.accepts(&event.envelope.event_type))
                    {
                        if !sub.gate.already_seen(event) && !sub.gate.hold(event) {
                            frames.push((
                                self.frame(sub, event, cache),
                                Some(event.stamp()),
                                Supersede::of(event, sub.lane),
                            ));
                        }
                    }
                });
            }
        });
    }

    fn forget_stream(&self, topic: &str, partition: Option<i32>) {
        if let Ok(subs) = self.subscriptions.lock() {
            for sub in subs.iter() {
                sub.gate.forget(topic, partition);
            }
        }
    }

    fn connection(&self) -> Option<&ConnTx> {
        Some(&self.conn)
    }

    fn subscriptions(&self) -> usize {
        self.subscriptions.lock().map(|s| s.len()).unwrap_or(0)
    }
}

impl StompRecipient {
    /// Queue `event`'s MESSAGE for `sub`; false when the connection is gone or slow.
    fn deliver(&self, sub: &Subscription, event: &RoutedEvent, cache: &mut FrameCache) -> bool {
        let frame = self.frame(sub, event, cache);
        self.conn
            .push(frame, Some(event.stamp()), Supersede::of(event, sub.lane))
    }

    /// `event`'s MESSAGE frame for `sub` (encoded once per event for every
    /// subscription with the same cache key).
    fn frame(&self, sub: &Subscription, event: &RoutedEvent, cache: &mut FrameCache) -> WsFrame {
        {
            match cache.frame(&sub.cache_key) {
                Some(frame) => frame,
                None => {
                    let body = cache.body_or_insert_with(sub.destination.body_key(), || {
                        sub.destination.body(event)
                    });
                    let position = event.position();
                    let mut headers = vec![
                        ("subscription", sub.id.as_str()),
                        ("message-id", position.as_str()),
                        ("destination", sub.destination.as_str()),
                        ("content-type", "application/json"),
                    ];
                    if sub.ack != AckMode::Auto {
                        headers.push(("ack", position.as_str()));
                    }
                    let text = codec::encode_message_text(&headers, body.as_str(), self.version);
                    cache.frame_or_insert_with(&sub.cache_key, || text)
                }
            }
        }
    }

    /// Replay what `request` asks for on subscription `sub_id`, then open its gate.
    async fn resume(
        self: Arc<Self>,
        shared: Arc<Shared>,
        deps: Arc<StompDeps>,
        sub_id: String,
        request: ResumeRequest,
        frontier: HashMap<TopicPartition, i64>,
        done: CancellationToken,
    ) {
        let Some(gate) = self.subscription_gate(&sub_id) else {
            return;
        };
        let catch_up = resume::CatchUp {
            router: &shared.router,
            config: &deps.resume,
            account: &self.identity.account_id,
            gate: &gate,
            conn: &self.conn,
            metrics: &shared.metrics,
            protocol: PROTOCOL,
            cancel: &done,
        };
        let replayer = StompReplay {
            recipient: &self,
            sub_id: &sub_id,
        };
        catch_up.run(request, frontier, &replayer).await;
    }

    fn subscription_gate(&self, id: &str) -> Option<Arc<ResumeGate>> {
        let subs = self.subscriptions.lock().ok()?;
        subs.iter().find(|s| s.id == id).map(|s| s.gate.clone())
    }
}

/// A STOMP subscription's replay: its MESSAGE frames and gap messages,
/// made under the subscription lock, which is never held while writing.
struct StompReplay<'a> {
    recipient: &'a StompRecipient,
    sub_id: &'a str,
}

impl StompReplay<'_> {
    fn with_sub<R>(&self, f: impl FnOnce(&Subscription) -> R) -> Option<R> {
        let subs = self.recipient.subscriptions.lock().ok()?;
        subs.iter().find(|s| s.id == self.sub_id).map(f)
    }
}

impl resume::Replayer for StompReplay<'_> {
    fn frame(&self, event: &RoutedEvent) -> Option<WsFrame> {
        let identity = &self.recipient.identity;
        if *event.envelope.account_id != *identity.account_id
            || !identity.entitled(event.envelope.audience.as_ref())
        {
            return None;
        }
        self.with_sub(|sub| {
            sub.destination
                .accepts(&event.envelope.event_type)
                .then(|| self.recipient.frame(sub, event, &mut FrameCache::default()))
        })
        .flatten()
    }

    fn gap_frames(&self, gaps: &[resume::Gap]) -> Vec<WsFrame> {
        let version = self.recipient.version;
        self.with_sub(|sub| {
            gaps.iter()
                .map(|gap| {
                    let stream = format!("{}:{}:{}", gap.topic, gap.partition, gap.from);
                    let body = serde_json::json!({
                        "type": "herald.gap",
                        "stream": format!("{}:{}", gap.topic, gap.partition),
                        "from": gap.from,
                        "reason": gap.reason,
                    })
                    .to_string();
                    let message_id = format!("gap:{stream}");
                    let headers = [
                        ("subscription", sub.id.as_str()),
                        ("message-id", message_id.as_str()),
                        ("destination", sub.destination.as_str()),
                        ("content-type", "application/json"),
                        ("herald-gap", stream.as_str()),
                    ];
                    WsFrame::text(&codec::encode_message_text(&headers, &body, version))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn verdict(&self, _: &resume::Replay) -> Option<WsFrame> {
        None
    }
}

/// What a client cut off as slow is sent last: the same bytes for every
/// connection, so encoded once per process rather than held by each.
static SLOW_FRAME: std::sync::LazyLock<WsFrame> = std::sync::LazyLock::new(|| {
    error_frame(
        "slow consumer disconnected",
        None,
        "the client did not read its frames fast enough",
        None,
    )
});

/// Serve one upgraded WebSocket as a STOMP session. `upgrade_auth` is the
/// upgrade request's `Authorization` header; `max_version` is bounded by the
/// negotiated subprotocol.
/// A plain function returning the session's future, as in
/// `transport::session::start`.
pub fn serve(
    socket: WsSocket,
    shared: Arc<Shared>,
    deps: Arc<StompDeps>,
    upgrade_auth: Option<String>,
    max_version: Version,
) -> impl Future<Output = ()> + Send + 'static {
    let drain = |id| shared.drain.notice(id);
    let sub_rate = shared.limits.config().subscribes_per_second;
    crate::transport::session::start(
        socket,
        &shared.outbound,
        PROTOCOL,
        &shared.metrics,
        Some(SLOW_FRAME.clone()),
        drain,
        |conn| Session {
            conn,
            read_timeout: deps.config.connect_timeout,
            shared: shared.clone(),
            deps: deps.clone(),
            upgrade_auth,
            max_version,
            version: None,
            recipient: None,
            revoked: None,
            account_slot: None,
            sub_rate: crate::limits::CommandRate::new(sub_rate),
            decoder: codec::Decoder::default(),
        },
    )
    .run()
}

struct Session {
    conn: Conn,
    shared: Arc<Shared>,
    deps: Arc<StompDeps>,
    upgrade_auth: Option<String>,
    max_version: Version,
    /// Negotiated version, once CONNECTED was sent.
    version: Option<Version>,
    recipient: Option<Arc<StompRecipient>>,
    read_timeout: Duration,
    /// Cancelled when the opaque token in use is revoked or changed (none
    /// for a JWT).
    revoked: Option<CancellationToken>,
    /// This connection's place in its account's connection limit.
    account_slot: Option<AccountSlot>,
    /// SUBSCRIBE and UNSUBSCRIBE frames allowed per second.
    sub_rate: crate::limits::CommandRate,
    /// Frames may continue in the next WebSocket message.
    decoder: codec::Decoder,
}

impl crate::transport::session::Protocol for Session {
    async fn run(&mut self, stream: &mut WsStream) {
        self.read_loop(stream).await;
    }

    fn release(&mut self) {
        if let Some(recipient) = self.recipient.take() {
            if let Some(key) = &recipient.identity.token_key {
                self.shared.auth.identities.unwatch(key, self.conn.id);
            }
            self.shared
                .router
                .remove(&recipient.identity.account_id, self.conn.id);
            let n = recipient.subscriptions.lock().map(|s| s.len()).unwrap_or(0);
            self.shared
                .metrics
                .subscriptions
                .with_label_values(&[PROTOCOL])
                .sub(n as i64);
        }
    }
}

impl Session {
    async fn read_loop(&mut self, stream: &mut WsStream) {
        loop {
            let expires_at = self.recipient.as_ref().and_then(|r| r.identity.expires_at);
            let next = tokio::select! {
                biased;
                interrupt = self.conn.interrupted(self.revoked.as_ref(), expires_at, Some(self.read_timeout)) => {
                    match interrupt {
                        // The read timeout: handled below, beside the reads.
                        Interrupt::Idle => Err(()),
                        Interrupt::Gone => return,
                        Interrupt::Drain => {
                            cold(self.fail(1012, "server restart", "server restart: reconnect", "the gateway is shutting down; reconnect", None)).await;
                            return;
                        }
                        Interrupt::Revoked => {
                            cold(self.fail(1008, "unauthorized", "401 Unauthorized: credential revoked", "", None)).await;
                            return;
                        }
                        Interrupt::Expired => {
                            cold(self.fail(1008, "unauthorized", "401 Unauthorized: token expired", "", None)).await;
                            return;
                        }
                    }
                }
                r = stream.next() => Ok(r),
            };
            let msg = match next {
                Err(_) if self.version.is_none() => {
                    cold(self.protocol_error(
                        "CONNECT timeout",
                        "no CONNECT frame arrived in time",
                        None,
                    ))
                    .await;
                    return;
                }
                Err(_) => {
                    cold(self.protocol_error(
                        "heart-beat timeout",
                        "the client sent nothing within the heart-beat window",
                        None,
                    ))
                    .await;
                    return;
                }
                Ok(Some(Err(e))) if crate::transport::ws::is_oversize(&e) => {
                    self.shared
                        .metrics
                        .protocol_errors
                        .with_label_values(&[PROTOCOL])
                        .inc();
                    let max = self.deps.config.limits.max_frame_bytes;
                    cold(self.fail(
                        1009,
                        "frame too large",
                        "frame too large",
                        &format!("a WebSocket message over the {max}-byte frame limit"),
                        None,
                    ))
                    .await;
                    return;
                }
                Ok(None) | Ok(Some(Err(_))) => return,
                Ok(Some(Ok(m))) => m,
            };
            let bytes: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let version = self.version.unwrap_or(Version::V1_2);
            let items = match self.decoder.feed(bytes, version, &self.deps.config.limits) {
                Ok(items) => items,
                Err(e) => {
                    cold(self.protocol_error(
                        &e.to_string(),
                        "the frame could not be parsed",
                        None,
                    ))
                    .await;
                    return;
                }
            };
            for item in items {
                if let Decoded::Frame(frame) = item
                    && cold(self.handle(frame)).await.is_break()
                {
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> ControlFlow<()> {
        let receipt = frame.header("receipt").map(str::to_owned);
        if self.version.is_some()
            && matches!(frame.command, Command::Subscribe | Command::Unsubscribe)
        {
            // Subscribing verifies positions, takes locks and may start a
            // replay: past the rate, this client is read no faster.
            self.sub_rate.wait().await;
        }
        let result = match (self.version.is_some(), frame.command) {
            (false, Command::Connect | Command::Stomp) => return self.connect(&frame).await,
            (false, Command::Disconnect) => return ControlFlow::Break(()),
            (false, other) => Err(format!("expected CONNECT, got {}", other.as_str())),
            (true, Command::Connect | Command::Stomp) => Err("already connected".to_owned()),
            (true, Command::Subscribe) => self.subscribe(&frame),
            (true, Command::Unsubscribe) => self.unsubscribe(&frame),
            (
                true,
                Command::Ack | Command::Nack | Command::Begin | Command::Commit | Command::Abort,
            ) => Ok(()),
            (true, Command::Send) => {
                Err("SEND is not supported: Herald destinations are read-only".to_owned())
            }
            (true, Command::Disconnect) => {
                if let Some(r) = &receipt {
                    self.conn
                        .emit(Outbound::Frame {
                            frame: receipt_frame(r, self.version),
                            stamp: None,
                        })
                        .await;
                }
                self.conn
                    .emit(Outbound::Close {
                        code: 1000,
                        reason: "disconnect",
                    })
                    .await;
                return ControlFlow::Break(());
            }
            (true, other) => Err(format!("unexpected {} frame from a client", other.as_str())),
        };
        match result {
            Ok(()) => {
                if let Some(r) = &receipt {
                    self.conn
                        .emit(Outbound::Frame {
                            frame: receipt_frame(r, self.version),
                            stamp: None,
                        })
                        .await;
                }
                ControlFlow::Continue(())
            }
            Err(message) => {
                self.protocol_error(&message, "", receipt.as_deref()).await;
                ControlFlow::Break(())
            }
        }
    }

    async fn connect(&mut self, frame: &Frame) -> ControlFlow<()> {
        let Some(version) = codec::negotiate_version(frame.header("accept-version"))
            .map(|v| v.min(self.max_version))
        else {
            let text = error_frame_with(
                "Supported protocol versions are 1.0 1.1 1.2",
                &[("version", "1.2,1.1,1.0")],
                "",
                None,
            );
            self.conn
                .close_after(text, 1002, "unsupported version")
                .await;
            self.shared
                .metrics
                .protocol_errors
                .with_label_values(&[PROTOCOL])
                .inc();
            return ControlFlow::Break(());
        };
        let credential = self
            .upgrade_auth
            .clone()
            .or_else(|| frame.header("Authorization").map(str::to_owned))
            .or_else(|| frame.header("authorization").map(str::to_owned))
            .or_else(|| frame.header("passcode").map(str::to_owned))
            .unwrap_or_default();
        let identity = match self.shared.auth.resolve_fresh(&credential).await {
            Ok(identity) => identity,
            Err(e) => {
                self.shared
                    .metrics
                    .auth_failures
                    .with_label_values(&[PROTOCOL, e.as_label()])
                    .inc();
                tracing::debug!(conn = self.conn.id, reason = %e, "STOMP authentication refused");
                self.fail(
                    1008,
                    "unauthorized",
                    &format!("401 Unauthorized: {e}"),
                    "",
                    frame.header("receipt"),
                )
                .await;
                return ControlFlow::Break(());
            }
        };
        if let Some(redirect) = self.shared.redirect(&identity.account_id, PROTOCOL) {
            // Another partition group reads this account's partitions.
            let text = error_frame_with(
                "wrong group",
                &[
                    ("herald-redirect", redirect.url),
                    ("herald-group", &redirect.group.to_string()),
                ],
                &format!(
                    "this account is served by partition group {}: reconnect to {}",
                    redirect.group, redirect.url
                ),
                None,
            );
            self.conn
                .close_after(text, REDIRECT_CLOSE_CODE, "redirect")
                .await;
            return ControlFlow::Break(());
        }
        match self.shared.limits.admit_account(&identity.account_id) {
            Some(slot) => self.account_slot = Some(slot),
            None => {
                self.fail(
                    1008,
                    "limit",
                    "too many connections for this account",
                    "",
                    frame.header("receipt"),
                )
                .await;
                return ControlFlow::Break(());
            }
        }
        let (cx, cy) = match frame
            .header("heart-beat")
            .map(codec::parse_heart_beat)
            .transpose()
        {
            Ok(hb) => hb.unwrap_or((0, 0)),
            Err(e) => {
                self.protocol_error(&e.to_string(), "", None).await;
                return ControlFlow::Break(());
            }
        };
        let (sx, sy) = (
            self.deps.config.heartbeat_send_ms,
            self.deps.config.heartbeat_recv_ms,
        );
        let session_id = format!(
            "herald-{:x}-{}",
            self.conn.id,
            uuid::Uuid::new_v4().simple()
        );
        let heart_beat = format!("{sx},{sy}");
        let server = concat!("herald/", env!("CARGO_PKG_VERSION"));
        let connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("heart-beat", heart_beat)
            .with_header("server", server)
            .with_header("session", session_id);
        let text = frame_text(&connected, version);
        if !self
            .conn
            .emit(Outbound::Frame {
                frame: text,
                stamp: None,
            })
            .await
        {
            return ControlFlow::Break(());
        }
        if version != Version::V1_0 && sx > 0 && cy > 0 {
            let every = Duration::from_millis(sx.max(cy));
            self.conn
                .emit(Outbound::HeartBeat {
                    every,
                    kind: HeartBeatKind::WhenIdle(WsFrame::text("\n")),
                })
                .await;
        }
        self.read_timeout = if version != Version::V1_0 && cx > 0 && sy > 0 {
            // Tolerate about twice the agreed interval, as the spec suggests.
            Duration::from_millis(cx.max(sy).saturating_mul(2))
        } else {
            self.deps.config.idle_timeout
        };
        self.version = Some(version);
        if let Some(key) = &identity.token_key {
            self.revoked = Some(self.shared.auth.identities.watch(key, self.conn.id));
        }
        let recipient = Arc::new(StompRecipient {
            identity,
            version,
            subscriptions: Mutex::new(Vec::new()),
            conn: self.conn.tx.clone(),
        });
        self.shared.router.insert(self.conn.id, recipient.clone());
        self.recipient = Some(recipient);
        ControlFlow::Continue(())
    }

    fn subscribe(&mut self, frame: &Frame) -> Result<(), String> {
        let resume = frame
            .header("x-stream-offset")
            .map(ResumeRequest::parse_stomp)
            .transpose()
            .map_err(|e| format!("bad x-stream-offset: {e}"))?;
        let (Some(recipient), Some(version)) = (&self.recipient, self.version) else {
            return Err("not connected".into());
        };
        let destination_name = frame
            .header("destination")
            .ok_or("SUBSCRIBE requires a destination header")?;
        let id = match (frame.header("id"), version) {
            (Some(id), _) => id.to_owned(),
            (None, Version::V1_0) => destination_name.to_owned(),
            (None, _) => return Err("SUBSCRIBE requires an id header".into()),
        };
        let destination = Destination::parse(destination_name)
            .ok_or_else(|| format!("Unknown destination {destination_name}"))?;
        let ack = AckMode::parse(frame.header("ack"))
            .ok_or("ack must be auto, client or client-individual")?;
        let gate = Arc::new(if resume.is_some() {
            ResumeGate::holding(
                &resume
                    .as_ref()
                    .map(|r| r.positions.clone())
                    .unwrap_or_default(),
                self.shared.outbound.frames,
            )
        } else {
            ResumeGate::open()
        });
        let recipient = recipient.clone();
        let add = || -> Result<(), String> {
            let mut subs = recipient
                .subscriptions
                .lock()
                .map_err(|_| "internal error")?;
            if subs.iter().any(|s| s.id == id) {
                return Err(format!("subscription id {id} is already in use"));
            }
            if subs.len() >= self.deps.config.max_subscriptions {
                return Err(format!(
                    "too many subscriptions (limit {})",
                    self.deps.config.max_subscriptions
                ));
            }
            let cache_key = format!(
                "stomp:{}:{}:{:?}:{id}",
                version.as_str(),
                destination.as_str(),
                ack
            );
            // Most clients hold one subscription: grow one at a time rather
            // than by the default doubling from four.
            subs.reserve_exact(1);
            subs.push(Subscription {
                id: id.clone(),
                destination,
                ack,
                cache_key,
                gate: gate.clone(),
                lane: connection::next_conn_id(),
            });
            Ok(())
        };
        match resume {
            None => add()?,
            Some(request) => {
                // Added under the router's exclusive lock, so the frontier
                // splits the stream exactly between replay and live.
                let (added, frontier) = self.shared.router.exclusive(add);
                added?;
                tokio::spawn(recipient.clone().resume(
                    self.shared.clone(),
                    self.deps.clone(),
                    id.clone(),
                    request,
                    frontier,
                    self.conn.done.clone(),
                ));
            }
        }
        self.shared
            .metrics
            .subscriptions
            .with_label_values(&[PROTOCOL])
            .inc();
        Ok(())
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<(), String> {
        let Some(recipient) = &self.recipient else {
            return Err("not connected".into());
        };
        let id = frame
            .header("id")
            .or_else(|| {
                frame
                    .header("destination")
                    .filter(|_| self.version == Some(Version::V1_0))
            })
            .ok_or("UNSUBSCRIBE requires an id header")?;
        let mut subs = recipient
            .subscriptions
            .lock()
            .map_err(|_| "internal error")?;
        let before = subs.len();
        subs.retain(|s| s.id != id);
        let removed = before - subs.len();
        self.shared
            .metrics
            .subscriptions
            .with_label_values(&[PROTOCOL])
            .sub(removed as i64);
        Ok(())
    }

    async fn protocol_error(&self, message: &str, detail: &str, receipt: Option<&str>) {
        self.shared
            .metrics
            .protocol_errors
            .with_label_values(&[PROTOCOL])
            .inc();
        tracing::debug!(conn = self.conn.id, message, "STOMP protocol error");
        self.fail(1002, "protocol error", message, detail, receipt)
            .await;
    }

    /// Send an ERROR frame and close the socket.
    async fn fail(
        &self,
        code: u16,
        reason: &'static str,
        message: &str,
        detail: &str,
        receipt: Option<&str>,
    ) {
        let text = error_frame(message, receipt, detail, self.version);
        self.conn.close_after(text, code, reason).await;
    }
}

fn frame_text(frame: &Frame, version: Version) -> WsFrame {
    let bytes = codec::encode(frame, version);
    WsFrame::text(&String::from_utf8_lossy(&bytes))
}

fn receipt_frame(receipt: &str, version: Option<Version>) -> WsFrame {
    frame_text(
        &Frame::new(Command::Receipt).with_header("receipt-id", receipt),
        version.unwrap_or(Version::V1_2),
    )
}

/// An ERROR frame. Before CONNECTED was sent the client does not unescape
/// headers yet, so the frame is then written unescaped (1.0 rules) with line
/// breaks flattened.
fn error_frame(
    message: &str,
    receipt: Option<&str>,
    detail: &str,
    version: Option<Version>,
) -> WsFrame {
    let mut extra = Vec::new();
    if let Some(r) = receipt {
        extra.push(("receipt-id", r));
    }
    error_frame_with(message, &extra, detail, version)
}

fn error_frame_with(
    message: &str,
    extra: &[(&str, &str)],
    detail: &str,
    version: Option<Version>,
) -> WsFrame {
    let flat = |s: &str| s.replace(['\r', '\n'], " ");
    let mut frame = Frame::new(Command::Error).with_header("message", flat(message));
    for (k, v) in extra {
        frame = frame.with_header(*k, flat(v));
    }
    let body = if detail.is_empty() { message } else { detail };
    frame = frame
        .with_header("content-type", "text/plain")
        .with_header("content-length", body.len().to_string())
        .with_body(body.as_bytes().to_vec());
    frame_text(&frame, version.unwrap_or(Version::V1_0))
}
