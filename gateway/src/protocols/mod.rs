//! The three client protocols, each a sans-I/O codec plus a session built on
//! the shared skeleton ([`crate::transport::session`]).
//!
//! A session gets two things: the [`shared::Shared`] part every protocol
//! needs (router, metrics, credentials, limits, outbound bounds, drain), and
//! its own protocol's dependencies ([`stomp::StompDeps`],
//! [`cable::CableDeps`], [`typeid::TypeIdDeps`]) with only what that
//! protocol uses.

pub mod cable;
pub mod shared;
pub mod stomp;
pub mod typeid;
