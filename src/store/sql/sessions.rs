//! Password login and its sessions ([`SessionStore`]): consecutive failures and lockouts,
//! password hashes, and refresh-token families (rotation, reuse detection, logout). Only
//! hashes of refresh tokens are stored.

use super::{
    col, commit, db_err, map_db_err, require_key_hash, require_nonempty, user_from_row,
    write_audit, SqlStore, USER_COLS, USER_ROLE,
};
use crate::domain::{self, Timestamp, User};
use crate::store::{Actor, LoginUser, NewRefreshToken, RefreshOutcome, SessionStore, StoreResult};
use async_trait::async_trait;
use serde_json::json;

#[async_trait]
impl SessionStore for SqlStore {
    async fn find_login_user(&self, name: &str) -> StoreResult<Option<LoginUser>> {
        // Usernames and emails are unique among live users, but one user's username may be
        // another's email; the username wins then.
        let sql = format!(
            "SELECT {USER_COLS}, {USER_ROLE}, password_hash FROM users \
             WHERE (username = $1 OR email = $1) AND deleted_at IS NULL \
             ORDER BY CASE WHEN username = $1 THEN 0 ELSE 1 END LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|row| {
            Ok(LoginUser {
                user: user_from_row(&row)?,
                password_hash: col(&row, "password_hash")?,
            })
        })
        .transpose()
    }

    async fn record_login_failure(
        &self,
        actor: &Actor,
        user_id: &str,
        max_failures: u32,
        lock_until: Timestamp,
    ) -> StoreResult<Option<Timestamp>> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT failed_logins FROM users WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let failures: i64 = col::<i64>(&row, "failed_logins")? + 1;
        let now = domain::now();
        if max_failures > 0 && failures >= i64::from(max_failures) {
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = $1 WHERE id = $2")
                .bind(lock_until)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let details = json!({
                "failures": failures,
                "locked_until": domain::rfc3339::format(lock_until),
            });
            write_audit(&mut tx, actor, now, "auth.lockout", user_id, details).await?;
            commit(tx).await?;
            Ok(Some(lock_until))
        } else {
            sqlx::query("UPDATE users SET failed_logins = $1 WHERE id = $2")
                .bind(failures)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            commit(tx).await?;
            Ok(None)
        }
    }

    async fn record_login_success(&self, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn unlock_user(&self, actor: &Actor, id: &str) -> StoreResult<Option<User>> {
        let mut tx = self.begin_write().await?;
        let Some(mut user) = self.locked_user(&mut tx, id).await? else {
            return Ok(None);
        };
        let was_locked = user.locked_until;
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        user.locked_until = None;
        let details = json!({ "was_locked_until": was_locked.map(domain::rfc3339::format) });
        write_audit(&mut tx, actor, domain::now(), "user.unlock", id, details).await?;
        commit(tx).await?;
        Ok(Some(user))
    }

    async fn set_password_hash(&self, actor: &Actor, id: &str, hash: &str) -> StoreResult<bool> {
        require_nonempty("password hash", hash)?;
        let mut tx = self.begin_write().await?;
        if self.locked_user(&mut tx, id).await?.is_none() {
            return Ok(false);
        }
        let now = domain::now();
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        write_audit(&mut tx, actor, now, "user.password", id, json!({})).await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn create_refresh_token(&self, token: NewRefreshToken) -> StoreResult<()> {
        require_key_hash(&token.token_hash)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, \
             created_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(domain::new_id())
        .bind(&token.user_id)
        .bind(&token.family_id)
        .bind(&token.token_hash)
        .bind(token.expires_at)
        .bind(domain::now())
        .bind(token.source.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| map_db_err(e, Some("a refresh token with that hash already exists")))?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at: Timestamp,
        source: Option<&str>,
    ) -> StoreResult<RefreshOutcome> {
        require_key_hash(new_hash)?;
        let mut tx = self.begin_write().await?;
        // The row lock (Postgres) or the write lock (SQLite) makes two concurrent
        // presentations of one token serialise: the second one sees it used.
        let sql = format!(
            "SELECT user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens \
             WHERE token_hash = $1{}",
            self.backend.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(presented_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
        else {
            return Ok(RefreshOutcome::Unknown);
        };
        let user_id: String = col(&row, "user_id")?;
        let family: String = col(&row, "family_id")?;
        let expires_at: i64 = col(&row, "expires_at")?;
        let used_at: Option<i64> = col(&row, "used_at")?;
        let revoked_at: Option<i64> = col(&row, "revoked_at")?;
        let now = domain::now();
        if used_at.is_some() || revoked_at.is_some() {
            let revoked = sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 \
                 WHERE family_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(&family)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            let actor = Actor::new(format!("user:{user_id}"), source.map(str::to_owned));
            let details = json!({ "family": family, "revoked": revoked });
            write_audit(
                &mut tx,
                &actor,
                now,
                "auth.refresh_reuse",
                &user_id,
                details,
            )
            .await?;
            commit(tx).await?;
            return Ok(RefreshOutcome::Reused { user_id, family });
        }
        if expires_at <= now {
            return Ok(RefreshOutcome::Expired);
        }
        let Some(user) = self.locked_user(&mut tx, &user_id).await? else {
            return Ok(RefreshOutcome::Unknown);
        };
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2")
            .bind(now)
            .bind(presented_hash)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, \
             created_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(domain::new_id())
        .bind(&user_id)
        .bind(&family)
        .bind(new_hash)
        .bind(new_expires_at)
        .bind(now)
        .bind(source)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some("a refresh token with that hash already exists")))?;
        commit(tx).await?;
        Ok(RefreshOutcome::Rotated {
            user: Box::new(user),
            family,
        })
    }

    async fn refresh_token_family(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<(String, String)>> {
        let row =
            sqlx::query("SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        row.map(|row| Ok((col(&row, "user_id")?, col(&row, "family_id")?)))
            .transpose()
    }

    async fn revoke_refresh_family(&self, actor: &Actor, family_id: &str) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let now = domain::now();
        let revoked = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 \
             WHERE family_id = $2 AND revoked_at IS NULL AND used_at IS NULL",
        )
        .bind(now)
        .bind(family_id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        let user_id = actor.name.strip_prefix("user:").unwrap_or(&actor.name);
        let details = json!({ "family": family_id, "revoked": revoked });
        write_audit(&mut tx, actor, now, "auth.logout", user_id, details).await?;
        commit(tx).await?;
        Ok(revoked)
    }

    async fn revoke_user_sessions(
        &self,
        actor: &Actor,
        user_id: &str,
        keep_family: Option<&str>,
    ) -> StoreResult<Vec<String>> {
        const LIVE: &str = "user_id = $1 AND revoked_at IS NULL AND used_at IS NULL \
                            AND family_id <> $2";
        let mut tx = self.begin_write().await?;
        let keep = keep_family.unwrap_or("");
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT family_id FROM refresh_tokens WHERE {LIVE} ORDER BY family_id"
        ))
        .bind(user_id)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let families = rows
            .iter()
            .map(|row| col::<String>(row, "family_id"))
            .collect::<StoreResult<Vec<_>>>()?;
        if families.is_empty() {
            return Ok(families);
        }
        let now = domain::now();
        sqlx::query(&format!(
            "UPDATE refresh_tokens SET revoked_at = $3 WHERE {LIVE}"
        ))
        .bind(user_id)
        .bind(keep)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let details = json!({ "revoked_families": families.len(), "kept_family": keep_family });
        write_audit(
            &mut tx,
            actor,
            now,
            "auth.sessions_revoked",
            user_id,
            details,
        )
        .await?;
        commit(tx).await?;
        Ok(families)
    }
}
