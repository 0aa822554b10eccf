//! `herald publish`: send a test event (or a file of them) through the
//! producer's `POST /v1/events` and print where each landed.

use std::{io::Read as _, path::PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    api::{ProducerApi, ProducerArgs, refusal},
    error::{CliError, CliResult},
};

/// What to publish.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub producer: ProducerArgs,
    /// Event type (`tag.updated`, `message.created`, `added_message`, …).
    #[arg(
        long = "type",
        env = "HERALD_EVENT_TYPE",
        required_unless_present = "file"
    )]
    pub event_type: Option<String>,
    /// Account the event belongs to (with --file: filled into envelopes without one).
    #[arg(long, env = "HERALD_ACCOUNT", required_unless_present = "file")]
    pub account: Option<String>,
    /// The payload, a JSON object, exactly as the client protocol shows it.
    #[arg(long, env = "HERALD_EVENT_PAYLOAD")]
    pub payload: Option<String>,
    /// Narrow delivery inside the account, e.g. `{"users":["7"],"roles":["admin"]}`.
    #[arg(long, env = "HERALD_EVENT_AUDIENCE")]
    pub audience: Option<String>,
    /// Event id (a retry with the same id is not produced twice; default: generated).
    #[arg(long, env = "HERALD_EVENT_ID")]
    pub id: Option<String>,
    /// A JSON file with one envelope or an array of them (`-` reads stdin),
    /// instead of --type/--payload.
    #[arg(long, env = "HERALD_EVENTS_FILE")]
    pub file: Option<PathBuf>,
}

fn json_arg(flag: &str, text: &str) -> CliResult<Value> {
    serde_json::from_str(text)
        .map_err(|e| CliError::Refused(format!("{flag} is not valid JSON: {e}")))
}

/// The request body: one envelope from the flags, or the file's contents.
pub fn build_events(args: &PublishArgs, file_text: Option<&str>) -> CliResult<Value> {
    if let Some(text) = file_text {
        if args.event_type.is_some() || args.payload.is_some() {
            return Err(CliError::Refused(
                "--file replaces --type and --payload; give one or the other".into(),
            ));
        }
        let mut events = json_arg("--file", text)?;
        let list = match &mut events {
            Value::Array(list) => list,
            Value::Object(_) => std::slice::from_mut(&mut events),
            _ => {
                return Err(CliError::Refused(
                    "--file must hold an event object or an array of them".into(),
                ));
            }
        };
        if let Some(account) = &args.account {
            for event in list.iter_mut() {
                if let Some(obj) = event.as_object_mut() {
                    obj.entry("account_id")
                        .or_insert_with(|| Value::from(account.as_str()));
                }
            }
        }
        return Ok(events);
    }
    let (Some(event_type), Some(account)) = (&args.event_type, &args.account) else {
        return Err(CliError::Refused(
            "give --type and --account (or --file)".into(),
        ));
    };
    let payload = match &args.payload {
        Some(p) => json_arg("--payload", p)?,
        None => json!({}),
    };
    if !payload.is_object() {
        return Err(CliError::Refused("--payload must be a JSON object".into()));
    }
    let mut event = json!({"type": event_type, "account_id": account, "payload": payload});
    if let Some(audience) = &args.audience {
        let audience = json_arg("--audience", audience)?;
        if !audience.is_object() {
            return Err(CliError::Refused(
                "--audience must be a JSON object like {\"users\":[\"7\"]}".into(),
            ));
        }
        event["audience"] = audience;
    }
    if let Some(id) = &args.id {
        event["id"] = Value::from(id.as_str());
    }
    Ok(event)
}

