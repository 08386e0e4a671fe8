//! The Check handler called directly (no network), over a real SQLite store: the shape of
//! allowed and denied responses, the key cache's hits, misses and invalidation, and the
//! mapping of a store failure to gRPC UNAVAILABLE.

mod common;

use common::check::{answer, Answer};
use common::metrics::sample;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate::app::App;
use tollgate::authn::api_key;
use tollgate::authn::key_cache::Invalidation;
use tollgate::config::Config;
use tollgate::domain::{rfc3339, BudgetDuration, Limits};
use tollgate::secret::Secret;
use tollgate::store::sql::SqlStore;
use tollgate::store::{Actor, KeyPatch, KeyStore, NewKey, NewTeam, NewUser, TeamStore, UserStore};

fn request(headers: &[(&str, &str)], path: &str, body: &str) -> CheckRequest {
    common::check::request(headers, path, body)
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[]}"#;

/// A chat completion request with `key` in `x-api-key`.
async fn check_with(app: &App, key: &str) -> Result<CheckResponse, tonic::Status> {
    app.gate
        .check(&request(
            &[("x-api-key", key)],
            "/v1/chat/completions",
            CHAT,
        ))
        .await
}

struct Fixture {
    app: Arc<App>,
    store: SqlStore,
    _dir: tempfile::TempDir,
}

async fn fixture(yaml: &str) -> Fixture {
    let (store, dir, _) = common::db::fresh_sqlite().await;
    let config = Config::parse_str("t", yaml, &|_| None).unwrap().config;
    let app = App::with_store(
        config,
        &Secret::new("master-secret"),
        Arc::new(store.clone()),
    );
    Fixture {
        app,
        store,
        _dir: dir,
    }
}

fn actor() -> Actor {
    Actor::new("test", None)
}

async fn new_key(store: &SqlStore, key: NewKey) -> (String, String) {
    let plain = api_key::generate();
    let created = store
        .create_key(
            &actor(),
            NewKey {
                key_hash: plain.hash().to_hex(),
                key_hint: plain.hint(),
                ..key
            },
        )
        .await
        .unwrap();
    (created.id, plain.into_string())
}

fn ok_headers(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an OkHttpResponse, got {response:?}");
    };
    let set = ok
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (set, ok.headers_to_remove.clone())
}

fn denied(response: &CheckResponse) -> (i32, serde_json::Value) {
    let Some(HttpResponse::DeniedResponse(d)) = &response.http_response else {
        panic!("expected a DeniedHttpResponse, got {response:?}");
    };
    (
        d.status.as_ref().unwrap().code,
        serde_json::from_str(&d.body).unwrap(),
    )
}

