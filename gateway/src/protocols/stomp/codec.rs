//! STOMP 1.0/1.1/1.2 frame codec for the `/ws.communication` endpoint.
//!
//! Pure, sans-I/O functions over bytes: the session code hands in the payload
//! of one WebSocket message (text or binary) and gets frames and heart-beats
//! back, and hands frames in to get the bytes to send. Nothing here knows about
//! sockets, sessions or time.
//!
//! Wire format (STOMP 1.2 §"STOMP Frames"):
//! `COMMAND EOL (name:value EOL)* EOL body NUL (EOL)*`, where EOL is LF or CRLF.
//! A bare EOL between frames is a heart-beat.
//!
//! Header escaping (`\\`, `\n`, `\c`, and in 1.2 also `\r`) applies in 1.1 and
//! 1.2 to every frame except `CONNECT`, `STOMP` and `CONNECTED`; 1.0 has none.
//! An undefined escape sequence is a fatal protocol error.
//!
//! Every function is total over its input: malformed bytes give a
//! [`CodecError`] whose `Display` text is meant to be sent verbatim in the
//! ERROR frame's `message` header, never a panic.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A STOMP protocol version.
///
/// Ordered so that `max` picks the newest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// All versions, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` / `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `"1.0"`, `"1.1"` or `"1.2"` (exactly).
    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The WebSocket subprotocol naming this version (`v12.stomp`, ...).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }

    /// The version named by a WebSocket subprotocol (`v12.stomp`, ...).
    pub fn from_subprotocol(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.subprotocol() == s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A STOMP frame command, client and server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Connected,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Message,
    Receipt,
    Error,
}

/// Longest command line we wait for before calling it garbage:
/// `UNSUBSCRIBE` / `DISCONNECT` plus a CR.
const MAX_COMMAND_LINE: usize = 12;

impl Command {
    /// Every command, in no particular order.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Connected,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL). Case-sensitive, as in the spec.
    pub fn parse(line: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == line)
    }

    /// Whether header escaping applies to this command's frames. The spec
    /// exempts CONNECT and CONNECTED (and STOMP, CONNECT's alias) so that
    /// version negotiation works before a version is known.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame with decoded (unescaped) headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's command.
    pub command: Command,
    /// Header names and values, unescaped, in wire order. Repeated names are
    /// kept; [`Frame::header`] returns the first, as the spec requires.
    pub headers: Vec<(String, String)>,
    /// The body bytes (without the terminating NUL).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The value of the first header called `name` (spec: when a header is
    /// repeated, only the first occurrence is used).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// Why bytes could not be decoded. The `Display` text is a complete sentence
/// fit for the ERROR frame's `message` header; embedded client data is
/// truncated and control characters are escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The command line is not one of the STOMP commands.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A header line has no `:` between name and value.
    #[error("malformed header line: missing ':' separator")]
    MissingHeaderColon,
    /// A header line starts with `:`.
    #[error("malformed header line: empty header name")]
    EmptyHeaderName,
    /// A header contains a backslash sequence the version does not define.
    #[error("undefined escape sequence '{0}' in header")]
    InvalidEscape(String),
    /// A header name or value is not UTF-8.
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    /// The message or frame is bigger than [`Limits::max_frame_bytes`].
    #[error("frame exceeds the maximum size of {limit} bytes")]
    FrameTooLarge { limit: usize },
    /// The frame has more than [`Limits::max_headers`] headers.
    #[error("frame has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    /// A header line is longer than [`Limits::max_header_bytes`].
    #[error("header line exceeds the maximum length of {limit} bytes")]
    HeaderTooLong { limit: usize },
    /// `content-length` is not a decimal byte count.
    #[error("invalid content-length header '{0}'")]
    BadContentLength(String),
    /// The frame is not terminated by a NUL byte: either the message ended
    /// first, or the byte after `content-length` body bytes is not NUL.
    #[error("frame is not terminated by a NUL byte where expected")]
    MissingNul,
    /// A NUL byte appeared before the blank line that ends the headers.
    #[error("unexpected NUL byte before the end of the headers")]
    UnexpectedNul,
    /// A `heart-beat` header is not `<cx>,<cy>` in milliseconds.
    #[error("invalid heart-beat header '{0}'")]
    BadHeartBeat(String),
}

