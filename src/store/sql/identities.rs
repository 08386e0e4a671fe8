//! OIDC identities ([`IdentityStore`]): the user of an (issuer, subject), found, linked by
//! verified email or provisioned, with its role and group memberships synced, in one write
//! transaction.

use super::{
    bool_col, col, commit, db_err, map_db_err, member_from_row, require_nonempty, user_from_row,
    with_limits, write_audit, BindLimits, SqlStore, MEMBER_COLS, USER_COLS, USER_CONFLICT,
    USER_ROLE,
};
use crate::authn::api_key::KeyHash;
use crate::domain::{self, Limits, MembershipSource, TeamRole, Timestamp, User};
use crate::store::{Actor, IdentityStore, OidcLogin, OidcUser, StoreError, StoreResult};
use async_trait::async_trait;
use serde_json::json;
use sqlx::AnyConnection;

impl SqlStore {
    /// One attempt of [`IdentityStore::oidc_login`], in one write transaction.
    async fn oidc_login_once(
        &self,
        actor: &Actor,
        login: &OidcLogin,
    ) -> StoreResult<Option<OidcUser>> {
        let mut tx = self.begin_write().await?;
        let now = domain::now();
        // The identity and its user are locked together (Postgres), so the user cannot be
        // deleted or re-linked while this login syncs it.
        let sql = format!(
            "SELECT i.user_id, u.deleted_at FROM identities i JOIN users u ON u.id = i.user_id \
             WHERE i.issuer = $1 AND i.subject = $2{}",
            self.backend.for_update()
        );
        let found = sqlx::query(&sql)
            .bind(&login.issuer)
            .bind(&login.subject)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let (live_id, stale) = match &found {
            Some(row) => {
                let user_id: String = col(row, "user_id")?;
                match col::<Option<i64>>(row, "deleted_at")? {
                    None => (Some(user_id), false),
                    // The identity's user was deleted: the row is repointed below.
                    Some(_) => (None, true),
                }
            }
            None => (None, false),
        };
        // An email the issuer does not vouch for is not used at all: linking by it would
        // hand its bearer the account of whoever has the address, and giving it to a new
        // user would let that user be linked to the address's real owner later.
        let email = login
            .email
            .as_deref()
            .filter(|e| login.email_verified && !e.trim().is_empty());

        let (mut user, created, linked) = if let Some(id) = live_id {
            let user = self
                .locked_user(&mut tx, &id)
                .await?
                .ok_or_else(|| StoreError::fault(format!("user {id} vanished")))?;
            sqlx::query(
                "UPDATE identities SET last_seen_at = $3 WHERE issuer = $1 AND subject = $2",
            )
            .bind(&login.issuer)
            .bind(&login.subject)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            (user, false, false)
        } else if let Some(user) = self.locked_user_by_email(&mut tx, email).await? {
            self.put_identity(&mut tx, login, &user.id, now, stale)
                .await?;
            let details = json!({ "issuer": login.issuer });
            write_audit(&mut tx, actor, now, "auth.identity_link", &user.id, details).await?;
            (user, false, true)
        } else if login.auto_provision {
            let user = self
                .provision_oidc_user(&mut tx, actor, login, email, now)
                .await?;
            self.put_identity(&mut tx, login, &user.id, now, stale)
                .await?;
            (user, true, false)
        } else {
            // Dropping the transaction rolls it back; nothing was written.
            return Ok(None);
        };

        if let Some(role) = &login.role_from_groups {
            if *role != user.role {
                sqlx::query("UPDATE users SET role = $2, updated_at = $3 WHERE id = $1")
                    .bind(&user.id)
                    .bind(role.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let details = json!({ "from": user.role, "to": role, "source": "oidc" });
                write_audit(&mut tx, actor, now, "user.role", &user.id, details).await?;
                user.role = role.clone();
                user.updated_at = now;
            }
        }

        let teams = match &login.teams_from_groups {
            Some(names) => {
                let org = user.org_id.clone();
                self.sync_group_teams(&mut tx, actor, login, &user.id, org.as_deref(), names, now)
                    .await?
            }
            None => GroupTeams::default(),
        };
        commit(tx).await?;
        Ok(Some(OidcUser {
            user,
            created,
            linked,
            missing_teams: teams.missing,
            created_teams: teams.created,
        }))
    }

    /// The live user whose email is exactly `email` and verified (not one the user typed in
    /// themselves), locked like [`Self::locked_user`].
    async fn locked_user_by_email(
        &self,
        conn: &mut AnyConnection,
        email: Option<&str>,
    ) -> StoreResult<Option<User>> {
        let Some(email) = email else { return Ok(None) };
        let sql = format!(
            "SELECT {USER_COLS}, {USER_ROLE}, email_verified FROM users \
             WHERE email = $1 AND deleted_at IS NULL{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(email)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        match row {
            Some(row) if bool_col(&row, "email_verified")? => user_from_row(&row).map(Some),
            _ => Ok(None),
        }
    }

    /// Points the identity at `user_id`: a new row, or (`stale`) the row that pointed at a
    /// deleted user. A concurrent first login of the same identity makes the INSERT fail
    /// with `Conflict`, which [`IdentityStore::oidc_login`] retries.
    async fn put_identity(
        &self,
        conn: &mut AnyConnection,
        login: &OidcLogin,
        user_id: &str,
        now: Timestamp,
        stale: bool,
    ) -> StoreResult<()> {
        let sql = if stale {
            "UPDATE identities SET user_id = $3, created_at = $4, last_seen_at = $4 \
             WHERE issuer = $1 AND subject = $2"
        } else {
            "INSERT INTO identities (issuer, subject, user_id, created_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $4)"
        };
        sqlx::query(sql)
            .bind(&login.issuer)
            .bind(&login.subject)
            .bind(user_id)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(|e| map_db_err(e, Some("the identity was linked concurrently")))?;
        Ok(())
    }

    /// Creates the user of a first OIDC login (no password) and audits `user.create`.
    async fn provision_oidc_user(
        &self,
        conn: &mut AnyConnection,
        actor: &Actor,
        login: &OidcLogin,
        email: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<User> {
        // A stable, opaque name for the identity, for when the token has no usable email.
        let handle = format!(
            "oidc-{}",
            &KeyHash::of(&format!("{}\n{}", login.issuer, login.subject)).to_hex()[..12]
        );
        let username = match email {
            Some(email) if !self.username_taken(conn, email).await? => email.to_string(),
            _ => handle.clone(),
        };
        // A live user whose address is not verified may hold the email (emails are unique):
        // the new user goes without it rather than not at all.
        let email = match email {
            Some(email) if !self.email_taken(conn, email).await? => Some(email),
            _ => None,
        };
        let user = User {
            id: domain::new_id(),
            username,
            email: email.map_or_else(|| format!("{handle}@users.invalid"), str::to_string),
            full_name: login.name.clone(),
            role: login
                .role_from_groups
                .clone()
                .unwrap_or_else(|| login.default_role.clone()),
            org_id: login.org_id.clone(),
            blocked: false,
            limits: Limits::default(),
            metadata: json!({}),
            locked_until: None,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO users (id, username, email, full_name, role, blocked, password_hash, \
             rpm, tpm, max_budget, budget_duration, metadata, created_at, updated_at, \
             email_verified, org_id) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, CAST($9 AS DOUBLE PRECISION), $10, $11, $12, $13, $14, $15)",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(user.full_name.as_deref())
        .bind(user.role.as_str())
        .bind(user.blocked)
        .bind_limits(&user.limits)
        .bind(user.metadata.to_string())
        .bind(now)
        .bind(now)
        // The `users.invalid` stand-in is nobody's address: no token may claim it.
        .bind(email.is_some())
        .bind(user.org_id.as_deref())
        .execute(&mut *conn)
        .await
        .map_err(|e| map_db_err(e, Some(USER_CONFLICT)))?;
        let details = with_limits(
            json!({
                "username": user.username,
                "email": user.email,
                "full_name": user.full_name,
                "role": user.role,
                "password_set": false,
                "source": "oidc",
                "issuer": login.issuer,
                "org_id": user.org_id,
            }),
            &user.limits,
        );
        write_audit(conn, actor, now, "user.create", &user.id, details).await?;
        Ok(user)
    }

    async fn email_taken(&self, conn: &mut AnyConnection, email: &str) -> StoreResult<bool> {
        let found = sqlx::query("SELECT id FROM users WHERE email = $1 AND deleted_at IS NULL")
            .bind(email)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }

    async fn username_taken(&self, conn: &mut AnyConnection, username: &str) -> StoreResult<bool> {
        let found = sqlx::query("SELECT id FROM users WHERE username = $1 AND deleted_at IS NULL")
            .bind(username)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }

    /// The id of the live team named `name` in the org `org` (none: outside every org),
    /// locked FOR SHARE (Postgres) so it cannot be deleted under a membership added in this
    /// transaction.
    async fn live_team_id(
        &self,
        conn: &mut AnyConnection,
        name: &str,
        org: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let sql = format!(
            "SELECT id FROM teams WHERE name = $1 AND deleted_at IS NULL \
             AND COALESCE(org_id, '') = $2{}",
            self.backend.for_share()
        );
        sqlx::query_scalar(&sql)
            .bind(name)
            .bind(org.unwrap_or(""))
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)
    }

    /// Creates the team `name` for `auto_create_teams` unless a live team has the name by
    /// now; returns its id and whether this call created it (audited `team.create`).
    ///
    /// Race: live team names are unique (`teams_name_live`), and the INSERT does nothing on
    /// that conflict. On Postgres a second login inserting the same name waits for the
    /// first one's transaction: when it commits, the INSERT does nothing and the SELECT
    /// after it (a new snapshot under READ COMMITTED) finds the first one's team; when it
    /// rolls back, the second one's row goes in. On SQLite `BEGIN IMMEDIATE` serialises
    /// the logins, so the second one finds the team before inserting.
    async fn create_group_team(
        &self,
        conn: &mut AnyConnection,
        actor: &Actor,
        login: &OidcLogin,
        name: &str,
        org: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Option<(String, bool)>> {
        let id = domain::new_id();
        let inserted = sqlx::query(
            "INSERT INTO teams (id, name, models, blocked, metadata, created_at, updated_at, org_id) \
             VALUES ($1, $2, '[]', $3, '{}', $4, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(false)
        .bind(now)
        .bind(org)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?
        .rows_affected();
        if inserted == 0 {
            // A concurrent login created it (None: and it was deleted since).
            return Ok(self
                .live_team_id(conn, name, org)
                .await?
                .map(|id| (id, false)));
        }
        let details = with_limits(
            json!({
                "name": name,
                "models": [],
                "source": "oidc",
                "issuer": login.issuer,
                "org_id": org,
            }),
            &Limits::default(),
        );
        write_audit(conn, actor, now, "team.create", &id, details).await?;
        Ok(Some((id, true)))
    }

    /// Makes the user's group memberships match the live teams named `names` in the user's
    /// org (`org`; none: the teams outside every org), creating the missing ones there first
    /// when `login.auto_create_teams` is on. A name taken by a team of another org matches
    /// nothing and is not created. Manual memberships are never touched, and a named team
    /// the user is already a manual member of stays manual.
    #[allow(clippy::too_many_arguments)]
    async fn sync_group_teams(
        &self,
        conn: &mut AnyConnection,
        actor: &Actor,
        login: &OidcLogin,
        user_id: &str,
        org: Option<&str>,
        names: &[String],
        now: Timestamp,
    ) -> StoreResult<GroupTeams> {
        let mut desired: Vec<String> = Vec::new();
        let mut teams = GroupTeams::default();
        // In one order: two logins creating the same teams wait on each other's inserts
        // (Postgres) in the same order, never each on the other's.
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        for name in &names {
            let mut id = self.live_team_id(conn, name, org).await?;
            if id.is_none() && login.auto_create_teams {
                require_nonempty("team name", name)?;
                if let Some((new_id, created)) = self
                    .create_group_team(conn, actor, login, name, org, now)
                    .await?
                {
                    if created {
                        teams.created.push((new_id.clone(), name.clone()));
                    }
                    id = Some(new_id);
                }
            }
            match id {
                Some(id) if !desired.contains(&id) => desired.push(id),
                Some(_) => {}
                None => teams.missing.push(name.clone()),
            }
        }
        let sql = format!(
            "SELECT {MEMBER_COLS} FROM team_members WHERE user_id = $1 ORDER BY team_id{}",
            self.backend.for_update()
        );
        let current = sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?
            .iter()
            .map(member_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        for m in &current {
            if m.source == MembershipSource::Group && !desired.contains(&m.team_id) {
                sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
                    .bind(&m.team_id)
                    .bind(user_id)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                let target = format!("{}/{user_id}", m.team_id);
                let details = json!({ "source": MembershipSource::Group });
                write_audit(conn, actor, now, "team.member.remove", &target, details).await?;
            }
        }
        for team_id in &desired {
            if current.iter().any(|m| &m.team_id == team_id) {
                continue;
            }
            sqlx::query(
                "INSERT INTO team_members (team_id, user_id, role, source, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(team_id)
            .bind(user_id)
            .bind(TeamRole::Member.as_str())
            .bind(MembershipSource::Group.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
            let target = format!("{team_id}/{user_id}");
            let details = json!({ "role": TeamRole::Member, "source": MembershipSource::Group });
            write_audit(conn, actor, now, "team.member.add", &target, details).await?;
        }
        Ok(teams)
    }
}

/// What syncing group memberships found: names of no live team, and teams it created.
#[derive(Default)]
struct GroupTeams {
    missing: Vec<String>,
    created: Vec<(String, String)>,
}

#[async_trait]
impl IdentityStore for SqlStore {
    async fn oidc_login(&self, actor: &Actor, login: OidcLogin) -> StoreResult<Option<OidcUser>> {
        require_nonempty("issuer", &login.issuer)?;
        require_nonempty("subject", &login.subject)?;
        // On Postgres two first logins of one identity can both find no row; the second to
        // write then fails on a unique index (identity key, username or email) once the
        // first commits, and a second attempt finds the identity the first one stored. On
        // SQLite `BEGIN IMMEDIATE` already serialises them, so this never retries.
        match self.oidc_login_once(actor, &login).await {
            Err(StoreError::Conflict(_)) => self.oidc_login_once(actor, &login).await,
            other => other,
        }
    }
}
