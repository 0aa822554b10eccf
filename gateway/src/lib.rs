//! The Herald gateway: reads every partition of the served Kafka topics and
//! pushes each event, once decoded, to the WebSocket clients entitled to it.
//!
//! The modules are layers, each depending only on the ones listed before it
//! (ARCHITECTURE.md at the repository root draws them; `tests/layers.rs`
//! enforces the order):
//!
//! - [`core`] — the routed event, stream positions, identities and entitlement, the clock
//! - [`metrics`], [`limits`] — the metric registry; admission and rate limits
//! - [`transport`] — WebSocket framing, per-connection queues and writers, the session skeleton
//! - [`routing`] — account -> recipients index, shared frame encoding, history buffer, presence
//! - [`kafka`] — the record loop, the identities follower, resume read-backs
//! - [`auth`] — credentials: JWT/JWKS verification, opaque tokens
//! - [`protocols`] — STOMP, TypeID JSON, ActionCable
//! - [`app`] — configuration, HTTP routes, start and drain, the web console

pub mod app;
pub mod auth;
pub mod core;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod protocols;
pub mod routing;
pub mod transport;

pub use app::config::GatewayConfig;
pub use app::server::{GatewayHandle, start};
