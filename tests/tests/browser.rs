//! Real browsers: headless Chromium loads a page on loopback whose clients
//! are the browser builds of @stomp/stompjs, @rails/actioncable and
//! @anycable/web, and plain WebSocket for the Pulse stream and TypeID
//! (`tests/js/browser_e2e.mjs`). What only browsers do is covered: no custom
//! headers on the upgrade, an `Origin` on every upgrade (the allow-list lets
//! the page's origin in and refuses another).

use std::{collections::HashSet, process::Stdio, time::Duration};

use anyhow::Context as _;
use herald_testkit::free_port;
use herald_tests::{Stack, StackOptions, token};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

const CHROMIUM: &str = "/usr/bin/chromium";

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
    anyhow::ensure!(
        std::path::Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
    );
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
    anyhow::ensure!(
        std::path::Path::new(js)
            .join("node_modules/playwright-core")
            .exists(),
        "npm clients are not installed: run scripts/test.sh (it runs `npm ci` in tests/js)"
    );
    let (page_port, other_port) = (free_port()?, free_port()?);
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec![
            "--allowed-origins".into(),
            format!("http://127.0.0.1:{page_port}"),
        ],
        ..Default::default()
    })
    .await?;
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
            "typeid-joined" => assert_eq!(ev["status"], 1, "{ev}"),
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
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    stack.stop().await;
    Ok(())
}
