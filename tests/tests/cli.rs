//! The operator CLI (`herald` binary) against a real broker, producer and
//! gateway: `identity register|revoke`, `publish`, `token`, and `tail` over
//! each protocol, with their exit codes and stderr messages; and `herald
//! dev` with its embedded broker, end to end through every endpoint.
//!
//! Needs the binaries built (`cargo build --workspace --bins`, as
//! scripts/test.sh does).

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use herald_producer::ProducerConfig;
use herald_tests::{JWT_SECRET, Stack, bin_path, free_port};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStderr, ChildStdout, Command},
};
use tokio_util::sync::CancellationToken;

/// Generous bound on any one step; a passing run takes seconds.
const LONG: Duration = Duration::from_secs(60);

/// `herald` with a clean environment pointed at `stack`.
fn herald(stack: &Stack) -> anyhow::Result<Command> {
    let mut cmd = Command::new(bin_path("herald")?);
    // The developer's own HERALD_* settings must not leak into the test.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(name);
        }
    }
    cmd.env(
        "HERALD_PRODUCER_URL",
        format!("http://{}", stack.producer.addr),
    )
    .env("HERALD_GATEWAY_URL", stack.ws_url(""))
    .stdin(Stdio::null())
    .kill_on_drop(true);
    Ok(cmd)
}

/// A finished command.
#[derive(Debug)]
struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: Command, stdin: Option<&str>) -> anyhow::Result<Done> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .context("herald did not finish")??;
    Ok(Done {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A running `herald tail` that confirmed its subscription.
struct Tail {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: BufReader<ChildStderr>,
    stderr_seen: String,
}

impl Tail {
    /// Start `herald tail args…` and wait for `subscribed` on stderr; if it
    /// exits first, its result.
    async fn start(stack: &Stack, args: &[&str]) -> anyhow::Result<Result<Tail, Done>> {
        let mut cmd = herald(stack)?;
        cmd.arg("tail").args(args);
        Tail::spawn(cmd).await
    }

    /// Spawn `cmd` (a `herald tail`) and wait as [`Tail::start`] does.
    async fn spawn(mut cmd: Command) -> anyhow::Result<Result<Tail, Done>> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(LONG, stderr.read_line(&mut line))
                .await
                .with_context(|| format!("tail never subscribed; stderr so far: {seen}"))??;
            seen.push_str(&line);
            if line.contains("herald tail: subscribed to") {
                return Ok(Ok(Tail {
                    child,
                    stdout,
                    stderr,
                    stderr_seen: seen,
                }));
            }
            if n == 0 {
                let status = tokio::time::timeout(LONG, child.wait()).await??;
                let mut rest = String::new();
                tokio::time::timeout(LONG, stdout.into_inner().read_to_string(&mut rest)).await??;
                return Ok(Err(Done {
                    code: status.code(),
                    stdout: rest,
                    stderr: seen,
                }));
            }
        }
    }

    /// Start, retrying while the gateway has not read the identity yet
    /// (a fresh opaque token is rejected until the identities record arrives).
    async fn start_when_known(stack: &Stack, args: &[&str]) -> anyhow::Result<Tail> {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            match Tail::start(stack, args).await? {
                Ok(tail) => return Ok(tail),
                Err(done) if done.code == Some(3) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(done) => bail!("tail exited before subscribing: {done:?}"),
            }
        }
    }

    /// The next event line, as JSON.
    async fn next_event(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(LONG, self.stdout.next_line())
            .await
            .context("no event line")??
            .context("tail's stdout closed")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }

    /// Wait for the process to end.
    async fn finish(mut self) -> anyhow::Result<Done> {
        let mut stdout = String::new();
        while let Some(line) = tokio::time::timeout(LONG, self.stdout.next_line()).await?? {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let mut rest = String::new();
        tokio::time::timeout(LONG, self.stderr.read_to_string(&mut rest)).await??;
        let status = tokio::time::timeout(LONG, self.child.wait()).await??;
        Ok(Done {
            code: status.code(),
            stdout,
            stderr: self.stderr_seen + &rest,
        })
    }
}