/// Resource limits applied while decoding untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted WebSocket message and largest single frame, in bytes
    /// (command, headers, body and NUL). Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Most headers accepted in one frame. Default 64.
    pub max_headers: usize,
    /// Longest accepted header line (`name:value`, escaped, without its EOL),
    /// in bytes. Default 8 KiB.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_headers: 64,
            max_header_bytes: 8 * 1024,
        }
    }
}

/// One item decoded from a WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A bare EOL (LF or CRLF): a heart-beat, or padding after a frame.
    HeartBeat,
    /// A complete frame.
    Frame(Frame),
}

/// Decodes everything in `buf`, the payload of one WebSocket message (text or
/// binary): any mix of frames and EOLs. Each EOL outside a frame yields one
/// [`Decoded::HeartBeat`]; bytes after a frame's NUL that are not an EOL must
/// be the start of another frame. A frame cut off by the end of the message is
/// [`CodecError::MissingNul`].
///
/// `version` is the negotiated version and controls header unescaping (see
/// [`unescape_header`]); CONNECT, STOMP and CONNECTED headers are never
/// unescaped. Returns all items, or the first error.
pub fn decode_message(
    buf: &[u8],
    version: Version,
    limits: &Limits,
) -> Result<Vec<Decoded>, CodecError> {
    let mut decoder = Decoder::default();
    let items = decoder.feed(buf, version, limits)?;
    if decoder.has_pending() {
        return Err(CodecError::MissingNul);
    }
    Ok(items)
}

/// Decodes a connection's WebSocket messages, where a frame may continue
/// in the next message (RabbitMQ Web-STOMP accepts that, and some clients
/// split large frames): the incomplete tail of a message is kept, at most
/// [`Limits::max_frame_bytes`] of it, and decoded with the next one.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Vec<u8>,
}

impl Decoder {
    /// Decode what `message` completes; like [`decode_message`], except
    /// that a frame cut off by the end of the message waits for the next.
    pub fn feed(
        &mut self,
        message: &[u8],
        version: Version,
        limits: &Limits,
    ) -> Result<Vec<Decoded>, CodecError> {
        let too_large = CodecError::FrameTooLarge {
            limit: limits.max_frame_bytes,
        };
        if message.len() > limits.max_frame_bytes {
            return Err(too_large);
        }
        let joined;
        let buf: &[u8] = if self.pending.is_empty() {
            message
        } else {
            if self.pending.len() + message.len() > limits.max_frame_bytes {
                return Err(too_large);
            }
            let mut b = std::mem::take(&mut self.pending);
            b.extend_from_slice(message);
            joined = b;
            &joined
        };
        let mut items = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            let eol = eol_len(rest);
            if eol > 0 {
                items.push(Decoded::HeartBeat);
                rest = rest.get(eol..).unwrap_or_default();
                continue;
            }
            // A lone CR may be the first half of a CRLF heart-beat.
            if rest == b"\r" {
                self.pending = rest.to_vec();
                break;
            }
            match decode_frame(rest, version, limits)? {
                Some((frame, used)) => {
                    items.push(Decoded::Frame(frame));
                    rest = rest.get(used..).unwrap_or_default();
                }
                None => {
                    self.pending = rest.to_vec();
                    break;
                }
            }
        }
        Ok(items)
    }

    /// Whether part of a frame is waiting for the next message.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Length of the EOL (`\n` or `\r\n`) at the start of `buf`, 0 if none.
fn eol_len(buf: &[u8]) -> usize {
    match buf {
        [b'\n', ..] => 1,
        [b'\r', b'\n', ..] => 2,
        _ => 0,
    }
}

