//! Wiring of a gateway pod: the consumer, the router, the WebSocket
//! endpoints, the ops server, and a graceful drain on shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router as HttpRouter,
    extract::{ConnectInfo, Query, State},
    http::HeaderMap,
    response::Response,
    routing::get,
    serve::ListenerExt,
};
use herald_runtime::{
    OpsServer, Readiness,
    tls::{PeerAddr, TlsListener},
};
use rdkafka::producer::FutureProducer;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    app::config::GatewayConfig,
    auth::{Authenticator, Jwks, JwtVerifier},
    core::position::Epochs,
    kafka::{
        consumer::{self, ConsumerSettings},
        identities::{self, IdentityTable},
    },
    limits::{IpSlot, Limits},
    metrics::Metrics,
    protocols::{
        cable::{self, CableDeps, Endpoint},
        shared::{Drain, Shared},
        stomp::{self, StompDeps, codec::Version},
        typeid::{self as typeid_proto, JoinThrottle, TypeIdDeps},
    },
    routing::{history::HistoryBuffer, presence::PresenceTable, router::Router},
    transport::{
        deflate::DeflateConfig,
        proxy::{ProxyProtocolListener, TrustedProxies},
        ws::{self, Upgrade, WsOptions, WsSocket},
    },
};

/// Bind with a deep accept queue: connect storms (every client of a drained
/// pod reconnecting) overflowed the default 128 and stalled clients for a
/// second-long SYN retry.
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Options of every accepted client socket.
fn tune_socket(tcp: &tokio::net::TcpStream, user_timeout: Duration) {
    // Frames are coalesced by each connection's writer already; small ones
    // must not wait for an ACK (Nagle).
    let _ = tcp.set_nodelay(true);
    // A peer that vanished without a FIN (a phone that lost its network)
    // never acknowledges what is sent to it: the kernel drops the
    // connection after this long instead of retransmitting for ~15
    // minutes. ActionCable clients never speak, so for them this is the
    // idle timeout (the server pings every few seconds).
    if !user_timeout.is_zero() {
        let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(user_timeout));
    }
}

/// The WebSocket listener, with or without TLS.
enum Listening {
    Plain(TcpListener),
    Tls(TlsListener),
    /// Plain TCP; trusted proxies send a PROXY protocol header first.
    Proxied(ProxyProtocolListener),
}

