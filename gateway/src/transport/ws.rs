//! The WebSocket layer, owned end to end so the fan-out path stays cheap.
//!
//! Why not axum's `WebSocket`: it hides the socket behind one
//! `WebSocketStream`, so every outbound frame is re-framed and copied by
//! tungstenite per connection and both directions share a lock (`SplitSink`'s
//! `BiLock`). Profiles of the fan-out benchmark put those costs, with the
//! boxed upgraded IO, well above the kernel's own send cost. Here:
//!
//! - [`serve`] runs HTTP/1.1 with hyper directly (not the HTTP/1-or-2
//!   sniffing server, which wraps the socket in a type an upgrade cannot be
//!   unwrapped from), so an upgraded connection hands back its `TcpStream`;
//! - [`Upgrade`] is the handshake (RFC 6455 §4.2) as an axum extractor;
//! - [`WsSocket`] splits the stream: the read half goes to tungstenite, which
//!   parses, unmasks, reassembles and validates client frames; the write half
//!   goes to the connection's writer task, which writes frames that were
//!   encoded once per event ([`WsFrame`]) with vectored writes, and nothing else
//!   ever writes to the socket. tungstenite's own replies (pongs, the answer
//!   to a client's close) are handed to that writer through
//!   [`crate::transport::connection::ConnTx`], so frames never interleave.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version, header, request::Parts},
    response::{IntoResponse, Response},
    serve::Listener,
};
use bytes::Bytes;
use herald_runtime::tls::PeerAddr;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_service::Service;

pub use tokio_tungstenite::tungstenite::Message;

/// Per-connection read buffer for client frames, and the most read from the
/// socket at once. tungstenite's default (128 KiB, zero-filled on the first
/// read) dominated the memory of idle connections, and 4 KiB was still 40 %
/// of an idle connection's memory. Client frames are small (a STOMP CONNECT
/// with a JWT is under 1 KiB); the buffer grows for a larger frame, which
/// simply takes a few reads.
const READ_BUFFER: usize = 1024;

/// One complete server-to-client WebSocket frame (header and payload).
/// Server frames are not masked, so the bytes are the same for every
/// recipient: an event's frame is encoded once and the buffer shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsFrame(Bytes);

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;

impl WsFrame {
    /// A final text frame carrying `text`.
    pub fn text(text: &str) -> Self {
        Self::encode(OP_TEXT, text.as_bytes(), &[])
    }

    /// A final text frame carrying the concatenation of `parts`, built in
    /// one buffer (for frames made per recipient from shared pieces).
    pub fn text_parts(parts: &[&str]) -> Self {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut out = Self::header(OP_TEXT, len);
        for part in parts {
            out.extend_from_slice(part.as_bytes());
        }
        WsFrame(Bytes::from(out))
    }

    /// A close frame with `code` and `reason` (cut to the 123 bytes a
    /// control frame can carry, on a character boundary).
    pub fn close(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self::encode(OP_CLOSE, &code.to_be_bytes(), &reason.as_bytes()[..end])
    }

    /// RFC 6455 §5.2 framing: FIN + opcode, then the payload length in 7,
    /// 7+16 or 7+64 bits; no mask from a server.
    fn encode(opcode: u8, a: &[u8], b: &[u8]) -> Self {
        let mut out = Self::header(opcode, a.len() + b.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        WsFrame(Bytes::from(out))
    }

    /// A buffer holding the header of a `len`-byte frame, with room for the payload.
    fn header(opcode: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 10);
        out.push(0x80 | opcode);
        if len < 126 {
            out.push(len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            out.push(126);
            out.extend_from_slice(&short.to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out
    }

    /// The encoded frame.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The payload (the frame without its header).
    pub fn payload(&self) -> &[u8] {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        self.0.get(header..).unwrap_or_default()
    }

    /// The payload as text, when this is a text frame.
    pub fn as_text(&self) -> Option<&str> {
        (self.0.first() == Some(&(0x80 | OP_TEXT)))
            .then(|| std::str::from_utf8(self.payload()).ok())
            .flatten()
    }
}

/// An upgrade refused before it happened: status and reason.
#[derive(Debug)]
pub struct UpgradeRejection(StatusCode, &'static str);

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let mut response = (self.0, self.1).into_response();
        if self.0 == StatusCode::UPGRADE_REQUIRED {
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// A validated WebSocket upgrade request (the extractor of every endpoint).
pub struct Upgrade {
    key: HeaderValue,
    requested: Vec<String>,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let refuse = |status, reason| Err(UpgradeRejection(status, reason));
        if parts.method != Method::GET {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET request\n",
            );
        }
        if parts.version != Version::HTTP_11
            || !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket: send an HTTP/1.1 upgrade request\n",
            );
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version (13 is supported)\n",
            );
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n");
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded\n",
            );
        };
        let requested = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(Upgrade {
            key,
            requested,
            on_upgrade,
        })
    }
}

