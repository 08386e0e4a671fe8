//! The alerts page, `/ui/alerts`: budget alerts and their delivery to the webhook (and by
//! email when `budgets.alert_email` is set: one more column), as
//! `GET /admin/alerts` lists them (admins and viewers), newest first, with the API's
//! filters (state, kind of entity, entity) and how many.

use super::form::StrictQuery;
use super::layout::{render_with_status, Layout, PageResult};
use super::session::Session;
use super::show::{self, Choice, Names};
use super::web::UiError;
use super::UiState;
use crate::admin::alerts::{self as api, AlertsQuery};
use crate::store::{AlertState, SpendKind};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new().route("/ui/alerts", get(page))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AlertsForm {
    state: String,
    kind: String,
    /// A key, user or team id.
    entity: String,
    limit: String,
}

const STATES: [(&str, &str); 4] = [
    ("", "Any state"),
    ("pending", "Pending"),
    ("delivered", "Delivered"),
    ("failed", "Failed"),
];

const KINDS: [(&str, &str); 4] = [
    ("", "Keys, users and teams"),
    ("key", "Keys"),
    ("user", "Users"),
    ("team", "Teams"),
];

const LIMITS: [(&str, &str); 3] = [("100", "100"), ("500", "500"), ("1000", "1,000")];

struct Row {
    created: String,
    kind: &'static str,
    name: String,
    path: String,
    threshold: u32,
    spend: String,
    budget: String,
    period: String,
    state: &'static str,
    attempts: u32,
    next_attempt: String,
    delivered: String,
    last_error: String,
    /// The email channel's state, attempts and last error (shown when mail is configured).
    email_state: &'static str,
    email_attempts: u32,
    email_error: String,
}

#[derive(Template)]
#[template(path = "ui/alerts.html")]
struct AlertsView {
    layout: Layout,
    error: Option<String>,
    states: Vec<Choice>,
    kinds: Vec<Choice>,
    limits: Vec<Choice>,
    entity: String,
    rows: Vec<Row>,
    limit: i64,
    /// Whether a webhook is configured (without one alerts stay pending).
    webhook: bool,
    /// Whether alerts are mailed (`budgets.alert_email`): the email column is shown.
    email: bool,
}

async fn page(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<AlertsForm>,
) -> PageResult {
    let app = &ui.app;
    let entity = show::filter_text("entity", &form.entity, 64)?;
    let limit = match form.limit.trim() {
        "" => 100,
        l => l.parse::<i64>().map_err(|_| {
            UiError::bad_request(format!(
                "`limit` must be a whole number, not `{}`.",
                show::clip(l)
            ))
        })?,
    };
    let mut view = AlertsView {
        layout: Layout::of(&session, "Alerts", "/alerts"),
        error: None,
        states: show::choices(&STATES, &form.state),
        kinds: show::choices(&KINDS, &form.kind),
        limits: show::choices(&LIMITS, &limit.to_string()),
        entity: entity.clone(),
        rows: Vec::new(),
        limit,
        webhook: !app.config.budgets.alert_webhook.trim().is_empty(),
        email: app.config.budgets.alert_email.is_some(),
    };
    let some = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let query = AlertsQuery {
        state: some(&form.state),
        entity_kind: some(&form.kind),
        entity_id: some(&entity),
        limit: Some(limit),
    };
    let alerts = match api::listed(app, &session.caller, query).await {
        Ok(alerts) => alerts,
        Err(e) => {
            let e = UiError::from(e);
            view.error = Some(e.message);
            return Ok(render_with_status(e.status, &view));
        }
    };
    let mut names = Names::default();
    let wanted: Vec<(SpendKind, &str)> = alerts
        .iter()
        .map(|a| (a.entity_kind, a.entity_id.as_str()))
        .collect();
    names.load(app, &wanted).await?;
    for alert in alerts {
        let id = alert.entity_id.as_str();
        let (kind, name, path) = match alert.entity_kind {
            SpendKind::Key => ("key", names.key(app, id).await?, format!("/keys/{id}")),
            SpendKind::User => ("user", names.user(app, id).await?, format!("/users/{id}")),
            SpendKind::Team => ("team", names.team(app, id).await?, format!("/teams/{id}")),
        };
        view.rows.push(Row {
            created: show::when(alert.created_at),
            kind,
            name: name.unwrap_or_else(|| format!("{kind} {} (gone)", show::short(id))),
            path,
            threshold: alert.threshold,
            spend: show::usd(alert.spend_usd),
            budget: show::usd(alert.budget_usd),
            period: format!(
                "{} to {}",
                show::day(alert.period_start),
                show::day(alert.period_end - 1)
            ),
            state: alert.state.as_str(),
            attempts: alert.attempts,
            next_attempt: match alert.state {
                AlertState::Pending => alert.next_attempt_at.map(show::when).unwrap_or_default(),
                _ => String::new(),
            },
            delivered: alert.delivered_at.map(show::when).unwrap_or_default(),
            last_error: alert.last_error.unwrap_or_default(),
            email_state: alert.email.state.as_str(),
            email_attempts: alert.email.attempts,
            email_error: alert.email.last_error.unwrap_or_default(),
        });
    }
    Ok(render_with_status(StatusCode::OK, &view))
}
