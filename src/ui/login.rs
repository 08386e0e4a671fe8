//! Signing in and out: `/ui/` (to the keys or to sign-in), `/ui/login` (username or email
//! and password, with the checks and lockout of `POST /v1/login`; and the master key, for
//! bootstrap), sign-out (`POST /ui/logout`).

use super::assets;
use super::form::{Posted, SignInPosted, StrictQuery};
use super::layout::{render_with_status, Layout};
use super::session::{self, Ended, NoSession};
use super::web::{Site, UiError};
use super::UiState;
use crate::admin::session::session_error;
use crate::domain;
use crate::store::{Actor, UiHolder};
use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui", get(start))
        .route("/ui/", get(start))
        .route("/ui/login", get(show).post(sign_in))
        .route("/ui/login/master", post(sign_in_master))
        .route("/ui/logout", post(sign_out))
}

/// Where a signed-in browser starts.
const HOME: &str = "/keys";

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginView {
    layout: Layout,
    ended: Option<&'static str>,
    /// A sign-in with SSO that did not happen, and why.
    sso_error: Option<String>,
    /// The issuers people can sign in at (`auth.oidc[].ui`).
    providers: Vec<ProviderButton>,
    /// Where the passkey button posts its options and its answer.
    passkey_options_url: String,
    passkey_finish_url: String,
    /// Whether `auth.session` is configured (password sign-in is offered).
    password_enabled: bool,
    password_error: Option<String>,
    master_error: Option<String>,
    /// The name tried, shown again after a failure.
    username: String,
    /// Where to go after signing in (a path under the UI).
    next: String,
}

/// A "Sign in with …" button.
struct ProviderButton {
    label: String,
    href: String,
}

impl LoginView {
    fn new(ui: &UiState, site: &Site, csrf: String, next: &str) -> LoginView {
        let mut layout = Layout::bare(site, "Sign in");
        layout.csrf = csrf;
        layout.script = Some(assets::url(site, assets::PASSKEY_JS));
        let providers = ui
            .sso
            .as_ref()
            .map(|sso| sso.providers())
            .unwrap_or_default();
        LoginView {
            layout,
            ended: None,
            sso_error: None,
            providers: providers
                .into_iter()
                .map(|p| ProviderButton {
                    href: super::sso::start_url(site, &p.id, next),
                    label: p.label,
                })
                .collect(),
            passkey_options_url: site.link("/login/passkey/options"),
            passkey_finish_url: super::passkeys::sign_in_finish_url(site, next),
            password_enabled: ui.app.sessions.is_some(),
            password_error: None,
            master_error: None,
            username: String::new(),
            next: next.to_owned(),
        }
    }
}

