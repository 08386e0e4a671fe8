//! `tollgate key …`: virtual API keys through `/admin/keys`.

use super::args::{set, Body, Clearable, CommaList, FutureTime, JsonObject, LimitArgs};
use super::client::{Api, ApiArgs};
use super::output::{self, print, Cell, Column};
use super::CliError;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct KeyCommand {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: KeyAction,
}

#[derive(Debug, Subcommand)]
enum KeyAction {
    /// Create a key for a user or a team, or many from a file; secrets are printed this once.
    Create(CreateArgs),
    /// List keys (revoked ones only with --include-revoked).
    List {
        /// Only the keys of this user
        #[arg(long, value_name = "USER_ID")]
        user: Option<String>,
        /// Only the keys of this team
        #[arg(long, value_name = "TEAM_ID")]
        team: Option<String>,
        /// Also list revoked keys
        #[arg(long)]
        include_revoked: bool,
    },
    /// Show one key.
    Get {
        /// The key's id
        id: String,
    },
    /// Change a key's name, permissions, models, limits, budget, expiry or metadata.
    Update {
        /// The key's id
        id: String,
        /// New name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: KeyFields,
    },
    /// Block a key: it is refused (403) until unblocked.
    Block {
        /// The key's id
        id: String,
    },
    /// Unblock a key.
    Unblock {
        /// The key's id
        id: String,
    },
    /// Replace a key's secret; the old one keeps working for the grace period.
    Rotate {
        /// The key's id
        id: String,
        /// How long the old secret keeps working, like 60s or 1h [default: 0]
        #[arg(long, value_parser = super::args::parse_grace, conflicts_with = "grace_seconds")]
        grace: Option<u64>,
        /// The grace period in seconds
        #[arg(long, value_name = "N")]
        grace_seconds: Option<u64>,
    },
    /// Revoke a key for good (it stays listed with --include-revoked).
    Revoke {
        /// The key's id
        id: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// A name to recognise the key by
    #[arg(long, required_unless_present = "from_file")]
    name: Option<String>,
    /// Create every key of a file instead: JSON lines, each a body of `POST /admin/keys`
    /// (`{"name":"ci","team_id":"…","models":["gpt-4o"]}`); `-` reads standard input. Sent
    /// 1,000 keys per request to `POST /admin/keys/bulk`, each request all or nothing
    #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "user", "team"])]
    from_file: Option<PathBuf>,
    /// The user that owns the key
    #[arg(long, value_name = "USER_ID")]
    user: Option<String>,
    /// The team that owns the key
    #[arg(long, value_name = "TEAM_ID")]
    team: Option<String>,
    #[command(flatten)]
    fields: KeyFields,
}

/// What `create` and `update` share.
#[derive(Debug, Args)]
struct KeyFields {
    /// Models the key may use, comma-separated (empty: as its owner)
    #[arg(long, value_name = "A,B")]
    models: Option<CommaList>,
    /// Permissions, comma-separated: chat, completions, embeddings, models:read, admin, …
    /// (empty: as its owner)
    #[arg(long, value_name = "P,Q")]
    permissions: Option<CommaList>,
    #[command(flatten)]
    limits: LimitArgs,
    /// When the key stops working: RFC 3339, a date, or a duration from now like 30d
    /// (`none`: never)
    #[arg(long, value_name = "TIME")]
    expires_at: Option<Clearable<FutureTime>>,
    /// Free-form JSON object kept with the key
    #[arg(long, value_name = "JSON")]
    metadata: Option<JsonObject>,
}

impl KeyFields {
    fn write(&self, body: &mut Body) {
        set(body, "models", self.models.as_ref());
        set(body, "permissions", self.permissions.as_ref());
        self.limits.write(body);
        set(body, "expires_at", self.expires_at.as_ref());
        set(body, "metadata", self.metadata.as_ref());
    }
}

const COLUMNS: &[Column] = &[
    ("ID", Cell::Field("id")),
    ("NAME", Cell::Field("name")),
    ("KEY", Cell::Field("key_hint")),
    ("OWNER", Cell::With(owner)),
    ("MODELS", Cell::Field("models")),
    ("RPM", Cell::Field("rpm")),
    ("TPM", Cell::Field("tpm")),
    ("BUDGET", Cell::With(output::budget)),
    ("EXPIRES", Cell::Field("expires_at")),
    ("STATUS", Cell::With(status)),
];

const FIELDS: &[&str] = &[
    "id",
    "name",
    "key_hint",
    "user_id",
    "team_id",
    "permissions",
    "models",
    "rpm",
    "tpm",
    "max_budget",
    "budget_duration",
    "max_parallel",
    "spend",
    "expires_at",
    "blocked",
    "metadata",
    "created_at",
    "updated_at",
    "revoked_at",
    "previous_expires_at",
];

fn owner(key: &Value) -> String {
    match (key.get("user_id"), key.get("team_id")) {
        (Some(Value::String(user)), _) => format!("user:{user}"),
        (_, Some(Value::String(team))) => format!("team:{team}"),
        _ => "-".into(),
    }
}

/// `revoked`, `blocked`, `expired` or `active`, in that order of precedence.
fn status(key: &Value) -> String {
    let set = |field: &str| key.get(field).is_some_and(|v| !v.is_null());
    if set("revoked_at") {
        return "revoked".into();
    }
    if key.get("blocked").and_then(Value::as_bool) == Some(true) {
        return "blocked".into();
    }
    let expired = key
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|t| crate::domain::rfc3339::parse(t).ok())
        .is_some_and(|at| at <= crate::domain::now());
    if expired {
        "expired".into()
    } else {
        "active".into()
    }
}