async fn publish(stack: &Stack, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut cmd = herald(stack)?;
    cmd.arg("publish").args(args);
    let done = run(cmd, None).await?;
    anyhow::ensure!(done.code == Some(0), "publish failed: {done:?}");
    done.stdout
        .lines()
        .map(|l| serde_json::from_str(l).context("result line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cable_tail_of_a_registered_identity_receives_then_is_revoked() -> anyhow::Result<()> {
    let stack = Stack::start().await?;

    // Register: a generated token on stdout, where it landed on stderr.
    let mut cmd = herald(&stack)?;
    cmd.args([
        "identity",
        "register",
        "--account",
        "42",
        "--kind",
        "user",
        "--id",
        "7",
        "--role",
        "agent",
    ]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    let token = done.stdout.trim().to_owned();
    assert_eq!(token.len(), 64, "one generated token: {done:?}");
    assert!(
        done.stderr.contains("registered user 7 of account 42")
            && done.stderr.contains(&format!("{}identities", stack.prefix)),
        "{}",
        done.stderr
    );

    let mut tail = Tail::start_when_known(
        &stack,
        &[
            "--protocol",
            "cable",
            "--token",
            &token,
            "--account",
            "42",
            "--user-id",
            "7",
        ],
    )
    .await?;
    assert!(
        !tail.stderr_seen.contains(&token),
        "the token is never printed: {}",
        tail.stderr_seen
    );

    let results = publish(
        &stack,
        &[
            "--type",
            "message.created",
            "--account",
            "42",
            "--payload",
            r#"{"id":1,"content":"hi","message_type":0,"conversation_id":1}"#,
        ],
    )
    .await?;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["type"], "message.created");
    assert_eq!(results[0]["topic"], format!("{}message", stack.prefix));
    assert!(results[0]["partition"].is_i64() && results[0]["offset"].is_i64());

    let event = tail.next_event().await?;
    assert_eq!(event["protocol"], "cable");
    assert_eq!(event["channel"], "RoomChannel");
    assert_eq!(event["event"]["event"], "message.created");
    assert_eq!(event["event"]["data"]["id"], 1);
    assert_eq!(event["event"]["data"]["content"], "hi");

    // Revoke: the live tail is disconnected as unauthorized (exit 3).
    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_IDENTITY_TOKEN", &token)
        .args(["identity", "revoke"]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(done.stderr.contains("revoked key"), "{}", done.stderr);
    let ended = tail.finish().await?;
    assert_eq!(ended.code, Some(3), "{ended:?}");
    assert!(
        ended
            .stderr
            .contains("disconnected by the gateway: unauthorized"),
        "{}",
        ended.stderr
    );
    assert!(!ended.stderr.contains(&token));

    // And a new tail with the revoked token is rejected outright.
    let again = Tail::start(&stack, &["--protocol", "cable", "--token", &token]).await?;
    let Err(rejected) = again else {
        bail!("a revoked token subscribed")
    };
    assert_eq!(rejected.code, Some(3), "{rejected:?}");
    assert!(
        rejected
            .stderr
            .contains("rejected the RoomChannel subscription"),
        "{}",
        rejected.stderr
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_tail_with_a_minted_jwt_and_refusals() -> anyhow::Result<()> {
    let stack = Stack::start().await?;

    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_JWT_SECRET", JWT_SECRET).args([
        "token",
        "--account",
        "5",
        "--sub",
        "3",
        "--role",
        "agent",
        "--ttl-secs",
        "600",
    ]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    let jwt = done.stdout.trim().to_owned();

    let tail = Tail::start(
        &stack,
        &[
            "--protocol",
            "stomp",
            "--token",
            &jwt,
            "--count",
            "1",
            "--timeout-secs",
            "120",
        ],
    )
    .await?
    .map_err(|d| anyhow::anyhow!("tail did not subscribe: {d:?}"))?;
    assert!(
        tail.stderr_seen.contains("subscribed to /events"),
        "{}",
        tail.stderr_seen
    );

    // A batch from stdin: another account's event first, then account 5's.
    let mut cmd = herald(&stack)?;
    cmd.args(["publish", "--file", "-"]);
    let batch = json!([
        {"type": "tag.updated", "account_id": "6", "payload": {"id": "t6", "name": "other", "color": "tag-red"}},
        {"type": "tag.updated", "account_id": "5", "payload": {"id": "t5", "name": "vip", "color": "tag-red"}},
    ]);
    let done = run(cmd, Some(&batch.to_string())).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_eq!(done.stdout.lines().count(), 2, "{done:?}");

    // --count 1: the one event of account 5, then exit 0.
    let ended = tail.finish().await?;
    assert_eq!(ended.code, Some(0), "{ended:?}");
    let lines: Vec<Value> = ended
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1, "{}", ended.stdout);
    assert_eq!(lines[0]["protocol"], "stomp");
    assert_eq!(lines[0]["destination"], "/events");
    assert_eq!(lines[0]["event"]["type"], "tag.updated");
    assert_eq!(lines[0]["event"]["payload"]["id"], "t5");
    let message_id = lines[0]["message_id"].as_str().unwrap_or_default();
    assert!(
        message_id.starts_with(&format!("{}tag:", stack.prefix)),
        "{message_id}"
    );

    // A bad token: the gateway's 401 on stderr, exit 3.
    let bad = Tail::start(
        &stack,
        &["--protocol", "stomp", "--token", "not-a-valid-token"],
    )
    .await?;
    let Err(bad) = bad else {
        bail!("a bad token subscribed")
    };
    assert_eq!(bad.code, Some(3), "{bad:?}");
    assert!(bad.stderr.contains("401 Unauthorized"), "{}", bad.stderr);

    // An unknown destination is refused (exit 1), naming it.
    let nowhere = Tail::start(
        &stack,
        &[
            "--protocol",
            "stomp",
            "--token",
            &jwt,
            "--destination",
            "/nowhere",
        ],
    )
    .await?;
    let Err(nowhere) = nowhere else {
        bail!("an unknown destination subscribed")
    };
    assert_eq!(nowhere.code, Some(1), "{nowhere:?}");
    assert!(nowhere.stderr.contains("/nowhere"), "{}", nowhere.stderr);

    // An invalid event: nothing published, the reason per event, exit 1.
    let mut cmd = herald(&stack)?;
    cmd.args([
        "publish",
        "--type",
        "message.created",
        "--account",
        "5",
        "--payload",
        "{}",
    ]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(1), "{done:?}");
    assert!(done.stdout.is_empty());
    assert!(
        done.stderr.contains("400") && done.stderr.contains("event 0:"),
        "{}",
        done.stderr
    );

    // Nothing listening: exit 5 for both services.
    let dead = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_PRODUCER_URL", format!("http://{dead}"))
        .args(["publish", "--type", "tag.updated", "--account", "5"]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(5), "{done:?}");
    assert!(
        done.stderr.contains("cannot reach the producer"),
        "{}",
        done.stderr
    );
    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_GATEWAY_URL", format!("ws://{dead}"))
        .args(["tail", "--token", &jwt]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(5), "{done:?}");
    assert!(done.stderr.contains("cannot connect"), "{}", done.stderr);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_typeid_tails() -> anyhow::Result<()> {
    let stack = Stack::start().await?;

    // /stream with a JWT: the account comes from its claims.
    let jwt = herald_tests::token("42", "7", "agent");
    let mut stream = Tail::start(&stack, &["--protocol", "stream", "--token", &jwt])
        .await?
        .map_err(|d| anyhow::anyhow!("stream tail did not subscribe: {d:?}"))?;
    assert!(
        stream.stderr_seen.contains("/stream?account_id=42"),
        "{}",
        stream.stderr_seen
    );

    // TypeID with a registered session token that names its conversations.
    let mut cmd = herald(&stack)?;
    cmd.args([
        "identity",
        "register",
        "--account",
        "3",
        "--id",
        "777",
        "--token",
        "sess-777-0123456789",
        "--conversations",
        "conv-1",
    ]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert_eq!(done.stdout.trim(), "sess-777-0123456789");
    let mut typeid = Tail::start_when_known(
        &stack,
        &[
            "--protocol",
            "typeid",
            "--token",
            "sess-777-0123456789",
            "--user-id",
            "777",
        ],
    )
    .await?;

    publish(
        &stack,
        &[
            "--type",
            "added_message",
            "--account",
            "42",
            "--payload",
            r#"{"id":1,"conversation_id":5,"type":1,"timestamp":1795600000000,"read":false,"seen":false,"data":"aXY=-:-Y2lwaGVy","mime_type":"dGV4dA=="}"#,
        ],
    )
    .await?;
    let event = stream.next_event().await?;
    assert_eq!(event["protocol"], "stream");
    assert_eq!(event["channel"], "NotificationsChannel");
    assert_eq!(event["event"]["operation"], "added_message");
    assert_eq!(event["event"]["content"]["data"], "aXY=-:-Y2lwaGVy");

    publish(
        &stack,
        &[
            "--type",
            "ConversationMessageNotification",
            "--account",
            "3",
            "--audience",
            r#"{"users":["777"]}"#,
            "--payload",
            r#"{"ClientID":"c1","ServerID":"s1","ConversationID":"conv-1","SenderID":9,"Body":"hello","Timestamp":1795600000000}"#,
        ],
    )
    .await?;
    let event = typeid.next_event().await?;
    assert_eq!(event["protocol"], "typeid");
    assert_eq!(event["type"], "ConversationMessageNotification");
    assert_eq!(event["event"]["Body"], "hello");

    // Revoking the session closes the TypeID tail as unauthorized.
    let mut cmd = herald(&stack)?;
    cmd.args(["identity", "revoke", "--token", "sess-777-0123456789"]);
    assert_eq!(run(cmd, None).await?.code, Some(0));
    let ended = typeid.finish().await?;
    assert_eq!(ended.code, Some(3), "{ended:?}");
    assert!(ended.stderr.contains("session revoked"), "{}", ended.stderr);

    drop(stream);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_producer_needs_the_api_key() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    const KEY: &str = "operator-cli-test-api-key-0123456789";
    let shutdown = CancellationToken::new();
    let secured = herald_producer::start(
        ProducerConfig::from_args([
            "herald-producer",
            "--kafka-brokers",
            &stack.broker.bootstrap,
            "--topic-prefix",
            &stack.prefix,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--api-key",
            KEY,
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?,
        shutdown.clone(),
    )
    .await?;
    let url = format!("http://{}", secured.addr);
    let publish_args = [
        "publish",
        "--type",
        "tag.updated",
        "--account",
        "1",
        "--payload",
        r#"{"id":"t1","name":"vip","color":"tag-red"}"#,
    ];

    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_PRODUCER_URL", &url).args(publish_args);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(3), "{done:?}");
    assert!(
        done.stderr.contains("401") && done.stderr.contains("--api-key"),
        "{}",
        done.stderr
    );

    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_PRODUCER_URL", &url)
        .args(publish_args)
        .args(["--api-key", "wrong-key"]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(3), "{done:?}");
    assert!(!done.stderr.contains("wrong-key"), "{}", done.stderr);

    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_PRODUCER_URL", &url)
        .env("HERALD_API_KEY", KEY)
        .args(publish_args);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(done.stdout.contains(&format!("{}tag", stack.prefix)));

    let mut cmd = herald(&stack)?;
    cmd.env("HERALD_PRODUCER_URL", &url)
        .env("HERALD_API_KEY", KEY)
        .args(["identity", "register", "--account", "1", "--id", "1"]);
    let done = run(cmd, None).await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    assert!(!done.stderr.contains(KEY));

    shutdown.cancel();
    secured.stopped().await;
    stack.stop().await;
    Ok(())
}

/// A shell running one command line exactly as `herald dev` printed it,
/// with the developer's own HERALD_* settings removed.
fn as_printed(line: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec {line}"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// The banner line that starts with `prefix` (leading blanks ignored).
fn printed<'a>(banner: &'a str, prefix: &str) -> anyhow::Result<&'a str> {
    banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("the banner has no line starting {prefix:?}:\n{banner}"))
}

/// `herald dev` from the built binary with its embedded broker (no Kafka of
/// the test harness): the commands of its banner, run as printed, carry one
/// event published through its producer API to each endpoint (STOMP,
/// ActionCable RoomChannel, the Pulse stream, TypeID); an independent Kafka
/// client (rdkafka, like kcat or confluent-kafka) produces to the broker's
/// loopback port and a client receives that record too; Ctrl-C stops it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_with_its_embedded_broker_serves_every_endpoint() -> anyhow::Result<()> {
    use rdkafka::{
        ClientConfig,
        message::{Header, OwnedHeaders},
        producer::{FutureProducer, FutureRecord},
    };

    let ports = herald_testkit::free_ports(5)?;
    let at = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let bin = bin_path("herald")?;
    let mut cmd = as_printed(&format!(
        "{} dev --broker-port {} --gateway-listen {} --gateway-ops-listen {} \
         --producer-listen {} --producer-ops-listen {}",
        bin.display(),
        ports[0],
        at(1),
        at(2),
        at(3),
        at(4)
    ));
    let mut dev = cmd.stdout(Stdio::piped()).spawn()?;
    // Logs share stdout with the banner: keep draining it.
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stdout = BufReader::new(dev.stdout.take().context("stdout")?).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    loop {
        let line = tokio::time::timeout(LONG, lines_rx.recv())
            .await
            .with_context(|| format!("no banner; output so far:\n{banner}"))?
            .with_context(|| format!("herald dev exited; output:\n{banner}"))?;
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Press Ctrl-C to stop.") {
            break;
        }
    }
    // The rest of its log goes to the test's output (shown when it fails).
    tokio::spawn(async move {
        while let Some(line) = lines_rx.recv().await {
            eprintln!("herald dev: {line}");
        }
    });

    // Every endpoint is listed, with the broker's loopback address.
    let (g, p) = (at(1), at(3));
    for expected in [
        format!("127.0.0.1:{} (embedded, in memory", ports[0]),
        format!("http://{p}/v1/events"),
        format!("ws://{g}/ws.communication"),
        format!("ws://{g}/cable"),
        format!("ws://{g}/stream?account_id=1"),
        format!("ws://{g}/notifications"),
        format!("http://{}/metrics", at(2)),
        format!("http://{}/metrics", at(4)),
    ] {
        assert!(
            banner.contains(&expected),
            "{expected:?} missing:\n{banner}"
        );
    }
    let exe = bin.display().to_string();

    let mut stomp = Tail::spawn(as_printed(printed(
        &banner,
        &format!("{exe} tail --protocol stomp "),
    )?))
    .await?
    .map_err(|d| anyhow::anyhow!("STOMP tail did not subscribe: {d:?}"))?;
    let mut stream = Tail::spawn(as_printed(printed(
        &banner,
        &format!("{exe} tail --protocol stream "),
    )?))
    .await?
    .map_err(|d| anyhow::anyhow!("stream tail did not subscribe: {d:?}"))?;
    let done = run(
        as_printed(printed(&banner, &format!("{exe} identity register "))?),
        None,
    )
    .await?;
    assert_eq!(done.code, Some(0), "{done:?}");
    // An opaque token is known once the gateway read its identities record.
    let known = |prefix: String| {
        let banner = &banner;
        async move {
            let line = printed(banner, &prefix)?;
            let deadline = tokio::time::Instant::now() + LONG;
            loop {
                match Tail::spawn(as_printed(line)).await? {
                    Ok(tail) => return Ok::<_, anyhow::Error>(tail),
                    Err(done) if done.code == Some(3) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(done) => bail!("{prefix} exited before subscribing: {done:?}"),
                }
            }
        }
    };
    let mut cable = known(format!("{exe} tail --protocol cable ")).await?;
    let mut typeid = known(format!("{exe} tail --protocol typeid ")).await?;

    // The curl line, through the producer API (sent here with reqwest).
    let curl = printed(&banner, "curl -s ")?;
    let body = curl
        .split_once("-d '")
        .and_then(|(_, rest)| rest.strip_suffix('\''))
        .context("curl line has a -d body")?;
    let answer = reqwest::Client::new()
        .post(format!("http://{p}/v1/events"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    assert!(answer.status().is_success(), "{answer:?}");
    let event = stomp.next_event().await?;
    assert_eq!(event["protocol"], "stomp");
    assert_eq!(event["event"]["type"], "message.created", "{event}");
    assert_eq!(event["event"]["payload"]["content"], "hi", "{event}");
    let event = cable.next_event().await?;
    assert_eq!(event["channel"], "RoomChannel");
    assert_eq!(event["event"]["event"], "message.created", "{event}");
    assert_eq!(event["event"]["data"]["content"], "hi", "{event}");

    for (prefix, what) in [
        (
            format!("{exe} publish --producer-url http://{p} --type added_message "),
            "stream",
        ),
        (
            format!(
                "{exe} publish --producer-url http://{p} --type ConversationMessageNotification "
            ),
            "typeid",
        ),
    ] {
        let done = run(as_printed(printed(&banner, &prefix)?), None).await?;
        assert_eq!(done.code, Some(0), "{what}: {done:?}");
    }
    let event = stream.next_event().await?;
    assert_eq!(event["channel"], "NotificationsChannel");
    assert_eq!(event["event"]["operation"], "added_message", "{event}");
    let event = typeid.next_event().await?;
    assert_eq!(event["protocol"], "typeid");
    assert_eq!(event["type"], "ConversationMessageNotification", "{event}");
    assert_eq!(event["event"]["Body"], "hello", "{event}");

    // Another Kafka client produces to the printed broker port: a plain
    // (non-idempotent) producer, as kcat or confluent-kafka would be.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", at(0))
        .set("message.timeout.ms", "30000")
        .create()?;
    let envelope = json!({
        "id": uuid::Uuid::now_v7().to_string(),
        "type": "message.created",
        "account_id": "1",
        "payload": {"id": 2, "content": "from another Kafka client", "message_type": 0, "conversation_id": 1},
    })
    .to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "type",
            value: Some("message.created"),
        })
        .insert(Header {
            key: "account_id",
            value: Some("1"),
        });
    producer
        .send(
            FutureRecord::to("herald.message")
                .key("1")
                .payload(&envelope)
                .headers(headers),
            LONG,
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("external produce failed: {e}"))?;
    let event = stomp.next_event().await?;
    assert_eq!(
        event["event"]["payload"]["content"], "from another Kafka client",
        "{event}"
    );

    // Ctrl-C stops development mode, and the broker with it.
    let pid = dev.id().context("dev pid")?;
    let kill = tokio::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await?;
    assert!(kill.success());
    let status = tokio::time::timeout(LONG, dev.wait()).await??;
    assert!(status.success(), "herald dev ended with {status}");
    assert!(
        tokio::net::TcpStream::connect(at(0)).await.is_err(),
        "the broker port is closed once dev mode stopped"
    );
    drop((stomp, stream, cable, typeid));
    Ok(())
}
