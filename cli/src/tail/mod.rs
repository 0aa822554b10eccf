//! `herald tail`: connect to a gateway exactly as a client would, with a
//! given credential, and print every event it receives — the answer to "what
//! does this dashboard's token actually get?".
//!
//! Each event is one JSON line on stdout: `{"protocol", …, "event": <what the
//! client protocol shows>}` plus the protocol's position or channel fields.
//! Progress and problems go to stderr: `subscribed to … ; waiting for events`
//! once the gateway confirmed the subscription, and on failure a message
//! and the exit code of [`crate::error`] (3 for a refused, revoked or
//! expired credential, 5 for a lost connection, 4 for `--timeout-secs`
//! passing before `--count` events).
//!
//! The protocol sessions ([`stomp`], [`cable`], [`typeid`]) are sans-I/O;
//! [`run`] only moves bytes, sends keep-alives and watches the deadlines.

pub mod cable;
pub mod session;
pub mod stomp;
pub mod typeid;

use std::{io::Write as _, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use herald_producer::config::Secret;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{
    self, Message,
    client::IntoClientRequest as _,
    http::{HeaderValue, StatusCode},
};

use crate::error::{CliError, CliResult};
use session::{Action, ClientSession};

/// Which client to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailProtocol {
    /// STOMP at `/ws.communication` (Airy): CONNECT with the token, SUBSCRIBE to --destination.
    Stomp,
    /// ActionCable RoomChannel at `/cable` (Chatwoot): the token is the `pubsub_token`.
    Cable,
    /// ActionCable NotificationsChannel at `/stream` (Pulse): needs --account.
    Stream,
    /// TypeID JSON at `/notifications`: the token is the `SessionID`; needs --user-id.
    Typeid,
}

impl TailProtocol {
    fn default_path(self) -> &'static str {
        match self {
            TailProtocol::Stomp => "/ws.communication",
            TailProtocol::Cable => "/cable",
            TailProtocol::Stream => "/stream",
            TailProtocol::Typeid => "/notifications",
        }
    }
}

/// Who to be and where to connect.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Client protocol (and endpoint) to connect with.
    #[arg(
        long,
        env = "HERALD_TAIL_PROTOCOL",
        value_enum,
        default_value = "stomp"
    )]
    pub protocol: TailProtocol,
    /// Gateway URL: `ws://host:8080` (the protocol's path is added) or a full
    /// endpoint URL such as `ws://host:8080/api/v1/stream`.
    #[arg(
        long,
        env = "HERALD_GATEWAY_URL",
        default_value = "ws://127.0.0.1:8080"
    )]
    pub url: String,
    /// The credential, as the client would present it: a JWT or an opaque token.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Secret,
    /// Account id: required by `stream` (default: the JWT's `account_id`);
    /// for `cable`, checked against the token like Chatwoot's `account_id`.
    #[arg(long, env = "HERALD_ACCOUNT")]
    pub account: Option<String>,
    /// User id: required by `typeid` (default: the JWT's `sub`); for `cable`,
    /// checked against the token like Chatwoot's `user_id`.
    #[arg(long, env = "HERALD_USER_ID")]
    pub user_id: Option<String>,
    /// STOMP destinations to subscribe to, repeatable or comma-separated.
    #[arg(
        long = "destination",
        env = "HERALD_TAIL_DESTINATIONS",
        value_delimiter = ',',
        default_value = "/events"
    )]
    pub destinations: Vec<String>,
    /// Stop after this many events.
    #[arg(long, env = "HERALD_TAIL_COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds; with --count, not reaching it by then is a failure (exit 4).
    #[arg(long, env = "HERALD_TAIL_TIMEOUT_SECS")]
    pub timeout_secs: Option<u64>,
    /// Seconds allowed to connect and get the subscription confirmed.
    #[arg(long, env = "HERALD_TAIL_CONNECT_TIMEOUT_SECS", default_value_t = 15)]
    pub connect_timeout_secs: u64,
    /// TypeID `ClientVersion` sent in the JoinRequest.
    #[arg(long, env = "HERALD_TYPEID_CLIENT_VERSION", default_value = "7.0.30")]
    pub client_version: String,
    /// Also show protocol frames (welcome, receipts, pings) on stderr.
    #[arg(long, short, env = "HERALD_TAIL_VERBOSE")]
    pub verbose: bool,
}

