//! The identities API: register and revoke opaque tokens (Chatwoot-style
//! `pubsub_token`, TypeID `SessionID`) on the compacted `<prefix>identities`
//! topic that every gateway pod reads.
//!
//! - `PUT /v1/identities` registers a token the backend chose;
//! - `POST /v1/identities` generates a token (244 random bits, hex) and returns it;
//! - `DELETE /v1/identities/{token}`, or `DELETE /v1/identities` with
//!   `{"token": ...}` or `{"key": "<sha256 hex>"}`, writes a tombstone.
//!
//! The record key is [`token_key`] of the token, never the token itself.
//! Every answer comes after Kafka acknowledged the record.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use herald_schemas::{IdentityKind, IdentityRecord, identities_topic, token_key};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::json;
use utoipa::ToSchema;

use crate::{ingest::body_or_error, openapi::ErrorBody, server::AppState};

/// Whether the holder is staff of the account or one of its contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An agent or administrator.
    User,
    /// An end customer.
    Contact,
}

/// Who a token stands for.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct IdentityFields {
    /// The account (string or integer).
    #[serde(deserialize_with = "string_or_integer")]
    #[schema(value_type = String, example = "42")]
    pub account_id: String,
    /// User or contact.
    pub kind: Kind,
    /// The user's or contact's id (string or integer).
    #[serde(deserialize_with = "string_or_integer")]
    #[schema(value_type = String, example = "7")]
    pub id: String,
    /// `agent` (default for users), `admin` or `contact` (the only role, and
    /// the default, for contacts).
    #[serde(default)]
    pub role: Option<String>,
    /// RFC 3339 instant after which gateways refuse the token.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Contacts: the conversations they take part in.
    #[serde(default, deserialize_with = "strings_or_integers")]
    #[schema(value_type = Vec<String>)]
    pub conversations: Vec<String>,
}

/// `PUT /v1/identities` body: a token and who it stands for.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PutIdentity {
    /// The opaque token (16 to 1024 printable characters).
    pub token: String,
    /// Who it stands for.
    #[serde(flatten)]
    pub identity: IdentityFields,
}

/// `DELETE /v1/identities` body: the token, or its key.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RevokeIdentity {
    /// The token to revoke.
    #[serde(default)]
    pub token: Option<String>,
    /// Or its key: lowercase hex SHA-256 of the token.
    #[serde(default)]
    pub key: Option<String>,
}

/// Where an identity record landed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdentityWritten {
    /// Record key: lowercase hex SHA-256 of the token.
    pub key: String,
    /// The identities topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// `POST /v1/identities` answer: the generated token and where it landed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IdentityCreated {
    /// The generated token: give it to the client; Herald keeps only its hash.
    pub token: String,
    /// Record key: lowercase hex SHA-256 of the token.
    pub key: String,
    /// The identities topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body is too large.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// Kafka did not acknowledge.
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for IdentityError {
    fn into_response(self) -> Response {
        let status = match &self {
            IdentityError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IdentityError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IdentityError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

fn string_or_integer<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("expected a string or an integer")),
    }
}

fn strings_or_integers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct One(#[serde(deserialize_with = "string_or_integer")] String);
    Ok(Option::<Vec<One>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.0)
        .collect())
}

