//! Hostile Kafka data through the real broker and gateway.
//!
//! Records a buggy or hostile backend could write straight to the topics —
//! not JSON, binary garbage, JSON of the wrong shape, missing and wrong-typed
//! envelope fields, trailing garbage, null and empty values, megabytes of
//! nesting, unknown types, headers that disagree with the body (or repeat,
//! or are not UTF-8), no headers at all — are written with rdkafka on both
//! partitions of a topic, each followed by a valid `tag.updated` event.
//! Connected STOMP clients of two accounts must receive every valid event of
//! their account, in order per partition (no stalled partition), and nothing
//! else; the gateway stays healthy; and every record it looked into and
//! refused is counted in `herald_records_skipped_total{topic,reason}`.
//!
//! A record is only inspected when this pod has a connection of the account
//! its `account_id` header names (or it has no such header), so the records
//! here carry the headers of connected accounts. A valid envelope without
//! headers is legitimate (headers only let pods skip records cheaply) and is
//! delivered like any other.

use std::{collections::HashMap, time::Duration};

use herald_runtime::KafkaArgs;
use herald_schemas::Family;
use herald_tests::{Stack, stomp::RawStomp, token};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{Value, json};

/// What the gateway must do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Delivered to the clients of this account on `/events`.
    Deliver(&'static str),
    /// Refused and counted with this reason.
    Skip(&'static str),
    /// Never delivered, and not counted (nobody here could receive it, or
    /// no `/events` client takes its type).
    Ignore,
}

/// One record to write.
struct Record {
    what: String,
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    expect: Expect,
}

fn headers(ty: &str, account: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("type", ty.as_bytes().to_vec()),
        ("account_id", account.as_bytes().to_vec()),
    ]
}

fn tag_event(account: &str, marker: &str) -> Value {
    json!({
        "id": format!("evt-{marker}"),
        "type": "tag.updated",
        "account_id": account,
        "payload": {"id": marker, "name": "vip", "color": "tag-red"}
    })
}

fn valid(account: &'static str, marker: &str, with_headers: bool) -> Record {
    Record {
        what: format!("valid {marker}"),
        value: Some(tag_event(account, marker).to_string().into_bytes()),
        headers: if with_headers {
            headers("tag.updated", account)
        } else {
            Vec::new()
        },
        expect: Expect::Deliver(account),
    }
}

