//! The outbound half of a client connection, shared by every protocol: a
//! bounded queue, a writer task that coalesces queued frames into few socket
//! writes, heart-beats, and the slow-client cut-off.

use std::{
    io::{self, IoSlice},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::router::now_ms;
use crate::ws::{WsFrame, WsSocket, WsStream};

/// One item of a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A frame; `kafka_ts_ms` is set for event deliveries (for the latency histogram).
    Frame {
        /// The encoded frame (shared with every recipient of the same bytes).
        frame: WsFrame,
        /// Kafka timestamp of the event it carries.
        kafka_ts_ms: Option<i64>,
    },
    /// Whole frames the WebSocket library wrote itself (pongs, close replies).
    Raw(Bytes),
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

impl Outbound {
    /// A control text frame (not an event delivery).
    pub fn text(text: &str) -> Self {
        Outbound::Frame {
            frame: WsFrame::text(text),
            kafka_ts_ms: None,
        }
    }
}

/// What a connection's heart-beat sends.
#[derive(Debug, Clone)]
pub enum HeartBeatKind {
    /// This frame, only when nothing else was written in the interval (STOMP EOL).
    WhenIdle(WsFrame),
    /// An ActionCable `ping` with the current unix time, every interval,
    /// strictly increasing.
    CablePing,
}

/// State shared by a connection's senders and its writer.
struct Shared {
    /// Wakes the writer for the slow-client cut-off.
    slow: CancellationToken,
    /// The same fact as `slow`, readable with one load: the router checks it
    /// for every frame, and `CancellationToken::is_cancelled` takes a mutex.
    is_slow: AtomicBool,
    dropped: IntCounter,
    slow_disconnects: IntCounter,
}

/// The sending side of a connection, used by the router (non-blocking) and
/// by the protocol session (for control frames).
#[derive(Clone)]
pub struct ConnTx {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

impl ConnTx {
    /// Queue an event frame without waiting. A full queue marks the client
    /// slow (its writer then disconnects it); returns false when the frame
    /// was not queued.
    pub fn push(&self, frame: WsFrame, kafka_ts_ms: Option<i64>) -> bool {
        if self.shared.is_slow.load(Ordering::Relaxed) {
            return false;
        }
        match self.tx.try_send(Outbound::Frame { frame, kafka_ts_ms }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.dropped.inc();
                if !self.shared.is_slow.swap(true, Ordering::Relaxed) {
                    self.shared.slow_disconnects.inc();
                    self.shared.slow.cancel();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queue a control item, waiting for room (used by the session only).
    /// False once the writer has stopped.
    pub async fn send(&self, item: Outbound) -> bool {
        self.tx.send(item).await.is_ok()
    }

    /// A handle for the WebSocket library's own replies that does not keep
    /// the writer alive (the writer ends when the session's senders are gone).
    fn replies(&self) -> impl Fn(Bytes) + Send + Sync + 'static {
        let weak = self.tx.downgrade();
        move |bytes| {
            if let Some(tx) = weak.upgrade() {
                // A client whose queue is full is being cut off anyway.
                let _ = tx.try_send(Outbound::Raw(bytes));
            }
        }
    }
}

/// Create a connection's queue: the sender, and the writer to run.
pub fn channel(capacity: usize, protocol: &'static str, metrics: &Metrics) -> (ConnTx, Writer) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        slow: CancellationToken::new(),
        is_slow: AtomicBool::new(false),
        dropped: metrics.frames_dropped.with_label_values(&[protocol]),
        slow_disconnects: metrics.slow_disconnects.with_label_values(&[protocol]),
    });
    (
        ConnTx {
            tx,
            shared: shared.clone(),
        },
        Writer {
            rx,
            shared,
            sent: metrics.frames_sent.with_label_values(&[protocol]),
            latency: metrics.delivery_latency.clone(),
        },
    )
}

/// A connection's plumbing, as every protocol session starts it.
pub struct Opened {
    /// The outbound queue.
    pub tx: ConnTx,
    /// Client messages.
    pub stream: WsStream,
    /// Cancelled when the writer has stopped (socket gone, closed or cut off).
    pub done: CancellationToken,
    /// The writer task.
    pub writer: WriterTask,
}

/// Start a connection on `socket`: its queue (`capacity` frames), its
/// writer task, and the stream of client messages. `slow_frame` is written
/// to a client cut off for not reading.
pub async fn open(
    socket: WsSocket,
    capacity: usize,
    protocol: &'static str,
    metrics: &Metrics,
    slow_frame: Option<WsFrame>,
) -> Opened {
    let (tx, writer) = channel(capacity, protocol, metrics);
    let (stream, write) = socket.into_parts(tx.replies()).await;
    let done = CancellationToken::new();
    let task = tokio::spawn(writer.run(write, slow_frame, done.clone()));
    Opened {
        tx,
        stream,
        done,
        writer: WriterTask(task),
    }
}

/// Let the WebSocket library hand over what it still owes the client (the
/// answer to a client's close frame is queued when the close is read, and
/// written on the next read or flush). Call before the session's senders go.
pub async fn answer_close(stream: &mut WsStream) {
    use futures_util::SinkExt;
    let _ = stream.flush().await;
}

/// A running writer task.
pub struct WriterTask(JoinHandle<()>);

impl WriterTask {
    /// Wait for the writer to write what is queued once every sender is
    /// gone; a client that stopped reading gets 5 s, then the socket is dropped.
    pub async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(5), &mut self.0)
            .await
            .is_err()
        {
            self.0.abort();
        }
    }
}

