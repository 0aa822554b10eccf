//! Development mode: one command runs everything on loopback.
//!
//! The broker is embedded: librdkafka's in-process mock cluster (Herald
//! links librdkafka anyway), in memory, started with this process and gone
//! with it; nothing to install. A loopback listener on `--broker-port`
//! lets other Kafka clients (kcat, Python's confluent-kafka, …) produce to
//! it. `--kafka-brokers` skips it and uses an existing cluster. Why the
//! mock cluster and what it does not do: docs/development.md.
//! The gateway's web console is on, with a random admin credential (or
//! `HERALD_CONSOLE_TOKEN`) printed in the banner, and its publish form
//! posts to this producer.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use herald_gateway::GatewayConfig;
use herald_producer::ProducerConfig;
use herald_runtime::KafkaArgs;
use herald_schemas::Family;
use rdkafka::{
    ClientConfig,
    producer::{BaseProducer, Producer as _},
};
use tokio::net::{TcpListener, TcpStream};

use crate::token::{TokenArgs, mint};

/// Development mode settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Use this Kafka cluster instead of the embedded broker.
    #[arg(long, env = "HERALD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Loopback port where other Kafka clients reach the embedded broker (0: any free port).
    #[arg(long, env = "HERALD_DEV_BROKER_PORT", default_value_t = 19092)]
    pub broker_port: u16,
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

/// The embedded development broker: librdkafka's in-process mock cluster
/// (in memory), plus a loopback listener on the configured port that
/// forwards to it, so other Kafka clients have a fixed address to bootstrap
/// from. Lives as long as this value; dropping it stops both.
struct EmbeddedBroker {
    /// The client that owns the mock cluster (librdkafka creates it for a
    /// client configured with `test.mock.num.brokers`, and destroys it with
    /// that client). Never used to produce.
    owner: BaseProducer,
    /// What Herald's own clients bootstrap from (the mock brokers themselves).
    internal: String,
    /// The loopback address printed for other clients.
    public: SocketAddr,
    forwarder: tokio::task::JoinHandle<()>,
}

impl EmbeddedBroker {
    async fn start(port: u16) -> anyhow::Result<EmbeddedBroker> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.with_context(|| {
            format!("cannot listen on 127.0.0.1:{port} for the development broker (pass --broker-port)")
        })?;
        let public = listener.local_addr()?;
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("client.id", "herald-dev-broker")
            .create()
            .map_err(|e| anyhow::anyhow!("cannot start the embedded Kafka broker: {e}"))?;
        add_controller(&owner)?;
        let cluster = owner
            .client()
            .mock_cluster()
            .context("librdkafka did not create the mock cluster")?;
        let internal = cluster.bootstrap_servers();
        drop(cluster);
        let target: SocketAddr = internal
            .split(',')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected mock broker address {internal:?}"))?;
        let forwarder = tokio::spawn(forward(listener, target));
        Ok(EmbeddedBroker {
            owner,
            internal,
            public,
            forwarder,
        })
    }

    /// Create `topics` with `partitions` each (the mock cluster has no
    /// CreateTopics request; topic configs such as compaction do not apply).
    fn create_topics(&self, topics: &[String], partitions: i32) -> anyhow::Result<()> {
        let cluster = self
            .owner
            .client()
            .mock_cluster()
            .context("the mock cluster is gone")?;
        for topic in topics {
            cluster
                .create_topic(topic, partitions, 1)
                .map_err(|e| anyhow::anyhow!("cannot create topic {topic}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// The mock cluster names broker 0 as its controller in every Metadata
/// answer but numbers its brokers from 1, so requests that go to the
/// controller (DescribeTopics, which the gateway uses for topic IDs) wait
/// for a broker that does not exist and time out. Adding a broker 0 gives
/// the controller id a broker. rust-rdkafka does not wrap
/// `rd_kafka_mock_broker_add`, hence the one FFI call.
#[allow(unsafe_code)]
fn add_controller(owner: &BaseProducer) -> anyhow::Result<()> {
    // SAFETY: `native_ptr` is the live handle of `owner`, borrowed for this
    // call; the mock cluster it returns (checked for null) is owned by that
    // handle and outlives the call. `rd_kafka_mock_broker_add` copies
    // nothing from us but the id and blocks until the mock thread did it.
    let err = unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        anyhow::ensure!(
            !cluster.is_null(),
            "librdkafka did not create the mock cluster"
        );
        rdkafka::bindings::rd_kafka_mock_broker_add(cluster, 0)
    };
    let err: rdkafka::types::RDKafkaErrorCode = err.into();
    anyhow::ensure!(
        err == rdkafka::types::RDKafkaErrorCode::NoError,
        "cannot add the mock cluster's controller broker: {err}"
    );
    Ok(())
}

/// Accept connections on `listener` and pipe each to `target`. A client
/// only bootstraps here: the broker's metadata names its own loopback
/// address, where the client then connects directly.
async fn forward(listener: TcpListener, target: SocketAddr) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "development broker: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "development broker: cannot reach the mock broker")
                }
            }
        });
    }
}

