//! The three client protocols, each a sans-I/O codec plus a session built on
//! the shared skeleton ([`crate::transport::session`]).

pub mod cable;
pub mod context;
pub mod stomp;
pub mod typeid;
