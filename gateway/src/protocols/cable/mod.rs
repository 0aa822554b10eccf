//! ActionCable (Rails) endpoints: the Chatwoot-style `RoomChannel` at
//! `/cable` and the Pulse-style `NotificationsChannel` at `/stream` and
//! `/api/v1/stream`. `protocol` is the pure wire format, `session` drives a
//! connection, `channel` decides what each subscription receives, `pings`
//! beats every connection from one timer.

pub mod channel;
pub mod pings;
pub mod protocol;
pub mod session;

pub use pings::Pings;
pub use session::{CableConfig, CableDeps, Endpoint, serve};
