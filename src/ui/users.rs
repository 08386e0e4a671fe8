//! The users pages: `/ui/users` (search, role filter, pages of 50; a create form for
//! admins) and `/ui/users/{id}` (one user: their teams and keys linked; role, block,
//! unblock, lift a lockout and delete for admins).
//!
//! Every read and write is the API's (`crate::admin::users`) with the session's `Caller`:
//! admins, viewers and managers list users (`GET /admin/users`), a person reads their own
//! record, only admins change users. The listing filters and pages what the API lists; the
//! spend is read for the users one page shows.

use super::form::{Confirmed, Posted, StrictQuery};
use super::layout::{render, render_with_status, ConfirmView, Layout, PageResult};
use super::session::Session;
use super::show::{self, PathId, Pick};
use super::web::UiError;
use super::UiState;
use crate::admin::users::{self as api, CreateUser, UpdateUser};
use crate::admin::{with_spend, AppState, Caller};
use crate::domain::{self, Role, User};
use crate::store::SpendKind;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::str::FromStr;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/users", get(list).post(create))
        .route("/ui/users/{id}", get(show))
        .route("/ui/users/{id}/role", post(change_role))
        .route("/ui/users/{id}/block", post(block))
        .route("/ui/users/{id}/unblock", post(unblock))
        .route("/ui/users/{id}/unlock", post(unlock))
        .route("/ui/users/{id}/delete", post(delete))
}

/// Users per page of the listing.
const PAGE: usize = 50;

/// Longest search text, in characters (as the key search).
const MAX_SEARCH_CHARS: usize = 200;

/// The message of a `done=` word (only these: nothing a link carries is shown as text).
fn done_message(done: &str) -> Option<&'static str> {
    match done {
        "created" => Some("The user is created."),
        "role" => Some("The role is changed; it applies from their next request."),
        "blocked" => Some(
            "The user is blocked: their keys, tokens and sessions are refused until they are unblocked.",
        ),
        "unblocked" => Some("The user is unblocked."),
        "unlocked" => Some("The lockout is lifted: they may sign in with their password again."),
        "deleted" => Some("The user is deleted, and their keys are revoked."),
        _ => None,
    }
}

/// The roles a user can hold, as choices: `first` (if any), the built-in roles as
/// [`show::ROLES`] orders them, then the custom roles by name.
fn role_picks(custom: &[String], first: Option<(&str, &str)>, selected: &str) -> Vec<Pick> {
    let names = first
        .into_iter()
        .chain(show::ROLES.iter().copied())
        .map(|(value, label)| (value.to_owned(), label.to_owned()))
        .chain(custom.iter().map(|name| (name.clone(), name.clone())));
    names
        .map(|(value, label)| Pick {
            selected: value == selected,
            value,
            label,
        })
        .collect()
}

/// The custom roles' names, by name.
async fn custom_roles(app: &AppState) -> Result<Vec<String>, UiError> {
    let roles = app.store.list_roles().await?;
    Ok(roles.into_iter().map(|r| r.name).collect())
}

/// A user's standing, as the pages show it.
fn status_of(user: &User, now: i64) -> &'static str {
    if user.blocked {
        "blocked"
    } else if user.locked_until.is_some_and(|t| t > now) {
        "locked"
    } else {
        "active"
    }
}

// ---- the listing ------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct ListForm {
    q: String,
    role: String,
    /// 1-based.
    page: String,
    done: String,
}

struct UserRow {
    /// `/users/{id}`, under the UI.
    path: String,
    username: String,
    email: String,
    full_name: String,
    role: String,
    status: &'static str,
    budget: String,
    spend: String,
}

/// The create form, as posted.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct NewUserForm {
    username: String,
    email: String,
    full_name: String,
    role: String,
    /// Empty: the user signs in another way (SSO, or not at all).
    password: String,
}

#[derive(Template)]
#[template(path = "ui/users.html")]
struct UsersView {
    layout: Layout,
    done: Option<&'static str>,
    error: Option<String>,
    q: String,
    roles: Vec<Pick>,
    rows: Vec<UserRow>,
    /// How many users match, and which of them this page shows (1-based).
    matched: usize,
    first: usize,
    last: usize,
    newer: Option<String>,
    older: Option<String>,
    can_create: bool,
    form: NewUserForm,
    new_roles: Vec<Pick>,
}

async fn list(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<ListForm>,
) -> PageResult {
    let done = done_message(&form.done);
    listing(&ui.app, &session, form, done, None, NewUserForm::default()).await
}

