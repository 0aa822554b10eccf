//! Chatwoot-style `RoomChannel` payloads, delivered over ActionCable at
//! `/cable` (Chatwoot's RoomChannel, docs/protocols/actioncable.md, "RoomChannel").
//!
//! Only the ids are required; every other documented field is optional and
//! unknown fields pass through. Ids are integers in Chatwoot but strings are
//! accepted too ([`IntOrString`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::json::{object, optional_object};
use crate::scalar::IntOrString;

/// A conversation: the data of `conversation.created`, `conversation.read`,
/// `conversation.status_changed`, `conversation.contact_changed`,
/// `assignee.changed` and `team.changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Conversation {
    /// Conversation id (the account-scoped display id).
    pub id: IntOrString,
    /// The inbox it lives in.
    pub inbox_id: Option<IntOrString>,
    /// `open`, `resolved`, `pending` or `snoozed`.
    pub status: Option<String>,
    /// The channel type (`Channel::WebWidget`, ...).
    pub channel: Option<String>,
    /// The link between the contact and the inbox.
    pub contact_inbox: Option<Map<String, Value>>,
    /// Recent messages.
    pub messages: Option<Vec<Map<String, Value>>>,
    /// Sender (contact) and assignee (user).
    #[serde(default, deserialize_with = "optional_object")]
    pub meta: Option<ConversationMeta>,
}

/// The `meta` block of a [`Conversation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationMeta {
    /// The contact of the conversation.
    pub sender: Option<Map<String, Value>>,
    /// The assigned agent, `null` when unassigned.
    pub assignee: Option<Map<String, Value>>,
}

/// The data of `conversation.typing_on` / `conversation.typing_off`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TypingEvent {
    /// The conversation typed in.
    #[serde(deserialize_with = "object")]
    pub conversation: Conversation,
    /// Who is typing (an agent or a contact); never echoed to them.
    #[serde(deserialize_with = "object")]
    pub user: User,
    /// True when an agent types a private note: never sent to contacts.
    pub is_private: bool,
}

/// An agent or admin (also the contact who types, in typing events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    /// User id.
    pub id: IntOrString,
    /// Full name.
    pub name: Option<String>,
    /// Display name.
    pub available_name: Option<String>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// `online`, `busy` or `offline`.
    pub availability_status: Option<String>,
}

/// A contact: the data of `contact.created` and `contact.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Contact {
    /// Contact id.
    pub id: IntOrString,
    /// Name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Phone number.
    pub phone_number: Option<String>,
    /// The backend's own identifier for the contact.
    pub identifier: Option<String>,
    /// Avatar URL.
    pub thumbnail: Option<String>,
    /// Free-form attributes.
    pub additional_attributes: Option<Map<String, Value>>,
}

/// A message in Chatwoot's shape: the data of `message.created` and
/// `message.updated` on `/cable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatwootMessage {
    /// Message id.
    pub id: IntOrString,
    /// Text, `null` for attachments only.
    pub content: Option<String>,
    /// `0` incoming, `1` outgoing, `2` activity, `3` template (or the name).
    pub message_type: IntOrString,
    /// Structured content (cards, forms, `in_reply_to`, ...).
    pub content_attributes: Option<Map<String, Value>>,
    /// Who sent it (a user or a contact).
    pub sender: Option<Map<String, Value>>,
    /// A private note: never sent to contacts.
    pub private: Option<bool>,
    /// Creation time (Unix seconds or a date string).
    pub created_at: Option<IntOrString>,
    /// The conversation it belongs to.
    pub conversation_id: Option<IntOrString>,
}

/// The data of `presence.update`: statuses keyed by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceUpdate {
    /// The account whose presence this is.
    pub account_id: IntOrString,
    /// User id → `online` / `busy` / `offline`.
    pub users: BTreeMap<String, String>,
    /// Contact id → status; contacts never receive this part.
    pub contacts: Option<BTreeMap<String, String>>,
}

/// Every RoomChannel event type (Chatwoot's RoomChannel API), in the documented order.
pub const ROOM_EVENTS: [&str; 14] = [
    "conversation.created",
    "conversation.read",
    "message.created",
    "message.updated",
    "conversation.status_changed",
    "conversation.typing_on",
    "conversation.typing_off",
    "assignee.changed",
    "team.changed",
    "conversation.contact_changed",
    "contact.created",
    "contact.updated",
    "presence.update",
    "notification_created",
];

/// The RoomChannel events a contact token may receive (docs/protocols/actioncable.md, "RoomChannel").
pub const CONTACT_EVENTS: [&str; 7] = [
    "conversation.created",
    "conversation.status_changed",
    "message.created",
    "message.updated",
    "conversation.typing_on",
    "conversation.typing_off",
    "presence.update",
];

/// A presence heartbeat written by a gateway pod when a client sends
/// `update_presence` (type `presence.heartbeat`, family presence). Every pod
/// reads them to keep the online table; they are never delivered to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceHeartbeat {
    /// `user` or `contact`.
    pub kind: String,
    /// The user's or contact's id.
    pub id: String,
}

/// A notification: the data of `notification_created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Notification {
    /// Notification id.
    pub id: IntOrString,
    /// `conversation_creation`, `conversation_assignment`, ...
    pub notification_type: Option<String>,
    /// The object the notification is about.
    pub primary_actor: Option<Map<String, Value>>,
    /// When it was read, `null` while unread.
    pub read_at: Option<IntOrString>,
    /// Creation time.
    pub created_at: Option<IntOrString>,
}
