//! ActionCable endpoints through the real broker: the real `@rails/actioncable`
//! client, raw-protocol clients, isolation, presence across two gateway
//! processes, and revocation through the identities topic.

use std::{collections::BTreeMap, time::Duration};

use herald_tests::{
    GatewayProcess, Stack, StackOptions,
    cable::{CableDriver, RawCable},
    free_port, token,
};
use serde_json::{Value, json};

fn room_id(token: &str, account: &str, user: Option<&str>) -> String {
    let mut v = json!({"channel": "RoomChannel", "pubsub_token": token, "account_id": account.parse::<i64>().map(Value::from).unwrap_or(Value::from(account))});
    if let Some(u) = user {
        v["user_id"] = json!(u.parse::<i64>().unwrap_or_default());
    }
    v.to_string()
}

fn chatwoot_message(account: &str, id: u64, private: bool, audience: Value) -> Value {
    let mut e = json!({"type": "message.created", "account_id": account,
        "payload": {"id": id, "content": format!("hi {id}"), "message_type": 0, "private": private, "conversation_id": 1}});
    if !audience.is_null() {
        e["audience"] = audience;
    }
    e
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_client_on_room_channel_receives_unsubscribes_and_is_revoked() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .put_identity(
            "agent-tok",
            &json!({"account_id": "42", "kind": "user", "id": "7", "role": "agent"}),
        )
        .await?;
    let mut d = CableDriver::start("rails").await?;
    d.cmd(json!({"op": "connect", "url": stack.ws_url("/cable")}))
        .await?;
    // The identity record may still be on its way to the gateway: retry until confirmed.
    let mut attempt = 0;
    loop {
        let key = format!("a{attempt}");
        d.cmd(json!({"op": "subscribe", "key": key, "params": {"channel": "RoomChannel", "pubsub_token": "agent-tok", "account_id": 42, "user_id": 7}})).await?;
        let (ev, _) = d
            .wait_for(LONG, |e| {
                e["key"] == key && (e["ev"] == "connected" || e["ev"] == "rejected")
            })
            .await?;
        if ev["ev"] == "connected" {
            break;
        }
        attempt += 1;
        anyhow::ensure!(attempt < 50, "never confirmed");
        d.cmd(json!({"op": "unsubscribe", "key": key})).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let key = format!("a{attempt}");

    stack
        .publish(&chatwoot_message("42", 1, false, Value::Null))
        .await?;
    let (ev, _) = d
        .wait_for(LONG, |e| e["ev"] == "received" && e["key"] == key)
        .await?;
    assert_eq!(ev["data"]["event"], "message.created");
    assert_eq!(ev["data"]["data"]["id"], 1);

    // Wrong user id or unknown token: rejected.
    d.cmd(json!({"op": "subscribe", "key": "wrong-user", "params": {"channel": "RoomChannel", "pubsub_token": "agent-tok", "account_id": 42, "user_id": 8}})).await?;
    d.wait_for(LONG, |e| e["key"] == "wrong-user" && e["ev"] == "rejected")
        .await?;
    d.cmd(json!({"op": "subscribe", "key": "bad", "params": {"channel": "RoomChannel", "pubsub_token": "nope", "account_id": 42}})).await?;
    d.wait_for(LONG, |e| e["key"] == "bad" && e["ev"] == "rejected")
        .await?;

    // Unsubscribe: nothing more arrives on it, while a new subscription does receive.
    d.cmd(json!({"op": "unsubscribe", "key": key})).await?;
    d.wait_for(LONG, |e| e["ev"] == "ok" && e["op"] == "unsubscribe")
        .await?;
    d.cmd(json!({"op": "subscribe", "key": "b", "params": {"channel": "RoomChannel", "pubsub_token": "agent-tok", "account_id": 42, "user_id": 7}})).await?;
    d.wait_for(LONG, |e| e["key"] == "b" && e["ev"] == "connected")
        .await?;
    stack
        .publish(&chatwoot_message("42", 2, false, Value::Null))
        .await?;
    let (ev, skipped) = d
        .wait_for(LONG, |e| e["ev"] == "received" && e["key"] == "b")
        .await?;
    assert_eq!(ev["data"]["data"]["id"], 2);
    assert!(
        skipped
            .iter()
            .all(|e| e["key"] != key.as_str() || e["ev"] != "received"),
        "{skipped:?}"
    );

    // Revocation: the tombstone closes the socket and the client stops for good.
    stack.revoke_identity("agent-tok").await?;
    let (ev, _) = d
        .wait_for(LONG, |e| e["ev"] == "disconnected" && e["key"] == "b")
        .await?;
    assert_eq!(
        ev["willAttemptReconnect"], false,
        "unauthorized must stop the client: {ev}"
    );
    d.stop().await;
    stack.stop().await;
    Ok(())
}

/// @rails/actioncable on Node's `ws` with permessage-deflate: it offers the
/// extension, compresses every command it sends (threshold 0), and reads
/// the gateway's compressed frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_client_over_permessage_deflate() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: ["--ws-deflate", "--ws-deflate-min-bytes", "0"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await?;
    let url = format!(
        "{}?account_id=42&token={}",
        stack.ws_url("/stream"),
        token("42", "7", "agent")
    );
    let mut d = CableDriver::start_with_env("rails", &[("WS_DEFLATE_THRESHOLD", "0")]).await?;
    d.cmd(json!({"op": "connect", "url": url})).await?;
    d.cmd(json!({"op": "subscribe", "key": "n", "params": {"channel": "NotificationsChannel"}}))
        .await?;
    d.wait_for(LONG, |e| e["key"] == "n" && e["ev"] == "connected")
        .await?;
    d.cmd(json!({"op": "extensions"})).await?;
    let (ev, _) = d.wait_for(LONG, |e| e["ev"] == "extensions").await?;
    // Node's `ws` names the extension only (it checked the parameters).
    assert_eq!(ev["value"], "permessage-deflate");
    // A large, compressible event and a small one, in order and intact.
    let data = "aXY=-:-".to_owned() + &"Y2lwaGVy".repeat(2000);
    for (id, data) in [(1, data.as_str()), (2, "aXY=-:-Y2lwaGVy")] {
        stack
            .publish(
                &json!({"type": "added_message", "account_id": "42", "payload": {
            "id": id, "conversation_id": 5, "type": 1, "timestamp": 1795600000000u64, "read": false,
            "seen": false, "data": data, "mime_type": "dGV4dA=="}}),
            )
            .await?;
        let (ev, _) = d.wait_for(LONG, |e| e["ev"] == "received").await?;
        assert_eq!(ev["data"]["content"]["id"], id);
        assert_eq!(ev["data"]["content"]["data"], data);
    }
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics.contains("herald_deflate_connections_total{protocol=\"actioncable\"} 1"),
        "{metrics}"
    );
    d.stop().await;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_client_on_stream_reconnects_after_server_restart() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = free_port()?;
    let mut pod = GatewayProcess::start_on(stack.gateway_args(), port).await?;
    let url = format!(
        "{}?account_id=42&token={}",
        pod.ws_url("/stream"),
        token("42", "7", "agent")
    );
    let mut d = CableDriver::start("rails").await?;
    d.cmd(json!({"op": "connect", "url": url})).await?;
    d.cmd(json!({"op": "subscribe", "key": "n", "params": {"channel": "NotificationsChannel"}}))
        .await?;
    d.wait_for(LONG, |e| e["key"] == "n" && e["ev"] == "connected")
        .await?;
    let added = |id: u64| {
        json!({"type": "added_message", "account_id": "42", "payload": {
        "id": id, "conversation_id": 5, "type": 1, "timestamp": 1795600000000u64, "read": false, "seen": false,
        "data": "aXY=-:-Y2lwaGVy", "mime_type": "dGV4dA=="}})
    };
    stack.publish(&added(1)).await?;
    let (ev, _) = d.wait_for(LONG, |e| e["ev"] == "received").await?;
    assert_eq!(ev["data"]["operation"], "added_message");
    assert_eq!(ev["data"]["content"]["id"], 1);
    assert_eq!(
        ev["data"]["content"]["data"], "aXY=-:-Y2lwaGVy",
        "encrypted fields pass through untouched"
    );

    // Drain: the pod tells the client to reconnect, and a new pod on the same
    // address takes it back.
    pod.terminate().await?;
    let (ev, _) = d.wait_for(LONG, |e| e["ev"] == "disconnected").await?;
    assert_eq!(ev["willAttemptReconnect"], true, "{ev}");
    let _ = tokio::time::timeout(Duration::from_secs(15), pod.child.wait()).await;
    let _pod2 = GatewayProcess::start_on(stack.gateway_args(), port).await?;
    d.wait_for(LONG, |e| e["key"] == "n" && e["ev"] == "connected")
        .await?;
    stack.publish(&added(2)).await?;
    let (ev, _) = d
        .wait_for(LONG, |e| {
            e["ev"] == "received" && e["data"]["content"]["id"] == 2
        })
        .await?;
    assert_eq!(ev["data"]["operation"], "added_message");
    d.stop().await;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pulse_client_without_subprotocol_subscribing_before_welcome() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--cable-ping-interval-ms".into(), "300".into()],
        ..Default::default()
    })
    .await?;
    let t = token("42", "7", "agent");
    let url = format!("{}?account_id=42&token={t}", stack.ws_url("/api/v1/stream"));
    let mut c = RawCable::open(&url, "").await?;
    assert_eq!(c.protocol, None);
    let id = r#"{"channel":"NotificationsChannel"}"#;
    // Subscribe before reading anything, as Pulse's web client does.
    c.subscribe(id).await?;
    c.expect_welcome().await?;
    assert_eq!(
        c.next().await?,
        Some(json!({"identifier": id, "type": "confirm_subscription"}))
    );
    // Pings every interval with increasing unix seconds.
    let mut pings = Vec::new();
    while pings.len() < 3 {
        let f = c.next_any(Duration::from_secs(10)).await?.expect("open");
        if f["type"] == "ping" {
            pings.push(f["message"].as_i64().expect("integer ping"));
        }
    }
    assert!(pings.windows(2).all(|w| w[1] > w[0]), "{pings:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    assert!((pings[2] - now).abs() < 30, "ping carries unix seconds");
    // Malformed input, unknown commands, duplicate subscribe: ignored, connection survives.
    c.send("not json").await?;
    c.send(r#"{"command":"dance","identifier":"x"}"#).await?;
    c.subscribe(id).await?;
    c.send(
        &json!({"command": "message", "identifier": "{\"channel\":\"Other\"}", "data": "{}"})
            .to_string(),
    )
    .await?;
    stack.publish(&json!({"type": "forward_to_phone", "account_id": "42", "payload": {"to": "5555555555", "message": "test", "mime_type": "text/plain", "sent_device": 0}})).await?;
    let f = c.next().await?.expect("open");
    assert_eq!(
        f,
        json!({"identifier": id, "message": {"operation": "forward_to_phone", "content": {"to": "5555555555", "message": "test", "mime_type": "text/plain", "sent_device": 0}}}),
        "no second confirmation, then the broadcast"
    );
    let metrics = stack.gateway_metrics().await?;
    assert!(
        metrics.contains("herald_protocol_errors_total{protocol=\"actioncable\"} 2"),
        "{metrics}"
    );

    // Subprotocols as Rails negotiates them.
    let c2 = RawCable::open(&url, "actioncable-v1-json, actioncable-unsupported").await?;
    assert_eq!(c2.protocol.as_deref(), Some("actioncable-v1-json"));
    let c3 = RawCable::open(&url, "actioncable-unsupported").await?;
    assert_eq!(c3.protocol.as_deref(), Some("actioncable-unsupported"));

    // No credential, a credential of another account, or a bad token: unauthorized, no reconnect.
    for bad in [
        format!("{}?account_id=42", stack.ws_url("/stream")),
        format!("{}?account_id=43&token={t}", stack.ws_url("/stream")),
        format!("{}?account_id=42&token=nope", stack.ws_url("/stream")),
        format!("{}?token={t}", stack.ws_url("/stream")),
    ] {
        let mut b = RawCable::open(&bad, "actioncable-v1-json").await?;
        assert_eq!(
            b.next().await?,
            Some(json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false})),
            "{bad}"
        );
        assert_eq!(b.next().await?, None, "closed after the disconnect frame");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bare_account_mode_only_when_enabled() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--stream-legacy-account-auth".into()],
        ..Default::default()
    })
    .await?;
    let mut c = RawCable::open(&format!("{}?account_id=42", stack.ws_url("/stream")), "").await?;
    c.expect_welcome().await?;
    c.subscribe_confirmed(r#"{"channel":"NotificationsChannel"}"#)
        .await?;
    stack
        .publish(&json!({"type": "removed_message", "account_id": "42", "payload": {"id": 3}}))
        .await?;
    let f = c.next().await?.expect("open");
    assert_eq!(
        f["message"],
        json!({"operation": "removed_message", "content": {"id": 3}})
    );
    stack.stop().await;
    Ok(())
}

