//! `POST /admin/keys/bulk` over a real listener, on SQLite and on Postgres: keys created in
//! the order given, each with its secret (which Check then allows), all or nothing, the
//! index of a refused key named, the cap, and the single route's rights. Which caller may
//! create which key in bulk, route for route like `POST /admin/keys`, is in tests/roles.rs.

mod common;

use common::check::{answer, request};
use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Runs `async fn name(t: &Tollgate)` on a tollgate over SQLite and over Postgres.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let t = crate::Tollgate::start("").await;
                    super::$name(&t).await;
                    t.stop().await;
                }

                #[tokio::test]
                async fn postgres() {
                    let (store, url) = crate::common::db::fresh_postgres().await;
                    store.close().await;
                    let t = crate::Tollgate::start(&format!("database: {{ url: \"{url}\" }}\n"))
                        .await;
                    super::$name(&t).await;
                    t.stop().await;
                }
            }
        )+
    };
}

both_backends!(
    keys_are_created_in_order_and_their_secrets_work,
    one_refused_key_refuses_the_batch,
    batches_are_from_one_to_a_thousand_keys,
    keys_without_admin_cannot_create_in_bulk,
);

/// The ids of the keys tollgate has, revoked or not.
async fn key_ids(t: &Tollgate) -> Vec<String> {
    let (status, list) = t
        .admin(Method::GET, "/admin/keys?include_revoked=true", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn audited_creations(t: &Tollgate) -> Vec<Value> {
    let (status, audit) = t
        .admin(Method::GET, "/admin/audit?action=key.create", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    audit["data"].as_array().unwrap().clone()
}

async fn bulk(t: &Tollgate, token: Option<&str>, keys: Vec<Value>) -> (StatusCode, Value) {
    t.call(
        Method::POST,
        "/admin/keys/bulk",
        token,
        Some(json!({ "keys": keys })),
    )
    .await
}

/// A chat completion through Check with `key`: its HTTP status (200 when allowed).
async fn check(t: &Tollgate, key: &str, model: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
    let response = t
        .app
        .gate
        .check(&request(
            &[("authorization", &format!("Bearer {key}"))],
            "/v1/chat/completions",
            &body,
        ))
        .await
        .unwrap();
    answer(response).status
}

async fn keys_are_created_in_order_and_their_secrets_work(t: &Tollgate) {
    let user = t.create_user("ada", "user").await;
    let (status, team) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "eng", "models": ["gpt-4o*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let team = team["id"].as_str().unwrap().to_owned();
    let bodies: Vec<Value> = (0..12)
        .map(|i| match i % 3 {
            0 => json!({"name": format!("k{i}"), "user_id": user}),
            1 => json!({"name": format!("k{i}"), "team_id": team, "models": ["gpt-4o-mini"], "rpm": 100}),
            _ => json!({"name": format!("k{i}"), "metadata": {"i": i}, "permissions": ["chat"]}),
        })
        .collect();
    let (status, created) = bulk(t, Some(common::tollgate::MASTER_KEY), bodies).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let created = created["data"].as_array().unwrap().clone();
    assert_eq!(created.len(), 12);
    for (i, key) in created.iter().enumerate() {
        assert_eq!(key["name"], format!("k{i}"), "in the order given");
        let secret = key["key"].as_str().unwrap();
        assert!(secret.starts_with("sk-tg-"), "{key}");
        let hint = key["key_hint"].as_str().unwrap();
        assert!(hint.starts_with(&secret[..10]) && hint.ends_with(&secret[secret.len() - 4..]));
        match i % 3 {
            0 => assert_eq!(key["user_id"], user.as_str()),
            1 => {
                assert_eq!(key["team_id"], team.as_str());
                assert_eq!(key["rpm"], 100);
            }
            _ => assert_eq!(key["metadata"], json!({ "i": i })),
        }
        // As a single create stores it; the secret is never shown again.
        let id = key["id"].as_str().unwrap();
        let (status, stored) = t
            .admin(Method::GET, &format!("/admin/keys/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(stored.get("key").is_none(), "{stored}");
        let mut without_secret = key.clone();
        without_secret.as_object_mut().unwrap().remove("key");
        without_secret["spend"] = json!(0.0);
        assert_eq!(stored, without_secret);
        // Check takes it at once.
        assert_eq!(check(t, secret, "gpt-4o-mini").await, 200, "{key}");
    }
    // The team's keys keep to their models.
    assert_eq!(
        check(t, created[1]["key"].as_str().unwrap(), "o1").await,
        403
    );

    // One key.create audit row per key, as a single create writes it.
    let audit = audited_creations(t).await;
    assert_eq!(audit.len(), 12);
    for key in &created {
        let event = audit
            .iter()
            .find(|e| e["target"] == key["id"])
            .unwrap_or_else(|| panic!("no key.create for {key}"));
        assert_eq!(event["actor"], "master");
        assert_eq!(event["details"]["name"], key["name"]);
        assert_eq!(event["details"]["key_hint"], key["key_hint"]);
        let secret = key["key"].as_str().unwrap();
        assert!(!event.to_string().contains(&secret[6..]), "{event}");
    }
}

async fn one_refused_key_refuses_the_batch(t: &Tollgate) {
    let user = t.create_user("ada", "user").await;
    let fine = |i: usize| json!({"name": format!("fine-{i}"), "user_id": user});
    let before = key_ids(t).await;
    for (bad, place, what) in [
        (
            json!({"name": "x", "team_id": "no-such-team"}),
            2,
            "`keys[2].team_id`: no team",
        ),
        (
            json!({"name": "x", "user_id": "no-such-user"}),
            0,
            "`keys[0].user_id`: no user",
        ),
        (
            json!({"name": "x", "user_id": user, "permissions": ["admin"]}),
            3,
            "`keys[3].permissions`: the key's user (role `user`) does not have `admin`",
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01"}),
            1,
            "`keys[1].expires_at` (2001-01-01T00:00:00Z) is in the past",
        ),
        (json!({"name": " "}), 2, "`keys[2].name` must not be empty"),
        (
            json!({"name": "x", "metadata": [1]}),
            1,
            "`keys[1].metadata` must be a JSON object",
        ),
        (
            json!({"name": "x", "rpm": -1}),
            0,
            "`keys[0].rpm` must be zero or more",
        ),
        (
            json!({"name": "x", "colour": "red"}),
            3,
            "`keys[3].colour`: unknown field",
        ),
        (
            json!({"name": "x", "rpm": 1.5}),
            2,
            "`keys[2].rpm`: expected a whole number",
        ),
    ] {
        let mut keys: Vec<Value> = (0..4).map(fine).collect();
        keys[place] = bad.clone();
        let (status, err) = bulk(t, Some(common::tollgate::MASTER_KEY), keys).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{bad}: {message}");
        // The single route refuses the same key with the same status.
        let (status, _) = t
            .admin(Method::POST, "/admin/keys", Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        key_ids(t).await,
        before,
        "nothing of a refused batch exists"
    );
    assert!(audited_creations(t).await.is_empty());
    // Without its bad key, the same batch goes through.
    let (status, created) = bulk(
        t,
        Some(common::tollgate::MASTER_KEY),
        (0..4).map(fine).collect(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(key_ids(t).await.len(), before.len() + 4);
}

async fn batches_are_from_one_to_a_thousand_keys(t: &Tollgate) {
    let master = Some(common::tollgate::MASTER_KEY);
    let key = |i: usize| json!({ "name": format!("k{i}") });
    let (status, err) = bulk(t, master, (0..1001).map(key).collect()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(
        err["error"]["message"],
        "`keys` holds 1001 keys: give from 1 to 1000 per call"
    );
    let (status, err) = bulk(t, master, Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = t
        .call(Method::POST, "/admin/keys/bulk", master, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(key_ids(t).await.is_empty());

    // A thousand keys with some metadata: over the other routes' 256 KiB, within the cap.
    let padding = "x".repeat(300);
    let keys: Vec<Value> = (0..1000)
        .map(|i| json!({ "name": format!("k{i}"), "metadata": {"note": padding} }))
        .collect();
    let (status, created) = bulk(t, master, keys).await;
    assert_eq!(status, StatusCode::CREATED);
    let created = created["data"].as_array().unwrap();
    assert_eq!(created.len(), 1000);
    assert_eq!(created[999]["name"], "k999");
    assert_eq!(key_ids(t).await.len(), 1000);
    // Beyond 4 MiB the body itself is refused.
    let padding = "x".repeat(4300);
    let keys: Vec<Value> = (0..1000)
        .map(|i| json!({ "name": format!("k{i}"), "metadata": {"note": padding} }))
        .collect();
    let (status, err) = bulk(t, master, keys).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["error"]["code"], "payload_too_large");
}

async fn keys_without_admin_cannot_create_in_bulk(t: &Tollgate) {
    let (_, model_key) = t.create_key(json!({"name": "svc"})).await;
    let (_, admin_key) = t
        .create_key(json!({"name": "ops", "permissions": ["admin"]}))
        .await;
    let before = key_ids(t).await;
    let keys = vec![json!({"name": "a"}), json!({"name": "b"})];
    let (status, err) = bulk(t, None, keys.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    let (status, err) = bulk(t, Some(&model_key), keys.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "forbidden");
    assert_eq!(key_ids(t).await, before);
    // An admin key may, and is the audit's actor.
    let (status, created) = bulk(t, Some(&admin_key), keys).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let audit = audited_creations(t).await;
    let actors: Vec<&Value> = audit
        .iter()
        .filter(|e| {
            created["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == e["target"])
        })
        .map(|e| &e["actor"])
        .collect();
    assert_eq!(actors.len(), 2);
    assert!(actors
        .iter()
        .all(|a| a.as_str().unwrap().starts_with("key:")));
}
