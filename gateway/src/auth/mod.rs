//! Credentials: who a connection is and what it may receive.
//!
//! A credential resolves to an [`Identity`] — account, principal kind, id and
//! role. Signed tokens (JWT: HS256 with a shared secret, RS256/ES256 with a
//! public key) are verified statelessly on every pod. Nothing a client sends
//! after authenticating can widen what its identity is entitled to.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::core::identity::{AuthError, Identity, PrincipalKind};

/// The claims Herald reads from a JWT.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<i64>,
    sub: Option<serde_json::Value>,
    account_id: Option<serde_json::Value>,
    role: Option<String>,
    conversations: Option<Vec<serde_json::Value>>,
}

fn id_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Verifies JWTs against the configured keys.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<(DecodingKey, Validation)>,
    /// Keys from a JWKS file, by `kid`, reloaded while running.
    jwks: Option<Arc<Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
}

/// The keys of a JWKS file: (kid, key, algorithm).
type JwksKeys = Arc<Vec<(Option<String>, DecodingKey, Algorithm)>>;

/// A JWKS file and the keys last loaded from it.
pub struct Jwks {
    path: String,
    keys: std::sync::RwLock<JwksKeys>,
    modified: std::sync::Mutex<Option<std::time::SystemTime>>,
}

impl Jwks {
    /// Load `path` (fails on an unreadable or invalid file).
    pub fn load(path: &str) -> Result<Arc<Jwks>, KeyError> {
        let jwks = Arc::new(Jwks {
            path: path.to_owned(),
            keys: std::sync::RwLock::new(Arc::new(Vec::new())),
            modified: std::sync::Mutex::new(None),
        });
        jwks.reload()?;
        Ok(jwks)
    }

    /// Re-read the file if it changed; keeps the previous keys when the new
    /// content is invalid (and says so). Returns whether keys were replaced.
    pub fn reload_if_changed(&self) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let unchanged = self.modified.lock().map(|m| *m == modified).unwrap_or(true);
        if unchanged {
            return false;
        }
        match self.reload() {
            Ok(n) => {
                tracing::info!(path = %self.path, keys = n, "JWKS reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS not reloaded; keeping the previous keys");
                if let Ok(mut m) = self.modified.lock() {
                    *m = modified;
                }
                false
            }
        }
    }

    fn reload(&self) -> Result<usize, KeyError> {
        let err = |reason: String| KeyError::Read {
            path: self.path.clone(),
            reason,
        };
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let text = std::fs::read_to_string(&self.path).map_err(|e| err(e.to_string()))?;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&text).map_err(|e| err(format!("not a JWKS document: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            use jsonwebtoken::jwk::{AlgorithmParameters as P, EllipticCurve};
            let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => a
                    .to_string()
                    .parse::<Algorithm>()
                    .map_err(|_| err(format!("unsupported alg {a}")))?,
                (None, P::RSA(_)) => Algorithm::RS256,
                (None, P::EllipticCurve(ec)) if ec.curve == EllipticCurve::P384 => Algorithm::ES384,
                (None, P::EllipticCurve(_)) => Algorithm::ES256,
                (None, P::OctetKey(_)) => Algorithm::HS256,
                (None, P::OctetKeyPair(_)) => Algorithm::EdDSA,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("bad key: {e}")))?;
            keys.push((jwk.common.key_id.clone(), key, alg));
        }
        let n = keys.len();
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        if let Ok(mut m) = self.modified.lock() {
            *m = modified;
        }
        Ok(n)
    }

    fn current(&self) -> JwksKeys {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A JWT key setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The public key file could not be read.
    #[error("cannot read JWT public key {path}: {reason}")]
    Read { path: String, reason: String },
    /// The public key file is not a PEM RSA or EC public key.
    #[error("JWT public key {path} is not a PEM RSA or EC (P-256) public key")]
    Parse { path: String },
    /// The shared secret is too short to be safe.
    #[error("JWT secret must be at least 16 bytes")]
    ShortSecret,
}

