//! The configuration and metrics references in `docs/reference/` are
//! generated from the code (the clap definitions, the metric registrations):
//! this test fails when they drift. `HERALD_BLESS=1` rewrites them.

use std::{fmt::Write as _, path::PathBuf};

use clap::CommandFactory;
use herald_runtime::metrics::MetricDoc;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Compare `generated` with the file, or rewrite it when blessing.
fn check(path: &str, generated: &str) {
    let file = repo_file(path);
    if std::env::var("HERALD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&file, generated).expect("write the reference");
        return;
    }
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        current == generated,
        "{path} is out of date with the code: run `HERALD_BLESS=1 cargo nextest run -p herald-tests --test docs_reference` and commit it"
    );
}

fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn options(out: &mut String, command: clap::Command) {
    let name = command.get_name().to_owned();
    let _ = writeln!(out, "## `{name}`\n");
    if let Some(about) = command.get_about() {
        let _ = writeln!(out, "{}\n", cell(&about.to_string()));
    }
    out.push_str("| flag | environment | default | description |\n|---|---|---|---|\n");
    let mut args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !a.is_hide_set())
        .collect();
    args.sort_by_key(|a| a.get_long());
    for arg in args {
        let long = arg.get_long().unwrap_or_default();
        if long == "help" || long == "version" {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let flag = if takes_value {
            format!("`--{long} <{}>`", arg.get_id().as_str().to_uppercase())
        } else {
            format!("`--{long}`")
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if defaults.is_empty() || defaults.iter().all(String::is_empty) {
            String::new()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && takes_value {
            let help_end = help.trim_end();
            let stop = if help_end.ends_with('.') || help_end.is_empty() {
                ""
            } else {
                "."
            };
            help = format!("{help_end}{stop} One of: {}.", values.join(", "));
        }
        let _ = writeln!(out, "| {flag} | {env} | {default} | {} |", cell(&help));
    }
    out.push('\n');
}

#[test]
fn configuration_reference_is_generated_from_the_flags() {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the binaries' flag definitions by `tests/tests/docs_reference.rs`\n\
         (a test fails when this page and the code disagree; `herald-gateway --help` and\n\
         `herald-producer --help` print the same).\n\n\
         Every setting is a flag and a `HERALD_*` environment variable. `--config file.toml`\n\
         (or `HERALD_CONFIG`) supplies defaults below both, with the flag names as keys\n\
         (`listen = \"0.0.0.0:8080\"`; a table `[kafka]` with `brokers = \"…\"` is\n\
         `--kafka-brokers`). Unknown keys and invalid values stop startup with a message\n\
         naming them. The Kafka settings (`--kafka-*`, `--topic-prefix`) are shared by both\n\
         services.\n\n",
    );
    options(&mut out, herald_gateway::GatewayConfig::command());
    options(&mut out, herald_producer::config::ProducerConfig::command());
    check("docs/reference/configuration.md", &out);
}

fn metrics_table(out: &mut String, title: &str, docs: &[MetricDoc]) {
    let _ = writeln!(
        out,
        "## {title}\n\n| metric | type | labels | description |\n|---|---|---|---|"
    );
    for d in docs {
        let labels = d
            .labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| `{}` | {} | {labels} | {} |",
            d.name,
            d.kind,
            cell(&d.help)
        );
    }
    out.push('\n');
}

#[test]
fn metrics_reference_is_generated_from_the_registrations() {
    let mut out = String::from(
        "# Metrics reference\n\n\
         Generated from the metric registrations by `tests/tests/docs_reference.rs`\n\
         (a test fails when this page and the code disagree). The gateway serves them at\n\
         `/metrics` on `--ops-listen`, the producer on its own `--ops-listen`. Labels are\n\
         bounded: protocols, topics, reasons, route templates — never accounts or users.\n\n",
    );
    metrics_table(
        &mut out,
        "Gateway (`herald-gateway`)",
        &herald_gateway::metrics::Metrics::new()
            .catalogue
            .reference(),
    );
    metrics_table(
        &mut out,
        "Producer (`herald-producer`)",
        &herald_producer::metrics::Metrics::new()
            .catalogue
            .reference(),
    );
    check("docs/reference/metrics.md", &out);
}

#[test]
fn event_catalogue_is_generated_from_the_schemas() {
    use herald_gateway::protocols::stomp::destination::Destination;
    let mut out = String::from(
        "# Event catalogue\n\n\
         Generated from the schemas crate's catalogue (`schemas/src/catalogue.rs`) and the\n\
         endpoints' routing rules by `tests/tests/docs_reference.rs` (a test fails when this\n\
         page and the code disagree). Every type has a typed payload in `schemas/` and a JSON\n\
         Schema per topic in `schemas/json/`; how each endpoint frames it is on the protocol\n\
         pages ([STOMP](../protocols/stomp.md), [ActionCable](../protocols/actioncable.md),\n\
         [TypeID](../protocols/typeid.md)). Topics use the default prefix `herald.`.\n\n\
         | type | topic | STOMP destinations | RoomChannel | Pulse stream | TypeID |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut types = herald_schemas::event_types().to_vec();
    types.sort_unstable();
    for ty in types {
        let family = herald_schemas::family_of(ty).expect("every catalogued type has a family");
        let stomp = Destination::ALL
            .iter()
            .filter(|d| d.accepts(ty))
            .map(|d| format!("`{}`", d.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let room = match (
            herald_schemas::chatwoot::ROOM_EVENTS.contains(&ty),
            herald_schemas::chatwoot::CONTACT_EVENTS.contains(&ty),
        ) {
            (true, true) => "agents, contacts",
            (true, false) => "agents",
            (false, true) => "contacts",
            (false, false) => "",
        };
        let pulse = if herald_schemas::pulse::is_operation(ty) {
            "yes"
        } else {
            ""
        };
        let typeid = if matches!(
            ty,
            "ConversationMessageNotification" | "UserChangeNotification"
        ) {
            "yes"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| `{ty}` | `herald.{}` | {stomp} | {room} | {pulse} | {typeid} |",
            family.suffix()
        );
    }
    check("docs/reference/events.md", &out);
}
