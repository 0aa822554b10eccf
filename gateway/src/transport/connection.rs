//! The outbound half of a client connection, shared by every protocol: a
//! bounded queue, a writer task that coalesces queued frames into few socket
//! writes, heart-beats, and the cut-offs.
//!
//! Every byte a connection will be sent counts against one bound
//! ([`ConnLimits::bytes`]) until it is written: event frames, the
//! session's replies, the WebSocket library's pongs and close replies. What
//! happens at the bound depends on who queues:
//! - the router's live events are never waited for: a client whose queue is
//!   full (frames or bytes) is cut off as slow;
//! - the session's replies to the client's own commands, and resume
//!   replays, wait for room ([`ConnTx::send`], [`ConnTx::push_paced`]): the
//!   session stops reading that client meanwhile, so the client's own TCP
//!   window pushes back (backpressure);
//! - the WebSocket library's replies cannot wait: past the bound the client
//!   is cut off.
//!
//! A write that makes no progress for [`ConnLimits::write_timeout`]
//! closes the socket, so a client that never reads frees its queue.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::Notify,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::core::{clock::now_ms, event::Stamp};
use crate::metrics::Metrics;
use crate::transport::{
    deflate::DeflateConfig,
    ws::{WsFrame, WsSocket, WsStream},
};

/// One item of a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A frame; `stamp` is set for event deliveries (for the latency histograms).
    Frame {
        /// The encoded frame (shared with every recipient of the same bytes).
        frame: WsFrame,
        /// When the event it carries was produced and received.
        stamp: Option<Stamp>,
    },
    /// An event frame that a newer frame about the same subject, in the
    /// same lane, replaces while both are still queued (conflation).
    Superseding {
        /// The encoded frame.
        frame: WsFrame,
        /// As for [`Outbound::Frame`].
        stamp: Option<Stamp>,
        /// What the frame is about, and for which subscription.
        about: Supersede,
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
    /// Bytes this item will put on the wire.
    pub fn len(&self) -> usize {
        match self {
            Outbound::Frame { frame, .. } | Outbound::Superseding { frame, .. } => {
                frame.bytes().len()
            }
            Outbound::Raw(bytes) => bytes.len(),
            Outbound::HeartBeat { .. } | Outbound::Close { .. } => 0,
        }
    }

    /// Whether the item puts nothing on the wire by itself.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A control text frame (not an event delivery).
    pub fn text(text: &str) -> Self {
        Outbound::Frame {
            frame: WsFrame::text(text),
            stamp: None,
        }
    }
}

/// What a superseding event frame is about (see [`crate::core::conflation`]):
/// its subject, and the subscription (`lane`, unique in the process) it was
/// made for, since one connection's subscriptions each get their own frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supersede {
    /// The subscription (or channel) the frame belongs to.
    pub lane: u64,
    /// The event's subject.
    pub subject: Arc<str>,
}

impl Supersede {
    /// What `event`'s frame for subscription `lane` is about, if a newer
    /// event can supersede it.
    pub fn of(event: &crate::core::event::RoutedEvent, lane: u64) -> Option<Self> {
        event.subject.as_ref().map(|subject| Supersede {
            lane,
            subject: subject.clone(),
        })
    }
}

/// One event frame to queue: the frame, its latency stamp, and what it is
/// about when a newer one supersedes it.
pub type Delivery = (WsFrame, Option<Stamp>, Option<Supersede>);

/// What a connection's heart-beat sends. (ActionCable's pings come from
/// one process-wide timer instead, through a [`Beacon`].)
#[derive(Debug, Clone)]
pub enum HeartBeatKind {
    /// This frame, only when nothing else was written in the interval (STOMP EOL).
    WhenIdle(WsFrame),
}

/// What the senders and the writer exchange, under one lock.
///
/// Why not `tokio::sync::mpsc`: under fan-out every frame is one queue
/// operation from the consumer's core and one from the writer's, and the
/// bounded channel's semaphore, block list and per-item `pop` were the
/// largest user-space cost in `perf` (try_send alone 16 % of the gateway's
/// CPU at 3 M frames/s), plus a 32-slot block allocated per connection up
/// front. Here a sender pushes under an uncontended mutex and wakes the
/// writer only when it is waiting, and the writer takes everything queued
/// in one swap of two `VecDeque`s, so an idle connection holds no buffer.
#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// Bytes of the frames in `items` and of those the writer has taken
    /// but not yet written.
    bytes: usize,
    /// The writer, when it waits for items.
    waker: Option<Waker>,
    /// Every sender is gone: the writer ends once it has written the rest.
    closed: bool,
    /// The writer has ended: nothing more is accepted.
    stopped: bool,
}

