//! The reconnection scenarios, both with [`crate::resuming`] clients:
//!
//! - `jitter` (AnyCable's methodology): every client's TCP socket is reset
//!   about every 15 s, it stays offline about 2 s, then reconnects and
//!   resumes from its last position, while each stream receives 120 events
//!   at 2 per second.
//! - `avalanche` (a rolling deploy): two gateways behind the shipped nginx
//!   configuration, events flowing; pod A gets SIGTERM (drain delay, then
//!   reconnect notices spread over the drain window, then exit), a new pod A
//!   starts on the same port, and A's clients reconnect through nginx with
//!   their positions.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    client,
    cluster::{self, GatewayLaunch, Server, ServerKind},
    hist::{self, Percentiles},
    procstat::CpuMark,
    prom::Scrape,
    publish::{EventSink, Publisher},
    resuming::{self, Behaviour, Jitter, ResumingFleet},
    scenario::{Common, Setup, source_ips},
    stamp::Protocol,
};

fn check_protocol(common: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(common.protocol, Protocol::Stomp | Protocol::Room),
        "this scenario resumes over STOMP (`--protocol stomp`) or AnyCable's extended \
         ActionCable protocol (`--protocol room`)"
    );
    Ok(())
}

/// The gateway's resume counters between two scrapes (`before` `None`:
/// since the process started).
fn resume_metrics(before: Option<&Scrape>, after: Option<&Scrape>) -> Value {
    let Some(a) = after else {
        return Value::Null;
    };
    let d = |name: &str, filter: &str| {
        a.sum(name, filter) - before.map_or(0.0, |b| b.sum(name, filter))
    };
    json!({
        "resume_reads_buffer": d("herald_resume_reads_total", "source=\"buffer\""),
        "resume_reads_kafka": d("herald_resume_reads_total", "source=\"kafka\""),
        "resumed_events": d("herald_resumed_events_total", ""),
        "resume_gaps": d("herald_resume_gaps_total", ""),
        "frames_sent": d("herald_frames_sent_total", ""),
        "slow_client_disconnects": d("herald_slow_client_disconnects_total", ""),
        "connections_now": a.sum("herald_connections", ""),
        // Since the gateway started: the first subscribe storm included.
        "resume_time_lookups_since_start": a.sum("herald_resume_time_lookups_total", ""),
        "resume_reads_kafka_since_start": a.sum("herald_resume_reads_total", "source=\"kafka\""),
    })
}

/// Delivery rates (sorted ascending) summarised.
fn rates_summary(rates: &[f64]) -> Value {
    let n = rates.len().max(1) as f64;
    json!({
        "mean_percent": 100.0 * rates.iter().sum::<f64>() / n,
        "min_percent": 100.0 * rates.first().copied().unwrap_or(1.0),
        "clients_at_100_percent": rates.iter().filter(|&&r| r >= 1.0).count(),
    })
}

/// What every resuming fleet reports.
pub(crate) fn fleet_report(fleet: &ResumingFleet, sent: &[u64]) -> Value {
    let (lost, dups) = fleet.audit(sent);
    json!({
        "clients": fleet.clients.len(),
        "subscribed_at_end": fleet.in_state(resuming::state::SUBSCRIBED),
        "never_came_back": fleet.never_came_back(),
        "still_catching_up": fleet.clients.iter().filter(|c| c.catching_up.load(Ordering::Relaxed)).count(),
        "subscriptions": fleet.sum(|c| &c.subscriptions),
        "jitter_drops": fleet.sum(|c| &c.jitter_drops),
        "server_drops": fleet.sum(|c| &c.server_drops),
        "restart_notices": fleet.sum(|c| &c.restart_notices),
        "failed_attempts": fleet.sum(|c| &c.failed_attempts),
        "first_error": fleet.first_error(),
        "events_received": fleet.sum(|c| &c.received),
        "events_replayed": fleet.sum(|c| &c.replayed),
        "gap_signals": fleet.sum(|c| &c.gap_signals),
        "positionless_resumes": fleet.sum(|c| &c.positionless_resumes),
        "clients_with_no_event": fleet.clients.iter().filter(|c| c.next_seq.load(Ordering::Relaxed) == 0).count(),
        "history_confirmed": fleet.sum(|c| &c.history_confirmed),
        "delivery_rate": rates_summary(&fleet.delivery_rates(sent)),
        "lost": lost,
        "duplicated": dups,
        "reordered": fleet.sum(|c| &c.reordered),
    })
}

