//! `/admin/roles`: custom roles, which a user can hold instead of a built-in role.
//!
//! A custom role lists permissions: LLM route permissions (those of
//! [`decision::LLM_PERMISSIONS`] and of every route the configuration defines) and read
//! permissions ([`READ_PERMISSIONS`]), never `admin`. On the HTTP API its holder is like a
//! `user` (their own keys and usage) and, with `usage:read`, also reads every usage report
//! and budget. Built-in roles are listed but cannot be created, changed or deleted (409); a
//! role is not renamed (create the new one, move its users, delete the old one); a role a
//! user holds is not deleted (409).

use super::{list, ApiError, AppState, Caller, JsonBody};
use crate::authn::key_cache::Invalidation;
use crate::decision::{self, ADMIN_PERMISSION, LLM_PERMISSIONS};
use crate::domain::{rfc3339, Role, RoleDef, Timestamp};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/roles", get(list_roles).post(create))
        .route(
            "/admin/roles/{name}",
            get(get_role).patch(update).delete(remove),
        )
}

/// The read permissions a custom role may carry besides the LLM route permissions.
pub const READ_PERMISSIONS: &[&str] = &["models:read", "usage:read"];

/// The most permissions one custom role lists.
const MAX_PERMISSIONS: usize = 64;

/// A role as this API shows it: built-in roles have no timestamps.
#[derive(Debug, Serialize)]
pub(crate) struct RoleView {
    pub name: String,
    pub permissions: Vec<String>,
    pub built_in: bool,
    #[serde(with = "rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(with = "rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

impl From<RoleDef> for RoleView {
    fn from(role: RoleDef) -> RoleView {
        RoleView {
            name: role.name,
            permissions: role.permissions,
            built_in: false,
            created_at: Some(role.created_at),
            updated_at: Some(role.updated_at),
        }
    }
}

fn built_in_views() -> Vec<RoleView> {
    Role::BUILT_IN
        .iter()
        .filter_map(|name| Role::built_in(name))
        .map(|role| RoleView {
            name: role.to_string(),
            permissions: decision::role_permissions(&role)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            built_in: true,
            created_at: None,
            updated_at: None,
        })
        .collect()
}

/// Every role a user can be given: built-in ones first, then custom ones by name.
pub(crate) async fn all_roles(app: &AppState, caller: &Caller) -> Result<Vec<RoleView>, ApiError> {
    caller.require_reader("list roles")?;
    let mut roles = built_in_views();
    roles.extend(
        app.store
            .list_roles()
            .await?
            .into_iter()
            .map(RoleView::from),
    );
    Ok(roles)
}

async fn list_roles(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(all_roles(&app, &caller).await?))
}

async fn get_role(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RoleView>, ApiError> {
    caller.require_reader("read roles")?;
    if let Some(view) = built_in_views().into_iter().find(|r| r.name == name) {
        return Ok(Json(view));
    }
    let role = app.store.get_role(&name).await?;
    role.map(|r| Json(r.into())).ok_or_else(|| no_role(&name))
}

fn no_role(name: &str) -> ApiError {
    ApiError::NotFound(format!("no role named `{name}`"))
}

/// 409 for a built-in (or reserved) role's name.
fn not_built_in(name: &str, what: &str) -> Result<(), ApiError> {
    if Role::is_reserved(name) {
        return Err(ApiError::Conflict(format!(
            "`{name}` is a built-in role, which cannot be {what}"
        )));
    }
    Ok(())
}

/// The permissions a custom role may list, as this configuration defines routes.
fn allowed_permissions(app: &AppState) -> BTreeSet<String> {
    let mut allowed: BTreeSet<String> = LLM_PERMISSIONS
        .iter()
        .chain(READ_PERMISSIONS)
        .map(|p| p.to_string())
        .collect();
    allowed.extend(
        app.config
            .effective_routes()
            .into_values()
            .map(|rule| rule.permission)
            .filter(|p| p != ADMIN_PERMISSION),
    );
    allowed
}

/// Checks a custom role's permissions, dropping repeats (order kept): 400 for `admin`, for
/// a permission no route or read rule knows, or for more than [`MAX_PERMISSIONS`].
fn check_permissions(app: &AppState, permissions: Vec<String>) -> Result<Vec<String>, ApiError> {
    if permissions.len() > MAX_PERMISSIONS {
        return Err(ApiError::BadRequest(format!(
            "`permissions`: at most {MAX_PERMISSIONS} permissions"
        )));
    }
    let allowed = allowed_permissions(app);
    let mut kept: Vec<String> = Vec::with_capacity(permissions.len());
    for p in permissions {
        if p == ADMIN_PERMISSION {
            return Err(ApiError::BadRequest(
                "`permissions`: a custom role cannot have `admin`; give the user the built-in role `admin` instead".into(),
            ));
        }
        if !allowed.contains(&p) {
            return Err(ApiError::BadRequest(format!(
                "`permissions`: `{p}` is not a permission a custom role can have (one of: {})",
                allowed
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !kept.contains(&p) {
            kept.push(p);
        }
    }
    Ok(kept)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRole {
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
}

async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateRole>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let role = create_role(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(role)))
}

/// `POST /admin/roles`: admins only.
pub(crate) async fn create_role(
    app: &AppState,
    caller: &Caller,
    body: CreateRole,
) -> Result<RoleView, ApiError> {
    caller.require_admin("create roles")?;
    not_built_in(&body.name, "created")?;
    Role::check_custom_name(&body.name)
        .map_err(|e| ApiError::BadRequest(format!("`name`: {e}")))?;
    let permissions = check_permissions(app, body.permissions)?;
    let role = app
        .store
        .create_role(&caller.actor, &body.name, permissions)
        .await?;
    Ok(role.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateRole {
    /// Only the role's own name: roles are not renamed.
    pub name: Option<String>,
    pub permissions: Vec<String>,
}

async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateRole>,
) -> Result<Json<RoleView>, ApiError> {
    update_role(&app, &caller, &name, body).await.map(Json)
}

/// `PATCH /admin/roles/{name}`: admins only. Replaces the permissions; the users holding
/// the role, and their keys, have the new ones at once on every replica.
pub(crate) async fn update_role(
    app: &AppState,
    caller: &Caller,
    name: &str,
    body: UpdateRole,
) -> Result<RoleView, ApiError> {
    caller.require_admin("change roles")?;
    not_built_in(name, "changed")?;
    if body.name.as_deref().is_some_and(|new| new != name) {
        return Err(ApiError::BadRequest(
            "`name`: a role is not renamed; create a role with the new name, give its users that role, then delete this one".into(),
        ));
    }
    let permissions = check_permissions(app, body.permissions)?;
    let role = app
        .store
        .update_role(&caller.actor, name, permissions)
        .await?
        .ok_or_else(|| no_role(name))?;
    app.invalidator
        .send(Invalidation::Role(name.to_owned()))
        .await;
    Ok(role.into())
}

async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_role(&app, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/roles/{name}`: admins only; 409 while a user holds the role.
pub(crate) async fn delete_role(
    app: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<(), ApiError> {
    caller.require_admin("delete roles")?;
    not_built_in(name, "deleted")?;
    if app.store.delete_role(&caller.actor, name).await? {
        Ok(())
    } else {
        Err(no_role(name))
    }
}
