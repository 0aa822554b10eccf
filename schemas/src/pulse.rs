//! Pulse-style `NotificationsChannel` contents, delivered over ActionCable at
//! `/stream` (Pulse's NotificationsChannel, docs/protocols/actioncable.md, "NotificationsChannel").
//!
//! The event type is the Pulse `operation`; the payload is its `content`,
//! always a JSON object. Numeric fields are [`LongLike`] because the Android
//! client parses them with `Long.parseLong` (a number or a numeric string
//! both work there). Fields documented as *encrypted* carry
//! `base64(iv)-:-base64(ciphertext)` text that is passed through untouched.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scalar::{LongLike, StringOrInteger, string_or_integer};

/// Every Pulse operation (docs/protocols/actioncable.md, "NotificationsChannel"): the event types delivered on the
/// `NotificationsChannel`. The catalogue has a row for each (tested).
pub const OPERATIONS: [&str; 47] = [
    "removed_account",
    "updated_account",
    "cleaned_account",
    "added_message",
    "update_message_type",
    "updated_message",
    "removed_message",
    "cleanup_messages",
    "cleanup_conversation_messages",
    "added_contact",
    "updated_contact",
    "removed_contact",
    "removed_contact_by_id",
    "added_conversation",
    "update_conversation_snippet",
    "update_conversation_title",
    "updated_conversation",
    "removed_conversation",
    "read_conversation",
    "seen_conversation",
    "archive_conversation",
    "seen_conversations",
    "added_draft",
    "replaced_drafts",
    "removed_drafts",
    "added_blacklist",
    "removed_blacklist",
    "added_scheduled_message",
    "updated_scheduled_message",
    "removed_scheduled_message",
    "added_folder",
    "add_conversation_to_folder",
    "remove_conversation_from_folder",
    "updated_folder",
    "removed_folder",
    "added_template",
    "updated_template",
    "removed_template",
    "added_auto_reply",
    "updated_auto_reply",
    "removed_auto_reply",
    "update_setting",
    "dismissed_notification",
    "update_subscription",
    "update_primary_device",
    "feature_flag",
    "forward_to_phone",
];

/// Whether `event_type` is a Pulse operation.
pub fn is_operation(event_type: &str) -> bool {
    OPERATIONS.contains(&event_type)
}

/// The content of operations that carry nothing but a numeric `id`:
/// `removed_message`, `removed_conversation`, `seen_conversation`,
/// `removed_blacklist`, `removed_scheduled_message`,
/// `remove_conversation_from_folder`, `removed_folder`, `removed_template`,
/// `removed_auto_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IdContent {
    /// The id of the object concerned.
    pub id: LongLike,
}

// ---------------------------------------------------------------- account

/// `removed_account` and `cleaned_account`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountIdContent {
    /// The Pulse account id (a string; an integer is accepted).
    #[serde(deserialize_with = "string_or_integer")]
    #[schemars(with = "StringOrInteger")]
    pub id: String,
}

/// `updated_account`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdatedAccount {
    /// The Pulse account id.
    #[serde(deserialize_with = "string_or_integer")]
    #[schemars(with = "StringOrInteger")]
    pub id: String,
    /// The account holder's name.
    pub real_name: String,
    /// The account's phone number.
    pub phone_number: String,
}

/// `update_setting`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateSetting {
    /// The preference key.
    pub pref: String,
    /// How to read `value`: `boolean`, `long`, `int`, `string` or `set`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The new value.
    pub value: Value,
}

/// `update_subscription`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateSubscription {
    /// Subscription type code.
    #[serde(rename = "type")]
    pub kind: Option<LongLike>,
    /// Expiry, epoch milliseconds.
    pub expiration: Option<LongLike>,
    /// Whether an administrator made the change (the app then notifies).
    pub from_admin: Option<bool>,
}

/// `update_primary_device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdatePrimaryDevice {
    /// The device that is primary from now on.
    pub new_primary_device_id: LongLike,
}

/// `feature_flag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeatureFlag {
    /// The flag name.
    pub id: String,
    /// On or off.
    pub value: bool,
    /// Percentage of devices that turn it on (1-100).
    pub rollout: LongLike,
}

