//! `/admin/alerts`: budget alerts and their delivery to the webhook.

use super::{list, ApiError, AppState, Caller, QueryParams};
use crate::store::{Alert, AlertFilter, AlertState, SpendKind};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/alerts", get(list_alerts))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertsQuery {
    pub state: Option<String>,
    pub entity_kind: Option<String>,
    pub entity_id: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /admin/alerts?state=pending|delivered|failed&entity_kind=key|user|team&entity_id=…
/// &limit=1..1000`, newest first; admins and viewers.
async fn list_alerts(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<AlertsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(listed(&app, &caller, q).await?))
}

/// `GET /admin/alerts`: the alerts the query asks for; admins and viewers, and org admins
/// those of their org.
pub(crate) async fn listed(
    app: &AppState,
    caller: &Caller,
    q: AlertsQuery,
) -> Result<Vec<Alert>, ApiError> {
    // Org admins read the alerts of their org and of its users, teams and keys.
    let org_id = caller.org_scope().map(str::to_owned);
    if org_id.is_none() {
        caller.require_reader("read budget alerts")?;
    }
    if let Some(limit) = q.limit {
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "`limit` must be from 1 to 1000, got {limit}"
            )));
        }
    }
    let state = q
        .state
        .map(|s| s.parse::<AlertState>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("`state`: {e}")))?;
    let entity_kind = q
        .entity_kind
        .map(|s| s.parse::<SpendKind>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("`entity_kind`: {e}")))?;
    let filter = AlertFilter {
        state,
        entity_kind,
        entity_id: q.entity_id,
        org_id,
        limit: q.limit,
    };
    Ok(app.store.list_alerts(filter).await?)
}
