//! W3C Trace Context (`traceparent`, `tracestate`): what the producer
//! accepts or starts and carries in Kafka headers, and the gateway reads
//! (docs/operations.md, "Tracing").
//!
//! Written here rather than taken from `opentelemetry`: Herald only needs
//! to parse, check and continue the header (about a hundred lines), and the
//! OpenTelemetry SDK's propagators pull in its whole runtime.

use std::fmt;

/// The Kafka record header (and HTTP header) names.
pub const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` carried on (the W3C limit is 32 members of at
/// most 256 bytes each; vendors are told to keep it under 512).
pub const MAX_TRACESTATE: usize = 512;

/// A `traceparent`: trace id, the id of the span that sent it, and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Bit 0: sampled.
    pub flags: u8,
}

impl TraceParent {
    /// Parse a `traceparent` header value. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`; a later version may append fields
    /// after a `-`, which are ignored (W3C Trace Context §3.2.4). Hex must
    /// be lowercase; all-zero ids and version `ff` are invalid. `None` for
    /// anything else: the caller then starts a new trace.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let b = value.as_bytes();
        if b.len() < 55 {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        if version == 0xff || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        if version == 0 && b.len() != 55 {
            return None;
        }
        if b.len() > 55 && b[55] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, for a request that came without one.
    pub fn root(sampled: bool) -> Self {
        TraceParent {
            trace_id: *uuid::Uuid::new_v4().as_bytes(),
            span_id: new_span_id(),
            flags: u8::from(sampled),
        }
    }

    /// The context a span of this trace hands on: same trace and flags, a
    /// new span id.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Whether the sender sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

/// A `tracestate` worth carrying on: at most [`MAX_TRACESTATE`] bytes of
/// printable ASCII (anything else is dropped, as the W3C rules allow).
pub fn tracestate(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty()
        && value.len() <= MAX_TRACESTATE
        && value.bytes().all(|c| (0x20..0x7f).contains(&c)))
    .then_some(value)
}

fn new_span_id() -> [u8; 8] {
    let random = uuid::Uuid::new_v4();
    let mut id = [0u8; 8];
    // Bytes 0..6 and 9..11 of a v4 UUID are random (6 and 8 hold its
    // version and variant bits).
    id[..6].copy_from_slice(&random.as_bytes()[..6]);
    id[6..].copy_from_slice(&random.as_bytes()[9..11]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example_and_writes_it_back() {
        let p = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.sampled());
        assert_eq!(p.to_string(), EXAMPLE);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let p = TraceParent::parse(later).expect("valid");
        assert!(!p.sampled());
        // Handed on as version 00.
        assert!(
            p.to_string()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
        let root = TraceParent::root(false);
        assert!(!root.sampled());
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        assert_ne!(TraceParent::root(false).trace_id, root.trace_id);
    }

    #[test]
    fn tracestate_is_bounded_and_printable() {
        assert_eq!(tracestate(" congo=t61rcWkgMzE "), Some("congo=t61rcWkgMzE"));
        assert_eq!(tracestate(""), None);
        assert_eq!(tracestate(&"a".repeat(MAX_TRACESTATE + 1)), None);
        assert_eq!(tracestate("a=\u{7}"), None);
    }
}
