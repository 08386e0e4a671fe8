//! `/admin/orgs`: organizations (tenants), their limits and budget. Admins create, change
//! and delete them; every reader of the admin API but admins and viewers sees only the org
//! they belong to, and another org answers 404.

use super::{
    all_with_spend, limits_of, limits_patch_of, list, nullable, validate, whole, with_spend,
    ApiError, AppState, Caller, JsonBody, WithSpend,
};
use crate::authn::key_cache::Invalidation;
use crate::domain::{BudgetDuration, Org};
use crate::store::{NewOrg, OrgPatch, SpendKind};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/orgs", get(list_orgs).post(create))
        .route(
            "/admin/orgs/{id}",
            get(get_org).patch(update).delete(remove),
        )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrg {
    pub name: String,
    #[serde(default, deserialize_with = "whole::option")]
    pub rpm: Option<i64>,
    #[serde(default, deserialize_with = "whole::option")]
    pub tpm: Option<i64>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<BudgetDuration>,
    #[serde(default, deserialize_with = "whole::option")]
    pub max_parallel: Option<i64>,
    pub metadata: Option<serde_json::Value>,
}

async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateOrg>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    let org = create_org(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// `POST /admin/orgs`: admins only.
pub(crate) async fn create_org(
    app: &AppState,
    caller: &Caller,
    body: CreateOrg,
) -> Result<Org, ApiError> {
    caller.require_admin("create orgs")?;
    validate::name("name", &body.name)?;
    let limits = limits_of!(body);
    validate::limits(&limits)?;
    validate::metadata(&body.metadata)?;
    let org = app
        .store
        .create_org(
            &caller.actor,
            NewOrg {
                name: body.name,
                limits,
                metadata: body.metadata,
            },
        )
        .await?;
    // An `org_claim` naming it was refused until now.
    app.invalidator
        .send(Invalidation::Org(org.id.clone()))
        .await;
    Ok(org)
}

/// The org of the caller, when the caller is a person who belongs to one.
fn own_org(caller: &Caller) -> Option<&str> {
    caller.user().and_then(|u| u.org_id.as_deref())
}

async fn list_orgs(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(listed(&app, &caller).await?))
}

/// `GET /admin/orgs`: every org for admins and viewers; for others, the org they belong to
/// (none for a person outside every org), each with its spend.
pub(crate) async fn listed(
    app: &AppState,
    caller: &Caller,
) -> Result<Vec<WithSpend<Org>>, ApiError> {
    let mut orgs = app.store.list_orgs().await?;
    if !caller.reads_all() {
        let mine = own_org(caller);
        orgs.retain(|o| Some(o.id.as_str()) == mine);
    }
    all_with_spend(app, SpendKind::Org, orgs, |o| o.id.clone()).await
}

async fn get_org(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WithSpend<Org>>, ApiError> {
    read_org(&app, &caller, &id).await.map(Json)
}

/// `GET /admin/orgs/{id}`: the org with its spend, for admins, viewers and its own people;
/// to anyone else it does not exist (404).
pub(crate) async fn read_org(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<WithSpend<Org>, ApiError> {
    if !caller.reads_all() && own_org(caller) != Some(id) {
        return Err(ApiError::not_found("org", id));
    }
    let org = app
        .store
        .get_org(id)
        .await?
        .ok_or_else(|| ApiError::not_found("org", id))?;
    with_spend(app, SpendKind::Org, id, org).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateOrg {
    pub name: Option<String>,
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
}

async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateOrg>,
) -> Result<Json<Org>, ApiError> {
    update_org(&app, &caller, &id, body).await.map(Json)
}

/// `PATCH /admin/orgs/{id}`: admins only (an org's own people may not lift its limits).
pub(crate) async fn update_org(
    app: &AppState,
    caller: &Caller,
    id: &str,
    body: UpdateOrg,
) -> Result<Org, ApiError> {
    // To an org admin another org does not exist.
    if caller.org_scope().is_some_and(|org| org != id) {
        return Err(ApiError::not_found("org", id));
    }
    caller.require_admin("change orgs")?;
    if let Some(name) = &body.name {
        validate::name("name", name)?;
    }
    let limits = limits_patch_of!(body);
    validate::limits_patch(&limits)?;
    validate::metadata(&body.metadata)?;
    let patch = OrgPatch {
        name: body.name,
        limits,
        metadata: body.metadata,
    };
    let org = app.store.update_org(&caller.actor, id, patch).await?;
    // Cached keys and people of the org carry its limits.
    app.invalidator.send(Invalidation::Org(id.to_owned())).await;
    org.ok_or_else(|| ApiError::not_found("org", id))
}

async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_org(&app, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/orgs/{id}`: admins only; 409 while the org has live teams or users.
pub(crate) async fn delete_org(app: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    // To an org admin another org does not exist.
    if caller.org_scope().is_some_and(|org| org != id) {
        return Err(ApiError::not_found("org", id));
    }
    caller.require_admin("delete orgs")?;
    if app.store.delete_org(&caller.actor, id).await? {
        app.invalidator.send(Invalidation::Org(id.to_owned())).await;
        Ok(())
    } else {
        Err(ApiError::not_found("org", id))
    }
}
