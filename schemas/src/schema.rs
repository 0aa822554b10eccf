//! JSON Schemas (draft 2020-12) of the topics, generated from the typed
//! events; the checked-in copies live in `schemas/json/<suffix>.json`.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::catalogue::EVENTS;
use crate::envelope::Envelope;
use crate::family::Family;

/// The JSON Schema of one topic: the [`Envelope`] with `type` restricted to
/// the family's event types and, per type, an `if`/`then` rule that
/// constrains `payload` to that type's payload schema.
///
/// Object keys are sorted, so the output is stable.
#[must_use]
pub fn topic_schema(family: Family) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut root = generator.root_schema_for::<Envelope>();

    let mut names = Vec::new();
    let mut rules = Vec::new();
    for spec in EVENTS.iter().filter(|spec| spec.family == family) {
        let payload = (spec.schema)(&mut generator);
        names.push(Value::from(spec.name));
        rules.push(json!({
            "if": {
                "properties": { "type": { "const": spec.name } },
                "required": ["type"]
            },
            "then": {
                "properties": { "payload": payload }
            }
        }));
    }
    let definitions = generator.take_definitions(true);

    let object = root.ensure_object();
    object.insert(
        "title".into(),
        format!("Herald `{}` topic record", family.suffix()).into(),
    );
    object.insert(
        "description".into(),
        format!(
            "The value of a record on the `{}` topic: an event envelope whose \
             `type` is one of this family's event types and whose `payload` \
             has that type's shape. Unknown extra fields are allowed.",
            family.suffix()
        )
        .into(),
    );
    if let Some(Value::Object(event_type)) =
        object.get_mut("properties").and_then(|p| p.get_mut("type"))
    {
        event_type.insert("enum".into(), Value::Array(names));
    }
    object.insert("allOf".into(), Value::Array(rules));
    object.insert("$defs".into(), Value::Object(definitions));

    sorted(root.to_value())
}

/// [`topic_schema`] as the text of its checked-in file: pretty-printed JSON
/// with a trailing newline.
#[must_use]
pub fn topic_schema_text(family: Family) -> String {
    // Serialising a `Value` cannot fail: every key is a string.
    let mut text = serde_json::to_string_pretty(&topic_schema(family)).unwrap_or_default();
    text.push('\n');
    text
}

/// `value` with every object's keys in sorted order, whatever map type
/// serde_json was built with (`preserve_order` keeps insertion order).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(String, Value)> = object.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted(value)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
