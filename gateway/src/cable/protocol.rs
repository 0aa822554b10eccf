//! The ActionCable JSON wire format (PROTOCOLS.md section 1), sans I/O.

use serde::Deserialize;

/// Subprotocols offered by Rails' server, in preference order.
pub const SUBPROTOCOLS: [&str; 2] = ["actioncable-v1-json", "actioncable-unsupported"];

/// A command from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `subscribe` with the identifier string exactly as sent.
    Subscribe { identifier: String },
    /// `unsubscribe`.
    Unsubscribe { identifier: String },
    /// `message` with its `data` string.
    Message { identifier: String, data: String },
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
}

/// Parse one client frame.
pub fn parse_command(text: &str) -> Result<Command, CommandError> {
    let raw: RawCommand =
        serde_json::from_str(text).map_err(|e| CommandError::Json(e.to_string()))?;
    let command = match raw.command {
        Some(serde_json::Value::String(c)) => c,
        other => return Err(CommandError::Unknown(format!("{other:?}"))),
    };
    let identifier = match raw.identifier {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(CommandError::NoIdentifier),
    };
    match command.as_str() {
        "subscribe" => Ok(Command::Subscribe { identifier }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_keeps_identifier_bytes() {
        let id = r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":1}"#;
        let frame = serde_json::json!({"command": "subscribe", "identifier": id}).to_string();
        assert_eq!(
            parse_command(&frame),
            Ok(Command::Subscribe {
                identifier: id.to_owned()
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
