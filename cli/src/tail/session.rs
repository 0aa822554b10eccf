//! What every protocol's client session looks like to the socket loop in
//! [`super::run`]: bytes in, [`Action`]s out — no I/O, so each protocol's
//! frame handling is unit-tested with plain strings.

use std::time::Duration;

use serde_json::Value;

use crate::error::CliError;

/// What the socket loop should do after a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this text message.
    Send(String),
    /// Subscribed: events flow from now on. The text names what (`/events`, `RoomChannel`).
    Ready(String),
    /// A received event: one JSON line on stdout.
    Event(EventLine),
    /// A protocol frame worth showing with `--verbose` (never holds a credential).
    Trace(String),
}

/// One event as printed: `{"protocol":…, <fields>…, "event":<raw>}`, where
/// the event is the exact JSON text the gateway sent (key order included).
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine {
    /// `stomp`, `cable`, `stream` or `typeid`.
    pub protocol: &'static str,
    /// Where it came from (destination, channel, position, type).
    pub fields: Vec<(&'static str, Value)>,
    /// The event's JSON text, as received.
    pub event: String,
}

impl EventLine {
    /// An event line whose `event` is `raw` when it is JSON, else `raw` as a JSON string.
    pub fn new(protocol: &'static str, fields: Vec<(&'static str, Value)>, raw: &str) -> Self {
        let event = match serde_json::from_str::<&serde_json::value::RawValue>(raw) {
            Ok(json) => json.get().to_owned(),
            Err(_) => Value::from(raw).to_string(),
        };
        EventLine {
            protocol,
            fields,
            event,
        }
    }

    /// The line, without its newline.
    pub fn to_json(&self) -> String {
        let mut line = format!("{{\"protocol\":{}", Value::from(self.protocol));
        for (name, value) in &self.fields {
            line.push_str(&format!(",{}:{value}", Value::from(*name)));
        }
        line.push_str(",\"event\":");
        line.push_str(&self.event);
        line.push('}');
        line
    }
}

/// One client session of a gateway protocol, sans I/O.
pub trait ClientSession: Send {
    /// Messages to send as soon as the socket is open.
    fn open(&mut self) -> Vec<Action>;
    /// Handle one WebSocket message (text or binary payload). An error ends
    /// the tail with that message and exit code.
    fn receive(&mut self, payload: &[u8]) -> Result<Vec<Action>, CliError>;
    /// The connection closed, with the close frame's code and reason if any:
    /// the error to report.
    fn closed(&self, close: Option<(u16, &str)>) -> CliError;
    /// A keep-alive message and its period, once the session is established.
    fn keepalive(&self) -> Option<(Duration, String)>;
    /// Longest silence from the gateway that still means the connection is alive.
    fn silence_limit(&self) -> Option<Duration>;
}

/// ` (close 1008: session revoked)` for messages about a close frame.
pub fn describe_close(close: Option<(u16, &str)>) -> String {
    match close {
        Some((code, reason)) if !reason.is_empty() => format!(" (close {code}: {reason})"),
        Some((code, _)) => format!(" (close {code})"),
        None => String::new(),
    }
}

/// The id as a JSON number when it is one (Chatwoot and TypeID clients send
/// integers), else as a string.
pub fn id_value(id: &str) -> Value {
    id.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_keep_the_received_text() {
        let line = EventLine::new(
            "stomp",
            vec![
                ("destination", Value::from("/events")),
                ("message_id", Value::Null),
            ],
            r#" {"type":"x","a":1} "#,
        );
        assert_eq!(
            line.to_json(),
            r#"{"protocol":"stomp","destination":"/events","message_id":null,"event":{"type":"x","a":1}}"#
        );
        let text = EventLine::new("stomp", vec![], "not \"json\"");
        assert_eq!(
            text.to_json(),
            r#"{"protocol":"stomp","event":"not \"json\""}"#
        );
    }
}
