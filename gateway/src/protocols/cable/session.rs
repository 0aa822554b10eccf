//! One ActionCable connection (Rails semantics): `welcome` at once, `ping`
//! every 3 s, subscribe/unsubscribe/message commands processed in order
//! (including those sent before `welcome` arrived), `disconnect` frames with
//! an explicit `reconnect`, malformed input logged and ignored as Rails does.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

use super::{
    channel::{CableRecipient, ChannelKind},
    protocol::{self, Command, DisconnectReason},
};
use crate::{
    core::{
        clock::now_ms,
        identity::{AuthError, Identity, PrincipalKind},
        position::{ResumeRequest, TopicPartition},
    },
    kafka::resume::{self, ResumeConfig},
    limits::{AccountSlot, CommandRate},
    protocols::shared::Shared,
    routing::{gate::ResumeGate, groups::REDIRECT_CLOSE_CODE, presence::PresenceTable},
    transport::{
        connection,
        session::{Conn, Interrupt, cold},
        ws::{Message, WsFrame, WsSocket, WsStream},
    },
};

const PROTOCOL: &str = "actioncable";

/// ActionCable endpoint settings.
#[derive(Debug, Clone)]
pub struct CableConfig {
    /// Interval of `ping` frames (Rails: 3 s).
    pub ping_interval: Duration,
    /// Pulse legacy mode: `/stream?account_id=` without a credential.
    pub stream_legacy_account_auth: bool,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest client message, bytes.
    pub max_message_bytes: usize,
    /// Topic that presence heartbeats are written to.
    pub presence_topic: String,
}

/// What ActionCable sessions need besides the [`Shared`] part.
pub struct CableDeps {
    /// ActionCable settings.
    pub config: CableConfig,
    /// Resume limits and the pod-wide Kafka read-back bounds (shared with
    /// STOMP).
    pub resume: Arc<ResumeConfig>,
    /// Who is online, per account (RoomChannel `update_presence`).
    pub presence: Arc<PresenceTable>,
    /// Writes presence heartbeats to the presence topic.
    pub producer: FutureProducer,
    /// The connections that get `ping`s (one timer for all of them).
    pub pings: Arc<super::Pings>,
}

impl CableDeps {
    /// Write a presence heartbeat for `identity` to the presence topic, in
    /// the background (a lost heartbeat is repaired by the next one).
    pub fn publish_presence(&self, identity: &Identity, at_ms: i64) {
        let kind = match identity.kind {
            PrincipalKind::User => "user",
            PrincipalKind::Contact => "contact",
        };
        let envelope = serde_json::json!({
            "id": uuid::Uuid::now_v7().to_string(),
            "type": "presence.heartbeat",
            "account_id": &*identity.account_id,
            "occurred_at": time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            "payload": {"kind": kind, "id": &identity.id},
        })
        .to_string();
        let producer = self.producer.clone();
        let topic = self.config.presence_topic.clone();
        let account = identity.account_id.to_string();
        tokio::spawn(async move {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "type",
                    value: Some("presence.heartbeat"),
                })
                .insert(Header {
                    key: "account_id",
                    value: Some(account.as_str()),
                });
            let record = FutureRecord::to(&topic)
                .key(account.as_bytes())
                .payload(&envelope)
                .headers(headers);
            if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "cannot publish presence heartbeat");
            }
        });
    }
}

/// Which endpoint the connection came in on.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `/cable`: RoomChannel; credentials travel in each subscribe identifier.
    Room,
    /// `/stream`: NotificationsChannel; the connection itself authenticates.
    Stream {
        /// The `account_id` query parameter.
        account_id: Option<String>,
        /// `token` query parameter or `Authorization` header.
        credential: Option<String>,
    },
}

/// What a client cut off as slow is sent last: the same bytes for every
/// connection, so encoded once per process.
static SLOW_FRAME: std::sync::LazyLock<WsFrame> =
    std::sync::LazyLock::new(|| WsFrame::text(&protocol::disconnect(DisconnectReason::Remote)));

