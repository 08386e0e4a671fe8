//! The SQL implementation of [`Store`], on SQLite and on Postgres through sqlx's `Any` driver.
//!
//! One set of SQL text serves both backends: placeholders are `$1, $2, …` (SQLite accepts
//! them), only portable functions are used, JSON is kept as text, and the few things the
//! backends spell differently (how a write transaction starts, row locks) are chosen by
//! [`Backend`] in one place each. The schemas live in `migrations/sqlite` and
//! `migrations/postgres` and must keep the same table and column names.
//!
//! Things the `Any` driver imposes, found by testing against both backends (they matter to
//! anyone writing SQL against [`SqlStore::pool`] too):
//! - A value is mapped by its own type, not the column's declared type: a SQLite boolean is
//!   an INTEGER and arrives as a 64-bit integer (so does `1 = 1`), a Postgres BOOLEAN
//!   arrives as a bool, and `Any` refuses to decode one as the other. Booleans are therefore
//!   read by [`bool_col`], which accepts both. Writing a Rust `bool` works on both.
//! - json/jsonb, numeric, name and timestamp types cannot be decoded at all, and one such
//!   column fails the whole row: hence JSON as TEXT, money as DOUBLE PRECISION/REAL, times
//!   as BIGINT Unix seconds, and `CAST(SUM(int_column) AS BIGINT)` (Postgres sums BIGINT
//!   into NUMERIC). `COUNT(*)` is BIGINT on both; a REAL sum needs a `0.0` default, not
//!   `0`, or SQLite hands back an integer.
//! - A NULL read into a non-`Option` type is an error on both; read nullable columns and
//!   aggregates over possibly empty sets as `Option`.
//!
//! Users and teams are soft-deleted (`deleted_at`): their revoked keys and their usage
//! history keep a valid owner, and a partial unique index lets a name be reused afterwards.
//!
//! Usage records are written in batches ([`UsageStore::record_usage`]): each record is
//! inserted with `ON CONFLICT (request_id) DO NOTHING`, and only records actually inserted
//! accrue spend, summed per (entity, period) and upserted with `ON CONFLICT … DO UPDATE` in
//! one order (sorted), so concurrent batches cannot deadlock on Postgres. Usage is not
//! audited: it is not an admin write.
//!
//! Budget alerts live in an outbox (`alerts`, unique per entity, period start and threshold):
//! [`AlertStore::raise_alerts`] inserts with `ON CONFLICT … DO NOTHING`, so an alert fires
//! once however often it is raised; [`AlertStore::due_alerts`] claims due rows with a
//! compare-and-set update on `next_attempt_at` (portable, no row locks), so one caller
//! delivers each.
//!
//! Every write runs in one transaction with its audit row. On SQLite a write transaction
//! starts with `BEGIN IMMEDIATE`, so it holds the write lock from its first read and never
//! fails half-way on a lock upgrade; on Postgres the rows read before a write are locked with
//! `FOR UPDATE` / `FOR SHARE`, so concurrent patches and deletes serialise per row.

use super::{
    Actor, Alert, AlertCrossing, AlertFilter, AlertOutcome, AlertState, AlertStore, AuditFilter,
    AuditStore, GroupBy, IdentityStore, KeyFilter, KeyPatch, KeyStore, LimitsPatch, LoginUser,
    NewKey, NewRefreshToken, NewTeam, NewUser, OidcLogin, OidcUser, RefreshOutcome, SessionStore,
    SpendKind, Store, StoreError, StoreResult, TeamPatch, TeamStore, UsageQuery, UsageReport,
    UsageRow, UsageStore, UserPatch, UserStore, ALERT_CLAIM_SECS,
};
use crate::authn::api_key::KeyHash;
use crate::domain::{
    self, ApiKey, AuditEvent, BudgetDuration, KeyLookup, KeyOwnerTeam, KeyOwnerUser, Limits,
    Membership, MembershipSource, Role, Team, TeamRole, Timestamp, User,
};
use crate::usage::{period, UsageRecord, UsageSource};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite connection waits for another connection's write lock before giving up
/// with `SQLITE_BUSY` (reported as [`StoreError::Unavailable`]).
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

/// Default and maximum number of audit events one `list_audit` call returns.
const AUDIT_DEFAULT_LIMIT: i64 = 100;
const AUDIT_MAX_LIMIT: i64 = 1000;

/// Which database a [`SqlStore`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names, or `Invalid` naming the unsupported scheme.
    pub fn from_url(url: &str) -> StoreResult<Backend> {
        let scheme = match url.split_once(':') {
            Some((scheme, _)) if !scheme.is_empty() => scheme.to_ascii_lowercase(),
            _ => {
                return Err(StoreError::Invalid(format!(
                    "database URL `{}` has no scheme (expected sqlite:// or postgres://)",
                    redact_url(url)
                )))
            }
        };
        match scheme.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(StoreError::Invalid(format!(
                "unsupported database URL scheme `{other}` in `{}` (expected sqlite:// or postgres://)",
                redact_url(url)
            ))),
        }
    }

    /// Row-lock clause for rows read before they are updated. SQLite has no row locks; its
    /// `BEGIN IMMEDIATE` already serialises writers.
    fn for_update(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Row-lock clause for rows that must not be deleted (or soft-deleted) before the
    /// transaction commits, e.g. the owner of a key being created.
    fn for_share(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        }
    }
}

/// Pool settings for [`SqlStore::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing with `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The [`Store`] on SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

