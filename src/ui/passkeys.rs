//! Passkeys in the web UI: signing in with one on `/ui/login`, and adding, renaming and
//! deleting one's own on `/ui/profile`. The ceremonies are [`crate::authn::passkey`]'s;
//! this module gives them routes, a relying party and a binding:
//!
//! - `POST /ui/login/passkey/options` and `POST /ui/login/passkey/finish?next=`: JSON from
//!   `passkey.js` ([`SignInJsonPosted`]: the sign-in cookie's CSRF token in a header). The
//!   ceremony is bound to the sign-in cookie, so an answer made in one browser cannot be
//!   finished in another. Both count against `auth.login.per_address_per_minute` per
//!   client address. A finished sign-in opens a browser session as a password does and
//!   answers `{"redirect"}`; a blocked user is refused (403) and audited.
//! - `POST /ui/profile/passkeys/options` and `POST /ui/profile/passkeys/finish`: JSON
//!   ([`JsonPosted`]: the session's CSRF token in a header), bound to the browser session.
//! - `POST /ui/profile/passkeys/{id}/rename` and `…/delete`: forms, one's own passkeys
//!   only (another user's id is "not found").
//!
//! The relying party is the origin the browser reaches the UI at ([`Site::origin`]) with
//! the id `ui.rp_id`, else that origin's host name.

use super::form::{Confirmed, Posted};
use super::layout::{render, ConfirmView, Layout};
use super::login::next_or_home;
use super::profile;
use super::script::{JsonPosted, ScriptError, SignInJsonPosted};
use super::session::{self, url_encoded};
use super::show::PathId;
use super::web::{Site, UiError};
use super::{Ui, UiState};
use crate::admin::profile::live;
use crate::authn::passkey::{
    AuthenticationRequest, AuthenticationStart, PasskeyError, Refusal, RegistrationRequest,
    RelyingParty,
};
use crate::domain;
use crate::store::{Actor, UiHolder};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/login/passkey/options", post(sign_in_options))
        .route("/ui/login/passkey/finish", post(sign_in_finish))
        .route("/ui/profile/passkeys/options", post(register_options))
        .route("/ui/profile/passkeys/finish", post(register_finish))
        .route("/ui/profile/passkeys/{id}/rename", post(rename))
        .route("/ui/profile/passkeys/{id}/delete", post(delete))
}

/// The name authenticators and browsers show for this site.
const RP_NAME: &str = "tollgate";

/// The relying party of the origin the browser is at.
fn relying_party(ui: &Ui, site: &Site) -> Result<RelyingParty, ScriptError> {
    let origin = site.origin.as_deref().ok_or_else(|| {
        ScriptError::new(
            StatusCode::BAD_REQUEST,
            "The request names no host, so passkeys cannot be used.",
        )
    })?;
    RelyingParty::for_origin(origin, ui.app.config.ui.rp_id.as_deref(), RP_NAME).map_err(|why| {
        ScriptError::new(
            StatusCode::BAD_REQUEST,
            format!("Passkeys cannot be used at this address: {why}. Serve the UI over https, and set ui.rp_id to its host name or a parent domain of it."),
        )
    })
}

/// A failed ceremony as the script shows it: a refusal with `refused` (401 on sign-in, 400
/// on registration), the store as the API answers it.
fn ceremony_error(e: PasskeyError, refused: StatusCode) -> ScriptError {
    match e {
        PasskeyError::Refused(r) => refusal(r, refused),
        PasskeyError::Store(e) => UiError::from(e).into(),
    }
}

fn refusal(r: Refusal, status: StatusCode) -> ScriptError {
    ScriptError::new(status, format!("The passkey was refused: {r}."))
}

/// Counts a sign-in ceremony request of the client's address.
fn count_attempt(ui: &Ui, site: &Site) -> Result<(), ScriptError> {
    let Some(address) = &site.source else {
        return Ok(());
    };
    ui.ceremony_attempts
        .address(address, domain::now())
        .map_err(|retry_after| ScriptError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("Too many sign-in attempts; try again in {retry_after} s."),
            retry_after: Some(retry_after),
        })
}

// ---- signing in --------------------------------------------------------------------------

