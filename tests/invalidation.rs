//! Admin writes on one replica reach another replica's caches within a second: over Redis
//! pub/sub when Redis is configured, over Postgres LISTEN/NOTIFY otherwise. Two tollgates
//! share one Postgres schema (and one Redis prefix); `cache.key_ttl` is five minutes, so
//! only the pushed invalidation can explain a refusal seen within a second.

mod common;

use common::check::answer;
use common::metrics::sample;
use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a change may take to reach the other replica (the contract).
const BOUND: Duration = Duration::from_secs(1);
/// How long a trial waits before calling it a failure (the assertion is on `BOUND`).
const GIVE_UP: Duration = Duration::from_secs(5);

async fn replicas(redis: Option<&str>) -> (Tollgate, Tollgate) {
    let (_, db_url) = common::db::fresh_postgres().await;
    let mut yaml = format!(
        "database: {{ url: \"{db_url}\" }}\ncache: {{ key_ttl: 300s, negative_ttl: 300s }}\n"
    );
    if let Some(prefix) = redis {
        yaml.push_str(&format!(
            "redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }}\n"
        ));
    }
    let a = Tollgate::start(&yaml).await;
    let b = Tollgate::start(&yaml).await;
    (a, b)
}

/// The status Check answers on `t` for a chat request with `key`.
async fn status(t: &Tollgate, key: &str) -> u16 {
    let body = json!({"model": "gpt-4o", "messages": []}).to_string();
    let request = common::check::request(&[("x-api-key", key)], "/v1/chat/completions", &body);
    answer(t.app.gate.check(&request).await.expect("a decision")).status
}

