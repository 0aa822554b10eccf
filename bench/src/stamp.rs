//! What the load generator publishes and how a client recognises it, sans
//! I/O: each event's payload carries its per-account sequence number and its
//! send time (`"seq":N,"sent_us":T`), in an otherwise ordinary payload of the
//! event type the chosen protocol delivers. Extra payload fields pass through
//! the gateway untouched (docs/events.md), so the stamp reaches every
//! client byte for byte.

use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem;
use std::sync::LazyLock;

/// Which client protocol a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// STOMP over WebSocket at `/ws.communication`, subscribed to `/events`.
    Stomp,
    /// ActionCable RoomChannel at `/cable`.
    Room,
    /// ActionCable NotificationsChannel at `/stream`.
    Notifications,
}

impl Protocol {
    /// The event type published for this protocol's clients.
    pub fn event_type(self) -> &'static str {
        match self {
            Protocol::Stomp => "tag.updated",
            Protocol::Room => "message.created",
            Protocol::Notifications => "removed_message",
        }
    }

    /// Short name (file names, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Stomp => "stomp",
            Protocol::Room => "room",
            Protocol::Notifications => "notifications",
        }
    }
}

/// Microseconds since the Unix epoch. Wall-clock time rather than
/// `Instant` because stamps cross processes (the raw baseline server); on
/// one machine over a few minutes the difference is noise.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What an event's padding is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PadKind {
    /// One repeated byte (compresses to almost nothing).
    #[default]
    Repeat,
    /// Words of a chat message, different for every event (compresses like
    /// real text and JSON).
    Text,
    /// Base64 of random bytes, like an end-to-end encrypted body
    /// (compresses barely).
    Random,
}

/// Padding added to each event payload: `len` bytes of `kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pad {
    /// Bytes of padding (0: none).
    pub len: usize,
    /// What they are.
    pub kind: PadKind,
}

const WORDS: &[&str] = &[
    "hello",
    "thanks",
    "order",
    "shipping",
    "delivered",
    "tomorrow",
    "refund",
    "please",
    "could",
    "you",
    "check",
    "the",
    "status",
    "of",
    "my",
    "account",
    "invoice",
    "payment",
    "received",
    "support",
    "agent",
    "will",
    "reply",
    "soon",
    "conversation",
    "ticket",
    "priority",
    "customer",
    "address",
    "changed",
    "password",
    "reset",
    "link",
    "works",
    "great",
    "issue",
    "resolved",
    "waiting",
    "for",
    "update",
    "on",
    "package",
    "tracking",
    "number",
    "is",
    "and",
    "a",
    "to",
];

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Pad {
    /// The padding of event `g`: the same for the same `g`, different
    /// between events (for `Text` and `Random`).
    pub fn make(&self, g: u64) -> String {
        let mut seed = g.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut out = String::with_capacity(self.len + 16);
        match self.kind {
            PadKind::Repeat => out.extend(std::iter::repeat_n('x', self.len)),
            PadKind::Text => {
                while out.len() < self.len {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
                }
                out.truncate(self.len);
            }
            PadKind::Random => {
                out.extend((0..self.len).map(|_| BASE64[(next() % 64) as usize] as char))
            }
        }
        out
    }
}

/// The payload of event `g` (global number), `seq` (per-account number),
/// sent at `sent_us`, with a `pad` field of `pad.len` bytes when asked.
pub fn payload(protocol: Protocol, g: u64, seq: u64, sent_us: u64, pad: Pad) -> String {
    let pad = if pad.len > 0 {
        format!(",\"pad\":\"{}\"", pad.make(g))
    } else {
        String::new()
    };
    match protocol {
        Protocol::Stomp => format!(
            r#"{{"id":"t-{g}","name":"bench","color":"tag-red"{pad},"seq":{seq},"sent_us":{sent_us}}}"#
        ),
        Protocol::Room => format!(
            r#"{{"id":{g},"message_type":0,"content":"bench message","conversation_id":1{pad},"seq":{seq},"sent_us":{sent_us}}}"#
        ),
        Protocol::Notifications => {
            format!(r#"{{"id":{g}{pad},"seq":{seq},"sent_us":{sent_us}}}"#)
        }
    }
}

/// The Kafka record value (envelope) carrying `payload`.
pub fn envelope(
    protocol: Protocol,
    g: u64,
    account: &str,
    occurred_at: &str,
    payload: &str,
) -> String {
    format!(
        r#"{{"id":"bench-{g}","type":"{}","account_id":"{account}","occurred_at":"{occurred_at}","payload":{payload}}}"#,
        protocol.event_type()
    )
}

static SEQ: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"seq\":"));