#[tokio::test]
async fn an_allowed_response_carries_identity_headers_and_metadata() {
    let f = fixture("models:\n  - { name: gpt-4o, upstream_api_key: sk-up }\n").await;
    let user = f
        .store
        .create_user(
            &actor(),
            NewUser {
                username: "u".into(),
                email: "u@x.io".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let team = f
        .store
        .create_team(
            &actor(),
            NewTeam {
                name: "t".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (id, key) = new_key(
        &f.store,
        NewKey {
            name: "k".into(),
            user_id: Some(user.id.clone()),
            team_id: Some(team.id.clone()),
            ..Default::default()
        },
    )
    .await;
    let response = f
        .app
        .gate
        .check(&request(
            &[("api-key", &key)],
            "/v1/chat/completions?x=1",
            CHAT,
        ))
        .await
        .unwrap();
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    let (set, removed) = ok_headers(&response);
    assert_eq!(set["x-tollgate-key-id"], id);
    assert_eq!(set["x-tollgate-user-id"], user.id);
    assert_eq!(set["x-tollgate-team-id"], team.id);
    assert_eq!(set["x-tollgate-model"], "gpt-4o");
    assert_eq!(set["authorization"], "Bearer sk-up");
    assert!(removed.contains(&"api-key".to_owned()) && removed.contains(&"x-api-key".to_owned()));
    assert!(
        !removed.contains(&"authorization".to_owned()),
        "it is replaced, not removed"
    );

    let metadata = response.dynamic_metadata.unwrap();
    let field = |name: &str| match &metadata.fields[name].kind {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(field("key_id"), id);
    assert_eq!(field("user_id"), user.id);
    assert_eq!(field("team_id"), team.id);
    assert_eq!(field("model"), "gpt-4o");
}

#[tokio::test]
async fn a_denied_response_is_openai_shaped() {
    let f = fixture("").await;
    let response = f
        .app
        .gate
        .check(&request(&[], "/v1/chat/completions", CHAT))
        .await
        .unwrap();
    assert_ne!(
        response.status.as_ref().unwrap().code,
        0,
        "a denial must not be gRPC OK"
    );
    let (status, body) = denied(&response);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "authentication_error");

    // No HTTP attributes at all: refused, not allowed by default.
    let empty = f.app.gate.check(&CheckRequest::default()).await.unwrap();
    assert_eq!(denied(&empty).0, 400);
}

#[tokio::test]
async fn warm_keys_come_from_the_cache_and_writes_invalidate_them() {
    let f = fixture("").await;
    let (id, key) = new_key(
        &f.store,
        NewKey {
            name: "k".into(),
            ..Default::default()
        },
    )
    .await;
    let check = || check_with(&f.app, &key);
    let counter = |result: &str| {
        sample(
            &f.app.metrics,
            &format!("tollgate_cache_requests_total{{cache=\"key\",result=\"{result}\"}}"),
        ) as u64
    };

    assert_eq!(check().await.unwrap().status.unwrap().code, 0);
    assert_eq!((counter("miss"), counter("hit")), (1, 0));
    for _ in 0..5 {
        assert_eq!(check().await.unwrap().status.unwrap().code, 0);
    }
    assert_eq!(
        (counter("miss"), counter("hit")),
        (1, 5),
        "warm decisions read no database"
    );

    // A write straight to the store is not seen while the entry is cached...
    f.store
        .update_key(
            &actor(),
            &id,
            KeyPatch {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(check().await.unwrap().status.unwrap().code, 0);
    // ...and is seen at once after the invalidation the admin API performs.
    f.app.auth.invalidate(Invalidation::Key(id.clone()));
    assert_eq!(denied(&check().await.unwrap()).0, 403);
    assert_eq!(counter("miss"), 2);
}

#[tokio::test]
async fn unknown_keys_are_negatively_cached() {
    let f = fixture("").await;
    let unknown = api_key::generate().into_string();
    for _ in 0..3 {
        let r = f
            .app
            .gate
            .check(&request(
                &[("x-api-key", &unknown)],
                "/v1/chat/completions",
                CHAT,
            ))
            .await
            .unwrap();
        assert_eq!(denied(&r).0, 401);
    }
    let counter = |result: &str| {
        sample(
            &f.app.metrics,
            &format!("tollgate_cache_requests_total{{cache=\"key\",result=\"{result}\"}}"),
        ) as u64
    };
    assert_eq!(counter("miss"), 1);
    assert_eq!(counter("negative_hit"), 2);
}

#[tokio::test]
async fn owner_changes_invalidate_their_keys() {
    let f = fixture("").await;
    let team = f
        .store
        .create_team(
            &actor(),
            NewTeam {
                name: "t".into(),
                models: vec!["gpt-4o".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, key) = new_key(
        &f.store,
        NewKey {
            name: "k".into(),
            team_id: Some(team.id.clone()),
            ..Default::default()
        },
    )
    .await;
    let check = || check_with(&f.app, &key);
    assert_eq!(check().await.unwrap().status.unwrap().code, 0);
    f.store
        .update_team(
            &actor(),
            &team.id,
            tollgate::store::TeamPatch {
                models: Some(vec!["gpt-4o-mini".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    f.app.auth.invalidate(Invalidation::Team(team.id.clone()));
    let (status, body) = denied(&check().await.unwrap());
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "model_not_allowed");
}

#[tokio::test]
async fn a_store_failure_is_unavailable_never_allow_or_deny() {
    let f = fixture("").await;
    let (_, warm) = new_key(
        &f.store,
        NewKey {
            name: "warm".into(),
            ..Default::default()
        },
    )
    .await;
    let (_, cold) = new_key(
        &f.store,
        NewKey {
            name: "cold".into(),
            ..Default::default()
        },
    )
    .await;
    check_with(&f.app, &warm).await.unwrap();

    f.store.close().await;
    let status = check_with(&f.app, &cold).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        check_with(&f.app, &warm)
            .await
            .unwrap()
            .status
            .unwrap()
            .code,
        0,
        "cached keys still decide"
    );
    assert_eq!(
        sample(
            &f.app.metrics,
            "tollgate_check_total{code=\"unavailable\",decision=\"error\"}"
        ) as u64,
        1
    );
    assert!(
        sample(
            &f.app.metrics,
            "tollgate_backend_errors_total{backend=\"database\"}"
        ) as u64
            >= 1
    );
}

/// A database that answers, but with an error a retry cannot cure (here: the keys table is
/// gone), is an internal error: gRPC INTERNAL, counted as `code="internal"`, and no detail of
/// the SQL in the answer.
#[tokio::test]
async fn a_store_fault_is_internal_not_unavailable() {
    let f = fixture("").await;
    let (_, cold) = new_key(
        &f.store,
        NewKey {
            name: "cold".into(),
            ..Default::default()
        },
    )
    .await;
    sqlx::query("ALTER TABLE api_keys RENAME TO api_keys_gone")
        .execute(f.store.pool())
        .await
        .unwrap();
    let status = check_with(&f.app, &cold).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(!status.message().contains("api_keys"), "{status:?}");
    let counted = |code: &str| {
        sample(
            &f.app.metrics,
            &format!("tollgate_check_total{{code=\"{code}\",decision=\"error\"}}"),
        ) as u64
    };
    assert_eq!((counted("internal"), counted("unavailable")), (1, 0));
}

// ---------------------------------------------------------------------------------------
// Refusals as the client's provider writes them

const MESSAGE: &str = r#"{"model":"claude-sonnet-4","max_tokens":16,"messages":[]}"#;

/// A Check of `path` with these headers and body, flattened.
async fn ask(app: &App, headers: &[(&str, &str)], path: &str, body: &str) -> Answer {
    answer(
        app.gate
            .check(&request(headers, path, body))
            .await
            .expect("a decision"),
    )
}

/// The sorted member names of a JSON object.
fn members(value: &serde_json::Value) -> Vec<&str> {
    let mut names: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

/// Asserts Anthropic's error shape, `type` and tollgate's `code`, and the request id in
/// both of Anthropic's and OpenAI's header names.
fn assert_anthropic(a: &Answer, status: u16, r#type: &str, code: &str, request_id: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(members(&a.body), ["error", "type"], "{a:?}");
    assert_eq!(a.body["type"], "error", "{a:?}");
    assert_eq!(
        members(&a.body["error"]),
        ["code", "message", "type"],
        "{a:?}"
    );
    assert_eq!(a.body["error"]["type"], r#type, "{a:?}");
    assert_eq!(a.body["error"]["code"], code, "{a:?}");
    assert!(a.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(a.header("x-request-id"), request_id);
    assert_eq!(a.header("request-id"), request_id);
}

/// Asserts OpenAI's error shape, and the request id in OpenAI's header name only.
fn assert_openai(a: &Answer, status: u16, r#type: &str, code: &str, request_id: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(members(&a.body), ["error"], "{a:?}");
    assert_eq!(
        members(&a.body["error"]),
        ["code", "message", "param", "type"],
        "{a:?}"
    );
    assert_eq!(a.body["error"]["type"], r#type, "{a:?}");
    assert_eq!(a.body["error"]["code"], code, "{a:?}");
    assert!(a.body["error"]["param"].is_null());
    assert_eq!(a.header("x-request-id"), request_id);
    assert!(!a.headers.contains_key("request-id"), "{a:?}");
}

/// Asserts a refusal that waiting does not fix: SDKs are told not to retry.
fn assert_final(a: &Answer) {
    assert_eq!(a.header("x-should-retry"), "false", "{a:?}");
    assert!(!a.headers.contains_key("retry-after"), "{a:?}");
}

#[tokio::test]
async fn refusals_on_anthropic_routes_read_as_anthropics() {
    let f = fixture(
        "models:\n  - { name: claude-sonnet-4 }\nroutes:\n  /anthropic/*: { permission: chat, model_required: true, api: anthropic }\n",
    )
    .await;
    let (_, key) = new_key(
        &f.store,
        NewKey {
            name: "k".into(),
            ..Default::default()
        },
    )
    .await;
    let (_, embeddings_only) = new_key(
        &f.store,
        NewKey {
            name: "e".into(),
            permissions: vec!["embeddings".into()],
            ..Default::default()
        },
    )
    .await;
    let id = "2f0e6f3c-1d7b-4d0e-9a57-5b8c1e2d3f4a";
    let with_key = [("x-api-key", key.as_str()), ("x-request-id", id)];
    // Headers, path, body; status, Anthropic's error type, tollgate's code.
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a str,
        u16,
        &'a str,
        &'a str,
    );
    let cases: [Case; 7] = [
        (
            &[("x-request-id", id)],
            "/v1/messages",
            MESSAGE,
            401,
            "authentication_error",
            "invalid_api_key",
        ),
        (
            &[
                ("x-api-key", embeddings_only.as_str()),
                ("x-request-id", id),
            ],
            "/v1/messages",
            MESSAGE,
            403,
            "permission_error",
            "permission_denied",
        ),
        (
            &with_key,
            "/v1/messages",
            r#"{"model":"gpt-4o","messages":[]}"#,
            403,
            "permission_error",
            "model_not_allowed",
        ),
        (
            &with_key,
            "/v1/messages",
            r#"{"messages":[]}"#,
            400,
            "invalid_request_error",
            "invalid_request",
        ),
        (
            &with_key,
            "/v1/messages/count_tokens",
            "{}",
            400,
            "invalid_request_error",
            "invalid_request",
        ),
        // No route: the path still says the client speaks Anthropic's API.
        (
            &with_key,
            "/v1/messages/batches",
            MESSAGE,
            404,
            "not_found_error",
            "unknown_route",
        ),
        // A route configured as Anthropic's, whatever its path.
        (
            &[("x-request-id", id)],
            "/anthropic/v1/messages",
            MESSAGE,
            401,
            "authentication_error",
            "invalid_api_key",
        ),
    ];
    for (headers, path, body, status, r#type, code) in cases {
        let a = ask(&f.app, headers, path, body).await;
        assert_anthropic(&a, status, r#type, code, id);
        assert_final(&a);
        if status == 401 {
            assert_eq!(a.header("www-authenticate"), "Bearer");
        }
    }
    // The SDK's token count is governed like a message, and allowed.
    let a = ask(&f.app, &with_key, "/v1/messages/count_tokens", MESSAGE).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        !a.headers.contains_key("x-request-id"),
        "allowed: upstream's own"
    );

    // OpenAI's routes, and the model list, stay OpenAI's.
    let a = ask(
        &f.app,
        &[("x-request-id", id)],
        "/v1/chat/completions",
        CHAT,
    )
    .await;
    assert_openai(&a, 401, "authentication_error", "invalid_api_key", id);
    assert_final(&a);
    let a = ask(&f.app, &[("x-request-id", id)], "/v1/models", "").await;
    assert_openai(&a, 401, "authentication_error", "invalid_api_key", id);
    let a = ask(&f.app, &with_key, "/v1/secret", CHAT).await;
    assert_openai(&a, 404, "invalid_request_error", "unknown_route", id);
    assert_final(&a);
}

#[tokio::test]
async fn a_refusal_carries_a_request_id_even_without_one_from_envoy() {
    let f = fixture("").await;
    let a = ask(&f.app, &[], "/v1/messages", MESSAGE).await;
    assert_eq!(a.status, 401);
    let id = a.header("x-request-id");
    assert!(!id.is_empty());
    assert_eq!(a.header("request-id"), id);
    let b = ask(&f.app, &[], "/v1/messages", MESSAGE).await;
    assert_ne!(b.header("x-request-id"), id, "one id per request");
}

#[tokio::test]
async fn rate_limits_and_budgets_say_whether_waiting_helps() {
    let f = fixture(
        "models:\n  - { name: claude-sonnet-4, pricing: { input_per_million: 1000000, output_per_million: 1000000 } }\n",
    )
    .await;
    let id = "req-1";
    let limited = |rpm, tpm| NewKey {
        name: "limited".into(),
        limits: Limits {
            rpm: Some(rpm),
            tpm: Some(tpm),
            ..Default::default()
        },
        ..Default::default()
    };
    // rpm 1: the second request waits a minute, and may retry then.
    let (_, key) = new_key(&f.store, limited(1, 100_000)).await;
    let headers = [("x-api-key", key.as_str()), ("x-request-id", id)];
    assert_eq!(
        ask(&f.app, &headers, "/v1/messages", MESSAGE).await.status,
        200
    );
    let a = ask(&f.app, &headers, "/v1/messages", MESSAGE).await;
    assert_anthropic(&a, 429, "rate_limit_error", "rate_limit_exceeded", id);
    assert_eq!(a.header("retry-after"), "60");
    assert_eq!(a.header("x-should-retry"), "true");
    assert_eq!(a.header("x-ratelimit-limit-requests"), "1");

    // tpm 100 and a request estimated at more: no wait admits it.
    let (_, key) = new_key(&f.store, limited(100, 100)).await;
    let big = r#"{"model":"claude-sonnet-4","max_tokens":4000,"messages":[]}"#;
    let a = ask(
        &f.app,
        &[("x-api-key", key.as_str()), ("x-request-id", id)],
        "/v1/messages",
        big,
    )
    .await;
    assert_anthropic(&a, 429, "rate_limit_error", "rate_limit_exceeded", id);
    assert_final(&a);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("waiting will not admit it"));

    // A budget smaller than one request: spent until its period ends.
    let (_, key) = new_key(
        &f.store,
        NewKey {
            name: "budget".into(),
            limits: Limits {
                max_budget: Some(1.0),
                budget_duration: Some(BudgetDuration::Day),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let a = ask(
        &f.app,
        &[("x-api-key", key.as_str()), ("x-request-id", id)],
        "/v1/messages",
        MESSAGE,
    )
    .await;
    assert_anthropic(&a, 429, "rate_limit_error", "insufficient_quota", id);
    assert_final(&a);
    let reset = rfc3339::parse(a.header("x-tollgate-budget-reset")).unwrap();
    let now = tollgate::domain::now();
    assert_eq!(reset.rem_euclid(86_400), 0, "the day ends at midnight UTC");
    assert!(reset > now && reset <= now + 86_400, "{reset}");
    // The same refusal on an OpenAI route keeps OpenAI's type.
    let a = ask(
        &f.app,
        &[("x-api-key", key.as_str()), ("x-request-id", id)],
        "/v1/chat/completions",
        r#"{"model":"claude-sonnet-4","max_tokens":16,"messages":[]}"#,
    )
    .await;
    assert_openai(&a, 429, "insufficient_quota", "insufficient_quota", id);
    assert_final(&a);
    assert!(a.headers.contains_key("x-tollgate-budget-reset"));
}
