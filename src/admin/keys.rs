//! `/admin/keys`: create, list, inspect, update, block, unblock, rotate and revoke virtual
//! keys. Every write invalidates the key in this process's cache at once.
//!
//! Who may change a key is [`Caller::manages_key`]; on top of that, a non-admin may only
//! block or revoke a key that can do more than their own role ([`Caller::check_holds`]):
//! rotating it would hand them its secret, unblocking or re-enabling it would put it back
//! into use.

use super::access::{check_key_narrows, Owners};
use super::{
    all_with_spend, limits_of, limits_patch_of, list, nullable, validate, whole, with_spend,
    ApiError, AppState, Caller, JsonBody, OrgThing, QueryParams, WithSpend,
};
use crate::authn::api_key::{self, PlainKey};
use crate::authn::key_cache::Invalidation;
use crate::domain::{self, ApiKey, BudgetDuration, Role, Timestamp};
use crate::invalidation::Change;
use crate::store::{
    KeyFilter, KeyPageRequest, KeyPatch, KeyStatus, NewKey, PageFrom, SpendKind, MAX_KEY_PAGE,
};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(list_keys).post(create))
        .route(
            "/admin/keys/bulk",
            post(create_bulk).layer(DefaultBodyLimit::max(MAX_BULK_BODY_BYTES)),
        )
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
pub(crate) struct CreateKey {
    pub name: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
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

/// A key as created or rotated: the record plus, this once, the plaintext.
#[derive(Serialize)]
pub(crate) struct WithSecret {
    #[serde(flatten)]
    pub key: ApiKey,
    #[serde(rename = "key", serialize_with = "exposed")]
    pub secret: PlainKey,
}

/// The plaintext, in the one answer that carries it.
fn exposed<S: serde::Serializer>(plain: &PlainKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(plain.expose())
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
    caller: Caller,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<WithSecret>), ApiError> {
    let created = create_as(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `POST /admin/keys`: a key as the caller may create it (see [`may_create`]), checked
/// and stored, with its secret.
pub(crate) async fn create_as(
    app: &AppState,
    caller: &Caller,
    body: CreateKey,
) -> Result<WithSecret, ApiError> {
    let mut owners = Owners::default();
    let body = may_create(app, caller, &mut owners, body).await?;
    let (new, plain) = mint(app, caller, &mut owners, body).await?;
    stored(app, caller, new, plain).await
}

/// The body as the caller may create it: an admin creates any key; others (but viewers)
/// keys of their own or of a team they own, and a key they name no owner for is theirs.
async fn may_create(
    app: &AppState,
    caller: &Caller,
    owners: &mut Owners,
    mut body: CreateKey,
) -> Result<CreateKey, ApiError> {
    if caller.is_admin() {
        return Ok(body);
    }
    if caller.org_scope().is_some() {
        // An org admin creates keys for its org's users and teams (its own without either).
        if let Some(user) = &body.user_id {
            caller
                .org_gate(app, OrgThing::UserId(user), "user", user)
                .await?;
        }
        if let Some(team) = &body.team_id {
            caller
                .org_gate(app, OrgThing::TeamId(team), "team", team)
                .await?;
        }
        if body.user_id.is_none() && body.team_id.is_none() {
            body.user_id = caller.user().map(|u| u.id.clone());
        }
        caller
            .check_org_key_reach(app, body.user_id.as_deref(), &body.permissions)
            .await?;
        return Ok(body);
    }
    caller.allow(caller.role() != Role::Viewer, "create keys")?;
    let me = caller.user().map(|u| u.id.clone());
    if body.user_id.is_some() && body.user_id != me {
        return Err(ApiError::Forbidden(
            "only an admin can create keys for another user".into(),
        ));
    }
    match &body.team_id {
        Some(team) => {
            let owns = owners.owned_by(app, caller, team).await?;
            caller.allow(owns, "create keys for a team they do not own")?;
        }
        // Without a team, a person's key is their own.
        None => body.user_id = me,
    }
    Ok(body)
}

/// Creates a key after the caller's right to do so was checked: validates the body and
/// that the key only narrows its owner's permissions and models.
pub(super) async fn create_key(
    app: &AppState,
    caller: &Caller,
    body: CreateKey,
) -> Result<WithSecret, ApiError> {
    let (new, plain) = mint(app, caller, &mut Owners::default(), body).await?;
    stored(app, caller, new, plain).await
}

/// Stores a minted key and answers it with its secret.
async fn stored(
    app: &AppState,
    caller: &Caller,
    new: NewKey,
    plain: PlainKey,
) -> Result<WithSecret, ApiError> {
    let key = app.store.create_key(&caller.actor, new).await?;
    app.invalidator
        .send(Change::new_secret(&plain.hash()))
        .await;
    Ok(WithSecret { key, secret: plain })
}

/// A checked body as the store takes it, with the new key's secret.
async fn mint(
    app: &AppState,
    caller: &Caller,
    owners: &mut Owners,
    body: CreateKey,
) -> Result<(NewKey, PlainKey), ApiError> {
    validate::name("name", &body.name)?;
    validate::tokens("permissions", &body.permissions)?;
    validate::tokens("models", &body.models)?;
    let limits = limits_of!(body);
    validate::limits(&limits)?;
    check_expiry(body.expires_at)?;
    check_metadata(&body.metadata)?;
    check_key_narrows(
        app,
        caller,
        owners,
        body.user_id.as_deref(),
        body.team_id.as_deref(),
        &body.permissions,
        &body.models,
    )
    .await?;
    let plain = api_key::generate();
    let new = NewKey {
        name: body.name,
        key_hash: plain.hash().to_hex(),
        key_hint: plain.hint(),
        user_id: body.user_id,
        team_id: body.team_id,
        permissions: body.permissions,
        models: body.models,
        limits,
        expires_at: body.expires_at,
        metadata: body.metadata,
    };
    Ok((new, plain))
}

/// Most keys one `POST /admin/keys/bulk` creates.
pub const MAX_BULK_KEYS: usize = 1_000;

/// The bulk route's body limit: room for [`MAX_BULK_KEYS`] keys of 4 KiB each.
const MAX_BULK_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeys {
    keys: Vec<CreateKey>,
}

/// `POST /admin/keys/bulk`: up to [`MAX_BULK_KEYS`] keys, each as `POST /admin/keys` takes
/// it and checked as it checks it, created in one transaction, all or nothing. The first
/// key refused refuses the batch, with the error a single create gives it, naming its
/// place (`keys[3]…`). Answers `{"data":[…]}` in the order given, each key with its
/// secret, this once.
async fn create_bulk(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateKeys, MAX_BULK_BODY_BYTES>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !caller.is_admin() {
        caller.allow(caller.role() != Role::Viewer, "create keys")?;
    }
    let count = body.keys.len();
    if !(1..=MAX_BULK_KEYS).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "`keys` holds {count} keys: give from 1 to {MAX_BULK_KEYS} per call"
        )));
    }
    let mut news = Vec::with_capacity(count);
    let mut secrets = Vec::with_capacity(count);
    // The batch's owners are read once each, whatever number of keys name them.
    let mut owners = Owners::default();
    for (i, body) in body.keys.into_iter().enumerate() {
        let place = format!("keys[{i}]");
        let body = may_create(&app, &caller, &mut owners, body)
            .await
            .map_err(|e| e.at(&place))?;
        let (new, plain) = mint(&app, &caller, &mut owners, body)
            .await
            .map_err(|e| e.at(&place))?;
        news.push(new);
        secrets.push(plain);
    }
    let keys = app.store.create_keys(&caller.actor, news).await?;
    for plain in &secrets {
        app.invalidator
            .send(Change::new_secret(&plain.hash()))
            .await;
    }
    let created: Vec<WithSecret> = keys
        .into_iter()
        .zip(secrets)
        .map(|(key, plain)| WithSecret { key, secret: plain })
        .collect();
    Ok((StatusCode::CREATED, list(created)))
}

