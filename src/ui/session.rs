//! Browser sessions: the `tollgate_ui` cookie, the session it names in the store, and the
//! [`Session`] extractor that turns it into the API's [`Caller`].
//!
//! The cookie holds a random token (`tg-ui-` + 43 base62 characters, about 256 bits); the
//! store holds its SHA-256 only, so a copy of the database opens no session. A session is
//! looked up on every request, so that sign-out and expiry end it on every replica at once,
//! and its user is read with it, so that a deleted or blocked user, or a changed role,
//! applies to the very next request. A master-key session carries the master key's
//! fingerprint and ends when the master key changes.
//!
//! CSRF: each session's token for forms is derived from the cookie's token
//! (SHA-256 with a label of its own), so it needs no storage, differs between sessions,
//! and does not reveal the cookie. Forms carry it in a hidden field; [`super::form`]
//! checks it in constant time. The sign-in forms, which have no session yet, use the same
//! derivation from a short-lived `tollgate_ui_signin` cookie (double submit).

use super::web::{Site, UiError};
use super::{Ui, UiState};
use crate::admin::{Caller, Who};
use crate::authn::api_key::random_token;
use crate::domain::{self, Timestamp};
use crate::store::{Actor, NewUiSession, UiHolder};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The session cookie.
pub const SESSION_COOKIE: &str = "tollgate_ui";
/// The sign-in forms' double-submit cookie.
pub const SIGN_IN_COOKIE: &str = "tollgate_ui_signin";
/// How long the sign-in forms' cookie lasts: a sign-in page left open longer is reloaded.
const SIGN_IN_COOKIE_SECS: i64 = 3600;

const TOKEN_PREFIX: &str = "tg-ui-";
const TOKEN_LEN: usize = 43;

/// A new random token for a cookie.
pub fn new_token() -> String {
    random_token(TOKEN_PREFIX, TOKEN_LEN)
}

