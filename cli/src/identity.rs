//! `herald identity register|revoke`: opaque tokens (Chatwoot `pubsub_token`,
//! Pulse tokens, TypeID `SessionID`) through the producer's identities API.
//!
//! `register` prints only the token on stdout (`TOKEN=$(herald identity
//! register …)`), and where the record landed on stderr. `revoke` sends the
//! token in the request body, never in the URL, so it stays out of access logs.

use herald_producer::config::Secret;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    api::{ProducerApi, ProducerArgs, refusal},
    error::{CliError, CliResult},
};

/// Identity commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IdentityCommand {
    /// Register an opaque token for a user or contact (a generated one unless --token is given); prints the token.
    Register(RegisterArgs),
    /// Revoke a token: gateways refuse it and close its live connections.
    Revoke(RevokeArgs),
}

/// Who the token stands for.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub producer: ProducerArgs,
    /// Account the token belongs to.
    #[arg(long, env = "HERALD_ACCOUNT")]
    pub account: String,
    /// `user` (agent or admin) or `contact` (end customer).
    #[arg(long, env = "HERALD_IDENTITY_KIND", default_value = "user", value_parser = ["user", "contact"])]
    pub kind: String,
    /// The user's or contact's id.
    #[arg(long, env = "HERALD_IDENTITY_ID")]
    pub id: String,
    /// `agent` (default for users), `admin`, or `contact` (the only role of contacts).
    #[arg(long, env = "HERALD_IDENTITY_ROLE", value_parser = ["agent", "admin", "contact"])]
    pub role: Option<String>,
    /// Register this token (16–1024 printable characters) instead of generating one.
    #[arg(long, env = "HERALD_IDENTITY_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// RFC 3339 instant after which gateways refuse the token.
    #[arg(long, env = "HERALD_IDENTITY_EXPIRES_AT")]
    pub expires_at: Option<String>,
    /// Conversations the holder takes part in (contacts; TypeID write grants), comma-separated.
    #[arg(long, env = "HERALD_IDENTITY_CONVERSATIONS", value_delimiter = ',')]
    pub conversations: Vec<String>,
}

/// Which token to revoke.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub producer: ProducerArgs,
    /// The token to revoke.
    #[arg(
        long,
        env = "HERALD_IDENTITY_TOKEN",
        hide_env_values = true,
        required_unless_present = "key"
    )]
    pub token: Option<Secret>,
    /// Or its key: the lowercase hex SHA-256 of the token (as `register` prints it).
    #[arg(long, env = "HERALD_IDENTITY_KEY")]
    pub key: Option<String>,
}

/// The `PUT` (chosen token) or `POST` (generated token) body.
pub fn register_body(args: &RegisterArgs) -> (Method, Value) {
    let mut body = json!({"account_id": args.account, "kind": args.kind, "id": args.id});
    if let Some(role) = &args.role {
        body["role"] = Value::from(role.as_str());
    }
    if let Some(at) = &args.expires_at {
        body["expires_at"] = Value::from(at.as_str());
    }
    let conversations: Vec<&str> = args
        .conversations
        .iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .collect();
    if !conversations.is_empty() {
        body["conversations"] = Value::from(conversations);
    }
    match &args.token {
        Some(token) => {
            body["token"] = Value::from(token.expose());
            (Method::PUT, body)
        }
        None => (Method::POST, body),
    }
}

/// The `DELETE` body.
pub fn revoke_body(args: &RevokeArgs) -> CliResult<Value> {
    match (&args.token, &args.key) {
        (Some(token), None) => Ok(json!({"token": token.expose()})),
        (None, Some(key)) => Ok(json!({"key": key})),
        (Some(_), Some(_)) => Err(CliError::Refused("give --token or --key, not both".into())),
        (None, None) => Err(CliError::Refused("give --token or --key".into())),
    }
}

