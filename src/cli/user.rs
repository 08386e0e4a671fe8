//! `tollgate user …`: users through `/admin/users`.

use super::args::{parse_bool, set, Body, Clearable, JsonObject, LimitArgs};
use super::client::{Api, ApiArgs};
use super::lookup;
use super::output::{self, print, Cell, Column};
use super::CliError;
use crate::domain::{Role, TeamRole};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::BufRead;

#[derive(Debug, Args)]
pub struct UserCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: UserAction,
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Create a user.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// admin, manager, user, viewer, org_admin, or a custom role's name (`tollgate role list`)
        #[arg(long, default_value = "user")]
        role: Role,
        /// Full name
        #[arg(long)]
        full_name: Option<String>,
        /// Password for logging in (prefer --password-stdin: arguments are visible to
        /// other local users)
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        limits: LimitArgs,
        /// Free-form JSON object kept with the user
        #[arg(long, value_name = "JSON")]
        metadata: Option<JsonObject>,
        /// The org the user belongs to (fixed once created)
        #[arg(long = "org", value_name = "ORG_ID")]
        org_id: Option<String>,
    },
    /// List users.
    List,
    /// Show one user.
    Get {
        /// The user's id
        id: String,
    },
    /// Change a user's email, name, role, blocked state, limits, budget or metadata.
    Update {
        /// The user's id
        id: String,
        #[arg(long)]
        email: Option<String>,
        /// Full name (`none` clears it)
        #[arg(long)]
        full_name: Option<Clearable<String>>,
        /// admin, manager, user, viewer, org_admin, or a custom role's name (`tollgate role list`)
        #[arg(long)]
        role: Option<Role>,
        /// true blocks the user and all their keys; false unblocks
        #[arg(long, value_parser = parse_bool, value_name = "true|false")]
        blocked: Option<bool>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Free-form JSON object kept with the user
        #[arg(long, value_name = "JSON")]
        metadata: Option<JsonObject>,
    },
    /// Delete a user: their team memberships go, their keys are revoked.
    Delete {
        /// The user's id
        id: String,
    },
    /// Lift a lockout after repeated failed logins.
    Unlock {
        /// The user's id
        id: String,
    },
    /// Make a user a member of a team (by hand: group sync never removes it), or change
    /// their role in it.
    AssignTeam {
        /// The user's id, username or email
        user: String,
        /// The team's id or name
        team: String,
        /// owner or member (default: member for a new member; a member's role is kept)
        #[arg(long)]
        role: Option<TeamRole>,
    },
}

const COLUMNS: &[Column] = &[
    ("ID", Cell::Field("id")),
    ("USERNAME", Cell::Field("username")),
    ("EMAIL", Cell::Field("email")),
    ("ROLE", Cell::Field("role")),
    ("RPM", Cell::Field("rpm")),
    ("TPM", Cell::Field("tpm")),
    ("BUDGET", Cell::With(output::budget)),
    ("STATUS", Cell::With(output::standing)),
    ("CREATED", Cell::Field("created_at")),
];

const FIELDS: &[&str] = &[
    "id",
    "username",
    "email",
    "full_name",
    "role",
    "org_id",
    "blocked",
    "rpm",
    "tpm",
    "max_budget",
    "budget_duration",
    "max_parallel",
    "spend",
    "metadata",
    "locked_until",
    "created_at",
    "updated_at",
];

fn show(user: &Value) -> String {
    output::record(user, FIELDS)
}

fn read_password_line() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("cannot read the password: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(CliError::Usage(
            "--password-stdin: standard input is empty".into(),
        ));
    }
    Ok(password)
}

