//! STOMP 1.0/1.1/1.2 over WebSocket, Airy-style, at `/ws.communication`.
//!
//! `codec` is the pure frame codec, `destination` maps event types to Airy's
//! destinations and renders their bodies, `session` drives one connection.

pub mod codec;
pub mod destination;
pub mod session;

pub use session::{StompConfig, StompDeps, serve};
