//! The session service: password login, refresh-token rotation, logout and password
//! change, on top of the store, the token keys and the login guard.
//!
//! Revocation: logout and password change revoke refresh-token families in the store, and
//! put the families' session ids (`sid`) in an in-memory set until the longest-lived access
//! token of that session has expired, so this process refuses those access tokens at once.
//! Other replicas keep accepting an already issued access token until it expires (at most
//! `auth.session.access_ttl`), since verification is deliberately free of I/O.

use super::login_guard::LoginGuard;
use super::password;
use super::session::{self, AccessClaims, SessionKeys, TokenError};
use crate::config;
use crate::config::PolicyViolation;
use crate::domain::{self, Timestamp, User};
use crate::secret::Secret;
use crate::store::{Actor, NewRefreshToken, RefreshOutcome, SharedStore, StoreError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

/// What a successful login or refresh hands out.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: Secret,
    pub refresh_token: Secret,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub user: User,
}

/// Why a session call failed; mapped to HTTP once, in the API.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown user, wrong password, no password set, or an account locked after repeated
    /// failures: one answer for all, so a guesser learns nothing about which names exist
    /// (admins see the lock on the user record and in the audit log).
    #[error("invalid username, email or password")]
    InvalidCredentials,
    #[error("too many login attempts")]
    RateLimited { retry_after: u64 },
    #[error("the account is blocked")]
    Blocked,
    #[error("the refresh token is invalid, expired or revoked")]
    InvalidRefresh,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Policy(#[from] PolicyViolation),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// tollgate's own sessions, when `auth.session` is configured.
pub struct Sessions {
    keys: SessionKeys,
    refresh_ttl: i64,
    protection: config::LoginProtection,
    policy: config::PasswordPolicy,
    store: SharedStore,
    guard: LoginGuard,
    /// Ended sessions (`sid`) → when their last access token expires.
    revoked: Mutex<HashMap<String, Timestamp>>,
}

impl Sessions {
    /// The service, or `None` when `auth.session` is absent.
    pub fn from_config(auth: &config::Auth, store: SharedStore) -> Option<Sessions> {
        let session = auth.session.as_ref()?;
        Some(Sessions {
            keys: SessionKeys::new(session),
            refresh_ttl: i64::try_from(session.refresh_ttl.as_secs()).unwrap_or(i64::MAX),
            protection: auth.login.clone(),
            policy: auth.password_policy.clone(),
            store,
            guard: LoginGuard::new(
                auth.login.per_account_per_minute,
                auth.login.per_address_per_minute,
            ),
            revoked: Mutex::new(HashMap::new()),
        })
    }

    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    pub fn policy(&self) -> &config::PasswordPolicy {
        &self.policy
    }

    /// Verifies an access token and checks that its session has not ended here.
    pub fn authenticate(&self, token: &str, now: Timestamp) -> Result<AccessClaims, TokenError> {
        let claims = self.keys.verify(token, now)?;
        if self.revoked_lock().contains_key(&claims.sid) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Password login by username or email.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        source: Option<&str>,
    ) -> Result<TokenPair, SessionError> {
        let user = self.check_login(name, password, source).await?;
        let now = domain::now();
        let family = domain::new_id();
        let refresh = session::new_refresh_token();
        self.store
            .create_refresh_token(NewRefreshToken {
                user_id: user.id.clone(),
                family_id: family.clone(),
                token_hash: session::refresh_hash(refresh.expose()),
                expires_at: now.saturating_add(self.refresh_ttl),
                source: source.map(str::to_owned),
            })
            .await?;
        let actor = Actor::new(format!("user:{}", user.id), source.map(str::to_owned));
        self.store
            .record_event(
                &actor,
                "auth.login",
                Some(&user.id),
                json!({ "session": family }),
            )
            .await?;
        let (access, _) = self.keys.issue(&user, &family, now);
        Ok(TokenPair {
            access_token: access,
            refresh_token: refresh,
            expires_in: self.keys.access_ttl(),
            user,
        })
    }

    /// The checks of a password login, without a session: the attempt limits, the
    /// lockout, the password, the account's standing; failures are counted and audited.
    /// [`Sessions::login`] issues tokens after it; the web UI opens a browser session.
    pub async fn check_login(
        &self,
        name: &str,
        password: &str,
        source: Option<&str>,
    ) -> Result<User, SessionError> {
        let now = domain::now();
        let anonymous = Actor::new("anonymous", source.map(str::to_owned));
        if let Some(address) = source {
            self.guard
                .address(address, now)
                .map_err(|retry_after| SessionError::RateLimited { retry_after })?;
        }
        let found = self.store.find_login_user(name).await?;
        let account = found.as_ref().map_or(name, |f| f.user.id.as_str());
        self.guard
            .account(account, now)
            .map_err(|retry_after| SessionError::RateLimited { retry_after })?;
        let Some(found) = found else {
            verify_blocking(password, None).await?;
            self.failed(&anonymous, name, None, "unknown_user").await?;
            return Err(SessionError::InvalidCredentials);
        };
        let user = found.user;
        if user.locked_until.is_some_and(|until| until > now) {
            // Answered like a wrong password, after as much work (even the right password
            // does not get in while locked), so the answer does not tell a locked account
            // from an unknown name.
            verify_blocking(password, found.password_hash).await?;
            self.failed(&anonymous, name, Some(&user.id), "locked")
                .await?;
            return Err(SessionError::InvalidCredentials);
        }
        if !verify_blocking(password, found.password_hash).await? {
            self.store
                .record_login_failure(
                    &anonymous,
                    &user.id,
                    self.protection.max_failures,
                    now.saturating_add(
                        i64::try_from(self.protection.lockout.as_secs()).unwrap_or(i64::MAX),
                    ),
                )
                .await?;
            self.failed(&anonymous, name, Some(&user.id), "wrong_password")
                .await?;
            return Err(SessionError::InvalidCredentials);
        }
        if user.blocked {
            self.failed(&anonymous, name, Some(&user.id), "blocked")
                .await?;
            return Err(SessionError::Blocked);
        }
        self.store.record_login_success(&user.id).await?;
        Ok(user)
    }

    /// One audit line for a failed login: the name tried, never the password.
    async fn failed(
        &self,
        actor: &Actor,
        name: &str,
        user_id: Option<&str>,
        reason: &str,
    ) -> Result<(), SessionError> {
        // The name is what the client typed: cap it so the log cannot be flooded.
        let name: String = name.chars().take(200).collect();
        self.store
            .record_event(
                actor,
                "auth.login_failed",
                user_id,
                json!({ "username": name, "reason": reason }),
            )
            .await?;
        Ok(())
    }

    /// Exchanges a refresh token for a new pair (the presented token is used up).
    pub async fn refresh(
        &self,
        token: &str,
        source: Option<&str>,
    ) -> Result<TokenPair, SessionError> {
        if !session::is_refresh_token(token) {
            return Err(SessionError::InvalidRefresh);
        }
        let now = domain::now();
        let next = session::new_refresh_token();
        let outcome = self
            .store
            .rotate_refresh_token(
                &session::refresh_hash(token),
                &session::refresh_hash(next.expose()),
                now.saturating_add(self.refresh_ttl),
                source,
            )
            .await?;
        match outcome {
            RefreshOutcome::Rotated { user, family } => {
                if user.blocked {
                    return Err(SessionError::Blocked);
                }
                let (access, _) = self.keys.issue(&user, &family, now);
                Ok(TokenPair {
                    access_token: access,
                    refresh_token: next,
                    expires_in: self.keys.access_ttl(),
                    user: *user,
                })
            }
            RefreshOutcome::Reused { family, user_id } => {
                tracing::warn!(user.id = %user_id, session = %family, "refresh token reused: session revoked");
                self.end_locally(&family, now);
                Err(SessionError::InvalidRefresh)
            }
            RefreshOutcome::Expired | RefreshOutcome::Unknown => Err(SessionError::InvalidRefresh),
        }
    }

    /// Ends the session of `claims` (and that of `refresh_token`, when it is the same
    /// user's).
    pub async fn logout(
        &self,
        claims: &AccessClaims,
        refresh_token: Option<&str>,
        source: Option<&str>,
    ) -> Result<(), SessionError> {
        let now = domain::now();
        let actor = Actor::new(format!("user:{}", claims.sub), source.map(str::to_owned));
        self.store
            .revoke_refresh_family(&actor, &claims.sid)
            .await?;
        self.end_locally(&claims.sid, now);
        if let Some(token) = refresh_token.filter(|t| session::is_refresh_token(t)) {
            if let Some((user_id, family)) = self
                .store
                .refresh_token_family(&session::refresh_hash(token))
                .await?
            {
                if user_id == claims.sub && family != claims.sid {
                    self.store.revoke_refresh_family(&actor, &family).await?;
                    self.end_locally(&family, now);
                }
            }
        }
        Ok(())
    }

    /// Changes the caller's password: the current one must match, the new one must meet
    /// the policy; every other session of the user ends.
    pub async fn change_password(
        &self,
        claims: &AccessClaims,
        current: &str,
        new: &str,
        source: Option<&str>,
    ) -> Result<(), SessionError> {
        self.change_password_of(&claims.sub, Some(&claims.sid), current, new, source)
            .await
    }

    /// Changes a user's password: the current one must match, the new one must meet the
    /// policy; every session of the user but `keep_family` (the caller's, when it has one)
    /// ends.
    pub async fn change_password_of(
        &self,
        user_id: &str,
        keep_family: Option<&str>,
        current: &str,
        new: &str,
        source: Option<&str>,
    ) -> Result<(), SessionError> {
        let user = self.store.get_user(user_id).await?;
        let found = match &user {
            Some(user) => self
                .store
                .find_login_user(&user.username)
                .await?
                .filter(|f| f.user.id == user_id),
            None => None,
        };
        let hash = found.and_then(|f| f.password_hash);
        if !verify_blocking(current, hash).await? {
            return Err(SessionError::InvalidCredentials);
        }
        self.policy.check(new)?;
        let new_hash = hash_blocking(new).await?;
        let actor = Actor::new(format!("user:{user_id}"), source.map(str::to_owned));
        self.store
            .set_password_hash(&actor, user_id, &new_hash)
            .await?;
        let ended = self
            .store
            .revoke_user_sessions(&actor, user_id, keep_family)
            .await?;
        let now = domain::now();
        for family in ended {
            self.end_locally(&family, now);
        }
        Ok(())
    }

    /// Remembers an ended session until its last access token has expired.
    fn end_locally(&self, sid: &str, now: Timestamp) {
        let mut revoked = self.revoked_lock();
        revoked.retain(|_, until| *until > now);
        revoked.insert(sid.to_owned(), now.saturating_add(self.keys.access_ttl()));
    }

    fn revoked_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Timestamp>> {
        self.revoked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// argon2 takes tens of milliseconds of CPU: keep it off the async workers.
async fn verify_blocking(password: &str, hash: Option<String>) -> Result<bool, SessionError> {
    let password = Secret::new(password);
    tokio::task::spawn_blocking(move || password::verify(password.expose(), hash.as_deref()))
        .await
        .map_err(|e| SessionError::Internal(format!("password check failed: {e}")))
}

/// Hashes a password off the async workers.
pub async fn hash_blocking(password: &str) -> Result<String, SessionError> {
    let password = Secret::new(password);
    tokio::task::spawn_blocking(move || password::hash(password.expose()))
        .await
        .map_err(|e| SessionError::Internal(format!("password hashing failed: {e}")))?
        .map_err(|e| SessionError::Internal(format!("password hashing failed: {e}")))
}
