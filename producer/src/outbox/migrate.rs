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
//!
//! Version 2 makes `seq` the commit order of each account's rows: a
//! `BEFORE INSERT ... FOR EACH ROW` trigger first takes a transaction-scoped
//! advisory lock on the row's account,
//! `pg_advisory_xact_lock(<table key>, hashtext(event->>'account_id'))`, and
//! only then numbers the row, `NEW.seq := nextval(<seq's identity sequence>)`
//! (replacing the value the identity default drew before the trigger ran).
//! Two transactions writing rows of one account are thereby serialised from
//! the first such insert to their commit, so for one account:
//!
//! - seq order is commit order (and, inside a transaction, insert order);
//! - Postgres makes a transaction visible before it releases its locks, so
//!   any snapshot that sees a row of an account also sees every lower-seq
//!   row of that account: the relay's `ORDER BY seq` reads never find a
//!   lower seq of an account committed after a higher one was published.
//!
//! Rows whose event has no `account_id` (JSON null, missing, or not an
//! object) take no lock: they are numbered at once and become dead letters.
//! Existing rows keep their `seq`; the identity and its sequence stay.

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
    let order_function = table.order_function();
    let order_trigger = table.order_trigger_name();
    let account_key = table.account_lock_key();
    vec![
        Migration {
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
        },
        Migration {
            version: 2,
            name: "seq in commit order per account (insert trigger locking the account)",
            sql: format!(
                r#"
DO $herald_migrate$
DECLARE
    seq_sequence text := pg_get_serial_sequence('{t}', 'seq');
BEGIN
    IF seq_sequence IS NULL THEN
        RAISE EXCEPTION 'column seq of {t} has no sequence';
    END IF;
    EXECUTE format($herald_sql$
CREATE OR REPLACE FUNCTION {order_function}() RETURNS trigger LANGUAGE plpgsql AS $herald$
DECLARE
    account text := NEW.event ->> 'account_id';
BEGIN
    -- Lock first, number second: rows of one account are numbered in the
    -- order their transactions commit.
    IF account IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(({account_key})::int4, hashtext(account));
    END IF;
    NEW.seq := nextval(%L::regclass);
    RETURN NEW;
END
$herald$
$herald_sql$, seq_sequence);
END
$herald_migrate$;
DROP TRIGGER IF EXISTS {order_trigger} ON {t};
CREATE TRIGGER {order_trigger} BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {order_function}();
COMMENT ON COLUMN {t}.seq IS 'Publication order: per account, the order in which the inserting transactions committed (set by the {order_trigger} trigger under a per-account lock)';
"#
            ),
        },
    ]
}

/// Apply the migrations not applied yet; returns how many were applied.
pub async fn apply(
    client: &mut tokio_postgres::Client,
    table: &OutboxTable,
) -> Result<usize, OutboxError> {
    apply_up_to(client, table, i32::MAX).await
}

/// Apply the migrations not applied yet up to version `last` (a database
/// as an older Herald left it, for upgrade tests).
pub async fn apply_up_to(
    client: &mut tokio_postgres::Client,
    table: &OutboxTable,
    last: i32,
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
        if applied.contains(&m.version) || m.version > last {
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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn applied_migrations_never_change_and_version_2_locks_before_numbering() {
        let table = OutboxTable::new("public", "herald_outbox").unwrap();
        let all = migrations(&table);
        let versions: Vec<i32> = all.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![1, 2]);
        // Databases already ran version 1 as it is: change it and they
        // differ from new ones. Add a migration instead.
        let digest: String = Sha256::digest(all[0].sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest, "6067bdaccc04dedd033f8545232f57efea42bbf9637a756de152e671ec413b1c",
            "migration 1 changed"
        );

        let v2 = &all[1].sql;
        let lock = v2
            .find(&format!(
                "pg_advisory_xact_lock(({})::int4, hashtext(account))",
                table.account_lock_key()
            ))
            .expect("version 2 takes the account lock");
        let number = v2
            .find("NEW.seq := nextval(")
            .expect("version 2 numbers rows");
        assert!(lock < number, "the row must be numbered after the lock");
        assert!(v2.contains(&format!(
            "BEFORE INSERT ON {} FOR EACH ROW",
            table.qualified()
        )));
    }
}
