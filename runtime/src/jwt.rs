//! How every Herald service validates a JWT: the gateway's client tokens and
//! the producer's API tokens follow the same rules, built here once.

use jsonwebtoken::{Algorithm, Validation};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Validation for tokens signed with `alg`: `exp` required, `nbf` checked,
/// both with [`LEEWAY_SECS`] of skew; `aud` and `iss` required and checked
/// when configured (a token without them is refused), ignored otherwise.
pub fn validation(alg: Algorithm, audience: Option<&str>, issuer: Option<&str>) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, EncodingKey, Header, decode, encode};
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"a-test-secret-of-enough-bytes";

    fn check(claims: Value, audience: Option<&str>, issuer: Option<&str>) -> bool {
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        decode::<Value>(
            &token,
            &DecodingKey::from_secret(SECRET),
            &validation(Algorithm::HS256, audience, issuer),
        )
        .is_ok()
    }

    #[test]
    fn the_rules() {
        let now = jsonwebtoken::get_current_timestamp();
        assert!(check(json!({"exp": now + 60}), None, None));
        assert!(!check(json!({"sub": "x"}), None, None), "exp is required");
        assert!(
            check(json!({"exp": now - 10}), None, None),
            "within the leeway"
        );
        assert!(!check(json!({"exp": now - 100}), None, None), "expired");
        assert!(
            !check(json!({"exp": now + 60, "nbf": now + 100}), None, None),
            "not yet valid"
        );
        assert!(
            check(json!({"exp": now + 60, "aud": "x"}), None, None),
            "aud ignored unless configured"
        );
        assert!(check(
            json!({"exp": now + 60, "aud": "herald"}),
            Some("herald"),
            None
        ));
        assert!(!check(
            json!({"exp": now + 60, "aud": "other"}),
            Some("herald"),
            None
        ));
        assert!(
            !check(json!({"exp": now + 60}), Some("herald"), None),
            "aud required when configured"
        );
        assert!(check(
            json!({"exp": now + 60, "iss": "me"}),
            None,
            Some("me")
        ));
        assert!(!check(
            json!({"exp": now + 60, "iss": "you"}),
            None,
            Some("me")
        ));
    }
}
