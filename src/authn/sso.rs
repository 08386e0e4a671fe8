//! Signing in with SSO: the OpenID Connect authorization code flow with PKCE (S256) at an
//! issuer of `auth.oidc` that has a `ui` client, ending in the same user a bearer token of
//! that person resolves to in Check.
//!
//! The web UI owns the two routes and its own session; this module does everything between:
//! - [`Sso::start`] (`GET /ui/auth/sso/{issuer}`): picks the issuer's
//!   `authorization_endpoint` from its discovery document, makes a random `state`, `nonce`,
//!   PKCE code verifier and browser token, stores the pending sign-in ([`PendingSso`]) for
//!   [`PENDING_TTL_SECS`] and answers where to send the browser, and the browser token to
//!   keep in a cookie until the callback.
//! - [`Sso::finish`] (`GET /ui/auth/callback`): takes the pending sign-in by its state (once:
//!   a replayed or expired state is refused), checks that the same browser comes back, reads
//!   the issuer's answer (a code, or its `error`), exchanges the code with the verifier at
//!   the `token_endpoint` (client authentication: none for a public client;
//!   `client_secret_basic`, else `client_secret_post`, as the discovery document allows, for
//!   a confidential one), verifies the ID token with the issuer's cached keys
//!   ([`OidcVerifier::verify_id_token`]: audience the `client_id`, `nonce`, exact `iss`,
//!   expiry with the issuer's `leeway`), and resolves its identity through
//!   [`Authenticator::oidc_user`], the code path of tokens in Check (link, provision, sync
//!   role and teams from groups).
//!
//! Pending sign-ins live in the store, not in a cookie, so the browser may come back to any
//! replica and a state can be used only once across all of them. The browser token binds a
//! sign-in to the browser that started it (RFC 6749 §10.12): a callback link someone else
//! started does not sign this browser in to their account.
//!
//! Every failure is an [`SsoError`] whose message can be shown to the person signing in; no
//! message, log line or `Debug` output carries the code, a token, the verifier or the client
//! secret. A message may quote the issuer's own words (its `error_description`), cut to
//! printable ASCII: escape it like any text. A failed or successful sign-in is logged here,
//! once.
//!
//! For the UI: build one [`Sso`] with [`Sso::new`] (`None` when no issuer has `ui`); list
//! the buttons with [`Sso::providers`]; on start, redirect to
//! [`SsoStart::authorization_url`] and set [`SsoStart::browser_token`] as an HttpOnly,
//! SameSite=Lax cookie (Secure over https) for [`SsoStart::expires_in`] seconds; on the
//! callback, deserialize the query into [`SsoCallback`], pass the cookie's value to
//! [`Sso::finish`], delete the cookie, and on success start the UI session for
//! [`SignedIn::user`] and redirect to the UI's path prefix followed by
//! [`SignedIn::return_to`].

use super::jwt::JwtRejection;
use super::oidc::{IdTokenExpected, OidcError, ProviderMetadata};
use super::{Authenticator, OidcUserError};
use crate::backend::BackendError;
use crate::config::Config;
use crate::domain::{Timestamp, User};
use crate::secret::Secret;
use crate::store::{Actor, PendingSso, SharedStore, SsoTake, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a started sign-in can be finished: the time to sign in at the issuer.
pub const PENDING_TTL_SECS: i64 = 600;

/// Where a sign-in whose `return_to` was missing or not a page of the web UI ends.
pub const DEFAULT_RETURN_TO: &str = "/ui/";

/// The scopes every sign-in asks for; `auth.oidc[].ui.scopes` are added.
const BASE_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// The longest token endpoint answer read (an ID token is at most 64 KiB).
const MAX_TOKEN_RESPONSE_BYTES: usize = 1024 * 1024;

/// Longest `state` accepted from a callback (tollgate's are 43 characters).
const MAX_STATE_LEN: usize = 128;

/// Longest `return_to` kept.
const MAX_RETURN_TO_LEN: usize = 2048;

/// A sign-in button: an issuer people can sign in at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoProvider {
    /// What [`Sso::start`] takes: the issuer's `ui.name`, else its position in `auth.oidc`.
    pub id: String,
    /// The button's label: `ui.name`, else the issuer's host.
    pub label: String,
    pub issuer: String,
}

