//! The web console in headless Chromium (`tests/js/console_e2e.mjs`): the
//! login form without the credential, the live numbers following a client
//! that connects and leaves, the presence table listing the user a
//! RoomChannel client reported, and "watch as" showing events published
//! through the producer (by the test, and by the console's publish form).
//! The driver also takes the screenshot docs/console.md shows
//! (`HERALD_CONSOLE_SCREENSHOT=docs/console.png` keeps it there).

use std::{collections::HashMap, process::Stdio, time::Duration};

use anyhow::Context as _;
use herald_gateway::GatewayConfig;
use herald_testkit::unique;
use herald_tests::{Stack, StackOptions, token};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use tokio_util::sync::CancellationToken;

use herald_tests::CHROMIUM;
const ADMIN: &str = "console-e2e-admin-credential";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_console_shows_live_numbers_and_what_a_credential_receives() -> anyhow::Result<()>
{
    let js = herald_tests::browser_drivers()?;
    // A gateway pod of the stack with the console, whose publish form posts
    // to the stack's producer.
    let stack = Stack::start_with(StackOptions::default()).await?;
    let mut args = vec!["herald-gateway".to_owned()];
    args.extend(stack.gateway_args());
    args.extend([
        "--console=true".to_owned(),
        format!("--console-token={ADMIN}"),
        format!("--console-publish-url={}", stack.events_url()),
    ]);
    let stop = CancellationToken::new();
    let gateway = herald_gateway::start(
        GatewayConfig::from_args(args).map_err(|e| anyhow::anyhow!("{e}"))?,
        stop.clone(),
    )
    .await?;
    let ready = format!("http://{}/readyz", gateway.ops_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !matches!(stack.http.get(&ready).send().await, Ok(r) if r.status().is_success()) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{ready} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let account = "42";
    let client = token(account, "7", "agent");
    let marker = unique("console-e2e");
    let dir = tempfile::tempdir()?;
    let screenshot = match std::env::var("HERALD_CONSOLE_SCREENSHOT") {
        // Relative to the workspace (tests run in the crate's directory).
        Ok(p) if !p.is_empty() => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(p),
        _ => dir.path().join("console.png"),
    };
    let mut child = Command::new("node")
        .current_dir(js)
        .arg("console_e2e.mjs")
        .env("CONSOLE", format!("http://{}", gateway.ops_addr))
        .env("ADMIN", ADMIN)
        .env("GW", format!("ws://{}", gateway.ws_addr))
        .env("TOKEN", &client)
        .env("ACCOUNT", account)
        .env("USER_ID", "7")
        .env("MARKER", &marker)
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run node")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut steps: HashMap<String, Vec<Value>> = HashMap::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .with_context(|| format!("the console driver stalled after {steps:?}"))??;
        let Some(line) = line else { break };
        let step: Value =
            serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
        let name = step["ev"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(
            !["failed", "page-error", "console-error"].contains(&name.as_str()),
            "the console page failed: {step}"
        );
        if name == "watching" {
            // What the test publishes through the producer must show up in
            // the watch view; another account's event must not.
            stack
                .publish(&json!({"type": "tag.updated", "account_id": "43",
                    "payload": {"id": "t0", "name": format!("{marker}-other-account"), "color": "tag-red"}}))
                .await?;
            stack
                .publish(&json!({"type": "tag.updated", "account_id": account,
                    "payload": {"id": "t1", "name": &marker, "color": "tag-red"}}))
                .await?;
        }
        steps.entry(name).or_default().push(step);
    }
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "the console driver exited with {status}");
    let one = |name: &str| -> anyhow::Result<&Value> {
        steps
            .get(name)
            .and_then(|v| v.first())
            .with_context(|| format!("no `{name}` step: {steps:?}"))
    };
    let refused = one("login-refused")?;
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["form"], true, "{refused}");
    assert!(
        !one("loaded")?["url"]
            .as_str()
            .unwrap_or_default()
            .contains(ADMIN),
        "the credential stays in the address bar"
    );
    let changed = one("connections-changed")?;
    assert_eq!(
        changed["after"].as_i64(),
        changed["before"].as_i64().map(|n| n + 1),
        "{changed}"
    );
    assert_eq!(changed["subscriptions"], 1, "{changed}");
    assert_eq!(
        one("presence")?["online"],
        true,
        "the presence table lists user 7"
    );
    let watching = one("watching")?["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        watching.contains("user 7") && watching.contains("account 42"),
        "{watching}"
    );
    let shown: Vec<&str> = steps["watch-event"]
        .iter()
        .filter_map(|s| s["text"].as_str())
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].contains(&marker) && shown[0].contains("tag.updated"),
        "{shown:?}"
    );
    assert!(shown[1].contains(&format!("{marker}-form")), "{shown:?}");
    assert!(
        shown.iter().all(|s| !s.contains("other-account")),
        "another account's event reached the watch view: {shown:?}"
    );
    let published = one("published")?["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        published.starts_with("producer answered 200"),
        "{published}"
    );
    assert_eq!(
        one("connections-dropped")?["after"],
        changed["before"],
        "the count goes back when the client leaves"
    );
    one("screenshot")?;
    let png = std::fs::read(&screenshot)?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    stop.cancel();
    gateway.stopped().await;
    stack.stop().await;
    Ok(())
}
