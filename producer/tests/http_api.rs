//! The producer's HTTP API through a real broker: authentication (API keys
//! and scoped JWTs, 401/403 with reasons), invalid events and oversize
//! bodies refused with nothing published, idempotent retries by (account,
//! event id), the identities endpoints, and the served OpenAPI document.

mod support;

use std::time::Duration;

use herald_producer::{ProducerConfig, ProducerHandle};
use herald_schemas::{Family, token_key};
use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::{Broker, BrokerExt as _, metric_value, read_topic, tag_event, unique};
use tokio_util::sync::CancellationToken;

const API_KEY: &str = "test-api-key-0123456789";
const JWT_SECRET: &str = "test-api-jwt-secret-0123456789abcdef";

/// A broker with every topic of one prefix, and producers started on it.
struct Api {
    broker: Broker,
    prefix: String,
    shutdown: CancellationToken,
    http: Client,
}

impl Api {
    async fn new() -> anyhow::Result<Api> {
        support::init_logging();
        let broker = Broker::start().await?;
        let prefix = format!("{}.", unique("t"));
        let topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(&prefix)).collect();
        let identities = herald_schemas::identities_topic(&prefix);
        broker.create_topics(&prefix, &topics, &[], 2).await?;
        broker
            .create_topics(
                &prefix,
                std::slice::from_ref(&identities),
                std::slice::from_ref(&identities),
                2,
            )
            .await?;
        Ok(Api {
            broker,
            prefix,
            shutdown: CancellationToken::new(),
            http: Client::new(),
        })
    }

    /// Start a producer with `extra` flags.
    async fn producer(&self, extra: &[&str]) -> anyhow::Result<ProducerHandle> {
        let mut args = vec![
            "herald-producer",
            "--kafka-brokers",
            &self.broker.bootstrap,
            "--topic-prefix",
            &self.prefix,
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let config = ProducerConfig::from_args(args).map_err(|e| anyhow::anyhow!("{e}"))?;
        herald_producer::start(config, self.shutdown.child_token()).await
    }

    /// The usual producer: an API key and a JWT secret.
    async fn secured(&self, extra: &[&str]) -> anyhow::Result<ProducerHandle> {
        let mut args = vec!["--api-key", API_KEY, "--api-jwt-secret", JWT_SECRET];
        args.extend_from_slice(extra);
        self.producer(&args).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        credential: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.http.request(method, url);
        if let Some(c) = credential {
            request = request.bearer_auth(c);
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn post_events(
        &self,
        p: &ProducerHandle,
        credential: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.send(
            reqwest::Method::POST,
            format!("http://{}/v1/events", p.addr),
            credential,
            Some(body),
        )
        .await
    }

    async fn metrics(&self, p: &ProducerHandle) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://{}/metrics", p.ops_addr))
            .send()
            .await?
            .text()
            .await?)
    }

    fn topic(&self, family: Family) -> String {
        family.topic(&self.prefix)
    }
}

