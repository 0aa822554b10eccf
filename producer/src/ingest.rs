//! `POST /v1/events`: validate, publish to the family's topic keyed by
//! account through an idempotent producer (`acks=all`), and answer with each
//! event's topic, partition and offset once Kafka acknowledged it.
//!
//! A batch is all or nothing at validation: one invalid event refuses the
//! request (400, a precise reason per event) and nothing is produced. An
//! event whose client-supplied id was produced for the same account inside
//! the idempotency window is answered with its first position instead of
//! being produced again.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use herald_runtime::trace;
use herald_schemas::{Envelope, Family};
use serde::Serialize;
use serde_json::{json, value::RawValue};
use utoipa::ToSchema;

use crate::{
    idempotency::{Claim, EventKey},
    openapi::{ErrorBody, EventsRequest},
    publish::{Produced, Trace, describe_span},
    server::AppState,
};

/// One event's problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventError {
    /// Index of the event in the request (0 for a single event).
    pub index: usize,
    /// The event's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// `200` answer: where every event landed, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsResponse {
    /// One result per event.
    pub results: Vec<Produced>,
}

/// `400` answer for invalid events.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidEventsResponse {
    /// `invalid events; nothing was published`.
    pub error: String,
    /// One entry per invalid event.
    pub errors: Vec<EventError>,
}

/// `503` answer: Kafka did not acknowledge every event.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnavailableResponse {
    /// What happened.
    pub error: String,
    /// The events that were acknowledged.
    pub results: Vec<Produced>,
    /// The events that were not (retry them with the same ids).
    pub errors: Vec<EventError>,
}

/// API errors, each a client-visible JSON body.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not an event or an array of events.
    BadRequest(String),
    /// The body is larger than `--max-body-bytes`.
    TooLarge(usize),
    /// Some events are invalid; nothing was produced.
    Invalid(Vec<EventError>),
    /// Kafka did not acknowledge every event.
    Unavailable {
        produced: Vec<Produced>,
        failed: Vec<EventError>,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(reason) => {
                (StatusCode::BAD_REQUEST, Json(json!({"error": reason}))).into_response()
            }
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"error": format!("request body exceeds {limit} bytes")})),
            )
                .into_response(),
            ApiError::Invalid(errors) => (
                StatusCode::BAD_REQUEST,
                Json(InvalidEventsResponse {
                    error: "invalid events; nothing was published".into(),
                    errors,
                }),
            )
                .into_response(),
            ApiError::Unavailable { produced, failed } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(UnavailableResponse {
                    error:
                        "Kafka did not acknowledge every event; retry the failed ones (same ids)"
                            .into(),
                    results: produced,
                    errors: failed,
                }),
            )
                .into_response(),
        }
    }
}

/// Read a request body, answering 413 beyond the limit.
pub(crate) fn body_or_error(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })
}

/// Publish events.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(content = EventsRequest, description = "One event or an array of events"),
    responses(
        (status = 200, description = "Every event was acknowledged by Kafka", body = EventsResponse),
        (status = 400, description = "Not JSON, empty, too many events, or invalid events (nothing was published)", body = InvalidEventsResponse),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "The token lacks `events:write`", body = ErrorBody),
        (status = 413, description = "Body larger than `--max-body-bytes`", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge every event", body = UnavailableResponse),
    ),
    security(("api_key" = []), ("jwt" = ["events:write"]))
)]
pub async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The request's trace continues in every record it publishes (or a new
    // trace starts); the response names the publishing span, which ends
    // once Kafka acknowledged every event (or failed to).
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (trace, mut span) = Trace::begin(
        state.publisher.otlp(),
        "publish",
        header(trace::TRACEPARENT),
        header(trace::TRACESTATE),
    );
    let result = match body_or_error(body, state.max_body_bytes) {
        Ok(body) => ingest(&state, &body, &trace).await,
        Err(e) => Err(e),
    };
    if span.is_recording() {
        match &result {
            Ok(results) => describe_span(&mut span, results),
            Err(ApiError::Unavailable { produced, failed }) => {
                describe_span(&mut span, produced);
                span.fail(format!("Kafka did not acknowledge {} events", failed.len()));
            }
            Err(ApiError::Invalid(errors)) => span.fail(format!("{} invalid events", errors.len())),
            Err(ApiError::BadRequest(reason)) => span.fail(reason.clone()),
            Err(ApiError::TooLarge(limit)) => span.fail(format!("body over {limit} bytes")),
        }
    }
    span.end();
    let mut response = match result {
        Ok(results) => (StatusCode::OK, Json(EventsResponse { results })).into_response(),
        Err(e) => {
            if let ApiError::Invalid(errors) = &e {
                state
                    .metrics
                    .events_invalid
                    .with_label_values(&["/v1/events"])
                    .inc_by(errors.len() as u64);
            }
            e.into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&trace.parent.to_string()) {
        response.headers_mut().insert(trace::TRACEPARENT, value);
    }
    response
}

