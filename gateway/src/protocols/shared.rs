//! What every protocol session needs, whatever its protocol: the router,
//! metrics, credential resolution, abuse limits, the per-connection
//! outbound bounds and the pod's drain signal. `app::server` builds one
//! [`Shared`] per gateway; what only one protocol uses lives in that
//! protocol's own dependencies (`stomp::StompDeps`, `cable::CableDeps`,
//! `typeid::TypeIdDeps`).

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticator,
    limits::Limits,
    metrics::Metrics,
    routing::{groups::PartitionGroups, router::Router},
    transport::connection::ConnLimits,
};

/// What every connection task shares, whatever its protocol.
pub struct Shared {
    /// Account -> recipients index.
    pub router: Arc<Router>,
    /// Metrics.
    pub metrics: Metrics,
    /// Credential resolution (JWTs and opaque tokens).
    pub auth: Authenticator,
    /// Abuse limits (per-account connections, command rates).
    pub limits: Arc<Limits>,
    /// Per-connection outbound bounds.
    pub outbound: ConnLimits,
    /// When and how connections are told to leave on shutdown.
    pub drain: Drain,
    /// Which accounts this pod serves; clients of the others are
    /// redirected to their group after authentication.
    pub groups: PartitionGroups,
}

impl Shared {
    /// Where a client of `account` must go instead, when another partition
    /// group serves it (counted in `herald_group_redirects_total`). `None`:
    /// this pod serves it.
    pub fn redirect(&self, account: &str, protocol: &str) -> Option<Redirect> {
        let route = self.groups.redirect(account)?;
        self.metrics
            .group_redirects
            .with_label_values(&[protocol])
            .inc();
        tracing::debug!(
            account,
            group = route.group,
            protocol,
            "client redirected to its partition group"
        );
        Some(Redirect {
            group: route.group,
            url: route.url.unwrap_or_default(),
        })
    }
}

/// A client sent to the partition group that owns its account.
#[derive(Debug, Clone, Copy)]
pub struct Redirect {
    /// The owning group.
    pub group: u32,
    /// Its base URL (the client appends its endpoint path).
    pub url: &'static str,
}

/// The pod's drain signal and the window over which clients are told to
/// reconnect elsewhere.
pub struct Drain {
    shutdown: CancellationToken,
    spread: Duration,
}

impl Drain {
    /// Notices go out once `shutdown` is cancelled, spread over `spread`.
    pub fn new(shutdown: CancellationToken, spread: Duration) -> Self {
        Drain { shutdown, spread }
    }

    /// Resolves once the drain has begun.
    pub async fn begun(&self) {
        self.shutdown.cancelled().await;
    }

    /// Resolves when connection `conn_id` should be told to reconnect
    /// elsewhere: after the drain began, at a point spread evenly over the
    /// drain window, so clients do not all reconnect at once.
    pub fn notice(&self, conn_id: u64) -> crate::transport::session::DrainMoment {
        let window_ms = self.spread.as_millis().max(1) as u64;
        // A multiplicative hash spreads consecutive ids over the window.
        let delay = Duration::from_millis(conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % window_ms);
        crate::transport::session::DrainMoment::new(self.shutdown.clone(), delay)
    }
}
