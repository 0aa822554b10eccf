//! What the protocol sessions share: the router, credentials, settings and
//! the pod's drain signal. `app::server` builds it once per gateway.

use std::{sync::Arc, time::Duration};

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticator,
    core::identity::{Identity, PrincipalKind},
    kafka::resume::ResumeConfig,
    limits::Limits,
    metrics::Metrics,
    protocols::{
        cable::CableConfig,
        stomp::StompConfig,
        typeid::{JoinThrottle, TypeIdConfig},
    },
    routing::{presence::PresenceTable, router::Router},
};

/// What every connection task shares.
pub struct Context {
    /// Account -> recipients index.
    pub router: Arc<Router>,
    /// Metrics.
    pub metrics: Metrics,
    /// Credential resolution (JWTs and opaque tokens).
    pub auth: Authenticator,
    /// STOMP settings.
    pub stomp: StompConfig,
    /// ActionCable settings.
    pub cable: CableConfig,
    /// TypeID settings.
    pub typeid: TypeIdConfig,
    /// Resume limits.
    pub resume: ResumeConfig,
    /// TypeID joins per client IP.
    pub typeid_throttle: JoinThrottle,
    /// Who is online, per account.
    pub presence: Arc<PresenceTable>,
    /// Producer for records the gateway writes (presence heartbeats).
    pub producer: FutureProducer,
    /// Cancelled when the pod drains.
    pub shutdown: CancellationToken,
    /// Clients are told to reconnect spread over this window after shutdown begins.
    pub drain_spread: Duration,
    /// Abuse limits.
    pub limits: Arc<Limits>,
    /// Per-connection outbound bounds (every protocol).
    pub outbound: crate::transport::connection::ConnLimits,
    /// Peers whose word on the client's address is believed.
    pub proxies: Arc<crate::transport::proxy::TrustedProxies>,
}

impl Context {
    /// Resolves when connection `conn_id` should be told to reconnect
    /// elsewhere: after shutdown began, at a point spread evenly over the
    /// drain window, so clients do not all reconnect at once.
    pub fn drain_notice(&self, conn_id: u64) -> impl std::future::Future<Output = ()> + use<> {
        let shutdown = self.shutdown.clone();
        let window_ms = self.drain_spread.as_millis().max(1) as u64;
        // A multiplicative hash spreads consecutive ids over the window.
        let delay = Duration::from_millis(conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % window_ms);
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(delay).await;
        }
    }

    /// Write a presence heartbeat for `identity` to the presence topic, in
    /// the background (a lost heartbeat is repaired by the next one).
    pub fn publish_presence(&self, identity: &Identity, at_ms: i64) {
        let kind = match identity.kind {
            PrincipalKind::User => "user",
            PrincipalKind::Contact => "contact",
        };
        let envelope = serde_json::json!({
            "id": uuid::Uuid::now_v7().to_string(),
            "type": "presence.heartbeat",
            "account_id": &*identity.account_id,
            "occurred_at": time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            "payload": {"kind": kind, "id": &identity.id},
        })
        .to_string();
        let producer = self.producer.clone();
        let topic = self.cable.presence_topic.clone();
        let account = identity.account_id.to_string();
        tokio::spawn(async move {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "type",
                    value: Some("presence.heartbeat"),
                })
                .insert(Header {
                    key: "account_id",
                    value: Some(account.as_str()),
                });
            let record = FutureRecord::to(&topic)
                .key(account.as_bytes())
                .payload(&envelope)
                .headers(headers);
            if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "cannot publish presence heartbeat");
            }
        });
    }
}