fn show(key: &Value) -> String {
    output::record(key, FIELDS)
}

/// The record without its secret, then the secret in a box, last, so it is what the
/// terminal ends on.
fn show_with_secret(body: &Value, headline: &str, footer: &str) -> String {
    let mut record = body.clone();
    let secret = record
        .as_object_mut()
        .and_then(|m| m.remove("key"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut out = show(&record);
    out.push('\n');
    out.push_str(&output::boxed(&[
        headline.to_owned(),
        String::new(),
        format!("    {secret}"),
        String::new(),
        footer.to_owned(),
    ]));
    out
}

pub async fn run(cmd: KeyCommand) -> Result<(), CliError> {
    let api = Api::new(&cmd.api)?;
    match cmd.action {
        KeyAction::Create(args) if args.from_file.is_some() => {
            let mut body = Body::new();
            args.fields.write(&mut body);
            if !body.is_empty() {
                return Err(CliError::Usage(
                    "--from-file takes every field from the file: give no other key fields".into(),
                ));
            }
            let path = args.from_file.expect("checked above");
            create_from_file(&api, &path).await?;
        }
        KeyAction::Create(args) => {
            if args.user.is_some() && args.team.is_some() {
                return Err(CliError::Usage(
                    "a key belongs to a user or to a team: give --user or --team, not both".into(),
                ));
            }
            let mut body = Body::new();
            set(&mut body, "name", args.name);
            set(&mut body, "user_id", args.user);
            set(&mut body, "team_id", args.team);
            args.fields.write(&mut body);
            let created = api.post(&["admin", "keys"], Value::Object(body)).await?;
            print(api.output, &created, |key| {
                show_with_secret(
                    key,
                    "New API key (shown only this once; store it now):",
                    "tollgate keeps only its hash: it cannot be shown again.",
                )
            });
        }
        KeyAction::List {
            user,
            team,
            include_revoked,
        } => {
            let mut query = Vec::new();
            if let Some(user) = user {
                query.push(("user_id", user));
            }
            if let Some(team) = team {
                query.push(("team_id", team));
            }
            if include_revoked {
                query.push(("include_revoked", "true".to_owned()));
            }
            let keys = api.get(&["admin", "keys"], &query).await?;
            print(api.output, &keys, |body| output::list_table(body, COLUMNS));
        }
        KeyAction::Get { id } => {
            let key = api.get(&["admin", "keys", &id], &[]).await?;
            print(api.output, &key, show);
        }
        KeyAction::Update { id, name, fields } => {
            let mut body = Body::new();
            set(&mut body, "name", name);
            fields.write(&mut body);
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to update: give at least one field (see `tollgate key update --help`)"
                        .into(),
                ));
            }
            let key = api
                .patch(&["admin", "keys", &id], Value::Object(body))
                .await?;
            print(api.output, &key, show);
        }
        KeyAction::Block { id } => {
            let key = api
                .post(&["admin", "keys", &id, "block"], json!({}))
                .await?;
            print(api.output, &key, |k| format!("blocked key {}", describe(k)));
        }
        KeyAction::Unblock { id } => {
            let key = api
                .post(&["admin", "keys", &id, "unblock"], json!({}))
                .await?;
            print(api.output, &key, |k| {
                format!("unblocked key {}", describe(k))
            });
        }
        KeyAction::Rotate {
            id,
            grace,
            grace_seconds,
        } => {
            let grace = grace.or(grace_seconds).unwrap_or(0);
            let rotated = api
                .post(
                    &["admin", "keys", &id, "rotate"],
                    json!({ "grace_seconds": grace }),
                )
                .await?;
            print(api.output, &rotated, |key| {
                let footer = match key.get("previous_expires_at").and_then(Value::as_str) {
                    Some(until) => format!("The old secret keeps working until {until}."),
                    None => "The old secret stopped working now.".to_owned(),
                };
                show_with_secret(
                    key,
                    "Rotated: the new secret (shown only this once):",
                    &footer,
                )
            });
        }
        KeyAction::Revoke { id } => {
            let key = api.delete(&["admin", "keys", &id]).await?;
            print(api.output, &key, |k| {
                if k.is_null() {
                    format!("revoked key {id}")
                } else {
                    format!("revoked key {}", describe(k))
                }
            });
        }
    }
    Ok(())
}

