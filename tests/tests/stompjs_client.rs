//! End to end with the real `@stomp/stompjs` npm client, in Node.

use std::process::Stdio;

use herald_tests::{Stack, StackOptions, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_connects_receives_and_disconnects() -> anyhow::Result<()> {
    stompjs_session(false).await
}

/// The same under permessage-deflate: Node's `ws` offers it, the client
/// compresses every frame it sends and the gateway every frame it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_over_permessage_deflate() -> anyhow::Result<()> {
    stompjs_session(true).await
}

async fn stompjs_session(deflate: bool) -> anyhow::Result<()> {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
    anyhow::ensure!(
        std::path::Path::new(js)
            .join("node_modules/@stomp/stompjs")
            .exists(),
        "npm clients are not installed: run scripts/test.sh (it runs `npm ci` in tests/js)"
    );
    let gateway_args = if deflate {
        ["--ws-deflate", "--ws-deflate-min-bytes", "0"]
            .map(String::from)
            .to_vec()
    } else {
        Vec::new()
    };
    let stack = Stack::start_with(StackOptions {
        gateway_args,
        ..Default::default()
    })
    .await?;
    let out = tokio::process::Command::new("node")
        .env("WS_DEFLATE", if deflate { "1" } else { "0" })
        .current_dir(js)
        .arg("stomp_e2e.mjs")
        .arg(stack.ws_url("/ws.communication"))
        .arg(stack.events_url())
        .arg(token("42", "7", "agent"))
        .arg("not-a-token")
        .arg("42")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for step in [
        "OK bad token refused: 401",
        "OK connected version=1.2",
        "OK subscribed with receipt",
        "OK received tag.updated",
        "OK disconnected with receipt",
        "ALL OK",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    if deflate {
        // Node's `ws` names the extension only (it checked the parameters).
        assert!(
            stdout.contains("OK extensions=permessage-deflate\n"),
            "{stdout}"
        );
        let metrics = stack.gateway_metrics().await?;
        assert!(
            metrics.contains("herald_deflate_connections_total{protocol=\"stomp\"}"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("herald_deflated_frames_total 0\n"),
            "event frames were compressed:\n{metrics}"
        );
    }
    stack.stop().await;
    Ok(())
}
