//! `/ui/profile`: who you are, your role and teams, and a password change (the function
//! behind `PUT /v1/user/password`; it ends your other sessions, browser ones included). The
//! master key has no profile.

use super::form::{Posted, StrictQuery};
use super::layout::{render, render_with_status, Layout, PageResult};
use super::session::Session;
use super::web::UiError;
use super::UiState;
use crate::admin::profile::{change_password_of, live, Kept};
use crate::admin::AppState;
use crate::domain::User;
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
    done: bool,
    error: Option<String>,
    user: User,
    teams: Vec<TeamLine>,
    session_ends: String,
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
    view.done = q.done == "password";
    Ok(render(&view))
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
    Ok(ProfileView {
        layout: Layout::of(session, "Profile", "/profile"),
        done: false,
        error: None,
        user,
        teams,
        session_ends: chrono::DateTime::from_timestamp(session.expires_at, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default(),
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