/// State shared by a connection's senders and its writer.
struct Shared {
    queue: Mutex<Queue>,
    /// Live `ConnTx` handles (the queue closes when the last one goes).
    senders: AtomicUsize,
    /// Event frames queued before the client counts as slow.
    capacity: usize,
    /// Bytes queued (and not yet written) at most.
    max_bytes: usize,
    /// Wakes the writer for a cut-off (a permit is kept if the writer is
    /// not waiting at that moment).
    slow: Notify,
    /// Whether the client is being cut off: the router reads it for every frame.
    is_slow: AtomicBool,
    /// Why (the first reason wins).
    cutoff: Mutex<Option<Cutoff>>,
    /// Wakes senders waiting for room (after a write, and when stopped).
    room: Notify,
    dropped: IntCounter,
    /// Frames replaced in the queue by a newer one about the same subject.
    conflated: IntCounter,
    slow_disconnects: IntCounter,
    disconnects: prometheus::IntCounterVec,
    protocol: &'static str,
}

/// Why a connection was cut off by its outbound side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Live events did not fit (the client does not read fast enough).
    Slow,
    /// Replies the server could not hold back (pongs, close answers) went
    /// past the byte bound.
    OutboundBytes,
    /// A write made no progress within the write timeout.
    WriteTimeout,
}

impl Cutoff {
    /// The metric label and close reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Cutoff::Slow => "slow",
            Cutoff::OutboundBytes => "outbound_bytes",
            Cutoff::WriteTimeout => "write_timeout",
        }
    }
}

/// The per-connection bounds, one setting for every protocol.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Event frames queued before the client counts as slow.
    pub frames: usize,
    /// Bytes queued and not yet written, of every kind, at most.
    pub bytes: usize,
    /// A write that makes no progress this long closes the socket.
    pub write_timeout: Duration,
    /// Client messages (pings included) read per second at most (0: no limit).
    pub client_frames_per_second: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            frames: 1024,
            bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            client_frames_per_second: 0,
        }
    }
}

/// The outcome of queueing one item.
enum Queued {
    Yes,
    Full,
    Stopped,
}

/// How an item is queued.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// A live event: within the frame capacity and the byte bound, or refused.
    Event,
    /// Anything else: within the byte bound (a lone item always fits an
    /// empty queue), or refused.
    Bytes,
}

impl Shared {
    /// Queue `item` if it is admitted.
    fn enqueue(&self, item: Outbound, admit: Admit) -> Result<Queued, Outbound> {
        let len = item.len();
        let waker = {
            let Ok(mut q) = self.queue.lock() else {
                return Ok(Queued::Stopped);
            };
            // Closed: every `ConnTx` is gone, so only the WebSocket
            // library's replies can still arrive, and nobody waits for them.
            if q.stopped || q.closed {
                return Ok(Queued::Stopped);
            }
            let over_bytes = q.bytes > 0 && q.bytes + len > self.max_bytes;
            if admit == Admit::Event && (q.items.len() >= self.capacity || over_bytes) {
                return Ok(Queued::Full);
            }
            if over_bytes {
                return Err(item);
            }
            q.bytes += len;
            q.items.push_back(item);
            q.waker.take()
        };
        // Woken outside the lock, and only on the empty -> non-empty edge.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(Queued::Yes)
    }

    /// Admit one live event frame into `q` (its lock held): a superseding
    /// frame first takes the place of the older undelivered frame about the
    /// same subject in the same lane, so a client that falls behind on such
    /// events keeps only the latest of each instead of being cut off. False
    /// when the frame does not fit (frames or bytes).
    fn admit_event(
        &self,
        q: &mut Queue,
        frame: WsFrame,
        stamp: Option<Stamp>,
        about: Option<Supersede>,
    ) -> bool {
        let item = match about {
            None => Outbound::Frame { frame, stamp },
            Some(about) => {
                let older = q.items.iter().rposition(
                    |item| matches!(item, Outbound::Superseding { about: a, .. } if *a == about),
                );
                if let Some(old) = older.and_then(|at| q.items.remove(at)) {
                    q.bytes = q.bytes.saturating_sub(old.len());
                    self.conflated.inc();
                }
                Outbound::Superseding {
                    frame,
                    stamp,
                    about,
                }
            }
        };
        let len = item.len();
        if q.items.len() >= self.capacity || (q.bytes > 0 && q.bytes + len > self.max_bytes) {
            return false;
        }
        q.bytes += len;
        q.items.push_back(item);
        true
    }

