//! The admin HTTP API over a real listener: authentication on every route, validation,
//! unknown ids, audit trail.

mod common;

use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every admin route, with a body that would be valid for it.
fn admin_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/admin/keys", None),
        (Method::POST, "/admin/keys", Some(json!({"name": "x"}))),
        (
            Method::POST,
            "/admin/keys/bulk",
            Some(json!({"keys": [{"name": "x"}]})),
        ),
        (Method::GET, "/admin/keys/ID", None),
        (Method::PATCH, "/admin/keys/ID", Some(json!({"name": "y"}))),
        (Method::DELETE, "/admin/keys/ID", None),
        (Method::POST, "/admin/keys/ID/rotate", Some(json!({}))),
        (Method::POST, "/admin/keys/ID/block", None),
        (Method::POST, "/admin/keys/ID/unblock", None),
        (Method::GET, "/admin/users", None),
        (
            Method::POST,
            "/admin/users",
            Some(json!({"username": "u", "email": "u@example.com", "role": "user"})),
        ),
        (Method::GET, "/admin/users/ID", None),
        (
            Method::PATCH,
            "/admin/users/ID",
            Some(json!({"role": "viewer"})),
        ),
        (Method::DELETE, "/admin/users/ID", None),
        (Method::GET, "/admin/teams", None),
        (Method::POST, "/admin/teams", Some(json!({"name": "t"}))),
        (Method::GET, "/admin/teams/ID", None),
        (Method::PATCH, "/admin/teams/ID", Some(json!({"rpm": 5}))),
        (Method::DELETE, "/admin/teams/ID", None),
        (
            Method::POST,
            "/admin/teams/ID/members",
            Some(json!({"user_id": "u", "role": "member"})),
        ),
        (Method::DELETE, "/admin/teams/ID/members/UID", None),
        (Method::GET, "/admin/orgs", None),
        (Method::POST, "/admin/orgs", Some(json!({"name": "o"}))),
        (Method::GET, "/admin/orgs/ID", None),
        (Method::PATCH, "/admin/orgs/ID", Some(json!({"rpm": 5}))),
        (Method::DELETE, "/admin/orgs/ID", None),
        (Method::GET, "/admin/audit", None),
    ]
}

#[tokio::test]
async fn every_admin_route_needs_an_admin() {
    let t = Tollgate::start("").await;
    let user = t.create_user("bob", "user").await;
    let (_, user_key) = t
        .create_key(json!({"name": "bob's", "user_id": user}))
        .await;
    let (_, service_key) = t.create_key(json!({"name": "svc"})).await;
    let (_, admin_key) = t
        .create_key(json!({"name": "ops", "permissions": ["admin"]}))
        .await;
    let (revoked_id, revoked_admin) = t
        .create_key(json!({"name": "old", "permissions": ["admin"]}))
        .await;
    t.admin(Method::DELETE, &format!("/admin/keys/{revoked_id}"), None)
        .await;

    for (method, path, body) in admin_routes() {
        let (status, err) = t.call(method.clone(), path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a credential: {err}"
        );
        assert_eq!(err["error"]["code"], "unauthorized");

        let (status, _) = t
            .call(method.clone(), path, Some("sk-tg-garbage"), body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with garbage"
        );

        let (status, _) = t
            .call(method.clone(), path, Some(&revoked_admin), body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a revoked admin key"
        );

        for key in [&user_key, &service_key] {
            let (status, err) = t.call(method.clone(), path, Some(key), body.clone()).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} with a non-admin key: {err}"
            );
            assert_eq!(err["error"]["code"], "forbidden");
        }

        // An admin key gets past authentication (unknown ids then give 404, not 401/403).
        let (status, err) = t
            .call(method.clone(), path, Some(&admin_key), body.clone())
            .await;
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status),
            "{method} {path} with an admin key: {status} {err}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let t = Tollgate::start("").await;
    for (method, path, body) in admin_routes() {
        if !path.contains("ID") {
            continue;
        }
        let (status, err) = t.admin(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], "not_found");
        assert!(err["error"]["message"].as_str().unwrap().len() > 5);
    }
    let (status, err) = t.admin(Method::GET, "/admin/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    t.stop().await;
}

