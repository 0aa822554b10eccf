//! ActionCable (Rails) endpoints: the Chatwoot-style `RoomChannel` at
//! `/cable` and the Pulse-style `NotificationsChannel` at `/stream` and
//! `/api/v1/stream`. `protocol` is the pure wire format, `session` drives a
//! connection, `channel` decides what each subscription receives.

pub mod channel;
pub mod protocol;
pub mod session;

pub use session::{CableConfig, CableDeps, Endpoint, serve};