/// Serve one upgraded WebSocket.
///
/// A plain function returning the session's future (not an `async fn`): the
/// future then holds only the running session, not also this function's
/// arguments (see `transport::session::start`).
pub fn serve(
    socket: WsSocket,
    shared: Arc<Shared>,
    deps: Arc<CableDeps>,
    endpoint: Endpoint,
) -> impl Future<Output = ()> + Send + 'static {
    let ext = socket.protocol == Some(protocol::EXT_PROTOCOL);
    let room = matches!(endpoint, Endpoint::Room);
    // Boxed: only `/stream` has anything in it, and it is read once.
    let endpoint = (!room).then(|| Box::new(endpoint));
    let drain = |id| shared.drain.notice(id);
    let rates = shared.limits.config();
    crate::transport::session::start(
        socket,
        &shared.outbound,
        PROTOCOL,
        &shared.metrics,
        Some(SLOW_FRAME.clone()),
        drain,
        |conn| CableSession {
            conn,
            shared: shared.clone(),
            deps: deps.clone(),
            conn_identity: None,
            room,
            endpoint,
            ext,
            subscriptions: Vec::new(),
            revoked: None,
            account_slots: Vec::new(),
            rate: CommandRate::new(rates.commands_per_second),
            sub_rate: CommandRate::new(rates.subscribes_per_second),
            expires_at: None,
            anonymous_until: Some(tokio::time::Instant::now() + rates.cable_anonymous_timeout),
            redirected: false,
            watched: Vec::new(),
        },
    )
    .run()
}

/// Replay what a resuming subscription missed, then `confirm_history`
/// (or `reject_history` when some stream could not be served), then live.
async fn replay(
    shared: Arc<Shared>,
    deps: Arc<CableDeps>,
    recipient: Arc<CableRecipient>,
    request: ResumeRequest,
    foreign: Vec<String>,
    frontier: HashMap<TopicPartition, i64>,
    done: CancellationToken,
) {
    if !foreign.is_empty() {
        shared
            .metrics
            .resume_gaps
            .with_label_values(&[PROTOCOL, "epoch"])
            .inc();
    }
    let catch_up = resume::CatchUp {
        router: &shared.router,
        config: &deps.resume,
        account: &recipient.identity.account_id,
        gate: &recipient.gate,
        conn: &recipient.conn,
        metrics: &shared.metrics,
        protocol: PROTOCOL,
        cancel: &done,
    };
    let replayer = CableReplay {
        recipient: &recipient,
        foreign: &foreign,
    };
    catch_up.run(request, frontier, &replayer).await;
}

/// A RoomChannel or NotificationsChannel subscription's replay.
struct CableReplay<'a> {
    recipient: &'a CableRecipient,
    /// Streams of another epoch: the history is incomplete.
    foreign: &'a [String],
}

impl resume::Replayer for CableReplay<'_> {
    fn frame(&self, event: &crate::core::event::RoutedEvent) -> Option<WsFrame> {
        self.recipient.replay_frame(event)
    }

    fn gap_frames(&self, _: &[resume::Gap]) -> Vec<WsFrame> {
        Vec::new()
    }

    fn verdict(&self, replay: &resume::Replay) -> Option<WsFrame> {
        let complete = replay.gaps.is_empty() && self.foreign.is_empty();
        if !complete {
            tracing::info!(gaps = ?replay.gaps, foreign = ?self.foreign, "history could not be served completely");
        }
        Some(WsFrame::text(&protocol::history_result(
            &self.recipient.identifier_json,
            complete,
        )))
    }
}

struct Subscription {
    router_id: u64,
    /// Its identifier is `recipient.identifier_json` (kept once: with a
    /// RoomChannel token in it, the identifier is the largest thing an
    /// idle subscription holds).
    recipient: Arc<CableRecipient>,
}

impl Subscription {
    /// Whether this is the subscription whose identifier, as a JSON string
    /// literal, is `identifier_json`.
    fn is(&self, identifier_json: &str) -> bool {
        self.recipient.identifier_json == identifier_json
    }
}