fn hostile(what: &str, value: Option<&[u8]>, headers: Vec<(&'static str, Vec<u8>)>) -> Record {
    Record {
        what: what.to_owned(),
        value: value.map(<[u8]>::to_vec),
        headers,
        expect: Expect::Skip("invalid_envelope"),
    }
}

/// The hostile records of one partition (`p` keeps ids distinct).
fn hostile_records(p: i32) -> Vec<Record> {
    let h1 = || headers("tag.updated", "1");
    let envelope = |body: Value| body.to_string().into_bytes();
    let mut out = vec![
        hostile("not JSON", Some(b"this is not JSON {"), h1()),
        hostile(
            "binary garbage",
            Some(&[0xff, 0xfe, 0x00, 0x01, 0x80, 0x7b, 0x22, 0xc3, 0x28, 0x00]),
            h1(),
        ),
        hostile("a JSON array", Some(b"[1,2,3]"), h1()),
        hostile("a JSON string", Some(br#""tag.updated""#), h1()),
        hostile(
            "no payload",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": "1"}),
            )),
            h1(),
        ),
        hostile(
            "null payload",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": "1", "payload": null}),
            )),
            h1(),
        ),
        hostile(
            "no account_id",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "payload": {"id": "t"}}),
            )),
            h1(),
        ),
        hostile(
            "no type",
            Some(&envelope(
                json!({"id": "x", "account_id": "1", "payload": {"id": "t"}}),
            )),
            h1(),
        ),
        hostile(
            "numeric id",
            Some(&envelope(
                json!({"id": 5, "type": "tag.updated", "account_id": "1", "payload": {}}),
            )),
            h1(),
        ),
        hostile(
            "object account_id",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": {"id": "1"}, "payload": {}}),
            )),
            h1(),
        ),
        hostile(
            "empty account_id",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": "", "payload": {}}),
            )),
            h1(),
        ),
        hostile(
            "string audience",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": "1", "audience": "everyone", "payload": {}}),
            )),
            h1(),
        ),
        hostile(
            "audience users not a list",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": "1", "audience": {"users": "7"}, "payload": {}}),
            )),
            h1(),
        ),
        hostile(
            "numeric occurred_at",
            Some(&envelope(
                json!({"id": "x", "type": "tag.updated", "account_id": "1", "occurred_at": 1, "payload": {}}),
            )),
            h1(),
        ),
        hostile(
            "trailing garbage",
            Some(format!("{}}}garbage", tag_event("1", &format!("p{p}-trailing"))).as_bytes()),
            h1(),
        ),
        hostile("empty value", Some(b""), h1()),
        Record {
            expect: Expect::Skip("empty"),
            ..hostile("null value (tombstone)", None, h1())
        },
        hostile("no headers, not JSON", Some(b"\x00\x01garbage"), Vec::new()),
        hostile(
            "non-UTF-8 account_id header",
            Some(b"{garbage"),
            vec![
                ("type", b"tag.updated".to_vec()),
                ("account_id", vec![0xff, 0xfe]),
            ],
        ),
        hostile(
            "presence.heartbeat type header on a garbage body",
            Some(b"beat"),
            headers("presence.heartbeat", "1"),
        ),
        // 2 MB of nesting: a parser that recursed would overflow its stack.
        hostile("2 MB of '['", Some(&vec![b'['; 2 << 20]), h1()),
        hostile(
            "2 MB of nested objects",
            Some("{\"a\":".repeat(2 << 18).as_bytes()),
            h1(),
        ),
        Record {
            expect: Expect::Skip("type_mismatch"),
            ..hostile(
                "type header disagrees with the body",
                Some(&envelope(tag_event("1", &format!("p{p}-type-mismatch")))),
                headers("message.created", "1"),
            )
        },
        Record {
            expect: Expect::Skip("account_mismatch"),
            ..hostile(
                "account header 1, body account 2",
                Some(&envelope(tag_event("2", &format!("p{p}-acct-1-2")))),
                h1(),
            )
        },
        Record {
            expect: Expect::Skip("account_mismatch"),
            ..hostile(
                "account header 2, body account 1",
                Some(&envelope(tag_event("1", &format!("p{p}-acct-2-1")))),
                headers("tag.updated", "2"),
            )
        },
        Record {
            expect: Expect::Skip("account_mismatch"),
            ..hostile(
                "repeated account header (first is 2), body account 1",
                Some(&envelope(tag_event("1", &format!("p{p}-acct-dup")))),
                vec![
                    ("type", b"tag.updated".to_vec()),
                    ("account_id", b"2".to_vec()),
                    ("account_id", b"1".to_vec()),
                ],
            )
        },
        Record {
            expect: Expect::Ignore,
            ..hostile(
                "unknown type",
                Some(&envelope(json!({
                    "id": "x", "type": "no.such.type", "account_id": "1",
                    "payload": {"id": format!("p{p}-unknown")}
                }))),
                headers("no.such.type", "1"),
            )
        },
        Record {
            expect: Expect::Ignore,
            ..hostile(
                "event of an account with no connection here, no headers",
                Some(&envelope(tag_event("3", &format!("p{p}-acct-3")))),
                Vec::new(),
            )
        },
        Record {
            expect: Expect::Ignore,
            ..hostile(
                "garbage under the header of an account with no connection here",
                Some(b"garbage"),
                headers("tag.updated", "3"),
            )
        },
    ];
    // Legitimate records in odd shapes: delivered.
    out.push(valid("2", &format!("p{p}-acct2-headers"), true));
    out.push(valid("1", &format!("p{p}-no-headers"), false));
    out.push(valid("2", &format!("p{p}-acct2-no-headers"), false));
    out
}

