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

/// Parses `json` (one JSON object) into `T`, or explains precisely why not:
/// serde's message and the path of the bad value (`message.sender.id`,
/// `Attachments[2]`; for a missing field, the object lacking it), tracked
/// by serde_path_to_error.
pub(crate) fn parse_object<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    if let Some(kind) = non_object_kind(json) {
        return Err(format!("expected a JSON object, found {kind}"));
    }
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let value = serde_path_to_error::deserialize(MapOnly(&mut deserializer))
        .map_err(|err| render(err.path(), err.inner()))?;
    deserializer.end().map_err(|err| err.to_string())?;
    Ok(value)
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

/// Why `bytes` do not deserialise as the object `T` (which `err` already
/// said), with the path of the bad value: parsed again with path tracking,
/// so the successful path pays nothing for it.
pub(crate) fn describe<T: DeserializeOwned>(err: &serde_json::Error, bytes: &[u8]) -> String {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(MapOnly(&mut deserializer)) {
        Err(tracked) => render(tracked.path(), tracked.inner()),
        Ok(_) => err.to_string(),
    }
}

/// `"<message> at `<path>`"` for a structural error; serde_json's own text
/// (with its line and column) for a syntax error.
fn render(path: &serde_path_to_error::Path, err: &serde_json::Error) -> String {
    let full = err.to_string();
    if err.classify() != serde_json::error::Category::Data {
        return full;
    }
    let message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    let path = path.to_string();
    if path == "." {
        message.to_owned()
    } else {
        format!("{message} at `{path}`")
    }
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
}
