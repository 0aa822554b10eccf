//! ActionCable client frames: the command, then whatever the session reads
//! out of it next (identifier, `message` data's action, an extended-protocol
//! history request), exactly as the `/cable` and `/stream` sessions do.
#![no_main]

use herald_gateway::protocols::cable::protocol::{
    Command, broadcast, json_string, parse_action, parse_command, parse_history, parse_identifier,
};
use libfuzzer_sys::fuzz_target;

/// What the session does with a history request: parse it against the
/// pod's epochs (one topic with a known ID); every stream is either kept as
/// a position or set apart as foreign.
fn history(value: &serde_json::Value) {
    let epochs = herald_gateway::core::position::Epochs::new("epoch-1");
    epochs.set_topic_id("herald.tag", "AAAAAAAAAAAAAAAAAAAAAA");
    let (request, foreign) = parse_history(value, &epochs);
    let streams = value
        .get("streams")
        .and_then(serde_json::Value::as_object)
        .map_or(0, serde_json::Map::len);
    assert_eq!(request.positions.len() + foreign.len(), streams);
}

/// Identifiers are echoed to the client as JSON string literals spliced
/// into frames: the splice must stay valid JSON carrying the exact text.
fn echoed(identifier: &str) {
    let literal = json_string(identifier);
    let back: String = serde_json::from_str(&literal).expect("json_string is a JSON string");
    assert_eq!(back, identifier);
    let frame = broadcast(&literal, "{}");
    let parsed: serde_json::Value = serde_json::from_str(&frame).expect("broadcast is JSON");
    assert_eq!(parsed["identifier"].as_str(), Some(identifier));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_command(text) {
        Ok(Command::Subscribe {
            identifier,
            history: h,
        }) => {
            let _ = parse_identifier(&identifier);
            echoed(&identifier);
            if let Some(h) = h {
                history(&h);
            }
        }
        Ok(Command::History {
            identifier,
            history: h,
        }) => {
            let _ = parse_identifier(&identifier);
            history(&h);
        }
        Ok(Command::Message { identifier, data }) => {
            let _ = parse_identifier(&identifier);
            let _ = parse_action(&data);
        }
        Ok(Command::Unsubscribe { identifier }) => {
            let _ = parse_identifier(&identifier);
        }
        Ok(Command::Pong) | Err(_) => {}
    }
    // The same text where the session expects nested JSON.
    let _ = parse_identifier(text);
    let _ = parse_action(text);
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        history(&value);
    }
    echoed(text);
});