/// Read `/events` frames until every marker in `want` arrived; fail on
/// anything else (a hostile record, a duplicate, or a partition out of order).
async fn receive_exactly(
    client: &mut RawStomp,
    who: &str,
    want: &HashMap<i32, Vec<String>>,
) -> anyhow::Result<()> {
    let total: usize = want.values().map(Vec::len).sum();
    let mut next: HashMap<i32, usize> = want.keys().map(|p| (*p, 0)).collect();
    for _ in 0..total {
        let f = client
            .next_frame_within(Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{who}: {e} (still expecting {next:?} of {want:?})"))?;
        anyhow::ensure!(f.command == "MESSAGE", "{who}: unexpected frame {}", f.raw);
        let body: Value = serde_json::from_str(&f.body)?;
        anyhow::ensure!(
            body["type"] == "tag.updated",
            "{who} got a non-tag event: {}",
            f.body
        );
        let marker = body["payload"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let partition: i32 = marker
            .strip_prefix('p')
            .and_then(|m| m.split('-').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{who} got an unexpected event {}", f.body))?;
        let i = next.get_mut(&partition).expect("known partition");
        let expected = want[&partition].get(*i);
        anyhow::ensure!(
            expected == Some(&marker),
            "{who} got {marker} but expected {expected:?} next on partition {partition}"
        );
        *i += 1;
    }
    Ok(())
}

/// `herald_records_skipped_total{topic,reason}` from a metrics text.
fn skipped(metrics: &str, topic: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("herald_records_skipped_total{"))
        .filter(|l| l.contains(&format!("topic=\"{topic}\"")))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_skipped_counted_and_never_stall_a_partition() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let url = stack.ws_url("/ws.communication");
    let mut one = RawStomp::connect(&url, &token("1", "7", "agent")).await?;
    one.subscribe("events", "/events").await?;
    let mut two = RawStomp::connect(&url, &token("2", "7", "agent")).await?;
    two.subscribe("events", "/events").await?;

    let mut cfg = KafkaArgs::for_brokers(&stack.broker.bootstrap).client_config()?;
    cfg.set("message.max.bytes", "8000000")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "20000");
    let producer: FutureProducer = cfg.create()?;
    let tag_topic = Family::Tag.topic(&stack.prefix);
    let presence_topic = Family::Presence.topic(&stack.prefix);

    // Both partitions: hostile records, each followed by a valid event of account 1.
    let mut writes: Vec<(String, i32, Record)> = Vec::new();
    for p in 0..2 {
        for (n, record) in hostile_records(p).into_iter().enumerate() {
            writes.push((tag_topic.clone(), p, record));
            writes.push((
                tag_topic.clone(),
                p,
                valid("1", &format!("p{p}-v{n}"), true),
            ));
        }
        writes.push((tag_topic.clone(), p, valid("1", &format!("p{p}-end"), true)));
        writes.push((
            tag_topic.clone(),
            p,
            valid("2", &format!("p{p}-end2"), true),
        ));
    }
    // Presence heartbeats are read by every pod whoever is connected.
    writes.push((
        presence_topic.clone(),
        0,
        hostile(
            "heartbeat that is not an envelope",
            Some(b"not a heartbeat"),
            headers("presence.heartbeat", "1"),
        ),
    ));
    writes.push((
        presence_topic.clone(),
        0,
        Record {
            expect: Expect::Skip("invalid_payload"),
            ..hostile(
                "heartbeat of an unknown principal kind",
                Some(
                    json!({"id": "hb", "type": "presence.heartbeat", "account_id": "1",
                           "payload": {"kind": "robot", "id": "7"}})
                    .to_string()
                    .as_bytes(),
                ),
                headers("presence.heartbeat", "1"),
            )
        },
    ));

    let mut want: HashMap<&str, HashMap<i32, Vec<String>>> = HashMap::new();
    let mut counted: HashMap<(String, &str), u64> = HashMap::new();
    let mut refused_by_broker = Vec::new();
    for (topic, partition, record) in &writes {
        let mut hs = OwnedHeaders::new();
        for (key, value) in &record.headers {
            hs = hs.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .partition(*partition)
            .key("1")
            .headers(hs);
        if let Some(v) = &record.value {
            r = r.payload(v.as_slice());
        }
        match producer.send(r, Duration::from_secs(20)).await {
            Ok(_) => {}
            // The broker (or client) may refuse a record over its size limit:
            // then there is nothing for the gateway to handle.
            Err((e, _)) if record.value.as_ref().is_some_and(|v| v.len() > 1 << 20) => {
                refused_by_broker.push(format!("{}: {e}", record.what));
                continue;
            }
            Err((e, _)) => anyhow::bail!("cannot write `{}`: {e}", record.what),
        }
        match record.expect {
            Expect::Deliver(account) => {
                let event: Value = serde_json::from_slice(record.value.as_deref().unwrap())?;
                let marker = event["payload"]["id"].as_str().unwrap().to_owned();
                want.entry(account)
                    .or_default()
                    .entry(*partition)
                    .or_default()
                    .push(marker);
            }
            Expect::Skip(reason) => *counted.entry((topic.clone(), reason)).or_default() += 1,
            Expect::Ignore => {}
        }
    }
    if !refused_by_broker.is_empty() {
        eprintln!("records refused by the broker: {refused_by_broker:?}");
    }

    receive_exactly(&mut one, "account 1", &want["1"]).await?;
    receive_exactly(&mut two, "account 2", &want["2"]).await?;
    // Nothing hostile trails the last valid events either.
    for (who, client) in [("account 1", &mut one), ("account 2", &mut two)] {
        if let Ok(f) = client.next_frame_within(Duration::from_millis(500)).await {
            anyhow::bail!("{who} got an extra frame {}", f.raw);
        }
    }

    let health = stack
        .http
        .get(format!("http://{}/healthz", stack.gateway.ops_addr))
        .send()
        .await?;
    anyhow::ensure!(
        health.status().is_success(),
        "/healthz: {}",
        health.status()
    );
    anyhow::ensure!(
        stack.gateway_ready().await,
        "gateway not ready after hostile data"
    );

    // The presence topic has no marker: wait for its counts to settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = stack.gateway_metrics().await?;
        let got: HashMap<(String, &str), u64> = counted
            .keys()
            .map(|(topic, reason)| ((topic.clone(), *reason), skipped(&metrics, topic, reason)))
            .collect();
        if got == counted {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "herald_records_skipped_total: got {got:?}, want {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Valid records are never counted as skipped.
    let metrics = stack.gateway_metrics().await?;
    let total: u64 = [
        "empty",
        "invalid_envelope",
        "account_mismatch",
        "type_mismatch",
    ]
    .iter()
    .map(|r| skipped(&metrics, &tag_topic, r))
    .sum();
    let want_total: u64 = counted
        .iter()
        .filter(|((t, _), _)| *t == tag_topic)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, want_total);

    // Still serving: a fresh event after all of it arrives.
    stack.produce(&[tag_event("1", "p0-after")]).await?;
    let f = one.next_frame().await?;
    assert!(f.body.contains("p0-after"), "unexpected frame {}", f.raw);

    stack.stop().await;
    Ok(())
}
