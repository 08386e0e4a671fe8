//! Passkeys of the web UI ([`PasskeyStore`]): users' WebAuthn handles, their credentials,
//! and the challenges of ceremonies in progress.
//!
//! A challenge is taken with `DELETE … RETURNING`, one statement on both backends, so two
//! replicas finishing the same ceremony cannot both get it. A sign-in moves the signature
//! counter with a compare-and-set on the value it was checked against.

use super::{
    bool_col, col, commit, db_err, enum_col, list_col, list_text, map_db_err, require_key_hash,
    require_nonempty, write_audit, SqlStore,
};
use crate::domain::{self, Timestamp};
use crate::store::{
    Actor, NewPasskey, Passkey, PasskeyChallenge, PasskeyCredential, PasskeyStore, StoreError,
    StoreResult, MAX_PASSKEYS_PER_USER,
};
use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;

const PASSKEY_COLS: &str = "p.id, p.user_id, p.name, p.credential_id, p.algorithm, \
     p.sign_count, p.transports, p.backup_eligible, p.backed_up, p.aaguid, p.created_at, \
     p.last_used_at";

const CHALLENGE_COLS: &str = "challenge_hash, ceremony, user_id, rp_id, uv_required, \
     binding_hash, created_at, expires_at";

const PASSKEY_CONFLICT: &str = "this passkey is already registered";

fn passkey_from_row(row: &AnyRow) -> StoreResult<Passkey> {
    let count: i64 = col(row, "sign_count")?;
    Ok(Passkey {
        id: col(row, "id")?,
        user_id: col(row, "user_id")?,
        name: col(row, "name")?,
        credential_id: col(row, "credential_id")?,
        algorithm: col(row, "algorithm")?,
        sign_count: u32::try_from(count)
            .map_err(|_| StoreError::fault(format!("column sign_count: {count} is no u32")))?,
        transports: list_col(row, "transports")?,
        backup_eligible: bool_col(row, "backup_eligible")?,
        backed_up: bool_col(row, "backed_up")?,
        aaguid: col(row, "aaguid")?,
        created_at: col(row, "created_at")?,
        last_used_at: col(row, "last_used_at")?,
    })
}

fn challenge_from_row(row: &AnyRow) -> StoreResult<PasskeyChallenge> {
    Ok(PasskeyChallenge {
        challenge_hash: col(row, "challenge_hash")?,
        ceremony: enum_col(row, "ceremony")?,
        user_id: col(row, "user_id")?,
        rp_id: col(row, "rp_id")?,
        uv_required: bool_col(row, "uv_required")?,
        binding_hash: col(row, "binding_hash")?,
        created_at: col(row, "created_at")?,
        expires_at: col(row, "expires_at")?,
    })
}

#[async_trait]
impl PasskeyStore for SqlStore {
    async fn passkey_user_handle(&self, user_id: &str, fresh: &str) -> StoreResult<Option<String>> {
        require_nonempty("user handle", fresh)?;
        let mut tx = self.begin_write().await?;
        let live = format!(
            "SELECT id FROM users WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_share()
        );
        let found = sqlx::query(&live)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if found.is_none() {
            return Ok(None);
        }
        // Two first registrations at once: one insert wins, both read its handle.
        sqlx::query(
            "INSERT INTO passkey_handles (user_id, user_handle, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(fresh)
        .bind(domain::now())
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some("this user handle is taken")))?;
        let row = sqlx::query("SELECT user_handle FROM passkey_handles WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let handle: String = col(&row, "user_handle")?;
        commit(tx).await?;
        Ok(Some(handle))
    }

