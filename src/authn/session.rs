//! tollgate's own session tokens: HS256 access tokens and opaque refresh tokens.
//!
//! Access tokens are short-lived JWTs signed with `auth.session.secret`. Their header
//! `kid` is the first 16 hex characters of the SHA-256 of the signing secret, so a token
//! names the secret that signed it without revealing it; tokens signed with a secret listed
//! in `previous_secrets` keep verifying until that secret is removed from the config.
//! Verification is pure (it takes `now`, does no I/O), so the Check path can use it.
//!
//! Refresh tokens are random (`tg-rt-` + 43 base62 characters); only their SHA-256 is
//! stored, and the store rotates them (see
//! [`crate::store::SessionStore::rotate_refresh_token`]).

use crate::config;
use crate::domain::{Role, Timestamp, User};
use crate::secret::Secret;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The `typ` claim of an access token (refresh tokens are not JWTs, but a future token
/// kind must not pass for an access token).
pub const ACCESS_TYPE: &str = "access";

/// Prefix of refresh tokens, so they are recognisable in a leak scan.
pub const REFRESH_PREFIX: &str = "tg-rt-";
const REFRESH_RANDOM_LEN: usize = 43;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The user's id.
    pub sub: String,
    pub iat: Timestamp,
    pub nbf: Timestamp,
    pub exp: Timestamp,
    pub jti: String,
    /// The session: the refresh-token family this token was issued with.
    pub sid: String,
    pub typ: String,
    pub role: Role,
    pub username: String,
}

/// Why an access token was refused. Messages never carry the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is not signed with HS256")]
    WrongAlgorithm,
    #[error("the token's signing key (kid) is not known")]
    UnknownKey,
    #[error("the token's signature or claims are invalid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is not an access token")]
    WrongType,
    #[error("the session has ended")]
    Revoked,
}

/// The first 16 hex characters of the SHA-256 of a signing secret.
pub fn kid_of(secret: &Secret) -> String {
    let digest = hex::encode(Sha256::digest(secret.expose().as_bytes()));
    digest[..16].to_owned()
}

/// Signing and verification keys derived from `auth.session`.
pub struct SessionKeys {
    issuer: String,
    access_ttl: i64,
    kid: String,
    encoding: EncodingKey,
    /// The current secret first, then the previous ones.
    decoding: Vec<(String, DecodingKey)>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .field(
                "verifies",
                &self.decoding.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    pub fn new(session: &config::Session) -> SessionKeys {
        let secret = session.secret.expose().as_bytes();
        let mut decoding = vec![(kid_of(&session.secret), DecodingKey::from_secret(secret))];
        for previous in &session.previous_secrets {
            decoding.push((
                kid_of(previous),
                DecodingKey::from_secret(previous.expose().as_bytes()),
            ));
        }
        SessionKeys {
            issuer: session.issuer.clone(),
            access_ttl: i64::try_from(session.access_ttl.as_secs()).unwrap_or(i64::MAX),
            kid: kid_of(&session.secret),
            encoding: EncodingKey::from_secret(secret),
            decoding,
        }
    }

    /// The `kid` new tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `iss` of the tokens these keys sign.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn access_ttl(&self) -> i64 {
        self.access_ttl
    }

    /// Signs an access token for `user` in session `sid`.
    pub fn issue(&self, user: &User, sid: &str, now: Timestamp) -> (Secret, AccessClaims) {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: user.id.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.access_ttl),
            jti: uuid::Uuid::new_v4().to_string(),
            sid: sid.to_owned(),
            typ: ACCESS_TYPE.to_owned(),
            role: user.role.clone(),
            username: user.username.clone(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 signing with an HMAC key cannot fail");
        (Secret::new(token), claims)
    }

