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
//! - [`WsSocket`] splits the stream: the read half goes to [`WsStream`],
//!   which decodes client frames with [`crate::transport::inbound`] (unmask,
//!   reassemble, validate, inflate); the write half goes to the connection's
//!   writer task, which writes frames that were encoded once per event
//!   ([`WsFrame`], compressed once too when permessage-deflate is on) with
//!   vectored writes, and nothing else ever writes to the socket. The
//!   reader's own replies (pongs, the answer to a client's close, a close
//!   for a protocol error) are handed to that writer through
//!   [`crate::transport::connection::ConnTx`], so frames never interleave.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
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
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_service::Service;

use crate::transport::{
    deflate::{self, DeflateConfig},
    inbound::{Decoder, ReadError},
};

/// The message types of client frames (the WebSocket crate's, re-exported
/// so the sans-I/O decoder names no I/O crate).
pub use tokio_tungstenite::tungstenite::{
    Message, Utf8Bytes,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

/// The most read from a socket at once, into a buffer of the thread's (a
/// connection keeps only what it has not decoded yet, usually nothing: a
/// per-connection read buffer was 40 % of an idle connection's memory).
/// Client frames are small (a STOMP CONNECT with a JWT is under 1 KiB); a
/// larger one simply takes a few reads.
const READ_CHUNK: usize = 8 * 1024;

thread_local! {
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// One complete server-to-client WebSocket frame (header and payload).
/// Server frames are not masked, so the bytes are the same for every
/// recipient: an event's frame is encoded once and the buffer shared; so
/// is its permessage-deflate form, made the first time a connection that
/// negotiated compression writes it.
#[derive(Clone, Debug)]
pub struct WsFrame(Arc<FrameBytes>);

#[derive(Debug)]
struct FrameBytes {
    plain: Vec<u8>,
    /// For a frame made of per-recipient text around a shared part: the
    /// part and where it starts in the payload (its compressed form is
    /// shared too, see [`WsFrame::around`]).
    around: Option<(WsPart, usize)>,
    /// The compressed frame, or `None` when it is below the size threshold
    /// or compressing did not make it smaller.
    deflated: OnceLock<Option<Box<[u8]>>>,
}

/// Text several frames embed (an event's body), with its compressed form
/// made once when a compressing connection first needs it.
#[derive(Clone, Debug)]
pub struct WsPart(Arc<PartBytes>);

#[derive(Debug)]
struct PartBytes {
    text: String,
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl WsPart {
    /// A shared part holding `text`.
    pub fn new(text: String) -> Self {
        WsPart(Arc::new(PartBytes {
            text,
            deflated: OnceLock::new(),
        }))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The text as raw deflate ending in a sync flush (see
    /// [`deflate::assemble`]), made at `level` the first time.
    fn deflated(&self, level: u32) -> Option<&[u8]> {
        self.0
            .deflated
            .get_or_init(|| {
                deflate::compress_flushed(self.0.text.as_bytes(), level).map(Vec::into_boxed_slice)
            })
            .as_deref()
    }
}

impl PartialEq for WsFrame {
    fn eq(&self, other: &Self) -> bool {
        self.0.plain == other.0.plain
    }
}

impl Eq for WsFrame {}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;
/// The header's first byte for a frame whose payload is compressed (RSV1).
const RSV1: u8 = 0x40;

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
        Self::from_vec(out)
    }

    fn from_vec(plain: Vec<u8>) -> Self {
        WsFrame(Arc::new(FrameBytes {
            plain,
            around: None,
            deflated: OnceLock::new(),
        }))
    }

    /// A final text frame `before ++ shared ++ after`, made per recipient
    /// around a part shared by many frames (an ActionCable broadcast embeds
    /// each subscription's identifier around the event's body). Compressed,
    /// only the shared part is deflated — once, for every frame around it —
    /// and the pieces around it are copied in stored blocks.
    pub fn around(before: &[&str], shared: &WsPart, after: &str) -> Self {
        let head: usize = before.iter().map(|p| p.len()).sum();
        let mut parts: Vec<&str> = before.to_vec();
        parts.push(shared.as_str());
        parts.push(after);
        let mut frame = Self::text_parts(&parts);
        if let Some(bytes) = Arc::get_mut(&mut frame.0) {
            bytes.around = Some((shared.clone(), head));
        }
        frame
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
        Self::from_vec(out)
    }

    /// A pong answering a ping's `payload`.
    pub fn pong(payload: &[u8]) -> Self {
        Self::encode(OP_PONG, payload, &[])
    }

    /// A buffer holding the header of a `len`-byte frame, with room for the payload.
    fn header(opcode: u8, len: usize) -> Vec<u8> {
        Self::header_with(0x80 | opcode, len)
    }

    fn header_with(first: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 10);
        out.push(first);
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
    pub fn bytes(&self) -> &[u8] {
        &self.0.plain
    }

    /// The bytes to write to a connection: with `deflate` (the connection
    /// negotiated permessage-deflate), the frame compressed — made once,
    /// by the first writer that needs it, which calls `compressed(plain,
    /// packed)` with the payload sizes — when the payload is at least
    /// `deflate.min_bytes` long and compresses smaller. Control frames are
    /// never compressed (RFC 7692 §6.1).
    pub fn wire(
        &self,
        deflate: Option<&DeflateConfig>,
        compressed: impl FnOnce(usize, usize),
    ) -> &[u8] {
        let Some(cfg) = deflate else {
            return &self.0.plain;
        };
        let first = self.0.plain.first().copied().unwrap_or(0);
        if first & 0x08 != 0 || self.payload().len() < cfg.min_bytes {
            return &self.0.plain;
        }
        let packed = self.0.deflated.get_or_init(|| {
            let payload = self.payload();
            let packed = match &self.0.around {
                Some((shared, at)) => {
                    let end = at + shared.as_str().len();
                    let body = shared.deflated(cfg.level)?;
                    Some(deflate::assemble(&payload[..*at], body, &payload[end..]))
                        .filter(|p| p.len() < payload.len())
                }
                None => deflate::compress(payload, cfg.level),
            }?;
            compressed(payload.len(), packed.len());
            let mut out = Self::header_with(first | RSV1, packed.len());
            out.extend_from_slice(&packed);
            Some(out.into_boxed_slice())
        });
        packed.as_deref().unwrap_or(&self.0.plain)
    }

    /// The payload (the frame without its header).
    pub fn payload(&self) -> &[u8] {
        let header = match self.0.plain.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        self.0.plain.get(header..).unwrap_or_default()
    }

    /// The payload as text, when this is a text frame.
    pub fn as_text(&self) -> Option<&str> {
        (self.0.plain.first() == Some(&(0x80 | OP_TEXT)))
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
    /// The client's `Sec-WebSocket-Extensions` offers, if any.
    extensions: Vec<String>,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// How an endpoint accepts its upgrades.
#[derive(Debug, Clone, Copy)]
pub struct WsOptions {
    /// Client messages (and frames) larger than this are refused.
    pub max_message: usize,
    /// permessage-deflate, when enabled: offered clients get it.
    pub deflate: Option<DeflateConfig>,
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
        let extensions = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        Ok(Upgrade {
            key,
            requested,
            extensions,
            on_upgrade,
        })
    }
}

impl Upgrade {
    /// Accept the upgrade: answer 101 (choosing the first subprotocol of
    /// `supported`, in the server's order of preference, that the client
    /// offered, and permessage-deflate when `options` enable it and the
    /// client offers it acceptably), then run `callback` with the socket
    /// once the connection has switched.
    pub fn on_upgrade<F, Fut>(
        self,
        supported: &[&'static str],
        options: WsOptions,
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
        let accepted = options
            .deflate
            .and_then(|_| deflate::negotiate(self.extensions.iter().map(String::as_str)));
        let deflate = options.deflate.filter(|_| accepted.is_some());
        let max_message = options.max_message;
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            // The connection's life runs in a task of its own: awaited here,
            // this task's state (the callback, the upgrade) would stay
            // beside the session's for as long as the connection lasts.
            let mut socket = WsSocket::from_upgraded(upgraded, protocol, max_message);
            socket.deflate = deflate;
            tokio::spawn(callback(socket));
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
        if let Some(ext) = accepted.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, ext);
        }
        response
    }
}

/// An upgraded connection, split: the read half (for [`WsSocket::into_parts`])
/// and the write half (for the connection's writer task).
///
/// Boxed: the socket is passed through several layers before a session
/// starts (the upgrade, the protocol's `serve`, the transport's `start`),
/// and moving one pointer is cheaper than moving 80 bytes; the allocation
/// is freed when the connection starts.
pub struct WsSocket(Box<SocketParts>);

/// What a [`WsSocket`] holds.
pub struct SocketParts {
    /// The negotiated subprotocol.
    pub protocol: Option<&'static str>,
    /// The compression settings, when permessage-deflate was negotiated.
    pub deflate: Option<DeflateConfig>,
    read: Box<dyn AsyncRead + Send + Unpin>,
    write: Box<dyn AsyncWrite + Send + Unpin>,
    max_message: usize,
}

impl std::ops::Deref for WsSocket {
    type Target = SocketParts;
    fn deref(&self) -> &SocketParts {
        &self.0
    }
}

impl std::ops::DerefMut for WsSocket {
    fn deref_mut(&mut self) -> &mut SocketParts {
        &mut self.0
    }
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
                WsSocket(Box::new(SocketParts {
                    protocol,
                    deflate: None,
                    read,
                    write: Box::new(write),
                    max_message,
                }))
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
        WsSocket(Box::new(SocketParts {
            protocol,
            deflate: None,
            read: Box::new(read),
            write: Box::new(write),
            max_message,
        }))
    }

    /// Split into the inbound message stream (read no faster than
    /// `frames_per_second` messages, pings included; 0: no limit) and the
    /// write half. What the reader itself must send (pongs, close replies)
    /// is given to `replies`.
    pub fn into_parts(
        self,
        replies: impl Fn(Bytes) + Send + Sync + 'static,
        frames_per_second: u32,
    ) -> (WsStream, Box<dyn AsyncWrite + Send + Unpin>) {
        let parts = *self.0;
        let stream = WsStream {
            read: parts.read,
            replies: Box::new(replies),
            decoder: Decoder::new(parts.max_message, parts.deflate.is_some()),
            pending: Vec::new(),
            ended: false,
            rate: crate::limits::CommandRate::new(frames_per_second),
            wait: None,
        };
        (stream, parts.write)
    }
}

/// Whether a read failed because the client's message is over the size
/// limit (the session then answers with its protocol's reason and closes).
pub fn is_oversize(e: &ReadError) -> bool {
    matches!(e, ReadError::Oversize { .. })
}

/// Client messages of one connection, read no faster than its frame rate:
/// past it, the socket is not read (the client's own TCP window then
/// pushes back), so a client looping messages, pings included, costs a
/// bounded amount of CPU. A ping is answered with a pong and a close with a
/// close; a protocol error is answered with a close (1002, or 1007 for
/// invalid payloads), and then the stream ends.
pub struct WsStream {
    read: Box<dyn AsyncRead + Send + Unpin>,
    replies: Box<dyn Fn(Bytes) + Send + Sync>,
    decoder: Decoder,
    /// Read and not yet decoded: at most one read's worth plus one frame.
    pending: Vec<u8>,
    ended: bool,
    rate: crate::limits::CommandRate,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WsStream {
    /// The next message already read, if `pending` holds a whole one.
    fn decoded(&mut self) -> Option<Result<Message, ReadError>> {
        if self.pending.is_empty() {
            return None;
        }
        match self.decoder.decode(&self.pending) {
            Ok((message, used)) => {
                if used == self.pending.len() {
                    // Nothing kept between messages.
                    self.pending = Vec::new();
                } else {
                    self.pending.drain(..used);
                }
                message.map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Answer what the protocol requires for `item`, and note the end.
    fn answer(&mut self, item: &Result<Message, ReadError>) {
        let reply = match item {
            Ok(Message::Ping(payload)) => Some(WsFrame::pong(payload)),
            Ok(Message::Close(frame)) => {
                self.ended = true;
                Some(match frame {
                    Some(f) => WsFrame::close(u16::from(f.code), ""),
                    None => WsFrame::encode(OP_CLOSE, &[], &[]),
                })
            }
            Ok(_) => None,
            Err(e) => {
                self.ended = true;
                e.close_code()
                    .map(|code| WsFrame::close(code, &e.to_string()))
            }
        };
        if let Some(frame) = reply {
            (self.replies)(Bytes::copy_from_slice(frame.bytes()));
        }
    }

    /// Read once into the thread's buffer and keep what came.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = &mut self.read;
        let pending = &mut self.pending;
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            std::task::ready!(Pin::new(read).poll_read(cx, &mut buf))?;
            pending.extend_from_slice(buf.filled());
            Poll::Ready(Ok(buf.filled().len()))
        })
    }
}

impl futures_util::Stream for WsStream {
    type Item = Result<Message, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
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
        loop {
            if let Some(item) = this.decoded() {
                this.rate.spend();
                this.answer(&item);
                return Poll::Ready(Some(item));
            }
            match std::task::ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    // The peer is gone (with or without a closing handshake).
                    this.ended = true;
                    this.pending = Vec::new();
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ReadError::Io(e.kind()))));
                }
            }
        }
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
        assert_eq!(short.bytes(), b"\x81\x02hi");
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
        let (mut stream, _write) = socket.into_parts(|_| {}, 4);
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

    /// A masked client frame with first byte `b0` (short payloads only).
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9u8, 8, 7, 6];
        let mut out = vec![b0, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// A stream over an in-memory pipe, and what it asked to be sent.
    fn stream_over(
        deflate: bool,
    ) -> (
        WsStream,
        tokio::io::DuplexStream,
        std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>,
    ) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let mut socket = WsSocket::from_io(server, None, 1024);
        socket.deflate = deflate.then(DeflateConfig::default);
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let replies = sent.clone();
        let (stream, _write) = socket.into_parts(move |b| replies.lock().unwrap().push(b), 0);
        (stream, client, sent)
    }

    #[tokio::test]
    async fn pings_are_answered_and_a_close_is_echoed_then_the_stream_ends() {
        use futures_util::StreamExt;
        let (mut stream, mut client, sent) = stream_over(false);
        let mut input = client_frame(0x89, b"are you there");
        input.extend(client_text("after"));
        let mut close = 4000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"done");
        input.extend(client_frame(0x88, &close));
        input.extend(client_text("never read"));
        tokio::io::AsyncWriteExt::write_all(&mut client, &input)
            .await
            .unwrap();
        assert!(matches!(stream.next().await, Some(Ok(Message::Ping(_)))));
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            Message::Text("after".into())
        );
        assert!(matches!(
            stream.next().await,
            Some(Ok(Message::Close(Some(_))))
        ));
        assert!(
            stream.next().await.is_none(),
            "nothing is read after a close"
        );
        let sent = sent.lock().unwrap();
        assert_eq!(&sent[0][..], WsFrame::pong(b"are you there").bytes());
        assert_eq!(&sent[1][..], WsFrame::close(4000, "").bytes());
        assert_eq!(sent.len(), 2);
    }

    #[tokio::test]
    async fn a_protocol_error_is_answered_with_a_close_naming_it() {
        use futures_util::StreamExt;
        let (mut stream, mut client, sent) = stream_over(false);
        // Unmasked, as a server would send it.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"\x81\x02hi")
            .await
            .unwrap();
        assert_eq!(
            stream.next().await.unwrap(),
            Err(ReadError::Protocol("client frames must be masked"))
        );
        assert!(stream.next().await.is_none());
        let close = WsFrame::close(
            1002,
            "WebSocket protocol error: client frames must be masked",
        );
        assert_eq!(&sent.lock().unwrap()[0][..], close.bytes());
        // Invalid UTF-8 is a 1007; an oversize message is left to the session.
        let (mut stream, mut client, sent) = stream_over(false);
        tokio::io::AsyncWriteExt::write_all(&mut client, &client_frame(0x81, &[0xc3]))
            .await
            .unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Err(ReadError::Payload(_)))
        ));
        assert_eq!(&sent.lock().unwrap()[0][2..4], &1007u16.to_be_bytes());
        let (mut stream, mut client, sent) = stream_over(false);
        let mut header = vec![0x81, 0xFE];
        header.extend_from_slice(&5000u16.to_be_bytes());
        tokio::io::AsyncWriteExt::write_all(&mut client, &header)
            .await
            .unwrap();
        assert!(is_oversize(&stream.next().await.unwrap().unwrap_err()));
        assert!(sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_message_split_across_reads_is_assembled_and_nothing_is_kept_after_it() {
        use futures_util::StreamExt;
        let (mut stream, mut client, _) = stream_over(true);
        let body = "SEND\ndestination:/x\n\n".repeat(20);
        let packed = deflate::compress(body.as_bytes(), 1).unwrap();
        let frame = client_frame(0xC1, &packed);
        let (a, b) = frame.split_at(frame.len() / 2);
        tokio::io::AsyncWriteExt::write_all(&mut client, a)
            .await
            .unwrap();
        let mut next = Box::pin(stream.next());
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        tokio::io::AsyncWriteExt::write_all(&mut client, b)
            .await
            .unwrap();
        assert_eq!(next.await.unwrap().unwrap(), Message::Text(body.into()));
        assert_eq!(stream.pending.capacity(), 0, "no buffer kept while idle");
        drop(client);
        assert!(
            stream.next().await.is_none(),
            "end of input ends the stream"
        );
    }

    #[test]
    fn a_frame_is_compressed_once_and_only_when_worth_it() {
        let cfg = DeflateConfig {
            min_bytes: 64,
            level: 1,
        };
        let text = r#"{"type":"message.created","body":"hello hello hello hello"}"#.repeat(10);
        let frame = WsFrame::text(&text);
        let shared = frame.clone();
        let mut calls = 0;
        let packed = frame.wire(Some(&cfg), |plain, out| {
            calls += 1;
            assert_eq!(plain, text.len());
            assert!(out < plain / 4);
        });
        assert_eq!(packed[0], 0xC1, "FIN, RSV1, text");
        let again = shared.wire(Some(&cfg), |_, _| calls += 1).to_vec();
        assert_eq!(calls, 1, "compressed once for every recipient");
        let inflated = deflate::inflate(
            WsFrame(Arc::new(FrameBytes {
                plain: again,
                around: None,
                deflated: OnceLock::new(),
            }))
            .payload(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(inflated, text.as_bytes());
        // Without deflate, small, or a control frame: the plain bytes.
        assert_eq!(frame.wire(None, |_, _| panic!()), frame.bytes());
        let small = WsFrame::text("tiny");
        assert_eq!(small.wire(Some(&cfg), |_, _| panic!()), small.bytes());
        let close = WsFrame::close(1000, &"x".repeat(100));
        assert_eq!(close.wire(Some(&cfg), |_, _| panic!()), close.bytes());
    }

    #[test]
    fn a_frame_around_a_shared_part_compresses_the_part_once() {
        let cfg = DeflateConfig {
            min_bytes: 16,
            level: 1,
        };
        let body = WsPart::new(
            r#"{"event":"message.created","data":{"content":"hi hi hi hi hi hi hi"}}"#.repeat(4),
        );
        let frames: Vec<WsFrame> = ["a", "bb"]
            .iter()
            .map(|id| WsFrame::around(&[r#"{"identifier":""#, id, r#"","message":"#], &body, "}"))
            .collect();
        for (frame, id) in frames.iter().zip(["a", "bb"]) {
            let want = format!(r#"{{"identifier":"{id}","message":{}}}"#, body.as_str());
            assert_eq!(frame.as_text(), Some(want.as_str()));
            let wire = frame.wire(Some(&cfg), |_, _| {}).to_vec();
            assert_eq!(wire[0], 0xC1);
            let packed = WsFrame(Arc::new(FrameBytes {
                plain: wire,
                around: None,
                deflated: OnceLock::new(),
            }));
            assert_eq!(
                deflate::inflate(packed.payload(), 1 << 20).unwrap(),
                want.as_bytes()
            );
        }
        assert!(body.0.deflated.get().is_some(), "the body was compressed");
    }
}