    /// `written` bytes left the queue: make room for waiting senders.
    fn written(&self, written: usize) {
        if written == 0 {
            return;
        }
        if let Ok(mut q) = self.queue.lock() {
            q.bytes = q.bytes.saturating_sub(written);
        }
        self.room.notify_waiters();
    }

    /// Queue `item`, waiting for room under the byte bound (and, for
    /// events, the frame capacity); false once the writer has stopped.
    async fn enqueue_waiting(&self, mut item: Outbound, event: bool) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if event {
                let fits = match self.queue.lock() {
                    Ok(q) => {
                        if q.stopped || q.closed {
                            return false;
                        }
                        q.items.len() < self.capacity
                    }
                    Err(_) => return false,
                };
                if !fits {
                    room.await;
                    continue;
                }
            }
            match self.enqueue(item, Admit::Bytes) {
                Ok(Queued::Yes) => return true,
                Ok(Queued::Full | Queued::Stopped) => return false,
                Err(back) => {
                    item = back;
                    room.await;
                }
            }
        }
    }

    /// Move everything queued into `into` (which must be empty); `false`
    /// when the queue is closed and drained.
    fn poll_take(
        &self,
        cx: &mut std::task::Context<'_>,
        into: &mut VecDeque<Outbound>,
    ) -> Poll<bool> {
        let Ok(mut q) = self.queue.lock() else {
            return Poll::Ready(false);
        };
        if !q.items.is_empty() {
            std::mem::swap(&mut q.items, into);
            return Poll::Ready(true);
        }
        if q.closed {
            return Poll::Ready(false);
        }
        if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Cut the client off for `why`: counted once, and the writer is woken
    /// to write the goodbye and close.
    fn cut_off(&self, why: Cutoff) {
        if why == Cutoff::Slow {
            self.dropped.inc();
        }
        if !self.is_slow.swap(true, Ordering::Relaxed) {
            if let Ok(mut c) = self.cutoff.lock() {
                *c = Some(why);
            }
            if why == Cutoff::Slow {
                self.slow_disconnects.inc();
            }
            self.disconnects
                .with_label_values(&[self.protocol, why.as_str()])
                .inc();
            self.slow.notify_one();
        }
    }

    fn cutoff_reason(&self) -> Cutoff {
        self.cutoff
            .lock()
            .ok()
            .and_then(|c| *c)
            .unwrap_or(Cutoff::Slow)
    }

    /// The writer has ended: refuse further items and free queued ones.
    fn stop(&self) {
        let items = match self.queue.lock() {
            Ok(mut q) => {
                q.stopped = true;
                q.bytes = 0;
                std::mem::take(&mut q.items)
            }
            Err(_) => return,
        };
        drop(items);
        self.room.notify_waiters();
    }
}

/// The sending side of a connection, used by the router (non-blocking) and
/// by the protocol session (for control frames).
pub struct ConnTx {
    shared: Arc<Shared>,
}

impl Clone for ConnTx {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        ConnTx {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for ConnTx {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = match self.shared.queue.lock() {
                Ok(mut q) => {
                    q.closed = true;
                    q.waker.take()
                }
                Err(_) => None,
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl ConnTx {
    /// The protocol label of the connection.
    pub fn protocol(&self) -> &'static str {
        self.shared.protocol
    }

    /// Identifies the connection: equal for every sender of one connection.
    pub fn key(&self) -> usize {
        Arc::as_ptr(&self.shared) as *const () as usize
    }

    /// Queue an event frame without waiting. A full queue marks the client
    /// slow (its writer then disconnects it); returns false when the frame
    /// was not queued.
    pub fn push(&self, frame: WsFrame, stamp: Option<Stamp>, about: Option<Supersede>) -> bool {
        if self.shared.is_slow.load(Ordering::Relaxed) {
            return false;
        }
        let (queued, waker) = {
            let Ok(mut q) = self.shared.queue.lock() else {
                return false;
            };
            if q.stopped || q.closed {
                return false;
            }
            let queued = self.shared.admit_event(&mut q, frame, stamp, about);
            (queued, if queued { q.waker.take() } else { None })
        };
        if !queued {
            self.shared.cut_off(Cutoff::Slow);
        }
        // Woken outside the lock, and only on the empty -> non-empty edge.
        if let Some(waker) = waker {
            waker.wake();
        }
        queued
    }