/// A started sign-in: where to send the browser, and what it must bring back.
#[derive(Debug)]
pub struct SsoStart {
    /// The issuer's authorization endpoint with the request's parameters: redirect the
    /// browser there.
    pub authorization_url: String,
    /// Keep this in the browser until the callback (an HttpOnly, SameSite=Lax cookie that
    /// lasts `expires_in` seconds) and pass it to [`Sso::finish`].
    pub browser_token: Secret,
    /// Seconds the sign-in can be finished in ([`PENDING_TTL_SECS`]).
    pub expires_in: i64,
}

/// The query of the redirect back from the issuer (`GET /ui/auth/callback?…`), as the UI's
/// router deserializes it. `Debug` does not show the code.
#[derive(Clone, Default, Deserialize)]
pub struct SsoCallback {
    pub state: Option<String>,
    pub code: Option<String>,
    /// The issuer refused or failed the sign-in (RFC 6749 §4.1.2.1).
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// The issuer's identifier (RFC 9207), when it sends one.
    pub iss: Option<String>,
}

impl fmt::Debug for SsoCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsoCallback")
            .field("state", &self.state.as_ref().map(|_| "[redacted]"))
            .field("code", &self.code.as_ref().map(|_| "[redacted]"))
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .field("iss", &self.iss)
            .finish()
    }
}

/// A finished sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: Arc<User>,
    /// The page of the web UI to go to now: a path under `/ui`, relative to tollgate's root
    /// (put the UI's path prefix in front).
    pub return_to: String,
    /// The issuer signed in at.
    pub issuer: String,
}

/// Why a sign-in with SSO did not happen. `Display` is a sentence for the person signing
/// in; it never holds the code, a token, the verifier or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// `start` was given an issuer that is not configured for sign-in.
    #[error("There is no sign-in provider `{0}`")]
    UnknownProvider(String),
    /// The redirect URI the UI passed is not an absolute http(s) URL of `/ui/auth/callback`.
    #[error(
        "The sign-in callback address `{0}` is not an http(s) URL ending in /ui/auth/callback"
    )]
    InvalidRedirectUri(String),
    /// The issuer cannot be reached or answered a server error.
    #[error("The sign-in provider {issuer} cannot be reached right now ({reason}); try again in a moment")]
    ProviderUnavailable { issuer: String, reason: String },
    /// The issuer does not offer what this sign-in needs (no authorization endpoint, no
    /// PKCE S256, no client authentication tollgate can do).
    #[error("Signing in at {issuer} is not possible: {reason}")]
    ProviderMisconfigured { issuer: String, reason: String },
    /// The callback carries no `state`.
    #[error("The answer of the sign-in provider has no `state`; start signing in again")]
    MissingState,
    /// No such pending sign-in: never started here, or already finished (a replay).
    #[error("This sign-in is unknown or was already used; start signing in again")]
    UnknownState,
    /// The sign-in was started more than [`PENDING_TTL_SECS`] ago.
    #[error("This sign-in took more than {} minutes; start signing in again", PENDING_TTL_SECS / 60)]
    Expired,
    /// The browser that came back is not the one that started the sign-in (no or another
    /// browser token).
    #[error("This sign-in was started in another browser, or this browser lost its sign-in cookie; start signing in again")]
    OtherBrowser,
    /// The answer names another issuer than the one the sign-in was started at, or none
    /// although the issuer always names itself (RFC 9207: a mix-up of providers).
    #[error("The answer does not come from the sign-in provider the sign-in was started at; start signing in again")]
    WrongIssuer,
    /// The issuer refused or failed the sign-in (`error=access_denied`, …).
    #[error("The sign-in provider refused the sign-in: {}", with_description(.error, .description))]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// The callback carries neither a code nor an error.
    #[error("The answer of the sign-in provider has no code; start signing in again")]
    MissingCode,
    /// The token endpoint refused the code (a tampered or used code, a verifier that does
    /// not match, a client it does not know).
    #[error("The sign-in provider refused to complete the sign-in: {}", with_description(.error, .description))]
    CodeRefused {
        error: String,
        description: Option<String>,
    },
    /// The ID token failed verification.
    #[error("The sign-in provider's ID token was refused: {0}")]
    InvalidIdToken(JwtRejection),
    /// The ID token is signed with a key the issuer may have just published; its keys can
    /// be read again in `retry_after` seconds.
    #[error("The sign-in provider's signing key is not known yet; try again in {retry_after}s")]
    KeyNotFetchedYet { retry_after: u64 },
    /// The identity's claims admit nobody (its `org_claim` names no organization, or one
    /// its account is not in).
    #[error("{0}")]
    IdentityRefused(String),
    /// The identity is linked to no user and its issuer does not provision users.
    #[error("This identity has no tollgate account; ask an admin to create one with your email")]
    NoAccount,
    /// The user was deleted while signing in.
    #[error("The account of this identity no longer exists")]
    AccountGone,
    #[error("This account is blocked")]
    Blocked,
    /// tollgate's database could not be reached.
    #[error("tollgate cannot sign you in right now ({0}); try again in a moment")]
    Unavailable(BackendError),
}