/// Empty every histogram the resuming clients record into.
pub(crate) fn reset_histograms() {
    for r in [
        &hist::DELIVERY,
        &hist::CONNECT,
        &hist::REPLAY,
        &hist::REPLAY_AFTER_RESUBSCRIBE,
        &hist::RECONNECT,
        &hist::CAUGHT_UP,
    ] {
        r.take();
    }
}

pub(crate) fn latencies() -> Value {
    json!({
        "live": Percentiles::of(&hist::DELIVERY.take()),
        "replay_publish_to_delivery": Percentiles::of(&hist::REPLAY.take()),
        "replay_resubscribe_to_delivery": Percentiles::of(&hist::REPLAY_AFTER_RESUBSCRIBE.take()),
        "reconnect_lost_to_subscribed": Percentiles::of(&hist::RECONNECT.take()),
        "lost_to_caught_up": Percentiles::of(&hist::CAUGHT_UP.take()),
    })
}

fn ms(v: &Value, p: &str) -> f64 {
    v[p].as_f64().unwrap_or(f64::NAN)
}

/// `jitter`: clients that drop their connection every ~15 s and resume.
#[derive(Debug, Clone, clap::Args)]
pub struct JitterArgs {
    /// Clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients per account (each account is one stream).
    #[arg(long, default_value_t = 100)]
    pub clients_per_account: usize,
    /// Events published per stream.
    #[arg(long, default_value_t = 120)]
    pub events: u64,
    /// Events per second per stream.
    #[arg(long, default_value_t = 2.0)]
    pub rate_per_stream: f64,
    /// Mean seconds between two drops of one client.
    #[arg(long, default_value_t = 15.0)]
    pub period_secs: f64,
    /// Each client's period is the mean × (1 ± this), drawn once.
    #[arg(long, default_value_t = 0.2)]
    pub spread: f64,
    /// Seconds offline after a drop (± 10 %).
    #[arg(long, default_value_t = 2.0)]
    pub offline_secs: f64,
    /// Seconds to wait, once publishing is over, for every client to have
    /// every event.
    #[arg(long, default_value_t = 60)]
    pub settle_secs: u64,
    /// ActionCable: send `history.since` in every `subscribe` as
    /// `@anycable/web` does (`false`: only the known stream positions).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cable_since: bool,
}

/// How `jitter`'s clients behave: sockets reset every period ± spread
/// until `until` is cancelled, reconnecting after the offline time.
pub(crate) fn jitter_behaviour(args: &JitterArgs, until: CancellationToken) -> Behaviour {
    Behaviour {
        jitter: Some(Jitter {
            period: Duration::from_secs_f64(args.period_secs.max(1.0)),
            spread: args.spread.clamp(0.0, 0.9),
            offline: Duration::from_secs_f64(args.offline_secs.max(0.0)),
            until,
        }),
        reconnect_delay: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(15),
        retry_delay: Duration::from_millis(500),
        cable_since: args.cable_since,
    }
}

