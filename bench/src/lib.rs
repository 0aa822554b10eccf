//! Herald's load generator and benchmark suite (`herald-loadgen`).
//!
//! - [`ws`] — minimal WebSocket framing, sans I/O
//! - [`stamp`] — stamped event payloads and their parsing, sans I/O
//! - [`client`] — the fleet of load clients (STOMP, RoomChannel, NotificationsChannel)
//! - [`publish`] — publishing to Kafka or to the raw server, open or closed loop
//! - [`raw`] — the raw WebSocket baseline server
//! - [`cluster`] — broker, gateway and raw server as child processes
//! - [`procstat`], [`prom`], [`hist`] — memory/CPU, gateway metrics, latency histograms
//! - [`scenario`] — the scenarios: idle, fanout, latency, ingest, storm, hostile
//! - [`resuming`] — clients that lose their connection and resume from their position
//! - [`peers`] — Herald against AnyCable, Centrifugo, RabbitMQ Web-STOMP and Rails ActionCable
//! - [`reconnect`] — the scenarios with resuming clients: jitter, avalanche
//! - [`simulate`] — the capacity model (no I/O): per-pod load of a workload, today vs. pod groups

pub mod client;
pub mod cluster;
pub mod hist;
pub mod hostile;
pub mod peers;
pub mod procstat;
pub mod prom;
pub mod publish;
pub mod raw;
pub mod reconnect;
pub mod resuming;
pub mod scenario;
pub mod simulate;
pub mod stamp;
pub mod ws;
