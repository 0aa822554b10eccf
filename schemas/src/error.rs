//! The one error type of this crate.
//!
//! Every message names what was wrong precisely enough to be returned to the
//! sender of an event as-is (the producer answers HTTP 400 with it).

/// Why an envelope or a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The bytes are not JSON, or not a JSON object where one is required.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A required envelope field is absent (or `null`).
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// The event `type` is not in the catalogue.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The payload does not have the shape its event type requires.
    #[error("invalid payload for `{event_type}`: {reason}")]
    InvalidPayload {
        /// The event type whose payload was checked.
        event_type: String,
        /// What is wrong, with the JSON path of the offending value.
        reason: String,
    },
    /// An envelope field is present but its value is not acceptable.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The envelope field (`id`, `type`, `account_id`, `occurred_at`, `audience`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
