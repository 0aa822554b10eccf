//! Producer configuration: flags, `HERALD_*` environment variables and an
//! optional TOML file (`--config`).
//!
//! Secrets (API keys, the API JWT secret, the outbox database URL) are held
//! in [`Secret`], whose `Debug` never shows them, so logging the
//! configuration cannot leak them.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::Parser;
use herald_runtime::{KafkaArgs, telemetry::LogFormat};

/// Herald producer: turns backend writes (HTTP requests and rows of a
/// Postgres outbox table) into Kafka records.
///
/// `herald-producer migrate [flags]` applies the outbox migrations and exits.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-producer", version, about)]
pub struct ProducerConfig {
    /// TOML file with settings (keys are the flag names).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<String>,
    /// PEM certificate chain: serve the API over HTTPS (with --tls-key).
    #[arg(long, env = "HERALD_PRODUCER_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HERALD_PRODUCER_TLS_KEY")]
    pub tls_key: Option<String>,
    /// Address of the HTTP ingest API.
    #[arg(long, env = "HERALD_PRODUCER_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Address of the operations listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "HERALD_PRODUCER_OPS_LISTEN",
        default_value = "0.0.0.0:9092"
    )]
    pub ops_listen: SocketAddr,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Largest request body accepted, bytes (413 beyond).
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most events in one request.
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// Time Kafka has to acknowledge a record before the request fails (or
    /// the outbox relay retries its batch), ms.
    #[arg(long, env = "HERALD_PRODUCE_TIMEOUT_MS", default_value_t = 10_000)]
    pub produce_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OpenTelemetry span export (off unless `--otlp-endpoint` is set).
    #[command(flatten)]
    pub otlp: herald_runtime::otlp::OtlpArgs,

    /// Static API keys (`Authorization: Bearer <key>` or `X-Api-Key: <key>`);
    /// each grants every scope. Repeatable; comma-separated in the environment.
    #[arg(
        long = "api-key",
        alias = "api-keys",
        env = "HERALD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<Secret>,
    /// HS256 secret (at least 32 bytes) of API JWTs; their `scope` claim must
    /// hold `events:write` and/or `identities:write`.
    #[arg(long, env = "HERALD_API_JWT_SECRET", hide_env_values = true)]
    pub api_jwt_secret: Option<Secret>,
    /// Required `aud` claim of API JWTs.
    #[arg(long, env = "HERALD_API_JWT_AUDIENCE")]
    pub api_jwt_audience: Option<String>,
    /// Required `iss` claim of API JWTs.
    #[arg(long, env = "HERALD_API_JWT_ISSUER")]
    pub api_jwt_issuer: Option<String>,
    /// Serve the API to anyone when no API key or JWT secret is configured
    /// (development only). Without it, such an API answers 401 to everything.
    #[arg(long, env = "HERALD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// How long a client-supplied event id is remembered: a retry with the
    /// same id for the same account inside the window gets the first result
    /// instead of a new record (per producer instance), seconds; 0 disables.
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW_SECS", default_value_t = 300)]
    pub idempotency_window_secs: u64,
    /// Most (account, event id) pairs remembered; the oldest are forgotten
    /// first beyond it.
    #[arg(
        long,
        env = "HERALD_IDEMPOTENCY_MAX_ENTRIES",
        default_value_t = 100_000
    )]
    pub idempotency_max_entries: usize,

    /// PostgreSQL URL of the outbox database
    /// (`postgres://user:pass@host:5432/db`); the relay runs only when set.
    #[arg(long, env = "HERALD_OUTBOX_DATABASE_URL", hide_env_values = true)]
    pub outbox_database_url: Option<Secret>,
    /// Schema of the outbox tables.
    #[arg(long, env = "HERALD_OUTBOX_SCHEMA", default_value = "public")]
    pub outbox_schema: String,
    /// Name of the outbox table (the dead-letter table is `<name>_dead_letter`).
    #[arg(long, env = "HERALD_OUTBOX_TABLE", default_value = "herald_outbox")]
    pub outbox_table: String,
    /// Apply the outbox migrations at startup (else run `herald-producer migrate`).
    #[arg(long, env = "HERALD_OUTBOX_MIGRATE")]
    pub outbox_migrate: bool,
    /// Most outbox rows published per batch.
    #[arg(long, env = "HERALD_OUTBOX_BATCH", default_value_t = 500)]
    pub outbox_batch: usize,
    /// Polling fallback when no NOTIFY arrives, and how often a standby relay
    /// tries to take the leader lock, ms.
    #[arg(long, env = "HERALD_OUTBOX_POLL_MS", default_value_t = 1000)]
    pub outbox_poll_ms: u64,
    /// Longest wait between retries while Postgres or Kafka is down, ms.
    #[arg(long, env = "HERALD_OUTBOX_MAX_BACKOFF_MS", default_value_t = 10_000)]
    pub outbox_max_backoff_ms: u64,
}

