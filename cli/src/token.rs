//! Minting development tokens.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

/// What the token says.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// HS256 secret shared with the gateway (`HERALD_JWT_SECRET`).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Account the token belongs to.
    #[arg(long, default_value = "1")]
    pub account: String,
    /// User or contact id (`sub`).
    #[arg(long, default_value = "1")]
    pub sub: String,
    /// Role: agent, admin or contact.
    #[arg(long, default_value = "agent", value_parser = ["agent", "admin", "contact"])]
    pub role: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    pub ttl_secs: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    account_id: &'a str,
    role: &'a str,
    iat: u64,
    exp: u64,
}

/// Encode the token.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = Claims {
        sub: &args.sub,
        account_id: &args.account,
        role: &args.role,
        iat: now,
        exp: now + args.ttl_secs,
    };
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(args.secret.as_bytes()),
    )?)
}