/// One client of the isolation test.
struct Principal {
    name: &'static str,
    account: &'static str,
    kind: &'static str,
    id: &'static str,
    role: &'static str,
}

const PRINCIPALS: [Principal; 6] = [
    Principal {
        name: "a-agent7",
        account: "1",
        kind: "user",
        id: "7",
        role: "agent",
    },
    Principal {
        name: "a-admin8",
        account: "1",
        kind: "user",
        id: "8",
        role: "admin",
    },
    Principal {
        name: "a-contact",
        account: "1",
        kind: "contact",
        id: "c1",
        role: "contact",
    },
    Principal {
        name: "a-contact2",
        account: "1",
        kind: "contact",
        id: "c2",
        role: "contact",
    },
    Principal {
        name: "b-agent7",
        account: "2",
        kind: "user",
        id: "7",
        role: "agent",
    },
    Principal {
        name: "b-contact",
        account: "2",
        kind: "contact",
        id: "c1",
        role: "contact",
    },
];

const ROOM: [&str; 14] = [
    "conversation.created",
    "conversation.read",
    "message.created",
    "message.updated",
    "conversation.status_changed",
    "conversation.typing_on",
    "conversation.typing_off",
    "assignee.changed",
    "team.changed",
    "conversation.contact_changed",
    "contact.created",
    "contact.updated",
    "presence.update",
    "notification_created",
];
const CONTACT_OK: [&str; 7] = [
    "conversation.created",
    "conversation.status_changed",
    "message.created",
    "message.updated",
    "conversation.typing_on",
    "conversation.typing_off",
    "presence.update",
];

