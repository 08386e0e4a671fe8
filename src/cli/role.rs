//! `tollgate role …`: custom roles through `/admin/roles`.

use super::args::CommaList;
use super::client::{Api, ApiArgs};
use super::output::{self, print, Cell, Column};
use super::CliError;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct RoleCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: RoleAction,
}

#[derive(Debug, Subcommand)]
enum RoleAction {
    /// Create a custom role.
    Create {
        /// The role's name: a lowercase letter, then lowercase letters, digits, - or _
        name: String,
        /// Its permissions, comma-separated: LLM route permissions (chat, completions,
        /// embeddings, models:read, and those of configured routes) and usage:read
        #[arg(long, value_name = "A,B", default_value = "")]
        permissions: CommaList,
    },
    /// List the built-in and custom roles.
    List,
    /// Show one role.
    Get {
        /// The role's name
        name: String,
    },
    /// Replace a custom role's permissions (its users have them from their next request).
    Update {
        /// The role's name
        name: String,
        /// The new permissions, comma-separated (empty: none)
        #[arg(long, value_name = "A,B")]
        permissions: CommaList,
    },
    /// Delete a custom role no user holds.
    Delete {
        /// The role's name
        name: String,
    },
}

const COLUMNS: &[Column] = &[
    ("NAME", Cell::Field("name")),
    ("PERMISSIONS", Cell::Field("permissions")),
    ("KIND", Cell::With(kind)),
    ("CREATED", Cell::Field("created_at")),
];

const FIELDS: &[&str] = &[
    "name",
    "permissions",
    "built_in",
    "created_at",
    "updated_at",
];

fn kind(role: &Value) -> String {
    match role.get("built_in") {
        Some(Value::Bool(true)) => "built-in".into(),
        _ => "custom".into(),
    }
}

fn show(role: &Value) -> String {
    output::record(role, FIELDS)
}

pub async fn run(cmd: RoleCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        RoleAction::Create { name, permissions } => {
            let body = json!({ "name": name, "permissions": permissions });
            let role = api.post(&["admin", "roles"], body).await?;
            print(api.output, &role, show);
        }
        RoleAction::List => {
            let roles = api.get(&["admin", "roles"], &[]).await?;
            print(api.output, &roles, |body| output::list_table(body, COLUMNS));
        }
        RoleAction::Get { name } => {
            let role = api.get(&["admin", "roles", &name], &[]).await?;
            print(api.output, &role, show);
        }
        RoleAction::Update { name, permissions } => {
            let body = json!({ "permissions": permissions });
            let role = api.patch(&["admin", "roles", &name], body).await?;
            print(api.output, &role, show);
        }
        RoleAction::Delete { name } => {
            let answer = api.delete(&["admin", "roles", &name]).await?;
            print(api.output, &answer, |_| format!("deleted role {name}"));
        }
    }
    Ok(())
}
