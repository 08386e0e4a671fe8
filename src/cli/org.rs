//! `tollgate org …`: organizations (tenants) through `/admin/orgs`.

use super::args::{set, Body, JsonObject, LimitArgs};
use super::client::{Api, ApiArgs};
use super::output::{self, print, Cell, Column};
use super::CliError;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct OrgCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: OrgAction,
}

#[derive(Debug, Subcommand)]
enum OrgAction {
    /// Create an org.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Free-form JSON object kept with the org
        #[arg(long, value_name = "JSON")]
        metadata: Option<JsonObject>,
    },
    /// List orgs.
    List,
    /// Show one org and its spend.
    Get {
        /// The org's id
        id: String,
    },
    /// Change an org's name, limits, budget or metadata.
    Update {
        /// The org's id
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Free-form JSON object kept with the org
        #[arg(long, value_name = "JSON")]
        metadata: Option<JsonObject>,
    },
    /// Delete an org (refused while it still has teams or users).
    Delete {
        /// The org's id
        id: String,
    },
}

const COLUMNS: &[Column] = &[
    ("ID", Cell::Field("id")),
    ("NAME", Cell::Field("name")),
    ("RPM", Cell::Field("rpm")),
    ("TPM", Cell::Field("tpm")),
    ("PARALLEL", Cell::Field("max_parallel")),
    ("BUDGET", Cell::With(output::budget)),
    ("CREATED", Cell::Field("created_at")),
];

const FIELDS: &[&str] = &[
    "id",
    "name",
    "rpm",
    "tpm",
    "max_parallel",
    "max_budget",
    "budget_duration",
    "spend",
    "metadata",
    "created_at",
    "updated_at",
];

fn show(org: &Value) -> String {
    output::record(org, FIELDS)
}

pub async fn run(cmd: OrgCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        OrgAction::Create {
            name,
            limits,
            metadata,
        } => {
            let mut body = Body::new();
            body.insert("name".into(), json!(name));
            limits.write(&mut body);
            set(&mut body, "metadata", metadata);
            let org = api.post(&["admin", "orgs"], Value::Object(body)).await?;
            print(api.output, &org, show);
        }
        OrgAction::List => {
            let orgs = api.get(&["admin", "orgs"], &[]).await?;
            print(api.output, &orgs, |body| output::list_table(body, COLUMNS));
        }
        OrgAction::Get { id } => {
            let org = api.get(&["admin", "orgs", &id], &[]).await?;
            print(api.output, &org, show);
        }
        OrgAction::Update {
            id,
            name,
            limits,
            metadata,
        } => {
            let mut body = Body::new();
            set(&mut body, "name", name);
            limits.write(&mut body);
            set(&mut body, "metadata", metadata);
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to update: give at least one field (see `tollgate org update --help`)"
                        .into(),
                ));
            }
            let org = api
                .patch(&["admin", "orgs", &id], Value::Object(body))
                .await?;
            print(api.output, &org, show);
        }
        OrgAction::Delete { id } => {
            let answer = api.delete(&["admin", "orgs", &id]).await?;
            print(api.output, &answer, |_| format!("deleted org {id}"));
        }
    }
    Ok(())
}