/// The `(seq, sent_us)` stamp in a received frame, if it carries one (pings,
/// heart-beats and confirmations do not).
pub fn parse(frame: &[u8]) -> Option<(u64, u64)> {
    parse_at(frame, SEQ.find(frame)?)
}

/// The stamp whose `"seq":` starts at `found`.
fn parse_at(frame: &[u8], found: usize) -> Option<(u64, u64)> {
    let at = found + 6;
    let (seq, used) = digits(frame.get(at..)?)?;
    if let Some(rest) = frame.get(at + used..)?.strip_prefix(b",\"sent_us\":") {
        let (sent, _) = digits(rest)?;
        return Some((seq, sent));
    }
    // Servers that re-encode the payload with sorted keys (anycable-go)
    // put `"sent_us":T,` right before `"seq":N`.
    let before = frame[..found].strip_suffix(b",")?;
    let start = before.iter().rposition(|c| !c.is_ascii_digit())? + 1;
    let sent = digits(&before[start..])?.0;
    before[..start]
        .ends_with(b"\"sent_us\":")
        .then_some((seq, sent))
}

/// Every stamp in a frame, in order (a frame may carry several messages).
pub fn parse_all(frame: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < frame.len() {
            let found = at + SEQ.find(&frame[at..])?;
            at = found + 6;
            if let Some(stamp) = parse_at(frame, found) {
                return Some(stamp);
            }
        }
        None
    })
}

fn digits(b: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut used = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        used += 1;
    }
    (used > 0).then_some((n, used))
}

/// The frame text the gateway would send for `payload` (the baseline server
/// writes the same bytes, encoded once for all its sockets).
pub fn gateway_like_frame(
    protocol: Protocol,
    g: u64,
    payload: &str,
    identifier_json: &str,
) -> String {
    match protocol {
        Protocol::Stomp => {
            let body = format!(
                r#"{{"type":"tag.updated","payload":{payload},"timestamp":{}}}"#,
                now_us() / 1000
            );
            format!(
                "MESSAGE\nsubscription:sub-0\nmessage-id:bench.tag:0:{g}\ndestination:/events\n\
                 content-type:application/json\ncontent-length:{}\n\n{body}\0",
                body.len()
            )
        }
        Protocol::Room => format!(
            r#"{{"identifier":{identifier_json},"message":{{"event":"message.created","data":{payload}}}}}"#
        ),
        Protocol::Notifications => format!(
            r#"{{"identifier":{identifier_json},"message":{{"operation":"removed_message","content":{payload}}}}}"#
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_every_frame_shape() {
        for p in [Protocol::Stomp, Protocol::Room, Protocol::Notifications] {
            let body = payload(
                p,
                7,
                42,
                1_700_000_000_123_456,
                Pad {
                    len: 10,
                    kind: PadKind::Repeat,
                },
            );
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
            let env = envelope(p, 7, "3", "2026-01-01T00:00:00.000Z", &body);
            let decoded = herald_schemas::Envelope::decode(env.as_bytes()).unwrap();
            assert_eq!(decoded.account_id, "3");
            let frame = gateway_like_frame(p, 7, &body, r#""{\"channel\":\"X\",\"seq\":1}""#);
            assert_eq!(parse(frame.as_bytes()), Some((42, 1_700_000_000_123_456)));
        }
        assert_eq!(parse(br#"{"type":"ping","message":1}"#), None);
        assert_eq!(parse(b"\n"), None);
        assert_eq!(
            parse(br#"{"content":"x","sent_us":77,"seq":3}"#),
            Some((3, 77))
        );
        assert_eq!(parse(br#"{"other":77,"seq":3}"#), None);
        let two = br#"{"push":{"pub":{"data":{"seq":1,"sent_us":5}}}}
{"push":{"pub":{"data":{"seq":2,"sent_us":6}}}}"#;
        assert_eq!(parse_all(two).collect::<Vec<_>>(), vec![(1, 5), (2, 6)]);
        assert_eq!(
            parse_all(br#""seq":x "seq":3,"sent_us":4"#).collect::<Vec<_>>(),
            vec![(3, 4)]
        );
        assert_eq!(parse(br#""seq":x"#), None);
    }

    #[test]
    fn pads_have_their_length_and_differ_per_event_unless_repeated() {
        for kind in [PadKind::Repeat, PadKind::Text, PadKind::Random] {
            let pad = Pad { len: 300, kind };
            let (a, b) = (pad.make(1), pad.make(2));
            assert_eq!(a.len(), 300);
            assert_eq!(a, pad.make(1), "deterministic");
            assert_eq!(a == b, kind == PadKind::Repeat, "{kind:?}");
            assert!(!a.contains('"') && !a.contains('\\'), "JSON-safe");
        }
        assert!(
            Pad {
                len: 50,
                kind: PadKind::Text
            }
            .make(3)
            .contains(' ')
        );
    }
}
