//! Gateway configuration: flags, `HERALD_*` environment variables and an
//! optional TOML file (`--config`), checked before anything starts.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use herald_runtime::{KafkaArgs, telemetry::LogFormat};
use herald_schemas::Family;

use crate::protocols::stomp::{StompConfig, codec::Limits};

/// Families a gateway serves by default: everything but client writes.
pub const DEFAULT_FAMILIES: &str =
    "message,unread-count,channel,metadata,tag,conversation,contact,presence,notification,account";

/// Herald gateway: pushes Kafka events to WebSocket clients.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-gateway", version, about)]
pub struct GatewayConfig {
    /// TOML file with settings (keys are the flag names, e.g. `listen`, `kafka-brokers`).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<String>,
    /// Address of the WebSocket listener.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Bind the WebSocket listener with `SO_REUSEPORT`, so several gateway
    /// processes on one host share its port (the kernel spreads new
    /// connections over them): a replacement process can start before the
    /// old one drains, and a host whose per-process file limit is below the
    /// connections wanted can run several.
    #[arg(long, env = "HERALD_REUSE_PORT", default_value_t = false, action = clap::ArgAction::Set)]
    pub reuse_port: bool,
    /// Address of the operations listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "HERALD_OPS_LISTEN", default_value = "0.0.0.0:9091")]
    pub ops_listen: SocketAddr,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Event families (topic suffixes) this gateway serves, comma-separated.
    #[arg(long, env = "HERALD_FAMILIES", default_value = DEFAULT_FAMILIES, value_delimiter = ',')]
    pub families: Vec<String>,
    /// How often to look for new topics and partitions, seconds.
    #[arg(long, env = "HERALD_METADATA_REFRESH_SECS", default_value_t = 10)]
    pub metadata_refresh_secs: u64,
    /// Longest time the broker may hold the consumer's fetch while it has no
    /// new record (librdkafka `fetch.wait.max.ms`; a `--kafka-property` of
    /// that name wins). Apache Kafka answers as soon as a record arrives, so
    /// this bounds idle fetches, not latency; a broker that holds every fetch
    /// for the full wait (tansu) wants a small value.
    #[arg(long, env = "HERALD_KAFKA_FETCH_WAIT_MS", default_value_t = 100)]
    pub kafka_fetch_wait_ms: u64,
    /// HS256 shared secret for JWTs (at least 16 bytes).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key files (RSA for RS256, EC P-256 for ES256); repeatable, comma-separated in the environment.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<String>,
    /// JWKS file (keys chosen by `kid`), re-read when it changes: rotate keys
    /// by rewriting it, no restart needed.
    #[arg(long, env = "HERALD_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<String>,
    /// How often to check the JWKS file for changes, seconds.
    #[arg(long, env = "HERALD_JWT_JWKS_RELOAD_SECS", default_value_t = 5)]
    pub jwt_jwks_reload_secs: u64,
    /// Required JWT `aud` claim, if set.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required JWT `iss` claim, if set.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// STOMP heart-beat the server offers to send, ms (0 disables).
    #[arg(long, env = "HERALD_STOMP_HEARTBEAT_SEND_MS", default_value_t = 10_000)]
    pub stomp_heartbeat_send_ms: u64,
    /// STOMP heart-beat the server asks clients for, ms (0 disables).
    #[arg(long, env = "HERALD_STOMP_HEARTBEAT_RECV_MS", default_value_t = 10_000)]
    pub stomp_heartbeat_recv_ms: u64,
    /// Time allowed from the WebSocket upgrade to the STOMP CONNECT frame, ms.
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Longest silence allowed from a client without heart-beats, seconds.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    pub idle_timeout_secs: u64,
    /// Most subscriptions per connection.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: usize,
    /// Largest frame a client may send, bytes.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Most headers in one STOMP frame.
    #[arg(long, env = "HERALD_MAX_HEADERS", default_value_t = 64)]
    pub max_headers: usize,
    /// Longest STOMP header line, bytes.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 8 * 1024)]
    pub max_header_bytes: usize,
    /// Event frames queued per connection before the client counts as too slow and is disconnected.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Families whose superseding events conflate, comma-separated (empty:
    /// none): a client that falls behind keeps only the latest undelivered
    /// unread count per conversation, metadata per subject and presence per
    /// account, instead of being disconnected. Other events are never
    /// dropped: past the queue bound their client is disconnected.
    #[arg(
        long,
        env = "HERALD_CONFLATE_FAMILIES",
        default_value = "unread-count,metadata,presence",
        value_delimiter = ','
    )]
    pub conflate_families: Vec<String>,
    /// Bytes queued per connection and not yet written, of every kind (events,
    /// replies, pongs), at most: live events past it cut the client off,
    /// replies to its own commands wait (the client is not read meanwhile).
    #[arg(long, env = "HERALD_MAX_OUTBOUND_BYTES", default_value_t = 1024 * 1024)]
    pub max_outbound_bytes: usize,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it. Each
    /// distinct frame is compressed once and shared by all its recipients;
    /// no compression state is kept per connection (both directions use no
    /// context takeover). Off by default: it trades gateway CPU for bytes.
    #[arg(long, env = "HERALD_WS_DEFLATE", default_value_t = false)]
    pub ws_deflate: bool,
    /// With --ws-deflate: frames with a payload shorter than this many bytes
    /// go out uncompressed (for small frames the saving is not worth it).
    #[arg(long, env = "HERALD_WS_DEFLATE_MIN_BYTES", default_value_t = 256)]
    pub ws_deflate_min_bytes: usize,
    /// With --ws-deflate: the zlib level, 1 (fastest) to 9 (smallest).
    #[arg(long, env = "HERALD_WS_DEFLATE_LEVEL", default_value_t = 1)]
    pub ws_deflate_level: u32,
    /// Seconds a client has for its TLS handshake, and again for its HTTP
    /// upgrade request; a connection that has not finished is closed.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Seconds sent data may stay unacknowledged by a client before the
    /// kernel drops the connection (TCP_USER_TIMEOUT; 0: the kernel's
    /// default, about 15 minutes). Reaps peers that vanished without a FIN.
    #[arg(long, env = "HERALD_TCP_USER_TIMEOUT_SECS", default_value_t = 30)]
    pub tcp_user_timeout_secs: u64,
    /// Client WebSocket messages (pings included) read per second per
    /// connection, burst of the same size; past it the socket is read no
    /// faster (0: no limit).
    #[arg(
        long,
        env = "HERALD_MAX_CLIENT_FRAMES_PER_SECOND",
        default_value_t = 200
    )]
    pub max_client_frames_per_second: u32,
    /// Seconds a write to a client may make no progress before its socket is closed.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_SECS", default_value_t = 10)]
    pub write_timeout_secs: u64,
    /// Seconds over which clients are told to reconnect on shutdown (their
    /// notices are spread over the first 80 %), then the rest are closed.
    #[arg(long, env = "HERALD_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
    /// Seconds between SIGTERM and the drain: `/readyz` answers 503
    /// ("draining") while the pod keeps serving and accepting, so load
    /// balancers stop sending it new clients before it asks its clients to
    /// leave (Kubernetes removes a pod from its endpoints only after it
    /// started terminating).
    #[arg(long, env = "HERALD_DRAIN_DELAY_SECS", default_value_t = 5)]
    pub drain_delay_secs: u64,
    /// Interval of ActionCable `ping` frames, ms (Rails: 3000).
    #[arg(long, env = "HERALD_CABLE_PING_INTERVAL_MS", default_value_t = 3000)]
    pub cable_ping_interval_ms: u64,
    /// Pulse legacy mode: accept `/stream?account_id=` with no credential.
    /// Anyone who knows an account id then reads its events; only for
    /// trusted networks. Logged as a warning at startup.
    #[arg(
        long,
        env = "HERALD_STREAM_LEGACY_ACCOUNT_AUTH",
        default_value_t = false
    )]
    pub stream_legacy_account_auth: bool,
    /// How long a presence heartbeat keeps someone online, seconds.
    #[arg(long, env = "HERALD_PRESENCE_WINDOW_SECS", default_value_t = 60)]
    pub presence_window_secs: u64,
    /// Read the identities topic (opaque tokens). Readiness waits for it.
    #[arg(long, env = "HERALD_IDENTITIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub identities: bool,
    /// Open connections allowed per client IP (0: no limit); 429 beyond.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: u32,
    /// Open connections allowed per account (0: no limit).
    #[arg(
        long,
        env = "HERALD_MAX_CONNECTIONS_PER_ACCOUNT",
        default_value_t = 10_000
    )]
    pub max_connections_per_account: u32,
    /// Milliseconds an opaque token this pod does not know yet waits for
    /// the identities topic to be read up to its end before it is refused:
    /// a token registered (PUT /v1/identities) right before the client
    /// connects is accepted (0: refuse at once).
    #[arg(long, env = "HERALD_UNKNOWN_TOKEN_WAIT_MS", default_value_t = 2000)]
    pub unknown_token_wait_ms: u64,
    /// Proxies and load balancers whose word on the client's address is
    /// believed (`X-Forwarded-For`, `Forwarded`, the PROXY protocol), as
    /// CIDR ranges or addresses, comma-separated (empty: nobody; the TCP
    /// peer is the client). Per-address limits key on that address.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Connections from trusted proxies start with a PROXY protocol v1/v2
    /// header (HAProxy, AWS NLB, ingress-nginx `use-proxy-protocol`).
    #[arg(long, env = "HERALD_PROXY_PROTOCOL", default_value_t = false)]
    pub proxy_protocol: bool,
    /// Origins browsers may open WebSockets from, comma-separated (empty: any); 403 otherwise.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Client commands per second per connection (ActionCable `message`), burst of the same size (0: no limit).
    #[arg(long, env = "HERALD_MAX_COMMANDS_PER_SECOND", default_value_t = 20)]
    pub max_commands_per_second: u32,
    /// Subscribe and unsubscribe commands per second per connection, STOMP and
    /// ActionCable, burst of the same size; past it the connection is read no
    /// faster (0: no limit).
    #[arg(long, env = "HERALD_MAX_SUBSCRIBES_PER_SECOND", default_value_t = 20)]
    pub max_subscribes_per_second: u32,
    /// Seconds an ActionCable socket may stay open without an accepted
    /// subscription before it is closed (`disconnect`, `unauthorized`).
    #[arg(
        long,
        env = "HERALD_CABLE_ANONYMOUS_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub cable_anonymous_timeout_secs: u64,
    /// PEM certificate chain: serve `wss://` directly (with --tls-key).
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<String>,
    /// Records kept per partition in the recent-history buffer (resume without Kafka).
    #[arg(long, env = "HERALD_HISTORY_BUFFER_EVENTS", default_value_t = 10_000)]
    pub history_buffer_events: usize,
    /// Bytes the recent-history buffer holds at most, over every partition
    /// (estimated; the oldest records go first).
    #[arg(long, env = "HERALD_HISTORY_BUFFER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub history_buffer_bytes: usize,
    /// Oldest position a client may resume from, seconds (older: gap signal).
    #[arg(long, env = "HERALD_RESUME_MAX_AGE_SECS", default_value_t = 86_400)]
    pub resume_max_age_secs: u64,
    /// Most events one stream may replay on resume (more: gap signal).
    #[arg(long, env = "HERALD_RESUME_MAX_EVENTS", default_value_t = 10_000)]
    pub resume_max_events: usize,
    /// Kafka reads for resuming clients (read-backs, offset lookups) at once,
    /// pod-wide; more wait their turn.
    #[arg(long, env = "HERALD_RESUME_KAFKA_READS", default_value_t = 4)]
    pub resume_kafka_reads: usize,
    /// Stream epoch reported to AnyCable clients (joined with each topic's Kafka ID).
    #[arg(long, env = "HERALD_RESUME_EPOCH", default_value = "herald")]
    pub resume_epoch: String,
    /// Path of the TypeID JSON endpoint.
    #[arg(long, env = "HERALD_TYPEID_PATH", default_value = "/notifications")]
    pub typeid_path: String,
    /// Time allowed for a TypeID client's JoinRequest, ms.
    #[arg(long, env = "HERALD_TYPEID_JOIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub typeid_join_timeout_ms: u64,
    /// A joined TypeID client silent this long is closed, seconds (clients ping every 5 s).
    #[arg(long, env = "HERALD_TYPEID_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub typeid_idle_timeout_secs: u64,
    /// Lowest accepted TypeID ClientVersion (inclusive).
    #[arg(
        long,
        env = "HERALD_TYPEID_MIN_CLIENT_VERSION",
        default_value = "7.0.0"
    )]
    pub typeid_min_client_version: Option<String>,
    /// Highest accepted TypeID ClientVersion (inclusive), if any.
    #[arg(long, env = "HERALD_TYPEID_MAX_CLIENT_VERSION")]
    pub typeid_max_client_version: Option<String>,
    /// TypeID joins allowed per client IP per minute (JoinResponse Status 6 beyond).
    #[arg(
        long,
        env = "HERALD_TYPEID_JOINS_PER_IP_PER_MINUTE",
        default_value_t = 120
    )]
    pub typeid_joins_per_ip_per_minute: u32,
    /// TypeID message requests per session per second (Status 5 beyond).
    #[arg(long, env = "HERALD_TYPEID_MESSAGES_PER_SECOND", default_value_t = 10)]
    pub typeid_messages_per_second: u32,
    /// Longest TypeID message text, bytes.
    #[arg(long, env = "HERALD_TYPEID_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub typeid_max_message_bytes: usize,
    /// Time Kafka has to acknowledge client writes (TypeID messages, presence), ms.
    #[arg(
        long,
        env = "HERALD_TYPEID_PRODUCE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub typeid_produce_timeout_ms: u64,
    /// Only accept TypeID writes to conversations the credential lists
    /// (identity `conversations`, JWT `conversations` claim).
    #[arg(long, env = "HERALD_TYPEID_REQUIRE_CONVERSATION_GRANT", default_value_t = true, action = clap::ArgAction::Set)]
    pub typeid_require_conversation_grant: bool,
    /// Partition-affine pod groups (docs/scaling.md): the number of groups
    /// `G`. A pod of group `g` reads only the partitions `p % G == g` of
    /// every served event topic and serves only the accounts whose records
    /// land there; clients of other accounts are redirected to their group.
    /// `G` must divide every served topic's partition count. 1 (the
    /// default): every pod reads every partition.
    #[arg(long, env = "HERALD_PARTITION_GROUPS", default_value_t = 1)]
    pub partition_groups: u32,
    /// This pod's group, 0 <= g < --partition-groups.
    #[arg(long, env = "HERALD_PARTITION_GROUP", default_value_t = 0)]
    pub partition_group: u32,
    /// Each group's base WebSocket URL, `{group}` standing for its number
    /// (e.g. `wss://rt.example.com/g/{group}`): where redirects and
    /// `GET /v1/route` send a client (which appends its endpoint path).
    #[arg(long, env = "HERALD_GROUP_URL_TEMPLATE", conflicts_with = "group_urls")]
    pub group_url_template: Option<String>,
    /// Each group's base WebSocket URL, in group order, comma-separated
    /// (instead of --group-url-template).
    #[arg(long, env = "HERALD_GROUP_URLS", value_delimiter = ',')]
    pub group_urls: Vec<String>,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OpenTelemetry span export (off unless `--otlp-endpoint` is set).
    #[command(flatten)]
    pub otlp: herald_runtime::otlp::OtlpArgs,
    /// Serve the web console at `/console/` on the ops listener (needs
    /// `--console-token`): it shows every account's connections, presence
    /// and events to whoever holds the admin credential.
    #[arg(long, env = "HERALD_CONSOLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub console: bool,
    /// The console's admin credential (at least 16 characters), sent as
    /// `Authorization: Bearer` or typed into the console's login form.
    #[arg(long, env = "HERALD_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
    /// The producer's events URL (`http://host:port/v1/events`) the
    /// console's "publish a test event" form posts to; without it the form
    /// is not offered. Meant for development mode.
    #[arg(long, env = "HERALD_CONSOLE_PUBLISH_URL")]
    pub console_publish_url: Option<String>,
}

