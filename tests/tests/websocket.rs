//! The gateway's own WebSocket layer, byte by byte over raw TCP: handshake
//! refusals, bytes pipelined right behind the upgrade request, masked and
//! fragmented client frames, pings answered in between event frames by the
//! same writer, and the close handshake.

use std::time::Duration;

use anyhow::{Context, bail};
use herald_tests::{Stack, airy_message, token};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A client frame (RFC 6455 §5.2), masked as clients must.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Send the upgrade request, with `extra` header lines (each ending in
    /// CRLF), followed in the same write by `pipelined`.
    async fn open_with(
        addr: &str,
        path: &str,
        extra: &str,
        pipelined: &[u8],
    ) -> anyhow::Result<(RawWs, String)> {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: v12.stomp\r\n{extra}\r\n"
        )
        .into_bytes();
        request.extend_from_slice(pipelined);
        tcp.write_all(&request).await?;
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
                ws.buf.drain(..end + 4);
                break head;
            }
            ws.fill().await?;
        };
        Ok((ws, head))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
            .await
            .context("timed out reading")??;
        if n == 0 {
            bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next server frame: (first byte, payload). Server frames are never masked.
    async fn frame(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into()?) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let first = self.buf[0];
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Ok((first, payload));
                }
            }
            self.fill().await?;
        }
    }

    async fn text(&mut self) -> anyhow::Result<String> {
        let (first, payload) = self.frame().await?;
        assert_eq!(first, 0x80 | TEXT, "a final text frame");
        Ok(String::from_utf8(payload)?)
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.tcp.write_all(bytes).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_upgrade_requests_are_refused_with_reasons() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let base = stack
        .ws_url("/ws.communication")
        .replace("ws://", "http://");
    let http = reqwest::Client::new();

    let plain = http.get(&base).send().await?;
    assert_eq!(plain.status(), 426);
    assert_eq!(plain.headers()["upgrade"], "websocket");
    assert!(plain.text().await?.contains("WebSocket"));

    let old_version = http
        .get(&base)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "8")
        .send()
        .await?;
    assert_eq!(old_version.status(), 426);
    assert_eq!(old_version.headers()["sec-websocket-version"], "13");

    let no_key = http
        .get(&base)
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await?;
    assert_eq!(no_key.status(), 400);
    assert!(no_key.text().await?.contains("Sec-WebSocket-Key"));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_fragmented_ping_and_close() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let addr = stack.ws_url("").trim_start_matches("ws://").to_owned();

    // CONNECT in two fragments, pipelined behind the upgrade request.
    let connect = format!(
        "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
        token("1", "7", "agent")
    );
    let (a, b) = connect.as_bytes().split_at(20);
    let mut pipelined = client_frame(false, TEXT, a);
    pipelined.extend(client_frame(true, 0x0, b));
    // permessage-deflate is off unless enabled: the offer is not taken up.
    let (mut ws, head) = RawWs::open_with(
        &addr,
        "/ws.communication",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        &pipelined,
    )
    .await?;
    accepted_without_extensions(&head);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "RFC 6455's sample key and answer: {head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: v12.stomp"),
        "{head}"
    );
    let connected = ws.text().await?;
    assert!(connected.starts_with("CONNECTED\n"), "{connected}");

    ws.send(&client_frame(
        true,
        TEXT,
        b"SUBSCRIBE\nid:s\ndestination:/events\nreceipt:r1\n\n\0",
    ))
    .await?;
    let receipt = ws.text().await?;
    assert!(receipt.starts_with("RECEIPT\nreceipt-id:r1\n"), "{receipt}");

    // Events and a ping at once: the pong and the MESSAGE frames come out
    // whole, through the one writer.
    let events: Vec<_> = (0..50).map(|n| airy_message("1", n)).collect();
    stack.produce(&events).await?;
    ws.send(&client_frame(true, PING, b"are you there")).await?;
    let (mut messages, mut pongs) = (0, 0);
    while messages < 50 || pongs < 1 {
        let (first, payload) = ws.frame().await?;
        match first & 0x0f {
            TEXT => {
                let text = String::from_utf8(payload)?;
                assert!(text.starts_with("MESSAGE\n"), "{text}");
                messages += 1;
            }
            PONG => {
                assert_eq!(payload, b"are you there");
                pongs += 1;
            }
            other => bail!("unexpected opcode {other}"),
        }
        assert_eq!(first & 0x80, 0x80, "server frames are final");
    }

    // The close handshake: our close is answered with a close, then EOF.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    ws.send(&client_frame(true, CLOSE, &close)).await?;
    let (first, payload) = ws.frame().await?;
    assert_eq!(first, 0x80 | CLOSE);
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), ws.tcp.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(_))), "the server closes the socket");
    stack.stop().await;
    Ok(())
}

/// An upgrade answered 101 with no extension taken up.
fn accepted_without_extensions(head: &str) {
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
}

/// `payload` as one permessage-deflate message (RFC 7692 §7.2.1): raw
/// deflate, sync flush, the `00 00 FF FF` tail removed.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
        .expect("compressible");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflate one permessage-deflate message.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 20 + 1024);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("valid deflate");
    assert_eq!(d.total_in() as usize, input.len(), "all input inflated");
    out
}

