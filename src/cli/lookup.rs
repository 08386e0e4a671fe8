//! Naming a team or a user on the command line by id or by name: `platform` as well as the
//! team's id, `bob` or `bob@example.com` as well as the user's id.
//!
//! The id is tried first (`GET /admin/{teams,users}/{arg}`); when the API knows no such id
//! (404) or does not show it to the caller (403), the list the caller may read is searched
//! for the name. Live team names, usernames and emails are unique, so a name matches at most
//! one record of its kind.

use super::client::Api;
use super::CliError;
use serde_json::Value;

/// A user as named on the command line: the id to send, and how to name them in messages.
pub struct UserRef {
    pub id: String,
    pub label: String,
}

/// True for the API errors that mean "no such id here": try the name instead.
fn unknown_id(e: &CliError) -> bool {
    matches!(
        e,
        CliError::Api {
            status: 404 | 403,
            ..
        }
    )
}

fn data(list: &Value) -> &[Value] {
    list.get("data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The team `arg` (an id or a name) with its members, as `GET /admin/teams/{id}` answers.
pub async fn team(api: &Api, arg: &str) -> Result<Value, CliError> {
    let by_id = match api.get(&["admin", "teams", arg], &[]).await {
        Ok(team) => return Ok(team),
        Err(e) if unknown_id(&e) => e,
        Err(e) => return Err(e),
    };
    let teams = api.get(&["admin", "teams"], &[]).await?;
    let Some(id) = data(&teams)
        .iter()
        .find(|t| t["name"] == arg)
        .and_then(|t| t["id"].as_str())
    else {
        return Err(match by_id {
            CliError::Api {
                status: 404,
                code,
                hint,
                ..
            } => CliError::Api {
                status: 404,
                code,
                message: format!("no team with id or name `{arg}`"),
                hint,
            },
            other => other,
        });
    };
    api.get(&["admin", "teams", id], &[]).await
}

/// The user `arg`: an id, a username or an email.
///
/// A caller who may not read users (a team owner whose role is `user`) cannot look names
/// up: what they give is sent as the id, and the API answers for it.
pub async fn user(api: &Api, arg: &str) -> Result<UserRef, CliError> {
    let by_id = match api.get(&["admin", "users", arg], &[]).await {
        Ok(user) => {
            return Ok(UserRef {
                id: user["id"].as_str().unwrap_or(arg).to_owned(),
                label: user["username"].as_str().unwrap_or(arg).to_owned(),
            })
        }
        Err(e) if unknown_id(&e) => e,
        Err(e) => return Err(e),
    };
    let as_given = UserRef {
        id: arg.to_owned(),
        label: arg.to_owned(),
    };
    let users = match api.get(&["admin", "users"], &[]).await {
        Ok(users) => users,
        Err(CliError::Api { status: 403, .. }) => return Ok(as_given),
        Err(e) => return Err(e),
    };
    // A username first: an OIDC user's username may be another user's email.
    let found = data(&users)
        .iter()
        .find(|u| u["username"] == arg)
        .or_else(|| data(&users).iter().find(|u| u["email"] == arg));
    match (found, by_id) {
        (Some(user), _) => Ok(UserRef {
            id: user["id"].as_str().unwrap_or(arg).to_owned(),
            label: user["username"].as_str().unwrap_or(arg).to_owned(),
        }),
        (
            None,
            CliError::Api {
                status: 404,
                code,
                hint,
                ..
            },
        ) => Err(CliError::Api {
            status: 404,
            code,
            message: format!("no user with id, username or email `{arg}`"),
            hint,
        }),
        (None, _) => Ok(as_given),
    }
}