impl SqlStore {
    /// Opens a pool on `sqlite://path` / `sqlite:path` (the file is created when missing) or
    /// `postgres://…` / `postgresql://…`, and checks that one connection can be made.
    /// Does not migrate: call [`Store::migrate`].
    ///
    /// Postgres' `sslmode` and `sslrootcert` are read as libpq reads them
    /// ([`postgres_url`](crate::backend_tls::postgres_url)). TLS that fails (a certificate
    /// that does not verify, a server without TLS) is `Invalid`: a configuration error, not
    /// an outage.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> StoreResult<SqlStore> {
        let backend = Backend::from_url(url)?;
        sqlx::any::install_default_drivers();
        // Messages show the URL as configured, its password hidden.
        let shown = redact_url(url);
        let url = match backend {
            Backend::Sqlite => sqlite_url_with_create(url),
            Backend::Postgres => crate::backend_tls::postgres_url(url)
                .map_err(|e| StoreError::Invalid(format!("`{shown}`: {e}")))?,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        configure_sqlite(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                let tls = match &e {
                    // Also "server does not support TLS" for an sslmode that requires it.
                    sqlx::Error::Tls(inner) => Some(
                        crate::backend_tls::postgres_failure(&url, inner.as_ref())
                            .unwrap_or_else(|| inner.to_string()),
                    ),
                    other => crate::backend_tls::postgres_failure(&url, other),
                };
                if let Some(why) = tls {
                    return StoreError::Invalid(format!(
                        "cannot connect to `{shown}` over TLS: {why}"
                    ));
                }
                match map_db_err(e, None) {
                    StoreError::Other(msg) | StoreError::Unavailable(msg) => {
                        StoreError::Unavailable(format!("cannot connect to `{shown}`: {msg}"))
                    }
                    other => other,
                }
            })?;
        Ok(SqlStore { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for modules that keep their own tables in the same database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction (see the module docs for why SQLite uses `BEGIN IMMEDIATE`).
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Any>> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        };
        tx.map_err(db_err)
    }

    async fn locked_user(&self, conn: &mut AnyConnection, id: &str) -> StoreResult<Option<User>> {
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

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

    /// Fails with `Invalid` unless the live user or team `id` exists, and keeps it from being
    /// deleted until the transaction ends (so a key or membership cannot outlive its owner).
    async fn require_live(
        &self,
        conn: &mut AnyConnection,
        table: &'static str,
        what: &'static str,
        id: &str,
    ) -> StoreResult<()> {
        let sql = format!(
            "SELECT id FROM {table} WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_share()
        );
        let found = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::Invalid(format!("{what} {id} does not exist"))),
        }
    }
}

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
                .ok_or_else(|| StoreError::Other(format!("user {id} vanished")))?;
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

        if let Some(role) = login.role_from_groups {
            if role != user.role {
                sqlx::query("UPDATE users SET role = $2, updated_at = $3 WHERE id = $1")
                    .bind(&user.id)
                    .bind(role.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                let details = json!({ "from": user.role, "to": role, "source": "oidc" });
                write_audit(&mut tx, actor, now, "user.role", &user.id, details).await?;
                user.role = role;
                user.updated_at = now;
            }
        }

        let missing_teams = match &login.teams_from_groups {
            Some(names) => {
                self.sync_group_teams(&mut tx, actor, &user.id, names, now)
                    .await?
            }
            None => Vec::new(),
        };
        commit(tx).await?;
        Ok(Some(OidcUser {
            user,
            created,
            linked,
            missing_teams,
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
            "SELECT {USER_COLS}, email_verified FROM users \
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
            role: login.role_from_groups.unwrap_or(login.default_role),
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
             email_verified) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, CAST($9 AS DOUBLE PRECISION), $10, $11, $12, $13, $14)",
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

    /// Makes the user's group memberships match the live teams named `names`; returns the
    /// names that match no live team. Manual memberships are never touched, and a named team
    /// the user is already a manual member of stays manual.
    async fn sync_group_teams(
        &self,
        conn: &mut AnyConnection,
        actor: &Actor,
        user_id: &str,
        names: &[String],
        now: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let mut desired: Vec<String> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        // FOR SHARE (Postgres): a team cannot be deleted under a membership added here.
        let sql = format!(
            "SELECT id FROM teams WHERE name = $1 AND deleted_at IS NULL{}",
            self.backend.for_share()
        );
        for name in names {
            let id: Option<String> = sqlx::query_scalar(&sql)
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
            match id {
                Some(id) if !desired.contains(&id) => desired.push(id),
                Some(_) => {}
                None if !missing.contains(name) => missing.push(name.clone()),
                None => {}
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
        Ok(missing)
    }
}

/// Adds `mode=rwc` (create the file when missing) unless the URL already says a mode.
fn sqlite_url_with_create(url: &str) -> String {
    match url.split_once('?') {
        Some((_, query)) if query.split('&').any(|p| p.starts_with("mode=")) => url.to_string(),
        Some(_) => format!("{url}&mode=rwc"),
        None => format!("{url}?mode=rwc"),
    }
}

async fn configure_sqlite(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    // busy_timeout first: switching to WAL needs a lock another new connection may hold.
    conn.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str())
        .await?;
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    // With WAL, NORMAL loses no committed transaction on a crash of the process, only
    // possibly the last ones on a power loss; FULL would fsync on every commit.
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    Ok(())
}

pub use crate::config::redact_url;

/// The one place where database errors become [`StoreError`]s. `conflict` is the message for
/// a uniqueness violation, phrased for the caller ("a team named X already exists").
/// Database messages are passed on, but never the values involved (Postgres keeps those in
/// the error's detail, which is not used), so no secret or hash reaches a message.
fn map_db_err(err: sqlx::Error, conflict: Option<&str>) -> StoreError {
    use sqlx::error::ErrorKind;
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        // A connection cut mid-conversation shows up as a protocol error (a short or
        // garbled message) as often as an I/O one.
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => StoreError::Conflict(
                conflict
                    .unwrap_or("a record with the same unique value already exists")
                    .to_string(),
            ),
            ErrorKind::ForeignKeyViolation => StoreError::Invalid(
                "the record refers to a user or team that does not exist".to_string(),
            ),
            _ if is_transient_db_error(db.as_ref()) => {
                StoreError::Unavailable(db.message().to_string())
            }
            _ => StoreError::Other(db.message().to_string()),
        },
        other => StoreError::Other(other.to_string()),
    }
}

