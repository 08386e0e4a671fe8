//! `/admin/audit`: who changed what, when, from where.

use super::{list, ApiError, AppState, Caller, QueryParams};
use crate::domain::{rfc3339, AuditEvent};
use crate::store::AuditFilter;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/audit", get(list_audit))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<i64>,
    /// The `id` of the last event of the page before: the events after it in the log's
    /// order (older ones).
    pub before: Option<i64>,
}

pub(super) fn time(field: &str, value: Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| rfc3339::parse(&v).map_err(|e| ApiError::BadRequest(format!("`{field}`: {e}"))))
        .transpose()
}

async fn list_audit(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(listed(&app, &caller, q).await?))
}

/// `GET /admin/audit`: the events the query asks for, newest first; admins and viewers,
/// and org admins the events whose target is their org or one of its users, teams or keys.
pub(crate) async fn listed(
    app: &AppState,
    caller: &Caller,
    q: AuditQuery,
) -> Result<Vec<AuditEvent>, ApiError> {
    let org_id = caller.org_scope().map(str::to_owned);
    if org_id.is_none() {
        caller.require_reader("read the audit log")?;
    }
    if let Some(limit) = q.limit {
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "`limit` must be from 1 to 1000, got {limit}"
            )));
        }
    }
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        org_id,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        limit: q.limit,
        before: q.before,
    };
    Ok(app.store.list_audit(filter).await?)
}
