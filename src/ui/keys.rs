//! The keys pages: `/ui/keys` (search, filters, pages that stay fast at 100,000 keys),
//! `/ui/keys/new` (create), `/ui/keys/{id}` (one key: rotate, block, unblock, revoke),
//! `/ui/keys/{id}/secret` (a new secret, shown once).
//!
//! Every read and write is the API's: a person with the role `user` goes through the user
//! routes' functions (`/v1/user/keys`: their own keys), everyone else through the admin
//! routes' (`/admin/keys`), with the same role checks. The buttons a row shows follow
//! [`Caller::manages_keys`], the API's own rule; a forged post is refused by the API's
//! function all the same.
//!
//! A new secret never travels in a URL, is never stored, and is shown once: the post that
//! creates (or rotates) a key answers with a redirect to the key's secret page and hands
//! the secret over in an HttpOnly cookie scoped to that page's path; the page shows it if
//! it is the key's current secret, and deletes the cookie. Reloading the page shows that
//! it is gone.

use super::form::{Posted, StrictQuery};
use super::layout::{render, render_with_status, ConfirmView, Layout, PageResult};
use super::session::{self, SameSite, Session};
use super::show::{self, budget, choices, short, usd, when, Choice, Names, DURATIONS};
use super::web::{Site, UiError};
use super::UiState;
use crate::admin::keys::{self as api, CreateKey, KeySearch, ListQuery, WithSecret};
use crate::admin::user_keys::{self, CreateOwnKey};
use crate::admin::{ApiError, AppState, Caller, OrgThing, SignedIn, Who, WithSpend};
use crate::authn::api_key::{self, KeyHash};
use crate::domain::{self, rfc3339, ApiKey, BudgetDuration, Role, Timestamp};
use crate::store::{KeyStatus, SpendKind};
use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::str::FromStr;
use std::sync::Arc;

pub fn routes() -> Router<UiState> {
    Router::new()
        .route("/ui/keys", get(list).post(create))
        .route("/ui/keys/new", get(new_key))
        .route("/ui/keys/{id}", get(show))
        .route("/ui/keys/{id}/secret", get(secret))
        .route("/ui/keys/{id}/rotate", post(rotate))
        .route("/ui/keys/{id}/block", post(block))
        .route("/ui/keys/{id}/unblock", post(unblock))
        .route("/ui/keys/{id}/revoke", post(revoke))
}

/// Keys per page of the listing.
const PAGE: u32 = 50;

/// The cookie a new secret travels in, from the post that made it to its page.
const SECRET_COOKIE: &str = "tollgate_ui_secret";

/// Which API routes a person's key actions go through.
enum Route {
    /// `/v1/user/keys`: the role `user` and custom roles, who manage only their own keys.
    Own(SignedIn),
    /// `/admin/keys`: everyone else, each as the role table allows.
    Admin,
}

fn route_of(session: &Session) -> Route {
    match &session.caller.who {
        Who::User(user) if matches!(user.role, Role::User | Role::Custom(_)) => {
            Route::Own(signed_in(session, user))
        }
        _ => Route::Admin,
    }
}

/// The session's person as the user routes take them.
fn signed_in(session: &Session, user: &Arc<domain::User>) -> SignedIn {
    SignedIn {
        user: user.clone(),
        caller: Caller {
            who: Who::User(user.clone()),
            actor: session.caller.actor.clone(),
        },
    }
}

/// The `{id}` of a key's path.
struct KeyId(String);

impl FromRequestParts<UiState> for KeyId {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState) -> Result<KeyId, UiError> {
        let axum::extract::Path(id) = axum::extract::Path::<String>::from_request_parts(parts, ui)
            .await
            .map_err(|_| UiError::bad_request("The key id in the address cannot be read."))?;
        if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
            return Err(UiError::not_found("There is no such key."));
        }
        Ok(KeyId(id))
    }
}

// ---- the listing ------------------------------------------------------------------------

/// The listing's query, as the filter form sends it.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct ListForm {
    q: String,
    /// Empty: every key but revoked ones; `all`: revoked ones too; else a [`KeyStatus`].
    status: String,
    /// A username, an email or a user id.
    user: String,
    /// A team id.
    team: String,
    after: String,
    before: String,
    /// What was just done (a fixed word; see [`done_message`]).
    done: String,
}

