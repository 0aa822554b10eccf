//! Producer configuration: flags, `HERALD_*` environment variables and an
//! optional TOML file (`--config`).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use herald_runtime::{KafkaArgs, telemetry::LogFormat};

/// Herald producer: turns backend writes into Kafka records.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-producer", version, about)]
pub struct ProducerConfig {
    /// TOML file with settings (keys are the flag names).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<String>,
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
    /// Time Kafka has to acknowledge a record before the request fails, ms.
    #[arg(long, env = "HERALD_PRODUCE_TIMEOUT_MS", default_value_t = 10_000)]
    pub produce_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A setting that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A number out of range.
    #[error("{0}")]
    OutOfRange(&'static str),
    /// Bad Kafka settings.
    #[error(transparent)]
    Kafka(#[from] herald_runtime::kafka::KafkaConfigError),
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
        self.kafka.client_config()?;
        Ok(())
    }
}
