//! Apache Kafka failing under running gateways: a partition leader killed,
//! a broker restarted with its logs, records deleted under a resuming
//! client, the identities topic compacted, a topic deleted and recreated.
//! Each test runs on a Kafka cluster of its own (it kills or reconfigures
//! brokers) or on topics only it uses.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use herald_runtime::kafka::TopicLayout;
use herald_testkit::kafka;
use herald_tests::{
    GatewayProcess, Stack, StackOptions,
    cable::RawCable,
    numbered::{self, CABLE_TYPES, Log, STOMP_TYPES},
    stomp::RawStomp,
    token,
};
use serde_json::{Value, json};

const ACCOUNT: &str = "31";
const USER: &str = "7";

/// A client reading in the background until it has `want` events (or
/// fails after a minute without one).
struct Reader {
    name: String,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Reader {
    /// Read with `next` (one frame into the log) until `want` events.
    fn spawn<C, F>(name: &str, mut client: C, want: usize, next: F) -> Reader
    where
        C: Send + 'static,
        F: for<'a> Fn(
                &'a mut C,
                &'a mut Log,
            )
                -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send + 'a>>
            + Send
            + 'static,
    {
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        let task = tokio::spawn(async move {
            let mut local = Log::default();
            while numbered::count(&local.seen()) < want {
                next(&mut client, &mut local).await?;
                *l.lock().unwrap() = local.clone();
            }
            Ok(())
        });
        Reader {
            name: name.to_owned(),
            log,
            task,
        }
    }

    fn stomp(name: &str, c: RawStomp, want: usize) -> Reader {
        Reader::spawn(name, c, want, |c, log| {
            Box::pin(numbered::read_stomp(c, log, Duration::from_secs(60)))
        })
    }

    fn cable(name: &str, c: RawCable, want: usize) -> Reader {
        Reader::spawn(name, c, want, |c, log| {
            Box::pin(numbered::read_cable(c, log, Duration::from_secs(60)))
        })
    }

    fn received(&self) -> usize {
        numbered::count(&self.log.lock().unwrap().seen())
    }

    async fn finish(self) -> anyhow::Result<(String, Log)> {
        let name = self.name.clone();
        self.task
            .await?
            .with_context(|| format!("{name} stopped early"))?;
        let log = self.log.lock().unwrap().clone();
        Ok((name, log))
    }
}

async fn stomp_client(url: &str) -> anyhow::Result<RawStomp> {
    let mut c = RawStomp::connect(url, &token(ACCOUNT, USER, "agent")).await?;
    c.subscribe("s", "/events").await?;
    Ok(c)
}

async fn cable_client(url: &str, protocol: &str) -> anyhow::Result<RawCable> {
    let mut c = RawCable::open(url, protocol).await?;
    let welcome = c.next().await?.context("closed before welcome")?;
    anyhow::ensure!(welcome["type"] == "welcome", "{welcome}");
    let ident = numbered::room_identifier(&token(ACCOUNT, USER, "agent"), ACCOUNT, USER);
    c.subscribe(&ident).await?;
    let f = c.next().await?.context("closed")?;
    anyhow::ensure!(f["type"] == "confirm_subscription", "{f}");
    Ok(c)
}

