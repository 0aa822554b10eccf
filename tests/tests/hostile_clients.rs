//! Hostile clients cost a bounded amount: a client that writes but never
//! reads, on every endpoint and with every kind of reply, is paced and then
//! closed; the gateway's memory stays under its bound; a healthy client on
//! the same gateway receives every event.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::SinkExt;
use herald_tests::{
    GatewayProcess, Stack,
    numbered::{self, Log, STOMP_TYPES},
    stomp::RawStomp,
    token,
};
use serde_json::json;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

const ACCOUNT: &str = "61";

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// A WebSocket client whose socket has a tiny receive buffer and that never
/// reads: whatever the server sends stays on the server's side.
async fn never_reading(
    url: &str,
    protocol: &str,
) -> anyhow::Result<WebSocketStream<tokio::net::TcpStream>> {
    let mut req = url.into_client_request()?;
    if !protocol.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol)?);
    }
    let addr = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(addr.parse()?).await?;
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok(ws)
}

/// Send `message()` until the server drops the connection (the send fails);
/// fails after `within`. Returns how many were sent.
async fn send_until_dropped(
    ws: &mut WebSocketStream<tokio::net::TcpStream>,
    within: Duration,
    message: impl Fn(u64) -> Message,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    let mut n = 0;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "still connected after {n} messages"
        );
        match tokio::time::timeout(Duration::from_secs(1), ws.send(message(n))).await {
            Ok(Ok(())) => n += 1,
            Ok(Err(_)) => return Ok(n),
            // Blocked: our send buffer is full because the server stopped
            // reading us; keep waiting for it to let go.
            Err(_) => {}
        }
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_paced_then_closed_and_cost_a_bounded_amount()
-> anyhow::Result<()> {
    let stack = Arc::new(Stack::start().await?);
    let mut args = stack.gateway_args();
    // Subscribe pacing off: here the replies' bound is what is tested (the
    // subscribe-rate and anonymous-socket limits have their own test).
    args.extend(
        [
            "--write-timeout-secs",
            "2",
            "--max-subscribes-per-second",
            "0",
        ]
        .map(String::from),
    );
    let pod = GatewayProcess::start(args).await?;
    let pid = pod.child.id().unwrap_or_default();
    let tok = token(ACCOUNT, "7", "agent");

    // A healthy client, and a stream of events for it throughout.
    let mut healthy = RawStomp::connect(&pod.ws_url("/ws.communication"), &tok).await?;
    healthy.subscribe("s", "/events").await?;
    const TOTAL: u64 = 300;
    let publisher = {
        let stack = stack.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                stack.produce(&[numbered::event(ACCOUNT, i)]).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };
    let baseline = rss(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // STOMP: receipts it never reads.
    let stomp = {
        let url = pod.ws_url("/ws.communication");
        let tok = tok.clone();
        tokio::spawn(async move {
            let mut ws = never_reading(&url, "v12.stomp").await?;
            ws.send(Message::text(format!(
                "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {tok}\n\n\0"
            )))
            .await?;
            let pad = "x".repeat(4000);
            send_until_dropped(&mut ws, Duration::from_secs(60), |n| {
                Message::text(format!("ACK\nid:m-{n}\nreceipt:{n}-{pad}\n\n\0"))
            })
            .await
        })
    };
    // ActionCable, no credential at all: rejected subscriptions it never reads.
    let cable = {
        let url = pod.ws_url("/cable");
        tokio::spawn(async move {
            let mut ws = never_reading(&url, "actioncable-v1-json").await?;
            let pad = "y".repeat(4000);
            send_until_dropped(&mut ws, Duration::from_secs(60), |n| {
                let ident =
                    json!({"channel": "RoomChannel", "pubsub_token": format!("bad-{n}-{pad}")})
                        .to_string();
                Message::text(json!({"command": "subscribe", "identifier": ident}).to_string())
            })
            .await
        })
    };
    // TypeID: large pings echoed back, never read.
    let typeid = {
        let url = pod.ws_url("/notifications");
        let tok = tok.clone();
        tokio::spawn(async move {
            let mut ws = never_reading(&url, "").await?;
            ws.send(Message::text(
                herald_tests::typeid::join(&tok, 7, "7.0.30").to_string(),
            ))
            .await?;
            let pad = "z".repeat(30_000);
            send_until_dropped(&mut ws, Duration::from_secs(60), |_| {
                Message::text(
                    json!({"TypeID": -476754606, "Body": {"Signal": true, "Pad": pad}}).to_string(),
                )
            })
            .await
        })
    };
    // WebSocket pings: the library's pongs cannot wait.
    let pings = {
        let url = pod.ws_url("/ws.communication");
        let tok = tok.clone();
        tokio::spawn(async move {
            let mut ws = never_reading(&url, "v12.stomp").await?;
            ws.send(Message::text(format!(
                "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {tok}\n\n\0"
            )))
            .await?;
            send_until_dropped(&mut ws, Duration::from_secs(60), |_| {
                Message::Ping(vec![7u8; 125].into())
            })
            .await
        })
    };
    let mut sent = Vec::new();
    for (name, task) in [
        ("stomp", stomp),
        ("cable", cable),
        ("typeid", typeid),
        ("pings", pings),
    ] {
        let n = task.await??;
        sent.push(format!("{name}: {n} messages before the gateway let go"));
    }

    // The healthy client got everything, in order.
    let mut log = Log::default();
    let want = numbered::count(&numbered::expected(0..TOTAL, STOMP_TYPES));
    while numbered::count(&log.seen()) < want {
        numbered::read_stomp(&mut healthy, &mut log, Duration::from_secs(30)).await?;
    }
    publisher.await??;
    assert_eq!(log.seen(), numbered::expected(0..TOTAL, STOMP_TYPES));
    sampler.abort();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    let metrics = reqwest::get(format!("http://{}/metrics", pod.ops_addr))
        .await?
        .text()
        .await?;
    eprintln!(
        "hostile: {}; gateway RSS {} MiB -> peak {} MiB (+{} KiB)",
        sent.join("; "),
        baseline >> 20,
        peak.load(Ordering::Relaxed) >> 20,
        grew >> 10
    );
    // Four offenders, each bounded by --max-outbound-bytes (1 MiB) plus
    // read buffers: far below this generous bound.
    assert!(grew < 64 << 20, "gateway RSS grew by {grew} bytes");
    // Every offender was cut off by its outbound side (a write timeout, or
    // the ping flood's pongs past the byte bound), and counted.
    let cut: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("herald_outbound_disconnects_total{"))
        .collect();
    eprintln!("hostile: {}", cut.join("; "));
    for protocol in ["stomp", "actioncable", "typeid"] {
        let n = metric(
            &metrics,
            &format!("herald_outbound_disconnects_total{{protocol=\"{protocol}\""),
        );
        assert!(n >= 1.0, "{protocol} offender cut off: {cut:?}");
    }
    assert!(
        metric(
            &metrics,
            "herald_outbound_disconnects_total{protocol=\"stomp\""
        ) >= 2.0,
        "both STOMP offenders: {cut:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_ten_times_the_queue_is_paced_not_cut_off() -> anyhow::Result<()> {
    // 10,000 missed events against a queue of 1,024 frames, through a
    // receive buffer the kernel cannot hide them in; read back from Kafka
    // (no history buffer) and from the buffer.
    for buffer in ["0", "20000"] {
        let stack = Stack::start_with(herald_tests::StackOptions {
            gateway_args: [
                "--history-buffer-events",
                buffer,
                "--resume-max-events",
                "20000",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
        .await?;
        let url = stack.ws_url("/ws.communication");
        let tok = token(ACCOUNT, "7", "agent");
        // An idle client of the account makes the pod decode its records
        // (so the history buffer holds them).
        let mut anchor = RawStomp::connect(&url, &tok).await?;
        anchor.subscribe("a", "/queue/nothing").await.ok();
        let mut first = RawStomp::connect(&url, &tok).await?;
        first.subscribe("s", "/events").await?;
        let mut log = Log::default();
        stack.produce(&[numbered::event(ACCOUNT, 2)]).await?;
        while log.arrivals.is_empty() {
            numbered::read_stomp(&mut first, &mut log, Duration::from_secs(30)).await?;
        }
        let position = log.arrivals[0].position.clone().unwrap_or_default();
        drop(first);

        // Tag events only: one stream, 10,000 records past the position.
        const MISSED: u64 = 10_000;
        let missed: Vec<_> = (1..=MISSED)
            .map(|k| numbered::event(ACCOUNT, 2 + 3 * k))
            .collect();
        stack.produce(&missed).await?;
        let mut back = RawStomp::connect_small_buffer(&url, &tok, 4096).await?;
        back.send(&format!(
            "SUBSCRIBE\nid:s\ndestination:/events\nx-stream-offset:{position}\n\n\0"
        ))
        .await?;
        let mut replay = Log::default();
        while replay.arrivals.len() < MISSED as usize {
            numbered::read_stomp(&mut back, &mut replay, Duration::from_secs(30)).await?;
        }
        let got: Vec<u64> = replay.arrivals.iter().map(|a| a.n).collect();
        let want: Vec<u64> = (1..=MISSED).map(|k| 2 + 3 * k).collect();
        assert!(
            got == want,
            "buffer {buffer}: every missed event once, in order"
        );
        assert!(replay.gaps.is_empty(), "{:?}", replay.gaps);
        // Still connected: live events follow.
        stack.produce(&[numbered::event(ACCOUNT, 5)]).await?;
        let mut tail = Log::default();
        while tail.arrivals.is_empty() {
            numbered::read_stomp(&mut back, &mut tail, Duration::from_secs(30)).await?;
        }
        assert_eq!(tail.arrivals[0].n, 5);
        let metrics = stack.gateway_metrics().await?;
        assert_eq!(
            metric(&metrics, "herald_outbound_disconnects_total{"),
            0.0,
            "nobody was cut off: {metrics}"
        );
        stack.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_cable_sockets_are_closed_and_subscribe_loops_leak_nothing() -> anyhow::Result<()>
{
    use herald_tests::cable::RawCable;
    let stack = Stack::start_with(herald_tests::StackOptions {
        gateway_args: [
            "--cable-anonymous-timeout-secs",
            "1",
            "--max-subscribes-per-second",
            "1000",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await?;
    let identity = json!({"account_id": ACCOUNT, "kind": "user", "id": "7", "role": "agent"});
    stack.put_identity("loop-tok", &identity).await?;
    let metrics = || async { stack.gateway_metrics().await.unwrap_or_default() };

    // A subscribed socket and an anonymous one, opened together.
    let ident = json!({"channel": "RoomChannel", "pubsub_token": "loop-tok", "account_id": 61, "user_id": 7}).to_string();
    let mut member = RawCable::open(&stack.ws_url("/cable"), "actioncable-v1-json").await?;
    member.expect_welcome().await?;
    // The identity may still be on its way to the gateway.
    herald_tests::retry(Duration::from_secs(20), || async {
        let mut c = RawCable::open(&stack.ws_url("/cable"), "actioncable-v1-json").await?;
        c.expect_welcome().await?;
        c.subscribe_confirmed(&ident).await
    })
    .await?;
    member.subscribe_confirmed(&ident).await?;
    for path in ["/cable", "/stream"] {
        let mut anonymous = RawCable::open(&stack.ws_url(path), "actioncable-v1-json").await?;
        let mut frames = Vec::new();
        while let Some(f) = anonymous.next_within(Duration::from_secs(30)).await? {
            frames.push(f);
        }
        assert_eq!(
            frames.last(),
            Some(&json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false})),
            "{path}: closed for saying nothing: {frames:?}"
        );
    }
    // (`/stream` refuses a socket without a credential at once; `/cable`
    // admits it and waits for a subscription.)
    let m = metrics().await;
    assert!(
        metric(
            &m,
            "herald_limit_rejections_total{limit=\"cable_anonymous\"}"
        ) >= 1.0,
        "{m}"
    );
    // The subscribed socket outlived the timeout and still receives.
    stack
        .publish(&json!({"type": "conversation.created", "account_id": ACCOUNT, "payload": {"id": 1, "inbox_id": 1, "status": "open"}}))
        .await?;
    let f = member.next().await?.context("member closed")?;
    assert_eq!(f["message"]["event"], "conversation.created", "{f}");

    // Subscribe/unsubscribe loops, ActionCable (opaque token) and STOMP.
    let mut looper = RawCable::open(&stack.ws_url("/cable"), "actioncable-v1-json").await?;
    looper.expect_welcome().await?;
    let mut stomp = RawStomp::connect(
        &stack.ws_url("/ws.communication"),
        &token(ACCOUNT, "7", "agent"),
    )
    .await?;
    for n in 0..300 {
        looper.subscribe_confirmed(&ident).await?;
        looper
            .send(&json!({"command": "unsubscribe", "identifier": ident}).to_string())
            .await?;
        stomp.subscribe(&format!("s{n}"), "/events").await?;
        stomp
            .send(&format!("UNSUBSCRIBE\nid:s{n}\nreceipt:u{n}\n\n\0"))
            .await?;
        let f = stomp.next_frame().await?;
        anyhow::ensure!(f.command == "RECEIPT", "{}", f.raw);
    }
    // Only the member's subscription and watch are left.
    herald_tests::wait_until(
        Duration::from_secs(30),
        "the loops' state to be gone",
        || async {
            let m = metrics().await;
            metric(&m, "herald_identity_watchers ") == 1.0
                && metric(&m, "herald_subscriptions{protocol=\"actioncable\"}") == 1.0
                && metric(&m, "herald_subscriptions{protocol=\"stomp\"}") == 0.0
        },
    )
    .await?;
    stack.stop().await;
    Ok(())
}

/// Threads of process `pid`.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_storm_queues_for_kafka_reads_and_live_delivery_goes_on() -> anyhow::Result<()> {
    const CLIENTS: usize = 1000;
    let stack = Arc::new(Stack::start().await?);
    let mut args = stack.gateway_args();
    // Everything a resuming client missed is read back from Kafka.
    args.extend(
        [
            "--history-buffer-events",
            "0",
            "--max-connections-per-ip",
            "0",
        ]
        .map(String::from),
    );
    let pod = GatewayProcess::start(args).await?;
    let pid = pod.child.id().unwrap_or_default();
    let url = pod.ws_url("/ws.communication");
    let tok = token(ACCOUNT, "7", "agent");

    // Forty tag events; everyone resumes from the first.
    let missed: Vec<_> = (0..40)
        .map(|k| numbered::event(ACCOUNT, 2 + 3 * k))
        .collect();
    let positions = stack.produce(&missed).await?;
    let (topic, partition, offset) = positions[0].clone();
    let position = format!("{topic}:{partition}:{offset}");

    let mut live = RawStomp::connect(&url, &tok).await?;
    live.subscribe("s", "/events").await?;
    let baseline = threads(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(threads(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Connect everyone first, then resume all at once.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(RawStomp::connect(&url, &tok).await?);
    }
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for mut c in clients {
        let start = start.clone();
        let position = position.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            c.send(&format!(
                "SUBSCRIBE\nid:s\ndestination:/events\nx-stream-offset:{position}\n\n\0"
            ))
            .await?;
            let mut log = Log::default();
            while log.arrivals.len() < 39 {
                numbered::read_stomp(&mut c, &mut log, Duration::from_secs(120)).await?;
            }
            anyhow::ensure!(log.gaps.is_empty(), "{:?}", log.gaps);
            anyhow::Ok(log.arrivals.iter().map(|a| a.n).collect::<Vec<_>>())
        }));
    }
    start.wait().await;
    // Live delivery goes on meanwhile.
    let live_events: Vec<_> = (0..20)
        .map(|k| numbered::event(ACCOUNT, 1 + 3 * k))
        .collect();
    stack.produce(&live_events).await?;
    let mut log = Log::default();
    while log.arrivals.len() < 20 {
        numbered::read_stomp(&mut live, &mut log, Duration::from_secs(60)).await?;
    }
    let want: Vec<u64> = (1..40).map(|k| 2 + 3 * k).collect();
    for t in tasks {
        let got = t.await??;
        // Live message events may come after the replayed tag events.
        let tags: Vec<u64> = got.into_iter().filter(|n| n % 3 == 2).collect();
        assert_eq!(tags, want, "every missed event once, in order");
    }
    assert_eq!(
        log.arrivals.iter().map(|a| a.n).collect::<Vec<_>>(),
        (0..20).map(|k| 1 + 3 * k).collect::<Vec<_>>()
    );
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "resume storm: {CLIENTS} clients read back from Kafka; gateway threads {baseline} -> peak {peak}"
    );
    // A consumer (and a blocking thread) per client would be thousands of
    // threads; four Kafka reads at a time keep it to a handful more.
    assert!(peak < baseline + 40, "threads {baseline} -> {peak}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_closed() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stack = Stack::start_with(herald_tests::StackOptions {
        gateway_args: ["--handshake-timeout-secs", "1"].map(String::from).to_vec(),
        ..Default::default()
    })
    .await?;
    let addr = stack.gateway.ws_addr;
    for (what, bytes) in [
        ("silent", &b""[..]),
        (
            "half a request head",
            &b"GET /cable HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"[..],
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(bytes).await?;
        let mut buf = [0u8; 512];
        // The gateway closes it (EOF, possibly after a 408) well within this.
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{what}: still open");
    }
    stack.stop().await;
    Ok(())
}