impl Upgrade {
    /// Accept the upgrade: answer 101 (choosing the first subprotocol of
    /// `supported`, in the server's order of preference, that the client
    /// offered), then run `callback` with
    /// the socket once the connection has switched. `max_message` bounds
    /// client messages and frames.
    pub fn on_upgrade<F, Fut>(
        self,
        supported: &[&'static str],
        max_message: usize,
        callback: F,
    ) -> Response
    where
        F: FnOnce(WsSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let protocol = supported
            .iter()
            .copied()
            .find(|s| self.requested.iter().any(|p| p == s));
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            // The connection's life runs in a task of its own: awaited here,
            // this task's state (the callback, the upgrade) would stay
            // beside the session's for as long as the connection lasts.
            tokio::spawn(callback(WsSocket::from_upgraded(
                upgraded,
                protocol,
                max_message,
            )));
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(p) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        response
    }
}

/// An upgraded connection, split: the read half (for [`WsSocket::into_stream`])
/// and the write half (for the connection's writer task).
pub struct WsSocket {
    /// The negotiated subprotocol.
    pub protocol: Option<&'static str>,
    read: Box<dyn AsyncRead + Send + Unpin>,
    write: Box<dyn AsyncWrite + Send + Unpin>,
    max_message: usize,
}

impl WsSocket {
    fn from_upgraded(
        upgraded: hyper::upgrade::Upgraded,
        protocol: Option<&'static str>,
        max_message: usize,
    ) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            // Plain TCP: independent halves, no lock between reader and writer.
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                let read: Box<dyn AsyncRead + Send + Unpin> = if parts.read_buf.is_empty() {
                    Box::new(read)
                } else {
                    // Bytes the client sent right behind its request.
                    Box::new(io::Cursor::new(parts.read_buf).chain(read))
                };
                WsSocket {
                    protocol,
                    read,
                    write: Box::new(write),
                    max_message,
                }
            }
            // TLS (or anything else): a generic split.
            Err(upgraded) => Self::from_io(TokioIo::new(upgraded), protocol, max_message),
        }
    }

    /// A socket over any byte stream (TLS, tests).
    pub fn from_io<T>(io: T, protocol: Option<&'static str>, max_message: usize) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        WsSocket {
            protocol,
            read: Box::new(read),
            write: Box::new(write),
            max_message,
        }
    }

    /// Split into the inbound message stream (read no faster than
    /// `frames_per_second` messages, pings included; 0: no limit) and the
    /// write half. Whatever tungstenite itself must send is given to `replies`.
    pub async fn into_parts(
        self,
        replies: impl Fn(Bytes) + Send + Sync + 'static,
        frames_per_second: u32,
    ) -> (WsStream, Box<dyn AsyncWrite + Send + Unpin>) {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let side = ReadSide {
            read: self.read,
            replies: Box::new(replies),
        };
        let inner = WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await;
        let stream = WsStream {
            inner,
            rate: crate::limits::CommandRate::new(frames_per_second),
            wait: None,
        };
        (stream, self.write)
    }
}

/// Whether a read failed because the client's message is over the size
/// limit (the session then answers with its protocol's reason and closes).
pub fn is_oversize(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_))
}

/// Client messages of one connection, read no faster than its frame rate:
/// past it, the socket is not read (the client's own TCP window then
/// pushes back), so a client looping messages, pings included, costs a
/// bounded amount of CPU.
pub struct WsStream {
    inner: WebSocketStream<ReadSide>,
    rate: crate::limits::CommandRate,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WsStream {
    /// Let the library hand over what it still owes the client (see
    /// [`answer_close`](crate::transport::connection::answer_close)).
    pub async fn flush(&mut self) {
        use futures_util::SinkExt;
        let _ = self.inner.flush().await;
    }
}

impl futures_util::Stream for WsStream {
    type Item = Result<Message, tokio_tungstenite::tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(wait) = this.wait.as_mut() {
                std::task::ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            if this.rate.ready() {
                break;
            }
            this.wait = Some(Box::pin(tokio::time::sleep(this.rate.until_next())));
        }
        let next = Pin::new(&mut this.inner).poll_next(cx);
        if matches!(next, Poll::Ready(Some(_))) {
            this.rate.spend();
        }
        next
    }
}

