//! The Check handler called directly (no network), over a real SQLite store: the shape of
//! allowed and denied responses, the key cache's hits, misses and invalidation, and the
//! mapping of a store failure to gRPC UNAVAILABLE.

mod common;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate::app::App;
use tollgate::authn::api_key;
use tollgate::authn::key_cache::Invalidation;
use tollgate::config::Config;
use tollgate::secret::Secret;
use tollgate::store::sql::SqlStore;
use tollgate::store::{Actor, KeyPatch, NewKey, NewTeam, NewUser, Store};

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
        f.app
            .metrics
            .cache_requests
            .with_label_values(&["key", result])
            .get()
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
    f.app.gate.auth.invalidate(Invalidation::Key(id.clone()));
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
        f.app
            .metrics
            .cache_requests
            .with_label_values(&["key", result])
            .get()
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
    f.app
        .gate
        .auth
        .invalidate(Invalidation::Team(team.id.clone()));
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
        f.app
            .metrics
            .check_total
            .with_label_values(&["error", "unavailable"])
            .get(),
        1
    );
    assert!(
        f.app
            .metrics
            .backend_errors
            .with_label_values(&["database"])
            .get()
            >= 1
    );
}
