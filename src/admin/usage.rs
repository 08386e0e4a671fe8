//! Usage reports: `GET /admin/usage` and the caller's own `GET /v1/user/usage`,
//! `/v1/user/usage/daily`, `/v1/user/usage/monthly`.
//!
//! Every report answers `{"data":[{"group","requests","input_tokens","output_tokens",
//! "cost_usd"}],"total":{…}}`, the total being the sum of exactly the rows shown.

use super::access::SignedIn;
use super::audit::time;
use super::{ApiError, AppState, Caller, QueryParams};
use crate::store::{GroupBy, UsageQuery, UsageReport, UsageRow};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/usage", get(admin_report))
        .route("/v1/user/usage", get(own_report))
        .route("/v1/user/usage/daily", get(own_daily))
        .route("/v1/user/usage/monthly", get(own_monthly))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminQuery {
    pub group_by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub org_id: Option<String>,
}

fn group_by(value: Option<&str>, default: GroupBy) -> Result<GroupBy, ApiError> {
    value.map_or(Ok(default), |v| {
        v.parse()
            .map_err(|e: String| ApiError::BadRequest(format!("`group_by`: {e}")))
    })
}

/// Admins, viewers and custom roles with `usage:read` read every report; a team owner
/// reads their team's (`team_id`).
async fn admin_report(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<AdminQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    report(&app, &caller, q).await.map(Json)
}

/// `GET /admin/usage`: the report the query asks for, when the caller may read it.
pub(crate) async fn report(
    app: &AppState,
    caller: &Caller,
    mut q: AdminQuery,
) -> Result<UsageReport, ApiError> {
    if let Some(org) = caller.org_scope() {
        // An org admin reads its org's usage only: the filter is forced to it, and another
        // org named is 404.
        match q.org_id.as_deref() {
            Some(id) if id != org => return Err(ApiError::not_found("org", id)),
            _ => q.org_id = Some(org.to_owned()),
        }
    } else if !caller.reads_usage() {
        let owns = match &q.team_id {
            Some(team) => caller.owns_team(app, team).await?,
            None => false,
        };
        caller.allow(owns, "read usage beyond the teams they own")?;
    }
    let query = UsageQuery {
        group_by: group_by(q.group_by.as_deref(), GroupBy::Model)?,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        user_id: q.user_id,
        key_id: q.key_id,
        team_id: q.team_id,
        org_id: q.org_id,
    };
    Ok(app.store.usage_report(query).await?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct OwnQuery {
    pub group_by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// `GET /v1/user/usage` (and its daily form): the caller's own usage, grouped by
/// `group_by` or else by `default`.
pub(crate) async fn own(
    app: &AppState,
    me: &SignedIn,
    q: OwnQuery,
    default: GroupBy,
) -> Result<UsageReport, ApiError> {
    let group_by = group_by(q.group_by.as_deref(), default)?;
    if matches!(group_by, GroupBy::User | GroupBy::Org) {
        return Err(ApiError::BadRequest(
            "`group_by`: a user's own report groups by key, team, model or day".into(),
        ));
    }
    let query = UsageQuery {
        group_by,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        user_id: Some(me.user.id.clone()),
        key_id: None,
        team_id: None,
        org_id: None,
    };
    Ok(app.store.usage_report(query).await?)
}

/// The caller's usage, by model unless `group_by` says otherwise.
async fn own_report(
    State(app): State<AppState>,
    me: SignedIn,
    QueryParams(q): QueryParams<OwnQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    own(&app, &me, q, GroupBy::Model).await.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    since: Option<String>,
    until: Option<String>,
}

/// The caller's usage per UTC day (`YYYY-MM-DD`).
async fn own_daily(
    State(app): State<AppState>,
    me: SignedIn,
    QueryParams(w): QueryParams<Window>,
) -> Result<Json<UsageReport>, ApiError> {
    let q = OwnQuery {
        group_by: None,
        since: w.since,
        until: w.until,
    };
    own(&app, &me, q, GroupBy::Day).await.map(Json)
}

/// The caller's usage per UTC month (`YYYY-MM`): the daily rows summed by month.
async fn own_monthly(
    State(app): State<AppState>,
    me: SignedIn,
    QueryParams(w): QueryParams<Window>,
) -> Result<Json<UsageReport>, ApiError> {
    let q = OwnQuery {
        group_by: None,
        since: w.since,
        until: w.until,
    };
    let daily = own(&app, &me, q, GroupBy::Day).await?;
    Ok(Json(by_month(daily)))
}

/// Days (`YYYY-MM-DD`, chronological) summed into months (`YYYY-MM`).
fn by_month(daily: UsageReport) -> UsageReport {
    let mut months: Vec<UsageRow> = Vec::new();
    for day in daily.data {
        let month = day.group.get(..7).unwrap_or(&day.group).to_owned();
        match months.last_mut() {
            Some(last) if last.group == month => {
                last.requests += day.requests;
                last.input_tokens += day.input_tokens;
                last.output_tokens += day.output_tokens;
                last.cost_usd += day.cost_usd;
            }
            _ => months.push(UsageRow {
                group: month,
                ..day
            }),
        }
    }
    UsageReport::from_rows(months)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, requests: u64, cost: f64) -> UsageRow {
        UsageRow {
            group: group.into(),
            requests,
            input_tokens: requests * 10,
            output_tokens: requests,
            cost_usd: cost,
        }
    }

    #[test]
    fn days_sum_into_months() {
        let daily = UsageReport::from_rows(vec![
            row("2026-10-31", 1, 0.5),
            row("2026-11-01", 2, 0.25),
            row("2026-11-24", 3, 0.125),
        ]);
        let monthly = by_month(daily.clone());
        assert_eq!(
            monthly.data,
            vec![row("2026-10", 1, 0.5), {
                let mut r = row("2026-11", 5, 0.375);
                r.input_tokens = 50;
                r
            }]
        );
        assert_eq!(monthly.total, daily.total);
    }
}
