//! Who is calling: the credential in the request's headers, resolved to a
//! [`Principal`](crate::decision::Principal).
//!
//! - [`credential`]: which header carries the credential (`authorization: Bearer`,
//!   `x-api-key`, `api-key`).
//! - [`master`]: the master key, kept only as a hash and compared in constant time.
//! - [`api_key`]: the virtual key format (prefix, base62, CRC32 checksum) and its hash.
//! - [`key_cache`]: virtual keys and users resolved through caches in front of the store,
//!   so a warm decision does no I/O, with in-process invalidation on admin writes.
//! - [`jwt`], [`oidc`], [`identity`]: bearer JWTs of OIDC issuers, verified against their
//!   published keys and mapped to (possibly new) users.
//! - [`session`], [`password`], [`login_guard`], [`login`]: tollgate's own login sessions.
//! - [`sso`]: signing in at an OIDC issuer (authorization code flow with PKCE), ending in
//!   the same user an OIDC token of that person resolves to.
//! - [`passkey`]: passkeys (WebAuthn) for the web UI: the relying party's ceremonies, over
//!   the store's passkeys and challenges.
//!
//! [`Authenticator`] ties them together; Check and the HTTP API both use it, so a
//! credential means the same thing on both.

pub mod api_key;
pub mod credential;
pub mod identity;
pub mod jwt;
pub mod key_cache;
pub mod login;
pub mod login_guard;
pub mod master;
pub mod oidc;
pub mod passkey;
pub mod password;
pub mod session;
pub mod sso;

use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::decision::{Denial, DenyReason, Principal};
use crate::domain::{Timestamp, User};
use crate::metrics::Metrics;
use crate::store::SharedStore;
use identity::{OidcUsers, Resolved};
pub use key_cache::{Invalidation, KeyResolver, OrgResolver, UserResolver};
use login::Sessions;
pub use master::MasterKey;
use oidc::{OidcError, OidcIdentity, OidcVerifier};
use std::sync::Arc;

/// Resolving a credential either names a principal, refuses it, or cannot tell because a
/// backend is down (never treated as "allow" nor as "unknown key").
#[derive(Debug)]
pub enum AuthnError {
    /// Answered as it stands: mostly 401, or 503 `auth_unavailable` with a `retry_after`
    /// when the credential cannot be judged yet but soon can (an OIDC key not read yet).
    Denied(Denial),
    Unavailable(BackendError),
}

impl From<Denial> for AuthnError {
    fn from(d: Denial) -> Self {
        AuthnError::Denied(d)
    }
}

fn invalid(message: &str) -> AuthnError {
    AuthnError::Denied(Denial::new(DenyReason::InvalidApiKey, message))
}

/// A refused bearer token: one log line with the precise reason (never the token), and a
/// 401 that says the same.
fn token_refused(kind: &str, reason: &dyn std::fmt::Display) -> AuthnError {
    tracing::info!(authn.token = kind, authn.rejected = %reason, "bearer token refused");
    invalid(&format!("Invalid bearer token: {reason}"))
}

