//! Custom roles end to end: `/admin/roles` (docs/DESIGN.md, "Custom roles"), users holding
//! them, their keys narrowed to them, what they may do on the HTTP API, and Check through a
//! real Envoy answering by the role's permissions as they are now, without a restart.

mod common;

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::post_json;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate::mock_llm::MockLlm;

const SECRET: &str = "custom-roles-secret-0123456789-0123456789-abc";
const PASSWORD: &str = "Correct-Horse-42";

/// Sessions on (people log in), and one route of the configuration's own.
fn config() -> String {
    format!(
        "auth:\n  session: {{ secret: {SECRET} }}\n  login: {{ per_address_per_minute: 1000, per_account_per_minute: 1000 }}\nroutes:\n  /v1/rerank: {{ permission: rerank, model_required: true }}\n"
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

async fn admin(
    t: &Tollgate,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    t.admin(method, path, body).await
}

/// Creates a user with a password and logs them in: `(id, access token)`.
async fn person(t: &Tollgate, username: &str, role: &str) -> (String, String) {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "role": role,
        "password": PASSWORD,
    });
    let (status, user) = admin(t, Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let login = json!({"username": username, "password": PASSWORD});
    let (status, tokens) = t.call(Method::POST, "/v1/login", None, Some(login)).await;
    assert_eq!(status, StatusCode::OK, "login {username}: {tokens}");
    (
        user["id"].as_str().unwrap().to_owned(),
        tokens["access_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn admins_create_list_change_and_delete_custom_roles() {
    let t = Tollgate::start(&config()).await;

    let body = json!({"name": "analyst", "permissions": ["usage:read", "chat", "chat"]});
    let (status, made) = admin(&t, Method::POST, "/admin/roles", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["name"], "analyst");
    assert_eq!(
        made["permissions"],
        json!(["usage:read", "chat"]),
        "repeats dropped"
    );
    assert_eq!(made["built_in"], false);
    assert!(made["created_at"].is_string(), "{made}");
    // A permission of a route the configuration defines is a custom role's to have.
    let body = json!({"name": "reranker", "permissions": ["rerank"]});
    let (status, made) = admin(&t, Method::POST, "/admin/roles", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");

    // The list: built-in roles first (with their fixed permissions), then custom ones.
    let (status, listed) = admin(&t, Method::GET, "/admin/roles", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "admin",
            "manager",
            "user",
            "viewer",
            "org_admin",
            "analyst",
            "reranker"
        ]
    );
    assert_eq!(
        listed["data"][3]["permissions"],
        json!(["models:read", "usage:read"])
    );
    assert_eq!(listed["data"][3]["built_in"], true);
    let (status, one) = admin(&t, Method::GET, "/admin/roles/analyst", None).await;
    assert_eq!((status, &one["name"]), (StatusCode::OK, &json!("analyst")));
    let (status, one) = admin(&t, Method::GET, "/admin/roles/user", None).await;
    assert_eq!((status, &one["built_in"]), (StatusCode::OK, &json!(true)));
    let (status, body) = admin(&t, Method::GET, "/admin/roles/nobody", None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));

    // Refused: duplicates and built-in names (409), bad names and permissions (400).
    let cases = [
        (
            json!({"name": "analyst"}),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            json!({"name": "viewer"}),
            StatusCode::CONFLICT,
            "built-in role",
        ),
        (
            json!({"name": "org_admin"}),
            StatusCode::CONFLICT,
            "built-in role",
        ),
        (
            json!({"name": "Data Team"}),
            StatusCode::BAD_REQUEST,
            "is not a role name",
        ),
        (
            json!({"name": "x".repeat(65)}),
            StatusCode::BAD_REQUEST,
            "is not a role name",
        ),
        (
            json!({"name": "boss", "permissions": ["admin"]}),
            StatusCode::BAD_REQUEST,
            "cannot have `admin`",
        ),
        (
            json!({"name": "odd", "permissions": ["teleport"]}),
            StatusCode::BAD_REQUEST,
            "`teleport` is not a permission",
        ),
        (
            json!({"name": "odd", "permissions": ["keys:write"]}),
            StatusCode::BAD_REQUEST,
            "`keys:write` is not a permission",
        ),
        (
            json!({"name": "odd", "permissions": "chat"}),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            json!({"name": "odd", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "",
        ),
    ];
    for (body, want, says) in cases {
        let (status, answer) = admin(&t, Method::POST, "/admin/roles", Some(body.clone())).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(message(&answer).contains(says), "{body}: {answer}");
    }

    // PATCH replaces the permissions; it does not rename, nor touch built-in roles.
    let patch = json!({"permissions": ["embeddings"]});
    let (status, changed) = admin(&t, Method::PATCH, "/admin/roles/analyst", Some(patch)).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["permissions"], json!(["embeddings"]));
    let same_name = json!({"name": "analyst", "permissions": ["chat"]});
    let (status, _) = admin(&t, Method::PATCH, "/admin/roles/analyst", Some(same_name)).await;
    assert_eq!(status, StatusCode::OK);
    let rename = json!({"name": "analysts", "permissions": ["chat"]});
    let (status, body) = admin(&t, Method::PATCH, "/admin/roles/analyst", Some(rename)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("not renamed"), "{body}");
    let patch = json!({"permissions": ["chat"]});
    let (status, body) = admin(
        &t,
        Method::PATCH,
        "/admin/roles/viewer",
        Some(patch.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = admin(&t, Method::PATCH, "/admin/roles/nobody", Some(patch)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let admin_patch = json!({"permissions": ["chat", "admin"]});
    let (status, _) = admin(&t, Method::PATCH, "/admin/roles/analyst", Some(admin_patch)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // DELETE: built-in 409, unknown 404, held 409, else 204.
    let (status, _) = admin(&t, Method::DELETE, "/admin/roles/user", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin(&t, Method::DELETE, "/admin/roles/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let holder = t.create_user("holder", "reranker").await;
    let (status, body) = admin(&t, Method::DELETE, "/admin/roles/reranker", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains("held by 1 user"), "{body}");
    let back = json!({"role": "user"});
    let (status, _) = admin(
        &t,
        Method::PATCH,
        &format!("/admin/users/{holder}"),
        Some(back),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = admin(&t, Method::DELETE, "/admin/roles/reranker", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = admin(&t, Method::GET, "/admin/roles/reranker", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every write is in the audit log, by the master key.
    for (action, count) in [("role.create", 2), ("role.update", 2), ("role.delete", 1)] {
        let (_, events) = admin(
            &t,
            Method::GET,
            &format!("/admin/audit?action={action}"),
            None,
        )
        .await;
        let events = events["data"].as_array().unwrap();
        assert_eq!(events.len(), count, "{action}: {events:?}");
        assert!(events.iter().all(|e| e["actor"] == "master"), "{events:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn only_admins_write_roles_and_readers_read_them() {
    let t = Tollgate::start(&config()).await;
    let (status, _) = admin(
        &t,
        Method::POST,
        "/admin/roles",
        Some(json!({"name": "analyst", "permissions": ["usage:read"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, viewer) = person(&t, "vera", "viewer").await;
    let (_, manager) = person(&t, "max", "manager").await;
    let (_, analyst) = person(&t, "ana", "analyst").await;

    let (status, listed) = t
        .call(Method::GET, "/admin/roles", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    for token in [&viewer, &manager, &analyst] {
        for (method, path, body) in [
            (Method::POST, "/admin/roles", Some(json!({"name": "mine"}))),
            (
                Method::PATCH,
                "/admin/roles/analyst",
                Some(json!({"permissions": ["chat"]})),
            ),
            (Method::DELETE, "/admin/roles/analyst", None),
        ] {
            let (status, answer) = t.call(method.clone(), path, Some(token), body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
            assert_eq!(code(&answer), "forbidden");
        }
    }
    for token in [&manager, &analyst] {
        let (status, _) = t.call(Method::GET, "/admin/roles", Some(token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = t.call(Method::GET, "/admin/roles", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    t.stop().await;
}

#[tokio::test]
async fn users_are_given_custom_roles_and_their_keys_narrow_to_them() {
    let t = Tollgate::start(&config()).await;
    let body = json!({"name": "embedder", "permissions": ["embeddings", "models:read"]});
    let (status, _) = admin(&t, Method::POST, "/admin/roles", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);

    let body = json!({"username": "eve", "email": "eve@example.com", "role": "embedder"});
    let (status, eve) = admin(&t, Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{eve}");
    assert_eq!(eve["role"], "embedder");
    let eve = eve["id"].as_str().unwrap().to_owned();
    let (_, read) = admin(&t, Method::GET, &format!("/admin/users/{eve}"), None).await;
    assert_eq!(read["role"], "embedder");

    // Unknown or malformed role names are 400, on create and on patch.
    for role in ["nosuchrole", "Not A Role"] {
        let body = json!({"username": "x", "email": "x@example.com", "role": role});
        let (status, answer) = admin(&t, Method::POST, "/admin/users", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{role}: {answer}");
        let patch = json!({"role": role});
        let (status, answer) = admin(
            &t,
            Method::PATCH,
            &format!("/admin/users/{eve}"),
            Some(patch),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{role}: {answer}");
    }
    let (status, answer) = admin(
        &t,
        Method::POST,
        "/admin/users",
        Some(json!({"username": "x", "email": "x@example.com", "role": "nosuchrole"})),
    )
    .await;
    assert!(
        message(&answer).contains("unknown role `nosuchrole`"),
        "{status} {answer}"
    );

    // A key of eve's can only narrow her role's permissions.
    let body = json!({"name": "k", "user_id": eve, "permissions": ["chat"]});
    let (status, answer) = admin(&t, Method::POST, "/admin/keys", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(message(&answer).contains("role `embedder`"), "{answer}");
    let body = json!({"name": "k", "user_id": eve, "permissions": ["embeddings"]});
    let (status, answer) = admin(&t, Method::POST, "/admin/keys", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    // A patch gives another user the role.
    let bob = t.create_user("bob", "user").await;
    let patch = json!({"role": "embedder"});
    let (status, bob_now) = admin(
        &t,
        Method::PATCH,
        &format!("/admin/users/{bob}"),
        Some(patch),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bob_now}");
    assert_eq!(bob_now["role"], "embedder");
    let (_, events) = admin(&t, Method::GET, "/admin/audit?action=user.update", None).await;
    assert_eq!(events["data"][0]["details"]["role"], "embedder", "{events}");
    t.stop().await;
}

#[tokio::test]
async fn a_custom_role_acts_like_a_user_on_the_api_and_reads_usage_only_with_usage_read() {
    let t = Tollgate::start(&config()).await;
    for (name, permissions) in [
        ("analyst", json!(["chat", "usage:read"])),
        ("chatter", json!(["chat"])),
    ] {
        let body = json!({"name": name, "permissions": permissions});
        let (status, _) = admin(&t, Method::POST, "/admin/roles", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (analyst_id, analyst) = person(&t, "ana", "analyst").await;
    let (_, chatter) = person(&t, "cal", "chatter").await;

    // Both manage their own keys, as a `user` does, within their role.
    for (token, who) in [(&analyst, "ana"), (&chatter, "cal")] {
        let body = json!({"name": format!("{who}'s key")});
        let (status, key) = t
            .call(Method::POST, "/v1/user/keys", Some(token), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{who}: {key}");
        let (status, _) = t
            .call(Method::GET, "/v1/user/keys", Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let body = json!({"name": "wide", "permissions": ["embeddings"]});
    let (status, _) = t
        .call(Method::POST, "/v1/user/keys", Some(&analyst), Some(body))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a key cannot exceed its owner's role"
    );

    // `usage:read` reads every usage report and budget; without it, no more than a user.
    for path in ["/admin/usage?group_by=user", "/admin/budgets"] {
        let (status, body) = t.call(Method::GET, path, Some(&analyst), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let (status, body) = t.call(Method::GET, path, Some(&chatter), None).await;
        if path == "/admin/usage?group_by=user" {
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert!(message(&body).contains("the role `chatter`"), "{body}");
        } else {
            // Budgets answer every caller with what is theirs: a user sees only themselves.
            assert_eq!(status, StatusCode::OK);
        }
    }
    // Someone else's budget: the analyst reads it, the chatter does not.
    let body = json!({"username": "bud", "email": "bud@example.com", "max_budget": 10.0});
    let (status, bud) = admin(&t, Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{bud}");
    let names = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .map(|b| b["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (_, all) = t
        .call(Method::GET, "/admin/budgets", Some(&analyst), None)
        .await;
    assert!(names(&all).contains(&"bud".to_owned()), "{all}");
    let (_, mine) = t
        .call(Method::GET, "/admin/budgets", Some(&chatter), None)
        .await;
    assert!(!names(&mine).contains(&"bud".to_owned()), "{mine}");

    // Nothing beyond that: no users, teams, audit log, and no promoting themselves.
    for (method, path, body) in [
        (Method::GET, "/admin/users".to_owned(), None),
        (Method::GET, "/admin/audit".to_owned(), None),
        (Method::GET, "/admin/alerts".to_owned(), None),
        (
            Method::POST,
            "/admin/teams".to_owned(),
            Some(json!({"name": "t"})),
        ),
        (
            Method::PATCH,
            format!("/admin/users/{analyst_id}"),
            Some(json!({"role": "admin"})),
        ),
    ] {
        let (status, answer) = t.call(method.clone(), &path, Some(&analyst), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }
    // Their own record, with their role.
    let (status, me) = t
        .call(
            Method::GET,
            &format!("/admin/users/{analyst_id}"),
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!((status, &me["role"]), (StatusCode::OK, &json!("analyst")));
    t.stop().await;
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
}

fn embed() -> Value {
    json!({"model": "text-embedding-3-small", "input": "hello"})
}

/// Check through a real Envoy: a custom role's key (and its holder's login token) may call
/// what the role permits and gets 403 otherwise; the role's new permissions apply to the
/// next request, with no restart, and the verify-permission endpoint answers the same.
#[tokio::test]
async fn check_follows_a_custom_roles_permissions_as_they_change() {
    let t = Tollgate::start(&config()).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await;

    let body = json!({"name": "embedder", "permissions": ["embeddings"]});
    let (status, _) = admin(&t, Method::POST, "/admin/roles", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (user, token) = person(&t, "eve", "embedder").await;
    let (_, key) = t
        .create_key(json!({"name": "eve's", "user_id": user}))
        .await;

    let call = |path: &'static str, body: Value, credential: String| {
        let envoy = &envoy;
        async move {
            let auth = format!("Bearer {credential}");
            let (status, _, body) =
                post_json(envoy, path, &[("authorization", &auth)], &body).await;
            (status, body)
        }
    };
    let verify = |permission: &'static str, credential: String| {
        let t = &t;
        async move {
            let (status, body) = t
                .call(
                    Method::POST,
                    "/v1/auth/verify-permission",
                    Some(&credential),
                    Some(json!({"permission": permission})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["allowed"].as_bool().unwrap()
        }
    };

    for credential in [key.clone(), token.clone()] {
        let (status, body) = call("/v1/embeddings", embed(), credential.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call("/v1/chat/completions", chat(), credential.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "permission_denied", "{body}");
        assert!(verify("embeddings", credential.clone()).await);
        assert!(!verify("chat", credential.clone()).await);
    }
    // Warm: both credentials are cached now. The role changes; the next request follows.
    let patch = json!({"permissions": ["chat"]});
    let (status, _) = admin(&t, Method::PATCH, "/admin/roles/embedder", Some(patch)).await;
    assert_eq!(status, StatusCode::OK);
    for credential in [key.clone(), token.clone()] {
        let (status, body) = call("/v1/chat/completions", chat(), credential.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call("/v1/embeddings", embed(), credential.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(message(&body).contains("embeddings"), "{body}");
        assert!(verify("chat", credential.clone()).await);
        assert!(!verify("embeddings", credential.clone()).await);
    }
    // A key that lists a permission the role no longer has is narrowed to the role.
    let (_, chat_key) = t
        .create_key(json!({"name": "chat only", "user_id": user, "permissions": ["chat"]}))
        .await;
    let patch = json!({"permissions": ["embeddings"]});
    let (status, _) = admin(&t, Method::PATCH, "/admin/roles/embedder", Some(patch)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call("/v1/chat/completions", chat(), chat_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    drop(envoy);
    t.stop().await;
}
