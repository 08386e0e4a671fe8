//! Users ([`UserStore`]). Deleting one keeps its row (soft delete) without its password
//! hash, removes its memberships and revokes its keys, in one transaction.

use super::{
    commit, db_err, map_db_err, require_nonempty, user_from_row, with_limits, write_audit,
    BindLimits, Changes, SqlStore, USER_COLS, USER_CONFLICT, USER_ROLE,
};
use crate::domain::{self, Role, User};
use crate::store::{Actor, NewUser, StoreResult, UserPatch, UserStore};
use async_trait::async_trait;
use serde_json::json;

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, actor: &Actor, new: NewUser) -> StoreResult<User> {
        require_nonempty("username", &new.username)?;
        require_nonempty("email", &new.email)?;
        let now = domain::now();
        let mut user = User {
            id: domain::new_id(),
            username: new.username,
            email: new.email,
            full_name: new.full_name,
            role: new.role.unwrap_or(Role::User),
            org_id: new.org_id,
            blocked: false,
            limits: new.limits,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            locked_until: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        if let Some(org) = &user.org_id {
            self.require_live(&mut tx, "orgs", "org", org).await?;
        }
        user.role = self.assignable_role(&mut tx, user.role).await?;
        sqlx::query(
            "INSERT INTO users (id, username, email, full_name, role, blocked, password_hash, \
             rpm, tpm, max_budget, budget_duration, metadata, created_at, updated_at, \
             email_verified, max_parallel, org_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CAST($10 AS DOUBLE PRECISION), $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(user.full_name.as_deref())
        .bind(user.role.as_str())
        .bind(user.blocked)
        .bind(new.password_hash.as_deref())
        .bind_limits(&user.limits)
        .bind(user.metadata.to_string())
        .bind(now)
        .bind(now)
        .bind(!new.email_unverified)
        .bind(user.limits.max_parallel)
        .bind(user.org_id.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(USER_CONFLICT)))?;
        let details = with_limits(
            json!({
                "username": user.username,
                "email": user.email,
                "full_name": user.full_name,
                "role": user.role,
                "org_id": user.org_id,
                "password_set": new.password_hash.is_some(),
            }),
            &user.limits,
        );
        write_audit(&mut tx, actor, now, "user.create", &user.id, details).await?;
        commit(tx).await?;
        Ok(user)
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<User>> {
        let sql = format!(
            "SELECT {USER_COLS}, {USER_ROLE} FROM users WHERE id = $1 AND deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLS}, {USER_ROLE} FROM users WHERE deleted_at IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        actor: &Actor,
        id: &str,
        patch: UserPatch,
    ) -> StoreResult<Option<User>> {
        if let Some(email) = &patch.email {
            require_nonempty("email", email)?;
        }
        let mut tx = self.begin_write().await?;
        let Some(mut user) = self.locked_user(&mut tx, id).await? else {
            return Ok(None);
        };
        if patch.email.is_some() {
            sqlx::query("UPDATE users SET email_verified = $2 WHERE id = $1")
                .bind(&user.id)
                .bind(!patch.email_unverified)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let role = match patch.role {
            Some(role) => Some(self.assignable_role(&mut tx, role).await?),
            None => None,
        };
        let mut changes = Changes::default();
        changes.apply("email", &mut user.email, patch.email);
        changes.apply("full_name", &mut user.full_name, patch.full_name);
        changes.apply("role", &mut user.role, role);
        changes.apply("blocked", &mut user.blocked, patch.blocked);
        changes.apply_limits(&mut user.limits, patch.limits);
        changes.apply("metadata", &mut user.metadata, patch.metadata);
        let now = domain::now();
        user.updated_at = now;
        sqlx::query(
            "UPDATE users SET email = $2, full_name = $3, role = $4, blocked = $5, rpm = $6, \
             tpm = $7, max_budget = CAST($8 AS DOUBLE PRECISION), budget_duration = $9, metadata = $10, updated_at = $11, \
             max_parallel = $12 WHERE id = $1",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(user.full_name.as_deref())
        .bind(user.role.as_str())
        .bind(user.blocked)
        .bind_limits(&user.limits)
        .bind(user.metadata.to_string())
        .bind(now)
        .bind(user.limits.max_parallel)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(USER_CONFLICT)))?;
        write_audit(
            &mut tx,
            actor,
            now,
            "user.update",
            &user.id,
            changes.into_value(),
        )
        .await?;
        commit(tx).await?;
        Ok(Some(user))
    }

    async fn delete_user(&self, actor: &Actor, id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let Some(user) = self.locked_user(&mut tx, id).await? else {
            return Ok(false);
        };
        let now = domain::now();
        // The row stays (soft delete) so revoked keys and usage keep their owner; the
        // password hash goes, so nothing can authenticate as the deleted user.
        sqlx::query(
            "UPDATE users SET deleted_at = $2, updated_at = $2, password_hash = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let members = sqlx::query("DELETE FROM team_members WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        let keys = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2, updated_at = $2 \
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        // Passkeys go with their user (the soft delete cascades nothing by itself).
        let passkeys = sqlx::query("DELETE FROM passkeys WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        for table in ["passkey_handles", "passkey_challenges"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let details = json!({
            "username": user.username,
            "memberships_removed": members,
            "keys_revoked": keys,
            "passkeys_deleted": passkeys,
        });
        write_audit(&mut tx, actor, now, "user.delete", id, details).await?;
        commit(tx).await?;
        Ok(true)
    }
}
