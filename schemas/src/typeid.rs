//! TypeID protocol bodies (docs/protocols/typeid.md): PascalCase keys,
//! nulls written out, integers as JSON integers.
//!
//! The payload of an event is the frame's `Body`; the gateway adds the
//! numeric `TypeID` ([`TypeIdBody::TYPE_ID`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::object;
use crate::scalar::IntOrString;

/// A TypeID body type and its fixed frame constant.
pub trait TypeIdBody {
    /// The `TypeID` of frames carrying this body.
    const TYPE_ID: i32;
}

/// `ConversationMessageNotification` (TypeID -635182161): a chat message was
/// posted, edited, liked or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ConversationMessageNotification {
    /// The conversation (GUID).
    #[serde(rename = "ConversationID")]
    pub conversation_id: String,
    /// The server-made message id (GUID).
    #[serde(rename = "ServerID")]
    pub server_id: String,
    /// The sender's user id.
    #[serde(rename = "SenderID")]
    pub sender_id: i64,
    /// When it was sent, epoch milliseconds.
    pub timestamp: i64,
    /// The client-made id of the request that posted it.
    #[serde(rename = "ClientID")]
    pub client_id: Option<String>,
    /// Contact id.
    #[serde(rename = "ContactID")]
    pub contact_id: Option<IntOrString>,
    /// The root conversation (GUID).
    #[serde(rename = "RootConversationID")]
    pub root_conversation_id: Option<String>,
    /// 0 Friendship, 1 Group, 2 AdHoc, 3 GroupPrivateConversation.
    pub conversation_type: Option<i64>,
    /// The sender's display name.
    pub sender_name: Option<String>,
    /// The sender's permission bits.
    pub sender_permissions: Option<i64>,
    /// The sender's roles.
    pub sender_roles: Option<Vec<Value>>,
    /// The sender's vanity role.
    pub sender_vanity_role: Option<i64>,
    /// Mentions.
    pub mentions: Option<Vec<Value>>,
    /// Recipient user id (direct messages).
    #[serde(rename = "RecipientID")]
    pub recipient_id: Option<i64>,
    /// The text.
    pub body: Option<String>,
    /// Deleted.
    pub is_deleted: Option<bool>,
    /// When it was deleted.
    pub deleted_timestamp: Option<i64>,
    /// Who deleted it.
    #[serde(rename = "DeletedUserID")]
    pub deleted_user_id: Option<i64>,
    /// The name of who deleted it.
    pub deleted_username: Option<IntOrString>,
    /// When it was last edited.
    pub edited_timestamp: Option<i64>,
    /// Who edited it.
    #[serde(rename = "EditedUserID")]
    pub edited_user_id: Option<i64>,
    /// The name of who edited it.
    pub edited_username: Option<IntOrString>,
    /// Number of likes.
    pub like_count: Option<i64>,
    /// Who liked it.
    #[serde(rename = "LikeUserIDs")]
    pub like_user_ids: Option<Vec<Value>>,
    /// Who liked it, by name.
    pub like_usernames: Option<Vec<Value>>,
    /// Content tags.
    pub content_tags: Option<Vec<Value>>,
    /// Attachments.
    pub attachments: Option<Vec<Value>>,
    /// 0 Normal, 1 Edited, 2 Liked, 3 Deleted.
    pub notification_type: Option<i64>,
}

impl TypeIdBody for ConversationMessageNotification {
    const TYPE_ID: i32 = -635_182_161;
}

/// `UserChangeNotification` (TypeID 937250613): a user's status changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct UserChangeNotification {
    /// The user as it is now.
    #[serde(deserialize_with = "object")]
    pub user: TypeIdUser,
}

impl TypeIdBody for UserChangeNotification {
    const TYPE_ID: i32 = 937_250_613;
}

/// A user in a [`UserChangeNotification`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct TypeIdUser {
    /// User id.
    #[serde(rename = "UserID")]
    pub user_id: i64,
    /// User name.
    pub username: Option<String>,
    /// Connection status code.
    pub connection_status: Option<i64>,
    /// Custom status text.
    pub custom_status_message: Option<String>,
    /// When the custom status was set.
    pub custom_status_timestamp: Option<IntOrString>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// The game being played.
    #[serde(rename = "CurrentGameID")]
    pub current_game_id: Option<IntOrString>,
}

/// `ConversationMessageRequest` (TypeID -2124552136): a client posts a chat
/// message; the gateway publishes it on `client-commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ConversationMessageRequest {
    /// The conversation posted to (GUID).
    #[serde(rename = "ConversationID")]
    pub conversation_id: String,
    /// The client-made id (GUID), echoed in the response.
    #[serde(rename = "ClientID")]
    pub client_id: String,
    /// The text.
    pub message: String,
    /// An attachment, when there is one.
    #[serde(rename = "AttachmentID")]
    pub attachment_id: Option<Value>,
}

impl TypeIdBody for ConversationMessageRequest {
    const TYPE_ID: i32 = -2_124_552_136;
}
