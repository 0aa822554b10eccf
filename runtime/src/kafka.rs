//! Kafka client settings shared by the gateway and the producer, including
//! the security settings (SASL PLAIN/SCRAM, TLS) passed through to librdkafka.

use rdkafka::ClientConfig;

use crate::partitioner::Partitioner;

/// Kafka connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port` list.
    #[arg(
        long = "kafka-brokers",
        env = "HERALD_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Prefix of every Herald topic name (`herald.` gives `herald.message`, ...).
    #[arg(
        long = "topic-prefix",
        env = "HERALD_TOPIC_PREFIX",
        default_value = "herald."
    )]
    pub topic_prefix: String,
    /// Kafka `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long = "kafka-security-protocol", env = "HERALD_KAFKA_SECURITY_PROTOCOL", default_value = "plaintext",
          value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])]
    pub security_protocol: String,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long = "kafka-sasl-mechanism", env = "HERALD_KAFKA_SASL_MECHANISM",
          value_parser = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "HERALD_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// SASL password (never logged).
    #[arg(
        long = "kafka-sasl-password",
        env = "HERALD_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
    /// PEM file of the CA certificates that sign the brokers' certificates.
    #[arg(long = "kafka-ssl-ca-location", env = "HERALD_KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,
    /// Extra librdkafka properties, `key=value`, repeatable (comma-separated in the environment).
    #[arg(
        long = "kafka-property",
        env = "HERALD_KAFKA_PROPERTY",
        value_delimiter = ','
    )]
    pub properties: Vec<String>,
    /// How producers place a record by its key, the account id:
    /// `consistent_random` (CRC-32, librdkafka's default) or
    /// `murmur2_random` (the Java client's default). Herald's producers use
    /// it, and the gateway's partition groups assume it: set it to what
    /// every producer of the topics uses.
    #[arg(long = "partitioner", env = "HERALD_PARTITIONER", value_enum, default_value_t = Partitioner::ConsistentRandom)]
    pub partitioner: Partitioner,
}

/// An invalid Kafka setting.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    /// A `--kafka-property` is not `key=value`.
    #[error("kafka property `{0}` must be key=value")]
    BadProperty(String),
    /// SASL chosen without complete credentials.
    #[error(
        "security protocol {0} needs --kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password"
    )]
    IncompleteSasl(String),
    /// `--kafka-property partitioner=…` disagrees with `--partitioner`.
    #[error(
        "kafka property partitioner={0} disagrees with --partitioner {1}: set the partitioner with --partitioner only"
    )]
    PartitionerConflict(String, &'static str),
    /// No brokers.
    #[error("--kafka-brokers must name at least one host:port")]
    NoBrokers,
}

impl KafkaArgs {
    /// Settings pointing at `brokers` with every other value at its default.
    pub fn for_brokers(brokers: &str) -> Self {
        KafkaArgs {
            brokers: brokers.to_owned(),
            topic_prefix: "herald.".to_owned(),
            security_protocol: "plaintext".to_owned(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            properties: Vec::new(),
            partitioner: Partitioner::default(),
        }
    }

    /// Check the settings and build the librdkafka client configuration.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        if self.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err(KafkaConfigError::NoBrokers);
        }
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", &self.security_protocol)
            .set("client.id", "herald")
            // librdkafka leaves Nagle's algorithm on by default; the Java
            // client turns it off on every socket, and so does Herald:
            // its requests are small and latency-bound (a produce of a few
            // events, the next fetch), and a small write must not wait
            // for the previous one's ACK. On loopback at 50 events/s the
            // measured produce -> fetch latency did not change beyond the
            // run-to-run spread (docs/benchmarks.md); a `--kafka-property`
            // may set it back.
            .set("socket.nagle.disable", "true");
        if self.security_protocol.starts_with("sasl") {
            match (
                &self.sasl_mechanism,
                &self.sasl_username,
                &self.sasl_password,
            ) {
                (Some(m), Some(u), Some(p)) => {
                    cfg.set("sasl.mechanism", m)
                        .set("sasl.username", u)
                        .set("sasl.password", p);
                }
                _ => {
                    return Err(KafkaConfigError::IncompleteSasl(
                        self.security_protocol.clone(),
                    ));
                }
            }
        }
        if let Some(ca) = &self.ssl_ca_location {
            cfg.set("ssl.ca.location", ca);
        }
        for prop in &self.properties {
            let (k, v) = prop
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| KafkaConfigError::BadProperty(prop.clone()))?;
            cfg.set(k.trim(), v.trim());
        }
        Ok(cfg)
    }

    /// [`client_config`](Self::client_config) for a producer: its
    /// `partitioner` is `--partitioner` (a `--kafka-property partitioner=`
    /// naming another is refused: the gateway computes partitions with
    /// `--partitioner`).
    pub fn producer_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut cfg = self.client_config()?;
        let wanted = self.partitioner.name();
        match cfg.get("partitioner") {
            Some(set) if set != wanted => {
                return Err(KafkaConfigError::PartitionerConflict(
                    set.to_owned(),
                    wanted,
                ));
            }
            _ => {
                cfg.set("partitioner", wanted);
            }
        }
        Ok(cfg)
    }

    /// [`client_config`](Self::client_config) for a consumer that is
    /// assigned partitions (never joins a group, never commits): a unique
    /// `group.id` starting with `group_prefix` (librdkafka wants one), no
    /// auto-commit, and `fetch.queue.backoff.ms` 10 unless configured.
    /// librdkafka's default (1000 ms) postpones the next fetch by a second
    /// whenever its local queue is over the thresholds, which starves a
    /// consumer that does work per record: measured on Apache Kafka, the
    /// gateway read a backlog at 167,000 records/s with the default and
    /// 800,000/s with 10 ms (docs/benchmarks.md).
    pub fn consumer_config(&self, group_prefix: &str) -> Result<ClientConfig, KafkaConfigError> {
        let mut cfg = self.client_config()?;
        cfg.set("enable.auto.commit", "false").set(
            "group.id",
            format!("{group_prefix}-{}", uuid::Uuid::new_v4().simple()),
        );
        if cfg.get("fetch.queue.backoff.ms").is_none() {
            cfg.set("fetch.queue.backoff.ms", "10");
        }
        Ok(cfg)
    }
}

