//! Opaque-token identities: the records of the compacted `<prefix>identities`
//! topic. The key is [`token_key`] of the token (never the token itself); the
//! value is an [`IdentityRecord`]; a tombstone (null value) revokes the token.
//! Every gateway pod keeps the table in memory.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Topic suffix of the identities table.
pub const IDENTITIES_SUFFIX: &str = "identities";

/// Whether the holder is staff of the account or one of its contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// An agent or administrator.
    User,
    /// An end customer.
    Contact,
}

/// Who an opaque token (`pubsub_token`, TypeID `SessionID`) stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IdentityRecord {
    /// The account the token belongs to.
    pub account_id: String,
    /// User or contact.
    pub kind: IdentityKind,
    /// The user's or contact's id.
    pub id: String,
    /// `agent`, `admin` or `contact`.
    pub role: String,
    /// RFC 3339 instant after which the token is no longer accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Contact tokens: the conversations this contact takes part in (Chatwoot
    /// contact sessions only receive events of their own conversations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conversations: Vec<String>,
}

/// Whether `token` can be an opaque token at all: 16 to 1024 printable
/// ASCII characters, no spaces (the identities API registers nothing else).
pub fn is_valid_token(token: &str) -> bool {
    (16..=1024).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The record key of a token: lowercase hex SHA-256 of its bytes.
pub fn token_key(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// The identities topic name for a prefix.
pub fn identities_topic(prefix: &str) -> String {
    format!("{prefix}{IDENTITIES_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_key_is_sha256_hex() {
        assert_eq!(
            token_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn record_round_trips() {
        let r: IdentityRecord = serde_json::from_str(
            r#"{"account_id":"1","kind":"contact","id":"c9","role":"contact","extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.kind, IdentityKind::Contact);
        assert!(r.conversations.is_empty());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"account_id":"1","kind":"contact","id":"c9","role":"contact"}"#
        );
    }
}
