//! The OpenAPI 3.1 document of the producer API, generated from the handlers
//! and types with `utoipa`, served at `/openapi.json` and checked in as
//! `producer/openapi.json` (a test fails when the two drift; regenerate with
//! `HERALD_BLESS=1 cargo test -p herald-producer --test openapi`).

use serde::Deserialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// An error answer.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong (`unauthorized` and `forbidden` for auth failures).
    pub error: String,
    /// Why, for auth failures.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Who may receive an event inside its account.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AudienceInput {
    /// User (agent/admin) ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Contact ids.
    #[serde(default)]
    pub contacts: Vec<String>,
    /// Role names (`agent`, `admin`).
    #[serde(default)]
    pub roles: Vec<String>,
}

/// One event envelope. The payload of each `type` is described by the
/// JSON Schema of its topic in `schemas/json/<family>.json`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EventInput {
    /// Unique event id; a UUIDv7 is generated when missing. Retrying with the
    /// same id for the same `account_id` inside the idempotency window does
    /// not produce a second record (the same id for another account is
    /// another event).
    #[serde(default)]
    pub id: Option<String>,
    /// The event name (`message.created`, `added_message`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The account (string or integer); also the Kafka record key.
    #[schema(value_type = String, example = "42")]
    pub account_id: serde_json::Value,
    /// When the event happened, RFC 3339; now when missing.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
    /// Narrows delivery inside the account.
    #[serde(default)]
    pub audience: Option<AudienceInput>,
    /// The event object exactly as the client protocol shows it.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// One event, or an array of events (published all or nothing at validation).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventsRequest {
    /// A single event.
    One(EventInput),
    /// A batch.
    Many(Vec<EventInput>),
}

/// Adds the two security schemes.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "A static API key (`--api-key`); `Authorization: Bearer <key>` works too. Grants every scope.",
            ))),
        );
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with `--api-jwt-secret`; its `scope` claim lists `events:write` and/or `identities:write`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The producer API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald producer API",
        description = "Publish events to Herald's Kafka topics and manage opaque-token identities. \
                       Every answer is sent after Kafka acknowledged the records."
    ),
    paths(
        crate::ingest::post_events,
        crate::identities::put_identity,
        crate::identities::post_identity,
        crate::identities::delete_identity_body,
        crate::identities::delete_identity_path,
    ),
    components(schemas(ErrorBody, EventInput, EventsRequest, AudienceInput)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "events", description = "Event ingest"),
        (name = "identities", description = "Opaque tokens on the identities topic"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    text.push('\n');
    text
}