/// Whether `value` has the shape of a token we mint (anything else is not looked up).
fn is_token(value: &str) -> bool {
    value.len() == TOKEN_PREFIX.len() + TOKEN_LEN
        && value.starts_with(TOKEN_PREFIX)
        && value[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// SHA-256 of a token, lowercase hex: what the store keeps.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The CSRF token of the session (or sign-in cookie) whose token is `token`.
pub fn csrf_of(token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tollgate ui csrf\0");
    hasher.update(token.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether `presented` is the CSRF token of `token`, compared in constant time.
pub fn csrf_matches(token: &str, presented: &str) -> bool {
    let expected = csrf_of(token);
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// The value of cookie `name` in the request, when it has the shape of our tokens.
pub fn cookie_token<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookie(headers, name).filter(|v| is_token(v))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// How far a cookie is sent back.
#[derive(Clone, Copy)]
pub enum SameSite {
    /// With top-level navigations from other sites (following a link), never with their
    /// form posts.
    Lax,
    /// Only with requests this site starts.
    Strict,
}

/// A `Set-Cookie` value: HttpOnly always, `Secure` as [`Site::secure`] says. Without
/// `max_age` the cookie lasts until the browser closes; `Some(0)` deletes it.
pub fn set_cookie(
    site: &Site,
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<i64>,
    same_site: SameSite,
) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path={path}; HttpOnly");
    cookie.push_str(match same_site {
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
    });
    if site.secure {
        cookie.push_str("; Secure");
    }
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    HeaderValue::from_str(&cookie).expect("cookie names, tokens and paths are printable ASCII")
}

/// Deletes the session cookie.
pub fn clear_session_cookie(site: &Site) -> HeaderValue {
    set_cookie(site, SESSION_COOKIE, "", &site.base, Some(0), SameSite::Lax)
}

/// Deletes the sign-in forms' cookie (once signed in).
pub fn clear_sign_in_cookie(site: &Site) -> HeaderValue {
    set_cookie(
        site,
        SIGN_IN_COOKIE,
        "",
        &site.base,
        Some(0),
        SameSite::Strict,
    )
}

/// The sign-in forms' cookie: the request's when it has one, else a new one to set.
pub fn sign_in_token(headers: &HeaderMap, site: &Site) -> (String, Option<HeaderValue>) {
    match cookie_token(headers, SIGN_IN_COOKIE) {
        Some(token) => (token.to_owned(), None),
        None => {
            let token = new_token();
            let cookie = set_cookie(
                site,
                SIGN_IN_COOKIE,
                &token,
                &site.base,
                Some(SIGN_IN_COOKIE_SECS),
                SameSite::Strict,
            );
            (token, Some(cookie))
        }
    }
}

/// A signed-in browser: who (the API's [`Caller`], role read now), its CSRF token and
/// where the UI is. Taking it makes a page need a session: without one, the browser is
/// sent to the sign-in page, and back here afterwards.
pub struct Session {
    /// The session's id (in the audit log; never the token).
    pub id: String,
    pub caller: Caller,
    /// The CSRF token of this session's forms.
    pub csrf: String,
    pub site: Site,
    pub expires_at: Timestamp,
    /// The session's token, to check a form's CSRF field against.
    token: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        csrf_matches(&self.token, presented)
    }
}

/// Why there is no session to use.
pub enum NoSession {
    /// No session cookie.
    Absent,
    /// The cookie names no live session, or its holder can no longer use it; the reason
    /// is shown on the sign-in page.
    Ended(Ended),
    /// The store could not be asked.
    Failed(UiError),
}

/// Why a session ended, as the sign-in page says it (`?ended=`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Expired, signed out, or ended by a password change.
    Expired,
    /// The user was deleted.
    Gone,
    Blocked,
    /// The master key it was opened with is no longer the master key.
    MasterChanged,
    /// The browser signed out.
    SignedOut,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Expired => "expired",
            Ended::Gone => "gone",
            Ended::Blocked => "blocked",
            Ended::MasterChanged => "master",
            Ended::SignedOut => "signed_out",
        }
    }

    pub fn parse(text: &str) -> Option<Ended> {
        [
            Ended::Expired,
            Ended::Gone,
            Ended::Blocked,
            Ended::MasterChanged,
            Ended::SignedOut,
        ]
        .into_iter()
        .find(|e| e.as_str() == text)
    }

    /// What the sign-in page says.
    pub fn message(self) -> &'static str {
        match self {
            Ended::Expired => "Your session has ended. Sign in again.",
            Ended::Gone => "Your session has ended: the account no longer exists.",
            Ended::Blocked => "Your session has ended: the account is blocked.",
            Ended::MasterChanged => {
                "Your session has ended: the master key it was opened with has changed."
            }
            Ended::SignedOut => "You have signed out.",
        }
    }
}

/// The live session the request's cookie names, with its holder as stored now.
pub async fn find(ui: &Ui, headers: &HeaderMap, site: Site) -> Result<Session, NoSession> {
    let token = cookie_token(headers, SESSION_COOKIE).ok_or(NoSession::Absent)?;
    let app = &ui.app;
    let found = app
        .store
        .ui_session(&token_hash(token), domain::now())
        .await
        .map_err(|e| NoSession::Failed(e.into()))?;
    let Some(found) = found else {
        return Err(NoSession::Ended(Ended::Expired));
    };
    let ended = match (&found.holder, &found.user) {
        (UiHolder::User(_), None) => Some(Ended::Gone),
        (UiHolder::User(_), Some(user)) if user.blocked => Some(Ended::Blocked),
        (UiHolder::Master { tag }, _) if *tag != app.auth.master.fingerprint() => {
            Some(Ended::MasterChanged)
        }
        _ => None,
    };
    if let Some(ended) = ended {
        // Nobody can use it any more: it goes now rather than at its expiry.
        app.store
            .delete_ui_session(None, &found.id)
            .await
            .map_err(|e| NoSession::Failed(e.into()))?;
        return Err(NoSession::Ended(ended));
    }
    let (who, name) = match found.user {
        Some(user) => {
            let name = format!("user:{}", user.id);
            (Who::User(Arc::new(user)), name)
        }
        None => (Who::Master, "master".to_owned()),
    };
    Ok(Session {
        id: found.id,
        caller: Caller {
            who,
            actor: Actor::new(name, site.source.clone()),
        },
        csrf: csrf_of(token),
        site,
        expires_at: found.expires_at,
        token: token.to_owned(),
    })
}

