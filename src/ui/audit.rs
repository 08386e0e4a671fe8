//! The audit page, `/ui/audit`: the audit log as `GET /admin/audit` answers it (admins and
//! viewers), newest first, with the API's filters (actor, action, since) and pages of 50
//! that follow the API's `before` cursor.
//!
//! The actor filter takes what the log holds (`master`, `user:{id}`, `key:{id}`, …) or a
//! username or email, which is looked up and becomes `user:{id}`.

use super::form::StrictQuery;
use super::layout::{render_with_status, Layout, PageResult};
use super::session::Session;
use super::show::{self, Names};
use super::web::UiError;
use super::UiState;
use crate::admin::audit::{self as api, AuditQuery};
use crate::admin::AppState;
use crate::domain::AuditEvent;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new().route("/ui/audit", get(page))
}

/// Events per page.
const PAGE: i64 = 50;

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct AuditForm {
    actor: String,
    action: String,
    since: String,
    /// The id of the last event of the page before.
    before: String,
}

struct Row {
    at: String,
    /// The actor's name where it has one, else the actor as the log has it.
    actor: String,
    /// The actor as the log has it, its id cut short, when `actor` is a name.
    actor_raw: String,
    /// The actor's page under the UI, for users and keys that still exist.
    actor_path: Option<String>,
    action: String,
    /// The target as the log has it, and cut short for the table.
    target: String,
    target_short: String,
    target_path: Option<String>,
    source: String,
    details: String,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditView {
    layout: Layout,
    error: Option<String>,
    form: AuditForm,
    rows: Vec<Row>,
    older: Option<String>,
    first: Option<String>,
}

async fn page(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<AuditForm>,
) -> PageResult {
    let app = &ui.app;
    let mut view = AuditView {
        layout: Layout::of(&session, "Audit log", "/audit"),
        error: None,
        form: form.clone(),
        rows: Vec::new(),
        older: None,
        first: (!form.before.is_empty()).then(|| {
            link(&AuditForm {
                before: String::new(),
                ..form.clone()
            })
        }),
    };
    let listed = async {
        let actor = show::filter_text("actor", &form.actor, 200)?;
        let action = show::filter_text("action", &form.action, 200)?;
        let since = show::filter_text("since", &form.since, 64)?;
        let before = match form.before.trim() {
            "" => None,
            b => Some(b.parse::<i64>().map_err(|_| {
                UiError::bad_request(format!(
                    "`before` must be the id of an event from an earlier page, not `{}`.",
                    show::clip(b)
                ))
            })?),
        };
        let query = AuditQuery {
            actor: actor_filter(app, &actor).await?,
            action: Some(action).filter(|a| !a.is_empty()),
            since: Some(since).filter(|s| !s.is_empty()),
            limit: Some(PAGE),
            before,
            ..AuditQuery::default()
        };
        api::listed(app, &session.caller, query)
            .await
            .map_err(UiError::from)
    }
    .await;
    let events = match listed {
        Ok(events) => events,
        Err(e) => {
            view.error = Some(e.message);
            return Ok(render_with_status(e.status, &view));
        }
    };
    if events.len() as i64 == PAGE {
        if let Some(last) = events.last() {
            view.older = Some(link(&AuditForm {
                before: last.id.to_string(),
                ..form.clone()
            }));
        }
    }
    let mut names = Names::default();
    for event in events {
        view.rows.push(row(app, &mut names, event).await?);
    }
    Ok(render_with_status(StatusCode::OK, &view))
}

/// The API's `actor`: as typed when it has the log's shape (`user:…`, `master`), else the
/// user with that username or email as `user:{id}`, else as typed (no event will match).
async fn actor_filter(app: &AppState, typed: &str) -> Result<Option<String>, UiError> {
    if typed.is_empty() {
        return Ok(None);
    }
    if !typed.contains(':') {
        if let Some(found) = app.store.find_login_user(typed).await? {
            return Ok(Some(format!("user:{}", found.user.id)));
        }
    }
    Ok(Some(typed.to_owned()))
}

/// `/audit?…` with the form's filters.
fn link(form: &AuditForm) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("actor", &form.actor),
        ("action", &form.action),
        ("since", &form.since),
        ("before", &form.before),
    ] {
        if !value.is_empty() {
            query.append_pair(name, value);
        }
    }
    match query.finish() {
        q if q.is_empty() => "/audit".to_owned(),
        q => format!("/audit?{q}"),
    }
}

async fn row(app: &AppState, names: &mut Names, event: AuditEvent) -> Result<Row, UiError> {
    let named = match event.actor.split_once(':') {
        Some(("user", id)) => names
            .user(app, id)
            .await?
            .map(|name| (name, format!("/users/{id}"), format!("user:{}", cut(id)))),
        Some(("key", id)) => names.key(app, id).await?.map(|name| {
            (
                format!("key {name}"),
                format!("/keys/{id}"),
                format!("key:{}", cut(id)),
            )
        }),
        _ => None,
    };
    let (actor, actor_path, actor_raw) = match named {
        Some((name, path, raw)) => (name, Some(path), raw),
        None => (event.actor.clone(), None, String::new()),
    };
    let target = event.target.clone().unwrap_or_default();
    // What a target names follows from the action: `key.*` a key, `user.*` a user,
    // `team.*` a team (`team/user` for members).
    let target_path = match event.action.split('.').next() {
        _ if target.is_empty() => None,
        Some("key") => Some(format!("/keys/{target}")),
        Some("user") => Some(format!("/users/{target}")),
        Some("team") => Some(format!(
            "/teams/{}",
            target.split('/').next().unwrap_or(&target)
        )),
        _ => None,
    };
    Ok(Row {
        at: show::when(event.at),
        actor,
        actor_raw,
        actor_path,
        target_short: target.split('/').map(cut).collect::<Vec<_>>().join("/"),
        action: event.action,
        target,
        target_path,
        source: event.source.unwrap_or_default(),
        details: match &event.details {
            serde_json::Value::Object(map) if map.is_empty() => String::new(),
            serde_json::Value::Null => String::new(),
            details => details.to_string(),
        },
    })
}

/// An id cut to its first 8 and last 4 characters, for a table (the whole one is in the
/// link's title). Ids made close in time share their first characters (UUIDv7), so the
/// last ones tell them apart.
fn cut(id: &str) -> String {
    match (
        id.len() > 16,
        id.get(..8),
        id.get(id.len().saturating_sub(4)..),
    ) {
        (true, Some(head), Some(tail)) => format!("{head}…{tail}"),
        _ => id.to_owned(),
    }
}
