//! The web console: operator pages on the ops listener, at `/console/`.
//!
//! Off unless `--console` is set, and then every page and data endpoint
//! asks for the admin credential (`--console-token`): as
//! `Authorization: Bearer <token>`, or as the cookie the login form sets
//! (an HMAC of its expiry keyed by the credential, so it never carries the
//! credential itself and stops working when the credential changes). The
//! console shows every account, so it is for operators only.
//!
//! What it shows comes from the pod's own tables: the router (connections
//! and subscriptions per account and protocol), the frontier and the lag
//! reporter's high watermarks (positions and lag per partition), the
//! presence table, and the latency histograms (quantiles of the last
//! minute). "Watch as" resolves a credential with the gateway's own
//! [`Authenticator`](crate::auth::Authenticator) and registers a recipient
//! in the router, so it is offered exactly the events that credential is
//! entitled to, live. In development mode a form publishes a test event
//! through the producer's HTTP API (`--console-publish-url`).
//!
//! Every asset is compiled in (`include_str!`); the pages fetch nothing
//! from anywhere else.

mod latency;
mod watch;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures_util::StreamExt;
use herald_runtime::Readiness;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::{protocols::shared::Shared, routing::presence::PresenceTable};

pub use latency::LatencyWindow;

/// Console settings (see [`GatewayConfig::console`](crate::GatewayConfig::console)).
#[derive(Clone)]
pub struct ConsoleConfig {
    /// The admin credential.
    pub token: String,
    /// The producer's events URL the publish form posts to, if offered.
    pub publish_url: Option<String>,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the credential.
        f.debug_struct("ConsoleConfig")
            .field("publish_url", &self.publish_url)
            .finish_non_exhaustive()
    }
}

const COOKIE: &str = "herald_console";
/// How long a login lasts.
const SESSION_SECS: i64 = 12 * 3600;
/// Protocol labels of client connections.
const PROTOCOLS: [&str; 3] = ["stomp", "actioncable", "typeid"];

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const LOGIN_JS: &str = include_str!("assets/login.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Content security policy of every console response: nothing but this
/// origin, no inline scripts, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Inner {
    config: ConsoleConfig,
    /// The router, metrics and credential resolution the sessions use.
    shared: Arc<Shared>,
    /// Who is online.
    presence: Arc<PresenceTable>,
    readiness: Readiness,
    latency: Mutex<LatencyWindow>,
    started: Instant,
    stop: CancellationToken,
    http: reqwest::Client,
}

/// The console's shared state.
#[derive(Clone)]
pub struct Console(Arc<Inner>);

impl Console {
    /// A console over the gateway's `shared` part and its `presence`
    /// table; its background sampling and its live streams end when `stop`
    /// is cancelled.
    pub fn new(
        config: ConsoleConfig,
        shared: Arc<Shared>,
        presence: Arc<PresenceTable>,
        readiness: Readiness,
        stop: CancellationToken,
    ) -> Console {
        let console = Console(Arc::new(Inner {
            config,
            latency: Mutex::new(LatencyWindow::new(Duration::from_secs(60))),
            shared,
            presence,
            readiness,
            started: Instant::now(),
            stop,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }));
        let c = console.clone();
        tokio::spawn(async move {
            loop {
                c.sample_latency();
                tokio::select! {
                    _ = c.0.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        console
    }

    fn sample_latency(&self) {
        let m = &self.0.shared.metrics;
        if let Ok(mut w) = self.0.latency.lock() {
            w.sample(Instant::now(), &m.delivery_latency, &m.gateway_latency);
        }
    }

    /// The console's routes, all under `/console`.
    pub fn routes(self) -> Router {
        let protected = Router::new()
            .route("/console/", get(index))
            .route(
                "/console/console.js",
                get(|| asset(CONSOLE_JS, "text/javascript")),
            )
            .route("/console/api/overview", get(overview))
            .route("/console/api/live", get(live))
            .route("/console/api/presence", get(presence))
            .route("/console/api/watch", post(watch::watch))
            .route("/console/api/publish", post(publish))
            .route("/console/logout", post(logout))
            .route_layer(middleware::from_fn_with_state(self.clone(), require_admin));
        Router::new()
            .route(
                "/console",
                get(|| async { Redirect::permanent("/console/") }),
            )
            .route("/console/login", post(login))
            // The login form's script and the stylesheet hold no data.
            .route(
                "/console/login.js",
                get(|| asset(LOGIN_JS, "text/javascript")),
            )
            .route(
                "/console/console.css",
                get(|| asset(CONSOLE_CSS, "text/css")),
            )
            .merge(protected)
            .layer(middleware::map_response(harden))
            .with_state(self)
    }

    /// Whether `presented` is the admin credential (compared in constant
    /// time, as SHA-256 digests so the length does not show either).
    fn is_admin_token(&self, presented: &str) -> bool {
        let a = Sha256::digest(presented.trim().as_bytes());
        let b = Sha256::digest(self.0.config.token.as_bytes());
        a.ct_eq(&b).into()
    }

    fn mac(&self, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.config.token.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"herald-console-session:");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// A session cookie value valid until `expires` (unix seconds).
    fn session_cookie(&self, expires: i64) -> String {
        let tag = self.mac(expires).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{expires}.{hex}")
    }

    /// Whether a session cookie value is one this console issued and has
    /// not expired (the tag is checked in constant time).
    fn session_valid(&self, value: &str) -> bool {
        let Some((expires, hex)) = value.split_once('.') else {
            return false;
        };
        let Ok(expires) = expires.parse::<i64>() else {
            return false;
        };
        if expires <= crate::core::clock::now_ms() / 1000 || hex.len() != 64 {
            return false;
        }
        let Some(tag) = (0..32)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        self.mac(expires).verify_slice(&tag).is_ok()
    }

    /// Whether the request carries the admin credential or a valid session.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(crate::auth::strip_bearer);
        if let Some(token) = bearer
            && !token.is_empty()
        {
            return self.is_admin_token(token);
        }
        cookie(headers, COOKIE).is_some_and(|v| self.session_valid(v))
    }

    /// Everything the overview page shows, as of now.
    pub fn overview(&self) -> Value {
        let shared = &self.0.shared;
        let m = &shared.metrics;
        let per_protocol = |g: &prometheus::IntGaugeVec| {
            let map: serde_json::Map<String, Value> = PROTOCOLS
                .iter()
                .map(|p| {
                    (
                        (*p).to_owned(),
                        Value::from(g.with_label_values(&[*p]).get()),
                    )
                })
                .collect();
            Value::Object(map)
        };
        let frontier = shared.router.frontier();
        let highs = shared.router.watermarks();
        let mut partitions: Vec<_> = frontier.into_iter().collect();
        partitions.sort();
        let partitions: Vec<Value> = partitions
            .into_iter()
            .map(|((topic, partition), next)| {
                // The reporter reads watermarks every few seconds: one
                // older than what was dispatched since is raised to it.
                let high = highs
                    .get(&(topic.clone(), partition))
                    .map(|h| (*h).max(next));
                json!({
                    "topic": &*topic,
                    "partition": partition,
                    "next_offset": next,
                    "high_watermark": high,
                    "lag": high.map(|h| (h - next).max(0)),
                })
            })
            .collect();
        let (ready, not_ready) = self.0.readiness.check();
        let latency = self
            .0
            .latency
            .lock()
            .map(|w| w.summary())
            .unwrap_or(Value::Null);
        let presence: Vec<Value> = self
            .0
            .presence
            .accounts()
            .into_iter()
            .map(|(account, online)| json!({"account": account, "online": online}))
            .collect();
        json!({
            "uptime_secs": self.0.started.elapsed().as_secs(),
            "ready": ready,
            "not_ready": not_ready,
            "connections": per_protocol(&m.connections),
            "subscriptions": per_protocol(&m.subscriptions),
            "accounts": shared.router.loads(),
            "partitions": partitions,
            "latency": latency,
            "presence_accounts": presence,
            "identities": m.identities.get(),
            "history_bytes": m.history_bytes.get(),
            "publish": self.0.config.publish_url.is_some(),
        })
    }
}

/// The value of cookie `name`, if the request has it.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Refuses whatever lacks the admin credential: API calls with 401 JSON,
/// pages with the login form (also 401).
async fn require_admin(State(console): State<Console>, request: Request, next: Next) -> Response {
    if console.authorized(request.headers()) {
        return next.run(request).await;
    }
    if request.uri().path().starts_with("/console/api/") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "the console needs the admin credential (--console-token)"})),
        )
            .into_response();
    }
    login_page(StatusCode::UNAUTHORIZED, "")
}