/// Decodes one frame starting at `buf[0]` (which must be the first byte of the
/// command, not a heart-beat EOL: those are the caller's, see
/// [`decode_message`]).
///
/// Returns `Ok(Some((frame, consumed)))` where `consumed` counts the bytes up
/// to and including the NUL (EOLs after it are not consumed), `Ok(None)` if
/// `buf` holds a valid but incomplete frame, or an error as soon as the bytes
/// seen cannot become a valid frame within `limits` — so a streaming caller
/// never buffers more than [`Limits::max_frame_bytes`].
///
/// With a `content-length` header exactly that many body bytes (which may
/// include NULs) must be followed by a NUL; without it the body runs to the
/// first NUL.
pub fn decode_frame(
    buf: &[u8],
    version: Version,
    limits: &Limits,
) -> Result<Option<(Frame, usize)>, CodecError> {
    let too_large = CodecError::FrameTooLarge {
        limit: limits.max_frame_bytes,
    };

    // Command line.
    let Some(cmd_end) = find(buf, b'\n') else {
        if buf.len() > MAX_COMMAND_LINE || buf.contains(&0) {
            return Err(unknown_command(buf));
        }
        return Ok(None);
    };
    let cmd_line = strip_cr(buf.get(..cmd_end).unwrap_or_default());
    let command = Command::parse(cmd_line).ok_or_else(|| unknown_command(cmd_line))?;
    let unescape_version = if command.escapes_headers() {
        version
    } else {
        Version::V1_0
    };

    // Header lines, up to the blank line.
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = cmd_end + 1;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(line_end) = find(rest, b'\n') else {
            if rest.contains(&0) {
                return Err(CodecError::UnexpectedNul);
            }
            // +1: a trailing CR may still turn out to be part of the EOL.
            if rest.len() > limits.max_header_bytes.saturating_add(1) {
                return Err(CodecError::HeaderTooLong {
                    limit: limits.max_header_bytes,
                });
            }
            if buf.len() > limits.max_frame_bytes {
                return Err(too_large);
            }
            return Ok(None);
        };
        let line = strip_cr(rest.get(..line_end).unwrap_or_default());
        pos += line_end + 1;
        // The NUL still has to follow, so reaching the limit is already too much.
        if pos >= limits.max_frame_bytes {
            return Err(too_large);
        }
        if line.is_empty() {
            break;
        }
        if line.contains(&0) {
            return Err(CodecError::UnexpectedNul);
        }
        if line.len() > limits.max_header_bytes {
            return Err(CodecError::HeaderTooLong {
                limit: limits.max_header_bytes,
            });
        }
        if headers.len() >= limits.max_headers {
            return Err(CodecError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        headers.push(parse_header_line(line, unescape_version)?);
    }

    // Body and NUL.
    let body_start = pos;
    let content_length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| parse_content_length(value))
        .transpose()?;
    let body_end = match content_length {
        Some(len) => {
            let body_end = body_start.checked_add(len).ok_or(too_large.clone())?;
            if body_end >= limits.max_frame_bytes {
                return Err(too_large);
            }
            match buf.get(body_end) {
                None => return Ok(None),
                Some(0) => body_end,
                Some(_) => return Err(CodecError::MissingNul),
            }
        }
        None => {
            // Only look as far as a frame within the limit could reach.
            let window_end = buf.len().min(limits.max_frame_bytes);
            let window = buf.get(body_start..window_end).unwrap_or_default();
            match find(window, 0) {
                Some(i) => body_start + i,
                None if buf.len() >= limits.max_frame_bytes => return Err(too_large),
                None => return Ok(None),
            }
        }
    };
    let body = buf.get(body_start..body_end).unwrap_or_default();
    let frame = Frame {
        command,
        headers,
        body: Bytes::copy_from_slice(body),
    };
    Ok(Some((frame, body_end + 1)))
}

fn find(haystack: &[u8], byte: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == byte)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_header_line(line: &[u8], version: Version) -> Result<(String, String), CodecError> {
    // Escaped names and values cannot contain a raw ':', so the first one
    // separates them; in 1.0 (and CONNECT) later colons belong to the value.
    let colon = find(line, b':').ok_or(CodecError::MissingHeaderColon)?;
    if colon == 0 {
        return Err(CodecError::EmptyHeaderName);
    }
    let name = line.get(..colon).unwrap_or_default();
    let value = line.get(colon + 1..).unwrap_or_default();
    let name = std::str::from_utf8(name).map_err(|_| CodecError::InvalidUtf8)?;
    let value = std::str::from_utf8(value).map_err(|_| CodecError::InvalidUtf8)?;
    Ok((
        unescape_header(name, version)?.into_owned(),
        unescape_header(value, version)?.into_owned(),
    ))
}

