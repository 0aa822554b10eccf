//! The ActionCable client side: `RoomChannel` at `/cable` (the token is the
//! identifier's `pubsub_token`) and `NotificationsChannel` at `/stream` (the
//! token authenticates the upgrade). Subscribes after `welcome`; every
//! channel `message` is an event.

use std::time::Duration;

use serde_json::{Value, json, value::RawValue};

use super::session::{Action, ClientSession, EventLine, describe_close, id_value};
use crate::error::CliError;

/// Subprotocol offered (Rails' plain JSON protocol).
pub const SUBPROTOCOLS: [&str; 1] = ["actioncable-v1-json"];

/// The gateway pings every 3 s by default; this much silence means the connection is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Which channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Chatwoot-style RoomChannel at `/cable`.
    Room,
    /// Pulse-style NotificationsChannel at `/stream`.
    Notifications,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Room => "RoomChannel",
            Channel::Notifications => "NotificationsChannel",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Channel::Room => "cable",
            Channel::Notifications => "stream",
        }
    }
}

/// An ActionCable client session with one subscription.
pub struct CableClient {
    channel: Channel,
    /// Sent exactly as built; for RoomChannel it holds the token, so it is
    /// never traced or printed.
    identifier: String,
    welcomed: bool,
    ready: bool,
}

impl CableClient {
    /// A RoomChannel session; `account` and `user_id` are checked by the
    /// gateway against the token when given.
    pub fn room(token: &str, account: Option<&str>, user_id: Option<&str>) -> CableClient {
        let mut identifier = json!({"channel": "RoomChannel", "pubsub_token": token});
        if let Some(a) = account {
            identifier["account_id"] = id_value(a);
        }
        if let Some(u) = user_id {
            identifier["user_id"] = id_value(u);
        }
        CableClient {
            channel: Channel::Room,
            identifier: identifier.to_string(),
            welcomed: false,
            ready: false,
        }
    }

    /// A NotificationsChannel session (the connection carries the credential).
    pub fn notifications() -> CableClient {
        CableClient {
            channel: Channel::Notifications,
            identifier: json!({"channel": "NotificationsChannel"}).to_string(),
            welcomed: false,
            ready: false,
        }
    }

    fn disconnected(&self, frame: &Value) -> CliError {
        let reason = frame["reason"].as_str().unwrap_or("(no reason)");
        let reconnect = frame["reconnect"].as_bool();
        let hint = match reason {
            "unauthorized" => {
                return CliError::Unauthorized(match self.channel {
                    Channel::Notifications if !self.welcomed => {
                        "the gateway refused the connection: unauthorized (the credential is \
                         unknown, revoked or expired, or belongs to another account than \
                         --account)"
                            .to_owned()
                    }
                    _ => "disconnected by the gateway: unauthorized (the credential was \
                          refused, revoked or has expired)"
                        .to_owned(),
                });
            }
            "server_restart" => "the pod is draining; a client would reconnect elsewhere",
            "remote" => "this client fell too far behind",
            "invalid_request" => "a message was too large",
            _ => "",
        };
        let reconnect = match reconnect {
            Some(r) => format!(", reconnect {r}"),
            None => String::new(),
        };
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(": {hint}")
        };
        CliError::Unavailable(format!(
            "disconnected by the gateway ({reason}{reconnect}){hint}"
        ))
    }
}

impl ClientSession for CableClient {
    fn open(&mut self) -> Vec<Action> {
        Vec::new()
    }

