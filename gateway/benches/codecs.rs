//! Criterion benches of the protocol codecs the gateway runs per frame:
//! STOMP decode/encode and ActionCable command parsing, plus the JWT check
//! every new connection pays.
//!
//! `cargo bench -p herald-gateway --bench codecs`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_gateway::{
    auth::JwtVerifier,
    protocols::{
        cable::protocol::{parse_command, parse_identifier},
        stomp::codec::{Limits, Version, decode_message, encode_message_text},
    },
};

const SECRET: &str = "herald-bench-secret-0123456789abcdef";

fn stomp(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("stomp");
    let inputs: [(&str, &[u8]); 4] = [
        (
            "decode_connect",
            b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\nAuthorization:Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl\n\n\0",
        ),
        (
            "decode_subscribe",
            b"SUBSCRIBE\nid:sub-0\ndestination:/events\nack:auto\nreceipt:r-0\n\n\0",
        ),
        ("decode_heartbeat", b"\n"),
        (
            "decode_escaped_headers",
            b"SUBSCRIBE\nid:sub\\c0\\n\ndestination:/queue/message\nx-note:a\\\\b\\rc\n\n\0",
        ),
    ];
    for (name, bytes) in inputs {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| decode_message(black_box(bytes), Version::V1_2, &limits))
        });
    }
    let body = r#"{"type":"tag.updated","payload":{"id":"t-1","name":"vip customers","color":"tag-red"},"timestamp":1795609424123}"#;
    let headers = [
        ("subscription", "sub-0"),
        ("message-id", "herald.tag:3:1234567"),
        ("destination", "/events"),
        ("content-type", "application/json"),
    ];
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_message", |b| {
        b.iter(|| encode_message_text(black_box(&headers), black_box(body), Version::V1_2))
    });
    let escaped = [
        ("subscription", "sub:0"),
        ("message-id", "a\nb"),
        ("destination", "/events"),
    ];
    g.bench_function("encode_message_escaped", |b| {
        b.iter(|| encode_message_text(black_box(&escaped), black_box(body), Version::V1_2))
    });
    g.finish();
}

fn cable(c: &mut Criterion) {
    let identifier = r#"{"channel":"RoomChannel","pubsub_token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.c2lnbmF0dXJl","account_id":42,"user_id":7}"#;
    let subscribe =
        serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string();
    let presence = serde_json::json!({
        "command": "message",
        "identifier": identifier,
        "data": r#"{"action":"update_presence"}"#,
    })
    .to_string();
    let mut g = c.benchmark_group("cable");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_subscribe", |b| {
        b.iter(|| parse_command(black_box(&subscribe)))
    });
    g.bench_function("parse_message", |b| {
        b.iter(|| parse_command(black_box(&presence)))
    });
    g.bench_function("parse_identifier", |b| {
        b.iter(|| parse_identifier(black_box(identifier)))
    });
    g.bench_function("parse_garbage", |b| {
        b.iter(|| parse_command(black_box("{\"command\":")))
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let verifier = JwtVerifier::new(Some(SECRET), &[], None, None).expect("valid secret");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "7", "account_id": "42", "role": "agent", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encodable claims");
    c.bench_function("auth/verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&token)))
    });
}

criterion_group!(benches, stomp, cable, jwt);
criterion_main!(benches);