impl IdentityFields {
    /// Check the fields and build the record the gateways read.
    pub fn into_record(self) -> Result<IdentityRecord, IdentityError> {
        let bad = |m: &str| Err(IdentityError::BadRequest(m.to_owned()));
        for (name, value) in [("account_id", &self.account_id), ("id", &self.id)] {
            if value.trim().is_empty() || value.len() > 256 {
                return Err(IdentityError::BadRequest(format!(
                    "`{name}` must be 1 to 256 characters"
                )));
            }
        }
        let role = match (self.kind, self.role.as_deref()) {
            (Kind::User, None) => "agent",
            (Kind::User, Some(r @ ("agent" | "admin"))) => r,
            (Kind::User, Some(_)) => return bad("a user's `role` must be `agent` or `admin`"),
            (Kind::Contact, None | Some("contact")) => "contact",
            (Kind::Contact, Some(_)) => return bad("a contact's `role` must be `contact`"),
        };
        if let Some(at) = &self.expires_at
            && time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .is_err()
        {
            return bad("`expires_at` must be an RFC 3339 instant");
        }
        Ok(IdentityRecord {
            account_id: self.account_id,
            kind: match self.kind {
                Kind::User => IdentityKind::User,
                Kind::Contact => IdentityKind::Contact,
            },
            id: self.id,
            role: role.to_owned(),
            expires_at: self.expires_at,
            conversations: self.conversations,
        })
    }
}

fn check_token(token: &str) -> Result<(), IdentityError> {
    if herald_schemas::is_valid_token(token) {
        Ok(())
    } else {
        Err(IdentityError::BadRequest(
            "`token` must be 16 to 1024 printable ASCII characters without spaces".into(),
        ))
    }
}

fn is_key(key: &str) -> bool {
    key.len() == 64
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh token: 64 hex characters holding 244 random bits.
pub fn generate_token() -> String {
    // UUIDv4s come from the operating system's CSPRNG, 122 random bits each.
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn parse<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, IdentityError> {
    let body = body_or_error(body, state.max_body_bytes).map_err(|e| match e {
        crate::ingest::ApiError::TooLarge(n) => IdentityError::TooLarge(n),
        other => IdentityError::BadRequest(format!("{other:?}")),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| IdentityError::BadRequest(format!("invalid request body: {e}")))
}

async fn write(
    state: &AppState,
    key: &str,
    record: Option<&IdentityRecord>,
    operation: &str,
) -> Result<IdentityWritten, IdentityError> {
    let topic = identities_topic(state.publisher.topic_prefix());
    let value = record
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| IdentityError::BadRequest(e.to_string()))?;
    let position = state
        .publisher
        .send_keyed(&topic, key, value.as_deref())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, topic, "identity produce failed");
            state.publisher.renew_if_fatal();
            IdentityError::Unavailable(e.to_string())
        })?;
    state
        .metrics
        .identities
        .with_label_values(&[operation])
        .inc();
    Ok(IdentityWritten {
        key: key.to_owned(),
        topic,
        partition: position.partition,
        offset: position.offset,
    })
}

/// Register (or replace) a token chosen by the backend.
#[utoipa::path(
    put,
    path = "/v1/identities",
    tag = "identities",
    request_body = PutIdentity,
    responses(
        (status = 200, description = "Acknowledged by Kafka", body = IdentityWritten),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The token lacks `identities:write`", body = ErrorBody),
        (status = 413, description = "Body larger than `--max-body-bytes`", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
    ),
    security(("api_key" = []), ("jwt" = ["identities:write"]))
)]
pub async fn put_identity(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IdentityWritten>, IdentityError> {
    let request: PutIdentity = parse(&state, body)?;
    check_token(&request.token)?;
    let record = request.identity.into_record()?;
    let written = write(
        &state,
        &token_key(&request.token),
        Some(&record),
        "register",
    )
    .await?;
    Ok(Json(written))
}

/// Register a new identity under a generated token.
#[utoipa::path(
    post,
    path = "/v1/identities",
    tag = "identities",
    request_body = IdentityFields,
    responses(
        (status = 201, description = "Acknowledged by Kafka; the token is in the answer", body = IdentityCreated),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The token lacks `identities:write`", body = ErrorBody),
        (status = 413, description = "Body larger than `--max-body-bytes`", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
    ),
    security(("api_key" = []), ("jwt" = ["identities:write"]))
)]
pub async fn post_identity(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IdentityCreated>), IdentityError> {
    let fields: IdentityFields = parse(&state, body)?;
    let record = fields.into_record()?;
    let token = generate_token();
    let w = write(&state, &token_key(&token), Some(&record), "register").await?;
    Ok((
        StatusCode::CREATED,
        Json(IdentityCreated {
            token,
            key: w.key,
            topic: w.topic,
            partition: w.partition,
            offset: w.offset,
        }),
    ))
}

