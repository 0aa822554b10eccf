//! Starts the services a whole test run shares, Apache Kafka (one KRaft
//! broker) and PostgreSQL, writes the environment that points the tests at
//! them to `--env-file`, and keeps them until stdin closes or a signal
//! arrives. `scripts/test.sh` runs it around the suite.

use std::path::PathBuf;

use clap::Parser;
use herald_testkit::{kafka, postgres::Postgres};

#[derive(Parser)]
#[command(about = "Run the services shared by a Herald test run")]
struct Args {
    /// Where to write `HERALD_TEST_KAFKA=...` and `HERALD_TEST_POSTGRES=...`
    /// (written once both are up).
    #[arg(long)]
    env_file: PathBuf,
    /// Java heap of the broker, MiB.
    #[arg(long, default_value_t = 1024)]
    kafka_heap_mib: u32,
    /// Do not start Kafka.
    #[arg(long)]
    no_kafka: bool,
    /// Do not start PostgreSQL.
    #[arg(long)]
    no_postgres: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if herald_testkit::docker::requested() {
        // HERALD_TEST_DOCKER=1: both services as containers.
        let services = herald_testkit::docker::start().await?;
        eprintln!(
            "herald-test-services: containers (testcontainers): Apache Kafka {} at {}, PostgreSQL at {}",
            kafka::version(),
            services.bootstrap,
            services.postgres_url
        );
        let env = format!(
            "HERALD_TEST_KAFKA={}\nHERALD_TEST_KAFKA_VERSION={}\nHERALD_TEST_POSTGRES={}\n",
            services.bootstrap,
            kafka::version(),
            services.postgres_url
        );
        let tmp = args.env_file.with_extension("tmp");
        std::fs::write(&tmp, env)?;
        std::fs::rename(&tmp, &args.env_file)?;
        wait_for_the_end().await?;
        drop(services);
        return Ok(());
    }
    let mut env = String::new();
    let cluster = if args.no_kafka {
        None
    } else {
        let cluster = kafka::Cluster::start(kafka::Options {
            heap_mib: args.kafka_heap_mib,
            ..kafka::Options::default()
        })
        .await?;
        eprintln!(
            "herald-test-services: Apache Kafka {} (KRaft, 1 node) at {}, logs in {}",
            kafka::version(),
            cluster.bootstrap(),
            cluster.dir().display()
        );
        env.push_str(&format!(
            "HERALD_TEST_KAFKA={}\nHERALD_TEST_KAFKA_VERSION={}\n",
            cluster.bootstrap(),
            kafka::version()
        ));
        Some(cluster)
    };
    let pg = if args.no_postgres {
        None
    } else {
        let pg = Postgres::start().await?;
        eprintln!("herald-test-services: PostgreSQL at {}", pg.url());
        Some(pg)
    };
    if let Some(pg) = &pg {
        env.push_str(&format!("HERALD_TEST_POSTGRES={}\n", pg.url()));
    }
    let tmp = args.env_file.with_extension("tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, &args.env_file)?;

    wait_for_the_end().await?;
    if let Some(pg) = pg {
        pg.stop().await;
    }
    drop(cluster);
    Ok(())
}

/// Until stdin closes (the script ended) or SIGTERM/SIGINT.
async fn wait_for_the_end() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stdin_closed = async {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stdin_closed => {}
    }
    Ok(())
}
