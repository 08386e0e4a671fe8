//! Who is calling: the credential in the request's headers, resolved to a
//! [`Principal`](crate::decision::Principal).
//!
//! - [`credential`]: which header carries the credential (`authorization: Bearer`,
//!   `x-api-key`, `api-key`).
//! - [`master`]: the master key, kept only as a hash and compared in constant time.
//! - [`api_key`]: the virtual key format (prefix, base62, CRC32 checksum) and its hash.
//! - [`key_cache`]: virtual keys resolved through a moka cache in front of the store, so
//!   a warm decision does no I/O, with in-process invalidation on admin writes.

pub mod api_key;
pub mod credential;
pub mod key_cache;
pub mod master;

use crate::decision::{Denial, DenyReason, Principal};
use crate::store::StoreError;
pub use key_cache::KeyResolver;
pub use master::MasterKey;

/// Resolving a credential either names a principal, refuses it, or cannot tell because a
/// backend is down (never treated as "allow" nor as "unknown key").
#[derive(Debug)]
pub enum AuthnError {
    Denied(Denial),
    Unavailable(StoreError),
}

impl From<Denial> for AuthnError {
    fn from(d: Denial) -> Self {
        AuthnError::Denied(d)
    }
}

fn invalid(message: &str) -> AuthnError {
    AuthnError::Denied(Denial::new(DenyReason::InvalidApiKey, message))
}

/// Resolves a presented credential: the master key, else a virtual key (format and
/// checksum first, then cache, then store).
pub async fn resolve(
    master: &MasterKey,
    keys: &KeyResolver,
    presented: Option<&str>,
) -> Result<Principal, AuthnError> {
    let Some(secret) = presented else {
        return Err(invalid(
            "You didn't provide an API key. Provide it as `authorization: Bearer <key>`, `x-api-key` or `api-key`",
        ));
    };
    if master.matches(secret) {
        return Ok(Principal::Master);
    }
    let key = api_key::parse(secret).map_err(|e| invalid(&format!("Incorrect API key: {e}")))?;
    match keys.resolve(&key.hash()).await {
        Ok(Some(lookup)) => Ok(Principal::Key(lookup)),
        Ok(None) => Err(invalid("Incorrect API key provided")),
        Err(e) => Err(AuthnError::Unavailable(e)),
    }
}

// Bearer JWTs: shared structural and claim checks ([`jwt`]), and tokens of OIDC issuers
// verified against their published keys ([`oidc`]).
pub mod jwt;
pub mod oidc;

// tollgate's own login sessions: signed access tokens and refresh tokens ([`session`]),
// password hashing and policy ([`password`]), login attempt limits ([`login_guard`]), and the
// service that ties them to the store ([`login`]).
pub mod login;
pub mod login_guard;
pub mod password;
pub mod session;