/// The spec's delivery rule, written independently of the gateway.
fn entitled(p: &Principal, event: &Value) -> bool {
    let ty = event["type"].as_str().unwrap();
    let payload = &event["payload"];
    if event["account_id"] != p.account || !ROOM.contains(&ty) {
        return false;
    }
    let aud = &event["audience"];
    let listed = |k: &str, v: &str| aud[k].as_array().is_some_and(|a| a.iter().any(|x| x == v));
    let empty = |k: &str| aud[k].as_array().is_none_or(|a| a.is_empty());
    if p.kind == "contact" {
        if !CONTACT_OK.contains(&ty) || aud.is_null() || !listed("contacts", p.id) {
            return false;
        }
        if payload["private"] == true || payload["is_private"] == true {
            return false;
        }
    } else {
        let open_to_staff = aud.is_null() || (empty("users") && empty("roles"));
        if !(open_to_staff || listed("users", p.id) || listed("roles", p.role)) {
            return false;
        }
    }
    if ty.starts_with("conversation.typing_") {
        let u = &payload["user"];
        let same_kind = match u["type"].as_str() {
            Some("contact") => p.kind == "contact",
            Some(_) => p.kind == "user",
            None => true,
        };
        if u["id"].to_string().trim_matches('"') == p.id && same_kind {
            return false;
        }
    }
    true
}

