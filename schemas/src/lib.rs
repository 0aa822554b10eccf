//! Herald's event vocabulary, free of I/O: the [`Envelope`] of every Kafka
//! record, a typed payload for every event of the catalogue, the mapping from
//! event type to [`Family`] (= topic), validation with precise errors, and
//! the JSON Schema of every topic.
//!
//! The producer validates with [`Envelope::decode`] and [`validate`]; the
//! gateway routes with [`family_of`] and renders from the typed payloads in
//! [`airy`], [`chatwoot`], [`pulse`] and [`typeid`]. Unknown extra fields are
//! always tolerated, and payload bytes are passed through untouched.
//!
//! ```
//! use herald_schemas::{Envelope, Family, validate};
//!
//! let record = br#"{"id":"e1","type":"tag.updated","account_id":42,
//!     "payload":{"id":"t1","name":"flag","color":"tag-red"}}"#;
//! let envelope = Envelope::decode(record).unwrap();
//! assert_eq!(envelope.account_id, "42");
//! assert_eq!(validate(&envelope).unwrap(), Family::Tag);
//! assert_eq!(Family::Tag.topic("herald."), "herald.tag");
//! ```

pub mod airy;
mod catalogue;
pub mod chatwoot;
mod envelope;
mod error;
mod family;
pub mod identity;
mod json;
mod message;
pub mod pulse;
mod scalar;
mod schema;
pub mod typeid;

pub use catalogue::{event_types, family_of, subject_fields, validate, validate_payload};
pub use envelope::{Audience, Envelope};
pub use error::SchemaError;
pub use family::Family;
pub use identity::{IdentityKind, IdentityRecord, identities_topic, is_valid_token, token_key};
pub use message::MessagePayload;
pub use scalar::{AnyObject, IntOrString, LongLike};
pub use schema::{topic_schema, topic_schema_text};
