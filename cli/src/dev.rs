//! Development mode: one command runs everything on loopback.
//!
//! The broker is `tansu` (a Kafka-compatible broker from crates.io) run as a
//! managed child with in-memory storage: it starts with this process and is
//! killed with it. `--kafka-brokers` skips it and uses an existing cluster.
//! The gateway's web console is on, with a random admin credential (or
//! `HERALD_CONSOLE_TOKEN`) printed in the banner, and its publish form
//! posts to this producer.

use std::{path::PathBuf, process::Stdio, time::Duration};

use herald_gateway::GatewayConfig;
use herald_producer::ProducerConfig;
use herald_runtime::KafkaArgs;
use herald_schemas::Family;
use tokio::process::{Child, Command};

use crate::token::{TokenArgs, mint};

/// Development mode settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Use this Kafka cluster instead of starting a broker.
    #[arg(long, env = "HERALD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Port of the managed broker.
    #[arg(long, env = "HERALD_DEV_BROKER_PORT", default_value_t = 19092)]
    pub broker_port: u16,
    /// Path of the tansu binary (default: on PATH or in ~/.cargo/bin).
    #[arg(long, env = "HERALD_TANSU_BIN")]
    pub tansu_bin: Option<PathBuf>,
    /// Partitions per topic.
    #[arg(long, env = "HERALD_DEV_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,
    /// Gateway WebSocket address.
    #[arg(
        long,
        env = "HERALD_DEV_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub gateway_listen: String,
    /// Gateway ops address.
    #[arg(
        long,
        env = "HERALD_DEV_GATEWAY_OPS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub gateway_ops_listen: String,
    /// Producer API address.
    #[arg(
        long,
        env = "HERALD_DEV_PRODUCER_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub producer_listen: String,
    /// Producer ops address.
    #[arg(
        long,
        env = "HERALD_DEV_PRODUCER_OPS_LISTEN",
        default_value = "127.0.0.1:9094"
    )]
    pub producer_ops_listen: String,
    /// JWT secret of the development gateway.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        default_value = "herald-development-secret-do-not-use",
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Serve the web console on the gateway's ops listener.
    #[arg(long, env = "HERALD_DEV_CONSOLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub console: bool,
    /// The console's admin credential (default: a random one, printed).
    #[arg(long, env = "HERALD_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
}