fn parse_content_length(value: &str) -> Result<usize, CodecError> {
    // Digits only: `str::parse` would also take a leading '+'.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::BadContentLength(sanitize(value)));
    }
    value
        .parse::<usize>()
        .map_err(|_| CodecError::BadContentLength(sanitize(value)))
}

/// Client-supplied text quoted in an error message: at most 32 characters,
/// control characters (CR, LF, NUL, ESC...) escaped, so it is safe in any header.
fn sanitize(s: &str) -> String {
    const MAX_CHARS: usize = 32;
    let mut out = String::new();
    for c in s.chars().take(MAX_CHARS) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(MAX_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

fn unknown_command(line: &[u8]) -> CodecError {
    let head = line.get(..MAX_COMMAND_LINE * 3).unwrap_or(line);
    CodecError::UnknownCommand(sanitize(&String::from_utf8_lossy(head)))
}

/// How header text is written for a given frame.
#[derive(Clone, Copy)]
enum EscapeMode {
    /// No escaping defined (1.0, CONNECT/CONNECTED): CR and LF, which would
    /// break the framing, become spaces.
    Raw,
    /// 1.1: `\\`, `\n`, `\c`; CR, which 1.1 cannot express, becomes a space.
    V1_1,
    /// 1.2: `\\`, `\n`, `\c`, `\r`.
    V1_2,
}

impl EscapeMode {
    fn new(command: Command, version: Version) -> Self {
        match version {
            _ if !command.escapes_headers() => EscapeMode::Raw,
            Version::V1_0 => EscapeMode::Raw,
            Version::V1_1 => EscapeMode::V1_1,
            Version::V1_2 => EscapeMode::V1_2,
        }
    }

    fn from_version(version: Version) -> Self {
        EscapeMode::new(Command::Send, version)
    }
}

fn needs_escape(c: char, mode: EscapeMode) -> bool {
    match mode {
        EscapeMode::Raw => matches!(c, '\n' | '\r' | '\0'),
        EscapeMode::V1_1 | EscapeMode::V1_2 => matches!(c, '\\' | '\n' | '\r' | ':' | '\0'),
    }
}

fn push_escaped(out: &mut String, s: &str, mode: EscapeMode) {
    if !s.chars().any(|c| needs_escape(c, mode)) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match (c, mode) {
            // A NUL would end the frame early for most receivers.
            ('\0', _) => out.push(char::REPLACEMENT_CHARACTER),
            ('\n' | '\r', EscapeMode::Raw) | ('\r', EscapeMode::V1_1) => out.push(' '),
            (_, EscapeMode::Raw) => out.push(c),
            ('\\', _) => out.push_str("\\\\"),
            ('\n', _) => out.push_str("\\n"),
            (':', _) => out.push_str("\\c"),
            ('\r', _) => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
}

/// Escapes a header name or value for `version` (for frames other than
/// CONNECT/STOMP/CONNECTED, which are never escaped).
///
/// 1.2 escapes `\` `LF` `:` `CR`; 1.1 escapes `\` `LF` `:` and, having no
/// escape for it, turns CR into a space; 1.0 has no escaping and turns CR/LF
/// into spaces so the frame stays well-formed (a `:` in a 1.0 header *name*
/// cannot be expressed at all: header names are the caller's constants). NUL, which STOMP cannot carry in
/// a header, becomes U+FFFD in every version. Borrows when nothing changes.
pub fn escape_header(s: &str, version: Version) -> Cow<'_, str> {
    escape_with(s, EscapeMode::from_version(version))
}

fn escape_with(s: &str, mode: EscapeMode) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, mode)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s, mode);
    Cow::Owned(out)
}

