//! permessage-deflate (RFC 7692): the negotiation, and compressing and
//! inflating one message at a time.
//!
//! Herald always answers with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 §7.1.1 lets a server add both to
//! any offer). Every message is then a deflate stream of its own, so:
//!
//! - an outbound frame is compressed **once** and the same bytes go to every
//!   recipient, like the uncompressed frame (see `WsFrame::wire`);
//! - a connection keeps no compression state: no 32 KiB sliding window per
//!   connection, in either direction. The compressor and the decompressor
//!   are per thread and reset for each message.
//!
//! Sans-I/O: bytes in, bytes out. flate2 does the deflate itself; what no
//! crate offers is the RFC 7692 parameter negotiation and the message
//! framing (strip and restore the `00 00 FF FF` tail), which are here.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// What every accepted offer is answered with (plus
/// `server_max_window_bits=15` when the client named that parameter).
const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The gateway's compression settings (process-wide: a frame is compressed
/// once for every recipient, so every connection shares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Frames whose payload is shorter than this go out uncompressed.
    pub min_bytes: usize,
    /// zlib compression level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            min_bytes: 256,
            level: 1,
        }
    }
}

/// The answer to a client's `Sec-WebSocket-Extensions` offers: the response
/// header value when an offer of permessage-deflate is accepted, `None`
/// when there is none or every one is declined. Offers are taken in the
/// client's order of preference (RFC 7692 §5); one with an unknown or
/// repeated parameter or an invalid value is declined (§7.1), and so is one
/// limiting the server's window below 15 bits (Herald shares one compressed
/// frame between all recipients, made with the full window).
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<String> {
    offers
        .into_iter()
        .flat_map(|header| header.split(','))
        .filter_map(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            (parts.next()? == EXTENSION).then_some(parts)
        })
        .find_map(accept)
}

/// The response to one permessage-deflate offer, if acceptable.
fn accept<'a>(params: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits_named = false;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                if window_bits(v)? != 15 {
                    return None;
                }
                server_bits_named = true;
            }
            // Herald inflates with the full window, which reads a stream
            // made with any smaller one: nothing to answer.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(if server_bits_named {
        format!("{RESPONSE}; server_max_window_bits=15")
    } else {
        RESPONSE.to_owned()
    })
}