/// Errors that go away by themselves: a busy or locked SQLite file; a Postgres connection
/// failure, shutdown, overload, deadlock or serialisation failure.
fn is_transient_db_error(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        code.starts_with("08")
            || code.starts_with("57P")
            || code.starts_with("53")
            || code == "40001"
            || code == "40P01"
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes carry the primary code in the low byte.
        matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6 | 14))
    } else {
        false
    }
}

fn db_err(err: sqlx::Error) -> StoreError {
    map_db_err(err, None)
}

fn migrate_err(err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) => db_err(e),
        other => StoreError::Other(format!("migration failed: {other}")),
    }
}

// ---- row mapping -------------------------------------------------------------------------

const USER_COLS: &str = "id, username, email, full_name, role, blocked, rpm, tpm, max_budget, \
     budget_duration, metadata, locked_until, created_at, updated_at";
const TEAM_COLS: &str = "id, name, models, blocked, rpm, tpm, max_budget, budget_duration, \
     metadata, created_at, updated_at";
const KEY_COLS: &str = "id, name, key_hint, user_id, team_id, permissions, models, rpm, tpm, \
     max_budget, budget_duration, expires_at, blocked, metadata, created_at, updated_at, \
     revoked_at, previous_expires_at";
const MEMBER_COLS: &str = "team_id, user_id, role, source, created_at";
const AUDIT_COLS: &str = "id, at, actor, action, target, source, details";

fn col<'r, T>(row: &'r AnyRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Other(format!("cannot read column {name}: {e}")))
}

/// A boolean column: a bool on Postgres, an INTEGER 0/1 on SQLite (see the module docs).
fn bool_col(row: &AnyRow, name: &str) -> StoreResult<bool> {
    Ok(opt_bool_col(row, name)?.unwrap_or(false))
}

fn opt_bool_col(row: &AnyRow, name: &str) -> StoreResult<Option<bool>> {
    match row.try_get::<Option<bool>, _>(name) {
        Ok(b) => Ok(b),
        Err(_) => Ok(col::<Option<i64>>(row, name)?.map(|i| i != 0)),
    }
}

fn enum_col<T: FromStr<Err = String>>(row: &AnyRow, name: &str) -> StoreResult<T> {
    let text: String = col(row, name)?;
    text.parse()
        .map_err(|e| StoreError::Other(format!("column {name}: {e}")))
}

fn opt_enum_col<T: FromStr<Err = String>>(row: &AnyRow, name: &str) -> StoreResult<Option<T>> {
    let text: Option<String> = col(row, name)?;
    text.map(|t| t.parse())
        .transpose()
        .map_err(|e| StoreError::Other(format!("column {name}: {e}")))
}

fn json_col(row: &AnyRow, name: &str) -> StoreResult<Value> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Other(format!("column {name} holds invalid JSON: {e}")))
}

fn list_col(row: &AnyRow, name: &str) -> StoreResult<Vec<String>> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Other(format!("column {name} holds an invalid list: {e}")))
}

fn limits_from_row(row: &AnyRow) -> StoreResult<Limits> {
    prefixed_limits(row, "")
}