impl JwtVerifier {
    /// Build from an HS256 secret and/or PEM public key files (RS256 or ES256).
    pub fn new(
        secret: Option<&str>,
        public_key_files: &[String],
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<Self, KeyError> {
        let validation = |alg| herald_runtime::jwt::validation(alg, audience, issuer);
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.len() < 16 {
                return Err(KeyError::ShortSecret);
            }
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        for path in public_key_files {
            let pem = std::fs::read(path).map_err(|e| KeyError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((k, validation(Algorithm::RS256)));
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                keys.push((k, validation(Algorithm::ES256)));
            } else {
                return Err(KeyError::Parse { path: path.clone() });
            }
        }
        Ok(JwtVerifier {
            keys,
            jwks: None,
            audience: audience.map(str::to_owned),
            issuer: issuer.map(str::to_owned),
        })
    }

    /// Also accept the keys of a JWKS file (selected by `kid`), reloaded by
    /// [`Jwks::reload_if_changed`].
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        herald_runtime::jwt::validation(alg, self.audience.as_deref(), self.issuer.as_deref())
    }

    /// Whether any key is configured.
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty() || self.jwks.is_some()
    }

    /// Verify a token (a leading `Bearer ` is stripped) and return its identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = strip_bearer(token);
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if !self.is_configured() {
            return Err(AuthError::NotConfigured);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // JWKS keys: the one named by `kid` (or every key when there is none).
        let jwks = self.jwks.as_ref().map(|j| j.current()).unwrap_or_default();
        let jwks_candidates: Vec<(&DecodingKey, Validation)> = jwks
            .iter()
            .filter(|(kid, _, alg)| {
                *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
            .map(|(_, key, alg)| (key, self.validation(*alg)))
            .collect();
        if header.kid.is_some() && jwks_candidates.is_empty() && self.keys.is_empty() {
            return Err(AuthError::Claims("unknown key id".into()));
        }
        let statics = self
            .keys
            .iter()
            .filter(|(_, v)| v.algorithms.contains(&header.alg))
            .map(|(k, v)| (k, v.clone()));
        let mut last = AuthError::BadSignature;
        for (key, validation) in jwks_candidates.into_iter().chain(statics) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return identity_from(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => return Err(AuthError::Expired),
                        K::InvalidSignature => AuthError::BadSignature,
                        K::ImmatureSignature => {
                            return Err(AuthError::Claims("token not yet valid".into()));
                        }
                        K::InvalidAudience => {
                            return Err(AuthError::Claims("wrong audience".into()));
                        }
                        K::InvalidIssuer => return Err(AuthError::Claims("wrong issuer".into())),
                        K::MissingRequiredClaim(c) => {
                            return Err(AuthError::Claims(format!("missing {c}")));
                        }
                        K::Json(_) => {
                            return Err(AuthError::Claims(
                                "claims are not a JSON object of the expected shape".into(),
                            ));
                        }
                        _ => AuthError::Malformed,
                    };
                }
            }
        }
        Err(last)
    }
}

fn identity_from(claims: Claims) -> Result<Identity, AuthError> {
    let account_id = claims
        .account_id
        .as_ref()
        .and_then(id_string)
        .ok_or_else(|| AuthError::Claims("missing account_id".into()))?;
    let id = claims
        .sub
        .as_ref()
        .and_then(id_string)
        .ok_or_else(|| AuthError::Claims("missing sub".into()))?;
    let role = claims.role.unwrap_or_else(|| "agent".to_owned());
    let kind = match role.as_str() {
        "agent" | "admin" | "administrator" => PrincipalKind::User,
        "contact" => PrincipalKind::Contact,
        other => return Err(AuthError::Claims(format!("unknown role `{other}`"))),
    };
    Ok(Identity {
        account_id: account_id.into(),
        kind,
        id,
        role,
        expires_at: claims.exp,
        token_key: None,
        conversations: claims
            .conversations
            .map(|c| c.iter().filter_map(id_string).collect()),
    })
}