    /// Queue an event frame of a resume replay, waiting while the queue is
    /// full (frames or bytes): a replay is paced by how fast the client
    /// reads, never taken for a slow client. False once the writer stopped.
    pub async fn push_paced(&self, frame: WsFrame, stamp: Option<Stamp>) -> bool {
        self.shared
            .enqueue_waiting(Outbound::Frame { frame, stamp }, true)
            .await
    }

    /// Queue several event frames, in order, with one lock and at most one
    /// wake-up; like [`push`](Self::push) for each, stopping at the first
    /// that does not fit. Returns whether all were queued. `frames` is left
    /// empty (callers reuse it).
    pub fn push_all(&self, frames: &mut Vec<Delivery>) -> bool {
        if self.shared.is_slow.load(Ordering::Relaxed) {
            frames.clear();
            return false;
        }
        let (all, waker) = {
            let Ok(mut q) = self.shared.queue.lock() else {
                frames.clear();
                return false;
            };
            if q.stopped {
                frames.clear();
                return false;
            }
            let mut all = true;
            for (frame, stamp, about) in frames.drain(..) {
                if !self.shared.admit_event(&mut q, frame, stamp, about) {
                    all = false;
                    break;
                }
            }
            frames.clear();
            (all, q.waker.take())
        };
        if !all {
            self.shared.cut_off(Cutoff::Slow);
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        all
    }

    /// Queue a control item (the session's answers to the client's own
    /// commands), waiting while the byte bound is reached: the session reads
    /// nothing more from that client meanwhile. False once the writer has
    /// stopped (closed, cut off, or its writes timed out).
    pub async fn send(&self, item: Outbound) -> bool {
        self.shared.enqueue_waiting(item, false).await
    }

    /// A handle for frames the server sends on its own schedule (see
    /// [`Beacon`]).
    pub fn beacon(&self) -> Beacon {
        Beacon {
            shared: self.shared.clone(),
        }
    }

    /// A handle for the WebSocket library's own replies that does not keep
    /// the writer alive (the writer ends when the session's senders are gone).
    fn replies(&self) -> impl Fn(Bytes) + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |bytes| {
            // These cannot wait (the library writes them while reading):
            // past the byte bound the client is cut off.
            if shared.enqueue(Outbound::Raw(bytes), Admit::Bytes).is_err() {
                shared.cut_off(Cutoff::OutboundBytes);
            }
        }
    }
}

/// Queues frames the server sends on its own schedule, not in answer to
/// anything (ActionCable's pings, from one timer for every connection). It
/// does not keep the writer alive: once the session's senders are gone,
/// what it sends is dropped.
#[derive(Clone)]
pub struct Beacon {
    shared: Arc<Shared>,
}

impl Beacon {
    /// Queue these whole WebSocket frame bytes (shared with every other
    /// connection). They cannot wait: a client whose queue is at its byte
    /// bound is cut off, as for the WebSocket library's replies.
    pub fn send(&self, frame: Bytes) {
        if self
            .shared
            .enqueue(Outbound::Raw(frame), Admit::Bytes)
            .is_err()
        {
            self.shared.cut_off(Cutoff::OutboundBytes);
        }
    }
}

thread_local! {
    /// The consumer's buffer for one recipient's frames of a dispatch batch
    /// (reused, so a batch costs no allocation per recipient).
    static SCRATCH: std::cell::RefCell<Vec<Delivery>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Collect a recipient's frames with `fill` into a reused buffer and queue
/// them on `conn` with [`ConnTx::push_all`].
pub fn push_batch(conn: &ConnTx, fill: impl FnOnce(&mut Vec<Delivery>)) {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut frames) => {
            fill(&mut frames);
            if !frames.is_empty() {
                conn.push_all(&mut frames);
            }
        }
        // Re-entered (not expected): a fresh buffer works the same.
        Err(_) => {
            let mut frames = Vec::new();
            fill(&mut frames);
            conn.push_all(&mut frames);
        }
    });
}

/// Create a connection's queue: the sender, and the writer to run.
pub fn channel(limits: &ConnLimits, protocol: &'static str, metrics: &Metrics) -> (ConnTx, Writer) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        senders: AtomicUsize::new(1),
        capacity: limits.frames.max(1),
        max_bytes: limits.bytes.max(1),
        slow: Notify::new(),
        is_slow: AtomicBool::new(false),
        cutoff: Mutex::new(None),
        room: Notify::new(),
        dropped: metrics.frames_dropped.with_label_values(&[protocol]),
        conflated: metrics.frames_conflated.with_label_values(&[protocol]),
        slow_disconnects: metrics.slow_disconnects.with_label_values(&[protocol]),
        disconnects: metrics.outbound_disconnects.clone(),
        protocol,
    });
    (
        ConnTx {
            shared: shared.clone(),
        },
        Writer {
            shared,
            write_timeout: limits.write_timeout,
            sent: metrics.frames_sent.with_label_values(&[protocol]),
            delivery_latency: metrics.delivery_latency.clone(),
            gateway_latency: metrics.gateway_latency.clone(),
            slowest: metrics.slowest_delivery.clone(),
            deflate: None,
            deflated: metrics.deflated_frames.clone(),
            deflate_bytes: metrics.deflate_bytes.clone(),
        },
    )
}

