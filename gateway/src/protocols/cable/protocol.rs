//! The ActionCable JSON wire format (docs/protocols/actioncable.md), sans I/O.

use serde::Deserialize;
use serde_json::Value;

/// Subprotocols the server speaks, in preference order: AnyCable's extended
/// protocol (stream positions, history), Rails' protocol, and Rails'
/// `actioncable-unsupported` marker.
pub const SUBPROTOCOLS: [&str; 3] = [
    "actioncable-v1-ext-json",
    "actioncable-v1-json",
    "actioncable-unsupported",
];

/// The extended (reliable) protocol's name.
pub const EXT_PROTOCOL: &str = "actioncable-v1-ext-json";

/// A command from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `subscribe` with the identifier string exactly as sent, and the
    /// extended protocol's optional `history` request.
    Subscribe {
        identifier: String,
        history: Option<Value>,
    },
    /// `unsubscribe`.
    Unsubscribe { identifier: String },
    /// `message` with its `data` string.
    Message { identifier: String, data: String },
    /// Extended protocol: `history` for an existing subscription.
    History { identifier: String, history: Value },
    /// Extended protocol: `pong` (keep-alive answer, ignored).
    Pong,
}

/// Why a client frame was not understood (Rails logs these and carries on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not JSON, or not an object.
    #[error("could not parse command: {0}")]
    Json(String),
    /// No or an unknown `command`.
    #[error("received unrecognized command: {0}")]
    Unknown(String),
    /// `identifier` missing or not a string.
    #[error("command without a string identifier")]
    NoIdentifier,
    /// `message` without a string `data`.
    #[error("message command without string data")]
    NoData,
}

#[derive(Deserialize)]
struct RawCommand {
    command: Option<serde_json::Value>,
    identifier: Option<serde_json::Value>,
    data: Option<serde_json::Value>,
    history: Option<serde_json::Value>,
}

/// Parse one client frame.
pub fn parse_command(text: &str) -> Result<Command, CommandError> {
    let raw: RawCommand =
        serde_json::from_str(text).map_err(|e| CommandError::Json(e.to_string()))?;
    let command = match raw.command {
        Some(serde_json::Value::String(c)) => c,
        other => return Err(CommandError::Unknown(format!("{other:?}"))),
    };
    if command == "pong" {
        return Ok(Command::Pong);
    }
    let identifier = match raw.identifier {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(CommandError::NoIdentifier),
    };
    match command.as_str() {
        "subscribe" => Ok(Command::Subscribe {
            identifier,
            history: raw.history,
        }),
        "history" => Ok(Command::History {
            identifier,
            history: raw.history.unwrap_or(Value::Null),
        }),
        "unsubscribe" => Ok(Command::Unsubscribe { identifier }),
        "message" => match raw.data {
            Some(serde_json::Value::String(data)) => Ok(Command::Message { identifier, data }),
            _ => Err(CommandError::NoData),
        },
        _ => Err(CommandError::Unknown(command)),
    }
}

