//! The TypeID client side of `/notifications`: a JoinRequest with the token
//! as `SessionID`, pings every 5 s as the desktop client does, and every
//! notification frame is an event.

use std::time::Duration;

use herald_gateway::protocols::typeid::protocol::{
    CONVERSATION_MESSAGE_NOTIFICATION, CONVERSATION_MESSAGE_RESPONSE, JOIN_REQUEST, JOIN_RESPONSE,
    PING, USER_CHANGE_NOTIFICATION, frame_raw,
};
use serde_json::{Value, json, value::RawValue};

use super::session::{Action, ClientSession, EventLine, describe_close, id_value};
use crate::error::CliError;

/// How often the client pings (the gateway closes sessions silent for 30 s).
const PING_EVERY: Duration = Duration::from_secs(5);

/// Pings are echoed; this long without any frame means the connection is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// A TypeID client session.
pub struct TypeIdClient {
    session_id: String,
    user_id: String,
    client_version: String,
    joined: bool,
}

/// The name of a server frame's TypeID.
pub fn type_name(type_id: i64) -> Option<&'static str> {
    let id = i32::try_from(type_id).ok()?;
    Some(match id {
        CONVERSATION_MESSAGE_NOTIFICATION => "ConversationMessageNotification",
        USER_CHANGE_NOTIFICATION => "UserChangeNotification",
        CONVERSATION_MESSAGE_RESPONSE => "ConversationMessageResponse",
        JOIN_RESPONSE => "JoinResponse",
        PING => "Ping",
        _ => return None,
    })
}

impl TypeIdClient {
    /// A session joining as `user_id` with `session_id` (opaque token or JWT).
    pub fn new(session_id: &str, user_id: &str, client_version: &str) -> TypeIdClient {
        TypeIdClient {
            session_id: session_id.to_owned(),
            user_id: user_id.to_owned(),
            client_version: client_version.to_owned(),
            joined: false,
        }
    }

    fn join_refused(&self, status: i64) -> CliError {
        let user = &self.user_id;
        match status {
            3 => CliError::Refused(format!(
                "the gateway refused the join (Status 3): ClientVersion {} is outside the \
                 accepted range; pass --client-version",
                self.client_version
            )),
            4 => CliError::Unauthorized(format!(
                "the gateway refused the join (Status 4): the session token is unknown, revoked \
                 or expired, or is not user {user}'s (--user-id)"
            )),
            5 => CliError::Unavailable("the gateway timed out the join (Status 5)".into()),
            6 => CliError::Unavailable(
                "the gateway throttled the join (Status 6): too many joins from this address; \
                 try again in a minute"
                    .into(),
            ),
            other => CliError::Unavailable(format!(
                "the gateway could not join the session (Status {other})"
            )),
        }
    }
}

impl ClientSession for TypeIdClient {
    fn open(&mut self) -> Vec<Action> {
        let body = json!({
            "CipherAlgorithm": 0,
            "CipherStrength": 0,
            "ClientVersion": self.client_version,
            "MachineKey": "herald-cli",
            "PublicKey": null,
            "SessionID": self.session_id,
            "Status": 1,
            "UserID": id_value(&self.user_id),
        });
        vec![Action::Send(frame_raw(JOIN_REQUEST, &body.to_string()))]
    }