/// A tiny deterministic generator (no extra dependency; the seed is printed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() as usize) % items.len()]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn random_event(rng: &mut Lcg, n: u64) -> Value {
    let account = *rng.pick(&["1", "2"]);
    let ty = *rng.pick(&ROOM);
    let private = rng.chance(30);
    let payload = match ty {
        "message.created" | "message.updated" => {
            json!({"id": n, "content": "x", "message_type": 0, "private": private})
        }
        "conversation.typing_on" | "conversation.typing_off" => {
            let (uid, utype) = *rng.pick(&[
                ("7", "user"),
                ("8", "user"),
                ("c1", "contact"),
                ("c2", "contact"),
                ("9", "user"),
            ]);
            json!({"conversation": {"id": n}, "user": {"id": uid, "type": utype}, "is_private": private})
        }
        "contact.created" | "contact.updated" => json!({"id": n, "name": "x"}),
        "presence.update" => {
            json!({"account_id": account, "users": {"7": "online"}, "contacts": {"c1": "online"}})
        }
        "notification_created" => json!({"id": n, "notification_type": "x"}),
        _ => json!({"id": n, "inbox_id": 1, "status": "open"}),
    };
    let mut e =
        json!({"id": format!("ev-{n}"), "type": ty, "account_id": account, "payload": payload});
    match rng.next() % 5 {
        0 => {}
        1 => e["audience"] = json!({"users": [*rng.pick(&["7", "8", "99"])]}),
        2 => e["audience"] = json!({"contacts": [*rng.pick(&["c1", "c2"])]}),
        3 => e["audience"] = json!({"roles": [*rng.pick(&["admin", "agent"])], "contacts": ["c1"]}),
        _ => e["audience"] = json!({"users": ["7"], "contacts": ["c1", "c2"]}),
    }
    e
}

