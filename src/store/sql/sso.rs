//! Sign-ins with SSO between their start and the issuer's answer ([`SsoStore`]): one row
//! each, taken (deleted and read in one statement) by the callback, so a state is used once
//! even when two replicas race for it.

use super::{col, db_err, map_db_err, SqlStore};
use crate::domain::Timestamp;
use crate::secret::Secret;
use crate::store::{PendingSso, SsoStore, SsoTake, StoreError, StoreResult};
use async_trait::async_trait;

#[async_trait]
impl SsoStore for SqlStore {
    async fn put_sso_login(&self, login: PendingSso) -> StoreResult<()> {
        require_sha256("state_hash", &login.state_hash)?;
        require_sha256("browser_hash", &login.browser_hash)?;
        sqlx::query("DELETE FROM sso_logins WHERE expires_at <= $1")
            .bind(login.created_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO sso_logins (state_hash, browser_hash, issuer, code_verifier, nonce, \
             redirect_uri, return_to, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&login.state_hash)
        .bind(&login.browser_hash)
        .bind(&login.issuer)
        .bind(login.code_verifier.expose())
        .bind(&login.nonce)
        .bind(&login.redirect_uri)
        .bind(&login.return_to)
        .bind(login.created_at)
        .bind(login.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_db_err(e, Some("a sign-in with this state is already pending")))?;
        Ok(())
    }

    async fn take_sso_login(&self, state_hash: &str, now: Timestamp) -> StoreResult<SsoTake> {
        // One statement: of two callers racing for a state, one deletes the row and gets it,
        // the other finds nothing.
        let row = sqlx::query(
            "DELETE FROM sso_logins WHERE state_hash = $1 RETURNING state_hash, browser_hash, \
             issuer, code_verifier, nonce, redirect_uri, return_to, created_at, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(SsoTake::Unknown);
        };
        let login = PendingSso {
            state_hash: col(&row, "state_hash")?,
            browser_hash: col(&row, "browser_hash")?,
            issuer: col(&row, "issuer")?,
            code_verifier: Secret::new(col::<String>(&row, "code_verifier")?),
            nonce: col(&row, "nonce")?,
            redirect_uri: col(&row, "redirect_uri")?,
            return_to: col(&row, "return_to")?,
            created_at: col(&row, "created_at")?,
            expires_at: col(&row, "expires_at")?,
        };
        if login.expires_at <= now {
            return Ok(SsoTake::Expired);
        }
        Ok(SsoTake::Pending(login))
    }
}

fn require_sha256(what: &str, hash: &str) -> StoreResult<()> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{what} must be a lowercase hex SHA-256 (64 characters)"
        )))
    }
}