/// A key as a row of the listing shows it.
struct KeyRow {
    name: String,
    hint: String,
    owner: String,
    status: &'static str,
    expires: String,
    spend: String,
    budget: String,
    /// `/keys/{id}`, under the UI.
    path: String,
    can_block: bool,
    can_unblock: bool,
    can_revoke: bool,
    can_rotate: bool,
}

/// A team in a select.
struct TeamOption {
    id: String,
    name: String,
    selected: bool,
}

/// The status filter's choices.
const STATUSES: [(&str, &str); 6] = [
    ("", "Not revoked"),
    ("active", "Active"),
    ("blocked", "Blocked"),
    ("expired", "Expired"),
    ("revoked", "Revoked"),
    ("all", "All, revoked too"),
];

#[derive(Template)]
#[template(path = "ui/keys.html")]
struct KeysView {
    layout: Layout,
    done: Option<&'static str>,
    error: Option<String>,
    q: String,
    statuses: Vec<Choice>,
    user: String,
    /// Whether the owner filters are offered (not to those who list only their own keys).
    owner_filters: bool,
    teams: Vec<TeamOption>,
    can_create: bool,
    rows: Vec<KeyRow>,
    /// Links to the pages around this one, under the UI.
    newer: Option<String>,
    older: Option<String>,
    /// Where this page is (for the forms of its rows to come back to).
    here: String,
    /// The first page of this listing, when this is another.
    first: Option<String>,
}

async fn list(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<ListForm>,
) -> PageResult {
    let app = &ui.app;
    let route = route_of(&session);
    let owner_filters = matches!(route, Route::Admin);
    let mut view = KeysView {
        layout: Layout::of(&session, "Keys", "/keys"),
        done: done_message(&form.done),
        error: None,
        q: form.q.clone(),
        statuses: choices(&STATUSES, &form.status),
        user: form.user.clone(),
        owner_filters,
        teams: Vec::new(),
        can_create: session.caller.role() != Role::Viewer,
        rows: Vec::new(),
        newer: None,
        older: None,
        here: listing_path(&form, None),
        first: (!form.after.is_empty() || !form.before.is_empty()).then(|| {
            let start = ListForm {
                after: String::new(),
                before: String::new(),
                ..form.clone()
            };
            listing_path(&start, None)
        }),
    };
    if owner_filters {
        view.teams = team_options(app, &session.caller, &form.team).await?;
    }
    let (status, include_revoked) = match form.status.as_str() {
        "" => (None, false),
        "all" => (None, true),
        other => (
            Some(KeyStatus::from_str(other).map_err(UiError::bad_request)?),
            false,
        ),
    };
    let search = KeySearch {
        q: Some(form.q.clone()),
        status,
        limit: Some(PAGE),
        after: Some(form.after.clone()).filter(|a| !a.is_empty()),
        before: Some(form.before.clone()).filter(|b| !b.is_empty()),
    };
    let listed = match &route {
        Route::Own(me) => {
            let query = user_keys::ListQuery {
                include_revoked,
                q: search.q,
                status: search.status,
                limit: search.limit,
                after: search.after,
                before: search.before,
            };
            user_keys::own_keys(app, me, query).await
        }
        Route::Admin => {
            let user_id = match form.user.trim() {
                "" => None,
                name => match find_user(app, &session.caller, name).await? {
                    Some(user) => Some(user.id),
                    None => {
                        view.error = Some(format!(
                            "No user is named, or has the email or id, `{name}`."
                        ));
                        return Ok(render_with_status(StatusCode::NOT_FOUND, &view));
                    }
                },
            };
            let query = ListQuery {
                user_id,
                team_id: Some(form.team.clone()).filter(|t| !t.is_empty()),
                include_revoked,
                q: search.q,
                status: search.status,
                limit: search.limit,
                after: search.after,
                before: search.before,
            };
            api::listed(app, &session.caller, query).await
        }
    };
    let listed = match listed {
        Ok(listed) => listed,
        // The API's refusal, on the page that asked.
        Err(e) => {
            let e = UiError::from(e);
            view.error = Some(e.message);
            return Ok(render_with_status(e.status, &view));
        }
    };
    if let Some(page) = &listed.page {
        view.older = page
            .next_after
            .as_ref()
            .map(|id| listing_path(&form, Some(("after", id))));
        view.newer = page
            .prev_before
            .as_ref()
            .map(|id| listing_path(&form, Some(("before", id))));
    }
    view.rows = rows(app, &session, listed.keys).await?;
    Ok(render(&view))
}

