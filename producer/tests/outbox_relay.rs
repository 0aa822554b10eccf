//! The outbox relay against the real Postgres on this machine and a real
//! Kafka-protocol broker, run as the `herald-producer` binary so it can be
//! SIGKILLed: at-least-once delivery, per-account order, stable event ids
//! across crashes, one leader among several relays, poison rows set aside,
//! database connection loss and broker outages survived without help.

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
    Broker, ProducerProcess, TestDb, check_deliveries, read_topic, tag_event, unique, wait_until,
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
    // Setup applied version 1; a second run applies nothing.
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
    assert_eq!(versions, vec![1]);

    // With a one-minute polling fallback, only NOTIFY can wake the relay in time.
    let relay =
        ProducerProcess::spawn(&s.relay_args(&unique("relay_"), &["--outbox-poll-ms", "60000"]))?;
    wait_until(Duration::from_secs(30), "leadership", || async {
        Ok(relay.metric("herald_producer_outbox_leader", "").await? == 1.0)
    })
    .await?;
    // Let the relay finish its first (empty) read and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.db.insert(&[tag_event("acct", 0)]).await?;
    s.wait_drained(Duration::from_secs(20)).await?;
    check_deliveries(&s.records().await?, &[("acct".to_owned(), 1)].into())?;
    Ok(())
}
