//! API authentication and authorisation.
//!
//! A request presents one credential, as `Authorization: Bearer <credential>`
//! or `X-Api-Key: <credential>`:
//!
//! - a static API key (`--api-key`): grants every scope. Keys are compared as
//!   SHA-256 digests with a constant-time equality over every configured key,
//!   so neither a key's length nor its matching prefix shows in timing;
//! - an HS256 JWT signed with `--api-jwt-secret`, with `exp`, optional
//!   `aud`/`iss` checks, and a `scope` (space-separated string, or array; `scp`
//!   works too) that must hold the route's [`Scope`].
//!
//! Missing or bad credentials are `401`, a valid credential without the
//! route's scope is `403`; both with a JSON reason. Credentials are never
//! logged.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{config::ProducerConfig, metrics::Metrics};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/events`.
    EventsWrite,
    /// `PUT`/`POST`/`DELETE /v1/identities`.
    IdentitiesWrite,
}

impl Scope {
    /// The scope's name in a JWT `scope` claim.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::IdentitiesWrite => "identities:write",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The producer has no credentials configured and is not open.
    #[error(
        "this producer has no API credentials configured (set --api-key or --api-jwt-secret; \
         --allow-unauthenticated is for development only)"
    )]
    NotConfigured,
    /// No credential in the request.
    #[error(
        "missing credentials: send `Authorization: Bearer <API key or JWT>` or `X-Api-Key: <API key>`"
    )]
    Missing,
    /// The credential is neither a known key nor a valid token.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// A valid token that lacks the route's scope.
    #[error("token lacks scope `{0}`")]
    InsufficientScope(&'static str),
}

impl AuthError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::NotConfigured => "not_configured",
            AuthError::Missing => "missing",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::InsufficientScope(_) => "insufficient_scope",
        }
    }

    /// HTTP status: 403 for a missing scope, 401 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthorized"
        };
        let mut response = (
            status,
            Json(json!({"error": error, "reason": self.to_string()})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald-producer\""),
            );
        }
        response
    }
}

/// The scope claim: a space-separated string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn contains(&self, scope: &str) -> bool {
        match self {
            ScopeClaim::Text(t) => t.split_ascii_whitespace().any(|s| s == scope),
            ScopeClaim::List(l) => l.iter().any(|s| s == scope),
        }
    }
}

#[derive(Deserialize)]
struct ApiClaims {
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

/// Checks credentials against the configured keys and JWT secret.
pub struct Authenticator {
    key_digests: Vec<[u8; 32]>,
    jwt: Option<(DecodingKey, Validation)>,
    open: bool,
    metrics: Metrics,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Authenticator {
    /// From the producer's settings.
    pub fn from_config(config: &ProducerConfig, metrics: Metrics) -> Self {
        let key_digests = config
            .api_keys
            .iter()
            .map(|k| digest(k.expose().trim().as_bytes()))
            .collect();
        let jwt = config.api_jwt_secret.as_ref().map(|secret| {
            let validation = herald_runtime::jwt::validation(
                Algorithm::HS256,
                config.api_jwt_audience.as_deref(),
                config.api_jwt_issuer.as_deref(),
            );
            (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                validation,
            )
        });
        Authenticator {
            key_digests,
            jwt,
            open: config.allow_unauthenticated && !config.has_api_credentials(),
            metrics,
        }
    }

    /// Whether every request is let through (no credentials configured and
    /// `--allow-unauthenticated`).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Check a request's credential for `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<(), AuthError> {
        if self.open {
            return Ok(());
        }
        if self.key_digests.is_empty() && self.jwt.is_none() {
            return Err(AuthError::NotConfigured);
        }
        let credential = credential(headers)?;
        let presented = digest(credential.as_bytes());
        // Compare with every key, without stopping at a match.
        let mut matched = subtle::Choice::from(0);
        for key in &self.key_digests {
            matched |= key.ct_eq(&presented);
        }
        if bool::from(matched) {
            return Ok(());
        }
        let Some((key, validation)) = &self.jwt else {
            return Err(AuthError::Invalid("unknown API key"));
        };
        let claims = jsonwebtoken::decode::<ApiClaims>(credential, key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong token audience"),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong token issuer"),
                ErrorKind::ImmatureSignature => AuthError::Invalid("token not valid yet"),
                ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("token has no exp"),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad token signature"),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("token must be HS256"),
                _ if credential.matches('.').count() == 2 => AuthError::Invalid("malformed token"),
                _ => AuthError::Invalid("unknown API key or malformed token"),
            })?
            .claims;
        let name = scope.as_str();
        let granted = claims.scope.as_ref().is_some_and(|s| s.contains(name))
            || claims.scp.as_ref().is_some_and(|s| s.contains(name));
        if granted {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope(name))
        }
    }
}

