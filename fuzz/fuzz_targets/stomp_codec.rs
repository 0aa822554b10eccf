//! The STOMP codec on arbitrary client bytes, in every version.
//!
//! Beyond "never panics": every frame decoded is re-encoded and decoded
//! again to the same frame (modulo the documented lossy mappings of CR in
//! headers that a version cannot escape); the fan-out encoder's output
//! decodes to the headers and body it was given; every strict prefix of a
//! decodable frame is "incomplete", never an error or another frame; and
//! header escaping round-trips.
#![no_main]

use std::borrow::Cow;

use herald_gateway::protocols::stomp::codec::{
    Command, Decoded, Frame, Limits, Version, decode_frame, decode_message, encode,
    encode_message_text, escape_header, negotiate_version, parse_heart_beat, unescape_header,
};
use libfuzzer_sys::fuzz_target;

/// Limits large enough for anything the encoder can make out of a frame
/// that passed the default limits (escaping at most doubles a header).
const ROOMY: Limits = Limits {
    max_frame_bytes: 1 << 24,
    max_headers: 1 << 16,
    max_header_bytes: 1 << 24,
};

/// What a header string becomes after encoding for `command` in `version`
/// and decoding again: CR survives only where the version can escape it.
fn normalized(s: &str, command: Command, version: Version) -> Cow<'_, str> {
    let keeps_cr = command.escapes_headers() && version == Version::V1_2;
    if keeps_cr || !s.contains('\r') {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.replace('\r', " "))
    }
}

fn normalized_frame(frame: &Frame, version: Version) -> Frame {
    Frame {
        command: frame.command,
        headers: frame
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    normalized(n, frame.command, version).into_owned(),
                    normalized(v, frame.command, version).into_owned(),
                )
            })
            .collect(),
        body: frame.body.clone(),
    }
}

fn only_frame(items: Vec<Decoded>) -> Frame {
    match <[Decoded; 1]>::try_from(items) {
        Ok([Decoded::Frame(f)]) => f,
        Ok(other) => panic!("re-decoded to a heart-beat: {other:?}"),
        Err(items) => panic!("re-decoded to {} items: {items:?}", items.len()),
    }
}

fn roundtrip(frame: &Frame, version: Version) {
    let bytes = encode(frame, version);
    let again = decode_message(&bytes, version, &ROOMY)
        .unwrap_or_else(|e| panic!("encoded {frame:?} does not decode in {version}: {e}"));
    assert_eq!(only_frame(again), normalized_frame(frame, version));
}

/// The fan-out encoder always writes its own, true `content-length`.
fn message_text_roundtrip(frame: &Frame, version: Version) {
    let Ok(body) = std::str::from_utf8(&frame.body) else {
        return;
    };
    let headers: Vec<(&str, &str)> = frame
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let text = encode_message_text(&headers, body, version);
    let again = decode_message(text.as_bytes(), version, &ROOMY)
        .unwrap_or_else(|e| panic!("MESSAGE for {frame:?} does not decode in {version}: {e}"));
    let got = only_frame(again);
    let mut want = normalized_frame(
        &Frame {
            command: Command::Message,
            headers: frame
                .headers
                .iter()
                .filter(|(n, _)| n != "content-length")
                .cloned()
                .collect(),
            body: frame.body.clone(),
        },
        version,
    );
    // In 1.0 a header name cannot carry ':' (the first one splits), nor LF/CR.
    if version == Version::V1_0 && want.headers.iter().any(|(n, _)| n.contains(':')) {
        return;
    }
    want.headers
        .push(("content-length".to_owned(), body.len().to_string()));
    assert_eq!(got, want);
}

/// Every strict prefix of a frame that decodes is merely incomplete.
fn prefixes_are_incomplete(buf: &[u8], version: Version, limits: &Limits, salt: usize) {
    let Ok(Some((frame, used))) = decode_frame(buf, version, limits) else {
        return;
    };
    let cuts = [0, 1, used / 2, used.saturating_sub(1), salt % used.max(1)];
    for cut in cuts.into_iter().filter(|&c| c < used) {
        let prefix = buf.get(..cut).unwrap_or_default();
        match decode_frame(prefix, version, limits) {
            Ok(None) => {}
            other => panic!("prefix {cut}/{used} of {frame:?} gave {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks tight or default limits, so limit edges are hit.
    let limits = match data.first() {
        Some(b) if b & 0x80 != 0 => Limits {
            max_frame_bytes: 64 + usize::from(b & 0x3f) * 8,
            max_headers: usize::from(b & 0x07),
            max_header_bytes: 16 + usize::from(b & 0x1f),
        },
        _ => Limits::default(),
    };
    let salt = data.iter().map(|&b| usize::from(b)).sum::<usize>();
    for version in Version::ALL {
        if let Ok(items) = decode_message(data, version, &limits) {
            for item in &items {
                if let Decoded::Frame(frame) = item {
                    roundtrip(frame, version);
                    message_text_roundtrip(frame, version);
                    if let Some(hb) = frame.header("heart-beat") {
                        let _ = parse_heart_beat(hb);
                    }
                    let _ = negotiate_version(frame.header("accept-version"));
                }
            }
        }
        prefixes_are_incomplete(data, version, &limits, salt);
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_heart_beat(text);
        let _ = negotiate_version(Some(text));
        for version in Version::ALL {
            // Escaping then unescaping gives the text back, up to the
            // characters a version cannot express (NUL always; CR in 1.0/1.1; LF in 1.0).
            let escaped = escape_header(text, version);
            let back = unescape_header(&escaped, version)
                .unwrap_or_else(|e| panic!("escape_header output rejected in {version}: {e}"));
            let mut want = text.replace('\0', "\u{fffd}");
            if version != Version::V1_2 {
                want = want.replace('\r', " ");
            }
            if version == Version::V1_0 {
                want = want.replace('\n', " ");
            }
            assert_eq!(back, want);
            let _ = unescape_header(text, version);
        }
    }
});
