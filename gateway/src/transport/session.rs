//! The session skeleton the three protocols share.
//!
//! [`start`] and [`Serving::run`] take one upgraded WebSocket through the same steps whatever the
//! protocol: open the connection (its bounded queue, writer task and paced
//! reader, see [`connection`]), build the protocol's
//! session around a [`Conn`], run it, answer the client's close, then
//! release what the session holds in shared tables and let the writer finish.
//!
//! The release runs exactly once on every way out: the session returning,
//! a panic in it, or the serving task being dropped (cancelled). A session
//! that forgot to unregister would leave router entries, revocation watches
//! and connection slots behind, so this is the one place it happens.
//!
//! What every session waits for besides its client (the writer gone, the
//! drain moment, a revoked or expired credential) is one future,
//! [`Conn::interrupted`]; each protocol only says how it tells its client.

use std::{future::Future, pin::Pin, sync::Mutex, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    transport::{
        connection::{self, ConnLimits, ConnTx, Opened, Outbound},
        ws::{WsFrame, WsSocket, WsStream},
    },
};

/// Resolves once a credential expiring at `expires_at` (unix seconds) has
/// expired; never without an expiry. Client-supplied values cannot
/// overflow the arithmetic (a far-future `exp` just never fires).
pub async fn expired(expires_at: Option<i64>) {
    // Without a read timeout the deadline is the expiry alone.
    after(deadline(expires_at, None)).await;
}

/// Box a rarely taken step of a session (a handshake, an error path, a
/// command) before awaiting it.
///
/// A task is as large as its largest await point, for its whole life: an
/// idle connection whose read loop could await an error reply inline would
/// carry that reply's state, hundreds of bytes, while it waits for its next
/// message. Boxed, the step's state is allocated only while it runs. See
/// "Idle memory" in docs/benchmarks.md for what this saves per connection.
pub fn cold<F: Future>(step: F) -> Pin<Box<F>> {
    Box::pin(step)
}

/// What a protocol supplies to [`start`].
pub trait Protocol: Send {
    /// Handshake, then the read loop, until the session ends.
    fn run(&mut self, stream: &mut WsStream) -> impl Future<Output = ()> + Send;

    /// Release what the session holds outside itself: router entries,
    /// revocation watches, connection slots, gauges. Called exactly once.
    fn release(&mut self);
}

/// A connection's moment of the drain window: `delay` after the drain
/// begins (`shutdown` cancelled). Only a token and a delay until then; the
/// timer is allocated when the drain begins (an idle connection waiting on
/// a boxed future of both was 160 bytes).
pub struct DrainMoment {
    shutdown: CancellationToken,
    delay: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DrainMoment {
    /// `delay` after `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken, delay: Duration) -> Self {
        DrainMoment {
            shutdown,
            delay,
            timer: None,
        }
    }

    /// Resolves at the moment. Cancel-safe: once the drain began, the
    /// timer set then is kept, so a later call waits for the same moment.
    pub async fn reached(&mut self) {
        if self.timer.is_none() {
            self.shutdown.cancelled().await;
            self.timer = Some(Box::pin(tokio::time::sleep(self.delay)));
        }
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().await;
        }
    }
}

/// Why a session must stop, whatever its client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The writer is gone (socket closed, cut off): nothing more to say.
    Gone,
    /// This connection's moment of the drain window: tell it to reconnect.
    Drain,
    /// The opaque token in use was revoked or changed.
    Revoked,
    /// The credential in use expired.
    Expired,
    /// Nothing arrived from the client within the read timeout given to
    /// [`Conn::interrupted`].
    Idle,
}

