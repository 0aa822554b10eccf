//! `herald token`: mint an HS256 JWT the gateway accepts (development and
//! debugging; production tokens come from the backend).
//!
//! Claims are the gateway's (docs/security.md, "JWT claims"): `sub`, `account_id`,
//! `role`, `iat`, `exp`, and optionally `conversations`, `aud`, `iss`.

use herald_producer::config::Secret;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

/// What the token says.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// HS256 secret shared with the gateway (its `--jwt-secret`).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub secret: Secret,
    /// Account the token belongs to.
    #[arg(long, env = "HERALD_ACCOUNT", default_value = "1")]
    pub account: String,
    /// User or contact id (`sub`).
    #[arg(long, env = "HERALD_TOKEN_SUB", default_value = "1")]
    pub sub: String,
    /// Role: agent, admin or contact.
    #[arg(long, env = "HERALD_TOKEN_ROLE", default_value = "agent", value_parser = ["agent", "admin", "contact"])]
    pub role: String,
    /// Lifetime in seconds.
    #[arg(long, env = "HERALD_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub ttl_secs: u64,
    /// Conversations the holder may write to over TypeID (`conversations` claim), comma-separated.
    #[arg(long, env = "HERALD_TOKEN_CONVERSATIONS", value_delimiter = ',')]
    pub conversations: Vec<String>,
    /// `aud` claim, when the gateway runs with `--jwt-audience`.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// `iss` claim, when the gateway runs with `--jwt-issuer`.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub issuer: Option<String>,
}

impl TokenArgs {
    /// A token for `account`/`sub`/`role` with defaults for the rest.
    pub fn new(secret: &str, account: &str, sub: &str, role: &str, ttl_secs: u64) -> TokenArgs {
        TokenArgs {
            secret: Secret::from(secret),
            account: account.into(),
            sub: sub.into(),
            role: role.into(),
            ttl_secs,
            conversations: Vec::new(),
            audience: None,
            issuer: None,
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    account_id: &'a str,
    role: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conversations: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

/// Shortest secret the gateway accepts (`--jwt-secret`).
const MIN_SECRET_BYTES: usize = 16;

/// Encode the token.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.secret.expose().len() >= MIN_SECRET_BYTES,
        "the secret is shorter than {MIN_SECRET_BYTES} bytes: the gateway refuses such a --jwt-secret, \
         so no gateway would accept this token"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = Claims {
        sub: &args.sub,
        account_id: &args.account,
        role: &args.role,
        iat: now,
        exp: now + args.ttl_secs,
        conversations: args
            .conversations
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .collect(),
        aud: args.audience.as_deref(),
        iss: args.issuer.as_deref(),
    };
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(args.secret.expose().as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, decode};
    use serde_json::Value;

    const SECRET: &str = "a-test-secret-of-enough-bytes";

    fn claims(token: &str, audience: Option<&str>) -> Value {
        let v = herald_runtime::jwt::validation(Algorithm::HS256, audience, None);
        decode::<Value>(token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            .unwrap()
            .claims
    }

    #[test]
    fn claims_are_the_gateways() {
        let t = mint(&TokenArgs::new(SECRET, "42", "7", "admin", 60)).unwrap();
        let c = claims(&t, None);
        assert_eq!(
            (&c["sub"], &c["account_id"], &c["role"]),
            (&Value::from("7"), &Value::from("42"), &Value::from("admin"))
        );
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        assert!(c.get("conversations").is_none() && c.get("aud").is_none());
    }

    #[test]
    fn optional_claims() {
        let mut a = TokenArgs::new(SECRET, "1", "1", "agent", 60);
        a.conversations = vec!["conv-1".into(), " conv-2".into(), String::new()];
        a.audience = Some("herald".into());
        a.issuer = Some("backend".into());
        let c = claims(&mint(&a).unwrap(), Some("herald"));
        assert_eq!(c["conversations"], serde_json::json!(["conv-1", "conv-2"]));
        assert_eq!(c["iss"], "backend");
    }

    #[test]
    fn short_secrets_are_refused() {
        let e = mint(&TokenArgs::new("short", "1", "1", "agent", 60)).unwrap_err();
        assert!(e.to_string().contains("16 bytes"), "{e}");
    }
}