fn topic_of(ty: &str) -> &'static str {
    match ty {
        "message.created" | "message.updated" => "message",
        "contact.created" | "contact.updated" => "contact",
        "presence.update" => "presence",
        "notification_created" => "notification",
        _ => "conversation",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_contacts_and_accounts_never_leak_over_random_events() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    println!("isolation seed {seed}");
    let mut rng = Lcg(seed);
    let url = stack.ws_url("/cable");
    let mut clients = Vec::new();
    for p in &PRINCIPALS {
        let tok = token(p.account, p.id, p.role);
        let ident = room_id(&tok, p.account, (p.kind == "user").then_some(p.id));
        let mut c = RawCable::open(&url, "actioncable-v1-json").await?;
        c.expect_welcome().await?;
        c.subscribe_confirmed(&ident).await?;
        clients.push(c);
    }
    let events: Vec<Value> = (0..300).map(|n| random_event(&mut rng, n)).collect();
    for chunk in events.chunks(100) {
        stack.publish(&Value::Array(chunk.to_vec())).await?;
    }
    // Phase 2: a marker on every topic of every account (staff only).
    let mut markers = Vec::new();
    for account in ["1", "2"] {
        for (ty, payload) in [
            ("message.created", json!({"id": "M1", "message_type": 0})),
            ("conversation.read", json!({"id": "M1"})),
            ("contact.updated", json!({"id": "M1"})),
            ("presence.update", json!({"account_id": "M1", "users": {}})),
            ("notification_created", json!({"id": "M1"})),
        ] {
            markers.push(json!({"type": ty, "account_id": account, "payload": payload}));
        }
    }
    stack.publish(&Value::Array(markers)).await?;
    let is_m = |m: &Value, tag: &str| m["data"]["id"] == tag || m["data"]["account_id"] == tag;
    let mut received: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (p, c) in PRINCIPALS.iter().zip(clients.iter_mut()) {
        if p.kind == "user" {
            let mut got = Vec::new();
            let mut seen = 0;
            while seen < 5 {
                let f = c.next().await?.expect("open");
                if is_m(&f["message"], "M1") {
                    seen += 1;
                } else {
                    got.push(f);
                }
            }
            received.insert(p.name, got);
        }
    }
    // Phase 3: everything staff saw has been processed; now a contact marker.
    stack
        .publish(&json!([
            {"type": "message.created", "account_id": "1", "audience": {"contacts": ["c1", "c2"]}, "payload": {"id": "M2", "message_type": 0}},
            {"type": "message.created", "account_id": "2", "audience": {"contacts": ["c1"]}, "payload": {"id": "M2", "message_type": 0}},
        ]))
        .await?;
    for (p, c) in PRINCIPALS.iter().zip(clients.iter_mut()) {
        if p.kind == "contact" {
            let got = c.until(|m| is_m(m, "M2")).await?;
            received.insert(p.name, got);
        }
    }
    let mut total = 0;
    for p in &PRINCIPALS {
        let got: Vec<String> = received[p.name]
            .iter()
            .filter(|f| !is_m(&f["message"], "M2"))
            .map(|f| {
                let m = &f["message"];
                if p.kind == "contact" && m["event"] == "presence.update" {
                    assert!(
                        m["data"].get("contacts").is_none(),
                        "{} saw contacts' presence: {m}",
                        p.name
                    );
                }
                format!(
                    "{}:{}",
                    m["event"].as_str().unwrap(),
                    m["data"]["id"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| m["data"]["conversation"]["id"].to_string())
                )
            })
            .collect();
        let mut expected: Vec<String> = Vec::new();
        for e in events.iter().filter(|e| entitled(p, e)) {
            let ty = e["type"].as_str().unwrap();
            let id = e["payload"]["id"]
                .as_u64()
                .or(e["payload"]["conversation"]["id"].as_u64());
            if ty == "presence.update" {
                continue; // presence payloads carry no id; counted below
            }
            expected.push(format!("{ty}:{}", id.unwrap()));
        }
        let presence_expected = events
            .iter()
            .filter(|e| e["type"] == "presence.update" && entitled(p, e))
            .count();
        let presence_got = received[p.name]
            .iter()
            .filter(|f| f["message"]["event"] == "presence.update")
            .count();
        // presence.update conflates by default (a newer snapshot of the
        // account supersedes an undelivered older one): fewer may arrive,
        // never more, and every one is of the principal's own account.
        assert!(
            presence_got <= presence_expected,
            "presence count for {}: {presence_got} > {presence_expected} (seed {seed})",
            p.name
        );
        for f in received[p.name]
            .iter()
            .filter(|f| f["message"]["event"] == "presence.update")
        {
            assert_eq!(
                f["message"]["data"]["account_id"], p.account,
                "{} saw another account's presence (seed {seed})",
                p.name
            );
        }
        let mut got_sorted: Vec<String> = got
            .into_iter()
            .filter(|g| !g.starts_with("presence.update"))
            .collect();
        got_sorted.sort();
        expected.sort();
        assert_eq!(
            got_sorted, expected,
            "deliveries of {} differ (seed {seed})",
            p.name
        );
        total += expected.len() + presence_expected;
        let _ = topic_of;
    }
    assert!(
        total > 100,
        "the random events exercised delivery ({total})"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_agrees_across_two_gateway_processes() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let pod_b = GatewayProcess::start(stack.gateway_args()).await?;
    let agent7 = token("5", "7", "agent");
    let agent8 = token("5", "8", "agent");
    let contact = token("5", "c3", "contact");
    let id7 = room_id(&agent7, "5", Some("7"));
    let id8 = room_id(&agent8, "5", Some("8"));
    let idc = room_id(&contact, "5", None);
    let mut a = RawCable::open(&stack.ws_url("/cable"), "actioncable-v1-json").await?;
    let mut b = RawCable::open(&pod_b.ws_url("/cable"), "actioncable-v1-json").await?;
    let mut c = RawCable::open(&pod_b.ws_url("/cable"), "actioncable-v1-json").await?;
    for (client, ident) in [(&mut a, &id7), (&mut b, &id8), (&mut c, &idc)] {
        client.expect_welcome().await?;
        client.subscribe_confirmed(ident).await?;
    }
    let heartbeat = |ident: &str| {
        json!({"command": "message", "identifier": ident, "data": "{\"action\":\"update_presence\"}"}).to_string()
    };
    let mut last = (Value::Null, Value::Null, Value::Null);
    let mut agreed = false;
    for _ in 0..60 {
        a.send(&heartbeat(&id7)).await?;
        b.send(&heartbeat(&id8)).await?;
        c.send(&heartbeat(&idc)).await?;
        let fa = a.next().await?.expect("open");
        let fb = b.next().await?.expect("open");
        let fc = c.next().await?.expect("open");
        assert_eq!(fa["identifier"], id7.as_str());
        assert_eq!(fa["message"]["event"], "presence.update");
        last = (
            fa["message"]["data"].clone(),
            fb["message"]["data"].clone(),
            fc["message"]["data"].clone(),
        );
        let both = json!({"7": "online", "8": "online"});
        if last.0["users"] == both
            && last.1["users"] == both
            && last.2["users"] == both
            && last.0["contacts"] == json!({"c3": "online"})
        {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(agreed, "pods never agreed: {last:?}");
    assert_eq!(last.0["account_id"], 5);
    assert!(
        last.2.get("contacts").is_none(),
        "a contact never sees contacts' presence: {}",
        last.2
    );
    stack.stop().await;
    Ok(())
}
