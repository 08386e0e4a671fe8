//! `tollgate audit list`: the audit log through `/admin/audit`, newest first.

use super::args::PastTime;
use super::client::{Api, ApiArgs};
use super::output::{self, print, Cell, Column};
use super::CliError;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct AuditCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// List audit events, newest first.
    List {
        /// Who wrote: `master`, `key:<id>` or `user:<id>`
        #[arg(long)]
        actor: Option<String>,
        /// What was done, like `key.create`
        #[arg(long)]
        action: Option<String>,
        /// The id of what was changed
        #[arg(long)]
        target: Option<String>,
        /// Not before: RFC 3339, a date, or a duration ago like 24h
        #[arg(long, value_name = "TIME")]
        since: Option<PastTime>,
        /// Not after: RFC 3339, a date, or a duration ago like 1h
        #[arg(long, value_name = "TIME")]
        until: Option<PastTime>,
        /// At most this many events (1–1000; the server's default is 100)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
    },
}

/// Longest `details` shown in a table cell; `--output json` has them whole.
const DETAILS_WIDTH: usize = 60;

fn details(event: &Value) -> String {
    let text = output::text(event.get("details"));
    if text.chars().count() <= DETAILS_WIDTH {
        return text;
    }
    let mut cut: String = text.chars().take(DETAILS_WIDTH - 1).collect();
    cut.push('…');
    cut
}

const COLUMNS: &[Column] = &[
    ("ID", Cell::Field("id")),
    ("AT", Cell::Field("at")),
    ("ACTOR", Cell::Field("actor")),
    ("ACTION", Cell::Field("action")),
    ("TARGET", Cell::Field("target")),
    ("SOURCE", Cell::Field("source")),
    ("DETAILS", Cell::With(details)),
];

pub async fn run(cmd: AuditCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        AuditAction::List {
            actor,
            action,
            target,
            since,
            until,
            limit,
        } => {
            let query: Vec<(&str, String)> = [
                ("actor", actor),
                ("action", action),
                ("target", target),
                ("since", since.map(|t| t.0)),
                ("until", until.map(|t| t.0)),
                ("limit", limit.map(|n| n.to_string())),
            ]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
            let events = api.get(&["admin", "audit"], &query).await?;
            print(api.output, &events, |body| {
                output::list_table(body, COLUMNS)
            });
        }
    }
    Ok(())
}
