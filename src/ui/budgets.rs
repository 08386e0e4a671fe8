//! The budgets page, `/ui/budgets`: every key, user and team with a `max_budget` that the
//! reader may see (`GET /admin/budgets`), with its spend in the current period against the
//! limit (a `<meter>` and the numbers), the period, and the alert thresholds
//! (`budgets.alert_thresholds`) its spend has reached.

use super::form::StrictQuery;
use super::layout::{render_with_status, Layout, PageResult};
use super::session::Session;
use super::show::{self, Choice};
use super::web::UiError;
use super::UiState;
use crate::admin::budgets::{self as api, Budget, BudgetsQuery};
use crate::store::SpendKind;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<UiState> {
    Router::new().route("/ui/budgets", get(page))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BudgetsForm {
    /// `key`, `user`, `team`, or empty for all three.
    kind: String,
}

const KINDS: [(&str, &str); 4] = [
    ("", "Keys, users and teams"),
    ("key", "Keys"),
    ("user", "Users"),
    ("team", "Teams"),
];

/// A budget as a row shows it.
struct Row {
    kind: &'static str,
    name: String,
    /// The entity's page under the UI.
    path: String,
    spend: String,
    limit: String,
    /// Spend over limit, for the meter (0 to 1 and beyond).
    ratio: f64,
    percent: String,
    /// `over`, `high` (a threshold of 90 % or more reached), or empty.
    level: &'static str,
    period: String,
    duration: String,
    /// The thresholds reached, `50 %, 75 %`; empty when none.
    reached: String,
    /// The thresholds in force not reached yet.
    pending: String,
}

#[derive(Template)]
#[template(path = "ui/budgets.html")]
struct BudgetsView {
    layout: Layout,
    error: Option<String>,
    kinds: Vec<Choice>,
    rows: Vec<Row>,
    thresholds: String,
    over: usize,
}

async fn page(
    State(ui): State<UiState>,
    session: Session,
    StrictQuery(form): StrictQuery<BudgetsForm>,
) -> PageResult {
    let app = &ui.app;
    let mut thresholds: Vec<u32> = app
        .config
        .budgets
        .alert_thresholds
        .iter()
        .map(|t| u32::from(*t))
        .collect();
    thresholds.sort_unstable();
    thresholds.dedup();
    let mut view = BudgetsView {
        layout: Layout::of(&session, "Budgets", "/budgets"),
        error: None,
        kinds: show::choices(&KINDS, &form.kind),
        rows: Vec::new(),
        thresholds: percents(&thresholds),
        over: 0,
    };
    let query = BudgetsQuery {
        kind: Some(form.kind.trim().to_owned()).filter(|k| !k.is_empty()),
    };
    let budgets = match api::listed(app, &session.caller, query).await {
        Ok(budgets) => budgets,
        Err(e) => {
            let e = UiError::from(e);
            view.error = Some(e.message);
            return Ok(render_with_status(e.status, &view));
        }
    };
    view.rows = budgets.into_iter().map(|b| row(b, &thresholds)).collect();
    view.over = view.rows.iter().filter(|r| r.level == "over").count();
    Ok(render_with_status(StatusCode::OK, &view))
}

fn row(b: Budget, thresholds: &[u32]) -> Row {
    let ratio = match b.max_budget > 0.0 {
        true => b.spend / b.max_budget,
        false if b.spend > 0.0 => f64::INFINITY,
        false => 0.0,
    };
    let top = b.thresholds_reached.last().copied().unwrap_or(0);
    let level = if ratio >= 1.0 {
        "over"
    } else if top >= 90 {
        "high"
    } else {
        ""
    };
    let pending: Vec<u32> = thresholds
        .iter()
        .copied()
        .filter(|t| !b.thresholds_reached.contains(t))
        .collect();
    let (kind, path) = match b.kind {
        SpendKind::Key => ("key", format!("/keys/{}", b.id)),
        SpendKind::User => ("user", format!("/users/{}", b.id)),
        SpendKind::Team => ("team", format!("/teams/{}", b.id)),
        // The web UI has no page of an org yet.
        SpendKind::Org => ("org", "/budgets".to_owned()),
    };
    Row {
        kind,
        path,
        name: b.name,
        spend: show::usd(b.spend),
        limit: show::usd(b.max_budget),
        // The meter's value is capped at its maximum; the text says how far over it is.
        ratio: ratio.clamp(0.0, 1.0),
        percent: match ratio.is_finite() {
            true => format!("{:.0} %", ratio * 100.0),
            false => "over a zero budget".to_owned(),
        },
        level,
        // The end is exclusive: the period's last day is the day before it.
        period: format!(
            "{} to {}",
            show::day(b.period_start),
            show::day(b.period_end - 1)
        ),
        duration: b.budget_duration.to_string(),
        reached: percents(&b.thresholds_reached),
        pending: percents(&pending),
    }
}

/// `50 %, 75 %`.
fn percents(list: &[u32]) -> String {
    list.iter()
        .map(|t| format!("{t} %"))
        .collect::<Vec<_>>()
        .join(", ")
}