/// The four limit columns, named `{prefix}rpm` and so on (joined owners' columns are
/// aliased with a prefix).
fn prefixed_limits(row: &AnyRow, prefix: &str) -> StoreResult<Limits> {
    Ok(Limits {
        rpm: col(row, &format!("{prefix}rpm"))?,
        tpm: col(row, &format!("{prefix}tpm"))?,
        max_budget: col(row, &format!("{prefix}max_budget"))?,
        budget_duration: opt_enum_col(row, &format!("{prefix}budget_duration"))?,
    })
}

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: col(row, "id")?,
        username: col(row, "username")?,
        email: col(row, "email")?,
        full_name: col(row, "full_name")?,
        role: enum_col(row, "role")?,
        blocked: bool_col(row, "blocked")?,
        limits: limits_from_row(row)?,
        metadata: json_col(row, "metadata")?,
        locked_until: col(row, "locked_until")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn team_from_row(row: &AnyRow) -> StoreResult<Team> {
    Ok(Team {
        id: col(row, "id")?,
        name: col(row, "name")?,
        models: list_col(row, "models")?,
        blocked: bool_col(row, "blocked")?,
        limits: limits_from_row(row)?,
        metadata: json_col(row, "metadata")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

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

fn member_from_row(row: &AnyRow) -> StoreResult<Membership> {
    Ok(Membership {
        team_id: col(row, "team_id")?,
        user_id: col(row, "user_id")?,
        role: enum_col(row, "role")?,
        source: enum_col(row, "source")?,
        created_at: col(row, "created_at")?,
    })
}

fn audit_from_row(row: &AnyRow) -> StoreResult<AuditEvent> {
    Ok(AuditEvent {
        id: col(row, "id")?,
        at: col(row, "at")?,
        actor: col(row, "actor")?,
        action: col(row, "action")?,
        target: col(row, "target")?,
        source: col(row, "source")?,
        details: json_col(row, "details")?,
    })
}

fn list_text(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings serialises")
}

fn duration_text(d: Option<BudgetDuration>) -> Option<&'static str> {
    d.map(BudgetDuration::as_str)
}

/// Binds the four limit columns of users, teams and keys, in the order every INSERT and
/// UPDATE lists them: `rpm, tpm, max_budget, budget_duration`.
///
/// `max_budget` travels as text, which the SQL casts (`CAST($n AS DOUBLE PRECISION)`):
/// sqlx's `Any` driver sends a NULL `f64` to Postgres as a `float4` parameter, and a
/// connection that prepared the statement with that NULL then refuses every later budget
/// ("incorrect binary data format"). A text parameter is text whether NULL or not; Rust
/// prints an `f64` in the shortest form that reads back exactly.
trait BindLimits {
    fn bind_limits(self, limits: &Limits) -> Self;
}

impl<'q> BindLimits for Query<'q, Any, AnyArguments<'q>> {
    fn bind_limits(self, limits: &Limits) -> Self {
        self.bind(limits.rpm)
            .bind(limits.tpm)
            .bind(limits.max_budget.map(|usd| usd.to_string()))
            .bind(duration_text(limits.budget_duration))
    }
}

/// The audit details of a created user, team or key: `details` (a JSON object) plus the
/// record's four limits.
fn with_limits(mut details: Value, limits: &Limits) -> Value {
    details["rpm"] = json!(limits.rpm);
    details["tpm"] = json!(limits.tpm);
    details["max_budget"] = json!(limits.max_budget);
    details["budget_duration"] = json!(limits.budget_duration);
    details
}

/// Records the fields a patch sets while applying them, for the audit row's details.
#[derive(Default)]
struct Changes(Map<String, Value>);

impl Changes {
    fn apply<T: Serialize>(&mut self, field: &str, slot: &mut T, new: Option<T>) {
        if let Some(value) = new {
            self.0.insert(
                field.to_string(),
                serde_json::to_value(&value).unwrap_or(Value::Null),
            );
            *slot = value;
        }
    }

    /// Applies a [`LimitsPatch`] the same way, field by field.
    fn apply_limits(&mut self, limits: &mut Limits, patch: LimitsPatch) {
        self.apply("rpm", &mut limits.rpm, patch.rpm);
        self.apply("tpm", &mut limits.tpm, patch.tpm);
        self.apply("max_budget", &mut limits.max_budget, patch.max_budget);
        self.apply(
            "budget_duration",
            &mut limits.budget_duration,
            patch.budget_duration,
        );
    }

    fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

fn require_nonempty(what: &str, value: &str) -> StoreResult<()> {
    if value.trim().is_empty() {
        return Err(StoreError::Invalid(format!("{what} must not be empty")));
    }
    Ok(())
}

/// A key hash is the lowercase hex SHA-256 of the plaintext key; anything else is a caller
/// bug (e.g. passing the plaintext), so it is refused without echoing the value.
fn require_key_hash(hash: &str) -> StoreResult<()> {
    let ok = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "key_hash must be a lowercase hex SHA-256 (64 characters)".to_string(),
        ))
    }
}

async fn write_audit(
    conn: &mut AnyConnection,
    actor: &Actor,
    at: Timestamp,
    action: &str,
    target: &str,
    details: Value,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, source, details) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(&actor.name)
    .bind(action)
    .bind(target)
    .bind(actor.source.as_deref())
    .bind(details.to_string())
    .execute(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn commit(tx: Transaction<'static, Any>) -> StoreResult<()> {
    tx.commit().await.map_err(db_err)
}

const USER_CONFLICT: &str = "a user with that username or email already exists";
const KEY_CONFLICT: &str = "a key with that secret already exists";

fn team_conflict(name: &str) -> String {
    format!("a team named {name} already exists")
}

// ---- usage and spend ----------------------------------------------------------------------

const USAGE_INSERT: &str = "INSERT INTO usage_records (request_id, at, key_id, user_id, team_id, \
     model, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, \
     status, latency_ms, estimated, source, written_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
     ON CONFLICT (request_id) DO NOTHING";

/// Adds to a period's spend; a period whose end moved (the entity's `budget_duration`
/// changed) keeps the later end.
const SPEND_UPSERT: &str = "INSERT INTO spend \
     (entity_kind, entity_id, period_start, period_end, spend_usd) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (entity_kind, entity_id, period_start) DO UPDATE SET \
     spend_usd = spend.spend_usd + excluded.spend_usd, \
     period_end = CASE WHEN excluded.period_end > spend.period_end \
     THEN excluded.period_end ELSE spend.period_end END";

fn source_text(source: UsageSource) -> &'static str {
    match source {
        UsageSource::ExtProc => "ext_proc",
        UsageSource::AccessLog => "access_log",
    }
}

/// A count as stored: BIGINT, so counts above `i64::MAX` (never real) are stored as the max.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn validate_record(record: &UsageRecord) -> StoreResult<()> {
    if record.request_id.is_empty() {
        return Err(StoreError::Invalid(
            "a usage record needs a request_id".to_string(),
        ));
    }
    if !record.cost_usd.is_finite() || record.cost_usd < 0.0 {
        return Err(StoreError::Invalid(format!(
            "usage record {}: cost_usd must be a finite, non-negative number",
            record.request_id
        )));
    }
    Ok(())
}

/// What an entity's spend periods derive from: its `budget_duration` and `created_at` (the
/// anchor of `30d` windows).
#[derive(Debug, Clone, Copy)]
struct SpendBasis {
    duration: Option<BudgetDuration>,
    anchor: Timestamp,
}

impl SpendBasis {
    /// The period containing `at` (calendar months without a duration).
    fn window(self, at: Timestamp) -> (Timestamp, Timestamp) {
        period::window(period::effective(self.duration), at, self.anchor)
    }
}

