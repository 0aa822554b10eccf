//! The envelope wrapped around every event on every topic (docs/events.md), and its decoding with precise errors.

use serde::de::{self, Deserializer, Unexpected};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::SchemaError;
use crate::json::{MapOnly, describe};
use crate::scalar::{StringOrIntegerVisitor, string_or_integer};

/// JSON Schema pattern of a string that is not blank.
const NOT_BLANK: &str = "\\S";

/// The envelope of every Kafka record value.
///
/// `payload` is kept as raw JSON and passed through byte for byte, so the
/// gateway can frame it without re-serialising; [`crate::validate`] checks it
/// against the typed struct of its `type`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Envelope {
    /// Unique event id; a redelivered event keeps its id.
    #[schemars(extend("pattern" = NOT_BLANK))]
    pub id: String,
    /// The event name in the vocabulary of its API (`message.updated`,
    /// `added_message`, `ConversationMessageNotification`, ...).
    #[serde(rename = "type")]
    #[schemars(extend("pattern" = NOT_BLANK))]
    pub event_type: String,
    /// The account the event belongs to; a JSON integer is accepted and
    /// stored as its decimal string.
    #[serde(deserialize_with = "account_id")]
    #[schemars(with = "AccountId")]
    pub account_id: String,
    /// When the event happened, RFC 3339 (`2026-11-22T10:00:00.000Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub occurred_at: Option<String>,
    /// Narrows delivery inside the account; absent means everyone entitled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    /// The event object exactly as the client protocol shows it.
    #[schemars(with = "Value")]
    pub payload: Box<RawValue>,
}

/// Who inside the account may receive an event, as computed by the backend
/// (inbox membership, conversation participants). How the lists combine is
/// the gateway router's rule; absent lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Audience {
    /// User (agent/admin) ids; JSON integers are accepted and stringified.
    #[serde(default, deserialize_with = "ids")]
    #[schemars(with = "Option<Vec<AudienceId>>")]
    pub users: Vec<String>,
    /// Contact ids; JSON integers are accepted and stringified.
    #[serde(default, deserialize_with = "ids")]
    #[schemars(with = "Option<Vec<AudienceId>>")]
    pub contacts: Vec<String>,
    /// Role names (`agent`, `admin`, ...).
    #[serde(default, deserialize_with = "roles")]
    #[schemars(with = "Option<Vec<RoleName>>")]
    pub roles: Vec<String>,
}

impl Audience {
    /// True when all three lists are empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.contacts.is_empty() && self.roles.is_empty()
    }
}

impl Envelope {
    /// Decodes one record value, naming precisely what is wrong when it is
    /// not a well-formed envelope (missing field, wrong field type, bad JSON).
    ///
    /// This checks structure only; [`crate::validate`] checks the content.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, SchemaError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let parts = EnvelopeParts::deserialize(MapOnly(&mut deserializer))
            .and_then(|parts| deserializer.end().map(|()| parts))
            .map_err(|err| SchemaError::InvalidJson(decode_error(&err, bytes)))?;

        let id = required_string(parts.id, "id")?;
        let event_type = required_string(parts.event_type, "type")?;
        let account_id = match parts.account_id {
            None | Some(Value::Null) => return Err(SchemaError::MissingField("account_id")),
            Some(value) => account_id(value).map_err(|err| invalid("account_id", &err))?,
        };
        let occurred_at = match parts.occurred_at {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text),
            Some(other) => return Err(wrong_type("occurred_at", &other, "a string")),
        };
        let audience = match parts.audience {
            None | Some(Value::Null) => None,
            Some(value @ Value::Object(_)) => {
                Some(Audience::deserialize(value).map_err(|err| invalid("audience", &err))?)
            }
            Some(other) => return Err(wrong_type("audience", &other, "an object")),
        };
        // `"payload": null` lands here too: `Option` reads `null` as `None`.
        let payload = parts.payload.ok_or(SchemaError::MissingField("payload"))?;

        Ok(Envelope {
            id,
            event_type,
            account_id,
            occurred_at,
            audience,
            payload,
        })
    }

    /// The family (= topic) of this envelope's type, `None` if unknown.
    #[must_use]
    pub fn family(&self) -> Option<crate::Family> {
        crate::family_of(&self.event_type)
    }
}

