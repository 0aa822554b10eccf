//! A raw STOMP-over-WebSocket test client: writes and reads exact bytes.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

/// A raw client.
pub struct RawStomp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Subprotocol the server echoed.
    pub protocol: Option<String>,
}

/// A received frame, split for assertions.
#[derive(Debug, Clone)]
pub struct Received {
    /// The whole frame text, NUL included.
    pub raw: String,
    /// The command line.
    pub command: String,
    /// Headers as written (not unescaped).
    pub headers: Vec<(String, String)>,
    /// Body before the NUL.
    pub body: String,
}

impl Received {
    /// First header with `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a WebSocket could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered the upgrade with this HTTP status.
    Refused(u16),
    /// Anything else.
    Other(anyhow::Error),
}

impl OpenError {
    fn other(e: impl std::fmt::Display) -> Self {
        OpenError::Other(anyhow::anyhow!("{e}"))
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(status) => write!(f, "upgrade refused with HTTP {status}"),
            OpenError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl RawStomp {
    /// Connect the WebSocket offering `protocols`, with an optional upgrade `Authorization`.
    pub async fn open(
        url: &str,
        protocols: &str,
        authorization: Option<&str>,
    ) -> anyhow::Result<RawStomp> {
        let mut req = url.into_client_request()?;
        if !protocols.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols)?);
        }
        if let Some(a) = authorization {
            req.headers_mut()
                .insert("Authorization", HeaderValue::from_str(a)?);
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .context("websocket connect")?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(RawStomp { ws, protocol })
    }

    /// Open, CONNECT with `token` in the frame, expect CONNECTED.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<RawStomp> {
        let c = Self::open(url, "v12.stomp", None).await?;
        c.connected(token).await
    }

    /// [`connect`](Self::connect) over a socket whose receive buffer is
    /// `bytes` (the kernel then absorbs almost nothing of what the server
    /// sends, so the server's own queue and pacing are what is tested).
    pub async fn connect_small_buffer(
        url: &str,
        token: &str,
        bytes: u32,
    ) -> anyhow::Result<RawStomp> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        let addr = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .context("no host in the URL")?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(bytes)?;
        let tcp = socket.connect(addr.parse()?).await?;
        let (ws, resp) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        RawStomp { ws, protocol }.connected(token).await
    }

    /// Open the WebSocket from source address `from` (any of 127.0.0.0/8
    /// on loopback), with extra upgrade `headers`; the upgrade response's
    /// status is the error when it is refused (e.g. 429).
    pub async fn open_from(
        from: std::net::IpAddr,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawStomp, OpenError> {
        let mut req = url.into_client_request().map_err(OpenError::other)?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        for (k, v) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(OpenError::other)?;
            req.headers_mut()
                .append(name, HeaderValue::from_str(v).map_err(OpenError::other)?);
        }
        let addr = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| OpenError::other("no host in the URL"))?;
        let socket = if from.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(OpenError::other)?;
        socket
            .bind(std::net::SocketAddr::new(from, 0))
            .map_err(OpenError::other)?;
        let tcp = socket
            .connect(addr.parse().map_err(OpenError::other)?)
            .await
            .map_err(OpenError::other)?;
        match tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await {
            Ok((ws, resp)) => {
                let protocol = resp
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok(RawStomp { ws, protocol })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Err(OpenError::Refused(resp.status().as_u16()))
            }
            Err(e) => Err(OpenError::other(e)),
        }
    }

    /// [`open_from`](Self::open_from), then CONNECT with `token`.
    pub async fn connect_from(
        from: std::net::IpAddr,
        url: &str,
        headers: &[(&str, &str)],
        token: &str,
    ) -> Result<RawStomp, OpenError> {
        Self::open_from(from, url, headers)
            .await?
            .connected(token)
            .await
            .map_err(OpenError::Other)
    }

    async fn connected(mut self, token: &str) -> anyhow::Result<RawStomp> {
        let c = &mut self;
        c.send(&format!(
            "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {token}\n\n\0"
        ))
        .await?;
        let f = c.next_frame().await?;
        if f.command != "CONNECTED" {
            bail!("expected CONNECTED, got {}", f.raw);
        }
        Ok(self)
    }

    /// Subscribe and wait for the receipt.
    pub async fn subscribe(&mut self, id: &str, destination: &str) -> anyhow::Result<()> {
        self.send(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:{destination}\nreceipt:r-{id}\n\n\0"
        ))
        .await?;
        let f = self.next_frame().await?;
        if f.command != "RECEIPT" || f.header("receipt-id") != Some(&format!("r-{id}")) {
            bail!("expected RECEIPT for {id}, got {}", f.raw);
        }
        Ok(())
    }

    /// Send a text message.
    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Send a binary message.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.ws.send(Message::binary(bytes.to_vec())).await?;
        Ok(())
    }

    /// Next message as text (heart-beats included), within 10 s.
    pub async fn next_text(&mut self, within: Duration) -> anyhow::Result<Option<String>> {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .context("timed out waiting for a frame")?;
            match msg {
                None => return Ok(None),
                Some(Err(e)) => bail!("websocket error: {e}"),
                Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
                Some(Ok(Message::Binary(b))) => {
                    return Ok(Some(String::from_utf8_lossy(&b).into_owned()));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Next STOMP frame, skipping heart-beats.
    pub async fn next_frame(&mut self) -> anyhow::Result<Received> {
        self.next_frame_within(Duration::from_secs(15)).await
    }

    /// Next STOMP frame within `within`.
    pub async fn next_frame_within(&mut self, within: Duration) -> anyhow::Result<Received> {
        loop {
            let Some(text) = self.next_text(within).await? else {
                bail!("connection closed");
            };
            if text.trim_matches(['\n', '\r']).is_empty() {
                continue;
            }
            return parse(&text);
        }
    }

    /// Whether the server closes the connection within `within` (frames before the close are returned).
    pub async fn expect_close(&mut self, within: Duration) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            match self.next_text(within).await {
                Ok(None) => return Ok(seen),
                Ok(Some(t)) => seen.push(t),
                Err(e) if e.to_string().contains("websocket error") => return Ok(seen),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parse one frame's text (heart-beat EOLs before it are skipped).
pub fn parse(text: &str) -> anyhow::Result<Received> {
    let text_trimmed = text.trim_start_matches(['\n', '\r']);
    let (head, rest) = text_trimmed
        .split_once("\n\n")
        .context("no blank line in frame")?;
    let mut lines = head.lines();
    let command = lines.next().unwrap_or_default().to_owned();
    // STOMP 1.2 header escaping (the server negotiates 1.2 with these clients).
    let unescape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('c') => out.push(':'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        }
        out
    };
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (unescape(k), unescape(v))))
        .collect();
    let body = rest.split('\0').next().unwrap_or_default().to_owned();
    if !rest.contains('\0') {
        bail!("frame has no NUL terminator: {text:?}");
    }
    Ok(Received {
        raw: text.to_owned(),
        command,
        headers,
        body,
    })
}