/// A connection's plumbing, as every protocol session starts it.
pub struct Opened {
    /// The connection's id (unique in this process).
    pub conn_id: u64,
    /// The outbound queue.
    pub tx: ConnTx,
    /// Client messages.
    pub stream: WsStream,
    /// Cancelled when the writer has stopped (socket gone, closed or cut off).
    pub done: CancellationToken,
    /// The writer task.
    pub writer: WriterTask,
}

/// Start a connection on `socket`: its queue (bounded by `limits`), its
/// writer task, and the stream of client messages. `slow_frame` is written
/// to a client cut off by its outbound side. The connection counts in
/// `herald_connections` until its [`WriterTask`] is finished or dropped.
pub fn open(
    socket: WsSocket,
    limits: &ConnLimits,
    protocol: &'static str,
    metrics: &Metrics,
    slow_frame: Option<WsFrame>,
) -> Opened {
    let open = metrics.connections.with_label_values(&[protocol]);
    open.inc();
    let (tx, mut writer) = channel(limits, protocol, metrics);
    writer.deflate = socket.deflate;
    if socket.deflate.is_some() {
        metrics
            .deflate_connections
            .with_label_values(&[protocol])
            .inc();
    }
    let (stream, write) = socket.into_parts(tx.replies(), limits.client_frames_per_second);
    let done = CancellationToken::new();
    let task = tokio::spawn(writer.run(write, slow_frame, done.clone()));
    Opened {
        conn_id: next_conn_id(),
        tx,
        stream,
        done,
        writer: WriterTask { task, open },
    }
}

/// A running writer task; its connection counts as open until this is
/// finished or dropped.
pub struct WriterTask {
    task: JoinHandle<()>,
    open: IntGauge,
}

