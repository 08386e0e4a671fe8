//! End to end through a real Envoy: client → Envoy (envoy/envoy.yaml) → ext_authz Check on
//! an in-process tollgate → the mock LLM upstream.

mod common;

use common::envoy::Envoy;
use common::tollgate::{Tollgate, MASTER_KEY};
use common::upstream::post_json;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate::mock_llm::MockLlm;

struct Stack {
    tollgate: Tollgate,
    mock: MockLlm,
    envoy: Envoy,
}

/// Which store the tollgate under test uses.
#[derive(Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// Runs a scenario once per store: the same behaviour is owed on SQLite and Postgres.
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Db::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Db::Postgres).await
            }
        }
    )+};
}

on_both_stores!(
    a_valid_key_reaches_the_upstream_with_identity_headers,
    missing_garbage_and_bad_checksum_keys_are_401,
    revoked_blocked_and_expired_keys_are_refused,
    rotation_keeps_the_old_secret_only_for_the_grace_period,
    model_access_is_enforced,
);

async fn stack_on(db: Db) -> Stack {
    match db {
        Db::Sqlite => stack("").await,
        Db::Postgres => {
            let (_, url) = common::db::fresh_postgres().await;
            stack(&format!("database: {{ url: \"{url}\" }}\n")).await
        }
    }
}