/// When the session's one timer fires, for the credential's expiry
/// (`expires_at`, unix seconds) and the read timeout (`idle`, from now),
/// whichever comes first, and what it then means: [`Interrupt::Expired`]
/// (preferred on a tie) or [`Interrupt::Idle`]. `None` without either.
fn deadline(expires_at: Option<i64>, idle: Option<Duration>) -> Option<(Duration, Interrupt)> {
    let to_expiry = expires_at.map(|exp| {
        let ms = exp
            .saturating_mul(1000)
            .saturating_sub(crate::core::clock::now_ms())
            .max(0);
        Duration::from_millis(ms as u64)
    });
    let wait = match (to_expiry, idle) {
        (None, None) => return None,
        (Some(e), None) => e,
        (None, Some(i)) => i,
        (Some(e), Some(i)) => e.min(i),
    };
    let why = if to_expiry.is_some_and(|e| e <= wait) {
        Interrupt::Expired
    } else {
        Interrupt::Idle
    };
    Some((wait, why))
}

/// Wait for `token`, if any, to be cancelled; never without one. Boxed
/// while waiting: most sessions have no such token (JWTs are not revoked),
/// and the wait would otherwise be part of every idle connection's state.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => Box::pin(token.cancelled()).await,
        None => std::future::pending().await,
    }
}

/// Sleep `wait`, if any, then say `why`; never without a wait. The timer
/// is boxed, made only when there is a deadline (a timer is over a
/// hundred bytes).
async fn after(deadline: Option<(Duration, Interrupt)>) -> Interrupt {
    match deadline {
        Some((wait, why)) => {
            Box::pin(tokio::time::sleep(wait)).await;
            why
        }
        None => std::future::pending().await,
    }
}

/// A connection as its session sees it: id, outbound queue, and the
/// interrupts every protocol obeys.
pub struct Conn {
    /// Unique per process.
    pub id: u64,
    /// The outbound queue.
    pub tx: ConnTx,
    /// Cancelled once the writer is gone.
    pub done: CancellationToken,
    protocol: &'static str,
    auth_failures: prometheus::IntCounterVec,
    /// Only ever polled through `&mut self` (`Mutex::get_mut`, no locking):
    /// the mutex just makes `Conn` shareable while a reply is queued.
    drain: Mutex<DrainMoment>,
}

impl Conn {
    /// Queue `item`, waiting for room in the connection's byte bound; false
    /// when the connection is gone.
    pub async fn emit(&self, item: Outbound) -> bool {
        tokio::select! {
            biased;
            _ = self.done.cancelled() => false,
            ok = self.tx.send(item) => ok,
        }
    }

    /// Queue a text frame (see [`emit`](Self::emit)).
    pub async fn emit_text(&self, text: &str) -> bool {
        self.emit(Outbound::text(text)).await
    }

    /// Say `last` to the client, then close with `code` and `reason`: how
    /// every protocol ends a session it refuses, redirects or drains.
    pub async fn close_after(&self, last: WsFrame, code: u16, reason: &'static str) {
        self.emit(Outbound::Frame {
            frame: last,
            stamp: None,
        })
        .await;
        self.emit(Outbound::Close { code, reason }).await;
    }

    /// Resolves with the first interrupt: the writer gone, the drain moment,
    /// `revoked` (if any) cancelled, `expires_at` (unix seconds) passed, or
    /// `idle` (the read timeout, counted from this call) elapsed. Revoked
    /// and expired credentials are counted in `herald_auth_failures_total`.
    /// Cancel-safe: select on it beside the client's next message.
    ///
    /// Part of every idle connection's state, so kept small: a plain
    /// function (an `async fn` keeps its arguments twice), the deadline
    /// worked out before waiting, and the timer and the revocation wait
    /// boxed, made only when there is one.
    pub fn interrupted<'a>(
        &'a mut self,
        revoked: Option<&'a CancellationToken>,
        expires_at: Option<i64>,
        idle: Option<Duration>,
    ) -> impl Future<Output = Interrupt> + Send + 'a {
        let deadline = deadline(expires_at, idle);
        async move {
            let drain = self.drain.get_mut().unwrap_or_else(|e| e.into_inner());
            let interrupt = tokio::select! {
                biased;
                _ = self.done.cancelled() => Interrupt::Gone,
                _ = drain.reached() => Interrupt::Drain,
                _ = cancelled(revoked) => Interrupt::Revoked,
                interrupt = after(deadline) => interrupt,
            };
            let reason = match interrupt {
                Interrupt::Revoked => "revoked",
                Interrupt::Expired => "expired",
                Interrupt::Gone | Interrupt::Drain | Interrupt::Idle => return interrupt,
            };
            self.auth_failures
                .with_label_values(&[self.protocol, reason])
                .inc();
            interrupt
        }
    }
}