impl WriterTask {
    /// Wait for the writer to write what is queued once every sender is
    /// gone; a client that stopped reading gets 5 s, then the socket is dropped.
    pub async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for WriterTask {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The writer half: owns the socket's write half.
pub struct Writer {
    shared: Arc<Shared>,
    write_timeout: Duration,
    sent: IntCounter,
    delivery_latency: Histogram,
    gateway_latency: Histogram,
    slowest: Arc<crate::metrics::SlowestDelivery>,
    /// permessage-deflate, when the connection negotiated it.
    deflate: Option<DeflateConfig>,
    deflated: IntCounter,
    deflate_bytes: IntCounterVec,
}

impl Writer {
    /// Write queued frames to `out` until a `Close` item, a closed queue, a
    /// socket error, or the slow-client cut-off (then `slow_frame` is written
    /// if the socket still takes it, and the socket closed with 1008).
    /// `done` is cancelled on return.
    ///
    /// A plain function returning the future, not an `async fn`: an `async
    /// fn` keeps its arguments beside the locals they are moved into, and
    /// the writer's task state is part of every idle connection.
    #[allow(clippy::manual_async_fn)]
    pub fn run<W>(
        self,
        mut out: W,
        slow_frame: Option<WsFrame>,
        done: CancellationToken,
    ) -> impl Future<Output = ()>
    where
        W: AsyncWrite + Unpin,
    {
        async move {
            let mut heartbeat: Option<(tokio::time::Interval, HeartBeatKind)> = None;
            let mut wrote_since_tick = false;
            // Swapped with the queue's buffer on every take: no allocation
            // while idle, and under load the two buffers keep their capacity.
            let mut batch: VecDeque<Outbound> = VecDeque::new();
            // One registration for the connection's life: a fresh
            // `cancelled()`-style future per loop turn was a measurable share of
            // the writer's time under fan-out.
            let shared = self.shared.clone();
            let slow = shared.slow.notified();
            tokio::pin!(slow);
            loop {
                let step = tokio::select! {
                    biased;
                    _ = &mut slow => Step::Slow,
                    more = std::future::poll_fn(|cx| shared.poll_take(cx, &mut batch)) => {
                        if !more {
                            Step::Stop
                        } else {
                            // A client that stops reading blocks this write; the
                            // cut-off must still win, so race it.
                            // Boxed: a task is as large as its largest await
                            // point for its whole life, and an idle writer
                            // should not carry a write's state (one allocation
                            // per batch written, next to its system call).
                            tokio::select! {
                                biased;
                                _ = &mut slow => Step::Slow,
                                step = Box::pin(self.write_batch(&mut out, &mut batch, &mut heartbeat)) => step,
                            }
                        }
                    }
                    _ = tick(&mut heartbeat) => {
                        let frame = match &heartbeat {
                            Some((_, HeartBeatKind::WhenIdle(frame))) if !wrote_since_tick => Some(frame.clone()),
                            _ => None,
                        };
                        let step = match frame {
                            Some(frame) => match Box::pin(write_frames(&mut out, &[&frame], self.write_timeout)).await {
                                Ok(()) => Step::Continue,
                                Err(e) => self.failed(&e),
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
                        let reason = match self.shared.cutoff_reason() {
                            Cutoff::Slow => "slow consumer",
                            Cutoff::OutboundBytes => "outbound limit exceeded",
                            Cutoff::WriteTimeout => "write timeout",
                        };
                        let close = WsFrame::close(1008, reason);
                        let goodbye: Vec<&WsFrame> = slow_frame.iter().chain([&close]).collect();
                        let _ = Box::pin(write_frames(&mut out, &goodbye, Duration::from_secs(1)))
                            .await;
                        break;
                    }
                }
            }
            self.shared.stop();
            let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), out.shutdown())).await;
            done.cancel();
        }
    }

    async fn write_batch<W>(
        &self,
        out: &mut W,
        batch: &mut VecDeque<Outbound>,
        heartbeat: &mut Option<(tokio::time::Interval, HeartBeatKind)>,
    ) -> Step
    where
        W: AsyncWrite + Unpin,
    {
        // Control items first: heart-beat changes apply now, and a close
        // ends the batch (what follows it is never written).
        let mut upto = batch.len();
        let mut close = None;
        for (i, item) in batch.iter().enumerate() {
            match item {
                Outbound::HeartBeat { every, kind } => {
                    // An idle beat goes out when a whole tick passed without
                    // a write. Ticking at half the interval keeps every gap
                    // between writes within the interval itself (ticking at
                    // the interval let a write just after a tick push the
                    // next beat to twice the interval, the limit at which
                    // @stomp/stompjs declares the server dead; the first
                    // beat after CONNECTED came at 2x).
                    let period = match kind {
                        HeartBeatKind::WhenIdle(_) => (*every / 2).max(Duration::from_millis(1)),
                    };
                    let mut iv =
                        tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    *heartbeat = Some((iv, kind.clone()));
                }
                Outbound::Close { code, reason } => {
                    close = Some(WsFrame::close(*code, reason));
                    upto = i;
                    break;
                }
                Outbound::Frame { .. } | Outbound::Superseding { .. } | Outbound::Raw(_) => {}
            }
        }
        // The queued buffers are written in place: no copy, no extra
        // reference count traffic on frames shared with other connections.
        let written = {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(upto + 1);
            for item in batch.iter().take(upto) {
                match item {
                    Outbound::Frame { frame, .. } | Outbound::Superseding { frame, .. } => slices
                        .push(IoSlice::new(frame.wire(
                            self.deflate.as_ref(),
                            |plain, packed| {
                                self.deflated.inc();
                                self.deflate_bytes
                                    .with_label_values(&["in"])
                                    .inc_by(plain as u64);
                                self.deflate_bytes
                                    .with_label_values(&["out"])
                                    .inc_by(packed as u64);
                            },
                        ))),
                    Outbound::Raw(bytes) => slices.push(IoSlice::new(bytes)),
                    Outbound::HeartBeat { .. } | Outbound::Close { .. } => {}
                }
            }
            if let Some(close) = &close {
                slices.push(IoSlice::new(close.bytes()));
            }
            write_slices(out, &mut slices, self.write_timeout).await
        };
        if let Err(e) = written {
            return self.failed(&e);
        }
        self.shared
            .written(batch.iter().take(upto).map(Outbound::len).sum());
        self.record(batch.iter().take(upto));
        batch.clear();
        // A connection that gets a few frames now and then should not keep
        // buffers for them (idle memory is the budget that matters at 50k
        // connections); a busy one keeps its buffer rather than churn.
        if batch.capacity() <= 8 {
            *batch = VecDeque::new();
        }
        if close.is_some() {
            return Step::Stop;
        }
        Step::Wrote
    }
}

impl Writer {
    /// A write failed: a timed-out one is counted as a cut-off.
    fn failed(&self, e: &io::Error) -> Step {
        if e.kind() == io::ErrorKind::TimedOut && !self.shared.is_slow.swap(true, Ordering::Relaxed)
        {
            self.shared
                .disconnects
                .with_label_values(&[self.shared.protocol, Cutoff::WriteTimeout.as_str()])
                .inc();
        }
        Step::Stop
    }

