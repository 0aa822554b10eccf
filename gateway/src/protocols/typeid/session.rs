//! One TypeID connection: the join handshake (first frame, within a
//! timeout), pings, pushed notifications, and message requests written to
//! Kafka with a response once acknowledged.

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::transport::inbound::ReadError as WsError;
use futures_util::{Stream, StreamExt};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::protocol::{
    self, JoinRequest, JoinResponse, JoinStatus, MessageRequest, MessageResponse, MessageStatus,
};
use crate::{
    core::{
        event::RoutedEvent,
        identity::{Identity, PrincipalKind},
    },
    limits::{AccountSlot, CommandRate},
    protocols::shared::Shared,
    routing::{
        groups::REDIRECT_CLOSE_CODE,
        router::{FrameCache, Recipient},
    },
    transport::{
        connection::{ConnTx, Outbound, Supersede},
        session::{Conn, Interrupt, cold},
        ws::{Message, WsSocket, WsStream},
    },
};

const PROTOCOL: &str = "typeid";

/// TypeID endpoint settings.
#[derive(Debug, Clone)]
pub struct TypeIdConfig {
    /// Time allowed for the JoinRequest.
    pub join_timeout: Duration,
    /// A joined client silent this long is closed (clients ping every 5 s).
    pub idle_timeout: Duration,
    /// Lowest accepted ClientVersion (inclusive), if any.
    pub min_client_version: Option<String>,
    /// Highest accepted ClientVersion (inclusive), if any.
    pub max_client_version: Option<String>,
    /// Joins allowed per client IP per minute.
    pub joins_per_ip_per_minute: u32,
    /// Message requests allowed per session per second (burst of the same size).
    pub messages_per_second: u32,
    /// Longest message text, bytes.
    pub max_message_chars: usize,
    /// Time Kafka has to acknowledge a message request.
    pub produce_timeout: Duration,
    /// Only accept writes to conversations the credential lists.
    pub require_conversation_grant: bool,
    /// Topic client writes go to.
    pub commands_topic: String,
    /// Largest client WebSocket message, bytes (`--max-frame-bytes`).
    pub max_frame_bytes: usize,
}

/// What TypeID sessions need besides the [`Shared`] part.
pub struct TypeIdDeps {
    /// TypeID settings.
    pub config: TypeIdConfig,
    /// Joins per client IP.
    pub throttle: JoinThrottle,
    /// Writes message requests to the client-commands topic.
    pub producer: FutureProducer,
}

/// Per-IP join limit: governor's keyed limiter (GCRA: `per_minute` joins a
/// minute, in bursts of at most as many).
pub struct JoinThrottle(governor::DefaultKeyedRateLimiter<IpAddr>);

/// IPs remembered before the ones with a full allowance again are dropped.
const THROTTLED_IPS_KEPT: usize = 100_000;

impl JoinThrottle {
    /// `per_minute` joins per IP (at least 1).
    pub fn new(per_minute: u32) -> Self {
        let quota = governor::Quota::per_minute(
            std::num::NonZeroU32::new(per_minute).unwrap_or(std::num::NonZeroU32::MIN),
        );
        JoinThrottle(governor::RateLimiter::keyed(quota))
    }

    /// Count a join from `ip`; false when it is over its rate.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.0.len() > THROTTLED_IPS_KEPT {
            self.0.retain_recent();
        }
        self.0.check_key(&ip).is_ok()
    }
}

/// A joined session as the router sees it: gets the TypeID notifications
/// whose audience names its user.
struct TypeIdRecipient {
    identity: Identity,
    conn: ConnTx,
}

impl Recipient for TypeIdRecipient {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn offer(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) {
        let type_id = match event.envelope.event_type.as_str() {
            "ConversationMessageNotification" => protocol::CONVERSATION_MESSAGE_NOTIFICATION,
            "UserChangeNotification" => protocol::USER_CHANGE_NOTIFICATION,
            _ => return,
        };
        // TypeID audiences are users: only the listed users' sessions.
        let listed = event
            .envelope
            .audience
            .as_ref()
            .is_some_and(|a| a.users.contains(&self.identity.id));
        if !listed || !event.envelope.payload.get().trim_start().starts_with('{') {
            return;
        }
        let frame = cache.frame_or_insert_with(event.envelope.event_type.as_str(), || {
            protocol::frame_raw(type_id, event.envelope.payload.get())
        });
        // One stream per connection: lane 0 is unique in its queue.
        self.conn
            .push(frame, Some(event.stamp()), Supersede::of(event, 0));
    }