impl SsoError {
    /// The same attempt can succeed shortly (an outage, not a refusal): the UI answers 503
    /// rather than 4xx.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SsoError::ProviderUnavailable { .. }
                | SsoError::KeyNotFetchedYet { .. }
                | SsoError::Unavailable(_)
        )
    }

    /// A short name of the failure, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SsoError::UnknownProvider(_) => "unknown_provider",
            SsoError::InvalidRedirectUri(_) => "invalid_redirect_uri",
            SsoError::ProviderUnavailable { .. } => "provider_unavailable",
            SsoError::ProviderMisconfigured { .. } => "provider_misconfigured",
            SsoError::MissingState => "missing_state",
            SsoError::UnknownState => "unknown_state",
            SsoError::Expired => "expired",
            SsoError::OtherBrowser => "other_browser",
            SsoError::WrongIssuer => "wrong_issuer",
            SsoError::Refused { .. } => "refused",
            SsoError::MissingCode => "missing_code",
            SsoError::CodeRefused { .. } => "code_refused",
            SsoError::InvalidIdToken(_) => "invalid_id_token",
            SsoError::KeyNotFetchedYet { .. } => "key_not_fetched_yet",
            SsoError::NoAccount => "no_account",
            SsoError::IdentityRefused(_) => "identity_refused",
            SsoError::AccountGone => "account_gone",
            SsoError::Blocked => "blocked",
            SsoError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for SsoError {
    fn from(e: StoreError) -> Self {
        SsoError::Unavailable(e.into())
    }
}

fn with_description(error: &str, description: &Option<String>) -> String {
    match description {
        Some(d) => format!("{error} ({d})"),
        None => error.to_owned(),
    }
}

/// How tollgate authenticates to an issuer's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// A public client: `client_id` in the form, PKCE only.
    None,
    /// `authorization: Basic` of the form-encoded id and secret (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form.
    Post,
}

/// One issuer's sign-in client, from `auth.oidc[].ui`.
struct Client {
    /// [`SsoProvider::id`].
    id: String,
    /// Its position in `auth.oidc`.
    index: usize,
    label: String,
    issuer: String,
    client_id: String,
    client_secret: Option<Secret>,
    /// `openid email profile` and the configured scopes, each once.
    scope: String,
}

impl Client {
    /// The client authentication to use with an issuer that supports `methods`: none for a
    /// public client; `client_secret_basic` when offered (OpenID Connect's default), else
    /// `client_secret_post`.
    fn auth(&self, methods: &[String]) -> Result<ClientAuth, SsoError> {
        if self.client_secret.is_none() {
            return Ok(ClientAuth::None);
        }
        let offers = |m: &str| methods.iter().any(|x| x == m);
        if offers("client_secret_basic") {
            Ok(ClientAuth::Basic)
        } else if offers("client_secret_post") {
            Ok(ClientAuth::Post)
        } else {
            Err(SsoError::ProviderMisconfigured {
                issuer: self.issuer.clone(),
                reason: format!(
                    "its token endpoint takes neither client_secret_basic nor client_secret_post (it offers: {}); configure a public client (no client_secret) or another method at the issuer",
                    shown(&methods.join(", "), 200)
                ),
            })
        }
    }
}