    /// Count written frames and observe their latencies. A busy writer
    /// writes many frames at once: those are summed locally and added to the
    /// shared histograms once, instead of a few contended atomic updates per
    /// frame from every writer.
    fn record<'a>(&self, written: impl Iterator<Item = &'a Outbound> + Clone) {
        let stamps = written.filter_map(|item| match item {
            Outbound::Frame { stamp, .. } | Outbound::Superseding { stamp, .. } => Some(*stamp),
            _ => None,
        });
        self.sent.inc_by(stamps.clone().count() as u64);
        let stamps = stamps.flatten();
        let (now, now_ms) = (Instant::now(), now_ms());
        let gateway = |s: &Stamp| now.saturating_duration_since(s.received).as_secs_f64();
        let delivery = |s: &Stamp| s.kafka_ts_ms.map(|ts| (now_ms - ts).max(0) as f64 / 1000.0);
        // The batch's slowest traced delivery, for the exemplar.
        let mut slowest = (-1f64, [0u8; 16]);
        let mut observe = |s: &Stamp, d: f64| {
            if d > slowest.0 && s.trace_id != [0; 16] {
                slowest = (d, s.trace_id);
            }
        };
        if stamps.clone().nth(3).is_none() {
            for s in stamps {
                self.gateway_latency.observe(gateway(&s));
                if let Some(d) = delivery(&s) {
                    self.delivery_latency.observe(d);
                    observe(&s, d);
                }
            }
        } else {
            let (g, d) = (self.gateway_latency.local(), self.delivery_latency.local());
            for s in stamps {
                g.observe(gateway(&s));
                if let Some(v) = delivery(&s) {
                    d.observe(v);
                    observe(&s, v);
                }
            }
            g.flush();
            d.flush();
        }
        if slowest.1 != [0; 16] {
            let (seconds, trace_id) = slowest;
            self.slowest.offer(seconds, trace_id);
        }
    }
}