/// The query of `GET /admin/keys`. Without `limit`, `after` and `before` it answers every
/// key that matches, oldest first, as it always has; with any of them, one page.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    #[serde(default)]
    pub include_revoked: bool,
    pub q: Option<String>,
    pub status: Option<KeyStatus>,
    pub limit: Option<u32>,
    pub after: Option<String>,
    pub before: Option<String>,
}

impl ListQuery {
    pub(crate) fn search(&self) -> KeySearch {
        KeySearch {
            q: self.q.clone(),
            status: self.status,
            limit: self.limit,
            after: self.after.clone(),
            before: self.before.clone(),
        }
    }
}

/// What every key listing takes beyond its owner filters: a search, a status, and the page.
/// (The query structs list these fields themselves: serde's `flatten` works neither with
/// `deny_unknown_fields` nor with numbers in a query string.)
#[derive(Default, Clone)]
pub(crate) struct KeySearch {
    /// A part of the name, the start of the id, or a part of the key hint.
    pub q: Option<String>,
    pub status: Option<KeyStatus>,
    /// Keys per page, from 1 to [`MAX_KEY_PAGE`] (default [`DEFAULT_KEY_PAGE`] when only
    /// `after` or `before` is given).
    pub limit: Option<u32>,
    /// The `next_after` of the page before.
    pub after: Option<String>,
    /// The `prev_before` of the page after.
    pub before: Option<String>,
}

