//! `tollgate usage report`: usage grouped by key, user, team, model or day, through
//! `/admin/usage`, as a table, JSON or CSV.

use super::args::PastTime;
use super::client::{Api, ApiArgs};
use super::output::{self, emit};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GroupBy {
    Key,
    User,
    Team,
    Model,
    Day,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
enum UsageAction {
    /// Requests, tokens and cost per group, with a total.
    Report {
        /// What to group by
        #[arg(long, value_enum, default_value_t = GroupBy::Model)]
        by: GroupBy,
        /// Not before: RFC 3339, a date, or a duration ago like 24h
        #[arg(long, value_name = "TIME")]
        since: Option<PastTime>,
        /// Not after (inclusive): RFC 3339, a date, or a duration ago like 1h
        #[arg(long, value_name = "TIME")]
        until: Option<PastTime>,
        /// Only this user's usage
        #[arg(long)]
        user: Option<String>,
        /// Only this key's usage
        #[arg(long)]
        key: Option<String>,
        /// Only this team's usage
        #[arg(long)]
        team: Option<String>,
        /// How to print: a table, the API's JSON, or CSV with a header and a total line
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
}

const FIELDS: [&str; 5] = [
    "group",
    "requests",
    "input_tokens",
    "output_tokens",
    "cost_usd",
];

fn cells(row: &Value) -> Vec<String> {
    FIELDS
        .iter()
        .map(|f| match row.get(*f) {
            Some(Value::String(s)) if s.is_empty() => "(none)".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        })
        .collect()
}

fn rows(report: &Value) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = report["data"]
        .as_array()
        .map(|rows| rows.iter().map(cells).collect())
        .unwrap_or_default();
    let mut total = cells(&report["total"]);
    total[0] = "TOTAL".to_owned();
    out.push(total);
    out
}

/// One CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(report: &Value) -> String {
    let mut out = FIELDS.join(",");
    for row in rows(report) {
        out.push('\n');
        out.push_str(
            &row.iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    out
}

pub async fn run(cmd: UsageCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        UsageAction::Report {
            by,
            since,
            until,
            user,
            key,
            team,
            format,
        } => {
            let by = by
                .to_possible_value()
                .expect("no variant is skipped")
                .get_name()
                .to_owned();
            let query: Vec<(&str, String)> = [
                ("group_by", Some(by)),
                ("since", since.map(|t| t.0)),
                ("until", until.map(|t| t.0)),
                ("user_id", user),
                ("key_id", key),
                ("team_id", team),
            ]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
            let report = api.get(&["admin", "usage"], &query).await?;
            let format = format.unwrap_or(match api.output {
                output::Output::Json => Format::Json,
                output::Output::Table => Format::Table,
            });
            match format {
                Format::Json => emit(&output::json(&report)),
                Format::Csv => emit(&csv(&report)),
                Format::Table => {
                    let headers = ["GROUP", "REQUESTS", "INPUT", "OUTPUT", "COST USD"];
                    emit(output::table(&headers, &rows(&report)).trim_end_matches('\n'));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_has_a_header_rows_and_a_total() {
        let report = json!({
            "data": [
                {"group": "gpt-4o", "requests": 2, "input_tokens": 10, "output_tokens": 4, "cost_usd": 0.5},
                {"group": "", "requests": 1, "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.25},
                {"group": "a,\"b\"", "requests": 1, "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.0},
            ],
            "total": {"requests": 4, "input_tokens": 12, "output_tokens": 6, "cost_usd": 0.75}
        });
        assert_eq!(
            csv(&report),
            "group,requests,input_tokens,output_tokens,cost_usd\n\
             gpt-4o,2,10,4,0.5\n\
             (none),1,1,1,0.25\n\
             \"a,\"\"b\"\"\",1,1,1,0.0\n\
             TOTAL,4,12,6,0.75"
        );
    }
}