async fn listing(
    app: &AppState,
    session: &Session,
    form: ListForm,
    done: Option<&'static str>,
    error: Option<UiError>,
    new: NewUserForm,
) -> PageResult {
    let caller = &session.caller;
    // The API's refusal (a `user` may not list users) is the page's answer.
    let users = api::visible_users(app, caller).await?;
    let q = show::filter_text("q", &form.q, MAX_SEARCH_CHARS)?;
    let custom = custom_roles(app).await?;
    let role = match form.role.trim() {
        "" => None,
        r => Some(Role::from_str(r).map_err(|e| UiError::bad_request(format!("`role`: {e}")))?),
    };
    if let Some(Role::Custom(wanted)) = &role {
        if !custom.iter().any(|name| **name == *wanted.name) {
            return Err(UiError::bad_request(format!(
                "`role`: unknown role `{}`",
                wanted.name
            )));
        }
    }
    let page = match form.page.trim() {
        "" => 1,
        p => p.parse::<usize>().ok().filter(|p| *p >= 1).ok_or_else(|| {
            UiError::bad_request(format!(
                "`page` must be a page number from 1, not `{}`.",
                show::clip(p)
            ))
        })?,
    };
    let needle = q.to_lowercase();
    let matching: Vec<User> = users
        .into_iter()
        .filter(|u| role.as_ref().is_none_or(|r| u.role.as_str() == r.as_str()))
        .filter(|u| {
            needle.is_empty()
                || u.username.to_lowercase().contains(&needle)
                || u.email.to_lowercase().contains(&needle)
                || u.full_name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
                || u.id.starts_with(&q)
        })
        .collect();
    let matched = matching.len();
    let start = (page - 1).saturating_mul(PAGE).min(matched);
    let end = (start + PAGE).min(matched);
    let now = domain::now();
    let mut rows = Vec::with_capacity(end - start);
    for user in matching.into_iter().skip(start).take(PAGE) {
        // The spend `GET /admin/users` answers, for the users this page shows.
        let user = with_spend(app, SpendKind::User, &user.id.clone(), user).await?;
        rows.push(UserRow {
            path: format!("/users/{}", user.item.id),
            status: status_of(&user.item, now),
            budget: show::budget(&user.item.limits),
            spend: show::usd(user.spend),
            role: user.item.role.to_string(),
            full_name: user.item.full_name.unwrap_or_default(),
            email: user.item.email,
            username: user.item.username,
        });
    }
    let link = |page: usize| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if !q.is_empty() {
            query.append_pair("q", &q);
        }
        if let Some(role) = &role {
            query.append_pair("role", role.as_str());
        }
        if page > 1 {
            query.append_pair("page", &page.to_string());
        }
        match query.finish() {
            q if q.is_empty() => "/users".to_owned(),
            q => format!("/users?{q}"),
        }
    };
    let newer = (page > 1).then(|| link(page - 1));
    let older = (end < matched).then(|| link(page + 1));
    let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
    let view = UsersView {
        layout: Layout::of(session, "Users", "/users"),
        done,
        error: error.map(|e| e.message),
        roles: role_picks(
            &custom,
            Some(("", "Any role")),
            role.as_ref().map_or("", Role::as_str),
        ),
        q,
        rows,
        matched,
        first: start + 1,
        last: end,
        newer,
        older,
        can_create: caller.is_admin(),
        new_roles: role_picks(
            &custom,
            None,
            match new.role.as_str() {
                "" => "user",
                r => r,
            },
        ),
        form: new,
    };
    Ok(render_with_status(status, &view))
}

/// `POST /ui/users`: the form as `POST /admin/users` takes it.
async fn create(State(ui): State<UiState>, posted: Posted<NewUserForm>) -> PageResult {
    let Posted { session, form } = posted;
    let app = &ui.app;
    let created = async {
        let role = match form.role.trim() {
            "" => None,
            r => Some(Role::from_str(r).map_err(|e| UiError::bad_request(format!("`role`: {e}")))?),
        };
        let body = CreateUser {
            username: form.username.trim().to_owned(),
            email: form.email.trim().to_owned(),
            role,
            password: Some(form.password.clone()).filter(|p| !p.is_empty()),
            full_name: Some(form.full_name.trim().to_owned()).filter(|n| !n.is_empty()),
            ..CreateUser::default()
        };
        api::create_user(app, &session.caller, body)
            .await
            .map_err(UiError::from)
    }
    .await;
    match created {
        Ok(user) => Ok(session
            .site
            .redirect(&format!("/users/{}?done=created", user.id))),
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(e),
        Err(e) => {
            // The password is never shown again, even after a refusal.
            let form = NewUserForm {
                password: String::new(),
                ..form
            };
            listing(app, &session, ListForm::default(), None, Some(e), form).await
        }
    }
}

// ---- one user ---------------------------------------------------------------------------

struct TeamRow {
    path: String,
    name: String,
    role: &'static str,
}