async fn stack(yaml: &str) -> Stack {
    let tollgate = Tollgate::start(yaml).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", tollgate.grpc, mock.addr).await;
    Stack {
        tollgate,
        mock,
        envoy,
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

async fn chat_with(
    s: &Stack,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    post_json(&s.envoy, "/v1/chat/completions", headers, body).await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Asserts an OpenAI-shaped error with the given status and code.
fn assert_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want: u16,
    code: &str,
) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(
        body["error"].get("param").is_some_and(Value::is_null),
        "{body}"
    );
    assert_eq!(headers["content-type"], "application/json");
}

async fn a_valid_key_reaches_the_upstream_with_identity_headers(db: Db) {
    let s = stack_on(db).await;
    let user = s.tollgate.create_user("alice", "user").await;
    let (key_id, key) = s
        .tollgate
        .create_key(json!({"name": "ci", "user_id": user, "models": ["gpt-4o-mini"]}))
        .await;

    let (status, _, body) = chat_with(
        &s,
        &[
            ("authorization", &bearer(&key)),
            ("x-tollgate-team-id", "spoofed"),
        ],
        &chat("gpt-4o-mini"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let seen = s.mock.last_request().expect("upstream saw the request");
    assert_eq!(seen.header("x-tollgate-key-id"), Some(key_id.as_str()));
    assert_eq!(seen.header("x-tollgate-user-id"), Some(user.as_str()));
    assert_eq!(seen.header("x-tollgate-model"), Some("gpt-4o-mini"));
    assert_eq!(
        seen.header("x-tollgate-team-id"),
        None,
        "client-sent identity must not pass"
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "the client's key must not go upstream"
    );
    assert!(seen.header("x-request-id").is_some());
    s.tollgate.stop().await;
}

#[tokio::test]
async fn x_api_key_and_api_key_headers_work_and_are_removed() {
    let s = stack("").await;
    let (_, key) = s.tollgate.create_key(json!({"name": "k"})).await;
    for header in ["x-api-key", "api-key"] {
        let (status, _, body) = chat_with(&s, &[(header, &key)], &chat("any-model")).await;
        assert_eq!(status, StatusCode::OK, "{header}: {body}");
        let seen = s.mock.last_request().unwrap();
        assert_eq!(seen.header(header), None, "{header} must not go upstream");
    }
    s.tollgate.stop().await;
}

#[tokio::test]
async fn the_models_provider_key_replaces_the_clients() {
    let s = stack("models:\n  - { name: gpt-4o, upstream_api_key: sk-provider-secret }\n").await;
    let (_, key) = s.tollgate.create_key(json!({"name": "k"})).await;
    let (status, _, body) = chat_with(&s, &[("x-api-key", &key)], &chat("gpt-4o")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = s.mock.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-provider-secret")
    );
    assert_eq!(seen.header("x-api-key"), None);

    // Outside the configured catalogue: refused, even though the key allows any model.
    let (status, headers, body) = chat_with(&s, &[("x-api-key", &key)], &chat("gpt-5")).await;
    assert_error(status, &headers, &body, 403, "model_not_allowed");
    s.tollgate.stop().await;
}

async fn missing_garbage_and_bad_checksum_keys_are_401(db: Db) {
    let s = stack_on(db).await;
    let (_, key) = s.tollgate.create_key(json!({"name": "k"})).await;

    let (status, headers, body) = chat_with(&s, &[], &chat("m")).await;
    assert_error(status, &headers, &body, 401, "invalid_api_key");
    assert_eq!(headers["www-authenticate"], "Bearer");

    let (status, headers, body) =
        chat_with(&s, &[("authorization", "Bearer hunter2")], &chat("m")).await;
    assert_error(status, &headers, &body, 401, "invalid_api_key");

    // Same length and alphabet, one character changed: the checksum fails, and the key is
    // rejected without touching the cache or the store.
    let lookups_before = s
        .tollgate
        .metric("tollgate_cache_requests_total{cache=\"key\",result=\"miss\"}")
        .await;
    let mut tampered: Vec<char> = key.chars().collect();
    tampered[10] = if tampered[10] == 'a' { 'b' } else { 'a' };
    let tampered: String = tampered.into_iter().collect();
    let (status, headers, body) =
        chat_with(&s, &[("authorization", &bearer(&tampered))], &chat("m")).await;
    assert_error(status, &headers, &body, 401, "invalid_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{body}"
    );
    let lookups_after = s
        .tollgate
        .metric("tollgate_cache_requests_total{cache=\"key\",result=\"miss\"}")
        .await;
    assert_eq!(
        lookups_before, lookups_after,
        "a bad checksum must not reach the cache or store"
    );
    assert!(
        s.mock.requests().is_empty(),
        "nothing denied may reach the upstream"
    );
    s.tollgate.stop().await;
}

async fn revoked_blocked_and_expired_keys_are_refused(db: Db) {
    let s = stack_on(db).await;
    let (id, key) = s.tollgate.create_key(json!({"name": "k"})).await;
    let auth = [("authorization", bearer(&key))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(h, v)| (*h, v.as_str())).collect();

    // Warm the cache first: block and revoke must take effect at once all the same.
    let (status, _, _) = chat_with(&s, &auth, &chat("m")).await;
    assert_eq!(status, StatusCode::OK);

    let (code, _) = s
        .tollgate
        .admin(Method::POST, &format!("/admin/keys/{id}/block"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (status, headers, body) = chat_with(&s, &auth, &chat("m")).await;
    assert_error(status, &headers, &body, 403, "permission_denied");

    let (code, _) = s
        .tollgate
        .admin(Method::POST, &format!("/admin/keys/{id}/unblock"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (status, _, _) = chat_with(&s, &auth, &chat("m")).await;
    assert_eq!(status, StatusCode::OK);

    let (code, _) = s
        .tollgate
        .admin(Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (status, headers, body) = chat_with(&s, &auth, &chat("m")).await;
    assert_error(status, &headers, &body, 401, "invalid_api_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));

    // Expiry is checked against the clock on every decision, cached or not.
    let soon = chrono::Utc::now().timestamp() + 2;
    let (_, short) = s
        .tollgate
        .create_key(json!({"name": "short", "expires_at": soon}))
        .await;
    let (status, _, _) = chat_with(&s, &[("x-api-key", &short)], &chat("m")).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, headers, body) = chat_with(&s, &[("x-api-key", &short)], &chat("m")).await;
    assert_error(status, &headers, &body, 401, "invalid_api_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    s.tollgate.stop().await;
}

async fn rotation_keeps_the_old_secret_only_for_the_grace_period(db: Db) {
    let s = stack_on(db).await;
    let (id, old) = s.tollgate.create_key(json!({"name": "k"})).await;
    let (status, _, _) = chat_with(&s, &[("x-api-key", &old)], &chat("m")).await;
    assert_eq!(status, StatusCode::OK);

    let (code, rotated) = s
        .tollgate
        .admin(
            Method::POST,
            &format!("/admin/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 300})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["id"], id.as_str());
    for key in [&old, &new] {
        let (status, _, body) = chat_with(&s, &[("x-api-key", key)], &chat("m")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (_, rotated) = s
        .tollgate
        .admin(Method::POST, &format!("/admin/keys/{id}/rotate"), None)
        .await;
    let newest = rotated["key"].as_str().unwrap().to_owned();
    for key in [&old, &new] {
        let (status, headers, body) = chat_with(&s, &[("x-api-key", key)], &chat("m")).await;
        assert_error(status, &headers, &body, 401, "invalid_api_key");
    }
    let (status, _, _) = chat_with(&s, &[("x-api-key", &newest)], &chat("m")).await;
    assert_eq!(status, StatusCode::OK);
    s.tollgate.stop().await;
}

async fn model_access_is_enforced(db: Db) {
    let s = stack_on(db).await;
    let team = s
        .tollgate
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "research", "models": ["gpt-4o*", "claude-3"]})),
        )
        .await
        .1;
    let (_, key) = s
        .tollgate
        .create_key(
            json!({"name": "k", "team_id": team["id"], "models": ["gpt-4o-mini", "claude-3"]}),
        )
        .await;
    let (status, _, _) = chat_with(&s, &[("x-api-key", &key)], &chat("gpt-4o-mini")).await;
    assert_eq!(status, StatusCode::OK);
    // The team narrows later: Check narrows the key with it at once.
    let (status, body) = s
        .tollgate
        .admin(
            Method::PATCH,
            &format!("/admin/teams/{}", team["id"].as_str().unwrap()),
            Some(json!({"models": ["gpt-4o*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Allowed by the key, not by its team.
    let (status, headers, body) = chat_with(&s, &[("x-api-key", &key)], &chat("claude-3")).await;
    assert_error(status, &headers, &body, 403, "model_not_allowed");
    // Allowed by the team, not by the key.
    let (status, headers, body) = chat_with(&s, &[("x-api-key", &key)], &chat("gpt-4o")).await;
    assert_error(status, &headers, &body, 403, "model_not_allowed");
    assert_eq!(s.mock.requests().len(), 1);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_400_and_large_bodies_are_read_from_the_front() {
    let s = stack("").await;
    let (_, key) = s
        .tollgate
        .create_key(json!({"name": "k", "models": ["gpt-4o"]}))
        .await;
    let client = common::upstream::client();
    let url = s.envoy.url("/v1/chat/completions");
    let send = |body: Vec<u8>| {
        client
            .post(&url)
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    async fn read(r: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    // Not JSON.
    let (status, headers, body) = read(send(b"this is not json".to_vec()).await.unwrap()).await;
    assert_error(status, &headers, &body, 400, "invalid_request");

    // No model.
    let (status, headers, body) = read(send(br#"{"messages":[]}"#.to_vec()).await.unwrap()).await;
    assert_error(status, &headers, &body, 400, "invalid_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("model"));

    // 2 MiB body, twice Envoy's forwarding limit, with the model first: allowed, and the
    // whole body still reaches the upstream.
    let filler = "word ".repeat(400_000);
    // Written by hand: serde_json would sort the keys and put "messages" first.
    let big =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{filler}"}}]}}"#)
            .into_bytes();
    assert!(big.len() > 2 * 1024 * 1024 - 100_000);
    let (status, _, body) = read(send(big.clone()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.mock.last_request().unwrap().body.len(), big.len());

    // The same with the model after the cut: tollgate cannot see it, and says so.
    let late =
        format!(r#"{{"messages":[{{"role":"user","content":"{filler}"}}],"model":"gpt-4o"}}"#);
    let (status, headers, body) = read(send(late.into_bytes()).await.unwrap()).await;
    assert_error(status, &headers, &body, 400, "invalid_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("cut"),
        "{body}"
    );
    s.tollgate.stop().await;
}

#[tokio::test]
async fn ungoverned_routes_are_404_and_models_listing_needs_no_model() {
    let s = stack("").await;
    let (_, key) = s.tollgate.create_key(json!({"name": "k"})).await;
    let (status, headers, body) =
        post_json(&s.envoy, "/v1/files", &[("x-api-key", &key)], &json!({})).await;
    assert_error(status, &headers, &body, 404, "unknown_route");
    let (status, _, body) =
        common::upstream::get_json(&s.envoy, "/v1/models", &[("x-api-key", &key)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.tollgate.stop().await;
}

#[tokio::test]
async fn the_master_key_passes_as_admin() {
    let s = stack("").await;
    let (status, _, body) =
        chat_with(&s, &[("authorization", &bearer(MASTER_KEY))], &chat("m")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        s.mock.last_request().unwrap().header("x-tollgate-key-id"),
        Some("master")
    );
    s.tollgate.stop().await;
}

/// The store goes away: a warm key keeps working from the cache, a cold one cannot be
/// decided, Check answers UNAVAILABLE, and Envoy (failing closed) answers 503; `/readyz`
/// stays 200 and reports the database down. When the store comes back, so do decisions.
#[tokio::test]
async fn a_store_outage_fails_closed_and_recovers() {
    let common::chaos::ProxiedPostgres {
        proxy,
        url: proxied,
        ..
    } = common::chaos::proxied_postgres().await;
    let yaml = format!("database: {{ url: \"{proxied}\", timeout: 500ms }}\n");
    let s = stack(&yaml).await;
    let (_, warm) = s.tollgate.create_key(json!({"name": "warm"})).await;
    let (_, cold) = s.tollgate.create_key(json!({"name": "cold"})).await;
    let (status, _, _) = chat_with(&s, &[("x-api-key", &warm)], &chat("m")).await;
    assert_eq!(status, StatusCode::OK);

    proxy.cut();
    let (status, _, _) = chat_with(&s, &[("x-api-key", &warm)], &chat("m")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a cached decision needs no database"
    );
    let (status, _, _) = chat_with(&s, &[("x-api-key", &cold)], &chat("m")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The replica stays ready (warm decisions work) and says the database is down.
    let mut database = Value::Null;
    for _ in 0..50 {
        let (status, body) = s.tollgate.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        database = body["backends"]["database"].clone();
        if database == "down" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(database, "down");
    let (status, body) = s.tollgate.admin(Method::GET, "/admin/keys", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "auth_unavailable");
    assert!(
        s.tollgate
            .metric("tollgate_check_total{code=\"unavailable\",decision=\"error\"}")
            .await
            >= 1.0
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        let (status, _, _) = chat_with(&s, &[("x-api-key", &cold)], &chat("m")).await;
        if status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(recovered, "decisions must come back with the store");
    s.tollgate.stop().await;
}