    async fn put_passkey_challenge(&self, challenge: PasskeyChallenge) -> StoreResult<()> {
        require_key_hash(&challenge.challenge_hash).map_err(|_| {
            StoreError::Invalid(
                "challenge_hash must be a SHA-256 (64 lowercase hex characters)".to_string(),
            )
        })?;
        let mut tx = self.begin_write().await?;
        if let Some(user_id) = &challenge.user_id {
            self.require_live(&mut tx, "users", "user", user_id).await?;
        }
        // Ceremonies nobody finished go here, so the table holds at most the challenges
        // issued within one lifetime.
        sqlx::query("DELETE FROM passkey_challenges WHERE expires_at <= $1")
            .bind(challenge.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(&format!(
            "INSERT INTO passkey_challenges ({CHALLENGE_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&challenge.challenge_hash)
        .bind(challenge.ceremony.as_str())
        .bind(challenge.user_id.as_deref())
        .bind(&challenge.rp_id)
        .bind(challenge.uv_required)
        .bind(challenge.binding_hash.as_deref())
        .bind(challenge.created_at)
        .bind(challenge.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some("this challenge was issued already")))?;
        commit(tx).await
    }

    async fn take_passkey_challenge(
        &self,
        challenge_hash: &str,
    ) -> StoreResult<Option<PasskeyChallenge>> {
        let row = sqlx::query(&format!(
            "DELETE FROM passkey_challenges WHERE challenge_hash = $1 RETURNING {CHALLENGE_COLS}"
        ))
        .bind(challenge_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(challenge_from_row).transpose()
    }

    async fn create_passkey(&self, actor: &Actor, passkey: NewPasskey) -> StoreResult<Passkey> {
        require_nonempty("passkey name", &passkey.name)?;
        require_nonempty("credential id", &passkey.credential_id)?;
        require_nonempty("public key", &passkey.public_key)?;
        let mut tx = self.begin_write().await?;
        // Locks the user row (Postgres): two registrations of one user count one after
        // the other, and the user cannot be deleted half-way.
        if self.locked_user(&mut tx, &passkey.user_id).await?.is_none() {
            return Err(StoreError::Invalid(format!(
                "user {} does not exist",
                passkey.user_id
            )));
        }
        let row = sqlx::query("SELECT COUNT(*) AS n FROM passkeys WHERE user_id = $1")
            .bind(&passkey.user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let count: i64 = col(&row, "n")?;
        if count >= MAX_PASSKEYS_PER_USER {
            return Err(StoreError::Invalid(format!(
                "a user may register at most {MAX_PASSKEYS_PER_USER} passkeys; delete one first"
            )));
        }
        let now = domain::now();
        let id = domain::new_id();
        sqlx::query(
            "INSERT INTO passkeys (id, user_id, credential_id, public_key, algorithm, \
             sign_count, name, transports, backup_eligible, backed_up, aaguid, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&passkey.user_id)
        .bind(&passkey.credential_id)
        .bind(&passkey.public_key)
        .bind(passkey.algorithm)
        .bind(i64::from(passkey.sign_count))
        .bind(&passkey.name)
        .bind(list_text(&passkey.transports))
        .bind(passkey.backup_eligible)
        .bind(passkey.backed_up)
        .bind(&passkey.aaguid)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(PASSKEY_CONFLICT)))?;
        let details = json!({
            "passkey": id,
            "name": passkey.name,
            "algorithm": passkey.algorithm,
            "aaguid": passkey.aaguid,
            "backup_eligible": passkey.backup_eligible,
        });
        write_audit(
            &mut tx,
            actor,
            now,
            "passkey.create",
            &passkey.user_id,
            details,
        )
        .await?;
        commit(tx).await?;
        Ok(Passkey {
            id,
            user_id: passkey.user_id,
            name: passkey.name,
            credential_id: passkey.credential_id,
            algorithm: passkey.algorithm,
            sign_count: passkey.sign_count,
            transports: passkey.transports,
            backup_eligible: passkey.backup_eligible,
            backed_up: passkey.backed_up,
            aaguid: passkey.aaguid,
            created_at: now,
            last_used_at: None,
        })
    }

    async fn list_passkeys(&self, user_id: &str) -> StoreResult<Vec<Passkey>> {
        let rows = sqlx::query(&format!(
            "SELECT {PASSKEY_COLS} FROM passkeys p WHERE p.user_id = $1 \
             ORDER BY p.created_at, p.id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(passkey_from_row).collect()
    }

    async fn passkey_credential(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<PasskeyCredential>> {
        let row = sqlx::query(&format!(
            "SELECT {PASSKEY_COLS}, p.public_key, h.user_handle FROM passkeys p \
             JOIN users u ON u.id = p.user_id AND u.deleted_at IS NULL \
             JOIN passkey_handles h ON h.user_id = p.user_id \
             WHERE p.credential_id = $1"
        ))
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|row| {
            Ok(PasskeyCredential {
                passkey: passkey_from_row(&row)?,
                public_key: col(&row, "public_key")?,
                user_handle: col(&row, "user_handle")?,
            })
        })
        .transpose()
    }

    async fn rename_passkey(
        &self,
        actor: &Actor,
        user_id: &str,
        id: &str,
        name: &str,
    ) -> StoreResult<Option<Passkey>> {
        require_nonempty("passkey name", name)?;
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "SELECT {PASSKEY_COLS} FROM passkeys p WHERE p.id = $1 AND p.user_id = $2{}",
            self.backend.for_update()
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let mut passkey = passkey_from_row(&row)?;
        sqlx::query("UPDATE passkeys SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let details = json!({ "passkey": id, "name": name, "previous_name": passkey.name });
        write_audit(
            &mut tx,
            actor,
            domain::now(),
            "passkey.rename",
            user_id,
            details,
        )
        .await?;
        commit(tx).await?;
        passkey.name = name.to_string();
        Ok(Some(passkey))
    }

    async fn delete_passkey(&self, actor: &Actor, user_id: &str, id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("DELETE FROM passkeys WHERE id = $1 AND user_id = $2 RETURNING name")
            .bind(id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let name: String = col(&row, "name")?;
        let details = json!({ "passkey": id, "name": name });
        write_audit(
            &mut tx,
            actor,
            domain::now(),
            "passkey.delete",
            user_id,
            details,
        )
        .await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn record_passkey_use(
        &self,
        id: &str,
        seen_count: u32,
        sign_count: u32,
        backed_up: bool,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let updated = sqlx::query(
            "UPDATE passkeys SET sign_count = $1, backed_up = $2, last_used_at = $3 \
             WHERE id = $4 AND sign_count = $5",
        )
        .bind(i64::from(sign_count))
        .bind(backed_up)
        .bind(at)
        .bind(id)
        .bind(i64::from(seen_count))
        .execute(&self.pool)
        .await
        .map_err(db_err)?
        .rows_affected();
        Ok(updated == 1)
    }
}