/// The credential of a request: `Authorization: Bearer ...` or `X-Api-Key`.
fn credential(headers: &HeaderMap) -> Result<&str, AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| AuthError::Invalid("Authorization header is not ASCII"))?
            .trim();
        let (scheme, rest) = text.split_once(' ').ok_or(AuthError::Invalid(
            "Authorization must be `Bearer <credential>`",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
            return Err(AuthError::Invalid(
                "Authorization must be `Bearer <credential>`",
            ));
        }
        return Ok(rest.trim());
    }
    if let Some(value) = headers.get("x-api-key") {
        let text = value
            .to_str()
            .map_err(|_| AuthError::Invalid("X-Api-Key header is not ASCII"))?
            .trim();
        if !text.is_empty() {
            return Ok(text);
        }
    }
    Err(AuthError::Missing)
}

/// Middleware: refuse the request unless it carries `scope`.
pub async fn require(
    State((auth, scope)): State<(Arc<Authenticator>, Scope)>,
    request: Request,
    next: Next,
) -> Response {
    match auth.authorize(request.headers(), scope) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            auth.metrics
                .auth_failures
                .with_label_values(&[e.label()])
                .inc();
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "api-secret-0123456789abcdef-0123456789";
    const KEY: &str = "static-key-0123456789";

    fn auth(extra: &[&str]) -> Authenticator {
        let mut args = vec!["herald-producer"];
        args.extend_from_slice(extra);
        Authenticator::from_config(&ProducerConfig::from_args(args).unwrap(), Metrics::new())
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {value}")).unwrap(),
        );
        h
    }

    fn jwt(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn exp(offset: i64) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + offset
    }

    #[test]
    fn closed_without_credentials_unless_allowed() {
        let a = auth(&[]);
        assert_eq!(
            a.authorize(&HeaderMap::new(), Scope::EventsWrite),
            Err(AuthError::NotConfigured)
        );
        let open = auth(&["--allow-unauthenticated"]);
        assert!(
            open.authorize(&HeaderMap::new(), Scope::EventsWrite)
                .is_ok()
        );
        // Configured credentials win over the development flag.
        let keyed = auth(&["--allow-unauthenticated", "--api-key", KEY]);
        assert_eq!(
            keyed.authorize(&HeaderMap::new(), Scope::EventsWrite),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn api_keys_grant_every_scope() {
        let a = auth(&["--api-key", "other-key-0123456789", "--api-key", KEY]);
        assert!(a.authorize(&bearer(KEY), Scope::EventsWrite).is_ok());
        assert!(a.authorize(&bearer(KEY), Scope::IdentitiesWrite).is_ok());
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static(KEY));
        assert!(a.authorize(&h, Scope::EventsWrite).is_ok());
        assert!(matches!(
            a.authorize(&bearer("static-key-012345678"), Scope::EventsWrite),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.authorize(&bearer(""), Scope::EventsWrite),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            a.authorize(&HeaderMap::new(), Scope::EventsWrite),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn jwt_scopes() {
        let a = auth(&["--api-jwt-secret", SECRET]);
        let events = jwt(serde_json::json!({"scope": "events:write", "exp": exp(60)}));
        assert!(a.authorize(&bearer(&events), Scope::EventsWrite).is_ok());
        assert_eq!(
            a.authorize(&bearer(&events), Scope::IdentitiesWrite),
            Err(AuthError::InsufficientScope("identities:write"))
        );
        let both =
            jwt(serde_json::json!({"scp": ["events:write", "identities:write"], "exp": exp(60)}));
        assert!(a.authorize(&bearer(&both), Scope::IdentitiesWrite).is_ok());
        let expired = jwt(serde_json::json!({"scope": "events:write", "exp": exp(-3600)}));
        assert_eq!(
            a.authorize(&bearer(&expired), Scope::EventsWrite),
            Err(AuthError::Expired)
        );
        let no_exp = jwt(serde_json::json!({"scope": "events:write"}));
        assert!(matches!(
            a.authorize(&bearer(&no_exp), Scope::EventsWrite),
            Err(AuthError::Invalid(_))
        ));
        let forged = encode(
            &Header::default(),
            &serde_json::json!({"scope": "events:write", "exp": exp(60)}),
            &EncodingKey::from_secret(b"another-secret-0123456789abcdef-0123"),
        )
        .unwrap();
        assert_eq!(
            a.authorize(&bearer(&forged), Scope::EventsWrite),
            Err(AuthError::Invalid("bad token signature"))
        );
    }

    #[test]
    fn refusals_have_statuses_and_labels() {
        assert_eq!(AuthError::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AuthError::InsufficientScope("x").status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(AuthError::Expired.label(), "expired");
    }
}
