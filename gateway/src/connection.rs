//! The outbound half of a client connection, shared by every protocol: a
//! bounded queue, a writer task that coalesces queued frames into few socket
//! writes, heart-beats, and the slow-client cut-off.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::router::now_ms;

/// One item of a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame; `kafka_ts_ms` is set for event deliveries (for the latency histogram).
    Text {
        /// The frame.
        text: Utf8Bytes,
        /// Kafka timestamp of the event it carries.
        kafka_ts_ms: Option<i64>,
    },
    /// Start (or change) the connection's heart-beat.
    HeartBeat {
        /// Interval.
        every: Duration,
        /// What to send.
        kind: HeartBeatKind,
    },
    /// Close the socket with this code and reason after writing what is queued before it.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
}

/// What a connection's heart-beat sends.
#[derive(Debug, Clone)]
pub enum HeartBeatKind {
    /// This frame, only when nothing else was written in the interval (STOMP EOL).
    WhenIdle(Utf8Bytes),
    /// An ActionCable `ping` with the current unix time, every interval,
    /// strictly increasing.
    CablePing,
}

/// The sending side of a connection, used by the router (non-blocking) and
/// by the protocol session (for control frames).
#[derive(Clone)]
pub struct ConnTx {
    tx: mpsc::Sender<Outbound>,
    slow: CancellationToken,
    protocol: &'static str,
    metrics: Metrics,
}

impl ConnTx {
    /// Queue an event frame without waiting. A full queue marks the client
    /// slow (its writer then disconnects it); returns false when the frame
    /// was not queued.
    pub fn push(&self, text: Utf8Bytes, kafka_ts_ms: Option<i64>) -> bool {
        if self.slow.is_cancelled() {
            return false;
        }
        match self.tx.try_send(Outbound::Text { text, kafka_ts_ms }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .frames_dropped
                    .with_label_values(&[self.protocol])
                    .inc();
                if !self.slow.is_cancelled() {
                    self.metrics
                        .slow_disconnects
                        .with_label_values(&[self.protocol])
                        .inc();
                    self.slow.cancel();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queue a control item, waiting for room (used by the session only).
    pub async fn send(&self, item: Outbound) -> bool {
        self.tx.send(item).await.is_ok()
    }
}

/// Create a connection's queue: the sender, and the writer to run.
pub fn channel(capacity: usize, protocol: &'static str, metrics: Metrics) -> (ConnTx, Writer) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let slow = CancellationToken::new();
    (
        ConnTx {
            tx,
            slow: slow.clone(),
            protocol,
            metrics: metrics.clone(),
        },
        Writer {
            rx,
            slow,
            protocol,
            metrics,
        },
    )
}

/// The writer half: owns the socket sink.
pub struct Writer {
    rx: mpsc::Receiver<Outbound>,
    slow: CancellationToken,
    protocol: &'static str,
    metrics: Metrics,
}

/// How many queued frames one socket flush may carry.
const MAX_BATCH: usize = 256;

impl Writer {
    /// Write queued frames to `sink` until a `Close` item, a closed queue, a
    /// socket error, or the slow-client cut-off (then `slow_frame` is written
    /// if the socket still takes it, and the socket closed with 1008).
    /// `done` is cancelled on return.
    pub async fn run<S>(
        mut self,
        mut sink: S,
        slow_frame: Option<Utf8Bytes>,
        done: CancellationToken,
    ) where
        S: Sink<Message> + Unpin,
    {
        let mut heartbeat: Option<(tokio::time::Interval, HeartBeatKind)> = None;
        let mut last_ping = 0i64;
        let mut wrote_since_tick = false;
        // Starts small: most connections are idle, and a preallocated
        // MAX_BATCH buffer was the largest per-connection allocation
        // (14 KB, measured with massif). It grows under load and stays.
        let mut batch: Vec<Outbound> = Vec::with_capacity(4);
        let slow = self.slow.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = slow.cancelled() => Step::Slow,
                n = self.rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        Step::Stop
                    } else {
                        // A client that stops reading blocks this write; the
                        // cut-off must still win, so race it.
                        tokio::select! {
                            biased;
                            _ = slow.cancelled() => Step::Slow,
                            step = self.write_batch(&mut sink, &mut batch, &mut heartbeat) => step,
                        }
                    }
                }
                _ = tick(&mut heartbeat) => {
                    let frame = match &heartbeat {
                        Some((_, HeartBeatKind::WhenIdle(frame))) if !wrote_since_tick => Some(frame.clone()),
                        Some((_, HeartBeatKind::CablePing)) => {
                            last_ping = (now_ms() / 1000).max(last_ping + 1);
                            Some(Utf8Bytes::from(format!(r#"{{"type":"ping","message":{last_ping}}}"#)))
                        }
                        _ => None,
                    };
                    let step = match frame {
                        Some(frame) => match sink.send(Message::Text(frame)).await {
                            Ok(()) => Step::Continue,
                            Err(_) => Step::Stop,
                        },
                        None => Step::Continue,
                    };
                    wrote_since_tick = false;
                    step
                }
            };
            match step {
                Step::Continue => {}
                Step::Wrote => wrote_since_tick = true,
                Step::Stop => break,
                Step::Slow => {
                    // Best effort: the socket may be full, so do not wait long.
                    let goodbye = async {
                        if let Some(frame) = slow_frame {
                            sink.send(Message::Text(frame)).await.ok()?;
                        }
                        let close = CloseFrame {
                            code: 1008,
                            reason: "slow consumer".into(),
                        };
                        sink.send(Message::Close(Some(close))).await.ok()
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
                    break;
                }
            }
        }
        done.cancel();
    }

    async fn write_batch<S>(
        &self,
        sink: &mut S,
        batch: &mut Vec<Outbound>,
        heartbeat: &mut Option<(tokio::time::Interval, HeartBeatKind)>,
    ) -> Step
    where
        S: Sink<Message> + Unpin,
    {
        let mut timestamps = Vec::new();
        let mut sent = 0u64;
        let mut closing = None;
        for item in batch.drain(..) {
            match item {
                Outbound::Text { text, kafka_ts_ms } => {
                    if sink.feed(Message::Text(text)).await.is_err() {
                        return Step::Stop;
                    }
                    sent += 1;
                    if let Some(ts) = kafka_ts_ms {
                        timestamps.push(ts);
                    }
                }
                Outbound::HeartBeat { every, kind } => {
                    let mut iv =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    *heartbeat = Some((iv, kind));
                }
                Outbound::Close { code, reason } => {
                    closing = Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    });
                    break;
                }
            }
        }
        if sink.flush().await.is_err() {
            return Step::Stop;
        }
        self.metrics
            .frames_sent
            .with_label_values(&[self.protocol])
            .inc_by(sent);
        if !timestamps.is_empty() {
            let now = now_ms();
            for ts in timestamps {
                self.metrics
                    .delivery_latency
                    .observe((now - ts).max(0) as f64 / 1000.0);
            }
        }
        if let Some(close) = closing {
            let _ = sink.send(Message::Close(Some(close))).await;
            return Step::Stop;
        }
        Step::Wrote
    }
}

enum Step {
    Continue,
    Wrote,
    Stop,
    Slow,
}

async fn tick(heartbeat: &mut Option<(tokio::time::Interval, HeartBeatKind)>) {
    match heartbeat {
        Some((iv, _)) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Process-wide connection id source.
pub fn next_conn_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