/// The listing's path with the form's filters, and a page cursor.
fn listing_path(form: &ListForm, cursor: Option<(&str, &str)>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("q", &form.q),
        ("status", &form.status),
        ("user", &form.user),
        ("team", &form.team),
    ] {
        if !value.is_empty() {
            query.append_pair(name, value);
        }
    }
    match cursor {
        Some((name, id)) => {
            query.append_pair(name, id);
        }
        None => {
            for (name, value) in [("after", &form.after), ("before", &form.before)] {
                if !value.is_empty() {
                    query.append_pair(name, value);
                }
            }
        }
    }
    let query = query.finish();
    match query.is_empty() {
        true => "/keys".to_owned(),
        false => format!("/keys?{query}"),
    }
}

/// The rows of a page: each key with its owner's name, and the buttons the caller may use.
async fn rows(
    app: &AppState,
    session: &Session,
    keys: Vec<WithSpend<ApiKey>>,
) -> Result<Vec<KeyRow>, UiError> {
    let caller = &session.caller;
    let records: Vec<ApiKey> = keys.iter().map(|k| k.item.clone()).collect();
    let manages = caller.manages_keys(app, &records).await?;
    let mut names = Names::default();
    let wanted: Vec<(SpendKind, &str)> = records
        .iter()
        .flat_map(|key| {
            let user = key.user_id.as_deref().map(|id| (SpendKind::User, id));
            let team = key.team_id.as_deref().map(|id| (SpendKind::Team, id));
            user.into_iter().chain(team)
        })
        .collect();
    names.load(app, &wanted).await?;
    let now = domain::now();
    let mut rows = Vec::with_capacity(keys.len());
    for (key, manages) in keys.into_iter().zip(manages) {
        let owner = owner_of(&mut names, app, &key.item).await?;
        let status = KeyStatus::of(&key.item, now);
        let live = status != KeyStatus::Revoked;
        let own = key
            .item
            .user_id
            .as_deref()
            .is_some_and(|id| caller.is_user(id));
        rows.push(KeyRow {
            path: format!("/keys/{}", key.item.id),
            can_block: manages && live && !key.item.blocked,
            can_rotate: manages && live,
            can_unblock: manages && live && key.item.blocked,
            // A person may always revoke a key of their own (`DELETE /v1/user/keys/{id}`).
            can_revoke: live && (manages || own),
            status: status.as_str(),
            expires: key.item.expires_at.map(when).unwrap_or_default(),
            spend: usd(key.spend),
            budget: budget(&key.item.limits),
            owner,
            hint: key.item.key_hint,
            name: key.item.name,
        });
    }
    Ok(rows)
}

/// A key's owners as a row shows them (their names read by [`Names::load`] beforehand).
async fn owner_of(names: &mut Names, app: &AppState, key: &ApiKey) -> Result<String, UiError> {
    let mut parts = Vec::new();
    if let Some(id) = &key.user_id {
        parts.push(match names.user(app, id).await? {
            Some(username) => username,
            None => format!("deleted user {}", short(id)),
        });
    }
    if let Some(id) = &key.team_id {
        parts.push(match names.team(app, id).await? {
            Some(team) => format!("team {team}"),
            None => format!("deleted team {}", short(id)),
        });
    }
    Ok(match parts.is_empty() {
        true => "no owner".to_owned(),
        false => parts.join(", "),
    })
}