/// Runs [`Protocol::release`] when dropped, however the session ended.
struct Released<P: Protocol>(P);

impl<P: Protocol> Drop for Released<P> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Start serving one upgraded WebSocket: open the connection (its queue
/// and writer task), and `build` the protocol's session around its
/// [`Conn`]; `drain` gives the connection's moment of the drain window
/// (given the connection id); `slow_frame` is what a client cut off as slow
/// is sent last. [`Serving::run`] then runs the session.
///
/// Split in two, and not one `async fn`, for idle memory: an `async fn`
/// keeps its arguments (the closures, the references) in its state for as
/// long as it runs, so every idle connection carried them. Done here
/// before the session runs, only the session, its stream and its writer
/// stay.
pub fn start<P: Protocol>(
    socket: WsSocket,
    limits: &ConnLimits,
    protocol: &'static str,
    metrics: &Metrics,
    slow_frame: Option<WsFrame>,
    drain: impl FnOnce(u64) -> DrainMoment,
    build: impl FnOnce(Conn) -> P,
) -> Serving<P> {
    let Opened {
        conn_id,
        tx,
        stream,
        done,
        writer,
    } = connection::open(socket, limits, protocol, metrics, slow_frame);
    let conn = Conn {
        id: conn_id,
        tx,
        done,
        protocol,
        auth_failures: metrics.auth_failures.clone(),
        drain: Mutex::new(drain(conn_id)),
    };
    Serving {
        session: Released(build(conn)),
        stream,
        writer,
    }
}

/// A started session (see [`start`]).
pub struct Serving<P: Protocol> {
    session: Released<P>,
    stream: WsStream,
    writer: connection::WriterTask,
}

impl<P: Protocol> Serving<P> {
    /// Run the session until it ends, release it (also when this future is
    /// dropped or the session panics), then let the writer write what is
    /// queued and finish.
    pub fn run(self) -> impl Future<Output = ()> + Send {
        let Serving {
            mut session,
            mut stream,
            writer,
        } = self;
        async move {
            session.0.run(&mut stream).await;
            // Release, and drop the session's senders: the writer then
            // writes what is queued and ends.
            drop(session);
            drop(stream);
            writer.finish().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn expiry_arithmetic_never_overflows() {
        use futures_util::FutureExt as _;
        // Long past: resolves at once; far future: pending, no panic.
        expired(Some(i64::MIN)).await;
        expired(Some(0)).await;
        assert!(expired(Some(i64::MAX)).now_or_never().is_none());
        assert!(expired(None).now_or_never().is_none());
    }

    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_moment_comes_its_delay_after_the_drain_began_however_often_awaited() {
        use futures_util::FutureExt as _;
        let shutdown = CancellationToken::new();
        let mut moment = DrainMoment::new(shutdown.clone(), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(moment.reached().now_or_never().is_none(), "no drain yet");
        shutdown.cancel();
        let began = tokio::time::Instant::now();
        // Awaited and dropped (as a select beside a client message does)...
        assert!(moment.reached().now_or_never().is_none());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(moment.reached().now_or_never().is_none());
        // ...the moment stays 10 s after the drain began.
        moment.reached().await;
        assert_eq!(began.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn one_timer_serves_the_expiry_and_the_read_timeout() {
        use futures_util::FutureExt as _;
        let now = crate::core::clock::now_ms() / 1000;
        let five = Some(Duration::from_secs(5));
        let at = |expires_at, idle| after(deadline(expires_at, idle));
        assert_eq!(at(Some(now + 3600), five).await, Interrupt::Idle);
        assert_eq!(at(Some(now - 1), five).await, Interrupt::Expired);
        assert_eq!(at(Some(i64::MIN), five).await, Interrupt::Expired);
        assert_eq!(at(None, five).await, Interrupt::Idle);
        assert_eq!(
            at(Some(now + 1), Some(Duration::from_secs(3600))).await,
            Interrupt::Expired
        );
        assert!(at(None, None).now_or_never().is_none());
        assert!(at(Some(i64::MAX), None).now_or_never().is_none());
    }

    /// Every idle connection carries these two futures' state (the select
    /// over its interrupts, and its writer), so their size is a budget:
    /// an `async fn` in place of the plain functions, or an inline timer,
    /// would grow them past it (they were 528 and 496 bytes; see "Idle
    /// memory" in docs/benchmarks.md). Measured in the build under test.
    #[tokio::test]
    async fn an_idle_connections_waits_stay_small() {
        let metrics = Metrics::new();
        let limits = ConnLimits::default();
        let (tx, writer) = connection::channel(&limits, "probe", &metrics);
        let mut conn = Conn {
            id: 1,
            tx,
            done: CancellationToken::new(),
            protocol: "probe",
            auth_failures: metrics.auth_failures.clone(),
            drain: Mutex::new(DrainMoment::new(CancellationToken::new(), Duration::ZERO)),
        };
        let revoked = CancellationToken::new();
        let now = crate::core::clock::now_ms() / 1000;
        let waiting =
            conn.interrupted(Some(&revoked), Some(now + 60), Some(Duration::from_secs(5)));
        let interrupts = std::mem::size_of_val(&waiting);
        drop(waiting);
        let writing = writer.run(tokio::io::sink(), None, CancellationToken::new());
        let writer = std::mem::size_of_val(&writing);
        println!("interrupts {interrupts} B, writer {writer} B");
        assert!(
            interrupts <= 400,
            "the select over interrupts is {interrupts} B"
        );
        assert!(writer <= 400, "the writer's future is {writer} B");
    }

    /// A session that registers on start and, as told, ends, panics or hangs.
    struct Probe {
        registered: Arc<AtomicUsize>,
        released: Arc<AtomicUsize>,
        end: &'static str,
    }

    impl Protocol for Probe {
        async fn run(&mut self, _: &mut WsStream) {
            self.registered.fetch_add(1, Ordering::SeqCst);
            match self.end {
                "panic" => panic!("a session bug"),
                "hang" => std::future::pending().await,
                _ => {}
            }
        }

        fn release(&mut self) {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn run(end: &'static str) -> (usize, usize, i64) {
        let metrics = Metrics::new();
        let registered = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let (server, _client) = tokio::io::duplex(4096);
        let socket = WsSocket::from_io(server, None, 1 << 16);
        let (r, d) = (registered.clone(), released.clone());
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            start(
                socket,
                &ConnLimits::default(),
                "probe",
                &m,
                None,
                |_| DrainMoment::new(CancellationToken::new(), Duration::ZERO),
                |_conn| Probe {
                    registered: r,
                    released: d,
                    end,
                },
            )
            .run()
            .await
        });
        // Wait until the session has started, then (for a hanging one)
        // cancel the task as a shutdown would.
        while registered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        if end == "hang" {
            task.abort();
        }
        let _ = task.await;
        let open = metrics.connections.with_label_values(&["probe"]).get();
        (
            registered.load(Ordering::SeqCst),
            released.load(Ordering::SeqCst),
            open,
        )
    }

    #[tokio::test]
    async fn release_runs_once_on_return_panic_and_cancellation() {
        for end in ["return", "panic", "hang"] {
            let (registered, released, open) = run(end).await;
            assert_eq!((registered, released), (1, 1), "session that ends by {end}");
            assert_eq!(open, 0, "connection gauge after {end}");
        }
    }
}