/// The spend basis of a key, user or team from its own row, deleted or not; with no row,
/// no duration (so calendar months, where the anchor does not matter).
async fn spend_basis(
    conn: &mut AnyConnection,
    kind: SpendKind,
    id: &str,
) -> StoreResult<SpendBasis> {
    let table = match kind {
        SpendKind::Key => "api_keys",
        SpendKind::User => "users",
        SpendKind::Team => "teams",
    };
    let sql = format!("SELECT budget_duration, created_at FROM {table} WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    match row {
        Some(row) => Ok(SpendBasis {
            duration: opt_enum_col(&row, "budget_duration")?,
            anchor: col(&row, "created_at")?,
        }),
        None => Ok(SpendBasis {
            duration: None,
            anchor: 0,
        }),
    }
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn day_text(day: i64) -> String {
    day.checked_mul(period::DAY)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

/// A non-negative BIGINT aggregate as a count.
fn count_col(row: &AnyRow, name: &str) -> StoreResult<u64> {
    let n: Option<i64> = col(row, name)?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

// ---- budget alerts ------------------------------------------------------------------------

const ALERT_COLS: &str = "id, entity_kind, entity_id, period_start, period_end, threshold, \
     spend_usd, budget_usd, created_at, state, attempts, next_attempt_at, last_error, \
     delivered_at";

const ALERT_INSERT: &str = "INSERT INTO alerts (id, entity_kind, entity_id, period_start, \
     period_end, threshold, spend_usd, budget_usd, created_at, state, attempts, \
     next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10) \
     ON CONFLICT (entity_kind, entity_id, period_start, threshold) DO NOTHING";

/// Default and maximum number of alerts one `list_alerts` call returns.
const ALERTS_DEFAULT_LIMIT: i64 = 100;
const ALERTS_MAX_LIMIT: i64 = 1000;

/// Longest `last_error` kept, in characters.
const ALERT_ERROR_MAX_CHARS: usize = 500;

fn validate_crossing(c: &AlertCrossing) -> StoreResult<()> {
    if c.entity_id.is_empty() {
        return Err(StoreError::Invalid(
            "an alert needs an entity id".to_string(),
        ));
    }
    if c.threshold == 0 {
        return Err(StoreError::Invalid(format!(
            "alert of {} {}: the threshold must be above 0 %",
            c.entity_kind, c.entity_id
        )));
    }
    if !c.spend_usd.is_finite() || !c.budget_usd.is_finite() {
        return Err(StoreError::Invalid(format!(
            "alert of {} {}: spend_usd and budget_usd must be finite",
            c.entity_kind, c.entity_id
        )));
    }
    Ok(())
}

/// A non-negative BIGINT column as a `u32` (larger values, never real, are capped).
fn small_count_col(row: &AnyRow, name: &str) -> StoreResult<u32> {
    let n: i64 = col(row, name)?;
    Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

fn alert_from_row(row: &AnyRow) -> StoreResult<Alert> {
    Ok(Alert {
        id: col(row, "id")?,
        entity_kind: enum_col(row, "entity_kind")?,
        entity_id: col(row, "entity_id")?,
        period_start: col(row, "period_start")?,
        period_end: col(row, "period_end")?,
        threshold: small_count_col(row, "threshold")?,
        spend_usd: col(row, "spend_usd")?,
        budget_usd: col(row, "budget_usd")?,
        created_at: col(row, "created_at")?,
        state: enum_col::<AlertState>(row, "state")?,
        attempts: small_count_col(row, "attempts")?,
        next_attempt_at: col(row, "next_attempt_at")?,
        last_error: col(row, "last_error")?,
        delivered_at: col(row, "delivered_at")?,
    })
}

/// An error message as kept in `last_error`: at most [`ALERT_ERROR_MAX_CHARS`] characters.
fn alert_error_text(error: &str) -> String {
    match error.char_indices().nth(ALERT_ERROR_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &error[..cut]),
        None => error.to_string(),
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> StoreResult<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator.run(&self.pool).await.map_err(migrate_err)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        conn.ping().await.map_err(db_err)
    }
}

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, actor: &Actor, new: NewUser) -> StoreResult<User> {
        require_nonempty("username", &new.username)?;
        require_nonempty("email", &new.email)?;
        let now = domain::now();
        let user = User {
            id: domain::new_id(),
            username: new.username,
            email: new.email,
            full_name: new.full_name,
            role: new.role.unwrap_or(Role::User),
            blocked: false,
            limits: new.limits,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            locked_until: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, username, email, full_name, role, blocked, password_hash, \
             rpm, tpm, max_budget, budget_duration, metadata, created_at, updated_at, \
             email_verified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CAST($10 AS DOUBLE PRECISION), $11, $12, $13, $14, $15)",
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
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(USER_CONFLICT)))?;
        let details = with_limits(
            json!({
                "username": user.username,
                "email": user.email,
                "full_name": user.full_name,
                "role": user.role,
                "password_set": new.password_hash.is_some(),
            }),
            &user.limits,
        );
        write_audit(&mut tx, actor, now, "user.create", &user.id, details).await?;
        commit(tx).await?;
        Ok(user)
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLS} FROM users WHERE deleted_at IS NULL ORDER BY created_at, id"
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
        let mut changes = Changes::default();
        changes.apply("email", &mut user.email, patch.email);
        changes.apply("full_name", &mut user.full_name, patch.full_name);
        changes.apply("role", &mut user.role, patch.role);
        changes.apply("blocked", &mut user.blocked, patch.blocked);
        changes.apply_limits(&mut user.limits, patch.limits);
        changes.apply("metadata", &mut user.metadata, patch.metadata);
        let now = domain::now();
        user.updated_at = now;
        sqlx::query(
            "UPDATE users SET email = $2, full_name = $3, role = $4, blocked = $5, rpm = $6, \
             tpm = $7, max_budget = CAST($8 AS DOUBLE PRECISION), budget_duration = $9, metadata = $10, updated_at = $11 \
             WHERE id = $1",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(user.full_name.as_deref())
        .bind(user.role.as_str())
        .bind(user.blocked)
        .bind_limits(&user.limits)
        .bind(user.metadata.to_string())
        .bind(now)
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
        let details = json!({
            "username": user.username,
            "memberships_removed": members,
            "keys_revoked": keys,
        });
        write_audit(&mut tx, actor, now, "user.delete", id, details).await?;
        commit(tx).await?;
        Ok(true)
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
            models: new.models,
            blocked: false,
            limits: new.limits,
            metadata: new.metadata.unwrap_or_else(|| json!({})),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO teams (id, name, models, blocked, rpm, tpm, max_budget, \
             budget_duration, metadata, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, CAST($7 AS DOUBLE PRECISION), $8, $9, $10, $11)",
        )
        .bind(&team.id)
        .bind(&team.name)
        .bind(list_text(&team.models))
        .bind(team.blocked)
        .bind_limits(&team.limits)
        .bind(team.metadata.to_string())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_db_err(e, Some(&team_conflict(&team.name))))?;
        let details = with_limits(
            json!({ "name": team.name, "models": team.models }),
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
             max_budget = CAST($7 AS DOUBLE PRECISION), budget_duration = $8, metadata = $9, updated_at = $10 \
             WHERE id = $1",
        )
        .bind(&team.id)
        .bind(&team.name)
        .bind(list_text(&team.models))
        .bind(team.blocked)
        .bind_limits(&team.limits)
        .bind(team.metadata.to_string())
        .bind(now)
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

