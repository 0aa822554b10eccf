//! What each ActionCable subscription receives, and how it is rendered.
//!
//! RoomChannel (Chatwoot's RoomChannel API): users get every RoomChannel event of their account
//! (narrowed by audience); contacts only the contact events, never private
//! messages or notes; typing events never go back to the typist. Bodies are
//! `{"event","data"}`. NotificationsChannel (Pulse's NotificationsChannel API): every Pulse
//! operation, `{"operation","content"}`, `content` always an object.

use herald_schemas::{chatwoot, pulse};

use std::sync::Arc;

use super::protocol;
use crate::{
    core::{
        event::RoutedEvent,
        identity::{Identity, PrincipalKind},
        position::Epochs,
    },
    routing::{
        gate::ResumeGate,
        router::{FrameCache, Recipient, Slot},
    },
    transport::{
        connection::{self, ConnTx, Supersede},
        ws::{WsFrame, WsPart},
    },
};

/// Which channel a subscription is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Chatwoot-style RoomChannel.
    Room,
    /// Pulse-style NotificationsChannel.
    Notifications,
}

/// One confirmed subscription, registered in the router.
pub struct CableRecipient {
    /// Who subscribed.
    pub identity: Identity,
    /// Which channel.
    pub channel: ChannelKind,
    /// The identifier as a JSON string literal, ready to splice into frames.
    pub identifier_json: String,
    /// Cache key of this subscription's frame when identical identifiers
    /// share it (NotificationsChannel identifiers carry no token).
    pub shared_key: Option<String>,
    /// The connection's queue.
    pub conn: ConnTx,
    /// Extended protocol: frames carry `stream_id`/`epoch`/`offset` (the
    /// epoch of the event's topic from here).
    pub ext_epochs: Option<Arc<Epochs>>,
    /// Holds live events while the subscription replays history.
    pub gate: ResumeGate,
    /// Unique in the process ([`connection::next_conn_id`]): a superseding
    /// event's frame replaces only an older one queued for this subscription.
    pub lane: u64,
}

/// Whether the payload marks a private note (`private`/`is_private`).
fn is_private(event: &RoutedEvent) -> bool {
    match event.payload_json() {
        Some(p) => ["private", "is_private"]
            .iter()
            .any(|k| p.get(*k).and_then(serde_json::Value::as_bool) == Some(true)),
        // Fail closed: a payload we cannot read (e.g. nested deeper than the
        // parser allows) might be private, so contacts do not get it.
        None => true,
    }
}

/// Whether `identity` is the one typing in a typing event.
fn is_typist(event: &RoutedEvent, identity: &Identity) -> bool {
    let Some(user) = event.payload_json().and_then(|p| p.get("user")) else {
        return false;
    };
    let id_matches = match user.get("id") {
        Some(serde_json::Value::String(s)) => *s == identity.id,
        Some(serde_json::Value::Number(n)) => n.to_string() == identity.id,
        _ => false,
    };
    let kind_matches = match user.get("type").and_then(serde_json::Value::as_str) {
        Some("contact") => identity.kind == PrincipalKind::Contact,
        Some(_) => identity.kind == PrincipalKind::User,
        None => true,
    };
    id_matches && kind_matches
}

/// Whether a RoomChannel subscription of `identity` gets `event`.
pub fn room_accepts(identity: &Identity, event: &RoutedEvent) -> bool {
    let ty = event.envelope.event_type.as_str();
    if !chatwoot::ROOM_EVENTS.contains(&ty) {
        return false;
    }
    if identity.kind == PrincipalKind::Contact
        && (!chatwoot::CONTACT_EVENTS.contains(&ty) || is_private(event))
    {
        return false;
    }
    if ty.starts_with("conversation.typing_") && is_typist(event, identity) {
        return false;
    }
    true
}