struct CableSession {
    conn: Conn,
    shared: Arc<Shared>,
    deps: Arc<CableDeps>,
    /// `/stream`: its query and credential, until `open` reads them.
    endpoint: Option<Box<Endpoint>>,
    /// `/stream`: the connection's identity (boxed: RoomChannel
    /// connections have none, and every idle one would carry its space).
    conn_identity: Option<Box<Identity>>,
    room: bool,
    /// Negotiated `actioncable-v1-ext-json` (stream positions, history).
    ext: bool,
    /// Few per connection (`max_subscriptions`), so a vector searched in
    /// order: a one-entry hash map is four buckets of allocation.
    subscriptions: Vec<Subscription>,
    /// Cancelled when an opaque token in use is revoked or changed (made
    /// with the first such token; JWTs are never revoked).
    revoked: Option<CancellationToken>,
    /// This connection's places in its accounts' connection limits.
    account_slots: Vec<AccountSlot>,
    /// `message` commands allowed per second.
    rate: CommandRate,
    /// Subscribe and unsubscribe commands allowed per second.
    sub_rate: CommandRate,
    /// Earliest expiry of a credential in use (unix seconds).
    expires_at: Option<i64>,
    /// Until a subscription is accepted, the socket is anonymous: closed at this instant.
    anonymous_until: Option<tokio::time::Instant>,
    /// Sent to another partition group: nothing more is accepted.
    redirected: bool,
    /// Opaque tokens in use, watched once each: (the token's key,
    /// subscriptions using it, the watch task's stop).
    watched: Vec<(String, usize, CancellationToken)>,
}

impl crate::transport::session::Protocol for CableSession {
    async fn run(&mut self, stream: &mut WsStream) {
        if cold(self.open()).await {
            self.read_loop(stream).await;
        }
    }

    fn release(&mut self) {
        self.deps.pings.unregister(self.conn.id);
        for sub in std::mem::take(&mut self.subscriptions) {
            self.unregister(&sub);
        }
        for (key, _, stop) in std::mem::take(&mut self.watched) {
            stop.cancel();
            self.shared.auth.identities.unwatch(&key, self.conn.id);
        }
        if let Some(key) = self
            .conn_identity
            .as_ref()
            .and_then(|i| i.token_key.as_ref())
        {
            self.shared.auth.identities.unwatch(key, self.conn.id);
        }
    }
}

impl CableSession {
    /// Authenticate (for `/stream`), then `welcome` and pings. False when the
    /// connection was refused.
    async fn open(&mut self) -> bool {
        if let Some(Endpoint::Stream {
            account_id,
            credential,
        }) = self.endpoint.take().map(|e| *e)
        {
            match self
                .authenticate_stream(account_id.as_deref(), credential.as_deref())
                .await
            {
                Ok(identity) => {
                    if let Some(redirect) = self.shared.redirect(&identity.account_id, PROTOCOL) {
                        self.redirect(redirect.url).await;
                        return false;
                    }
                    let Some(slot) = self.shared.limits.admit_account(&identity.account_id) else {
                        self.disconnect(DisconnectReason::InvalidRequest).await;
                        return false;
                    };
                    self.account_slots.push(slot);
                    self.track_credential(&identity);
                    self.conn_identity = Some(Box::new(identity));
                }
                Err(e) => {
                    self.shared
                        .metrics
                        .auth_failures
                        .with_label_values(&[PROTOCOL, e.as_label()])
                        .inc();
                    tracing::debug!(conn = self.conn.id, reason = %e, "ActionCable connection refused");
                    self.disconnect(DisconnectReason::Unauthorized).await;
                    return false;
                }
            }
        }
        let welcome = if self.ext {
            protocol::welcome_ext(&uuid::Uuid::new_v4().simple().to_string())
        } else {
            protocol::welcome().to_owned()
        };
        if !self.conn.emit_text(&welcome).await {
            return false;
        }
        self.deps
            .pings
            .register(self.conn.id, self.conn.tx.beacon());
        true
    }

    async fn authenticate_stream(
        &self,
        account_id: Option<&str>,
        credential: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let account_id = account_id
            .filter(|a| !a.is_empty())
            .ok_or(AuthError::Claims("account_id is required".into()))?;
        match credential.filter(|c| !c.trim().is_empty()) {
            Some(c) => {
                let identity = self.shared.auth.resolve_fresh(c).await?;
                if *identity.account_id != *account_id {
                    return Err(AuthError::Claims(
                        "credential belongs to another account".into(),
                    ));
                }
                Ok(identity)
            }
            None if self.deps.config.stream_legacy_account_auth => Ok(Identity {
                account_id: account_id.into(),
                kind: PrincipalKind::User,
                id: format!("legacy:{account_id}"),
                role: "agent".into(),
                expires_at: None,
                token_key: None,
                conversations: None,
            }),
            None => Err(AuthError::Missing),
        }
    }