/// A comma-separated flag's family names (blanks ignored, repeats once, in
/// order); `unknown` names the flag in the error for a name that is none.
fn parse_families(
    names: &[String],
    unknown: fn(String) -> ConfigError,
) -> Result<Vec<Family>, ConfigError> {
    let mut families = Vec::new();
    for name in names.iter().map(|f| f.trim()).filter(|f| !f.is_empty()) {
        let family = Family::from_suffix(name).ok_or_else(|| unknown(name.to_owned()))?;
        if !families.contains(&family) {
            families.push(family);
        }
    }
    Ok(families)
}

/// A setting that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown event family.
    #[error("unknown event family `{0}` in --families (known: {known})", known = DEFAULT_FAMILIES)]
    UnknownFamily(String),
    /// Unknown event family to conflate.
    #[error("unknown event family `{0}` in --conflate-families (known: {known})", known = DEFAULT_FAMILIES)]
    UnknownConflateFamily(String),
    /// No families.
    #[error("--families must name at least one event family")]
    NoFamilies,
    /// No way to verify credentials.
    #[error(
        "no credentials can be verified: set HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY_FILE, or enable --identities"
    )]
    NoAuth,
    /// A number out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] herald_runtime::tls::TlsError),
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    /// Bad Kafka settings.
    #[error(transparent)]
    Kafka(#[from] herald_runtime::kafka::KafkaConfigError),
    /// The console is enabled without a usable admin credential.
    #[error(
        "--console (HERALD_CONSOLE) needs an admin credential: set --console-token or HERALD_CONSOLE_TOKEN \
         (at least 16 characters); the console shows every account's data"
    )]
    ConsoleToken,
    /// Bad OTLP export settings.
    #[error(transparent)]
    Otlp(#[from] herald_runtime::otlp::OtlpConfigError),
}

