//! `tollgate config check`: parse and validate a configuration file without starting
//! anything, for CI and for editing a deployment's config safely.

use super::output::emit;
use super::{load_config, CliError};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a configuration file; print `ok: FILE` or the error with its
    /// line and key (exit 64).
    #[command(after_help = super::EXIT_CODES_HELP)]
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file [default: ./tollgate.yaml]
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        conflicts_with = "file"
    )]
    config: Option<PathBuf>,
    /// The configuration file (same as -c)
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

pub fn run(cmd: ConfigCommand) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Check(args) => {
            let path = args.config.or(args.file);
            let (loaded, source) = load_config(path.as_deref())?;
            // Warnings go to stderr so `ok: FILE` stays the only line on stdout.
            for var in &loaded.unset_vars {
                eprintln!("warning: {source}: ${{{var}}} is not set; it expands to an empty value");
            }
            emit(&format!("ok: {source}"));
            Ok(())
        }
    }
}
