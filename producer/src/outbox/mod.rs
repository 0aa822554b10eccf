//! The transactional outbox: backends insert events into a Postgres table in
//! the same transaction as their business write, and the [`OutboxRelay`]
//! publishes them to Kafka.
//!
//! - [`migrate`]: the table, its dead-letter table, the NOTIFY trigger and
//!   the trigger that numbers rows per account in commit order, as numbered
//!   migrations (`herald-producer migrate` or `--outbox-migrate`).
//! - [`relay`]: one leader at a time (a Postgres advisory lock) reads rows
//!   in `seq` order (per account, commit order), publishes them in batches
//!   through the idempotent producer, and deletes them only after Kafka
//!   acknowledged them; invalid rows go to the dead-letter table with their
//!   reason.

pub mod migrate;
pub mod relay;

use std::{fmt, time::Duration};

use herald_runtime::KafkaArgs;
use sha2::{Digest, Sha256};

pub use relay::OutboxRelay;

use crate::config::ProducerConfig;

/// What can go wrong in the outbox code.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A schema or table name Herald refuses to interpolate into SQL.
    #[error(
        "outbox {what} `{name}` must be lowercase letters, digits and `_`, start with a letter or `_`, at most {max} characters"
    )]
    BadName {
        what: &'static str,
        name: String,
        max: usize,
    },
    /// Postgres failed or is unreachable.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database connection ended.
    #[error("the outbox database connection closed")]
    ConnectionClosed,
    /// A row or the database does not look like Herald's outbox.
    #[error("unexpected outbox data: {0}")]
    Unexpected(String),
}

/// The outbox table's schema and name, validated so they can be put into
/// SQL text, plus everything derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    schema: String,
    table: String,
}

fn valid_name(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= max
}

