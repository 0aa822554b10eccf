//! The opaque-token table: every pod reads the compacted identities topic
//! from its beginning, keeps token key -> identity in memory, and follows it
//! live. A tombstone or a changed identity cancels the live connections that
//! authenticated with that token.
//!
//! Read-your-writes: a backend registers a token (`PUT /v1/identities`,
//! answered once Kafka acknowledged it) and hands it to a client that
//! connects at once. A token this pod does not know yet is therefore not
//! refused straight away: [`IdentityTable::resolve_fresh`] waits (bounded)
//! until this pod's follower has read the topic up to its end as of the
//! moment the token was presented, and only then answers.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use herald_runtime::KafkaArgs;
use herald_schemas::{IdentityKind, IdentityRecord, token_key};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use tokio_util::sync::CancellationToken;

use crate::core::identity::{AuthError, Identity, PrincipalKind};

/// An identity's expiry in unix seconds, if it has one.
fn expires_at_secs(record: &IdentityRecord) -> Result<Option<i64>, AuthError> {
    record
        .expires_at
        .as_deref()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|at| at.unix_timestamp())
                .map_err(|_| AuthError::Claims("identity has an invalid expires_at".into()))
        })
        .transpose()
}

/// Watchers of one token: (connection id, cancellation).
type Watchers = Vec<(u64, CancellationToken)>;

/// Token key -> identity, plus the live connections using each token.
#[derive(Default)]
pub struct IdentityTable {
    entries: RwLock<HashMap<String, IdentityRecord>>,
    watchers: Mutex<HashMap<String, Watchers>>,
    freshness: Freshness,
}

/// Per partition of the identities topic: (low, high) watermarks.
type Ends = HashMap<i32, (i64, i64)>;

/// How far the follower has read, and how to learn where the topic ends.
#[derive(Default)]
struct Freshness {
    /// Per partition, the next offset to apply; bumped by the follower.
    applied: Mutex<HashMap<i32, i64>>,
    /// Ticks once per applied record (waiters re-check `applied`).
    progress: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
    /// The follower's consumer and topic, once it runs.
    source: std::sync::OnceLock<(Arc<StreamConsumer>, String)>,
    /// The last end offsets fetched, with the instant the fetch started;
    /// one fetch at a time, shared by every waiter presented before it began.
    ends: tokio::sync::Mutex<Option<(tokio::time::Instant, Ends)>>,
}

impl Freshness {
    fn progress(&self) -> &tokio::sync::watch::Sender<u64> {
        self.progress
            .get_or_init(|| tokio::sync::watch::channel(0).0)
    }

    /// (low, high) watermarks of every partition, fetched at or after `since`.
    async fn ends_since(&self, since: tokio::time::Instant) -> Option<Ends> {
        let (consumer, topic) = self.source.get()?.clone();
        let mut cached = self.ends.lock().await;
        if let Some((at, ends)) = cached.as_ref()
            && *at >= since
        {
            return Some(ends.clone());
        }
        let started = tokio::time::Instant::now();
        let fetched =
            tokio::task::spawn_blocking(move || -> Result<HashMap<i32, (i64, i64)>, String> {
                let md = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                let tm = md.topics().first().ok_or("topic not found")?;
                let mut ends = HashMap::new();
                for p in tm.partitions() {
                    let w = consumer
                        .fetch_watermarks(&topic, p.id(), Duration::from_secs(2))
                        .map_err(|e| e.to_string())?;
                    ends.insert(p.id(), w);
                }
                Ok(ends)
            })
            .await;
        match fetched {
            Ok(Ok(ends)) => {
                *cached = Some((started, ends.clone()));
                Some(ends)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the identities topic's end");
                None
            }
            Err(_) => None,
        }
    }

    /// Whether every record below `ends` has been applied.
    fn reached(&self, ends: &Ends) -> bool {
        let Ok(applied) = self.applied.lock() else {
            return false;
        };
        ends.iter()
            .all(|(p, (low, high))| applied.get(p).copied().unwrap_or(*low) >= *high)
    }
}

