//! `/admin/users`: people who own keys (and, with sessions, log in).

use super::{
    all_with_spend, limits_of, limits_patch_of, list, nullable, validate, whole, with_spend,
    ApiError, AppState, Caller, JsonBody, OrgThing, WithSpend,
};
use crate::authn::key_cache::Invalidation;
use crate::authn::login;
use crate::domain::{BudgetDuration, Role, User};
use crate::invalidation::Change;
use crate::store::{NewUser, SpendKind, UserPatch};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(list_users).post(create))
        .route(
            "/admin/users/{id}",
            get(get_user).patch(update).delete(delete),
        )
        .route("/admin/users/{id}/unlock", post(unlock))
}

/// Checks the password policy (`auth.password_policy`) and hashes with argon2id. Never
/// logged, never returned.
pub(super) async fn hash_password(
    policy: &crate::config::PasswordPolicy,
    password: &str,
) -> Result<String, ApiError> {
    policy
        .check(password)
        .map_err(|e| ApiError::BadRequest(e.0))?;
    login::hash_blocking(password)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A username: a name without spaces.
pub(super) fn check_username(username: &str) -> Result<(), ApiError> {
    validate::name("username", username)?;
    if username.contains(char::is_whitespace) {
        return Err(ApiError::BadRequest(
            "`username` must not contain spaces".into(),
        ));
    }
    Ok(())
}

pub(super) fn check_email(email: &str) -> Result<(), ApiError> {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    pub username: String,
    pub email: String,
    pub role: Option<Role>,
    pub password: Option<String>,
    pub full_name: Option<String>,
    #[serde(default, deserialize_with = "whole::option")]
    pub rpm: Option<i64>,
    #[serde(default, deserialize_with = "whole::option")]
    pub tpm: Option<i64>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<BudgetDuration>,
    #[serde(default, deserialize_with = "whole::option")]
    pub max_parallel: Option<i64>,
    pub metadata: Option<serde_json::Value>,
    /// Fixed from then on.
    pub org_id: Option<String>,
}

async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = create_user(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// `POST /admin/users`: admins; an org admin in its own org (the `org_id` defaults to it),
/// with any role but `admin`.
pub(crate) async fn create_user(
    app: &AppState,
    caller: &Caller,
    mut body: CreateUser,
) -> Result<User, ApiError> {
    if caller.org_scope().is_some() {
        body.org_id = caller.org_for_new(body.org_id.as_deref(), "create users")?;
        check_org_admin_gives(caller, body.role.as_ref())?;
    } else {
        caller.require_admin("create users")?;
    }
    check_username(&body.username)?;
    check_email(&body.email)?;
    if let Some(name) = &body.full_name {
        validate::name("full_name", name)?;
    }
    let limits = limits_of!(body);
    validate::limits(&limits)?;
    validate::metadata(&body.metadata)?;
    let password_hash = match body.password.as_deref() {
        Some(password) => Some(hash_password(&app.config.auth.password_policy, password).await?),
        None => None,
    };
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
                org_id: body.org_id,
                email_unverified: false,
            },
        )
        .await?;
    app.invalidator.send(Change::UserCreated).await;
    Ok(user)
}

async fn list_users(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = visible_users(&app, &caller).await?;
    Ok(list(
        all_with_spend(&app, SpendKind::User, users, |u| u.id.clone()).await?,
    ))
}

/// The users of `GET /admin/users` (admins, viewers and managers), without their spend:
/// the web UI reads the spend of the users one page shows, not of every user.
pub(crate) async fn visible_users(app: &AppState, caller: &Caller) -> Result<Vec<User>, ApiError> {
    if let Some(org) = caller.org_scope() {
        let mut users = app.store.list_users().await?;
        users.retain(|u| u.org_id.as_deref() == Some(org));
        return Ok(users);
    }
    caller.allow(caller.reads_users(), "list users")?;
    Ok(app.store.list_users().await?)
}

/// The user `id` when it is in the org admin's org (404 otherwise, so that another org's
/// users are not revealed) and not a global admin (403: an org admin never changes one).
async fn org_user(app: &AppState, caller: &Caller, id: &str, what: &str) -> Result<User, ApiError> {
    let user = app
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id))?;
    caller
        .org_gate(app, OrgThing::User(&user), "user", id)
        .await?;
    if user.role == Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "the role `org_admin` may not {what} an `admin`"
        )));
    }
    Ok(user)
}

