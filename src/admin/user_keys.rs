//! Self-service keys: `GET|POST /v1/user/keys`, `DELETE /v1/user/keys/{id}`. A signed-in
//! person lists, creates and revokes their own keys; the permissions and models of a new
//! key can only narrow their own.

use super::access::SignedIn;
use super::keys::{create_key, fetch_keys, write_key, CreateKey, KeyList, KeySearch, WithSecret};
use super::{whole, ApiError, AppState, JsonBody, QueryParams};
use crate::domain::{self, ApiKey, BudgetDuration, Role, Timestamp};
use crate::store::KeyStatus;
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

/// The query of `GET /v1/user/keys`: that of `GET /admin/keys` without the owner filters.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub include_revoked: bool,
    pub q: Option<String>,
    pub status: Option<KeyStatus>,
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub before: Option<String>,
}

async fn list_own(
    State(app): State<AppState>,
    me: SignedIn,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(own_keys(&app, &me, q).await?.into_json())
}

/// `GET /v1/user/keys`: the caller's own keys, all or one page.
pub(crate) async fn own_keys(
    app: &AppState,
    me: &SignedIn,
    q: ListQuery,
) -> Result<KeyList, ApiError> {
    let search = KeySearch {
        q: q.q,
        status: q.status,
        limit: q.limit,
        after: q.after,
        before: q.before,
    };
    let filter = search.filter(Some(me.user.id.clone()), None, q.include_revoked)?;
    fetch_keys(app, filter, search.page()?).await
}

/// The body of `POST /v1/user/keys`: that of `POST /admin/keys` without the owner fields
/// (the owner is the caller).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOwnKey {
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default, deserialize_with = "whole::option")]
    pub rpm: Option<i64>,
    #[serde(default, deserialize_with = "whole::option")]
    pub tpm: Option<i64>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<BudgetDuration>,
    #[serde(default, deserialize_with = "whole::option")]
    pub max_parallel: Option<i64>,
    #[serde(default, with = "domain::rfc3339::option")]
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<serde_json::Value>,
}

async fn create_own(
    State(app): State<AppState>,
    me: SignedIn,
    JsonBody(body): JsonBody<CreateOwnKey>,
) -> Result<(StatusCode, Json<WithSecret>), ApiError> {
    let created = create_own_key(&app, &me, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `POST /v1/user/keys`: a key of the caller's own.
pub(crate) async fn create_own_key(
    app: &AppState,
    me: &SignedIn,
    body: CreateOwnKey,
) -> Result<WithSecret, ApiError> {
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
        max_parallel: body.max_parallel,
        expires_at: body.expires_at,
        metadata: body.metadata,
    };
    create_key(app, &me.caller, body).await
}

/// Revokes one of the caller's keys; someone else's key is "not found", so ids of other
/// people's keys cannot be probed.
async fn revoke_own(
    State(app): State<AppState>,
    me: SignedIn,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    revoke_own_key(&app, &me, &id).await.map(Json)
}

/// `DELETE /v1/user/keys/{id}`.
pub(crate) async fn revoke_own_key(
    app: &AppState,
    me: &SignedIn,
    id: &str,
) -> Result<ApiKey, ApiError> {
    let own = app
        .store
        .get_key(id)
        .await?
        .is_some_and(|k| k.user_id.as_deref() == Some(me.user.id.as_str()));
    if !own {
        return Err(ApiError::not_found("key", id));
    }
    write_key(app, id, app.store.revoke_key(&me.caller.actor, id).await?).await
}
