//! `herald-producer`: thin entry point; see the library for everything else.
//!
//! `herald-producer migrate [flags]` applies the outbox migrations to
//! `--outbox-database-url` and exits; anything else runs the service.

use herald_producer::{ProducerConfig, outbox};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let migrate = args.get(1).is_some_and(|a| a == "migrate");
    if migrate {
        args.remove(1);
    }
    let config = ProducerConfig::from_args(args).unwrap_or_else(|e| e.exit());
    herald_runtime::telemetry::init(config.log_format, "info");
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if migrate {
        let Some(url) = &config.outbox_database_url else {
            eprintln!("error: migrate needs --outbox-database-url (or HERALD_OUTBOX_DATABASE_URL)");
            std::process::exit(2);
        };
        let table = outbox::OutboxTable::new(&config.outbox_schema, &config.outbox_table)?;
        match outbox::migrate::run(url.expose(), &table).await {
            Ok(n) => {
                println!("outbox {table}: {n} migration(s) applied");
                return Ok(());
            }
            Err(e) => {
                eprintln!("error: outbox migration failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let shutdown = herald_runtime::shutdown::on_signal();
    let handle = herald_producer::start(config, shutdown).await?;
    handle.stopped().await;
    Ok(())
}