    fn connection(&self) -> Option<&ConnTx> {
        Some(&self.conn)
    }
}

/// Serve one upgraded WebSocket from `peer`.
/// A plain function returning the session's future, as in
/// `transport::session::start`.
pub fn serve(
    socket: WsSocket,
    shared: Arc<Shared>,
    deps: Arc<TypeIdDeps>,
    peer: IpAddr,
) -> impl Future<Output = ()> + Send + 'static {
    let drain = |id| shared.drain.notice(id);
    crate::transport::session::start(
        socket,
        &shared.outbound,
        PROTOCOL,
        &shared.metrics,
        None,
        drain,
        |conn| Session {
            conn,
            shared: shared.clone(),
            deps: deps.clone(),
            peer,
            identity: None,
            revoked: None,
            account_slot: None,
            bucket: CommandRate::new(deps.config.messages_per_second),
        },
    )
    .run()
}

struct Session {
    conn: Conn,
    shared: Arc<Shared>,
    deps: Arc<TypeIdDeps>,
    peer: IpAddr,
    identity: Option<Identity>,
    /// Cancelled when the opaque token in use is revoked (none for a JWT).
    revoked: Option<CancellationToken>,
    /// This connection's place in its account's connection limit.
    account_slot: Option<AccountSlot>,
    /// Message requests allowed per second.
    bucket: CommandRate,
}

impl crate::transport::session::Protocol for Session {
    async fn run(&mut self, stream: &mut WsStream) {
        if cold(self.join(stream)).await {
            self.read_loop(stream).await;
        }
    }

    fn release(&mut self) {
        if let Some(identity) = self.identity.take() {
            self.shared
                .router
                .remove(&identity.account_id, self.conn.id);
            self.shared
                .metrics
                .subscriptions
                .with_label_values(&[PROTOCOL])
                .dec();
            if let Some(key) = &identity.token_key {
                self.shared.auth.identities.unwatch(key, self.conn.id);
            }
        }
    }
}

/// What the client sent next.
enum Next {
    Text(String),
    /// A message over the size limit.
    Oversize,
    /// The socket ended.
    Ended,
}

/// The next text frame.
async fn next_text<R>(stream: &mut R) -> Next
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Next::Text(t.to_string()),
            Some(Ok(Message::Binary(b))) => {
                return Next::Text(String::from_utf8_lossy(&b).into_owned());
            }
            Some(Err(e)) if crate::transport::ws::is_oversize(&e) => return Next::Oversize,
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Next::Ended,
            Some(Ok(_)) => continue,
        }
    }
}

impl Session {
    /// The join handshake; true when the client joined.
    async fn join(&mut self, stream: &mut WsStream) -> bool {
        let first = tokio::select! {
            _ = self.shared.drain.begun() => return false,
            r = tokio::time::timeout(self.deps.config.join_timeout, next_text(stream)) => r,
        };
        let next = match first {
            Err(_) => {
                self.respond_join(JoinStatus::Timeout).await;
                return false;
            }
            Ok(next) => next,
        };
        let Some(frame) = self.frame(next, "first frame").await else {
            return false;
        };
        if frame.type_id != protocol::JOIN_REQUEST {
            tracing::info!(
                conn = self.conn.id,
                type_id = frame.type_id,
                "TypeID: first frame is not a JoinRequest; closing"
            );
            self.count_protocol_error();
            self.close_with(1008, "JoinRequest expected").await;
            return false;
        }
        let status = self.admit(frame.body, self.peer).await;
        match status {
            Ok(identity) => {
                if let Some(redirect) = self.shared.redirect(&identity.account_id, PROTOCOL) {
                    // Another partition group serves the account: close
                    // with the redirect code, its URL as the reason.
                    self.close_with(REDIRECT_CLOSE_CODE, redirect.url).await;
                    return false;
                }
                let Some(slot) = self.shared.limits.admit_account(&identity.account_id) else {
                    self.respond_join(JoinStatus::Throttled).await;
                    return false;
                };
                self.account_slot = Some(slot);
                self.respond_join(JoinStatus::Successful).await;
                if let Some(key) = &identity.token_key {
                    self.revoked = Some(self.shared.auth.identities.watch(key, self.conn.id));
                }
                let recipient = Arc::new(TypeIdRecipient {
                    identity: identity.clone(),
                    conn: self.conn.tx.clone(),
                });
                self.shared.router.insert(self.conn.id, recipient);
                self.shared
                    .metrics
                    .subscriptions
                    .with_label_values(&[PROTOCOL])
                    .inc();
                self.identity = Some(identity);
                true
            }
            Err(status) => {
                self.respond_join(status).await;
                false
            }
        }
    }

