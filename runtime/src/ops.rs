//! The operations HTTP server on its own port: `/healthz` (the process is
//! alive), `/readyz` (every readiness condition holds) and `/metrics`
//! (Prometheus text format).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A named readiness flag.
type Condition = (&'static str, Arc<AtomicBool>);

/// Named readiness conditions; `/readyz` is 200 only when all are true.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Arc<std::sync::Mutex<Vec<Condition>>>,
}

impl Readiness {
    /// Register a condition (initially false) and get its flag.
    pub fn condition(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut c) = self.conditions.lock() {
            c.push((name, flag.clone()));
        }
        flag
    }

    /// Whether every condition holds, and the names of those that do not.
    pub fn check(&self) -> (bool, Vec<&'static str>) {
        let failing: Vec<_> = self
            .conditions
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, f)| !f.load(Ordering::Acquire))
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default();
        (failing.is_empty(), failing)
    }
}

/// The ops server's shared state.
#[derive(Clone)]
pub struct OpsServer {
    /// Metrics exposed at `/metrics`.
    pub registry: Registry,
    /// Conditions behind `/readyz`.
    pub readiness: Readiness,
}

impl OpsServer {
    /// Serve until `shutdown` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.serve_with(listener, Router::new(), shutdown).await
    }

    /// Serve, with `extra` routes beside the probes and metrics (a
    /// service's own operator pages), until `shutdown` is cancelled.
    pub async fn serve_with(
        self,
        listener: TcpListener,
        extra: Router,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
            .merge(extra);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }

    /// Bind `addr` and serve in a background task; returns the bound address.
    pub async fn spawn(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        self.spawn_with(addr, Router::new(), shutdown).await
    }

    /// [`spawn`](Self::spawn) with `extra` routes (see [`serve_with`](Self::serve_with)).
    pub async fn spawn_with(
        self,
        addr: SocketAddr,
        extra: Router,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve_with(listener, extra, shutdown).await {
                tracing::error!(error = %e, "ops server failed");
            }
        });
        Ok(local)
    }
}

async fn readyz(State(s): State<OpsServer>) -> impl IntoResponse {
    match s.readiness.check() {
        (true, _) => (StatusCode::OK, "ready\n".to_owned()),
        (false, failing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        ),
    }
}

async fn metrics(State(s): State<OpsServer>) -> impl IntoResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            buf,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}