/// Keys per page when `after` or `before` is given without `limit`.
pub(crate) const DEFAULT_KEY_PAGE: u32 = 100;

/// Longest search text, in characters.
const MAX_SEARCH_CHARS: usize = 200;

impl KeySearch {
    /// The store's filter for these owners, with the search and status checked.
    pub(crate) fn filter(
        &self,
        user_id: Option<String>,
        team_id: Option<String>,
        include_revoked: bool,
    ) -> Result<KeyFilter, ApiError> {
        let search = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        if let Some(q) = search {
            if q.chars().count() > MAX_SEARCH_CHARS {
                return Err(ApiError::BadRequest(format!(
                    "`q` is longer than {MAX_SEARCH_CHARS} characters"
                )));
            }
            if q.chars().any(char::is_control) {
                return Err(ApiError::BadRequest(
                    "`q` must not contain control characters".into(),
                ));
            }
        }
        Ok(KeyFilter {
            user_id,
            team_id,
            org_id: None,
            include_revoked,
            search: search.map(str::to_owned),
            status: self.status,
        })
    }

    /// The page asked for, or `None` for the whole listing.
    pub(crate) fn page(&self) -> Result<Option<KeyPageRequest>, ApiError> {
        let from = match (&self.after, &self.before) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give `after` or `before`, not both".into(),
                ))
            }
            (Some(id), None) => PageFrom::After(cursor("after", id)?),
            (None, Some(id)) => PageFrom::Before(cursor("before", id)?),
            (None, None) if self.limit.is_none() => return Ok(None),
            (None, None) => PageFrom::Start,
        };
        let limit = self.limit.unwrap_or(DEFAULT_KEY_PAGE);
        if !(1..=MAX_KEY_PAGE).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "`limit` must be from 1 to {MAX_KEY_PAGE}, got {limit}"
            )));
        }
        Ok(Some(KeyPageRequest { limit, from }))
    }
}

/// A page cursor: a key id as a page answered it.
fn cursor(field: &str, id: &str) -> Result<String, ApiError> {
    if id.is_empty() || id.chars().count() > 64 || id.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`{field}` must be a key id from an earlier page (`next_after` or `prev_before`)"
        )));
    }
    Ok(id.to_owned())
}

/// Keys as a listing answers them: every match, or one page of them.
pub(crate) struct KeyList {
    pub keys: Vec<WithSpend<ApiKey>>,
    /// `Some` when a page was asked for.
    pub page: Option<PageLinks>,
}

/// Where the pages next to a page start.
pub(crate) struct PageLinks {
    pub next_after: Option<String>,
    pub prev_before: Option<String>,
}

impl KeyList {
    /// `{"data":[…]}`, and for a page `next_after` and `prev_before` (null at the ends).
    pub(crate) fn into_json(self) -> Json<serde_json::Value> {
        let mut answer = serde_json::json!({ "data": self.keys });
        if let Some(page) = self.page {
            answer["next_after"] = serde_json::json!(page.next_after);
            answer["prev_before"] = serde_json::json!(page.prev_before);
        }
        Json(answer)
    }
}

