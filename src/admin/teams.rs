//! `/admin/teams`: teams, their limits and model sets, and their members.

use super::{
    all_with_spend, limits_of, limits_patch_of, list, nullable, validate, whole, ApiError,
    AppState, Caller, JsonBody, OrgThing, WithSpend,
};
use crate::authn::key_cache::Invalidation;
use crate::domain::{BudgetDuration, Membership, MembershipSource, Role, Team, TeamRole};
use crate::store::{NewTeam, SpendKind, TeamPatch};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/teams", get(list_teams).post(create))
        .route(
            "/admin/teams/{id}",
            get(get_team).patch(update).delete(remove),
        )
        .route("/admin/teams/{id}/members", post(add_member))
        .route("/admin/teams/{id}/members/{user_id}", delete(remove_member))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTeam {
    pub name: String,
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
    pub metadata: Option<serde_json::Value>,
    /// Admins only; fixed from then on.
    pub org_id: Option<String>,
}

async fn create(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    let team = create_team(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(team)))
}

/// `POST /admin/teams`: admins and managers create teams; a manager becomes the owner.
pub(crate) async fn create_team(
    app: &AppState,
    caller: &Caller,
    body: CreateTeam,
) -> Result<Team, ApiError> {
    let in_org = caller.org_scope().is_some();
    caller.allow(
        caller.is_admin() || caller.role() == Role::Manager || in_org,
        "create teams",
    )?;
    let org_id = caller.org_for_new(body.org_id.as_deref(), "create teams")?;
    validate::name("name", &body.name)?;
    validate::tokens("models", &body.models)?;
    let limits = limits_of!(body);
    validate::limits(&limits)?;
    validate::metadata(&body.metadata)?;
    if body.org_id.is_some() && !in_org {
        caller.require_admin("create a team in an org")?;
    }
    let team = app
        .store
        .create_team(
            &caller.actor,
            NewTeam {
                name: body.name,
                models: body.models,
                limits,
                metadata: body.metadata,
                org_id,
            },
        )
        .await?;
    // A manager who creates a team owns it (and so may manage it).
    if let Some(user) = caller.user() {
        app.store
            .add_member(
                &caller.actor,
                &team.id,
                &user.id,
                TeamRole::Owner,
                MembershipSource::Manual,
            )
            .await?;
    }
    // A new name for `group_to_team`: identities synced while it matched no team sync
    // again on their next token, not only once `cache.key_ttl` has passed.
    app.invalidator
        .send(Invalidation::Team(team.id.clone()))
        .await;
    Ok(team)
}

async fn list_teams(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(list(listed(&app, &caller).await?))
}

/// `GET /admin/teams`: every team for admins and viewers, else the caller's teams, each
/// with its spend.
pub(crate) async fn listed(
    app: &AppState,
    caller: &Caller,
) -> Result<Vec<WithSpend<Team>>, ApiError> {
    let mut teams = app.store.list_teams().await?;
    if let Some(org) = caller.org_scope() {
        // An org admin sees its org's teams.
        teams.retain(|t| t.org_id.as_deref() == Some(org));
    } else if let (false, Some(user)) = (caller.reads_all(), caller.user()) {
        // Others see the teams they belong to.
        let mine: Vec<String> = app
            .store
            .user_memberships(&user.id)
            .await?
            .into_iter()
            .map(|m| m.team_id)
            .collect();
        teams.retain(|t| mine.contains(&t.id));
    }
    all_with_spend(app, SpendKind::Team, teams, |t| t.id.clone()).await
}

#[derive(Serialize)]
pub(crate) struct TeamWithMembers {
    #[serde(flatten)]
    pub team: Team,
    pub members: Vec<Membership>,
    /// USD spent in the team's current budget period.
    pub spend: f64,
}