/// Run development mode until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    herald_runtime::telemetry::init(
        herald_runtime::telemetry::LogFormat::Text,
        "info,librdkafka=warn",
    );
    // The default prefix, which the producer and gateway below use too.
    let kafka_prefix = KafkaArgs::for_brokers("").topic_prefix;
    let mut topics: Vec<String> = Family::ALL.iter().map(|f| f.topic(&kafka_prefix)).collect();
    // The identities table is compacted on a real cluster: the latest record
    // per token is the truth.
    let identities = herald_schemas::identities_topic(&kafka_prefix);
    topics.push(identities.clone());

    // Kept alive until this function returns: the broker runs as long as
    // development mode does.
    let mut broker = None;
    let brokers = match &args.kafka_brokers {
        Some(b) => {
            let kafka = KafkaArgs::for_brokers(b);
            // A cluster started alongside (docker compose up) may still be
            // coming up: retry for up to 10 s.
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
                    Err(e) => anyhow::bail!("cannot create topics on {b}: {e}"),
                }
            }
            b.clone()
        }
        None => {
            let embedded = EmbeddedBroker::start(args.broker_port).await?;
            embedded.create_topics(&topics, args.partitions)?;
            let internal = embedded.internal.clone();
            broker = Some(embedded);
            internal
        }
    };

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
    if broker.is_some() {
        // The mock broker holds a fetch that found nothing for the full
        // fetch.wait.max.ms even when a record arrives meanwhile (Apache
        // Kafka answers at once): a short wait keeps development-mode
        // latency in milliseconds.
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
    // The binary that is running: the commands work as printed whether or
    // not `herald` is on PATH (scripts/dev.sh runs it from target/).
    let herald = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "herald".into());
    let broker_line = match &broker {
        Some(b) => format!(
            "{} (embedded, in memory; any Kafka client can produce here)",
            b.public
        ),
        None => brokers.clone(),
    };
    let (p, g) = (producer.addr, gateway.ws_addr);
    println!(
        "\nHerald development mode is running.\n\
         \n  Kafka broker      {broker_line}\
         \n  Producer API      http://{p}/v1/events   (identities: /v1/identities)\
         \n  STOMP (Airy)      ws://{g}/ws.communication\
         \n  ActionCable       ws://{g}/cable   (RoomChannel, opaque pubsub_token)\
         \n  Pulse stream      ws://{g}/stream?account_id=1   (NotificationsChannel, JWT)\
         \n  TypeID            ws://{g}/notifications   (opaque SessionID)\
         \n  Gateway ops       http://{gops}/metrics   (/healthz, /readyz)\
         \n  Producer ops      http://{pops}/metrics   (/healthz, /readyz)\
         {console}\
         \n\nDevelopment token (account 1, user 1, agent; valid 7 days):\n\n  {token}\n\
         \nWatch what a credential receives (another terminal), one endpoint each:\n\
         \n  {herald} tail --protocol stomp --url ws://{g} --token {token}\
         \n  {herald} tail --protocol stream --url ws://{g} --token {token}\
         \n\nRoomChannel and TypeID take opaque tokens: register one, then tail with it:\n\
         \n  {herald} identity register --producer-url http://{p} --account 1 --kind user --id 1 --role agent --token dev-opaque-token-1\
         \n  {herald} tail --protocol cable --url ws://{g} --token dev-opaque-token-1\
         \n  {herald} tail --protocol typeid --url ws://{g} --token dev-opaque-token-1 --user-id 1\
         \n\nPublish an event: RoomChannel and STOMP receive message.created,\
         \nthe stream Pulse operations (added_message), TypeID ConversationMessageNotification:\n\
         \n  curl -s http://{p}/v1/events -H 'content-type: application/json' -d \
         '{{\"type\":\"message.created\",\"account_id\":\"1\",\"payload\":{{\"id\":1,\"content\":\"hi\",\"message_type\":0,\"conversation_id\":1}}}}'\
         \n  {herald} publish --producer-url http://{p} --type added_message --account 1 \
         --payload '{{\"id\":1,\"conversation_id\":5,\"type\":1,\"timestamp\":1795600000000,\"read\":false,\"seen\":false,\"data\":\"aGk=\",\"mime_type\":\"dGV4dA==\"}}'\
         \n  {herald} publish --producer-url http://{p} --type ConversationMessageNotification --account 1 \
         --audience '{{\"users\":[\"1\"]}}' --payload '{{\"ClientID\":\"c1\",\"ServerID\":\"s1\",\"ConversationID\":\"conv-1\",\"SenderID\":9,\"Body\":\"hello\",\"Timestamp\":1795600000000}}'\n\
         \nPress Ctrl-C to stop.\n",
        // The fragment never reaches the server: the login page reads it.
        console = if args.console {
            format!(
                "\n  Web console       http://{}/console/#token={console_token}   (admin credential: {console_token})",
                gateway.ops_addr
            )
        } else {
            String::new()
        },
        gops = gateway.ops_addr,
        pops = producer.ops_addr,
    );
    gateway.stopped().await;
    producer.stopped().await;
    // The process exits next. Destroying the mock cluster first would make
    // Kafka clients that are still winding down log connection errors for
    // a broker that went away on purpose; the exit releases it.
    std::mem::forget(broker);
    Ok(())
}
