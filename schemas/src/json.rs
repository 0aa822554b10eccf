//! JSON helpers shared by the typed events: strict-object deserialisation and
//! serde errors turned into messages that name the JSON path of the bad value.

use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};

/// A deserializer adapter that makes a derived struct accept only a JSON
/// object.
///
/// serde's derived `Deserialize` for structs also accepts a JSON array
/// (fields by position); events are always objects, so `[..]` must be
/// rejected where `{..}` is expected.
pub(crate) struct MapOnly<D>(pub(crate) D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct enum identifier ignored_any
    }
}

/// `deserialize_with` for a struct-typed field: the value must be an object.
pub(crate) fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(MapOnly(deserializer))
}

/// `deserialize_with` for an optional struct-typed field: absent or `null`
/// gives `None`, anything else must be an object.
pub(crate) fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    /// Wrapper so `Option`'s null handling runs before the object check.
    struct Object<T>(T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            object(deserializer).map(Object)
        }
    }

    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|Object(value)| value))
}

/// Parses `json` (one JSON object) into `T`, or explains precisely why not.
pub(crate) fn parse_object<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    if let Some(kind) = non_object_kind(json) {
        return Err(format!("expected a JSON object, found {kind}"));
    }
    let mut deserializer = serde_json::Deserializer::from_str(json);
    T::deserialize(MapOnly(&mut deserializer))
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|err| describe(&err, json))
}

/// `None` when `json` starts with an object, else what it is instead.
pub(crate) fn non_object_kind(json: &str) -> Option<&'static str> {
    match json.trim_start().as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        Some(_) => Some("a number"),
        None => Some("nothing"),
    }
}

/// Renders a serde_json error on `json` as `"<message> at `<path>`"`.
///
/// serde_json reports a line and column but no path; the path is recovered by
/// scanning `json` up to the error position. serde_json positions an error
/// just after the offending value (or just after the object that lacks a
/// field), so the innermost open key at that point is the culprit.
pub(crate) fn describe(err: &serde_json::Error, json: &str) -> String {
    let full = err.to_string();
    if err.line() == 0 {
        return full;
    }
    let message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    let offset = byte_offset(json, err.line(), err.column());
    let path = path_at(json, offset);
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{message} at `{path}`")
    }
}

/// Byte offset of serde_json's 1-based `line` and byte `column`.
fn byte_offset(json: &str, line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.match_indices('\n')
            .nth(line - 2)
            .map_or(json.len(), |(at, _)| at + 1)
    };
    line_start.saturating_add(column).min(json.len())
}

/// One open container while scanning JSON text.
enum Frame {
    /// An object and the last key read in it (`None` before the first key).
    Object {
        key: Option<String>,
        wants_key: bool,
    },
    /// An array and the index of the current element.
    Array { index: usize },
}

/// The dotted path (`message.sender.id`, `Attachments[2]`) of the value that
/// ends at byte `end` of a syntactically valid `json`.
pub(crate) fn path_at(json: &str, end: usize) -> String {
    let bytes = json.as_bytes();
    let end = end.min(bytes.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                wants_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { wants_key, .. }) => *wants_key = true,
                None => {}
            },
            b'"' => {
                let close = string_end(bytes, i);
                if let Some(Frame::Object { key, wants_key }) = stack.last_mut()
                    && *wants_key
                {
                    let literal = json.get(i..=close).unwrap_or_default();
                    *key =
                        Some(serde_json::from_str::<String>(literal).unwrap_or_else(|_| {
                            json.get(i + 1..close).unwrap_or_default().to_owned()
                        }));
                    *wants_key = false;
                }
                i = close;
            }
            _ => {}
        }
        i += 1;
    }

    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// Index of the quote closing the string literal that opens at `open`.
fn string_end(bytes: &[u8], open: usize) -> usize {
    let mut j = open + 1;
    while j < bytes.len() && bytes[j] != b'"' {
        if bytes[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    j.min(bytes.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        id: String,
        count: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(deserialize_with = "object")]
        inner: Inner,
        #[serde(default)]
        list: Vec<u32>,
    }

    fn reason(json: &str) -> String {
        parse_object::<Outer>(json).unwrap_err()
    }

    #[test]
    fn names_the_path_of_a_wrong_type() {
        let why = reason(r#"{"name":"a","inner":{"id":"x","count":"7"}}"#);
        assert_eq!(
            why,
            r#"invalid type: string "7", expected u32 at `inner.count`"#
        );
    }

    #[test]
    fn names_the_object_lacking_a_field() {
        let why = reason(r#"{"name":"a","inner":{"count":7}}"#);
        assert_eq!(why, "missing field `id` at `inner`");
        let why = reason(r#"{"inner":{"id":"x","count":7}}"#);
        assert_eq!(why, "missing field `name`");
    }

    #[test]
    fn names_array_elements() {
        let why = reason(r#"{"name":"a","inner":{"id":"x","count":7},"list":[1,2,"3"]}"#);
        assert_eq!(
            why,
            r#"invalid type: string "3", expected u32 at `list[2]`"#
        );
    }

    #[test]
    fn works_across_lines_and_escaped_keys() {
        let json = "{\n  \"name\": \"a\",\n  \"in\\u006eer\": {\"id\": \"x\",\n \"count\": -1}\n}";
        let why = reason(json);
        assert!(why.ends_with("at `inner.count`"), "{why}");
    }

    #[test]
    fn rejects_arrays_where_objects_are_required() {
        let why = reason(r#"{"name":"a","inner":["x",7]}"#);
        assert!(why.starts_with("invalid type: sequence"), "{why}");
        assert!(why.ends_with("at `inner`"), "{why}");
        assert_eq!(reason("[1]"), "expected a JSON object, found an array");
        assert_eq!(reason(" 5"), "expected a JSON object, found a number");
    }

    #[test]
    fn tolerates_unknown_fields() {
        let ok = parse_object::<Outer>(
            r#"{"name":"a","x":{"y":[1]},"inner":{"id":"x","count":7,"z":null}}"#,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn path_scanning_never_panics_on_any_prefix() {
        let json = "{\"a\":[1,{\"b\\\"\":\"\u{e9}\u{1F600}\"}],\"c\":{\"d\":null}}";
        for end in 0..=json.len() + 2 {
            let _ = path_at(json, end);
            if let Some(prefix) = json.get(..end) {
                for at in 0..=prefix.len() {
                    let _ = path_at(prefix, at);
                }
            }
        }
        assert_eq!(path_at(json, json.find("null").unwrap()), "c.d");
    }
}
