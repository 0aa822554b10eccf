//! The payload of `message.created` / `message.updated`, which both Airy
//! (STOMP) and Chatwoot (`/cable`) use with different shapes.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::airy::AiryMessageEvent;
use crate::chatwoot::ChatwootMessage;
use crate::json::parse_object;

/// Either message shape; whichever the payload matches (Airy first).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum MessagePayload {
    /// Airy's `{conversation_id, channel_id, message{...}}`.
    Airy(AiryMessageEvent),
    /// Chatwoot's Message object.
    Chatwoot(ChatwootMessage),
}

impl MessagePayload {
    /// Parses a payload, explaining why neither shape matched.
    pub(crate) fn parse(json: &str) -> Result<MessagePayload, String> {
        let airy = match parse_object::<AiryMessageEvent>(json) {
            Ok(event) => return Ok(MessagePayload::Airy(event)),
            Err(why) => why,
        };
        let chatwoot = match parse_object::<ChatwootMessage>(json) {
            Ok(message) => return Ok(MessagePayload::Chatwoot(message)),
            Err(why) => why,
        };
        if airy == chatwoot {
            return Err(airy);
        }
        Err(format!(
            "matched neither the Airy message shape ({airy}) nor the Chatwoot message shape ({chatwoot})"
        ))
    }
}

impl<'de> Deserialize<'de> for MessagePayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let json = value.to_string();
        MessagePayload::parse(&json).map_err(serde::de::Error::custom)
    }
}
