//! Abuse limits and token lifecycle through a running gateway: each limit
//! refuses with its documented error and a metric while other clients carry
//! on; JWKS keys rotate without a restart; tokens that are expired, not yet
//! valid, for another audience, forged or revoked are refused everywhere.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald_tests::{Stack, StackOptions, cable::RawCable, stomp::RawStomp, token};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: Value, secret: &str, kid: Option<&str>) -> String {
    let h = Header {
        kid: kid.map(str::to_owned),
        ..Default::default()
    };
    encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

async fn upgrade_status(url: &str, origin: Option<&str>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_command_limits() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: [
            "--max-connections-per-ip",
            "3",
            "--max-connections-per-account",
            "1",
            "--allowed-origins",
            "https://app.example.com",
            "--max-commands-per-second",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");
    let metric = async |limit: &str| -> anyhow::Result<bool> {
        Ok(stack.gateway_metrics().await?.contains(&format!(
            "herald_limit_rejections_total{{limit=\"{limit}\"}} "
        )))
    };

    // Origin allow-list: browsers from elsewhere get 403; no Origin (native clients) is fine.
    assert_eq!(
        upgrade_status(&url, Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(&url, Some("https://app.example.com")).await,
        101
    );
    assert!(metric("origin").await?);

    // Per account: a second connection of account 1 is refused, account 2 is not.
    let mut first = RawStomp::connect(&url, &token("1", "7", "agent")).await?;
    first.subscribe("s", "/events").await?;
    let mut second = RawStomp::open(&url, "v12.stomp", None).await?;
    second
        .send(&format!(
            "CONNECT\naccept-version:1.2\nAuthorization:{}\n\n\0",
            token("1", "8", "agent")
        ))
        .await?;
    let f = second.next_frame().await?;
    assert_eq!(f.command, "ERROR");
    assert!(
        f.header("message")
            .unwrap()
            .contains("too many connections"),
        "{}",
        f.raw
    );
    let mut other = RawStomp::connect(&url, &token("2", "7", "agent")).await?;
    assert!(metric("connections_per_account").await?);

    // Per IP: three open sockets (first, other, and one more), the fourth is refused with 429.
    let _third = RawStomp::open(&url, "v12.stomp", None).await?;
    assert_eq!(upgrade_status(&url, None).await, 429);
    assert!(metric("connections_per_ip").await?);

    // The clients inside the limits are unaffected.
    stack.produce(&[json!({"type": "tag.updated", "account_id": "1", "payload": {"id": "ok", "name": "n", "color": "c"}})]).await?;
    assert!(first.next_frame().await?.body.contains("\"ok\""));
    other
        .send("SUBSCRIBE\nid:x\ndestination:/events\nreceipt:r\n\n\0")
        .await?;
    assert_eq!(other.next_frame().await?.command, "RECEIPT");
    drop((first, other, second, _third));

    // Command rate: update_presence beyond 2/s is dropped and counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        // Sockets closed above free their slots asynchronously.
        match RawCable::open(&stack.ws_url("/cable"), "actioncable-v1-json").await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e),
        }
    };
    c.expect_welcome().await?;
    let ident = json!({"channel": "RoomChannel", "pubsub_token": token("3", "7", "agent"), "account_id": 3, "user_id": 7}).to_string();
    c.subscribe_confirmed(&ident).await?;
    for _ in 0..6 {
        c.send(&json!({"command": "message", "identifier": ident, "data": "{\"action\":\"update_presence\"}"}).to_string()).await?;
    }
    let mut replies = 0;
    while let Ok(Some(f)) = c.next_within(Duration::from_millis(1500)).await {
        if f["message"]["event"] == "presence.update" {
            replies += 1;
        }
    }
    assert!(
        (2..6).contains(&replies),
        "{replies} replies to 6 commands at 2/s"
    );
    assert!(metric("commands_rate").await?);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_without_restart() -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("herald-jwks-it-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("jwks.json");
    let b64 = |s: &str| {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in s.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let write = |keys: &[(&str, &str)]| {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(kid, s)| json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(s)}))
            .collect();
        std::fs::write(&path, json!({"keys": keys}).to_string())
    };
    let (sa, sb) = (
        "key-a-secret-0123456789abcdef",
        "key-b-secret-0123456789abcdef",
    );
    write(&[("a", sa)])?;
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec![
            "--jwt-jwks-file".into(),
            path.to_str().unwrap().into(),
            "--jwt-jwks-reload-secs".into(),
            "1".into(),
        ],
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");
    let claims = || json!({"sub": "7", "account_id": "1", "exp": now() + 600});
    let connects = async |t: &str| -> anyhow::Result<bool> {
        let mut c = RawStomp::open(&url, "v12.stomp", None).await?;
        c.send(&format!(
            "CONNECT\naccept-version:1.2\nAuthorization:{t}\n\n\0"
        ))
        .await?;
        Ok(c.next_frame().await?.command == "CONNECTED")
    };
    assert!(connects(&jwt(claims(), sa, Some("a"))).await?);
    assert!(
        !connects(&jwt(claims(), sb, Some("b"))).await?,
        "kid b is not published yet"
    );
    // Rotate: publish b, then retire a — no restart.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new mtime second
    write(&[("a", sa), ("b", sb)])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connects(&jwt(claims(), sb, Some("b"))).await? {
        anyhow::ensure!(Instant::now() < deadline, "kid b never accepted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(&[("b", sb)])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while connects(&jwt(claims(), sa, Some("a"))).await? {
        anyhow::ensure!(Instant::now() < deadline, "kid a never retired");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_on_every_endpoint() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--jwt-audience".into(), "herald".into()],
        ..Default::default()
    })
    .await?;
    let secret = herald_tests::JWT_SECRET;
    let base = |extra: Value| {
        let mut c = json!({"sub": "7", "account_id": "1", "role": "agent", "aud": "herald", "exp": now() + 600});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    stack
        .put_identity(
            "revoked-tok",
            &json!({"account_id": "1", "kind": "user", "id": "7", "role": "agent"}),
        )
        .await?;
    stack.revoke_identity("revoked-tok").await?;
    let bad = [
        (
            "expired",
            jwt(base(json!({"exp": now() - 3600})), secret, None),
        ),
        (
            "not yet valid",
            jwt(base(json!({"nbf": now() + 3600})), secret, None),
        ),
        (
            "wrong audience",
            jwt(base(json!({"aud": "other"})), secret, None),
        ),
        ("no audience", {
            let mut c = base(json!({}));
            c.as_object_mut().unwrap().remove("aud");
            jwt(c, secret, None)
        }),
        (
            "wrong signature",
            jwt(base(json!({})), "some-other-secret-0123456789", None),
        ),
        ("revoked", "revoked-tok".to_owned()),
    ];
    let good = jwt(base(json!({})), secret, None);
    for (what, t) in &bad {
        // STOMP
        let mut s = RawStomp::open(&stack.ws_url("/ws.communication"), "v12.stomp", None).await?;
        s.send(&format!(
            "CONNECT\naccept-version:1.2\nAuthorization:{t}\n\n\0"
        ))
        .await?;
        let f = s.next_frame().await?;
        assert!(
            f.command == "ERROR" && f.header("message").unwrap().contains("401"),
            "{what}: {}",
            f.raw
        );
        // ActionCable /stream
        let mut n = RawCable::open(
            &format!("{}?account_id=1&token={t}", stack.ws_url("/stream")),
            "",
        )
        .await?;
        assert_eq!(
            n.next().await?,
            Some(json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false})),
            "{what}"
        );
        // ActionCable /cable
        let mut r = RawCable::open(&stack.ws_url("/cable"), "").await?;
        r.expect_welcome().await?;
        let ident =
            json!({"channel": "RoomChannel", "pubsub_token": t, "account_id": 1, "user_id": 7})
                .to_string();
        r.subscribe(&ident).await?;
        assert_eq!(
            r.next().await?.unwrap()["type"],
            "reject_subscription",
            "{what}"
        );
        // TypeID
        let (mut ws, _) = tokio_tungstenite::connect_async(stack.ws_url("/notifications")).await?;
        ws.send(tungstenite::Message::text(json!({"TypeID": -2101997347, "Body": {"ClientVersion": "7.0.30", "SessionID": t, "UserID": 7}}).to_string())).await?;
        let reply: Value = match ws.next().await {
            Some(Ok(tungstenite::Message::Text(t))) => serde_json::from_str(&t)?,
            other => anyhow::bail!("{what}: {other:?}"),
        };
        assert_eq!(reply["Body"]["Status"], 4, "{what}");
    }
    // The good token works, and a token expiring mid-connection closes it.
    let mut s = RawStomp::open(&stack.ws_url("/ws.communication"), "v12.stomp", None).await?;
    s.send(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:{good}\n\n\0"
    ))
    .await?;
    assert_eq!(s.next_frame().await?.command, "CONNECTED");
    let short = jwt(base(json!({"exp": now() + 2})), secret, None);
    let mut e = RawCable::open(
        &format!("{}?account_id=1&token={short}", stack.ws_url("/stream")),
        "",
    )
    .await?;
    e.expect_welcome().await?;
    let f = e.next_within(Duration::from_secs(40)).await?;
    assert_eq!(
        f,
        Some(json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false}))
    );
    let mut st = RawStomp::open(&stack.ws_url("/ws.communication"), "v12.stomp", None).await?;
    st.send(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:{}\n\n\0",
        jwt(base(json!({"exp": now() + 2})), secret, None)
    ))
    .await?;
    assert_eq!(st.next_frame().await?.command, "CONNECTED");
    let f = st.next_frame_within(Duration::from_secs(40)).await?;
    assert!(
        f.command == "ERROR" && f.header("message").unwrap().contains("expired"),
        "{}",
        f.raw
    );
    stack.stop().await;
    Ok(())
}
