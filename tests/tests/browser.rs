//! Real browsers: headless Chromium loads a page on loopback whose clients
//! are the browser builds of @stomp/stompjs, @rails/actioncable and
//! @anycable/web, and plain WebSocket for the Pulse stream and TypeID
//! (`tests/js/browser_e2e.mjs`). What only browsers do is covered: no custom
//! headers on the upgrade, an `Origin` on every upgrade (the allow-list lets
//! the page's origin in and refuses another), and the libraries' own
//! reconnect logic against a gateway restarted on the same port, with
//! @anycable/web resuming over `actioncable-v1-ext-json`
//! (`tests/js/browser_reconnect.mjs`).

use std::{collections::HashSet, process::Stdio, time::Duration};

use anyhow::Context as _;
use herald_testkit::free_port;
use herald_tests::{GatewayProcess, Stack, StackOptions, token};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

use herald_tests::CHROMIUM;

async fn next_event(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<Value> {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("no event from the browser page in time")??
        .context("the browser driver ended")?;
    serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_connect_with_every_client_library_and_receive_events() -> anyhow::Result<()>
{
    every_client_library_in_chromium(false).await
}

/// The same page with permessage-deflate on, and no size threshold: every
/// event frame reaches the page compressed, and Chromium compresses what
/// it sends (the gateway inflates it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_negotiate_permessage_deflate_and_receive_compressed_events()
-> anyhow::Result<()> {
    every_client_library_in_chromium(true).await
}

async fn every_client_library_in_chromium(deflate: bool) -> anyhow::Result<()> {
    let js = herald_tests::browser_drivers()?;
    let (page_port, other_port) = (free_port()?, free_port()?);
    let mut gateway_args = vec![
        "--allowed-origins".into(),
        format!("http://127.0.0.1:{page_port}"),
    ];
    if deflate {
        gateway_args.extend(["--ws-deflate", "--ws-deflate-min-bytes", "0"].map(String::from));
    }
    let stack = Stack::start_with(StackOptions {
        gateway_args,
        ..Default::default()
    })
    .await?;
    // What Chromium answers for the extensions the gateway accepted.
    let extensions = if deflate {
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    } else {
        ""
    };
    let t = token("42", "7", "agent");
    let gw = stack.ws_url("");
    let mut child = Command::new("node")
        .current_dir(js)
        .arg("browser_e2e.mjs")
        .env("GW", gw.trim_end_matches('/'))
        .env("TOKEN", &t)
        .env("ACCOUNT", "42")
        .env("USER_ID", "7")
        .env("PAGE_PORT", page_port.to_string())
        .env("OTHER_PORT", other_port.to_string())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run node")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();

    // Every client connects; the page of another origin is refused.
    let want: HashSet<&str> = [
        "stomp-connected",
        "rails-connected",
        "anycable-connected",
        "stream-confirmed",
        "typeid-joined",
        "other-origin",
    ]
    .into();
    let mut seen = HashSet::new();
    while !want.iter().all(|w| seen.contains(*w)) {
        let ev = next_event(&mut lines).await?;
        let name = ev["ev"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(
            name != "page-error" && name != "console-error" || ev.to_string().contains("WebSocket"),
            "the page failed: {ev}"
        );
        match name.as_str() {
            "typeid-joined" => {
                assert_eq!(ev["status"], 1, "{ev}");
                assert_eq!(ev["extensions"], extensions, "{ev}");
            }
            "stream-confirmed" => assert_eq!(ev["extensions"], extensions, "{ev}"),
            "other-origin" => assert_eq!(ev["opened"], false, "another origin was let in: {ev}"),
            _ => {}
        }
        seen.insert(name);
    }

    // Events published through the producer reach every library.
    stack
        .publish(&json!({"type": "tag.updated", "account_id": "42",
            "payload": {"id": "t1", "name": "vip", "color": "tag-red"}}))
        .await?;
    stack
        .publish(&json!({"type": "message.created", "account_id": "42",
            "payload": {"id": 11, "content": "hi", "message_type": 0, "private": false, "conversation_id": 1}}))
        .await?;
    stack
        .publish(
            &json!({"type": "added_message", "account_id": "42", "payload": {
            "id": 1, "conversation_id": 5, "type": 1, "timestamp": 1795600000000u64, "read": false,
            "seen": false, "data": "aXY=-:-Y2lwaGVy", "mime_type": "dGV4dA=="}}),
        )
        .await?;
    let mut got = HashSet::new();
    let want = [
        "stomp-message",
        "rails-message",
        "anycable-message",
        "stream-message",
    ];
    while !want.iter().all(|w| got.contains(*w)) {
        let ev = next_event(&mut lines)
            .await
            .with_context(|| format!("received so far: {got:?}"))?;
        let name = ev["ev"].as_str().unwrap_or_default().to_owned();
        match name.as_str() {
            "stomp-message" => assert!(
                ["tag.updated", "message.created"]
                    .contains(&ev["body"]["type"].as_str().unwrap_or_default()),
                "{ev}"
            ),
            "stream-message" => assert_eq!(ev["data"]["operation"], "added_message", "{ev}"),
            "rails-message" | "anycable-message" => {
                assert_eq!(ev["data"]["event"], "message.created", "{ev}")
            }
            _ => continue,
        }
        got.insert(name);
    }
    if deflate {
        // Every protocol's connections negotiated it, and the event frames
        // were compressed (once each).
        let metrics = stack.gateway_metrics().await?;
        for protocol in ["stomp", "actioncable", "typeid"] {
            let line = format!("herald_deflate_connections_total{{protocol=\"{protocol}\"}}");
            assert!(
                metric_value(&metrics, &line) >= 1.0,
                "{line} missing in:\n{metrics}"
            );
        }
        assert!(metric_value(&metrics, "herald_deflated_frames_total") >= 3.0);
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    stack.stop().await;
    Ok(())
}

/// The value of the sample named exactly `name` (with its labels), or 0.
fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// The content of a `message.created` as each client library hands it over
/// (STOMP: the event; ActionCable: `{event, data}`).
fn content(ev: &Value) -> Option<&str> {
    let data = &ev["data"];
    match ev["client"].as_str()? {
        "stomp" if data["type"] == "message.created" => data["payload"]["content"].as_str(),
        "rails" | "anycable" if data["event"] == "message.created" => {
            data["data"]["content"].as_str()
        }
        _ => None,
    }
}

/// What the reconnect page reported, read as it comes.
struct Page {
    lines: Lines<BufReader<ChildStdout>>,
    log: Vec<Value>,
    started: std::time::Instant,
}

impl Page {
    /// Read events until `done` holds for the log read so far.
    async fn until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> anyhow::Result<()> {
        while !done(&self.log) {
            let ev = next_event(&mut self.lines)
                .await
                .with_context(|| format!("waiting for {what}; the page reported {:?}", self.log))?;
            let name = ev["ev"].as_str().unwrap_or_default();
            // A browser logs each refused WebSocket while the gateway is down.
            anyhow::ensure!(
                name != "page-error" && name != "console-error"
                    || ev.to_string().contains("WebSocket"),
                "the page failed: {ev}"
            );
            self.log.push(ev);
        }
        eprintln!(
            "browser page: {what} ({:?} into the test)",
            self.started.elapsed()
        );
        Ok(())
    }
}

/// Whether each of `clients` reported `ev` at or after `from` in `log`.
fn all_reported(log: &[Value], from: usize, ev: &str, clients: &[&str]) -> bool {
    clients.iter().all(|c| {
        log.iter()
            .skip(from)
            .any(|e| e["ev"] == ev && e["client"] == *c)
    })
}

/// Whether each of `clients` received the message with `text` at or after `from`.
fn all_received(log: &[Value], from: usize, text: &str, clients: &[&str]) -> bool {
    clients.iter().all(|c| {
        log.iter()
            .skip(from)
            .any(|e| e["ev"] == "message" && e["client"] == *c && content(e) == Some(text))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_clients_reconnect_to_a_restarted_gateway_and_anycable_resumes()
-> anyhow::Result<()> {
    let js = herald_tests::browser_drivers()?;
    let (page_port, port) = (free_port()?, free_port()?);
    let stack = Stack::start().await?;
    let mut args = stack.gateway_args();
    args.extend([
        "--allowed-origins".to_owned(),
        format!("http://127.0.0.1:{page_port}"),
    ]);
    // The gateway the page talks to is a process of its own, to be stopped
    // and started again on the same port.
    let mut pod = GatewayProcess::start_on(args.clone(), port).await?;
    let t = token("42", "7", "agent");
    let mut child = Command::new("node")
        .current_dir(js)
        .arg("browser_reconnect.mjs")
        .env("GW", pod.ws_url(""))
        .env("TOKEN", &t)
        .env("ACCOUNT", "42")
        .env("USER_ID", "7")
        .env("PAGE_PORT", page_port.to_string())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run node")?;
    let mut page = Page {
        lines: BufReader::new(child.stdout.take().context("stdout")?).lines(),
        log: Vec::new(),
        started: std::time::Instant::now(),
    };
    const ALL: [&str; 3] = ["stomp", "rails", "anycable"];
    let message = |n: u64, text: &str| {
        json!({"type": "message.created", "account_id": "42",
            "payload": {"id": n, "content": text, "message_type": 0, "private": false, "conversation_id": 1}})
    };

    page.until("every client connected", |l| {
        all_reported(l, 0, "connected", &ALL)
    })
    .await?;
    // One event before the restart: @anycable/web learns the stream's
    // position from it.
    stack.publish(&message(1, "before")).await?;
    page.until("\"before\" everywhere", |l| {
        all_received(l, 0, "before", &ALL)
    })
    .await?;

    // Stop the gateway; every client notices.
    let down = page.log.len();
    pod.terminate().await?;
    tokio::time::timeout(Duration::from_secs(30), pod.child.wait())
        .await
        .context("the gateway did not stop")??;
    page.until("every client disconnected", |l| {
        all_reported(l, down, "disconnected", &ALL)
    })
    .await?;

    // Published while nobody can be connected.
    for (n, text) in [
        (2, "while-down-1"),
        (3, "while-down-2"),
        (4, "while-down-3"),
    ] {
        stack.publish(&message(n, text)).await?;
    }

    // The same port again: the libraries reconnect by themselves.
    let up = page.log.len();
    let _pod = GatewayProcess::start_on(args, port).await?;
    page.until("every client reconnected", |l| {
        all_reported(l, up, "connected", &ALL)
    })
    .await?;
    stack.publish(&message(5, "after")).await?;
    page.until("\"after\" everywhere", |l| {
        all_received(l, up, "after", &ALL)
    })
    .await?;
    // A last event: whatever was to come before it has come.
    stack.publish(&message(6, "end")).await?;
    page.until("\"end\" at @anycable/web", |l| {
        all_received(l, up, "end", &["anycable"])
    })
    .await?;

    let anycable = |from: usize, to: usize| -> Vec<&str> {
        page.log[from..to]
            .iter()
            .filter(|e| e["ev"] == "message" && e["client"] == "anycable")
            .filter_map(content)
            .collect()
    };
    assert_eq!(anycable(0, down), ["before"], "{:?}", page.log);
    // Resumed: what was published during the restart, once each, in order,
    // and nothing it already had.
    assert_eq!(
        anycable(down, page.log.len()),
        [
            "while-down-1",
            "while-down-2",
            "while-down-3",
            "after",
            "end"
        ],
        "{:?}",
        page.log
    );

    // Closing stdin makes the driver close the browser and exit.
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    stack.stop().await;
    Ok(())
}