/// What the producer's `400`/`503` answers say about each event.
fn event_errors(body: &Value) -> String {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "\n  event {}: {}",
                        e.get("index").and_then(Value::as_u64).unwrap_or(0),
                        e.get("reason").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One line per produced event, as the producer wrote it:
/// `{"id","type","topic","partition","offset"}` (`"duplicate":true` for a retried id).
fn result_lines(answer_text: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Results<'a> {
        #[serde(borrow, default)]
        results: Vec<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Results<'_>>(answer_text)
        .map(|r| r.results.iter().map(|v| v.get().to_owned()).collect())
        .unwrap_or_default()
}

/// Run `herald publish`.
pub async fn run(args: PublishArgs) -> CliResult<()> {
    let file_text = match &args.file {
        None => None,
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Refused(format!("cannot read stdin: {e}")))?;
            Some(text)
        }
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Refused(format!("cannot read {}: {e}", path.display())))?,
        ),
    };
    let events = build_events(&args, file_text.as_deref())?;
    let api = ProducerApi::new(&args.producer)?;
    let answer = api.send(Method::POST, "/v1/events", &events).await?;
    // A 503 also lists what was acknowledged before the deadline: that is on Kafka.
    for line in result_lines(&answer.text) {
        println!("{line}");
    }
    if answer.status.is_success() {
        return Ok(());
    }
    Err(match refusal("publish", &answer) {
        CliError::Refused(m) => CliError::Refused(format!("{m}{}", event_errors(&answer.body))),
        CliError::Unavailable(m) => {
            CliError::Unavailable(format!("{m}{}", event_errors(&answer.body)))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn args(argv: &[&str]) -> PublishArgs {
        Cli::try_parse_from(std::iter::once("publish").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn one_event_from_flags() {
        let a = args(&[
            "--type",
            "tag.updated",
            "--account",
            "42",
            "--payload",
            r#"{"id":"t1"}"#,
            "--audience",
            r#"{"users":["7"]}"#,
            "--id",
            "e1",
        ]);
        assert_eq!(
            build_events(&a, None).unwrap(),
            json!({"type": "tag.updated", "account_id": "42", "payload": {"id": "t1"},
                   "audience": {"users": ["7"]}, "id": "e1"})
        );
        let bare = args(&["--type", "x", "--account", "1"]);
        assert_eq!(build_events(&bare, None).unwrap()["payload"], json!({}));
    }

    #[test]
    fn bad_json_is_refused_with_the_flag_named() {
        let a = args(&["--type", "x", "--account", "1", "--payload", "{nope"]);
        let e = build_events(&a, None).unwrap_err();
        assert!(
            e.to_string().starts_with("--payload is not valid JSON"),
            "{e}"
        );
        let a = args(&["--type", "x", "--account", "1", "--payload", "[1]"]);
        assert!(build_events(&a, None).is_err());
        let a = args(&["--type", "x", "--account", "1", "--audience", "\"7\""]);
        assert!(build_events(&a, None).is_err());
    }

    #[test]
    fn files_hold_one_event_or_a_batch() {
        let a = args(&["--file", "events.json", "--account", "9"]);
        let batch = build_events(
            &a,
            Some(r#"[{"type":"a","payload":{}},{"type":"b","account_id":"1","payload":{}}]"#),
        )
        .unwrap();
        assert_eq!(batch[0]["account_id"], "9");
        assert_eq!(batch[1]["account_id"], "1");
        let one = build_events(&a, Some(r#"{"type":"a","payload":{}}"#)).unwrap();
        assert_eq!(one["account_id"], "9");
        assert!(build_events(&a, Some("3")).is_err());
        let both = args(&["--file", "f", "--type", "x"]);
        assert!(build_events(&both, Some("{}")).is_err());
    }

    #[test]
    fn type_and_account_are_required_without_a_file() {
        assert!(Cli::try_parse_from(["publish", "--type", "x"]).is_err());
        assert!(Cli::try_parse_from(["publish", "--file", "f"]).is_ok());
    }

    #[test]
    fn results_are_printed_as_received() {
        let text = r#"{"results":[{"id":"a","type":"t","topic":"herald.tag","partition":0,"offset":7},{"id":"b","type":"t","topic":"herald.tag","partition":1,"offset":2,"duplicate":true}]}"#;
        assert_eq!(
            result_lines(text),
            [
                r#"{"id":"a","type":"t","topic":"herald.tag","partition":0,"offset":7}"#,
                r#"{"id":"b","type":"t","topic":"herald.tag","partition":1,"offset":2,"duplicate":true}"#
            ]
        );
        assert!(result_lines(r#"{"error":"x"}"#).is_empty());
        assert!(result_lines("not json").is_empty());
    }

    #[test]
    fn per_event_errors_are_listed() {
        let body = json!({"error": "invalid events; nothing was published",
            "errors": [{"index": 1, "reason": "missing field `id`"}]});
        assert_eq!(event_errors(&body), "\n  event 1: missing field `id`");
    }
}
