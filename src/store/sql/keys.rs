//! Virtual keys ([`KeyStore`]): their lifecycle, and [`KeyStore::lookup_key`], the hot
//! path's one read, which finds a key by its current or previous hash and joins its owners.

use super::{
    bool_col, col, commit, db_err, json_col, limits_from_row, list_col, list_text, map_db_err,
    prefixed_limits, require_key_hash, require_nonempty, role_col, with_limits, write_audit,
    Backend, BindLimits, Changes, SqlStore,
};
use crate::domain::{self, ApiKey, KeyLookup, KeyOwnerOrg, KeyOwnerTeam, KeyOwnerUser, Timestamp};
use crate::store::{
    Actor, KeyFilter, KeyPage, KeyPageRequest, KeyPatch, KeyStatus, KeyStore, LimitsPatch, NewKey,
    PageFrom, StoreError, StoreResult, MAX_KEY_PAGE,
};
use async_trait::async_trait;
use serde_json::json;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};
use std::collections::HashSet;

const KEY_COLS: &str = "id, name, key_hint, user_id, team_id, permissions, models, rpm, tpm, \
     max_budget, budget_duration, max_parallel, expires_at, blocked, metadata, created_at, updated_at, \
     revoked_at, previous_expires_at";

fn key_from_row(row: &AnyRow) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: col(row, "id")?,
        name: col(row, "name")?,
        key_hint: col(row, "key_hint")?,
        user_id: col(row, "user_id")?,
        team_id: col(row, "team_id")?,
        permissions: list_col(row, "permissions")?,
        models: list_col(row, "models")?,
        limits: limits_from_row(row)?,
        expires_at: col(row, "expires_at")?,
        blocked: bool_col(row, "blocked")?,
        metadata: json_col(row, "metadata")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
        revoked_at: col(row, "revoked_at")?,
        previous_expires_at: col(row, "previous_expires_at")?,
    })
}

const KEY_CONFLICT: &str = "a key with that secret already exists";

/// A value bound into a key listing's conditions.
enum Param {
    Text(String),
    Int(i64),
}

/// The conditions of a key listing ([`KeyFilter`]) as SQL, with their parameters in the
/// order of their `$n` placeholders.
struct Listing {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Listing {
    fn of(filter: KeyFilter, now: Timestamp, backend: Backend) -> Listing {
        let mut listing = Listing {
            conditions: Vec::new(),
            params: Vec::new(),
        };
        if let Some(user_id) = filter.user_id {
            listing.condition("user_id = ", Param::Text(user_id));
        }
        if let Some(team_id) = filter.team_id {
            listing.condition("team_id = ", Param::Text(team_id));
        }
        if let Some(org_id) = filter.org_id {
            let org = listing.param(Param::Text(org_id));
            listing.conditions.push(format!(
                "(user_id IN (SELECT id FROM users WHERE org_id = {org}) \
                 OR team_id IN (SELECT id FROM teams WHERE org_id = {org}))"
            ));
        }
        if let Some(search) = filter.search.filter(|s| !s.is_empty()) {
            // `$n` names the same value each time it appears. Ids are lower case; names
            // and hints are matched whatever their case.
            let like = listing.param(Param::Text(format!("%{}%", like_escaped(&search))));
            let prefix = listing.param(Param::Text(format!("{}%", like_escaped(&search))));
            let ilike = backend.case_insensitive_like();
            listing.conditions.push(format!(
                "(name {ilike} {like} ESCAPE '\\' OR id LIKE {prefix} ESCAPE '\\' \
                 OR key_hint {ilike} {like} ESCAPE '\\')"
            ));
        }
        // The states are written with literals where a partial index of migration 0008
        // serves them (a bound parameter would not let SQLite see that it applies).
        let live = "revoked_at IS NULL";
        match filter.status {
            None if filter.include_revoked => {}
            None => listing.conditions.push(live.to_owned()),
            Some(KeyStatus::Revoked) => listing.conditions.push("revoked_at IS NOT NULL".into()),
            Some(KeyStatus::Expired) => {
                let now = listing.param(Param::Int(now));
                listing.conditions.push(format!(
                    "{live} AND expires_at IS NOT NULL AND expires_at <= {now}"
                ));
            }
            Some(status @ (KeyStatus::Active | KeyStatus::Blocked)) => {
                let now = listing.param(Param::Int(now));
                let blocked = match status {
                    KeyStatus::Blocked => "TRUE",
                    _ => "FALSE",
                };
                listing.conditions.push(format!(
                    "{live} AND blocked = {blocked} AND (expires_at IS NULL OR expires_at > {now})"
                ));
            }
        }
        listing
    }