/// The live user a name, an email or an id names; for an org admin, only one of its org
/// (another org's users are not revealed).
async fn find_user(
    app: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<Option<domain::User>, UiError> {
    let found = match app.store.find_login_user(name).await? {
        Some(found) => Some(found.user),
        None => app.store.get_user(name).await?,
    };
    match found {
        Some(user) if caller.org_scope().is_some() => {
            let ours = caller.in_org(app, OrgThing::User(&user)).await?;
            Ok(ours.then_some(user))
        }
        found => Ok(found),
    }
}

/// The teams the caller sees (as `GET /admin/teams` answers them), for a select.
async fn team_options(
    app: &AppState,
    caller: &Caller,
    selected: &str,
) -> Result<Vec<TeamOption>, UiError> {
    let teams = if caller.reads_all() {
        app.store.list_teams().await?
    } else if let Some(org) = caller.org_scope() {
        let mut teams = app.store.list_teams().await?;
        teams.retain(|t| t.org_id.as_deref() == Some(org));
        teams
    } else {
        let mut teams = Vec::new();
        if let Some(user) = caller.user() {
            for membership in app.store.user_memberships(&user.id).await? {
                if let Some(team) = app.store.get_team(&membership.team_id).await? {
                    teams.push(team);
                }
            }
        }
        teams
    };
    Ok(teams
        .into_iter()
        .map(|t| TeamOption {
            selected: t.id == selected,
            id: t.id,
            name: t.name,
        })
        .collect())
}

/// The message of a `done=` word (only these: nothing a link carries is shown as text).
fn done_message(done: &str) -> Option<&'static str> {
    match done {
        "blocked" => {
            Some("The key is blocked: requests with it are refused until it is unblocked.")
        }
        "unblocked" => Some("The key is unblocked."),
        "revoked" => Some("The key is revoked: its secret no longer works."),
        _ => None,
    }
}

// ---- one key ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "ui/key.html")]
struct KeyView {
    layout: Layout,
    done: Option<&'static str>,
    row: KeyRow,
    key: ApiKey,
    created: String,
    updated: String,
    permissions: String,
    models: String,
    rpm: String,
    tpm: String,
    /// The old secret's end of life, after a rotation with a grace period.
    previous_until: String,
    /// When it was revoked, if it was.
    revoked: String,
    max_grace: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ShowQuery {
    done: String,
}

async fn show(
    State(ui): State<UiState>,
    session: Session,
    KeyId(id): KeyId,
    StrictQuery(q): StrictQuery<ShowQuery>,
) -> PageResult {
    let app = &ui.app;
    let key = api::read_key(app, &session.caller, &id).await?;
    let record = key.item.clone();
    let row = rows(app, &session, vec![key])
        .await?
        .pop()
        .ok_or_else(|| UiError::internal("a key read but not shown"))?;
    let join = |list: &[String], none: &str| match list.is_empty() {
        true => none.to_owned(),
        false => list.join(", "),
    };
    let view = KeyView {
        layout: Layout::of(&session, format!("Key {}", record.name), "/keys"),
        done: done_message(&q.done),
        created: when(record.created_at),
        updated: when(record.updated_at),
        permissions: join(&record.permissions, "as its owner"),
        models: join(&record.models, "as its owner"),
        rpm: record.limits.rpm.map(|n| n.to_string()).unwrap_or_default(),
        tpm: record.limits.tpm.map(|n| n.to_string()).unwrap_or_default(),
        previous_until: record
            .previous_expires_at
            .filter(|at| *at > domain::now())
            .map(when)
            .unwrap_or_default(),
        revoked: record.revoked_at.map(when).unwrap_or_default(),
        max_grace: api::MAX_GRACE_SECONDS,
        row,
        key: record,
    };
    Ok(render(&view))
}

// ---- creating a key ---------------------------------------------------------------------

/// The create form, as posted: every field as typed.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct NewKeyForm {
    name: String,
    /// `me`, `user`, `team` or `none`.
    owner: String,
    /// With `owner=user`: a username, an email or an id.
    owner_user: String,
    /// With `owner=team`: a team id.
    owner_team: String,
    /// Separated by commas or spaces.
    models: String,
    rpm: String,
    tpm: String,
    max_budget: String,
    budget_duration: String,
    max_parallel: String,
    /// `YYYY-MM-DDTHH:MM` (UTC), a date, RFC 3339, or empty.
    expires_at: String,
}

