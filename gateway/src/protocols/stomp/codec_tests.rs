//! Unit tests for the STOMP codec: decoding, limits, escaping, encoding.

use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn decode(buf: &[u8], version: Version) -> Result<Vec<Decoded>, CodecError> {
    decode_message(buf, version, &limits())
}

/// Decodes a message expected to hold exactly one frame and nothing else.
fn one_frame(buf: &[u8], version: Version) -> Frame {
    match decode(buf, version).expect("decodes").as_slice() {
        [Decoded::Frame(frame)] => frame.clone(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

fn frames(items: &[Decoded]) -> Vec<&Frame> {
    items
        .iter()
        .filter_map(|d| match d {
            Decoded::Frame(f) => Some(f),
            Decoded::HeartBeat => None,
        })
        .collect()
}

#[test]
fn every_command_parses() {
    for command in Command::ALL {
        let wire = format!("{}\nreceipt:r-1\n\n\0", command.as_str());
        let frame = one_frame(wire.as_bytes(), Version::V1_2);
        assert_eq!(frame.command, command);
        assert_eq!(frame.header("receipt"), Some("r-1"));
        assert!(frame.body.is_empty());
        assert_eq!(Command::parse(command.as_str().as_bytes()), Some(command));
    }
    assert_eq!(Command::parse(b"send"), None, "commands are case-sensitive");
    assert_eq!(Command::parse(b""), None);
}

#[test]
fn stompjs_connect_and_send() {
    let connect = b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\0";
    let frame = one_frame(connect, Version::V1_2);
    assert_eq!(frame.command, Command::Connect);
    assert_eq!(frame.header("host"), None);
    assert_eq!(
        negotiate_version(frame.header("accept-version")),
        Some(Version::V1_2)
    );
    assert_eq!(
        parse_heart_beat(frame.header("heart-beat").unwrap()),
        Ok((10000, 10000))
    );

    let send = b"SEND\ndestination:/queue/a\ncontent-type:application/json\n\n{\"a\":1}\0";
    let frame = one_frame(send, Version::V1_2);
    assert_eq!(frame.command, Command::Send);
    assert_eq!(frame.header("destination"), Some("/queue/a"));
    assert_eq!(&frame.body[..], b"{\"a\":1}");
}

#[test]
fn crlf_line_endings() {
    let wire = b"SEND\r\ndestination:/queue/a\r\nx:y\r\n\r\nbody\0\r\n";
    let items = decode(wire, Version::V1_2).unwrap();
    assert_eq!(items.len(), 2);
    let Decoded::Frame(frame) = &items[0] else {
        panic!("expected frame first");
    };
    assert_eq!(frame.command, Command::Send);
    assert_eq!(
        frame.headers,
        vec![
            ("destination".to_owned(), "/queue/a".to_owned()),
            ("x".to_owned(), "y".to_owned()),
        ]
    );
    assert_eq!(&frame.body[..], b"body");
    assert_eq!(items[1], Decoded::HeartBeat);
}

#[test]
fn escape_round_trip_1_2() {
    let raw = "a\\b\nc:d\re";
    let escaped = escape_header(raw, Version::V1_2);
    assert_eq!(escaped, "a\\\\b\\nc\\cd\\re");
    assert_eq!(unescape_header(&escaped, Version::V1_2).unwrap(), raw);

    let frame = Frame::new(Command::Send)
        .with_header("na:me", raw)
        .with_header("destination", "/queue/x")
        .with_body("hi");
    let wire = encode(&frame, Version::V1_2);
    assert_eq!(one_frame(&wire, Version::V1_2), frame);
}

#[test]
fn escape_round_trip_1_1() {
    let raw = "a\\b\nc:d";
    let escaped = escape_header(raw, Version::V1_1);
    assert_eq!(escaped, "a\\\\b\\nc\\cd");
    assert_eq!(unescape_header(&escaped, Version::V1_1).unwrap(), raw);
    // 1.1 has no \r escape: decoding it is an error, encoding drops the CR.
    assert_eq!(
        unescape_header("a\\rb", Version::V1_1),
        Err(CodecError::InvalidEscape("\\r".to_owned()))
    );
    assert_eq!(escape_header("a\rb", Version::V1_1), "a b");

    let frame = Frame::new(Command::Message).with_header("x", raw);
    let wire = encode(&frame, Version::V1_1);
    assert_eq!(one_frame(&wire, Version::V1_1), frame);
}

#[test]
fn version_1_0_does_not_unescape() {
    let wire = b"SEND\ndestination:/a\\nb\\c\nother:x:y\n\n\0";
    let frame = one_frame(wire, Version::V1_0);
    assert_eq!(frame.header("destination"), Some("/a\\nb\\c"));
    // Only the first colon separates name and value.
    assert_eq!(frame.header("other"), Some("x:y"));
    assert_eq!(unescape_header("a\\tb", Version::V1_0).unwrap(), "a\\tb");
    // 1.0 cannot escape; CR/LF are neutralised so framing survives.
    assert_eq!(escape_header("a:b\\c", Version::V1_0), "a:b\\c");
    assert_eq!(escape_header("a\nb\rc", Version::V1_0), "a b c");
}

#[test]
fn escape_borrows_when_unchanged() {
    assert!(matches!(
        escape_header("/queue/plain", Version::V1_2),
        Cow::Borrowed(_)
    ));
    assert!(matches!(
        unescape_header("/queue/plain", Version::V1_2),
        Ok(Cow::Borrowed(_))
    ));
    assert_eq!(escape_header("a\0b", Version::V1_2), "a\u{FFFD}b");
}

#[test]
fn undefined_escape_is_an_error() {
    let wire = b"SEND\ndestination:/a\\tb\n\n\0";
    assert_eq!(
        decode(wire, Version::V1_2),
        Err(CodecError::InvalidEscape("\\t".to_owned()))
    );
    assert_eq!(
        decode(wire, Version::V1_1),
        Err(CodecError::InvalidEscape("\\t".to_owned()))
    );
    // A lone trailing backslash is not an escape either.
    assert_eq!(
        unescape_header("abc\\", Version::V1_2),
        Err(CodecError::InvalidEscape("\\".to_owned()))
    );
    let message = CodecError::InvalidEscape("\\t".to_owned()).to_string();
    assert_eq!(message, "undefined escape sequence '\\t' in header");
}

#[test]
fn connect_headers_are_not_unescaped() {
    let wire = b"CONNECT\nlogin:a\\tb\npasscode:x\\ny\n\n\0";
    for command in ["CONNECT", "STOMP", "CONNECTED"] {
        let wire = [command.as_bytes(), &wire[7..]].concat();
        let frame = one_frame(&wire, Version::V1_2);
        assert_eq!(frame.header("login"), Some("a\\tb"));
        assert_eq!(frame.header("passcode"), Some("x\\ny"));
    }
    // And CONNECTED is never escaped on the way out.
    let frame = Frame::new(Command::Connected).with_header("server", "herald\\x:1");
    assert_eq!(
        &encode(&frame, Version::V1_2)[..],
        b"CONNECTED\nserver:herald\\x:1\n\n\0"
    );
}

#[test]
fn content_length_body_may_contain_nul() {
    let wire = b"SEND\ndestination:/a\ncontent-length:5\n\na\0b\0c\0\n";
    let items = decode(wire, Version::V1_2).unwrap();
    assert_eq!(items.len(), 2);
    let Decoded::Frame(frame) = &items[0] else {
        panic!("expected frame");
    };
    assert_eq!(&frame.body[..], b"a\0b\0c");
    assert_eq!(items[1], Decoded::HeartBeat);

    let empty = one_frame(b"SEND\ncontent-length:0\n\n\0", Version::V1_2);
    assert!(empty.body.is_empty());
}

#[test]
fn bad_content_length() {
    assert_eq!(
        decode(b"SEND\ncontent-length:abc\n\nx\0", Version::V1_2),
        Err(CodecError::BadContentLength("abc".to_owned()))
    );
    assert_eq!(
        decode(b"SEND\ncontent-length:+1\n\nx\0", Version::V1_2),
        Err(CodecError::BadContentLength("+1".to_owned()))
    );
    assert_eq!(
        decode(b"SEND\ncontent-length:\n\n\0", Version::V1_2),
        Err(CodecError::BadContentLength(String::new()))
    );
    assert_eq!(
        decode(b"SEND\ncontent-length: 1\n\nx\0", Version::V1_2),
        Err(CodecError::BadContentLength(" 1".to_owned()))
    );
    // Overflows usize.
    assert!(matches!(
        decode(
            b"SEND\ncontent-length:99999999999999999999999999\n\nx\0",
            Version::V1_2
        ),
        Err(CodecError::BadContentLength(_))
    ));
    // Bigger than the frame limit: rejected without waiting for the body.
    let small = Limits {
        max_frame_bytes: 100,
        ..Limits::default()
    };
    assert_eq!(
        decode_frame(b"SEND\ncontent-length:1000\n\n", Version::V1_2, &small),
        Err(CodecError::FrameTooLarge { limit: 100 })
    );
    assert_eq!(
        decode(b"SEND\ncontent-length:1000000\n\nx\0", Version::V1_2),
        Err(CodecError::FrameTooLarge { limit: 64 * 1024 })
    );
    // Lies: shorter than the body, so no NUL where it must be.
    assert_eq!(
        decode(b"SEND\ncontent-length:2\n\nhello\0", Version::V1_2),
        Err(CodecError::MissingNul)
    );
    // Lies: longer than the message.
    assert_eq!(
        decode(b"SEND\ncontent-length:20\n\nhello\0", Version::V1_2),
        Err(CodecError::MissingNul)
    );
}

#[test]
fn heart_beats_alone() {
    assert_eq!(decode(b"\n", Version::V1_2), Ok(vec![Decoded::HeartBeat]));
    assert_eq!(decode(b"\r\n", Version::V1_2), Ok(vec![Decoded::HeartBeat]));
    assert_eq!(
        decode(b"\n\r\n\n", Version::V1_2),
        Ok(vec![Decoded::HeartBeat; 3])
    );
    assert_eq!(decode(b"", Version::V1_2), Ok(vec![]));
}

#[test]
fn heart_beats_between_and_after_frames() {
    let wire = b"\nSEND\ndestination:/a\n\none\0\r\n\nSEND\ndestination:/b\n\ntwo\0\n";
    let items = decode(wire, Version::V1_2).unwrap();
    let kinds: Vec<bool> = items
        .iter()
        .map(|d| matches!(d, Decoded::HeartBeat))
        .collect();
    assert_eq!(kinds, [true, false, true, true, false, true]);
    let frames = frames(&items);
    assert_eq!(&frames[0].body[..], b"one");
    assert_eq!(&frames[1].body[..], b"two");
}

#[test]
fn two_frames_in_one_message() {
    let wire = b"SUBSCRIBE\nid:0\ndestination:/events\n\n\0SUBSCRIBE\nid:1\ndestination:/queue/message\n\n\0";
    let items = decode(wire, Version::V1_2).unwrap();
    let frames = frames(&items);
    assert_eq!(items.len(), 2);
    assert_eq!(frames[0].header("id"), Some("0"));
    assert_eq!(frames[1].header("destination"), Some("/queue/message"));
}

#[test]
fn garbage_after_nul_is_the_next_frame() {
    assert_eq!(
        decode(b"DISCONNECT\n\n\0xyz", Version::V1_2),
        Err(CodecError::MissingNul)
    );
    assert_eq!(
        decode(b"DISCONNECT\n\n\0bogus\n\n\0", Version::V1_2),
        Err(CodecError::UnknownCommand("bogus".to_owned()))
    );
}

#[test]
fn oversize_frame() {
    let small = Limits {
        max_frame_bytes: 64,
        ..Limits::default()
    };
    let body = "x".repeat(100);
    let wire = format!("SEND\ndestination:/a\n\n{body}\0");
    assert_eq!(
        decode_message(wire.as_bytes(), Version::V1_2, &small),
        Err(CodecError::FrameTooLarge { limit: 64 })
    );
    // The streaming decoder stops waiting once the limit is passed.
    let partial = format!("SEND\ndestination:/a\n\n{body}");
    assert_eq!(
        decode_frame(partial.as_bytes(), Version::V1_2, &small),
        Err(CodecError::FrameTooLarge { limit: 64 })
    );
    // A frame of exactly the limit is fine.
    let exact = format!("SEND\n\n{}\0", "y".repeat(64 - 7));
    assert_eq!(exact.len(), 64);
    assert!(decode_message(exact.as_bytes(), Version::V1_2, &small).is_ok());
    let over = format!("SEND\n\n{}\0", "y".repeat(64 - 6));
    assert!(decode_frame(over.as_bytes(), Version::V1_2, &small).is_err());
}

#[test]
fn too_many_headers() {
    let mut wire = String::from("SEND\n");
    for i in 0..65 {
        wire.push_str(&format!("h{i}:v\n"));
    }
    wire.push_str("\n\0");
    assert_eq!(
        decode(wire.as_bytes(), Version::V1_2),
        Err(CodecError::TooManyHeaders { limit: 64 })
    );
    // 64 is allowed.
    let ok = wire.replacen("h64:v\n", "", 1);
    assert_eq!(one_frame(ok.as_bytes(), Version::V1_2).headers.len(), 64);
}

#[test]
fn header_line_too_long() {
    let long = format!("SEND\nx:{}\n\n\0", "v".repeat(8 * 1024));
    assert_eq!(
        decode(long.as_bytes(), Version::V1_2),
        Err(CodecError::HeaderTooLong { limit: 8 * 1024 })
    );
    // Also detected before the line's EOL arrives.
    let partial = format!("SEND\nx:{}", "v".repeat(9 * 1024));
    assert_eq!(
        decode_frame(partial.as_bytes(), Version::V1_2, &limits()),
        Err(CodecError::HeaderTooLong { limit: 8 * 1024 })
    );
    let fits = format!("SEND\nx:{}\r\n\n\0", "v".repeat(8 * 1024 - 2));
    assert!(decode(fits.as_bytes(), Version::V1_2).is_ok());
}

#[test]
fn malformed_input_errors() {
    assert_eq!(
        decode(b"SEND\ndestination\n\n\0", Version::V1_2),
        Err(CodecError::MissingHeaderColon)
    );
    assert_eq!(
        decode(b"SEND\n:value\n\n\0", Version::V1_2),
        Err(CodecError::EmptyHeaderName)
    );
    assert_eq!(
        decode(b"FROB\n\n\0", Version::V1_2),
        Err(CodecError::UnknownCommand("FROB".to_owned()))
    );
    assert_eq!(
        decode(b"send\n\n\0", Version::V1_2),
        Err(CodecError::UnknownCommand("send".to_owned()))
    );
    assert_eq!(
        decode(b"SEND\ndestination:/a\n\nno terminator", Version::V1_2),
        Err(CodecError::MissingNul)
    );
    assert_eq!(
        decode(b"SEND\ndestination:/a", Version::V1_2),
        Err(CodecError::MissingNul)
    );
    assert_eq!(
        decode(b"SEND\ndestination:\xff\xfe\n\n\0", Version::V1_2),
        Err(CodecError::InvalidUtf8)
    );
    assert_eq!(
        decode(b"SEND\n\xc3:v\n\n\0", Version::V1_0),
        Err(CodecError::InvalidUtf8)
    );
    // Headers must end with a blank line before the NUL.
    assert_eq!(
        decode(b"DISCONNECT\n\0", Version::V1_2),
        Err(CodecError::UnexpectedNul)
    );
    assert_eq!(
        decode(b"SEND\ndestination:/a\0\n\n\0", Version::V1_2),
        Err(CodecError::UnexpectedNul)
    );
    // A long line with no EOL is not waited for.
    assert!(matches!(
        decode_frame(b"GET / HTTP/1.1", Version::V1_2, &limits()),
        Err(CodecError::UnknownCommand(_))
    ));
    // A lone CR is not an EOL.
    assert!(decode(b"\r", Version::V1_2).is_err());
    assert!(decode(b"\rX\n", Version::V1_2).is_err());
}

#[test]
fn error_text_quotes_input_safely() {
    let err = decode(b"\x1b[31mEVIL\r\r\n\n\0", Version::V1_2).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n') && !text.contains('\r') && !text.contains('\x1b'));
    let long = format!("{}\n\n\0", "A".repeat(11));
    let err = decode(long.as_bytes(), Version::V1_2).unwrap_err();
    assert_eq!(err, CodecError::UnknownCommand("AAAAAAAAAAA".to_owned()));
    let huge = format!("SEND\ncontent-length:{}\n\n\0", "9".repeat(100));
    let Err(CodecError::BadContentLength(quoted)) = decode(huge.as_bytes(), Version::V1_2) else {
        panic!("expected BadContentLength");
    };
    assert!(quoted.len() < 40, "{quoted}");
}

/// Deterministic xorshift so the "random bytes" test needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let small = Limits {
        max_frame_bytes: 256,
        max_headers: 4,
        max_header_bytes: 32,
    };
    // Bias towards bytes that matter to the grammar so that deep paths run.
    let alphabet = b"\n\r\0:\\ncrtSENDCONNECTMESSAGEcontent-length0123456789\xff";
    for round in 0..20_000_u32 {
        let len = (rng.next() % 120) as usize;
        let mut buf: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                if r.is_multiple_of(3) {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        if round.is_multiple_of(2) {
            // Give half the inputs a valid command line.
            let command = Command::ALL[(rng.next() % 15) as usize];
            let mut prefixed = format!("{}\n", command.as_str()).into_bytes();
            prefixed.append(&mut buf);
            buf = prefixed;
        }
        for version in Version::ALL {
            let _ = decode_message(&buf, version, &small);
            let _ = decode_message(&buf, version, &Limits::default());
            let _ = decode_frame(&buf, version, &small);
        }
    }
}

#[test]
fn streaming_decoder_waits_for_complete_frame() {
    let wire = b"SEND\r\ndestination:/a\ncontent-length:3\n\na\0b\0\n";
    let full = wire.len() - 1;
    for cut in 0..full {
        assert_eq!(
            decode_frame(&wire[..cut], Version::V1_2, &limits()),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
    let (frame, used) = decode_frame(wire, Version::V1_2, &limits())
        .unwrap()
        .unwrap();
    assert_eq!(used, full, "trailing EOL is not consumed");
    assert_eq!(&frame.body[..], b"a\0b");
}

#[test]
fn repeated_header_first_wins() {
    let wire = b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0";
    let frame = one_frame(wire, Version::V1_2);
    assert_eq!(frame.header("foo"), Some("World"));
    assert_eq!(frame.headers.len(), 2);
    // Also for content-length, which drives framing.
    let wire = b"SEND\ncontent-length:1\ncontent-length:3\n\na\0";
    assert_eq!(&one_frame(wire, Version::V1_2).body[..], b"a");
}

#[test]
fn encode_connected_exact_bytes() {
    let frame = Frame::new(Command::Connected)
        .with_header("version", Version::V1_2.as_str())
        .with_header("heart-beat", "10000,10000")
        .with_header("server", "herald/0.1.0")
        .with_header("session", "s-1");
    assert_eq!(
        &encode(&frame, Version::V1_2)[..],
        b"CONNECTED\nversion:1.2\nheart-beat:10000,10000\nserver:herald/0.1.0\nsession:s-1\n\n\0"
    );
}

#[test]
fn encode_message_exact_bytes() {
    let body = "{\"type\":\"message.created\",\"payload\":{}}";
    let frame = Frame::new(Command::Message)
        .with_header("destination", "/events")
        .with_header("message-id", "m:1")
        .with_header("subscription", "sub-0")
        .with_header("content-type", "application/json")
        .with_header("content-length", body.len().to_string())
        .with_body(body);
    let expected = format!(
        "MESSAGE\ndestination:/events\nmessage-id:m\\c1\nsubscription:sub-0\n\
         content-type:application/json\ncontent-length:{}\n\n{body}\0",
        body.len()
    );
    assert_eq!(&encode(&frame, Version::V1_2)[..], expected.as_bytes());

    let text = encode_message_text(
        &[
            ("destination", "/events"),
            ("message-id", "m:1"),
            ("subscription", "sub-0"),
            ("content-type", "application/json"),
        ],
        body,
        Version::V1_2,
    );
    assert_eq!(text, expected);
    // And it decodes back to the same frame.
    assert_eq!(one_frame(text.as_bytes(), Version::V1_2), frame);
}

#[test]
fn encode_message_text_counts_bytes_and_ignores_caller_length() {
    let body = "{\"t\":\"héllo\"}";
    let text = encode_message_text(
        &[("content-length", "1"), ("destination", "/q")],
        body,
        Version::V1_0,
    );
    assert_eq!(
        text,
        format!("MESSAGE\ndestination:/q\ncontent-length:14\n\n{body}\0")
    );
    assert_eq!(body.len(), 14);
}

#[test]
fn encode_error_frame_escapes_message() {
    let frame = Frame::new(Command::Error)
        .with_header("message", "bad\nthing: 401")
        .with_header("receipt-id", "r1");
    assert_eq!(
        &encode(&frame, Version::V1_2)[..],
        b"ERROR\nmessage:bad\\nthing\\c 401\nreceipt-id:r1\n\n\0"
    );
    assert_eq!(
        &encode(&frame, Version::V1_0)[..],
        b"ERROR\nmessage:bad thing: 401\nreceipt-id:r1\n\n\0"
    );
}

#[test]
fn negotiate_version_cases() {
    assert_eq!(negotiate_version(None), Some(Version::V1_0));
    assert_eq!(negotiate_version(Some("1.2,1.1,1.0")), Some(Version::V1_2));
    assert_eq!(negotiate_version(Some("1.0,1.1")), Some(Version::V1_1));
    assert_eq!(negotiate_version(Some("1.0")), Some(Version::V1_0));
    assert_eq!(negotiate_version(Some("1.1, 1.2")), Some(Version::V1_2));
    assert_eq!(negotiate_version(Some("1.3,1.1")), Some(Version::V1_1));
    assert_eq!(negotiate_version(Some("2.0")), None);
    assert_eq!(negotiate_version(Some("")), None);
}

#[test]
fn parse_heart_beat_cases() {
    assert_eq!(parse_heart_beat("10000,10000"), Ok((10000, 10000)));
    assert_eq!(parse_heart_beat("0,0"), Ok((0, 0)));
    assert_eq!(parse_heart_beat("0, 5000"), Ok((0, 5000)));
    for bad in [
        "",
        "10000",
        "a,b",
        "1,2,3",
        "-1,0",
        ",",
        "1,",
        "99999999999999999999999,0",
    ] {
        assert!(
            matches!(parse_heart_beat(bad), Err(CodecError::BadHeartBeat(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn versions_and_subprotocols() {
    for version in Version::ALL {
        assert_eq!(Version::parse(version.as_str()), Some(version));
        assert_eq!(
            Version::from_subprotocol(version.subprotocol()),
            Some(version)
        );
    }
    assert_eq!(Version::V1_2.subprotocol(), "v12.stomp");
    assert!(Version::V1_2 > Version::V1_1 && Version::V1_1 > Version::V1_0);
}

#[test]
fn random_headers_round_trip() {
    let mut rng = XorShift(0x0123_4567_89AB_CDEF);
    let alphabet: Vec<char> = "ab:\\\n\rcé✓ ".chars().collect();
    let random_string = |rng: &mut XorShift| -> String {
        let len = 1 + (rng.next() % 12) as usize;
        (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect()
    };
    for _ in 0..2_000 {
        let name = random_string(&mut rng);
        let value = random_string(&mut rng);
        let frame = Frame::new(Command::Send)
            .with_header(name.clone(), value.clone())
            .with_body("x");
        assert_eq!(
            one_frame(&encode(&frame, Version::V1_2), Version::V1_2),
            frame
        );
        // 1.1 cannot carry CR: it comes back as a space.
        let expected = Frame::new(Command::Send)
            .with_header(name.replace('\r', " "), value.replace('\r', " "))
            .with_body("x");
        assert_eq!(
            one_frame(&encode(&frame, Version::V1_1), Version::V1_1),
            expected
        );
        // 1.0 and CONNECTED cannot escape (nor carry ':' in a name), but the
        // frame must stay well-formed.
        let plain_name = name.replace(':', "_");
        let raw = Frame::new(Command::Send).with_header(plain_name.clone(), value.clone());
        let _ = one_frame(&encode(&raw, Version::V1_0), Version::V1_0);
        let connected = Frame::new(Command::Connected).with_header(plain_name, value);
        let _ = one_frame(&encode(&connected, Version::V1_2), Version::V1_2);
    }
}

#[test]
fn frames_may_continue_in_the_next_message() {
    let l = limits();
    let mut d = Decoder::default();
    let frame = b"SUBSCRIBE\nid:0\ndestination:/events\n\n\0";
    // Cut at every position: the frame comes out once, when complete.
    for cut in 1..frame.len() {
        let first = d.feed(&frame[..cut], Version::V1_2, &l).unwrap();
        assert!(first.is_empty(), "cut at {cut}: {first:?}");
        assert!(d.has_pending());
        let second = d.feed(&frame[cut..], Version::V1_2, &l).unwrap();
        assert!(
            matches!(second.as_slice(), [Decoded::Frame(f)] if f.command == Command::Subscribe),
            "cut at {cut}: {second:?}"
        );
        assert!(!d.has_pending());
    }
    // A frame, heart-beats and the start of the next in one message.
    let items = d
        .feed(
            b"SEND\ndestination:/a\n\nx\0\n\r\nSEND\ndest",
            Version::V1_2,
            &l,
        )
        .unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    let items = d.feed(b"ination:/b\n\ny\0", Version::V1_2, &l).unwrap();
    assert!(
        matches!(items.as_slice(), [Decoded::Frame(f)] if f.header("destination") == Some("/b"))
    );
    // A CRLF heart-beat split in two.
    assert!(d.feed(b"\r", Version::V1_2, &l).unwrap().is_empty());
    assert!(matches!(
        d.feed(b"\n", Version::V1_2, &l).unwrap().as_slice(),
        [Decoded::HeartBeat]
    ));
}

#[test]
fn a_continued_frame_is_bounded_by_the_frame_limit() {
    let l = Limits {
        max_frame_bytes: 64,
        ..limits()
    };
    let mut d = Decoder::default();
    assert!(
        d.feed(b"SEND\ndestination:/a\n\n", Version::V1_2, &l)
            .unwrap()
            .is_empty()
    );
    let body = [b'x'; 50];
    assert!(matches!(
        d.feed(&body, Version::V1_2, &l),
        Err(CodecError::FrameTooLarge { limit: 64 })
    ));
    // Garbage is still refused at once, not buffered.
    let mut d = Decoder::default();
    assert!(d.feed(b"NOPE\n", Version::V1_2, &l).is_err());
}