/// A window-bits value: 8 to 15 in decimal, no sign or leading zero (§7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The tail a sync flush ends with, which RFC 7692 §7.2.1 removes from the
/// wire (and §7.2.2 appends again before inflating).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressor and the level it was made for.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// This thread's decompressor.
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` compressed as one permessage-deflate message (without the
/// tail), or `None` when compressing would not make it smaller.
pub fn compress(payload: &[u8], level: u32) -> Option<Vec<u8>> {
    let mut out = compress_flushed(payload, level)?;
    out.truncate(out.len() - TAIL.len());
    (out.len() < payload.len()).then_some(out)
}

/// Append `data` to a deflate stream being assembled as stored
/// (uncompressed) blocks, at a byte boundary (RFC 1951 §3.2.4).
pub fn stored(out: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.chunks(usize::from(u16::MAX)) {
        let len = chunk.len() as u16;
        out.push(0x00);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// The permessage-deflate payload of `before ++ shared ++ after`, where
/// `shared` was compressed once on its own with [`compress_flushed`]:
/// `before` and `after` go in stored blocks around it. A deflate stream
/// is a sequence of blocks, and one that starts fresh at a byte boundary
/// never refers back past its start, so the pieces concatenate; the final
/// `0x00` opens the empty stored block whose length the receiver's
/// appended `00 00 FF FF` supplies (RFC 7692 §7.2.2). Per recipient this
/// is a copy, no compression.
pub fn assemble(before: &[u8], shared: &[u8], after: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(before.len() + shared.len() + after.len() + 16);
    stored(&mut out, before);
    out.extend_from_slice(shared);
    stored(&mut out, after);
    out.push(0x00);
    out
}

/// `payload` as raw deflate ending in a sync flush (the tail kept), for
/// [`assemble`]; `None` if compression failed.
pub fn compress_flushed(payload: &[u8], level: u32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((l, c)) if *l == level => {
                c.reset();
                c
            }
            _ => {
                &mut slot
                    .insert((level, Compress::new(Compression::new(level), false)))
                    .1
            }
        };
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let start = compressor.total_in();
        loop {
            let consumed = (compressor.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            let before = (compressor.total_in(), compressor.total_out());
            compressor
                .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .ok()?;
            let done = (compressor.total_in() - start) as usize == payload.len();
            // A sync flush is complete when the input is used up and the
            // output did not fill the room it had.
            if done && out.len() < out.capacity() {
                break;
            }
            if (compressor.total_in(), compressor.total_out()) == before {
                return None;
            }
        }
        out.ends_with(&TAIL).then_some(out)
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit.
    TooLarge,
    /// It is not a valid deflate stream (or uses a window it was told not to).
    Invalid,
}

/// Inflate one permessage-deflate message, producing at most `max` bytes:
/// a small message that inflates past the limit (a "zip bomb") is stopped
/// there, having cost at most `max` bytes.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => {
                d.reset(false);
                d
            }
            None => slot.insert(Decompress::new(false)),
        };
        let mut out = Vec::with_capacity((compressed.len() * 3).min(max + 1).max(64));
        for input in [compressed, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let consumed = (d.total_in() - start) as usize;
                if consumed == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                if out.capacity() == out.len() {
                    let room = out.capacity().max(64).min(max + 1 - out.len().min(max));
                    out.reserve(room.max(1));
                }
                let before = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                let progressed = (d.total_in(), d.total_out()) != before;
                let all_in = (d.total_in() - start) as usize == input.len();
                match status {
                    // The sender ended the stream (BFINAL): allowed, and
                    // anything after it is not part of the message.
                    Status::StreamEnd => return Ok(out),
                    // The output had filled exactly: nothing was pending.
                    _ if !progressed && all_in => break,
                    _ if !progressed => return Err(InflateError::Invalid),
                    _ => {}
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &str = RESPONSE;

    #[test]
    fn the_offers_real_clients_send_are_accepted_with_both_no_context_takeovers() {
        // Chromium, Firefox and Safari.
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(BOTH)
        );
        // Node's `ws` (what @stomp/stompjs and @rails/actioncable use under Node).
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(BOTH)
        );
        assert_eq!(negotiate(["permessage-deflate"]).as_deref(), Some(BOTH));
        assert_eq!(
            negotiate([
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ])
            .as_deref(),
            Some(BOTH)
        );
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits=10"]).as_deref(),
            Some(BOTH)
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=\"15\""]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"
            )
        );
    }

    #[test]
    fn bad_or_unsupported_offers_are_declined_and_the_next_offer_is_tried() {
        for declined in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(negotiate([declined]), None, "{declined:?}");
        }
        assert_eq!(negotiate(Vec::<&str>::new()), None);
        // Several offers (in one header or several): the first acceptable one.
        assert_eq!(
            negotiate([
                "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits"
            ])
            .as_deref(),
            Some(BOTH)
        );
        assert_eq!(
            negotiate(["foo", "permessage-deflate; bogus", "permessage-deflate"]).as_deref(),
            Some(BOTH)
        );
    }

    #[test]
    fn a_compressed_message_inflates_to_the_original_and_drops_the_tail() {
        let text = r#"{"type":"message.created","data":{"id":"msg_01h455vb4pex5vsknk084sn02q","body":"hello hello hello hello hello hello"}}"#.repeat(8);
        for level in [1, 6, 9] {
            let packed = compress(text.as_bytes(), level).expect("compressible");
            assert!(packed.len() < text.len() / 4, "{} bytes", packed.len());
            assert!(!packed.ends_with(&TAIL));
            assert_eq!(inflate(&packed, 1 << 20).unwrap(), text.as_bytes());
        }
        // The per-thread state is reset between messages: each stands alone.
        let a = compress(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1).unwrap();
        let b = compress(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1).unwrap();
        assert_eq!(a, b);
        // Incompressible: sent as it is.
        assert_eq!(compress(b"xy", 1), None);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        if let Some(packed) = compress(&noise, 1) {
            assert!(packed.len() < noise.len());
        }
        // A large payload takes several output buffers.
        let big = text.repeat(200);
        let packed = compress(big.as_bytes(), 1).unwrap();
        assert_eq!(inflate(&packed, big.len()).unwrap(), big.as_bytes());
    }

    #[test]
    fn inflation_stops_at_the_limit_and_rejects_garbage() {
        // A megabyte of zeros is about a kilobyte compressed.
        let zeros = vec![0u8; 1 << 20];
        let bomb = compress(&zeros, 9).unwrap();
        assert!(bomb.len() < 2048);
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooLarge));
        assert_eq!(inflate(&bomb, zeros.len()).unwrap().len(), zeros.len());
        // Exactly at the limit is fine.
        let small = compress(&[7u8; 1000], 1).unwrap();
        assert_eq!(inflate(&small, 1000).unwrap().len(), 1000);
        assert_eq!(inflate(&small, 999), Err(InflateError::TooLarge));
        // Not deflate at all (a reserved block type).
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Invalid)
        );
        // The empty message (RFC 7692 §7.2.3.6 sends it as a single 0x00).
        assert_eq!(inflate(&[0x00], 1024).unwrap(), b"");
        // RFC 7692 §7.2.3.1's example: "Hello" compressed.
        assert_eq!(
            inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 1024).unwrap(),
            b"Hello"
        );
        // And §7.2.3.3's, a "Hello" in a stored (uncompressed) block.
        assert_eq!(
            inflate(
                &[
                    0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00
                ],
                1024
            )
            .unwrap(),
            b"Hello"
        );
    }

    #[test]
    fn an_output_that_fills_the_buffer_exactly_is_not_an_error() {
        // inflate's first buffer is three times the input: a message
        // inflating to exactly that once looked stuck.
        for n in 1..400usize {
            let text: String = (0..n)
                .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
                .collect();
            let Some(packed) = compress(text.as_bytes(), 1) else {
                continue;
            };
            assert_eq!(inflate(&packed, 1 << 20).unwrap(), text.as_bytes(), "{n}");
        }
    }

    #[test]
    fn pieces_compressed_apart_and_stored_around_inflate_as_one_message() {
        let body =
            r#"{"event":"message.created","data":{"content":"hello hello hello hello"}}"#.repeat(5);
        let shared = compress_flushed(body.as_bytes(), 1).unwrap();
        let before = br#"{"identifier":"{\"channel\":\"RoomChannel\"}","message":"#;
        let packed = assemble(before, &shared, b"}");
        let mut want = before.to_vec();
        want.extend_from_slice(body.as_bytes());
        want.push(b'}');
        assert_eq!(inflate(&packed, 1 << 20).unwrap(), want);
        // Empty pieces, and a piece over a stored block's 65,535 bytes.
        let big = vec![b'i'; 70_000];
        let packed = assemble(&big, &shared, b"");
        let mut want = big.clone();
        want.extend_from_slice(body.as_bytes());
        assert_eq!(inflate(&packed, 1 << 20).unwrap(), want);
    }
}