impl IdentityTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of known tokens.
    pub fn len(&self) -> usize {
        self.entries.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolve an opaque token.
    pub fn resolve(&self, token: &str) -> Result<Identity, AuthError> {
        let key = token_key(token);
        let record = self
            .entries
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned())
            .ok_or(AuthError::UnknownToken)?;
        let expires_at = expires_at_secs(&record)?;
        if expires_at.is_some_and(|e| e <= crate::core::clock::now_ms() / 1000) {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            account_id: record.account_id.as_str().into(),
            kind: match record.kind {
                IdentityKind::User => PrincipalKind::User,
                IdentityKind::Contact => PrincipalKind::Contact,
            },
            id: record.id,
            role: record.role,
            expires_at,
            token_key: Some(key),
            conversations: (!record.conversations.is_empty()).then_some(record.conversations),
        })
    }

    /// [`resolve`](Self::resolve), but a token unknown here is looked up
    /// again once this pod has read the identities topic up to its end as
    /// of now (at most `within`; without a follower, at once). Waits only
    /// the caller.
    pub async fn resolve_fresh(
        &self,
        token: &str,
        within: Duration,
    ) -> Result<Identity, AuthError> {
        match self.resolve(token) {
            // Only a token that could have been registered is worth waiting
            // for (garbage from a hostile client is refused at once).
            Err(AuthError::UnknownToken)
                if !within.is_zero() && herald_schemas::is_valid_token(token) => {}
            other => return other,
        }
        let presented = tokio::time::Instant::now();
        let deadline = presented + within;
        let mut progress = self.freshness.progress().subscribe();
        let Ok(Some(ends)) =
            tokio::time::timeout_at(deadline, self.freshness.ends_since(presented)).await
        else {
            return self.resolve(token);
        };
        while !self.freshness.reached(&ends) {
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                // Out of time, or no follower any more.
                _ => break,
            }
        }
        self.resolve(token)
    }

    /// The follower applied the record at `offset` of `partition`.
    fn applied(&self, partition: i32, offset: i64) {
        if let Ok(mut a) = self.freshness.applied.lock() {
            let next = a.entry(partition).or_insert(0);
            *next = (*next).max(offset + 1);
        }
        self.freshness
            .progress()
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Register a live connection using token `key`; the returned token is
    /// cancelled when the identity is revoked or changed.
    pub fn watch(&self, key: &str, conn_id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut w) = self.watchers.lock() {
            w.entry(key.to_owned())
                .or_default()
                .push((conn_id, token.clone()));
        }
        token
    }

    /// Drop identities whose expiry has passed (they resolve to nothing
    /// already; their live connections close at their own expiry). Returns
    /// the tokens kept.
    pub fn prune_expired(&self) -> usize {
        let now = crate::core::clock::now_ms() / 1000;
        let Ok(mut entries) = self.entries.write() else {
            return 0;
        };
        entries.retain(|_, record| {
            expires_at_secs(record)
                .ok()
                .flatten()
                .is_none_or(|at| at > now)
        });
        entries.len()
    }

    /// Live connections watched, over every token (a bounded table: one
    /// entry per connection and token in use).
    pub fn watchers_len(&self) -> usize {
        self.watchers
            .lock()
            .map(|w| w.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Forget a connection registered with [`watch`](Self::watch).
    pub fn unwatch(&self, key: &str, conn_id: u64) {
        if let Ok(mut w) = self.watchers.lock()
            && let Some(list) = w.get_mut(key)
        {
            list.retain(|(id, _)| *id != conn_id);
            if list.is_empty() {
                w.remove(key);
            }
        }
    }

    /// Apply one record of the topic: `None` is a tombstone. Returns the
    /// number of live connections cancelled. An unparsable value is refused
    /// (and the previous identity, if any, is revoked: fail closed).
    pub fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<usize, String> {
        let parsed = value.map(serde_json::from_slice::<IdentityRecord>);
        let (new, err) = match parsed {
            None => (None, None),
            Some(Ok(r)) => (Some(r), None),
            Some(Err(e)) => (None, Some(e.to_string())),
        };
        let changed = {
            let Ok(mut entries) = self.entries.write() else {
                return Ok(0);
            };
            let old = match &new {
                Some(r) => entries.insert(key.to_owned(), r.clone()),
                None => entries.remove(key),
            };
            old.is_some() && old != new
        };
        let cancelled = if changed {
            self.revoke_watchers(key)
        } else {
            0
        };
        match err {
            Some(e) => Err(e),
            None => Ok(cancelled),
        }
    }

    fn revoke_watchers(&self, key: &str) -> usize {
        let list = self
            .watchers
            .lock()
            .ok()
            .and_then(|mut w| w.remove(key))
            .unwrap_or_default();
        for (_, token) in &list {
            token.cancel();
        }
        list.len()
    }
}

/// Read the identities topic from its beginning and follow it until
/// `shutdown`; `loaded` turns true once the records present at startup are in.
pub async fn follow(
    table: Arc<IdentityTable>,
    kafka: KafkaArgs,
    topic: String,
    loaded: Arc<AtomicBool>,
    tokens: prometheus::IntGauge,
    shutdown: CancellationToken,
) {
    let consumer: StreamConsumer = match kafka.consumer_config("herald-identities").map(|mut c| {
        c.set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50");
        c
    }) {
        Ok(cfg) => match cfg.create() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create identities consumer");
                return;
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "bad Kafka settings for identities");
            return;
        }
    };
    let consumer = Arc::new(consumer);
    let _ = table
        .freshness
        .source
        .set((consumer.clone(), topic.clone()));
    // Assign every partition from the beginning and note where "loaded" is.
    let mut targets: HashMap<i32, i64> = loop {
        let c = consumer.clone();
        let t = topic.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, String> {
            let md = c
                .fetch_metadata(None, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let Some(tm) = md
                .topics()
                .iter()
                .find(|x| x.name() == t && x.error().is_none())
            else {
                return Err("topic not found".into());
            };
            if tm.partitions().is_empty() {
                return Err("topic not found".into());
            }
            let mut targets = HashMap::new();
            for p in tm.partitions() {
                let (low, high) = c
                    .fetch_watermarks(&t, p.id(), Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
                if high > low {
                    targets.insert(p.id(), high);
                }
            }
            let mut tpl = TopicPartitionList::new();
            for p in tm.partitions() {
                tpl.add_partition_offset(&t, p.id(), Offset::Beginning)
                    .map_err(|e| e.to_string())?;
            }
            c.assign(&tpl).map_err(|e| e.to_string())?;
            Ok(targets)
        })
        .await;
        match found {
            Ok(Ok(t)) => break t,
            Ok(Err(e)) => {
                tracing::warn!(topic, error = %e, "identities topic unavailable; retrying")
            }
            Err(e) => tracing::error!(error = %e, "identities task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    if targets.is_empty() {
        loaded.store(true, Ordering::Release);
    }
    let mut last_error_log: Option<std::time::Instant> = None;
    tracing::info!(
        topic,
        partitions_with_data = targets.len(),
        "loading identities"
    );
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // Broker outages repeat this every poll: log it once in a while.
                if last_error_log
                    .is_none_or(|t: std::time::Instant| t.elapsed() > Duration::from_secs(10))
                {
                    tracing::warn!(error = %e, "identities consumer error");
                    last_error_log = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let key = msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or_default();
        if key.is_empty() {
            tracing::warn!(
                offset = msg.offset(),
                "identity record without a key skipped"
            );
        } else {
            match table.apply(key, msg.payload()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    connections = n,
                    "identity revoked or changed; closing its connections"
                ),
                Err(e) => {
                    tracing::warn!(offset = msg.offset(), error = %e, "invalid identity record; token disabled")
                }
            }
            tokens.set(table.len() as i64);
        }
        table.applied(msg.partition(), msg.offset());
        if !targets.is_empty() {
            let p = msg.partition();
            if targets
                .get(&p)
                .is_some_and(|high| msg.offset() + 1 >= *high)
            {
                targets.remove(&p);
            }
            if targets.is_empty() {
                tracing::info!(tokens = table.len(), "identities loaded");
                loaded.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(account: &str) -> Vec<u8> {
        format!(r#"{{"account_id":"{account}","kind":"user","id":"7","role":"agent"}}"#)
            .into_bytes()
    }

    #[test]
    fn resolves_and_revokes() {
        let t = IdentityTable::new();
        let key = token_key("tok");
        assert_eq!(t.resolve("tok"), Err(AuthError::UnknownToken));
        t.apply(&key, Some(&record("1"))).unwrap();
        let id = t.resolve("tok").unwrap();
        assert_eq!(&*id.account_id, "1");
        assert_eq!(id.token_key.as_deref(), Some(key.as_str()));
        let live = t.watch(&key, 1);
        // Re-applying the same identity keeps connections.
        assert_eq!(t.apply(&key, Some(&record("1"))).unwrap(), 0);
        assert!(!live.is_cancelled());
        // A changed identity closes them.
        assert_eq!(t.apply(&key, Some(&record("2"))).unwrap(), 1);
        assert!(live.is_cancelled());
        let again = t.watch(&key, 2);
        assert_eq!(t.apply(&key, None).unwrap(), 1);
        assert!(again.is_cancelled());
        assert_eq!(t.resolve("tok"), Err(AuthError::UnknownToken));
    }

    #[test]
    fn garbage_fails_closed_and_expiry_is_checked() {
        let t = IdentityTable::new();
        let key = token_key("tok");
        t.apply(&key, Some(&record("1"))).unwrap();
        assert!(t.apply(&key, Some(b"not json")).is_err());
        assert_eq!(t.resolve("tok"), Err(AuthError::UnknownToken));
        t.apply(
            &key,
            Some(br#"{"account_id":"1","kind":"contact","id":"c","role":"contact","expires_at":"2000-01-01T00:00:00Z"}"#),
        )
        .unwrap();
        assert_eq!(t.resolve("tok"), Err(AuthError::Expired));
        t.apply(&token_key("live"), Some(&record("1"))).unwrap();
        assert_eq!(t.prune_expired(), 1, "the expired identity is dropped");
        assert_eq!(t.resolve("tok"), Err(AuthError::UnknownToken));
        assert!(t.resolve("live").is_ok());
    }
}
