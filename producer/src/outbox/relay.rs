//! The outbox relay: Postgres rows -> Kafka records, at least once, in
//! commit order per account.
//!
//! The order comes from the table: the insert trigger of migration 2 locks
//! the row's account before numbering it, so one account's `seq` order is the
//! order its transactions committed, and every snapshot holds a gap-free
//! prefix of each account's committed rows (see [`super::migrate`]). Reading
//! `ORDER BY seq` and publishing batch after batch therefore publishes each
//! account's rows in commit order, whatever commits meanwhile.
//!
//! One relay at a time is the leader: it holds a session-level advisory lock
//! (`pg_try_advisory_lock`) on the same connection it reads and deletes
//! with, so it can only delete rows while it is the leader; if it dies, or
//! its connection does, Postgres releases the lock and a standby (which
//! retries every `--outbox-poll-ms`) takes over. Row-level `SKIP LOCKED`
//! would let two relays publish one account's rows concurrently, out of
//! order; a single leader keeps the order without per-account locking.
//!
//! The leader loop: read up to `--outbox-batch` rows `ORDER BY seq`;
//! validate each (an invalid row is poison: it goes to the dead-letter table
//! with its reason and never blocks the rows behind it); hand every valid
//! row to the idempotent producer in order; wait for every acknowledgement;
//! then, in one transaction, move the poison rows aside and delete the
//! published ones. A crash anywhere before that commit republishes the batch
//! (duplicates keep their event id; `event_id` is fixed in the row). When the
//! table is empty the relay sleeps until a NOTIFY from the insert trigger or
//! the polling interval.
//!
//! Failures: a Postgres error drops the session (and the leadership) and
//! reconnects with capped exponential backoff; a Kafka failure keeps the
//! session and retries the same batch with backoff. Either way the relay's
//! readiness condition (`outbox`) is false until a batch succeeds again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use herald_runtime::otlp::Span;
use rdkafka::producer::Producer as _;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{OutboxError, RelaySettings, connect};
use crate::{
    ingest::prepare_with,
    metrics::Metrics,
    publish::{PublishError, Publisher, Trace, describe_span},
};

/// Doubling delays from `min` up to `max`, with jitter so relays that failed
/// together do not retry together (backon's schedule, restartable).
#[derive(Debug)]
pub struct Backoff {
    builder: backon::ExponentialBuilder,
    current: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Start at `min`, never exceed `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        use backon::BackoffBuilder as _;
        let max = max.max(min);
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times();
        Backoff {
            current: builder.build(),
            builder,
            max,
        }
    }

    /// The next delay: the current step plus up to as much again, at most `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.current.next().unwrap_or(self.max).min(self.max)
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        use backon::BackoffBuilder as _;
        self.current = self.builder.build();
    }
}

/// Why a relay session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// The result of publishing one batch.
#[derive(Debug, Default)]
struct BatchOutcome {
    /// Rows acknowledged by Kafka.
    published: Vec<i64>,
    /// Rows that can never be published, with the reason.
    poison: Vec<(i64, String)>,
}

/// Publishes outbox rows to Kafka. Run with [`OutboxRelay::run`].
pub struct OutboxRelay {
    settings: RelaySettings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    publisher: Option<Publisher>,
}

/// What the leader loop prepared once per session.
struct Statements {
    select: tokio_postgres::Statement,
    dead_letter: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
    backlog: tokio_postgres::Statement,
}

impl OutboxRelay {
    /// A relay reporting into `metrics` and the readiness flag `ready`.
    pub fn new(settings: RelaySettings, metrics: Metrics, ready: Arc<AtomicBool>) -> Self {
        OutboxRelay {
            settings,
            metrics,
            ready,
            publisher: None,
        }
    }