/// Sign-in with SSO at the issuers of `auth.oidc` that have a `ui` client.
pub struct Sso {
    clients: Vec<Client>,
    auth: Arc<Authenticator>,
    store: SharedStore,
    http: reqwest::Client,
}

impl fmt::Debug for Sso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sso")
            .field(
                "issuers",
                &self.clients.iter().map(|c| &c.issuer).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Sso {
    /// Sign-in at the issuers of `config` that have `ui`, or `None` when none has. The
    /// token endpoint is called with 2 s connect / 10 s total timeouts and without following
    /// redirects.
    pub fn new(config: &Config, auth: Arc<Authenticator>, store: SharedStore) -> Option<Sso> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with rustls and no custom settings builds");
        Self::with_client(config, auth, store, http)
    }

    /// [`Sso::new`] calling token endpoints through `http` (a proxy, extra root
    /// certificates, or none of the environment's proxy settings for loopback tests).
    pub fn with_client(
        config: &Config,
        auth: Arc<Authenticator>,
        store: SharedStore,
        http: reqwest::Client,
    ) -> Option<Sso> {
        let clients: Vec<Client> = config
            .auth
            .oidc
            .iter()
            .enumerate()
            .filter_map(|(index, issuer)| {
                let ui = issuer.ui.as_ref()?;
                let mut scopes: Vec<&str> = BASE_SCOPES.to_vec();
                for scope in &ui.scopes {
                    if !scopes.contains(&scope.as_str()) {
                        scopes.push(scope);
                    }
                }
                let host = url::Url::parse(&issuer.issuer)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_else(|| issuer.issuer.clone());
                Some(Client {
                    id: ui.name.clone().unwrap_or_else(|| index.to_string()),
                    index,
                    label: ui.name.clone().unwrap_or(host),
                    issuer: issuer.issuer.clone(),
                    client_id: ui.client_id.clone(),
                    client_secret: ui.client_secret.clone(),
                    scope: scopes.join(" "),
                })
            })
            .collect();
        (!clients.is_empty()).then_some(Sso {
            clients,
            auth,
            store,
            http,
        })
    }

    /// The issuers people can sign in at, in the order of `auth.oidc`.
    pub fn providers(&self) -> Vec<SsoProvider> {
        self.clients
            .iter()
            .map(|c| SsoProvider {
                id: c.id.clone(),
                label: c.label.clone(),
                issuer: c.issuer.clone(),
            })
            .collect()
    }

    /// The client of `provider`: an issuer's `ui.name`, or its position in `auth.oidc`.
    fn client(&self, provider: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == provider).or_else(|| {
            let index: usize = provider.parse().ok()?;
            self.clients.iter().find(|c| c.index == index)
        })
    }

    fn client_of_issuer(&self, issuer: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.issuer == issuer)
    }

    /// Starts a sign-in at `provider` (see [`Sso::providers`]): the issuer will send the
    /// browser back to `redirect_uri` (tollgate's `/ui/auth/callback` as the browser reaches
    /// it, registered at the issuer), and [`Sso::finish`] will send it on to `return_to`
    /// when that is a page of the web UI ([`local_return_to`]), else to
    /// [`DEFAULT_RETURN_TO`].
    pub async fn start(
        &self,
        provider: &str,
        redirect_uri: &str,
        return_to: Option<&str>,
        now: Timestamp,
    ) -> Result<SsoStart, SsoError> {
        let client = self
            .client(provider)
            .ok_or_else(|| SsoError::UnknownProvider(shown(provider, 64)))?;
        check_redirect_uri(redirect_uri)?;
        let metadata = self.metadata(&client.issuer).await?;
        let misconfigured = |reason: &str| SsoError::ProviderMisconfigured {
            issuer: client.issuer.clone(),
            reason: reason.to_owned(),
        };
        let endpoint = metadata.authorization_endpoint.as_deref().ok_or_else(|| {
            misconfigured("its discovery document has no http(s) `authorization_endpoint`")
        })?;
        if metadata.token_endpoint.is_none() {
            return Err(misconfigured(
                "its discovery document has no http(s) `token_endpoint`",
            ));
        }
        if let Some(methods) = &metadata.code_challenge_methods {
            if !methods.iter().any(|m| m == "S256") {
                return Err(misconfigured(
                    "it does not offer PKCE with S256 (`code_challenge_methods_supported`)",
                ));
            }
        }
        // Refused now rather than after the person has signed in at the issuer.
        client.auth(&metadata.token_endpoint_auth_methods)?;
        let mut url = url::Url::parse(endpoint)
            .map_err(|_| misconfigured("its `authorization_endpoint` is not a URL"))?;

        let state = random_token();
        let nonce = random_token();
        let verifier = Secret::new(random_token());
        let browser_token = Secret::new(random_token());
        let return_to = return_to
            .and_then(local_return_to)
            .unwrap_or(DEFAULT_RETURN_TO);
        self.store
            .put_sso_login(PendingSso {
                state_hash: sha256_hex(&state),
                browser_hash: sha256_hex(browser_token.expose()),
                issuer: client.issuer.clone(),
                code_verifier: verifier.clone(),
                nonce: nonce.clone(),
                redirect_uri: redirect_uri.to_owned(),
                return_to: return_to.to_owned(),
                created_at: now,
                expires_at: now.saturating_add(PENDING_TTL_SECS),
            })
            .await?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &client.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &code_challenge(verifier.expose()))
            .append_pair("code_challenge_method", "S256");
        tracing::debug!(issuer = %client.issuer, "started a sign-in with SSO");
        Ok(SsoStart {
            authorization_url: url.into(),
            browser_token,
            expires_in: PENDING_TTL_SECS,
        })
    }

    /// Finishes the sign-in the issuer's answer `callback` belongs to, for the browser that
    /// brought `browser_token` (the [`SsoStart::browser_token`] of its start): the user it
    /// signed in as, found, linked or provisioned and synced as for a token in Check, and
    /// where to go now. `source` is the client's address, for the audit log.
    pub async fn finish(
        &self,
        callback: &SsoCallback,
        browser_token: Option<&str>,
        source: Option<&str>,
        now: Timestamp,
    ) -> Result<SignedIn, SsoError> {
        let mut issuer = None;
        let outcome = self
            .finish_inner(callback, browser_token, source, now, &mut issuer)
            .await;
        let issuer = issuer.as_deref().unwrap_or("(unknown)");
        match &outcome {
            Ok(signed_in) => {
                tracing::info!(user.id = %signed_in.user.id, %issuer, "signed in with SSO");
            }
            Err(e) => {
                tracing::info!(%issuer, sso.error = e.kind(), reason = %e, "sign-in with SSO refused");
            }
        }
        outcome
    }

    async fn finish_inner(
        &self,
        callback: &SsoCallback,
        browser_token: Option<&str>,
        source: Option<&str>,
        now: Timestamp,
        issuer_seen: &mut Option<String>,
    ) -> Result<SignedIn, SsoError> {
        let state = callback
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(SsoError::MissingState)?;
        if state.len() > MAX_STATE_LEN {
            return Err(SsoError::UnknownState);
        }
        // Taken (deleted) before anything else is looked at: whatever happens next, this
        // state cannot be used again.
        let pending = match self.store.take_sso_login(&sha256_hex(state), now).await? {
            SsoTake::Pending(pending) => pending,
            SsoTake::Expired => return Err(SsoError::Expired),
            SsoTake::Unknown => return Err(SsoError::UnknownState),
        };
        *issuer_seen = Some(pending.issuer.clone());
        let same_browser = browser_token.is_some_and(|token| {
            bool::from(
                sha256_hex(token)
                    .as_bytes()
                    .ct_eq(pending.browser_hash.as_bytes()),
            )
        });
        if !same_browser {
            return Err(SsoError::OtherBrowser);
        }
        let client = self
            .client_of_issuer(&pending.issuer)
            .ok_or_else(|| SsoError::UnknownProvider(shown(&pending.issuer, 200)))?;
        let metadata = self.metadata(&client.issuer).await?;
        match callback.iss.as_deref() {
            Some(iss) if iss != client.issuer => return Err(SsoError::WrongIssuer),
            None if metadata.iss_parameter_supported => return Err(SsoError::WrongIssuer),
            _ => {}
        }
        if let Some(error) = &callback.error {
            let hidden = [Some(state), callback.code.as_deref()];
            return Err(SsoError::Refused {
                error: shown(&redact(error, &hidden), 64),
                description: callback
                    .error_description
                    .as_deref()
                    .map(|d| shown(&redact(d, &hidden), 300))
                    .filter(|d| !d.is_empty()),
            });
        }
        let code = callback
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or(SsoError::MissingCode)?;
        let id_token = self.exchange(client, &metadata, &pending, code).await?;
        let identity = match self
            .auth_verifier()?
            .verify_id_token(
                &client.issuer,
                id_token.expose(),
                IdTokenExpected {
                    client_id: &client.client_id,
                    nonce: &pending.nonce,
                },
                now,
            )
            .await
        {
            Ok(identity) => identity,
            Err(OidcError::Rejected(r)) => return Err(SsoError::InvalidIdToken(r)),
            Err(OidcError::KeyNotFetchedYet { retry_in, .. }) => {
                return Err(SsoError::KeyNotFetchedYet {
                    retry_after: retry_in.as_secs().max(1),
                })
            }
            Err(OidcError::Unavailable { issuer, reason }) => {
                return Err(SsoError::ProviderUnavailable { issuer, reason })
            }
        };
        let user = self
            .auth
            .oidc_user(&identity, source)
            .await
            .map_err(|e| match e {
                OidcUserError::NoAccount => SsoError::NoAccount,
                OidcUserError::Gone => SsoError::AccountGone,
                OidcUserError::Refused(why) => SsoError::IdentityRefused(why),
                OidcUserError::Unavailable(e) => SsoError::Unavailable(e),
            })?;
        let actor = Actor::new(format!("user:{}", user.id), source.map(str::to_owned));
        let details = json!({ "method": "sso", "issuer": client.issuer });
        if user.blocked {
            let mut details = details;
            details["reason"] = json!("blocked");
            self.store
                .record_event(&actor, "auth.login_failed", Some(&user.id), details)
                .await?;
            return Err(SsoError::Blocked);
        }
        self.store
            .record_event(&actor, "auth.login", Some(&user.id), details)
            .await?;
        Ok(SignedIn {
            user,
            return_to: pending.return_to,
            issuer: client.issuer.clone(),
        })
    }

    fn auth_verifier(&self) -> Result<&super::oidc::OidcVerifier, SsoError> {
        // `auth.oidc` lists the issuers of every client, so the verifier exists.
        self.auth
            .oidc
            .as_ref()
            .map(|(verifier, _)| verifier.as_ref())
            .ok_or_else(|| SsoError::UnknownProvider("(no OIDC issuer)".into()))
    }

    async fn metadata(&self, issuer: &str) -> Result<Arc<ProviderMetadata>, SsoError> {
        self.auth_verifier()?
            .provider_metadata(issuer)
            .await
            .map_err(|e| match e {
                OidcError::Unavailable { issuer, reason } => {
                    SsoError::ProviderUnavailable { issuer, reason }
                }
                // Only an issuer the verifier was not built with gets here.
                other => SsoError::ProviderMisconfigured {
                    issuer: issuer.to_owned(),
                    reason: other.to_string(),
                },
            })
    }

    /// Exchanges `code` at the token endpoint and answers the ID token.
    async fn exchange(
        &self,
        client: &Client,
        metadata: &ProviderMetadata,
        pending: &PendingSso,
        code: &str,
    ) -> Result<Secret, SsoError> {
        let unavailable = |reason: String| SsoError::ProviderUnavailable {
            issuer: client.issuer.clone(),
            reason,
        };
        let misconfigured = |reason: &str| SsoError::ProviderMisconfigured {
            issuer: client.issuer.clone(),
            reason: reason.to_owned(),
        };
        let endpoint = metadata.token_endpoint.as_deref().ok_or_else(|| {
            misconfigured("its discovery document has no http(s) `token_endpoint`")
        })?;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &pending.redirect_uri),
            ("code_verifier", pending.code_verifier.expose()),
        ];
        let mut request = self
            .http
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json");
        let secret = client.client_secret.as_ref().map(Secret::expose);
        match (client.auth(&metadata.token_endpoint_auth_methods)?, secret) {
            (ClientAuth::Basic, Some(secret)) => {
                let credentials =
                    format!("{}:{}", form_encode(&client.client_id), form_encode(secret));
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(credentials)
                    ),
                );
            }
            (ClientAuth::Post, Some(secret)) => {
                form.push(("client_id", &client.client_id));
                form.push(("client_secret", secret));
            }
            _ => form.push(("client_id", &client.client_id)),
        }
        // A transport error names the endpoint, never the form.
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(format!("POST {endpoint}: {}", without_url(e))))?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|len| len > MAX_TOKEN_RESPONSE_BYTES as u64)
        {
            return Err(misconfigured("its token endpoint answered more than 1 MiB"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(format!("POST {endpoint}: {}", without_url(e))))?;
        if body.len() > MAX_TOKEN_RESPONSE_BYTES {
            return Err(misconfigured("its token endpoint answered more than 1 MiB"));
        }
        let answer: Option<Value> = serde_json::from_slice(&body).ok();
        // What the issuer says may quote what it was sent: never let the code, the verifier
        // or the secret through.
        let hidden = [Some(code), Some(pending.code_verifier.expose()), secret];
        let text = |name: &str, max: usize| {
            answer
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .map(|s| shown(&redact(s, &hidden), max))
                .filter(|s| !s.is_empty())
        };
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(format!("its token endpoint answered {status}")));
        }
        if !status.is_success() {
            return Err(SsoError::CodeRefused {
                error: text("error", 64).unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
                description: text("error_description", 300),
            });
        }
        let Some(Value::Object(mut answer)) = answer else {
            return Err(misconfigured(
                "its token endpoint answered something else than JSON",
            ));
        };
        match answer.remove("id_token") {
            Some(Value::String(id_token)) => Ok(Secret::new(id_token)),
            _ => Err(misconfigured(
                "its token endpoint answered no ID token (is the `openid` scope allowed for this client?)",
            )),
        }
    }
}