/// Undoes [`escape_header`]: 1.2 decodes `\\` `\n` `\c` `\r`, 1.1 decodes
/// `\\` `\n` `\c`; any other backslash sequence (such as `\t`, or a lone
/// trailing `\`) is [`CodecError::InvalidEscape`]. 1.0 returns `s` unchanged.
/// Borrows when there is nothing to decode.
pub fn unescape_header(s: &str, version: Version) -> Result<Cow<'_, str>, CodecError> {
    if version == Version::V1_0 || !s.contains('\\') {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('r') if version == Version::V1_2 => out.push('\r'),
            Some(other) => {
                return Err(CodecError::InvalidEscape(sanitize(&format!("\\{other}"))));
            }
            None => return Err(CodecError::InvalidEscape("\\".to_owned())),
        }
    }
    Ok(Cow::Owned(out))
}

/// Encodes `frame` as `COMMAND\n` + `name:value\n`* + `\n` + body + NUL, with
/// LF line endings and headers escaped per [`escape_header`] (CONNECT, STOMP
/// and CONNECTED headers only get CR/LF/NUL replaced, never escaped).
///
/// Adds nothing: callers that want `content-length` (needed when the body may
/// contain NUL) add it themselves. Returns the bytes for one WebSocket message.
pub fn encode(frame: &Frame, version: Version) -> BytesMut {
    let mode = EscapeMode::new(frame.command, version);
    let mut head = String::with_capacity(
        16 + frame
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>(),
    );
    head.push_str(frame.command.as_str());
    head.push('\n');
    for (name, value) in &frame.headers {
        push_escaped(&mut head, name, mode);
        head.push(':');
        push_escaped(&mut head, value, mode);
        head.push('\n');
    }
    head.push('\n');
    let mut out = BytesMut::with_capacity(head.len() + frame.body.len() + 1);
    out.put_slice(head.as_bytes());
    out.put_slice(&frame.body);
    out.put_u8(0);
    out
}

/// Fast-path MESSAGE encoder for fan-out: `MESSAGE\n`, the given headers
/// escaped for `version`, then `content-length:<body bytes>`, a blank line,
/// `body` and NUL, as one `String` to send as a WebSocket text message.
///
/// Any `content-length` among `headers` is skipped so the frame always
/// carries the true length (a wrong one would break the client's framing).
pub fn encode_message_text(headers: &[(&str, &str)], body: &str, version: Version) -> String {
    let mode = EscapeMode::new(Command::Message, version);
    let headers_len: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut out = String::with_capacity(8 + headers_len + 40 + body.len() + 1);
    out.push_str("MESSAGE\n");
    for (name, value) in headers {
        if *name == "content-length" {
            continue;
        }
        push_escaped(&mut out, name, mode);
        out.push(':');
        push_escaped(&mut out, value, mode);
        out.push('\n');
    }
    out.push_str("content-length:");
    out.push_str(&body.len().to_string());
    out.push_str("\n\n");
    out.push_str(body);
    out.push('\0');
    out
}

/// Parses a `heart-beat` header value `"<cx>,<cy>"` (milliseconds; spaces
/// around the numbers are tolerated): `"10000,10000"` gives `(10000, 10000)`.
pub fn parse_heart_beat(v: &str) -> Result<(u64, u64), CodecError> {
    let bad = || CodecError::BadHeartBeat(sanitize(v));
    let (x, y) = v.split_once(',').ok_or_else(bad)?;
    let num = |s: &str| {
        let s = s.trim_matches(' ');
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    Ok((num(x)?, num(y)?))
}

/// Picks the version for a CONNECT/STOMP frame's `accept-version` header: an
/// absent header means 1.0 (spec); otherwise the highest of 1.0/1.1/1.2 listed
/// (comma-separated, spaces tolerated), or `None` if none is supported — the
/// server must then answer with an ERROR and close.
pub fn negotiate_version(accept_version: Option<&str>) -> Option<Version> {
    let Some(list) = accept_version else {
        return Some(Version::V1_0);
    };
    list.split(',')
        .filter_map(|v| Version::parse(v.trim_matches(' ')))
        .max()
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
