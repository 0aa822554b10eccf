//! The TypeID JSON protocol (the TypeID API) at `/notifications`: `JoinRequest`
//! handshake, pings, server-pushed notifications to the users an event's
//! audience names, and client-sent messages written to the
//! `client-commands` topic and acknowledged once Kafka has them.

pub mod protocol;
pub mod session;

pub use session::{JoinThrottle, TypeIdConfig, TypeIdDeps, serve};
