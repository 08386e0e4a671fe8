//! `/admin/budgets`: the keys, users and teams that have a `max_budget`, each with the
//! spend of its current budget period and the alert thresholds (`budgets.alert_thresholds`)
//! that spend has reached.
//!
//! What a caller sees follows the role table: admins and viewers every budget; everyone
//! else their own keys, the keys of the teams they own, themselves, and the teams they
//! belong to (what `GET /admin/keys`, `/admin/users/{id}` and `/admin/teams` show them).
//!
//! Keys are read with [`KeyStore::budgeted_keys`] (only those with a budget). The spend is
//! [`UsageStore::current_spend`]'s, read for all entities at once with
//! [`UsageStore::spends`] over each one's period, so a page of budgets costs one query per
//! kind and one per 1024 budgets, not one per entity.
//!
//! [`KeyStore::budgeted_keys`]: crate::store::KeyStore::budgeted_keys
//! [`UsageStore::current_spend`]: crate::store::UsageStore::current_spend
//! [`UsageStore::spends`]: crate::store::UsageStore::spends

use super::{list, ApiError, AppState, Caller, QueryParams};
use crate::domain::{self, rfc3339, ApiKey, BudgetDuration, Limits, Timestamp};
use crate::store::{KeyFilter, SpendKind};
use crate::usage::{alerts, period};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/budgets", get(list_budgets))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetsQuery {
    /// `key`, `user` or `team`; all three when absent.
    pub kind: Option<String>,
}

/// One budget as `GET /admin/budgets` answers it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Budget {
    pub kind: SpendKind,
    pub id: String,
    /// The key's, team's name; the user's username.
    pub name: String,
    /// USD per period.
    pub max_budget: f64,
    /// The period in force: the entity's `budget_duration`, `1mo` without one.
    pub budget_duration: BudgetDuration,
    /// The current period, `[period_start, period_end)`.
    #[serde(with = "rfc3339")]
    pub period_start: Timestamp,
    #[serde(with = "rfc3339")]
    pub period_end: Timestamp,
    /// USD spent in the current period (as the entity's `spend`).
    pub spend: f64,
    /// The thresholds of `budgets.alert_thresholds` (whole percents, ascending) that the
    /// spend has reached, by the rule budget alerts are raised with.
    pub thresholds_reached: Vec<u32>,
}

async fn list_budgets(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<BudgetsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(listed(&app, &caller, q).await?))
}

/// An entity with a budget, before its spend is read.
struct Budgeted {
    kind: SpendKind,
    id: String,
    name: String,
    limits: Limits,
    /// `created_at`: the anchor of `30d` periods.
    anchor: Timestamp,
}

/// `GET /admin/budgets`: the budgets the caller may read, keys first, then users, then
/// teams, then orgs, each kind by name.
pub(crate) async fn listed(
    app: &AppState,
    caller: &Caller,
    q: BudgetsQuery,
) -> Result<Vec<Budget>, ApiError> {
    let kinds: Vec<SpendKind> = match q.kind.as_deref() {
        None | Some("") => vec![
            SpendKind::Key,
            SpendKind::User,
            SpendKind::Team,
            SpendKind::Org,
        ],
        Some(kind) => vec![kind
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("`kind`: {e}")))?],
    };
    let mut entities = Vec::new();
    for kind in kinds {
        let mut some = match kind {
            SpendKind::Key => keys(app, caller).await?,
            SpendKind::User => users(app, caller).await?,
            SpendKind::Team => teams(app, caller).await?,
            SpendKind::Org => orgs(app, caller).await?,
        };
        some.retain(|e| e.limits.max_budget.is_some());
        some.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        entities.extend(some);
    }
    let now = domain::now();
    let windows: Vec<(Timestamp, Timestamp)> = entities
        .iter()
        .map(|e| period::window(period::effective(e.limits.budget_duration), now, e.anchor))
        .collect();
    let periods: Vec<(SpendKind, &str, Timestamp, Timestamp)> = entities
        .iter()
        .zip(&windows)
        .map(|(e, (start, end))| (e.kind, e.id.as_str(), *start, *end))
        .collect();
    let spends = app.store.spends(&periods).await?;
    let thresholds: Vec<u32> = app
        .config
        .budgets
        .alert_thresholds
        .iter()
        .map(|t| u32::from(*t))
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .collect();
    Ok(entities
        .into_iter()
        .zip(windows)
        .zip(spends)
        .map(|((e, (start, end)), spend)| {
            let max_budget = e.limits.max_budget.unwrap_or_default();
            Budget {
                thresholds_reached: alerts::crossed(&thresholds, spend, max_budget),
                kind: e.kind,
                id: e.id,
                name: e.name,
                max_budget,
                budget_duration: period::effective(e.limits.budget_duration),
                period_start: start,
                period_end: end,
                spend,
            }
        })
        .collect())
}