    fn receive(&mut self, payload: &[u8]) -> Result<Vec<Action>, CliError> {
        let Ok(frame) = serde_json::from_slice::<Value>(payload) else {
            return Ok(vec![Action::Trace(format!(
                "ignored a message that is not JSON: {}",
                String::from_utf8_lossy(payload)
            ))]);
        };
        let name = self.channel.name();
        match frame["type"].as_str() {
            Some("welcome") => {
                self.welcomed = true;
                let subscribe = json!({"command": "subscribe", "identifier": self.identifier});
                Ok(vec![
                    Action::Trace("welcome".into()),
                    Action::Send(subscribe.to_string()),
                ])
            }
            Some("ping") => Ok(vec![Action::Trace(format!("ping {}", frame["message"]))]),
            Some("confirm_subscription") => {
                self.ready = true;
                Ok(vec![Action::Ready(name.to_owned())])
            }
            Some("reject_subscription") => Err(CliError::Unauthorized(match self.channel {
                Channel::Room => "the gateway rejected the RoomChannel subscription: the token is \
                                  unknown, revoked or expired, or --account/--user-id do not match it"
                    .to_owned(),
                Channel::Notifications => {
                    "the gateway rejected the NotificationsChannel subscription".to_owned()
                }
            })),
            Some("disconnect") => Err(self.disconnected(&frame)),
            _ if frame.get("message").is_some() => {
                // The message's exact text, key order included.
                #[derive(serde::Deserialize)]
                struct Raw<'a> {
                    #[serde(borrow)]
                    message: &'a RawValue,
                }
                let raw = serde_json::from_slice::<Raw<'_>>(payload)
                    .map(|r| r.message.get().to_owned())
                    .unwrap_or_else(|_| frame["message"].to_string());
                Ok(vec![Action::Event(EventLine::new(
                    self.channel.protocol(),
                    vec![("channel", Value::from(name))],
                    &raw,
                ))])
            }
            _ => Ok(vec![Action::Trace(format!("ignored {frame}"))]),
        }
    }

    fn closed(&self, close: Option<(u16, &str)>) -> CliError {
        CliError::Unavailable(format!(
            "the gateway closed the connection{}",
            describe_close(close)
        ))
    }

    fn keepalive(&self) -> Option<(Duration, String)> {
        None
    }

    fn silence_limit(&self) -> Option<Duration> {
        self.welcomed.then_some(SILENCE_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(c: &mut CableClient, frame: Value) -> Result<Vec<Action>, CliError> {
        c.receive(frame.to_string().as_bytes())
    }

    #[test]
    fn room_subscribes_after_welcome_with_the_token_and_ids() {
        let mut c = CableClient::room("tok-1", Some("42"), Some("7"));
        assert!(c.open().is_empty());
        assert_eq!(c.silence_limit(), None);
        let actions = recv(&mut c, json!({"type": "welcome"})).unwrap();
        let Some(Action::Send(sub)) = actions.get(1) else {
            panic!("subscribe expected: {actions:?}")
        };
        let sub: Value = serde_json::from_str(sub).unwrap();
        assert_eq!(sub["command"], "subscribe");
        let id: Value = serde_json::from_str(sub["identifier"].as_str().unwrap()).unwrap();
        assert_eq!(
            id,
            json!({"channel": "RoomChannel", "pubsub_token": "tok-1", "account_id": 42, "user_id": 7})
        );
        // Traces never show the identifier (it holds the token).
        assert!(actions.iter().all(|a| match a {
            Action::Trace(t) => !t.contains("tok-1"),
            _ => true,
        }));
        assert_eq!(c.silence_limit(), Some(SILENCE_LIMIT));
        let identifier = c.identifier.clone();
        let ready = recv(
            &mut c,
            json!({"identifier": identifier, "type": "confirm_subscription"}),
        )
        .unwrap();
        assert_eq!(ready, [Action::Ready("RoomChannel".into())]);
    }

    #[test]
    fn channel_messages_are_events_and_pings_are_not() {
        let mut c = CableClient::room("t", None, None);
        let id: Value = serde_json::from_str(&c.identifier).unwrap();
        assert_eq!(id, json!({"channel": "RoomChannel", "pubsub_token": "t"}));
        let ping = recv(&mut c, json!({"type": "ping", "message": 1})).unwrap();
        assert!(matches!(ping.as_slice(), [Action::Trace(_)]));
        let frame = format!(
            r#"{{"identifier":{},"message":{{"event":"message.created","data":{{"id":1,"content":"hi"}}}}}}"#,
            Value::from(c.identifier.as_str())
        );
        let ev = c.receive(frame.as_bytes()).unwrap();
        let [Action::Event(line)] = ev.as_slice() else {
            panic!("one event expected: {ev:?}")
        };
        assert_eq!(
            line.to_json(),
            r#"{"protocol":"cable","channel":"RoomChannel","event":{"event":"message.created","data":{"id":1,"content":"hi"}}}"#
        );
        let mut n = CableClient::notifications();
        let ev = recv(
            &mut n,
            json!({"identifier": "{\"channel\":\"NotificationsChannel\"}",
            "message": {"operation": "added_message", "content": {}}}),
        )
        .unwrap();
        let Action::Event(e) = &ev[0] else {
            panic!("event expected")
        };
        let e: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            (&e["protocol"], &e["event"]["operation"]),
            (&json!("stream"), &json!("added_message"))
        );
        assert!(matches!(
            c.receive(b"not json").unwrap().as_slice(),
            [Action::Trace(_)]
        ));
    }

    #[test]
    fn rejections_and_unauthorized_disconnects_exit_3() {
        let mut c = CableClient::room("t", Some("1"), None);
        let e = recv(
            &mut c,
            json!({"identifier": "x", "type": "reject_subscription"}),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(
            e.to_string()
                .contains("rejected the RoomChannel subscription")
        );
        let e = recv(
            &mut c,
            json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false}),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("unauthorized"), "{e}");
        let mut n = CableClient::notifications();
        let e = recv(
            &mut n,
            json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("refused the connection"), "{e}");
    }

    #[test]
    fn other_disconnects_and_closes_are_connection_problems() {
        let mut c = CableClient::notifications();
        let e = recv(
            &mut c,
            json!({"type": "disconnect", "reason": "server_restart", "reconnect": true}),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert_eq!(
            e.to_string(),
            "disconnected by the gateway (server_restart, reconnect true): the pod is draining; \
             a client would reconnect elsewhere"
        );
        assert_eq!(c.closed(None).exit_code(), 5);
    }
}
