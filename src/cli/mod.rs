//! The `tollgate` command line.
//!
//! `serve`, `migrate` and `config check` work on the configuration file directly; the
//! admin commands (`key`, `user`, `team`, `org`, `role`, `audit`, `usage`) are thin clients of
//! the HTTP API
//! (see [`client`]), so they work the same against a local or a remote tollgate and never
//! touch the database themselves.
//!
//! Every command returns a [`CliError`]; [`CliError::exit_code`] is the one place that maps
//! failures to exit codes (0 ok, 1 API or runtime error, 64 bad usage or configuration).

mod args;
mod audit;
mod check;
mod client;
mod key;
mod lookup;
mod migrate;
mod org;
mod output;
mod role;
mod serve;
mod team;
mod usage;
mod user;

use crate::config::{Config, ConfigError, Loaded};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Exit code of a command that succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code when the API refused a request, or a runtime failure (database, network).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or a bad configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

const EXIT_CODES_HELP: &str = "\
Exit status:
  0   success
  1   the API refused the request, or a runtime error (database, network)
  64  bad usage or a bad configuration file

Environment:
  TOLLGATE_MASTER_KEY  master key for `serve`; token fallback for admin commands
  TOLLGATE_URL         HTTP API of a running tollgate (admin commands)
  TOLLGATE_TOKEN       bearer token for admin commands
  TOLLGATE_LOG         log filter, e.g. `info` or `tollgate=debug` (default: info)
  TOLLGATE_LOG_FORMAT  `json` for JSON log lines (logs go to stderr)";

/// The file `serve`, `migrate` and `config check` read when `-c` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "tollgate.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Envoy ext_authz sidecar for LLM traffic: virtual keys, identities, limits, budgets, usage",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run tollgate: the gRPC ext_authz listener and the HTTP API, until SIGINT/SIGTERM.
    #[command(after_help = EXIT_CODES_HELP)]
    Serve(serve::ServeArgs),
    /// Apply pending database migrations and exit.
    #[command(after_help = EXIT_CODES_HELP)]
    Migrate(migrate::MigrateArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(check::ConfigCommand),
    /// Manage virtual API keys.
    Key(key::KeyCommand),
    /// Manage users.
    User(user::UserCommand),
    /// Manage teams and their members.
    Team(team::TeamCommand),
    /// Manage organizations (tenants).
    Org(org::OrgCommand),
    /// Manage custom roles.
    Role(role::RoleCommand),
    /// Read the audit log of admin writes.
    Audit(audit::AuditCommand),
    /// Usage reports: requests, tokens and cost.
    Usage(usage::UsageCommand),
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Config(cmd) => check::run(cmd),
        Command::Key(cmd) => key::run(cmd).await,
        Command::User(cmd) => user::run(cmd).await,
        Command::Team(cmd) => team::run(cmd).await,
        Command::Org(cmd) => org::run(cmd).await,
        Command::Role(cmd) => role::run(cmd).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Usage(cmd) => usage::run(cmd).await,
    }
}

/// Why a command failed. Printed by `main` as `error: <Display>`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something impossible (checked after clap).
    #[error("{0}")]
    Usage(String),
    /// The configuration file cannot be used; names the file, line and key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The HTTP API answered with an error.
    #[error("{message} ({status} {code}){hint}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// Extra advice on a new line, or empty.
        hint: String,
    },
    /// Anything else: database, network, I/O.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => EXIT_USAGE,
            // A backend that cannot be used as configured (its TLS fails verification).
            CliError::Runtime(e) if e.is::<crate::backend_tls::Misconfigured>() => EXIT_USAGE,
            CliError::Api { .. } | CliError::Runtime(_) => EXIT_FAILURE,
        }
    }
}

/// Where a configuration came from, for messages.
#[derive(Debug, Clone)]
pub(crate) enum ConfigSource {
    File(PathBuf),
    /// No `-c` and no `./tollgate.yaml`: [`Config::default`].
    Embedded,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Embedded => write!(
                f,
                "the embedded default configuration (no -c and no ./{DEFAULT_CONFIG_FILE})"
            ),
        }
    }
}

/// `-c FILE`, else `./tollgate.yaml` when it exists, else the embedded default.
pub(crate) fn load_config(path: Option<&Path>) -> Result<(Loaded, ConfigSource), CliError> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            if !default.exists() {
                let loaded = Loaded {
                    config: Config::default(),
                    unset_vars: Vec::new(),
                };
                return Ok((loaded, ConfigSource::Embedded));
            }
            default
        }
    };
    let loaded = Config::load(&path)?;
    Ok((loaded, ConfigSource::File(path)))
}