/// The writer half: owns the socket's write half.
pub struct Writer {
    rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
    sent: IntCounter,
    latency: Histogram,
}

/// How many queued frames one socket write may carry.
const MAX_BATCH: usize = 256;

impl Writer {
    /// Write queued frames to `out` until a `Close` item, a closed queue, a
    /// socket error, or the slow-client cut-off (then `slow_frame` is written
    /// if the socket still takes it, and the socket closed with 1008).
    /// `done` is cancelled on return.
    pub async fn run<W>(mut self, mut out: W, slow_frame: Option<WsFrame>, done: CancellationToken)
    where
        W: AsyncWrite + Unpin,
    {
        let mut heartbeat: Option<(tokio::time::Interval, HeartBeatKind)> = None;
        let mut last_ping = 0i64;
        let mut wrote_since_tick = false;
        // Starts small: most connections are idle, and a preallocated
        // MAX_BATCH buffer was the largest per-connection allocation
        // (14 KB, measured with massif). It grows under load and stays.
        let mut batch: Vec<Outbound> = Vec::with_capacity(4);
        let slow = self.shared.slow.clone();
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
                            step = self.write_batch(&mut out, &mut batch, &mut heartbeat) => step,
                        }
                    }
                }
                _ = tick(&mut heartbeat) => {
                    let frame = match &heartbeat {
                        Some((_, HeartBeatKind::WhenIdle(frame))) if !wrote_since_tick => Some(frame.clone()),
                        Some((_, HeartBeatKind::CablePing)) => {
                            last_ping = (now_ms() / 1000).max(last_ping + 1);
                            Some(WsFrame::text(&format!(r#"{{"type":"ping","message":{last_ping}}}"#)))
                        }
                        _ => None,
                    };
                    let step = match frame {
                        Some(frame) => match write_frames(&mut out, &[frame.bytes().clone()]).await {
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
                    let mut goodbye: Vec<Bytes> = Vec::with_capacity(2);
                    if let Some(frame) = slow_frame {
                        goodbye.push(frame.bytes().clone());
                    }
                    goodbye.push(WsFrame::close(1008, "slow consumer").bytes().clone());
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        write_frames(&mut out, &goodbye),
                    )
                    .await;
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), out.shutdown()).await;
        done.cancel();
    }

    async fn write_batch<W>(
        &self,
        out: &mut W,
        batch: &mut Vec<Outbound>,
        heartbeat: &mut Option<(tokio::time::Interval, HeartBeatKind)>,
    ) -> Step
    where
        W: AsyncWrite + Unpin,
    {
        let mut frames: Vec<Bytes> = Vec::with_capacity(batch.len());
        let mut timestamps = Vec::new();
        let mut sent = 0u64;
        let mut closing = false;
        for item in batch.drain(..) {
            match item {
                Outbound::Frame { frame, kafka_ts_ms } => {
                    frames.push(frame.bytes().clone());
                    sent += 1;
                    if let Some(ts) = kafka_ts_ms {
                        timestamps.push(ts);
                    }
                }
                Outbound::Raw(bytes) => frames.push(bytes),
                Outbound::HeartBeat { every, kind } => {
                    let mut iv =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    *heartbeat = Some((iv, kind));
                }
                Outbound::Close { code, reason } => {
                    frames.push(WsFrame::close(code, reason).bytes().clone());
                    closing = true;
                    break;
                }
            }
        }
        if write_frames(out, &frames).await.is_err() {
            return Step::Stop;
        }
        self.sent.inc_by(sent);
        if !timestamps.is_empty() {
            let now = now_ms();
            for ts in timestamps {
                self.latency.observe((now - ts).max(0) as f64 / 1000.0);
            }
        }
        if closing {
            return Step::Stop;
        }
        Step::Wrote
    }
}

/// Write whole frames with as few system calls as the socket allows: one
/// vectored write of every queued frame (the frames themselves are shared
/// buffers, never copied per connection).
async fn write_frames<W>(out: &mut W, frames: &[Bytes]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    match frames {
        [] => {}
        [one] => out.write_all(one).await?,
        _ => {
            let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = out.write_vectored(rest).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut rest, n);
            }
        }
    }
    out.flush().await
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
