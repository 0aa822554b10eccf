//! The checked-in JSON Schemas (`schemas/json/<suffix>.json`) must equal what
//! [`topic_schema`](herald_schemas::topic_schema) generates.
//!
//! Regenerate them with `HERALD_BLESS=1 cargo test -p herald-schemas --test json_schemas`.

use std::fs;
use std::path::PathBuf;

use herald_schemas::{Family, topic_schema_text};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json")
}

fn blessing() -> bool {
    std::env::var("HERALD_BLESS").is_ok_and(|value| value == "1")
}

#[test]
fn checked_in_schemas_are_up_to_date() {
    let dir = schema_dir();
    if blessing() {
        fs::create_dir_all(&dir).unwrap();
    }

    let mut problems = Vec::new();
    for family in Family::ALL {
        let path = dir.join(format!("{}.json", family.suffix()));
        let expected = topic_schema_text(family);
        if blessing() {
            fs::write(&path, &expected).unwrap();
            continue;
        }
        match fs::read_to_string(&path) {
            Err(err) => problems.push(format!("{} is missing ({err})", path.display())),
            Ok(actual) if actual.replace("\r\n", "\n") != expected => {
                let line = first_difference(&actual, &expected);
                problems.push(format!(
                    "{} differs from the generated schema ({line})",
                    path.display()
                ));
            }
            Ok(_) => {}
        }
    }

    let stray: Vec<String> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| {
                    name.strip_suffix(".json")
                        .is_some_and(|suffix| Family::from_suffix(suffix).is_none())
                })
                .collect()
        })
        .unwrap_or_default();
    for name in stray {
        problems.push(format!("{} belongs to no family", dir.join(name).display()));
    }

    assert!(
        problems.is_empty(),
        "JSON Schemas out of date:\n  {}\nRegenerate them with:\n  HERALD_BLESS=1 cargo test -p herald-schemas --test json_schemas",
        problems.join("\n  ")
    );
}

/// "line N: expected `...`, found `...`" for the first differing line.
fn first_difference(actual: &str, expected: &str) -> String {
    let mut actual_lines = actual.lines();
    let mut expected_lines = expected.lines();
    let mut number = 1;
    loop {
        match (actual_lines.next(), expected_lines.next()) {
            (Some(a), Some(e)) if a == e => number += 1,
            (a, e) => {
                return format!(
                    "line {number}: expected `{}`, found `{}`",
                    e.unwrap_or("<end of file>").trim(),
                    a.unwrap_or("<end of file>").trim()
                );
            }
        }
    }
}

#[test]
fn every_schema_is_a_draft_2020_12_object_schema() {
    for family in Family::ALL {
        let schema = herald_schemas::topic_schema(family);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{family}"
        );
        assert_eq!(schema["type"], "object", "{family}");
        let required = schema["required"].as_array().unwrap();
        for field in ["id", "type", "account_id", "payload"] {
            assert!(
                required.iter().any(|r| r == field),
                "{family}: {field} not required"
            );
        }
        let types = schema["properties"]["type"]["enum"].as_array().unwrap();
        let rules = schema["allOf"].as_array().unwrap();
        assert!(!types.is_empty(), "{family} has no event type");
        assert_eq!(types.len(), rules.len(), "{family}: one rule per type");
        for name in types {
            assert_eq!(
                herald_schemas::family_of(name.as_str().unwrap()),
                Some(family)
            );
        }
    }
}
