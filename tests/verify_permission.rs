//! `POST /v1/auth/verify-permission` of a real tollgate: the master key, keys narrowed by
//! permissions, models and their team's models, a blocked and a revoked key, a person's
//! login token by role, the model catalogue, missing and wrong credentials, and bodies that
//! are not `{permission, model?}`; and a key's decisions against what Check decides.

mod common;

use common::check::{answer as check_answer, request};
use common::tollgate::{Tollgate, MASTER_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CONFIG: &str = "auth:\n  session: { secret: \"0123456789abcdef0123456789abcdef-verify\" }\n\
models:\n  - name: gpt-4o-mini\n  - name: gpt-4o\n  - name: text-embedding-3-small\n";

async fn verify(t: &Tollgate, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    t.call(
        Method::POST,
        "/v1/auth/verify-permission",
        token,
        Some(body),
    )
    .await
}

/// Asserts a 200 decision, and that its reason says `says`.
async fn decided(t: &Tollgate, token: &str, body: Value, allowed: bool, says: &str) {
    let (status, answer) = verify(t, Some(token), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}: {answer}");
    assert_eq!(answer["allowed"], allowed, "{body}: {answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(
        reason.contains(says),
        "{body}: {reason:?} should say {says:?}"
    );
}

#[tokio::test]
async fn decisions_follow_check() {
    let t = Tollgate::start(CONFIG).await;

    // A key narrowed to chat on one model, owned by a user.
    let ann = t.create_user("ann", "user").await;
    let (_, chat_only) = t
        .create_key(json!({"name": "chat-only", "user_id": ann, "permissions": ["chat"], "models": ["gpt-4o-mini"]}))
        .await;
    // A team whose model list narrows its keys.
    let (_, team) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "embedders", "models": ["text-embedding-3-small"]})),
        )
        .await;
    let (_, team_key) = t
        .create_key(json!({"name": "team-key", "team_id": team["id"]}))
        .await;
    // A blocked key: a decision (permission denied), not a refused credential.
    let (blocked_id, blocked) = t.create_key(json!({"name": "blocked"})).await;
    t.admin(
        Method::PATCH,
        &format!("/admin/keys/{blocked_id}"),
        Some(json!({"blocked": true})),
    )
    .await;
    // A person's login token acts with their role.
    let body = json!({"username": "vera", "email": "vera@example.com", "role": "viewer", "password": "Correct-Horse-9"});
    let (status, _) = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, login) = t
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": "vera", "password": "Correct-Horse-9"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let viewer = login["access_token"].as_str().unwrap().to_owned();

    let not_allowed_model = "not allowed to use the model";
    let cases: [(&str, Value, bool, &str); 14] = [
        (MASTER_KEY, json!({"permission": "admin"}), true, "allowed"),
        (
            MASTER_KEY,
            json!({"permission": "chat", "model": "gpt-4o"}),
            true,
            "allowed",
        ),
        (&chat_only, json!({"permission": "chat"}), true, "allowed"),
        (
            &chat_only,
            json!({"permission": "chat", "model": "gpt-4o-mini"}),
            true,
            "allowed",
        ),
        (
            &chat_only,
            json!({"permission": "chat", "model": "gpt-4o"}),
            false,
            "not allowed to use the model `gpt-4o`",
        ),
        (
            &chat_only,
            json!({"permission": "embeddings"}),
            false,
            "lacks the `embeddings` permission",
        ),
        (
            &chat_only,
            json!({"permission": "chat", "model": "llama-3"}),
            false,
            "not available on this gateway",
        ),
        (
            &team_key,
            json!({"permission": "embeddings", "model": "text-embedding-3-small"}),
            true,
            "allowed",
        ),
        (
            &team_key,
            json!({"permission": "chat", "model": "gpt-4o-mini"}),
            false,
            not_allowed_model,
        ),
        (&blocked, json!({"permission": "chat"}), false, "blocked"),
        (
            &viewer,
            json!({"permission": "models:read"}),
            true,
            "allowed",
        ),
        (
            &viewer,
            json!({"permission": "chat"}),
            false,
            "The role `viewer` lacks the `chat` permission",
        ),
        (
            &viewer,
            json!({"permission": "usage:read", "model": "gpt-4o"}),
            true,
            "allowed",
        ),
        // A null model is no model, as when it is left out.
        (
            &chat_only,
            json!({"permission": "chat", "model": null}),
            true,
            "allowed",
        ),
    ];
    for (token, body, allowed, says) in cases {
        decided(&t, token, body, allowed, says).await;
    }

    // A revoked key is a refused credential.
    let (revoked_id, revoked) = t.create_key(json!({"name": "revoked"})).await;
    t.admin(Method::DELETE, &format!("/admin/keys/{revoked_id}"), None)
        .await;
    let (status, answer) = verify(&t, Some(&revoked), json!({"permission": "chat"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));

    // What Check decides for the same key and models.
    for (model, allowed) in [("gpt-4o", false), ("gpt-4o-mini", true)] {
        let auth = format!("Bearer {chat_only}");
        let body = json!({"model": model, "messages": []}).to_string();
        let response = t
            .app
            .gate
            .check(&request(
                &[("authorization", &auth)],
                "/v1/chat/completions",
                &body,
            ))
            .await
            .unwrap();
        assert_eq!(
            check_answer(response).status == 200,
            allowed,
            "Check on {model}"
        );
    }
}

#[tokio::test]
async fn credentials_and_bodies_are_checked() {
    let t = Tollgate::start(CONFIG).await;
    let (status, answer) = verify(&t, None, json!({"permission": "chat"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, _) = verify(
        &t,
        Some("sk-tg-not-a-real-key-0000000000000000000000"),
        json!({"permission": "chat"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = verify(
        &t,
        Some("eyJhbGciOiJub25lIn0.e30.x"),
        json!({"permission": "chat"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    for (body, says) in [
        (json!({}), "permission"),
        (json!({"permission": ""}), "permission"),
        (json!({"permission": "x".repeat(257)}), "permission"),
        (json!({"permission": "chat", "model": ""}), "model"),
        (json!({"permission": 5}), "permission"),
        (json!({"permission": "chat", "extra": true}), "extra"),
        (json!(["chat"]), "object"),
        (json!({"permission": "chat' OR 1=1 --"}), ""),
    ] {
        let (status, answer) = verify(&t, Some(MASTER_KEY), body.clone()).await;
        if says.is_empty() {
            // Any text is a permission name: the master key has them all.
            assert_eq!(status, StatusCode::OK, "{body}: {answer}");
            continue;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
}
