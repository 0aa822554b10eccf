//! The gateway's vocabulary: plain values every layer above shares — the
//! routed event, stream positions, identities and their entitlement, the
//! clock. No I/O and no tokio here.

pub mod clock;
pub mod conflation;
pub mod event;
pub mod identity;
pub mod position;
