//! `/ui/profile`: who you are, your role and teams, a password change (the function
//! behind `PUT /v1/user/password`; it ends your other sessions, browser ones included) for
//! accounts that have a password, and your passkeys (added, renamed and deleted through
//! [`super::passkeys`]). The master key has no profile.

use super::assets;
use super::form::{Posted, StrictQuery};
use super::layout::{render, render_with_status, Layout, PageResult};
use super::session::Session;
use super::show;
use super::web::UiError;
use super::UiState;
use crate::admin::profile::{change_password_of, live, Kept};
use crate::admin::AppState;
use crate::domain::User;
use crate::store::MAX_PASSKEYS_PER_USER;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/profile", get(show))
        .route("/ui/profile/password", post(change_password))
}

/// A team of the user, as the page lists it.
struct TeamLine {
    name: String,
    role: &'static str,
}

#[derive(Template)]
#[template(path = "ui/profile.html")]
struct ProfileView {
    layout: Layout,
    /// What the last form did.
    done: Option<&'static str>,
    /// A refused password change.
    error: Option<String>,
    /// A refused passkey rename or delete.
    passkey_error: Option<String>,
    user: User,
    /// Whether the account has a password (accounts made by SSO have none).
    has_password: bool,
    teams: Vec<TeamLine>,
    passkeys: Vec<PasskeyLine>,
    max_passkeys: i64,
    /// Whether another passkey may be added.
    room_for_more: bool,
    session_ends: String,
    passkey_options_url: String,
    passkey_finish_url: String,
}

/// A passkey of the user, as the page lists it.
struct PasskeyLine {
    id: String,
    name: String,
    added: String,
    last_used: String,
    /// Synced to other devices by its provider (backed up).
    synced: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProfileQuery {
    done: String,
}

async fn show(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(q): StrictQuery<ProfileQuery>,
) -> PageResult {
    let mut view = view(&ui.app, &session).await?;
    view.done = match q.done.as_str() {
        "password" => Some("Your password is changed. Your other sessions have ended."),
        "passkey_added" => Some("The passkey is added: you can sign in with it now."),
        "passkey_renamed" => Some("The passkey is renamed."),
        "passkey_deleted" => Some("The passkey is deleted: it no longer signs you in."),
        _ => None,
    };
    Ok(render(&view))
}

/// The profile again, with a refused passkey change, under the refusal's status.
pub async fn refused(app: &AppState, session: &Session, e: UiError) -> PageResult {
    let mut view = view(app, session).await?;
    view.passkey_error = Some(e.message);
    Ok(render_with_status(status_or_bad(e.status), &view))
}

async fn view(app: &AppState, session: &Session) -> Result<ProfileView, UiError> {
    let Some(me) = session.caller.user() else {
        return Err(UiError::not_found(
            "The master key has no profile: sign in with an account to see yours.",
        ));
    };
    // What `GET /v1/user/profile` answers.
    let user = live(app, &me.id).await?;
    let mut teams = Vec::new();
    for membership in app.store.user_memberships(&user.id).await? {
        if let Some(team) = app.store.get_team(&membership.team_id).await? {
            teams.push(TeamLine {
                name: team.name,
                role: membership.role.as_str(),
            });
        }
    }
    let has_password = app
        .store
        .find_login_user(&user.username)
        .await?
        .is_some_and(|found| found.user.id == user.id && found.password_hash.is_some());
    let passkeys = app
        .store
        .list_passkeys(&user.id)
        .await?
        .into_iter()
        .map(|p| PasskeyLine {
            id: p.id,
            name: p.name,
            added: show::when(p.created_at),
            last_used: p
                .last_used_at
                .map(show::when)
                .unwrap_or_else(|| "never".into()),
            synced: p.backed_up,
        })
        .collect::<Vec<_>>();
    let room_for_more = i64::try_from(passkeys.len()).unwrap_or(i64::MAX) < MAX_PASSKEYS_PER_USER;
    let site = &session.site;
    let mut layout = Layout::of(session, "Profile", "/profile");
    layout.script = Some(assets::url(site, assets::PASSKEY_JS));
    Ok(ProfileView {
        layout,
        done: None,
        error: None,
        passkey_error: None,
        user,
        has_password,
        teams,
        passkeys,
        max_passkeys: MAX_PASSKEYS_PER_USER,
        room_for_more,
        session_ends: show::when(session.expires_at),
        passkey_options_url: site.link("/profile/passkeys/options"),
        passkey_finish_url: site.link("/profile/passkeys/finish"),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PasswordForm {
    current_password: String,
    new_password: String,
    repeat_password: String,
}

async fn change_password(
    State(ui): State<UiState>,
    Posted { session, form }: Posted<PasswordForm>,
) -> PageResult {
    let app = &ui.app;
    let Some(me) = session.caller.user() else {
        return Err(UiError::not_found(
            "The master key has no password to change here.",
        ));
    };
    let changed = if form.new_password != form.repeat_password {
        Err(UiError::bad_request(
            "The new password and its repetition differ; nothing was changed.",
        ))
    } else {
        let keep = Kept {
            login: None,
            browser: Some(&session.id),
        };
        change_password_of(
            app,
            &me.id,
            keep,
            &form.current_password,
            &form.new_password,
            session.site.source.as_deref(),
        )
        .await
        .map_err(UiError::from)
    };
    match changed {
        Ok(()) => Ok(session.site.redirect("/profile?done=password")),
        Err(e) => {
            let mut view = view(app, &session).await?;
            let status = e.status;
            view.error = Some(e.message);
            Ok(render_with_status(status_or_bad(status), &view))
        }
    }
}

/// A refused password change is shown on the profile page with the API's status.
fn status_or_bad(status: StatusCode) -> StatusCode {
    if status.is_success() {
        StatusCode::BAD_REQUEST
    } else {
        status
    }
}