fn jwt(scope: &str, exp_offset: i64) -> String {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + exp_offset;
    encode(
        &Header::default(),
        &json!({"sub": "backend", "scope": scope, "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("encodable claims")
}

fn with_id(mut event: Value, id: &str) -> Value {
    event["id"] = json!(id);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_401_or_403_with_a_reason() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api.secured(&[]).await?;
    let event = tag_event("1", 0);

    let (status, body) = api.post_events(&p, None, &event).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or("")
            .contains("missing credentials"),
        "{body}"
    );

    let (status, body) = api
        .post_events(&p, Some("not-the-key-0123456789"), &event)
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or("")
            .contains("invalid credentials"),
        "{body}"
    );

    let (status, body) = api
        .post_events(&p, Some(&jwt("events:write", -3600)), &event)
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "token expired");

    let forged = encode(
        &Header::default(),
        &json!({"scope": "events:write", "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 60}),
        &EncodingKey::from_secret(b"some-other-secret-0123456789abcdef"),
    )?;
    let (status, _) = api.post_events(&p, Some(&forged), &event).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The right scope passes; another scope is 403 with the scope named.
    let events_token = jwt("events:write", 600);
    let (status, body) = api.post_events(&p, Some(&events_token), &event).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let identity =
        json!({"token": "tok-0123456789abcdef", "account_id": "1", "kind": "user", "id": "7"});
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            format!("http://{}/v1/identities", p.addr),
            Some(&events_token),
            Some(&identity),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["reason"], "token lacks scope `identities:write`");
    let (status, _) = api
        .post_events(&p, Some(&jwt("identities:write", 600)), &event)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The static key, as a bearer or as X-Api-Key, grants everything.
    let (status, _) = api.post_events(&p, Some(API_KEY), &event).await?;
    assert_eq!(status, StatusCode::OK);
    let r = api
        .http
        .post(format!("http://{}/v1/events", p.addr))
        .header("x-api-key", API_KEY)
        .json(&event)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);

    let metrics = api.metrics(&p).await?;
    assert_eq!(
        metric_value(
            &metrics,
            "herald_producer_auth_failures_total",
            "reason=\"missing\""
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "herald_producer_auth_failures_total",
            "reason=\"expired\""
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "herald_producer_auth_failures_total",
            "reason=\"insufficient_scope\""
        ),
        2.0
    );
    assert!(
        metric_value(
            &metrics,
            "herald_producer_requests_total",
            "route=\"/v1/events\",status=\"401\""
        ) == 4.0
    );
    assert!(
        !metrics.contains(API_KEY),
        "the API key leaked into metrics"
    );

    // No credentials configured: closed, unless explicitly opened for development.
    let closed = api.producer(&[]).await?;
    let (status, body) = api.post_events(&closed, Some(API_KEY), &event).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no API credentials"),
        "{body}"
    );
    let open = api.producer(&["--allow-unauthenticated"]).await?;
    let (status, body) = api.post_events(&open, None, &event).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_oversize_requests_publish_nothing() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api
        .secured(&["--max-body-bytes", "4096", "--max-batch", "3"])
        .await?;
    let key = Some(API_KEY);

    let (status, body) = api
        .post_events(
            &p,
            key,
            &json!([tag_event("1", 0), {"type": "tag.updated", "account_id": "1", "payload": {"name": 1}}]),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid events; nothing was published");
    assert_eq!(body["errors"][0]["index"], 1);
    assert!(body["errors"].as_array().is_some_and(|e| e.len() == 1));

    let (status, body) = api
        .post_events(
            &p,
            key,
            &json!({"type": "no.such", "account_id": "1", "payload": {}}),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no.such"),
        "{body}"
    );

    let (status, _) = api
        .post_events(
            &p,
            key,
            &json!([
                tag_event("1", 1),
                tag_event("1", 2),
                tag_event("1", 3),
                tag_event("1", 4)
            ]),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "over --max-batch");

    let r = api
        .http
        .post(format!("http://{}/v1/events", p.addr))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.json::<Value>().await?["error"].is_string());

    let mut big = tag_event("1", 5);
    big["payload"]["name"] = json!("x".repeat(8192));
    let (status, body) = api.post_events(&p, key, &big).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "request body exceeds 4096 bytes");
    // A body far over the limit: the client is still sending when the
    // answer is ready, and must still get to read the 413 (the server reads
    // the announced body before answering, instead of closing under it).
    let mut huge = tag_event("1", 6);
    huge["payload"]["name"] = json!("x".repeat(4 << 20));
    for _ in 0..10 {
        let (status, body) = api.post_events(&p, key, &huge).await?;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "request body exceeds 4096 bytes");
    }
    // Credentials are checked before the body is read: 401, not 413.
    let (status, _) = api.post_events(&p, None, &big).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Only this event ever reached Kafka.
    let (status, body) = api.post_events(&p, key, &tag_event("1", 9)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = read_topic(&api.broker.bootstrap, &api.topic(Family::Tag)).await?;
    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r.value.as_ref()?["payload"]["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["1-9"]);
    let metrics = api.metrics(&p).await?;
    assert_eq!(
        metric_value(
            &metrics,
            "herald_producer_events_invalid_total",
            "route=\"/v1/events\""
        ),
        2.0
    );
    assert_eq!(
        metric_value(&metrics, "herald_producer_requests_total", "status=\"413\""),
        11.0
    );
    api.shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_the_same_event_id_produce_one_record() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api.secured(&[]).await?;
    let key = Some(API_KEY);
    let first_id = unique("evt-");

    let (status, first) = api
        .post_events(&p, key, &with_id(tag_event("1", 0), &first_id))
        .await?;
    assert_eq!(status, StatusCode::OK, "{first}");
    let original = first["results"][0].clone();
    assert!(original.get("duplicate").is_none());

    let (status, again) = api
        .post_events(&p, key, &with_id(tag_event("1", 0), &first_id))
        .await?;
    assert_eq!(status, StatusCode::OK);
    let replay = &again["results"][0];
    for field in ["id", "type", "topic", "partition", "offset"] {
        assert_eq!(replay[field], original[field], "{field} differs on retry");
    }
    assert_eq!(replay["duplicate"], true);

    // In a batch, the known id is replayed and the new one produced.
    let second_id = unique("evt-");
    let (status, batch) = api
        .post_events(
            &p,
            key,
            &json!([
                with_id(tag_event("1", 0), &first_id),
                with_id(tag_event("1", 1), &second_id)
            ]),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["results"][0]["offset"], original["offset"]);
    assert_eq!(batch["results"][1]["id"], second_id.as_str());
    assert!(batch["results"][1].get("duplicate").is_none());

    // Concurrent retries of one id: one record, one answer.
    let third_id = unique("evt-");
    let event = with_id(tag_event("1", 2), &third_id);
    let answers =
        futures_util::future::join_all((0..5).map(|_| api.post_events(&p, key, &event))).await;
    let offsets: Vec<Value> = answers
        .into_iter()
        .map(|a| a.map(|(_, b)| b["results"][0]["offset"].clone()))
        .collect::<Result<_, _>>()?;
    assert!(
        offsets.iter().all(|o| o == &offsets[0] && o.is_i64()),
        "{offsets:?}"
    );

    let records = read_topic(&api.broker.bootstrap, &api.topic(Family::Tag)).await?;
    let mut ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r.value.as_ref()?["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut want = vec![first_id.as_str(), second_id.as_str(), third_id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "a retry produced a second record");
    let metrics = api.metrics(&p).await?;
    assert_eq!(
        metric_value(&metrics, "herald_producer_idempotent_replays_total", ""),
        6.0
    );

    // Outside the window the id is forgotten.
    let short = api.secured(&["--idempotency-window-secs", "1"]).await?;
    let id = unique("evt-");
    let (_, a) = api
        .post_events(&short, key, &with_id(tag_event("1", 3), &id))
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, b) = api
        .post_events(&short, key, &with_id(tag_event("1", 3), &id))
        .await?;
    assert!(b["results"][0].get("duplicate").is_none(), "{b}");
    assert_ne!(a["results"][0]["offset"], b["results"][0]["offset"]);
    api.shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_id_in_two_accounts_is_two_events_and_retries_stay_per_account()
-> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api.secured(&[]).await?;
    let key = Some(API_KEY);
    let topic = api.topic(Family::Tag);
    // Two backends that happen to choose the same id.
    let shared = unique("evt-");

    let (status, a) = api
        .post_events(&p, key, &with_id(tag_event("acct-a", 0), &shared))
        .await?;
    assert_eq!(status, StatusCode::OK, "{a}");
    let (status, b) = api
        .post_events(&p, key, &with_id(tag_event("acct-b", 0), &shared))
        .await?;
    assert_eq!(status, StatusCode::OK, "{b}");
    let (a, b) = (a["results"][0].clone(), b["results"][0].clone());
    assert!(a.get("duplicate").is_none(), "{a}");
    assert!(
        b.get("duplicate").is_none(),
        "account b's event was answered as a retry of account a's: {b}"
    );
    assert_eq!(a["id"], shared.as_str());
    assert_eq!(b["id"], shared.as_str());
    assert_ne!(
        (&a["partition"], &a["offset"]),
        (&b["partition"], &b["offset"]),
        "both accounts were given one position"
    );

    // Retries of each (account, id) replay that account's own first answer.
    for (account, first) in [("acct-a", &a), ("acct-b", &b)] {
        let (status, again) = api
            .post_events(&p, key, &with_id(tag_event(account, 0), &shared))
            .await?;
        assert_eq!(status, StatusCode::OK, "{again}");
        let replay = &again["results"][0];
        for field in ["id", "type", "topic", "partition", "offset"] {
            assert_eq!(replay[field], first[field], "{account}: {field} differs");
        }
        assert_eq!(replay["duplicate"], true, "{account}: {replay}");
    }

    // One batch, and concurrent requests, holding one id for both accounts:
    // two events each time, neither waiting for nor replaying the other.
    let batched = unique("evt-");
    let (status, batch) = api
        .post_events(
            &p,
            key,
            &json!([
                with_id(tag_event("acct-a", 1), &batched),
                with_id(tag_event("acct-b", 1), &batched)
            ]),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let results = batch["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 2, "{batch}");
    assert!(
        results.iter().all(|r| r.get("duplicate").is_none()),
        "{batch}"
    );
    let concurrent = unique("evt-");
    let bodies = [
        with_id(tag_event("acct-a", 2), &concurrent),
        with_id(tag_event("acct-b", 2), &concurrent),
    ];
    let answers =
        futures_util::future::join_all(bodies.iter().map(|b| api.post_events(&p, key, b))).await;
    let mut answered = Vec::new();
    for answer in answers {
        let (status, body) = answer?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["results"][0].get("duplicate").is_none(), "{body}");
        answered.push(body["results"][0].clone());
    }

    // On Kafka: each id once per account, at the positions answered.
    let records = read_topic(&api.broker.bootstrap, &topic).await?;
    let mut seen: Vec<(String, String)> = records
        .iter()
        .filter_map(|r| {
            let v = r.value.as_ref()?;
            Some((
                v["account_id"].as_str()?.to_owned(),
                v["id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = [&shared, &batched, &concurrent]
        .iter()
        .flat_map(|id| ["acct-a", "acct-b"].map(|account| (account.to_owned(), (*id).clone())))
        .collect();
    want.sort();
    assert_eq!(seen, want, "records differ from one per (account, id)");
    let expected = [
        ("acct-a", &a),
        ("acct-b", &b),
        ("acct-a", &results[0]),
        ("acct-b", &results[1]),
        ("acct-a", &answered[0]),
        ("acct-b", &answered[1]),
    ];
    for (account, answer) in expected {
        assert_eq!(answer["topic"], topic.as_str());
        let record = records
            .iter()
            .find(|r| {
                answer["partition"].as_i64() == Some(i64::from(r.partition))
                    && answer["offset"].as_i64() == Some(r.offset)
            })
            .ok_or_else(|| anyhow::anyhow!("no record at the answered position {answer}"))?;
        let v = record
            .value
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("tombstone at {answer}"))?;
        assert_eq!(
            v["account_id"], account,
            "{answer} points at another account's record"
        );
        assert_eq!(v["id"], answer["id"]);
        assert_eq!(record.key.as_deref(), Some(account));
    }
    let metrics = api.metrics(&p).await?;
    assert_eq!(
        metric_value(&metrics, "herald_producer_idempotent_replays_total", ""),
        2.0
    );
    api.shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_registered_and_revoked_on_the_compacted_topic() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api.secured(&[]).await?;
    let scoped = jwt("events:write identities:write", 600);
    let url = format!("http://{}/v1/identities", p.addr);

    let token = "pubsub-token-0123456789";
    let (status, put) = api
        .send(
            reqwest::Method::PUT,
            url.clone(),
            Some(&scoped),
            Some(&json!({"token": token, "account_id": 42, "kind": "contact", "id": "c-9", "conversations": [5]})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["key"], token_key(token).as_str());

    let (status, created) = api
        .send(
            reqwest::Method::POST,
            url.clone(),
            Some(API_KEY),
            Some(&json!({"account_id": "42", "kind": "user", "id": 7, "role": "admin", "expires_at": "2030-01-01T00:00:00Z"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let generated = created["token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(generated.len(), 64);
    assert_eq!(created["key"], token_key(&generated).as_str());

    let (status, bad) = api
        .send(
            reqwest::Method::PUT,
            url.clone(),
            Some(API_KEY),
            Some(&json!({"token": "short", "account_id": "42", "kind": "user", "id": "7"})),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["error"].as_str().unwrap_or("").contains("token"),
        "{bad}"
    );
    let (status, _) = api
        .send(
            reqwest::Method::PUT,
            url.clone(),
            Some(API_KEY),
            Some(&json!({"token": token, "account_id": "42", "kind": "contact", "id": "7", "role": "admin"})),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, revoked) = api
        .send(
            reqwest::Method::DELETE,
            format!("{url}/{token}"),
            Some(&scoped),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let (status, _) = api
        .send(
            reqwest::Method::DELETE,
            url.clone(),
            Some(API_KEY),
            Some(&json!({"key": token_key(&generated)})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .send(
            reqwest::Method::DELETE,
            url.clone(),
            Some(API_KEY),
            Some(&json!({"key": "nothex"})),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let records = read_topic(
        &api.broker.bootstrap,
        &herald_schemas::identities_topic(&api.prefix),
    )
    .await?;
    let of = |key: &str| -> Vec<Option<Value>> {
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .map(|r| r.value.clone())
            .collect()
    };
    assert_eq!(
        of(&token_key(token)),
        vec![
            Some(
                json!({"account_id": "42", "kind": "contact", "id": "c-9", "role": "contact", "conversations": ["5"]})
            ),
            None
        ]
    );
    assert_eq!(
        of(&token_key(&generated)),
        vec![
            Some(
                json!({"account_id": "42", "kind": "user", "id": "7", "role": "admin", "expires_at": "2030-01-01T00:00:00Z"})
            ),
            None
        ]
    );
    assert_eq!(records.len(), 4, "no record may be keyed by anything else");
    // The token itself never appears on the topic.
    assert!(records.iter().all(|r| r.key.as_deref() != Some(token)));
    api.shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_credentials() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api.secured(&[]).await?;
    let r = api
        .http
        .get(format!("http://{}/openapi.json", p.addr))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await?, herald_producer::openapi::document_text());
    let checked_in = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json"),
    )?;
    assert_eq!(checked_in, herald_producer::openapi::document_text());
    api.shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_trace_continues_in_every_record_it_publishes() -> anyhow::Result<()> {
    let api = Api::new().await?;
    let p = api.secured(&[]).await?;
    let url = format!("http://{}/v1/events", p.addr);
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let post = |traceparent: Option<&'static str>, n: u64| {
        let mut request = api
            .http
            .post(url.clone())
            .bearer_auth(API_KEY)
            .json(&json!([tag_event("1", n), tag_event("2", n)]));
        if let Some(t) = traceparent {
            request = request
                .header("traceparent", t)
                .header("tracestate", "congo=t61rcWkgMzE");
        }
        request.send()
    };
    // Traced: same trace, the producer's own span, the caller's flags and state.
    let traced = post(Some(caller), 1).await?;
    assert_eq!(traced.status(), StatusCode::OK);
    let span = traced.headers()["traceparent"].to_str()?.to_owned();
    assert!(
        span.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{span}"
    );
    assert!(span.ends_with("-01") && span != caller, "{span}");
    // Untraced, and an invalid header: a new trace each.
    let fresh = post(None, 2).await?;
    let fresh_span = fresh.headers()["traceparent"].to_str()?.to_owned();
    let invalid = post(Some("00-not-a-trace-01"), 3).await?;
    let invalid_span = invalid.headers()["traceparent"].to_str()?.to_owned();
    for s in [&fresh_span, &invalid_span] {
        assert!(
            herald_runtime::trace::TraceParent::parse(s).is_some() && !s.contains("4bf92f35"),
            "{s}"
        );
    }
    assert_ne!(fresh_span, invalid_span);

    let topic = Family::Tag.topic(&api.prefix);
    let records = read_topic(&api.broker.bootstrap, &topic).await?;
    let by_n = |n: u64| -> Vec<&support::Record> {
        records
            .iter()
            .filter(|r| {
                r.value
                    .as_ref()
                    .is_some_and(|v| v["payload"]["name"] == json!(format!("n{n}")))
            })
            .collect()
    };
    let (one, two, three) = (by_n(1), by_n(2), by_n(3));
    assert_eq!(
        (one.len(), two.len(), three.len()),
        (2, 2, 2),
        "{records:#?}"
    );
    for r in &one {
        assert_eq!(r.headers.get("traceparent"), Some(&span), "{r:?}");
        assert_eq!(
            r.headers.get("tracestate").map(String::as_str),
            Some("congo=t61rcWkgMzE")
        );
    }
    for (recs, span) in [(&two, &fresh_span), (&three, &invalid_span)] {
        for r in recs {
            assert_eq!(r.headers.get("traceparent"), Some(span), "{r:?}");
            assert!(!r.headers.contains_key("tracestate"), "{r:?}");
        }
    }
    Ok(())
}