/// The decoded identifier: its `channel` and the other keys.
pub fn parse_identifier(identifier: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str::<serde_json::Value>(identifier).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The `action` of a `message` command's data.
pub fn parse_action(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    value.get("action")?.as_str().map(str::to_owned)
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `{"type":"welcome"}`.
pub fn welcome() -> &'static str {
    r#"{"type":"welcome"}"#
}

/// `{"type":"ping","message":<unix seconds>}`.
pub fn ping(unix_seconds: i64) -> String {
    format!(r#"{{"type":"ping","message":{unix_seconds}}}"#)
}

/// Subscription confirmation; `identifier_json` is a JSON string literal.
pub fn confirm(identifier_json: &str) -> String {
    format!(r#"{{"identifier":{identifier_json},"type":"confirm_subscription"}}"#)
}

/// Subscription rejection.
pub fn reject(identifier_json: &str) -> String {
    format!(r#"{{"identifier":{identifier_json},"type":"reject_subscription"}}"#)
}

/// A broadcast: `message` is a JSON object's text.
pub fn broadcast(identifier_json: &str, message: &str) -> String {
    format!(r#"{{"identifier":{identifier_json},"message":{message}}}"#)
}

/// Extended protocol welcome, with a session id.
pub fn welcome_ext(sid: &str) -> String {
    format!(r#"{{"type":"welcome","sid":{}}}"#, json_string(sid))
}

/// Extended protocol broadcast: the message plus its stream position.
pub fn broadcast_ext(
    identifier_json: &str,
    message: &str,
    stream_id: &str,
    epoch: &str,
    offset: i64,
) -> String {
    format!(
        r#"{{"identifier":{identifier_json},"message":{message},"stream_id":{},"epoch":{},"offset":{offset}}}"#,
        json_string(stream_id),
        json_string(epoch)
    )
}

/// `confirm_history` / `reject_history`.
pub fn history_result(identifier_json: &str, confirmed: bool) -> String {
    let ty = if confirmed {
        "confirm_history"
    } else {
        "reject_history"
    };
    format!(r#"{{"identifier":{identifier_json},"type":"{ty}"}}"#)
}

/// The stream id of a topic-partition in the extended protocol.
pub fn stream_id(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// Turn an extended-protocol history request
/// (`{"since":<unix s>,"streams":{"<topic>:<p>":{"epoch":..,"offset":..}}}`)
/// into a resume request; streams of another epoch (another incarnation of
/// the topic, see [`Epochs`](crate::core::position::Epochs)) cannot be resumed and
/// are returned apart.
pub fn parse_history(
    history: &Value,
    epochs: &crate::core::position::Epochs,
) -> (crate::core::position::ResumeRequest, Vec<String>) {
    let mut req = crate::core::position::ResumeRequest {
        since_ms: history
            .get("since")
            .and_then(Value::as_i64)
            .map(|s| s.saturating_mul(1000).max(0)),
        ..Default::default()
    };
    let mut foreign = Vec::new();
    if let Some(streams) = history.get("streams").and_then(Value::as_object) {
        for (id, pos) in streams {
            let parsed = id
                .rsplit_once(':')
                .and_then(|(t, p)| Some((t.to_owned(), p.parse::<i32>().ok()?)));
            let offset = pos.get("offset").and_then(Value::as_i64);
            match (parsed, offset, pos.get("epoch").and_then(Value::as_str)) {
                (Some((topic, partition)), Some(offset), Some(e)) if epochs.accepts(&topic, e) => {
                    req.positions.push((topic, partition, offset));
                }
                _ => foreign.push(id.clone()),
            }
        }
    }
    (req, foreign)
}

/// Disconnect reasons Rails uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Credentials refused or revoked; clients must not reconnect.
    Unauthorized,
    /// The request was not acceptable.
    InvalidRequest,
    /// The server is restarting; reconnect (to another pod).
    ServerRestart,
    /// Closed by the server for another reason (e.g. a slow client).
    Remote,
}

impl DisconnectReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Unauthorized => "unauthorized",
            DisconnectReason::InvalidRequest => "invalid_request",
            DisconnectReason::ServerRestart => "server_restart",
            DisconnectReason::Remote => "remote",
        }
    }

    /// Whether the client should reconnect (always sent explicitly: a missing
    /// value stops the JS client from ever reconnecting).
    pub fn reconnect(self) -> bool {
        !matches!(self, DisconnectReason::Unauthorized)
    }
}

/// `{"type":"disconnect","reason":..,"reconnect":..}`.
pub fn disconnect(reason: DisconnectReason) -> String {
    format!(
        r#"{{"type":"disconnect","reason":"{}","reconnect":{}}}"#,
        reason.as_str(),
        reason.reconnect()
    )
}

/// `{"type":"disconnect","reason":"redirect","reconnect":true,"url":..}`:
/// another partition group serves the client's account; `url` is that
/// group's base URL (the client appends its endpoint path).
pub fn disconnect_redirect(url: &str) -> String {
    serde_json::json!({
        "type": "disconnect",
        "reason": "redirect",
        "reconnect": true,
        "url": url,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_is_a_reconnecting_disconnect_with_the_url() {
        let v: serde_json::Value =
            serde_json::from_str(&disconnect_redirect("wss://rt.example.com/g/1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "disconnect", "reason": "redirect", "reconnect": true,
                "url": "wss://rt.example.com/g/1"})
        );
    }

    #[test]
    fn parses_commands_and_keeps_identifier_bytes() {
        let id = r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":1}"#;
        let frame = serde_json::json!({"command": "subscribe", "identifier": id}).to_string();
        assert_eq!(
            parse_command(&frame),
            Ok(Command::Subscribe {
                identifier: id.to_owned(),
                history: None
            })
        );
        let frame = serde_json::json!({"command": "message", "identifier": id, "data": "{\"action\":\"update_presence\"}"}).to_string();
        let Ok(Command::Message { data, .. }) = parse_command(&frame) else {
            panic!()
        };
        assert_eq!(parse_action(&data).as_deref(), Some("update_presence"));
        assert_eq!(
            confirm(&json_string(id)),
            format!(
                "{{\"identifier\":{},\"type\":\"confirm_subscription\"}}",
                json_string(id)
            )
        );
        let back: serde_json::Value = serde_json::from_str(&confirm(&json_string(id))).unwrap();
        assert_eq!(
            back["identifier"], id,
            "the client matches by string equality"
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(matches!(parse_command("nope"), Err(CommandError::Json(_))));
        assert!(matches!(parse_command("[1]"), Err(CommandError::Json(_))));
        assert!(matches!(
            parse_command(r#"{"command":"dance","identifier":"x"}"#),
            Err(CommandError::Unknown(_))
        ));
        assert!(matches!(
            parse_command(r#"{"command":"subscribe","identifier":{"a":1}}"#),
            Err(CommandError::NoIdentifier)
        ));
        assert!(matches!(
            parse_command(r#"{"command":"message","identifier":"x"}"#),
            Err(CommandError::NoData)
        ));
        assert!(parse_identifier("not json").is_none());
        assert!(parse_action("{}").is_none());
    }

    #[test]
    fn extended_protocol_frames() {
        assert_eq!(welcome_ext("s1"), r#"{"type":"welcome","sid":"s1"}"#);
        assert_eq!(
            broadcast_ext("\"x\"", "{}", "herald.tag:0", "herald", 7),
            r#"{"identifier":"x","message":{},"stream_id":"herald.tag:0","epoch":"herald","offset":7}"#
        );
        assert_eq!(
            history_result("\"x\"", false),
            r#"{"identifier":"x","type":"reject_history"}"#
        );
        let epochs = crate::core::position::Epochs::new("herald");
        epochs.set_topic_id("herald.message", "AAAA");
        let h = serde_json::json!({"since": 1700000000, "streams": {
            "herald.tag:0": {"epoch": "herald", "offset": 7},
            "herald.message:0": {"epoch": "herald.AAAA", "offset": 3},
            "herald.message:1": {"epoch": "herald.BBBB", "offset": 3},
            "x:1": {"epoch": "old", "offset": 1}}});
        let (mut req, mut foreign) = parse_history(&h, &epochs);
        req.positions.sort();
        foreign.sort();
        assert_eq!(
            req.positions,
            vec![
                ("herald.message".to_owned(), 0, 3),
                ("herald.tag".to_owned(), 0, 7)
            ]
        );
        assert_eq!(req.since_ms, Some(1_700_000_000_000));
        let extreme = serde_json::json!({"since": i64::MAX, "streams": {"herald.tag:0": {"epoch": "herald", "offset": i64::MAX}}});
        let (r, _) = parse_history(&extreme, &epochs);
        assert_eq!(
            r.since_ms,
            Some(i64::MAX),
            "saturates instead of overflowing"
        );
        let (r, _) = parse_history(&serde_json::json!({"since": i64::MIN}), &epochs);
        assert_eq!(r.since_ms, Some(0));
        assert_eq!(
            foreign,
            vec!["herald.message:1".to_owned(), "x:1".to_owned()],
            "another incarnation of the topic, or another epoch altogether"
        );
        assert_eq!(parse_command(r#"{"command":"pong"}"#), Ok(Command::Pong));
    }

    #[test]
    fn server_frames_are_exact() {
        assert_eq!(ping(1608150458), r#"{"type":"ping","message":1608150458}"#);
        assert_eq!(
            disconnect(DisconnectReason::Unauthorized),
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert_eq!(
            disconnect(DisconnectReason::ServerRestart),
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        assert_eq!(
            broadcast("\"x\"", "{\"a\":1}"),
            r#"{"identifier":"x","message":{"a":1}}"#
        );
    }
}
