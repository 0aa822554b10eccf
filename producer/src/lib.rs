//! The Herald producer: how backends put events into Kafka.
//!
//! - [`ingest`]: `POST /v1/events` validates events against the schemas and
//!   publishes them to their family's topic, keyed by account, answering
//!   only once Kafka acknowledged; retries are idempotent by (account, event
//!   id) ([`idempotency`]).
//! - [`identities`]: register and revoke opaque tokens on the identities topic.
//! - [`outbox`]: the transactional-outbox relay from a Postgres table.
//! - [`auth`]: API keys and scoped JWTs; [`openapi`]: the API's document;
//!   [`metrics`]: Prometheus metrics on the ops port.

pub mod auth;
pub mod config;
pub mod idempotency;
pub mod identities;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod publish;
pub mod server;

pub use config::ProducerConfig;
pub use server::{ProducerHandle, start};
