//! The admin writes that change a decision, each as the one HTTP call that makes it: the
//! invalidation suites make them on one replica and wait for another to refuse.

use reqwest::Method;
use serde_json::{json, Value};

/// The call that makes `change` on the key `key_id` of `user` in `team`: method, path, body.
pub fn admin_call(
    change: &str,
    key_id: &str,
    user: &str,
    team: &str,
) -> (Method, String, Option<Value>) {
    let key = format!("/admin/keys/{key_id}");
    let user = format!("/admin/users/{user}");
    let team = format!("/admin/teams/{team}");
    match change {
        "revoke key" => (Method::DELETE, key, None),
        "block key" => (Method::POST, format!("{key}/block"), None),
        "unblock key" => (Method::POST, format!("{key}/unblock"), None),
        "rotate key" => (
            Method::POST,
            format!("{key}/rotate"),
            Some(json!({"grace_seconds": 0})),
        ),
        "key budget" => (Method::PATCH, key, Some(json!({"max_budget": 0.0}))),
        "key models" => (Method::PATCH, key, Some(json!({"models": ["gpt-4o-mini"]}))),
        "key rpm" => (Method::PATCH, key, Some(json!({"rpm": 1}))),
        "block user" => (Method::PATCH, user, Some(json!({"blocked": true}))),
        "user role" => (Method::PATCH, user, Some(json!({"role": "viewer"}))),
        "delete user" => (Method::DELETE, user, None),
        "block team" => (Method::PATCH, team, Some(json!({"blocked": true}))),
        "team budget" => (Method::PATCH, team, Some(json!({"max_budget": 0.0}))),
        other => panic!("no admin write named {other}"),
    }
}
