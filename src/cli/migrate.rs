//! `tollgate migrate`: apply pending schema migrations, then exit. `serve` migrates on
//! start as well; this is for deployments that run migrations as a separate step (a
//! Kubernetes Job or init container) with its own credentials.

use super::output::emit;
use super::{load_config, CliError};
use crate::app;
use crate::config::redact_url;
use crate::store::sql::SqlStore;
use crate::store::Store;
use anyhow::Context;
use clap::Args;
use sqlx::Row;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The configuration file [default: ./tollgate.yaml, else the embedded default]
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The migrations recorded as applied (version, description). A database that was never
/// migrated has no bookkeeping table yet, which reads as none applied.
async fn applied(store: &SqlStore) -> Vec<(i64, String)> {
    let rows = sqlx::query("SELECT version, description FROM _sqlx_migrations ORDER BY version")
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
    rows.iter()
        .filter_map(|row| {
            Some((
                row.try_get::<i64, _>(0).ok()?,
                row.try_get::<String, _>(1).ok()?,
            ))
        })
        .collect()
}

pub async fn run(args: MigrateArgs) -> Result<(), CliError> {
    let (loaded, source) = load_config(args.config.as_deref())?;
    let config = loaded.config;
    let database = redact_url(&config.database.url);
    let store = app::open_store(&config).await?;
    let before = applied(&store).await;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate {database}"))?;
    let after = applied(&store).await;
    store.close().await;

    let new: Vec<&(i64, String)> = after.iter().filter(|m| !before.contains(m)).collect();
    let mut report = format!("database: {database} (config: {source})\n");
    if new.is_empty() {
        report.push_str(&format!(
            "up to date: {} migration(s) already applied",
            after.len()
        ));
    } else {
        report.push_str(&format!("applied {} migration(s):", new.len()));
        for (version, description) in new {
            report.push_str(&format!("\n  {version:04} {description}"));
        }
    }
    emit(&report);
    Ok(())
}
