//! OpenTelemetry export end to end: the producer and the gateway post
//! their spans over OTLP/HTTP (protobuf) to a receiver in this test, which
//! decodes the real `ExportTraceServiceRequest`; a traced publish through
//! the producer's HTTP API to a subscribed STOMP client yields the
//! producer's "publish" span and the gateway's "deliver" span, linked.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use herald_tests::{Stack, StackOptions, airy_message, stomp::RawStomp, token};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;
use serde_json::{Value, json};

/// One received span and the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/HTTP receiver on a free port: every span posted to `/v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

async fn accept(
    State(spans): State<Arc<Mutex<Vec<Received>>>>,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut received = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| string(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    let answer = ExportTraceServiceResponse {
        partial_success: None,
    };
    (StatusCode::OK, answer.encode_to_vec())
}

impl Collector {
    async fn start() -> anyhow::Result<Collector> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/v1/traces", post(accept))
            .with_state(spans.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Collector { url, spans })
    }

    /// The spans of `trace` received so far.
    fn of_trace(&self, trace: &[u8]) -> Vec<Received> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|r| r.span.trace_id == trace)
            .cloned()
            .collect()
    }

    /// Wait until `trace` has a span from both services; returns
    /// (producer's, gateway's).
    async fn both_spans(&self, trace: &[u8]) -> anyhow::Result<(Span, Span)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.of_trace(trace);
            let of = |service: &str| {
                spans
                    .iter()
                    .find(|r| r.service == service)
                    .map(|r| r.span.clone())
            };
            if let (Some(p), Some(g)) = (of("herald-producer"), of("herald-gateway")) {
                return Ok((p, g));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no producer and gateway spans for trace {} within 30 s: {spans:?}",
                hex(trace)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
        Some(Any::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(Any::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A random trace id and span id, as hex.
fn random_ids() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

fn otlp_flags(collector: &Collector, ratio: &str) -> Vec<String> {
    [
        "--otlp-endpoint",
        &collector.url,
        "--otlp-sample-ratio",
        ratio,
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

async fn stack_exporting_to(collector: &Collector, ratio: &str) -> anyhow::Result<Stack> {
    Stack::start_with(StackOptions {
        gateway_args: otlp_flags(collector, ratio),
        producer_args: otlp_flags(collector, ratio),
        ..StackOptions::default()
    })
    .await
}

/// A collector, a stack exporting to it at `ratio`, and a STOMP client of
/// account 1 subscribed to `/queue/message`.
async fn subscribed_stack(ratio: &str) -> anyhow::Result<(Collector, Stack, RawStomp)> {
    let collector = Collector::start().await?;
    let stack = stack_exporting_to(&collector, ratio).await?;
    let mut client = RawStomp::connect(
        &stack.ws_url("/ws.communication"),
        &token("1", "1", "agent"),
    )
    .await?;
    client.subscribe("s", "/queue/message").await?;
    Ok((collector, stack, client))
}

/// Publish `event` with `traceparent` (none when `None`); returns the
/// producer's answer and the `traceparent` it answered with.
async fn publish(
    stack: &Stack,
    event: &Value,
    traceparent: Option<&str>,
) -> anyhow::Result<(Value, String)> {
    let mut request = stack.http.post(stack.events_url()).json(event);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await?;
    anyhow::ensure!(response.status() == 200, "publish: {}", response.status());
    let answered = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((response.json().await?, answered))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_publish_exports_linked_producer_and_gateway_spans() -> anyhow::Result<()> {
    let (collector, stack, mut client) = subscribed_stack("1").await?;

    // An incoming trace the caller did not sample stays unexported, even
    // at ratio 1: the sender's flag is honoured.
    let (unsampled, caller_span) = random_ids();
    publish(
        &stack,
        &airy_message("1", 1),
        Some(&format!("00-{unsampled}-{caller_span}-00")),
    )
    .await?;
    let f = client.next_frame_within(Duration::from_secs(30)).await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);

    let (trace, caller_span) = random_ids();
    let (answer, answered) = publish(
        &stack,
        &airy_message("1", 2),
        Some(&format!("00-{trace}-{caller_span}-01")),
    )
    .await?;
    let f = client.next_frame_within(Duration::from_secs(30)).await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);
    assert!(f.body.contains("hello 2"), "{}", f.raw);

    let (producer, gateway) = collector.both_spans(&unhex(&trace)).await?;
    // The producer's span continues the caller's and is the one named in
    // the answer (and so in the record's header).
    assert_eq!(producer.name, "publish");
    assert_eq!(producer.kind, SpanKind::Producer as i32);
    assert_eq!(hex(&producer.parent_span_id), caller_span);
    assert_eq!(
        answered,
        format!("00-{trace}-{}-01", hex(&producer.span_id)),
        "the answer names the exported span"
    );
    let result = &answer["results"][0];
    let topic = result["topic"].as_str().unwrap().to_owned();
    let a = &producer.attributes;
    assert_eq!(string(a, "messaging.system").as_deref(), Some("kafka"));
    assert_eq!(string(a, "messaging.destination.name"), Some(topic.clone()));
    assert_eq!(
        string(a, "messaging.destination.partition.id"),
        Some(result["partition"].to_string())
    );
    assert_eq!(int(a, "messaging.kafka.offset"), result["offset"].as_i64());
    assert_eq!(
        string(a, "herald.event.type").as_deref(),
        Some("message.created")
    );
    assert_eq!(int(a, "messaging.batch.message_count"), Some(1));
    assert!(producer.end_time_unix_nano >= producer.start_time_unix_nano);

    // The gateway's span is the publishing span's child.
    assert_eq!(gateway.name, "deliver");
    assert_eq!(gateway.kind, SpanKind::Consumer as i32);
    assert_eq!(gateway.parent_span_id, producer.span_id);
    assert_ne!(gateway.span_id, producer.span_id);
    let a = &gateway.attributes;
    assert_eq!(string(a, "messaging.destination.name"), Some(topic));
    assert_eq!(
        string(a, "messaging.destination.partition.id"),
        Some(result["partition"].to_string())
    );
    assert_eq!(int(a, "messaging.kafka.offset"), result["offset"].as_i64());
    assert_eq!(
        string(a, "herald.event.type").as_deref(),
        Some("message.created")
    );
    assert_eq!(int(a, "herald.recipients"), Some(1));
    assert!(
        int(a, "herald.kafka_lag_ms").is_some_and(|l| l >= 0),
        "{a:?}"
    );
    assert!(gateway.end_time_unix_nano >= gateway.start_time_unix_nano);
    // No span per recipient: exactly one span from each service.
    assert_eq!(collector.of_trace(&unhex(&trace)).len(), 2);

    // Spans are exported in the order they end: the unsampled trace's
    // would have come before these.
    assert!(
        collector.of_trace(&unhex(&unsampled)).is_empty(),
        "an unsampled incoming trace was exported"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_zero_exports_only_traces_sampled_by_their_sender() -> anyhow::Result<()> {
    let (collector, stack, mut client) = subscribed_stack("0").await?;

    // A trace Herald starts itself (no traceparent) and an unsampled one.
    let (_, root) = publish(&stack, &airy_message("1", 1), None).await?;
    let root_trace = root.split('-').nth(1).unwrap_or_default().to_owned();
    assert_eq!(root_trace.len(), 32, "{root}");
    assert!(root.ends_with("-00"), "ratio 0 samples nothing: {root}");
    let (unsampled, caller_span) = random_ids();
    publish(
        &stack,
        &airy_message("1", 2),
        Some(&format!("00-{unsampled}-{caller_span}-00")),
    )
    .await?;
    // The sender's sampled flag is honoured at ratio 0 as well.
    let (sampled, caller_span) = random_ids();
    publish(
        &stack,
        &json!([airy_message("1", 3), airy_message("1", 4)]),
        Some(&format!("00-{sampled}-{caller_span}-01")),
    )
    .await?;
    for n in 1..=4 {
        let f = client.next_frame_within(Duration::from_secs(30)).await?;
        assert!(f.body.contains(&format!("hello {n}")), "{}", f.raw);
    }

    let (producer, gateway) = collector.both_spans(&unhex(&sampled)).await?;
    assert_eq!(hex(&producer.parent_span_id), caller_span);
    assert_eq!(gateway.parent_span_id, producer.span_id);
    // A batch: one publishing span, the positions as arrays, and one
    // deliver span per record.
    assert_eq!(
        int(&producer.attributes, "messaging.batch.message_count"),
        Some(2)
    );
    let gateway_spans: HashMap<Vec<u8>, Received> = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let of: HashMap<_, _> = collector
                .of_trace(&unhex(&sampled))
                .into_iter()
                .filter(|r| r.service == "herald-gateway")
                .map(|r| (r.span.span_id.clone(), r))
                .collect();
            if of.len() == 2 {
                break of;
            }
            anyhow::ensure!(Instant::now() < deadline, "deliver spans: {of:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        gateway_spans
            .values()
            .all(|r| r.span.parent_span_id == producer.span_id)
    );

    // Spans are exported in the order they end, and those two traces'
    // ended first.
    assert!(collector.of_trace(&unhex(&root_trace)).is_empty());
    assert!(collector.of_trace(&unhex(&unsampled)).is_empty());
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_row_gets_a_publish_span_and_its_delivery_a_child() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let db = herald_testkit::Database::shared().await?;
    let (pg, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let schema = herald_testkit::unique("herald_otlp_");
    pg.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await?;
    let mut producer_args = otlp_flags(&collector, "1");
    producer_args.extend(
        [
            "--outbox-database-url",
            db.url(),
            "--outbox-schema",
            &schema,
            "--outbox-migrate",
            "--outbox-poll-ms",
            "200",
        ]
        .map(String::from),
    );
    let stack = Stack::start_with(StackOptions {
        gateway_args: otlp_flags(&collector, "1"),
        producer_args,
        ..StackOptions::default()
    })
    .await?;
    let mut client = RawStomp::connect(
        &stack.ws_url("/ws.communication"),
        &token("1", "1", "agent"),
    )
    .await?;
    client.subscribe("s", "/queue/message").await?;
    let event = airy_message("1", 7).to_string();
    let row = pg
        .query_one(
            &format!("INSERT INTO \"{schema}\".herald_outbox (event) VALUES ($1::text::jsonb) RETURNING seq"),
            &[&event],
        )
        .await?;
    let seq: i64 = row.try_get(0)?;
    let f = client.next_frame_within(Duration::from_secs(30)).await?;
    assert_eq!(f.command, "MESSAGE", "{}", f.raw);

    // The row's trace is Herald's own (sampled at ratio 1): find it by its
    // publish span.
    let deadline = Instant::now() + Duration::from_secs(30);
    let publish = loop {
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.service == "herald-producer" && r.span.name == "outbox publish")
            .map(|r| r.span.clone());
        if let Some(span) = found {
            break span;
        }
        anyhow::ensure!(Instant::now() < deadline, "no outbox publish span");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        publish.parent_span_id.is_empty(),
        "a root span: {publish:?}"
    );
    assert_eq!(int(&publish.attributes, "herald.outbox.seq"), Some(seq));
    assert_eq!(
        string(&publish.attributes, "herald.event.type").as_deref(),
        Some("message.created")
    );
    assert!(int(&publish.attributes, "messaging.kafka.offset").is_some());
    let (producer, gateway) = collector.both_spans(&publish.trace_id).await?;
    assert_eq!(producer.span_id, publish.span_id);
    assert_eq!(gateway.name, "deliver");
    assert_eq!(gateway.parent_span_id, publish.span_id);
    stack.stop().await;
    let _ = pg
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await;
    Ok(())
}
