//! STOMP endpoint through the real broker: producer -> Kafka -> gateway ->
//! raw WebSocket STOMP clients, asserting on the bytes they receive.

use std::time::Duration;

use herald_tests::{Stack, StackOptions, airy_message, stomp::RawStomp, token};
use serde_json::{Value, json};

/// Read frames until one whose body contains `marker`; returns the frames before it.
async fn until_marker(
    c: &mut RawStomp,
    marker: &str,
) -> anyhow::Result<Vec<herald_tests::stomp::Received>> {
    let mut seen = Vec::new();
    loop {
        let f = c.next_frame().await?;
        assert_eq!(f.command, "MESSAGE", "unexpected frame {}", f.raw);
        if f.body.contains(marker) {
            return Ok(seen);
        }
        seen.push(f);
    }
}

fn marker_event(account: &str, marker: &str) -> Value {
    json!({"type": "tag.updated", "account_id": account, "payload": {"id": marker, "name": "marker", "color": "x"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_destination_receives_its_events() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");
    let mut c = RawStomp::connect(&url, &token("1", "7", "agent")).await?;
    c.subscribe("events", "/events").await?;
    c.subscribe("msg", "/queue/message").await?;
    c.subscribe("unread", "/queue/unread-count").await?;
    c.subscribe("up", "/queue/channel/connected").await?;
    c.subscribe("down", "/queue/channel/disconnected").await?;

    let channel = json!({"id": "ch-1", "name": "my page 1", "source": "facebook", "source_channel_id": "fb-1"});
    stack
        .publish(&json!([
            airy_message("1", 1),
            {"type": "unread_count.updated", "account_id": "1",
             "payload": {"conversation_id": "conv-1", "unread_message_count": 42, "timestamp": "2026-11-25T10:00:00.000Z"}},
            {"type": "channel.connected", "account_id": "1", "payload": channel},
            {"type": "channel.disconnected", "account_id": "1", "payload": channel},
            {"type": "metadata.updated", "account_id": "1",
             "payload": {"subject": "conversation", "identifier": "conv-1", "metadata": {"contact": {"displayName": "Grace"}}}},
        ]))
        .await?;
    // Topics are not ordered with each other: read the six expected frames,
    // then prove nothing else was queued with a marker on each topic.
    let mut frames = Vec::new();
    for _ in 0..6 {
        frames.push(c.next_frame().await?);
    }
    let mut end_msg = airy_message("1", 99);
    end_msg["payload"]["message"]["id"] = json!("END-MSG");
    stack
        .publish(&json!([end_msg, marker_event("1", "END-TAG")]))
        .await?;
    let mut markers = 0;
    while markers < 3 {
        let f = c.next_frame().await?;
        assert!(f.body.contains("END-"), "unexpected extra frame {}", f.raw);
        markers += 1;
    }
    let by_sub = |sub: &str| -> Vec<Value> {
        frames
            .iter()
            .filter(|f| f.header("subscription") == Some(sub))
            .map(|f| serde_json::from_str(&f.body).expect("JSON body"))
            .collect()
    };
    // Every MESSAGE carries exact, complete headers.
    for f in &frames {
        assert_eq!(f.header("content-type"), Some("application/json"));
        assert_eq!(
            f.header("content-length"),
            Some(f.body.len().to_string().as_str()),
            "{}",
            f.raw
        );
        assert!(f.header("message-id").is_some_and(|m| !m.is_empty()));
    }
    let mut events = by_sub("events");
    let seen: Vec<String> = frames
        .iter()
        .map(|f| format!("{:?} {}", f.header("subscription"), f.body))
        .collect();
    assert_eq!(events.len(), 2, "{seen:#?}");
    // The two come from different topics (message, metadata), which Kafka
    // does not order with each other: compare them by type.
    events.sort_by_key(|e| e["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(events[0]["type"], "message.created", "{seen:#?}");
    assert_eq!(events[0]["payload"]["message"]["id"], "m-1-1");
    assert!(
        events[0]["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );
    assert_eq!(events[1]["type"], "metadata.updated", "{seen:#?}");
    assert_eq!(
        events[1]["payload"]["metadata"]["contact"]["displayName"],
        "Grace"
    );

    let msg = by_sub("msg");
    assert_eq!(msg.len(), 1);
    assert_eq!(msg[0]["message"]["id"], "m-1-1");
    assert!(
        msg[0].get("type").is_none(),
        "old queues carry the bare payload"
    );
    assert_eq!(
        by_sub("unread"),
        vec![
            json!({"conversation_id": "conv-1", "unread_message_count": 42, "timestamp": "2026-11-25T10:00:00.000Z"})
        ]
    );
    assert_eq!(by_sub("up"), vec![channel.clone()]);
    assert_eq!(by_sub("down"), vec![channel]);
    let dest = frames
        .iter()
        .find(|f| f.header("subscription") == Some("down"))
        .unwrap();
    assert_eq!(
        dest.header("destination"),
        Some("/queue/channel/disconnected")
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_receive_exactly_their_own_events() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");
    let mut a = RawStomp::connect(&url, &token("acct-a", "1", "agent")).await?;
    let mut b = RawStomp::connect(&url, &token("acct-b", "1", "agent")).await?;
    a.subscribe("s", "/queue/message").await?;
    a.subscribe("e", "/events").await?;
    b.subscribe("s", "/queue/message").await?;
    b.subscribe("e", "/events").await?;
    let mut batch = Vec::new();
    for n in 0..20 {
        batch.push(airy_message("acct-a", n));
        batch.push(airy_message("acct-b", n));
    }
    stack.publish(&Value::Array(batch)).await?;
    // Markers on the same topic and key (so the same partition) as the events.
    let mut end_a = airy_message("acct-a", 0);
    end_a["payload"]["message"]["id"] = json!("END-A");
    let mut end_b = airy_message("acct-b", 0);
    end_b["payload"]["message"]["id"] = json!("END-B");
    stack.publish(&json!([end_a, end_b])).await?;

    for (client, own, other) in [(&mut a, "acct-a", "acct-b"), (&mut b, "acct-b", "acct-a")] {
        let marker = if own == "acct-a" { "END-A" } else { "END-B" };
        let frames = until_marker(client, marker).await?;
        assert_eq!(frames.len(), 40, "20 events on two subscriptions");
        for f in &frames {
            assert!(
                f.body.contains(&format!("m-{own}-")),
                "{own} got {}",
                f.body
            );
            assert!(
                !f.body.contains(other),
                "{own} got another tenant's event: {}",
                f.body
            );
        }
        // Per-account order is preserved on each subscription.
        let ids: Vec<String> = frames
            .iter()
            .filter(|f| f.header("subscription") == Some("s"))
            .map(|f| {
                serde_json::from_str::<Value>(&f.body).unwrap()["message"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let expected: Vec<String> = (0..20).map(|n| format!("m-{own}-{n}")).collect();
        assert_eq!(ids, expected);
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_narrows_delivery_inside_an_account() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");
    let mut seven = RawStomp::connect(&url, &token("1", "7", "agent")).await?;
    let mut eight = RawStomp::connect(&url, &token("1", "8", "agent")).await?;
    seven.subscribe("s", "/queue/message").await?;
    eight.subscribe("s", "/queue/message").await?;
    let mut only_seven = airy_message("1", 1);
    only_seven["audience"] = json!({"users": ["7"]});
    stack
        .publish(&json!([only_seven, airy_message("1", 2)]))
        .await?;
    let mut end = airy_message("1", 3);
    end["payload"]["message"]["id"] = json!("END");
    stack.publish(&end).await?;
    let s7 = until_marker(&mut seven, "END").await?;
    let s8 = until_marker(&mut eight, "END").await?;
    assert_eq!(s7.len(), 2);
    assert_eq!(s8.len(), 1);
    assert!(s8[0].body.contains("m-1-2"));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_header_auth_and_refusals() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");

    // Authorization on the upgrade request; CONNECT carries nothing.
    let bearer = format!("Bearer {}", token("1", "7", "agent"));
    let mut c = RawStomp::open(&url, "v10.stomp, v11.stomp", Some(&bearer)).await?;
    assert_eq!(
        c.protocol.as_deref(),
        Some("v11.stomp"),
        "highest offered subprotocol is echoed"
    );
    c.send("STOMP\naccept-version:1.0,1.1,1.2\n\n\0").await?;
    let f = c.next_frame().await?;
    assert_eq!(f.command, "CONNECTED");
    assert_eq!(
        f.header("version"),
        Some("1.1"),
        "bounded by the negotiated subprotocol"
    );
    assert!(f.header("session").is_some_and(|s| !s.is_empty()));
    assert!(f.header("server").is_some_and(|s| s.starts_with("herald/")));

    // passcode header works too.
    let mut p = RawStomp::open(&url, "v12.stomp", None).await?;
    p.send(&format!(
        "CONNECT\naccept-version:1.2\nlogin:x\npasscode:{}\n\n\0",
        token("1", "7", "agent")
    ))
    .await?;
    assert_eq!(p.next_frame().await?.command, "CONNECTED");

    // Bad, forged and missing credentials: ERROR with 401, then close.
    let forged = {
        let t = token("1", "7", "agent");
        let (head, _) = t.rsplit_once('.').unwrap();
        format!("{head}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    };
    for creds in [
        "Authorization:Bearer nonsense\n".to_owned(),
        format!("Authorization:{forged}\n"),
        String::new(),
    ] {
        let mut bad = RawStomp::open(&url, "v12.stomp", None).await?;
        bad.send(&format!("CONNECT\naccept-version:1.2\n{creds}\n\0"))
            .await?;
        let f = bad.next_frame().await?;
        assert_eq!(f.command, "ERROR");
        assert!(
            f.header("message").is_some_and(|m| m.contains("401")),
            "{}",
            f.raw
        );
        assert!(
            bad.expect_close(Duration::from_secs(5)).await?.is_empty(),
            "nothing after ERROR"
        );
    }
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics
            .contains("herald_auth_failures_total{protocol=\"stomp\",reason=\"unknown_token\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"bad_signature\"} 1"), "{metrics}");
    assert!(metrics.contains("reason=\"missing\"} 1"), "{metrics}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_behaviour_on_the_wire() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec![
            "--stomp-heartbeat-send-ms".into(),
            "200".into(),
            "--stomp-heartbeat-recv-ms".into(),
            "300".into(),
        ],
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");
    let t = token("1", "7", "agent");

    // Binary frames, CRLF line endings, heart-beats from the server.
    let mut c = RawStomp::open(&url, "v12.stomp", None).await?;
    c.send_binary(
        format!("CONNECT\r\naccept-version:1.2\r\nheart-beat:0,100\r\nAuthorization:{t}\r\n\r\n\0")
            .as_bytes(),
    )
    .await?;
    let f = c.next_frame().await?;
    assert_eq!(f.header("heart-beat"), Some("200,300"));
    assert_eq!(
        c.next_text(Duration::from_secs(5)).await?.as_deref(),
        Some("\n"),
        "server heart-beat"
    );
    // RECEIPT for any frame with a receipt header; ACK/NACK accepted.
    c.send("SUBSCRIBE\nid:0\ndestination:/events\nack:client-individual\n\n\0ACK\nid:x\nreceipt:77\n\n\0").await?;
    let f = c.next_frame().await?;
    assert_eq!(
        (f.command.as_str(), f.header("receipt-id")),
        ("RECEIPT", Some("77"))
    );
    // Unknown destination: ERROR (with receipt-id) then close.
    c.send("SUBSCRIBE\nid:1\ndestination:/queue/nope\nreceipt:9\n\n\0")
        .await?;
    let f = c.next_frame().await?;
    assert_eq!(f.command, "ERROR");
    assert_eq!(f.header("receipt-id"), Some("9"));
    assert!(
        f.header("message").unwrap().contains("/queue/nope"),
        "{}",
        f.raw
    );
    c.expect_close(Duration::from_secs(5)).await?;

    // A client that promised heart-beats and went silent is closed.
    let mut silent = RawStomp::open(&url, "v12.stomp", None).await?;
    silent
        .send(&format!(
            "CONNECT\naccept-version:1.2\nheart-beat:100,0\nAuthorization:{t}\n\n\0"
        ))
        .await?;
    assert_eq!(silent.next_frame().await?.command, "CONNECTED");
    let f = silent.next_frame().await?;
    assert_eq!(f.command, "ERROR");
    assert!(
        f.header("message").unwrap().contains("heart-beat"),
        "{}",
        f.raw
    );

    // DISCONNECT with receipt: RECEIPT, then the server closes.
    let mut d = RawStomp::open(&url, "v12.stomp", None).await?;
    d.send(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:{t}\n\n\0"
    ))
    .await?;
    assert_eq!(d.next_frame().await?.command, "CONNECTED");
    d.send("DISCONNECT\nreceipt:bye\n\n\0").await?;
    let f = d.next_frame().await?;
    assert_eq!(
        (f.command.as_str(), f.header("receipt-id")),
        ("RECEIPT", Some("bye"))
    );
    assert!(d.expect_close(Duration::from_secs(5)).await?.is_empty());

    // Garbage and a bad escape are protocol errors.
    for bad in [
        "HELLO\n\n\0",
        "SUBSCRIBE\nid:a\\tb\ndestination:/events\n\n\0",
    ] {
        let mut g = RawStomp::open(&url, "v12.stomp", None).await?;
        g.send(&format!(
            "CONNECT\naccept-version:1.2\nAuthorization:{t}\n\n\0"
        ))
        .await?;
        assert_eq!(g.next_frame().await?.command, "CONNECTED");
        g.send(bad).await?;
        let f = g.next_frame().await?;
        assert_eq!(f.command, "ERROR", "{bad:?} -> {}", f.raw);
        g.expect_close(Duration::from_secs(5)).await?;
    }

    // A frame over the size limit is refused.
    let mut big = RawStomp::open(&url, "v12.stomp", None).await?;
    big.send(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:{t}\n\n\0"
    ))
    .await?;
    assert_eq!(big.next_frame().await?.command, "CONNECTED");
    let huge = format!("SEND\ndestination:/events\n\n{}\0", "x".repeat(100 * 1024));
    let _ = big.send(&huge).await;
    let seen = big
        .expect_close(Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(seen.iter().all(|f| !f.starts_with("MESSAGE")));

    // Versions the server does not speak.
    let mut v = RawStomp::open(&url, "", None).await?;
    v.send(&format!(
        "CONNECT\naccept-version:2.0\nAuthorization:{t}\n\n\0"
    ))
    .await?;
    let f = v.next_frame().await?;
    assert_eq!(f.command, "ERROR");
    assert_eq!(f.header("version"), Some("1.2,1.1,1.0"));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_off_while_healthy_client_gets_everything() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec![],
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");
    let mut healthy = RawStomp::connect(&url, &token("1", "1", "agent")).await?;
    let mut slow = RawStomp::connect(&url, &token("1", "2", "agent")).await?;
    healthy.subscribe("s", "/queue/message").await?;
    slow.subscribe("s", "/queue/message").await?;

    // Enough bytes to fill the slow client's socket buffers many times over.
    let filler = "y".repeat(8 * 1024);
    let total = 3000;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < total {
            let f = healthy.next_frame().await?;
            anyhow::ensure!(
                f.command == "MESSAGE",
                "healthy client got {} after {} frames",
                f.raw,
                got.len()
            );
            let v: Value = serde_json::from_str(&f.body)?;
            got.push(v["message"]["id"].as_str().unwrap_or_default().to_owned());
        }
        anyhow::Ok(got)
    });
    for chunk in 0..(total / 100) {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                let mut e = airy_message("1", (chunk * 100 + i) as u64);
                e["payload"]["message"]["content"] = json!({"text": filler});
                e
            })
            .collect();
        stack.publish(&Value::Array(batch)).await?;
    }
    let got = reader.await??;
    let expected: Vec<String> = (0..total).map(|n| format!("m-1-{n}")).collect();
    assert_eq!(
        got, expected,
        "the healthy client received every event, in order"
    );

    // The slow client was disconnected: it reads what was buffered, then the end.
    let mut frames = 0;
    loop {
        match slow.next_text(Duration::from_secs(10)).await {
            Ok(Some(t)) if t.starts_with("MESSAGE") => frames += 1,
            Ok(Some(t)) => assert!(t.starts_with("ERROR") || t.trim().is_empty(), "{t}"),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        frames < total,
        "slow client must not have received everything ({frames})"
    );
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics.contains("herald_slow_client_disconnects_total{protocol=\"stomp\"} 1"),
        "{metrics}"
    );
    stack.stop().await;
    Ok(())
}

/// An `unread_count.updated` for conversation `conversation` of account 1,
/// padded with `filler` (the payload passes through as published).
fn unread_count(conversation: usize, count: usize, filler: &str) -> Value {
    json!({
        "id": format!("u-{conversation}-{count}"),
        "type": "unread_count.updated",
        "account_id": "1",
        "payload": {
            "conversation_id": format!("c{conversation}"),
            "unread_message_count": count,
            "timestamp": count,
            "filler": filler,
        },
    })
}

/// Read MESSAGE frames until `done` says every conversation reached its
/// final count; returns every (conversation, count) received, in order.
async fn read_counts(
    client: &mut RawStomp,
    done: impl Fn(&std::collections::HashMap<String, u64>) -> bool,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut got = Vec::new();
    let mut latest = std::collections::HashMap::new();
    while !done(&latest) {
        let f = client.next_frame_within(Duration::from_secs(30)).await?;
        anyhow::ensure!(
            f.command == "MESSAGE",
            "got {} after {} frames",
            f.raw,
            got.len()
        );
        let v: Value = serde_json::from_str(&f.body)?;
        let conversation = v["conversation_id"].as_str().unwrap_or_default().to_owned();
        let count = v["unread_message_count"].as_u64().unwrap_or_default();
        latest.insert(conversation.clone(), count);
        got.push((conversation, count));
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_on_a_flood_of_unread_counts_stays_connected_with_the_latest_counts()
-> anyhow::Result<()> {
    // A long write timeout: the slow client reads nothing during the flood,
    // and what is tested is the queue bound, not the write deadline.
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--write-timeout-secs".into(), "120".into()],
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");
    let mut healthy = RawStomp::connect(&url, &token("1", "1", "agent")).await?;
    // The kernel absorbs almost nothing for this one: the gateway's queue does.
    let mut slow = RawStomp::connect_small_buffer(&url, &token("1", "2", "agent"), 4096).await?;
    healthy.subscribe("s", "/queue/unread-count").await?;
    slow.subscribe("s", "/queue/unread-count").await?;

    // 1,500 updates of 10 conversations, 4 KiB each: six times the 1 MiB
    // outbound bound, which without conflation cuts the slow client off.
    let (conversations, total) = (10usize, 1500usize);
    let filler = "z".repeat(4 * 1024);
    let last = move |c: usize| (total - conversations + c) as u64;
    let finished = move |latest: &std::collections::HashMap<String, u64>| {
        (0..conversations).all(|c| latest.get(&format!("c{c}")) == Some(&last(c)))
    };
    let reader = tokio::spawn(async move {
        let got = read_counts(&mut healthy, finished).await;
        (healthy, got)
    });
    for chunk in 0..total / 100 {
        let batch: Vec<Value> = (chunk * 100..(chunk + 1) * 100)
            .map(|n| unread_count(n % conversations, n, &filler))
            .collect();
        stack.publish(&Value::Array(batch)).await?;
    }
    // The healthy client saw every conversation's last count: the gateway
    // has dispatched the whole flood.
    let (_healthy, healthy_got) = reader.await?;
    healthy_got?;
    let metrics = stack.gateway_metrics().await?;
    let conflated = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_frames_conflated_total{protocol=\"stomp\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        conflated > 0,
        "the slow client's queue conflated: {metrics}"
    );

    // The slow client now reads: it ends with every conversation's latest
    // count, each conversation's counts only ever rising, and was never cut off.
    let got = read_counts(&mut slow, finished).await?;
    assert!(
        got.len() < total,
        "older counts were superseded ({} of {total} delivered)",
        got.len()
    );
    let mut previous = std::collections::HashMap::new();
    for (conversation, count) in &got {
        if let Some(before) = previous.insert(conversation.clone(), *count) {
            assert!(before < *count, "{conversation}: {count} after {before}");
        }
    }
    // Still connected and served: a later event arrives.
    stack
        .publish(&json!([unread_count(0, total + 1, "end")]))
        .await?;
    let f = slow.next_frame_within(Duration::from_secs(30)).await?;
    assert!(
        f.body
            .contains(&format!("\"unread_message_count\":{}", total + 1)),
        "{}",
        f.raw
    );
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics.contains("herald_slow_client_disconnects_total{protocol=\"stomp\"} 0")
            || !metrics.contains("herald_slow_client_disconnects_total{protocol=\"stomp\"}"),
        "{metrics}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_publish_is_named_by_the_slowest_delivery_exemplar() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");
    let mut client = RawStomp::connect(&url, &token("1", "1", "agent")).await?;
    client.subscribe("s", "/queue/message").await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    stack
        .publish_traced(
            &json!([airy_message("1", 1)]),
            &format!("00-{trace}-00f067aa0ba902b7-01"),
        )
        .await?;
    let f = client.next_frame_within(Duration::from_secs(30)).await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);
    // Within a window (10 s) the delivery is published with its trace id.
    let series = format!("herald_delivery_latency_slowest_seconds{{trace_id=\"{trace}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = stack.gateway_metrics().await?;
        if metrics.contains(&series) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no exemplar for {trace}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_refuses_invalid_batches_whole() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");
    let mut c = RawStomp::connect(&url, &token("1", "7", "agent")).await?;
    c.subscribe("s", "/queue/message").await?;
    let (status, body) = stack
        .post_events(&json!([
            airy_message("1", 1),
            {"type": "message.created", "account_id": "1", "payload": {"conversation_id": 5}},
            {"type": "no.such.type", "account_id": "1", "payload": {}},
            {"account_id": "1", "payload": {}},
        ]))
        .await?;
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(
        errors
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        errors[1]["reason"]
            .as_str()
            .unwrap()
            .contains("no.such.type"),
        "{body}"
    );
    assert!(
        errors[2]["reason"].as_str().unwrap().contains("type"),
        "{body}"
    );

    let (status, _) = stack.post_events(&json!("nope")).await?;
    assert_eq!(status, 400);
    let huge = json!({"type": "tag.updated", "account_id": "1", "payload": {"id": "x", "name": "y".repeat(2 << 20), "color": "c"}});
    let (status, _) = stack.post_events(&huge).await?;
    assert_eq!(status, 413);

    // The valid event of the refused batch was not published: the first
    // frame the client sees is the one published next.
    let ok = stack.publish(&airy_message("1", 2)).await?;
    let r = &ok["results"][0];
    assert_eq!(r["topic"], format!("{}message", stack.prefix));
    assert!(r["offset"].as_i64().is_some() && r["partition"].as_i64().is_some());
    let f = c.next_frame().await?;
    assert!(f.body.contains("m-1-2"), "{}", f.body);
    stack.stop().await;
    Ok(())
}
