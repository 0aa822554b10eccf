//! Credentials as clients present them: the `Authorization` value (bearer
//! prefix, JWT shape, verification with a configured HS256 secret) and the
//! STOMP `x-stream-offset` resume header.
//!
//! Random bytes almost never make a token whose signature verifies, so the
//! first byte can also ask for the rest to be *signed* with the verifier's
//! secret, as claims (mode 1) or as header + claims (mode 2): then the
//! claim checks and identity mapping behind the signature get fuzzed too.
#![no_main]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use herald_gateway::{
    auth::{JwtVerifier, looks_like_jwt, strip_bearer},
    core::{identity::PrincipalKind, position::ResumeRequest},
};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-0123456789";

fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs anything");
    format!("{message}.{signature}")
}

fn check(verifier: &JwtVerifier, credential: &str) {
    let token = strip_bearer(credential);
    assert!(token.len() <= credential.len());
    assert_eq!(token, token.trim());
    let _ = looks_like_jwt(token);
    if let Ok(identity) = verifier.verify(credential) {
        // Whatever the claims were, an identity names an account and a
        // principal, and contacts are exactly the `contact` role.
        assert!(!identity.account_id.is_empty());
        assert!(!identity.id.is_empty());
        assert_eq!(
            identity.kind == PrincipalKind::Contact,
            identity.role == "contact"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let verifier =
        JwtVerifier::new(Some(SECRET), &[], None, None).expect("a long enough secret is accepted");
    match data.split_first() {
        Some((1, claims)) => {
            check(
                &verifier,
                &signed(br#"{"alg":"HS256","typ":"JWT"}"#, claims),
            );
        }
        Some((2, rest)) => {
            let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            check(&verifier, &signed(header, claims));
        }
        _ => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check(&verifier, text);
        check(&verifier, &format!("Bearer {text}"));
        if let Ok(request) = ResumeRequest::parse_stomp(text) {
            assert!(request.positions.len() <= text.split(',').count());
        }
    }
});