    /// Adds a parameter and answers its placeholder (`$3`).
    fn param(&mut self, value: Param) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    /// Adds `{sql}$n` as a condition, `$n` holding `value`.
    fn condition(&mut self, sql: &str, value: Param) {
        let placeholder = self.param(value);
        self.conditions.push(format!("{sql}{placeholder}"));
    }

    /// ` WHERE …` with every condition, or nothing.
    fn where_clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn bind<'q>(
        &mut self,
        mut query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        for param in self.params.drain(..) {
            query = match param {
                Param::Text(text) => query.bind(text),
                Param::Int(n) => query.bind(n),
            };
        }
        query
    }
}

/// `text` lower-cased, with LIKE's wildcards and the escape character escaped (`\`), so
/// that it matches itself.
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a new key must be before any SQL runs.
fn check_new_key(new: &NewKey) -> StoreResult<()> {
    require_nonempty("key name", &new.name)?;
    require_key_hash(&new.key_hash)
}

/// The error of the `i`th key of a batch, saying which one it was (`keys[3]: …`).
fn at_index(i: usize, e: StoreError) -> StoreError {
    match e {
        StoreError::Conflict(m) => StoreError::Conflict(format!("keys[{i}]: {m}")),
        StoreError::Invalid(m) => StoreError::Invalid(format!("keys[{i}]: {m}")),
        backend => backend,
    }
}