impl GatewayConfig {
    /// Parse the real command line, environment and configuration file.
    pub fn load() -> Result<Self, herald_runtime::config_file::ParseError> {
        herald_runtime::config_file::parse(std::env::args().collect())
    }

    /// Parse from explicit arguments (first one is the program name).
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<String>>(
        args: I,
    ) -> Result<Self, herald_runtime::config_file::ParseError> {
        herald_runtime::config_file::parse(args.into_iter().map(Into::into).collect())
    }

    /// Which families conflate (`--conflate-families`), checked.
    pub fn conflation(&self) -> Result<crate::core::conflation::Conflation, ConfigError> {
        let families = parse_families(&self.conflate_families, ConfigError::UnknownConflateFamily)?;
        Ok(crate::core::conflation::Conflation::new(families))
    }

    /// The topics to read, checked.
    pub fn topics(&self) -> Result<Vec<String>, ConfigError> {
        let families = parse_families(&self.families, ConfigError::UnknownFamily)?;
        if families.is_empty() {
            return Err(ConfigError::NoFamilies);
        }
        Ok(families
            .iter()
            .map(|f| f.topic(&self.kafka.topic_prefix))
            .collect())
    }

    /// The per-connection outbound bounds, shared by every protocol.
    pub fn outbound(&self) -> Result<crate::transport::connection::ConnLimits, ConfigError> {
        if self.outbound_queue == 0 || self.max_outbound_bytes == 0 || self.write_timeout_secs == 0
        {
            return Err(ConfigError::OutOfRange(
                "--outbound-queue, --max-outbound-bytes and --write-timeout-secs must be positive"
                    .into(),
            ));
        }
        if self.max_outbound_bytes < self.max_frame_bytes {
            return Err(ConfigError::OutOfRange(format!(
                "--max-outbound-bytes ({}) must be at least --max-frame-bytes ({}): a reply can echo a whole client frame",
                self.max_outbound_bytes, self.max_frame_bytes
            )));
        }
        Ok(crate::transport::connection::ConnLimits {
            frames: self.outbound_queue,
            bytes: self.max_outbound_bytes,
            write_timeout: Duration::from_secs(self.write_timeout_secs),
            client_frames_per_second: self.max_client_frames_per_second,
        })
    }

