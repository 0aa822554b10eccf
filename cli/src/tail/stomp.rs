//! The STOMP client side of `/ws.communication`: CONNECT with the token,
//! SUBSCRIBE to each destination with a receipt, then every MESSAGE is an
//! event. Frames are encoded and decoded with the gateway's own codec.

use std::time::Duration;

use herald_gateway::protocols::stomp::codec::{
    self, Command, Decoded, Frame, Limits, Version, parse_heart_beat,
};
use serde_json::Value;

use super::session::{Action, ClientSession, EventLine, describe_close};
use crate::error::CliError;

/// Heart-beat we offer both ways, ms.
const HEART_BEAT_MS: u64 = 10_000;

/// Grace on top of twice the server's heart-beat before calling it silent.
const SILENCE_GRACE: Duration = Duration::from_secs(5);

/// Subprotocols offered, newest first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// A STOMP client session.
pub struct StompClient {
    host: String,
    token: String,
    destinations: Vec<String>,
    version: Version,
    connected: bool,
    receipts_pending: usize,
    ready: bool,
    send_every: Option<Duration>,
    silence: Option<Duration>,
}

impl StompClient {
    /// A session for `token` subscribing to `destinations`; `host` goes in CONNECT.
    pub fn new(host: &str, token: &str, destinations: Vec<String>) -> StompClient {
        StompClient {
            host: host.to_owned(),
            token: token.to_owned(),
            destinations,
            version: Version::V1_2,
            connected: false,
            receipts_pending: 0,
            ready: false,
            send_every: None,
            silence: None,
        }
    }

    fn text(frame: &Frame, version: Version) -> String {
        String::from_utf8_lossy(&codec::encode(frame, version)).into_owned()
    }

    fn decode(&self, payload: &[u8]) -> Result<Vec<Decoded>, CliError> {
        let limits = Limits {
            max_frame_bytes: 64 * 1024 * 1024,
            max_headers: 1024,
            max_header_bytes: 1024 * 1024,
        };
        // Before CONNECTED the server escapes an ERROR's headers per the
        // version it assumed; a 1.0 server escapes nothing, so retry as 1.0.
        codec::decode_message(payload, self.version, &limits)
            .or_else(|e| {
                if self.connected {
                    Err(e)
                } else {
                    codec::decode_message(payload, Version::V1_0, &limits)
                }
            })
            .map_err(|e| {
                CliError::Unavailable(format!("the gateway sent a malformed STOMP frame: {e}"))
            })
    }

    fn on_connected(&mut self, frame: &Frame) -> Vec<Action> {
        self.connected = true;
        self.version = frame
            .header("version")
            .and_then(Version::parse)
            .unwrap_or(Version::V1_0);
        if let Some(Ok((sx, sy))) = frame.header("heart-beat").map(parse_heart_beat) {
            if sy > 0 {
                self.send_every = Some(Duration::from_millis(sy.max(HEART_BEAT_MS)));
            }
            if sx > 0 {
                self.silence =
                    Some(Duration::from_millis(2 * sx.max(HEART_BEAT_MS)) + SILENCE_GRACE);
            }
        }
        let mut actions = vec![Action::Trace(format!(
            "CONNECTED version {} server {} heart-beat {}",
            self.version,
            frame.header("server").unwrap_or("?"),
            frame.header("heart-beat").unwrap_or("0,0"),
        ))];
        self.receipts_pending = self.destinations.len();
        for (i, destination) in self.destinations.iter().enumerate() {
            let subscribe = Frame::new(Command::Subscribe)
                .with_header("id", format!("sub-{i}"))
                .with_header("destination", destination.as_str())
                .with_header("ack", "auto")
                .with_header("receipt", format!("sub-{i}"));
            actions.push(Action::Send(Self::text(&subscribe, self.version)));
        }
        actions
    }

