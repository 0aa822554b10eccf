//! Bytes on the wire: the WebSocket layer, each connection's bounded queue
//! and writer, the session skeleton the protocols share, and the PROXY
//! protocol / forwarded-header handling.

pub mod connection;
pub mod proxy;
pub mod session;
pub mod ws;
