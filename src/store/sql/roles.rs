//! Custom roles ([`RoleStore`]), and resolving a user's role name to a [`Role`] with its
//! permissions when a user is written.
//!
//! A user's row names its role; a custom role's permissions are read with the user (the
//! `role_permissions` column of [`super::USER_ROLE`]). Assigning a custom role takes the
//! role's row `FOR SHARE` and deleting one takes it `FOR UPDATE` before counting its
//! holders, so on Postgres a role cannot be deleted while a transaction gives it to a user
//! (SQLite writes one transaction at a time).

use super::{col, commit, db_err, list_col, list_text, map_db_err, write_audit, SqlStore};
use crate::decision::ADMIN_PERMISSION;
use crate::domain::{self, Role, RoleDef};
use crate::store::{Actor, RoleStore, StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

const ROLE_COLS: &str = "name, permissions, created_at, updated_at";

fn role_from_row(row: &AnyRow) -> StoreResult<RoleDef> {
    Ok(RoleDef {
        name: col(row, "name")?,
        permissions: list_col(row, "permissions")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn check_role(name: &str, permissions: &[String]) -> StoreResult<()> {
    Role::check_custom_name(name).map_err(StoreError::Invalid)?;
    if permissions.iter().any(|p| p == ADMIN_PERMISSION) {
        return Err(StoreError::Invalid(
            "a custom role cannot have the `admin` permission".into(),
        ));
    }
    Ok(())
}

impl SqlStore {
    /// `role` as a user is given it: a built-in role as it is, a custom role with its
    /// permissions, its row held `FOR SHARE` until the transaction ends. `Invalid` when no
    /// such custom role exists.
    pub(super) async fn assignable_role(
        &self,
        conn: &mut AnyConnection,
        role: Role,
    ) -> StoreResult<Role> {
        let Role::Custom(custom) = &role else {
            return Ok(role);
        };
        let sql = format!(
            "SELECT permissions FROM roles WHERE name = $1{}",
            self.backend.for_share()
        );
        let row = sqlx::query(&sql)
            .bind(&*custom.name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "`role`: unknown role `{}` (built-in roles: {}; custom roles: GET /admin/roles)",
                    custom.name,
                    Role::BUILT_IN.join(", ")
                ))
            })?;
        Ok(Role::custom(&custom.name, &list_col(&row, "permissions")?))
    }

    async fn locked_role(
        &self,
        conn: &mut AnyConnection,
        name: &str,
    ) -> StoreResult<Option<RoleDef>> {
        let sql = format!(
            "SELECT {ROLE_COLS} FROM roles WHERE name = $1{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.as_ref().map(role_from_row).transpose()
    }
}

#[async_trait]
impl RoleStore for SqlStore {
    async fn list_roles(&self) -> StoreResult<Vec<RoleDef>> {
        let sql = format!("SELECT {ROLE_COLS} FROM roles ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn get_role(&self, name: &str) -> StoreResult<Option<RoleDef>> {
        let sql = format!("SELECT {ROLE_COLS} FROM roles WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(role_from_row).transpose()
    }

    async fn create_role(
        &self,
        actor: &Actor,
        name: &str,
        permissions: Vec<String>,
    ) -> StoreResult<RoleDef> {
        check_role(name, &permissions)?;
        let now = domain::now();
        let role = RoleDef {
            name: name.to_owned(),
            permissions,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO roles (name, permissions, created_at, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&role.name)
        .bind(list_text(&role.permissions))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(&format!("a role named {name} already exists"))))?;
        let details = json!({ "permissions": role.permissions });
        write_audit(&mut tx, actor, now, "role.create", name, details).await?;
        commit(tx).await?;
        Ok(role)
    }

    async fn update_role(
        &self,
        actor: &Actor,
        name: &str,
        permissions: Vec<String>,
    ) -> StoreResult<Option<RoleDef>> {
        check_role(name, &permissions)?;
        let mut tx = self.begin_write().await?;
        let Some(mut role) = self.locked_role(&mut tx, name).await? else {
            return Ok(None);
        };
        let now = domain::now();
        let details = json!({ "from": role.permissions, "to": permissions });
        role.permissions = permissions;
        role.updated_at = now;
        sqlx::query("UPDATE roles SET permissions = $2, updated_at = $3 WHERE name = $1")
            .bind(name)
            .bind(list_text(&role.permissions))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        write_audit(&mut tx, actor, now, "role.update", name, details).await?;
        commit(tx).await?;
        Ok(Some(role))
    }

    async fn delete_role(&self, actor: &Actor, name: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let Some(role) = self.locked_role(&mut tx, name).await? else {
            return Ok(false);
        };
        let holders: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = $1 AND deleted_at IS NULL")
                .bind(name)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)
                .and_then(|row| col(&row, "n"))?;
        if holders > 0 {
            return Err(StoreError::Conflict(format!(
                "the role {name} is held by {holders} user(s); give them another role first"
            )));
        }
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let details = json!({ "permissions": role.permissions });
        write_audit(&mut tx, actor, domain::now(), "role.delete", name, details).await?;
        commit(tx).await?;
        Ok(true)
    }
}
