//! The console's endpoints on a real gateway (no Kafka is needed: events
//! are handed to the router as the consumer would).

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::{GatewayConfig, GatewayHandle, core::event::RoutedEvent};

const ADMIN: &str = "console-admin-credential-0123";
const SECRET: &str = "console-test-secret-0123456789";

async fn gateway(extra: &[&str]) -> GatewayHandle {
    let mut args = vec![
        "herald-gateway",
        "--kafka-brokers",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--identities",
        "false",
        "--drain-delay-secs",
        "0",
        "--drain-secs",
        "1",
    ];
    args.extend_from_slice(extra);
    crate::start(
        GatewayConfig::from_args(args).unwrap(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
}

async fn console() -> GatewayHandle {
    gateway(&["--console", "true", "--console-token", ADMIN]).await
}

fn url(gw: &GatewayHandle, path: &str) -> String {
    format!("http://{}{path}", gw.ops_addr)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn jwt(account: &str, sub: &str, role: &str) -> String {
    let exp = crate::core::clock::now_ms() / 1000 + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "account_id": account, "role": role, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn event(account: &str, ty: &str, audience: Option<Value>, offset: i64) -> Arc<RoutedEvent> {
    let mut envelope = json!({"id": format!("e{offset}"), "type": ty, "account_id": account,
        "payload": {"id": offset}});
    if let Some(a) = audience {
        envelope["audience"] = a;
    }
    Arc::new(RoutedEvent::new(
        "herald.tag".into(),
        0,
        offset,
        serde_json::from_value(envelope).unwrap(),
        None,
    ))
}

/// Wait (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_console_request_needs_the_admin_credential() {
    let gw = console().await;
    let http = client();
    for path in [
        "/console/api/overview",
        "/console/api/presence?account=1",
        "/console/api/live",
    ] {
        let r = http.get(url(&gw, path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a credential");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("admin credential"));
        let r = http
            .get(url(&gw, path))
            .bearer_auth("console-admin-credential-0124")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong credential");
    }
    for (path, body) in [
        ("/console/api/watch", json!({"credential": "x"})),
        ("/console/api/publish", json!({})),
    ] {
        let r = http.post(url(&gw, path)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a credential");
    }
    // Pages answer with the login form; the script is not served.
    let r = http.get(url(&gw, "/console/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        r.text()
            .await
            .unwrap()
            .contains(r#"action="/console/login""#)
    );
    let r = http
        .get(url(&gw, "/console/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Probes and metrics stay open.
    assert_eq!(
        http.get(url(&gw, "/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The bearer credential opens everything.
    let r = http
        .get(url(&gw, "/console/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("/console/console.js"));
    let r = http
        .get(url(&gw, "/console/console.js"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // The login form: a wrong credential is refused, the right one sets a
    // session cookie that does not contain it.
    let r = http
        .post(url(&gw, "/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("not the console"));
    let r = http
        .post(url(&gw, "/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(ADMIN));
    let cookie = set.split(';').next().unwrap().to_owned();
    let r = http
        .get(url(&gw, "/console/api/overview"))
        .header("cookie", format!("theme=dark; {cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let overview: Value = r.json().await.unwrap();
    assert_eq!(
        overview["connections"],
        json!({"stomp": 0, "actioncable": 0, "typeid": 0})
    );
    assert_eq!(overview["publish"], false);
    // A forged or altered cookie is refused.
    let mut forged = cookie.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for bad in [
        forged,
        "herald_console=99999999999.abc".to_owned(),
        "herald_console=".to_owned(),
    ] {
        let r = http
            .get(url(&gw, "/console/api/overview"))
            .header("cookie", bad.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{bad}");
    }
    gw.shutdown();
    gw.stopped().await;
}

#[test]
fn session_cookies_expire_and_are_bound_to_the_credential() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let gw = console().await;
        let make = |token: &str| {
            super::Console::new(
                super::ConsoleConfig {
                    token: token.into(),
                    publish_url: None,
                },
                gw.shared.clone(),
                gw.presence.clone(),
                herald_runtime::Readiness::default(),
                tokio_util::sync::CancellationToken::new(),
            )
        };
        let (a, b) = (make(ADMIN), make("another-admin-credential"));
        let now = crate::core::clock::now_ms() / 1000;
        let good = a.session_cookie(now + 60);
        assert!(a.session_valid(&good));
        assert!(
            !b.session_valid(&good),
            "another credential's console refuses it"
        );
        assert!(!a.session_valid(&a.session_cookie(now - 1)), "expired");
        let (_, tag) = good.split_once('.').unwrap();
        assert!(
            !a.session_valid(&format!("{}.{tag}", now + 3600)),
            "expiry moved"
        );
        assert!(!a.session_valid("garbage") && !a.session_valid("1.zz"));
        assert!(a.is_admin_token(&format!(" {ADMIN} ")) && !a.is_admin_token(""));
        gw.shutdown();
        gw.stopped().await;
    });
}

#[tokio::test]
async fn watch_shows_what_the_credential_is_entitled_to_and_unregisters() {
    let gw = console().await;
    let http = client();
    // A credential the gateway refuses is answered, not watched.
    let r = http
        .post(url(&gw, "/console/api/watch"))
        .bearer_auth(ADMIN)
        .json(&json!({"credential": "a.b.c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "malformed");
    // Not JSON: refused before anything else.
    let r = http
        .post(url(&gw, "/console/api/watch"))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let r = http
        .post(url(&gw, "/console/api/watch"))
        .bearer_auth(ADMIN)
        .json(&json!({"credential": format!("Bearer {}", jwt("42", "7", "agent"))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = r;
    let mut buffer = Vec::new();
    let mut next_line = async || -> Value {
        loop {
            if let Some(nl) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=nl).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), lines.chunk())
                .await
                .expect("a line in time")
                .unwrap()
                .expect("the stream goes on");
            buffer.extend_from_slice(&chunk);
        }
    };
    let first = next_line().await;
    assert_eq!(
        first,
        json!({"kind": "identity", "account_id": "42", "principal": "user", "id": "7",
            "role": "agent", "expires_at": first["expires_at"], "opaque": false})
    );
    let router = gw.shared.router.clone();
    assert_eq!(router.len(), 1);
    let overview: Value = http
        .get(url(&gw, "/console/api/overview"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        overview["accounts"],
        json!([{"account": "42", "protocol": "console", "connections": 1, "subscriptions": 1}])
    );
    // Another account's event and one for another user are not offered;
    // the account-wide one and one naming user 7 are.
    let mut cache = crate::routing::router::FrameCache::default();
    for e in [
        event("43", "tag.updated", None, 1),
        event("42", "tag.updated", Some(json!({"users": ["8"]})), 2),
        event("42", "tag.updated", None, 3),
        event("42", "message.created", Some(json!({"users": ["7"]})), 4),
    ] {
        router.dispatch(&e, &mut cache);
    }
    let got = next_line().await;
    assert_eq!(got["kind"], "event");
    assert_eq!(got["position"], "herald.tag:0:3");
    assert_eq!(got["envelope"]["account_id"], "42");
    assert_eq!(got["envelope"]["payload"], json!({"id": 3}));
    let got = next_line().await;
    assert_eq!(
        (&got["position"], &got["type"]),
        (&json!("herald.tag:0:4"), &json!("message.created"))
    );
    assert_eq!(got["room_channel"], true);
    // The browser goes away: the watcher is unregistered.
    drop(lines);
    until("the watcher is unregistered", || router.is_empty()).await;
    gw.shutdown();
    gw.stopped().await;
}

#[tokio::test]
async fn presence_and_publish_endpoints_check_their_input() {
    let gw = console().await;
    let http = client();
    let now = crate::core::clock::now_ms();
    gw.presence
        .beat("5", crate::core::identity::PrincipalKind::User, "9", now);
    let get = |path: &str| http.get(url(&gw, path)).bearer_auth(ADMIN).send();
    let r = get("/console/api/presence?account=5").await.unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["users"][0]["id"], "9");
    assert_eq!(p["contacts"], json!([]));
    assert_eq!(
        get("/console/api/presence?account=")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(get("/console/api/presence").await.unwrap().status(), 400);
    let overview: Value = get("/console/api/overview")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        overview["presence_accounts"],
        json!([{"account": "5", "online": 1}])
    );
    // Publishing is not offered without --console-publish-url.
    let r = http
        .post(url(&gw, "/console/api/publish"))
        .bearer_auth(ADMIN)
        .json(&json!({"type": "tag.updated"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.shutdown();
    gw.stopped().await;
}

#[tokio::test]
async fn the_console_is_off_by_default() {
    let gw = gateway(&[]).await;
    let r = client()
        .get(url(&gw, "/console/"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.shutdown();
    gw.stopped().await;
}

#[tokio::test]
async fn live_updates_arrive_as_server_sent_events() {
    let gw = console().await;
    let r = client()
        .get(url(&gw, "/console/api/live"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = r;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: overview\n"), "{text}");
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let overview: Value = serde_json::from_str(data).unwrap();
    assert!(
        overview["partitions"].is_array() && overview["latency"].is_object(),
        "{overview}"
    );
    // Shutting down ends the stream (it does not hold the ops server up).
    gw.shutdown();
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the live stream did not end with the gateway");
    gw.stopped().await;
}

#[tokio::test]
async fn watching_an_opaque_token_follows_its_contact_rules_and_ends_on_revocation() {
    let gw = console().await;
    let token = "opaque-contact-token-0123456789";
    let key = herald_schemas::token_key(token);
    let identities = gw.shared.auth.identities.clone();
    identities
        .apply(
            &key,
            Some(br#"{"account_id":"9","kind":"contact","id":"c1","role":"contact"}"#),
        )
        .unwrap();
    let mut r = client()
        .post(url(&gw, "/console/api/watch"))
        .bearer_auth(ADMIN)
        .json(&json!({"credential": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut buffer = Vec::new();
    let mut next_line = async || -> Value {
        loop {
            if let Some(nl) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=nl).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
                .await
                .expect("a line in time")
                .unwrap()
                .expect("the stream goes on");
            buffer.extend_from_slice(&chunk);
        }
    };
    let first = next_line().await;
    assert_eq!(
        (&first["principal"], &first["id"], &first["opaque"]),
        (&json!("contact"), &json!("c1"), &json!(true))
    );
    // Contacts get only what names them.
    let mut cache = crate::routing::router::FrameCache::default();
    for e in [
        event("9", "message.created", None, 1),
        event("9", "message.created", Some(json!({"contacts": ["c2"]})), 2),
        event("9", "message.created", Some(json!({"contacts": ["c1"]})), 3),
    ] {
        gw.shared.router.dispatch(&e, &mut cache);
    }
    assert_eq!(next_line().await["position"], "herald.tag:0:3");
    // A tombstone revokes the token: the watch ends and says why.
    identities.apply(&key, None).unwrap();
    assert_eq!(
        next_line().await,
        json!({"kind": "end", "reason": "revoked"})
    );
    until("the watcher is unregistered", || {
        gw.shared.router.is_empty()
    })
    .await;
    assert_eq!(identities.watchers_len(), 0);
    gw.shutdown();
    gw.stopped().await;
}
