//! Bytes on the wire: the WebSocket layer (client frame decoding,
//! permessage-deflate), each connection's bounded queue and writer, the
//! session skeleton the protocols share, and the PROXY protocol /
//! forwarded-header handling.

pub mod connection;
pub mod deflate;
pub mod inbound;
pub mod proxy;
pub mod session;
pub mod ws;
