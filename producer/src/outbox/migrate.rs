//! The outbox schema as numbered migrations, applied in one transaction
//! under an advisory lock (so concurrent `migrate` runs are safe) and
//! recorded in `<table>_migrations`.
//!
//! Version 1 creates:
//!
//! ```sql
//! CREATE TABLE "public"."herald_outbox" (
//!     seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order
//!     event_id   text NOT NULL DEFAULT gen_random_uuid()::text,    -- envelope id when the event has none
//!     event      jsonb NOT NULL,                                   -- the envelope
//!     created_at timestamptz NOT NULL DEFAULT clock_timestamp()    -- occurred_at when the event has none
//! );
//! CREATE TABLE "public"."herald_outbox_dead_letter" (seq, event_id, event, created_at, failed_at, reason);
//! -- and an AFTER INSERT ... FOR EACH STATEMENT trigger calling pg_notify.
//! ```

use super::{OutboxError, OutboxTable};

/// One migration: its version, name and SQL.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Applied in increasing order.
    pub version: i32,
    /// What it does.
    pub name: &'static str,
    /// The SQL (several statements).
    pub sql: String,
}

/// Every migration of `table`, in order.
pub fn migrations(table: &OutboxTable) -> Vec<Migration> {
    let t = table.qualified();
    let dl = table.dead_letter();
    let function = table.notify_function();
    let trigger = table.trigger_name();
    let channel = table.channel();
    vec![Migration {
        version: 1,
        name: "outbox table, dead-letter table, notify trigger",
        sql: format!(
            r#"
CREATE TABLE IF NOT EXISTS {t} (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   text NOT NULL DEFAULT gen_random_uuid()::text,
    event      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE {t} IS 'Herald outbox: insert event envelopes here in the same transaction as the business write; herald-producer publishes and deletes them';
CREATE TABLE IF NOT EXISTS {dl} (
    seq        bigint PRIMARY KEY,
    event_id   text NOT NULL,
    event      jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason     text NOT NULL
);
COMMENT ON TABLE {dl} IS 'Herald outbox rows that can never be published, with the reason';
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $herald$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$herald$;
DROP TRIGGER IF EXISTS {trigger} ON {t};
CREATE TRIGGER {trigger} AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {function}();
"#
        ),
    }]
}

/// Apply the migrations not applied yet; returns how many were applied.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    table: &OutboxTable,
) -> Result<usize, OutboxError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&table.migration_lock_key()],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS {m} (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        schema = table.schema(),
        m = table.migrations(),
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(&format!("SELECT version FROM {}", table.migrations()), &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut count = 0;
    for m in migrations(table) {
        if applied.contains(&m.version) {
            continue;
        }
        tx.batch_execute(&m.sql).await?;
        tx.execute(
            &format!(
                "INSERT INTO {} (version, name) VALUES ($1, $2)",
                table.migrations()
            ),
            &[&m.version, &m.name],
        )
        .await?;
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}

/// Connect to `database_url` and apply the migrations.
pub async fn run(database_url: &str, table: &OutboxTable) -> Result<usize, OutboxError> {
    let config = database_url
        .parse::<tokio_postgres::Config>()
        .map_err(OutboxError::Postgres)?;
    let (mut client, task) = super::connect(&config, None).await?;
    let result = apply(&mut client, table).await;
    drop(client);
    let _ = task.await;
    result
}