/// A secret setting: usable as a string, printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// A setting that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A number out of range.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// A malformed value.
    #[error("{0}")]
    Invalid(String),
    /// Bad Kafka settings.
    #[error(transparent)]
    Kafka(#[from] herald_runtime::kafka::KafkaConfigError),
    /// Bad OTLP export settings.
    #[error(transparent)]
    Otlp(#[from] herald_runtime::otlp::OtlpConfigError),
}

impl ProducerConfig {
    /// Parse the real command line, environment and configuration file.
    pub fn load() -> Result<Self, herald_runtime::config_file::ParseError> {
        herald_runtime::config_file::parse(std::env::args().collect())
    }

    /// Parse from explicit arguments (first one is the program name).
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<String>>(
        args: I,
    ) -> Result<Self, herald_runtime::config_file::ParseError> {
        herald_runtime::config_file::parse(args.into_iter().map(Into::into).collect())
    }

    /// Produce timeout as a duration.
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    /// Check what can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::OutOfRange(
                "--max-body-bytes must be at least 1024",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::OutOfRange("--max-batch must be positive"));
        }
        if self.produce_timeout_ms < 100 {
            return Err(ConfigError::OutOfRange(
                "--produce-timeout-ms must be at least 100",
            ));
        }
        if self.api_keys.iter().any(|k| k.expose().trim().len() < 16) {
            return Err(ConfigError::OutOfRange(
                "every --api-key must be at least 16 characters",
            ));
        }
        if self
            .api_jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            return Err(ConfigError::OutOfRange(
                "--api-jwt-secret must be at least 32 bytes",
            ));
        }
        if self.idempotency_max_entries == 0 {
            return Err(ConfigError::OutOfRange(
                "--idempotency-max-entries must be positive",
            ));
        }
        if self.outbox_batch == 0 || self.outbox_batch > 10_000 {
            return Err(ConfigError::OutOfRange(
                "--outbox-batch must be between 1 and 10000",
            ));
        }
        if self.outbox_poll_ms < 10 {
            return Err(ConfigError::OutOfRange(
                "--outbox-poll-ms must be at least 10",
            ));
        }
        if self.outbox_max_backoff_ms < 100 {
            return Err(ConfigError::OutOfRange(
                "--outbox-max-backoff-ms must be at least 100",
            ));
        }
        crate::outbox::OutboxTable::new(&self.outbox_schema, &self.outbox_table)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(url) = &self.outbox_database_url {
            url.expose()
                .parse::<tokio_postgres::Config>()
                .map_err(|e| ConfigError::Invalid(format!("--outbox-database-url: {e}")))?;
        }
        self.kafka.producer_config()?;
        self.otlp.validate()?;
        Ok(())
    }

    /// Whether any API credential is configured.
    pub fn has_api_credentials(&self) -> bool {
        !self.api_keys.is_empty() || self.api_jwt_secret.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> ProducerConfig {
        let mut args = vec!["herald-producer"];
        args.extend_from_slice(extra);
        ProducerConfig::from_args(args).unwrap()
    }

    #[test]
    fn secrets_are_never_printed() {
        let c = parse(&[
            "--api-key",
            "key-0123456789abcdef",
            "--api-jwt-secret",
            "jwt-secret-0123456789abcdef-0123456789",
            "--outbox-database-url",
            "postgres://u:hunter2@localhost/db",
        ]);
        let text = format!("{c:?}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(c.api_keys[0].expose(), "key-0123456789abcdef");
        c.validate().unwrap();
    }

    #[test]
    fn short_keys_and_bad_tables_are_refused() {
        assert!(parse(&["--api-key", "short"]).validate().is_err());
        assert!(parse(&["--api-jwt-secret", "short"]).validate().is_err());
        assert!(parse(&["--outbox-table", "bad name"]).validate().is_err());
        assert!(
            parse(&["--outbox-database-url", "not a url ://"])
                .validate()
                .is_err()
        );
        assert!(
            parse(&["--otlp-endpoint", "localhost:4318"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--otlp-sample-ratio", "2"]).validate().is_err());
        assert!(
            parse(&[
                "--otlp-endpoint",
                "http://localhost:4318",
                "--otlp-sample-ratio",
                "1"
            ])
            .validate()
            .is_ok()
        );
        assert!(parse(&[]).validate().is_ok());
        assert!(!parse(&[]).otlp.enabled());
        assert!(!parse(&[]).has_api_credentials());
    }
}