async fn sign_in_options(
    State(ui): State<UiState>,
    posted: SignInJsonPosted,
) -> Result<Response, ScriptError> {
    count_attempt(&ui, &posted.site)?;
    let rp = relying_party(&ui, &posted.site)?;
    let start = AuthenticationStart::from_json(&posted.body)
        .map_err(|r| refusal(r, StatusCode::BAD_REQUEST))?;
    let options = ui
        .passkeys
        .start_authentication(
            &rp,
            start.username.as_deref(),
            Some(&posted.sign_in_token),
            domain::now(),
        )
        .await
        .map_err(|e| ceremony_error(e, StatusCode::BAD_REQUEST))?;
    Ok(Json(options).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NextQuery {
    next: String,
}

async fn sign_in_finish(
    State(ui): State<UiState>,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
    posted: SignInJsonPosted,
) -> Result<Response, ScriptError> {
    let site = &posted.site;
    count_attempt(&ui, site)?;
    let rp = relying_party(&ui, site)?;
    let request = AuthenticationRequest::from_json(&posted.body)
        .map_err(|r| refusal(r, StatusCode::BAD_REQUEST))?;
    let anonymous = Actor::new("anonymous", site.source.clone());
    let login = match ui
        .passkeys
        .finish_authentication(
            &rp,
            &anonymous,
            &request,
            Some(&posted.sign_in_token),
            domain::now(),
        )
        .await
    {
        Ok(login) => login,
        Err(e) => {
            if let PasskeyError::Refused(r) = &e {
                tracing::info!(reason = %r, "sign-in with a passkey refused");
            }
            return Err(ceremony_error(e, StatusCode::UNAUTHORIZED));
        }
    };
    let user = login.user;
    let actor = Actor::new(format!("user:{}", user.id), site.source.clone());
    let details = json!({
        "method": "passkey",
        "passkey": login.passkey.id,
        "user_verified": login.user_verified,
    });
    if user.blocked {
        let mut details = details;
        details["reason"] = json!("blocked");
        ui.app
            .store
            .record_event(&actor, "auth.login_failed", Some(&user.id), details)
            .await
            .map_err(UiError::from)?;
        return Err(ScriptError::new(
            StatusCode::FORBIDDEN,
            "This account is blocked.",
        ));
    }
    ui.app
        .store
        .record_event(&actor, "auth.login", Some(&user.id), details)
        .await
        .map_err(UiError::from)?;
    let cookie = session::open(&ui, site, UiHolder::User(user.id.clone()), "passkey").await?;
    tracing::info!(user.id = %user.id, "signed in with a passkey");
    let mut response =
        Json(json!({ "redirect": site.link(next_or_home(&q.next)) })).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    headers.append(header::SET_COOKIE, session::clear_sign_in_cookie(site));
    Ok(response)
}

/// The finish address of the sign-in page's passkey button, going on to `next`.
pub fn sign_in_finish_url(site: &Site, next: &str) -> String {
    site.link(&format!("/login/passkey/finish?next={}", url_encoded(next)))
}

// ---- one's own passkeys ----------------------------------------------------------------

/// The signed-in user as stored now (the master key has no passkeys).
async fn me(ui: &Ui, posted: &JsonPosted) -> Result<crate::domain::User, ScriptError> {
    let Some(me) = posted.session.caller.user() else {
        return Err(ScriptError::new(
            StatusCode::NOT_FOUND,
            "The master key has no profile and no passkeys: sign in with an account.",
        ));
    };
    Ok(live(&ui.app, &me.id).await.map_err(UiError::from)?)
}

async fn register_options(
    State(ui): State<UiState>,
    posted: JsonPosted,
) -> Result<Response, ScriptError> {
    let user = me(&ui, &posted).await?;
    let rp = relying_party(&ui, &posted.session.site)?;
    let options = ui
        .passkeys
        .start_registration(&rp, &user, Some(&posted.session.id), domain::now())
        .await
        .map_err(|e| ceremony_error(e, StatusCode::BAD_REQUEST))?;
    Ok(Json(options).into_response())
}

async fn register_finish(
    State(ui): State<UiState>,
    posted: JsonPosted,
) -> Result<Response, ScriptError> {
    let user = me(&ui, &posted).await?;
    let session = &posted.session;
    let rp = relying_party(&ui, &session.site)?;
    let request = RegistrationRequest::from_json(&posted.body)
        .map_err(|r| refusal(r, StatusCode::BAD_REQUEST))?;
    let passkey = ui
        .passkeys
        .finish_registration(
            &rp,
            &session.caller.actor,
            &user,
            &request,
            Some(&session.id),
            domain::now(),
        )
        .await
        .map_err(|e| ceremony_error(e, StatusCode::BAD_REQUEST))?;
    let body = json!({
        "redirect": session.site.link("/profile?done=passkey_added"),
        "passkey": { "id": passkey.id, "name": passkey.name },
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RenameForm {
    name: String,
}

async fn rename(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<RenameForm>,
) -> Result<Response, UiError> {
    let Some(me) = session.caller.user() else {
        return Err(UiError::not_found("The master key has no passkeys."));
    };
    let renamed = ui
        .passkeys
        .rename(&session.caller.actor, &me.id, &id, &form.name)
        .await;
    match renamed {
        Ok(Some(_)) => Ok(session.site.redirect("/profile?done=passkey_renamed")),
        Ok(None) => Err(UiError::not_found("You have no such passkey.")),
        Err(e) => profile::refused(&ui.app, &session, form_error(e)).await,
    }
}

/// Deletes one's own passkey after a confirmation (the browser's, or else this page's).
async fn delete(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<Confirmed>,
) -> Result<Response, UiError> {
    let Some(me) = session.caller.user() else {
        return Err(UiError::not_found("The master key has no passkeys."));
    };
    if !form.is_confirmed() {
        let passkeys = ui.passkeys.list(&me.id).await.map_err(form_error)?;
        let Some(passkey) = passkeys.into_iter().find(|p| p.id == id) else {
            return Err(UiError::not_found("You have no such passkey."));
        };
        let view = ConfirmView {
            layout: Layout::of(
                &session,
                format!("Delete passkey {}", passkey.name),
                "/profile",
            ),
            heading: format!("Delete the passkey {}?", passkey.name),
            message: "It no longer signs you in. You can add it again afterwards.".into(),
            action: format!("/profile/passkeys/{}/delete", passkey.id),
            button: "Delete the passkey",
            cancel: "/profile".into(),
            fields: Vec::new(),
        };
        return Ok(render(&view));
    }
    match ui.passkeys.delete(&session.caller.actor, &me.id, &id).await {
        Ok(true) => Ok(session.site.redirect("/profile?done=passkey_deleted")),
        Ok(false) => Err(UiError::not_found("You have no such passkey.")),
        Err(e) => Err(form_error(e)),
    }
}

fn form_error(e: PasskeyError) -> UiError {
    match e {
        PasskeyError::Refused(r) => {
            UiError::bad_request(format!("{}.", capitalized(&r.to_string())))
        }
        PasskeyError::Store(e) => e.into(),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