#[async_trait]
impl KeyStore for SqlStore {
    async fn create_key(&self, actor: &Actor, new: NewKey) -> StoreResult<ApiKey> {
        require_nonempty("key name", &new.name)?;
        require_key_hash(&new.key_hash)?;
        let now = domain::now();
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
        let mut tx = self.begin_write().await?;
        if let Some(user_id) = &key.user_id {
            self.require_live(&mut tx, "users", "user", user_id).await?;
        }
        if let Some(team_id) = &key.team_id {
            self.require_live(&mut tx, "teams", "team", team_id).await?;
        }
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, key_hint, user_id, team_id, permissions, \
             models, rpm, tpm, max_budget, budget_duration, expires_at, blocked, metadata, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CAST($11 AS DOUBLE PRECISION), $12, $13, $14, $15, $16, $17)",
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
        write_audit(&mut tx, actor, now, "key.create", &key.id, details).await?;
        commit(tx).await?;
        Ok(key)
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
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<String> = Vec::new();
        if let Some(user_id) = filter.user_id {
            params.push(user_id);
            conditions.push(format!("user_id = ${}", params.len()));
        }
        if let Some(team_id) = filter.team_id {
            params.push(team_id);
            conditions.push(format!("team_id = ${}", params.len()));
        }
        if !filter.include_revoked {
            conditions.push("revoked_at IS NULL".to_string());
        }
        let mut sql = format!("SELECT {KEY_COLS} FROM api_keys");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY created_at, id");
        let mut query = sqlx::query(&sql);
        for param in params {
            query = query.bind(param);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
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
             metadata = $11, updated_at = $12 WHERE id = $1",
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
             k.expires_at, k.blocked, k.metadata, k.created_at, k.updated_at, k.revoked_at, \
             k.previous_expires_at, k.key_hash, \
             u.id AS owner_user_id, u.role AS owner_user_role, u.blocked AS owner_user_blocked, \
             u.rpm AS owner_user_rpm, u.tpm AS owner_user_tpm, \
             u.max_budget AS owner_user_max_budget, \
             u.budget_duration AS owner_user_budget_duration, \
             t.id AS owner_team_id, t.models AS owner_team_models, \
             t.blocked AS owner_team_blocked, \
             t.rpm AS owner_team_rpm, t.tpm AS owner_team_tpm, \
             t.max_budget AS owner_team_max_budget, \
             t.budget_duration AS owner_team_budget_duration \
             FROM api_keys k \
             LEFT JOIN users u ON u.id = k.user_id \
             LEFT JOIN teams t ON t.id = k.team_id \
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
                role: enum_col(row, "owner_user_role")?,
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
        Ok(Some(KeyLookup {
            key: key_from_row(row)?,
            via_previous,
            user,
            team,
        }))
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn list_audit(&self, filter: AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        enum Param {
            Text(String),
            Int(i64),
        }
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut add = |condition: &str, param: Param| {
            params.push(param);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(actor) = filter.actor {
            add("actor =", Param::Text(actor));
        }
        if let Some(action) = filter.action {
            add("action =", Param::Text(action));
        }
        if let Some(target) = filter.target {
            add("target =", Param::Text(target));
        }
        if let Some(since) = filter.since {
            add("at >=", Param::Int(since));
        }
        if let Some(until) = filter.until {
            add("at <=", Param::Int(until));
        }
        let limit = filter
            .limit
            .unwrap_or(AUDIT_DEFAULT_LIMIT)
            .clamp(0, AUDIT_MAX_LIMIT);
        let mut sql = format!("SELECT {AUDIT_COLS} FROM audit_log");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY at DESC, id DESC LIMIT ${}",
            params.len() + 1
        ));
        let mut query = sqlx::query(&sql);
        for param in params {
            query = match param {
                Param::Text(text) => query.bind(text),
                Param::Int(int) => query.bind(int),
            };
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn record_event(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        details: Value,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, source, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(domain::now())
        .bind(&actor.name)
        .bind(action)
        .bind(target)
        .bind(actor.source.as_deref())
        .bind(details.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }
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

#[async_trait]
impl SessionStore for SqlStore {
    async fn find_login_user(&self, name: &str) -> StoreResult<Option<LoginUser>> {
        // Usernames and emails are unique among live users, but one user's username may be
        // another's email; the username wins then.
        let sql = format!(
            "SELECT {USER_COLS}, password_hash FROM users \
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
        Ok(RefreshOutcome::Rotated { user, family })
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

#[async_trait]
impl UsageStore for SqlStore {
    async fn record_new_usage(&self, records: &[UsageRecord]) -> StoreResult<Vec<usize>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        for record in records {
            validate_record(record)?;
        }
        // In request id order (stable, so the first of duplicates wins), so that concurrent
        // batches wait on each other's ids in one order instead of deadlocking.
        let mut ordered: Vec<(usize, &UsageRecord)> = records.iter().enumerate().collect();
        ordered.sort_by(|a, b| a.1.request_id.cmp(&b.1.request_id));

        let written_at = domain::now();
        let mut tx = self.begin_write().await?;
        let mut bases: HashMap<(SpendKind, &str), SpendBasis> = HashMap::new();
        // (kind, id, period start) → (period end, USD), applied in this (sorted) order.
        let mut accrued: BTreeMap<(SpendKind, &str, Timestamp), (Timestamp, f64)> = BTreeMap::new();
        let mut new = Vec::new();
        for (position, record) in ordered {
            let tokens = &record.tokens;
            let inserted = sqlx::query(USAGE_INSERT)
                .bind(&record.request_id)
                .bind(record.at)
                .bind(record.key_id.as_deref())
                .bind(record.user_id.as_deref())
                .bind(record.team_id.as_deref())
                .bind(record.model.as_deref())
                .bind(count(tokens.input_tokens))
                .bind(count(tokens.output_tokens))
                .bind(count(tokens.cached_input_tokens))
                .bind(count(tokens.reasoning_tokens))
                .bind(record.cost_usd)
                .bind(i64::from(record.status))
                .bind(count(record.latency_ms))
                .bind(record.estimated)
                .bind(source_text(record.source))
                .bind(written_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if inserted == 0 {
                continue;
            }
            new.push(position);
            for (kind, id) in crate::admission::payers::of_record(record) {
                let basis = match bases.get(&(kind, id)) {
                    Some(basis) => *basis,
                    None => {
                        let basis = spend_basis(&mut tx, kind, id).await?;
                        bases.insert((kind, id), basis);
                        basis
                    }
                };
                let (start, end) = basis.window(record.at);
                let slot = accrued.entry((kind, id, start)).or_insert((end, 0.0));
                slot.1 += record.cost_usd;
            }
        }
        for ((kind, id, start), (end, usd)) in accrued {
            if usd == 0.0 {
                continue;
            }
            sqlx::query(SPEND_UPSERT)
                .bind(kind.as_str())
                .bind(id)
                .bind(start)
                .bind(end)
                .bind(usd)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        commit(tx).await?;
        new.sort_unstable();
        Ok(new)
    }

    async fn current_spend(&self, kind: SpendKind, id: &str, at: Timestamp) -> StoreResult<f64> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let (start, end) = spend_basis(&mut conn, kind, id).await?.window(at);
        let row = sqlx::query(
            "SELECT COALESCE(SUM(spend_usd), 0.0) AS spend FROM spend \
             WHERE entity_kind = $1 AND entity_id = $2 AND period_start >= $3 \
             AND period_start < $4",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(start)
        .bind(end)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(col::<Option<f64>>(&row, "spend")?.unwrap_or(0.0))
    }

    async fn usage_report(&self, query: UsageQuery) -> StoreResult<UsageReport> {
        enum Param {
            Text(String),
            Int(i64),
        }
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut add = |condition: &str, param: Param| {
            params.push(param);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(since) = query.since {
            add("at >=", Param::Int(since));
        }
        if let Some(until) = query.until {
            add("at <=", Param::Int(until));
        }
        if let Some(user_id) = query.user_id {
            add("user_id =", Param::Text(user_id));
        }
        if let Some(key_id) = query.key_id {
            add("key_id =", Param::Text(key_id));
        }
        if let Some(team_id) = query.team_id {
            add("team_id =", Param::Text(team_id));
        }
        // Records without an owner or model fall in the NO_GROUP ("") group. Days are
        // numbered in SQL (floor division, the same on both backends, also before 1970)
        // and formatted here.
        let group = match query.group_by {
            GroupBy::Key => "COALESCE(key_id, '')",
            GroupBy::User => "COALESCE(user_id, '')",
            GroupBy::Team => "COALESCE(team_id, '')",
            GroupBy::Model => "COALESCE(model, '')",
            GroupBy::Day => "(at - ((at % 86400) + 86400) % 86400) / 86400",
        };
        let mut sql = format!(
            "SELECT {group} AS grp, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_sum, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_sum, \
             COALESCE(SUM(cost_usd), 0.0) AS cost_sum FROM usage_records"
        );
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" GROUP BY {group}"));
        let mut select = sqlx::query(&sql);
        for param in params {
            select = match param {
                Param::Text(text) => select.bind(text),
                Param::Int(int) => select.bind(int),
            };
        }
        let rows = select.fetch_all(&self.pool).await.map_err(db_err)?;

        // Sorted here, not by ORDER BY: Postgres orders text by its collation, SQLite by
        // bytes, and days must sort by number before they become text.
        let mut keyed: Vec<((i64, String), UsageRow)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let (sort, group) = match query.group_by {
                GroupBy::Day => {
                    let day: i64 = col(row, "grp")?;
                    ((day, String::new()), day_text(day))
                }
                _ => {
                    let group: String = col(row, "grp")?;
                    ((0, group.clone()), group)
                }
            };
            let usage = UsageRow {
                group,
                requests: count_col(row, "requests")?,
                input_tokens: count_col(row, "input_sum")?,
                output_tokens: count_col(row, "output_sum")?,
                cost_usd: col::<Option<f64>>(row, "cost_sum")?.unwrap_or(0.0),
            };
            keyed.push((sort, usage));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(UsageReport::from_rows(
            keyed.into_iter().map(|(_, row)| row).collect(),
        ))
    }
}

#[async_trait]
impl AlertStore for SqlStore {
    async fn raise_alerts(&self, crossings: &[AlertCrossing]) -> StoreResult<u64> {
        if crossings.is_empty() {
            return Ok(0);
        }
        for crossing in crossings {
            validate_crossing(crossing)?;
        }
        // In one order, so that concurrent raises on Postgres wait on each other's rows
        // instead of deadlocking.
        let mut ordered: Vec<&AlertCrossing> = crossings.iter().collect();
        ordered.sort_by(|a, b| {
            (a.entity_kind, &a.entity_id, a.period_start, a.threshold).cmp(&(
                b.entity_kind,
                &b.entity_id,
                b.period_start,
                b.threshold,
            ))
        });
        let mut tx = self.begin_write().await?;
        let mut new = 0u64;
        for c in ordered {
            new += sqlx::query(ALERT_INSERT)
                .bind(domain::new_id())
                .bind(c.entity_kind.as_str())
                .bind(&c.entity_id)
                .bind(c.period_start)
                .bind(c.period_end)
                .bind(i64::from(c.threshold))
                .bind(c.spend_usd)
                .bind(c.budget_usd)
                .bind(c.created_at)
                .bind(c.created_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        commit(tx).await?;
        Ok(new)
    }

    async fn due_alerts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<Alert>> {
        let limit = limit.clamp(0, ALERTS_MAX_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let claimed_until = now.saturating_add(ALERT_CLAIM_SECS);
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut alert = alert_from_row(row)?;
            // Claimed only if nobody else claimed or settled it since it was read: the
            // update matches the row as it was read, so of two callers exactly one wins.
            let claimed = sqlx::query(
                "UPDATE alerts SET next_attempt_at = $1 \
                 WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3",
            )
            .bind(claimed_until)
            .bind(&alert.id)
            .bind(alert.next_attempt_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
            if claimed == 1 {
                alert.next_attempt_at = Some(claimed_until);
                due.push(alert);
            }
        }
        Ok(due)
    }

    async fn mark_alert(&self, id: &str, outcome: AlertOutcome) -> StoreResult<bool> {
        let query = match &outcome {
            AlertOutcome::Delivered { at } => sqlx::query(
                "UPDATE alerts SET state = 'delivered', attempts = attempts + 1, \
                 delivered_at = $2, next_attempt_at = NULL \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(*at),
            AlertOutcome::Retry {
                error,
                next_attempt_at,
            } => sqlx::query(
                "UPDATE alerts SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = $3 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(alert_error_text(error))
            .bind(*next_attempt_at),
            AlertOutcome::Failed { error } => sqlx::query(
                "UPDATE alerts SET state = 'failed', attempts = attempts + 1, \
                 last_error = $2, next_attempt_at = NULL WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(alert_error_text(error)),
        };
        let updated = query
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        Ok(updated > 0)
    }

    async fn list_alerts(&self, filter: AlertFilter) -> StoreResult<Vec<Alert>> {
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<String> = Vec::new();
        let mut add = |condition: &str, param: String| {
            params.push(param);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(state) = filter.state {
            add("state =", state.as_str().to_string());
        }
        if let Some(kind) = filter.entity_kind {
            add("entity_kind =", kind.as_str().to_string());
        }
        if let Some(id) = filter.entity_id {
            add("entity_id =", id);
        }
        let limit = filter
            .limit
            .unwrap_or(ALERTS_DEFAULT_LIMIT)
            .clamp(0, ALERTS_MAX_LIMIT);
        let mut sql = format!("SELECT {ALERT_COLS} FROM alerts");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            params.len() + 1
        ));
        let mut query = sqlx::query(&sql);
        for param in params {
            query = query.bind(param);
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(alert_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/tollgate"),
            "postgres://app:***@db:5432/tollgate"
        );
        assert_eq!(
            redact_url("postgres://app@db/tollgate?password=s3cret&sslmode=require"),
            "postgres://app@db/tollgate?password=***&sslmode=require"
        );
        assert_eq!(redact_url("sqlite://tollgate.db"), "sqlite://tollgate.db");
        assert_eq!(redact_url("sqlite:tollgate.db"), "sqlite:tollgate.db");
        assert_eq!(
            redact_url("postgres://u:p@ss@host/db"),
            "postgres://u:***@host/db"
        );
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::from_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("sqlite:x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        let err = Backend::from_url("mysql://root:hunter2@h/db").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`mysql`"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(Backend::from_url("tollgate.db").is_err());
    }

    #[test]
    fn sqlite_url_gets_create_mode() {
        assert_eq!(
            sqlite_url_with_create("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_with_create("sqlite://a.db?cache=shared"),
            "sqlite://a.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url_with_create("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
    }

    #[test]
    fn key_hash_shape() {
        assert!(require_key_hash(&"a".repeat(64)).is_ok());
        assert!(require_key_hash(&"A".repeat(64)).is_err());
        assert!(require_key_hash("sk-tg-abc").is_err());
    }
}