/// Split a body into its events: one JSON object, or an array of them.
fn split_events(body: &[u8], max_batch: usize) -> Result<Vec<Box<RawValue>>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let items = match first {
        Some(b'[') => serde_json::from_slice::<Vec<Box<RawValue>>>(body).map_err(|e| {
            ApiError::BadRequest(format!("body is not a JSON array of events: {e}"))
        })?,
        Some(b'{') => vec![
            serde_json::from_slice::<Box<RawValue>>(body)
                .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?,
        ],
        _ => {
            return Err(ApiError::BadRequest(
                "body must be a JSON event object or an array of them".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest("empty batch".into()));
    }
    if items.len() > max_batch {
        return Err(ApiError::BadRequest(format!(
            "batch of {} events exceeds the limit of {max_batch}",
            items.len()
        )));
    }
    Ok(items)
}

/// A decoded, validated event ready to produce.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The envelope, with `id` and `occurred_at` filled in.
    pub envelope: Envelope,
    /// Its family (= topic).
    pub family: Family,
    /// Whether the id came with the event (only such ids can be retried).
    pub id_supplied: bool,
}

/// Fill in a missing `id` (UUIDv7) and `occurred_at` (now), then decode and validate.
pub fn prepare(raw: &RawValue) -> Result<(Envelope, Family), (Option<String>, String)> {
    prepare_with(raw, &uuid::Uuid::now_v7().to_string(), &now_rfc3339())
        .map(|p| (p.envelope, p.family))
}

/// Like [`prepare`], with the `id` and `occurred_at` to use when missing.
pub fn prepare_with(
    raw: &RawValue,
    default_id: &str,
    default_occurred_at: &str,
) -> Result<Prepared, (Option<String>, String)> {
    let mut fields: HashMap<String, Box<RawValue>> = serde_json::from_str(raw.get())
        .map_err(|e| (None, format!("event must be a JSON object: {e}")))?;
    let id = fields
        .get("id")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    let id_supplied = fields.contains_key("id");
    if !id_supplied {
        fields.insert("id".into(), raw_string(default_id));
    }
    if !fields.contains_key("occurred_at") {
        fields.insert("occurred_at".into(), raw_string(default_occurred_at));
    }
    let text = serde_json::to_string(&fields).map_err(|e| (id.clone(), e.to_string()))?;
    let envelope = Envelope::decode(text.as_bytes()).map_err(|e| (id.clone(), e.to_string()))?;
    if envelope.id.trim().is_empty() {
        return Err((id, "`id` must not be blank".into()));
    }
    let family = herald_schemas::validate(&envelope).map_err(|e| (id, e.to_string()))?;
    Ok(Prepared {
        envelope,
        family,
        id_supplied,
    })
}

/// Now as RFC 3339 (UTC, milliseconds).
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format).unwrap_or_default()
}

fn raw_string(s: &str) -> Box<RawValue> {
    // A JSON string literal is always valid JSON.
    serde_json::value::to_raw_value(s).unwrap_or_else(|_| Box::<RawValue>::default())
}

