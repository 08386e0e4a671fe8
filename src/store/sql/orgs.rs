//! Organizations ([`OrgStore`]). Deleting one keeps its row (soft delete) and is refused
//! while a live team or user still belongs to it.

use super::{
    col, commit, db_err, json_col, limits_from_row, map_db_err, require_nonempty, with_limits,
    write_audit, BindLimits, Changes, SqlStore,
};
use crate::domain::{self, Org};
use crate::store::{Actor, NewOrg, OrgPatch, OrgStore, StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

const ORG_COLS: &str = "id, name, rpm, tpm, max_budget, budget_duration, max_parallel, \
     metadata, created_at, updated_at";

fn org_from_row(row: &AnyRow) -> StoreResult<Org> {
    Ok(Org {
        id: col(row, "id")?,
        name: col(row, "name")?,
        limits: limits_from_row(row)?,
        metadata: json_col(row, "metadata")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn org_conflict(name: &str) -> String {
    format!("an org named {name} already exists")
}

impl SqlStore {
    async fn locked_org(&self, conn: &mut AnyConnection, id: &str) -> StoreResult<Option<Org>> {
        let sql = format!(
            "SELECT {ORG_COLS} FROM orgs WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn count_live(
        &self,
        conn: &mut AnyConnection,
        table: &'static str,
        org: &str,
    ) -> StoreResult<i64> {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE org_id = $1 AND deleted_at IS NULL");
        sqlx::query_scalar(&sql)
            .bind(org)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)
    }
}

#[async_trait]
impl OrgStore for SqlStore {
    async fn create_org(&self, actor: &Actor, new: NewOrg) -> StoreResult<Org> {
        require_nonempty("org name", &new.name)?;
        let now = domain::now();
        let org = Org {
            id: domain::new_id(),
            name: new.name,
            limits: new.limits,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO orgs (id, name, rpm, tpm, max_budget, budget_duration, max_parallel, \
             metadata, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, CAST($5 AS DOUBLE PRECISION), $6, $7, $8, $9, $10)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind_limits(&org.limits)
        .bind(org.limits.max_parallel)
        .bind(org.metadata.to_string())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(&org_conflict(&org.name))))?;
        let details = with_limits(json!({ "name": org.name }), &org.limits);
        write_audit(&mut tx, actor, now, "org.create", &org.id, details).await?;
        commit(tx).await?;
        Ok(org)
    }

    async fn get_org(&self, id: &str) -> StoreResult<Option<Org>> {
        let sql = format!("SELECT {ORG_COLS} FROM orgs WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>> {
        let sql = format!("SELECT {ORG_COLS} FROM orgs WHERE name = $1 AND deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn list_orgs(&self) -> StoreResult<Vec<Org>> {
        let sql =
            format!("SELECT {ORG_COLS} FROM orgs WHERE deleted_at IS NULL ORDER BY created_at, id");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(org_from_row).collect()
    }

    async fn update_org(
        &self,
        actor: &Actor,
        id: &str,
        patch: OrgPatch,
    ) -> StoreResult<Option<Org>> {
        if let Some(name) = &patch.name {
            require_nonempty("org name", name)?;
        }
        let mut tx = self.begin_write().await?;
        let Some(mut org) = self.locked_org(&mut tx, id).await? else {
            return Ok(None);
        };
        let mut changes = Changes::default();
        changes.apply("name", &mut org.name, patch.name);
        changes.apply_limits(&mut org.limits, patch.limits);
        changes.apply("metadata", &mut org.metadata, patch.metadata);
        let now = domain::now();
        org.updated_at = now;
        sqlx::query(
            "UPDATE orgs SET name = $2, rpm = $3, tpm = $4, \
             max_budget = CAST($5 AS DOUBLE PRECISION), budget_duration = $6, \
             max_parallel = $7, metadata = $8, updated_at = $9 WHERE id = $1",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind_limits(&org.limits)
        .bind(org.limits.max_parallel)
        .bind(org.metadata.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(&org_conflict(&org.name))))?;
        write_audit(
            &mut tx,
            actor,
            now,
            "org.update",
            &org.id,
            changes.into_value(),
        )
        .await?;
        commit(tx).await?;
        Ok(Some(org))
    }

    async fn delete_org(&self, actor: &Actor, id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let Some(org) = self.locked_org(&mut tx, id).await? else {
            return Ok(false);
        };
        // A team or user created meanwhile holds the org FOR SHARE (Postgres) or waits for
        // this transaction (SQLite), so the counts hold until the commit.
        let teams = self.count_live(&mut tx, "teams", id).await?;
        let users = self.count_live(&mut tx, "users", id).await?;
        if teams > 0 || users > 0 {
            return Err(StoreError::Conflict(format!(
                "org {} still has {teams} team(s) and {users} user(s): delete them first",
                org.name
            )));
        }
        let now = domain::now();
        sqlx::query("UPDATE orgs SET deleted_at = $2, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        write_audit(
            &mut tx,
            actor,
            now,
            "org.delete",
            id,
            json!({ "name": org.name }),
        )
        .await?;
        commit(tx).await?;
        Ok(true)
    }
}
