//! `tollgate team …`: teams and their members through `/admin/teams`.

use super::args::{parse_bool, set, Body, Clearable, CommaList, JsonObject, LimitArgs};
use super::client::{Api, ApiArgs};
use super::lookup;
use super::output::{self, print, Cell, Column};
use super::CliError;
use crate::domain::{BudgetDuration, TeamRole};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct TeamCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: TeamAction,
}

#[derive(Debug, Subcommand)]
enum TeamAction {
    /// Create a team.
    Create {
        #[arg(long)]
        name: String,
        /// Models the team's keys may use, comma-separated (empty: no restriction)
        #[arg(long, value_name = "A,B")]
        models: Option<CommaList>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Free-form JSON object kept with the team
        #[arg(long, value_name = "JSON")]
        metadata: Option<JsonObject>,
    },
    /// List teams.
    List,
    /// Show one team and its members.
    Get {
        /// The team's id
        id: String,
    },
    /// Change a team's name, models, blocked state, limits, budget or metadata.
    Update {
        /// The team's id
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Models the team's keys may use, comma-separated (empty: no restriction)
        #[arg(long, value_name = "A,B")]
        models: Option<CommaList>,
        /// true blocks the team and all its keys; false unblocks
        #[arg(long, value_parser = parse_bool, value_name = "true|false")]
        blocked: Option<bool>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Free-form JSON object kept with the team
        #[arg(long, value_name = "JSON")]
        metadata: Option<JsonObject>,
    },
    /// Set or clear a team's budget (USD per period).
    SetBudget {
        /// The team's id or name
        team: String,
        /// Budget in USD per period (`none`: no budget, and no period)
        #[arg(long, value_name = "USD")]
        max_budget: Clearable<f64>,
        /// Budget period: 1d, 7d, 30d or 1mo (`none`: the budget never resets; left out:
        /// the team's period stays as it is)
        #[arg(long, value_name = "PERIOD")]
        budget_duration: Option<Clearable<BudgetDuration>>,
    },
    /// Delete a team: its memberships go, its keys are revoked.
    Delete {
        /// The team's id
        id: String,
    },
    /// Add a user to a team, or change their role in it.
    AddMember {
        /// The team's id
        team_id: String,
        /// The user to add
        #[arg(long = "user", value_name = "USER_ID")]
        user_id: String,
        /// owner or member
        #[arg(long, default_value = "member")]
        role: TeamRole,
    },
    /// Remove a user from a team.
    RemoveMember {
        /// The team's id
        team_id: String,
        /// The user's id
        user_id: String,
    },
}

const COLUMNS: &[Column] = &[
    ("ID", Cell::Field("id")),
    ("NAME", Cell::Field("name")),
    ("MODELS", Cell::Field("models")),
    ("RPM", Cell::Field("rpm")),
    ("TPM", Cell::Field("tpm")),
    ("BUDGET", Cell::With(output::budget)),
    ("STATUS", Cell::With(output::standing)),
    ("CREATED", Cell::Field("created_at")),
];

const FIELDS: &[&str] = &[
    "id",
    "name",
    "models",
    "blocked",
    "rpm",
    "tpm",
    "max_budget",
    "budget_duration",
    "spend",
    "metadata",
    "created_at",
    "updated_at",
];

const MEMBER_COLUMNS: &[Column] = &[
    ("USER", Cell::Field("user_id")),
    ("ROLE", Cell::Field("role")),
    ("SOURCE", Cell::Field("source")),
    ("SINCE", Cell::Field("created_at")),
];

/// The team's fields, then its members (when the answer has them) as a table.
fn show(team: &Value) -> String {
    let mut record = team.clone();
    let members = record.as_object_mut().and_then(|m| m.remove("members"));
    let mut out = output::record(&record, FIELDS);
    if let Some(Value::Array(members)) = members {
        out.push('\n');
        if members.is_empty() {
            out.push_str("no members\n");
        } else {
            out.push_str(&format!("members ({}):\n", members.len()));
            out.push_str(&output::rows_table(&members, MEMBER_COLUMNS));
        }
    }
    out
}

