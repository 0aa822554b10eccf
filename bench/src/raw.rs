//! The raw baseline: the least a WebSocket server must do for the same
//! fan-out. It answers the clients' handshakes with canned frames (no
//! authentication, no routing rules), and for each event line on its control
//! socket encodes one WebSocket frame — the same bytes the gateway would send
//! — and hands that shared buffer to every socket of the account, whose
//! writer task coalesces whatever is queued into one write. Whatever the
//! gateway does beyond this is its overhead.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::{
    stamp::{self, Protocol},
    ws,
};

/// Sockets by account index.
#[derive(Default)]
struct Registry {
    accounts: RwLock<HashMap<usize, Account>>,
}

#[derive(Default)]
struct Account {
    sockets: Vec<(u64, mpsc::UnboundedSender<Bytes>)>,
    /// Identifier (JSON string literal) used in this account's cable frames.
    identifier_json: String,
}

/// Run the raw server until killed.
pub async fn serve(
    listen: SocketAddr,
    control: SocketAddr,
    protocol: Protocol,
) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::default());
    // A deep accept queue (net.core.somaxconn caps it): `TcpListener::bind`
    // listens with a backlog of 128, and a connect storm overflowing it
    // costs clients a 1 s SYN retransmission.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(listen)
        .with_context(|| format!("bind {listen}"))?;
    let listener = socket.listen(4096)?;
    let control = TcpListener::bind(control)
        .await
        .with_context(|| format!("bind {control}"))?;
    let reg = registry.clone();
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            next_id += 1;
            let reg = reg.clone();
            tokio::spawn(async move {
                let _ = connection(stream, next_id, protocol, reg).await;
            });
        }
    });
    loop {
        let (stream, _) = control.accept().await?;
        let reg = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = control_loop(stream, protocol, reg).await {
                eprintln!("raw server control: {e:#}");
            }
        });
    }
}

async fn control_loop(
    stream: TcpStream,
    protocol: Protocol,
    registry: Arc<Registry>,
) -> anyhow::Result<()> {
    let mut lines = BufReader::with_capacity(64 * 1024, stream).lines();
    while let Some(line) = lines.next_line().await? {
        let mut it = line.split(' ').map(str::parse::<u64>);
        let (Some(Ok(a)), Some(Ok(seq)), Some(Ok(g)), Some(Ok(sent))) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            bail!("bad control line {line:?}");
        };
        let payload = stamp::payload(protocol, g, seq, sent, stamp::Pad::default());
        let Ok(accounts) = registry.accounts.read() else {
            bail!("registry poisoned");
        };
        let Some(account) = accounts.get(&(a as usize)) else {
            continue;
        };
        // Encoded once; every socket of the account gets the same bytes.
        let frame = ws::server_text(&stamp::gateway_like_frame(
            protocol,
            g,
            &payload,
            &account.identifier_json,
        ));
        for (_, tx) in &account.sockets {
            let _ = tx.send(frame.clone());
        }
    }
    Ok(())
}

async fn connection(
    mut stream: TcpStream,
    id: u64,
    protocol: Protocol,
    registry: Arc<Registry>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4096);
    let head_len = loop {
        if let Some(n) = ws::http_head_len(&buf) {
            break n;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.advance(head_len);
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let account: usize = path
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("bench_account="))
        .and_then(|v| v.parse().ok())
        .context("no bench_account in the request")?;
    let key = ws::http_header(&head, "sec-websocket-key").context("no key")?;
    let chosen = ws::http_header(&head, "sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .map(str::trim);
    stream
        .write_all(ws::upgrade_response(key, chosen).as_bytes())
        .await?;

    // Handshake of the application protocol, with canned answers.
    let identifier_json = match protocol {
        Protocol::Stomp => {
            loop {
                let msg = next_message(&mut stream, &mut buf).await?;
                if msg.starts_with(b"CONNECT") || msg.starts_with(b"STOMP") {
                    stream
                        .write_all(&ws::server_text(
                            "CONNECTED\nversion:1.2\nheart-beat:0,0\nserver:raw/0\nsession:raw\n\n\0",
                        ))
                        .await?;
                } else if msg.starts_with(b"SUBSCRIBE") {
                    let text = String::from_utf8_lossy(&msg);
                    let receipt = text
                        .lines()
                        .find_map(|l| l.strip_prefix("receipt:"))
                        .unwrap_or("r")
                        .to_owned();
                    stream
                        .write_all(&ws::server_text(&format!(
                            "RECEIPT\nreceipt-id:{receipt}\n\n\0"
                        )))
                        .await?;
                    break;
                }
            }
            String::new()
        }
        Protocol::Room | Protocol::Notifications => {
            stream
                .write_all(&ws::server_text(r#"{"type":"welcome"}"#))
                .await?;
            loop {
                let msg = next_message(&mut stream, &mut buf).await?;
                let Ok(cmd) = serde_json::from_slice::<serde_json::Value>(&msg) else {
                    continue;
                };
                if cmd["command"] == "subscribe"
                    && let Some(identifier) = cmd["identifier"].as_str()
                {
                    let identifier_json = serde_json::Value::from(identifier).to_string();
                    stream
                        .write_all(&ws::server_text(&format!(
                            r#"{{"identifier":{identifier_json},"type":"confirm_subscription"}}"#
                        )))
                        .await?;
                    break identifier_json;
                }
            }
        }
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    if let Ok(mut accounts) = registry.accounts.write() {
        let entry = accounts.entry(account).or_default();
        if entry.identifier_json.is_empty() {
            entry.identifier_json = identifier_json;
        }
        entry.sockets.push((id, tx));
    }
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        let mut out = BytesMut::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            let result = if batch.len() == 1 {
                write.write_all(&batch[0]).await
            } else {
                out.clear();
                for f in &batch {
                    out.extend_from_slice(f);
                }
                write.write_all(&out).await
            };
            batch.clear();
            if result.is_err() {
                break;
            }
        }
    });
    // Discard whatever the client sends until it goes away.
    let mut sink = vec![0u8; 512];
    while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    if let Ok(mut accounts) = registry.accounts.write()
        && let Some(entry) = accounts.get_mut(&account)
    {
        entry.sockets.retain(|(i, _)| *i != id);
    }
    writer.abort();
    Ok(())
}

/// The next complete text/binary message from a client (unmasked).
async fn next_message(stream: &mut TcpStream, buf: &mut BytesMut) -> anyhow::Result<Vec<u8>> {
    loop {
        if let Some(head) = ws::parse_head(buf, 1 << 20)?
            && buf.len() >= head.frame_len()
        {
            let mut payload = buf[head.payload_start..head.frame_len()].to_vec();
            buf.advance(head.frame_len());
            if let Some(k) = head.mask {
                ws::unmask(&mut payload, k);
            }
            match head.opcode {
                ws::opcode::TEXT | ws::opcode::BINARY => return Ok(payload),
                ws::opcode::CLOSE => bail!("client closed"),
                _ => continue,
            }
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("client went away");
        }
    }
}
