//! What looks at a bearer credential before any signature is checked: picking it from the
//! headers (`authn::credential::extract`), routing it (`jwt::looks_like_jwt`, the API key
//! and refresh token shapes), and the JWT pre-parser (`jwt::parse`: size, segments,
//! base64url, JSON; then the unverified `iss`, `kid` and `alg` checks), plus the session
//! verifier that decodes a token's header before its HMAC.
//!
//! Beyond "no panic": the pre-parser agrees with the router and with itself, and an
//! accepted `alg` is one of those allowed.

#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use tollgate::authn::api_key;
use tollgate::authn::credential::{self, MAX_CREDENTIAL_LEN};
use tollgate::authn::jwt::{self, ClaimRules, JwtRejection};
use tollgate::authn::session::{self, SessionKeys};
use tollgate::config::Config;

const MAX_TOKEN_BYTES: usize = 8 * 1024;
const NOW: i64 = 1_800_000_000;
const ALLOWED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

fn session_keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let yaml = "auth:\n  session:\n    secret: fuzz-session-secret-of-at-least-32-bytes\n";
        let loaded = Config::parse_str("fuzz.yaml", yaml, &|_| None).expect("a valid config");
        SessionKeys::new(loaded.config.auth.session.as_ref().expect("a session"))
    })
}

fn token(token: &str) {
    let _ = api_key::parse(token).map(|k| k.hint());
    let _ = session::is_refresh_token(token);
    let looks = jwt::looks_like_jwt(token);

    match jwt::parse(token, MAX_TOKEN_BYTES) {
        Err(rejection) => {
            let _ = rejection.to_string();
            match rejection {
                JwtRejection::TooLarge { len, max } => assert!(len > max && max == MAX_TOKEN_BYTES),
                JwtRejection::NotThreeSegments => {
                    assert!(!looks, "JWT-shaped but not three segments")
                }
                _ => assert!(token.len() <= MAX_TOKEN_BYTES),
            }
        }
        Ok(unverified) => {
            assert_eq!(token.split('.').count(), 3);
            let _ = format!("{unverified:?}");
            let _ = unverified.kid();
            assert_eq!(
                jwt::unverified_issuer(token, MAX_TOKEN_BYTES)
                    .ok()
                    .as_deref(),
                unverified.issuer()
            );
            match unverified.check_header(&ALLOWED) {
                Ok(alg) => assert!(ALLOWED.contains(&alg)),
                Err(rejection) => {
                    let _ = rejection.to_string();
                }
            }
            let audiences = ["tollgate".to_owned()];
            let rules = ClaimRules {
                issuer: "https://id.example",
                audiences: &audiences,
                leeway: 60,
            };
            if let Err(rejection) = jwt::check_claims(unverified.claims(), &rules, NOW) {
                let _ = rejection.to_string();
            }
        }
    }

    if let Err(e) = session_keys().verify(token, NOW) {
        let _ = e.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    token(text);

    // The input as the three credential headers, in order, one a line.
    let mut lines = text.splitn(3, '\n');
    let (authorization, x_api_key, api_key) = (lines.next(), lines.next(), lines.next());
    let picked = credential::extract(|name| match name {
        "authorization" => authorization,
        "x-api-key" => x_api_key,
        "api-key" => api_key,
        _ => None,
    });
    if let Some(picked) = picked {
        assert!(!picked.is_empty() && picked.len() <= MAX_CREDENTIAL_LEN);
        assert_eq!(picked, picked.trim());
        token(picked);
    }
});
