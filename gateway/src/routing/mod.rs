//! Who gets what: the account -> recipients index, the per-event frame
//! cache, the history buffer and resume gate, and the presence table.

pub mod gate;
pub mod groups;
pub mod history;
pub mod presence;
pub mod router;
