//! Decoding and validating the envelope of a record value.

use herald_schemas::{Audience, Envelope, Family, SchemaError, validate};

const TAG: &str = r#"{"id":"t-1","name":"flag","color":"tag-red"}"#;

fn record(fields: &str) -> Vec<u8> {
    format!("{{{fields}}}").into_bytes()
}

fn decode(fields: &str) -> Result<Envelope, SchemaError> {
    Envelope::decode(&record(fields))
}

#[test]
fn decodes_a_string_account_id() {
    let envelope = decode(&format!(
        r#""id":"e1","type":"tag.updated","account_id":"42","occurred_at":"2026-11-22T10:00:00.000Z","payload":{TAG}"#
    ))
    .unwrap();
    assert_eq!(envelope.id, "e1");
    assert_eq!(envelope.event_type, "tag.updated");
    assert_eq!(envelope.account_id, "42");
    assert_eq!(
        envelope.occurred_at.as_deref(),
        Some("2026-11-22T10:00:00.000Z")
    );
    assert_eq!(envelope.audience, None);
    assert_eq!(envelope.family(), Some(Family::Tag));
    assert_eq!(validate(&envelope), Ok(Family::Tag));
}

#[test]
fn decodes_an_integer_account_id_as_its_string() {
    let envelope = decode(&format!(
        r#""id":"e1","type":"tag.updated","account_id":42,"payload":{TAG}"#
    ))
    .unwrap();
    assert_eq!(envelope.account_id, "42");
    let envelope = decode(&format!(
        r#""id":"e1","type":"tag.updated","account_id":-7,"payload":{TAG}"#
    ))
    .unwrap();
    assert_eq!(envelope.account_id, "-7");
    let serialized = serde_json::to_string(&envelope).unwrap();
    assert!(serialized.contains(r#""account_id":"-7""#), "{serialized}");
}

#[test]
fn rejects_unusable_account_ids() {
    for (value, reason) in [
        (
            r#""""#,
            r#"invalid value: string "", expected a non-empty account id"#,
        ),
        (
            "4.2",
            "invalid type: floating point `4.2`, expected a string or an integer",
        ),
        (
            "true",
            "invalid type: boolean `true`, expected a string or an integer",
        ),
        ("{}", "invalid type: map, expected a string or an integer"),
    ] {
        let err = decode(&format!(
            r#""id":"e1","type":"tag.updated","account_id":{value},"payload":{TAG}"#
        ))
        .unwrap_err();
        assert_eq!(
            err,
            SchemaError::InvalidField {
                field: "account_id",
                reason: reason.to_owned()
            },
            "{value}"
        );
    }
}

#[test]
fn names_each_missing_field() {
    let all = [
        ("id", r#""id":"e1""#),
        ("type", r#""type":"tag.updated""#),
        ("account_id", r#""account_id":"42""#),
        ("payload", &format!(r#""payload":{TAG}"#)),
    ];
    for (missing, _) in &all {
        let fields: Vec<&str> = all
            .iter()
            .filter(|(name, _)| name != missing)
            .map(|(_, field)| *field)
            .collect();
        let err = decode(&fields.join(",")).unwrap_err();
        assert_eq!(err, SchemaError::MissingField(missing));
        assert_eq!(err.to_string(), format!("missing field `{missing}`"));
    }
    // `null` counts as missing.
    let err =
        decode(r#""id":"e1","type":"tag.updated","account_id":"42","payload":null"#).unwrap_err();
    assert_eq!(err, SchemaError::MissingField("payload"));
    let err = decode(&format!(
        r#""id":null,"type":"tag.updated","account_id":"42","payload":{TAG}"#
    ))
    .unwrap_err();
    assert_eq!(err, SchemaError::MissingField("id"));
}

#[test]
fn names_fields_of_the_wrong_type() {
    let err = decode(&format!(
        r#""id":5,"type":"tag.updated","account_id":"42","payload":{TAG}"#
    ))
    .unwrap_err();
    assert_eq!(
        err,
        SchemaError::InvalidField {
            field: "id",
            reason: "expected a string, found a number".into()
        }
    );
    let err = decode(&format!(
        r#""id":"e","type":["tag.updated"],"account_id":"42","payload":{TAG}"#
    ))
    .unwrap_err();
    assert_eq!(
        err,
        SchemaError::InvalidField {
            field: "type",
            reason: "expected a string, found an array".into()
        }
    );
    let err = decode(&format!(
        r#""id":"e","type":"t","account_id":"42","occurred_at":1,"payload":{TAG}"#
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            SchemaError::InvalidField {
                field: "occurred_at",
                ..
            }
        ),
        "{err}"
    );
    let err = decode(&format!(
        r#""id":"e","type":"t","account_id":"42","audience":"all","payload":{TAG}"#
    ))
    .unwrap_err();
    assert!(
        matches!(
            err,
            SchemaError::InvalidField {
                field: "audience",
                ..
            }
        ),
        "{err}"
    );
    let err = decode(&format!(
        r#""id":"e","type":"t","account_id":"42","audience":{{"users":[1.5]}},"payload":{TAG}"#
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid field `audience`: invalid type: floating point `1.5`, expected a string or an integer"
    );
}

#[test]
fn rejects_bad_json() {
    for bad in [
        "",
        "{",
        r#"{"id":"e1",}"#,
        "not json",
        r#"{"id":"e1"} trailing"#,
    ] {
        let err = Envelope::decode(bad.as_bytes()).unwrap_err();
        let SchemaError::InvalidJson(reason) = &err else {
            panic!("{bad}: {err:?}");
        };
        assert!(reason.contains("line 1 column"), "{bad}: {reason}");
    }
    let err = Envelope::decode(b"\xff\xfe").unwrap_err();
    assert!(matches!(err, SchemaError::InvalidJson(_)), "{err:?}");
}

#[test]
fn rejects_what_is_not_an_object() {
    for (bad, found) in [
        ("[1,2]", "sequence"),
        ("\"x\"", "string \"x\""),
        ("7", "integer `7`"),
        ("null", "null"),
    ] {
        let err = Envelope::decode(bad.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            SchemaError::InvalidJson(format!(
                "invalid type: {found}, expected an envelope JSON object"
            )),
            "{bad}"
        );
    }
}

#[test]
fn tolerates_extra_fields() {
    let envelope = decode(&format!(
        r#""version":2,"id":"e1","headers":{{"a":[1]}},"type":"tag.updated","account_id":"42","audience":{{"users":["7"],"teams":["x"]}},"payload":{TAG},"trace":null"#
    ))
    .unwrap();
    assert_eq!(envelope.audience.unwrap().users, ["7"]);
}

#[test]
fn preserves_payload_bytes_exactly() {
    let payload = "{ \"name\" :\"flag\",\n \"id\":\"t-1\",  \"color\":\"tag-\\u0072ed\", \"n\": 1.50e3, \"big\": 123456789012345678901234567890 }";
    let bytes = record(&format!(
        r#""id":"e1","type":"tag.updated","account_id":"42","payload":{payload}"#
    ));
    let envelope = Envelope::decode(&bytes).unwrap();
    assert_eq!(envelope.payload.get(), payload);
    assert_eq!(validate(&envelope), Ok(Family::Tag));
    let encoded = serde_json::to_string(&envelope).unwrap();
    assert!(encoded.contains(payload), "{encoded}");
    // The derived `Deserialize` keeps the bytes as well.
    let derived: Envelope = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(derived.payload.get(), payload);
}

#[test]
fn decodes_the_audience() {
    let envelope = decode(&format!(
        r#""id":"e1","type":"tag.updated","account_id":"42","audience":{{"users":[7,"8"],"contacts":["c-9"],"roles":["agent","admin"]}},"payload":{TAG}"#
    ))
    .unwrap();
    assert_eq!(
        envelope.audience,
        Some(Audience {
            users: vec!["7".into(), "8".into()],
            contacts: vec!["c-9".into()],
            roles: vec!["agent".into(), "admin".into()],
        })
    );
    let envelope = decode(&format!(
        r#""id":"e1","type":"tag.updated","account_id":"42","audience":{{}},"payload":{TAG}"#
    ))
    .unwrap();
    assert!(envelope.audience.unwrap().is_empty());
}

#[test]
fn validate_checks_the_envelope_fields() {
    let good = || {
        decode(&format!(
            r#""id":"e1","type":"tag.updated","account_id":"42","payload":{TAG}"#
        ))
        .unwrap()
    };

    let mut envelope = good();
    envelope.id = " ".into();
    assert_eq!(
        validate(&envelope),
        Err(SchemaError::InvalidField {
            field: "id",
            reason: "must not be blank".into()
        })
    );

    let mut envelope = good();
    envelope.event_type = String::new();
    assert!(matches!(
        validate(&envelope),
        Err(SchemaError::InvalidField { field: "type", .. })
    ));

    let mut envelope = good();
    envelope.account_id = String::new();
    assert!(matches!(
        validate(&envelope),
        Err(SchemaError::InvalidField {
            field: "account_id",
            ..
        })
    ));

    let mut envelope = good();
    envelope.event_type = "tag.deleted".into();
    assert_eq!(
        validate(&envelope),
        Err(SchemaError::UnknownType("tag.deleted".into()))
    );
    assert_eq!(
        validate(&envelope).unwrap_err().to_string(),
        "unknown event type `tag.deleted`"
    );

    let mut envelope = good();
    envelope.occurred_at = Some("22/11/2026".into());
    let err = validate(&envelope).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid field `occurred_at`: `22/11/2026` is not an RFC 3339 date-time (like 2026-11-22T10:00:00.000Z)"
    );

    let mut envelope = good();
    envelope.audience = Some(Audience {
        users: vec!["7".into(), String::new()],
        ..Audience::default()
    });
    assert_eq!(
        validate(&envelope),
        Err(SchemaError::InvalidField {
            field: "audience",
            reason: "`users[1]` is blank".into()
        })
    );

    let envelope =
        decode(r#""id":"e1","type":"tag.updated","account_id":"42","payload":{"id":"t-1"}"#)
            .unwrap();
    assert_eq!(
        validate(&envelope).unwrap_err().to_string(),
        "invalid payload for `tag.updated`: missing field `name`"
    );
}
