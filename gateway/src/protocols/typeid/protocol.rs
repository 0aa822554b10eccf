//! TypeID frames, sans I/O: `{"TypeID":<int32>,"Body":{...}}` with
//! PascalCase bodies and nulls written out (docs/protocols/typeid.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Client → server: join (must be the first frame).
pub const JOIN_REQUEST: i32 = -2101997347;
/// Server → client: join outcome.
pub const JOIN_RESPONSE: i32 = -815187584;
/// Both ways: keep-alive, echoed by the server.
pub const PING: i32 = -476754606;
/// Server → client: a conversation message.
pub const CONVERSATION_MESSAGE_NOTIFICATION: i32 = -635182161;
/// Server → client: a user's status changed.
pub const USER_CHANGE_NOTIFICATION: i32 = 937250613;
/// Client → server: send a message.
pub const CONVERSATION_MESSAGE_REQUEST: i32 = -2124552136;
/// Server → client: outcome of a message request.
pub const CONVERSATION_MESSAGE_RESPONSE: i32 = 705131365;

/// `JoinResponse.Status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum JoinStatus {
    /// Joined.
    Successful = 1,
    /// The server failed.
    FailedUnhandledException = 2,
    /// Client version outside the accepted range.
    InvalidClientVersion = 3,
    /// Unknown, revoked or mismatched session.
    InvalidSessionId = 4,
    /// No JoinRequest in time.
    Timeout = 5,
    /// Too many joins.
    Throttled = 6,
}

impl JoinStatus {
    /// Bounded metrics label.
    pub fn as_label(self) -> &'static str {
        match self {
            JoinStatus::Successful => "successful",
            JoinStatus::FailedUnhandledException => "failed",
            JoinStatus::InvalidClientVersion => "invalid_client_version",
            JoinStatus::InvalidSessionId => "invalid_session",
            JoinStatus::Timeout => "timeout",
            JoinStatus::Throttled => "throttled",
        }
    }
}

/// `ConversationMessageResponse.Status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum MessageStatus {
    /// The user is unknown.
    UnknownUser = 0,
    /// Validation or Kafka failure.
    Error = 1,
    /// The user may not write to this conversation.
    Forbidden = 2,
    /// The friend is offline.
    FriendOffline = 3,
    /// Accepted: Kafka acknowledged the record.
    Successful = 4,
    /// Rate limit exceeded.
    Throttled = 5,
}

impl MessageStatus {
    /// Bounded metrics label.
    pub fn as_label(self) -> &'static str {
        match self {
            MessageStatus::UnknownUser => "unknown_user",
            MessageStatus::Error => "error",
            MessageStatus::Forbidden => "forbidden",
            MessageStatus::FriendOffline => "friend_offline",
            MessageStatus::Successful => "successful",
            MessageStatus::Throttled => "throttled",
        }
    }
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The frame's TypeID.
    pub type_id: i32,
    /// Its body (always an object).
    pub body: Value,
}

/// A frame that is not `{"TypeID":<int32>,"Body":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON.
    #[error("frame is not JSON: {0}")]
    Json(String),
    /// No integer TypeID.
    #[error("frame has no int32 TypeID")]
    TypeId,
    /// Body missing or not an object.
    #[error("frame Body must be an object")]
    Body,
}

/// Parse a client frame.
pub fn parse(text: &str) -> Result<Incoming, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    let type_id = value
        .get("TypeID")
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or(FrameError::TypeId)?;
    let body = match value.get("Body") {
        Some(b @ Value::Object(_)) => b.clone(),
        _ => return Err(FrameError::Body),
    };
    Ok(Incoming { type_id, body })
}

/// Encode a frame with an already-serialised body.
pub fn frame_raw(type_id: i32, body_json: &str) -> String {
    format!(r#"{{"TypeID":{type_id},"Body":{body_json}}}"#)
}

/// Encode a frame.
pub fn frame<T: Serialize>(type_id: i32, body: &T) -> String {
    frame_raw(
        type_id,
        &serde_json::to_string(body).unwrap_or_else(|_| "{}".into()),
    )
}

/// The JoinRequest body (fields the server reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    /// Session token (opaque, or a JWT).
    #[serde(rename = "SessionID")]
    pub session_id: Option<String>,
    /// The user id (number or string).
    #[serde(rename = "UserID")]
    pub user_id: Option<Value>,
    /// Client version, e.g. "7.0.30".
    pub client_version: Option<String>,
}