    /// Close the connection when this credential expires or is revoked.
    fn track_credential(&mut self, identity: &Identity) {
        if let Some(exp) = identity.expires_at {
            self.expires_at = Some(self.expires_at.map_or(exp, |e| e.min(exp)));
        }
        if let Some(key) = &identity.token_key {
            // One watch per token, however many subscriptions use it: a
            // subscribe/unsubscribe loop must not pile them up.
            if let Some((_, uses, _)) = self.watched.iter_mut().find(|(k, _, _)| k == key) {
                *uses += 1;
                return;
            }
            let watch = self.shared.auth.identities.watch(key, self.conn.id);
            let revoked = self
                .revoked
                .get_or_insert_with(CancellationToken::new)
                .clone();
            let done = self.conn.done.clone();
            let stop = CancellationToken::new();
            let stopped = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = watch.cancelled() => revoked.cancel(),
                    _ = done.cancelled() => {}
                    _ = stopped.cancelled() => {}
                }
            });
            self.watched.push((key.clone(), 1, stop));
        }
    }

    /// A subscription using `identity` went away.
    fn release_credential(&mut self, identity: &Identity) {
        let Some(key) = &identity.token_key else {
            return;
        };
        if let Some(i) = self.watched.iter().position(|(k, _, _)| k == key) {
            let (_, uses, stop) = &mut self.watched[i];
            *uses = uses.saturating_sub(1);
            if *uses == 0 {
                stop.cancel();
                self.watched.swap_remove(i);
                self.shared.auth.identities.unwatch(key, self.conn.id);
            }
        }
    }

    async fn read_loop(&mut self, stream: &mut WsStream) {
        loop {
            // Until a subscription is accepted, the anonymous deadline is
            // the session's read timeout: one timer with the credential's
            // expiry rather than a second one in every idle task.
            let anonymous = self
                .anonymous_until
                .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
            let msg = tokio::select! {
                biased;
                interrupt = self.conn.interrupted(self.revoked.as_ref(), self.expires_at, anonymous) => {
                    match interrupt {
                        Interrupt::Gone => {}
                        Interrupt::Idle => {
                            // Nothing accepted in time: whatever it is, it
                            // costs a socket and earns nothing.
                            self.shared.limits.rejected("cable_anonymous");
                            cold(self.disconnect(DisconnectReason::Unauthorized)).await;
                        }
                        Interrupt::Drain => cold(self.disconnect(DisconnectReason::ServerRestart)).await,
                        Interrupt::Revoked | Interrupt::Expired => {
                            cold(self.disconnect(DisconnectReason::Unauthorized)).await;
                        }
                    }
                    return;
                }
                m = stream.next() => m,
            };
            let text = match msg {
                Some(Err(e)) if crate::transport::ws::is_oversize(&e) => {
                    tracing::debug!(
                        conn = self.conn.id,
                        "ActionCable message over the size limit"
                    );
                    cold(self.disconnect(DisconnectReason::InvalidRequest)).await;
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            };
            if text.len() > self.deps.config.max_message_bytes {
                tracing::debug!(
                    conn = self.conn.id,
                    "ActionCable message over the size limit"
                );
                cold(self.disconnect(DisconnectReason::InvalidRequest)).await;
                return;
            }
            cold(self.handle(&text)).await;
        }
    }

    async fn handle(&mut self, text: &str) {
        let command = match protocol::parse_command(text) {
            Ok(c) => c,
            Err(e) => {
                // Rails logs these and keeps the connection.
                self.shared
                    .metrics
                    .protocol_errors
                    .with_label_values(&[PROTOCOL])
                    .inc();
                tracing::debug!(conn = self.conn.id, error = %e, "ignoring ActionCable frame");
                return;
            }
        };
        if matches!(
            command,
            Command::Subscribe { .. } | Command::Unsubscribe { .. }
        ) {
            // Subscribing verifies tokens, takes locks and may start a
            // replay: past the rate, this client is read no faster.
            self.sub_rate.wait().await;
        }
        match command {
            Command::Subscribe {
                identifier,
                history,
            } => self.subscribe(identifier, history).await,
            Command::History { identifier, .. } => {
                // History is honoured inside `subscribe` (what clients send
                // after a reconnect); sessions are not restored, so a bare
                // history request cannot be served without duplicates.
                let identifier_json = protocol::json_string(&identifier);
                if self.subscription(&identifier_json).is_some() {
                    self.conn
                        .emit_text(&protocol::history_result(&identifier_json, false))
                        .await;
                }
            }
            Command::Pong => {}
            Command::Unsubscribe { identifier } => {
                let identifier_json = protocol::json_string(&identifier);
                if let Some(i) = self
                    .subscriptions
                    .iter()
                    .position(|s| s.is(&identifier_json))
                {
                    let sub = self.subscriptions.swap_remove(i);
                    self.unregister(&sub);
                    if self.room {
                        let identity = sub.recipient.identity.clone();
                        self.release_credential(&identity);
                    }
                } else {
                    tracing::debug!(conn = self.conn.id, "unsubscribe from unknown identifier");
                }
            }
            Command::Message { identifier, data } => {
                if self.rate.allow() {
                    self.message(&identifier, &data).await
                } else {
                    // Over the rate: dropped (Rails has no throttle reply).
                    self.shared.limits.rejected("commands_rate");
                }
            }
        }
    }

    async fn subscribe(&mut self, identifier: String, history: Option<serde_json::Value>) {
        if self.redirected {
            return;
        }
        let identifier_json = protocol::json_string(&identifier);
        if self.subscription(&identifier_json).is_some() {
            tracing::debug!(conn = self.conn.id, "duplicate subscribe ignored");
            return;
        }
        let decision = self.admit(&identifier).await;
        let (channel, identity) = match decision {
            Ok(ok) => ok,
            Err(reason) => {
                tracing::debug!(conn = self.conn.id, reason, "subscription rejected");
                self.conn
                    .emit_text(&protocol::reject(&identifier_json))
                    .await;
                return;
            }
        };
        if let Some(redirect) = self.shared.redirect(&identity.account_id, PROTOCOL) {
            // RoomChannel: the token names the account only now. Another
            // partition group reads its partitions: send the client there.
            self.redirect(redirect.url).await;
            return;
        }
        if self.subscriptions.len() >= self.deps.config.max_subscriptions {
            tracing::debug!(conn = self.conn.id, "subscription limit reached");
            self.conn
                .emit_text(&protocol::reject(&identifier_json))
                .await;
            return;
        }
        if self.room {
            if !self
                .account_slots
                .iter()
                .any(|slot| slot.account() == &*identity.account_id)
            {
                let Some(slot) = self.shared.limits.admit_account(&identity.account_id) else {
                    self.conn
                        .emit_text(&protocol::reject(&identifier_json))
                        .await;
                    return;
                };
                if self.account_slots.is_empty() {
                    self.account_slots.reserve_exact(1);
                }
                self.account_slots.push(slot);
            }
            self.track_credential(&identity);
        }
        let shared_key =
            (channel == ChannelKind::Notifications).then(|| format!("cable:{identifier}"));
        let ext_epochs = self.ext.then(|| self.shared.router.epochs().clone());
        let shared_key = shared_key.map(|k| if self.ext { format!("{k}:ext") } else { k });
        let resume = history
            .filter(|_| self.ext)
            .map(|h| protocol::parse_history(&h, self.shared.router.epochs()));
        let recipient = Arc::new(CableRecipient {
            identity,
            channel,
            identifier_json,
            shared_key,
            conn: self.conn.tx.clone(),
            ext_epochs,
            lane: connection::next_conn_id(),
            gate: match &resume {
                Some((request, _)) => {
                    ResumeGate::holding(&request.positions, self.shared.outbound.frames)
                }
                None => ResumeGate::open(),
            },
        });
        // Confirm before registering so no broadcast can precede the confirmation.
        self.conn
            .emit_text(&protocol::confirm(&recipient.identifier_json))
            .await;
        let router_id = connection::next_conn_id();
        match resume {
            None => self.shared.router.insert(router_id, recipient.clone()),
            Some((request, foreign)) => {
                let frontier = self
                    .shared
                    .router
                    .insert_resuming(router_id, recipient.clone());
                tokio::spawn(replay(
                    self.shared.clone(),
                    self.deps.clone(),
                    recipient.clone(),
                    request,
                    foreign,
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
        // Most connections hold one: room for exactly that, not four.
        if self.subscriptions.is_empty() {
            self.subscriptions.reserve_exact(1);
        }
        self.subscriptions.push(Subscription {
            router_id,
            recipient,
        });
        self.anonymous_until = None;
    }

    /// Decide a subscription: its channel and identity, or why it is rejected.
    async fn admit(&self, identifier: &str) -> Result<(ChannelKind, Identity), &'static str> {
        let params =
            protocol::parse_identifier(identifier).ok_or("identifier is not a JSON object")?;
        let channel = params
            .get("channel")
            .and_then(|c| c.as_str())
            .unwrap_or_default();
        match (self.room, channel) {
            (true, "RoomChannel") => {
                let token = params
                    .get("pubsub_token")
                    .and_then(|t| t.as_str())
                    .ok_or("no pubsub_token")?;
                let identity = self.shared.auth.resolve_fresh(token).await.map_err(|e| {
                    self.shared
                        .metrics
                        .auth_failures
                        .with_label_values(&[PROTOCOL, e.as_label()])
                        .inc();
                    "credential refused"
                })?;
                let as_id = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                if let Some(account) = params.get("account_id").filter(|v| !v.is_null())
                    && as_id(account).as_deref() != Some(&*identity.account_id)
                {
                    return Err("account_id does not match the token");
                }
                match (
                    identity.kind,
                    params.get("user_id").filter(|v| !v.is_null()),
                ) {
                    (PrincipalKind::User, Some(user))
                        if as_id(user).as_deref() != Some(identity.id.as_str()) =>
                    {
                        Err("user_id does not match the token")
                    }
                    (PrincipalKind::Contact, Some(_)) => Err("contact tokens carry no user_id"),
                    _ => Ok((ChannelKind::Room, identity)),
                }
            }
            (false, "NotificationsChannel") => {
                let identity = self
                    .conn_identity
                    .as_deref()
                    .cloned()
                    .ok_or("connection not authenticated")?;
                Ok((ChannelKind::Notifications, identity))
            }
            _ => Err("unknown channel for this endpoint"),
        }
    }

    /// The subscription with this identifier (as a JSON string literal).
    fn subscription(&self, identifier_json: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.is(identifier_json))
    }

    async fn message(&mut self, identifier: &str, data: &str) {
        let Some(sub) = self.subscription(&protocol::json_string(identifier)) else {
            tracing::debug!(
                conn = self.conn.id,
                "message for unknown identifier ignored"
            );
            return;
        };
        let action = protocol::parse_action(data);
        match (sub.recipient.channel, action.as_deref()) {
            (ChannelKind::Room, Some("update_presence")) => {
                let identity = sub.recipient.identity.clone();
                let identifier_json = sub.recipient.identifier_json.clone();
                self.update_presence(&identity, &identifier_json).await;
            }
            _ => tracing::debug!(conn = self.conn.id, ?action, "unable to process action"),
        }
    }

    /// Record the heartbeat locally and on the presence topic, then answer
    /// this subscription with the account's presence (as Chatwoot does).
    async fn update_presence(&self, identity: &Identity, identifier_json: &str) {
        let now = now_ms();
        self.deps
            .presence
            .beat(&identity.account_id, identity.kind, &identity.id, now);
        self.deps.publish_presence(identity, now);
        let data = self
            .deps
            .presence
            .snapshot(&identity.account_id, identity.kind == PrincipalKind::User);
        let body = format!(r#"{{"event":"presence.update","data":{data}}}"#);
        self.conn
            .emit_text(&protocol::broadcast(identifier_json, &body))
            .await;
    }

    fn unregister(&self, sub: &Subscription) {
        self.shared
            .router
            .remove(&sub.recipient.identity.account_id, sub.router_id);
        self.shared
            .metrics
            .subscriptions
            .with_label_values(&[PROTOCOL])
            .dec();
    }

    /// `disconnect` with reason `redirect`, `reconnect: true` and the
    /// partition group's `url`, then close.
    async fn redirect(&mut self, url: &'static str) {
        self.redirected = true;
        let last = WsFrame::text(&protocol::disconnect_redirect(url));
        self.conn
            .close_after(last, REDIRECT_CLOSE_CODE, "redirect")
            .await;
    }

    async fn disconnect(&self, reason: DisconnectReason) {
        let code = match reason {
            DisconnectReason::ServerRestart => 1012,
            DisconnectReason::Unauthorized => 1008,
            _ => 1000,
        };
        let last = WsFrame::text(&protocol::disconnect(reason));
        self.conn.close_after(last, code, reason.as_str()).await;
    }
}
