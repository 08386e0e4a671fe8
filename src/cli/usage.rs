//! `tollgate usage report`: requests, tokens and spend through `/admin/usage`.

use super::args::PastTime;
use super::client::{Api, ApiArgs};
use super::output::{self, print};
use super::CliError;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct UsageCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: UsageAction,
}

#[derive(Debug, Subcommand)]
enum UsageAction {
    /// Totals per key, user, team, model or day.
    Report {
        /// What to total by
        #[arg(long, value_enum, default_value_t = GroupBy::Model)]
        group_by: GroupBy,
        /// Not before: RFC 3339, a date, or a duration ago like 7d
        #[arg(long, value_name = "TIME")]
        since: Option<PastTime>,
        /// Not after: RFC 3339, a date, or a duration ago like 1h
        #[arg(long, value_name = "TIME")]
        until: Option<PastTime>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GroupBy {
    Key,
    User,
    Team,
    Model,
    Day,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

fn row(group: String, item: &Value) -> Vec<String> {
    let number = |field: &str| output::text(item.get(field));
    let cost = item
        .get("cost_usd")
        .and_then(Value::as_f64)
        .map(|c| format!("{c:.4}"))
        .unwrap_or_else(|| "-".into());
    vec![
        group,
        number("requests"),
        number("input_tokens"),
        number("output_tokens"),
        cost,
    ]
}

fn render(body: &Value, group_by: GroupBy) -> String {
    let mut rows: Vec<Vec<String>> = body
        .get("data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| row(output::text(item.get("group")), item))
        .collect();
    if let Some(total) = body.get("total") {
        rows.push(row("TOTAL".into(), total));
    }
    output::table(
        &[
            &group_by.as_str().to_uppercase(),
            "REQUESTS",
            "INPUT_TOKENS",
            "OUTPUT_TOKENS",
            "COST_USD",
        ],
        &rows,
    )
}

pub async fn run(cmd: UsageCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        UsageAction::Report {
            group_by,
            since,
            until,
        } => {
            let mut query = vec![("group_by", group_by.as_str().to_owned())];
            if let Some(since) = since {
                query.push(("since", since.0));
            }
            if let Some(until) = until {
                query.push(("until", until.0));
            }
            let report = api.get(&["admin", "usage"], &query).await?;
            print(api.output, &report, |body| render(body, group_by));
        }
    }
    Ok(())
}
