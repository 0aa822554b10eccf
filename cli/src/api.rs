//! A small client of the producer's HTTP API (`/v1/events`,
//! `/v1/identities`), turning its answers into [`CliError`]s an operator
//! can act on.

use std::time::Duration;

use herald_producer::config::Secret;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::error::{CliError, CliResult};

/// Where the producer is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// Producer API base URL (`http://host:8081`; a trailing `/v1/events` is accepted too).
    #[arg(
        long,
        env = "HERALD_PRODUCER_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub producer_url: String,
    /// API key or API JWT, sent as `Authorization: Bearer …` (a development
    /// producer with `--allow-unauthenticated` needs none).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Seconds to wait for the producer's answer (it answers after Kafka acknowledged).
    #[arg(long, env = "HERALD_HTTP_TIMEOUT_SECS", default_value_t = 30)]
    pub http_timeout_secs: u64,
}

/// The producer's API.
pub struct ProducerApi {
    base: String,
    api_key: Option<Secret>,
    http: reqwest::Client,
}

/// The API's base URL from what the operator typed.
pub fn base_url(url: &str) -> CliResult<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url
        .strip_suffix("/v1/events")
        .or_else(|| url.strip_suffix("/v1/identities"))
        .unwrap_or(url);
    if url.starts_with("https://") {
        return Err(CliError::Refused(format!(
            "{url}: this build of herald speaks plain HTTP only; run it next to the producer \
             (kubectl port-forward / exec) or through a local TLS-terminating proxy"
        )));
    }
    if !url.starts_with("http://") {
        return Err(CliError::Refused(format!(
            "--producer-url must be an http:// URL, got `{url}`"
        )));
    }
    Ok(url.to_owned())
}

/// An answer the producer gave: status and JSON body (`Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Parsed body.
    pub body: Value,
    /// The body as received.
    pub text: String,
}

impl ProducerApi {
    /// A client for `args`.
    pub fn new(args: &ProducerArgs) -> CliResult<ProducerApi> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.http_timeout_secs.max(1)))
            .build()
            .map_err(|e| CliError::Other(e.into()))?;
        Ok(ProducerApi {
            base: base_url(&args.producer_url)?,
            api_key: args.api_key.clone(),
            http,
        })
    }

    /// Send `body` to `path` and return the answer, whatever its status;
    /// transport failures are [`CliError::Unavailable`].
    pub async fn send(&self, method: Method, path: &str, body: &Value) -> CliResult<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "no answer in time (raise --http-timeout-secs?)".to_owned()
            } else if e.is_connect() {
                "connection failed (is the producer running there?)".to_owned()
            } else {
                root_cause(&e)
            };
            CliError::Unavailable(format!("cannot reach the producer at {url}: {why}"))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, body, text })
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The error for a non-success answer: 401/403 are credential problems,
/// 5xx the service's, everything else a refused request.
pub fn refusal(what: &str, answer: &Answer) -> CliError {
    let error = answer.body.get("error").and_then(Value::as_str);
    let reason = answer.body.get("reason").and_then(Value::as_str);
    let detail = match (error, reason) {
        (Some(e), Some(r)) => format!("{e}: {r}"),
        (Some(e), None) => e.to_owned(),
        (None, _) if answer.body.is_null() => "(no JSON body)".to_owned(),
        (None, _) => answer.body.to_string(),
    };
    let status = answer.status;
    let message = format!("{what}: the producer answered {status}: {detail}");
    match status {
        StatusCode::UNAUTHORIZED => CliError::Unauthorized(format!(
            "{message} (pass an API key with --api-key or HERALD_API_KEY)"
        )),
        StatusCode::FORBIDDEN => CliError::Unauthorized(message),
        s if s.is_server_error() => CliError::Unavailable(message),
        _ => CliError::Refused(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(
            base_url("http://h:8081/").unwrap(),
            "http://h:8081".to_owned()
        );
        assert_eq!(
            base_url("http://h:8081/v1/events").unwrap(),
            "http://h:8081".to_owned()
        );
        assert!(matches!(
            base_url("https://h"),
            Err(CliError::Refused(m)) if m.contains("plain HTTP")
        ));
        assert!(base_url("h:8081").is_err());
    }

    #[test]
    fn refusals_map_to_exit_codes_and_keep_the_reason() {
        let a = |status: u16, body: Value| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            text: body.to_string(),
            body,
        };
        let e = refusal(
            "publish",
            &a(
                401,
                json!({"error": "unauthorized", "reason": "invalid credentials: unknown key"}),
            ),
        );
        assert_eq!(e.exit_code(), 3);
        let text = e.to_string();
        assert!(text.contains("401"), "{text}");
        assert!(text.contains("unknown key"), "{text}");
        assert!(text.contains("--api-key"), "{text}");
        assert_eq!(
            refusal("x", &a(403, json!({"error": "forbidden"}))).exit_code(),
            3
        );
        assert_eq!(
            refusal("x", &a(400, json!({"error": "bad"}))).exit_code(),
            1
        );
        assert_eq!(refusal("x", &a(503, Value::Null)).exit_code(), 5);
        assert!(
            refusal("x", &a(502, Value::Null))
                .to_string()
                .contains("no JSON body")
        );
    }
}
