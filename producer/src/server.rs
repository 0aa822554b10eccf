//! Wiring: the HTTP API (events, identities, OpenAPI), the ops listener
//! (`/healthz`, `/readyz`, `/metrics`), Kafka readiness, and the outbox
//! relay when `--outbox-database-url` is set.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use herald_runtime::{OpsServer, Readiness};
use rdkafka::producer::Producer;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{self, Authenticator, Scope},
    config::ProducerConfig,
    idempotency::IdempotencyCache,
    identities, ingest,
    metrics::Metrics,
    outbox::{self, OutboxRelay, OutboxTable},
    publish::Publisher,
};

/// A running producer.
pub struct ProducerHandle {
    /// Bound API address.
    pub addr: SocketAddr,
    /// Bound ops address.
    pub ops_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ProducerHandle {
    /// Wait until the producer (API and relay) has stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// What every API handler shares.
pub struct AppState {
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Metrics,
    pub(crate) max_batch: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) idempotency: IdempotencyCache,
}

/// Start the producer; returns once its listeners are bound (and, with
/// `--outbox-migrate`, the outbox migrations are applied).
pub async fn start(
    config: ProducerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<ProducerHandle> {
    config.validate()?;
    let metrics = Metrics::new();
    let otlp = herald_runtime::otlp::Otlp::start(&config.otlp, "herald-producer")?;
    let publisher = Publisher::create(
        &config.kafka,
        config.produce_timeout(),
        "herald-producer",
        metrics.clone(),
    )?
    .with_otlp(otlp.clone());
    let readiness = Readiness::default();
    let kafka_ready = readiness.condition("kafka");
    tokio::spawn(watch_kafka(
        publisher.clone(),
        kafka_ready,
        shutdown.clone(),
    ));

    let relay = match &config.outbox_database_url {
        Some(url) => {
            let table = OutboxTable::new(&config.outbox_schema, &config.outbox_table)?;
            if config.outbox_migrate {
                let applied = outbox::migrate::run(url.expose(), &table).await?;
                tracing::info!(table = %table, applied, "outbox migrations applied");
            }
            let mut settings = outbox::RelaySettings::from_config(&config, table)
                .ok_or_else(|| anyhow::anyhow!("--outbox-database-url is not a valid URL"))?;
            settings.otlp = otlp.clone();
            let relay = OutboxRelay::new(settings, metrics.clone(), readiness.condition("outbox"));
            Some(tokio::spawn(relay.run(shutdown.child_token())))
        }
        None => None,
    };

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

    let auth = Arc::new(Authenticator::from_config(&config, metrics.clone()));
    if auth.is_open() {
        tracing::warn!(
            "the producer API accepts unauthenticated requests (--allow-unauthenticated)"
        );
    } else if !config.has_api_credentials() {
        tracing::warn!(
            "no --api-key or --api-jwt-secret: the producer API refuses every request with 401"
        );
    }
    let state = Arc::new(AppState {
        publisher: publisher.clone(),
        metrics: metrics.clone(),
        max_batch: config.max_batch,
        max_body_bytes: config.max_body_bytes,
        idempotency: IdempotencyCache::new(
            Duration::from_secs(config.idempotency_window_secs),
            config.idempotency_max_entries,
        ),
    });
    let app = router(state, auth, metrics, config.max_body_bytes);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(herald_runtime::tls::server_config(c, k)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let task = tokio::spawn(async move {
        let served = match tls {
            Some(tls) => match herald_runtime::tls::TlsListener::new(
                listener,
                tls,
                std::time::Duration::from_secs(10),
                |tcp| {
                    let _ = tcp.set_nodelay(true);
                },
            ) {
                Ok(l) => {
                    axum::serve(l, app)
                        .with_graceful_shutdown(shutdown.cancelled_owned())
                        .await
                }
                Err(e) => Err(e),
            },
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "producer listener failed");
        }
        // Deliver whatever is still in flight before exiting.
        let producer = publisher.producer();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        // The last spans go to the collector too.
        otlp.shutdown().await;
        tracing::info!("producer stopped");
    });
    tracing::info!(%addr, %ops_addr, "producer listening");
    Ok(ProducerHandle {
        addr,
        ops_addr,
        task,
    })
}

fn router(
    state: Arc<AppState>,
    auth: Arc<Authenticator>,
    metrics: Metrics,
    max_body_bytes: usize,
) -> Router {
    let events = middleware::from_fn_with_state((auth.clone(), Scope::EventsWrite), auth::require);
    let identities = middleware::from_fn_with_state((auth, Scope::IdentitiesWrite), auth::require);
    // Inside the credential check: 401 comes before 413.
    let oversize = middleware::from_fn_with_state(max_body_bytes, refuse_announced_oversize);
    Router::new()
        .route(
            "/v1/events",
            post(ingest::post_events)
                .route_layer(oversize.clone())
                .route_layer(events),
        )
        .route(
            "/v1/identities",
            post(identities::post_identity)
                .put(identities::put_identity)
                .delete(identities::delete_identity_body)
                .route_layer(oversize.clone())
                .route_layer(identities.clone()),
        )
        .route(
            "/v1/identities/{token}",
            delete(identities::delete_identity_path)
                .route_layer(oversize)
                .route_layer(identities),
        )
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route_layer(middleware::from_fn_with_state(metrics, count_requests))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_text(),
    )
        .into_response()
}

/// Most bytes read and discarded from a refused oversized body so that the
/// client, still sending, gets to read the 413 (beyond it the connection is
/// simply closed).
const DRAIN_LIMIT: u64 = 64 << 20;

/// Refuse a body whose `Content-Length` is over the limit before any of it
/// is parsed, and read the rest of it before answering: a server that
/// answers 413 and closes while the client is still uploading makes the
/// client's kernel see a reset, and most clients then report a send error
/// instead of the 413 (seen as an intermittent test failure with reqwest).
async fn refuse_announced_oversize(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = announced.filter(|n| *n > limit as u64) else {
        return next.run(request).await;
    };
    if length <= DRAIN_LIMIT {
        use futures_util::StreamExt;
        let mut body = request.into_body().into_data_stream();
        let drain = async { while let Some(Ok(_)) = body.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    ingest::ApiError::TooLarge(limit).into_response()
}

/// Count every routed request by route template and status.
async fn count_requests(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".to_owned());
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

/// Keep the readiness flag in step with the broker's reachability.
async fn watch_kafka(publisher: Publisher, ready: Arc<AtomicBool>, shutdown: CancellationToken) {
    loop {
        publisher.renew_if_fatal();
        let p = publisher.producer();
        let ok = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(5))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        ready.store(ok, Ordering::Release);
        let wait = if ok {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