    /// Relay until `shutdown` is cancelled, surviving any outage.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.settings.max_backoff);
        tracing::info!(table = %self.settings.table, "outbox relay starting");
        loop {
            let result = self.session(&shutdown, &mut backoff).await;
            self.ready.store(false, Ordering::Release);
            self.metrics.outbox_leader.set(0);
            match result {
                Ok(()) => break,
                Err(e) => {
                    self.metrics
                        .outbox_errors
                        .with_label_values(&["postgres"])
                        .inc();
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "outbox relay lost its database session");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        if let Some(p) = &self.publisher {
            let producer = p.producer();
            let _ =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        }
        tracing::info!("outbox relay stopped");
    }

    /// One database session: connect, wait to lead, then publish until an
    /// error or shutdown. `Ok` means shutdown.
    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let table = self.settings.table.clone();
        let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
        let (mut client, connection) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect(&self.settings.database, Some(wake_tx)) => c?,
        };
        let _connection = AbortOnDrop(connection);
        client
            .batch_execute(&format!("LISTEN \"{}\"", table.channel()))
            .await?;
        let statements = Statements {
            select: client
                .prepare(&format!(
                    "SELECT seq, event_id, event::text, \
                     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                     FROM {} ORDER BY seq LIMIT $1",
                    table.qualified()
                ))
                .await?,
            dead_letter: client
                .prepare(&format!(
                    "INSERT INTO {dl} (seq, event_id, event, created_at, reason) \
                     SELECT seq, event_id, event, created_at, $2 FROM {t} WHERE seq = $1 \
                     ON CONFLICT (seq) DO NOTHING",
                    dl = table.dead_letter(),
                    t = table.qualified()
                ))
                .await?,
            delete: client
                .prepare(&format!(
                    "DELETE FROM {} WHERE seq = ANY($1)",
                    table.qualified()
                ))
                .await?,
            backlog: client
                .prepare(&format!(
                    "SELECT count(*)::bigint, \
                     COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8, 0) \
                     FROM {}",
                    table.qualified()
                ))
                .await?,
        };
        self.ready.store(true, Ordering::Release);
        backoff.reset();