/// The endpoint URL for `protocol` from what the operator typed.
pub fn endpoint_url(url: &str, protocol: TailProtocol, account: Option<&str>) -> CliResult<String> {
    let url = url.trim();
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("wss://") || url.starts_with("https://") {
        return Err(CliError::Refused(format!(
            "{url}: this build of herald speaks plain ws:// only; run it next to a gateway \
             (kubectl exec into a gateway pod, whose image has `herald`, or kubectl port-forward)"
        )));
    } else {
        return Err(CliError::Refused(format!(
            "--url must be a ws:// URL such as ws://127.0.0.1:8080, got `{url}`"
        )));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(split);
    if authority.is_empty() {
        return Err(CliError::Refused(format!("--url has no host: `{url}`")));
    }
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let path = if path.is_empty() || path == "/" {
        protocol.default_path()
    } else {
        path
    };
    let mut params: Vec<String> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if protocol == TailProtocol::Stream && !params.iter().any(|p| p.starts_with("account_id=")) {
        let account = account.ok_or_else(|| {
            CliError::Refused(
                "--protocol stream needs --account (the Pulse `account_id`), or a JWT that names it"
                    .into(),
            )
        })?;
        params.push(format!("account_id={}", percent_encode(account)));
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    Ok(format!("ws://{authority}{path}{query}"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The host of a `ws://host:port/…` URL (for STOMP's `host` header).
fn url_host(url: &str) -> &str {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The claims of a JWT, unverified: only used to default --account and
/// --user-id; the gateway does the verifying.
fn jwt_claims(token: &str) -> Option<Value> {
    if token.split('.').count() != 3 {
        return None;
    }
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .ok()
        .map(|t| t.claims)
}

fn claim_id(claims: Option<&Value>, name: &str) -> Option<String> {
    match claims?.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Everything needed to connect: the URL, the upgrade's subprotocols and
/// credential header, and the protocol session.
pub struct Plan {
    /// Endpoint URL (never holds the credential).
    pub url: String,
    /// Subprotocols offered.
    pub subprotocols: &'static [&'static str],
    /// `Authorization` header of the upgrade (`/stream` only).
    pub authorization: Option<String>,
    /// The protocol session.
    pub session: Box<dyn ClientSession>,
}

/// Plan the connection for `args`.
pub fn plan(args: &TailArgs) -> CliResult<Plan> {
    let token = args.token.expose().trim();
    if token.is_empty() {
        return Err(CliError::Refused("--token is empty".into()));
    }
    let claims = jwt_claims(token);
    let account = args
        .account
        .clone()
        .or_else(|| claim_id(claims.as_ref(), "account_id"));
    let url = endpoint_url(&args.url, args.protocol, account.as_deref())?;
    let plan = match args.protocol {
        TailProtocol::Stomp => Plan {
            session: Box::new(stomp::StompClient::new(
                url_host(&url),
                token,
                args.destinations.clone(),
            )),
            subprotocols: &stomp::SUBPROTOCOLS,
            authorization: None,
            url,
        },
        TailProtocol::Cable => Plan {
            session: Box::new(cable::CableClient::room(
                token,
                args.account.as_deref(),
                args.user_id.as_deref(),
            )),
            subprotocols: &cable::SUBPROTOCOLS,
            authorization: None,
            url,
        },
        TailProtocol::Stream => Plan {
            session: Box::new(cable::CableClient::notifications()),
            subprotocols: &cable::SUBPROTOCOLS,
            // In a header rather than `?token=`, so it stays out of access logs.
            authorization: Some(format!("Bearer {token}")),
            url,
        },
        TailProtocol::Typeid => {
            let user = args
                .user_id
                .clone()
                .or_else(|| claim_id(claims.as_ref(), "sub"))
                .ok_or_else(|| {
                    CliError::Refused(
                        "--protocol typeid needs --user-id (the JoinRequest's UserID), or a JWT \
                         whose `sub` names it"
                            .into(),
                    )
                })?;
            Plan {
                session: Box::new(typeid::TypeIdClient::new(
                    token,
                    &user,
                    &args.client_version,
                )),
                subprotocols: &[],
                authorization: None,
                url,
            }
        }
    };
    Ok(plan)
}

fn handshake_error(url: &str, e: tungstenite::Error) -> CliError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .filter(|b| !b.is_empty())
                .map(|b| format!(": {b}"))
                .unwrap_or_default();
            let message =
                format!("the gateway refused the WebSocket upgrade at {url}: {status}{body}");
            match status {
                StatusCode::UNAUTHORIZED => CliError::Unauthorized(message),
                StatusCode::NOT_FOUND => CliError::Refused(format!(
                    "{message} (no such endpoint: check --url and --protocol)"
                )),
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    CliError::Unavailable(message)
                }
                _ => CliError::Refused(message),
            }
        }
        tungstenite::Error::Io(io) => CliError::Unavailable(format!(
            "cannot connect to {url}: {io} (is a gateway listening there?)"
        )),
        other => CliError::Unavailable(format!("cannot open a WebSocket to {url}: {other}")),
    }
}

/// Wait until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Print one event line; false when stdout is gone (e.g. `| head -1`).
fn print_event(event: &session::EventLine) -> CliResult<bool> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", event.to_json()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Other(e.into())),
    }
}

/// Run `herald tail` until --count events, --timeout-secs, Ctrl-C, or a failure.
pub async fn run(args: TailArgs) -> CliResult<()> {
    let Plan {
        url,
        subprotocols,
        authorization,
        mut session,
    } = plan(&args)?;
    let started = Instant::now();
    let connect_timeout = Duration::from_secs(args.connect_timeout_secs.max(1));
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| CliError::Refused(format!("--url {url}: {e}")))?;
    if !subprotocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&subprotocols.join(", "))
                .map_err(|e| CliError::Other(e.into()))?,
        );
    }
    if let Some(auth) = &authorization {
        let mut value = HeaderValue::from_str(auth).map_err(|_| {
            CliError::Refused("--token holds characters not allowed in an HTTP header".into())
        })?;
        value.set_sensitive(true);
        request.headers_mut().insert("Authorization", value);
    }
    let (ws, _) = tokio::time::timeout(connect_timeout, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| {
            CliError::Unavailable(format!(
                "no WebSocket handshake with {url} within {} s",
                connect_timeout.as_secs()
            ))
        })?
        .map_err(|e| handshake_error(&url, e))?;
    if args.verbose {
        eprintln!("herald tail: connected to {url}");
    }
    let (mut sink, mut stream) = ws.split();

    let subscribe_by = started + connect_timeout;
    let stop_at = args.timeout_secs.map(|s| started + Duration::from_secs(s));
    let mut ready = false;
    let mut received: u64 = 0;
    let mut next_keepalive: Option<Instant> = None;
    let mut last_heard = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut pending = session.open();

    let outcome: CliResult<()> = 'session: loop {
        // Act on what the session asked for.
        for action in pending.drain(..) {
            match action {
                Action::Send(text) => {
                    if let Err(e) = sink.send(Message::text(text)).await {
                        break 'session Err(CliError::Unavailable(format!(
                            "connection to {url} lost while sending: {e}"
                        )));
                    }
                }
                Action::Ready(what) => {
                    ready = true;
                    eprintln!("herald tail: subscribed to {what} at {url}; waiting for events");
                }
                Action::Event(event) => {
                    received += 1;
                    match print_event(&event) {
                        Ok(true) => {}
                        Ok(false) => break 'session Ok(()),
                        Err(e) => break 'session Err(e),
                    }
                    if args.count.is_some_and(|n| received >= n) {
                        break 'session Ok(());
                    }
                }
                Action::Trace(text) => {
                    if args.verbose {
                        eprintln!("herald tail: < {text}");
                    }
                }
            }
        }
        if let Some((every, _)) = session.keepalive()
            && next_keepalive.is_none()
        {
            next_keepalive = Some(Instant::now() + every);
        }
        let silent_at = session.silence_limit().map(|limit| last_heard + limit);
        let deadline = match (ready, stop_at) {
            (false, Some(stop)) => Some(stop.min(subscribe_by)),
            (false, None) => Some(subscribe_by),
            (true, stop) => stop,
        };

        tokio::select! {
            _ = &mut ctrl_c => {
                eprintln!("herald tail: interrupted after {received} event(s)");
                break 'session Ok(());
            }
            _ = until(deadline) => {
                if !ready && Instant::now() >= subscribe_by {
                    break 'session Err(CliError::Unavailable(format!(
                        "{url} did not confirm the subscription within {} s",
                        connect_timeout.as_secs()
                    )));
                }
                let secs = args.timeout_secs.unwrap_or_default();
                break 'session match args.count {
                    Some(n) if received < n => Err(CliError::Timeout(format!(
                        "timed out after {secs} s: received {received} of {n} event(s)"
                    ))),
                    _ => {
                        eprintln!("herald tail: {received} event(s) in {secs} s");
                        Ok(())
                    }
                };
            }
            _ = until(next_keepalive) => {
                if let Some((every, text)) = session.keepalive() {
                    if let Err(e) = sink.send(Message::text(text)).await {
                        break 'session Err(CliError::Unavailable(format!(
                            "connection to {url} lost while sending a keep-alive: {e}"
                        )));
                    }
                    next_keepalive = Some(Instant::now() + every);
                }
            }
            _ = until(silent_at) => {
                break 'session Err(CliError::Unavailable(format!(
                    "the gateway at {url} sent nothing (not even a heart-beat) for {} s: \
                     connection lost",
                    session.silence_limit().unwrap_or_default().as_secs()
                )));
            }
            message = stream.next() => {
                last_heard = Instant::now();
                let payload = match message {
                    None => break 'session Err(session.closed(None)),
                    Some(Err(e)) => break 'session Err(match e {
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                            session.closed(None)
                        }
                        e => CliError::Unavailable(format!("connection to {url} lost: {e}")),
                    }),
                    Some(Ok(Message::Close(frame))) => {
                        break 'session Err(session.closed(
                            frame.as_ref().map(|f| (u16::from(f.code), f.reason.as_str())),
                        ));
                    }
                    Some(Ok(Message::Text(text))) => bytes::Bytes::from(text),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(_)) => continue,
                };
                match session.receive(&payload) {
                    Ok(actions) => pending = actions,
                    Err(e) => break 'session Err(e),
                }
            }
        }
    };
    // Leave politely; the gateway may already be gone.
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TailArgs,
    }

    fn args(argv: &[&str]) -> TailArgs {
        Cli::try_parse_from(std::iter::once("tail").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn urls_get_the_protocols_path() {
        let u = |url, p, a| endpoint_url(url, p, a);
        assert_eq!(
            u("ws://h:8080", TailProtocol::Stomp, None).unwrap(),
            "ws://h:8080/ws.communication"
        );
        assert_eq!(
            u("http://h:8080/", TailProtocol::Cable, None).unwrap(),
            "ws://h:8080/cable"
        );
        assert_eq!(
            u("ws://h", TailProtocol::Typeid, None).unwrap(),
            "ws://h/notifications"
        );
        assert_eq!(
            u("ws://h/api/v1/stream", TailProtocol::Stream, Some("4 2")).unwrap(),
            "ws://h/api/v1/stream?account_id=4%202"
        );
        assert_eq!(
            u("ws://h?x=1", TailProtocol::Stream, Some("42")).unwrap(),
            "ws://h/stream?x=1&account_id=42"
        );
        assert_eq!(
            u("ws://h/stream?account_id=9", TailProtocol::Stream, None).unwrap(),
            "ws://h/stream?account_id=9"
        );
        assert!(u("ws://h", TailProtocol::Stream, None).is_err());
        assert!(matches!(
            u("wss://h", TailProtocol::Stomp, None),
            Err(CliError::Refused(m)) if m.contains("plain ws://")
        ));
        assert!(u("h:8080", TailProtocol::Stomp, None).is_err());
        assert!(u("ws:///x", TailProtocol::Stomp, None).is_err());
        assert_eq!(url_host("ws://gw.example:8080/x"), "gw.example");
        assert_eq!(url_host("ws://[::1]:8080/x"), "[::1]");
    }

    #[test]
    fn jwt_claims_fill_account_and_user() {
        let jwt = crate::token::mint(&crate::token::TokenArgs::new(
            "0123456789abcdef",
            "42",
            "7",
            "agent",
            60,
        ))
        .unwrap();
        let p = plan(&args(&["--protocol", "stream", "--token", &jwt])).unwrap();
        assert_eq!(p.url, "ws://127.0.0.1:8080/stream?account_id=42");
        assert_eq!(p.authorization, Some(format!("Bearer {jwt}")));
        assert!(!p.url.contains(&jwt));
        let p = plan(&args(&["--protocol", "typeid", "--token", &jwt])).unwrap();
        assert_eq!(p.url, "ws://127.0.0.1:8080/notifications");
        // Opaque tokens need the ids spelled out.
        assert!(
            plan(&args(&[
                "--protocol",
                "typeid",
                "--token",
                "opaque-token-123"
            ]))
            .is_err()
        );
        assert!(
            plan(&args(&[
                "--protocol",
                "stream",
                "--token",
                "opaque-token-123"
            ]))
            .is_err()
        );
        assert!(
            plan(&args(&[
                "--protocol",
                "stream",
                "--token",
                "opaque-token-123",
                "--account",
                "1"
            ]))
            .is_ok()
        );
        assert!(plan(&args(&["--token", " "])).is_err());
    }

    #[test]
    fn destinations_repeat_or_split_on_commas() {
        let a = args(&[
            "--token",
            "t",
            "--destination",
            "/events,/queue/message",
            "--destination",
            "/queue/unread-count",
        ]);
        assert_eq!(
            a.destinations,
            ["/events", "/queue/message", "/queue/unread-count"]
        );
        assert_eq!(args(&["--token", "t"]).destinations, ["/events"]);
        assert!(!format!("{a:?}").contains("token: \"t\""));
    }

    #[test]
    fn handshake_refusals_map_to_exit_codes() {
        let http = |status: u16| {
            let response = tungstenite::http::Response::builder()
                .status(status)
                .body(Some(b"origin not allowed\n".to_vec()))
                .unwrap();
            handshake_error("ws://h/x", tungstenite::Error::Http(Box::new(response)))
        };
        assert_eq!(http(401).exit_code(), 3);
        let forbidden = http(403);
        assert_eq!(forbidden.exit_code(), 1);
        assert!(
            forbidden
                .to_string()
                .ends_with("403 Forbidden: origin not allowed"),
            "{forbidden}"
        );
        assert_eq!(http(429).exit_code(), 5);
        assert!(http(404).to_string().contains("check --url and --protocol"));
        let refused = handshake_error(
            "ws://h/x",
            tungstenite::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        assert_eq!(refused.exit_code(), 5);
    }
}