/// Keys per `POST /admin/keys/bulk` (the API's most).
const BULK: usize = 1_000;

/// The key bodies of a JSON lines file (or standard input for `-`), with their line
/// numbers; blank lines are skipped. Anything but a JSON object on a line is a usage error.
fn read_key_lines(path: &Path) -> Result<Vec<(usize, Value)>, CliError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(body @ Value::Object(_)) => keys.push((i + 1, body)),
            Ok(_) => {
                return Err(CliError::Usage(format!(
                    "{}:{}: each line must be a JSON object (a body of POST /admin/keys)",
                    path.display(),
                    i + 1
                )))
            }
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "{}:{}: not JSON: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    if keys.is_empty() {
        return Err(CliError::Usage(format!("{} holds no keys", path.display())));
    }
    Ok(keys)
}

/// `tollgate key create --from-file`: the file's keys, [`BULK`] per request. Each request
/// is all or nothing; when one is refused, the keys of the requests before it exist, so
/// they (and their secrets) are printed before the error, which names the file's line.
async fn create_from_file(api: &Api, path: &Path) -> Result<(), CliError> {
    let lines = read_key_lines(path)?;
    let mut created: Vec<Value> = Vec::with_capacity(lines.len());
    let mut failure = None;
    for batch in lines.chunks(BULK) {
        let keys: Vec<&Value> = batch.iter().map(|(_, body)| body).collect();
        match api
            .post(&["admin", "keys", "bulk"], json!({ "keys": keys }))
            .await
        {
            Ok(answer) => created.extend(
                answer
                    .get("data")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            ),
            Err(e) => {
                failure = Some(at_line(e, path, batch, created.len()));
                break;
            }
        }
    }
    if !created.is_empty() || failure.is_none() {
        let count = created.len();
        print(api.output, &json!({ "data": created }), |body| {
            let mut out = output::list_table(body, SECRET_COLUMNS);
            out.push('\n');
            out.push_str(&output::boxed(&[format!(
                "{count} new API keys (KEY is shown only this once; store it now)."
            )]));
            out
        });
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A refusal of a bulk request, with the `keys[i]` it names turned into the file's line;
/// `created` keys of earlier requests exist.
fn at_line(e: CliError, path: &Path, batch: &[(usize, Value)], created: usize) -> CliError {
    let CliError::Api {
        status,
        code,
        message,
        hint,
    } = e
    else {
        return e;
    };
    let line = message
        .split_once("keys[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .and_then(|(index, _)| index.parse::<usize>().ok())
        .and_then(|index| batch.get(index))
        .map(|(line, _)| line);
    let first = batch.first().map_or(0, |(line, _)| *line);
    let message = match line {
        Some(line) => format!("{}:{line}: {message}", path.display()),
        None => format!(
            "{} (the keys from line {first} on): {message}",
            path.display()
        ),
    };
    let hint = match created {
        0 => hint,
        n => format!(
            "{hint}\nhint: nothing from line {first} on was created; the {n} keys before it were (printed above)"
        ),
    };
    CliError::Api {
        status,
        code,
        message,
        hint,
    }
}

/// Keys just created, with their secrets.
const SECRET_COLUMNS: &[Column] = &[
    ("ID", Cell::Field("id")),
    ("NAME", Cell::Field("name")),
    ("OWNER", Cell::With(owner)),
    ("KEY", Cell::Field("key")),
];

/// `ID (name)`, for one-line confirmations.
fn describe(key: &Value) -> String {
    format!(
        "{} ({})",
        output::text(key.get("id")),
        output::text(key.get("name"))
    )
}
