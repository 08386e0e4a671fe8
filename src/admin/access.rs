//! Who may do what on the HTTP API: the [`Caller`] extractor and the role table
//! (docs/DESIGN.md, "Roles on the HTTP API").
//!
//! | caller | may |
//! |---|---|
//! | master key, admin key, `admin` user | everything |
//! | `viewer` | read every admin route, write nothing |
//! | `manager` | read users; create teams (becoming their owner); update and delete the teams they own |
//! | team `owner` (any role but viewer) | manage that team's members and keys |
//! | `user`, `manager`, custom roles | manage their own keys |
//! | custom role with `usage:read` | also read every usage report and budget |
//! | `org_admin` with an `org_id` | what the routes scoped through [`Caller::org_scope`] grant, for that org only |
//!
//! An org admin's generic checks (`is_admin`, `reads_all`, ...) are all false: a route
//! grants it something only through [`Caller::org_scope`] and [`Caller::in_org`], so a
//! route not scoped yet refuses it (fail closed), and another org's thing is 404.
//!
//! A virtual key without the `admin` permission is for calling models, not for this API.

use super::{ApiError, AppState};
use crate::decision::{self, Principal, ADMIN_PERMISSION, LLM_PERMISSIONS};
use crate::domain::{self, ApiKey, Role, Team, TeamRole, User};
use crate::store::Actor;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The authenticated identity behind an HTTP API call.
#[derive(Debug, Clone)]
pub enum Who {
    Master,
    /// A virtual key with the `admin` permission.
    AdminKey,
    /// A person with a login token (session or OIDC).
    User(Arc<User>),
}