    /// ActionCable settings.
    pub fn cable(&self) -> Result<crate::protocols::cable::CableConfig, ConfigError> {
        if self.cable_ping_interval_ms == 0 || self.presence_window_secs == 0 {
            return Err(ConfigError::OutOfRange(
                "--cable-ping-interval-ms and --presence-window-secs must be positive".into(),
            ));
        }
        Ok(crate::protocols::cable::CableConfig {
            ping_interval: Duration::from_millis(self.cable_ping_interval_ms),
            stream_legacy_account_auth: self.stream_legacy_account_auth,
            max_subscriptions: self.max_subscriptions,
            max_message_bytes: self.max_frame_bytes,
            presence_topic: Family::Presence.topic(&self.kafka.topic_prefix),
        })
    }

    /// The permessage-deflate settings, when enabled.
    pub fn deflate(&self) -> Result<Option<crate::transport::deflate::DeflateConfig>, ConfigError> {
        if !(1..=9).contains(&self.ws_deflate_level) {
            return Err(ConfigError::OutOfRange(format!(
                "--ws-deflate-level must be 1 to 9, not {}",
                self.ws_deflate_level
            )));
        }
        Ok(self
            .ws_deflate
            .then_some(crate::transport::deflate::DeflateConfig {
                min_bytes: self.ws_deflate_min_bytes,
                level: self.ws_deflate_level,
            }))
    }

