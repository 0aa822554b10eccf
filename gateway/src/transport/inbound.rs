//! Client-to-server WebSocket frames (RFC 6455 §5), decoded without I/O:
//! bytes in, whole messages out.
//!
//! Why not tungstenite's reader: it rejects compressed frames (it has no
//! permessage-deflate), and it keeps a read buffer and protocol state per
//! connection even while the connection is idle, which at tens of
//! thousands of idle connections is most of their memory. This decoder is
//! a few words per connection: the bytes not yet decoded live in the
//! caller's buffer (empty, and unallocated, between messages), and a
//! fragmented message in a box only while it arrives.

use bytes::Bytes;

use crate::transport::{
    deflate::{self, InflateError},
    ws::{CloseCode, CloseFrame, Message, Utf8Bytes},
};

/// Why the client's input cannot be read on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A message (or frame) over the size limit.
    #[error("message of {size} bytes or more, over the {max}-byte limit")]
    Oversize {
        /// Bytes seen (at least).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A framing rule broken (answered with close code 1002).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// Text that is not UTF-8, or compressed data that does not inflate
    /// (answered with close code 1007).
    #[error("invalid message payload: {0}")]
    Payload(&'static str),
    /// Reading the socket failed.
    #[error("read failed: {0}")]
    Io(std::io::ErrorKind),
}

impl ReadError {
    /// The close code the server answers this error with, if any (an
    /// oversize message is answered by the session, in its protocol).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ReadError::Oversize { .. } | ReadError::Io(_) => None,
            ReadError::Protocol(_) => Some(1002),
            ReadError::Payload(_) => Some(1007),
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A data message arriving in several frames.
#[derive(Debug)]
struct Fragments {
    binary: bool,
    compressed: bool,
    data: Vec<u8>,
}

/// One connection's decoding state.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    /// permessage-deflate was negotiated.
    deflate: bool,
    partial: Option<Box<Fragments>>,
}

impl Decoder {
    /// A decoder for messages of at most `max` bytes (after inflating),
    /// accepting compressed messages when `deflate` was negotiated.
    pub fn new(max: usize, deflate: bool) -> Self {
        Decoder {
            max,
            deflate,
            partial: None,
        }
    }

    /// Decode from the front of `input`: `(Some(message), used)` when a
    /// message is complete, `(None, used)` when more input is needed (the
    /// `used` bytes were whole frames of a fragmented message, or none).
    /// The caller drops the `used` bytes and calls again with the rest.
    pub fn decode(&mut self, input: &[u8]) -> Result<(Option<Message>, usize), ReadError> {
        let mut used = 0;
        loop {
            let Some((header, frame)) = self.frame(&input[used..])? else {
                return Ok((None, used));
            };
            let payload = &input[used + header.payload_at..used + frame];
            used += frame;
            if let Some(message) = self.message(&header, payload)? {
                return Ok((Some(message), used));
            }
        }
    }

    /// The next frame's header and total length, once all of it is in
    /// `input`; the header is checked as soon as it is there, so a client
    /// announcing an oversize or malformed frame is refused before sending it.
    fn frame(&self, input: &[u8]) -> Result<Option<(Header, usize)>, ReadError> {
        let [b0, b1, ..] = *input else {
            return Ok(None);
        };
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        if b0 & 0x30 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let (len_bytes, short) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(n as u64)),
        };
        let payload_at = 2 + len_bytes + 4;
        if input.len() < 2 + len_bytes {
            return Ok(None);
        }
        let len = match short {
            Some(n) => n,
            None => {
                let mut be = [0u8; 8];
                be[8 - len_bytes..].copy_from_slice(&input[2..2 + len_bytes]);
                let n = u64::from_be_bytes(be);
                if n >> 63 != 0 {
                    return Err(ReadError::Protocol("payload length with the top bit set"));
                }
                n
            }
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(ReadError::Protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(ReadError::Protocol("control frame over 125 bytes"));
                }
                if rsv1 {
                    return Err(ReadError::Protocol("compressed control frame"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol(
                        "a new message before the last one ended",
                    ));
                }
                if rsv1 && !self.deflate {
                    return Err(ReadError::Protocol(
                        "compressed frame without permessage-deflate",
                    ));
                }
            }
            OP_CONTINUATION => {
                if self.partial.is_none() {
                    return Err(ReadError::Protocol("continuation frame without a message"));
                }
                if rsv1 {
                    return Err(ReadError::Protocol("RSV1 on a continuation frame"));
                }
            }
            _ => return Err(ReadError::Protocol("unknown opcode")),
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.data.len());
        let size = (so_far as u64).saturating_add(len);
        if size > self.max as u64 {
            return Err(ReadError::Oversize {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                max: self.max,
            });
        }
        let total = payload_at + len as usize;
        if input.len() < total {
            return Ok(None);
        }
        let mask = [
            input[payload_at - 4],
            input[payload_at - 3],
            input[payload_at - 2],
            input[payload_at - 1],
        ];
        Ok(Some((
            Header {
                fin,
                rsv1,
                opcode,
                mask,
                payload_at,
            },
            total,
        )))
    }

    /// Take one whole frame; a message when it completes one.
    fn message(&mut self, header: &Header, masked: &[u8]) -> Result<Option<Message>, ReadError> {
        let mut payload = masked.to_vec();
        unmask(&mut payload, header.mask);
        match header.opcode {
            OP_PING => Ok(Some(Message::Ping(Bytes::from(payload)))),
            OP_PONG => Ok(Some(Message::Pong(Bytes::from(payload)))),
            OP_CLOSE => close(payload).map(|frame| Some(Message::Close(frame))),
            OP_TEXT | OP_BINARY if header.fin => self
                .complete(header.opcode == OP_BINARY, header.rsv1, payload)
                .map(Some),
            OP_TEXT | OP_BINARY => {
                self.partial = Some(Box::new(Fragments {
                    binary: header.opcode == OP_BINARY,
                    compressed: header.rsv1,
                    data: payload,
                }));
                Ok(None)
            }
            _ => {
                // A continuation (checked in `frame`).
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation frame without a message"));
                };
                partial.data.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                let Fragments {
                    binary,
                    compressed,
                    data,
                } = *self.partial.take().expect("checked above");
                self.complete(binary, compressed, data).map(Some)
            }
        }
    }

    /// A whole data message: inflated if compressed, text checked as UTF-8.
    fn complete(
        &self,
        binary: bool,
        compressed: bool,
        data: Vec<u8>,
    ) -> Result<Message, ReadError> {
        let data = if compressed {
            deflate::inflate(&data, self.max).map_err(|e| match e {
                InflateError::TooLarge => ReadError::Oversize {
                    size: self.max + 1,
                    max: self.max,
                },
                InflateError::Invalid => ReadError::Payload("compressed data does not inflate"),
            })?
        } else {
            data
        };
        if binary {
            return Ok(Message::Binary(Bytes::from(data)));
        }
        Utf8Bytes::try_from(data)
            .map(Message::Text)
            .map_err(|_| ReadError::Payload("text message is not UTF-8"))
    }
}

