//! `/admin/users`: people who own keys (and, with sessions, log in).

use super::{
    limits_of, limits_patch_of, list, nullable, validate, AdminCaller, ApiError, AppState, JsonBody,
};
use crate::authn::key_cache::Invalidation;
use crate::domain::{BudgetDuration, Role, User};
use crate::store::{NewUser, UserPatch};
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(list_users).post(create))
        .route(
            "/admin/users/{id}",
            get(get_user).patch(update).delete(delete),
        )
}

/// Shortest password accepted.
const MIN_PASSWORD_LEN: usize = 8;

/// argon2id with a random salt, as a PHC string. Never logged, never returned.
fn hash_password(password: &str) -> Result<String, ApiError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::BadRequest(format!(
            "`password` must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("cannot hash password: {e}")))
}

fn check_email(email: &str) -> Result<(), ApiError> {
    validate::name("email", email)?;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !email.contains(' ') =>
        {
            Ok(())
        }
        _ => Err(ApiError::BadRequest(format!(
            "`email` {email:?} is not an email address"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
    email: String,
    role: Option<Role>,
    password: Option<String>,
    full_name: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_budget: Option<f64>,
    budget_duration: Option<BudgetDuration>,
    metadata: Option<serde_json::Value>,
}

async fn create(
    State(app): State<AppState>,
    caller: AdminCaller,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    validate::name("username", &body.username)?;
    if body.username.contains(char::is_whitespace) {
        return Err(ApiError::BadRequest(
            "`username` must not contain spaces".into(),
        ));
    }
    check_email(&body.email)?;
    let limits = limits_of!(body);
    validate::limits(&limits)?;
    let password_hash = body.password.as_deref().map(hash_password).transpose()?;
    let user = app
        .store
        .create_user(
            &caller.actor,
            NewUser {
                username: body.username,
                email: body.email,
                full_name: body.full_name,
                role: Some(body.role.unwrap_or(Role::User)),
                password_hash,
                limits,
                metadata: body.metadata,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn list_users(
    State(app): State<AppState>,
    _caller: AdminCaller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(app.store.list_users().await?))
}

async fn get_user(
    State(app): State<AppState>,
    _caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    app.store
        .get_user(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("user", &id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    email: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    full_name: Option<Option<String>>,
    role: Option<Role>,
    blocked: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_duration: Option<Option<BudgetDuration>>,
    metadata: Option<serde_json::Value>,
}

async fn update(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    if let Some(email) = &body.email {
        check_email(email)?;
    }
    let limits = limits_patch_of!(body);
    validate::limits_patch(&limits)?;
    let patch = UserPatch {
        email: body.email,
        full_name: body.full_name,
        role: body.role,
        blocked: body.blocked,
        limits,
        metadata: body.metadata,
    };
    let user = app.store.update_user(&caller.actor, &id, patch).await?;
    app.gate.keys.invalidate(Invalidation::User(id.clone()));
    user.map(Json)
        .ok_or_else(|| ApiError::not_found("user", &id))
}

async fn delete(
    State(app): State<AppState>,
    caller: AdminCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = app.store.delete_user(&caller.actor, &id).await?;
    app.gate.keys.invalidate(Invalidation::User(id.clone()));
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("user", &id))
    }
}