    /// Verifies an access token at time `now`: HS256 only, a known `kid`, a valid
    /// signature, `exp` required and in the future, `nbf` reached, our issuer, `typ` access.
    /// No clock leeway: issuer and verifier are the same clock.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self
            .decoding
            .iter()
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key)
            .ok_or(TokenError::UnknownKey)?;
        // Time is checked below against `now`, so that verification is a pure function.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Json(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_)
                | jsonwebtoken::errors::ErrorKind::InvalidToken => TokenError::Malformed,
                _ => TokenError::Invalid,
            }
        })?;
        let claims = data.claims;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.typ != ACCESS_TYPE {
            return Err(TokenError::WrongType);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// A new refresh token (`tg-rt-` + 43 base62 characters) from the OS-seeded CSPRNG.
pub fn new_refresh_token() -> Secret {
    Secret::new(super::api_key::random_token(
        REFRESH_PREFIX,
        REFRESH_RANDOM_LEN,
    ))
}

/// Whether `token` has the shape of a refresh token (checked before any lookup).
pub fn is_refresh_token(token: &str) -> bool {
    token.len() == REFRESH_PREFIX.len() + REFRESH_RANDOM_LEN
        && token.starts_with(REFRESH_PREFIX)
        && token[REFRESH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// What the store keeps of a refresh token: its SHA-256, lowercase hex.
pub fn refresh_hash(token: &str) -> String {
    super::api_key::KeyHash::of(token).to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session(secret: &str, previous: &[&str]) -> config::Session {
        config::Session {
            secret: Secret::new(secret),
            previous_secrets: previous.iter().map(|s| Secret::new(*s)).collect(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
            issuer: "tollgate".into(),
        }
    }

    fn user() -> User {
        User {
            id: "u-1".into(),
            username: "ada".into(),
            email: "ada@example.com".into(),
            full_name: None,
            role: Role::User,
            org_id: None,
            blocked: false,
            limits: Default::default(),
            metadata: serde_json::json!({}),
            locked_until: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    const OLD: &str = "old-secret-0123456789-0123456789-0123456789";
    const NEW: &str = "new-secret-0123456789-0123456789-0123456789";

    #[test]
    fn issues_and_verifies() {
        let keys = SessionKeys::new(&session(NEW, &[]));
        let (token, claims) = keys.issue(&user(), "fam", 1_000);
        assert_eq!(claims.exp, 1_900);
        let header = jsonwebtoken::decode_header(token.expose()).unwrap();
        assert_eq!(header.kid.as_deref(), Some(keys.kid()));
        assert_eq!(keys.kid().len(), 16);
        let verified = keys.verify(token.expose(), 1_000).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.sid, "fam");
        assert_eq!(verified.typ, "access");
        assert_eq!(keys.verify(token.expose(), 1_900), Err(TokenError::Expired));
        assert_eq!(
            keys.verify(token.expose(), 999),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn old_secret_verifies_only_while_listed() {
        let old = SessionKeys::new(&session(OLD, &[]));
        let (token, _) = old.issue(&user(), "fam", 1_000);
        let rotated = SessionKeys::new(&session(NEW, &[OLD]));
        assert!(rotated.verify(token.expose(), 1_001).is_ok());
        let removed = SessionKeys::new(&session(NEW, &[]));
        assert_eq!(
            removed.verify(token.expose(), 1_001),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn refuses_tampering_other_issuers_and_garbage() {
        let keys = SessionKeys::new(&session(NEW, &[]));
        let (token, _) = keys.issue(&user(), "fam", 1_000);
        let mut parts: Vec<String> = token.expose().split('.').map(str::to_owned).collect();
        let mut payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1])
                .unwrap(),
        )
        .unwrap();
        payload["role"] = "admin".into();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload.to_string(),
        );
        assert_eq!(
            keys.verify(&parts.join("."), 1_001),
            Err(TokenError::Invalid)
        );
        assert_eq!(keys.verify("not-a-jwt", 1_001), Err(TokenError::Malformed));

        let mut other = session(NEW, &[]);
        other.issuer = "someone-else".into();
        let (foreign, _) = SessionKeys::new(&other).issue(&user(), "fam", 1_000);
        assert_eq!(
            keys.verify(foreign.expose(), 1_001),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn refresh_tokens_have_their_shape() {
        let a = new_refresh_token();
        let b = new_refresh_token();
        assert_ne!(a, b);
        assert!(is_refresh_token(a.expose()));
        assert!(!is_refresh_token("tg-rt-short"));
        assert_eq!(refresh_hash(a.expose()).len(), 64);
        assert_eq!(format!("{a:?}"), "[redacted]");
    }
}
