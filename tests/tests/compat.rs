//! Compatibility with what clients of the reference servers expect, found
//! in acceptance testing: oversize messages get the protocol's error and a
//! close frame on every endpoint (not a dropped TCP connection).

use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use herald_tests::{Stack, StackOptions, token, typeid};
use tokio_tungstenite::tungstenite::{
    Message,
    client::IntoClientRequest,
    http::HeaderValue,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, protocol: Option<&str>) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p)?);
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// Text frames until the close frame (which must come).
async fn until_close(ws: &mut Ws) -> anyhow::Result<(Vec<String>, CloseFrame)> {
    let mut texts = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no close frame")?;
        match msg {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(Message::Close(Some(frame)))) => return Ok((texts, frame)),
            Some(Ok(Message::Close(None))) => anyhow::bail!("close frame without a code"),
            Some(Ok(_)) => continue,
            other => anyhow::bail!(
                "the connection ended without a close frame: {other:?} after {texts:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_get_the_protocols_error_and_a_close_frame() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--max-frame-bytes".into(), "4096".into()],
        ..Default::default()
    })
    .await?;
    let t = token("42", "7", "agent");
    let big = "x".repeat(70 * 1024);

    // STOMP: ERROR (message header) then close 1009.
    let mut ws = open(&stack.ws_url("/ws.communication"), Some("v12.stomp")).await?;
    ws.send(Message::text(format!(
        "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {t}\n\n\0"
    )))
    .await?;
    let connected = ws.next().await.context("closed")??;
    assert!(
        connected.to_text()?.starts_with("CONNECTED"),
        "{connected:?}"
    );
    ws.send(Message::text(format!("SEND\ndestination:/x\n\n{big}\0")))
        .await?;
    let (texts, close) = until_close(&mut ws).await?;
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("ERROR\n") && t.contains("message:frame too large")),
        "{texts:?}"
    );
    assert_eq!(close.code, CloseCode::Size, "{close:?}");

    // ActionCable (both endpoints): disconnect invalid_request, then a close.
    let ident = serde_json::json!({"channel": "RoomChannel", "pubsub_token": t, "account_id": 42, "user_id": 7})
        .to_string();
    for path in [
        "/cable".to_owned(),
        format!("/stream?account_id=42&token={t}"),
    ] {
        let mut ws = open(&stack.ws_url(&path), Some("actioncable-v1-json")).await?;
        let welcome = ws.next().await.context("closed")??;
        assert!(welcome.to_text()?.contains("welcome"), "{welcome:?}");
        let cmd = serde_json::json!({"command": "subscribe", "identifier": ident, "data": big})
            .to_string();
        ws.send(Message::text(cmd)).await?;
        let (texts, _close) = until_close(&mut ws).await?;
        assert!(
            texts.iter().any(|t| t.contains(r#""type":"disconnect""#)
                && t.contains(r#""reason":"invalid_request""#)),
            "{path}: {texts:?}"
        );
    }

    // TypeID: close 1009 after a join.
    let mut ws = typeid::joined(&stack.ws_url("/notifications"), &t, 7).await?;
    ws.send(Message::text(big.clone())).await?;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no close frame")?
        {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("TypeID ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Size, "{close:?}");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stomp_frame_may_continue_in_the_next_websocket_message() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let t = token("42", "7", "agent");
    let mut c =
        herald_tests::stomp::RawStomp::connect(&stack.ws_url("/ws.communication"), &t).await?;
    // As RabbitMQ Web-STOMP accepts: one SUBSCRIBE over three messages.
    c.send("SUBSCRIBE\nid:s\ndesti").await?;
    c.send("nation:/events\nreceipt:r1").await?;
    c.send("\n\n\0").await?;
    let f = c.next_frame().await?;
    assert_eq!(f.command, "RECEIPT", "{}", f.raw);
    assert_eq!(f.header("receipt-id"), Some("r1"));
    // And it works: an event arrives on the subscription.
    stack
        .publish(
            &serde_json::json!({"type": "tag.updated", "account_id": "42",
            "payload": {"id": "t1", "name": "vip", "color": "tag-red"}}),
        )
        .await?;
    let f = c.next_frame().await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);
    assert_eq!(f.header("subscription"), Some("s"));
    stack.stop().await;
    Ok(())
}

/// Register `token` for user 7 of account 42 through the producer's API
/// (answered once Kafka acknowledged).
async fn register(stack: &Stack, token: &str) -> anyhow::Result<()> {
    let url = format!("http://{}/v1/identities", stack.producer.addr);
    let r = stack
        .http
        .put(&url)
        .json(&serde_json::json!({"token": token, "account_id": "42", "kind": "user", "id": "7", "role": "agent"}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "PUT /v1/identities: {}",
        r.status()
    );
    Ok(())
}

/// Fails with `--unknown-token-wait-ms 0` (checked: "round 2: /stream
/// refused a fresh token").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_token_works_right_after_it_was_registered_on_every_endpoint()
-> anyhow::Result<()> {
    use herald_tests::{cable::RawCable, numbered::room_identifier, stomp::RawStomp};
    let stack = Stack::start().await?;
    let stomp_url = stack.ws_url("/ws.communication");
    for i in 0..100 {
        // Registered, then used at once, as Chatwoot hands a new contact's
        // pubsub_token to its widget. Four fresh tokens per round, one per endpoint.
        let token = |e: &str| format!("fresh-{e}-{i}-{}", herald_testkit::unique("t"));

        let t = token("stomp");
        register(&stack, &t).await?;
        RawStomp::connect(&stomp_url, &t)
            .await
            .with_context(|| format!("round {i}: STOMP refused a token registered a moment ago"))?;

        let t = token("cable");
        register(&stack, &t).await?;
        let mut c = RawCable::open(&stack.ws_url("/cable"), "actioncable-v1-json").await?;
        c.expect_welcome().await?;
        c.subscribe_confirmed(&room_identifier(&t, "42", "7"))
            .await
            .with_context(|| format!("round {i}: RoomChannel rejected a fresh token"))?;

        let t = token("stream");
        register(&stack, &t).await?;
        let mut c = RawCable::open(
            &stack.ws_url(&format!("/stream?account_id=42&token={t}")),
            "actioncable-v1-json",
        )
        .await?;
        c.expect_welcome()
            .await
            .with_context(|| format!("round {i}: /stream refused a fresh token"))?;
        c.subscribe_confirmed(&serde_json::json!({"channel": "NotificationsChannel"}).to_string())
            .await
            .with_context(|| format!("round {i}: NotificationsChannel rejected a fresh token"))?;

        let t = token("typeid");
        register(&stack, &t).await?;
        typeid::joined(&stack.ws_url("/notifications"), &t, 7)
            .await
            .with_context(|| format!("round {i}: TypeID refused a fresh token"))?;
    }
    // Unknown tokens are still refused (once the topic is read to its end).
    let refused = RawStomp::connect(&stomp_url, "never-registered-token-0123").await;
    assert!(refused.is_err(), "an unknown token was accepted");
    stack.stop().await;
    Ok(())
}
