//! Criterion benches of the consumer → router hot path: decoding a record's
//! envelope, and dispatching one event to 1, 100 and 1,000 recipients of an
//! account (among 100 accounts) through the shared [`FrameCache`], with a
//! recipient that encodes a STOMP MESSAGE once per event and queues the
//! shared bytes, as a STOMP connection does.
//!
//! `cargo bench -p herald-gateway --bench router`

use std::{
    hint::black_box,
    sync::{Arc, Mutex},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_gateway::{
    auth::JwtVerifier,
    core::{event::RoutedEvent, identity::Identity},
    protocols::stomp::codec::{Version, encode_message_text},
    routing::router::{FrameCache, Recipient, Router},
    transport::ws::WsFrame,
};
use herald_schemas::Envelope;

const SECRET: &str = "herald-bench-secret-0123456789abcdef";

/// A recipient that queues into a Vec (emptied now and then so memory stays flat).
struct VecRecipient {
    identity: Identity,
    queue: Mutex<Vec<WsFrame>>,
}

impl Recipient for VecRecipient {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn offer(&self, event: &Arc<RoutedEvent>, cache: &mut FrameCache) {
        let frame = cache.frame_or_insert_with("stomp:1.2:/events:Auto:sub-0", || {
            let body = format!(
                r#"{{"type":{},"payload":{},"timestamp":{}}}"#,
                serde_json::Value::from(event.envelope.event_type.as_str()),
                event.envelope.payload.get(),
                event.kafka_timestamp_ms.unwrap_or(0)
            );
            let position = event.position();
            encode_message_text(
                &[
                    ("subscription", "sub-0"),
                    ("message-id", &position),
                    ("destination", "/events"),
                    ("content-type", "application/json"),
                ],
                &body,
                Version::V1_2,
            )
        });
        if let Ok(mut q) = self.queue.lock() {
            if q.len() >= 1024 {
                q.clear();
            }
            q.push(frame);
        }
    }
}

fn identity(verifier: &JwtVerifier, account: usize, user: usize) -> Identity {
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user.to_string(), "account_id": account.to_string(), "role": "agent", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encodable claims");
    verifier.verify(&token).expect("valid token")
}

fn record(account: usize) -> Vec<u8> {
    format!(
        r#"{{"id":"e-1","type":"tag.updated","account_id":"{account}","occurred_at":"2026-11-22T10:00:00.000Z","payload":{{"id":"t1","name":"vip customers","color":"tag-red"}}}}"#
    )
    .into_bytes()
}

fn decode(c: &mut Criterion) {
    let bytes = record(7);
    let topic: Arc<str> = Arc::from("herald.tag");
    let mut g = c.benchmark_group("consumer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("envelope_decode", |b| {
        b.iter(|| Envelope::decode(black_box(&bytes)))
    });
    g.bench_function("routed_event", |b| {
        b.iter(|| {
            let envelope = Envelope::decode(black_box(&bytes)).expect("valid");
            Arc::new(RoutedEvent::new(topic.clone(), 0, 42, envelope, Some(1)))
        })
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    let verifier = JwtVerifier::new(Some(SECRET), &[], None, None).expect("valid secret");
    let mut g = c.benchmark_group("router/dispatch");
    for recipients in [1usize, 100, 1000] {
        let router = Router::new();
        let mut conn = 0u64;
        // 100 accounts; account 0 is the one the event is for.
        for account in 0..100 {
            let n = if account == 0 { recipients } else { 10 };
            for _ in 0..n {
                conn += 1;
                router.insert(
                    conn,
                    Arc::new(VecRecipient {
                        identity: identity(&verifier, account, conn as usize),
                        queue: Mutex::new(Vec::with_capacity(1024)),
                    }),
                );
            }
        }
        let envelope = Envelope::decode(&record(0)).expect("valid");
        let event = Arc::new(RoutedEvent::new(
            Arc::from("herald.tag"),
            0,
            42,
            envelope,
            Some(1),
        ));
        let mut cache = FrameCache::default();
        g.throughput(Throughput::Elements(recipients as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(recipients),
            &recipients,
            |b, _| b.iter(|| router.dispatch(black_box(&event), &mut cache)),
        );
    }
    // A record for an account with nobody on this pod: the header check.
    let router = Router::new();
    g.throughput(Throughput::Elements(1));
    g.bench_function("has_account_miss", |b| {
        b.iter(|| router.has_account(black_box("900001")))
    });
    g.finish();
}

criterion_group!(benches, decode, dispatch);
criterion_main!(benches);
