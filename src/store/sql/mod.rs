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
//! Every write runs in one transaction with its audit row. On SQLite a write transaction
//! starts with `BEGIN IMMEDIATE`, so it holds the write lock from its first read and never
//! fails half-way on a lock upgrade; on Postgres the rows read before a write are locked with
//! `FOR UPDATE` / `FOR SHARE`, so concurrent patches and deletes serialise per row.
//!
//! [`SqlStore`] (connecting, [`Backend`], migrations) lives here with what every capability
//! shares: error mapping, column decoding, binding limits, audit rows and write transactions.
//! Each capability trait of [`crate::store`] is implemented in a submodule of its own:
//! `users`, `teams` (with memberships), `orgs`, `keys`, `audit`, `identities` (OIDC), `sessions`
//! (login guard and refresh tokens), `usage` (usage records and spend), `alerts`, `sso`
//! (sign-ins with SSO in progress), `passkeys` (WebAuthn credentials and challenges),
//! `ui_sessions` (the web UI's browser sessions) and `roles` (custom roles).

mod alerts;
mod audit;
mod identities;
mod keys;
mod orgs;
mod passkeys;
mod roles;
mod sessions;
mod sso;
mod teams;
mod ui_sessions;
mod usage;
mod users;

use super::{Actor, LimitsPatch, Store, StoreError, StoreResult};
use crate::domain::{BudgetDuration, Limits, Membership, Role, Timestamp, User};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite connection waits for another connection's write lock before giving up
/// with `SQLITE_BUSY` (reported as a transient [`StoreError::Backend`]).
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

/// Each SQLite connection's page cache, in KiB. Every pooled connection caches the pages it
/// reads for itself, and a pool opens all of its connections under load: SQLite's default
/// (2 MiB each) came to 23 MiB of duplicates for the default pool of 10 once 100,000 keys
/// had been looked up, of pages the OS caches anyway; warm decisions read no page at all.
const SQLITE_CACHE_KIB: u32 = 512;

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

    /// The operator of a LIKE that ignores case: SQLite's LIKE already does (for ASCII
    /// letters), Postgres' is ILIKE.
    fn case_insensitive_like(self) -> &'static str {
        match self {
            Backend::Sqlite => "LIKE",
            Backend::Postgres => "ILIKE",
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
                    StoreError::Backend(e) => StoreError::unavailable(format!(
                        "cannot connect to `{shown}`: {}",
                        e.detail()
                    )),
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
            "SELECT {USER_COLS}, {USER_ROLE} FROM users WHERE id = $1 AND deleted_at IS NULL{}",
            self.backend.for_update()
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
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
    conn.execute(format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}").as_str())
        .await?;
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
        | sqlx::Error::Protocol(_) => StoreError::unavailable(err.to_string()),
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
                StoreError::unavailable(db.message().to_string())
            }
            _ => StoreError::fault(db.message().to_string()),
        },
        other => StoreError::fault(other.to_string()),
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
        other => StoreError::fault(format!("migration failed: {other}")),
    }
}

// ---- row mapping -------------------------------------------------------------------------

const USER_COLS: &str = "id, username, email, full_name, role, org_id, blocked, rpm, tpm, \
     max_budget, budget_duration, max_parallel, metadata, locked_until, created_at, updated_at";

/// Read beside [`USER_COLS`] from `users`: the permissions of the user's custom role (NULL
/// for a built-in role), so a user is read with what their role grants.
const USER_ROLE: &str = "(SELECT r.permissions FROM roles r WHERE r.name = users.role) \
     AS role_permissions";

const MEMBER_COLS: &str = "team_id, user_id, role, source, created_at";

fn col<'r, T>(row: &'r AnyRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(name)
        .map_err(|e| StoreError::fault(format!("cannot read column {name}: {e}")))
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
        .map_err(|e| StoreError::fault(format!("column {name}: {e}")))
}

fn opt_enum_col<T: FromStr<Err = String>>(row: &AnyRow, name: &str) -> StoreResult<Option<T>> {
    let text: Option<String> = col(row, name)?;
    text.map(|t| t.parse())
        .transpose()
        .map_err(|e| StoreError::fault(format!("column {name}: {e}")))
}

fn json_col(row: &AnyRow, name: &str) -> StoreResult<Value> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::fault(format!("column {name} holds invalid JSON: {e}")))
}

fn list_col(row: &AnyRow, name: &str) -> StoreResult<Vec<String>> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::fault(format!("column {name} holds an invalid list: {e}")))
}

fn limits_from_row(row: &AnyRow) -> StoreResult<Limits> {
    prefixed_limits(row, "")
}

/// The limit columns, named `{prefix}rpm` and so on (joined owners' columns are aliased
/// with a prefix).
fn prefixed_limits(row: &AnyRow, prefix: &str) -> StoreResult<Limits> {
    Ok(Limits {
        rpm: col(row, &format!("{prefix}rpm"))?,
        tpm: col(row, &format!("{prefix}tpm"))?,
        max_budget: col(row, &format!("{prefix}max_budget"))?,
        budget_duration: opt_enum_col(row, &format!("{prefix}budget_duration"))?,
        max_parallel: col(row, &format!("{prefix}max_parallel"))?,
    })
}

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: col(row, "id")?,
        username: col(row, "username")?,
        email: col(row, "email")?,
        full_name: col(row, "full_name")?,
        role: role_col(row, "role", "role_permissions")?,
        org_id: col(row, "org_id")?,
        blocked: bool_col(row, "blocked")?,
        limits: limits_from_row(row)?,
        metadata: json_col(row, "metadata")?,
        locked_until: col(row, "locked_until")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

/// A user's role from its name (column `name`) and, for a custom role, its permissions
/// (column `permissions`, NULL when the name is a built-in role's).
fn role_col(row: &AnyRow, name: &str, permissions: &str) -> StoreResult<Role> {
    let role: String = col(row, name)?;
    if let Some(role) = Role::built_in(&role) {
        return Ok(role);
    }
    let granted = match col::<Option<String>>(row, permissions)? {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            StoreError::fault(format!("column {permissions} holds an invalid list: {e}"))
        })?,
        // The role was deleted under a user (it cannot be through the store): it grants
        // nothing.
        None => Vec::new(),
    };
    Ok(Role::custom(&role, &granted))
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

fn list_text(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings serialises")
}

fn duration_text(d: Option<BudgetDuration>) -> Option<&'static str> {
    d.map(BudgetDuration::as_str)
}

/// Binds the four limit columns of users, teams and keys, in the order every INSERT and
/// UPDATE lists them: `rpm, tpm, max_budget, budget_duration` (`max_parallel`, a later
/// column, is bound last by each statement).
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
    if limits.max_parallel.is_some() {
        details["max_parallel"] = json!(limits.max_parallel);
    }
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
        self.apply("max_parallel", &mut limits.max_parallel, patch.max_parallel);
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

/// `{column} IN (…)`: the ids of org `{org}` (a placeholder such as `$3`) and of its
/// users, teams and their keys, for the listings an org admin reads (audit log, alerts).
pub(super) fn of_org(column: &str, org: &str) -> String {
    format!(
        "({column} = {org} \
         OR {column} IN (SELECT id FROM users WHERE org_id = {org}) \
         OR {column} IN (SELECT id FROM teams WHERE org_id = {org}) \
         OR {column} IN (SELECT id FROM api_keys WHERE \
             user_id IN (SELECT id FROM users WHERE org_id = {org}) \
             OR team_id IN (SELECT id FROM teams WHERE org_id = {org})))"
    )
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