    fn receive(&mut self, payload: &[u8]) -> Result<Vec<Action>, CliError> {
        let frame: Value = serde_json::from_slice(payload).map_err(|e| {
            CliError::Unavailable(format!("the gateway sent a frame that is not JSON: {e}"))
        })?;
        let Some(type_id) = frame["TypeID"].as_i64() else {
            return Ok(vec![Action::Trace(format!("ignored {frame}"))]);
        };
        let body = &frame["Body"];
        if type_id == i64::from(JOIN_RESPONSE) {
            let status = body["Status"].as_i64().unwrap_or(0);
            if status != 1 {
                return Err(self.join_refused(status));
            }
            self.joined = true;
            return Ok(vec![
                Action::Trace(format!("JoinResponse {body}")),
                Action::Ready(format!("TypeID notifications of user {}", self.user_id)),
            ]);
        }
        if type_id == i64::from(PING) {
            return Ok(vec![Action::Trace("ping echoed".into())]);
        }
        // The Body's exact text, key order included.
        #[derive(serde::Deserialize)]
        struct Raw<'a> {
            #[serde(rename = "Body", borrow)]
            body: Option<&'a RawValue>,
        }
        let raw = serde_json::from_slice::<Raw<'_>>(payload)
            .ok()
            .and_then(|r| r.body.map(|b| b.get().to_owned()))
            .unwrap_or_else(|| body.to_string());
        Ok(vec![Action::Event(EventLine::new(
            "typeid",
            vec![
                ("type", type_name(type_id).map_or(Value::Null, Value::from)),
                ("type_id", Value::from(type_id)),
            ],
            &raw,
        ))])
    }

    fn closed(&self, close: Option<(u16, &str)>) -> CliError {
        let how = describe_close(close);
        match close {
            Some((1008, reason)) if reason.contains("revoked") || reason.contains("expired") => {
                CliError::Unauthorized(format!("the gateway closed the session{how}"))
            }
            _ => CliError::Unavailable(format!("the gateway closed the connection{how}")),
        }
    }

    fn keepalive(&self) -> Option<(Duration, String)> {
        self.joined
            .then(|| (PING_EVERY, frame_raw(PING, r#"{"Signal":true}"#)))
    }

    fn silence_limit(&self) -> Option<Duration> {
        self.joined.then_some(SILENCE_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_with_the_session_and_numeric_user_id() {
        let mut c = TypeIdClient::new("sess-1", "777", "7.0.30");
        let open = c.open();
        let [Action::Send(join)] = open.as_slice() else {
            panic!("one join frame expected")
        };
        let join: Value = serde_json::from_str(join).unwrap();
        assert_eq!(join["TypeID"], JOIN_REQUEST);
        assert_eq!(join["Body"]["SessionID"], "sess-1");
        assert_eq!(join["Body"]["UserID"], 777);
        assert_eq!(join["Body"]["ClientVersion"], "7.0.30");
        assert_eq!(c.keepalive(), None);
        let actions = c
            .receive(br#"{"TypeID":-815187584,"Body":{"Status":1,"ServerTime":"x","EncryptedSessionKey":null}}"#)
            .unwrap();
        assert!(actions.contains(&Action::Ready("TypeID notifications of user 777".into())));
        let (every, ping) = c.keepalive().unwrap();
        assert_eq!(every, PING_EVERY);
        assert_eq!(ping, r#"{"TypeID":-476754606,"Body":{"Signal":true}}"#);
        assert_eq!(c.silence_limit(), Some(SILENCE_LIMIT));
    }

    #[test]
    fn notifications_are_events_and_echoes_are_not() {
        let mut c = TypeIdClient::new("s", "u-1", "7.0.30");
        let actions = c
            .receive(br#"{"TypeID":-635182161,"Body":{"ConversationID":"conv-1","Body":"hello"}}"#)
            .unwrap();
        let [Action::Event(line)] = actions.as_slice() else {
            panic!("one event expected: {actions:?}")
        };
        assert_eq!(
            line.to_json(),
            r#"{"protocol":"typeid","type":"ConversationMessageNotification","type_id":-635182161,"event":{"ConversationID":"conv-1","Body":"hello"}}"#
        );
        assert!(matches!(
            c.receive(br#"{"TypeID":-476754606,"Body":{"Signal":true}}"#)
                .unwrap()
                .as_slice(),
            [Action::Trace(_)]
        ));
        let unknown = c.receive(br#"{"TypeID":5,"Body":{}}"#).unwrap();
        let Action::Event(e) = &unknown[0] else {
            panic!("event expected")
        };
        assert_eq!(e.fields[0], ("type", Value::Null));
    }

    #[test]
    fn join_refusals_explain_the_status() {
        let refuse = |status: i64| {
            TypeIdClient::new("s", "7", "1.0.0")
                .receive(
                    format!(r#"{{"TypeID":-815187584,"Body":{{"Status":{status}}}}}"#).as_bytes(),
                )
                .unwrap_err()
        };
        let e = refuse(4);
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("Status 4"), "{e}");
        assert_eq!(refuse(3).exit_code(), 1);
        assert_eq!(refuse(6).exit_code(), 5);
        assert_eq!(refuse(2).exit_code(), 5);
    }

    #[test]
    fn revocation_closes_are_unauthorized() {
        let c = TypeIdClient::new("s", "7", "7.0.30");
        assert_eq!(c.closed(Some((1008, "session revoked"))).exit_code(), 3);
        assert_eq!(c.closed(Some((1008, "slow consumer"))).exit_code(), 5);
        assert_eq!(c.closed(None).exit_code(), 5);
        let mut c = c;
        assert_eq!(c.receive(b"nope").unwrap_err().exit_code(), 5);
    }
}
