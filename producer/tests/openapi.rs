//! The checked-in `producer/openapi.json` must equal the document generated
//! from the code (and served at `/openapi.json`).
//!
//! Regenerate it with `HERALD_BLESS=1 cargo test -p herald-producer --test openapi`.

use std::path::PathBuf;

#[test]
fn checked_in_openapi_document_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = herald_producer::openapi::document_text();
    if std::env::var("HERALD_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is missing ({e}); bless it", path.display()))
        .replace("\r\n", "\n");
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "{} differs from the generated document (first difference at line {line}); \
             run `HERALD_BLESS=1 cargo test -p herald-producer --test openapi`",
            path.display()
        );
    }
}

#[test]
fn document_describes_every_route_and_scheme() {
    let doc: serde_json::Value =
        serde_json::from_str(&herald_producer::openapi::document_text()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/events", &["post"][..]),
        ("/v1/identities", &["put", "post", "delete"][..]),
        ("/v1/identities/{token}", &["delete"][..]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is undocumented");
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["jwt"]["scheme"], "bearer");
    assert!(
        doc["paths"]["/v1/events"]["post"]["responses"]["413"].is_object(),
        "413 undocumented"
    );
}