/// `candidate` when it is a page of the web UI to send a browser to after signing in: a
/// path `/ui`, `/ui/…`, `/ui?…` or `/ui#…` of printable ASCII without backslashes, and
/// without `.`/`..` segments or encoded dots and slashes in its path (so it cannot step out
/// of `/ui`, nor be read as another host: no open redirect). Anything else: `None`.
pub fn local_return_to(candidate: &str) -> Option<&str> {
    let under_ui = candidate == "/ui"
        || ["/ui/", "/ui?", "/ui#"]
            .iter()
            .any(|p| candidate.starts_with(p));
    if !under_ui
        || candidate.len() > MAX_RETURN_TO_LEN
        || !candidate
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\')
    {
        return None;
    }
    let path = candidate
        .split(['?', '#'])
        .next()
        .unwrap_or(candidate)
        .to_ascii_lowercase();
    let stepping = path.split('/').any(|s| s == "." || s == "..")
        || ["%2e", "%2f", "%5c"].iter().any(|e| path.contains(e));
    (!stepping).then_some(candidate)
}

/// The redirect URI must be tollgate's callback as the browser reaches it.
fn check_redirect_uri(redirect_uri: &str) -> Result<(), SsoError> {
    let ok = url::Url::parse(redirect_uri).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.fragment().is_none()
            && u.query().is_none()
            && u.path().ends_with("/ui/auth/callback")
    });
    if ok {
        Ok(())
    } else {
        Err(SsoError::InvalidRedirectUri(shown(redirect_uri, 200)))
    }
}

