//! TypeID JSON frames: the envelope, then the JoinRequest and
//! ConversationMessageRequest bodies and the client-version comparison the
//! `/notifications` session applies.
#![no_main]

use std::cmp::Ordering;

use herald_gateway::protocols::typeid::protocol::{
    JoinRequest, MessageRequest, frame_raw, id_text, parse, version_cmp,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// `version_cmp` must be a total order, or the accepted range is ill-defined.
fn ordered(a: &str, b: &str) {
    assert_eq!(version_cmp(a, b), version_cmp(b, a).reverse());
    assert_eq!(version_cmp(a, a), Ordering::Equal);
    let _ = version_cmp(a, "7.0.0");
}

/// JSON equality, with floats equal to within rounding: serde_json's
/// default float parsing is not correctly rounded, so `42981e97` can print
/// and re-parse one unit in the last place apart (found by this target).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x).abs() < 1e-14,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = parse(text) {
        // Re-encoding a parsed frame gives the same frame back.
        let again = parse(&frame_raw(frame.type_id, &frame.body.to_string()))
            .expect("re-encoded frame parses");
        assert_eq!(again.type_id, frame.type_id);
        assert!(
            same_json(&again.body, &frame.body),
            "{again:?} != {frame:?}"
        );
        if let Ok(join) = serde_json::from_value::<JoinRequest>(frame.body.clone()) {
            let _ = id_text(join.user_id.as_ref());
            if let Some(v) = &join.client_version {
                ordered(v, "7.0.30");
            }
        }
        if let Ok(message) = serde_json::from_value::<MessageRequest>(frame.body.clone()) {
            let _ = id_text(message.conversation_id.as_ref());
            let _ = id_text(message.client_id.as_ref());
            let _ = id_text(message.message.as_ref());
        }
    }
    let (a, b) = text.split_once('\n').unwrap_or((text, ""));
    ordered(a, b);
});