        // Standby until this session holds the leader lock.
        loop {
            let leader: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1)",
                    &[&table.leader_lock_key()],
                )
                .await?
                .try_get(0)?;
            if leader {
                break;
            }
            self.refresh_backlog(&client, &statements).await?;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
        self.metrics.outbox_leader.set(1);
        tracing::info!(table = %table, "outbox relay is the leader");

        let batch = i64::try_from(self.settings.batch).unwrap_or(500);
        let mut backlog_refreshed: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Notifications so far are covered by the query below.
            while wake_rx.try_recv().is_ok() {}
            let rows = client.query(&statements.select, &[&batch]).await?;
            if rows.is_empty()
                || backlog_refreshed.is_none_or(|t| t.elapsed() > Duration::from_secs(2))
            {
                self.refresh_backlog(&client, &statements).await?;
                backlog_refreshed = Some(Instant::now());
            }
            if rows.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    woke = wake_rx.recv() => {
                        if woke.is_none() {
                            return Err(OutboxError::ConnectionClosed.into());
                        }
                    }
                    _ = tokio::time::sleep(self.settings.poll) => {}
                }
                continue;
            }
            let started = Instant::now();
            let decoded = decode_batch(&rows)?;
            match self.publish(decoded).await {
                Ok(outcome) => {
                    let tx = client.transaction().await?;
                    for (seq, reason) in &outcome.poison {
                        tx.execute(&statements.dead_letter, &[seq, reason]).await?;
                    }
                    let done: Vec<i64> = outcome
                        .published
                        .iter()
                        .copied()
                        .chain(outcome.poison.iter().map(|(seq, _)| *seq))
                        .collect();
                    tx.execute(&statements.delete, &[&done]).await?;
                    tx.commit().await?;
                    for (seq, reason) in &outcome.poison {
                        tracing::warn!(seq, reason = %reason, "outbox row moved to the dead-letter table");
                    }
                    self.metrics.outbox_batches.inc();
                    self.metrics
                        .outbox_rows
                        .inc_by(outcome.published.len() as u64);
                    self.metrics
                        .outbox_poison_rows
                        .inc_by(outcome.poison.len() as u64);
                    self.metrics
                        .events_invalid
                        .with_label_values(&["outbox"])
                        .inc_by(outcome.poison.len() as u64);
                    self.metrics
                        .outbox_batch_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.ready.store(true, Ordering::Release);
                    backoff.reset();
                }
                Err(e) => {
                    self.ready.store(false, Ordering::Release);
                    self.metrics
                        .outbox_errors
                        .with_label_values(&["kafka"])
                        .inc();
                    self.reset_publisher();
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "outbox batch not acknowledged; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn refresh_backlog(
        &self,
        client: &tokio_postgres::Client,
        statements: &Statements,
    ) -> Result<(), SessionError> {
        let row = client.query_one(&statements.backlog, &[]).await?;
        let count: i64 = row.try_get(0)?;
        let age: f64 = row.try_get(1)?;
        self.metrics.outbox_backlog.set(count);
        self.metrics.outbox_oldest_age.set(age.max(0.0));
        Ok(())
    }

    fn publisher(&mut self) -> Result<Publisher, PublishError> {
        if let Some(p) = &self.publisher {
            return Ok(p.clone());
        }
        let p = Publisher::create(
            &self.settings.kafka,
            self.settings.produce_timeout,
            "herald-outbox-relay",
            self.metrics.clone(),
        )
        .map_err(|e| {
            PublishError::Kafka(rdkafka::error::KafkaError::ClientCreation(e.to_string()))
        })?
        .with_otlp(self.settings.otlp.clone());
        self.publisher = Some(p.clone());
        Ok(p)
    }

    /// After a failed batch every record of it has resolved, so nothing is
    /// in flight: start the retry with a fresh producer. This clears any
    /// state the old one was stuck in (a fatal idempotence error, or a
    /// producer id the broker no longer knows after losing its state), at
    /// the cost of a new producer id.
    fn reset_publisher(&mut self) {
        if let Some(p) = self.publisher.take()
            && let Some((code, reason)) = p.producer().client().fatal_error()
        {
            tracing::warn!(?code, reason, "Kafka producer hit a fatal error");
        }
    }

    /// Validate and publish one batch; `Err` when Kafka did not acknowledge
    /// some record that could succeed later (the whole batch is retried).
    async fn publish(&mut self, batch: DecodedBatch) -> Result<BatchOutcome, PublishError> {
        let publisher = self.publisher()?;
        let mut outcome = BatchOutcome {
            published: Vec::with_capacity(batch.valid.len()),
            poison: batch.poison,
        };
        // An outbox row carries no trace context: each publish starts one
        // (a span per row, exported when the sample ratio picks it).
        let (traces, mut spans): (Vec<Trace>, Vec<Span>) = batch
            .valid
            .iter()
            .map(|_| Trace::begin(publisher.otlp(), "outbox publish", None, None))
            .unzip();
        let sends = batch
            .valid
            .iter()
            .zip(&traces)
            .map(|((_, p), trace)| publisher.send_envelope(&p.envelope, p.family, trace));
        // Polled together: every record is handed to the producer in seq
        // order before any acknowledgement is awaited.
        let results = futures_util::future::join_all(sends).await;
        let mut retry = None;
        for (((seq, _), result), span) in batch.valid.iter().zip(results).zip(spans.iter_mut()) {
            if span.is_recording() {
                span.set("herald.outbox.seq", *seq);
                match &result {
                    Ok(produced) => describe_span(span, std::slice::from_ref(produced)),
                    Err(e) => span.fail(e.to_string()),
                }
            }
            match result {
                Ok(_) => outcome.published.push(*seq),
                Err(e) if e.is_permanent() => {
                    outcome
                        .poison
                        .push((*seq, format!("Kafka refused the record: {e}")));
                }
                Err(e) => {
                    retry.get_or_insert(e);
                }
            }
        }
        spans.into_iter().for_each(Span::end);
        match retry {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

/// A batch of rows split into valid events and poison rows.
#[derive(Debug, Default)]
struct DecodedBatch {
    valid: Vec<(i64, crate::ingest::Prepared)>,
    poison: Vec<(i64, String)>,
}

fn decode_batch(rows: &[tokio_postgres::Row]) -> Result<DecodedBatch, OutboxError> {
    let mut batch = DecodedBatch::default();
    for row in rows {
        match decode_row(row) {
            Ok(ok) => batch.valid.push(ok),
            Err((Some(seq), reason)) => batch.poison.push((seq, reason)),
            // Without a seq the row cannot even be addressed (the table is
            // not Herald's): stop instead of skipping anything.
            Err((None, reason)) => return Err(OutboxError::Unexpected(reason)),
        }
    }
    Ok(batch)
}

/// A row as `(seq, validated event)`, or why it is poison.
fn decode_row(
    row: &tokio_postgres::Row,
) -> Result<(i64, crate::ingest::Prepared), (Option<i64>, String)> {
    let seq: i64 = row
        .try_get(0)
        .map_err(|e| (None, format!("unreadable seq: {e}")))?;
    let event_id: String = row
        .try_get(1)
        .map_err(|e| (Some(seq), format!("unreadable event_id: {e}")))?;
    let event: String = row
        .try_get(2)
        .map_err(|e| (Some(seq), format!("unreadable event: {e}")))?;
    let created_at: String = row
        .try_get(3)
        .map_err(|e| (Some(seq), format!("unreadable created_at: {e}")))?;
    let raw =
        RawValue::from_string(event).map_err(|e| (Some(seq), format!("event is not JSON: {e}")))?;
    let prepared = prepare_with(&raw, &event_id, &created_at).map_err(|(_, r)| (Some(seq), r))?;
    Ok((seq, prepared))
}

/// Aborts the connection task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[5] >= Duration::from_millis(800), "{delays:?}");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(200));
    }
}