/// 32 random bytes, base64url: a `state`, `nonce`, PKCE verifier (RFC 7636 §4.1: 43
/// characters of its alphabet) or browser token.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7636 §4.2, S256: BASE64URL(SHA-256(verifier)).
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `application/x-www-form-urlencoded` of one value, as `client_secret_basic` wants the id
/// and secret before they are joined (RFC 6749 §2.3.1).
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Text from the issuer or the browser made fit for a message: the characters RFC 6749
/// allows in `error` and `error_description` (printable ASCII but `"` and `\`), at most
/// `max` of them.
fn shown(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .take(max + 1)
        .collect();
    if out.len() > max {
        out.truncate(max);
        out.push('…');
    }
    out
}

/// `text` with every occurrence of the non-empty `secrets` replaced.
fn redact(text: &str, secrets: &[Option<&str>]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().flatten().filter(|s| !s.is_empty()) {
        out = out.replace(secret, "[redacted]");
    }
    out
}

/// A transport error without the URL reqwest puts in it (already named by the caller).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_in_the_ui() {
        for ok in [
            "/ui",
            "/ui/",
            "/ui/keys",
            "/ui/keys?page=2&q=a%20b",
            "/ui?x=1",
            "/ui/usage#chart",
            "/ui/keys?next=https://elsewhere.example/",
        ] {
            assert_eq!(local_return_to(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "https://evil.example/ui/",
            "//evil.example/ui/",
            "/\\evil.example",
            "/uix",
            "/admin/keys",
            "ui/keys",
            "/ui/../admin",
            "/ui/./keys",
            "/ui/%2e%2e/admin",
            "/ui/%2E%2e/admin",
            "/ui/.%2e/admin",
            "/ui/a%2f..%2fadmin",
            "/ui/\\evil",
            "/ui/keys\r\nlocation: x",
            "/ui/ keys",
            "/ui/é",
        ] {
            assert_eq!(local_return_to(bad), None, "{bad:?}");
        }
        assert_eq!(local_return_to(&format!("/ui/{}", "a".repeat(3000))), None);
    }

    #[test]
    fn redirect_uri_is_the_callback() {
        assert!(check_redirect_uri("https://tollgate.example/ui/auth/callback").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:9090/prefix/ui/auth/callback").is_ok());
        for bad in [
            "/ui/auth/callback",
            "https://tollgate.example/ui/auth/callback?x=1",
            "https://tollgate.example/ui/auth/callback#x",
            "https://tollgate.example/elsewhere",
            "javascript:alert(1)//ui/auth/callback",
        ] {
            assert!(
                matches!(
                    check_redirect_uri(bad),
                    Err(SsoError::InvalidRedirectUri(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn pkce_s256_as_rfc_7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let verifier = random_token();
        assert_eq!(verifier.len(), 43);
        assert!(verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(random_token(), verifier);
    }

    #[test]
    fn client_authentication_follows_the_discovery_document() {
        let client = |secret: Option<&str>| Client {
            id: "0".into(),
            index: 0,
            label: "id.example".into(),
            issuer: "https://id.example".into(),
            client_id: "tollgate".into(),
            client_secret: secret.map(Secret::new),
            scope: "openid".into(),
        };
        let methods = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            client(None)
                .auth(&methods(&["client_secret_basic"]))
                .unwrap(),
            ClientAuth::None
        );
        let confidential = client(Some("s3cret"));
        assert_eq!(
            confidential
                .auth(&methods(&["client_secret_post", "client_secret_basic"]))
                .unwrap(),
            ClientAuth::Basic
        );
        assert_eq!(
            confidential
                .auth(&methods(&["none", "client_secret_post"]))
                .unwrap(),
            ClientAuth::Post
        );
        let e = confidential
            .auth(&methods(&["private_key_jwt"]))
            .unwrap_err();
        assert!(e.to_string().contains("private_key_jwt"), "{e}");
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn issuer_text_is_cut_cleaned_and_redacted() {
        assert_eq!(shown("access_denied", 64), "access_denied");
        assert_eq!(shown("a\"b\\c\nd<é>", 64), "abcd<>");
        assert_eq!(shown(&"x".repeat(100), 10), format!("{}…", "x".repeat(10)));
        assert_eq!(
            redact(
                "code abc123 is bad for v3r",
                &[Some("abc123"), None, Some("v3r"), Some("")]
            ),
            "code [redacted] is bad for [redacted]"
        );
        assert_eq!(form_encode("a b:c%"), "a+b%3Ac%25");
    }

    #[test]
    fn debug_hides_the_code_and_state() {
        let callback = SsoCallback {
            state: Some("state-value".into()),
            code: Some("code-value".into()),
            ..SsoCallback::default()
        };
        let shown = format!("{callback:?}");
        assert!(
            !shown.contains("state-value") && !shown.contains("code-value"),
            "{shown}"
        );
    }
}
