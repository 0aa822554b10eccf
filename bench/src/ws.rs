//! Just enough WebSocket (RFC 6455) for a load generator and a baseline
//! server, sans I/O: the upgrade request and response, frame headers, and an
//! incremental frame parser over a byte buffer.
//!
//! Why not tungstenite: the load generator must stay cheap per frame and per
//! idle socket so that, on a 2-core machine, it measures the server rather
//! than itself. This module parses frames in place from one growable buffer
//! per socket and never allocates per frame, and the baseline server writes
//! frames that were encoded once for all its sockets.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// UTF-8 text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// The fixed `Sec-WebSocket-Key` of every load-generator client (the server
/// only hashes it; randomness protects browsers from cache poisoning, which
/// is no concern on loopback).
pub const CLIENT_KEY: &str = "aGVyYWxkLWxvYWRnZW4hIQ==";

/// The fixed masking key of client frames (RFC 6455 wants it random for the
/// same browser reason; servers never check).
pub const CLIENT_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The HTTP upgrade request for `path` on `host`, with optional
/// subprotocols and `Authorization` header.
pub fn upgrade_request(
    host: &str,
    path: &str,
    protocols: Option<&str>,
    authorization: Option<&str>,
) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        req.push_str("Sec-WebSocket-Protocol: ");
        req.push_str(p);
        req.push_str("\r\n");
    }
    if let Some(a) = authorization {
        req.push_str("Authorization: ");
        req.push_str(a);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Length of an HTTP head (through the blank line) at the start of `buf`,
/// once it is complete.
pub fn http_head_len(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Whether an HTTP response head is `101 Switching Protocols`.
pub fn is_switching_protocols(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 101")
}

/// The value of header `name` (case-insensitive) in an HTTP head.
pub fn http_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The server's answer to an upgrade request carrying `key`, echoing
/// `protocol` when one was chosen.
pub fn upgrade_response(key: &str, protocol: Option<&str>) -> String {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str("Sec-WebSocket-Protocol: ");
        resp.push_str(p);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    resp
}

/// Encode one unfragmented frame; `mask` is set for client frames.
pub fn encode_frame(op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 14);
    out.put_u8(0x80 | op);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
    match mask {
        Some(key) => {
            out.put_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.put_slice(payload),
    }
    out.freeze()
}

/// A client (masked) text frame.
pub fn client_text(text: &str) -> Bytes {
    encode_frame(opcode::TEXT, text.as_bytes(), Some(CLIENT_MASK))
}

/// A server (unmasked) text frame.
pub fn server_text(text: &str) -> Bytes {
    encode_frame(opcode::TEXT, text.as_bytes(), None)
}

/// One frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Final fragment.
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate).
    pub rsv1: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, for client frames.
    pub mask: Option<[u8; 4]>,
    /// Offset of the payload from the frame start.
    pub payload_start: usize,
    /// Payload length.
    pub payload_len: usize,
}

impl FrameHead {
    /// Bytes the whole frame occupies.
    pub fn frame_len(&self) -> usize {
        self.payload_start + self.payload_len
    }
}

/// A frame that cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Larger than the reader allows.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
}

/// Parse the frame header at the start of `buf`: `Ok(None)` until enough
/// bytes for the header are there (the payload may still be incomplete:
/// compare [`FrameHead::frame_len`] with the buffer length).
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<FrameHead>, FrameError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(l) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(l);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if masked {
        let Some(k) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        mask,
        payload_start: at,
        payload_len: len as usize,
    }))
}

/// The offer a browser makes (RFC 7692), added to an upgrade request.
pub const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

thread_local! {
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// Inflate one permessage-deflate message sent without context takeover
/// (what Herald negotiates) into `out` (cleared first).
pub fn inflate_into(payload: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    out.clear();
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        for input in [payload, &[0, 0, 0xff, 0xff][..]] {
            let start = d.total_in();
            loop {
                let used = (d.total_in() - start) as usize;
                if used == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.capacity() - out.len() < 256 {
                    out.reserve(out.capacity().max(256));
                }
                let before = (d.total_in(), d.total_out());
                let status =
                    d.decompress_vec(&input[used..], out, flate2::FlushDecompress::Sync)?;
                if status == flate2::Status::StreamEnd {
                    return Ok(());
                }
                if (d.total_in(), d.total_out()) == before {
                    // The output had filled exactly, or the data is bad.
                    if (d.total_in() - start) as usize == input.len() {
                        break;
                    }
                    anyhow::bail!("the compressed message does not inflate");
                }
            }
        }
        Ok(())
    })
}

/// Unmask a client payload in place.
pub fn unmask(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            for mask in [None, Some(CLIENT_MASK)] {
                let f = encode_frame(opcode::TEXT, &payload, mask);
                let head = parse_head(&f, 1 << 20).unwrap().unwrap();
                assert!(head.fin);
                assert_eq!(head.opcode, opcode::TEXT);
                assert_eq!(head.payload_len, len);
                assert_eq!(head.frame_len(), f.len());
                let mut p = f[head.payload_start..].to_vec();
                if let Some(k) = head.mask {
                    unmask(&mut p, k);
                }
                assert_eq!(p, payload);
                // Any strict prefix of the header is "not yet".
                for cut in 0..head.payload_start {
                    assert_eq!(parse_head(&f[..cut], 1 << 20), Ok(None));
                }
            }
        }
        assert!(parse_head(&encode_frame(1, &[0; 200], None), 100).is_err());
    }

    #[test]
    fn handshake_matches_rfc_example() {
        let resp = upgrade_response("dGhlIHNhbXBsZSBub25jZQ==", Some("v12.stomp"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(is_switching_protocols(resp.as_bytes()));
        let req = upgrade_request("h:1", "/x?a=1", Some("p"), Some("Bearer t"));
        let n = http_head_len(req.as_bytes()).unwrap();
        assert_eq!(n, req.len());
        assert_eq!(http_header(&req, "authorization"), Some("Bearer t"));
        assert_eq!(http_header(&req, "sec-websocket-key"), Some(CLIENT_KEY));
    }

    #[test]
    fn a_compressed_message_inflates_and_garbage_is_an_error() {
        // RFC 7692 §7.2.3.1: "Hello".
        let mut out = Vec::new();
        inflate_into(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out).unwrap();
        assert_eq!(out, b"Hello");
        assert!(inflate_into(&[0xff, 0xff, 0xff], &mut out).is_err());
        // A reused buffer does not grow from one message to the next.
        let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut packed = Vec::with_capacity(4096);
        let text = "hello world ".repeat(200);
        c.compress_vec(text.as_bytes(), &mut packed, flate2::FlushCompress::Sync)
            .unwrap();
        packed.truncate(packed.len() - 4);
        inflate_into(&packed, &mut out).unwrap();
        let cap = out.capacity();
        for _ in 0..100 {
            inflate_into(&packed, &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
        }
        assert_eq!(out.capacity(), cap);
        let head = parse_head(&[0xC1, 0x07], 100).unwrap().unwrap();
        assert!(head.rsv1 && head.fin);
    }
}
