//! A numbered stream of events over three topics of one account, and what a
//! client saw of it: the tests that break pods or brokers mid-stream check
//! that every event arrived exactly once and in order.
//!
//! Event `i` is `conversation.created` (i % 3 == 0), `message.created`
//! (i % 3 == 1) or `tag.updated` (i % 3 == 2), its payload id `i`. STOMP's
//! `/events` gets the message and tag events, ActionCable's RoomChannel the
//! conversation and message events.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{cable::RawCable, stomp::RawStomp};

/// The types a STOMP `/events` subscriber receives.
pub const STOMP_TYPES: &[&str] = &["message.created", "tag.updated"];
/// The types a RoomChannel subscriber receives.
pub const CABLE_TYPES: &[&str] = &["conversation.created", "message.created"];

/// Event `i` of the stream of `account`.
pub fn event(account: &str, i: u64) -> Value {
    match i % 3 {
        0 => {
            json!({"type": "conversation.created", "account_id": account, "payload": {"id": i, "inbox_id": 1, "status": "open"}})
        }
        1 => {
            json!({"type": "message.created", "account_id": account, "payload": {"id": i, "content": format!("m{i}"), "message_type": 0}})
        }
        _ => {
            json!({"type": "tag.updated", "account_id": account, "payload": {"id": format!("{i}"), "name": "n", "color": "c"}})
        }
    }
}

/// The number in a payload's `id` (a number or a numeric string).
pub fn id_of(payload: &Value) -> u64 {
    match &payload["id"] {
        Value::String(s) => s.parse().unwrap_or(u64::MAX),
        v => v.as_u64().unwrap_or(u64::MAX),
    }
}

/// Per type, the ids in arrival order.
pub type Seen = BTreeMap<String, Vec<u64>>;

/// What a client of `types` must see of events `range`, in order.
pub fn expected(range: std::ops::Range<u64>, types: &[&str]) -> Seen {
    let mut m = Seen::new();
    for i in range {
        let e = event("_", i);
        let ty = e["type"].as_str().unwrap_or_default();
        if types.contains(&ty) {
            m.entry(ty.to_owned()).or_default().push(i);
        }
    }
    m
}

/// Number of events in `seen`.
pub fn count(seen: &Seen) -> usize {
    seen.values().map(Vec::len).sum()
}

/// One event a client received.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Event type.
    pub ty: String,
    /// Its number.
    pub n: u64,
    /// Its position, as the protocol gave it (STOMP `message-id`, AnyCable
    /// `stream_id:offset`).
    pub position: Option<String>,
    /// AnyCable's `epoch` of the stream.
    pub epoch: Option<String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// What one client received, in order.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Every event, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// STOMP gap messages (`herald-gap` header values) and AnyCable
    /// `reject_history`s, in arrival order.
    pub gaps: Vec<String>,
}

impl Log {
    /// Per type, the numbers in arrival order.
    pub fn seen(&self) -> Seen {
        let mut m = Seen::new();
        for a in &self.arrivals {
            m.entry(a.ty.clone()).or_default().push(a.n);
        }
        m
    }

    /// The longest time between two consecutive arrivals.
    pub fn longest_pause(&self) -> Duration {
        self.arrivals
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .max()
            .unwrap_or_default()
    }

    /// AnyCable's `history.streams` object for the last position per stream.
    pub fn history_streams(&self) -> Value {
        let mut streams = serde_json::Map::new();
        for a in &self.arrivals {
            if let (Some(p), Some(epoch)) = (&a.position, &a.epoch)
                && let Some((stream, offset)) = p.rsplit_once(':')
            {
                streams.insert(
                    stream.to_owned(),
                    json!({"epoch": epoch, "offset": offset.parse::<i64>().unwrap_or(-1)}),
                );
            }
        }
        Value::Object(streams)
    }

    /// The last position per stream (`topic:partition` -> `message-id`).
    pub fn last_positions(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for p in self.arrivals.iter().filter_map(|a| a.position.as_ref()) {
            if let Some((stream, _)) = p.rsplit_once(':') {
                m.insert(stream.to_owned(), p.clone());
            }
        }
        m
    }
}

/// Read one STOMP frame into `log`: `Ok(false)` when it was not an event.
pub async fn read_stomp(c: &mut RawStomp, log: &mut Log, within: Duration) -> anyhow::Result<bool> {
    let f = c.next_frame_within(within).await?;
    if f.command != "MESSAGE" {
        anyhow::ensure!(f.command != "ERROR", "STOMP error: {}", f.raw);
        return Ok(false);
    }
    if let Some(gap) = f.header("herald-gap") {
        log.gaps.push(format!("{gap} {}", f.body));
        return Ok(false);
    }
    let body: Value = serde_json::from_str(&f.body).with_context(|| f.raw.clone())?;
    let Some(ty) = body["type"].as_str() else {
        // A destination whose bodies are bare payloads (`/queue/...`).
        return Ok(false);
    };
    log.arrivals.push(Arrival {
        ty: ty.to_owned(),
        n: id_of(&body["payload"]),
        position: f.header("message-id").map(str::to_owned),
        epoch: None,
        at: std::time::Instant::now(),
    });
    Ok(true)
}

/// Read one RoomChannel frame into `log`: `Ok(false)` when it was not an event.
pub async fn read_cable(c: &mut RawCable, log: &mut Log, within: Duration) -> anyhow::Result<bool> {
    let f = c
        .next_within(within)
        .await?
        .context("cable socket closed")?;
    if f["type"] == "reject_history" {
        log.gaps.push(f.to_string());
        return Ok(false);
    }
    let msg = &f["message"];
    let Some(ty) = msg["event"].as_str() else {
        return Ok(false);
    };
    log.arrivals.push(Arrival {
        ty: ty.to_owned(),
        n: id_of(&msg["data"]),
        position: f["stream_id"]
            .as_str()
            .map(|s| format!("{s}:{}", f["offset"])),
        epoch: f["epoch"].as_str().map(str::to_owned),
        at: std::time::Instant::now(),
    });
    Ok(true)
}

/// The RoomChannel identifier of an agent JWT of `account`/`user`.
pub fn room_identifier(token: &str, account: &str, user: &str) -> String {
    json!({"channel": "RoomChannel", "pubsub_token": token,
           "account_id": account.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(account)),
           "user_id": user.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(user))})
    .to_string()
}