/// The keys of `filter`, all or one page, each with its spend.
pub(crate) async fn fetch_keys(
    app: &AppState,
    filter: KeyFilter,
    page: Option<KeyPageRequest>,
) -> Result<KeyList, ApiError> {
    let (keys, page) = match page {
        None => (app.store.list_keys(filter).await?, None),
        Some(page) => {
            let found = app.store.page_keys(filter, page).await?;
            let links = PageLinks {
                next_after: found.next_after,
                prev_before: found.prev_before,
            };
            (found.keys, Some(links))
        }
    };
    let keys = all_with_spend(app, SpendKind::Key, keys, |k| k.id.clone()).await?;
    Ok(KeyList { keys, page })
}

async fn list_keys(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(listed(&app, &caller, q).await?.into_json())
}

/// `GET /admin/keys`: the keys the caller may list, as the query asks.
pub(crate) async fn listed(
    app: &AppState,
    caller: &Caller,
    mut q: ListQuery,
) -> Result<KeyList, ApiError> {
    if let Some(org) = caller.org_scope() {
        // An org admin lists its org's keys, narrowed to one of its users or teams.
        if let Some(team) = &q.team_id {
            caller
                .org_gate(app, OrgThing::TeamId(team), "team", team)
                .await?;
        }
        if let Some(user) = &q.user_id {
            caller
                .org_gate(app, OrgThing::UserId(user), "user", user)
                .await?;
        }
        let search = q.search();
        let mut filter = search.filter(q.user_id, q.team_id, q.include_revoked)?;
        filter.org_id = Some(org.to_owned());
        return fetch_keys(app, filter, search.page()?).await;
    }
    if !caller.reads_all() {
        // Others list their own keys, or the keys of a team they own.
        match (&q.team_id, &q.user_id) {
            (Some(team), _) => {
                let owns = caller.owns_team(app, team).await?;
                caller.allow(owns, "list the keys of a team they do not own")?;
            }
            (None, Some(user)) => {
                caller.allow(caller.is_user(user), "list another user's keys")?;
            }
            (None, None) => q.user_id = caller.user().map(|u| u.id.clone()),
        }
    }
    let search = q.search();
    let filter = search.filter(q.user_id, q.team_id, q.include_revoked)?;
    fetch_keys(app, filter, search.page()?).await
}

async fn get_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WithSpend<ApiKey>>, ApiError> {
    read_key(&app, &caller, &id).await.map(Json)
}

/// `GET /admin/keys/{id}`: the key with its spend, when the caller may see it.
pub(crate) async fn read_key(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<WithSpend<ApiKey>, ApiError> {
    let key = existing_key(app, id).await?;
    let sees = caller.org_gate(app, OrgThing::Key(&key), "key", id).await?
        || caller.sees_key(app, &key).await?;
    caller.allow(sees, "read this key")?;
    with_spend(app, SpendKind::Key, id, key).await
}

async fn existing_key(app: &AppState, id: &str) -> Result<ApiKey, ApiError> {
    app.store
        .get_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found("key", id))
}

/// A revoked key stays for its history and can no longer be changed: 409 conflict.
fn not_revoked(key: ApiKey) -> Result<ApiKey, ApiError> {
    match key.revoked_at {
        Some(_) => Err(ApiError::Conflict(format!("key `{}` is revoked", key.id))),
        None => Ok(key),
    }
}