async fn ingest(state: &AppState, body: &[u8], trace: &Trace) -> Result<Vec<Produced>, ApiError> {
    let items = split_events(body, state.max_batch)?;
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let now = now_rfc3339();
    for (index, raw) in items.iter().enumerate() {
        match prepare_with(raw, &uuid::Uuid::now_v7().to_string(), &now) {
            Ok(ok) => events.push(ok),
            Err((id, reason)) => errors.push(EventError { index, id, reason }),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let sends = events.iter().map(|p| produce_once(state, p, trace));
    // Polled together, so every record is handed to the client (in order)
    // before the first acknowledgement is awaited.
    let outcomes = futures_util::future::join_all(sends).await;
    let mut produced = Vec::with_capacity(outcomes.len());
    let mut failed = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(p) => produced.push(p),
            Err(reason) => failed.push(EventError {
                index,
                id: Some(events[index].envelope.id.clone()),
                reason,
            }),
        }
    }
    if failed.is_empty() {
        Ok(produced)
    } else {
        Err(ApiError::Unavailable { produced, failed })
    }
}

/// Produce an event unless its (account, id) was produced inside the
/// idempotency window.
async fn produce_once(state: &AppState, p: &Prepared, trace: &Trace) -> Result<Produced, String> {
    let guard = if p.id_supplied {
        let key = EventKey::new(&p.envelope.account_id, &p.envelope.id);
        match state.idempotency.claim(&key).await {
            Claim::Replay(first) => {
                state.metrics.idempotent_replays.inc();
                return Ok(first);
            }
            Claim::Produce(guard) => Some(guard),
            Claim::Disabled => None,
        }
    } else {
        None
    };
    match state
        .publisher
        .send_envelope(&p.envelope, p.family, trace)
        .await
    {
        Ok(produced) => {
            if let Some(guard) = guard {
                guard.complete(&produced);
            }
            Ok(produced)
        }
        Err(e) => {
            tracing::warn!(error = %e, event_type = %p.envelope.event_type, "produce failed");
            state.publisher.renew_if_fatal();
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn fills_missing_id_and_time_from_defaults() {
        let p = prepare_with(
            &raw(r#"{"type":"tag.updated","account_id":7,"payload":{"id":"t","name":"n","color":"c"}}"#),
            "row-1",
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
        assert_eq!(p.envelope.id, "row-1");
        assert_eq!(p.envelope.account_id, "7");
        assert_eq!(
            p.envelope.occurred_at.as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert!(!p.id_supplied);
        assert_eq!(p.family, Family::Tag);
    }

    #[test]
    fn keeps_supplied_id_and_reports_problems() {
        let p = prepare_with(
            &raw(r#"{"id":"mine","type":"tag.updated","account_id":"7","payload":{"id":"t","name":"n","color":"c"}}"#),
            "row-1",
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
        assert_eq!(p.envelope.id, "mine");
        assert!(p.id_supplied);
        let (id, reason) = prepare_with(
            &raw(r#"{"id":"e","type":"nope","account_id":"7","payload":{}}"#),
            "d",
            "x",
        )
        .unwrap_err();
        assert_eq!(id.as_deref(), Some("e"));
        assert!(reason.contains("nope"), "{reason}");
        assert!(prepare_with(&raw("[1]"), "d", "x").is_err());
        assert!(prepare_with(&raw(r#""text""#), "d", "x").is_err());
        assert!(
            prepare_with(&raw(r#"{"id":" ","type":"tag.updated","account_id":"7","payload":{"id":"t","name":"n","color":"c"}}"#), "d", "x")
                .is_err()
        );
    }

    #[test]
    fn splits_bodies() {
        assert_eq!(split_events(b" [{}, {}]", 5).unwrap().len(), 2);
        assert_eq!(split_events(b"{}", 5).unwrap().len(), 1);
        assert!(split_events(b"[]", 5).is_err());
        assert!(split_events(b"[{},{}]", 1).is_err());
        assert!(split_events(b"42", 5).is_err());
        assert!(split_events(b"{", 5).is_err());
    }
}