/// Run `jitter`.
pub async fn jitter(common: &Common, args: &JitterArgs) -> anyhow::Result<Value> {
    check_protocol(common)?;
    let accounts = args
        .clients
        .div_ceil(args.clients_per_account.max(1))
        .max(1);
    let setup = Setup::start(common, ServerKind::Gateway).await?;
    let mut publisher = setup.publisher(common, accounts, 5).await?;
    let published = publisher.share_counts();
    let (ips, first) = source_ips(common, args.clients);
    let target = resuming::Target {
        addr: setup.server.ws_addr,
        protocol: common.protocol,
        source_ips: ips,
        first_source_ip: first,
        peer: None,
    };
    let until = CancellationToken::new();
    let behaviour = jitter_behaviour(args, until.clone());
    let creds = client::credentials(args.clients, accounts, &common.jwt_secret)?;
    reset_histograms();
    let fleet = ResumingFleet::open(&target, creds, &behaviour, published, common.concurrency)?;
    let opened = fleet.wait_subscribed(Duration::from_secs(120)).await;
    eprintln!("jitter: {opened} of {} clients subscribed", args.clients);
    let connect = Percentiles::of(&hist::CONNECT.take());
    let s0 = setup.scrape().await;
    let cpu = setup.cpu_marks();
    let rss_before = setup.server.rss();
    let started = Instant::now();
    publisher
        .at_rate_count(
            args.rate_per_stream * accounts as f64,
            args.events * accounts as u64,
        )
        .await?;
    let publish_secs = started.elapsed().as_secs_f64();
    until.cancel();
    publisher.finish();
    let (acked, failed) = publisher.acks();
    let complete = fleet
        .wait_delivered(&publisher.sent, Duration::from_secs(args.settle_secs))
        .await;
    let cpu = cpu.read();
    let s1 = setup.scrape().await;
    let report = fleet_report(&fleet, &publisher.sent);
    let lat = latencies();
    let rss_after = setup.server.rss();
    fleet.close().await;
    setup.stop().await;
    let replay = &lat["replay_publish_to_delivery"];
    let after = &lat["replay_resubscribe_to_delivery"];
    eprintln!(
        "jitter[{}]: {} clients ({} per account, {accounts} streams), {} events per stream at {}/s; \
         {} jitter events (reconnects), {} failed attempts; delivery mean {:.3}% min {:.3}% \
         ({} of {} clients at 100%); {} events replayed: publish→delivery p50 {:.0} p95 {:.0} p99 {:.0} max {:.0} ms, \
         resubscribe→delivery p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} ms; live p99 {:.1} ms; \
         gap signals {}; lost {}, duplicated {}",
        common.protocol.as_str(),
        args.clients,
        args.clients_per_account,
        args.events,
        args.rate_per_stream,
        report["jitter_drops"],
        report["failed_attempts"],
        report["delivery_rate"]["mean_percent"]
            .as_f64()
            .unwrap_or(0.0),
        report["delivery_rate"]["min_percent"]
            .as_f64()
            .unwrap_or(0.0),
        report["delivery_rate"]["clients_at_100_percent"],
        args.clients,
        report["events_replayed"],
        ms(replay, "p50_ms"),
        ms(replay, "p95_ms"),
        ms(replay, "p99_ms"),
        ms(replay, "max_ms"),
        ms(after, "p50_ms"),
        ms(after, "p95_ms"),
        ms(after, "p99_ms"),
        ms(after, "max_ms"),
        ms(&lat["live"], "p99_ms"),
        report["gap_signals"],
        report["lost"],
        report["duplicated"],
    );
    Ok(json!({
        "params": {"clients": args.clients, "clients_per_account": args.clients_per_account, "streams": accounts,
                   "events_per_stream": args.events, "rate_per_stream": args.rate_per_stream,
                   "period_secs": args.period_secs, "spread": args.spread, "offline_secs": args.offline_secs,
                   "drop": "TCP reset (SO_LINGER 0), no close frame", "cable_since": args.cable_since},
        "clients_subscribed_first": opened,
        "connect_latency": connect,
        "events_sent": publisher.total,
        "kafka_acks": {"delivered": acked, "failed": failed},
        "publish_seconds": publish_secs,
        "delivered_all": complete,
        "fleet": report,
        "latency": lat,
        "cpu": cpu,
        "gateway": resume_metrics(s0.as_ref(), s1.as_ref()),
        "gateway_rss_bytes": {"before": rss_before, "after": rss_after},
    }))
}

/// `avalanche`: a rolling restart of one of two gateways behind nginx.
#[derive(Debug, Clone, clap::Args)]
pub struct AvalancheArgs {
    /// Clients.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Clients per account.
    #[arg(long, default_value_t = 100)]
    pub clients_per_account: usize,
    /// Events per second, over all accounts.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of events before pod A gets SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub before_secs: u64,
    /// Seconds of events after the new pod A is ready.
    #[arg(long, default_value_t = 15)]
    pub after_secs: u64,
    /// The gateways' `--drain-delay-secs`.
    #[arg(long, default_value_t = 1)]
    pub drain_delay_secs: u64,
    /// The gateways' `--drain-secs`.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// A client told to reconnect (or cut off) waits a random time up to
    /// this before reconnecting, ms.
    #[arg(long, default_value_t = 100)]
    pub reconnect_delay_ms: u64,
    /// Seconds to wait, once publishing is over, for every client to have
    /// every event.
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// ActionCable: send `history.since` in every `subscribe` as
    /// `@anycable/web` does (`false`: only the known stream positions).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cable_since: bool,
}