async fn get_team(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TeamWithMembers>, ApiError> {
    read_team(&app, &caller, &id).await.map(Json)
}

/// `GET /admin/teams/{id}`: the team with its members and spend, for those who see it.
pub(crate) async fn read_team(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<TeamWithMembers, ApiError> {
    let team = org_team(app, caller, id).await?;
    let sees = caller.org_scope().is_some() || caller.sees_team(app, id).await?;
    caller.allow(sees, "read a team they do not belong to")?;
    let team = match team {
        Some(team) => team,
        None => app
            .store
            .get_team(id)
            .await?
            .ok_or_else(|| ApiError::not_found("team", id))?,
    };
    let members = app.store.list_members(id).await?;
    let spend = app
        .store
        .current_spend(SpendKind::Team, id, crate::domain::now())
        .await?;
    Ok(TeamWithMembers {
        team,
        members,
        spend,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTeam {
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
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
    /// Refused: a team never moves to another org (named so the answer can say so).
    #[serde(default, deserialize_with = "nullable")]
    pub org_id: Option<Option<serde_json::Value>>,
}

async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateTeam>,
) -> Result<Json<Team>, ApiError> {
    update_team(&app, &caller, &id, body).await.map(Json)
}

/// `PATCH /admin/teams/{id}`: admins, and managers who own the team.
pub(crate) async fn update_team(
    app: &AppState,
    caller: &Caller,
    id: &str,
    body: UpdateTeam,
) -> Result<Team, ApiError> {
    let manages =
        org_team(app, caller, id).await?.is_some() || caller.manages_team(app, id).await?;
    caller.allow(manages, "change a team they do not own")?;
    if body.org_id.is_some() {
        return Err(ApiError::BadRequest(
            "`org_id` cannot be changed: a team stays in the org it was created in".into(),
        ));
    }
    if let Some(name) = &body.name {
        validate::name("name", name)?;
    }
    validate::tokens("models", body.models.as_deref().unwrap_or_default())?;
    let limits = limits_patch_of!(body);
    validate::limits_patch(&limits)?;
    validate::metadata(&body.metadata)?;
    let patch = TeamPatch {
        name: body.name,
        models: body.models,
        blocked: body.blocked,
        limits,
        metadata: body.metadata,
    };
    let team = app.store.update_team(&caller.actor, id, patch).await?;
    app.invalidator
        .send(Invalidation::Team(id.to_owned()))
        .await;
    team.ok_or_else(|| ApiError::not_found("team", id))
}

async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_team(&app, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/teams/{id}`: admins, and managers who own the team.
pub(crate) async fn delete_team(app: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    let manages =
        org_team(app, caller, id).await?.is_some() || caller.manages_team(app, id).await?;
    caller.allow(manages, "delete a team they do not own")?;
    let deleted = app.store.delete_team(&caller.actor, id).await?;
    app.invalidator
        .send(Invalidation::Team(id.to_owned()))
        .await;
    if deleted {
        Ok(())
    } else {
        Err(ApiError::not_found("team", id))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMember {
    pub user_id: String,
    #[serde(default = "member")]
    pub role: TeamRole,
}

fn member() -> TeamRole {
    TeamRole::Member
}

async fn add_member(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<(StatusCode, Json<Membership>), ApiError> {
    let membership = add_member_as(&app, &caller, &id, body).await?;
    Ok((StatusCode::CREATED, Json(membership)))
}

/// `POST /admin/teams/{id}/members`: the team's owners (and admins) add a member, or
/// change a member's role.
pub(crate) async fn add_member_as(
    app: &AppState,
    caller: &Caller,
    id: &str,
    body: AddMember,
) -> Result<Membership, ApiError> {
    let owns = org_team(app, caller, id).await?.is_some() || caller.owns_team(app, id).await?;
    caller.allow(owns, "manage the members of a team they do not own")?;
    // An org admin adds its org's users only; another org's are not revealed.
    if caller.org_scope().is_some() {
        caller
            .org_gate(app, OrgThing::UserId(&body.user_id), "user", &body.user_id)
            .await?;
    }
    if app.store.get_team(id).await?.is_none() {
        return Err(ApiError::not_found("team", id));
    }
    let membership = app
        .store
        .add_member(
            &caller.actor,
            id,
            &body.user_id,
            body.role,
            MembershipSource::Manual,
        )
        .await?;
    app.invalidator
        .send(Invalidation::Team(id.to_owned()))
        .await;
    app.invalidator
        .send(Invalidation::User(body.user_id.clone()))
        .await;
    Ok(membership)
}

async fn remove_member(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove_member_as(&app, &caller, &id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/teams/{id}/members/{user_id}`: the team's owners (and admins).
pub(crate) async fn remove_member_as(
    app: &AppState,
    caller: &Caller,
    id: &str,
    user_id: &str,
) -> Result<(), ApiError> {
    let owns = org_team(app, caller, id).await?.is_some() || caller.owns_team(app, id).await?;
    caller.allow(owns, "manage the members of a team they do not own")?;
    if app.store.remove_member(&caller.actor, id, user_id).await? {
        app.invalidator
            .send(Invalidation::Team(id.to_owned()))
            .await;
        app.invalidator
            .send(Invalidation::User(user_id.to_owned()))
            .await;
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "user `{user_id}` is not a member of team `{id}`"
        )))
    }
}

/// For an org admin, the team `id` of its org (404 when it is not, or does not exist);
/// `None` for other callers, whose own checks follow.
async fn org_team(app: &AppState, caller: &Caller, id: &str) -> Result<Option<Team>, ApiError> {
    if caller.org_scope().is_none() {
        return Ok(None);
    }
    let team = app
        .store
        .get_team(id)
        .await?
        .ok_or_else(|| ApiError::not_found("team", id))?;
    caller
        .org_gate(app, OrgThing::Team(&team), "team", id)
        .await?;
    Ok(Some(team))
}