/// A frame header, as read.
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: [u8; 4],
    payload_at: usize,
}

/// Undo the client's masking (RFC 6455 §5.3).
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A close frame's body (RFC 6455 §5.5.1, §7.4): nothing, or a valid code
/// and a UTF-8 reason.
fn close(payload: Vec<u8>) -> Result<Option<CloseFrame>, ReadError> {
    match payload.len() {
        0 => return Ok(None),
        1 => return Err(ReadError::Protocol("close frame with a one-byte body")),
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    // Codes a peer may send: the defined ones (not 1004–1006, 1015, which
    // are never on the wire) and the registered and private ranges.
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(ReadError::Protocol("invalid close code"));
    }
    let reason = Utf8Bytes::try_from(Bytes::from(payload).slice(2..))
        .map_err(|_| ReadError::Payload("close reason is not UTF-8"))?;
    Ok(Some(CloseFrame {
        code: CloseCode::from(code),
        reason,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with the given first byte.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn text(s: &str) -> Vec<u8> {
        frame(0x81, s.as_bytes())
    }

    fn decode_all(d: &mut Decoder, input: &[u8]) -> Result<Vec<Message>, ReadError> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let (msg, used) = d.decode(&input[at..])?;
            at += used;
            match msg {
                Some(m) => out.push(m),
                None => return Ok(out),
            }
        }
    }

    #[test]
    fn whole_and_split_frames_decode_to_messages() {
        let mut d = Decoder::new(1 << 20, false);
        // RFC 6455 §5.7: a masked "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            d.decode(&hello).unwrap(),
            (Some(Message::Text("Hello".into())), 11)
        );
        // Byte by byte: nothing until the last byte, and nothing consumed.
        for cut in 0..hello.len() {
            assert_eq!(d.decode(&hello[..cut]).unwrap(), (None, 0));
        }
        // Medium and long lengths, binary, several in one read.
        let medium = "m".repeat(300);
        let long = vec![9u8; 70_000];
        let mut input = text(&medium);
        input.extend(frame(0x82, &long));
        input.extend(text(""));
        let got = decode_all(&mut d, &input).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Text(medium.into()),
                Message::Binary(long.into()),
                Message::Text("".into())
            ]
        );
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_come_between() {
        let mut d = Decoder::new(1024, false);
        let mut input = frame(0x01, b"Hel");
        input.extend(frame(0x89, b"beat"));
        input.extend(frame(0x00, b"l"));
        input.extend(frame(0x80, b"o"));
        let got = decode_all(&mut d, &input).unwrap();
        assert_eq!(
            got,
            vec![
                Message::Ping(Bytes::from_static(b"beat")),
                Message::Text("Hello".into())
            ]
        );
        // A fragment consumed on its own is reported as used.
        let first = frame(0x02, b"ab");
        assert_eq!(d.decode(&first).unwrap(), (None, first.len()));
        assert_eq!(
            d.decode(&frame(0x80, b"cd")).unwrap().0,
            Some(Message::Binary(Bytes::from_static(b"abcd")))
        );
    }

    #[test]
    fn framing_errors_are_refused_with_their_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], "client frames must be masked"),
            (frame(0xA1, b"x"), "reserved bits set"),
            (frame(0x91, b"x"), "reserved bits set"),
            (
                frame(0xC1, b"x"),
                "compressed frame without permessage-deflate",
            ),
            (frame(0x83, b"x"), "unknown opcode"),
            (frame(0x80, b"x"), "continuation frame without a message"),
            (frame(0x09, b"x"), "fragmented control frame"),
            (frame(0x89, &[0u8; 126]), "control frame over 125 bytes"),
            (frame(0x88, &[3]), "close frame with a one-byte body"),
            (frame(0x88, &1005u16.to_be_bytes()), "invalid close code"),
            (frame(0x88, &999u16.to_be_bytes()), "invalid close code"),
            (frame(0x88, &2000u16.to_be_bytes()), "invalid close code"),
        ];
        for (input, reason) in cases {
            let mut d = Decoder::new(1024, false);
            assert_eq!(
                d.decode(&input),
                Err(ReadError::Protocol(reason)),
                "{input:?}"
            );
        }
        let mut d = Decoder::new(1024, false);
        let mut input = frame(0x01, b"a");
        input.extend(text("b"));
        assert_eq!(
            decode_all(&mut d, &input),
            Err(ReadError::Protocol(
                "a new message before the last one ended"
            ))
        );
        let mut d = Decoder::new(1024, false);
        assert_eq!(
            d.decode(&frame(0x81, &[0xff, 0xfe])),
            Err(ReadError::Payload("text message is not UTF-8"))
        );
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.push(0xff);
        assert_eq!(
            d.decode(&frame(0x88, &close)),
            Err(ReadError::Payload("close reason is not UTF-8"))
        );
        // A 64-bit length with the top bit set.
        let mut huge = vec![0x81, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            d.decode(&huge),
            Err(ReadError::Protocol("payload length with the top bit set"))
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut d = Decoder::new(100, false);
        // Only the header of a 1 MB frame has arrived.
        let header = &frame(0x81, &vec![b'x'; 1 << 20])[..14];
        assert_eq!(
            d.decode(header),
            Err(ReadError::Oversize {
                size: 1 << 20,
                max: 100
            })
        );
        // Fragments adding up past the limit.
        let mut d = Decoder::new(100, false);
        let mut input = frame(0x01, &[b'a'; 60]);
        input.extend(frame(0x80, &[b'b'; 60]));
        assert_eq!(
            decode_all(&mut d, &input),
            Err(ReadError::Oversize {
                size: 120,
                max: 100
            })
        );
        // Exactly the limit is fine.
        let mut d = Decoder::new(100, false);
        let at_limit = frame(0x81, &[b'c'; 100]);
        assert!(d.decode(&at_limit).unwrap().0.is_some());
    }

    #[test]
    fn close_frames_carry_their_code_and_reason() {
        let mut d = Decoder::new(1024, false);
        let mut body = 4001u16.to_be_bytes().to_vec();
        body.extend_from_slice("bye é".as_bytes());
        let (msg, _) = d.decode(&frame(0x88, &body)).unwrap();
        let Some(Message::Close(Some(frame))) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(u16::from(frame.code), 4001);
        assert_eq!(frame.reason.as_str(), "bye é");
        assert_eq!(
            d.decode(&super::tests::frame(0x88, b"")).unwrap().0,
            Some(Message::Close(None))
        );
    }

    #[test]
    fn compressed_messages_inflate_when_negotiated() {
        // RFC 7692 §7.2.3.1: "Hello", compressed, one frame (masked here).
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut d = Decoder::new(1024, true);
        assert_eq!(
            d.decode(&frame(0xC1, &hello)).unwrap().0,
            Some(Message::Text("Hello".into()))
        );
        // §7.2.3.2: the same, in two fragments (RSV1 on the first only).
        let mut input = frame(0x41, &hello[..3]);
        input.extend(frame(0x80, &hello[3..]));
        assert_eq!(
            decode_all(&mut d, &input).unwrap(),
            vec![Message::Text("Hello".into())]
        );
        // Uncompressed messages still pass on a compressing connection.
        assert_eq!(
            d.decode(&text("plain")).unwrap().0,
            Some(Message::Text("plain".into()))
        );
        // A compressed binary message, made by our own compressor.
        let body = b"SUBSCRIBE\nid:sub-0\ndestination:/topic/x\n\n\0".repeat(20);
        let packed = deflate::compress(&body, 6).unwrap();
        assert_eq!(
            d.decode(&frame(0xC2, &packed)).unwrap().0,
            Some(Message::Binary(body.clone().into()))
        );
        // Errors: RSV1 on a continuation, garbage, a bomb past the limit.
        let mut input = frame(0x41, &hello[..3]);
        input.extend(frame(0xC0, &hello[3..]));
        assert_eq!(
            decode_all(&mut Decoder::new(1024, true), &input),
            Err(ReadError::Protocol("RSV1 on a continuation frame"))
        );
        assert_eq!(
            Decoder::new(1024, true).decode(&frame(0xC1, &[0xff, 0xff])),
            Err(ReadError::Payload("compressed data does not inflate"))
        );
        let bomb = deflate::compress(&vec![b'a'; 100_000], 9).unwrap();
        assert!(bomb.len() < 1024);
        assert!(matches!(
            Decoder::new(1024, true).decode(&frame(0xC1, &bomb)),
            Err(ReadError::Oversize { max: 1024, .. })
        ));
        // Compressed text must still be UTF-8 once inflated.
        let bad = deflate::compress(&[0xff; 300], 1).unwrap();
        assert_eq!(
            Decoder::new(1024, true).decode(&frame(0xC1, &bad)),
            Err(ReadError::Payload("text message is not UTF-8"))
        );
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A cheap in-test fuzz (the cargo-fuzz target goes further).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let mut input = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.push(seed as u8);
            }
            let mut d = Decoder::new(64, seed & 1 == 0);
            let _ = decode_all(&mut d, &input);
        }
    }
}
