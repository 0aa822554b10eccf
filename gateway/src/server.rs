//! Wiring of a gateway pod: the consumer, the router, the WebSocket
//! endpoints, the ops server, and a graceful drain on shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router as HttpRouter,
    extract::{State, WebSocketUpgrade},
    http::HeaderMap,
    response::Response,
    routing::get,
};
use herald_runtime::{OpsServer, Readiness};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::JwtVerifier,
    config::GatewayConfig,
    consumer::{self, ConsumerSettings},
    metrics::Metrics,
    router::Router,
    stomp::{self, StompConfig, codec::Version},
};

/// What every connection task shares.
pub struct Context {
    /// Account -> recipients index.
    pub router: Arc<Router>,
    /// Metrics.
    pub metrics: Metrics,
    /// JWT verification.
    pub verifier: JwtVerifier,
    /// STOMP settings.
    pub stomp: StompConfig,
    /// Cancelled when the pod drains.
    pub shutdown: CancellationToken,
}

/// A running gateway.
pub struct GatewayHandle {
    /// Bound WebSocket address.
    pub ws_addr: SocketAddr,
    /// Bound ops address.
    pub ops_addr: SocketAddr,
    /// The shared context (tests inspect the router and metrics).
    pub context: Arc<Context>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl GatewayHandle {
    /// Begin a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Wait until the gateway has stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Start a gateway; returns once its listeners are bound. Cancelling
/// `shutdown` drains it.
pub async fn start(
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<GatewayHandle> {
    config.validate()?;
    let verifier = JwtVerifier::new(
        config.jwt_secret.as_deref(),
        &config.jwt_public_key_file,
        config.jwt_audience.as_deref(),
        config.jwt_issuer.as_deref(),
    )?;
    let metrics = Metrics::new();
    let router = Arc::new(Router::new());
    let readiness = Readiness::default();
    let kafka_ready = readiness.condition("kafka");

    let settings = ConsumerSettings {
        kafka: config.kafka.clone(),
        topics: config.topics()?,
        metadata_refresh: Duration::from_secs(config.metadata_refresh_secs.max(1)),
    };
    let kafka = consumer::create(&settings)?;

    let ops_addr = OpsServer {
        registry: metrics.registry.clone(),
        readiness,
    }
    .spawn(config.ops_listen, shutdown.child_token())
    .await
    .map_err(|e| anyhow::anyhow!("cannot bind ops listener {}: {e}", config.ops_listen))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind WebSocket listener {}: {e}", config.listen))?;
    let ws_addr = listener.local_addr()?;

    let context = Arc::new(Context {
        router: router.clone(),
        metrics: metrics.clone(),
        verifier,
        stomp: config.stomp()?,
        shutdown: shutdown.clone(),
    });
    let consumer_stop = CancellationToken::new();
    tokio::spawn(consumer::maintain_assignment(
        kafka.clone(),
        settings,
        kafka_ready,
        consumer_stop.clone(),
    ));
    tokio::spawn(consumer::consume(
        kafka,
        router,
        metrics,
        consumer_stop.clone(),
    ));

    let tracker = TaskTracker::new();
    let app = HttpRouter::new()
        .route("/ws.communication", get(stomp_upgrade))
        .with_state(AppState {
            context: context.clone(),
            tracker: tracker.clone(),
        });
    let drain = Duration::from_secs(config.drain_secs);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "WebSocket listener failed");
        }
        // Sessions see the same token and send their goodbye frames.
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(
                remaining = tracker.len(),
                "drain window over; closing remaining connections"
            );
        }
        consumer_stop.cancel();
        tracing::info!("gateway stopped");
    });
    tracing::info!(%ws_addr, %ops_addr, "gateway listening");
    Ok(GatewayHandle {
        ws_addr,
        ops_addr,
        context,
        shutdown,
        task,
    })
}

#[derive(Clone)]
struct AppState {
    context: Arc<Context>,
    tracker: TaskTracker,
}

async fn stomp_upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(state): State<AppState>,
) -> Response {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limit = state.context.stomp.limits.max_frame_bytes;
    let token = state.tracker.token();
    ws.protocols(["v12.stomp", "v11.stomp", "v10.stomp"])
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let max_version = socket
                .protocol()
                .and_then(|p| p.to_str().ok())
                .and_then(Version::from_subprotocol)
                .unwrap_or(Version::V1_2);
            stomp::serve(socket, state.context, auth, max_version).await;
            drop(token);
        })
}