fn spawn_broker(bin: &PathBuf, port: u16) -> anyhow::Result<Child> {
    Ok(Command::new(bin)
        .args(herald_runtime::tansu::broker_args(port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// Run development mode until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    herald_runtime::telemetry::init(
        herald_runtime::telemetry::LogFormat::Text,
        "info,librdkafka=warn",
    );
    let mut _broker = None;
    let brokers = match &args.kafka_brokers {
        Some(b) => b.clone(),
        None => {
            let bin = herald_runtime::tansu::find(args.tansu_bin.as_deref()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the tansu broker is not installed: run `{}` (scripts/dev.sh does it for you), \
                     or pass --kafka-brokers host:port",
                    herald_runtime::tansu::INSTALL
                )
            })?;
            _broker = Some(spawn_broker(&bin, args.broker_port)?);
            format!("127.0.0.1:{}", args.broker_port)
        }
    };
    let kafka = KafkaArgs::for_brokers(&brokers);
    let mut topics: Vec<String> = Family::ALL
        .iter()
        .map(|f| f.topic(&kafka.topic_prefix))
        .collect();
    // The identities table is compacted: the latest record per token is the truth.
    let identities = herald_schemas::identities_topic(&kafka.topic_prefix);
    topics.push(identities.clone());
    let mut attempt = 0;
    loop {
        match herald_runtime::kafka::ensure_topics(
            &kafka,
            &topics,
            std::slice::from_ref(&identities),
            &herald_runtime::kafka::TopicLayout::partitions(args.partitions),
        )
        .await
        {
            Ok(()) => break,
            Err(e) if attempt < 40 => {
                attempt += 1;
                tracing::debug!(error = %e, "broker not up yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => anyhow::bail!("cannot create topics on {brokers}: {e}"),
        }
    }

    let shutdown = herald_runtime::shutdown::on_signal();
    let producer = herald_producer::start(
        ProducerConfig::from_args([
            "herald-producer",
            "--kafka-brokers",
            &brokers,
            "--listen",
            &args.producer_listen,
            "--ops-listen",
            &args.producer_ops_listen,
            // Development mode: the API on loopback needs no key.
            "--allow-unauthenticated",
        ])
        .unwrap_or_else(|e| e.exit()),
        shutdown.clone(),
    )
    .await?;
    let mut gateway_args: Vec<String> = [
        "herald-gateway",
        "--kafka-brokers",
        &brokers,
        "--listen",
        &args.gateway_listen,
        "--ops-listen",
        &args.gateway_ops_listen,
        "--jwt-secret",
        &args.jwt_secret,
        // One process on a laptop: no load balancer to wait for on Ctrl-C.
        "--drain-delay-secs",
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let console_token = args
        .console_token
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if args.console {
        gateway_args.extend([
            "--console=true".to_owned(),
            format!("--console-token={console_token}"),
            format!("--console-publish-url=http://{}/v1/events", producer.addr),
        ]);
    }
    if _broker.is_some() {
        // tansu holds every fetch for the full fetch.wait.max.ms even when
        // records are waiting (Apache Kafka answers at once): a short wait
        // keeps development-mode latency in milliseconds.
        gateway_args.push("--kafka-fetch-wait-ms=10".to_owned());
    }
    let gateway = herald_gateway::start(
        GatewayConfig::from_args(gateway_args).unwrap_or_else(|e| e.exit()),
        shutdown.clone(),
    )
    .await?;
    let token = mint(&TokenArgs::new(
        &args.jwt_secret,
        "1",
        "1",
        "agent",
        7 * 24 * 3600,
    ))?;
    println!(
        "\nHerald development mode is running.\n\
         \n  Kafka broker      {brokers}{managed}\
         \n  Producer API      http://{p}/v1/events\
         \n  STOMP (Airy)      ws://{g}/ws.communication\
         \n  ActionCable       ws://{g}/cable (RoomChannel), ws://{g}/stream?account_id=1&token=<token> (NotificationsChannel)\
         \n  TypeID            ws://{g}/notifications\
         \n  Gateway metrics   http://{gops}/metrics   (/healthz, /readyz)\
         \n  Producer metrics  http://{pops}/metrics\
         {console}\
         \n\nDevelopment token (account 1, user 1, agent; valid 7 days):\n\n  {token}\n\
         \nWatch what that token receives (another terminal):\n\
         \n  {herald} tail --url ws://{g} --token <the token above>\n\
         \nPublish an event:\n\
         \n  curl -s http://{p}/v1/events -H 'content-type: application/json' -d \
         '{{\"type\":\"tag.updated\",\"account_id\":\"1\",\"payload\":{{\"id\":\"t1\",\"name\":\"vip\",\"color\":\"tag-red\"}}}}'\n\
         \nPress Ctrl-C to stop.\n",
        managed = if _broker.is_some() {
            " (managed tansu, in-memory)"
        } else {
            ""
        },
        // The binary that is running: works as printed whether or not
        // `herald` is on PATH (scripts/dev.sh runs it from target/).
        herald = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "herald".into()),
        // The fragment never reaches the server: the login page reads it.
        console = if args.console {
            format!(
                "\n  Web console       http://{}/console/#token={console_token}   (admin credential: {console_token})",
                gateway.ops_addr
            )
        } else {
            String::new()
        },
        p = producer.addr,
        g = gateway.ws_addr,
        gops = gateway.ops_addr,
        pops = producer.ops_addr,
    );
    gateway.stopped().await;
    producer.stopped().await;
    Ok(())
}