/// Revoke a token (a tombstone on the identities topic).
#[utoipa::path(
    delete,
    path = "/v1/identities/{token}",
    tag = "identities",
    params(("token" = String, Path, description = "The token to revoke")),
    responses(
        (status = 200, description = "Tombstone acknowledged by Kafka", body = IdentityWritten),
        (status = 400, description = "Invalid token", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The token lacks `identities:write`", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
    ),
    security(("api_key" = []), ("jwt" = ["identities:write"]))
)]
pub async fn delete_identity_path(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Result<Json<IdentityWritten>, IdentityError> {
    check_token(&token)?;
    Ok(Json(
        write(&state, &token_key(&token), None, "revoke").await?,
    ))
}

/// Revoke a token given in the body, or by its key (tokens stay out of URLs and logs).
#[utoipa::path(
    delete,
    path = "/v1/identities",
    tag = "identities",
    request_body = RevokeIdentity,
    responses(
        (status = 200, description = "Tombstone acknowledged by Kafka", body = IdentityWritten),
        (status = 400, description = "Neither a valid `token` nor `key`", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The token lacks `identities:write`", body = ErrorBody),
        (status = 413, description = "Body larger than `--max-body-bytes`", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
    ),
    security(("api_key" = []), ("jwt" = ["identities:write"]))
)]
pub async fn delete_identity_body(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IdentityWritten>, IdentityError> {
    let request: RevokeIdentity = parse(&state, body)?;
    let key = match (request.token, request.key) {
        (Some(token), None) => {
            check_token(&token)?;
            token_key(&token)
        }
        (None, Some(key)) if is_key(&key) => key,
        (None, Some(_)) => {
            return Err(IdentityError::BadRequest(
                "`key` must be 64 lowercase hex characters (SHA-256 of the token)".into(),
            ));
        }
        _ => {
            return Err(IdentityError::BadRequest(
                "give exactly one of `token` or `key`".into(),
            ));
        }
    };
    Ok(Json(write(&state, &key, None, "revoke").await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Result<IdentityRecord, String> {
        serde_json::from_str::<IdentityFields>(json)
            .map_err(|e| e.to_string())?
            .into_record()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn records_are_checked_and_defaulted() {
        let r = fields(r#"{"account_id":42,"kind":"user","id":7}"#).unwrap();
        assert_eq!(
            (r.account_id.as_str(), r.id.as_str(), r.role.as_str()),
            ("42", "7", "agent")
        );
        let c = fields(r#"{"account_id":"1","kind":"contact","id":"c9","conversations":[5,"6"]}"#)
            .unwrap();
        assert_eq!(c.role, "contact");
        assert_eq!(c.conversations, vec!["5", "6"]);
        assert!(fields(r#"{"account_id":"1","kind":"contact","id":"c","role":"admin"}"#).is_err());
        assert!(fields(r#"{"account_id":"1","kind":"user","id":"u","role":"root"}"#).is_err());
        assert!(fields(r#"{"account_id":"","kind":"user","id":"u"}"#).is_err());
        assert!(fields(r#"{"account_id":"1","kind":"robot","id":"u"}"#).is_err());
        assert!(
            fields(r#"{"account_id":"1","kind":"user","id":"u","expires_at":"tomorrow"}"#).is_err()
        );
        assert!(
            fields(
                r#"{"account_id":"1","kind":"user","id":"u","expires_at":"2030-01-01T00:00:00Z"}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn tokens_and_keys() {
        let t = generate_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, generate_token());
        assert!(check_token(&t).is_ok());
        assert!(check_token("short").is_err());
        assert!(check_token("has a space in it, long enough").is_err());
        assert!(is_key(&token_key("x")));
        assert!(!is_key("ABC"));
    }
}
