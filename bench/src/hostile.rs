//! Hostile clients for the `hostile` scenario: each pattern an attacker
//! would try against a gateway, run in a loop (reconnecting whenever the
//! gateway lets go) until told to stop. None of them reads what the gateway
//! sends, except where reading is the attack.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};
use tokio_util::sync::CancellationToken;

/// The patterns, in the order clients are assigned to them.
pub const PATTERNS: [Pattern; 6] = [
    Pattern::StompReceipts,
    Pattern::CableAnonymous,
    Pattern::TypeIdPings,
    Pattern::PingFlood,
    Pattern::SubscribeLoop,
    Pattern::Silent,
];

/// One way to attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// STOMP: frames that each earn a 4 KB receipt, never read.
    StompReceipts,
    /// ActionCable without a credential: subscribes with bad tokens, never read.
    CableAnonymous,
    /// TypeID: 30 KB pings echoed back, never read.
    TypeIdPings,
    /// WebSocket pings the library answers with pongs, never read.
    PingFlood,
    /// STOMP subscribe/unsubscribe as fast as the gateway reads them.
    SubscribeLoop,
    /// TCP connections that never send a byte.
    Silent,
}

impl Pattern {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::StompReceipts => "stomp_receipts",
            Pattern::CableAnonymous => "cable_anonymous",
            Pattern::TypeIdPings => "typeid_pings",
            Pattern::PingFlood => "ping_flood",
            Pattern::SubscribeLoop => "subscribe_loop",
            Pattern::Silent => "silent",
        }
    }
}

/// Counts of what the hostile clients did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections opened.
    pub connections: AtomicU64,
    /// Messages sent.
    pub messages: AtomicU64,
    /// Times the gateway let go of one (closed, reset, refused).
    pub dropped: AtomicU64,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket whose socket has a 4 KiB receive buffer and that is never read.
async fn open(addr: SocketAddr, path: &str, protocol: &str) -> anyhow::Result<Ws> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if !protocol.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol)?);
    }
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(addr).await?;
    Ok(tokio_tungstenite::client_async(req, tcp).await?.0)
}

/// Run `pattern` against the gateway at `addr` as `user` (with its
/// `token`) until `stop`.
pub async fn run(
    pattern: Pattern,
    addr: SocketAddr,
    (user, token): (i64, String),
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let round = tokio::select! {
            _ = stop.cancelled() => return,
            r = once(pattern, addr, user, &token, &tally) => r,
        };
        tally.dropped.fetch_add(1, Ordering::Relaxed);
        if round.is_err() {
            // Refused outright (e.g. a connection limit): do not spin.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// One connection of `pattern`, until the gateway lets go.
async fn once(
    pattern: Pattern,
    addr: SocketAddr,
    user: i64,
    token: &str,
    tally: &Tally,
) -> anyhow::Result<()> {
    match pattern {
        Pattern::Silent => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            // The gateway closes it at its handshake timeout.
            let mut buf = [0u8; 64];
            loop {
                tcp.readable().await?;
                match tcp.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Ok(()),
                }
            }
        }
        Pattern::StompReceipts | Pattern::SubscribeLoop | Pattern::PingFlood => {
            let mut ws = open(addr, "/ws.communication", "v12.stomp").await?;
            ws.send(Message::text(format!(
                "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {token}\n\n\0"
            )))
            .await?;
            let pad = "x".repeat(4000);
            flood(&mut ws, tally, |n| match pattern {
                Pattern::StompReceipts => {
                    Message::text(format!("ACK\nid:m{n}\nreceipt:{n}-{pad}\n\n\0"))
                }
                Pattern::SubscribeLoop if n % 2 == 0 => Message::text(format!(
                    "SUBSCRIBE\nid:s{}\ndestination:/events\nreceipt:r{n}\n\n\0",
                    n / 2
                )),
                Pattern::SubscribeLoop => {
                    Message::text(format!("UNSUBSCRIBE\nid:s{}\nreceipt:r{n}\n\n\0", n / 2))
                }
                _ => Message::Ping(vec![7u8; 125].into()),
            })
            .await
        }
        Pattern::CableAnonymous => {
            let mut ws = open(addr, "/cable", "actioncable-v1-json").await?;
            let pad = "y".repeat(4000);
            flood(&mut ws, tally, |n| {
                let ident =
                    json!({"channel": "RoomChannel", "pubsub_token": format!("bad-{n}-{pad}")})
                        .to_string();
                Message::text(json!({"command": "subscribe", "identifier": ident}).to_string())
            })
            .await
        }
        Pattern::TypeIdPings => {
            let mut ws = open(addr, "/notifications", "").await?;
            let join = json!({"TypeID": -2101997347, "Body": {"CipherAlgorithm": 0, "CipherStrength": 0,
                "ClientVersion": "7.0.30", "MachineKey": "mk", "PublicKey": null, "SessionID": token,
                "Status": 1, "UserID": user}});
            ws.send(Message::text(join.to_string())).await?;
            let pad = "z".repeat(30_000);
            flood(&mut ws, tally, |_| {
                Message::text(
                    json!({"TypeID": -476754606, "Body": {"Signal": true, "Pad": pad}}).to_string(),
                )
            })
            .await
        }
    }
}

/// Send `message(n)` for n = 0, 1, ... until a send fails (the gateway let go).
async fn flood(ws: &mut Ws, tally: &Tally, message: impl Fn(u64) -> Message) -> anyhow::Result<()> {
    let mut n = 0;
    loop {
        if ws.send(message(n)).await.is_err() {
            return Ok(());
        }
        n += 1;
        tally.messages.fetch_add(1, Ordering::Relaxed);
    }
}