fn landed(body: &Value) -> String {
    format!(
        "key {}, {} partition {} offset {}",
        body["key"].as_str().unwrap_or("?"),
        body["topic"].as_str().unwrap_or("?"),
        body["partition"],
        body["offset"]
    )
}

/// Run an identity command.
pub async fn run(command: IdentityCommand) -> CliResult<()> {
    match command {
        IdentityCommand::Register(args) => {
            let api = ProducerApi::new(&args.producer)?;
            let (method, body) = register_body(&args);
            let answer = api.send(method, "/v1/identities", &body).await?;
            if !answer.status.is_success() {
                return Err(refusal("register identity", &answer));
            }
            let token = match &args.token {
                Some(t) => t.expose().to_owned(),
                None => answer.body["token"]
                    .as_str()
                    .ok_or_else(|| {
                        CliError::Unavailable(format!(
                            "register identity: the producer's answer has no token: {}",
                            answer.body
                        ))
                    })?
                    .to_owned(),
            };
            eprintln!(
                "herald: registered {} {} of account {}: {}",
                args.kind,
                args.id,
                args.account,
                landed(&answer.body)
            );
            println!("{token}");
            Ok(())
        }
        IdentityCommand::Revoke(args) => {
            let body = revoke_body(&args)?;
            let api = ProducerApi::new(&args.producer)?;
            let answer = api.send(Method::DELETE, "/v1/identities", &body).await?;
            if !answer.status.is_success() {
                return Err(refusal("revoke identity", &answer));
            }
            eprintln!(
                "herald: revoked {}; gateways now refuse the token and close its connections",
                landed(&answer.body)
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: IdentityCommand,
    }

    fn parse(argv: &[&str]) -> IdentityCommand {
        Cli::try_parse_from(std::iter::once("identity").chain(argv.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn register_generates_or_puts_a_chosen_token() {
        let IdentityCommand::Register(a) = parse(&[
            "register",
            "--account",
            "42",
            "--kind",
            "contact",
            "--id",
            "c-9",
            "--conversations",
            "5, 6",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ]) else {
            panic!("register expected")
        };
        let (method, body) = register_body(&a);
        assert_eq!(method, Method::POST);
        assert_eq!(
            body,
            json!({"account_id": "42", "kind": "contact", "id": "c-9",
                   "conversations": ["5", "6"], "expires_at": "2030-01-01T00:00:00Z"})
        );
        let IdentityCommand::Register(a) = parse(&[
            "register",
            "--account",
            "1",
            "--id",
            "7",
            "--role",
            "admin",
            "--token",
            "pubsub-0123456789abcdef",
        ]) else {
            panic!("register expected")
        };
        let (method, body) = register_body(&a);
        assert_eq!(method, Method::PUT);
        assert_eq!(body["kind"], "user");
        assert_eq!(body["role"], "admin");
        assert_eq!(body["token"], "pubsub-0123456789abcdef");
        // The token never shows in debug output.
        assert!(!format!("{a:?}").contains("pubsub-0123456789abcdef"));
    }

    #[test]
    fn revoke_takes_a_token_or_a_key() {
        let IdentityCommand::Revoke(a) = parse(&["revoke", "--token", "tok-0123456789abcdef"])
        else {
            panic!("revoke expected")
        };
        assert_eq!(
            revoke_body(&a).unwrap(),
            json!({"token": "tok-0123456789abcdef"})
        );
        let IdentityCommand::Revoke(a) = parse(&["revoke", "--key", "ab"]) else {
            panic!("revoke expected")
        };
        assert_eq!(revoke_body(&a).unwrap(), json!({"key": "ab"}));
        let IdentityCommand::Revoke(a) = parse(&["revoke", "--key", "ab", "--token", "t"]) else {
            panic!("revoke expected")
        };
        assert!(revoke_body(&a).is_err());
        assert!(Cli::try_parse_from(["identity", "revoke"]).is_err());
        assert!(
            Cli::try_parse_from(["identity", "register", "--id", "1", "--kind", "bot"]).is_err()
        );
    }
}