/// A running gateway.
pub struct GatewayHandle {
    /// Bound WebSocket address.
    pub ws_addr: SocketAddr,
    /// Bound ops address.
    pub ops_addr: SocketAddr,
    /// What every session shares (tests inspect the router and metrics).
    pub shared: Arc<Shared>,
    /// Who is online (tests record heartbeats).
    pub presence: Arc<PresenceTable>,
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
/// `signal` (SIGTERM) drains it as Kubernetes expects: `/readyz` answers
/// 503 at once while the pod keeps serving for `--drain-delay-secs` (so
/// load balancers stop sending it clients), then clients are told to
/// reconnect spread over `--drain-secs`, then the process ends.
pub async fn start(
    config: GatewayConfig,
    signal: CancellationToken,
) -> anyhow::Result<GatewayHandle> {
    config.validate()?;
    // Cancelled when the drain proper begins (after the delay).
    let shutdown = CancellationToken::new();
    // The ops server outlives the drain: probes and scrapes keep working.
    let ops_stop = CancellationToken::new();
    let verifier = JwtVerifier::new(
        config.jwt_secret.as_deref(),
        &config.jwt_public_key_file,
        config.jwt_audience.as_deref(),
        config.jwt_issuer.as_deref(),
    )?;
    let verifier = match &config.jwt_jwks_file {
        Some(path) => {
            let jwks = Jwks::load(path)?;
            let every = Duration::from_secs(config.jwt_jwks_reload_secs.max(1));
            let (j, stop) = (jwks.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    j.reload_if_changed();
                }
            });
            verifier.with_jwks(jwks)
        }
        None => verifier,
    };
    let metrics = Metrics::new();
    // One for the pod: its Kafka read bounds are shared by every resume.
    let resume_config = Arc::new(config.resume()?);
    let router = Arc::new(
        Router::with_history(
            HistoryBuffer::with_budget(
                resume_config.buffer_events,
                resume_config.max_age,
                resume_config.buffer_bytes,
            ),
            Epochs::new(&resume_config.epoch),
        )
        .with_conflation(config.conflation()?),
    );
    let readiness = Readiness::default();
    let kafka_ready = readiness.condition("kafka");
    // "not ready: draining" from SIGTERM on.
    let serving = readiness.condition("draining");
    serving.store(true, std::sync::atomic::Ordering::Release);
    {
        let (signal, shutdown) = (signal.clone(), shutdown.clone());
        let delay = Duration::from_secs(config.drain_delay_secs);
        tokio::spawn(async move {
            signal.cancelled().await;
            serving.store(false, std::sync::atomic::Ordering::Release);
            tracing::info!(
                delay_secs = delay.as_secs(),
                "draining: /readyz answers 503; still serving until the delay is over"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {}
            }
            shutdown.cancel();
        });
    }
    let identities = Arc::new(IdentityTable::new());
    let presence = Arc::new(PresenceTable::new(Duration::from_secs(
        config.presence_window_secs,
    )));
    if config.stream_legacy_account_auth {
        tracing::warn!(
            "legacy /stream mode is ON: a bare account_id query parameter grants that account's events \
             to anyone who knows it; use only on a trusted network"
        );
    }
    let producer: FutureProducer = {
        let mut cfg = config.kafka.producer_config()?;
        cfg.set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                config.typeid_produce_timeout_ms.to_string(),
            )
            .set("linger.ms", "5")
            .set("client.id", "herald-gateway");
        cfg.create()?
    };

    let groups = config.partition_groups()?;
    if groups.partitioned() {
        tracing::info!(
            group = groups.group(),
            groups = groups.groups(),
            "partition group mode: reading the partitions p with p % groups == group; \
             clients of other groups' accounts are redirected"
        );
    }
    let settings = ConsumerSettings {
        kafka: config.kafka.clone(),
        topics: config.topics()?,
        metadata_refresh: Duration::from_secs(config.metadata_refresh_secs.max(1)),
        fetch_wait_ms: config.kafka_fetch_wait_ms,
        groups: groups.clone(),
        owned_partitions: metrics.owned_partitions.clone(),
        divisible: {
            // "not ready: partition-groups" while a topic cannot be split.
            let divisible = readiness.condition("partition-groups");
            divisible.store(true, std::sync::atomic::Ordering::Release);
            divisible
        },
    };
    let kafka = consumer::create(&settings)?;

    let identities_ready = readiness.condition("identities");
    if !config.identities {
        identities_ready.store(true, std::sync::atomic::Ordering::Release);
    }
    let readiness_view = readiness.clone();

    let listener = bind_listener(config.listen, config.reuse_port)
        .map_err(|e| anyhow::anyhow!("cannot bind WebSocket listener {}: {e}", config.listen))?;
    let ws_addr = listener.local_addr()?;

    let shared = Arc::new(Shared {
        router: router.clone(),
        metrics: metrics.clone(),
        auth: Authenticator {
            jwt: verifier,
            identities: identities.clone(),
            unknown_token_wait: Duration::from_millis(config.unknown_token_wait_ms),
        },
        limits: Limits::new(config.limits(), metrics.clone()),
        outbound: config.outbound()?,
        // Notices go out over the first 80% of the window, leaving the rest
        // for the last clients to close.
        drain: Drain::new(
            shutdown.clone(),
            Duration::from_millis(config.drain_secs * 800),
        ),
        groups: groups.clone(),
    });
    let stomp_deps = Arc::new(StompDeps {
        config: config.stomp()?,
        resume: resume_config.clone(),
    });
    let cable_config = config.cable()?;
    let pings = crate::protocols::cable::Pings::new();
    let ping_interval = cable_config.ping_interval;
    let cable_deps = Arc::new(CableDeps {
        config: cable_config,
        resume: resume_config,
        presence: presence.clone(),
        producer: producer.clone(),
        pings: pings.clone(),
    });
    let typeid_deps = Arc::new(TypeIdDeps {
        config: config.typeid()?,
        throttle: JoinThrottle::new(config.typeid_joins_per_ip_per_minute),
        producer,
    });
    // Admission's: whom to believe about the client's address.
    let proxies = Arc::new(config.proxies()?);
    // The console (when enabled) is served beside the probes and metrics.
    let console_routes = match config.console()? {
        Some(console) => {
            tracing::warn!(
                ops = %config.ops_listen,
                "web console enabled at /console/ on the ops listener: it shows every account; \
                 keep that listener private"
            );
            crate::app::console::Console::new(
                console,
                shared.clone(),
                presence.clone(),
                readiness.clone(),
                ops_stop.clone(),
            )
            .routes()
        }
        None => HttpRouter::new(),
    };
    let ops_addr = OpsServer {
        registry: metrics.registry.clone(),
        readiness,
    }
    .spawn_with(config.ops_listen, console_routes, ops_stop.clone())
    .await
    .map_err(|e| anyhow::anyhow!("cannot bind ops listener {}: {e}", config.ops_listen))?;
    let consumer_stop = CancellationToken::new();
    let link = Arc::new(consumer::Link::new());
    tokio::spawn(consumer::maintain_assignment(
        kafka.clone(),
        router.clone(),
        settings,
        kafka_ready,
        link.clone(),
        consumer_stop.clone(),
    ));
    // ActionCable's pings, until the drain window is over.
    tokio::spawn(pings.run(ping_interval, consumer_stop.clone()));
    tokio::spawn(consumer::report_lag(
        kafka.clone(),
        router.clone(),
        metrics.clone(),
        Duration::from_secs(config.metadata_refresh_secs.max(1)),
        consumer_stop.clone(),
    ));
    {
        // Each 10 s window's slowest traced delivery becomes the exemplar.
        let (slowest, stop) = (metrics.slowest_delivery.clone(), consumer_stop.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => slowest.publish(),
                }
            }
        });
    }
    {
        let (readiness, gauge, stop) = (
            readiness_view.clone(),
            metrics.ready.clone(),
            consumer_stop.clone(),
        );
        let (watchers, table) = (metrics.identity_watchers.clone(), identities.clone());
        let (tokens, online) = (metrics.identities.clone(), presence.clone());
        let (history_bytes, history) = (metrics.history_bytes.clone(), router.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                gauge.set(i64::from(readiness.check().0));
                watchers.set(table.watchers_len() as i64);
                history_bytes.set(history.history().bytes() as i64);
                // Tables that grow with traffic are pruned: heartbeats past
                // the presence window, identities past their expiry.
                tick += 1;
                if tick.is_multiple_of(10) {
                    online.prune();
                    tokens.set(table.prune_expired() as i64);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    if config.identities {
        tokio::spawn(identities::follow(
            identities,
            config.kafka.clone(),
            herald_schemas::identities_topic(&config.kafka.topic_prefix),
            identities_ready,
            metrics.identities.clone(),
            consumer_stop.clone(),
        ));
    }
    let otlp = herald_runtime::otlp::Otlp::start(&config.otlp, "herald-gateway")?;
    tokio::spawn(consumer::consume(
        kafka,
        router,
        consumer::Sinks {
            metrics,
            presence: presence.clone(),
            groups,
            otlp: otlp.clone(),
        },
        link,
        consumer_stop.clone(),
    ));

    let tracker = TaskTracker::new();
    let app = HttpRouter::new()
        .route("/ws.communication", get(stomp_upgrade))
        .route("/cable", get(room_upgrade))
        .route("/stream", get(stream_upgrade))
        .route("/api/v1/stream", get(stream_upgrade))
        .route(&config.typeid_path, get(typeid_upgrade))
        .route("/v1/route", get(route_lookup))
        .with_state(AppState {
            shared: shared.clone(),
            stomp: stomp_deps,
            cable: cable_deps,
            typeid: typeid_deps,
            proxies: proxies.clone(),
            tracker: tracker.clone(),
            deflate: config.deflate()?,
        });
    let drain = Duration::from_secs(config.drain_secs);
    let stop = shutdown.clone();
    let user_timeout = Duration::from_secs(config.tcp_user_timeout_secs);
    let handshake = Duration::from_secs(config.handshake_timeout_secs.max(1));
    let tune = move |tcp: &tokio::net::TcpStream| tune_socket(tcp, user_timeout);
    let listening = match config.tls()? {
        Some(tls) => Listening::Tls(TlsListener::new(listener, tls, handshake, tune)?),
        None if config.proxy_protocol => {
            let limits = shared.limits.clone();
            Listening::Proxied(ProxyProtocolListener::new(
                listener,
                proxies,
                handshake,
                tune,
                move || limits.rejected("proxy_protocol"),
            )?)
        }
        None => Listening::Plain(listener),
    };
    let task = tokio::spawn(async move {
        match listening {
            Listening::Tls(listener) => ws::serve(listener, app, stop, handshake).await,
            Listening::Proxied(listener) => ws::serve(listener, app, stop, handshake).await,
            Listening::Plain(listener) => {
                let listener = listener.tap_io(move |tcp| tune(tcp));
                ws::serve(listener, app, stop, handshake).await
            }
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
        // The last spans go to the collector too.
        otlp.shutdown().await;
        ops_stop.cancel();
        tracing::info!("gateway stopped");
    });
    tracing::info!(%ws_addr, %ops_addr, "gateway listening");
    Ok(GatewayHandle {
        ws_addr,
        ops_addr,
        shared,
        presence,
        shutdown: signal,
        task,
    })
}

/// What the upgrade routes hold: the shared part, each protocol's
/// dependencies, admission's trusted proxies and the drain tracker.
#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    stomp: Arc<StompDeps>,
    cable: Arc<CableDeps>,
    typeid: Arc<TypeIdDeps>,
    proxies: Arc<TrustedProxies>,
    tracker: TaskTracker,
    /// permessage-deflate settings, when compression is enabled.
    deflate: Option<DeflateConfig>,
}

impl AppState {
    /// Checks every upgrade passes before it is accepted: the browser
    /// `Origin` allow-list (403) and the per-IP connection limit (429). The
    /// slot is held for the connection's life.
    fn admit(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<IpSlot, Refusal> {
        let limits = &self.shared.limits;
        let origin = headers
            .get(axum::http::header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if !limits.origin_allowed(origin) {
            return Err(Refusal(
                axum::http::StatusCode::FORBIDDEN,
                "origin not allowed\n",
            ));
        }
        limits
            .admit_ip(self.client_ip(headers, peer))
            .ok_or(Refusal(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            ))
    }

    /// The client's address: the TCP peer, or whom a trusted proxy names.
    fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> std::net::IpAddr {
        self.proxies.client_ip(peer.ip(), headers)
    }

    /// Admit the upgrade, then accept it (the first of `subprotocols` the
    /// client offers; client messages up to `max_message` bytes) and run
    /// `session` on the socket. The connection's IP slot and its place in
    /// the drain's task tracker are held until the session ends.
    fn accept<F, Fut>(
        &self,
        ws: Upgrade,
        headers: &HeaderMap,
        peer: SocketAddr,
        subprotocols: &[&'static str],
        max_message: usize,
        session: F,
    ) -> Response
    where
        F: FnOnce(WsSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let slot = match self.admit(headers, peer) {
            Ok(slot) => slot,
            Err(refusal) => return axum::response::IntoResponse::into_response(refusal),
        };
        let token = self.tracker.token();
        let options = WsOptions {
            max_message,
            deflate: self.deflate,
        };
        ws.on_upgrade(subprotocols, options, move |socket| {
            // Not an async block awaiting the session: that would keep the
            // `session` closure for the connection's whole life, and
            // awaiting a captured future moves it, so the task would hold
            // it twice. `map` holds it once, in place.
            use futures_util::FutureExt as _;
            session(socket).map(move |()| drop((slot, token)))
        })
    }
}

/// An upgrade refused before it happened: status and reason.
struct Refusal(axum::http::StatusCode, &'static str);

impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// The upgrade request's `Authorization` header, if it is text.
fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `/ws.communication`: STOMP.
async fn stomp_upgrade(
    ws: Upgrade,
    headers: HeaderMap,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    State(state): State<AppState>,
) -> Response {
    let auth = authorization(&headers);
    let (shared, deps) = (state.shared.clone(), state.stomp.clone());
    let limit = deps.config.limits.max_frame_bytes;
    state.accept(
        ws,
        &headers,
        peer,
        &["v12.stomp", "v11.stomp", "v10.stomp"],
        limit,
        move |socket| {
            let max_version = socket
                .protocol
                .and_then(Version::from_subprotocol)
                .unwrap_or(Version::V1_2);
            stomp::serve(socket, shared, deps, auth, max_version)
        },
    )
}

/// `/cable`: RoomChannel. The connection is anonymous; each subscribe
/// identifier carries its `pubsub_token`.
async fn room_upgrade(
    ws: Upgrade,
    headers: HeaderMap,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    State(state): State<AppState>,
) -> Response {
    cable_upgrade(&state, ws, &headers, peer, Endpoint::Room)
}

/// `/stream?account_id=..&token=..` (or `Authorization`): NotificationsChannel.
async fn stream_upgrade(
    ws: Upgrade,
    headers: HeaderMap,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    State(state): State<AppState>,
) -> Response {
    let endpoint = Endpoint::Stream {
        account_id: query.get("account_id").cloned(),
        credential: query
            .get("token")
            .cloned()
            .or_else(|| authorization(&headers)),
    };
    cable_upgrade(&state, ws, &headers, peer, endpoint)
}

fn cable_upgrade(
    state: &AppState,
    ws: Upgrade,
    headers: &HeaderMap,
    peer: SocketAddr,
    endpoint: Endpoint,
) -> Response {
    let (shared, deps) = (state.shared.clone(), state.cable.clone());
    let limit = deps.config.max_message_bytes;
    state.accept(
        ws,
        headers,
        peer,
        &cable::protocol::SUBPROTOCOLS,
        limit,
        move |socket| cable::serve(socket, shared, deps, endpoint),
    )
}

/// `GET /v1/route?account=<id>`: the partition group owning the account
/// and its base URL (`null` when none is configured), so a client picks
/// its URL before connecting. Not secret (anyone can compute it), so any
/// origin may read it.
async fn route_lookup(
    State(state): State<AppState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    use axum::{http::StatusCode, response::IntoResponse};
    let cors = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    let account = match query.get("account").map(String::as_str) {
        Some(a) if !a.is_empty() && a.len() <= 256 => a,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                cors,
                axum::Json(serde_json::json!({
                    "error": "the account query parameter is required (1 to 256 bytes)"
                })),
            )
                .into_response();
        }
    };
    let groups = &state.shared.groups;
    let route = groups.route(account);
    (
        cors,
        axum::Json(serde_json::json!({
            "account": account,
            "group": route.group,
            "groups": groups.groups(),
            "url": route.url,
        })),
    )
        .into_response()
}

/// The TypeID endpoint (default `/notifications`).
async fn typeid_upgrade(
    ws: Upgrade,
    headers: HeaderMap,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    State(state): State<AppState>,
) -> Response {
    let client = state.client_ip(&headers, peer);
    let (shared, deps) = (state.shared.clone(), state.typeid.clone());
    let limit = deps.config.max_frame_bytes;
    state.accept(ws, &headers, peer, &[], limit, move |socket| {
        typeid_proto::serve(socket, shared, deps, client)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_nodelay_and_the_user_timeout() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        tune_socket(&server, Duration::from_secs(7));
        assert!(server.nodelay()?);
        assert_eq!(
            socket2::SockRef::from(&server).tcp_user_timeout()?,
            Some(Duration::from_secs(7))
        );
        tune_socket(&client, Duration::ZERO);
        assert_eq!(socket2::SockRef::from(&client).tcp_user_timeout()?, None);
        Ok(())
    }
}
