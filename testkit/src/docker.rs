//! The optional Docker path: Apache Kafka and PostgreSQL as containers,
//! started with testcontainers when `HERALD_TEST_DOCKER=1` (for machines
//! with a Docker engine and without Java or PostgreSQL binaries). Without
//! an engine it says so instead of falling back silently.

use std::path::Path;

use anyhow::Context as _;
use testcontainers_modules::{
    kafka::apache,
    postgres,
    testcontainers::{ContainerAsync, ImageExt, runners::AsyncRunner},
};

/// Environment variable asking for the Docker path.
pub const DOCKER_ENV: &str = "HERALD_TEST_DOCKER";

/// Whether the Docker path was asked for.
pub fn requested() -> bool {
    std::env::var(DOCKER_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Why no engine is there, if none is (checked before anything starts).
pub fn engine_missing() -> Option<String> {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return None;
    }
    let socket = Path::new("/var/run/docker.sock");
    (!socket.exists()).then(|| {
        format!(
            "{DOCKER_ENV}=1 but no Docker engine was found: DOCKER_HOST is not set and {} does not exist \
             (unset {DOCKER_ENV} to run Kafka and PostgreSQL from Maven Central and Debian's packages instead)",
            socket.display()
        )
    })
}

/// Kafka and PostgreSQL containers; removed when dropped.
pub struct Services {
    _kafka: ContainerAsync<apache::Kafka>,
    _postgres: ContainerAsync<postgres::Postgres>,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// PostgreSQL URL.
    pub postgres_url: String,
}

/// Start both containers: the Apache Kafka image of the release the tests
/// pin ([`crate::kafka::version`]), and PostgreSQL 17.
pub async fn start() -> anyhow::Result<Services> {
    if let Some(why) = engine_missing() {
        anyhow::bail!(why);
    }
    let kafka = apache::Kafka::default()
        .with_jvm_image()
        .with_tag(crate::kafka::version())
        .start()
        .await
        .context("cannot start the Apache Kafka container")?;
    let port = kafka.get_host_port_ipv4(apache::KAFKA_PORT).await?;
    let pg = postgres::Postgres::default()
        .with_tag("17-alpine")
        .start()
        .await
        .context("cannot start the PostgreSQL container")?;
    let pg_port = pg.get_host_port_ipv4(5432).await?;
    Ok(Services {
        _kafka: kafka,
        _postgres: pg,
        bootstrap: format!("127.0.0.1:{port}"),
        postgres_url: format!("postgres://postgres:postgres@127.0.0.1:{pg_port}/postgres"),
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn without_an_engine_the_docker_path_says_so() {
        // This machine kind has no Docker engine; where one runs, the
        // message is not produced and this checks nothing more.
        if let Some(why) = super::engine_missing() {
            assert!(why.contains("no Docker engine was found"), "{why}");
            let err = super::start()
                .await
                .err()
                .expect("no engine, no containers");
            assert!(err.to_string().contains("no Docker engine"), "{err}");
        }
    }
}
