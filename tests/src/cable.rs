//! ActionCable test clients: a raw protocol client (exact frames) and a
//! driver for the real npm clients (`tests/js/cable_driver.mjs`).

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::TcpStream,
    process::{Child, ChildStdin, ChildStdout, Command},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

/// A raw ActionCable client.
pub struct RawCable {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Subprotocol the server echoed.
    pub protocol: Option<String>,
}

impl RawCable {
    /// Open a socket offering `protocols` (empty: none).
    pub async fn open(url: &str, protocols: &str) -> anyhow::Result<RawCable> {
        let mut req = url.into_client_request()?;
        if !protocols.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols)?);
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .context("websocket connect")?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(RawCable { ws, protocol })
    }

    /// Send raw text.
    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Send a subscribe command for `identifier` (a JSON value, stringified).
    pub async fn subscribe(&mut self, identifier: &str) -> anyhow::Result<()> {
        self.send(&json!({"command": "subscribe", "identifier": identifier}).to_string())
            .await
    }

    /// Next frame other than `ping`, as JSON (None when closed).
    pub async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        self.next_within(Duration::from_secs(15)).await
    }

    /// Next non-ping frame within `within` (pings do not extend it).
    pub async fn next_within(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "timed out waiting for a frame other than ping"
            );
            match self.next_any(left).await? {
                Some(v) if v["type"] == "ping" => continue,
                other => return Ok(other),
            }
        }
    }

    /// Next frame including pings.
    pub async fn next_any(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .context("timed out waiting for a frame")?;
            match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => {
                    return Ok(Some(
                        serde_json::from_str(&t).with_context(|| format!("not JSON: {t}"))?,
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Read until `welcome`.
    pub async fn expect_welcome(&mut self) -> anyhow::Result<()> {
        let f = self.next().await?.context("closed before welcome")?;
        anyhow::ensure!(f == json!({"type": "welcome"}), "expected welcome, got {f}");
        Ok(())
    }

    /// Subscribe and require `confirm_subscription` (with the identifier echoed).
    pub async fn subscribe_confirmed(&mut self, identifier: &str) -> anyhow::Result<()> {
        self.subscribe(identifier).await?;
        let f = self.next().await?.context("closed")?;
        anyhow::ensure!(
            f == json!({"identifier": identifier, "type": "confirm_subscription"}),
            "expected confirmation, got {f}"
        );
        Ok(())
    }

    /// Broadcast messages until one whose `message` satisfies `is_marker`; returns those before it.
    pub async fn until(
        &mut self,
        is_marker: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let mut seen = Vec::new();
        loop {
            let f = self.next().await?.context("closed before the marker")?;
            if is_marker(&f["message"]) {
                return Ok(seen);
            }
            seen.push(f);
        }
    }
}

/// The real npm client, driven over stdin/stdout.
pub struct CableDriver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl CableDriver {
    /// Start the driver for `client` (`rails` or `anycable`).
    pub async fn start(client: &str) -> anyhow::Result<CableDriver> {
        Self::start_with_env(client, &[]).await
    }

    /// Start the driver with extra environment (e.g. `WS_DEFLATE_THRESHOLD`).
    pub async fn start_with_env(client: &str, env: &[(&str, &str)]) -> anyhow::Result<CableDriver> {
        let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
        anyhow::ensure!(
            std::path::Path::new(js)
                .join("node_modules/@rails/actioncable")
                .exists(),
            "npm clients are not installed: run scripts/test.sh (it runs `npm ci` in tests/js)"
        );
        let mut child = Command::new("node")
            .current_dir(js)
            .arg("cable_driver.mjs")
            .arg(client)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run node")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(CableDriver {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Send a command.
    pub async fn cmd(&mut self, cmd: Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Wait for an event matching `pred` (others are returned in the Vec).
    pub async fn wait_for(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<(Value, Vec<Value>)> {
        let mut skipped = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("timed out; events so far: {skipped:?}"))??;
            let Some(line) = line else {
                bail!("driver exited; events so far: {skipped:?}")
            };
            let ev: Value =
                serde_json::from_str(&line).with_context(|| format!("driver printed {line}"))?;
            if ev["ev"] == "error" {
                bail!("driver error: {}", ev["message"]);
            }
            if pred(&ev) {
                return Ok((ev, skipped));
            }
            skipped.push(ev);
        }
    }

    /// Stop the driver.
    pub async fn stop(mut self) {
        let _ = self.cmd(json!({"op": "exit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
