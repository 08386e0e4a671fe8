//! "Sign in with SSO" in the web UI: the two routes around [`crate::authn::sso::Sso`].
//!
//! - `GET /ui/auth/sso/{provider}?next=`: starts a sign-in at an issuer of `auth.oidc` that
//!   has `ui` (its `ui.name`, or its position), with the redirect URI
//!   `{origin}{prefix}/ui/auth/callback` as the browser reaches the UI (register it at the
//!   issuer), keeps the browser token in the `tollgate_ui_sso` cookie (HttpOnly,
//!   SameSite=Lax so that it comes back with the issuer's redirect, path `{prefix}/ui/auth`,
//!   for the sign-in's 10 minutes) and sends the browser to the issuer. Starts count against
//!   `auth.login.per_address_per_minute` per client address, since each stores a row.
//! - `GET /ui/auth/callback`: finishes it with the cookie's token, deletes the cookie, and
//!   opens a browser session for the user (`ui.login` with `"method": "sso"`), then goes on
//!   to `next`. A refusal is shown on the sign-in page with its status: 503 when it may
//!   work in a moment, 403 for an account that cannot sign in, 401 when the issuer
//!   refused, else 400.

use super::form::StrictQuery;
use super::login::{self, next_or_home};
use super::session::{self, SameSite};
use super::web::{see_other, Site, UiError};
use super::UiState;
use crate::authn::sso::{SsoCallback, SsoError};
use crate::domain;
use crate::store::UiHolder;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/auth/sso/{provider}", get(start))
        .route("/ui/auth/callback", get(callback))
}

/// The cookie that holds a started sign-in's browser token until the callback.
pub const SSO_COOKIE: &str = "tollgate_ui_sso";

/// The path the SSO cookie is sent to: the start and the callback.
fn cookie_path(site: &Site) -> String {
    site.link("/auth")
}

/// The start address of a provider's sign-in button, going on to `next` afterwards.
pub fn start_url(site: &Site, provider: &str, next: &str) -> String {
    site.link(&format!(
        "/auth/sso/{}?next={}",
        session::url_encoded(provider),
        session::url_encoded(next)
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StartQuery {
    next: String,
}

async fn start(
    State(ui): State<UiState>,
    site: Site,
    headers: HeaderMap,
    Path(provider): Path<String>,
    StrictQuery(q): StrictQuery<StartQuery>,
) -> Response {
    let next = next_or_home(&q.next);
    let refused = |e: UiError| login::sso_refused(&ui, &site, &headers, next, e);
    let Some(sso) = &ui.sso else {
        return refused(UiError::not_found(
            "Sign-in with SSO is not configured on this gateway (no issuer of auth.oidc has `ui`).",
        ));
    };
    if let Some(address) = &site.source {
        if let Err(retry_after) = ui.ceremony_attempts.address(address, domain::now()) {
            let mut e = UiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many sign-in attempts; try again in {retry_after} s."),
            );
            e.retry_after = Some(retry_after);
            return refused(e);
        }
    }
    let Some(origin) = &site.origin else {
        return refused(UiError::bad_request(
            "The request names no host, so the sign-in provider cannot be told where to come back to.",
        ));
    };
    let redirect_uri = format!("{origin}{}/auth/callback", site.base);
    let return_to = format!("/ui{next}");
    let started = sso
        .start(&provider, &redirect_uri, Some(&return_to), domain::now())
        .await;
    let start = match started {
        Ok(start) => start,
        Err(e) => return refused(sso_error(&e)),
    };
    let mut response = see_other(&start.authorization_url);
    let cookie = session::set_cookie(
        &site,
        SSO_COOKIE,
        start.browser_token.expose(),
        &cookie_path(&site),
        Some(start.expires_in),
        SameSite::Lax,
    );
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

async fn callback(
    State(ui): State<UiState>,
    site: Site,
    headers: HeaderMap,
    StrictQuery(answer): StrictQuery<SsoCallback>,
) -> Response {
    let clear = session::set_cookie(
        &site,
        SSO_COOKIE,
        "",
        &cookie_path(&site),
        Some(0),
        SameSite::Lax,
    );
    let with_cleared = |mut response: Response, clear: HeaderValue| {
        response.headers_mut().append(header::SET_COOKIE, clear);
        response
    };
    let refused = |e: UiError| {
        with_cleared(
            login::sso_refused(&ui, &site, &headers, "/keys", e),
            clear.clone(),
        )
    };
    let Some(sso) = &ui.sso else {
        return refused(UiError::not_found(
            "Sign-in with SSO is not configured on this gateway.",
        ));
    };
    let browser_token = session::cookie(&headers, SSO_COOKIE).filter(|t| !t.is_empty());
    let finished = sso
        .finish(
            &answer,
            browser_token,
            site.source.as_deref(),
            domain::now(),
        )
        .await;
    let signed_in = match finished {
        Ok(signed_in) => signed_in,
        Err(e) => return refused(sso_error(&e)),
    };
    let holder = UiHolder::User(signed_in.user.id.clone());
    let cookie = match session::open(&ui, &site, holder, "sso").await {
        Ok(cookie) => cookie,
        Err(e) => return refused(e),
    };
    // `return_to` is a path under `/ui` (checked by `Sso`), relative to tollgate's root.
    let mut response = see_other(&format!("{}{}", site.prefix, signed_in.return_to));
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    headers.append(header::SET_COOKIE, session::clear_sign_in_cookie(&site));
    with_cleared(response, clear)
}

/// A refused sign-in as the sign-in page shows it.
fn sso_error(e: &SsoError) -> UiError {
    let status = match e {
        _ if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        SsoError::NoAccount
        | SsoError::AccountGone
        | SsoError::Blocked
        | SsoError::IdentityRefused(_) => StatusCode::FORBIDDEN,
        SsoError::Refused { .. } | SsoError::CodeRefused { .. } | SsoError::InvalidIdToken(_) => {
            StatusCode::UNAUTHORIZED
        }
        SsoError::UnknownProvider(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut error = UiError::new(status, format!("{e}."));
    if let SsoError::KeyNotFetchedYet { retry_after } = e {
        error.retry_after = Some(*retry_after);
    }
    error
}
