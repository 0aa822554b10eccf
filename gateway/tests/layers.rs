//! The gateway's modules are layers (ARCHITECTURE.md draws them): a module
//! may use its own layer and the ones below it, never one above. This test
//! reads every file under `gateway/src` and fails on a `crate::…` path that
//! points upwards, or at a top-level module missing from [`LAYERS`].

use std::path::{Path, PathBuf};

/// The layers, lowest first. Written once here and once in ARCHITECTURE.md.
const LAYERS: &[&str] = &[
    "core",
    "metrics",
    "limits",
    "transport",
    "routing",
    "kafka",
    "auth",
    "protocols",
    "app",
];

/// Items the crate root re-exports, and the layer they come from.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("GatewayConfig", "app"),
    ("GatewayHandle", "app"),
    ("start", "app"),
];

fn rank(name: &str) -> Option<usize> {
    let name = ROOT_ITEMS
        .iter()
        .find(|(item, _)| *item == name)
        .map_or(name, |(_, layer)| layer);
    LAYERS.iter().position(|l| *l == name)
}

/// Code without its `//` comments (doc links are not dependencies).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules (or root items) every `crate::` path in `text` names.
fn crate_targets(text: &str) -> Vec<String> {
    let code = code(text);
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        // `$crate::` and `herald_crate::` are other paths.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            // `crate::{a::x, b::{y, z}}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        out.push(ident(&group[j..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(trimmed);
            if !name.is_empty() {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The layer of a file, from its path under `src` (`None`: the crate root).
fn layer_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Every violation in one file's text.
fn violations(layer: &str, text: &str) -> Vec<String> {
    let Some(own) = rank(layer) else {
        return vec![format!("`{layer}` is not a layer: add it to LAYERS")];
    };
    crate_targets(text)
        .into_iter()
        .filter_map(|target| match rank(&target) {
            None => Some(format!("uses `crate::{target}`, which is not a layer")),
            Some(r) if r > own => Some(format!(
                "({layer}) uses `crate::{target}`, a layer above it"
            )),
            Some(_) => None,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read gateway/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(layer) = layer_of(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        checked += crate_targets(&text).len();
        for v in violations(&layer, &text) {
            problems.push(format!("{}: {v}", relative.display()));
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths seen: is the parser broken?"
    );
    assert!(
        problems.is_empty(),
        "layer violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_upward_paths_in_every_form() {
    let text = "use crate::{\n    core::clock::now_ms,\n    routing::router::{Router, Slot},\n};\n\
                fn f() { crate::protocols::stomp::x(); }\n\
                // crate::app::server in a comment is not a dependency\n";
    assert_eq!(crate_targets(text), ["core", "routing", "protocols"]);
    assert_eq!(
        violations("transport", text),
        [
            "(transport) uses `crate::routing`, a layer above it",
            "(transport) uses `crate::protocols`, a layer above it"
        ]
    );
    assert!(violations("protocols", text).is_empty());
    assert_eq!(
        violations("routing", "use crate::GatewayConfig;"),
        ["(routing) uses `crate::GatewayConfig`, a layer above it"]
    );
    assert_eq!(
        violations("core", "use crate::nowhere::X;"),
        ["uses `crate::nowhere`, which is not a layer"]
    );
    assert_eq!(
        violations("newlayer", ""),
        ["`newlayer` is not a layer: add it to LAYERS"]
    );
}

/// The codecs and the core are sans-I/O: no runtime, no sockets, no Kafka,
/// nothing from the layers that do I/O.
#[test]
fn the_core_and_the_codecs_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![
        src.join("protocols/stomp/codec.rs"),
        src.join("protocols/stomp/destination.rs"),
        src.join("protocols/typeid/protocol.rs"),
        src.join("protocols/cable/protocol.rs"),
        src.join("transport/deflate.rs"),
    ];
    rust_files(&src.join("core"), &mut files);
    const FORBIDDEN: &[&str] = &[
        "tokio", "rdkafka", "axum", "hyper", "reqwest", "std::net", "std::fs",
    ];
    let mut problems = Vec::new();
    for file in &files {
        let text = code(&std::fs::read_to_string(file).unwrap());
        for word in FORBIDDEN {
            if text.contains(word) {
                problems.push(format!("{}: uses {word}", file.display()));
            }
        }
        for target in crate_targets(&text) {
            if matches!(target.as_str(), "transport" | "kafka" | "app" | "auth") {
                problems.push(format!("{}: uses crate::{target}", file.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "I/O in sans-I/O code:\n{}",
        problems.join("\n")
    );
}
