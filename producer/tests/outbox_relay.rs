//! The outbox relay against the real Postgres on this machine and a real
//! Kafka-protocol broker, run as the `herald-producer` binary so it can be
//! SIGKILLed: at-least-once delivery, per-account order, stable event ids
//! across crashes, one leader among several relays, poison rows set aside,
//! database connection loss and broker outages survived without help;
//! per-account commit order under concurrent writers (migration 2's insert
//! trigger), with the relay SIGKILLed too, and a version-1 table upgraded.

mod support;

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use support::{
    Broker, BrokerExt as _, ProducerProcess, TestDb, check_deliveries, read_topic, tag_event,
    unique, wait_until,
};

/// A broker, a private schema with the outbox migrated, and a topic prefix.
struct Setup {
    broker: Broker,
    db: TestDb,
    prefix: String,
}

impl Setup {
    async fn new(broker: Broker) -> anyhow::Result<Setup> {
        support::init_logging();
        let prefix = format!("{}.", unique("t"));
        broker
            .create_topics(&prefix, &[format!("{prefix}tag")], &[], 3)
            .await?;
        let db = TestDb::create().await?;
        let setup = Setup { broker, db, prefix };
        setup.migrate()?;
        Ok(setup)
    }

    fn topic(&self) -> String {
        format!("{}tag", self.prefix)
    }