    fn on_error(&self, frame: &Frame) -> CliError {
        let message = frame.header("message").unwrap_or("(no message)");
        let body = String::from_utf8_lossy(&frame.body);
        let body = body.trim();
        let detail = if body.is_empty() || body == message {
            message.to_owned()
        } else {
            format!("{message} — {body}")
        };
        if message.starts_with("401") {
            if self.ready {
                CliError::Unauthorized(format!("the gateway closed the session: {detail}"))
            } else {
                CliError::Unauthorized(format!("the gateway refused the credential: {detail}"))
            }
        } else if self.ready {
            CliError::Unavailable(format!("the gateway ended the session: ERROR {detail}"))
        } else {
            CliError::Refused(format!("the gateway refused the session: ERROR {detail}"))
        }
    }

    fn on_message(frame: &Frame) -> Action {
        let header = |name: &str| frame.header(name).map_or(Value::Null, Value::from);
        Action::Event(EventLine::new(
            "stomp",
            vec![
                ("destination", header("destination")),
                ("subscription", header("subscription")),
                ("message_id", header("message-id")),
            ],
            &String::from_utf8_lossy(&frame.body),
        ))
    }
}

impl ClientSession for StompClient {
    fn open(&mut self) -> Vec<Action> {
        let connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2,1.1,1.0")
            .with_header("host", self.host.as_str())
            .with_header("heart-beat", format!("{HEART_BEAT_MS},{HEART_BEAT_MS}"))
            .with_header("Authorization", format!("Bearer {}", self.token));
        vec![Action::Send(Self::text(&connect, Version::V1_2))]
    }

    fn receive(&mut self, payload: &[u8]) -> Result<Vec<Action>, CliError> {
        let mut actions = Vec::new();
        for item in self.decode(payload)? {
            let Decoded::Frame(frame) = item else {
                continue;
            };
            match frame.command {
                Command::Connected => actions.extend(self.on_connected(&frame)),
                Command::Receipt => {
                    actions.push(Action::Trace(format!(
                        "RECEIPT {}",
                        frame.header("receipt-id").unwrap_or("?")
                    )));
                    if !self.ready && self.receipts_pending > 0 {
                        self.receipts_pending -= 1;
                        if self.receipts_pending == 0 {
                            self.ready = true;
                            actions.push(Action::Ready(self.destinations.join(", ")));
                        }
                    }
                }
                Command::Message => actions.push(Self::on_message(&frame)),
                Command::Error => return Err(self.on_error(&frame)),
                other => actions.push(Action::Trace(format!("unexpected {other} frame"))),
            }
        }
        Ok(actions)
    }

    fn closed(&self, close: Option<(u16, &str)>) -> CliError {
        let how = describe_close(close);
        if self.ready {
            CliError::Unavailable(format!("the gateway closed the connection{how}"))
        } else {
            CliError::Unavailable(format!(
                "the gateway closed the connection before the subscription was confirmed{how}"
            ))
        }
    }

    fn keepalive(&self) -> Option<(Duration, String)> {
        self.send_every.map(|every| (every, "\n".to_owned()))
    }

