//! Fresh, migrated stores for the integration tests: a SQLite file in a temporary directory,
//! or a uniquely named schema in the Postgres database named by `TOLLGATE_TEST_POSTGRES`.
//!
//! Postgres is required, not optional: when it cannot be reached the tests fail and say how
//! to start it, so a run that silently covered only SQLite cannot pass for a full one.
//!
//! [`store_suite!`](crate::store_suite) turns one `async fn name(store: SharedStore)` into a
//! test per backend.

use sqlx::{Connection, Executor, PgConnection};
use tollgate::store::sql::{redact_url, ConnectOptions, SqlStore};
use tollgate::store::Store;

/// The database the Postgres tests use when `TOLLGATE_TEST_POSTGRES` is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const START_POSTGRES: &str =
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// Schemas of earlier runs older than this are dropped when a new one is made.
const STALE_SCHEMA_SECS: i64 = 3600;

/// Pool settings for test stores: small, so that many tests in parallel stay well below
/// Postgres' connection limit.
pub fn test_connect_options() -> ConnectOptions {
    ConnectOptions {
        max_connections: 4,
        ..ConnectOptions::default()
    }
}

/// The Postgres database the tests use (`TOLLGATE_TEST_POSTGRES`, or the local default).
pub fn postgres_base_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string())
}

/// A migrated store on a new SQLite file. Keep the directory alive as long as the store.
pub async fn fresh_sqlite() -> (SqlStore, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    let store = SqlStore::connect(&url, &test_connect_options())
        .await
        .unwrap_or_else(|e| panic!("open SQLite at {url}: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate SQLite at {url}: {e}"));
    (store, dir, url)
}

/// A connection to the test database, or a panic that says how to start Postgres.
pub async fn postgres_admin_connection() -> PgConnection {
    let base = postgres_base_url();
    PgConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!(
            "Postgres at {} is unreachable ({e}); {START_POSTGRES} (or point \
             TOLLGATE_TEST_POSTGRES at a running server)",
            redact_url(&base)
        )
    })
}

/// A migrated store in a new schema of the test database. The returned URL selects that
/// schema through the connection's `search_path`, so every connection of the pool, and any
/// other client given the URL, sees only this test's tables.
pub async fn fresh_postgres() -> (SqlStore, String) {
    let mut admin = postgres_admin_connection().await;
    drop_stale_schemas(&mut admin).await;
    let schema = format!(
        "tg_test_{}_{}",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap_or_else(|e| panic!("create schema {schema}: {e}"));
    let _ = admin.close().await;

    let base = postgres_base_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let store = SqlStore::connect(&url, &test_connect_options())
        .await
        .unwrap_or_else(|e| panic!("open Postgres schema {schema}: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate Postgres schema {schema}: {e}"));
    (store, url)
}

/// Drops the schemas that earlier runs left behind (their names carry their creation time),
/// leaving recent ones alone: they may belong to tests running right now.
async fn drop_stale_schemas(admin: &mut PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tg\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    let cutoff = chrono::Utc::now().timestamp() - STALE_SCHEMA_SECS;
    for name in names {
        let created: Option<i64> = name
            .strip_prefix("tg_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|ts| ts.parse().ok());
        if created.is_some_and(|t| t < cutoff) {
            // Another run may be dropping the same schema; either way it goes.
            let _ = admin
                .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                .await;
        }
    }
}

/// Runs an `async fn name(store: SharedStore)` once on SQLite and once on Postgres, as the
/// tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! store_suite {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let (store, _dir, _url) = $crate::common::db::fresh_sqlite().await;
                    super::$name(::std::sync::Arc::new(store)).await;
                }

                #[tokio::test]
                async fn postgres() {
                    let (store, _url) = $crate::common::db::fresh_postgres().await;
                    super::$name(::std::sync::Arc::new(store)).await;
                }
            }
        )+
    };
}