/// Headers every console response carries.
async fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn login_page(status: StatusCode, message: &str) -> Response {
    // The message is one of ours, never user input.
    let page = LOGIN_HTML.replace("{{message}}", message);
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(console): State<Console>, Form(form): Form<LoginForm>) -> Response {
    if !console.is_admin_token(&form.token) {
        tracing::warn!("console login refused: wrong admin credential");
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not the console's admin credential.",
        );
    }
    let expires = crate::core::clock::now_ms() / 1000 + SESSION_SECS;
    let cookie = format!(
        "{COOKIE}={}; Path=/console; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict",
        console.session_cookie(expires)
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/console/".to_owned()),
        ],
    )
        .into_response()
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict"),
            ),
            (header::LOCATION, "/console/".to_owned()),
        ],
    )
        .into_response()
}

async fn overview(State(console): State<Console>) -> Json<Value> {
    Json(console.overview())
}

/// The overview every second as server-sent events, until the pod stops.
async fn live(State(console): State<Console>) -> impl IntoResponse {
    let stop = console.0.stop.clone();
    let ticks = futures_util::stream::unfold((console, true), |(console, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let event = Event::default()
            .event("overview")
            .json_data(console.overview());
        Some((event, (console, false)))
    });
    Sse::new(ticks.take_until(stop.cancelled_owned())).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct PresenceQuery {
    account: String,
}

async fn presence(State(console): State<Console>, Query(q): Query<PresenceQuery>) -> Response {
    let account = q.account.trim();
    if account.is_empty() || account.len() > 256 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "account must be 1 to 256 characters"})),
        )
            .into_response();
    }
    let now = crate::core::clock::now_ms();
    let (users, contacts) = console.0.presence.online(account);
    let rows = |v: Vec<(String, i64)>| -> Vec<Value> {
        v.into_iter()
            .map(|(id, at)| json!({"id": id, "last_seen_ms_ago": (now - at).max(0)}))
            .collect()
    };
    Json(json!({"account": account, "users": rows(users), "contacts": rows(contacts)}))
        .into_response()
}

/// Forward a test event to the producer's events API (development mode).
async fn publish(State(console): State<Console>, Json(event): Json<Value>) -> Response {
    let Some(url) = console.0.config.publish_url.clone() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "publishing is not enabled (--console-publish-url)"})),
        )
            .into_response();
    };
    match console.0.http.post(&url).json(&event).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.json::<Value>().await.unwrap_or(Value::Null);
            (
                StatusCode::OK,
                Json(json!({"status": status, "response": body})),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": format!("the producer at {url} did not answer: {e}")})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests;
