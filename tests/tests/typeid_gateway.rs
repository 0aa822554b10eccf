//! The TypeID endpoint through the real broker: an independent Node `ws`
//! client for the whole life cycle, raw clients for every failure path.

use std::{process::Stdio, time::Duration};

use futures_util::SinkExt;
use herald_tests::{
    Stack, StackOptions, token,
    typeid::{join, joined, notification, open, recv, request, send},
};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_node_client_full_life_cycle() -> anyhow::Result<()> {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
    anyhow::ensure!(
        std::path::Path::new(js).join("node_modules/ws").exists(),
        "run scripts/test.sh (npm ci in tests/js)"
    );
    let stack = Stack::start().await?;
    // An opaque session registered through the identities table.
    stack
        .put_identity("sess-777", &json!({"account_id": "3", "kind": "user", "id": "777", "role": "agent", "conversations": ["conv-1"]}))
        .await?;
    let url = stack.ws_url("/notifications");
    herald_tests::retry(Duration::from_secs(20), || async {
        let mut ws = open(&url).await?;
        send(&mut ws, join("sess-777", 777, "7.0.30")).await?;
        let r = recv(&mut ws).await?.unwrap_or_default();
        anyhow::ensure!(r["Body"]["Status"] == 1, "identity not loaded yet");
        Ok(())
    })
    .await?;

    let mut node = tokio::process::Command::new("node")
        .current_dir(js)
        .args(["typeid_client.mjs", &url, "sess-777", "777", "conv-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut step = async || -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await??
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{e}: {line}"))?;
        anyhow::ensure!(v["step"] != "fail", "node client failed: {v}");
        Ok(v)
    };
    assert_eq!(step().await?["step"], "joined");
    assert_eq!(step().await?["step"], "pinged");
    stack
        .publish(&notification("3", &["777"], "hello 777"))
        .await?;
    stdin.write_all(b"go\n").await?;
    let n = step().await?;
    assert_eq!(n["step"], "notified");
    assert_eq!(n["body"]["Body"], "hello 777");
    assert_eq!(
        n["body"]["DeletedUsername"],
        Value::Null,
        "nulls are written out"
    );
    let r = step().await?;
    assert_eq!(r["step"], "responded");
    assert_eq!(r["body"]["Status"], 4, "{r}");
    assert_eq!(r["body"]["ConversationID"], "conv-1");
    assert_eq!(
        r["body"]["ClientID"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    let server_id = r["body"]["ServerID"]
        .as_str()
        .expect("a ServerID")
        .to_owned();

    // A separate Kafka consumer sees the record the gateway wrote.
    let consumer: BaseConsumer = herald_runtime::KafkaArgs::for_brokers(&stack.broker.bootstrap)
        .client_config()?
        .set("group.id", "herald-test-reader")
        .create()?;
    let topic = format!("{}client-commands", stack.prefix);
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let record = tokio::task::spawn_blocking(move || -> anyhow::Result<(Value, Option<String>)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m?;
                let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                return Ok((v, key));
            }
        }
        anyhow::bail!("no record on client-commands")
    })
    .await??;
    let (v, key) = record;
    assert_eq!(key.as_deref(), Some("3"), "keyed by account");
    assert_eq!(v["type"], "ConversationMessageRequest");
    assert_eq!(v["account_id"], "3");
    assert_eq!(v["payload"]["UserID"], "777");
    assert_eq!(v["payload"]["ConversationID"], "conv-1");
    assert_eq!(v["payload"]["Message"], "hello from node");
    assert_eq!(v["payload"]["ServerID"], server_id.as_str());
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics.contains("herald_typeid_requests_total{status=\"successful\"} 1"),
        "{metrics}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_failures_and_bad_frames() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: [
            "--typeid-join-timeout-ms",
            "300",
            "--typeid-joins-per-ip-per-minute",
            "6",
            "--typeid-max-client-version",
            "7.9",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/notifications");
    let good = token("3", "5", "agent");
    let status_of = async |frames: Vec<Value>| -> anyhow::Result<i64> {
        let mut ws = open(&url).await?;
        for f in frames {
            send(&mut ws, f).await?;
        }
        let r = recv(&mut ws).await?.expect("a JoinResponse");
        assert_eq!(r["TypeID"], -815187584);
        assert_eq!(r["Body"]["EncryptedSessionKey"], Value::Null);
        let status = r["Body"]["Status"].as_i64().unwrap();
        if status != 1 {
            assert!(recv(&mut ws).await?.is_none(), "closed after a failed join");
        }
        Ok(status)
    };
    assert_eq!(
        status_of(vec![join(&good, 5, "6.9.0")]).await?,
        3,
        "too old"
    );
    assert_eq!(status_of(vec![join(&good, 5, "8.0")]).await?, 3, "too new");
    assert_eq!(
        status_of(vec![join("unknown-session", 5, "7.0.30")]).await?,
        4
    );
    assert_eq!(
        status_of(vec![join(&good, 6, "7.0.30")]).await?,
        4,
        "UserID must match the session"
    );
    assert_eq!(
        status_of(vec![join(&token("3", "c1", "contact"), 1, "7.0.30")]).await?,
        4,
        "contacts cannot join"
    );
    assert_eq!(status_of(vec![join(&good, 5, "7.0.30")]).await?, 1);
    // Join timeout: nothing sent.
    assert_eq!(status_of(vec![]).await?, 5);
    // Wrong first frame and malformed JSON: closed.
    for first in [
        json!({"TypeID": -476754606, "Body": {"Signal": true}}).to_string(),
        "{nope".to_owned(),
    ] {
        let mut ws = open(&url).await?;
        ws.send(WsMessage::text(first)).await?;
        assert!(recv(&mut ws).await?.is_none());
    }
    // 7th join from this IP within the minute: throttled.
    assert_eq!(status_of(vec![join(&good, 5, "7.0.30")]).await?, 6);
    let metrics = stack.gateway_metrics().await?;
    for label in [
        "invalid_client_version\"} 2",
        "invalid_session\"} 3",
        "timeout\"} 1",
        "throttled\"} 1",
        "successful\"} 1",
    ] {
        assert!(
            metrics.contains(&format!("herald_typeid_joins_total{{status=\"{label}")),
            "{label}: {metrics}"
        );
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_statuses_audience_and_unknown_frames() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(StackOptions {
        gateway_args: [
            "--typeid-messages-per-second",
            "3",
            "--typeid-produce-timeout-ms",
            "1500",
        ]
        .map(String::from)
        .to_vec(),
        // The test stops the broker.
        own_kafka: Some(Default::default()),
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/notifications");
    let t5 = {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "5", "account_id": "3", "role": "agent", "exp": exp, "conversations": ["conv-1"]}),
            &jsonwebtoken::EncodingKey::from_secret(herald_tests::JWT_SECRET.as_bytes()),
        )?
    };
    let mut five = joined(&url, &t5, 5).await?;
    let mut six = joined(&url, &token("3", "6", "agent"), 6).await?;

    // Unknown but well-formed TypeID: ignored, the connection survives (ping still answered).
    send(&mut five, json!({"TypeID": 12345, "Body": {}})).await?;
    send(
        &mut five,
        json!({"TypeID": -476754606, "Body": {"Signal": true}}),
    )
    .await?;
    assert_eq!(
        recv(&mut five).await?,
        Some(json!({"TypeID": -476754606, "Body": {"Signal": true}}))
    );

    // Users not in the audience receive nothing: six gets only the second one.
    stack
        .publish(&notification("3", &["5"], "only five"))
        .await?;
    stack
        .publish(&notification("3", &["5", "6"], "both"))
        .await?;
    stack.publish(&json!({"type": "ConversationMessageNotification", "account_id": "3", "payload": {"ServerID": "x", "ConversationID": "c", "SenderID": 1, "Timestamp": 1}})).await?;
    stack
        .publish(&notification("3", &["5", "6"], "end"))
        .await?;
    let mut bodies5 = Vec::new();
    while bodies5.last().is_none_or(|b| b != "end") {
        let f = recv(&mut five).await?.expect("open");
        assert_eq!(f["TypeID"], -635182161);
        bodies5.push(f["Body"]["Body"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        bodies5,
        ["only five", "both", "end"],
        "no audience means nobody"
    );
    let f = recv(&mut six).await?.expect("open");
    assert_eq!(f["Body"]["Body"], "both");
    assert_eq!(recv(&mut six).await?.expect("open")["Body"]["Body"], "end");

    // Status 2: a conversation the credential does not grant; six has no grants at all.
    send(&mut five, request("conv-2", "a")).await?;
    let r = recv(&mut five).await?.unwrap();
    assert_eq!(
        (
            r["TypeID"].as_i64(),
            r["Body"]["Status"].as_i64(),
            r["Body"]["ClientID"].as_str()
        ),
        (Some(705131365), Some(2), Some("a"))
    );
    assert_eq!(r["Body"]["ServerID"], Value::Null);
    send(&mut six, request("conv-1", "b")).await?;
    assert_eq!(recv(&mut six).await?.unwrap()["Body"]["Status"], 2);
    // Status 1 for an invalid request (no message).
    send(
        &mut five,
        json!({"TypeID": -2124552136, "Body": {"ConversationID": "conv-1", "ClientID": "c"}}),
    )
    .await?;
    assert_eq!(recv(&mut five).await?.unwrap()["Body"]["Status"], 1);
    // Status 5 once the per-session rate is exceeded (3/s; three were spent above).
    let mut statuses = Vec::new();
    for i in 0..4 {
        send(&mut five, request("conv-1", &format!("r{i}"))).await?;
        statuses.push(
            recv(&mut five).await?.unwrap()["Body"]["Status"]
                .as_i64()
                .unwrap(),
        );
    }
    assert!(statuses.contains(&5), "{statuses:?}");
    // Status 1 when Kafka cannot acknowledge.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stack.broker.kill().await?;
    send(&mut five, request("conv-1", "down")).await?;
    let r = recv(&mut five).await?.unwrap();
    assert_eq!(r["Body"]["Status"], 1, "{r}");
    assert_eq!(r["Body"]["ClientID"], "down");

    // Malformed JSON after joining: closed with a log line.
    five.send(WsMessage::text("{broken")).await?;
    assert!(recv(&mut five).await?.is_none());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: ["--typeid-idle-timeout-secs", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await?;
    let mut ws = joined(
        &stack.ws_url("/notifications"),
        &token("3", "5", "agent"),
        5,
    )
    .await?;
    assert!(
        recv(&mut ws).await?.is_none(),
        "closed after a silent second"
    );
    stack.stop().await;
    Ok(())
}