#[derive(Template)]
#[template(path = "ui/key_new.html")]
struct NewKeyView {
    layout: Layout,
    error: Option<String>,
    form: NewKeyForm,
    /// The owners the caller may choose (the API decides in the end).
    may_own: bool,
    may_name_user: bool,
    may_leave_unowned: bool,
    teams: Vec<TeamOption>,
    durations: Vec<Choice>,
}

async fn new_key(State(ui): State<UiState>, session: Session) -> PageResult {
    let form = NewKeyForm {
        owner: match session.caller.user() {
            Some(_) => "me".into(),
            None => "none".into(),
        },
        ..NewKeyForm::default()
    };
    new_key_page(&ui.app, &session, form, None).await
}

/// The create form, with what was typed and, after a refusal, why (with its status).
async fn new_key_page(
    app: &AppState,
    session: &Session,
    form: NewKeyForm,
    error: Option<UiError>,
) -> PageResult {
    let caller = &session.caller;
    // Viewers create nothing: the API's refusal, before a form they cannot use.
    if error.is_none() {
        caller.allow(caller.role() != Role::Viewer, "create keys")?;
    }
    let own_only = matches!(route_of(session), Route::Own(_));
    let teams = if own_only {
        Vec::new()
    } else {
        let mut teams = team_options(app, caller, &form.owner_team).await?;
        if !caller.is_admin() {
            // Only teams the caller owns take their keys; the API says so too.
            let mut owned = Vec::new();
            for team in teams {
                if caller.owns_team(app, &team.id).await? {
                    owned.push(team);
                }
            }
            teams = owned;
        }
        teams
    };
    let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
    let view = NewKeyView {
        layout: Layout::of(session, "New key", "/keys"),
        error: error.map(|e| e.message),
        may_own: caller.user().is_some(),
        may_name_user: caller.is_admin(),
        may_leave_unowned: caller.is_admin(),
        teams,
        durations: choices(&DURATIONS, &form.budget_duration),
        form,
    };
    Ok(render_with_status(status, &view))
}

/// `POST /ui/keys`: the form as `POST /admin/keys` (or `/v1/user/keys`) takes it.
async fn create(State(ui): State<UiState>, posted: Posted<NewKeyForm>) -> PageResult {
    let Posted { session, form } = posted;
    let app = &ui.app;
    let created = match create_from(app, &session, form.clone()).await {
        Ok(created) => created,
        Err(e) => return new_key_page(app, &session, form, Some(e)).await,
    };
    Ok(to_secret(&session.site, created))
}

async fn create_from(
    app: &AppState,
    session: &Session,
    form: NewKeyForm,
) -> Result<WithSecret, UiError> {
    let limits = KeyFields::of(&form)?;
    match route_of(session) {
        Route::Own(me) => {
            let body = CreateOwnKey {
                name: form.name,
                permissions: Vec::new(),
                models: limits.models,
                rpm: limits.rpm,
                tpm: limits.tpm,
                max_budget: limits.max_budget,
                budget_duration: limits.budget_duration,
                max_parallel: limits.max_parallel,
                expires_at: limits.expires_at,
                metadata: None,
            };
            Ok(user_keys::create_own_key(app, &me, body).await?)
        }
        Route::Admin => {
            let (user_id, team_id) = match form.owner.as_str() {
                "me" => (session.caller.user().map(|u| u.id.clone()), None),
                "user" => match find_user(app, &session.caller, form.owner_user.trim()).await? {
                    Some(user) => (Some(user.id), None),
                    None => {
                        return Err(UiError::bad_request(format!(
                            "Owner: no user is named, or has the email or id, `{}`.",
                            form.owner_user.trim()
                        )))
                    }
                },
                "team" if !form.owner_team.is_empty() => (None, Some(form.owner_team.clone())),
                "team" => return Err(UiError::bad_request("Owner: choose a team.")),
                _ => (None, None),
            };
            let body = CreateKey {
                name: form.name,
                user_id,
                team_id,
                permissions: Vec::new(),
                models: limits.models,
                rpm: limits.rpm,
                tpm: limits.tpm,
                max_budget: limits.max_budget,
                budget_duration: limits.budget_duration,
                max_parallel: limits.max_parallel,
                expires_at: limits.expires_at,
                metadata: None,
            };
            Ok(api::create_as(app, &session.caller, body).await?)
        }
    }
}