pub async fn run(cmd: UserCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        UserAction::Create {
            username,
            email,
            role,
            full_name,
            password,
            password_stdin,
            limits,
            metadata,
            org_id,
        } => {
            let password = if password_stdin {
                Some(read_password_line()?)
            } else {
                password
            };
            let mut body = Body::new();
            body.insert("username".into(), json!(username));
            body.insert("email".into(), json!(email));
            body.insert("role".into(), json!(role));
            set(&mut body, "full_name", full_name);
            set(&mut body, "password", password);
            set(&mut body, "org_id", org_id);
            limits.write(&mut body);
            set(&mut body, "metadata", metadata);
            let user = api.post(&["admin", "users"], Value::Object(body)).await?;
            print(api.output, &user, show);
        }
        UserAction::List => {
            let users = api.get(&["admin", "users"], &[]).await?;
            print(api.output, &users, |body| output::list_table(body, COLUMNS));
        }
        UserAction::Get { id } => {
            let user = api.get(&["admin", "users", &id], &[]).await?;
            print(api.output, &user, show);
        }
        UserAction::Update {
            id,
            email,
            full_name,
            role,
            blocked,
            limits,
            metadata,
        } => {
            let mut body = Body::new();
            set(&mut body, "email", email);
            set(&mut body, "full_name", full_name);
            set(&mut body, "role", role);
            set(&mut body, "blocked", blocked);
            limits.write(&mut body);
            set(&mut body, "metadata", metadata);
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to update: give at least one field (see `tollgate user update --help`)"
                        .into(),
                ));
            }
            let user = api
                .patch(&["admin", "users", &id], Value::Object(body))
                .await?;
            print(api.output, &user, show);
        }
        UserAction::Delete { id } => {
            let answer = api.delete(&["admin", "users", &id]).await?;
            print(api.output, &answer, |_| format!("deleted user {id}"));
        }
        UserAction::AssignTeam { user, team, role } => {
            assign_team(&api, &user, &team, role).await?
        }
        UserAction::Unlock { id } => {
            let user = api
                .post(&["admin", "users", &id, "unlock"], json!({}))
                .await?;
            print(api.output, &user, show);
        }
    }
    Ok(())
}

/// `user assign-team`: adds the membership, or changes its role, through
/// `POST /admin/teams/{id}/members`. A membership that already is what was asked for (and
/// was granted by hand) is left alone and said so; one that came from a group becomes a
/// manual one, so that the group sync no longer removes it.
async fn assign_team(
    api: &Api,
    user: &str,
    team: &str,
    role: Option<TeamRole>,
) -> Result<(), CliError> {
    let team = lookup::team(api, team).await?;
    let user = lookup::user(api, user).await?;
    let team_id = team["id"].as_str().unwrap_or_default().to_owned();
    let team_name = output::text(team.get("name"));
    let current = team["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["user_id"] == user.id.as_str()))
        .cloned();
    let role_of = |m: &Value| m["role"].as_str().unwrap_or_default().to_owned();
    let (membership, said) = match &current {
        Some(m) if m["source"] == "manual" && role.is_none_or(|r| r.as_str() == role_of(m)) => {
            let said = format!(
                "user {} already is {} of team {team_name} (nothing changed)",
                user.label,
                a_role(&role_of(m))
            );
            (m.clone(), said)
        }
        _ => {
            let wanted = role.map_or_else(
                || current.as_ref().map_or("member".to_owned(), role_of),
                |r| r.as_str().to_owned(),
            );
            let membership = api
                .post(
                    &["admin", "teams", &team_id, "members"],
                    json!({ "user_id": user.id, "role": wanted }),
                )
                .await?;
            let now = a_role(&role_of(&membership));
            let said = match &current {
                None => format!("user {} is now {now} of team {team_name}", user.label),
                Some(m) if role_of(m) != role_of(&membership) => format!(
                    "user {} was {} of team {team_name}; now {now}",
                    user.label,
                    a_role(&role_of(m))
                ),
                Some(_) => format!(
                    "user {} is {now} of team {team_name}, now granted by hand (it came from a group)",
                    user.label
                ),
            };
            (membership, said)
        }
    };
    print(api.output, &membership, |_| said);
    Ok(())
}

fn a_role(role: &str) -> &'static str {
    match role {
        "owner" => "an owner",
        _ => "a member",
    }
}
