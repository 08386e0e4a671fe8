//! `tollgate serve`: load and validate the configuration, settle the master key, build the
//! app (store connected and migrated, a `rediss://` Redis' certificate verified) before
//! binding any port, then serve until SIGINT or SIGTERM and drain (docs/DESIGN.md, "Live,
//! ready, drain"): readiness 503 at once, Check and ext_proc served while requests keep
//! arriving, then the listeners close, in-flight streams finish and the usage queue is
//! written out before the process exits 0.

use super::output::boxed;
use super::{load_config, CliError};
use crate::app::{self, App, MasterKeySource};
use crate::config::redact_url;
use crate::secret::Secret;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file [default: ./tollgate.yaml, else the embedded default]
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let (loaded, source) = load_config(args.config.as_deref())?;
    tracing::info!(config.source = %source, "configuration loaded");
    for var in &loaded.unset_vars {
        tracing::warn!(
            config.var = %var,
            "${{{var}}} is not set; it expands to an empty value"
        );
    }
    let config = loaded.config;

    let (master_key, key_source) =
        app::resolve_master_key(&config, std::env::var("TOLLGATE_MASTER_KEY").ok());
    match &key_source {
        MasterKeySource::Config => tracing::info!("master key: from the configuration file"),
        MasterKeySource::Environment => tracing::info!("master key: from TOLLGATE_MASTER_KEY"),
        MasterKeySource::Generated(secret) => announce_generated(secret),
    }

    let database = redact_url(&config.database.url);
    let app = App::build(config, &master_key).await?;
    // Only the hash lives on in the app.
    drop((master_key, key_source));
    // Listened for before the ports are bound: a SIGTERM as soon as /healthz answers
    // drains, rather than ending the process at once.
    let signal = shutdown_signal();
    let mut running = app.start().await?;
    tracing::info!(
        grpc.addr = %running.grpc_addr,
        http.addr = %running.http_addr,
        database = %database,
        "tollgate is serving: gRPC on {}, HTTP on {}, database {}",
        running.grpc_addr,
        running.http_addr,
        database
    );

    let lifecycle = running.lifecycle();
    tokio::spawn(async move {
        match signal {
            Ok(signal) => {
                let signal = signal.await;
                tracing::info!(signal, "shutting down gracefully")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for shutdown signals; shutting down")
            }
        }
        // /readyz answers 503 from here on.
        lifecycle.drain();
    });
    // Returns when a signal asks to stop (then drain: serve while requests keep arriving,
    // then stop), or when a listener fails (then stop at once).
    match running.wait().await {
        Ok(()) => running.drain().await?,
        Err(e) => {
            let _ = running.shutdown().await;
            return Err(e.into());
        }
    }
    tracing::info!("tollgate stopped");
    Ok(())
}

/// Prints a generated master key once, on stdout and never through tracing, so it does not
/// end up in a log pipeline.
fn announce_generated(secret: &Secret) {
    let text = boxed(&[
        "No master key configured; generated one for this run:".to_owned(),
        String::new(),
        format!("    {}", secret.expose()),
        String::new(),
        "Set TOLLGATE_MASTER_KEY to keep one across restarts.".to_owned(),
    ]);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    tracing::warn!("no master key configured: generated one for this run (printed on stdout)");
}

/// Listens for SIGINT (Ctrl-C) and, on Unix, SIGTERM (what Kubernetes sends); the future
/// answers the name of the first that comes.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C; shutting down");
            }
            "Ctrl-C"
        })
    }
}