impl OutboxTable {
    /// Check `schema` (≤ 63 characters) and `table` (≤ 40, so the derived
    /// names fit Postgres's 63-byte identifiers).
    pub fn new(schema: &str, table: &str) -> Result<Self, OutboxError> {
        if !valid_name(schema, 63) {
            return Err(OutboxError::BadName {
                what: "schema",
                name: schema.to_owned(),
                max: 63,
            });
        }
        if !valid_name(table, 40) {
            return Err(OutboxError::BadName {
                what: "table",
                name: table.to_owned(),
                max: 40,
            });
        }
        Ok(OutboxTable {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `"schema"."<table><suffix>"`.
    fn qualified_with(&self, suffix: &str) -> String {
        format!("\"{}\".\"{}{suffix}\"", self.schema, self.table)
    }

    /// The outbox table, quoted and schema-qualified.
    pub fn qualified(&self) -> String {
        self.qualified_with("")
    }

    /// The dead-letter table.
    pub fn dead_letter(&self) -> String {
        self.qualified_with("_dead_letter")
    }

    /// The table recording applied migrations.
    pub fn migrations(&self) -> String {
        self.qualified_with("_migrations")
    }

    /// The trigger function sending NOTIFY.
    pub fn notify_function(&self) -> String {
        self.qualified_with("_notify")
    }

    /// The trigger's name (unqualified: triggers live on their table).
    pub fn trigger_name(&self) -> String {
        format!("\"{}_notify\"", self.table)
    }

    /// The trigger function that locks a row's account and then numbers
    /// the row (migration 2).
    pub fn order_function(&self) -> String {
        self.qualified_with("_order")
    }

    /// The `BEFORE INSERT` trigger calling [`OutboxTable::order_function`].
    pub fn order_trigger_name(&self) -> String {
        format!("\"{}_order\"", self.table)
    }

    fn digest(&self, purpose: &str) -> [u8; 32] {
        Sha256::digest(format!(
            "herald-outbox:{purpose}:{}.{}",
            self.schema, self.table
        ))
        .into()
    }

    /// The NOTIFY channel: short and unique per table.
    pub fn channel(&self) -> String {
        let d = self.digest("channel");
        let mut out = String::from("herald_outbox_");
        for b in &d[..8] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    fn key(&self, purpose: &str) -> i64 {
        let d = self.digest(purpose);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&d[..8]);
        i64::from_be_bytes(bytes)
    }

    /// Advisory-lock key held by the relay leader of this table.
    pub fn leader_lock_key(&self) -> i64 {
        self.key("leader")
    }

    /// Advisory-lock key serialising migrations of this table.
    pub fn migration_lock_key(&self) -> i64 {
        self.key("migrate")
    }

    /// First half of the per-account advisory locks the insert trigger takes
    /// (`pg_advisory_xact_lock(<this>, hashtext(account_id))`). The
    /// two-`int4` form never conflicts with the single-`bigint` leader and
    /// migration locks: Postgres keeps the two key spaces apart.
    pub fn account_lock_key(&self) -> i32 {
        let d = self.digest("account");
        i32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }
}

impl fmt::Display for OutboxTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Everything the relay needs.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Database connection settings.
    pub database: tokio_postgres::Config,
    /// The outbox table.
    pub table: OutboxTable,
    /// Kafka connection (the relay has its own producer).
    pub kafka: KafkaArgs,
    /// Most rows per batch.
    pub batch: usize,
    /// Polling fallback and standby lock attempts.
    pub poll: Duration,
    /// Longest retry wait.
    pub max_backoff: Duration,
    /// Kafka acknowledgement deadline per batch.
    pub produce_timeout: Duration,
    /// Where the per-row publishing spans go (set by the caller; disabled
    /// by default).
    pub otlp: herald_runtime::otlp::Otlp,
}

impl RelaySettings {
    /// From the producer's settings; `None` when no database URL is set.
    pub fn from_config(config: &ProducerConfig, table: OutboxTable) -> Option<Self> {
        let database = config
            .outbox_database_url
            .as_ref()?
            .expose()
            .parse::<tokio_postgres::Config>()
            .ok()?;
        Some(RelaySettings {
            database,
            table,
            kafka: config.kafka.clone(),
            batch: config.outbox_batch,
            poll: Duration::from_millis(config.outbox_poll_ms),
            max_backoff: Duration::from_millis(config.outbox_max_backoff_ms),
            produce_timeout: config.produce_timeout(),
            otlp: herald_runtime::otlp::Otlp::disabled(),
        })
    }
}

/// Connect to Postgres and drive the connection in a background task.
/// Notifications are forwarded to `notify` (coalesced); the task ends with
/// the connection.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    notify: Option<tokio::sync::mpsc::Sender<()>>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), OutboxError> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if let Some(n) = &notify {
                        let _ = n.try_send(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "outbox database connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        let t = OutboxTable::new("app", "herald_outbox").unwrap();
        assert_eq!(t.qualified(), "\"app\".\"herald_outbox\"");
        assert_eq!(t.dead_letter(), "\"app\".\"herald_outbox_dead_letter\"");
        assert_eq!(t.to_string(), "app.herald_outbox");
        assert!(t.channel().len() <= 63);
        assert_ne!(t.leader_lock_key(), t.migration_lock_key());
        assert_eq!(t.order_function(), "\"app\".\"herald_outbox_order\"");
        assert_eq!(t.order_trigger_name(), "\"herald_outbox_order\"");
        assert_ne!(
            t.account_lock_key(),
            OutboxTable::new("other", "herald_outbox")
                .unwrap()
                .account_lock_key()
        );
        assert_ne!(
            t.channel(),
            OutboxTable::new("other", "herald_outbox")
                .unwrap()
                .channel()
        );
        for bad in ["", "Outbox", "1x", "a-b", "a\"b", "a;drop", &"x".repeat(41)] {
            assert!(OutboxTable::new("public", bad).is_err(), "{bad}");
        }
        assert!(OutboxTable::new("Public", "x").is_err());
    }
}