/// `/ui/`: the keys when signed in, else the sign-in page.
async fn start(State(ui): State<UiState>, site: Site, headers: HeaderMap) -> Response {
    match session::find(&ui, &headers, site.clone()).await {
        Ok(_) => site.redirect(HOME),
        Err(NoSession::Failed(e)) => e.into_response(),
        Err(_) => site.redirect("/login"),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginQuery {
    next: String,
    ended: String,
}

/// The path to go to after signing in: `next` when it is a path under the UI.
pub fn next_or_home(next: &str) -> &str {
    if session::is_local_path(next) {
        next
    } else {
        HOME
    }
}

async fn show(
    State(ui): State<UiState>,
    site: Site,
    headers: HeaderMap,
    StrictQuery(q): StrictQuery<LoginQuery>,
) -> Response {
    let next = next_or_home(&q.next);
    match session::find(&ui, &headers, site.clone()).await {
        Ok(_) => return site.redirect(next),
        Err(NoSession::Failed(e)) => return e.into_response(),
        Err(_) => {}
    }
    let (token, cookie) = session::sign_in_token(&headers, &site);
    let mut view = LoginView::new(&ui, &site, session::csrf_of(&token), next);
    view.ended = Ended::parse(&q.ended).map(Ended::message);
    page(StatusCode::OK, &view, cookie)
}

/// The sign-in page, with the sign-in cookie when a new one is needed.
fn page(status: StatusCode, view: &LoginView, cookie: Option<HeaderValue>) -> Response {
    let mut response = render_with_status(status, view);
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The sign-in page again, after a refused attempt (the form's cookie was checked, so it is
/// there).
fn refused(
    ui: &UiState,
    site: &Site,
    headers: &HeaderMap,
    next: &str,
    error: UiError,
    set: impl FnOnce(&mut LoginView, String),
) -> Response {
    let (token, cookie) = session::sign_in_token(headers, site);
    let mut view = LoginView::new(ui, site, session::csrf_of(&token), next);
    set(&mut view, error.message);
    let mut response = page(error.status, &view, cookie);
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The sign-in page with a sign-in with SSO that did not happen.
pub fn sso_refused(
    ui: &UiState,
    site: &Site,
    headers: &HeaderMap,
    next: &str,
    error: UiError,
) -> Response {
    refused(ui, site, headers, next, error, |view, message| {
        view.sso_error = Some(message);
    })
}

/// After signing in: the session's cookie, the sign-in cookie gone, on to `next`.
pub fn signed_in(site: &Site, next: &str, cookie: HeaderValue) -> Response {
    let mut response = site.redirect(next);
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    headers.append(header::SET_COOKIE, session::clear_sign_in_cookie(site));
    response
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PasswordForm {
    username: String,
    password: String,
    next: String,
}

/// Password sign-in: [`crate::authn::login::Sessions::check_login`], as `POST /v1/login`
/// checks (attempt limits, lockout, one answer for unknown names, wrong passwords and
/// locked accounts), then a browser session instead of tokens.
async fn sign_in(
    State(ui): State<UiState>,
    headers: HeaderMap,
    SignInPosted { site, form }: SignInPosted<PasswordForm>,
) -> Response {
    let next = next_or_home(&form.next);
    let error = |e: UiError| {
        refused(&ui, &site, &headers, next, e, |view, message| {
            view.username = form.username.chars().take(320).collect();
            view.password_error = Some(message);
        })
    };
    let Some(sessions) = ui.app.sessions.clone() else {
        return error(UiError::not_found(
            "Password sign-in is not enabled on this gateway (auth.session is not configured).",
        ));
    };
    let name = form.username.trim();
    if name.is_empty() {
        return error(UiError::bad_request("Give your username or email."));
    }
    let user = match sessions
        .check_login(name, &form.password, site.source.as_deref())
        .await
    {
        Ok(user) => user,
        Err(e) => return error(session_error(e).into()),
    };
    match session::open(&ui, &site, UiHolder::User(user.id), "password").await {
        Ok(cookie) => signed_in(&site, next, cookie),
        Err(e) => error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MasterForm {
    master_key: String,
    next: String,
}

/// Master-key sign-in, for bootstrap: compared in constant time with the master key's
/// hash; attempts per client address are limited as password logins are.
async fn sign_in_master(
    State(ui): State<UiState>,
    headers: HeaderMap,
    SignInPosted { site, form }: SignInPosted<MasterForm>,
) -> Response {
    let next = next_or_home(&form.next);
    let error = |e: UiError| {
        refused(&ui, &site, &headers, next, e, |view, message| {
            view.master_error = Some(message);
        })
    };
    if let Some(address) = &site.source {
        if let Err(retry_after) = ui.master_attempts.address(address, domain::now()) {
            let mut e = UiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many sign-in attempts; try again in {retry_after} s."),
            );
            e.retry_after = Some(retry_after);
            return error(e);
        }
    }
    if !ui.app.auth.master.matches(form.master_key.trim()) {
        let anonymous = Actor::new("anonymous", site.source.clone());
        let audited = ui
            .app
            .store
            .record_event(
                &anonymous,
                "ui.login_failed",
                None,
                json!({ "method": "master_key" }),
            )
            .await;
        if let Err(e) = audited {
            return error(e.into());
        }
        return error(UiError::new(
            StatusCode::UNAUTHORIZED,
            "That is not the master key.",
        ));
    }
    let holder = UiHolder::Master {
        tag: ui.app.auth.master.fingerprint(),
    };
    match session::open(&ui, &site, holder, "master_key").await {
        Ok(cookie) => signed_in(&site, next, cookie),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
struct Nothing {}

/// Sign-out: the session's row is deleted, so its cookie opens nothing on any replica.
async fn sign_out(
    State(ui): State<UiState>,
    Posted { session, .. }: Posted<Nothing>,
) -> Result<Response, UiError> {
    ui.app
        .store
        .delete_ui_session(Some(&session.caller.actor), &session.id)
        .await?;
    let site = &session.site;
    let mut response = site.redirect(&format!("/login?ended={}", Ended::SignedOut.as_str()));
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::clear_session_cookie(site));
    Ok(response)
}