#[derive(Template)]
#[template(path = "ui/user.html")]
struct UserView {
    layout: Layout,
    done: Option<&'static str>,
    user: User,
    status: &'static str,
    budget: String,
    spend: String,
    created: String,
    locked_until: String,
    teams: Vec<TeamRow>,
    /// Teams of the user the reader may not see (not named).
    hidden_teams: usize,
    keys_link: bool,
    /// Role, block, unblock, unlock, delete: admins only.
    can_change: bool,
    roles: Vec<Pick>,
    you: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DoneQuery {
    done: String,
}

async fn show(
    State(ui): State<UiState>,
    session: Session,
    PathId(id): PathId,
    StrictQuery(q): StrictQuery<DoneQuery>,
) -> PageResult {
    let app = &ui.app;
    let caller = &session.caller;
    let found = api::read_user(app, caller, &id).await?;
    let user = found.item;
    let mut teams = Vec::new();
    let mut hidden_teams = 0;
    for m in app.store.user_memberships(&user.id).await? {
        // Named only when the reader sees the team (`GET /admin/teams/{id}`).
        if !caller.sees_team(app, &m.team_id).await? {
            hidden_teams += 1;
            continue;
        }
        if let Some(team) = app.store.get_team(&m.team_id).await? {
            teams.push(TeamRow {
                path: format!("/teams/{}", team.id),
                name: team.name,
                role: m.role.as_str(),
            });
        }
    }
    let now = domain::now();
    let view = UserView {
        layout: Layout::of(&session, format!("User {}", user.username), "/users"),
        done: done_message(&q.done),
        status: status_of(&user, now),
        budget: show::budget(&user.limits),
        spend: show::usd(found.spend),
        created: show::when(user.created_at),
        locked_until: user
            .locked_until
            .filter(|t| *t > now)
            .map(show::when)
            .unwrap_or_default(),
        teams,
        hidden_teams,
        // `GET /admin/keys?user_id=` answers admins, viewers and the user themselves.
        keys_link: caller.reads_all() || caller.is_user(&user.id),
        can_change: caller.is_admin(),
        roles: role_picks(&custom_roles(app).await?, None, user.role.as_str()),
        you: caller.is_user(&user.id),
        user,
    };
    Ok(render(&view))
}

/// An admin's change to one user, as `PATCH /admin/users/{id}` takes it; back to the user's
/// page with `done`.
async fn changed(
    app: &AppState,
    session: &Session,
    id: &str,
    body: UpdateUser,
    done: &str,
) -> PageResult {
    api::update_user(app, &session.caller, id, body).await?;
    Ok(session.site.redirect(&format!("/users/{id}?done={done}")))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RoleForm {
    role: String,
}

async fn change_role(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<RoleForm>,
) -> PageResult {
    let role = Role::from_str(form.role.trim())
        .map_err(|e| UiError::bad_request(format!("`role`: {e}")))?;
    let body = UpdateUser {
        role: Some(role),
        ..UpdateUser::default()
    };
    changed(&ui.app, &session, &id, body, "role").await
}

async fn block(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, .. }: Posted<Confirmed>,
) -> PageResult {
    let body = UpdateUser {
        blocked: Some(true),
        ..UpdateUser::default()
    };
    changed(&ui.app, &session, &id, body, "blocked").await
}

async fn unblock(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, .. }: Posted<Confirmed>,
) -> PageResult {
    let body = UpdateUser {
        blocked: Some(false),
        ..UpdateUser::default()
    };
    changed(&ui.app, &session, &id, body, "unblocked").await
}

/// `POST /admin/users/{id}/unlock`.
async fn unlock(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, .. }: Posted<Confirmed>,
) -> PageResult {
    api::unlock_user(&ui.app, &session.caller, &id).await?;
    Ok(session.site.redirect(&format!("/users/{id}?done=unlocked")))
}

/// After a confirmation (the browser's, or else this page's), as `DELETE /admin/users/{id}`.
async fn delete(
    State(ui): State<UiState>,
    PathId(id): PathId,
    Posted { session, form }: Posted<Confirmed>,
) -> PageResult {
    let app = &ui.app;
    let caller: &Caller = &session.caller;
    if !form.is_confirmed() {
        caller.require_admin("delete users")?;
        let user = api::read_user(app, caller, &id).await?.item;
        let view = ConfirmView {
            layout: Layout::of(&session, format!("Delete user {}", user.username), "/users"),
            heading: format!("Delete the user {}?", user.username),
            message:
                "They leave their teams and their keys are revoked at once. This cannot be undone."
                    .into(),
            action: format!("/users/{}/delete", user.id),
            button: "Delete the user",
            cancel: format!("/users/{}", user.id),
            fields: Vec::new(),
        };
        return Ok(render(&view));
    }
    api::delete_user(app, caller, &id).await?;
    Ok(session.site.redirect("/users?done=deleted"))
}
