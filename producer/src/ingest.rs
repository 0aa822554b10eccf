//! `POST /v1/events`: validate, publish to the family's topic keyed by
//! account through an idempotent producer (`acks=all`), and answer with each
//! event's topic, partition and offset once Kafka acknowledged it.
//!
//! A batch is all or nothing at validation: one invalid event refuses the
//! request (400, a precise reason per event) and nothing is produced.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use herald_runtime::{OpsServer, Readiness};
use herald_schemas::{Envelope, Family};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde::Serialize;
use serde_json::{json, value::RawValue};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{config::ProducerConfig, metrics::Metrics};

/// A running producer.
pub struct ProducerHandle {
    /// Bound API address.
    pub addr: SocketAddr,
    /// Bound ops address.
    pub ops_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ProducerHandle {
    /// Wait until the producer has stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

struct AppState {
    producer: FutureProducer,
    metrics: Metrics,
    topic_prefix: String,
    max_batch: usize,
    timeout: Duration,
}

/// Build the idempotent Kafka producer.
pub fn create_producer(config: &ProducerConfig) -> anyhow::Result<FutureProducer> {
    let mut cfg = config.kafka.client_config()?;
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .set("client.id", "herald-producer");
    Ok(cfg.create()?)
}

/// Start the producer; returns once its listeners are bound.
pub async fn start(
    config: ProducerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<ProducerHandle> {
    config.validate()?;
    let producer = create_producer(&config)?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let kafka_ready = readiness.condition("kafka");
    tokio::spawn(watch_kafka(producer.clone(), kafka_ready, shutdown.clone()));

    let ops_addr = OpsServer {
        registry: metrics.registry.clone(),
        readiness,
    }
    .spawn(config.ops_listen, shutdown.child_token())
    .await
    .map_err(|e| anyhow::anyhow!("cannot bind ops listener {}: {e}", config.ops_listen))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind producer listener {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        producer: producer.clone(),
        metrics,
        topic_prefix: config.kafka.topic_prefix.clone(),
        max_batch: config.max_batch,
        timeout: config.produce_timeout(),
    });
    let app = Router::new()
        .route("/v1/events", post(post_events))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "producer listener failed");
        }
        // Deliver whatever is still in flight before exiting.
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        tracing::info!("producer stopped");
    });
    tracing::info!(%addr, %ops_addr, "producer listening");
    Ok(ProducerHandle {
        addr,
        ops_addr,
        task,
    })
}

/// Keep the readiness flag in step with the broker's reachability.
async fn watch_kafka(
    producer: FutureProducer,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let p = producer.clone();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(5))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        ready.store(ok, Ordering::Release);
        let wait = if ok {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One event's problem.
#[derive(Debug, Serialize)]
pub struct EventError {
    /// Index of the event in the request (0 for a single event).
    pub index: usize,
    /// The event's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Where an event landed.
#[derive(Debug, Serialize)]
pub struct Produced {
    /// Event id (generated when the request had none).
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// API errors, each a client-visible JSON body.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not an event or an array of events.
    BadRequest(String),
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
            ApiError::Invalid(errors) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid events; nothing was published", "errors": errors})),
            )
                .into_response(),
            ApiError::Unavailable { produced, failed } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": "Kafka did not acknowledge every event; retry the failed ones (same ids)",
                    "results": produced,
                    "errors": failed,
                })),
            )
                .into_response(),
        }
    }
}

async fn post_events(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let response = match ingest(&state, &body).await {
        Ok(results) => (StatusCode::OK, Json(json!({ "results": results }))).into_response(),
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
    state
        .metrics
        .requests
        .with_label_values(&["/v1/events", response.status().as_str()])
        .inc();
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

/// Fill in a missing `id` (UUIDv7) and `occurred_at` (now), then decode and validate.
pub fn prepare(raw: &RawValue) -> Result<(Envelope, Family), (Option<String>, String)> {
    let mut fields: HashMap<String, Box<RawValue>> = serde_json::from_str(raw.get())
        .map_err(|e| (None, format!("event must be a JSON object: {e}")))?;
    let id = fields
        .get("id")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    if !fields.contains_key("id") {
        let id = uuid::Uuid::now_v7().to_string();
        fields.insert("id".into(), raw_string(&id));
    }
    if !fields.contains_key("occurred_at") {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        fields.insert("occurred_at".into(), raw_string(&now));
    }
    let text = serde_json::to_string(&fields).map_err(|e| (id.clone(), e.to_string()))?;
    let envelope = Envelope::decode(text.as_bytes()).map_err(|e| (id.clone(), e.to_string()))?;
    let family = herald_schemas::validate(&envelope).map_err(|e| (id, e.to_string()))?;
    Ok((envelope, family))
}

fn raw_string(s: &str) -> Box<RawValue> {
    RawValue::from_string(serde_json::Value::from(s).to_string()).unwrap_or_else(|_| {
        // A JSON string literal is always valid JSON.
        RawValue::from_string("\"\"".into()).expect("valid literal")
    })
}

async fn ingest(state: &AppState, body: &[u8]) -> Result<Vec<Produced>, ApiError> {
    let items = split_events(body, state.max_batch)?;
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        match prepare(raw) {
            Ok(ok) => events.push(ok),
            Err((id, reason)) => errors.push(EventError { index, id, reason }),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let sends = events
        .iter()
        .map(|(envelope, family)| produce(state, envelope, *family));
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
                id: Some(events[index].0.id.clone()),
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

async fn produce(
    state: &AppState,
    envelope: &Envelope,
    family: Family,
) -> Result<Produced, String> {
    let topic = family.topic(&state.topic_prefix);
    let value = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "type",
            value: Some(envelope.event_type.as_bytes()),
        })
        .insert(Header {
            key: "account_id",
            value: Some(envelope.account_id.as_bytes()),
        })
        .insert(Header {
            key: "event_id",
            value: Some(envelope.id.as_bytes()),
        });
    let record = FutureRecord::to(&topic)
        .key(envelope.account_id.as_bytes())
        .payload(&value)
        .headers(headers);
    let started = Instant::now();
    match state.producer.send(record, state.timeout).await {
        Ok(delivery) => {
            state
                .metrics
                .produce_latency
                .observe(started.elapsed().as_secs_f64());
            state
                .metrics
                .events_produced
                .with_label_values(&[&topic])
                .inc();
            Ok(Produced {
                id: envelope.id.clone(),
                event_type: envelope.event_type.clone(),
                topic,
                partition: delivery.partition,
                offset: delivery.offset,
            })
        }
        Err((e, _)) => {
            tracing::warn!(error = %e, topic, "produce failed");
            Err(format!("Kafka did not acknowledge: {e}"))
        }
    }
}
