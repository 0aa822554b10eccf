//! "Watch as": what a credential receives, live.
//!
//! The credential is resolved by the gateway's own authenticator (JWTs
//! and opaque tokens alike, read-your-writes included), and a recipient
//! with that identity is registered in the router: the router offers it
//! exactly the events it offers a client connection of that identity, by
//! the same account and audience rules. Each event is one line of the
//! answer (NDJSON), until the browser goes away, the credential expires or
//! is revoked, or the pod stops.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Console;
use crate::{
    core::{
        event::RoutedEvent,
        identity::{Identity, PrincipalKind},
    },
    protocols::cable::channel::room_accepts,
    routing::router::{FrameCache, Recipient, Router},
};

/// Lines queued for one watcher; past this, events are counted as dropped
/// (the console never slows delivery to real clients down).
const QUEUE: usize = 1024;

/// Longest silence on a watch.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// A console watcher as the router sees it.
struct Watcher {
    identity: Identity,
    tx: mpsc::Sender<String>,
    dropped: AtomicU64,
}

impl Recipient for Watcher {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn offer(&self, event: &Arc<RoutedEvent>, _cache: &mut FrameCache) {
        let line = json!({
            "kind": "event",
            "position": event.position(),
            "type": &event.envelope.event_type,
            // What a RoomChannel subscription of this identity would get:
            // it narrows further (contacts never see private notes).
            "room_channel": room_accepts(&self.identity, event),
            "envelope": &event.envelope,
            "dropped_before": self.dropped.load(Ordering::Relaxed),
        })
        .to_string();
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Unregisters the watcher however the answer ends.
struct Registration {
    router: Arc<Router>,
    identities: Arc<crate::kafka::identities::IdentityTable>,
    account: Arc<str>,
    id: u64,
    token_key: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.router.remove(&self.account, self.id);
        if let Some(key) = &self.token_key {
            self.identities.unwatch(key, self.id);
        }
    }
}

#[derive(Deserialize)]
pub(super) struct WatchRequest {
    credential: String,
}

fn line(v: Value) -> Result<Bytes, Infallible> {
    Ok(Bytes::from(v.to_string() + "\n"))
}

/// `POST /console/api/watch` with `{"credential": ...}`: the credential is
/// in the body, never in a URL (URLs end up in logs and history).
pub(super) async fn watch(
    State(console): State<Console>,
    Json(request): Json<WatchRequest>,
) -> Response {
    let shared = console.0.shared.clone();
    let identity = match shared.auth.resolve_fresh(&request.credential).await {
        Ok(identity) => identity,
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": format!("the gateway refuses this credential: {e}"), "reason": e.as_label()})),
            )
                .into_response();
        }
    };
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let id = crate::transport::connection::next_conn_id();
    let revoked = match &identity.token_key {
        Some(key) => shared.auth.identities.watch(key, id),
        None => CancellationToken::new(),
    };
    let registration = Registration {
        router: shared.router.clone(),
        identities: shared.auth.identities.clone(),
        account: identity.account_id.clone(),
        id,
        token_key: identity.token_key.clone(),
    };
    let first = json!({
        "kind": "identity",
        "account_id": &*identity.account_id,
        "principal": match identity.kind {
            PrincipalKind::User => "user",
            PrincipalKind::Contact => "contact",
        },
        "id": &identity.id,
        "role": &identity.role,
        "expires_at": identity.expires_at,
        "opaque": identity.token_key.is_some(),
    });
    let expires_at = identity.expires_at;
    shared.router.insert(
        id,
        Arc::new(Watcher {
            identity,
            tx,
            dropped: AtomicU64::new(0),
        }),
    );
    let stop = console.0.stop.clone();
    let (out, body) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let _registration = registration;
        if out.send(line(first)).await.is_err() {
            return;
        }
        let end = loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(l) => {
                        if out.send(Ok(Bytes::from(l + "\n"))).await.is_err() {
                            return;
                        }
                    }
                    None => break "closed",
                },
                // The browser went away.
                _ = out.closed() => return,
                // A line now and then keeps proxies from closing a quiet watch.
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if out.send(line(json!({"kind": "keepalive"}))).await.is_err() {
                        return;
                    }
                }
                _ = revoked.cancelled() => break "revoked",
                _ = crate::transport::session::expired(expires_at) => break "expired",
                _ = stop.cancelled() => break "stopping",
            }
        };
        let _ = out.send(line(json!({"kind": "end", "reason": end}))).await;
    });
    let body = futures_util::stream::unfold(body, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}
