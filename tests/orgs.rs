//! Organizations over the HTTP API: `/admin/orgs` (create, read, change, delete, with
//! their validation, conflicts and audit), `org_id` on teams and users (set at creation,
//! never moved), an org's spend, and what people of one org see of others.

mod common;

use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "orgs-secret-0123456789-0123456789-abcdefghij";
const PASSWORD: &str = "Correct-Horse-42";

fn config() -> String {
    format!(
        "auth:\n  session: {{ secret: {SECRET} }}\n  login: {{ per_address_per_minute: 1000, per_account_per_minute: 1000 }}\n"
    )
}

fn id_of(body: &Value) -> String {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_owned()
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"))
        .iter()
        .map(id_of)
        .collect()
}

/// A user with a password (in `org`, when given), logged in: (id, access token).
async fn person(t: &Tollgate, username: &str, role: &str, org: Option<&str>) -> (String, String) {
    let mut body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "role": role,
        "password": PASSWORD,
    });
    if let Some(org) = org {
        body["org_id"] = json!(org);
    }
    let (status, user) = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (status, tokens) = t
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": username, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    (
        id_of(&user),
        tokens["access_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn orgs_round_trip_with_validation_conflicts_and_audit() {
    let t = Tollgate::start("").await;
    let (status, acme) = t
        .admin(
            Method::POST,
            "/admin/orgs",
            Some(json!({
                "name": "Acme",
                "max_budget": 100.0,
                "budget_duration": "1mo",
                "rpm": 600,
                "tpm": 100000.0,
                "max_parallel": 4,
                "metadata": {"tier": "gold"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{acme}");
    let acme_id = id_of(&acme);
    assert_eq!(acme["name"], "Acme");
    assert_eq!(acme["tpm"], 100000);
    assert_eq!(acme["max_parallel"], 4);

    let (status, got) = t
        .admin(Method::GET, &format!("/admin/orgs/{acme_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["spend"], 0.0);
    assert_eq!(got["max_budget"], 100.0);
    assert_eq!(got["metadata"], json!({"tier": "gold"}));

    let (status, err) = t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Acme"})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["message"], "an org named Acme already exists");
    for (body, message) in [
        (json!({"name": ""}), "`name` must not be empty"),
        (
            json!({"name": "x", "rpm": -1}),
            "`rpm` must be zero or more",
        ),
        (
            json!({"name": "x", "max_parallel": -2}),
            "`max_parallel` must be 1 or more",
        ),
        (
            json!({"name": "x", "max_budget": -1.0}),
            "`max_budget` must be",
        ),
        (
            json!({"name": "x", "budget_duration": "2w"}),
            "budget_duration",
        ),
        (json!({"name": "x", "teams": []}), "unknown field `teams`"),
        (
            json!({"name": "x", "metadata": [1]}),
            "`metadata` must be a JSON object",
        ),
    ] {
        let (status, err) = t
            .admin(Method::POST, "/admin/orgs", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        let text = err["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }

    let (status, patched) = t
        .admin(
            Method::PATCH,
            &format!("/admin/orgs/{acme_id}"),
            Some(json!({"name": "Acme Corp", "max_budget": null, "max_parallel": 9})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "Acme Corp");
    assert_eq!(patched["max_budget"], Value::Null);
    assert_eq!(patched["max_parallel"], 9);
    assert_eq!(patched["rpm"], 600);

    // Teams and users name their org at creation; it never changes.
    let (status, team) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "eng", "org_id": acme_id})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    assert_eq!(team["org_id"], json!(acme_id));
    let team_id = id_of(&team);
    let (status, err) = t
        .admin(
            Method::PATCH,
            &format!("/admin/teams/{team_id}"),
            Some(json!({"org_id": null})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`org_id` cannot be changed"));
    let (status, user) = t
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"username": "ada", "email": "ada@example.com", "org_id": acme_id})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["org_id"], json!(acme_id));
    let user_id = id_of(&user);
    let (status, _) = t
        .admin(
            Method::PATCH,
            &format!("/admin/users/{user_id}"),
            Some(json!({"org_id": "elsewhere"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, err) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "ghost", "org_id": "no-such-org"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["message"], "org no-such-org does not exist");

    // An org is deleted only once it has no teams nor users.
    let (status, err) = t
        .admin(Method::DELETE, &format!("/admin/orgs/{acme_id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(
        err["error"]["message"],
        "org Acme Corp still has 1 team(s) and 1 user(s): delete them first"
    );
    for path in [
        format!("/admin/teams/{team_id}"),
        format!("/admin/users/{user_id}"),
        format!("/admin/orgs/{acme_id}"),
    ] {
        let (status, body) = t.admin(Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {body}");
    }
    let (status, _) = t
        .admin(Method::GET, &format!("/admin/orgs/{acme_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = t.admin(Method::GET, "/admin/orgs", None).await;
    assert_eq!(ids(&list), Vec::<String>::new());

    let (_, audit) = t
        .admin(Method::GET, &format!("/admin/audit?target={acme_id}"), None)
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["org.delete", "org.update", "org.create"]);
    t.stop().await;
}

#[tokio::test]
async fn only_admins_write_orgs_and_people_see_only_their_own() {
    let t = Tollgate::start(&config()).await;
    let (_, acme) = t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Acme"})))
        .await;
    let (_, globex) = t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Globex"})))
        .await;
    let (acme_id, globex_id) = (id_of(&acme), id_of(&globex));
    let (_, ada) = person(&t, "ada", "manager", Some(&acme_id)).await;
    let (_, pat) = person(&t, "pat", "user", None).await;
    let (_, vic) = person(&t, "vic", "viewer", None).await;

    // Ada sees her org and nothing of another.
    let (status, list) = t.call(Method::GET, "/admin/orgs", Some(&ada), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list), vec![acme_id.clone()]);
    let (status, own) = t
        .call(
            Method::GET,
            &format!("/admin/orgs/{acme_id}"),
            Some(&ada),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let (status, err) = t
        .call(
            Method::GET,
            &format!("/admin/orgs/{globex_id}"),
            Some(&ada),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    // Someone outside every org sees none; a viewer reads them all.
    let (_, list) = t.call(Method::GET, "/admin/orgs", Some(&pat), None).await;
    assert_eq!(ids(&list), Vec::<String>::new());
    let (_, list) = t.call(Method::GET, "/admin/orgs", Some(&vic), None).await;
    assert_eq!(ids(&list), vec![acme_id.clone(), globex_id.clone()]);

    // Nobody but an admin creates, changes or deletes an org, nor puts a team in one.
    for token in [&ada, &pat, &vic] {
        for (method, path, body) in [
            (
                Method::POST,
                "/admin/orgs".to_owned(),
                Some(json!({"name": "x"})),
            ),
            (
                Method::PATCH,
                format!("/admin/orgs/{acme_id}"),
                Some(json!({"max_budget": 1e9})),
            ),
            (Method::DELETE, format!("/admin/orgs/{acme_id}"), None),
        ] {
            let (status, err) = t.call(method.clone(), &path, Some(token), body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {err}");
        }
    }
    let (status, err) = t
        .call(
            Method::POST,
            "/admin/teams",
            Some(&ada),
            Some(json!({"name": "sneaky", "org_id": globex_id})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    t.stop().await;
}

/// $1000 per million tokens: a request costs a few cents.
const PRICED: &str = "models:\n  - { name: gpt-4o, pricing: { input_per_million: 1000, output_per_million: 1000 } }\nusage: { batch_interval: 20ms }\n";

fn chat() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]})
}

/// The budget cascade through a real Envoy and the mock LLM: an org's budget, tighter than
/// its key's, user's and team's, refuses every key of the org (and its people signed in
/// with a login token) once spent, while each of those budgets still has room.
#[tokio::test]
async fn the_org_budget_refuses_when_it_is_the_tightest() {
    use common::envoy::Envoy;
    use common::upstream::post_json;
    use std::time::{Duration, Instant};
    use tollgate::mock_llm::MockLlm;

    let t = Tollgate::start(&format!("{PRICED}{}", config())).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await;
    let roomy = json!(100.0);
    let (_, org) = t
        .admin(
            Method::POST,
            "/admin/orgs",
            Some(json!({"name": "Acme", "max_budget": 0.2, "budget_duration": "1mo"})),
        )
        .await;
    let org_id = id_of(&org);
    let mut keys = Vec::new();
    for team in ["eng", "ops"] {
        let (status, team) = t
            .admin(
                Method::POST,
                "/admin/teams",
                Some(json!({"name": team, "org_id": org_id, "max_budget": roomy})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{team}");
        let (status, user) = t
            .admin(
                Method::POST,
                "/admin/users",
                Some(json!({
                    "username": format!("{}-dev", team["name"].as_str().unwrap()),
                    "email": format!("{}@acme.example", team["name"].as_str().unwrap()),
                    "org_id": org_id,
                    "max_budget": roomy,
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let (key_id, key) = t
            .create_key(json!({
                "name": "k",
                "team_id": id_of(&team),
                "user_id": id_of(&user),
                "max_budget": roomy,
            }))
            .await;
        keys.push((key_id, key, id_of(&team), id_of(&user)));
    }
    let (_, person_token) = person(&t, "pat", "user", Some(&org_id)).await;

    // Spend the org's budget with the first key until Check refuses it for good: until the
    // org's committed spend leaves no room for one more estimate. (A refusal may come a
    // little early, while a settled cost is also in the ledger's last read of the store.)
    let estimate = ((chat().to_string().len() as f64 / 4.0).ceil() + 20.0) * 1000.0 / 1e6;
    let first = format!("Bearer {}", keys[0].1);
    let mut refused = None;
    for _ in 0..200 {
        let (status, _, body) = post_json(
            &envoy,
            "/v1/chat/completions",
            &[("authorization", &first)],
            &chat(),
        )
        .await;
        if status == StatusCode::OK {
            continue;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let (_, shown) = t
            .admin(Method::GET, &format!("/admin/orgs/{org_id}"), None)
            .await;
        if shown["spend"].as_f64().unwrap() + estimate > 0.2 {
            refused = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = refused.expect("the org's budget ran out");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("your organization"), "{message}");
    let served = mock.requests().len();
    assert!(served >= 2, "only {served} requests before the refusal");

    // The spend shows on the org (and group_by=org), and every other budget has room.
    let started = Instant::now();
    let mut org_spend = 0.0;
    let mut key_spend = 0.0;
    while started.elapsed() < Duration::from_secs(3) {
        let (_, shown) = t
            .admin(Method::GET, &format!("/admin/orgs/{org_id}"), None)
            .await;
        org_spend = shown["spend"].as_f64().unwrap();
        let (_, key) = t
            .admin(Method::GET, &format!("/admin/keys/{}", keys[0].0), None)
            .await;
        key_spend = key["spend"].as_f64().unwrap();
        if org_spend > 0.0 && (org_spend - key_spend).abs() < 1e-9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(org_spend > 0.0);
    assert!(
        (org_spend - key_spend).abs() < 1e-9,
        "org {org_spend}, key {key_spend}"
    );
    for path in [
        format!("/admin/teams/{}", keys[0].2),
        format!("/admin/users/{}", keys[0].3),
    ] {
        let (_, shown) = t.admin(Method::GET, &path, None).await;
        assert!(
            (shown["spend"].as_f64().unwrap() - org_spend).abs() < 1e-9,
            "{path}: {shown}"
        );
        assert!(shown["spend"].as_f64().unwrap() < 100.0);
    }
    let (_, report) = t
        .admin(Method::GET, "/admin/usage?group_by=org", None)
        .await;
    assert_eq!(report["data"][0]["group"], json!(org_id), "{report}");
    assert_eq!(
        report["data"][0]["requests"],
        json!(served as u64),
        "{report}"
    );

    // Another team's key and a person of the org are refused too; nothing more is served.
    let second = format!("Bearer {}", keys[1].1);
    let person_auth = format!("Bearer {person_token}");
    for auth in [&second, &person_auth] {
        let (status, _, body) = post_json(
            &envoy,
            "/v1/chat/completions",
            &[("authorization", auth)],
            &chat(),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{auth}: {body}");
        assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    }
    assert_eq!(mock.requests().len(), served);

    // Lifting the org's budget lets the same keys through at once (the caches are told).
    let (status, _) = t
        .admin(
            Method::PATCH,
            &format!("/admin/orgs/{org_id}"),
            Some(json!({"max_budget": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for auth in [&second, &person_auth] {
        let (status, _, body) = post_json(
            &envoy,
            "/v1/chat/completions",
            &[("authorization", auth)],
            &chat(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    t.stop().await;
}
