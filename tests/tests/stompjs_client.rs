//! End to end with the real `@stomp/stompjs` npm client, in Node.

use std::process::Stdio;

use herald_tests::{Stack, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_connects_receives_and_disconnects() -> anyhow::Result<()> {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
    anyhow::ensure!(
        std::path::Path::new(js)
            .join("node_modules/@stomp/stompjs")
            .exists(),
        "npm clients are not installed: run scripts/test.sh (it runs `npm ci` in tests/js)"
    );
    let stack = Stack::start().await?;
    let out = tokio::process::Command::new("node")
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
    stack.stop().await;
    Ok(())
}