/// An org admin gives any role but `admin`: global admins are made by admins only.
fn check_org_admin_gives(caller: &Caller, role: Option<&Role>) -> Result<(), ApiError> {
    caller.allow(role != Some(&Role::Admin), "give the role `admin`")
}

async fn get_user(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WithSpend<User>>, ApiError> {
    read_user(&app, &caller, &id).await.map(Json)
}

/// `GET /admin/users/{id}`: admins, viewers, managers, and the user themselves.
pub(crate) async fn read_user(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<WithSpend<User>, ApiError> {
    let scoped = caller.org_scope().is_some() && !caller.is_user(id);
    if !scoped {
        caller.allow(
            caller.reads_users() || caller.is_user(id),
            "read other users",
        )?;
    }
    let user = app
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id))?;
    if scoped {
        caller
            .org_gate(app, OrgThing::User(&user), "user", id)
            .await?;
    }
    with_spend(app, SpendKind::User, id, user).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    pub email: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub full_name: Option<Option<String>>,
    pub role: Option<Role>,
    pub blocked: Option<bool>,
    #[serde(default, deserialize_with = "whole::nullable")]
    pub rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "whole::nullable")]
    pub tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub budget_duration: Option<Option<BudgetDuration>>,
    #[serde(default, deserialize_with = "whole::nullable")]
    pub max_parallel: Option<Option<i64>>,
    pub metadata: Option<serde_json::Value>,
    /// Refused: a user never moves to another org (named so the answer can say so).
    #[serde(default, deserialize_with = "nullable")]
    pub org_id: Option<Option<serde_json::Value>>,
}

async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    update_user(&app, &caller, &id, body).await.map(Json)
}

/// `PATCH /admin/users/{id}`: admins; an org admin for its org's users (not admins, and
/// never making one).
pub(crate) async fn update_user(
    app: &AppState,
    caller: &Caller,
    id: &str,
    body: UpdateUser,
) -> Result<User, ApiError> {
    if caller.org_scope().is_some() {
        org_user(app, caller, id, "change").await?;
        check_org_admin_gives(caller, body.role.as_ref())?;
    } else {
        caller.require_admin("change users")?;
    }
    if body.org_id.is_some() {
        return Err(ApiError::BadRequest(
            "`org_id` cannot be changed: a user stays in the org they were created in".into(),
        ));
    }
    if let Some(email) = &body.email {
        check_email(email)?;
    }
    if let Some(Some(name)) = &body.full_name {
        validate::name("full_name", name)?;
    }
    let limits = limits_patch_of!(body);
    validate::limits_patch(&limits)?;
    validate::metadata(&body.metadata)?;
    let patch = UserPatch {
        email: body.email,
        // An admin vouches for the address they set.
        email_unverified: false,
        full_name: body.full_name,
        role: body.role,
        blocked: body.blocked,
        limits,
        metadata: body.metadata,
    };
    let user = app.store.update_user(&caller.actor, id, patch).await?;
    app.invalidator
        .send(Invalidation::User(id.to_owned()))
        .await;
    user.ok_or_else(|| ApiError::not_found("user", id))
}

async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_user(&app, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/users/{id}`: admins; an org admin for its org's users (not admins).
pub(crate) async fn delete_user(app: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    if caller.org_scope().is_some() {
        org_user(app, caller, id, "delete").await?;
    } else {
        caller.require_admin("delete users")?;
    }
    let deleted = app.store.delete_user(&caller.actor, id).await?;
    app.invalidator
        .send(Invalidation::User(id.to_owned()))
        .await;
    if deleted {
        Ok(())
    } else {
        Err(ApiError::not_found("user", id))
    }
}

async fn unlock(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    unlock_user(&app, &caller, &id).await.map(Json)
}

/// `POST /admin/users/{id}/unlock`: lifts a login lockout (and resets the failure count);
/// admins; an org admin for its org's users.
pub(crate) async fn unlock_user(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<User, ApiError> {
    if caller.org_scope().is_some() {
        org_user(app, caller, id, "unlock").await?;
    } else {
        caller.require_admin("unlock users")?;
    }
    app.store
        .unlock_user(&caller.actor, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id))
}