impl SqlStore {
    /// Inserts one key and its `key.create` audit row in `tx`. `live` holds the owners
    /// already found live (and locked) in this transaction, so a batch reads each once.
    async fn insert_key(
        &self,
        tx: &mut AnyConnection,
        actor: &Actor,
        new: NewKey,
        now: Timestamp,
        live: &mut HashSet<(&'static str, String)>,
    ) -> StoreResult<ApiKey> {
        let key = ApiKey {
            id: domain::new_id(),
            name: new.name,
            key_hint: new.key_hint,
            user_id: new.user_id,
            team_id: new.team_id,
            permissions: new.permissions,
            models: new.models,
            limits: new.limits,
            expires_at: new.expires_at,
            blocked: false,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            created_at: now,
            updated_at: now,
            revoked_at: None,
            previous_expires_at: None,
        };
        for (table, what, id) in [
            ("users", "user", &key.user_id),
            ("teams", "team", &key.team_id),
        ] {
            if let Some(id) = id {
                if !live.contains(&(table, id.clone())) {
                    self.require_live(&mut *tx, table, what, id).await?;
                    live.insert((table, id.clone()));
                }
            }
        }
        if let (Some(user), Some(team)) = (&key.user_id, &key.team_id) {
            self.require_same_org(&mut *tx, team, user).await?;
        }
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, key_hint, user_id, team_id, permissions, \
             models, rpm, tpm, max_budget, budget_duration, expires_at, blocked, metadata, \
             created_at, updated_at, max_parallel) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CAST($11 AS DOUBLE PRECISION), $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&new.key_hash)
        .bind(&key.key_hint)
        .bind(key.user_id.as_deref())
        .bind(key.team_id.as_deref())
        .bind(list_text(&key.permissions))
        .bind(list_text(&key.models))
        .bind_limits(&key.limits)
        .bind(key.expires_at)
        .bind(key.blocked)
        .bind(key.metadata.to_string())
        .bind(now)
        .bind(now)
        .bind(key.limits.max_parallel)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(KEY_CONFLICT)))?;
        let details = with_limits(
            json!({
                "name": key.name,
                "key_hint": key.key_hint,
                "user_id": key.user_id,
                "team_id": key.team_id,
                "permissions": key.permissions,
                "models": key.models,
                "expires_at": key.expires_at,
            }),
            &key.limits,
        );
        write_audit(tx, actor, now, "key.create", &key.id, details).await?;
        Ok(key)
    }
    async fn locked_key(&self, conn: &mut AnyConnection, id: &str) -> StoreResult<Option<ApiKey>> {
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE id = $1{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.as_ref().map(key_from_row).transpose()
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn create_key(&self, actor: &Actor, new: NewKey) -> StoreResult<ApiKey> {
        check_new_key(&new)?;
        let mut tx = self.begin_write().await?;
        let key = self
            .insert_key(&mut tx, actor, new, domain::now(), &mut HashSet::new())
            .await?;
        commit(tx).await?;
        Ok(key)
    }

    async fn create_keys(&self, actor: &Actor, keys: Vec<NewKey>) -> StoreResult<Vec<ApiKey>> {
        for (i, new) in keys.iter().enumerate() {
            check_new_key(new).map_err(|e| at_index(i, e))?;
        }
        let now = domain::now();
        let mut owners = HashSet::new();
        let mut created = Vec::with_capacity(keys.len());
        let mut tx = self.begin_write().await?;
        for (i, new) in keys.into_iter().enumerate() {
            let key = self
                .insert_key(&mut tx, actor, new, now, &mut owners)
                .await
                .map_err(|e| at_index(i, e))?;
            created.push(key);
        }
        commit(tx).await?;
        Ok(created)
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<ApiKey>> {
        let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_keys(&self, filter: KeyFilter) -> StoreResult<Vec<ApiKey>> {
        let mut listing = Listing::of(filter, domain::now(), self.backend);
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys{} ORDER BY created_at, id",
            listing.where_clause()
        );
        let rows = listing
            .bind(sqlx::query(&sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn budgeted_keys(&self, filter: KeyFilter) -> StoreResult<Vec<ApiKey>> {
        let mut listing = Listing::of(filter, domain::now(), self.backend);
        listing.conditions.push("max_budget IS NOT NULL".into());
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys{} ORDER BY created_at, id",
            listing.where_clause()
        );
        let rows = listing
            .bind(sqlx::query(&sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn page_keys(&self, filter: KeyFilter, page: KeyPageRequest) -> StoreResult<KeyPage> {
        if !(1..=MAX_KEY_PAGE).contains(&page.limit) {
            return Err(StoreError::Invalid(format!(
                "a page holds from 1 to {MAX_KEY_PAGE} keys, not {}",
                page.limit
            )));
        }
        let limit = page.limit as usize;
        let mut listing = Listing::of(filter, domain::now(), self.backend);
        // Newest first is id descending (UUIDv7); the page before a key is read ascending
        // from it, then turned around.
        let order = match &page.from {
            PageFrom::Start => "DESC",
            PageFrom::After(id) => {
                listing.condition("id < ", Param::Text(id.clone()));
                "DESC"
            }
            PageFrom::Before(id) => {
                listing.condition("id > ", Param::Text(id.clone()));
                "ASC"
            }
        };
        // One more than the page, to know whether there is more beyond it.
        let more = listing.param(Param::Int(limit as i64 + 1));
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys{} ORDER BY id {order} LIMIT {more}",
            listing.where_clause()
        );
        let rows = listing
            .bind(sqlx::query(&sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let mut keys = rows
            .iter()
            .map(key_from_row)
            .collect::<StoreResult<Vec<ApiKey>>>()?;
        let beyond = keys.len() > limit;
        keys.truncate(limit);
        let ids = |keys: &[ApiKey]| {
            (
                keys.first().map(|k| k.id.clone()),
                keys.last().map(|k| k.id.clone()),
            )
        };
        Ok(match page.from {
            PageFrom::Start => KeyPage {
                next_after: ids(&keys).1.filter(|_| beyond),
                prev_before: None,
                keys,
            },
            PageFrom::After(_) => {
                let (first, last) = ids(&keys);
                KeyPage {
                    next_after: last.filter(|_| beyond),
                    prev_before: first,
                    keys,
                }
            }
            PageFrom::Before(_) => {
                keys.reverse();
                let (first, last) = ids(&keys);
                KeyPage {
                    next_after: last,
                    prev_before: first.filter(|_| beyond),
                    keys,
                }
            }
        })
    }

    async fn update_key(
        &self,
        actor: &Actor,
        id: &str,
        patch: KeyPatch,
    ) -> StoreResult<Option<ApiKey>> {
        if let Some(name) = &patch.name {
            require_nonempty("key name", name)?;
        }
        let mut tx = self.begin_write().await?;
        let Some(mut key) = self.locked_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Err(StoreError::Invalid("key is revoked".to_string()));
        }
        // Blocking and unblocking get their own audit actions, so they can be filtered on.
        let only_blocked = matches!(
            &patch,
            KeyPatch {
                blocked: Some(_),
                name: None,
                permissions: None,
                models: None,
                limits: LimitsPatch {
                    rpm: None,
                    tpm: None,
                    max_budget: None,
                    budget_duration: None,
                    max_parallel: None,
                },
                expires_at: None,
                metadata: None,
            }
        );
        let action = match patch.blocked {
            Some(true) if only_blocked => "key.block",
            Some(false) if only_blocked => "key.unblock",
            _ => "key.update",
        };
        let mut changes = Changes::default();
        changes.apply("name", &mut key.name, patch.name);
        changes.apply("permissions", &mut key.permissions, patch.permissions);
        changes.apply("models", &mut key.models, patch.models);
        changes.apply("blocked", &mut key.blocked, patch.blocked);
        changes.apply_limits(&mut key.limits, patch.limits);
        changes.apply("expires_at", &mut key.expires_at, patch.expires_at);
        changes.apply("metadata", &mut key.metadata, patch.metadata);
        let now = domain::now();
        key.updated_at = now;
        sqlx::query(
            "UPDATE api_keys SET name = $2, permissions = $3, models = $4, blocked = $5, \
             rpm = $6, tpm = $7, max_budget = CAST($8 AS DOUBLE PRECISION), budget_duration = $9, expires_at = $10, \
             metadata = $11, updated_at = $12, max_parallel = $13 WHERE id = $1",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(list_text(&key.permissions))
        .bind(list_text(&key.models))
        .bind(key.blocked)
        .bind_limits(&key.limits)
        .bind(key.expires_at)
        .bind(key.metadata.to_string())
        .bind(now)
        .bind(key.limits.max_parallel)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        write_audit(&mut tx, actor, now, action, &key.id, changes.into_value()).await?;
        commit(tx).await?;
        Ok(Some(key))
    }

    async fn rotate_key(
        &self,
        actor: &Actor,
        id: &str,
        new_hash: &str,
        new_hint: &str,
        previous_expires_at: Option<Timestamp>,
    ) -> StoreResult<Option<ApiKey>> {
        require_key_hash(new_hash)?;
        let mut tx = self.begin_write().await?;
        let Some(mut key) = self.locked_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Err(StoreError::Invalid("key is revoked".to_string()));
        }
        let now = domain::now();
        // SET expressions see the row as it was, so `previous_hash = key_hash` keeps the
        // old secret's hash. Without a grace period the old secret must stop at once, and a
        // secret from an earlier rotation must not linger either: both hashes are replaced.
        let sql = match previous_expires_at {
            Some(_) => {
                "UPDATE api_keys SET previous_hash = key_hash, key_hash = $2, key_hint = $3, \
                 previous_expires_at = $4, updated_at = $5 WHERE id = $1"
            }
            None => {
                "UPDATE api_keys SET previous_hash = NULL, key_hash = $2, key_hint = $3, \
                 previous_expires_at = $4, updated_at = $5 WHERE id = $1"
            }
        };
        sqlx::query(sql)
            .bind(id)
            .bind(new_hash)
            .bind(new_hint)
            .bind(previous_expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_db_err(e, Some(KEY_CONFLICT)))?;
        let details = json!({
            "key_hint": new_hint,
            "previous_hint": key.key_hint,
            "previous_expires_at": previous_expires_at,
        });
        write_audit(&mut tx, actor, now, "key.rotate", id, details).await?;
        commit(tx).await?;
        key.key_hint = new_hint.to_string();
        key.previous_expires_at = previous_expires_at;
        key.updated_at = now;
        Ok(Some(key))
    }

    async fn revoke_key(&self, actor: &Actor, id: &str) -> StoreResult<Option<ApiKey>> {
        let mut tx = self.begin_write().await?;
        let Some(mut key) = self.locked_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            // Revoking twice changes nothing, so it records nothing either.
            return Ok(Some(key));
        }
        let now = domain::now();
        sqlx::query("UPDATE api_keys SET revoked_at = $2, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let details = json!({ "name": key.name, "key_hint": key.key_hint });
        write_audit(&mut tx, actor, now, "key.revoke", id, details).await?;
        commit(tx).await?;
        key.revoked_at = Some(now);
        key.updated_at = now;
        Ok(Some(key))
    }

    async fn lookup_key(&self, key_hash: &str) -> StoreResult<Option<KeyLookup>> {
        // One statement, served by the unique index on key_hash and the index on
        // previous_hash. The owners are joined even when soft-deleted: their keys are
        // revoked by then, and the decision reports the revocation.
        const SQL: &str = "SELECT k.id, k.name, k.key_hint, k.user_id, k.team_id, \
             k.permissions, k.models, k.rpm, k.tpm, k.max_budget, k.budget_duration, \
             k.max_parallel, k.expires_at, k.blocked, k.metadata, k.created_at, k.updated_at, k.revoked_at, \
             k.previous_expires_at, k.key_hash, \
             u.id AS owner_user_id, u.role AS owner_user_role, u.blocked AS owner_user_blocked, \
             (SELECT r.permissions FROM roles r WHERE r.name = u.role) \
             AS owner_user_role_permissions, \
             u.rpm AS owner_user_rpm, u.tpm AS owner_user_tpm, \
             u.max_budget AS owner_user_max_budget, \
             u.budget_duration AS owner_user_budget_duration, \
             u.max_parallel AS owner_user_max_parallel, \
             t.id AS owner_team_id, t.models AS owner_team_models, \
             t.blocked AS owner_team_blocked, \
             t.rpm AS owner_team_rpm, t.tpm AS owner_team_tpm, \
             t.max_budget AS owner_team_max_budget, \
             t.budget_duration AS owner_team_budget_duration, \
             t.max_parallel AS owner_team_max_parallel, \
             o.id AS owner_org_id, o.rpm AS owner_org_rpm, o.tpm AS owner_org_tpm, \
             o.max_budget AS owner_org_max_budget, \
             o.budget_duration AS owner_org_budget_duration, \
             o.max_parallel AS owner_org_max_parallel \
             FROM api_keys k \
             LEFT JOIN users u ON u.id = k.user_id \
             LEFT JOIN teams t ON t.id = k.team_id \
             LEFT JOIN orgs o ON o.id = COALESCE(t.org_id, u.org_id) \
             WHERE k.key_hash = $1 OR k.previous_hash = $1 \
             LIMIT 2";
        let rows = sqlx::query(SQL)
            .bind(key_hash)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        // Two rows only if one key's current secret is another's previous one; the current
        // secret wins.
        let mut best: Option<(&AnyRow, bool)> = None;
        for row in &rows {
            let current: String = col(row, "key_hash")?;
            let via_previous = current != key_hash;
            if best.is_none() || !via_previous {
                best = Some((row, via_previous));
            }
        }
        let Some((row, via_previous)) = best else {
            return Ok(None);
        };
        let user = match col::<Option<String>>(row, "owner_user_id")? {
            Some(id) => Some(KeyOwnerUser {
                id,
                role: role_col(row, "owner_user_role", "owner_user_role_permissions")?,
                blocked: bool_col(row, "owner_user_blocked")?,
                limits: prefixed_limits(row, "owner_user_")?,
            }),
            None => None,
        };
        let team = match col::<Option<String>>(row, "owner_team_id")? {
            Some(id) => Some(KeyOwnerTeam {
                id,
                models: list_col(row, "owner_team_models")?,
                blocked: bool_col(row, "owner_team_blocked")?,
                limits: prefixed_limits(row, "owner_team_")?,
            }),
            None => None,
        };
        let org = match col::<Option<String>>(row, "owner_org_id")? {
            Some(id) => Some(KeyOwnerOrg {
                id,
                limits: prefixed_limits(row, "owner_org_")?,
            }),
            None => None,
        };
        Ok(Some(KeyLookup {
            key: key_from_row(row)?,
            via_previous,
            user,
            team,
            org,
        }))
    }
}
