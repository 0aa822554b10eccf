//! Service plumbing shared by every Herald binary: the optional TOML
//! configuration file, logging, the Kafka client settings, the operations
//! HTTP server (`/healthz`, `/readyz`, `/metrics`) and shutdown signals.
//!
//! Nothing here knows about events or protocols; the gateway and the producer
//! build on it so that both are configured and operated the same way.

pub mod config_file;
pub mod jwt;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod otlp;
pub mod partitioner;
pub mod shutdown;
pub mod tansu;
pub mod telemetry;
pub mod tls;
pub mod topic_ids;
pub mod trace;

pub use kafka::KafkaArgs;
pub use ops::{OpsServer, Readiness};