    /// `herald-producer migrate` for this test's schema.
    fn migrate(&self) -> anyhow::Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_herald-producer"))
            .args(["migrate", "--outbox-database-url", &self.db.url])
            .args(["--outbox-schema", &self.db.schema])
            .env_remove("HERALD_CONFIG")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Relay flags; `app` names the relay's database sessions.
    fn relay_args(&self, app: &str, extra: &[&str]) -> Vec<String> {
        let sep = if self.db.url.contains('?') { '&' } else { '?' };
        let mut args: Vec<String> = [
            "--kafka-brokers",
            &self.broker.bootstrap,
            "--topic-prefix",
            &self.prefix,
            "--outbox-database-url",
            &format!("{}{sep}application_name={app}", self.db.url),
            "--outbox-schema",
            &self.db.schema,
            "--outbox-poll-ms",
            "200",
            "--outbox-batch",
            "50",
            "--outbox-max-backoff-ms",
            "1000",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // `extra` holds flag/value pairs that replace the defaults above.
        for pair in extra.chunks(2) {
            if let Some(i) = args.iter().position(|a| a == pair[0]) {
                args.drain(i..i + 2);
            }
            args.extend(pair.iter().map(|s| s.to_string()));
        }
        args
    }

    async fn wait_drained(&self, within: Duration) -> anyhow::Result<()> {
        wait_until(within, "the outbox to drain", || async {
            Ok(self.db.backlog().await? == 0)
        })
        .await
    }

    async fn records(&self) -> anyhow::Result<Vec<support::Record>> {
        read_topic(&self.broker.bootstrap, &self.topic()).await
    }
}

/// A small deterministic PRNG (xorshift); the seed is printed so a failure
/// can be replayed with `HERALD_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("HERALD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            })
            | 1;
        eprintln!("HERALD_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Insert `tag_event`s for `accounts` in small transactions until `stop`,
/// or `limit` events; returns how many each account got.
async fn insert_until(
    url: String,
    table: String,
    accounts: Vec<String>,
    stop: Arc<AtomicBool>,
    limit: u64,
    seed: u64,
    pause: Duration,
) -> anyhow::Result<HashMap<String, u64>> {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut rng = Rng(seed | 1);
    let mut counts: HashMap<String, u64> = accounts.iter().map(|a| (a.clone(), 0)).collect();
    let mut total = 0;
    while !stop.load(Ordering::Acquire) && total < limit {
        let size = 1 + rng.below(16);
        let mut events = Vec::new();
        for _ in 0..size {
            let account = &accounts[rng.below(accounts.len() as u64) as usize];
            let n = counts.get_mut(account).expect("known account");
            events.push(tag_event(account, *n).to_string());
            *n += 1;
            total += 1;
        }
        client
            .execute(
                &format!(
                    "INSERT INTO {table} (event) SELECT e::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS t(e, i) ORDER BY i"
                ),
                &[&events],
            )
            .await?;
        tokio::time::sleep(pause).await;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_sigkill_at_random_points() -> anyhow::Result<()> {
    let s = Setup::new(Broker::start().await?).await?;
    let mut rng = Rng::seeded();
    let accounts: Vec<String> = (1..=4).map(|i| format!("acct{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = tokio::spawn(insert_until(
        s.db.url.clone(),
        s.db.outbox(),
        accounts,
        stop.clone(),
        u64::MAX,
        rng.below(u64::MAX),
        // Keep the relay busy so kills land mid-batch too.
        Duration::from_millis(1),
    ));

    let args = s.relay_args(&unique("relay_"), &[]);
    for round in 0..6 {
        let mut relay = ProducerProcess::spawn(&args)?;
        let lifetime = 300 + rng.below(1200);
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        relay.kill();
        eprintln!("round {round}: SIGKILL after {lifetime} ms");
    }
    stop.store(true, Ordering::Release);
    let counts = inserter.await??;
    let total: u64 = counts.values().sum();
    let left = s.db.backlog().await?;
    assert!(
        (left as u64) < total,
        "the killed relays published nothing ({left} of {total} rows left)"
    );

    let relay = ProducerProcess::spawn(&args)?;
    s.wait_drained(Duration::from_secs(60)).await?;
    let records = s.records().await?;
    let duplicates = check_deliveries(&records, &counts)?;
    assert_eq!(records.len() as u64, total + duplicates as u64);
    eprintln!(
        "{total} rows, {} records, {duplicates} duplicates",
        records.len()
    );
    drop(relay);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_once_and_fail_over() -> anyhow::Result<()> {
    let s = Setup::new(Broker::start().await?).await?;
    let a = ProducerProcess::spawn(&s.relay_args("relay_a", &[]))?;
    let b = ProducerProcess::spawn(&s.relay_args("relay_b", &[]))?;
    wait_until(Duration::from_secs(30), "one leader", || async {
        let la = a.metric("herald_producer_outbox_leader", "").await?;
        let lb = b.metric("herald_producer_outbox_leader", "").await?;
        let ready = a.readyz().await? == 200 && b.readyz().await? == 200;
        Ok(la + lb == 1.0 && ready)
    })
    .await?;
    let (leader_is_a, mut leader, standby) =
        if a.metric("herald_producer_outbox_leader", "").await? == 1.0 {
            (true, a, b)
        } else {
            (false, b, a)
        };

    // Phase 1: both running, nobody crashes: every row exactly once.
    let accounts: Vec<String> = (1..=3).map(|i| format!("acct{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = insert_until(
        s.db.url.clone(),
        s.db.outbox(),
        accounts.clone(),
        stop.clone(),
        300,
        7,
        Duration::from_millis(5),
    )
    .await?;
    s.wait_drained(Duration::from_secs(30)).await?;
    let records = s.records().await?;
    assert_eq!(
        check_deliveries(&records, &counts)?,
        0,
        "duplicates without a crash"
    );
    assert_eq!(records.len(), 300);
    assert_eq!(
        leader
            .metric("herald_producer_outbox_rows_total", "")
            .await?,
        300.0
    );
    assert_eq!(
        standby
            .metric("herald_producer_outbox_rows_total", "")
            .await?,
        0.0,
        "the standby published"
    );

    // Phase 2: the leader dies mid-stream; the standby takes over.
    let inserter = tokio::spawn({
        let (url, table, stop) = (s.db.url.clone(), s.db.outbox(), stop.clone());
        async move {
            let extra: Vec<String> = (1..=3).map(|i| format!("more{i}")).collect();
            insert_until(url, table, extra, stop, 600, 11, Duration::from_millis(5)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    leader.kill();
    eprintln!("killed relay_{}", if leader_is_a { "a" } else { "b" });
    let more = inserter.await??;
    wait_until(
        Duration::from_secs(30),
        "the standby to take over",
        || async { Ok(standby.metric("herald_producer_outbox_leader", "").await? == 1.0) },
    )
    .await?;
    // Rows inserted after the takeover can only be published by the new leader.
    s.db.insert(&(0..10).map(|n| tag_event("late", n)).collect::<Vec<_>>())
        .await?;
    s.wait_drained(Duration::from_secs(30)).await?;
    let mut all = counts.clone();
    all.extend(more);
    all.insert("late".to_owned(), 10);
    let records = s.records().await?;
    let duplicates = check_deliveries(&records, &all)?;
    // Only phase-2 rows in flight at the crash may repeat.
    let phase1: Vec<_> = records
        .iter()
        .filter(|r| {
            r.value
                .as_ref()
                .and_then(|v| v["account_id"].as_str())
                .is_some_and(|a| a.starts_with("acct"))
        })
        .collect();
    assert_eq!(phase1.len(), 300, "phase-1 rows were published again");
    eprintln!("{duplicates} duplicates across the crash");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_are_set_aside_and_the_relay_survives_losing_its_database_session()
-> anyhow::Result<()> {
    let s = Setup::new(Broker::start().await?).await?;
    let poison: Vec<(Value, &str)> = vec![
        (
            json!({"type": "no.such.event", "account_id": "p", "payload": {}}),
            "no.such.event",
        ),
        (
            json!({"type": "tag.updated", "payload": {"id": "x", "name": "n", "color": "c"}}),
            "account_id",
        ),
        (json!("just a string"), "object"),
        (json!([1, 2, 3]), "object"),
        (
            json!({"type": "tag.updated", "account_id": "p", "payload": {"name": 5}}),
            "payload",
        ),
    ];
    let mut events = vec![tag_event("good", 0)];
    events.extend(poison.iter().map(|(e, _)| e.clone()));
    events.push(tag_event("good", 1));
    events.push(tag_event("other", 0));
    s.db.insert(&events).await?;

    let app = unique("relay_");
    let relay = ProducerProcess::spawn(&s.relay_args(&app, &[]))?;
    s.wait_drained(Duration::from_secs(30)).await?;
    let records = s.records().await?;
    let expected: HashMap<String, u64> = [("good".to_owned(), 2), ("other".to_owned(), 1)].into();
    assert_eq!(check_deliveries(&records, &expected)?, 0);

    let dead =
        s.db.client
            .query(
                &format!(
                    "SELECT event::text, reason FROM \"{}\".herald_outbox_dead_letter ORDER BY seq",
                    s.db.schema
                ),
                &[],
            )
            .await?;
    assert_eq!(dead.len(), poison.len());
    for (row, (event, hint)) in dead.iter().zip(&poison) {
        let stored: Value = serde_json::from_str(row.get::<_, &str>(0))?;
        let reason: &str = row.get(1);
        assert_eq!(&stored, event);
        assert!(
            reason.contains(hint),
            "reason {reason:?} should mention {hint}"
        );
    }
    wait_until(Duration::from_secs(10), "poison metric", || async {
        Ok(relay
            .metric("herald_producer_outbox_poison_rows_total", "")
            .await?
            == 5.0)
    })
    .await?;

    // Cut the relay's database sessions: it reconnects by itself.
    let killed: i64 = s
        .db
        .client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await?
        .get(0);
    assert!(killed >= 1, "no relay session to terminate");
    s.db.insert(&[tag_event("good", 2), tag_event("other", 1)])
        .await?;
    s.wait_drained(Duration::from_secs(30)).await?;
    let records = s.records().await?;
    let expected: HashMap<String, u64> = [("good".to_owned(), 3), ("other".to_owned(), 2)].into();
    check_deliveries(&records, &expected)?;
    assert!(
        relay
            .metric("herald_producer_outbox_errors_total", "kind=\"postgres\"")
            .await?
            >= 1.0
    );
    wait_until(Duration::from_secs(10), "readiness", || async {
        Ok(relay.readyz().await? == 200)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_recovers_from_a_broker_outage() -> anyhow::Result<()> {
    // A broker this test can stop and start: always its own.
    let mut s = Setup::new(Broker::start_own().await?).await?;
    let relay = ProducerProcess::spawn(
        &s.relay_args(&unique("relay_"), &["--produce-timeout-ms", "2000"]),
    )?;
    s.db.insert(&(0..20).map(|n| tag_event("acct", n)).collect::<Vec<_>>())
        .await?;
    s.wait_drained(Duration::from_secs(30)).await?;
    let before = s.records().await?;
    check_deliveries(&before, &[("acct".to_owned(), 20)].into())?;

    s.broker.kill().await?;
    let during: Vec<Value> = (0..20).map(|n| tag_event("later", n)).collect();
    s.db.insert(&during).await?;
    wait_until(
        Duration::from_secs(30),
        "/readyz to report the outage",
        || async { Ok(relay.readyz().await? == 503) },
    )
    .await?;
    assert_eq!(
        s.db.backlog().await?,
        20,
        "rows left the outbox without Kafka"
    );

    // The broker comes back with its logs; the relay must resume by itself
    // and publish the rows held back, after the ones published before.
    s.broker.restart().await?;
    s.wait_drained(Duration::from_secs(60)).await?;
    let after = s.records().await?;
    check_deliveries(
        &after,
        &[("acct".to_owned(), 20), ("later".to_owned(), 20)].into(),
    )?;
    wait_until(
        Duration::from_secs(30),
        "readiness after the outage",
        || async { Ok(relay.readyz().await? == 200) },
    )
    .await
    .map_err(|e| e.context(relay.log_text()))?;
    assert!(
        relay
            .metric("herald_producer_outbox_errors_total", "kind=\"kafka\"")
            .await?
            >= 1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_inserts_wake_the_relay() -> anyhow::Result<()> {
    let s = Setup::new(Broker::start().await?).await?;
    // Setup applied every version; a second run applies nothing.
    assert!(s.migrate()?.contains("0 migration(s) applied"));
    let versions: Vec<i32> =
        s.db.client
            .query(
                &format!(
                    "SELECT version FROM \"{}\".herald_outbox_migrations",
                    s.db.schema
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    let mut versions = versions;
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2]);

    // With a one-minute polling fallback, only NOTIFY can wake the relay in time.
    let relay =
        ProducerProcess::spawn(&s.relay_args(&unique("relay_"), &["--outbox-poll-ms", "60000"]))?;
    wait_until(Duration::from_secs(30), "leadership", || async {
        Ok(relay.metric("herald_producer_outbox_leader", "").await? == 1.0)
    })
    .await?;
    // Wait for the relay's first (empty) read to be over: after it, the
    // relay refreshes the backlog gauge and waits, so its session is idle
    // with the backlog count (on this test's table) as its last statement.
    wait_until(
        Duration::from_secs(30),
        "the relay's first read",
        || async {
            let idle: i64 =
                s.db.client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle' \
                 AND query LIKE 'SELECT count(*)::bigint%' AND position($1 in query) > 0",
                        &[&s.db.schema],
                    )
                    .await?
                    .get(0);
            Ok(idle == 1)
        },
    )
    .await?;
    s.db.insert(&[tag_event("acct", 0)]).await?;
    s.wait_drained(Duration::from_secs(20)).await?;
    let records = s.records().await?;
    check_deliveries(&records, &[("acct".to_owned(), 1)].into())?;
    // An outbox row has no trace context: its publish starts a trace.
    for r in &records {
        let traceparent = r.headers.get("traceparent").map(String::as_str);
        assert!(
            traceparent
                .and_then(herald_runtime::trace::TraceParent::parse)
                .is_some(),
            "{r:?}"
        );
    }
    Ok(())
}

/// One database session of its own, so its transactions run concurrently
/// with other writers'.
#[derive(Clone)]
struct Writer {
    client: Arc<tokio_postgres::Client>,
    /// Its backend's pid, to see whom it waits for.
    pid: i32,
}

impl Writer {
    async fn connect(url: &str) -> anyhow::Result<Writer> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(Writer {
            client: Arc::new(client),
            pid,
        })
    }

    /// `BEGIN`, then insert `events` in one statement, in order; returns
    /// the seq of each (in `events` order).
    async fn begin_insert(&self, table: &str, events: &[Value]) -> anyhow::Result<Vec<i64>> {
        self.client.batch_execute("BEGIN").await?;
        let text: Vec<String> = events.iter().map(Value::to_string).collect();
        let rows = self
            .client
            .query(
                &format!(
                    "INSERT INTO {table} (event) SELECT e::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS t(e, i) ORDER BY i \
                     RETURNING seq, event->'payload'->>'id'"
                ),
                &[&text],
            )
            .await?;
        let seqs: HashMap<String, i64> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
        events
            .iter()
            .map(|e| {
                e["payload"]["id"]
                    .as_str()
                    .and_then(|id| seqs.get(id).copied())
                    .ok_or_else(|| anyhow::anyhow!("no seq returned for {e}"))
            })
            .collect()
    }

    async fn commit(&self) -> anyhow::Result<()> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// Of `pids`, those waiting for a lock another session holds.
async fn waiting(db: &TestDb, pids: &[i32]) -> anyhow::Result<Vec<i32>> {
    Ok(db
        .client
        .query(
            "SELECT pid FROM unnest($1::int4[]) AS pid WHERE cardinality(pg_blocking_pids(pid)) > 0",
            &[&pids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Rows of `tag_event(account, n)` still in the outbox.
async fn left_in_outbox(db: &TestDb, account: &str, n: u64) -> anyhow::Result<i64> {
    Ok(db
        .client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE event->'payload'->>'id' = $1",
                db.outbox()
            ),
            &[&format!("{account}-{n}")],
        )
        .await?
        .get(0))
}

/// `events` sorted by account (stable): a transaction inserting them takes
/// the per-account locks in one global order, so writers never deadlock.
fn by_account(mut events: Vec<(String, u64)>) -> Vec<(String, u64)> {
    events.sort_by(|a, b| a.0.cmp(&b.0));
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_writer_of_an_account_waits_for_the_earlier_one_to_commit() -> anyhow::Result<()> {
    let s = Setup::new(Broker::start().await?).await?;
    let _relay = ProducerProcess::spawn(&s.relay_args(&unique("relay_"), &[]))?;
    let table = s.db.outbox();
    let (t1, t2, t3) = (
        Writer::connect(&s.db.url).await?,
        Writer::connect(&s.db.url).await?,
        Writer::connect(&s.db.url).await?,
    );

    // T1 inserts event 0 of account A and keeps its transaction open.
    let seq0 = t1.begin_insert(&table, &[tag_event("A", 0)]).await?[0];
    // T2 inserts event 1 of A and commits as soon as Postgres lets it.
    let t2_task = tokio::spawn({
        let (t2, table) = (t2.clone(), table.clone());
        async move {
            let seq = t2.begin_insert(&table, &[tag_event("A", 1)]).await?[0];
            t2.commit().await?;
            anyhow::Ok(seq)
        }
    });
    // Another account is not held up by T1, neither in Postgres nor by the relay.
    tokio::time::timeout(Duration::from_secs(20), async {
        t3.begin_insert(&table, &[tag_event("B", 0)]).await?;
        t3.commit().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("account B's writer waited for account A's transaction"))??;
    wait_until(
        Duration::from_secs(30),
        "account B's event to be published",
        || async { Ok(left_in_outbox(&s.db, "B", 0).await? == 0) },
    )
    .await?;

    // Without the per-account lock T2 commits at once and the relay may
    // publish event 1 before T1 (holding event 0, a lower seq) commits.
    // With it, T2 waits inside its insert for T1.
    wait_until(
        Duration::from_secs(30),
        "T2 to be published or to wait for T1",
        || async {
            if t2_task.is_finished() {
                Ok(left_in_outbox(&s.db, "A", 1).await? == 0)
            } else {
                let blockers: Vec<i32> =
                    s.db.client
                        .query_one("SELECT pg_blocking_pids($1)", &[&t2.pid])
                        .await?
                        .get(0);
                Ok(blockers.contains(&t1.pid))
            }
        },
    )
    .await?;
    let t2_committed_first = t2_task.is_finished();
    t1.commit().await?;
    let seq1 = tokio::time::timeout(Duration::from_secs(20), t2_task)
        .await
        .map_err(|_| anyhow::anyhow!("T2 still waits after T1 committed"))???;
    s.wait_drained(Duration::from_secs(30)).await?;

    let (kafka, duplicates) = support::first_copies(&s.records().await?)?;
    assert_eq!(duplicates, 0);
    assert_eq!(kafka.get("B"), Some(&vec![0]));
    let in_kafka = kafka.get("A").cloned().unwrap_or_default();
    let seq_order = if seq0 < seq1 { vec![0, 1] } else { vec![1, 0] };
    let commit_order = if t2_committed_first {
        vec![1, 0]
    } else {
        vec![0, 1]
    };
    eprintln!(
        "seqs {seq0} and {seq1}, T2 committed first: {t2_committed_first}, Kafka order {in_kafka:?}"
    );
    assert_eq!(
        in_kafka, seq_order,
        "account A reached Kafka out of seq order"
    );
    assert_eq!(
        in_kafka, commit_order,
        "account A reached Kafka out of commit order"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writers_publish_each_account_in_commit_order() -> anyhow::Result<()> {
    const WRITERS: usize = 6;
    const ROUNDS: usize = 8;
    let s = Setup::new(Broker::start().await?).await?;
    let _relay = ProducerProcess::spawn(&s.relay_args(&unique("relay_"), &[]))?;
    let table = s.db.outbox();
    let accounts = ["a", "b", "c"];
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(Writer::connect(&s.db.url).await?);
    }
    let mut rng = Rng::seeded();
    let mut n = 0u64;
    // Per account: event numbers in the order their transactions committed,
    // and each event's seq.
    let mut committed: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seqs: HashMap<(String, u64), i64> = HashMap::new();

    for round in 0..ROUNDS {
        // Every writer opens a transaction and inserts 1-3 events.
        let mut pending = Vec::new();
        for w in &writers {
            let events = by_account(
                (0..1 + rng.below(3))
                    .map(|_| {
                        n += 1;
                        (accounts[rng.below(3) as usize].to_owned(), n)
                    })
                    .collect(),
            );
            let values: Vec<Value> = events.iter().map(|(a, n)| tag_event(a, *n)).collect();
            let task = tokio::spawn({
                let (w, table) = (w.clone(), table.clone());
                async move { w.begin_insert(&table, &values).await }
            });
            pending.push((w.clone(), events, task));
        }
        // Commit them one at a time in a random order, each time choosing
        // among those whose insert went through (the others wait for a lock).
        let mut open = Vec::new();
        let mut commits = 0;
        while commits < WRITERS {
            let pids: Vec<i32> = pending.iter().map(|(w, _, _)| w.pid).collect();
            wait_until(
                Duration::from_secs(30),
                "every insert to finish or to wait for a lock",
                || async {
                    let blocked = waiting(&s.db, &pids).await?;
                    Ok(pending
                        .iter()
                        .all(|(w, _, t)| t.is_finished() || blocked.contains(&w.pid)))
                },
            )
            .await?;
            let mut still = Vec::new();
            for (w, events, task) in pending {
                if task.is_finished() {
                    let got = task.await??;
                    open.push((w, events, got));
                } else {
                    still.push((w, events, task));
                }
            }
            pending = still;
            anyhow::ensure!(
                !open.is_empty(),
                "round {round}: every writer waits for another (deadlock)"
            );
            let (w, events, got) = open.swap_remove(rng.below(open.len() as u64) as usize);
            w.commit().await?;
            commits += 1;
            for ((account, n), seq) in events.into_iter().zip(got) {
                committed.entry(account.clone()).or_default().push(n);
                seqs.insert((account, n), seq);
            }
        }
    }
    s.wait_drained(Duration::from_secs(60)).await?;

    let (kafka, duplicates) = support::first_copies(&s.records().await?)?;
    assert_eq!(duplicates, 0, "duplicates without a crash");
    assert_eq!(
        kafka.keys().collect::<std::collections::BTreeSet<_>>(),
        committed.keys().collect(),
        "accounts differ"
    );
    for (account, order) in &committed {
        assert_eq!(
            &kafka[account], order,
            "account {account}: Kafka order is not commit order"
        );
        let mut by_seq = order.clone();
        by_seq.sort_by_key(|n| seqs[&(account.clone(), *n)]);
        assert_eq!(
            &by_seq, order,
            "account {account}: seq order is not commit order"
        );
    }
    eprintln!("{n} events from {} transactions", ROUNDS * WRITERS);
    Ok(())
}

/// One committed writer transaction of the SIGKILL test.
#[derive(Debug, Clone)]
struct Committed {
    /// `(account, n, seq)` of its events.
    events: Vec<(String, u64, i64)>,
    /// Clock reading just before `COMMIT` was sent.
    sent: u64,
    /// Clock reading just after it was acknowledged.
    acked: u64,
}

/// Write random small transactions until `stop`, each inserting 1-4 events
/// of random `accounts`, recording every commit.
async fn write_until(
    writer: Writer,
    table: String,
    accounts: Vec<String>,
    numbers: Arc<std::sync::atomic::AtomicU64>,
    clock: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> anyhow::Result<Vec<Committed>> {
    let mut rng = Rng(seed | 1);
    let mut log = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let events = by_account(
            (0..1 + rng.below(4))
                .map(|_| {
                    let account = accounts[rng.below(accounts.len() as u64) as usize].clone();
                    (account, numbers.fetch_add(1, Ordering::SeqCst))
                })
                .collect(),
        );
        let values: Vec<Value> = events.iter().map(|(a, n)| tag_event(a, *n)).collect();
        let seqs = writer.begin_insert(&table, &values).await?;
        let sent = clock.fetch_add(1, Ordering::SeqCst);
        writer.commit().await?;
        let acked = clock.fetch_add(1, Ordering::SeqCst);
        log.push(Committed {
            events: events
                .into_iter()
                .zip(seqs)
                .map(|((a, n), seq)| (a, n, seq))
                .collect(),
            sent,
            acked,
        });
    }
    Ok(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_sigkilled_relays_lose_nothing_and_keep_commit_order()
-> anyhow::Result<()> {
    const KILLS: u64 = 6;
    const BATCH: usize = 50;
    let s = Setup::new(Broker::start().await?).await?;
    let mut rng = Rng::seeded();
    let accounts: Vec<String> = (1..=3).map(|i| format!("acct{i}")).collect();
    let numbers = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clock = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(tokio::spawn(write_until(
            Writer::connect(&s.db.url).await?,
            s.db.outbox(),
            accounts.clone(),
            numbers.clone(),
            clock.clone(),
            stop.clone(),
            rng.below(u64::MAX),
        )));
    }

    let args = s.relay_args(&unique("relay_"), &["--outbox-batch", &BATCH.to_string()]);
    for round in 0..KILLS {
        let mut relay = ProducerProcess::spawn(&args)?;
        // Kill it once it has published a random number of rows, while
        // the writers keep committing.
        let target = 1 + rng.below(3 * BATCH as u64);
        let written_before = numbers.load(Ordering::SeqCst);
        wait_until(
            Duration::from_secs(60),
            "the relay to publish rows while writers commit",
            || async {
                Ok(relay
                    .metric("herald_producer_outbox_rows_total", "")
                    .await?
                    >= target as f64
                    && numbers.load(Ordering::SeqCst) > written_before)
            },
        )
        .await
        .map_err(|e| e.context(relay.log_text()))?;
        relay.kill();
        eprintln!("round {round}: SIGKILL after at least {target} rows");
    }
    stop.store(true, Ordering::Release);
    let mut log = Vec::new();
    for w in writers {
        log.extend(w.await??);
    }
    let relay = ProducerProcess::spawn(&args)?;
    s.wait_drained(Duration::from_secs(120)).await?;
    let records = s.records().await?;
    drop(relay);

    let (kafka, duplicates) = support::first_copies(&records)?;
    let total: usize = log.iter().map(|c| c.events.len()).sum();
    assert_eq!(records.len(), total + duplicates);
    assert!(
        duplicates <= KILLS as usize * BATCH,
        "{duplicates} duplicates: more than one batch per kill"
    );
    // Per account: each event's seq and its transaction's commit window.
    let mut rows: HashMap<u64, (i64, u64, u64)> = HashMap::new();
    let mut per_account: HashMap<&str, Vec<u64>> = HashMap::new();
    for c in &log {
        for (account, n, seq) in &c.events {
            rows.insert(*n, (*seq, c.sent, c.acked));
            per_account.entry(account).or_default().push(*n);
        }
    }
    for (account, mut events) in per_account {
        let arrived = kafka.get(account).cloned().unwrap_or_default();
        let mut sorted = arrived.clone();
        sorted.sort_unstable();
        events.sort_unstable();
        assert_eq!(sorted, events, "account {account}: events lost or foreign");
        // First copies in seq order...
        let mut by_seq = arrived.clone();
        by_seq.sort_by_key(|n| rows[n].0);
        assert_eq!(
            by_seq, arrived,
            "account {account}: first copies out of seq order"
        );
        // ...and in commit order: no event arrives after one whose
        // transaction committed only after its own was acknowledged.
        let mut min_acked_after = u64::MAX;
        for n in arrived.iter().rev() {
            let (_, sent, acked) = rows[n];
            assert!(
                min_acked_after > sent,
                "account {account}: event {n} arrived before an event whose transaction committed before its own"
            );
            min_acked_after = min_acked_after.min(acked);
        }
    }
    eprintln!(
        "{total} events in {} transactions, {} records, {duplicates} duplicates",
        log.len(),
        records.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_2_upgrades_a_version_1_table_in_place() -> anyhow::Result<()> {
    use herald_producer::outbox::{OutboxTable, migrate};
    let s = Setup::new(Broker::start().await?).await?;
    // A second outbox table in the test's schema, as Herald's version 1 left it.
    let table = OutboxTable::new(&s.db.schema, "legacy")?;
    let (mut client, connection) =
        tokio_postgres::connect(&s.db.url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    assert_eq!(migrate::apply_up_to(&mut client, &table, 1).await?, 1);
    let insert = format!(
        "INSERT INTO {} (event) SELECT e::jsonb FROM unnest($1::text[]) WITH ORDINALITY AS t(e, i) ORDER BY i RETURNING seq",
        table.qualified()
    );
    let text =
        |events: Vec<Value>| -> Vec<String> { events.iter().map(Value::to_string).collect() };
    let old: Vec<i64> = client
        .query(
            &insert,
            &[&text((0..5).map(|n| tag_event("acct", n)).collect())],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        old,
        vec![1, 2, 3, 4, 5],
        "version 1 numbers rows by its identity"
    );

    assert_eq!(migrate::apply(&mut client, &table).await?, 1);
    assert_eq!(migrate::apply(&mut client, &table).await?, 0);
    let kept: Vec<i64> = client
        .query(
            &format!("SELECT seq FROM {} ORDER BY seq", table.qualified()),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, old, "existing rows were renumbered");
    // New rows are numbered by the trigger, after the old ones, and take
    // the account's lock: a second writer of the account waits.
    let first = Writer::connect(&s.db.url).await?;
    let new = first
        .begin_insert(
            &table.qualified(),
            &[tag_event("acct", 5), tag_event("acct", 6)],
        )
        .await?;
    assert!(new[0] > 5 && new[1] > new[0], "{new:?}");
    let second = Writer::connect(&s.db.url).await?;
    let task = tokio::spawn({
        let (second, t) = (second.clone(), table.qualified());
        async move {
            let seqs = second.begin_insert(&t, &[tag_event("acct", 7)]).await?;
            second.commit().await?;
            anyhow::Ok(seqs)
        }
    });
    wait_until(
        Duration::from_secs(30),
        "the second writer to wait",
        || async { Ok(waiting(&s.db, &[second.pid]).await? == vec![second.pid]) },
    )
    .await?;
    first.commit().await?;
    let last = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .map_err(|_| anyhow::anyhow!("the second writer still waits"))???;
    assert!(last[0] > new[1]);

    let relay =
        ProducerProcess::spawn(&s.relay_args(&unique("relay_"), &["--outbox-table", "legacy"]))?;
    wait_until(
        Duration::from_secs(30),
        "the legacy outbox to drain",
        || async {
            let left: i64 = client
                .query_one(&format!("SELECT count(*) FROM {}", table.qualified()), &[])
                .await?
                .get(0);
            Ok(left == 0)
        },
    )
    .await?;
    check_deliveries(&s.records().await?, &[("acct".to_owned(), 8)].into())?;
    drop(relay);
    Ok(())
}
