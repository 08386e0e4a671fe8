//! `/readyz`: 200 `ready` while this replica can decide, whatever the database and Redis
//! do (their status is in the body), 503 `draining` from the moment a stop is asked;
//! `/healthz` 200 throughout. Backends are taken away for real, through a TCP proxy that
//! cuts every connection.

mod common;

use common::chaos::{proxied_postgres, ChaosProxy};
use common::check::{answer, request};
use common::tollgate::Tollgate;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Reads `/readyz` until `want` holds for its body (at most 10 s); every answer on the way
/// must be 200 `ready`, and quick: readiness never waits for a backend.
async fn ready_until(t: &Tollgate, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let asked = Instant::now();
        let (status, body) = t.call(Method::GET, "/readyz", None, None).await;
        assert!(
            asked.elapsed() < Duration::from_millis(250),
            "readyz took {:?}",
            asked.elapsed()
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
        if want(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "readyz never showed it: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_stays_ready_while_postgres_is_away_and_says_so() {
    let pg = proxied_postgres().await;
    let t = Tollgate::start(&format!(
        "database: {{ url: \"{}\", timeout: 300ms }}\n",
        pg.url
    ))
    .await;
    let body = ready_until(&t, |b| b["backends"]["database"] == "up").await;
    assert_eq!(
        body,
        json!({"status": "ready", "backends": {"database": "up", "redis": "absent"}})
    );

    pg.proxy.cut();
    let body = ready_until(&t, |b| b["backends"]["database"] == "down").await;
    assert_eq!(body["backends"]["redis"], "absent", "{body}");
    let (status, _) = t.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);

    pg.proxy.restore();
    ready_until(&t, |b| b["backends"]["database"] == "up").await;
    t.stop().await;
}

#[tokio::test]
async fn readyz_reports_redis_up_then_down_then_up() {
    let proxy = ChaosProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let prefix = format!("tg-ready-{}:", uuid::Uuid::new_v4().simple());
    let t = Tollgate::start(&format!(
        "redis: {{ url: \"redis://{}\", key_prefix: \"{prefix}\", timeout: 200ms }}\n",
        proxy.addr
    ))
    .await;
    let body = ready_until(&t, |b| b["backends"]["redis"] == "up").await;
    assert_eq!(body["backends"]["database"], "up", "{body}");

    // Noticed by the readiness probe, with no request at all.
    proxy.cut();
    let body = ready_until(&t, |b| b["backends"]["redis"] == "down").await;
    assert_eq!(body["backends"]["database"], "up", "{body}");

    proxy.restore();
    ready_until(&t, |b| b["backends"]["redis"] == "up").await;
    t.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_at_once_when_draining_while_check_still_admits() {
    let t = Tollgate::start("").await;
    let (_, key) = t.create_key(json!({"name": "k"})).await;
    let mut authz = AuthorizationClient::connect(format!("http://{}", t.grpc))
        .await
        .unwrap();
    let chat = r#"{"model":"gpt-4o","messages":[]}"#;
    let check = |key: &str| {
        request(
            &[("authorization", &format!("Bearer {key}"))],
            "/v1/chat/completions",
            chat,
        )
    };
    let allowed = answer(authz.check(check(&key)).await.unwrap().into_inner());
    assert_eq!(allowed.status, 200, "{allowed:?}");

    t.lifecycle().drain();
    let (status, body) = t.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({"status": "draining", "backends": {"database": "up", "redis": "absent"}})
    );
    let (status, _) = t.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // Load balancers take a while to notice: Check goes on deciding meanwhile.
    let allowed = answer(authz.check(check(&key)).await.unwrap().into_inner());
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let denied = answer(authz.check(check("sk-tg-nope")).await.unwrap().into_inner());
    assert_eq!(denied.status, 401, "{denied:?}");
    t.stop().await;
}