/// Wait until `check` holds, polling; fails after `within`.
async fn until(within: Duration, what: &str, check: impl Fn() -> bool) -> anyhow::Result<()> {
    herald_tests::wait_until(within, what, || std::future::ready(check())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leader_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    const TOTAL: u64 = 240;
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            own_kafka: Some(kafka::Options::nodes(3)),
            // Every partition on all three brokers, led by broker 1; a write
            // is acknowledged once two replicas have it.
            topics: Some(
                TopicLayout::partitions(1)
                    .on_brokers(&[1, 2, 3])
                    .with("min.insync.replicas", 2),
            ),
            // Longer than a leader election takes, so every publish is
            // answered with its acknowledgement rather than a timeout.
            producer_args: vec!["--produce-timeout-ms".into(), "60000".into()],
            ..Default::default()
        })
        .await?,
    );
    let leader = partition_leader(&stack.broker.bootstrap, &format!("{}tag", stack.prefix))?;
    assert_eq!(
        leader, 1,
        "broker 1 leads the partitions it was placed on first"
    );

    let pods = [
        GatewayProcess::start(stack.gateway_args()).await?,
        GatewayProcess::start(stack.gateway_args()).await?,
    ];
    let stomp_want = numbered::count(&numbered::expected(0..TOTAL, STOMP_TYPES));
    let cable_want = numbered::count(&numbered::expected(0..TOTAL, CABLE_TYPES));
    let mut readers = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let url = pod.ws_url("/ws.communication");
        readers.push(Reader::stomp(
            &format!("stomp@pod{i}"),
            stomp_client(&url).await?,
            stomp_want,
        ));
        let url = pod.ws_url("/cable");
        readers.push(Reader::cable(
            &format!("cable@pod{i}"),
            cable_client(&url, "actioncable-v1-json").await?,
            cable_want,
        ));
    }

    // Publish through the producer, one event at a time, each answered
    // only once Kafka acknowledged it.
    let publisher = {
        let stack = stack.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..TOTAL {
                let started = Instant::now();
                let (status, body) = stack.post_events(&numbered::event(ACCOUNT, i)).await?;
                answers.push((i, status, body, started.elapsed()));
            }
            anyhow::Ok(answers)
        })
    };
    until(
        Duration::from_secs(60),
        "a third of the stream delivered",
        || {
            readers
                .iter()
                .all(|r| r.received() >= stomp_want.min(cable_want) / 3)
        },
    )
    .await?;
    let killed_at = Instant::now();
    let pid = stack
        .broker
        .pid(leader as u32)
        .context("broker not running")?;
    herald_testkit::process::kill(pid, "KILL").await?;

    let answers = publisher.await??;
    let refused: Vec<_> = answers.iter().filter(|(_, s, _, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "every publish acknowledged: {refused:?}"
    );
    let slowest = answers.iter().map(|a| a.3).max().unwrap_or_default();
    for r in readers {
        let (name, log) = r.finish().await?;
        let types = if name.starts_with("stomp") {
            STOMP_TYPES
        } else {
            CABLE_TYPES
        };
        assert_eq!(
            log.seen(),
            numbered::expected(0..TOTAL, types),
            "{name}: every event exactly once, in order"
        );
        assert!(log.gaps.is_empty(), "{name}: {:?}", log.gaps);
        eprintln!(
            "leader failover: {name} longest delivery pause {} ms",
            log.longest_pause().as_millis()
        );
    }
    eprintln!(
        "leader failover: broker {leader} killed {} ms into the stream; slowest acknowledged publish {} ms; new leader {}",
        killed_at.elapsed().as_millis(),
        slowest.as_millis(),
        partition_leader(&stack.broker.bootstrap, &format!("{}tag", stack.prefix))?
    );
    Arc::into_inner(stack)
        .context("the stack is still shared")?
        .stop()
        .await;
    Ok(())
}

