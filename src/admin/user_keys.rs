//! Self-service keys: `GET|POST /v1/user/keys`, `DELETE /v1/user/keys/{id}`. A signed-in
//! person lists, creates and revokes their own keys; the permissions and models of a new
//! key can only narrow their own.

use super::access::SignedIn;
use super::keys::{create_key, write_key, CreateKey, WithSecret};
use super::{all_with_spend, list, whole, ApiError, AppState, JsonBody, QueryParams};
use crate::domain::{self, ApiKey, BudgetDuration, Role, Timestamp};
use crate::store::{KeyFilter, SpendKind};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/user/keys", get(list_own).post(create_own))
        .route("/v1/user/keys/{id}", delete(revoke_own))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    include_revoked: bool,
}

async fn list_own(
    State(app): State<AppState>,
    me: SignedIn,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = app
        .store
        .list_keys(KeyFilter {
            user_id: Some(me.user.id.clone()),
            team_id: None,
            include_revoked: q.include_revoked,
        })
        .await?;
    Ok(list(
        all_with_spend(&app, SpendKind::Key, keys, |k| k.id.clone()).await?,
    ))
}

/// The body of `POST /v1/user/keys`: that of `POST /admin/keys` without the owner fields
/// (the owner is the caller).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOwnKey {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default, deserialize_with = "whole::option")]
    rpm: Option<i64>,
    #[serde(default, deserialize_with = "whole::option")]
    tpm: Option<i64>,
    max_budget: Option<f64>,
    budget_duration: Option<BudgetDuration>,
    #[serde(default, with = "domain::rfc3339::option")]
    expires_at: Option<Timestamp>,
    metadata: Option<serde_json::Value>,
}

async fn create_own(
    State(app): State<AppState>,
    me: SignedIn,
    JsonBody(body): JsonBody<CreateOwnKey>,
) -> Result<(StatusCode, Json<WithSecret>), ApiError> {
    me.caller
        .allow(me.user.role != Role::Viewer, "create keys")?;
    let body = CreateKey {
        name: body.name,
        user_id: Some(me.user.id.clone()),
        team_id: None,
        permissions: body.permissions,
        models: body.models,
        rpm: body.rpm,
        tpm: body.tpm,
        max_budget: body.max_budget,
        budget_duration: body.budget_duration,
        expires_at: body.expires_at,
        metadata: body.metadata,
    };
    create_key(&app, &me.caller, body).await
}

/// Revokes one of the caller's keys; someone else's key is "not found", so ids of other
/// people's keys cannot be probed.
async fn revoke_own(
    State(app): State<AppState>,
    me: SignedIn,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let own = app
        .store
        .get_key(&id)
        .await?
        .is_some_and(|k| k.user_id.as_deref() == Some(me.user.id.as_str()));
    if !own {
        return Err(ApiError::not_found("key", &id));
    }
    write_key(
        &app,
        &id,
        app.store.revoke_key(&me.caller.actor, &id).await?,
    )
    .await
}