/// The RoomChannel message body of `event` for `identity`.
fn room_body(identity: &Identity, event: &RoutedEvent, cache: &mut FrameCache) -> WsPart {
    let ty = event.envelope.event_type.as_str();
    if ty == "presence.update" && identity.kind == PrincipalKind::Contact {
        // Contacts never see other contacts' presence.
        return cache.body_or_insert_with("room-body:presence-contact", || {
            let mut data = event.payload_json().cloned().unwrap_or_default();
            if let Some(obj) = data.as_object_mut() {
                obj.remove("contacts");
            }
            format!(
                r#"{{"event":{},"data":{}}}"#,
                protocol::json_string(ty),
                data
            )
        });
    }
    cache.body_or_insert_with("room-body", || {
        format!(
            r#"{{"event":{},"data":{}}}"#,
            protocol::json_string(ty),
            event.envelope.payload.get()
        )
    })
}

impl Recipient for CableRecipient {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn offer(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) {
        if !self.gate.already_seen(event) && !self.gate.hold(event) {
            self.deliver(event, cache);
        }
    }

    fn offer_batch(&self, events: &mut dyn Iterator<Item = &Slot>) {
        // Made first, queued together (see the STOMP recipient).
        connection::push_batch(&self.conn, |frames| {
            frames.extend(events.filter_map(|slot| {
                slot.with(|event, cache| {
                    if self.gate.already_seen(event) || self.gate.hold(event) {
                        return None;
                    }
                    Some((
                        self.frame(event, cache)?,
                        Some(event.stamp()),
                        Supersede::of(event, self.lane),
                    ))
                })
            }));
        });
    }

    fn forget_stream(&self, topic: &str, partition: Option<i32>) {
        self.gate.forget(topic, partition);
    }

    fn connection(&self) -> Option<&ConnTx> {
        Some(&self.conn)
    }
}

impl CableRecipient {
    /// The frame of an event that bypassed the router (replay), if this
    /// subscription takes it: entitlement is checked here as the router would.
    pub fn replay_frame(&self, event: &RoutedEvent) -> Option<WsFrame> {
        if *event.envelope.account_id != *self.identity.account_id
            || !self.identity.entitled(event.envelope.audience.as_ref())
        {
            return None;
        }
        self.frame(event, &mut FrameCache::default())
    }

    /// Queue `event` if this subscription takes it; true when queued.
    pub fn deliver(&self, event: &RoutedEvent, cache: &mut FrameCache) -> bool {
        match self.frame(event, cache) {
            Some(frame) => {
                self.conn
                    .push(frame, Some(event.stamp()), Supersede::of(event, self.lane))
            }
            None => false,
        }
    }

    /// This subscription's frame for `event`, if it takes the event.
    fn frame(&self, event: &RoutedEvent, cache: &mut FrameCache) -> Option<WsFrame> {
        let wrap = |message: &str| match &self.ext_epochs {
            Some(epochs) => protocol::broadcast_ext(
                &self.identifier_json,
                message,
                &protocol::stream_id(&event.topic, event.partition),
                &epochs.of(&event.topic),
                event.offset,
            ),
            None => protocol::broadcast(&self.identifier_json, message),
        };
        let frame = match self.channel {
            ChannelKind::Room => {
                if !room_accepts(&self.identity, event) {
                    return None;
                }
                let body = room_body(&self.identity, event, cache);
                // Room identifiers embed the client's token: frames are per
                // subscription, only the body is shared, and the frame is
                // assembled from the pieces in one buffer.
                match &self.ext_epochs {
                    None => WsFrame::around(
                        &[r#"{"identifier":"#, &self.identifier_json, r#","message":"#],
                        &body,
                        "}",
                    ),
                    Some(_) => WsFrame::text(&wrap(body.as_str())),
                }
            }
            ChannelKind::Notifications => {
                let ty = event.envelope.event_type.as_str();
                if !pulse::is_operation(ty)
                    || !event
                        .payload_json()
                        .is_some_and(serde_json::Value::is_object)
                {
                    return None;
                }
                let make = || {
                    let body = format!(
                        r#"{{"operation":{},"content":{}}}"#,
                        protocol::json_string(ty),
                        event.envelope.payload.get()
                    );
                    wrap(&body)
                };
                match &self.shared_key {
                    Some(key) => cache.frame_or_insert_with(key, make),
                    None => WsFrame::text(&make()),
                }
            }
        };
        Some(frame)
    }
}
