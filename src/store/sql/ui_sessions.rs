//! The web UI's browser sessions ([`UiSessionStore`]). Only the SHA-256 of a session's
//! cookie token is stored; a request finds its session, and the session's user as stored
//! now, in one query.

use super::{
    col, commit, db_err, map_db_err, require_key_hash, user_from_row, write_audit, SqlStore,
    USER_COLS,
};
use crate::domain::{self, Timestamp};
use crate::store::{
    Actor, NewUiSession, StoreError, StoreResult, UiHolder, UiSession, UiSessionStore,
};
use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;

/// The audit target of a session's events: its user's id, or `master`.
fn target(holder: &UiHolder) -> &str {
    match holder {
        UiHolder::User(id) => id,
        UiHolder::Master { .. } => "master",
    }
}

fn holder_from_row(row: &AnyRow) -> StoreResult<UiHolder> {
    let user: Option<String> = col(row, "s_user_id")?;
    let tag: Option<String> = col(row, "s_master_tag")?;
    match (user, tag) {
        (Some(id), _) => Ok(UiHolder::User(id)),
        (None, Some(tag)) => Ok(UiHolder::Master { tag }),
        (None, None) => Err(StoreError::fault(
            "a web UI session has neither a user nor a master tag",
        )),
    }
}

#[async_trait]
impl UiSessionStore for SqlStore {
    async fn create_ui_session(&self, actor: &Actor, new: NewUiSession) -> StoreResult<UiSession> {
        require_key_hash(&new.token_hash)?;
        let now = domain::now();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let (user_id, tag) = match &new.holder {
            UiHolder::User(id) => (Some(id.as_str()), None),
            UiHolder::Master { tag } => (None, Some(tag.as_str())),
        };
        let user = match user_id {
            Some(id) => Some(
                self.locked_user(&mut tx, id)
                    .await?
                    .ok_or_else(|| StoreError::Invalid(format!("user {id} does not exist")))?,
            ),
            None => None,
        };
        let id = domain::new_id();
        sqlx::query(
            "INSERT INTO ui_sessions (id, token_hash, user_id, master_tag, created_at, \
             expires_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&new.token_hash)
        .bind(user_id)
        .bind(tag)
        .bind(now)
        .bind(new.expires_at)
        .bind(new.source.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some("a web UI session with that token already exists")))?;
        let details = json!({ "session": id, "method": new.method });
        write_audit(
            &mut tx,
            actor,
            now,
            "ui.login",
            target(&new.holder),
            details,
        )
        .await?;
        commit(tx).await?;
        Ok(UiSession {
            id,
            holder: new.holder,
            user,
            created_at: now,
            expires_at: new.expires_at,
        })
    }

    async fn ui_session(&self, token_hash: &str, now: Timestamp) -> StoreResult<Option<UiSession>> {
        let user_cols = USER_COLS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT s.id AS s_id, s.user_id AS s_user_id, s.master_tag AS s_master_tag, \
             s.created_at AS s_created_at, s.expires_at AS s_expires_at, {user_cols}, \
             (SELECT r.permissions FROM roles r WHERE r.name = u.role) AS role_permissions \
             FROM ui_sessions s LEFT JOIN users u ON u.id = s.user_id AND u.deleted_at IS NULL \
             WHERE s.token_hash = $1 AND s.expires_at > $2"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let user = match col::<Option<String>>(&row, "id")? {
            Some(_) => Some(user_from_row(&row)?),
            None => None,
        };
        Ok(Some(UiSession {
            id: col(&row, "s_id")?,
            holder: holder_from_row(&row)?,
            user,
            created_at: col(&row, "s_created_at")?,
            expires_at: col(&row, "s_expires_at")?,
        }))
    }

    async fn delete_ui_session(&self, actor: Option<&Actor>, id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM ui_sessions WHERE id = $1 \
             RETURNING user_id AS s_user_id, master_tag AS s_master_tag",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(false);
        };
        if let Some(actor) = actor {
            let holder = holder_from_row(&row)?;
            let details = json!({ "session": id });
            write_audit(
                &mut tx,
                actor,
                domain::now(),
                "ui.logout",
                target(&holder),
                details,
            )
            .await?;
        }
        commit(tx).await?;
        Ok(true)
    }

    async fn delete_user_ui_sessions(
        &self,
        actor: &Actor,
        user_id: &str,
        keep: Option<&str>,
    ) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let ended = sqlx::query("DELETE FROM ui_sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id)
            .bind(keep.unwrap_or(""))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if ended > 0 {
            let details = json!({ "ended": ended, "kept_session": keep });
            write_audit(
                &mut tx,
                actor,
                domain::now(),
                "ui.sessions_revoked",
                user_id,
                details,
            )
            .await?;
        }
        commit(tx).await?;
        Ok(ended)
    }
}