/// Live keys: every one for admins, viewers and custom roles with `usage:read`; else the caller's own and those of the
/// teams they own.
async fn keys(app: &AppState, caller: &Caller) -> Result<Vec<Budgeted>, ApiError> {
    let of = |key: ApiKey| Budgeted {
        kind: SpendKind::Key,
        id: key.id,
        name: key.name,
        limits: key.limits,
        anchor: key.created_at,
    };
    if caller.reads_usage() {
        let all = app.store.budgeted_keys(KeyFilter::default()).await?;
        return Ok(all.into_iter().map(of).collect());
    }
    if let Some(org) = caller.org_scope() {
        let filter = KeyFilter {
            org_id: Some(org.to_owned()),
            ..KeyFilter::default()
        };
        let all = app.store.budgeted_keys(filter).await?;
        return Ok(all.into_iter().map(of).collect());
    }
    let Some(user) = caller.user() else {
        return Ok(Vec::new());
    };
    let mut found = app
        .store
        .budgeted_keys(KeyFilter {
            user_id: Some(user.id.clone()),
            ..KeyFilter::default()
        })
        .await?;
    for membership in app.store.user_memberships(&user.id).await? {
        if caller.owns_team(app, &membership.team_id).await? {
            let team_keys = app
                .store
                .budgeted_keys(KeyFilter {
                    team_id: Some(membership.team_id.clone()),
                    ..KeyFilter::default()
                })
                .await?;
            for key in team_keys {
                if !found.iter().any(|k| k.id == key.id) {
                    found.push(key);
                }
            }
        }
    }
    Ok(found.into_iter().map(of).collect())
}

/// Live users: every one for admins, viewers and custom roles with `usage:read`; else the caller.
async fn users(app: &AppState, caller: &Caller) -> Result<Vec<Budgeted>, ApiError> {
    let users = if caller.reads_usage() {
        app.store.list_users().await?
    } else if let Some(org) = caller.org_scope() {
        let mut users = app.store.list_users().await?;
        users.retain(|u| u.org_id.as_deref() == Some(org));
        users
    } else {
        match caller.user() {
            Some(me) => vec![me.clone()],
            None => Vec::new(),
        }
    };
    Ok(users
        .into_iter()
        .map(|u| Budgeted {
            kind: SpendKind::User,
            id: u.id,
            name: u.username,
            limits: u.limits,
            anchor: u.created_at,
        })
        .collect())
}

/// Live teams: every one for admins, viewers and custom roles with `usage:read`; else those the caller belongs to.
async fn teams(app: &AppState, caller: &Caller) -> Result<Vec<Budgeted>, ApiError> {
    let mut teams = app.store.list_teams().await?;
    if let Some(org) = caller.org_scope() {
        teams.retain(|t| t.org_id.as_deref() == Some(org));
    } else if !caller.reads_usage() {
        let mine: Vec<String> = match caller.user() {
            Some(me) => app
                .store
                .user_memberships(&me.id)
                .await?
                .into_iter()
                .map(|m| m.team_id)
                .collect(),
            None => Vec::new(),
        };
        teams.retain(|t| mine.contains(&t.id));
    }
    Ok(teams
        .into_iter()
        .map(|t| Budgeted {
            kind: SpendKind::Team,
            id: t.id,
            name: t.name,
            limits: t.limits,
            anchor: t.created_at,
        })
        .collect())
}

/// The orgs the caller reads (see [`super::orgs::listed`]).
async fn orgs(app: &AppState, caller: &Caller) -> Result<Vec<Budgeted>, ApiError> {
    let mut orgs = app.store.list_orgs().await?;
    if !caller.reads_all() {
        let mine = caller.user().and_then(|u| u.org_id.as_deref());
        orgs.retain(|o| Some(o.id.as_str()) == mine);
    }
    Ok(orgs
        .into_iter()
        .map(|o| Budgeted {
            kind: SpendKind::Org,
            id: o.id,
            name: o.name,
            limits: o.limits,
            anchor: o.created_at,
        })
        .collect())
}
