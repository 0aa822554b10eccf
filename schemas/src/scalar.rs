//! Scalar types that accept every representation real clients accept.
//!
//! Backends are not uniform about numbers: Pulse's Android client reads ids
//! and timestamps with `Long.parseLong`, so `5` and `"5"` both work there;
//! Chatwoot ids are integers but some backends send them as strings. These
//! types accept what the clients accept, and reject what would break them.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// A 64-bit integer sent as a JSON integer (`5`) or a numeric string
/// (`"5"`, `"-5"`, `"+5"`), exactly what Java's `Long.parseLong` accepts.
///
/// Fractions (`5.5`, `5.0`) and anything non-numeric (`"x"`, `""`, `" 5"`)
/// are rejected: the Android client would read them as `0` or abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LongLike(pub i64);

impl LongLike {
    /// The integer value.
    #[must_use]
    pub const fn get(self) -> i64 {
        self.0
    }

    /// Parses a numeric string the way `Long.parseLong` does: an optional
    /// sign followed by ASCII digits, no whitespace, within the `i64` range.
    #[must_use]
    pub fn parse(text: &str) -> Option<LongLike> {
        text.parse::<i64>().ok().map(LongLike)
    }
}

impl From<i64> for LongLike {
    fn from(value: i64) -> Self {
        LongLike(value)
    }
}

impl From<LongLike> for i64 {
    fn from(value: LongLike) -> Self {
        value.0
    }
}

impl fmt::Display for LongLike {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for LongLike {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for LongLike {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Visitor for [`LongLike`].
        struct LongLikeVisitor;

        impl Visitor<'_> for LongLikeVisitor {
            type Value = LongLike;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a numeric string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LongLike, E> {
                Ok(LongLike(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LongLike, E> {
                i64::try_from(v).map(LongLike).map_err(|_| {
                    E::invalid_value(Unexpected::Unsigned(v), &"a 64-bit signed integer")
                })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<LongLike, E> {
                LongLike::parse(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
            }
        }

        deserializer.deserialize_any(LongLikeVisitor)
    }
}

impl JsonSchema for LongLike {
    fn schema_name() -> Cow<'static, str> {
        "LongLike".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::LongLike").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A 64-bit integer, as a JSON integer or a numeric string (what Java's Long.parseLong accepts).",
            "anyOf": [
                { "type": "integer" },
                { "type": "string", "pattern": "^[+-]?[0-9]{1,19}$" }
            ]
        })
    }
}

/// An identifier or code that arrives as a JSON integer or a string, kept in
/// the form it came in (Chatwoot ids, `message_type`, timestamps).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// It was a JSON integer.
    Int(i64),
    /// It was a JSON string.
    Text(String),
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(value) => value.fmt(f),
            IntOrString::Text(value) => f.write_str(value),
        }
    }
}

impl From<i64> for IntOrString {
    fn from(value: i64) -> Self {
        IntOrString::Int(value)
    }
}

impl From<&str> for IntOrString {
    fn from(value: &str) -> Self {
        IntOrString::Text(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Visitor for [`IntOrString`].
        struct IntOrStringVisitor;

        impl Visitor<'_> for IntOrStringVisitor {
            type Value = IntOrString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v).map(IntOrString::Int).map_err(|_| {
                    E::invalid_value(Unexpected::Unsigned(v), &"a 64-bit signed integer")
                })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Text(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<IntOrString, E> {
                Ok(IntOrString::Text(v))
            }
        }

        deserializer.deserialize_any(IntOrStringVisitor)
    }
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn schema_id() -> Cow<'static, str> {
        concat!(module_path!(), "::IntOrString").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A JSON integer or a string.",
            "type": ["integer", "string"]
        })
    }
}

/// Any JSON object; for events whose payload is passed through unchecked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct AnyObject(pub Map<String, Value>);

/// `deserialize_with` for a `String` field that may arrive as a JSON string
/// or integer (ids of users, contacts, accounts); integers are stringified.
pub(crate) fn string_or_integer<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    deserializer.deserialize_any(StringOrIntegerVisitor)
}

/// Visitor behind [`string_or_integer`].
pub(crate) struct StringOrIntegerVisitor;

impl Visitor<'_> for StringOrIntegerVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// Schema of the fields read by [`string_or_integer`].
pub(crate) struct StringOrInteger;

impl JsonSchema for StringOrInteger {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "StringOrInteger".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "integer"] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(json: &str) -> Result<LongLike, String> {
        serde_json::from_str::<LongLike>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn long_like_accepts_numbers_and_numeric_strings() {
        assert_eq!(long("5"), Ok(LongLike(5)));
        assert_eq!(long(r#""5""#), Ok(LongLike(5)));
        assert_eq!(long(r#""-42""#), Ok(LongLike(-42)));
        assert_eq!(long(r#""+7""#), Ok(LongLike(7)));
        assert_eq!(long("-9223372036854775808"), Ok(LongLike(i64::MIN)));
        assert_eq!(long(r#""1608150458000""#), Ok(LongLike(1_608_150_458_000)));
    }

    #[test]
    fn long_like_rejects_what_parse_long_rejects() {
        for bad in [
            r#""x""#,
            r#""""#,
            r#"" 5""#,
            r#""5.0""#,
            "5.5",
            "5.0",
            "true",
            "null",
            "[5]",
            "9223372036854775808",
            r#""9223372036854775808""#,
        ] {
            assert!(long(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            long(r#""x""#).unwrap_err(),
            r#"invalid value: string "x", expected an integer or a numeric string at line 1 column 3"#
        );
    }

    #[test]
    fn long_like_serializes_as_a_number() {
        assert_eq!(serde_json::to_string(&LongLike(5)).unwrap(), "5");
    }

    #[test]
    fn int_or_string_keeps_its_form() {
        let int: IntOrString = serde_json::from_str("12").unwrap();
        let text: IntOrString = serde_json::from_str(r#""12""#).unwrap();
        assert_eq!(int, IntOrString::Int(12));
        assert_eq!(text, IntOrString::Text("12".into()));
        assert_eq!(serde_json::to_string(&int).unwrap(), "12");
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""12""#);
        assert!(serde_json::from_str::<IntOrString>("1.5").is_err());
        assert!(serde_json::from_str::<IntOrString>("{}").is_err());
    }
}
