//! The application: configuration, the HTTP routes and admission,
//! start-up and drain, and the web console.

pub mod config;
pub mod console;
pub mod server;