/// Something an org admin may manage when it belongs to its org ([`Caller::in_org`]).
#[derive(Clone, Copy)]
pub enum OrgThing<'a> {
    Org(&'a str),
    User(&'a User),
    UserId(&'a str),
    Team(&'a Team),
    TeamId(&'a str),
    Key(&'a ApiKey),
}

/// An authenticated caller: who, and how they appear in the audit log.
pub struct Caller {
    pub who: Who,
    pub actor: Actor,
}

pub(super) fn source_of(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// A credential that could not be resolved, as this API answers it: 401, or 503 when it is
/// not decidable yet (an OIDC key not read yet: retry, not re-login) or the store is down.
pub(super) fn authn_error(e: crate::authn::AuthnError) -> ApiError {
    match e {
        crate::authn::AuthnError::Denied(d) => match d.reason {
            decision::DenyReason::AuthUnavailable => ApiError::Coded {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                code: "auth_unavailable",
                message: d.message,
                retry_after: d.retry_after,
            },
            _ => ApiError::Unauthorized(d.message),
        },
        crate::authn::AuthnError::Unavailable(e) => ApiError::from(e),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let source = source_of(parts);
        let presented = crate::authn::credential::extract(|name| {
            parts.headers.get(name).and_then(|v| v.to_str().ok())
        });
        let now = domain::now();
        let principal = app
            .auth
            .resolve(presented, source.as_deref(), now)
            .await
            .map_err(authn_error)?;
        let (who, name) = match principal {
            Principal::Master => (Who::Master, "master".to_owned()),
            Principal::Key(key) => {
                decision::standing(&key, now).map_err(|d| ApiError::Unauthorized(d.message))?;
                if !decision::has_permission(
                    &decision::effective_permissions(&key),
                    ADMIN_PERMISSION,
                ) {
                    return Err(ApiError::Forbidden(
                        "this API takes the master key, an admin key, or a login token (JWT); keys without `admin` are for calling models".into(),
                    ));
                }
                (Who::AdminKey, format!("key:{}", key.id))
            }
            Principal::User(user) => {
                if user.blocked {
                    return Err(ApiError::Forbidden("the account is blocked".into()));
                }
                let name = format!("user:{}", user.id);
                (Who::User(user), name)
            }
        };
        Ok(Caller {
            who,
            actor: Actor::new(name, source),
        })
    }
}

/// A person signed in with a login token (session or OIDC), for the `/v1/user` routes.
pub struct SignedIn {
    pub user: Arc<User>,
    pub caller: Caller,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        match &caller.who {
            Who::User(user) => Ok(SignedIn {
                user: user.clone(),
                caller,
            }),
            _ => Err(ApiError::Forbidden(
                "this route is for people: present a login token (JWT) from /v1/login or your identity provider".into(),
            )),
        }
    }
}

impl Caller {
    /// The caller's role: the master key and admin keys count as `admin`.
    pub fn role(&self) -> Role {
        match &self.who {
            Who::Master | Who::AdminKey => Role::Admin,
            Who::User(user) => user.role.clone(),
        }
    }

    pub fn user(&self) -> Option<&User> {
        match &self.who {
            Who::User(user) => Some(user),
            _ => None,
        }
    }

    /// The org an org admin manages: its `org_id`. `None` for every other caller, and for an
    /// org admin without an org (who then manages nothing).
    pub fn org_scope(&self) -> Option<&str> {
        match &self.who {
            Who::User(user) if user.role == Role::OrgAdmin => user.org_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the caller is an org admin and `thing` belongs to its org. A key belongs to
    /// its user's org, else its team's (a key cannot mix orgs); a key with neither, and
    /// everything without an `org_id`, belongs to no org.
    pub async fn in_org(&self, app: &AppState, thing: OrgThing<'_>) -> Result<bool, ApiError> {
        let Some(org) = self.org_scope() else {
            return Ok(false);
        };
        let of = match thing {
            OrgThing::Org(id) => Some(id.to_owned()),
            OrgThing::User(user) => user.org_id.clone(),
            OrgThing::Team(team) => team.org_id.clone(),
            OrgThing::UserId(id) => app.store.get_user(id).await?.and_then(|u| u.org_id),
            OrgThing::TeamId(id) => app.store.get_team(id).await?.and_then(|t| t.org_id),
            OrgThing::Key(key) => {
                let by_user = match &key.user_id {
                    Some(id) => app.store.get_user(id).await?.and_then(|u| u.org_id),
                    None => None,
                };
                match (by_user, &key.team_id) {
                    (Some(org), _) => Some(org),
                    (None, Some(team)) => app.store.get_team(team).await?.and_then(|t| t.org_id),
                    (None, None) => None,
                }
            }
        };
        Ok(of.as_deref() == Some(org))
    }

    /// An org admin's gate on a route that names one thing: `Ok(true)` when the thing is in
    /// its org, **404** (`kind` `id` not found) when it is not, so that another org's things
    /// are not revealed; `Ok(false)` for every other caller, whose own checks follow.
    pub async fn org_gate(
        &self,
        app: &AppState,
        thing: OrgThing<'_>,
        kind: &str,
        id: &str,
    ) -> Result<bool, ApiError> {
        if self.org_scope().is_none() {
            return Ok(false);
        }
        if self.in_org(app, thing).await? {
            Ok(true)
        } else {
            Err(ApiError::not_found(kind, id))
        }
    }

    /// The `org_id` a new team or user of an org admin gets: its own org when none is named,
    /// 403 for another one. `None` for other callers (the body's `org_id` stands).
    pub fn org_for_new(&self, named: Option<&str>, what: &str) -> Result<Option<String>, ApiError> {
        let Some(org) = self.org_scope() else {
            return Ok(named.map(str::to_owned));
        };
        match named {
            None => Ok(Some(org.to_owned())),
            Some(id) if id == org => Ok(Some(org.to_owned())),
            Some(_) => Err(ApiError::Forbidden(format!(
                "the role `org_admin` may only {what} in its own org"
            ))),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Role::Admin
    }

    /// A person of an org whose role is not `admin`. Such a caller never gets the reads
    /// across the whole installation that a viewer, manager or custom role with
    /// `usage:read` has outside every org: they would show other orgs (docs/DESIGN.md,
    /// "Org admins"). Only `org_admin` reads inside its org.
    pub fn in_an_org(&self) -> bool {
        self.user()
            .is_some_and(|u| u.org_id.is_some() && u.role != Role::Admin)
    }

    /// Admins, and viewers outside every org, read every admin route.
    pub fn reads_all(&self) -> bool {
        match self.role() {
            Role::Admin => true,
            Role::Viewer => !self.in_an_org(),
            _ => false,
        }
    }

    /// Admins and viewers, and custom roles with `usage:read`, outside every org, read the
    /// usage and budgets of every key, user and team (docs/DESIGN.md, "Custom roles").
    pub fn reads_usage(&self) -> bool {
        match self.role() {
            Role::Custom(_) => {
                decision::role_grants(&self.role(), "usage:read") && !self.in_an_org()
            }
            _ => self.reads_all(),
        }
    }

    /// Admins, viewers and managers outside every org read other users.
    pub fn reads_users(&self) -> bool {
        self.reads_all() || (self.role() == Role::Manager && !self.in_an_org())
    }

    /// Whether the caller is this user.
    pub fn is_user(&self, id: &str) -> bool {
        self.user().is_some_and(|u| u.id == id)
    }

    /// An org admin may only create a key whose secret can do no more than its own role:
    /// not for an `admin` of its org, nor with permissions beyond `org_admin`'s (it holds
    /// the new secret). 403 naming what the key could do.
    pub async fn check_org_key_reach(
        &self,
        app: &AppState,
        user_id: Option<&str>,
        permissions: &[String],
    ) -> Result<(), ApiError> {
        let owner_role = match user_id {
            Some(id) => app.store.get_user(id).await?.map(|u| u.role),
            None => None,
        };
        match beyond_role(&self.role(), &key_reach(permissions, owner_role)) {
            None => Ok(()),
            Some(p) => Err(ApiError::Forbidden(format!(
                "the role `{}` may not create this key: it could do `{p}`, which that role cannot",
                self.role()
            ))),
        }
    }

    /// `Ok` when `allowed`, else 403 naming the caller's role and what was refused.
    pub fn allow(&self, allowed: bool, what: &str) -> Result<(), ApiError> {
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the role `{}` may not {what}",
                self.role()
            )))
        }
    }

    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        self.allow(self.is_admin(), what)
    }

    pub fn require_reader(&self, what: &str) -> Result<(), ApiError> {
        self.allow(self.reads_all(), what)
    }

    /// The caller's role in a team (`None`: not a member, or not a person).
    pub async fn team_role(
        &self,
        app: &AppState,
        team_id: &str,
    ) -> Result<Option<TeamRole>, ApiError> {
        let Some(user) = self.user() else {
            return Ok(None);
        };
        let memberships = app.store.user_memberships(&user.id).await?;
        Ok(memberships
            .into_iter()
            .find(|m| m.team_id == team_id)
            .map(|m| m.role))
    }

    /// Team owners (but viewers) manage the team's members and keys; admins every team's.
    pub async fn owns_team(&self, app: &AppState, team_id: &str) -> Result<bool, ApiError> {
        if self.is_admin() {
            return Ok(true);
        }
        if self.role() == Role::Viewer {
            return Ok(false);
        }
        Ok(self.team_role(app, team_id).await? == Some(TeamRole::Owner))
    }

    /// Admins, and managers who own the team, change its settings or delete it.
    pub async fn manages_team(&self, app: &AppState, team_id: &str) -> Result<bool, ApiError> {
        if self.is_admin() {
            return Ok(true);
        }
        Ok(self.role() == Role::Manager && self.owns_team(app, team_id).await?)
    }

    /// Admins and viewers see every team; others the teams they belong to.
    pub async fn sees_team(&self, app: &AppState, team_id: &str) -> Result<bool, ApiError> {
        Ok(self.reads_all() || self.team_role(app, team_id).await?.is_some())
    }

    /// Admins; the key's own user (but viewers); owners of the key's team.
    pub async fn manages_key(&self, app: &AppState, key: &ApiKey) -> Result<bool, ApiError> {
        Ok(self.manages_keys(app, std::slice::from_ref(key)).await?[0])
    }

    /// [`Caller::manages_key`] of each key, the caller's teams read once for all of them
    /// (a page of the web UI asks it of every key it lists).
    pub async fn manages_keys(
        &self,
        app: &AppState,
        keys: &[ApiKey],
    ) -> Result<Vec<bool>, ApiError> {
        if self.is_admin() || self.role() == Role::Viewer {
            return Ok(vec![self.is_admin(); keys.len()]);
        }
        let mut owned: Option<Vec<String>> = None;
        let mut manages = Vec::with_capacity(keys.len());
        for key in keys {
            let yes = if key.user_id.as_deref().is_some_and(|id| self.is_user(id)) {
                true
            } else if let (Some(team), Some(user)) = (&key.team_id, self.user()) {
                if owned.is_none() {
                    let teams = app.store.user_memberships(&user.id).await?;
                    owned = Some(
                        teams
                            .into_iter()
                            .filter(|m| m.role == TeamRole::Owner)
                            .map(|m| m.team_id)
                            .collect(),
                    );
                }
                owned.as_ref().is_some_and(|o| o.contains(team))
            } else {
                false
            };
            manages.push(yes);
        }
        Ok(manages)
    }

    pub async fn sees_key(&self, app: &AppState, key: &ApiKey) -> Result<bool, ApiError> {
        Ok(self.reads_all()
            || key.user_id.as_deref().is_some_and(|id| self.is_user(id))
            || self.manages_key(app, key).await?)
    }

    /// Only an admin may hand out (rotate), bring back (unblock, re-enable) or change a key
    /// that can do more than the caller's own role: otherwise a team owner could rotate an
    /// `admin` team key and hold its new secret. `permissions` are the key's (or, for a
    /// permissions change, the new ones); `what` names the action for the 403.
    pub async fn check_holds(
        &self,
        app: &AppState,
        key: &ApiKey,
        permissions: &[String],
        what: &str,
    ) -> Result<(), ApiError> {
        if self.is_admin() {
            return Ok(());
        }
        let owner_role = match &key.user_id {
            Some(id) => app.store.get_user(id).await?.map(|u| u.role),
            None => None,
        };
        match beyond_role(&self.role(), &key_reach(permissions, owner_role)) {
            None => Ok(()),
            Some(p) => Err(ApiError::Forbidden(format!(
                "the role `{}` may not {what}: the key can do `{p}`, which that role cannot; only an admin hands out or re-enables a key beyond the caller's role (blocking or revoking it is allowed)",
                self.role()
            ))),
        }
    }
}

/// What a key's secret lets its holder do: its own permissions, or when it lists none its
/// owner's role's (a key without a user: the LLM permissions). Check narrows a user's key
/// to the user's current role, but that role can change back, so the key's own list counts.
fn key_reach(permissions: &[String], owner_role: Option<Role>) -> Vec<String> {
    if !permissions.is_empty() {
        return permissions.to_vec();
    }
    let owner = match &owner_role {
        Some(role) => decision::role_permissions(role),
        None => LLM_PERMISSIONS.to_vec(),
    };
    owner.iter().map(|p| p.to_string()).collect()
}

/// The first of `reach` that `role` does not have (`admin` has everything).
fn beyond_role(role: &Role, reach: &[String]) -> Option<String> {
    reach
        .iter()
        .find(|p| !decision::role_grants(role, p))
        .cloned()
}

/// The users and teams that the keys of one request name, each read from the store once
/// (a bulk create names the same few owners many times), and whether the caller owns them.
#[derive(Default)]
pub struct Owners {
    users: HashMap<String, Option<User>>,
    teams: HashMap<String, Option<Team>>,
    owned: HashMap<String, bool>,
}

impl Owners {
    async fn user(&mut self, app: &AppState, id: &str) -> Result<Option<&User>, ApiError> {
        if !self.users.contains_key(id) {
            let user = app.store.get_user(id).await?;
            self.users.insert(id.to_owned(), user);
        }
        Ok(self.users[id].as_ref())
    }

    async fn team(&mut self, app: &AppState, id: &str) -> Result<Option<&Team>, ApiError> {
        if !self.teams.contains_key(id) {
            let team = app.store.get_team(id).await?;
            self.teams.insert(id.to_owned(), team);
        }
        Ok(self.teams[id].as_ref())
    }

    /// [`Caller::owns_team`], asked once per team.
    pub async fn owned_by(
        &mut self,
        app: &AppState,
        caller: &Caller,
        team_id: &str,
    ) -> Result<bool, ApiError> {
        if let Some(owns) = self.owned.get(team_id) {
            return Ok(*owns);
        }
        let owns = caller.owns_team(app, team_id).await?;
        self.owned.insert(team_id.to_owned(), owns);
        Ok(owns)
    }
}

/// Checks that a key's permissions and models only narrow those of its owner: a user's
/// key stays within the user's role, a team's key within the team's models, and only an
/// admin gives a key without a user more than the LLM permissions.
pub async fn check_key_narrows(
    app: &AppState,
    caller: &Caller,
    owners: &mut Owners,
    user_id: Option<&str>,
    team_id: Option<&str>,
    permissions: &[String],
    models: &[String],
) -> Result<(), ApiError> {
    if let Some(user_id) = user_id {
        let role = owners
            .user(app, user_id)
            .await?
            .map(|owner| owner.role.clone())
            .ok_or_else(|| ApiError::BadRequest(format!("`user_id`: no user `{user_id}`")))?;
        if let Some(p) = beyond_role(&role, permissions) {
            return Err(ApiError::BadRequest(format!(
                "`permissions`: the key's user (role `{role}`) does not have `{p}`; a key can only narrow its owner's permissions"
            )));
        }
    } else if !caller.is_admin() {
        if let Some(p) = permissions
            .iter()
            .find(|p| !LLM_PERMISSIONS.contains(&p.as_str()))
        {
            return Err(ApiError::BadRequest(format!(
                "`permissions`: only an admin can give a key without a user `{p}`"
            )));
        }
    }
    if let Some(team_id) = team_id {
        let team = owners
            .team(app, team_id)
            .await?
            .ok_or_else(|| ApiError::BadRequest(format!("`team_id`: no team `{team_id}`")))?;
        if let Some(m) = models.iter().find(|m| !pattern_within(m, &team.models)) {
            return Err(ApiError::BadRequest(format!(
                "`models`: the team does not allow `{m}`; a key can only narrow its team's models"
            )));
        }
    }
    Ok(())
}

/// Whether every model a pattern (`gpt-4o` or `gpt-4o*`) matches is allowed by `allowed`
/// (empty: everything).
fn pattern_within(pattern: &str, allowed: &[String]) -> bool {
    match pattern.strip_suffix('*') {
        None => decision::models_allow(allowed, pattern),
        Some(prefix) => {
            allowed.is_empty()
                || allowed.iter().any(|a| match a.strip_suffix('*') {
                    Some(outer) => prefix.starts_with(outer),
                    None => false,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{beyond_role, key_reach, pattern_within};
    use crate::domain::Role;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_reaches_its_own_permissions_else_its_owner_s() {
        assert_eq!(
            key_reach(&strings(&["admin"]), Some(Role::User)),
            strings(&["admin"])
        );
        assert_eq!(key_reach(&[], Some(Role::Admin)), strings(&["admin"]));
        assert_eq!(
            key_reach(&[], None),
            strings(&["chat", "completions", "embeddings", "models:read"])
        );
    }

    #[test]
    fn only_admins_hold_what_their_role_lacks() {
        let admin_key = strings(&["admin"]);
        assert_eq!(beyond_role(&Role::User, &admin_key), Some("admin".into()));
        assert_eq!(
            beyond_role(&Role::Manager, &admin_key),
            Some("admin".into())
        );
        assert_eq!(beyond_role(&Role::Admin, &admin_key), None);
        let usage = strings(&["chat", "usage:read"]);
        assert_eq!(beyond_role(&Role::User, &usage), Some("usage:read".into()));
        assert_eq!(beyond_role(&Role::User, &strings(&["chat"])), None);
        assert_eq!(
            beyond_role(&Role::Viewer, &strings(&["chat"])),
            Some("chat".into())
        );
    }

    #[test]
    fn key_model_patterns_must_fit_inside_the_team_s() {
        let team = vec!["gpt-4o*".to_owned(), "claude-3".to_owned()];
        assert!(pattern_within("gpt-4o-mini", &team));
        assert!(pattern_within("gpt-4o*", &team));
        assert!(pattern_within("gpt-4o-mini*", &team));
        assert!(pattern_within("claude-3", &team));
        assert!(!pattern_within("claude-3*", &team));
        assert!(!pattern_within("gpt*", &team));
        assert!(!pattern_within("o1", &team));
        assert!(pattern_within("anything*", &[]));
    }
}