/// Write every slice, with as few system calls as the socket allows; a
/// write that makes no progress within `timeout` fails with `TimedOut`.
async fn write_slices<W>(
    out: &mut W,
    slices: &mut [IoSlice<'_>],
    timeout: Duration,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
    let mut rest = slices;
    while !rest.is_empty() {
        let n = tokio::time::timeout(timeout, out.write_vectored(rest))
            .await
            .map_err(|_| timed_out())??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    tokio::time::timeout(timeout, out.flush())
        .await
        .map_err(|_| timed_out())?
}

/// Write whole frames (heart-beats, goodbyes).
async fn write_frames<W>(out: &mut W, frames: &[&WsFrame], timeout: Duration) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f.bytes())).collect();
    write_slices(out, &mut slices, timeout).await
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

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Read what the writer wrote so far (the duplex end never blocks it).
    pub(crate) async fn drain(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), client.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// An idle connection's writer task holds only its loop's state: the
    /// writes are boxed while they run (the state of a write with its
    /// timeout is several hundred bytes, paid by every idle connection
    /// otherwise).
    #[tokio::test]
    async fn an_idle_writer_task_is_small() {
        let metrics = Metrics::new();
        let (_tx, writer) = channel(&ConnLimits::default(), "stomp", &metrics);
        let (server, _client) = tokio::io::duplex(64);
        let run = writer.run(server, None, CancellationToken::new());
        let size = std::mem::size_of_val(&run);
        assert!(size <= 512, "the writer's future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_beats_keep_every_gap_within_the_interval() {
        let metrics = Metrics::new();
        let (tx, writer) = channel(&ConnLimits::default(), "stomp", &metrics);
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let done = CancellationToken::new();
        let task = tokio::spawn(writer.run(server, None, done.clone()));
        let beat = WsFrame::text("\n");
        let every = Duration::from_secs(10);
        // CONNECTED, then the heart-beat set up, in one batch (as STOMP does).
        assert!(tx.send(Outbound::text("CONNECTED")).await);
        assert!(
            tx.send(Outbound::HeartBeat {
                every,
                kind: HeartBeatKind::WhenIdle(beat.clone()),
            })
            .await
        );
        let start = tokio::time::Instant::now();
        let mut last_write = start;
        let mut longest = Duration::ZERO;
        // 60 s of virtual time in 100 ms steps; a frame of data at 10.1 s
        // (just after a tick, the worst case before).
        let mut sent_data = false;
        while start.elapsed() < Duration::from_secs(60) {
            tokio::time::advance(Duration::from_millis(100)).await;
            if !sent_data && start.elapsed() >= Duration::from_millis(10_100) {
                assert!(tx.send(Outbound::text("MESSAGE")).await);
                sent_data = true;
            }
            if !drain(&mut client).await.is_empty() {
                longest = longest.max(last_write.elapsed());
                last_write = tokio::time::Instant::now();
            }
        }
        // (Measured in 100 ms steps.)
        assert!(
            longest <= every + Duration::from_millis(100),
            "a gap of {longest:?} between writes, over the {every:?} interval"
        );
        done.cancel();
        drop(tx);
        let _ = task.await;
    }

    fn about(lane: u64, subject: &str) -> Option<Supersede> {
        Some(Supersede {
            lane,
            subject: Arc::from(subject),
        })
    }

    /// The texts queued and not yet taken by a writer.
    fn queued(tx: &ConnTx) -> Vec<String> {
        let q = tx.shared.queue.lock().expect("queue");
        q.items
            .iter()
            .map(|item| match item {
                Outbound::Frame { frame, .. } | Outbound::Superseding { frame, .. } => {
                    String::from_utf8_lossy(&frame.bytes()[2..]).into_owned()
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_superseding_frame_replaces_the_older_one_about_the_same_subject_and_lane() {
        let metrics = Metrics::new();
        let (tx, _writer) = channel(&ConnLimits::default(), "stomp", &metrics);
        let f = |t: &str| WsFrame::text(t);
        assert!(tx.push(f("a1"), None, about(1, "a")));
        assert!(tx.push(f("m1"), None, None));
        assert!(tx.push(f("b1"), None, about(1, "b")));
        assert!(tx.push(f("a1 lane 2"), None, about(2, "a")));
        assert!(tx.push(f("a2"), None, about(1, "a")));
        let mut batch = vec![
            (f("m2"), None, None),
            (f("b2"), None, about(1, "b")),
            (f("a3"), None, about(1, "a")),
        ];
        assert!(tx.push_all(&mut batch));
        // The latest per (lane, subject), each at its latest place; plain
        // frames all kept, in order.
        assert_eq!(queued(&tx), ["m1", "a1 lane 2", "m2", "b2", "a3"]);
        let conflated = metrics.frames_conflated.with_label_values(&["stomp"]).get();
        assert_eq!(conflated, 3);
        // The byte count follows: only what is queued is counted.
        let bytes = tx.shared.queue.lock().expect("queue").bytes;
        let expected: usize = ["m1", "a1 lane 2", "m2", "b2", "a3"]
            .iter()
            .map(|t| f(t).bytes().len())
            .sum();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_flood_of_superseding_frames_never_fills_the_queue_but_plain_ones_do() {
        let metrics = Metrics::new();
        let limits = ConnLimits {
            frames: 16,
            ..ConnLimits::default()
        };
        let (tx, _writer) = channel(&limits, "stomp", &metrics);
        // 10 subjects, 1,000 updates each, nobody writing: still connected,
        // and the queue holds the latest count of each subject.
        for n in 0..1000 {
            for s in 0..10 {
                let frame = WsFrame::text(&format!("{s}={n}"));
                assert!(tx.push(frame, None, about(7, &s.to_string())), "{s}={n}");
            }
        }
        let expected: Vec<String> = (0..10).map(|s| format!("{s}=999")).collect();
        assert_eq!(queued(&tx), expected);
        assert!(!tx.shared.is_slow.load(Ordering::Relaxed));
        // Plain frames past the capacity cut the client off as before.
        let mut pushed = 0;
        while tx.push(WsFrame::text("m"), None, None) {
            pushed += 1;
            assert!(pushed <= 16, "the frame bound holds");
        }
        assert_eq!(pushed, 6);
        assert!(tx.shared.is_slow.load(Ordering::Relaxed));
    }
}
