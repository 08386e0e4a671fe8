//! Teams and their memberships ([`TeamStore`]). Deleting a team keeps its row (soft
//! delete), removes its memberships and revokes its keys, in one transaction.

use super::{
    bool_col, col, commit, db_err, json_col, limits_from_row, list_col, list_text, map_db_err,
    member_from_row, require_nonempty, with_limits, write_audit, BindLimits, Changes, SqlStore,
    MEMBER_COLS,
};
use crate::domain::{self, Membership, MembershipSource, Team, TeamRole};
use crate::store::{Actor, NewTeam, StoreError, StoreResult, TeamPatch, TeamStore};
use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

const TEAM_COLS: &str = "id, name, org_id, models, blocked, rpm, tpm, max_budget, \
     budget_duration, max_parallel, metadata, created_at, updated_at";

fn team_from_row(row: &AnyRow) -> StoreResult<Team> {
    Ok(Team {
        id: col(row, "id")?,
        name: col(row, "name")?,
        org_id: col(row, "org_id")?,
        models: list_col(row, "models")?,
        blocked: bool_col(row, "blocked")?,
        limits: limits_from_row(row)?,
        metadata: json_col(row, "metadata")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn team_conflict(name: &str) -> String {
    format!("a team named {name} already exists")
}

impl SqlStore {
    async fn locked_team(&self, conn: &mut AnyConnection, id: &str) -> StoreResult<Option<Team>> {
        let sql = format!(
            "SELECT {TEAM_COLS} FROM teams WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.as_ref().map(team_from_row).transpose()
    }
}

impl SqlStore {
    /// Fails with `Invalid` unless the team and the user belong to the same org (or both
    /// to none): neither a membership nor a key of a user and a team crosses orgs.
    pub(super) async fn require_same_org(
        &self,
        conn: &mut AnyConnection,
        team_id: &str,
        user_id: &str,
    ) -> StoreResult<()> {
        let team_org: Option<String> = sqlx::query_scalar("SELECT org_id FROM teams WHERE id = $1")
            .bind(team_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        let user_org: Option<String> = sqlx::query_scalar("SELECT org_id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        if team_org == user_org {
            return Ok(());
        }
        let of = |org: &Option<String>| match org {
            Some(org) => format!("org {org}"),
            None => "no org".to_string(),
        };
        Err(StoreError::Invalid(format!(
            "user {user_id} belongs to {} and team {team_id} to {}: a user and a team meet only inside one org",
            of(&user_org),
            of(&team_org)
        )))
    }
}

#[async_trait]
impl TeamStore for SqlStore {
    async fn create_team(&self, actor: &Actor, new: NewTeam) -> StoreResult<Team> {
        require_nonempty("team name", &new.name)?;
        let now = domain::now();
        let team = Team {
            id: domain::new_id(),
            name: new.name,
            org_id: new.org_id,
            models: new.models,
            blocked: false,
            limits: new.limits,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        if let Some(org) = &team.org_id {
            self.require_live(&mut tx, "orgs", "org", org).await?;
        }
        sqlx::query(
            "INSERT INTO teams (id, name, models, blocked, rpm, tpm, max_budget, \
             budget_duration, metadata, created_at, updated_at, max_parallel, org_id) \
             VALUES ($1, $2, $3, $4, $5, $6, CAST($7 AS DOUBLE PRECISION), $8, $9, $10, $11, $12, $13)",
        )
        .bind(&team.id)
        .bind(&team.name)
        .bind(list_text(&team.models))
        .bind(team.blocked)
        .bind_limits(&team.limits)
        .bind(team.metadata.to_string())
        .bind(now)
        .bind(now)
        .bind(team.limits.max_parallel)
        .bind(team.org_id.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(&team_conflict(&team.name))))?;
        let details = with_limits(
            json!({ "name": team.name, "org_id": team.org_id, "models": team.models }),
            &team.limits,
        );
        write_audit(&mut tx, actor, now, "team.create", &team.id, details).await?;
        commit(tx).await?;
        Ok(team)
    }

    async fn get_team(&self, id: &str) -> StoreResult<Option<Team>> {
        let sql = format!("SELECT {TEAM_COLS} FROM teams WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(team_from_row).transpose()
    }

    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        let sql = format!(
            "SELECT {TEAM_COLS} FROM teams WHERE deleted_at IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(team_from_row).collect()
    }

    async fn update_team(
        &self,
        actor: &Actor,
        id: &str,
        patch: TeamPatch,
    ) -> StoreResult<Option<Team>> {
        if let Some(name) = &patch.name {
            require_nonempty("team name", name)?;
        }
        let mut tx = self.begin_write().await?;
        let Some(mut team) = self.locked_team(&mut tx, id).await? else {
            return Ok(None);
        };
        let mut changes = Changes::default();
        changes.apply("name", &mut team.name, patch.name);
        changes.apply("models", &mut team.models, patch.models);
        changes.apply("blocked", &mut team.blocked, patch.blocked);
        changes.apply_limits(&mut team.limits, patch.limits);
        changes.apply("metadata", &mut team.metadata, patch.metadata);
        let now = domain::now();
        team.updated_at = now;
        sqlx::query(
            "UPDATE teams SET name = $2, models = $3, blocked = $4, rpm = $5, tpm = $6, \
             max_budget = CAST($7 AS DOUBLE PRECISION), budget_duration = $8, metadata = $9, updated_at = $10, \
             max_parallel = $11 WHERE id = $1",
        )
        .bind(&team.id)
        .bind(&team.name)
        .bind(list_text(&team.models))
        .bind(team.blocked)
        .bind_limits(&team.limits)
        .bind(team.metadata.to_string())
        .bind(now)
        .bind(team.limits.max_parallel)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(&team_conflict(&team.name))))?;
        write_audit(
            &mut tx,
            actor,
            now,
            "team.update",
            &team.id,
            changes.into_value(),
        )
        .await?;
        commit(tx).await?;
        Ok(Some(team))
    }

    async fn delete_team(&self, actor: &Actor, id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let Some(team) = self.locked_team(&mut tx, id).await? else {
            return Ok(false);
        };
        let now = domain::now();
        sqlx::query("UPDATE teams SET deleted_at = $2, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let members = sqlx::query("DELETE FROM team_members WHERE team_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        let keys = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2, updated_at = $2 \
             WHERE team_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        let details = json!({
            "name": team.name,
            "memberships_removed": members,
            "keys_revoked": keys,
        });
        write_audit(&mut tx, actor, now, "team.delete", id, details).await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn add_member(
        &self,
        actor: &Actor,
        team_id: &str,
        user_id: &str,
        role: TeamRole,
        source: MembershipSource,
    ) -> StoreResult<Membership> {
        let mut tx = self.begin_write().await?;
        self.require_live(&mut tx, "teams", "team", team_id).await?;
        self.require_live(&mut tx, "users", "user", user_id).await?;
        self.require_same_org(&mut tx, team_id, user_id).await?;
        let sql = format!(
            "SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2{}",
            self.backend.for_update()
        );
        let previous_role: Option<String> = sqlx::query_scalar(&sql)
            .bind(team_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let now = domain::now();
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, source, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role, \
             source = excluded.source",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(source.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let sql =
            format!("SELECT {MEMBER_COLS} FROM team_members WHERE team_id = $1 AND user_id = $2");
        let row = sqlx::query(&sql)
            .bind(team_id)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let membership = member_from_row(&row)?;
        let mut details = json!({ "role": role, "source": source });
        if let Some(previous) = previous_role {
            details["previous_role"] = Value::String(previous);
        }
        let target = format!("{team_id}/{user_id}");
        write_audit(&mut tx, actor, now, "team.member.add", &target, details).await?;
        commit(tx).await?;
        Ok(membership)
    }

    async fn remove_member(
        &self,
        actor: &Actor,
        team_id: &str,
        user_id: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        let target = format!("{team_id}/{user_id}");
        write_audit(
            &mut tx,
            actor,
            domain::now(),
            "team.member.remove",
            &target,
            json!({}),
        )
        .await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn list_members(&self, team_id: &str) -> StoreResult<Vec<Membership>> {
        let sql = format!(
            "SELECT {MEMBER_COLS} FROM team_members WHERE team_id = $1 ORDER BY created_at, user_id"
        );
        let rows = sqlx::query(&sql)
            .bind(team_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(member_from_row).collect()
    }

    async fn user_memberships(&self, user_id: &str) -> StoreResult<Vec<Membership>> {
        // Deleting a team deletes its memberships; the join keeps this true even so.
        let rows = sqlx::query(
            "SELECT m.team_id, m.user_id, m.role, m.source, m.created_at \
             FROM team_members m JOIN teams t ON t.id = m.team_id \
             WHERE m.user_id = $1 AND t.deleted_at IS NULL \
             ORDER BY m.created_at, m.team_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(member_from_row).collect()
    }
}