/// The PATCH body of `set-budget`. Clearing the budget clears its period too: a period
/// without a budget limits nothing, and would come back unnoticed with the next budget.
fn budget_body(
    max_budget: Clearable<f64>,
    budget_duration: Option<Clearable<BudgetDuration>>,
) -> Result<Value, CliError> {
    match (&max_budget, &budget_duration) {
        (Clearable::Set(usd), _) if !usd.is_finite() || *usd < 0.0 => Err(CliError::Usage(
            format!("--max-budget {usd}: a budget is a number of USD, 0 or more (or `none`)"),
        )),
        (Clearable::Clear, Some(Clearable::Set(_))) => Err(CliError::Usage(
            "--max-budget none clears the budget and its period; --budget-duration needs a budget"
                .into(),
        )),
        (Clearable::Clear, _) => Ok(json!({ "max_budget": null, "budget_duration": null })),
        (Clearable::Set(_), _) => {
            let mut body = Body::new();
            set(&mut body, "max_budget", Some(&max_budget));
            set(&mut body, "budget_duration", budget_duration.as_ref());
            Ok(Value::Object(body))
        }
    }
}

/// `team platform (ID): budget 100.00 USD per 1mo`, or `… : no budget`.
fn budget_line(team: &Value) -> String {
    let name = output::text(team.get("name"));
    let id = output::text(team.get("id"));
    match team.get("max_budget").and_then(Value::as_f64) {
        None => format!("team {name} ({id}): no budget"),
        Some(usd) => {
            let period = match team.get("budget_duration").and_then(Value::as_str) {
                Some(period) => format!("per {period}"),
                None => "in total (no period)".to_owned(),
            };
            format!("team {name} ({id}): budget {usd:.2} USD {period}")
        }
    }
}

pub async fn run(cmd: TeamCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        TeamAction::Create {
            name,
            models,
            limits,
            metadata,
        } => {
            let mut body = Body::new();
            body.insert("name".into(), json!(name));
            set(&mut body, "models", models);
            limits.write(&mut body);
            set(&mut body, "metadata", metadata);
            let team = api.post(&["admin", "teams"], Value::Object(body)).await?;
            print(api.output, &team, show);
        }
        TeamAction::List => {
            let teams = api.get(&["admin", "teams"], &[]).await?;
            print(api.output, &teams, |body| output::list_table(body, COLUMNS));
        }
        TeamAction::Get { id } => {
            let team = api.get(&["admin", "teams", &id], &[]).await?;
            print(api.output, &team, show);
        }
        TeamAction::Update {
            id,
            name,
            models,
            blocked,
            limits,
            metadata,
        } => {
            let mut body = Body::new();
            set(&mut body, "name", name);
            set(&mut body, "models", models);
            set(&mut body, "blocked", blocked);
            limits.write(&mut body);
            set(&mut body, "metadata", metadata);
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to update: give at least one field (see `tollgate team update --help`)"
                        .into(),
                ));
            }
            let team = api
                .patch(&["admin", "teams", &id], Value::Object(body))
                .await?;
            print(api.output, &team, show);
        }
        TeamAction::SetBudget {
            team,
            max_budget,
            budget_duration,
        } => {
            let body = budget_body(max_budget, budget_duration)?;
            let id = lookup::team(&api, &team).await?["id"]
                .as_str()
                .unwrap_or(&team)
                .to_owned();
            let updated = api.patch(&["admin", "teams", &id], body).await?;
            print(api.output, &updated, budget_line);
        }
        TeamAction::Delete { id } => {
            let answer = api.delete(&["admin", "teams", &id]).await?;
            print(api.output, &answer, |_| format!("deleted team {id}"));
        }
        TeamAction::AddMember {
            team_id,
            user_id,
            role,
        } => {
            let membership = api
                .post(
                    &["admin", "teams", &team_id, "members"],
                    json!({ "user_id": user_id, "role": role }),
                )
                .await?;
            print(api.output, &membership, |m| {
                format!(
                    "user {user_id} is now {} of team {team_id}",
                    match output::text(m.get("role")).as_str() {
                        "owner" => "an owner",
                        _ => "a member",
                    }
                )
            });
        }
        TeamAction::RemoveMember { team_id, user_id } => {
            let answer = api
                .delete(&["admin", "teams", &team_id, "members", &user_id])
                .await?;
            print(api.output, &answer, |_| {
                format!("removed user {user_id} from team {team_id}")
            });
        }
    }
    Ok(())
}