/// The envelope with every field still raw, so each can be checked on its
/// own and reported by name.
#[derive(Deserialize)]
#[serde(expecting = "an envelope JSON object")]
struct EnvelopeParts {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, rename = "type")]
    event_type: Option<Value>,
    #[serde(default)]
    account_id: Option<Value>,
    #[serde(default)]
    occurred_at: Option<Value>,
    #[serde(default)]
    audience: Option<Value>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

/// Syntax errors keep serde_json's position; structural ones get a path.
fn decode_error(err: &serde_json::Error, bytes: &[u8]) -> String {
    match (err.classify(), std::str::from_utf8(bytes)) {
        (serde_json::error::Category::Data, Ok(_)) => describe::<EnvelopeParts>(err, bytes),
        _ => err.to_string(),
    }
}

fn required_string(value: Option<Value>, field: &'static str) -> Result<String, SchemaError> {
    match value {
        None | Some(Value::Null) => Err(SchemaError::MissingField(field)),
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(wrong_type(field, &other, "a string")),
    }
}

fn wrong_type(field: &'static str, value: &Value, expected: &str) -> SchemaError {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    SchemaError::InvalidField {
        field,
        reason: format!("expected {expected}, found {found}"),
    }
}

fn invalid(field: &'static str, err: &serde_json::Error) -> SchemaError {
    SchemaError::InvalidField {
        field,
        reason: err.to_string(),
    }
}

/// `deserialize_with` for [`Envelope::account_id`]: a string or an integer,
/// never empty.
fn account_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = deserializer.deserialize_any(StringOrIntegerVisitor)?;
    if id.is_empty() {
        return Err(de::Error::invalid_value(
            Unexpected::Str(""),
            &"a non-empty account id",
        ));
    }
    Ok(id)
}

/// `deserialize_with` for the id lists of [`Audience`]: `null` is an empty
/// list; each id is a string or an integer.
fn ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    /// One id of the list.
    struct Id(String);

    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            string_or_integer(deserializer).map(Id)
        }
    }

    let list = Option::<Vec<Id>>::deserialize(deserializer)?;
    Ok(list
        .unwrap_or_default()
        .into_iter()
        .map(|Id(id)| id)
        .collect())
}

/// `deserialize_with` for [`Audience::roles`]: `null` is an empty list.
fn roles<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Schema of [`Envelope::account_id`].
struct AccountId;

impl schemars::JsonSchema for AccountId {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AccountId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "string", "pattern": NOT_BLANK },
                { "type": "integer" }
            ]
        })
    }
}

/// Schema of one id in [`Audience::users`] / [`Audience::contacts`].
struct AudienceId;

impl schemars::JsonSchema for AudienceId {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AudienceId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "integer"], "pattern": NOT_BLANK })
    }
}

/// Schema of one role in [`Audience::roles`].
struct RoleName;

impl schemars::JsonSchema for RoleName {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RoleName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": NOT_BLANK })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_ids_accept_integers_and_null() {
        let audience: Audience =
            serde_json::from_str(r#"{"users":[7,"8"],"contacts":null}"#).unwrap();
        assert_eq!(audience.users, ["7", "8"]);
        assert!(audience.contacts.is_empty());
        assert!(audience.roles.is_empty());
        assert!(!audience.is_empty());
    }

    #[test]
    fn derived_deserialize_agrees_with_decode() {
        let json = r#"{"id":"e","type":"tag.updated","account_id":42,"payload":{"a":1}}"#;
        let derived: Envelope = serde_json::from_str(json).unwrap();
        let decoded = Envelope::decode(json.as_bytes()).unwrap();
        assert_eq!(derived.account_id, "42");
        assert_eq!(decoded.account_id, "42");
        assert_eq!(derived.payload.get(), decoded.payload.get());
        let empty = r#"{"id":"e","type":"t","account_id":"","payload":{}}"#;
        assert!(serde_json::from_str::<Envelope>(empty).is_err());
    }
}