    /// The TLS configuration, when both files are given.
    pub fn tls(
        &self,
    ) -> Result<Option<std::sync::Arc<herald_runtime::tls::ServerConfig>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => Ok(Some(herald_runtime::tls::server_config(c, k)?)),
            _ => Err(ConfigError::OutOfRange(
                "--tls-cert and --tls-key go together".into(),
            )),
        }
    }

    /// Abuse limits.
    pub fn limits(&self) -> crate::limits::LimitConfig {
        crate::limits::LimitConfig {
            connections_per_ip: self.max_connections_per_ip,
            connections_per_account: self.max_connections_per_account,
            allowed_origins: self
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            commands_per_second: self.max_commands_per_second,
            subscribes_per_second: self.max_subscribes_per_second,
            cable_anonymous_timeout: Duration::from_secs(self.cable_anonymous_timeout_secs.max(1)),
        }
    }

    /// Resume settings.
    pub fn resume(&self) -> Result<crate::kafka::resume::ResumeConfig, ConfigError> {
        if self.resume_max_age_secs == 0 || self.resume_epoch.trim().is_empty() {
            return Err(ConfigError::OutOfRange(
                "--resume-max-age-secs must be positive and --resume-epoch non-empty".into(),
            ));
        }
        Ok(crate::kafka::resume::ResumeConfig {
            buffer_events: self.history_buffer_events,
            buffer_bytes: self.history_buffer_bytes,
            max_age: Duration::from_secs(self.resume_max_age_secs),
            max_events: self.resume_max_events,
            kafka: self.kafka.clone(),
            epoch: self.resume_epoch.clone(),
            kafka_reads: Arc::new(tokio::sync::Semaphore::new(self.resume_kafka_reads.max(1))),
            time_reader: crate::kafka::resume::TimeReader::default(),
        })
    }

    /// The TypeID endpoint settings, checked.
    pub fn typeid(&self) -> Result<crate::protocols::typeid::TypeIdConfig, ConfigError> {
        if !self.typeid_path.starts_with('/')
            || ["/ws.communication", "/cable", "/stream", "/api/v1/stream"]
                .contains(&self.typeid_path.as_str())
        {
            return Err(ConfigError::OutOfRange(format!(
                "--typeid-path `{}` must start with / and not clash with another endpoint",
                self.typeid_path
            )));
        }
        if self.typeid_join_timeout_ms == 0
            || self.typeid_idle_timeout_secs == 0
            || self.typeid_messages_per_second == 0
            || self.typeid_joins_per_ip_per_minute == 0
            || self.typeid_produce_timeout_ms < 100
        {
            return Err(ConfigError::OutOfRange(
                "TypeID timeouts and limits must be positive (produce timeout at least 100 ms)"
                    .into(),
            ));
        }
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        Ok(crate::protocols::typeid::TypeIdConfig {
            join_timeout: Duration::from_millis(self.typeid_join_timeout_ms),
            idle_timeout: Duration::from_secs(self.typeid_idle_timeout_secs),
            min_client_version: nonempty(&self.typeid_min_client_version),
            max_client_version: nonempty(&self.typeid_max_client_version),
            joins_per_ip_per_minute: self.typeid_joins_per_ip_per_minute,
            messages_per_second: self.typeid_messages_per_second,
            max_message_chars: self.typeid_max_message_bytes,
            produce_timeout: Duration::from_millis(self.typeid_produce_timeout_ms),
            require_conversation_grant: self.typeid_require_conversation_grant,
            commands_topic: Family::ClientCommands.topic(&self.kafka.topic_prefix),
            max_frame_bytes: self.max_frame_bytes,
        })
    }

    /// The STOMP endpoint settings, checked.
    pub fn stomp(&self) -> Result<StompConfig, ConfigError> {
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::OutOfRange(
                "--max-frame-bytes must be at least 1024".into(),
            ));
        }
        if self.max_subscriptions == 0 || self.max_headers == 0 {
            return Err(ConfigError::OutOfRange(
                "--max-subscriptions and --max-headers must be positive".into(),
            ));
        }
        if self.connect_timeout_ms == 0 || self.idle_timeout_secs == 0 {
            return Err(ConfigError::OutOfRange("timeouts must be positive".into()));
        }
        Ok(StompConfig {
            heartbeat_send_ms: self.stomp_heartbeat_send_ms,
            heartbeat_recv_ms: self.stomp_heartbeat_recv_ms,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_subscriptions: self.max_subscriptions,
            limits: Limits {
                max_frame_bytes: self.max_frame_bytes,
                max_headers: self.max_headers,
                max_header_bytes: self.max_header_bytes,
            },
        })
    }

    /// The trusted proxies.
    pub fn proxies(&self) -> Result<crate::transport::proxy::TrustedProxies, ConfigError> {
        let proxies = crate::transport::proxy::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::OutOfRange(format!("--trusted-proxies: {e}")))?;
        if self.proxy_protocol && proxies.is_empty() {
            return Err(ConfigError::OutOfRange(
                "--proxy-protocol needs --trusted-proxies: the header is read only from those peers".into(),
            ));
        }
        if self.proxy_protocol && self.tls_cert.is_some() {
            return Err(ConfigError::OutOfRange(
                "--proxy-protocol with --tls-cert is not supported: terminate TLS at the proxy"
                    .into(),
            ));
        }
        Ok(proxies)
    }

    /// The partition groups, checked (group in range, one URL per group).
    pub fn partition_groups(&self) -> Result<crate::routing::groups::PartitionGroups, ConfigError> {
        let urls: Vec<String> = match &self.group_url_template {
            Some(t) if !t.contains("{group}") => {
                return Err(ConfigError::OutOfRange(format!(
                    "--group-url-template `{t}` must contain {{group}} (each group has its own URL)"
                )));
            }
            Some(t) => (0..self.partition_groups.min(4096))
                .map(|g| t.replace("{group}", &g.to_string()))
                .collect(),
            None => self
                .group_urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
        };
        if self.partition_groups > 4096 {
            return Err(ConfigError::OutOfRange(
                "--partition-groups must be at most 4096".into(),
            ));
        }
        crate::routing::groups::PartitionGroups::with_partitioner(
            self.partition_groups,
            self.partition_group,
            urls,
            self.kafka.partitioner,
        )
        .map_err(ConfigError::OutOfRange)
    }

    /// The console settings, when the console is enabled.
    pub fn console(&self) -> Result<Option<crate::app::console::ConsoleConfig>, ConfigError> {
        if !self.console {
            return Ok(None);
        }
        let token = self
            .console_token
            .as_deref()
            .map(str::trim)
            .filter(|t| t.chars().count() >= 16)
            .ok_or(ConfigError::ConsoleToken)?;
        let publish_url = match self.console_publish_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_owned()),
            Some(u) => {
                return Err(ConfigError::OutOfRange(format!(
                    "--console-publish-url `{u}` must be an http:// or https:// URL"
                )));
            }
        };
        Ok(Some(crate::app::console::ConsoleConfig {
            token: token.to_owned(),
            publish_url,
        }))
    }

    /// Check everything that can be checked without I/O on the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.topics()?;
        self.proxies()?;
        self.stomp()?;
        self.cable()?;
        self.typeid()?;
        self.resume()?;
        self.tls()?;
        self.kafka.producer_config()?;
        self.otlp.validate()?;
        self.console()?;
        self.partition_groups()?;
        self.conflation()?;
        if self.jwt_secret.is_none()
            && self.jwt_public_key_file.is_empty()
            && self.jwt_jwks_file.is_none()
            && !self.identities
        {
            return Err(ConfigError::NoAuth);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> GatewayConfig {
        let mut args = vec!["herald-gateway", "--jwt-secret", "0123456789abcdef0123"];
        args.extend_from_slice(extra);
        GatewayConfig::from_args(args).unwrap()
    }

    #[test]
    fn conflation_defaults_to_the_superseding_families_and_refuses_unknown_ones() {
        use herald_schemas::Family;
        let default = parse(&[]).conflation().expect("default");
        assert_eq!(
            default.families(),
            [Family::UnreadCount, Family::Metadata, Family::Presence]
        );
        assert!(
            parse(&["--conflate-families", ""])
                .conflation()
                .expect("none")
                .families()
                .is_empty()
        );
        let err = parse(&["--conflate-families", "unread-count,bogus"])
            .validate()
            .expect_err("unknown family");
        assert!(
            err.to_string().contains("`bogus` in --conflate-families"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        c.validate().unwrap();
        assert_eq!(c.topics().unwrap().len(), 10);
        assert!(
            c.topics()
                .unwrap()
                .contains(&"herald.unread-count".to_owned())
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let err = parse(&["--families", "message,bogus"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = parse(&["--max-frame-bytes", "10"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("max-frame-bytes"), "{err}");
        assert!(GatewayConfig::from_args(["herald-gateway", "--listen", "nonsense"]).is_err());
        let no_auth =
            GatewayConfig::from_args(["herald-gateway", "--identities", "false"]).unwrap();
        assert!(matches!(no_auth.validate(), Err(ConfigError::NoAuth)));
    }

    #[test]
    fn partition_groups_default_to_one_and_are_checked() {
        let g = parse(&[]).partition_groups().unwrap();
        assert_eq!((g.groups(), g.group()), (1, 0));
        let c = parse(&[
            "--partition-groups",
            "3",
            "--partition-group",
            "2",
            "--group-url-template",
            "wss://rt.example.com/g/{group}",
        ]);
        c.validate().unwrap();
        let g = c.partition_groups().unwrap();
        let theirs = (1..100)
            .map(|a| a.to_string())
            .find(|a| g.group_of(a) == 1)
            .unwrap();
        assert_eq!(g.route(&theirs).url, Some("wss://rt.example.com/g/1"));
        let c = parse(&[
            "--partition-groups",
            "2",
            "--partition-group",
            "1",
            "--group-urls",
            "ws://a:1,ws://b:2",
        ]);
        let g = c.partition_groups().unwrap();
        let zero = (1..100)
            .map(|a| a.to_string())
            .find(|a| g.group_of(a) == 0)
            .unwrap();
        assert_eq!(g.redirect(&zero).and_then(|r| r.url), Some("ws://a:1"));
        for (bad, needle) in [
            (
                vec![
                    "--partition-groups",
                    "2",
                    "--partition-group",
                    "2",
                    "--group-urls",
                    "ws://a,ws://b",
                ],
                "--partition-group 2",
            ),
            (vec!["--partition-groups", "2"], "--group-url-template"),
            (
                vec!["--partition-groups", "2", "--group-url-template", "ws://a"],
                "{group}",
            ),
            (
                vec!["--partition-groups", "2", "--group-urls", "ws://a"],
                "got 1",
            ),
            (vec!["--partition-groups", "0"], "at least 1"),
        ] {
            let err = parse(&bad).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        assert!(
            GatewayConfig::from_args([
                "herald-gateway",
                "--group-urls",
                "ws://a",
                "--group-url-template",
                "ws://{group}"
            ])
            .is_err()
        );
    }

    #[test]
    fn console_is_off_by_default_and_needs_a_credential() {
        assert!(parse(&[]).console().unwrap().is_none());
        for bad in [
            vec!["--console", "true"],
            vec!["--console", "true", "--console-token", "short"],
        ] {
            let err = parse(&bad).validate().unwrap_err();
            assert!(matches!(err, ConfigError::ConsoleToken), "{bad:?}: {err}");
            assert!(err.to_string().contains("HERALD_CONSOLE_TOKEN"), "{err}");
        }
        let enabled = [
            "--console",
            "true",
            "--console-token",
            "an-admin-token-0123",
        ];
        let c = parse(&enabled);
        c.validate().unwrap();
        let console = c.console().unwrap().unwrap();
        assert_eq!(console.token, "an-admin-token-0123");
        assert!(console.publish_url.is_none());
        let err = parse(&[&enabled[..], &["--console-publish-url", "ftp://x"]].concat())
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("console-publish-url"), "{err}");
    }

    #[test]
    fn config_file_supplies_defaults_below_flags() {
        let dir = std::env::temp_dir().join(format!("herald-gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, "outbound-queue = 7\nmax-subscriptions = 3\n").unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--max-subscriptions", "5"]);
        assert_eq!(c.outbound_queue, 7);
        assert_eq!(c.max_subscriptions, 5);
        std::fs::write(&path, "no-such-setting = 1\n").unwrap();
        let err = GatewayConfig::from_args(["herald-gateway", "--config", p])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-setting") || err.contains("NO_SUCH_SETTING"),
            "{err}"
        );
    }
}
