//! The Herald gateway: reads every partition of the served Kafka topics and
//! pushes each event, once decoded, to the WebSocket clients entitled to it.
//!
//! - [`consumer`] — Kafka assignment and the record loop
//! - [`router`] — account -> recipients index, shared frame encoding
//! - [`connection`] — bounded outbound queues, writers, slow-client cut-off
//! - [`stomp`] — the Airy-style STOMP endpoint
//! - [`typeid`] — the TypeID JSON protocol (`/notifications`)
//! - [`cable`] — ActionCable: RoomChannel (`/cable`) and NotificationsChannel (`/stream`)
//! - [`identities`], [`presence`] — the opaque-token table and the online table, both fed by Kafka
//! - [`auth`] — credentials and entitlement
//! - [`metrics`], [`config`], [`server`] — operations and wiring
//! - [`console`] — the web console on the ops listener (`--console`)

pub mod auth;
pub mod cable;
pub mod config;
pub mod connection;
pub mod console;
pub mod consumer;
pub mod identities;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod proxy;
pub mod resume;
pub mod router;
pub mod server;
pub mod session;
pub mod stomp;
pub mod typeid;
pub mod ws;

pub use config::GatewayConfig;
pub use server::{GatewayHandle, start};