async fn admin(t: &Tollgate, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = t.admin(method, path, body).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// One trial: a fresh user, team and key; the key warm in `b`'s cache; `change` made
/// through `a`; answers how long until `b` refuses the key (panics past [`GIVE_UP`]).
async fn trial(a: &Tollgate, b: &Tollgate, n: usize, change: &str) -> Duration {
    let user = a
        .create_user(&format!("u{n}-{}", uuid::Uuid::new_v4().simple()), "user")
        .await;
    let team = admin(
        a,
        Method::POST,
        "/admin/teams",
        Some(json!({"name": format!("team-{}", uuid::Uuid::new_v4().simple())})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key_id, key) = a
        .create_key(json!({"name": "k", "user_id": user, "team_id": team}))
        .await;
    // Warm: b has the key cached (and a refused change would not be a stale cache). A
    // lookup overtaken by an invalidation is not cached: the key's creation, published to
    // b, may arrive while b's first lookup is on its way; so b is asked until it answers
    // from its cache.
    let hit = "tollgate_cache_requests_total{cache=\"key\",result=\"hit\"}";
    let warming = Instant::now();
    loop {
        let hits = b.metric(hit).await;
        assert_eq!(status(b, &key).await, 200, "{change}");
        if b.metric(hit).await > hits {
            break;
        }
        assert!(
            warming.elapsed() < GIVE_UP,
            "b never answers from its cache"
        );
    }
    eprintln!("trial {n}: {change}");
    let started = Instant::now();
    let (method, path, body) = common::changes::admin_call(change, &key_id, &user, &team);
    admin(a, method, &path, body).await;
    loop {
        let seen = status(b, &key).await;
        if seen != 200 {
            assert!(
                [401, 403, 429].contains(&seen),
                "{change}: refused with {seen}"
            );
            return started.elapsed();
        }
        assert!(
            started.elapsed() < GIVE_UP,
            "{change}: b still admits the key after {GIVE_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const CHANGES: [&str; 7] = [
    "revoke key",
    "block key",
    "rotate key",
    "key budget",
    "block user",
    "user role",
    "block team",
];

/// Every change, `rounds` times; every one reaches `b` within [`BOUND`].
async fn every_change_reaches_the_other_replica(a: &Tollgate, b: &Tollgate, rounds: usize) {
    let mut lags = Vec::new();
    for round in 0..rounds {
        for (i, change) in CHANGES.iter().enumerate() {
            let lag = trial(a, b, round * CHANGES.len() + i, change).await;
            assert!(lag < BOUND, "{change}: {lag:?}");
            lags.push(lag);
        }
    }
    lags.sort();
    println!(
        "invalidation lag over {} trials: p50 {:?}, max {:?}",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    let applied = b.metric("tollgate_invalidation_lag_seconds_count").await;
    assert!(applied >= lags.len() as f64, "{applied}");
}

#[tokio::test]
async fn changes_reach_every_replica_over_redis_within_a_second() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let (a, b) = replicas(Some(&prefix)).await;
    assert_eq!(b.app.invalidator.channel(), "redis");
    every_change_reaches_the_other_replica(&a, &b, 3).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn changes_reach_every_replica_over_postgres_within_a_second() {
    let (a, b) = replicas(None).await;
    assert_eq!(b.app.invalidator.channel(), "postgres");
    every_change_reaches_the_other_replica(&a, &b, 3).await;
    a.stop().await;
    b.stop().await;
}

/// Postgres channels are per database: a deployment in another schema of the same database
/// does not hear this one's changes (each would flush the other's caches), while a replica
/// in the same schema does.
#[tokio::test]
async fn a_deployment_in_another_schema_does_not_hear_the_changes() {
    let (a, same) = replicas(None).await;
    let (_, other_url) = common::db::fresh_postgres().await;
    let elsewhere = Tollgate::start(&format!(
        "database: {{ url: \"{other_url}\" }}\ncache: {{ key_ttl: 300s, negative_ttl: 300s }}\n"
    ))
    .await;
    let heard =
        |t: &Tollgate| sample(&t.app.metrics, "tollgate_invalidation_lag_seconds_count") as u64;
    let (key_id, _) = a.create_key(json!({"name": "k"})).await;
    admin(
        &a,
        Method::POST,
        &format!("/admin/keys/{key_id}/block"),
        None,
    )
    .await;
    let deadline = Instant::now() + GIVE_UP;
    while heard(&same) == 0 {
        assert!(
            Instant::now() < deadline,
            "the replica in the same schema heard nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One more round trip through the same channel: anything sent to the other schema's
    // listener would have arrived by now.
    admin(
        &a,
        Method::POST,
        &format!("/admin/keys/{key_id}/unblock"),
        None,
    )
    .await;
    while heard(&same) < 2 {
        assert!(
            Instant::now() < deadline,
            "the second change did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        heard(&elsewhere),
        0,
        "another schema's deployment heard a change"
    );
    for t in [a, same, elsewhere] {
        t.stop().await;
    }
}

/// A change published while the other replica's listener is cut off is not lost for long:
/// the listener connects again and flushes its caches.
#[tokio::test]
async fn a_listener_that_lost_its_channel_flushes_when_it_is_back() {
    let server = common::private_redis::PrivateRedis::start().await;
    let (_, db_url) = common::db::fresh_postgres().await;
    let yaml = format!(
        "database: {{ url: \"{db_url}\" }}\ncache: {{ key_ttl: 300s, negative_ttl: 300s }}\n\
         redis: {{ url: \"{}\" }}\n",
        server.url
    );
    let a = Tollgate::start(&yaml).await;
    let b = Tollgate::start(&yaml).await;
    let (key_id, key) = a.create_key(json!({"name": "k"})).await;
    assert_eq!(status(&b, &key).await, 200);
    // Cut every subscriber of this Redis (a's and b's), and make the change at once: its
    // message may well reach nobody.
    let mut redis = server.conn().await.unwrap();
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(cut >= 2, "both listeners were cut: {cut}");
    let started = Instant::now();
    admin(&a, Method::DELETE, &format!("/admin/keys/{key_id}"), None).await;
    loop {
        if status(&b, &key).await == 401 {
            break;
        }
        assert!(
            started.elapsed() < GIVE_UP,
            "b still admits the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "revoked while cut off, refused after {:?}",
        started.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

/// Without Redis and on SQLite there is one process: no channel, the local cache is
/// invalidated at once as before.
#[tokio::test]
async fn sqlite_has_no_channel_and_invalidates_locally() {
    let t = Tollgate::start("").await;
    assert_eq!(t.app.invalidator.channel(), "none");
    let (key_id, key) = t.create_key(json!({"name": "k"})).await;
    assert_eq!(status(&t, &key).await, 200);
    let (code, _) = t
        .admin(Method::DELETE, &format!("/admin/keys/{key_id}"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status(&t, &key).await, 401);
    t.stop().await;
}

/// A custom role's new permissions reach the other replica's cached keys of its holders:
/// over Postgres and over Redis, within [`BOUND`], with the keys warm on the other replica.
#[tokio::test]
async fn a_custom_roles_new_permissions_reach_the_other_replica() {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    for redis in [None, Some(prefix.as_str())] {
        let (a, b) = replicas(redis).await;
        let role = json!({"name": "chatter", "permissions": ["chat"]});
        admin(&a, Method::POST, "/admin/roles", Some(role)).await;
        let user = a.create_user("cal", "chatter").await;
        let (_, key) = a.create_key(json!({"name": "k", "user_id": user})).await;
        let hit = "tollgate_cache_requests_total{cache=\"key\",result=\"hit\"}";
        let warming = Instant::now();
        loop {
            let hits = b.metric(hit).await;
            assert_eq!(status(&b, &key).await, 200);
            if b.metric(hit).await > hits {
                break;
            }
            assert!(
                warming.elapsed() < GIVE_UP,
                "b never answers from its cache"
            );
        }
        let started = Instant::now();
        let patch = json!({"permissions": ["embeddings"]});
        admin(&a, Method::PATCH, "/admin/roles/chatter", Some(patch)).await;
        loop {
            let seen = status(&b, &key).await;
            if seen != 200 {
                assert_eq!(seen, 403, "refused as the role says");
                break;
            }
            assert!(started.elapsed() < GIVE_UP, "b still admits the key");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lag = started.elapsed();
        println!(
            "{}: role change seen by the other replica after {lag:?}",
            b.app.invalidator.channel()
        );
        assert!(lag < BOUND, "{lag:?}");
        a.stop().await;
        b.stop().await;
    }
}
