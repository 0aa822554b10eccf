//! Airy payloads, delivered over STOMP (Airy's queue and events APIs, docs/protocols/stomp.md).
//!
//! Ids are UUID strings; dates are `yyyy-MM-dd'T'HH:mm:ss.SSSZ` strings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::json::{object, optional_object};
use crate::scalar::IntOrString;

/// `message.created` / `message.updated` in Airy's shape (also the body of
/// the old `/queue/message` destination).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiryMessageEvent {
    /// The conversation the message belongs to.
    pub conversation_id: String,
    /// The channel the conversation runs on.
    pub channel_id: String,
    /// The message itself.
    #[serde(deserialize_with = "object")]
    pub message: AiryMessage,
}

/// An Airy message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiryMessage {
    /// Message id.
    pub id: String,
    /// The source message payload: any JSON (an object, or a string of JSON
    /// in the old API).
    pub content: Value,
    /// `pending`, `failed` or `delivered` (upper case in the old API).
    pub delivery_state: String,
    /// Whether the contact (not the business) sent it.
    pub from_contact: Option<bool>,
    /// When it was sent, `yyyy-MM-dd'T'HH:mm:ss.SSSZ` in UTC.
    pub sent_at: String,
    /// The source (`facebook`, `google`, ...).
    pub source: Option<String>,
    /// Who sent it.
    #[serde(default, deserialize_with = "optional_object")]
    pub sender: Option<AirySender>,
    /// The sender type of the old API.
    pub sender_type: Option<String>,
}

/// The sender of an Airy message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AirySender {
    /// Sender id (`github:12345`, `airy-core-anonymous`, ...).
    pub id: String,
}

/// `unread_count.updated` (old `/queue/unread-count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnreadCountUpdated {
    /// The conversation counted.
    pub conversation_id: String,
    /// Unread messages in it at `timestamp`.
    pub unread_message_count: u64,
    /// When the count was taken; clients keep the most recent count.
    pub timestamp: IntOrString,
}

/// `channel.connected` / `channel.disconnected` (old
/// `/queue/channel/connected` and `/queue/channel/disconnected`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiryChannel {
    /// Channel id.
    pub id: String,
    /// Display name (`my page 1`).
    pub name: String,
    /// Source (`facebook`, ...).
    pub source: String,
    /// The channel's id at its source (`fb-page-id-1`).
    pub source_channel_id: String,
    /// Avatar URL.
    pub image_url: Option<String>,
}

/// `channel.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChannelUpdated {
    /// Channel id.
    pub id: String,
    /// Source (`facebook`, ...).
    pub source: String,
    /// The channel's id at its source.
    pub source_channel_id: String,
    /// Whether the channel is connected now.
    pub connected: bool,
}

/// What an Airy metadata object describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetadataSubject {
    /// A conversation.
    Conversation,
    /// A channel.
    Channel,
    /// A message.
    Message,
}

/// `metadata.updated`: the full current metadata of one subject, not a delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetadataUpdated {
    /// What kind of object the metadata belongs to.
    pub subject: MetadataSubject,
    /// The id of that conversation, channel or message.
    pub identifier: String,
    /// The whole metadata object (nested).
    pub metadata: Map<String, Value>,
}

/// `tag.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TagUpdated {
    /// Tag id.
    pub id: String,
    /// Tag name.
    pub name: String,
    /// Tag colour (`tag-red`, ...).
    pub color: String,
}
