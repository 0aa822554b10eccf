//! Reading Kafka: the record loop that feeds the router, the follower that
//! keeps the opaque-token table, and the read-backs a resume needs.

pub mod consumer;
pub mod identities;
pub mod resume;