/// `dismissed_notification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DismissedNotification {
    /// The device_conversation_id whose notification was dismissed.
    pub id: LongLike,
    /// The device that dismissed it (it ignores its own dismissal).
    pub device_id: Option<LongLike>,
}

/// `forward_to_phone` (sent unencrypted by Pulse).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ForwardToPhone {
    /// Comma-separated recipient phone numbers.
    pub to: String,
    /// The text to send.
    pub message: String,
    /// MIME type of `message`.
    pub mime_type: Option<String>,
    /// The message id, when one exists.
    pub message_id: Option<LongLike>,
    /// The device that asked for the forward.
    pub sent_device: LongLike,
}

// ---------------------------------------------------------------- message

/// `added_message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddedMessage {
    /// Message id.
    pub id: LongLike,
    /// Conversation id.
    pub conversation_id: LongLike,
    /// Message type code (received, sent, sending, media, ...).
    #[serde(rename = "type")]
    pub kind: LongLike,
    /// Epoch milliseconds.
    pub timestamp: LongLike,
    /// Read.
    pub read: bool,
    /// Seen.
    pub seen: bool,
    /// The device that sent it.
    pub sent_device: Option<LongLike>,
    /// Encrypted message data.
    pub data: String,
    /// Encrypted MIME type.
    pub mime_type: String,
    /// Encrypted sender (group conversations).
    pub from: Option<String>,
    /// Sender colour (ARGB integer).
    pub color: Option<LongLike>,
}

/// `updated_message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdatedMessage {
    /// Message id.
    pub id: LongLike,
    /// New message type code.
    #[serde(rename = "type")]
    pub kind: LongLike,
    /// New timestamp, epoch milliseconds.
    pub timestamp: Option<LongLike>,
}

/// `update_message_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateMessageType {
    /// Message id.
    pub id: LongLike,
    /// New message type code.
    pub message_type: LongLike,
}

/// `cleanup_messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CleanupMessages {
    /// Messages older than this (epoch milliseconds) are removed.
    pub timestamp: LongLike,
}

/// `cleanup_conversation_messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CleanupConversationMessages {
    /// Messages older than this (epoch milliseconds) are removed.
    pub timestamp: LongLike,
    /// The conversation cleaned.
    pub conversation_id: LongLike,
}

// ---------------------------------------------------------------- contact

/// `added_contact` and `updated_contact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PulseContact {
    /// Encrypted phone number.
    pub phone_number: String,
    /// Encrypted name.
    pub name: String,
    /// Colour (ARGB integer).
    pub color: LongLike,
    /// Dark colour.
    pub color_dark: LongLike,
    /// Light colour.
    pub color_light: LongLike,
    /// Accent colour.
    pub color_accent: LongLike,
    /// The contact's device id (the Android client reads it on update).
    pub device_id: Option<LongLike>,
}

/// `removed_contact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemovedContact {
    /// The phone number removed.
    pub phone_number: String,
    /// The contact's device id (the Android client reads it).
    pub device_id: Option<LongLike>,
}

/// `removed_contact_by_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemovedContactById {
    /// Comma-separated contact ids (a single integer is accepted).
    #[serde(deserialize_with = "string_or_integer")]
    #[schemars(with = "StringOrInteger")]
    pub id: String,
}

/// `added_blacklist`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddedBlacklist {
    /// Blacklist entry id.
    pub id: LongLike,
    /// Encrypted phone number.
    pub phone_number: String,
}

// ---------------------------------------------------------------- conversation

/// `added_conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddedConversation {
    /// Conversation id.
    pub id: LongLike,
    /// Colour (ARGB integer).
    pub color: LongLike,
    /// Dark colour.
    pub color_dark: LongLike,
    /// Light colour.
    pub color_light: LongLike,
    /// Accent colour.
    pub color_accent: LongLike,
    /// Notification LED colour.
    pub led_color: LongLike,
    /// Pinned.
    pub pinned: bool,
    /// Read.
    pub read: bool,
    /// Last activity, epoch milliseconds.
    pub timestamp: LongLike,
    /// Encrypted title.
    pub title: String,
    /// Encrypted phone numbers.
    pub phone_numbers: String,
    /// Encrypted snippet.
    pub snippet: String,
    /// Encrypted ringtone URI.
    pub ringtone: Option<String>,
    /// Encrypted id matcher.
    pub id_matcher: String,
    /// Muted.
    pub mute: bool,
    /// Archived.
    pub archive: bool,
    /// The folder it is in.
    pub folder_id: Option<LongLike>,
}

