//! `/admin/keys`: create, list, inspect, update, block, unblock, rotate and revoke virtual
//! keys. Every write invalidates the key in this process's cache at once.

use super::{
    limits_of, limits_patch_of, list, nullable, validate, AdminCaller, ApiError, AppState,
    JsonBody, QueryParams,
};
use crate::authn::api_key;
use crate::authn::key_cache::Invalidation;
use crate::domain::{self, ApiKey, BudgetDuration, Timestamp};
use crate::store::{KeyFilter, KeyPatch, NewKey};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(list_keys).post(create))
        .route(
            "/admin/keys/{id}",
            get(get_key).patch(update).delete(revoke),
        )
        .route("/admin/keys/{id}/rotate", post(rotate))
        .route("/admin/keys/{id}/block", post(block))
        .route("/admin/keys/{id}/unblock", post(unblock))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    user_id: Option<String>,
    team_id: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_budget: Option<f64>,
    budget_duration: Option<BudgetDuration>,
    #[serde(default, with = "domain::rfc3339::option")]
    expires_at: Option<Timestamp>,
    metadata: Option<serde_json::Value>,
}

/// A key as created or rotated: the record plus, this once, the plaintext.
#[derive(Serialize)]
struct WithSecret {
    #[serde(flatten)]
    key: ApiKey,
    #[serde(rename = "key")]
    secret: String,
}

fn check_metadata(metadata: &Option<serde_json::Value>) -> Result<(), ApiError> {
    match metadata {
        Some(m) if !m.is_object() => Err(ApiError::BadRequest(
            "`metadata` must be a JSON object".into(),
        )),
        _ => Ok(()),
    }
}

fn check_expiry(expires_at: Option<Timestamp>) -> Result<(), ApiError> {
    match expires_at {
        Some(at) if at <= domain::now() => Err(ApiError::BadRequest(format!(
            "`expires_at` ({}) is in the past",
            domain::rfc3339::format(at)
        ))),
        _ => Ok(()),
    }
}

async fn create(
    State(app): State<AppState>,
    caller: AdminCaller,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<WithSecret>), ApiError> {
    validate::name("name", &body.name)?;
    validate::tokens("permissions", &body.permissions)?;
    validate::tokens("models", &body.models)?;
    let limits = limits_of!(body);
    validate::limits(&limits)?;
    check_expiry(body.expires_at)?;
    check_metadata(&body.metadata)?;
    let plain = api_key::generate();
    let hash = plain.hash();
    let key = app
        .store
        .create_key(
            &caller.actor,
            NewKey {
                name: body.name,
                key_hash: hash.to_hex(),
                key_hint: plain.hint(),
                user_id: body.user_id,
                team_id: body.team_id,
                permissions: body.permissions,
                models: body.models,
                limits,
                expires_at: body.expires_at,
                metadata: body.metadata,
            },
        )
        .await?;
    app.gate.keys.forget(&hash);
    Ok((
        StatusCode::CREATED,
        Json(WithSecret {
            key,
            secret: plain.into_string(),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    user_id: Option<String>,
    team_id: Option<String>,
    #[serde(default)]
    include_revoked: bool,
}

async fn list_keys(
    State(app): State<AppState>,
    _caller: AdminCaller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let keys = app
        .store
        .list_keys(KeyFilter {
            user_id: q.user_id,
            team_id: q.team_id,
            include_revoked: q.include_revoked,
        })
        .await?;
    Ok(list(keys))
}

async fn get_key(
    State(app): State<AppState>,
    _caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    app.store
        .get_key(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("key", &id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    name: Option<String>,
    permissions: Option<Vec<String>>,
    models: Option<Vec<String>>,
    blocked: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_duration: Option<Option<BudgetDuration>>,
    #[serde(default, deserialize_with = "nullable_time")]
    expires_at: Option<Option<Timestamp>>,
    metadata: Option<serde_json::Value>,
}

fn nullable_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Timestamp>>, D::Error> {
    domain::rfc3339::option::deserialize(d).map(Some)
}

async fn update(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> Result<Json<ApiKey>, ApiError> {
    if let Some(name) = &body.name {
        validate::name("name", name)?;
    }
    validate::tokens(
        "permissions",
        body.permissions.as_deref().unwrap_or_default(),
    )?;
    validate::tokens("models", body.models.as_deref().unwrap_or_default())?;
    let limits = limits_patch_of!(body);
    validate::limits_patch(&limits)?;
    check_expiry(body.expires_at.flatten())?;
    check_metadata(&body.metadata)?;
    let patch = KeyPatch {
        name: body.name,
        permissions: body.permissions,
        models: body.models,
        blocked: body.blocked,
        limits,
        expires_at: body.expires_at,
        metadata: body.metadata,
    };
    write_key(
        &app,
        &id,
        app.store.update_key(&caller.actor, &id, patch).await?,
    )
}

/// Invalidates the key's cache entries and answers with it, or 404.
fn write_key(app: &AppState, id: &str, key: Option<ApiKey>) -> Result<Json<ApiKey>, ApiError> {
    app.gate.keys.invalidate(Invalidation::Key(id.to_owned()));
    key.map(Json).ok_or_else(|| ApiError::not_found("key", id))
}

async fn set_blocked(
    app: AppState,
    caller: AdminCaller,
    id: String,
    blocked: bool,
) -> Result<Json<ApiKey>, ApiError> {
    let patch = KeyPatch {
        blocked: Some(blocked),
        ..KeyPatch::default()
    };
    write_key(
        &app,
        &id,
        app.store.update_key(&caller.actor, &id, patch).await?,
    )
}

async fn block(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    set_blocked(app, caller, id, true).await
}

async fn unblock(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    set_blocked(app, caller, id, false).await
}

async fn revoke(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    write_key(&app, &id, app.store.revoke_key(&caller.actor, &id).await?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    #[serde(default)]
    grace_seconds: i64,
}

/// Longest grace period a rotation may give the old secret: 30 days.
const MAX_GRACE_SECONDS: i64 = 30 * 24 * 3600;

async fn rotate(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RotateKey>,
) -> Result<Json<WithSecret>, ApiError> {
    let grace = body.grace_seconds;
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(ApiError::BadRequest(format!(
            "`grace_seconds` must be from 0 to {MAX_GRACE_SECONDS}, got {grace}"
        )));
    }
    let plain = api_key::generate();
    let previous_expires_at = (grace > 0).then(|| domain::now() + grace);
    let rotated = app
        .store
        .rotate_key(
            &caller.actor,
            &id,
            &plain.hash().to_hex(),
            &plain.hint(),
            previous_expires_at,
        )
        .await?;
    app.gate.keys.forget(&plain.hash());
    let Json(key) = write_key(&app, &id, rotated)?;
    Ok(Json(WithSecret {
        key,
        secret: plain.into_string(),
    }))
}