/// A server text message: inflated when its frame has RSV1 set.
async fn message(ws: &mut RawWs) -> anyhow::Result<(bool, String)> {
    let (first, payload) = ws.frame().await?;
    assert_eq!(first & 0x8f, 0x80 | TEXT, "a final text frame: {first:#x}");
    let compressed = first & 0x40 != 0;
    let payload = if compressed {
        inflate(&payload)
    } else {
        payload
    };
    Ok((compressed, String::from_utf8(payload)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_both_ways_and_bad_offers_declined() -> anyhow::Result<()> {
    let stack = herald_tests::Stack::start_with(herald_tests::StackOptions {
        gateway_args: ["--ws-deflate", "--ws-deflate-min-bytes", "64"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await?;
    let addr = stack.ws_url("").trim_start_matches("ws://").to_owned();
    let connect = format!(
        "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
        token("1", "7", "agent")
    );

    // An offer Herald cannot honour, then one it can: the second is taken,
    // answered with no context takeover both ways.
    let (mut ws, head) = RawWs::open_with(
        &addr,
        "/ws.communication",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10, \
         permessage-deflate; client_max_window_bits\r\n",
        &[],
    )
    .await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    // The client compresses its CONNECT (RSV1 on the first frame) in two fragments.
    let packed = deflate(connect.as_bytes());
    let (a, b) = packed.split_at(packed.len() / 2);
    let mut first = client_frame(false, TEXT, a);
    first[0] |= 0x40;
    ws.send(&first).await?;
    ws.send(&client_frame(true, 0x0, b)).await?;
    let (_, connected) = message(&mut ws).await?;
    assert!(connected.starts_with("CONNECTED\n"), "{connected}");
    let mut subscribe = client_frame(
        true,
        TEXT,
        &deflate(b"SUBSCRIBE\nid:s\ndestination:/events\nreceipt:r1\n\n\0"),
    );
    subscribe[0] |= 0x40;
    ws.send(&subscribe).await?;
    let (_, receipt) = message(&mut ws).await?;
    assert!(receipt.starts_with("RECEIPT\nreceipt-id:r1\n"), "{receipt}");

    // Events come compressed; each is whole and the one that was sent.
    let events: Vec<_> = (0..20).map(|n| airy_message("1", n)).collect();
    stack.produce(&events).await?;
    for n in 0..20 {
        let (compressed, text) = message(&mut ws).await?;
        assert!(compressed, "an event frame over 64 bytes is compressed");
        assert!(text.starts_with("MESSAGE\n"), "{text}");
        assert!(text.contains(&format!("\"m-1-{n}\"")), "in order: {text}");
    }
    // Control frames stay uncompressed.
    ws.send(&client_frame(true, PING, b"still there")).await?;
    let (first, payload) = ws.frame().await?;
    assert_eq!(
        (first, payload.as_slice()),
        (0x80 | PONG, &b"still there"[..])
    );

    // Only unsupported offers: declined, and the connection works uncompressed.
    let (mut plain, head) = RawWs::open_with(
        &addr,
        "/ws.communication",
        "Sec-WebSocket-Extensions: permessage-deflate; mystery=1\r\n\
         Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
        &client_frame(true, TEXT, connect.as_bytes()),
    )
    .await?;
    accepted_without_extensions(&head);
    assert!(plain.text().await?.starts_with("CONNECTED\n"));
    // A compressed frame on a connection that did not negotiate it: 1002.
    let mut bad = client_frame(true, TEXT, &deflate(b"SUBSCRIBE\nid:x\n\n\0"));
    bad[0] |= 0x40;
    plain.send(&bad).await?;
    let (first, payload) = plain.frame().await?;
    assert_eq!(first, 0x80 | CLOSE);
    assert_eq!(&payload[..2], &1002u16.to_be_bytes());

    // A message that inflates past the frame limit is refused as too large
    // (the STOMP session's ERROR, then close 1009) without inflating it all.
    let bomb = deflate(&vec![b'a'; 16 * 1024 * 1024]);
    let mut frame = client_frame(true, TEXT, &bomb);
    frame[0] |= 0x40;
    ws.send(&frame).await?;
    let mut closed = None;
    while closed.is_none() {
        let (first, payload) = ws.frame().await?;
        if first & 0x0f == CLOSE {
            closed = Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    assert_eq!(closed, Some(1009));
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics.contains("herald_deflate_connections_total{protocol=\"stomp\"} 1"),
        "{metrics}"
    );
    stack.stop().await;
    Ok(())
}

/// Connections open on a pod, from its `/metrics`.
async fn stomp_connections(ops: std::net::SocketAddr) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://{ops}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("herald_connections{protocol=\"stomp\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_port_with_reuse_port() -> anyhow::Result<()> {
    use herald_tests::{GatewayProcess, free_port, stomp::RawStomp};
    let stack = Stack::start().await?;
    let port = free_port()?;
    let mut args = stack.gateway_args();
    args.extend(["--reuse-port".into(), "true".into()]);
    let a = GatewayProcess::start_on(args.clone(), port).await?;
    let b = GatewayProcess::start_on(args, port).await?;
    assert_eq!(a.ws_addr, b.ws_addr);

    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut c =
            RawStomp::connect(&a.ws_url("/ws.communication"), &token("1", "7", "agent")).await?;
        c.subscribe("s", "/events").await?;
        clients.push(c);
    }
    // The kernel spreads the connections over both processes.
    let (on_a, on_b) = (
        stomp_connections(a.ops_addr).await?,
        stomp_connections(b.ops_addr).await?,
    );
    assert_eq!(on_a + on_b, 40);
    assert!(on_a > 0 && on_b > 0, "a: {on_a}, b: {on_b}");
    // Each process consumes the whole stream: every client gets the event.
    stack.produce(&[airy_message("1", 7)]).await?;
    for c in &mut clients {
        let f = c.next_frame().await?;
        assert!(f.body.contains("m-1-7"), "{}", f.raw);
    }
    stack.stop().await;
    Ok(())
}