#[tokio::test]
async fn validation_errors_are_400_with_a_clear_message() {
    let t = Tollgate::start("").await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/admin/keys", json!({}), "name"),
        ("/admin/keys", json!({"name": ""}), "name"),
        ("/admin/keys", json!({"name": "k", "rpm": -1}), "rpm"),
        (
            "/admin/keys",
            json!({"name": "k", "max_budget": -5.0}),
            "max_budget",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "budget_duration": "2w"}),
            "budget_duration",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "expires_at": "next tuesday"}),
            "next tuesday",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "models": ["has space"]}),
            "models",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "metadata": [1]}),
            "metadata",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "user_id": "nobody"}),
            "nobody",
        ),
        (
            "/admin/keys",
            json!({"name": "k", "colour": "red"}),
            "colour",
        ),
        (
            "/admin/users",
            json!({"username": "u", "email": "not-an-email", "role": "user"}),
            "email",
        ),
        (
            "/admin/users",
            json!({"username": "u", "email": "u@example.com", "role": "emperor"}),
            "emperor",
        ),
        (
            "/admin/users",
            json!({"username": "u", "email": "u@example.com", "password": "short"}),
            "password",
        ),
        ("/admin/teams", json!({"name": "   "}), "name"),
    ];
    for (path, body, mentions) in cases {
        let (status, err) = t.admin(Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{path} {body}: message {message:?} should mention {mentions}"
        );
    }

    // Malformed JSON, and an oversized body.
    let raw = common::upstream::client()
        .post(format!("http://{}/admin/keys", t.http))
        .bearer_auth(common::tollgate::MASTER_KEY)
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let huge = json!({"name": "k", "metadata": {"blob": "x".repeat(400 * 1024)}});
    let (status, err) = t.admin(Method::POST, "/admin/keys", Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");

    // Duplicates are conflicts.
    let (status, _) = t
        .admin(Method::POST, "/admin/teams", Some(json!({"name": "dup"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, err) = t
        .admin(Method::POST, "/admin/teams", Some(json!({"name": "dup"})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    t.stop().await;
}

/// Sends `body` byte for byte (no re-encoding) as `token`; answers the status and JSON.
async fn raw(
    t: &Tollgate,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut request = common::upstream::client()
        .request(method, format!("http://{}{path}", t.http))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn json_bodies_with_trailing_data_are_400() {
    const PASSWORD: &str = "Correct-Horse-42";
    let t = Tollgate::start(
        "auth:\n  session: { secret: trailing-secret-0123456789-0123456789-abcd }\n  allow_registration: true\n",
    )
    .await;
    let master = Some(common::tollgate::MASTER_KEY);
    let (key_id, _) = t.create_key(json!({"name": "k"})).await;
    let user = json!({"username": "ann", "email": "ann@example.com", "password": PASSWORD});
    let (status, body) = t.admin(Method::POST, "/admin/users", Some(user)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": "ann", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let key_path = format!("/admin/keys/{key_id}");
    let rotate_path = format!("/admin/keys/{key_id}/rotate");
    let login = format!(r#"{{"username":"ann","password":"{PASSWORD}"}}"#);

    // (method, path, credential, a valid body): each is sent with text after it.
    let routes: Vec<(Method, &str, Option<&str>, String)> = vec![
        (
            Method::POST,
            "/admin/teams",
            master,
            r#"{"name":"x"}"#.into(),
        ),
        (
            Method::POST,
            "/admin/users",
            master,
            r#"{"username":"u","email":"u@example.com"}"#.into(),
        ),
        (
            Method::POST,
            "/admin/keys",
            master,
            r#"{"name":"x"}"#.into(),
        ),
        (Method::PATCH, &key_path, master, r#"{"name":"y"}"#.into()),
        (Method::POST, &rotate_path, master, "{}".into()),
        (Method::POST, "/v1/login", None, login.clone()),
        (
            Method::POST,
            "/v1/register",
            None,
            format!(r#"{{"username":"reg","email":"reg@example.com","password":"{PASSWORD}"}}"#),
        ),
        (
            Method::PUT,
            "/v1/user/profile",
            Some(&access),
            r#"{"full_name":"Ann"}"#.into(),
        ),
        (
            Method::POST,
            "/v1/user/keys",
            Some(&access),
            r#"{"name":"x"}"#.into(),
        ),
    ];
    for (method, path, token, body) in &routes {
        for tail in [" trailing", r#" {"name":"second"}"#, "\n]", "x", "0"] {
            let sent = format!("{body}{tail}");
            let (status, err) = raw(&t, method.clone(), path, *token, &sent).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{method} {path} {sent}: {err}"
            );
            assert_eq!(err["error"]["code"], "invalid_request", "{err}");
            let message = err["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("trailing characters"),
                "{method} {path} {sent}: {message}"
            );
        }
    }
    // Nothing was written by the refused bodies.
    let (_, teams) = t.admin(Method::GET, "/admin/teams", None).await;
    assert_eq!(teams["data"], json!([]), "{teams}");
    let (_, users) = t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(users["data"].as_array().unwrap().len(), 1, "{users}");
    let (_, key) = t.admin(Method::GET, &key_path, None).await;
    assert_eq!(key["name"], "k", "{key}");

    // Whitespace after the value is not data: accepted.
    for (method, path, token, body) in &routes {
        let sent = format!("{body} \r\n\t ");
        let (status, answer) = raw(&t, method.clone(), path, *token, &sent).await;
        assert!(
            status.is_success(),
            "{method} {path} {sent:?}: {status} {answer}"
        );
    }
    // An empty body still reads as `{}`.
    let (status, answer) = raw(&t, Method::POST, &rotate_path, master, " \n").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    t.stop().await;
}

#[tokio::test]
async fn keys_users_teams_round_trip_and_are_audited() {
    let t = Tollgate::start("").await;
    let user = t.create_user("carol", "manager").await;
    let (status, team) = t.admin(Method::POST, "/admin/teams", Some(json!({"name": "ml", "models": ["gpt-4o"], "max_budget": 100.0, "budget_duration": "1mo"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let team_id = team["id"].as_str().unwrap();
    assert_eq!(team["budget_duration"], "1mo");

    let (status, m) = t
        .admin(
            Method::POST,
            &format!("/admin/teams/{team_id}/members"),
            Some(json!({"user_id": user, "role": "owner"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    let (_, got) = t
        .admin(Method::GET, &format!("/admin/teams/{team_id}"), None)
        .await;
    assert_eq!(got["members"][0]["user_id"], user.as_str());
    assert_eq!(got["members"][0]["role"], "owner");

    let (status, created) = t
        .admin(Method::POST, "/admin/keys", Some(json!({"name": "ml-key", "team_id": team_id, "rpm": 10, "metadata": {"env": "prod"}})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("sk-tg-") && secret.len() == 55);
    let id = created["id"].as_str().unwrap();
    let (_, got) = t
        .admin(Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    assert!(got.get("key").is_none(), "the plaintext is shown only once");
    assert_eq!(got["rpm"], 10);
    assert!(got["created_at"].as_str().unwrap().ends_with('Z'));

    let (_, patched) = t
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{id}"),
            Some(json!({"rpm": null, "name": "renamed"})),
        )
        .await;
    assert_eq!(patched["rpm"], Value::Null);
    assert_eq!(patched["name"], "renamed");

    let (_, listed) = t
        .admin(Method::GET, &format!("/admin/keys?team_id={team_id}"), None)
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let (status, _) = t
        .admin(
            Method::DELETE,
            &format!("/admin/teams/{team_id}/members/{user}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (_, audit) = t
        .admin(Method::GET, "/admin/audit?actor=master", None)
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "user.create",
        "team.create",
        "team.member.add",
        "key.create",
        "key.update",
        "team.member.remove",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let text = audit.to_string();
    assert!(!text.contains(secret), "no secret in the audit log");
    let (_, filtered) = t
        .admin(
            Method::GET,
            &format!("/admin/audit?action=key.create&target={id}"),
            None,
        )
        .await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);
    let (status, err) = t
        .admin(Method::GET, "/admin/audit?since=yesterday", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    t.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let t = Tollgate::start("").await;
    let (status, _) = t.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = t.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["paths"]["/admin/keys"].is_object(), "{body}");
    let (status, text) = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text
        .as_str()
        .unwrap()
        .contains("tollgate_check_duration_seconds"));
    t.stop().await;
}