/// How topics are created: partitions, replication factor and topic
/// configuration (e.g. `min.insync.replicas`, `retention.ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    /// Partitions per topic.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication: i32,
    /// Topic configuration entries set at creation.
    pub config: Vec<(String, String)>,
    /// Place every partition's replicas on these brokers, the first one the
    /// preferred leader (`None`: the broker decides, `replication` replicas).
    pub replicas: Option<Vec<i32>>,
}

impl TopicLayout {
    /// `partitions` partitions, one replica, broker defaults otherwise.
    pub fn partitions(partitions: i32) -> TopicLayout {
        TopicLayout {
            partitions,
            replication: 1,
            config: Vec::new(),
            replicas: None,
        }
    }

    /// The same layout with every partition's replicas on `brokers`, led by
    /// the first one when it is up.
    pub fn on_brokers(mut self, brokers: &[i32]) -> TopicLayout {
        self.replication = brokers.len() as i32;
        self.replicas = Some(brokers.to_vec());
        self
    }

    /// The same layout with `replication` replicas.
    pub fn replicated(mut self, replication: i32) -> TopicLayout {
        self.replication = replication;
        self
    }

    /// The same layout with a topic configuration entry.
    pub fn with(mut self, key: &str, value: impl ToString) -> TopicLayout {
        self.config.push((key.to_owned(), value.to_string()));
        self
    }
}

/// Create `topics` laid out as `layout`; topics that already exist are
/// fine. `compacted` topics also get `cleanup.policy=compact`.
pub async fn ensure_topics(
    args: &KafkaArgs,
    topics: &[String],
    compacted: &[String],
    layout: &TopicLayout,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = args.client_config()?.create()?;
    let placement: Vec<&[i32]> = match &layout.replicas {
        Some(brokers) => vec![brokers.as_slice(); layout.partitions.max(0) as usize],
        None => Vec::new(),
    };
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let replication = if layout.replicas.is_some() {
                TopicReplication::Variable(&placement)
            } else {
                TopicReplication::Fixed(layout.replication)
            };
            let mut topic = NewTopic::new(t, layout.partitions, replication);
            for (k, v) in &layout.config {
                topic = topic.set(k, v);
            }
            if compacted.contains(t) {
                topic = topic.set("cleanup.policy", "compact");
            }
            topic
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Delete `topics` (those that do not exist are fine).
pub async fn delete_topics(args: &KafkaArgs, topics: &[String]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = args.client_config()?.create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    for result in admin.delete_topics(&names, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => anyhow::bail!("cannot delete topic {topic}: {code}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_requires_credentials() {
        let mut k = KafkaArgs::for_brokers("a:1");
        k.security_protocol = "sasl_ssl".into();
        assert!(matches!(
            k.client_config(),
            Err(KafkaConfigError::IncompleteSasl(_))
        ));
        k.sasl_mechanism = Some("SCRAM-SHA-512".into());
        k.sasl_username = Some("u".into());
        k.sasl_password = Some("p".into());
        let cfg = k.client_config().unwrap();
        assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    }

    #[test]
    fn nagle_is_off_unless_a_property_turns_it_on() {
        let mut k = KafkaArgs::for_brokers("a:1");
        let cfg = k.client_config().unwrap();
        assert_eq!(cfg.get("socket.nagle.disable"), Some("true"));
        k.properties = vec!["socket.nagle.disable=false".into()];
        let cfg = k.client_config().unwrap();
        assert_eq!(cfg.get("socket.nagle.disable"), Some("false"));
    }

    #[test]
    fn properties_must_be_pairs() {
        let mut k = KafkaArgs::for_brokers("a:1");
        k.properties = vec!["linger.ms=5".into()];
        assert_eq!(k.client_config().unwrap().get("linger.ms"), Some("5"));
        k.properties = vec!["nonsense".into()];
        assert!(k.client_config().is_err());
        assert!(KafkaArgs::for_brokers(" ").client_config().is_err());
    }

    #[test]
    fn producers_get_the_partitioner() {
        let mut k = KafkaArgs::for_brokers("a:1");
        assert_eq!(
            k.producer_config().unwrap().get("partitioner"),
            Some("consistent_random")
        );
        assert_eq!(k.client_config().unwrap().get("partitioner"), None);
        k.partitioner = Partitioner::Murmur2Random;
        assert_eq!(
            k.producer_config().unwrap().get("partitioner"),
            Some("murmur2_random")
        );
        k.properties = vec!["partitioner=murmur2_random".into()];
        assert!(k.producer_config().is_ok());
        k.properties = vec!["partitioner=random".into()];
        assert!(matches!(
            k.producer_config(),
            Err(KafkaConfigError::PartitionerConflict(_, "murmur2_random"))
        ));
    }
}