/// An OIDC token signed with a key the issuer may have just published, before tollgate may
/// read its keys again: 503 `auth_unavailable` with `retry-after` until that read is
/// allowed, not a 401 that clients take as final.
fn key_not_fetched_yet(issuer: &str, retry_in: std::time::Duration) -> AuthnError {
    let seconds = u64::try_from(retry_in.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    tracing::debug!(%issuer, retry_after = seconds, "OIDC token with a key not cached; the issuer's keys may be re-read in {seconds}s");
    AuthnError::Denied(
        Denial::new(
            DenyReason::AuthUnavailable,
            format!("The key that signed this token is not known yet (the issuer may have just rotated its keys); try again in {seconds}s"),
        )
        .with_retry_after(seconds),
    )
}

/// Everything that turns a presented credential into a principal.
pub struct Authenticator {
    pub master: MasterKey,
    pub keys: KeyResolver,
    pub users: UserResolver,
    /// Orgs of people signed in with a login token (a key's org comes with the key).
    pub orgs: OrgResolver,
    /// tollgate's own sessions, when `auth.session` is configured.
    pub sessions: Option<Arc<Sessions>>,
    /// OIDC issuers, when `auth.oidc` lists any.
    pub oidc: Option<(Arc<OidcVerifier>, OidcUsers)>,
    max_token_bytes: usize,
    metrics: Metrics,
}

impl Authenticator {
    pub fn new(
        config: &Config,
        master: MasterKey,
        store: SharedStore,
        sessions: Option<Arc<Sessions>>,
        metrics: Metrics,
    ) -> Authenticator {
        let timeout = config.database.timeout;
        let oidc = (!config.auth.oidc.is_empty()).then(|| {
            (
                Arc::new(OidcVerifier::new(
                    &config.auth.oidc,
                    config.auth.max_token_bytes,
                )),
                OidcUsers::new(
                    store.clone(),
                    &config.auth.oidc,
                    &config.cache,
                    timeout,
                    metrics.clone(),
                ),
            )
        });
        Authenticator {
            master,
            keys: KeyResolver::new(store.clone(), &config.cache, timeout, metrics.clone()),
            users: UserResolver::new(store.clone(), &config.cache, timeout, metrics.clone()),
            orgs: OrgResolver::new(store, &config.cache, timeout, metrics.clone()),
            sessions,
            oidc,
            max_token_bytes: config.auth.max_token_bytes,
            metrics,
        }
    }

    /// Replaces the OIDC verifier (tests read issuers through their own client).
    pub fn set_oidc_verifier(&mut self, verifier: Arc<OidcVerifier>) {
        if let Some((v, _)) = &mut self.oidc {
            *v = verifier;
        }
    }

    /// Drops everything cached that an admin write made stale, at once.
    pub fn invalidate(&self, what: Invalidation) {
        if let Some((_, users)) = &self.oidc {
            users.invalidate(&what);
        }
        self.users.invalidate(what.clone());
        self.orgs.invalidate(what.clone());
        self.keys.invalidate(what);
    }

    /// A user was created: OIDC identities refused as "no account" may have one now.
    pub fn user_created(&self) {
        if let Some((_, users)) = &self.oidc {
            users.user_created();
        }
    }

    /// Resolves a presented credential: the master key; a bearer JWT (a session token of
    /// `auth.session`, else a token of an OIDC issuer); else a virtual key (format and
    /// checksum first, then cache, then store). `source` is the client's address, for the
    /// audit lines of a provisioning login.
    pub async fn resolve(
        &self,
        presented: Option<&str>,
        source: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal, AuthnError> {
        let Some(secret) = presented else {
            return Err(invalid(
                "You didn't provide an API key. Provide it as `authorization: Bearer <key>`, `x-api-key` or `api-key`",
            ));
        };
        // One SHA-256 serves both the master key's comparison and the virtual key's lookup.
        let hash = api_key::KeyHash::of(secret);
        if self.master.matches_hash(&hash) {
            return Ok(Principal::Master);
        }
        if jwt::looks_like_jwt(secret) {
            return self.resolve_jwt(secret, source, now).await;
        }
        api_key::validate(secret).map_err(|e| invalid(&format!("Incorrect API key: {e}")))?;
        match self.keys.resolve(&hash).await {
            Ok(Some(lookup)) => Ok(Principal::Key(lookup)),
            Ok(None) => Err(invalid("Incorrect API key provided")),
            Err(e) => Err(AuthnError::Unavailable(e.into())),
        }
    }

    async fn resolve_jwt(
        &self,
        token: &str,
        source: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal, AuthnError> {
        let issuer = jwt::parse(token, self.max_token_bytes)
            .map_err(|r| token_refused("jwt", &r))?
            .issuer()
            .map(str::to_owned);
        let own = self
            .sessions
            .as_ref()
            .filter(|s| issuer.as_deref() == Some(s.keys().issuer()));
        let user_id = if let Some(sessions) = own {
            session_subject(sessions, token, now)?
        } else if let Some((verifier, _)) = &self.oidc {
            let identity = match verifier.verify(token, now).await {
                Ok(identity) => identity,
                Err(OidcError::Rejected(r)) => return Err(token_refused("oidc", &r)),
                Err(OidcError::KeyNotFetchedYet { issuer, retry_in }) => {
                    return Err(key_not_fetched_yet(&issuer, retry_in))
                }
                Err(e @ OidcError::Unavailable { .. }) => {
                    self.metrics.backend_error("oidc");
                    return Err(AuthnError::Unavailable(BackendError::unavailable(
                        Backend::Issuer,
                        e.to_string(),
                    )));
                }
            };
            return match self.oidc_user(&identity, source).await {
                Ok(user) => Ok(Principal::User(user)),
                Err(OidcUserError::NoAccount) => {
                    tracing::info!(issuer = %identity.issuer, "OIDC token of an identity linked to no user (auto_provision is off)");
                    Err(invalid(NO_ACCOUNT))
                }
                Err(OidcUserError::Gone) => Err(invalid(ACCOUNT_GONE)),
                Err(OidcUserError::Refused(why)) => {
                    tracing::info!(issuer = %identity.issuer, reason = %why, "OIDC token refused");
                    Err(invalid(&why))
                }
                Err(OidcUserError::Unavailable(e)) => Err(AuthnError::Unavailable(e)),
            };
        } else if let Some(sessions) = &self.sessions {
            // Not our issuer and no OIDC issuer: the session verifier says precisely why.
            session_subject(sessions, token, now)?
        } else {
            return Err(token_refused(
                "jwt",
                &"bearer tokens are not accepted here: no token issuer is configured",
            ));
        };
        match self.users.resolve(&user_id).await {
            Ok(Some(user)) => Ok(Principal::User(user)),
            Ok(None) => Err(invalid(ACCOUNT_GONE)),
            Err(e) => Err(AuthnError::Unavailable(e.into())),
        }
    }

    /// The user a verified OIDC identity is: the one linked to it, else one linked by
    /// verified email, else one provisioned (`auto_provision`), with role and group
    /// memberships synced from its groups (docs/DESIGN.md, "OIDC users"). Bearer tokens in
    /// Check and on the HTTP API, and sign-in with SSO, all come through here. `source` is
    /// the client's address, for the audit lines of a provisioning login.
    pub async fn oidc_user(
        &self,
        identity: &OidcIdentity,
        source: Option<&str>,
    ) -> Result<Arc<User>, OidcUserError> {
        let Some((_, users)) = &self.oidc else {
            return Err(OidcUserError::NoAccount);
        };
        let found = users
            .user_id(identity, source, |id| {
                self.users.invalidate(Invalidation::User(id.to_owned()))
            })
            .await
            .map_err(|e| OidcUserError::Unavailable(e.into()))?;
        let user_id = match found {
            None => return Err(OidcUserError::NoAccount),
            Some(Resolved::Refused(why)) => return Err(OidcUserError::Refused(why)),
            Some(Resolved::User(id)) => id,
        };
        match self.users.resolve(&user_id).await {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(OidcUserError::Gone),
            Err(e) => Err(OidcUserError::Unavailable(e.into())),
        }
    }
}

/// Why a verified OIDC identity is no user ([`Authenticator::oidc_user`]).
#[derive(Debug)]
pub enum OidcUserError {
    /// Linked to no user, and its issuer does not provision users.
    NoAccount,
    /// Its user was deleted while it was being resolved.
    Gone,
    /// Its claims admit nobody (e.g. `org_claim` names no org); the reason.
    Refused(String),
    Unavailable(BackendError),
}

const NO_ACCOUNT: &str =
    "This identity has no tollgate account; ask an admin to create one with your email";
const ACCOUNT_GONE: &str = "The account of this token no longer exists";

/// The user id of a valid, unrevoked session access token.
fn session_subject(sessions: &Sessions, token: &str, now: Timestamp) -> Result<String, AuthnError> {
    sessions
        .authenticate(token, now)
        .map(|claims| claims.sub)
        .map_err(|e| token_refused("session", &e))
}