/// Where a request without a usable session goes: the sign-in page, told to come back to
/// where the request was going (pages only: after a form post, to the page the form was
/// on is not known, so to the start).
pub fn to_sign_in(site: &Site, parts: &Parts, why: NoSession) -> Response {
    let ended = match why {
        NoSession::Absent => None,
        NoSession::Ended(ended) => Some(ended),
        NoSession::Failed(e) => return e.into_response(),
    };
    let mut query = Vec::new();
    if parts.method == axum::http::Method::GET {
        let path = parts.uri.path();
        let under = path.strip_prefix("/ui").unwrap_or(path);
        let next = match parts.uri.query() {
            Some(q) => format!("{under}?{q}"),
            None => under.to_owned(),
        };
        if is_local_path(&next) && next != "/" && !next.is_empty() {
            query.push(format!("next={}", url_encoded(&next)));
        }
    }
    if let Some(ended) = ended {
        query.push(format!("ended={}", ended.as_str()));
    }
    let location = match query.is_empty() {
        true => "/login".to_owned(),
        false => format!("/login?{}", query.join("&")),
    };
    let mut response = site.redirect(&location);
    if ended.is_some() {
        response
            .headers_mut()
            .append(header::SET_COOKIE, clear_session_cookie(site));
    }
    response
}

/// Whether `path` is a path under the UI that is safe to send a browser to after sign-in:
/// `/keys?q=x`, never `//host` or anything with a backslash or a control character.
pub fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= 1024
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
}

/// `text` for a query string.
pub fn url_encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl FromRequestParts<UiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState) -> Result<Session, Response> {
        let site = Site::of(&parts.headers, &parts.extensions, ui);
        match find(ui, &parts.headers, site.clone()).await {
            Ok(session) => Ok(session),
            Err(why) => Err(to_sign_in(&site, parts, why)),
        }
    }
}

/// Opens a session for `holder` (the checks of how they signed in are done): stores it
/// and answers the `Set-Cookie` that hands its token to the browser.
pub async fn open(
    ui: &Ui,
    site: &Site,
    holder: UiHolder,
    method: &'static str,
) -> Result<HeaderValue, UiError> {
    let token = new_token();
    let ttl = i64::try_from(ui.app.config.ui.session_ttl.as_secs()).unwrap_or(i64::MAX);
    let actor = match &holder {
        UiHolder::User(id) => Actor::new(format!("user:{id}"), site.source.clone()),
        UiHolder::Master { .. } => Actor::new("master", site.source.clone()),
    };
    ui.app
        .store
        .create_ui_session(
            &actor,
            NewUiSession {
                token_hash: token_hash(&token),
                holder,
                expires_at: domain::now().saturating_add(ttl),
                source: site.source.clone(),
                method,
            },
        )
        .await?;
    // No Max-Age: the cookie goes when the browser closes; the server ends the session
    // at `ui.session_ttl` whatever the browser keeps.
    Ok(set_cookie(
        site,
        SESSION_COOKIE,
        &token,
        &site.base,
        None,
        SameSite::Lax,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_one_shape_and_their_csrf_tokens_differ() {
        let a = new_token();
        let b = new_token();
        assert!(is_token(&a) && is_token(&b));
        assert_ne!(a, b);
        assert!(!is_token("tg-ui-short"));
        assert!(!is_token(&format!("{}!", &a[..a.len() - 1])));
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert_ne!(
            csrf_of(&a),
            token_hash(&a),
            "the form token is not the stored hash"
        );
        assert!(csrf_matches(&a, &csrf_of(&a)));
        assert!(!csrf_matches(&a, &csrf_of(&b)));
        assert!(!csrf_matches(&a, ""));
        assert!(!csrf_matches(&a, &a));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; tollgate_ui=abc ;x=y"),
        );
        assert_eq!(cookie(&headers, "tollgate_ui"), Some("abc"));
        assert_eq!(cookie(&headers, "x"), Some("y"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert_eq!(cookie_token(&headers, "tollgate_ui"), None, "not our shape");
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert!(is_local_path("/keys?q=a%20b&status=active"));
        for bad in [
            "//evil.example",
            "/\\evil",
            "https://evil",
            "keys",
            "/a b",
            "/\u{7f}",
        ] {
            assert!(!is_local_path(bad), "{bad:?}");
        }
    }
}