/// The JoinResponse body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    /// A [`JoinStatus`].
    pub status: i32,
    /// ISO-8601 UTC with fractional seconds.
    pub server_time: String,
    /// Always null (no encryption).
    pub encrypted_session_key: Option<String>,
}

/// The ConversationMessageRequest body.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageRequest {
    /// Conversation written to.
    #[serde(rename = "ConversationID")]
    pub conversation_id: Option<Value>,
    /// Optional attachment.
    #[serde(rename = "AttachmentID")]
    pub attachment_id: Option<Value>,
    /// Client-made GUID, echoed back.
    #[serde(rename = "ClientID")]
    pub client_id: Option<Value>,
    /// The text.
    #[serde(rename = "Message")]
    pub message: Option<Value>,
}

/// The ConversationMessageResponse body.
#[derive(Debug, Clone, Serialize)]
pub struct MessageResponse {
    /// Echoed.
    #[serde(rename = "ConversationID")]
    pub conversation_id: Value,
    /// Echoed.
    #[serde(rename = "ClientID")]
    pub client_id: Value,
    /// Server-made GUID (null when nothing was written).
    #[serde(rename = "ServerID")]
    pub server_id: Option<String>,
    /// A [`MessageStatus`].
    #[serde(rename = "Status")]
    pub status: i32,
}

/// A .NET-style round-trip UTC timestamp with 7 fractional digits
/// (`2016-05-10T13:29:35.8717700Z`).
pub fn server_time(now: time::OffsetDateTime) -> String {
    let t = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

/// Compare dotted numeric versions ("7.0.30" < "7.1"); non-numeric parts count as 0.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.trim()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (
            pa.get(i).copied().unwrap_or(0),
            pb.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    std::cmp::Ordering::Equal
}

/// A string or integer field as a string ("" for anything else).
pub fn id_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_parse_and_encode_exactly() {
        let f = parse(r#"{"TypeID":-476754606,"Body":{"Signal":true}}"#).unwrap();
        assert_eq!(
            f,
            Incoming {
                type_id: PING,
                body: json!({"Signal": true})
            }
        );
        assert_eq!(
            frame_raw(PING, r#"{"Signal":true}"#),
            r#"{"TypeID":-476754606,"Body":{"Signal":true}}"#
        );
        let join = frame(
            JOIN_RESPONSE,
            &JoinResponse {
                status: 1,
                server_time: "t".into(),
                encrypted_session_key: None,
            },
        );
        assert_eq!(
            join,
            r#"{"TypeID":-815187584,"Body":{"Status":1,"ServerTime":"t","EncryptedSessionKey":null}}"#
        );
        let resp = frame(
            CONVERSATION_MESSAGE_RESPONSE,
            &MessageResponse {
                conversation_id: json!("c"),
                client_id: json!("x"),
                server_id: None,
                status: 5,
            },
        );
        assert_eq!(
            resp,
            r#"{"TypeID":705131365,"Body":{"ConversationID":"c","ClientID":"x","ServerID":null,"Status":5}}"#
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(matches!(parse("nope"), Err(FrameError::Json(_))));
        assert_eq!(parse(r#"{"Body":{}}"#), Err(FrameError::TypeId));
        assert_eq!(
            parse(r#"{"TypeID":"1","Body":{}}"#),
            Err(FrameError::TypeId)
        );
        assert_eq!(
            parse(r#"{"TypeID":99999999999,"Body":{}}"#),
            Err(FrameError::TypeId)
        );
        assert_eq!(parse(r#"{"TypeID":1}"#), Err(FrameError::Body));
        assert_eq!(parse(r#"{"TypeID":1,"Body":[1]}"#), Err(FrameError::Body));
    }

    #[test]
    fn server_time_and_versions() {
        let t = time::macros::datetime!(2016-05-10 13:29:35.871770 UTC);
        assert_eq!(server_time(t), "2016-05-10T13:29:35.8717700Z");
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("7.0.30", "7.0.30"), Equal);
        assert_eq!(version_cmp("7.0.30", "7.1"), Less);
        assert_eq!(version_cmp("10.0", "7.9.9"), Greater);
        assert_eq!(version_cmp("7", "7.0.0"), Equal);
    }
}