/// Whether a credential has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let all_b64 = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    matches!((parts.next(), parts.next(), parts.next(), parts.next()), (Some(a), Some(b), Some(c), None) if all_b64(a) && all_b64(b) && all_b64(c))
}

/// Resolves any credential: JWTs are verified with the configured keys,
/// anything else is looked up in the identities table.
#[derive(Clone)]
pub struct Authenticator {
    /// JWT verification.
    pub jwt: JwtVerifier,
    /// Opaque tokens.
    pub identities: Arc<crate::kafka::identities::IdentityTable>,
    /// How long an opaque token this pod does not know yet may wait for
    /// the identities topic to be read up to its end (read-your-writes).
    pub unknown_token_wait: std::time::Duration,
}

impl Authenticator {
    /// Resolve a credential (a leading `Bearer ` is ignored).
    pub fn resolve(&self, credential: &str) -> Result<Identity, AuthError> {
        let token = strip_bearer(credential);
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if looks_like_jwt(token) {
            return self.jwt.verify(token);
        }
        self.identities.resolve(token)
    }

    /// [`resolve`](Self::resolve), with read-your-writes for opaque tokens
    /// registered a moment ago (see [`IdentityTable::resolve_fresh`](crate::kafka::identities::IdentityTable::resolve_fresh)).
    pub async fn resolve_fresh(&self, credential: &str) -> Result<Identity, AuthError> {
        let token = strip_bearer(credential);
        if token.is_empty() || looks_like_jwt(token) {
            return self.resolve(credential);
        }
        self.identities
            .resolve_fresh(token, self.unknown_token_wait)
            .await
    }
}

