//! `herald-loadgen`: thin entry point; scenarios live in the library.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use herald_bench::{procstat::Machine, raw, reconnect, scenario, stamp::Protocol};

/// Herald load generator: measures the gateway (and a raw WebSocket
/// baseline) on loopback and writes the results as JSON.
#[derive(Debug, Parser)]
#[command(name = "herald-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Gateway memory per idle subscribed connection.
    Idle {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: scenario::IdleArgs,
    },
    /// Frames per second at a fan-out, closed loop, gateway vs raw baseline.
    Fanout {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: scenario::FanoutArgs,
    },
    /// Healthy clients' latency with and without hostile clients, gateway memory.
    Hostile {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: scenario::HostileArgs,
    },
    /// End-to-end latency at fixed publish rates.
    Latency {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: scenario::LatencyArgs,
    },
    /// Kafka ingest with no matching subscriber, gateway vs a bare consumer.
    Ingest {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: scenario::IngestArgs,
    },
    /// New authenticated, subscribed connections per second.
    Storm {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: scenario::StormArgs,
    },
    /// Clients dropping their TCP connection every ~15 s and resuming.
    Jitter {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: reconnect::JitterArgs,
    },
    /// A rolling restart of one of two gateways behind nginx, resuming clients.
    Avalanche {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: reconnect::AvalancheArgs,
    },
    /// Herald against AnyCable, Centrifugo, RabbitMQ Web-STOMP and Rails
    /// ActionCable, same clients and load, one system after the other.
    Peers {
        #[command(flatten)]
        common: scenario::Common,
        #[command(flatten)]
        args: herald_bench::peers::PeersArgs,
    },
    /// Capacity model: per-pod ingest, fan-out and memory of a workload,
    /// every pod reading every partition vs. partition-affine pod groups
    /// (docs/scaling.md). Computes, measures nothing.
    Simulate(herald_bench::simulate::SimulateArgs),
    /// The raw baseline server (started by the other commands).
    #[command(hide = true)]
    RawServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        control: SocketAddr,
        #[arg(long, value_enum)]
        protocol: Protocol,
    },
}

/// Raise the open-file limit (soft and, when allowed, hard) so tens of
/// thousands of sockets fit; child processes inherit it.
fn raise_fd_limit() -> u64 {
    const WANT: u64 = 262_144;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    if hard < WANT && rlimit::setrlimit(rlimit::Resource::NOFILE, WANT, WANT).is_ok() {
        return WANT;
    }
    let target = hard.min(WANT).max(soft);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    }
}

/// The commit the binaries were built from, and whether the work tree had
/// changes (results of a dirty tree say so).
fn source_state() -> serde_json::Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let gateway_built = herald_bench::cluster::sibling_binary("herald-gateway")
        .ok()
        .and_then(|p| std::fs::metadata(p).ok()?.modified().ok())
        .and_then(|t| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    serde_json::json!({
        "gateway_binary_built": gateway_built,
        "commit": git(&["rev-parse", "--short", "HEAD"]),
        "gateway_modified": git(&["status", "--porcelain", "--", "gateway", "runtime", "schemas"]).map(|s| !s.is_empty()),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Simulate(args) = &cli.command {
        return herald_bench::simulate::run(args);
    }
    let fd_limit = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Command::RawServer {
        listen,
        control,
        protocol,
    } = cli.command
    {
        return runtime.block_on(raw::serve(listen, control, protocol));
    }
    let connections = match &cli.command {
        Command::Idle { args, .. } => args.connections,
        Command::Fanout { args, .. } => args.connections,
        Command::Latency { args, .. } => args.connections,
        Command::Hostile { args, .. } => args.connections + args.hostile,
        Command::Storm { args, .. } => args.connections,
        Command::Jitter { args, .. } => args.clients,
        Command::Avalanche { args, .. } => args.clients,
        Command::Peers { args, .. } => args.connections,
        _ => 0,
    };
    if connections as u64 + 1000 > fd_limit {
        eprintln!(
            "warning: the open-file limit is {fd_limit} (this process and the server it starts \
             inherit it; raising the hard limit needs CAP_SYS_RESOURCE): at most about {} \
             connections will be accepted",
            fd_limit.saturating_sub(1000)
        );
    }
    if let Command::Idle { common, .. }
    | Command::Fanout { common, .. }
    | Command::Latency { common, .. }
    | Command::Hostile { common, .. }
    | Command::Storm { common, .. }
    | Command::Ingest { common, .. }
    | Command::Jitter { common, .. }
    | Command::Avalanche { common, .. }
    | Command::Peers { common, .. } = &cli.command
    {
        herald_bench::client::ACCOUNT_BASE
            .store(common.account_base, std::sync::atomic::Ordering::Relaxed);
    }
    let argv: Vec<String> = std::env::args().collect();
    // Other work on the machine skews every number: keep its trace.
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (name, common, result) = runtime.block_on(async {
        match &cli.command {
            Command::Idle { common, args } => ("idle", common, scenario::idle(common, args).await),
            Command::Fanout { common, args } => {
                ("fanout", common, scenario::fanout(common, args).await)
            }
            Command::Latency { common, args } => {
                ("latency", common, scenario::latency(common, args).await)
            }
            Command::Hostile { common, args } => {
                ("hostile", common, scenario::hostile(common, args).await)
            }
            Command::Ingest { common, args } => {
                ("ingest", common, scenario::ingest(common, args).await)
            }
            Command::Storm { common, args } => {
                ("storm", common, scenario::storm(common, args).await)
            }
            Command::Jitter { common, args } => {
                ("jitter", common, reconnect::jitter(common, args).await)
            }
            Command::Avalanche { common, args } => (
                "avalanche",
                common,
                reconnect::avalanche(common, args).await,
            ),
            Command::Peers { common, args } => (
                "peers",
                common,
                herald_bench::peers::run(common, args).await,
            ),
            Command::RawServer { .. } | Command::Simulate(_) => unreachable!("handled above"),
        }
    });
    let results = result?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = serde_json::json!({
        "scenario": name,
        "protocol": common.protocol,
        "command": argv.join(" "),
        "finished_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "machine": Machine::describe(),
        "source": source_state(),
        "fd_limit": fd_limit,
        "loadavg": {"before": load_before.trim(), "after": load_after.trim()},
        "results": results,
    });
    let path = common.out.clone().unwrap_or_else(|| {
        format!("bench-results/{name}-{}.json", common.protocol.as_str()).into()
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", path.display());
    // Connection tasks may still be winding down; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
