//! Kafka record values: the envelope decoder and the schema validation the
//! producer applies (the gateway decodes every record it routes).
#![no_main]

use herald_schemas::{Envelope, family_of, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::decode(data) else {
        return;
    };
    assert!(!envelope.account_id.is_empty(), "empty account id accepted");
    if let Ok(family) = validate(&envelope) {
        assert_eq!(family_of(&envelope.event_type), Some(family));
        assert_eq!(envelope.family(), Some(family));
    }
    // What the producer writes back out decodes to the same envelope, and
    // the payload bytes pass through untouched.
    let text = serde_json::to_string(&envelope).expect("an envelope serialises");
    let again = Envelope::decode(text.as_bytes()).expect("a serialised envelope decodes");
    assert_eq!(again.id, envelope.id);
    assert_eq!(again.event_type, envelope.event_type);
    assert_eq!(again.account_id, envelope.account_id);
    assert_eq!(again.occurred_at, envelope.occurred_at);
    assert_eq!(again.audience, envelope.audience);
    assert_eq!(again.payload.get(), envelope.payload.get());
});