    fn silence_limit(&self) -> Option<Duration> {
        self.silence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> StompClient {
        StompClient::new(
            "127.0.0.1",
            "tok",
            vec!["/events".into(), "/queue/message".into()],
        )
    }

    fn sent(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    fn connected(c: &mut StompClient) -> Vec<Action> {
        c.receive(
            b"CONNECTED\nversion:1.2\nheart-beat:10000,20000\nserver:herald/0.1.0\nsession:s1\n\n\0",
        )
        .unwrap()
    }

    #[test]
    fn connect_carries_the_token_and_heart_beats() {
        let mut c = client();
        let open = c.open();
        assert_eq!(
            sent(&open),
            [
                "CONNECT\naccept-version:1.2,1.1,1.0\nhost:127.0.0.1\nheart-beat:10000,10000\nAuthorization:Bearer tok\n\n\0"
            ]
        );
        assert_eq!(c.keepalive(), None);
    }

    #[test]
    fn subscribes_after_connected_and_is_ready_after_every_receipt() {
        let mut c = client();
        let actions = connected(&mut c);
        assert_eq!(
            sent(&actions),
            [
                "SUBSCRIBE\nid:sub-0\ndestination:/events\nack:auto\nreceipt:sub-0\n\n\0",
                "SUBSCRIBE\nid:sub-1\ndestination:/queue/message\nack:auto\nreceipt:sub-1\n\n\0",
            ]
        );
        // The server wants a beat every 20 s; it beats every 10 s.
        assert_eq!(
            c.keepalive(),
            Some((Duration::from_secs(20), "\n".to_owned()))
        );
        assert_eq!(c.silence_limit(), Some(Duration::from_secs(25)));
        let first = c.receive(b"RECEIPT\nreceipt-id:sub-0\n\n\0").unwrap();
        assert!(!first.iter().any(|a| matches!(a, Action::Ready(_))));
        let second = c.receive(b"\nRECEIPT\nreceipt-id:sub-1\n\n\0\n").unwrap();
        assert!(second.contains(&Action::Ready("/events, /queue/message".into())));
    }

    #[test]
    fn messages_become_json_events() {
        let mut c = client();
        connected(&mut c);
        let body = r#"{"type":"tag.updated","payload":{"id":"t1"},"timestamp":1}"#;
        let frame = format!(
            "MESSAGE\nsubscription:sub-0\nmessage-id:herald.tag:1:5\ndestination:/events\ncontent-type:application/json\ncontent-length:{}\n\n{body}\0",
            body.len()
        );
        let actions = c.receive(frame.as_bytes()).unwrap();
        let [Action::Event(line)] = actions.as_slice() else {
            panic!("one event expected: {actions:?}")
        };
        assert_eq!(
            line.to_json(),
            format!(
                r#"{{"protocol":"stomp","destination":"/events","subscription":"sub-0","message_id":"herald.tag:1:5","event":{body}}}"#
            )
        );
        // A non-JSON body is kept as a string; heart-beats are nothing.
        let actions = c
            .receive(b"MESSAGE\ndestination:/x\nmessage-id:a\\cb\n\nplain\0")
            .unwrap();
        let Action::Event(e) = &actions[0] else {
            panic!("event expected")
        };
        let e: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            (&e["event"], &e["message_id"]),
            (&Value::from("plain"), &Value::from("a:b"))
        );
        assert!(c.receive(b"\n").unwrap().is_empty());
    }

    #[test]
    fn a_401_error_is_unauthorized() {
        let mut c = client();
        let e = c
            .receive(b"ERROR\nmessage:401 Unauthorized\\c invalid token\n\n\0")
            .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "the gateway refused the credential: 401 Unauthorized: invalid token"
        );
        // A 1.0-style (unescaped) ERROR before CONNECTED decodes too.
        let e = c
            .receive(b"ERROR\nmessage:401 Unauthorized: a\\b\n\n\0")
            .unwrap_err();
        assert!(e.to_string().contains("a\\b"), "{e}");
    }

    #[test]
    fn other_errors_refuse_before_and_end_after_subscribing() {
        let mut c = StompClient::new("h", "t", vec!["/nope".into()]);
        connected(&mut c);
        let e = c
            .receive(b"ERROR\nmessage:unknown destination /nope\nreceipt-id:sub-0\n\n\0")
            .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let mut c = StompClient::new("h", "t", vec!["/events".into()]);
        connected(&mut c);
        c.receive(b"RECEIPT\nreceipt-id:sub-0\n\n\0").unwrap();
        let e = c
            .receive(b"ERROR\nmessage:server restart: reconnect\n\n\0")
            .unwrap_err();
        assert_eq!(e.exit_code(), 5);
        let e = c
            .receive(b"ERROR\nmessage:401 Unauthorized: credential revoked\n\n\0")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the gateway closed the session: 401 Unauthorized: credential revoked"
        );
    }

    #[test]
    fn garbage_and_closes_are_connection_problems() {
        let mut c = client();
        assert_eq!(c.receive(b"HELLO\n\n\0").unwrap_err().exit_code(), 5);
        let e = c.closed(Some((1008, "slow consumer")));
        assert_eq!(e.exit_code(), 5);
        assert!(
            e.to_string().ends_with("(close 1008: slow consumer)"),
            "{e}"
        );
    }
}