/// The typed fields of the create form, read into the API's types; a field that cannot be
/// read is refused with its name, as the API names its fields.
struct KeyFields {
    models: Vec<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_budget: Option<f64>,
    budget_duration: Option<BudgetDuration>,
    max_parallel: Option<i64>,
    expires_at: Option<Timestamp>,
}

impl KeyFields {
    fn of(form: &NewKeyForm) -> Result<KeyFields, UiError> {
        Ok(KeyFields {
            models: show::models(&form.models),
            rpm: show::whole("rpm", &form.rpm)?,
            tpm: show::whole("tpm", &form.tpm)?,
            max_budget: show::amount("max_budget", &form.max_budget)?,
            budget_duration: show::duration(&form.budget_duration)?,
            max_parallel: show::whole("max_parallel", &form.max_parallel)?,
            expires_at: expiry(&form.expires_at)?,
        })
    }
}

/// The expiry field: `2026-12-31T18:00` as a browser's date-time input sends it, read as
/// UTC, or anything the API takes (RFC 3339, a date, Unix seconds).
fn expiry(text: &str) -> Result<Option<Timestamp>, UiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
        return Ok(Some(at.and_utc().timestamp()));
    }
    rfc3339::parse(text)
        .map(Some)
        .map_err(|e| UiError::bad_request(format!("`expires_at`: {e}.")))
}

// ---- secrets ----------------------------------------------------------------------------

/// After a key was created or rotated: to its secret page, the secret in a cookie for
/// that page only.
fn to_secret(site: &Site, created: WithSecret) -> Response {
    let page = format!("/keys/{}/secret", created.key.id);
    let cookie = session::set_cookie(
        site,
        SECRET_COOKIE,
        created.secret.expose(),
        &site.link(&page),
        None,
        SameSite::Strict,
    );
    let mut response = site.redirect(&page);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

#[derive(Template)]
#[template(path = "ui/key_secret.html")]
struct SecretView {
    layout: Layout,
    key: ApiKey,
    /// The secret, when this is the one time it is shown.
    secret: Option<String>,
}

async fn secret(
    State(ui): State<UiState>,
    session: Session,
    KeyId(id): KeyId,
    headers: HeaderMap,
) -> PageResult {
    let app = &ui.app;
    let key = api::read_key(app, &session.caller, &id).await?.item;
    let presented =
        session::cookie(&headers, SECRET_COOKIE).filter(|p| api_key::validate(p).is_ok());
    let mut secret = None;
    if let Some(plain) = presented {
        let found = app.store.lookup_key(&KeyHash::of(plain).to_hex()).await?;
        if found.is_some_and(|f| f.key.id == id && !f.via_previous) {
            secret = Some(plain.to_owned());
        }
    }
    let status = match secret {
        Some(_) => StatusCode::OK,
        None => StatusCode::GONE,
    };
    let site = &session.site;
    let view = SecretView {
        layout: Layout::of(&session, format!("Key {}", key.name), "/keys"),
        key,
        secret,
    };
    let mut response = render_with_status(status, &view);
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(
            site,
            SECRET_COOKIE,
            "",
            &site.link(&format!("/keys/{id}/secret")),
            Some(0),
            SameSite::Strict,
        ),
    );
    Ok(response)
}

// ---- writes on one key ------------------------------------------------------------------

/// Where a row's form comes back to: a path under the UI (`/keys?…` or `/keys/{id}`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct BackForm {
    back: String,
    grace_seconds: String,
    confirm: String,
}

impl BackForm {
    /// `back` when it is a keys page, else the key's page; with `done=` added.
    fn to(&self, site: &Site, id: &str, done: &str) -> Response {
        let back = self.back.as_str();
        let back = if session::is_local_path(back) && back.starts_with("/keys") {
            back.to_owned()
        } else {
            format!("/keys/{id}")
        };
        let separator = if back.contains('?') { '&' } else { '?' };
        site.redirect(&format!("{back}{separator}done={done}"))
    }
}