/// Run `avalanche`.
pub async fn avalanche(common: &Common, args: &AvalancheArgs) -> anyhow::Result<Value> {
    check_protocol(common)?;
    anyhow::ensure!(
        common.gateway_addr.is_none(),
        "avalanche starts and restarts its own gateways"
    );
    let accounts = args
        .clients
        .div_ceil(args.clients_per_account.max(1))
        .max(1);
    let broker = cluster::start_broker(common.kafka.as_deref(), common.broker).await?;
    let prefix = common
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("bench{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    cluster::create_topics(&broker, &prefix, common.partitions).await?;
    let mut extra_args = vec![
        "--drain-delay-secs".to_owned(),
        args.drain_delay_secs.to_string(),
        "--drain-secs".to_owned(),
        args.drain_secs.to_string(),
    ];
    extra_args.extend(common.gateway_flags());
    let launch = GatewayLaunch {
        binary: common.gateway_bin.clone(),
        extra_args,
        jwt_secret: common.jwt_secret.clone(),
    };
    let pod_a = Server::gateway(&broker, &prefix, &launch).await?;
    let pod_b = Server::gateway(&broker, &prefix, &launch).await?;
    let (a_ws, a_ops) = (
        pod_a.ws_addr,
        pod_a.ops_addr.context("pod A has no ops address")?,
    );
    let b_ops = pod_b.ops_addr.context("pod B has no ops address")?;
    let nginx = herald_testkit::nginx::Nginx::start(
        &herald_testkit::nginx::Nginx::shipped_conf(),
        &[a_ws, pod_b.ws_addr],
    )
    .await?;
    let kafka = cluster::kafka_args(&broker, &prefix);
    let mut publisher = Publisher::new(
        EventSink::kafka(&kafka, common.protocol, 5)?,
        common.protocol,
        accounts,
        common.pad_spec(),
    );
    let published = publisher.share_counts();
    let (ips, first) = source_ips(common, args.clients);
    let target = resuming::Target {
        addr: format!("127.0.0.1:{}", nginx.port).parse()?,
        protocol: common.protocol,
        source_ips: ips,
        first_source_ip: first,
        peer: None,
    };
    let behaviour = Behaviour {
        jitter: None,
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
        attempt_timeout: Duration::from_secs(15),
        retry_delay: Duration::from_millis(500),
        cable_since: args.cable_since,
    };
    let creds = client::credentials(args.clients, accounts, &common.jwt_secret)?;
    reset_histograms();
    let fleet = ResumingFleet::open(&target, creds, &behaviour, published, common.concurrency)?;
    let opened = fleet.wait_subscribed(Duration::from_secs(120)).await;
    let connect = Percentiles::of(&hist::CONNECT.take());
    let conns = |s: &Option<Scrape>| s.as_ref().map(|s| s.sum("herald_connections", ""));
    let on_a = conns(&Scrape::fetch(a_ops).await.ok());
    let on_b = conns(&Scrape::fetch(b_ops).await.ok());
    eprintln!(
        "avalanche: {opened} of {} clients subscribed through nginx (pod A {:?}, pod B {:?} connections)",
        args.clients, on_a, on_b
    );
    let b0 = Scrape::fetch(b_ops).await.ok();
    let cpu_b = pod_b.pid.map(CpuMark::start);
    let cpu_broker = cluster::broker_pid(&broker).map(CpuMark::start);
    let cpu_loadgen = CpuMark::start(std::process::id());

    // Events flow throughout; the restart happens in the middle.
    let rate = args.rate;
    let publish_start = Instant::now();
    // Publish until the new pod is up (a second at a time), then
    // `after_secs` more.
    let restarted = {
        let restart = async {
            tokio::time::sleep(Duration::from_secs(args.before_secs)).await;
            let a_before = Scrape::fetch(a_ops).await.ok();
            let t0 = Instant::now();
            eprintln!("avalanche: SIGTERM to pod A");
            let status = pod_a
                .terminate(Duration::from_secs(
                    args.drain_delay_secs + args.drain_secs + 20,
                ))
                .await;
            let exited = t0.elapsed();
            eprintln!(
                "avalanche: pod A exited after {:.2} s ({status:?}); starting the new pod A",
                exited.as_secs_f64()
            );
            let new_a = Server::gateway_at(&broker, &prefix, &launch, a_ws, a_ops).await;
            let ready = t0.elapsed();
            anyhow::Ok((a_before, status, exited, new_a?, ready))
        };
        tokio::pin!(restart);
        loop {
            tokio::select! {
                r = &mut restart => break r,
                p = publisher.at_rate(rate, Duration::from_secs(1)) => p?,
            }
        }
    };
    let (a_before, status, exited, new_a, ready) = restarted?;
    publisher
        .at_rate(rate, Duration::from_secs(args.after_secs))
        .await?;
    let publish_secs = publish_start.elapsed().as_secs_f64();
    publisher.finish();
    let (acked, failed) = publisher.acks();
    let complete = fleet
        .wait_delivered(&publisher.sent, Duration::from_secs(args.settle_secs))
        .await;
    let cpu = json!({
        "pod_b": cpu_b.map(|m| m.read()),
        "broker": cpu_broker.map(|m| m.read()),
        "loadgen": cpu_loadgen.read(),
    });
    let b1 = Scrape::fetch(b_ops).await.ok();
    let new_a_scrape = Scrape::fetch(a_ops).await.ok();
    let report = fleet_report(&fleet, &publisher.sent);
    let lat = latencies();
    let nginx_log = nginx.log();
    fleet.close().await;
    new_a.stop().await;
    pod_b.stop().await;
    drop(nginx);
    drop(broker);
    let caught = &lat["lost_to_caught_up"];
    let reconnect = &lat["reconnect_lost_to_subscribed"];
    eprintln!(
        "avalanche[{}]: {} clients via nginx, {} events/s; pod A: SIGTERM → exit {:.2} s, new pod A ready at {:.2} s \
         (--drain-delay-secs {} --drain-secs {}); connections dropped {} ({} with a reconnect notice), \
         never came back {}, failed attempts {}; lost → subscribed p50 {:.0} p95 {:.0} max {:.0} ms; \
         lost → caught up p50 {:.0} p95 {:.0} max {:.0} ms; replayed {}; gap signals {}; lost {}, duplicated {}",
        common.protocol.as_str(),
        args.clients,
        args.rate,
        exited.as_secs_f64(),
        ready.as_secs_f64(),
        args.drain_delay_secs,
        args.drain_secs,
        report["server_drops"],
        report["restart_notices"],
        report["never_came_back"],
        report["failed_attempts"],
        ms(reconnect, "p50_ms"),
        ms(reconnect, "p95_ms"),
        ms(reconnect, "max_ms"),
        ms(caught, "p50_ms"),
        ms(caught, "p95_ms"),
        ms(caught, "max_ms"),
        report["events_replayed"],
        report["gap_signals"],
        report["lost"],
        report["duplicated"],
    );
    Ok(json!({
        "params": {"clients": args.clients, "clients_per_account": accounts, "rate": args.rate,
                   "before_secs": args.before_secs, "after_secs": args.after_secs,
                   "drain_delay_secs": args.drain_delay_secs, "drain_secs": args.drain_secs,
                   "reconnect_delay_ms": args.reconnect_delay_ms, "cable_since": args.cable_since, "proxy": "nginx, deploy/nginx/nginx.conf (least_conn over both gateways)"},
        "clients_subscribed_first": opened,
        "connections_before": {"pod_a": on_a, "pod_b": on_b},
        "connect_latency": connect,
        "pod_a": {"exit_status": status.map(|s| s.to_string()), "sigterm_to_exit_secs": exited.as_secs_f64(),
                  "sigterm_to_new_pod_ready_secs": ready.as_secs_f64(),
                  "before_sigterm": resume_metrics(None, a_before.as_ref())},
        "new_pod_a": resume_metrics(None, new_a_scrape.as_ref()),
        "pod_b": resume_metrics(b0.as_ref(), b1.as_ref()),
        "events_sent": publisher.total,
        "kafka_acks": {"delivered": acked, "failed": failed},
        "publish_seconds": publish_secs,
        "delivered_all": complete,
        "fleet": report,
        "latency": lat,
        "cpu": cpu,
        "nginx_error_log_lines": nginx_log.lines().count(),
        "nginx_error_log_tail": nginx_log.lines().rev().take(5).collect::<Vec<_>>(),
    }))
}
