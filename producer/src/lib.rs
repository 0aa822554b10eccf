//! The Herald producer: the HTTP ingest API (`POST /v1/events`) that
//! validates events against the schemas and publishes them to their family's
//! topic, keyed by account, answering only once Kafka acknowledged.

pub mod config;
pub mod ingest;
pub mod metrics;

pub use config::ProducerConfig;
pub use ingest::{ProducerHandle, start};