/// The broker leading partition 0 of `topic`.
fn partition_leader(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = md.topics().first().context("no topic metadata")?;
    let p = t.partitions().first().context("no partition")?;
    Ok(p.leader())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_keeps_positions_and_resume_has_no_gap_or_duplicate() -> anyhow::Result<()> {
    const BEFORE: u64 = 60;
    const TOTAL: u64 = 150;
    let mut stack = Stack::start_with(StackOptions {
        own_kafka: Some(kafka::Options::default()),
        ..Default::default()
    })
    .await?;
    let url = stack.ws_url("/ws.communication");
    // One client stays connected through the outage; one leaves while the
    // broker is down and resumes after it is back.
    let mut live = stomp_client(&url).await?;
    let mut leaver = stomp_client(&url).await?;
    let mut live_log = Log::default();
    let mut leaver_log = Log::default();
    let stomp_before = numbered::count(&numbered::expected(0..BEFORE, STOMP_TYPES));
    let events: Vec<Value> = (0..BEFORE).map(|i| numbered::event(ACCOUNT, i)).collect();
    stack.produce(&events).await?;
    while numbered::count(&live_log.seen()) < stomp_before {
        numbered::read_stomp(&mut live, &mut live_log, Duration::from_secs(30)).await?;
    }
    while numbered::count(&leaver_log.seen()) < stomp_before {
        numbered::read_stomp(&mut leaver, &mut leaver_log, Duration::from_secs(30)).await?;
    }

    stack.broker.kill().await?;
    wait_ready(&stack, false).await?;
    drop(leaver); // its network went away while the broker was down
    // The live socket is still served while Kafka is away.
    live.send("SUBSCRIBE\nid:q\ndestination:/queue/message\nreceipt:alive\n\n\0")
        .await?;
    let f = live.next_frame().await?;
    assert_eq!(
        (f.command.as_str(), f.header("receipt-id")),
        ("RECEIPT", Some("alive"))
    );

    // Back with its logs: nothing to do by hand; the gateway continues
    // from its positions (no record re-read, none skipped).
    stack.broker.restart().await?;
    wait_ready(&stack, true).await?;
    let events: Vec<Value> = (BEFORE..TOTAL)
        .map(|i| numbered::event(ACCOUNT, i))
        .collect();
    stack.produce(&events).await?;
    let stomp_all = numbered::count(&numbered::expected(0..TOTAL, STOMP_TYPES));
    while numbered::count(&live_log.seen()) < stomp_all {
        numbered::read_stomp(&mut live, &mut live_log, Duration::from_secs(30)).await?;
    }
    assert_eq!(live_log.seen(), numbered::expected(0..TOTAL, STOMP_TYPES));

    // The client that left resumes from its last positions.
    let positions: Vec<String> = leaver_log.last_positions().into_values().collect();
    let mut back = RawStomp::connect(&url, &token(ACCOUNT, USER, "agent")).await?;
    back.send(&format!(
        "SUBSCRIBE\nid:s\ndestination:/events\nx-stream-offset:{}\n\n\0",
        positions.join(",")
    ))
    .await?;
    while numbered::count(&leaver_log.seen()) < stomp_all {
        numbered::read_stomp(&mut back, &mut leaver_log, Duration::from_secs(30)).await?;
    }
    assert!(leaver_log.gaps.is_empty(), "{:?}", leaver_log.gaps);
    assert_eq!(
        leaver_log.seen(),
        numbered::expected(0..TOTAL, STOMP_TYPES),
        "resumed across the restart: no gap, no duplicate"
    );
    // Nothing more is pending for either.
    stack
        .produce(&[numbered::event(ACCOUNT, 1_000_001)])
        .await?;
    for c in [&mut live, &mut back] {
        let mut tail = Log::default();
        while !numbered::read_stomp(c, &mut tail, Duration::from_secs(30)).await? {}
        assert_eq!(
            tail.arrivals[0].n, 1_000_001,
            "no stray event before the marker"
        );
    }
    stack.stop().await;
    Ok(())
}

async fn wait_ready(stack: &Stack, want: bool) -> anyhow::Result<()> {
    herald_tests::wait_until(
        Duration::from_secs(90),
        &format!("/readyz to be {want}"),
        || async { stack.gateway_ready().await == want },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_before_the_log_start_yields_the_gap_signal() -> anyhow::Result<()> {
    // No history buffer: whatever a client missed is read back from Kafka,
    // where the records it needs were deleted.
    let stack = Stack::start_with(StackOptions {
        gateway_args: vec!["--history-buffer-events".into(), "0".into()],
        ..Default::default()
    })
    .await?;
    let stomp_url = stack.ws_url("/ws.communication");
    let cable_url = stack.ws_url("/cable");
    let mut stomp = stomp_client(&stomp_url).await?;
    let mut cable = cable_client(&cable_url, "actioncable-v1-ext-json").await?;
    let user: i64 = USER.parse()?;
    let session = token(ACCOUNT, USER, "agent");
    let mut typeid =
        herald_tests::typeid::joined(&stack.ws_url("/notifications"), &session, user).await?;

    let first: Vec<Value> = (0..30).map(|i| numbered::event(ACCOUNT, i)).collect();
    stack.produce(&first).await?;
    stack
        .produce(&[herald_tests::typeid::notification(
            ACCOUNT,
            &[USER],
            "before",
        )])
        .await?;
    let (mut stomp_log, mut cable_log) = (Log::default(), Log::default());
    let want = |types| numbered::count(&numbered::expected(0..30, types));
    while numbered::count(&stomp_log.seen()) < want(STOMP_TYPES) {
        numbered::read_stomp(&mut stomp, &mut stomp_log, Duration::from_secs(30)).await?;
    }
    while numbered::count(&cable_log.seen()) < want(CABLE_TYPES) {
        numbered::read_cable(&mut cable, &mut cable_log, Duration::from_secs(30)).await?;
    }
    let n = herald_tests::typeid::recv(&mut typeid)
        .await?
        .context("typeid closed")?;
    assert_eq!(n["Body"]["Body"], "before", "{n}");

    // All three go away; events go on; then the records they would need
    // are deleted (DeleteRecords moves each log start past their positions).
    drop((stomp, cable, typeid));
    let later: Vec<Value> = (30..60).map(|i| numbered::event(ACCOUNT, i)).collect();
    let positions = stack.produce(&later).await?;
    stack
        .produce(&[herald_tests::typeid::notification(
            ACCOUNT,
            &[USER],
            "missed",
        )])
        .await?;
    let mut ends: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    for (topic, partition, offset) in positions {
        let e = ends.entry((topic, partition)).or_default();
        *e = (*e).max(offset);
    }
    for ((topic, partition), last) in &ends {
        stack.delete_records(topic, *partition, *last).await?;
    }

    // STOMP: one gap message per stream it asked for, reason `retention`,
    // then live delivery.
    let mut stomp = RawStomp::connect(&stomp_url, &session).await?;
    let asked: Vec<String> = stomp_log.last_positions().into_values().collect();
    stomp
        .send(&format!(
            "SUBSCRIBE\nid:s\ndestination:/events\nx-stream-offset:{}\nreceipt:r\n\n\0",
            asked.join(",")
        ))
        .await?;
    let mut gaps = Log::default();
    while gaps.gaps.len() < asked.len() {
        let f = stomp.next_frame_within(Duration::from_secs(30)).await?;
        match f.command.as_str() {
            "RECEIPT" => continue,
            "MESSAGE" => {
                let gap = f
                    .header("herald-gap")
                    .with_context(|| format!("an event before the gap signal: {}", f.raw))?;
                let body: Value = serde_json::from_str(&f.body)?;
                assert_eq!(body["type"], "herald.gap");
                assert_eq!(body["reason"], "retention", "{}", f.raw);
                gaps.gaps.push(gap.to_owned());
            }
            _ => anyhow::bail!("unexpected {}", f.raw),
        }
    }
    for p in &asked {
        let (stream, offset) = p.rsplit_once(':').unwrap();
        let from = offset.parse::<i64>()? + 1;
        assert!(
            gaps.gaps.contains(&format!("{stream}:{from}")),
            "{gaps:?} {asked:?}"
        );
    }

    // AnyCable's extended protocol: reject_history, then live delivery.
    let mut any = RawCable::open(&cable_url, "actioncable-v1-ext-json").await?;
    assert_eq!(any.next().await?.context("closed")?["type"], "welcome");
    let ident = numbered::room_identifier(&session, ACCOUNT, USER);
    any.send(
        &serde_json::json!({"command": "subscribe", "identifier": ident,
            "history": {"since": 0, "streams": cable_log.history_streams()}})
        .to_string(),
    )
    .await?;
    assert_eq!(
        any.next().await?.context("closed")?["type"],
        "confirm_subscription"
    );
    assert_eq!(
        any.next().await?.context("closed")?,
        serde_json::json!({"identifier": ident, "type": "reject_history"})
    );

    // TypeID has no positions: a client that joins again gets what is
    // published from then on, nothing of what it missed, and no error.
    let mut typeid =
        herald_tests::typeid::joined(&stack.ws_url("/notifications"), &session, user).await?;

    let live: Vec<Value> = (60..63).map(|i| numbered::event(ACCOUNT, i)).collect();
    stack.produce(&live).await?;
    stack
        .produce(&[herald_tests::typeid::notification(
            ACCOUNT,
            &[USER],
            "after",
        )])
        .await?;
    let mut tail = Log::default();
    while numbered::count(&tail.seen()) < numbered::count(&numbered::expected(60..63, STOMP_TYPES))
    {
        numbered::read_stomp(&mut stomp, &mut tail, Duration::from_secs(30)).await?;
    }
    assert_eq!(tail.seen(), numbered::expected(60..63, STOMP_TYPES));
    let mut tail = Log::default();
    while numbered::count(&tail.seen()) < numbered::count(&numbered::expected(60..63, CABLE_TYPES))
    {
        numbered::read_cable(&mut any, &mut tail, Duration::from_secs(30)).await?;
    }
    assert_eq!(tail.seen(), numbered::expected(60..63, CABLE_TYPES));
    let n = herald_tests::typeid::recv(&mut typeid)
        .await?
        .context("typeid closed")?;
    assert_eq!(n["Body"]["Body"], "after", "TypeID replays nothing: {n}");

    let metrics = stack.gateway_metrics().await?;
    for protocol in ["stomp", "actioncable"] {
        let line =
            format!("herald_resume_gaps_total{{protocol=\"{protocol}\",reason=\"retention\"}}");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{line} in {metrics}"
        );
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_loads_exactly_the_live_identities_of_a_compacted_topic()
-> anyhow::Result<()> {
    // The log cleaner works within seconds: small segments, everything
    // cleanable at once, tombstones kept briefly.
    let stack = Stack::start_with(StackOptions {
        topics: Some(
            TopicLayout::partitions(1)
                .with("segment.ms", 100)
                .with("min.cleanable.dirty.ratio", "0.01")
                .with("min.compaction.lag.ms", 0)
                .with("delete.retention.ms", 100),
        ),
        ..Default::default()
    })
    .await?;
    let identity =
        |user: &str| json!({"account_id": ACCOUNT, "kind": "user", "id": user, "role": "agent"});
    // The offsets of the two records the cleaner must remove.
    let superseded = [
        stack.put_identity("tok-changed", &identity("1")).await?,
        stack.put_identity("tok-revoked", &identity("2")).await?,
    ];
    stack.put_identity("tok-kept", &identity("3")).await?;
    stack.put_identity("tok-changed", &identity("4")).await?;
    stack.revoke_identity("tok-revoked").await?;
    let topic = herald_schemas::identities_topic(&stack.prefix);

    // Keep appending (each append after segment.ms rolls a segment, which
    // makes the previous ones cleanable) until the cleaner removed the
    // superseded records.
    let mut filler = 0;
    herald_tests::wait_until(
        Duration::from_secs(120),
        "the log cleaner to compact",
        || {
            filler += 1;
            let stack = &stack;
            let topic = &topic;
            let n = filler;
            async move {
                let key = format!("filler-{n}");
                if stack.put_identity(&key, &identity("9")).await.is_err()
                    || stack.revoke_identity(&key).await.is_err()
                {
                    return false;
                }
                match read_all(&stack.broker.bootstrap, topic).await {
                    Ok(records) => !records.iter().any(|(o, _, _)| superseded.contains(o)),
                    Err(_) => false,
                }
            }
        },
    )
    .await?;
    let after = read_all(&stack.broker.bootstrap, &topic).await?;
    let live_keys: std::collections::BTreeSet<&String> = after
        .iter()
        .filter(|(_, _, v)| v.is_some())
        .map(|(_, k, _)| k)
        .collect();
    assert!(
        live_keys.contains(&herald_schemas::token_key("tok-changed"))
            && live_keys.contains(&herald_schemas::token_key("tok-kept")),
        "{after:?}"
    );
    eprintln!(
        "compaction: {} records written, {} left (offsets {:?} gone)",
        5 + 2 * filler,
        after.len(),
        superseded
    );

    // A gateway started now reads only what the cleaner left.
    let pod = GatewayProcess::start(stack.gateway_args()).await?;
    let metrics = reqwest::get(format!("http://{}/metrics", pod.ops_addr))
        .await?
        .text()
        .await?;
    assert!(
        metrics.lines().any(|l| l == "herald_identities 2"),
        "exactly the two live tokens: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("herald_identities"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let url = pod.ws_url("/cable");
    for (tok, user, confirmed) in [
        ("tok-changed", "4", true),
        ("tok-changed", "1", false),
        ("tok-kept", "3", true),
        ("tok-revoked", "2", false),
        ("filler-1", "9", false),
    ] {
        let mut c = RawCable::open(&url, "actioncable-v1-json").await?;
        assert_eq!(c.next().await?.context("closed")?["type"], "welcome");
        let ident = numbered::room_identifier(tok, ACCOUNT, user);
        c.subscribe(&ident).await?;
        let f = c.next().await?.context("closed")?;
        let want = if confirmed {
            "confirm_subscription"
        } else {
            "reject_subscription"
        };
        assert_eq!(f["type"], want, "{tok} as user {user}: {f}");
    }
    stack.stop().await;
    Ok(())
}

/// Every record of partition 0 of `topic`: (offset, key, value).
async fn read_all(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Vec<(i64, String, Option<String>)>> {
    use rdkafka::{
        Message as _, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer as _},
    };
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", herald_tests::unique("read-all-"))
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()?;
        let (_, high) = c.fetch_watermarks(&topic, 0, Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
        c.assign(&tpl)?;
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            anyhow::ensure!(Instant::now() < deadline, "reading {topic} timed out");
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    out.push((
                        m.offset(),
                        String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
                    ));
                    if m.offset() + 1 >= high {
                        return Ok(out);
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(out),
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
    })
    .await?
}

/// Delete this stack's `families` topics and create them again, waiting
/// until every one has a new topic ID.
async fn recreate(stack: &Stack, families: &[&str]) -> anyhow::Result<()> {
    use herald_runtime::topic_ids::{TopicId, describe};
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let mut kafka = herald_runtime::KafkaArgs::for_brokers(&stack.broker.bootstrap);
    kafka.topic_prefix = stack.prefix.clone();
    let topics: Vec<String> = families
        .iter()
        .map(|f| format!("{}{f}", stack.prefix))
        .collect();
    let client: BaseConsumer = kafka.client_config()?.create()?;
    let ids = |c: &BaseConsumer| -> anyhow::Result<Vec<TopicId>> {
        let d = describe(c.client(), &topics, Duration::from_secs(10))?;
        Ok(topics
            .iter()
            .map(|t| d.get(t).map_or(TopicId::Missing, |i| i.id.clone()))
            .collect())
    };
    let before = ids(&client)?;
    herald_runtime::kafka::delete_topics(&kafka, &topics).await?;
    herald_tests::retry(Duration::from_secs(60), || async {
        herald_runtime::kafka::ensure_topics(&kafka, &topics, &[], &stack.layout).await?;
        let now = ids(&client)?;
        anyhow::ensure!(
            now.iter()
                .zip(&before)
                .all(|(n, b)| matches!(n, TopicId::Id(_)) && n != b),
            "not recreated yet: {now:?}"
        );
        Ok(())
    })
    .await
}

/// `received` is complete and in order at its end: it ends with `want`,
/// and anything before that is a repeat of some of `want` (events of the
/// new topic dispatched before the gateway noticed the recreation, which
/// come again once it re-reads the new topic from its beginning).
fn ends_complete(received: &numbered::Seen, want: &numbered::Seen) -> Result<(), String> {
    for (ty, w) in want {
        let r = received.get(ty).cloned().unwrap_or_default();
        let ok = r.len() >= w.len()
            && r[r.len() - w.len()..] == w[..]
            && r[..r.len() - w.len()].iter().all(|n| w.contains(n));
        if !ok {
            return Err(format!("{ty}: received {r:?}, want {w:?} at the end"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_and_recreated_under_running_gateways_is_noticed() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        topics: Some(TopicLayout::partitions(1)),
        ..Default::default()
    })
    .await?;
    let families = ["conversation", "message", "tag"];
    let stomp_url = stack.ws_url("/ws.communication");
    let cable_url = stack.ws_url("/cable");
    let ext = "actioncable-v1-ext-json";
    let mut live_stomp = stomp_client(&stomp_url).await?;
    let mut live_cable = cable_client(&cable_url, ext).await?;
    let mut left_stomp = stomp_client(&stomp_url).await?;
    let mut left_cable = cable_client(&cable_url, ext).await?;
    let (mut ls, mut lc, mut gs, mut gc) = (
        Log::default(),
        Log::default(),
        Log::default(),
        Log::default(),
    );

    // The old topics: 20 records each.
    let old: Vec<Value> = (0..60).map(|i| numbered::event(ACCOUNT, i)).collect();
    stack.produce(&old).await?;
    let n = |r: std::ops::Range<u64>, t| numbered::count(&numbered::expected(r, t));
    for (c, log) in [(&mut live_stomp, &mut ls), (&mut left_stomp, &mut gs)] {
        while numbered::count(&log.seen()) < n(0..60, STOMP_TYPES) {
            numbered::read_stomp(c, log, Duration::from_secs(30)).await?;
        }
    }
    for (c, log) in [(&mut live_cable, &mut lc), (&mut left_cable, &mut gc)] {
        while numbered::count(&log.seen()) < n(0..60, CABLE_TYPES) {
            numbered::read_cable(c, log, Duration::from_secs(30)).await?;
        }
    }
    drop((left_stomp, left_cable));

    // Recreated with fewer records than the old positions: offsets went
    // backwards under the gateway.
    recreate(&stack, &families).await?;
    let new: Vec<Value> = (100..130).map(|i| numbered::event(ACCOUNT, i)).collect();
    stack.produce(&new).await?;
    let (mut ls2, mut lc2) = (Log::default(), Log::default());
    while numbered::count(&ls2.seen()) < n(100..130, STOMP_TYPES) {
        numbered::read_stomp(&mut live_stomp, &mut ls2, Duration::from_secs(30)).await?;
    }
    while numbered::count(&lc2.seen()) < n(100..130, CABLE_TYPES) {
        numbered::read_cable(&mut live_cable, &mut lc2, Duration::from_secs(30)).await?;
    }
    assert_eq!(
        ls2.seen(),
        numbered::expected(100..130, STOMP_TYPES),
        "STOMP live: the new topic from its start"
    );
    assert_eq!(
        lc2.seen(),
        numbered::expected(100..130, CABLE_TYPES),
        "cable live: the new topic from its start"
    );

    // Clients that were away resume with positions of the old topics.
    let mut back_stomp = RawStomp::connect(&stomp_url, &token(ACCOUNT, USER, "agent")).await?;
    let asked: Vec<String> = gs.last_positions().into_values().collect();
    back_stomp
        .send(&format!(
            "SUBSCRIBE\nid:s\ndestination:/events\nx-stream-offset:{}\n\n\0",
            asked.join(",")
        ))
        .await?;
    let mut bs = Log::default();
    while bs.gaps.len() < asked.len() {
        anyhow::ensure!(
            !numbered::read_stomp(&mut back_stomp, &mut bs, Duration::from_secs(30)).await?,
            "an event before the gap signals: {bs:?}"
        );
    }
    assert!(
        bs.gaps.iter().all(|g| g.contains("\"reason\":\"reset\"")),
        "{:?}",
        bs.gaps
    );
    let mut back_cable = RawCable::open(&cable_url, ext).await?;
    assert_eq!(
        back_cable.next().await?.context("closed")?["type"],
        "welcome"
    );
    let ident = numbered::room_identifier(&token(ACCOUNT, USER, "agent"), ACCOUNT, USER);
    back_cable
        .send(
            &json!({"command": "subscribe", "identifier": ident,
                "history": {"since": 0, "streams": gc.history_streams()}})
            .to_string(),
        )
        .await?;
    assert_eq!(
        back_cable.next().await?.context("closed")?["type"],
        "confirm_subscription"
    );
    // Another incarnation of the topics is another epoch: the positions are
    // refused (`reject_history`); what the new topics hold since the
    // request's `since` may come first, never anything of the old ones.
    let new_epochs: Vec<String> = lc2
        .arrivals
        .iter()
        .filter_map(|a| a.epoch.clone())
        .collect();
    let old_epochs: Vec<String> = lc.arrivals.iter().filter_map(|a| a.epoch.clone()).collect();
    assert!(
        new_epochs.iter().all(|e| !old_epochs.contains(e)),
        "{new_epochs:?} vs {old_epochs:?}"
    );
    loop {
        let f = back_cable.next().await?.context("closed")?;
        if f == json!({"identifier": ident, "type": "reject_history"}) {
            break;
        }
        let epoch = f["epoch"].as_str().unwrap_or_default();
        assert!(
            new_epochs.iter().any(|e| e == epoch),
            "only the new topics: {f}"
        );
    }

    // Recreated again, and this time the new topics outgrow the old
    // positions at once (a gateway that keeps reading at the old offset
    // would skip the first records without a word).
    let before_skip = lc2.clone();
    recreate(&stack, &families).await?;
    let burst: Vec<Value> = (200..320).map(|i| numbered::event(ACCOUNT, i)).collect();
    stack.produce(&burst).await?;
    let (mut ls3, mut lc3) = (Log::default(), Log::default());
    let want_s = numbered::expected(200..320, STOMP_TYPES);
    let want_c = numbered::expected(200..320, CABLE_TYPES);
    // Everyone (the live clients, and the two that resumed) gets every
    // event of the new topics.
    let mut bc = Log::default();
    for (c, log) in [(&mut live_stomp, &mut ls3), (&mut back_stomp, &mut bs)] {
        while ends_complete(&log.seen(), &want_s).is_err() {
            numbered::read_stomp(c, log, Duration::from_secs(30)).await?;
        }
    }
    for (c, log) in [(&mut live_cable, &mut lc3), (&mut back_cable, &mut bc)] {
        while ends_complete(&log.seen(), &want_c).is_err() {
            numbered::read_cable(c, log, Duration::from_secs(30)).await?;
        }
    }
    drop(before_skip);
    for (name, log, want) in [("live STOMP", &ls3, &want_s), ("live cable", &lc3, &want_c)] {
        let got = numbered::count(&log.seen());
        eprintln!(
            "recreation: {name} received {got} events of the outgrowing new topics for {} published (repeated: {})",
            numbered::count(want),
            got - numbered::count(want)
        );
    }
    let metrics = stack.gateway_metrics().await?;
    for f in families {
        let line = format!(
            "herald_partition_resets_total{{topic=\"{}{f}\"}}",
            stack.prefix
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{line} in {metrics}"
        );
    }
    stack.stop().await;
    Ok(())
}