/// What tungstenite reads from: the socket's read half. What it writes
/// (whole frames: pongs and close replies, serialised before each write) is
/// passed on to the connection's writer instead of the socket.
pub struct ReadSide {
    read: Box<dyn AsyncRead + Send + Unpin>,
    replies: Box<dyn Fn(Bytes) + Send + Sync>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        (self.replies)(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serve `app` over HTTP/1.1 on `listener` until `stop` is cancelled, then
/// close idle keep-alive connections and wait for requests in flight.
/// Upgraded connections are not tracked here (their sessions drain
/// themselves). Each request carries the peer address as `ConnectInfo<PeerAddr>`.
/// A connection that has not sent a complete request head within
/// `header_timeout` (counted from its first byte, or from accept) is closed.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    stop: CancellationToken,
    header_timeout: Duration,
) where
    L: Listener<Addr = SocketAddr>,
    L::Io: 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
                let mut app = app.clone();
                async move { Ok::<_, Infallible>(app.call(req).await.into_response()) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_per_rfc6455() {
        let short = WsFrame::text("hi");
        assert_eq!(&short.bytes()[..], b"\x81\x02hi");
        assert_eq!(short.as_text(), Some("hi"));

        let medium = "x".repeat(300);
        let f = WsFrame::text(&medium);
        assert_eq!(&f.bytes()[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.payload(), medium.as_bytes());

        let long = "y".repeat(70_000);
        let f = WsFrame::text(&long);
        assert_eq!(f.bytes()[1], 127);
        assert_eq!(&f.bytes()[2..10], &70_000u64.to_be_bytes());
        assert_eq!(f.as_text(), Some(long.as_str()));

        assert_eq!(WsFrame::text_parts(&["a", "", "bc"]), WsFrame::text("abc"));
        assert_eq!(
            WsFrame::text_parts(&[&medium, "z"]).as_text(),
            Some(format!("{medium}z").as_str())
        );

        let close = WsFrame::close(1008, "slow consumer");
        assert_eq!(&close.bytes()[..4], &[0x88, 15, 0x03, 0xF0]);
        assert_eq!(&close.payload()[2..], b"slow consumer");
        assert_eq!(close.as_text(), None);

        // A reason longer than a control frame allows is cut on a char boundary.
        let reason = "é".repeat(100);
        let close = WsFrame::close(1000, &reason);
        assert!(close.payload().len() <= 125);
        assert!(std::str::from_utf8(&close.payload()[2..]).is_ok());
    }

    /// A masked client text frame, as a browser sends it.
    fn client_text(text: &str) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x81, 0x80 | text.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test(start_paused = true)]
    async fn client_messages_are_read_no_faster_than_the_frame_rate() {
        use futures_util::StreamExt;
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let socket = WsSocket::from_io(server, None, 1 << 20);
        let (mut stream, _write) = socket.into_parts(|_| {}, 4).await;
        // Ten messages are there at once; the bucket holds four.
        let mut all = Vec::new();
        for i in 0..10 {
            all.extend(client_text(&format!("m{i}")));
        }
        tokio::io::AsyncWriteExt::write_all(&mut client, &all)
            .await
            .unwrap();
        let start = tokio::time::Instant::now();
        for i in 0..4 {
            let msg = stream.next().await.unwrap().unwrap();
            assert_eq!(msg.into_text().unwrap().as_str(), format!("m{i}"));
        }
        assert_eq!(
            tokio::time::Instant::now(),
            start,
            "the burst is read at once"
        );
        // The fifth waits for a token: not ready now, ready a quarter second on.
        let mut next = Box::pin(stream.next());
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        let msg = next.await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), "m4");
        let waited = tokio::time::Instant::now() - start;
        assert!(waited >= Duration::from_millis(249), "waited {waited:?}");
        for i in 5..10 {
            let msg = stream.next().await.unwrap().unwrap();
            assert_eq!(msg.into_text().unwrap().as_str(), format!("m{i}"));
        }
        // Six messages past the burst at four per second: 1.5 s of the (virtual) clock.
        let waited = tokio::time::Instant::now() - start;
        assert!(waited >= Duration::from_millis(1_490), "waited {waited:?}");
    }
}