/// Strip an optional, case-insensitive `Bearer ` prefix and surrounding spaces.
pub fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    if v.eq_ignore_ascii_case("bearer") {
        return "";
    }
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
        _ => v,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use herald_schemas::Audience;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "test-secret-of-32-bytes-length!!";

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(Some(SECRET), &[], None, None).unwrap()
    }

    #[test]
    fn valid_token_yields_identity() {
        let t = token(
            json!({"sub": 7, "account_id": 42, "role": "admin", "exp": now() + 60}),
            SECRET,
        );
        let id = verifier().verify(&format!("Bearer {t}")).unwrap();
        assert_eq!(&*id.account_id, "42");
        assert_eq!(id.id, "7");
        assert_eq!(id.kind, PrincipalKind::User);
    }

    #[test]
    fn refusals_name_their_reason() {
        let v = verifier();
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("Bearer "), Err(AuthError::Missing));
        assert_eq!(v.verify("not.a.jwt"), Err(AuthError::Malformed));
        let expired = token(
            json!({"sub": "1", "account_id": "1", "exp": now() - 3600}),
            SECRET,
        );
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let forged = token(
            json!({"sub": "1", "account_id": "1", "exp": now() + 60}),
            "another-secret-of-enough-length",
        );
        assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
        let no_account = token(json!({"sub": "1", "exp": now() + 60}), SECRET);
        assert!(matches!(v.verify(&no_account), Err(AuthError::Claims(_))));
        let no_exp = token(json!({"sub": "1", "account_id": "1"}), SECRET);
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Claims(_))));
        let bad_role = token(
            json!({"sub": "1", "account_id": "1", "role": "root", "exp": now() + 60}),
            SECRET,
        );
        assert!(matches!(v.verify(&bad_role), Err(AuthError::Claims(_))));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = JwtVerifier::new(Some(SECRET), &[], Some("herald"), Some("backend")).unwrap();
        let good = token(
            json!({"sub": "1", "account_id": "1", "aud": "herald", "iss": "backend", "exp": now() + 60}),
            SECRET,
        );
        assert!(v.verify(&good).is_ok());
        let wrong = token(
            json!({"sub": "1", "account_id": "1", "aud": "other", "iss": "backend", "exp": now() + 60}),
            SECRET,
        );
        assert!(matches!(v.verify(&wrong), Err(AuthError::Claims(_))));
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("herald-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        // base64url without padding (RFC 4648 section 5).
        let b64 = |s: &str| {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in s.as_bytes().chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        };
        let write = |keys: &[(&str, &str)]| {
            let keys: Vec<_> = keys.iter().map(|(kid, secret)| json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(secret)})).collect();
            std::fs::write(&path, json!({"keys": keys}).to_string()).unwrap();
            // Make the modification visible to an mtime check even within one second.
            let later = std::time::SystemTime::now()
                + std::time::Duration::from_secs(keys.len() as u64 * 7);
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(later).unwrap();
        };
        let signed = |kid: &str, secret: &str| {
            let h = Header {
                kid: Some(kid.into()),
                ..Default::default()
            };
            encode(
                &h,
                &json!({"sub": "1", "account_id": "1", "exp": now() + 60}),
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        write(&[("a", "secret-a-0123456789abcdef")]);
        let jwks = Jwks::load(path.to_str().unwrap()).unwrap();
        let v = JwtVerifier::new(None, &[], None, None)
            .unwrap()
            .with_jwks(jwks.clone());
        assert!(v.verify(&signed("a", "secret-a-0123456789abcdef")).is_ok());
        assert!(
            v.verify(&signed("b", "secret-b-0123456789abcdef")).is_err(),
            "unknown kid"
        );
        assert_eq!(
            v.verify(&signed("a", "forged-secret-0123456789")),
            Err(AuthError::BadSignature)
        );
        write(&[
            ("a", "secret-a-0123456789abcdef"),
            ("b", "secret-b-0123456789abcdef"),
        ]);
        assert!(jwks.reload_if_changed());
        assert!(
            v.verify(&signed("b", "secret-b-0123456789abcdef")).is_ok(),
            "rotated in"
        );
        write(&[("b", "secret-b-0123456789abcdef")]);
        assert!(jwks.reload_if_changed());
        assert!(
            v.verify(&signed("a", "secret-a-0123456789abcdef")).is_err(),
            "rotated out"
        );
        std::fs::write(&path, "garbage").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(99))
            .unwrap();
        assert!(!jwks.reload_if_changed());
        assert!(
            v.verify(&signed("b", "secret-b-0123456789abcdef")).is_ok(),
            "bad file keeps the old keys"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtVerifier::new(Some("short"), &[], None, None).is_err());
    }

    #[test]
    fn entitlement_rules() {
        let agent = Identity {
            account_id: "1".into(),
            kind: PrincipalKind::User,
            id: "7".into(),
            role: "agent".into(),
            expires_at: None,
            token_key: None,
            conversations: None,
        };
        let contact = Identity {
            account_id: "1".into(),
            kind: PrincipalKind::Contact,
            id: "c9".into(),
            role: "contact".into(),
            expires_at: None,
            token_key: None,
            conversations: None,
        };
        let none = None;
        let only_contacts = Audience {
            contacts: vec!["c9".into()],
            ..Default::default()
        };
        let other_user = Audience {
            users: vec!["8".into()],
            ..Default::default()
        };
        let admins = Audience {
            roles: vec!["admin".into()],
            ..Default::default()
        };
        assert!(agent.entitled(none));
        assert!(agent.entitled(Some(&only_contacts)));
        assert!(!agent.entitled(Some(&other_user)));
        assert!(!agent.entitled(Some(&admins)));
        assert!(!contact.entitled(none));
        assert!(contact.entitled(Some(&only_contacts)));
        assert!(!contact.entitled(Some(&other_user)));
    }

    #[test]
    fn bearer_prefix_is_optional() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("bearer  abc "), "abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bear"), "Bear");
    }
}