/// The key, when the caller may change it; 404 or 403 otherwise.
pub(super) async fn managed_key(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<ApiKey, ApiError> {
    let key = existing_key(app, id).await?;
    let manages = caller.org_gate(app, OrgThing::Key(&key), "key", id).await?
        || caller.manages_key(app, &key).await?;
    caller.allow(manages, "change this key")?;
    Ok(key)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    name: Option<String>,
    permissions: Option<Vec<String>>,
    models: Option<Vec<String>>,
    blocked: Option<bool>,
    #[serde(default, deserialize_with = "whole::nullable")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "whole::nullable")]
    tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_budget: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_duration: Option<Option<BudgetDuration>>,
    #[serde(default, deserialize_with = "whole::nullable")]
    max_parallel: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable_time")]
    expires_at: Option<Option<Timestamp>>,
    metadata: Option<serde_json::Value>,
}

impl UpdateKey {
    /// Whether the patch does nothing but block the key (allowed on any key the caller
    /// manages: it only takes power away).
    fn only_blocks(&self) -> bool {
        self.blocked == Some(true)
            && self.name.is_none()
            && self.permissions.is_none()
            && self.models.is_none()
            && self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_budget.is_none()
            && self.budget_duration.is_none()
            && self.max_parallel.is_none()
            && self.expires_at.is_none()
            && self.metadata.is_none()
    }
}

fn nullable_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Timestamp>>, D::Error> {
    domain::rfc3339::option::deserialize(d).map(Some)
}

async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateKey>,
) -> Result<Json<ApiKey>, ApiError> {
    let key = not_revoked(managed_key(&app, &caller, &id).await?)?;
    if !body.only_blocks() {
        caller
            .check_holds(&app, &key, &key.permissions, "change this key")
            .await?;
    }
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
    if body.permissions.is_some() || body.models.is_some() {
        check_key_narrows(
            &app,
            &caller,
            &mut Owners::default(),
            key.user_id.as_deref(),
            key.team_id.as_deref(),
            body.permissions.as_deref().unwrap_or_default(),
            body.models.as_deref().unwrap_or_default(),
        )
        .await?;
    }
    if let Some(permissions) = &body.permissions {
        // Within its owner's role (checked above) is not enough: a team owner must not
        // give a key of the team's admin member more than the owner has.
        caller
            .check_holds(&app, &key, permissions, "give this key these permissions")
            .await?;
    }
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
    .await
    .map(Json)
}

/// Invalidates the key's cache entries and answers with it, or 404.
pub(super) async fn write_key(
    app: &AppState,
    id: &str,
    key: Option<ApiKey>,
) -> Result<ApiKey, ApiError> {
    app.invalidator.send(Invalidation::Key(id.to_owned())).await;
    key.ok_or_else(|| ApiError::not_found("key", id))
}

/// `POST /admin/keys/{id}/block` and `/unblock`.
pub(crate) async fn set_blocked(
    app: &AppState,
    caller: &Caller,
    id: &str,
    blocked: bool,
) -> Result<ApiKey, ApiError> {
    let key = not_revoked(managed_key(app, caller, id).await?)?;
    if !blocked {
        caller
            .check_holds(app, &key, &key.permissions, "unblock this key")
            .await?;
    }
    let patch = KeyPatch {
        blocked: Some(blocked),
        ..KeyPatch::default()
    };
    write_key(
        app,
        id,
        app.store.update_key(&caller.actor, id, patch).await?,
    )
    .await
}

async fn block(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    set_blocked(&app, &caller, &id, true).await.map(Json)
}

async fn unblock(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    set_blocked(&app, &caller, &id, false).await.map(Json)
}

async fn revoke(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    revoke_key(&app, &caller, &id).await.map(Json)
}

/// `DELETE /admin/keys/{id}`: revokes a key the caller manages.
pub(crate) async fn revoke_key(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<ApiKey, ApiError> {
    managed_key(app, caller, id).await?;
    write_key(app, id, app.store.revoke_key(&caller.actor, id).await?).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    #[serde(default, deserialize_with = "whole::required")]
    grace_seconds: i64,
}

/// Longest grace period a rotation may give the old secret: 30 days.
pub(crate) const MAX_GRACE_SECONDS: i64 = 30 * 24 * 3600;

async fn rotate(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RotateKey>,
) -> Result<Json<WithSecret>, ApiError> {
    rotate_key(&app, &caller, &id, body.grace_seconds)
        .await
        .map(Json)
}

/// `POST /admin/keys/{id}/rotate`: a new secret for a key the caller manages and holds;
/// the old one keeps working for `grace_seconds`.
pub(crate) async fn rotate_key(
    app: &AppState,
    caller: &Caller,
    id: &str,
    grace_seconds: i64,
) -> Result<WithSecret, ApiError> {
    let key = not_revoked(managed_key(app, caller, id).await?)?;
    caller
        .check_holds(app, &key, &key.permissions, "rotate this key")
        .await?;
    let grace = grace_seconds;
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
            id,
            &plain.hash().to_hex(),
            &plain.hint(),
            previous_expires_at,
        )
        .await?;
    app.invalidator
        .send(Change::new_secret(&plain.hash()))
        .await;
    let key = write_key(app, id, rotated).await?;
    Ok(WithSecret { key, secret: plain })
}