    async fn admit(&self, body: Value, peer: IpAddr) -> Result<Identity, JoinStatus> {
        let cfg = &self.deps.config;
        if !self.deps.throttle.admit(peer) {
            return Err(JoinStatus::Throttled);
        }
        let request: JoinRequest =
            serde_json::from_value(body).map_err(|_| JoinStatus::InvalidSessionId)?;
        let version = request.client_version.unwrap_or_default();
        let too_old = cfg
            .min_client_version
            .as_deref()
            .is_some_and(|min| protocol::version_cmp(&version, min).is_lt());
        let too_new = cfg
            .max_client_version
            .as_deref()
            .is_some_and(|max| protocol::version_cmp(&version, max).is_gt());
        if version.is_empty() || too_old || too_new {
            return Err(JoinStatus::InvalidClientVersion);
        }
        let session = request.session_id.unwrap_or_default();
        let identity = self
            .shared
            .auth
            .resolve_fresh(&session)
            .await
            .map_err(|e| {
                self.shared
                    .metrics
                    .auth_failures
                    .with_label_values(&[PROTOCOL, e.as_label()])
                    .inc();
                JoinStatus::InvalidSessionId
            })?;
        let user = protocol::id_text(request.user_id.as_ref());
        if identity.kind != PrincipalKind::User || user.is_empty() || user != identity.id {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[PROTOCOL, "user_mismatch"])
                .inc();
            return Err(JoinStatus::InvalidSessionId);
        }
        Ok(identity)
    }

    async fn respond_join(&self, status: JoinStatus) {
        self.shared
            .metrics
            .typeid_joins
            .with_label_values(&[status.as_label()])
            .inc();
        let body = JoinResponse {
            status: status as i32,
            server_time: protocol::server_time(time::OffsetDateTime::now_utc()),
            encrypted_session_key: None,
        };
        self.conn
            .emit_text(&protocol::frame(protocol::JOIN_RESPONSE, &body))
            .await;
        if status != JoinStatus::Successful {
            self.close_with(1008, "join refused").await;
        }
    }

    async fn read_loop(&mut self, stream: &mut WsStream) {
        let expires_at = self.identity.as_ref().and_then(|i| i.expires_at);
        loop {
            let next = tokio::select! {
                biased;
                interrupt = self.conn.interrupted(self.revoked.as_ref(), expires_at, Some(self.deps.config.idle_timeout)) => {
                    match interrupt {
                        // The idle timeout: handled below, beside the reads.
                        Interrupt::Idle => Err(()),
                        Interrupt::Gone => return,
                        Interrupt::Drain => {
                            cold(self.close_with(1012, "server restart")).await;
                            return;
                        }
                        Interrupt::Revoked => {
                            cold(self.close_with(1008, "session revoked")).await;
                            return;
                        }
                        Interrupt::Expired => {
                            cold(self.close_with(1008, "session expired")).await;
                            return;
                        }
                    }
                }
                r = next_text(stream) => Ok(r),
            };
            let next = match next {
                Err(_) => {
                    tracing::debug!(conn = self.conn.id, "TypeID client idle; closing");
                    cold(self.close_with(1000, "idle timeout")).await;
                    return;
                }
                Ok(next) => next,
            };
            let Some(frame) = cold(self.frame(next, "frame")).await else {
                return;
            };
            match frame.type_id {
                protocol::PING => {
                    let echo = protocol::frame_raw(protocol::PING, &frame.body.to_string());
                    cold(self.conn.emit_text(&echo)).await;
                }
                protocol::CONVERSATION_MESSAGE_REQUEST => {
                    let response = cold(self.message(frame.body)).await;
                    let reply = protocol::frame(protocol::CONVERSATION_MESSAGE_RESPONSE, &response);
                    cold(self.conn.emit_text(&reply)).await;
                }
                other => {
                    // Well-formed but unknown: logged and counted; the connection stays.
                    tracing::debug!(
                        conn = self.conn.id,
                        type_id = other,
                        "TypeID: unknown frame ignored"
                    );
                    self.count_protocol_error();
                }
            }
        }
    }

    /// Validate, authorise, rate-limit and publish a message request.
    async fn message(&mut self, body: Value) -> MessageResponse {
        let request: MessageRequest = serde_json::from_value(body).unwrap_or(MessageRequest {
            conversation_id: None,
            attachment_id: None,
            client_id: None,
            message: None,
        });
        let conversation_id = request.conversation_id.clone().unwrap_or(Value::Null);
        let client_id = request.client_id.clone().unwrap_or(Value::Null);
        let mut response = MessageResponse {
            conversation_id,
            client_id,
            server_id: None,
            status: 0,
        };
        let status = self.write(&request, &mut response).await;
        self.shared
            .metrics
            .typeid_requests
            .with_label_values(&[status.as_label()])
            .inc();
        response.status = status as i32;
        response
    }

    async fn write(
        &mut self,
        request: &MessageRequest,
        response: &mut MessageResponse,
    ) -> MessageStatus {
        let deps = self.deps.clone();
        let cfg = &deps.config;
        let Some(identity) = self.identity.clone() else {
            return MessageStatus::UnknownUser;
        };
        if !self.bucket.allow() {
            return MessageStatus::Throttled;
        }

        let conversation = protocol::id_text(request.conversation_id.as_ref());
        let client_id = protocol::id_text(request.client_id.as_ref());
        let text = match &request.message {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        if conversation.is_empty()
            || client_id.is_empty()
            || text.is_empty()
            || text.len() > cfg.max_message_chars
        {
            return MessageStatus::Error;
        }
        let granted = match &identity.conversations {
            Some(list) => list.contains(&conversation),
            None => !cfg.require_conversation_grant,
        };
        if !granted {
            return MessageStatus::Forbidden;
        }
        let server_id = uuid::Uuid::now_v7().to_string();
        let envelope = json!({
            "id": server_id,
            "type": "ConversationMessageRequest",
            "account_id": &*identity.account_id,
            "occurred_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .ok(),
            "payload": {
                "ConversationID": conversation,
                "AttachmentID": request.attachment_id.clone().unwrap_or(Value::Null),
                "ClientID": client_id,
                "Message": text,
                "UserID": identity.id,
                "ServerID": server_id,
            },
        })
        .to_string();
        let account = identity.account_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "type",
                value: Some("ConversationMessageRequest"),
            })
            .insert(Header {
                key: "account_id",
                value: Some(account.as_str()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(server_id.as_str()),
            });
        let record = FutureRecord::to(&cfg.commands_topic)
            .key(account.as_bytes())
            .payload(&envelope)
            .headers(headers);
        match self.deps.producer.send(record, cfg.produce_timeout).await {
            Ok(_) => {
                response.server_id = Some(server_id);
                MessageStatus::Successful
            }
            Err((e, _)) => {
                tracing::warn!(conn = self.conn.id, error = %e, "TypeID message not acknowledged by Kafka");
                MessageStatus::Error
            }
        }
    }

    /// The frame the client sent (`what`: which one, for the log), or
    /// None when the session ends: the socket ended, or the message was
    /// over the size limit (closed with 1009) or malformed (closed with
    /// 1002), both counted as protocol errors.
    async fn frame(&self, next: Next, what: &'static str) -> Option<protocol::Incoming> {
        let text = match next {
            Next::Text(t) => t,
            Next::Ended => return None,
            Next::Oversize => {
                tracing::info!(
                    conn = self.conn.id,
                    "TypeID: message over the size limit; closing"
                );
                self.count_protocol_error();
                self.close_with(1009, "message too big").await;
                return None;
            }
        };
        match protocol::parse(&text) {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::info!(conn = self.conn.id, error = %e, "TypeID: malformed {what}; closing");
                self.count_protocol_error();
                self.close_with(1002, "malformed frame").await;
                None
            }
        }
    }

    /// Count a protocol error on `herald_protocol_errors_total`.
    fn count_protocol_error(&self) {
        self.shared
            .metrics
            .protocol_errors
            .with_label_values(&[PROTOCOL])
            .inc();
    }

    async fn close_with(&self, code: u16, reason: &'static str) {
        self.conn.emit(Outbound::Close { code, reason }).await;
    }
}