async fn rotate(
    State(ui): State<UiState>,
    KeyId(id): KeyId,
    Posted { session, form }: Posted<BackForm>,
) -> PageResult {
    let grace = match form.grace_seconds.trim() {
        "" => 0,
        t => t.parse::<i64>().map_err(|_| {
            UiError::bad_request(format!(
                "`grace_seconds` must be a whole number, not `{t}`."
            ))
        })?,
    };
    let rotated = api::rotate_key(&ui.app, &session.caller, &id, grace).await?;
    Ok(to_secret(&session.site, rotated))
}

async fn block(
    State(ui): State<UiState>,
    KeyId(id): KeyId,
    Posted { session, form }: Posted<BackForm>,
) -> PageResult {
    api::set_blocked(&ui.app, &session.caller, &id, true).await?;
    Ok(form.to(&session.site, &id, "blocked"))
}

async fn unblock(
    State(ui): State<UiState>,
    KeyId(id): KeyId,
    Posted { session, form }: Posted<BackForm>,
) -> PageResult {
    api::set_blocked(&ui.app, &session.caller, &id, false).await?;
    Ok(form.to(&session.site, &id, "unblocked"))
}

/// Revokes after a confirmation: the browser's (with JavaScript), or else this page's.
async fn revoke(
    State(ui): State<UiState>,
    KeyId(id): KeyId,
    Posted { session, form }: Posted<BackForm>,
) -> PageResult {
    let app = &ui.app;
    if form.confirm != "yes" {
        let key = api::read_key(app, &session.caller, &id).await?.item;
        let view = ConfirmView {
            layout: Layout::of(&session, format!("Revoke key {}", key.name), "/keys"),
            heading: format!("Revoke the key {}?", key.name),
            message: format!(
                "Its secret ({}) stops working at once. This cannot be undone.",
                key.key_hint
            ),
            action: format!("/keys/{}/revoke", key.id),
            button: "Revoke",
            cancel: format!("/keys/{}", key.id),
            fields: vec![("back", form.back)],
        };
        return Ok(render(&view));
    }
    let revoked = match (route_of(&session), &session.caller.who) {
        (Route::Own(me), _) => user_keys::revoke_own_key(app, &me, &id).await,
        // A viewer's own key goes through the user route too: the one write a viewer has.
        (Route::Admin, Who::User(user)) if user.role == Role::Viewer => {
            user_keys::revoke_own_key(app, &signed_in(&session, user), &id).await
        }
        (Route::Admin, _) => api::revoke_key(app, &session.caller, &id).await,
    };
    revoked.map_err(|e: ApiError| UiError::from(e))?;
    Ok(form.to(&session.site, &id, "revoked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_field_reads_a_browser_s_date_time_as_utc() {
        assert_eq!(expiry("").unwrap(), None);
        assert_eq!(expiry("2030-01-02T03:04").unwrap(), Some(1_893_553_440));
        assert_eq!(expiry("2030-01-02").unwrap(), Some(1_893_542_400));
        assert!(expiry("next tuesday")
            .unwrap_err()
            .message
            .contains("expires_at"));
    }

    #[test]
    fn limits_name_the_field_that_cannot_be_read() {
        let form = |f: fn(&mut NewKeyForm)| {
            let mut form = NewKeyForm::default();
            f(&mut form);
            KeyFields::of(&form)
        };
        let ok = form(|f| {
            f.models = "gpt-4o, gpt-4o-mini  claude-3".into();
            f.rpm = " 60 ".into();
            f.max_budget = "$12.50".into();
            f.budget_duration = "1mo".into();
        })
        .ok()
        .unwrap();
        assert_eq!(ok.models, ["gpt-4o", "gpt-4o-mini", "claude-3"]);
        assert_eq!(ok.rpm, Some(60));
        assert_eq!(ok.max_budget, Some(12.5));
        assert_eq!(ok.budget_duration, Some(BudgetDuration::Month));
        let bad = form(|f| f.tpm = "lots".into()).err().unwrap();
        assert!(bad.message.contains("`tpm`"), "{}", bad.message);
        let bad = form(|f| f.max_budget = "ten".into()).err().unwrap();
        assert!(bad.message.contains("`max_budget`"), "{}", bad.message);
        let bad = form(|f| f.budget_duration = "2w".into()).err().unwrap();
        assert!(bad.message.contains("budget_duration"), "{}", bad.message);
    }
}