/// `updated_conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdatedConversation {
    /// Conversation id.
    pub id: LongLike,
    /// Encrypted title.
    pub title: String,
    /// Colour (ARGB integer).
    pub color: LongLike,
    /// Dark colour.
    pub color_dark: LongLike,
    /// Light colour.
    pub color_light: LongLike,
    /// Accent colour.
    pub color_accent: LongLike,
    /// Notification LED colour.
    pub led_color: LongLike,
    /// Pinned.
    pub pinned: bool,
    /// Encrypted ringtone URI.
    pub ringtone: Option<String>,
    /// Muted.
    pub mute: bool,
    /// Read.
    pub read: bool,
    /// Archived.
    pub archive: bool,
    /// Hide message text in notifications.
    pub private_notifications: bool,
}

/// `update_conversation_snippet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateConversationSnippet {
    /// Conversation id.
    pub id: LongLike,
    /// Read.
    pub read: bool,
    /// Last activity, epoch milliseconds.
    pub timestamp: LongLike,
    /// Encrypted snippet.
    pub snippet: String,
    /// Archived.
    pub archive: bool,
}

/// `update_conversation_title`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateConversationTitle {
    /// Conversation id.
    pub id: LongLike,
    /// Encrypted title.
    pub title: String,
}

/// `read_conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReadConversation {
    /// Conversation id.
    pub id: LongLike,
    /// The device that read it (it ignores its own event).
    pub android_device: LongLike,
}

/// `archive_conversation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArchiveConversation {
    /// Conversation id.
    pub id: LongLike,
    /// Archived or not.
    pub archive: bool,
}

/// `added_draft`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddedDraft {
    /// Draft id.
    pub id: LongLike,
    /// Conversation id.
    pub conversation_id: LongLike,
    /// Encrypted draft data.
    pub data: String,
    /// Encrypted MIME type.
    pub mime_type: String,
}

/// `removed_drafts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RemovedDrafts {
    /// Conversation id whose drafts are removed.
    pub id: LongLike,
    /// The device that removed them (it ignores its own event).
    pub android_device: LongLike,
}

/// `added_scheduled_message` and `updated_scheduled_message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduledMessage {
    /// Scheduled message id.
    pub id: LongLike,
    /// Encrypted recipients.
    pub to: String,
    /// Encrypted data.
    pub data: String,
    /// Encrypted MIME type.
    pub mime_type: String,
    /// When to send, epoch milliseconds.
    pub timestamp: LongLike,
    /// Encrypted title.
    pub title: String,
}

/// `added_folder` and `updated_folder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Folder {
    /// Folder id on the devices.
    pub device_id: LongLike,
    /// Encrypted name.
    pub name: String,
    /// Colour (ARGB integer).
    pub color: LongLike,
    /// Dark colour.
    pub color_dark: LongLike,
    /// Light colour.
    pub color_light: LongLike,
    /// Accent colour.
    pub color_accent: LongLike,
}

/// `add_conversation_to_folder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddConversationToFolder {
    /// Conversation id.
    pub id: LongLike,
    /// Folder id.
    pub folder_id: LongLike,
}

/// `added_template` and `updated_template`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Template {
    /// Template id on the devices.
    pub device_id: LongLike,
    /// Encrypted text.
    pub text: String,
}

/// `added_auto_reply` and `updated_auto_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AutoReply {
    /// Auto reply id on the devices.
    pub device_id: LongLike,
    /// `vacation`, `driving`, `contact`, `keyword`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Encrypted pattern.
    pub pattern: String,
    /// Encrypted response.
    pub response: String,
}
