//! Isolation between organizations (docs/DESIGN.md, "Org admins"): an `org_admin` of org
//! A, tried on every admin route against org B's users, teams, keys, usage, alerts and
//! audit events, gets 404 (or 403 for what no org admin may do) and finds nothing of org B
//! in any list, report or log; within org A the same routes work. The table of routes is
//! checked against the routes the source declares, so a route added later without a row
//! here fails the test. Run on SQLite and on Postgres; and through a real Envoy for keys.

mod common;

use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tollgate::store::{AlertCrossing, SpendKind};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

const SECRET: &str = "isolation-secret-0123456789-0123456789-abcdef";
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

/// What one org holds, as the master key created it.
struct Org {
    id: String,
    team: String,
    user: String,
    key: String,
    key_secret: String,
}

impl Org {
    /// Every id of the org: itself, its user, team and key.
    fn ids(&self) -> BTreeSet<String> {
        [&self.id, &self.team, &self.user, &self.key]
            .into_iter()
            .cloned()
            .collect()
    }
}

struct World {
    t: Tollgate,
    a: Org,
    b: Org,
    /// The org admin of org A: (id, token).
    admin_a: (String, String),
}

async fn master(t: &Tollgate, method: Method, path: &str, body: Value) -> Value {
    let (status, answer) = t.admin(method, path, Some(body)).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// A user with a password (in `org`, or in none), logged in: (id, access token).
async fn person(t: &Tollgate, username: &str, role: &str, org: Option<&str>) -> (String, String) {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "role": role,
        "password": PASSWORD,
        "org_id": org,
    });
    let user = master(t, Method::POST, "/admin/users", body).await;
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

/// An org with a team, a user in it and the user's team key, each with a budget (so that
/// they show in `/admin/budgets`), a usage record of the key and an alert of each.
async fn org(t: &Tollgate, name: &str) -> Org {
    let budget = json!(100.0);
    let org = master(
        t,
        Method::POST,
        "/admin/orgs",
        json!({"name": name, "max_budget": budget}),
    )
    .await;
    let id = id_of(&org);
    let team = master(
        t,
        Method::POST,
        "/admin/teams",
        json!({"name": format!("{name}-team"), "org_id": id, "max_budget": budget}),
    )
    .await;
    let user = master(
        t,
        Method::POST,
        "/admin/users",
        json!({
            "username": format!("{name}-dev"),
            "email": format!("{name}-dev@example.com"),
            "org_id": id,
            "max_budget": budget,
        }),
    )
    .await;
    master(
        t,
        Method::POST,
        &format!("/admin/teams/{}/members", id_of(&team)),
        json!({"user_id": id_of(&user)}),
    )
    .await;
    let (key, key_secret) = t
        .create_key(json!({
            "name": format!("{name}-key"),
            "user_id": id_of(&user),
            "team_id": id_of(&team),
            "max_budget": budget,
        }))
        .await;
    let now = tollgate::domain::now();
    let record = UsageRecord {
        request_id: format!("{name}-request"),
        at: now,
        key_id: Some(key.clone()),
        user_id: Some(id_of(&user)),
        team_id: Some(id_of(&team)),
        org_id: Some(id.clone()),
        model: Some("gpt-4o".into()),
        tokens: TokenUsage {
            input_tokens: 10,
            output_tokens: 5,
            ..TokenUsage::default()
        },
        cost_usd: 1.0,
        status: 200,
        latency_ms: 5,
        estimated: false,
        source: UsageSource::ExtProc,
    };
    t.app.store.record_usage(&[record]).await.unwrap();
    let crossings: Vec<AlertCrossing> = [
        (SpendKind::Key, key.clone()),
        (SpendKind::User, id_of(&user)),
        (SpendKind::Team, id_of(&team)),
        (SpendKind::Org, id.clone()),
    ]
    .into_iter()
    .map(|(entity_kind, entity_id)| AlertCrossing {
        entity_kind,
        entity_id,
        period_start: now - 60,
        period_end: now + 3600,
        threshold: 50,
        spend_usd: 60.0,
        budget_usd: 100.0,
        created_at: now,
    })
    .collect();
    t.app.store.raise_alerts(&crossings).await.unwrap();
    Org {
        id,
        team: id_of(&team),
        user: id_of(&user),
        key,
        key_secret,
    }
}

impl World {
    async fn new(yaml: &str) -> World {
        let t = Tollgate::start(&format!("{}{yaml}", config())).await;
        let a = org(&t, "acme").await;
        let b = org(&t, "globex").await;
        let admin_a = person(&t, "acme-admin", "org_admin", Some(&a.id)).await;
        World { t, a, b, admin_a }
    }

    /// Calls as org A's admin and checks the status.
    async fn expect(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, answer) = self
            .t
            .call(method.clone(), path, Some(&self.admin_a.1), body)
            .await;
        assert_eq!(status.as_u16(), want, "{method} {path}: {answer}");
        answer
    }

    /// Every id of org B, and the ids org A's admin must never see.
    fn foreign(&self) -> BTreeSet<String> {
        self.b.ids()
    }

    /// Fails when any id of org B appears anywhere in `answer`.
    fn assert_nothing_of_b(&self, what: &str, answer: &Value) {
        let text = answer.to_string();
        for id in self.foreign() {
            assert!(!text.contains(&id), "{what} shows `{id}` of org B: {text}");
        }
        assert!(!text.contains("globex"), "{what} names org B: {text}");
    }

    /// A user of org A made for one case.
    async fn spare_user(&self, name: &str) -> String {
        let body =
            json!({"username": name, "email": format!("{name}@example.com"), "org_id": self.a.id});
        id_of(&master(&self.t, Method::POST, "/admin/users", body).await)
    }
}

/// The admin routes the source declares (`.route("/admin/…", get(…).post(…))` in
/// src/admin/*.rs), as (method, path) with `{…}` placeholders.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/admin");
    for entry in std::fs::read_dir(dir).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for declared in source.split(".route(").skip(1) {
            let declared = declared.trim_start();
            let Some(rest) = declared.strip_prefix('"') else {
                continue;
            };
            let (path, rest) = rest.split_once('"').unwrap();
            if !path.starts_with("/admin/") {
                continue;
            }
            // The handlers: up to the end of this `.route(…)`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let handlers = &rest[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                let call = format!("{method}(");
                let found = handlers.match_indices(&call).any(|(i, _)| {
                    i == 0 || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if found {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    routes
}

/// The rows of the table: every admin route, each tried below.
const TABLE: &[(&str, &str)] = &[
    ("GET", "/admin/users"),
    ("POST", "/admin/users"),
    ("GET", "/admin/users/{id}"),
    ("PATCH", "/admin/users/{id}"),
    ("DELETE", "/admin/users/{id}"),
    ("POST", "/admin/users/{id}/unlock"),
    ("GET", "/admin/teams"),
    ("POST", "/admin/teams"),
    ("GET", "/admin/teams/{id}"),
    ("PATCH", "/admin/teams/{id}"),
    ("DELETE", "/admin/teams/{id}"),
    ("POST", "/admin/teams/{id}/members"),
    ("DELETE", "/admin/teams/{id}/members/{user_id}"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("POST", "/admin/keys/bulk"),
    ("GET", "/admin/keys/{id}"),
    ("PATCH", "/admin/keys/{id}"),
    ("DELETE", "/admin/keys/{id}"),
    ("POST", "/admin/keys/{id}/rotate"),
    ("POST", "/admin/keys/{id}/block"),
    ("POST", "/admin/keys/{id}/unblock"),
    ("GET", "/admin/orgs"),
    ("POST", "/admin/orgs"),
    ("GET", "/admin/orgs/{id}"),
    ("PATCH", "/admin/orgs/{id}"),
    ("DELETE", "/admin/orgs/{id}"),
    ("GET", "/admin/roles"),
    ("POST", "/admin/roles"),
    ("GET", "/admin/roles/{name}"),
    ("PATCH", "/admin/roles/{name}"),
    ("DELETE", "/admin/roles/{name}"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/budgets"),
    ("GET", "/admin/alerts"),
    ("GET", "/admin/audit"),
];

#[test]
fn the_table_names_every_admin_route() {
    let table: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let declared = declared_routes();
    assert!(declared.len() > 30, "routes not found: {declared:?}");
    let missing: Vec<_> = declared.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "admin routes without a row in TABLE (add one, and its cases to `every_route`): {missing:?}"
    );
    let stale: Vec<_> = table.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "rows for routes that do not exist: {stale:?}"
    );
}

/// Tries one route (a row of [`TABLE`]) across orgs and within org A.
async fn try_route(w: &World, method: &str, route: &str) {
    let (a, b) = (&w.a, &w.b);
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    match (method, route) {
        ("GET", "/admin/users") => {
            let list = w.expect(m(method), route, None, 200).await;
            w.assert_nothing_of_b(route, &list);
            assert!(list.to_string().contains(&a.user), "{list}");
        }
        ("POST", "/admin/users") => {
            let body =
                |name: &str| json!({"username": name, "email": format!("{name}@example.com")});
            let mut other = body("into-b");
            other["org_id"] = json!(b.id);
            w.expect(m(method), route, Some(other), 403).await;
            let mut global = body("global-admin");
            global["role"] = json!("admin");
            w.expect(m(method), route, Some(global), 403).await;
            let mut peer = body("peer-admin");
            peer["role"] = json!("org_admin");
            let made = w.expect(m(method), route, Some(peer), 201).await;
            assert_eq!(made["org_id"], json!(a.id), "{made}");
            let made = w.expect(m(method), route, Some(body("new-dev")), 201).await;
            assert_eq!(made["org_id"], json!(a.id), "{made}");
            assert_eq!(made["role"], "user");
        }
        ("GET", "/admin/users/{id}") => {
            w.expect(m(method), &format!("/admin/users/{}", b.user), None, 404)
                .await;
            let user = w
                .expect(m(method), &format!("/admin/users/{}", a.user), None, 200)
                .await;
            assert_eq!(user["id"], json!(a.user));
        }
        ("PATCH", "/admin/users/{id}") => {
            let rpm = json!({"rpm": 7});
            w.expect(
                m(method),
                &format!("/admin/users/{}", b.user),
                Some(rpm.clone()),
                404,
            )
            .await;
            let own = format!("/admin/users/{}", a.user);
            w.expect(m(method), &own, Some(json!({"role": "admin"})), 403)
                .await;
            w.expect(m(method), &own, Some(json!({"org_id": b.id})), 400)
                .await;
            let user = w.expect(m(method), &own, Some(rpm), 200).await;
            assert_eq!(user["rpm"], 7);
            assert_eq!(user["role"], "user");
        }
        ("DELETE", "/admin/users/{id}") => {
            w.expect(m(method), &format!("/admin/users/{}", b.user), None, 404)
                .await;
            let spare = w.spare_user("to-delete").await;
            w.expect(m(method), &format!("/admin/users/{spare}"), None, 204)
                .await;
        }
        ("POST", "/admin/users/{id}/unlock") => {
            w.expect(
                m(method),
                &format!("/admin/users/{}/unlock", b.user),
                None,
                404,
            )
            .await;
            w.expect(
                m(method),
                &format!("/admin/users/{}/unlock", a.user),
                None,
                200,
            )
            .await;
        }
        ("GET", "/admin/teams") => {
            let list = w.expect(m(method), route, None, 200).await;
            w.assert_nothing_of_b(route, &list);
            assert!(list.to_string().contains(&a.team), "{list}");
        }
        ("POST", "/admin/teams") => {
            w.expect(
                m(method),
                route,
                Some(json!({"name": "into-b", "org_id": b.id})),
                403,
            )
            .await;
            let made = w
                .expect(m(method), route, Some(json!({"name": "acme-new"})), 201)
                .await;
            assert_eq!(made["org_id"], json!(a.id), "{made}");
        }
        ("GET", "/admin/teams/{id}") => {
            w.expect(m(method), &format!("/admin/teams/{}", b.team), None, 404)
                .await;
            let team = w
                .expect(m(method), &format!("/admin/teams/{}", a.team), None, 200)
                .await;
            assert_eq!(team["members"][0]["user_id"], json!(a.user), "{team}");
        }
        ("PATCH", "/admin/teams/{id}") => {
            let rpm = json!({"rpm": 9});
            w.expect(
                m(method),
                &format!("/admin/teams/{}", b.team),
                Some(rpm.clone()),
                404,
            )
            .await;
            let team = w
                .expect(
                    m(method),
                    &format!("/admin/teams/{}", a.team),
                    Some(rpm),
                    200,
                )
                .await;
            assert_eq!(team["rpm"], 9);
        }
        ("DELETE", "/admin/teams/{id}") => {
            w.expect(m(method), &format!("/admin/teams/{}", b.team), None, 404)
                .await;
            let spare = master(
                &w.t,
                Method::POST,
                "/admin/teams",
                json!({"name": "acme-spare", "org_id": a.id}),
            )
            .await;
            w.expect(
                m(method),
                &format!("/admin/teams/{}", id_of(&spare)),
                None,
                204,
            )
            .await;
        }
        ("POST", "/admin/teams/{id}/members") => {
            let own = format!("/admin/teams/{}/members", a.team);
            w.expect(
                m(method),
                &format!("/admin/teams/{}/members", b.team),
                Some(json!({"user_id": a.user})),
                404,
            )
            .await;
            w.expect(m(method), &own, Some(json!({"user_id": b.user})), 404)
                .await;
            let spare = w.spare_user("new-member").await;
            w.expect(m(method), &own, Some(json!({"user_id": spare})), 201)
                .await;
        }
        ("DELETE", "/admin/teams/{id}/members/{user_id}") => {
            w.expect(
                m(method),
                &format!("/admin/teams/{}/members/{}", b.team, b.user),
                None,
                404,
            )
            .await;
            let spare = w.spare_user("leaving-member").await;
            master(
                &w.t,
                Method::POST,
                &format!("/admin/teams/{}/members", a.team),
                json!({"user_id": spare}),
            )
            .await;
            w.expect(
                m(method),
                &format!("/admin/teams/{}/members/{spare}", a.team),
                None,
                204,
            )
            .await;
        }
        ("GET", "/admin/keys") => {
            let list = w
                .expect(m(method), "/admin/keys?include_revoked=true", None, 200)
                .await;
            w.assert_nothing_of_b(route, &list);
            assert!(list.to_string().contains(&a.key), "{list}");
            w.expect(
                m(method),
                &format!("/admin/keys?user_id={}", b.user),
                None,
                404,
            )
            .await;
            w.expect(
                m(method),
                &format!("/admin/keys?team_id={}", b.team),
                None,
                404,
            )
            .await;
            let list = w
                .expect(
                    m(method),
                    &format!("/admin/keys?team_id={}", a.team),
                    None,
                    200,
                )
                .await;
            assert_eq!(list["data"][0]["id"], json!(a.key), "{list}");
        }
        ("POST", "/admin/keys") => {
            w.expect(
                m(method),
                route,
                Some(json!({"name": "k", "user_id": b.user})),
                404,
            )
            .await;
            w.expect(
                m(method),
                route,
                Some(json!({"name": "k", "team_id": b.team})),
                404,
            )
            .await;
            let key = w
                .expect(
                    m(method),
                    route,
                    Some(json!({"name": "k", "user_id": a.user, "team_id": a.team})),
                    201,
                )
                .await;
            assert!(key["key"].is_string());
            // No key whose secret could do more than an org admin: not for an `admin` of
            // the org (which would hold `admin`), with or without permissions of its own.
            let boss = master(
                &w.t,
                Method::POST,
                "/admin/users",
                json!({"username": "acme-boss", "email": "boss@example.com", "role": "admin", "org_id": a.id}),
            )
            .await;
            for body in [
                json!({"name": "k", "user_id": id_of(&boss)}),
                json!({"name": "k", "user_id": id_of(&boss), "permissions": ["admin"]}),
            ] {
                w.expect(m(method), route, Some(body), 403).await;
            }
            let bulk = json!({"keys": [{"name": "k", "user_id": id_of(&boss)}]});
            w.expect(m(method), "/admin/keys/bulk", Some(bulk), 403)
                .await;
            // An admin of its org it neither changes nor deletes.
            let boss_path = format!("/admin/users/{}", id_of(&boss));
            w.expect(
                Method::PATCH,
                &boss_path,
                Some(json!({"blocked": true})),
                403,
            )
            .await;
            w.expect(Method::DELETE, &boss_path, None, 403).await;
            w.expect(Method::GET, &boss_path, None, 200).await;
        }
        ("POST", "/admin/keys/bulk") => {
            let keys = |owner: &str| json!({"keys": [{"name": "k1", "user_id": owner}]});
            w.expect(m(method), route, Some(keys(&b.user)), 404).await;
            let made = w.expect(m(method), route, Some(keys(&a.user)), 201).await;
            assert_eq!(made["data"][0]["user_id"], json!(a.user), "{made}");
        }
        ("GET", "/admin/keys/{id}") => {
            w.expect(m(method), &format!("/admin/keys/{}", b.key), None, 404)
                .await;
            w.expect(m(method), &format!("/admin/keys/{}", a.key), None, 200)
                .await;
        }
        ("PATCH", "/admin/keys/{id}") => {
            let name = json!({"name": "renamed"});
            w.expect(
                m(method),
                &format!("/admin/keys/{}", b.key),
                Some(name.clone()),
                404,
            )
            .await;
            let key = w
                .expect(
                    m(method),
                    &format!("/admin/keys/{}", a.key),
                    Some(name),
                    200,
                )
                .await;
            assert_eq!(key["name"], "renamed");
        }
        ("DELETE", "/admin/keys/{id}") => {
            w.expect(m(method), &format!("/admin/keys/{}", b.key), None, 404)
                .await;
            let (spare, _) =
                w.t.create_key(json!({"name": "spare", "user_id": a.user}))
                    .await;
            let (status, _) =
                w.t.call(
                    m(method),
                    &format!("/admin/keys/{spare}"),
                    Some(&w.admin_a.1),
                    None,
                )
                .await;
            assert!(status.is_success(), "revoking org A's key: {status}");
        }
        ("POST", "/admin/keys/{id}/rotate") => {
            w.expect(
                m(method),
                &format!("/admin/keys/{}/rotate", b.key),
                Some(json!({})),
                404,
            )
            .await;
            let (spare, _) =
                w.t.create_key(json!({"name": "rotated", "user_id": a.user}))
                    .await;
            let rotated = w
                .expect(
                    m(method),
                    &format!("/admin/keys/{spare}/rotate"),
                    Some(json!({})),
                    200,
                )
                .await;
            assert!(rotated["key"].is_string(), "{rotated}");
        }
        ("POST", "/admin/keys/{id}/block") | ("POST", "/admin/keys/{id}/unblock") => {
            let action = route.rsplit('/').next().unwrap();
            w.expect(
                m(method),
                &format!("/admin/keys/{}/{action}", b.key),
                None,
                404,
            )
            .await;
            w.expect(
                m(method),
                &format!("/admin/keys/{}/{action}", a.key),
                None,
                200,
            )
            .await;
        }
        ("GET", "/admin/orgs") => {
            let list = w.expect(m(method), route, None, 200).await;
            w.assert_nothing_of_b(route, &list);
            assert_eq!(list["data"][0]["id"], json!(a.id), "{list}");
        }
        ("POST", "/admin/orgs") => {
            w.expect(m(method), route, Some(json!({"name": "mine"})), 403)
                .await;
        }
        ("GET", "/admin/orgs/{id}") => {
            w.expect(m(method), &format!("/admin/orgs/{}", b.id), None, 404)
                .await;
            w.expect(m(method), &format!("/admin/orgs/{}", a.id), None, 200)
                .await;
        }
        ("PATCH", "/admin/orgs/{id}") => {
            // Its own org's limits and budget stay with admins.
            let lift = json!({"max_budget": 1000000.0});
            w.expect(
                m(method),
                &format!("/admin/orgs/{}", b.id),
                Some(lift.clone()),
                404,
            )
            .await;
            w.expect(m(method), &format!("/admin/orgs/{}", a.id), Some(lift), 403)
                .await;
        }
        ("DELETE", "/admin/orgs/{id}") => {
            w.expect(m(method), &format!("/admin/orgs/{}", b.id), None, 404)
                .await;
            w.expect(m(method), &format!("/admin/orgs/{}", a.id), None, 403)
                .await;
        }
        ("GET", "/admin/roles") | ("GET", "/admin/roles/{name}") => {
            w.expect(m(method), &route.replace("{name}", "viewer"), None, 403)
                .await;
        }
        ("POST", "/admin/roles") => {
            w.expect(m(method), route, Some(json!({"name": "mine"})), 403)
                .await;
        }
        ("PATCH", "/admin/roles/{name}") => {
            w.expect(
                m(method),
                "/admin/roles/mine",
                Some(json!({"permissions": ["chat"]})),
                403,
            )
            .await;
        }
        ("DELETE", "/admin/roles/{name}") => {
            w.expect(m(method), "/admin/roles/mine", None, 403).await;
        }
        ("GET", "/admin/usage") => {
            for group in ["org", "team", "user", "key", "model"] {
                let report = w
                    .expect(
                        m(method),
                        &format!("/admin/usage?group_by={group}"),
                        None,
                        200,
                    )
                    .await;
                w.assert_nothing_of_b(route, &report);
                assert_eq!(report["total"]["requests"], 1, "{group}: {report}");
            }
            w.expect(
                m(method),
                &format!("/admin/usage?org_id={}", b.id),
                None,
                404,
            )
            .await;
            // Naming org B's key finds nothing: the report stays inside org A.
            let report = w
                .expect(
                    m(method),
                    &format!("/admin/usage?key_id={}", b.key),
                    None,
                    200,
                )
                .await;
            assert_eq!(report["total"]["requests"], 0, "{report}");
        }
        ("GET", "/admin/budgets") => {
            let list = w.expect(m(method), route, None, 200).await;
            w.assert_nothing_of_b(route, &list);
            let shown: BTreeSet<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_owned())
                .collect();
            assert!(a.ids().is_subset(&shown), "{list}");
        }
        ("GET", "/admin/alerts") => {
            let list = w.expect(m(method), route, None, 200).await;
            w.assert_nothing_of_b(route, &list);
            let shown: BTreeSet<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["entity_id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(shown, a.ids(), "{list}");
        }
        ("GET", "/admin/audit") => {
            let log = w
                .expect(m(method), "/admin/audit?limit=1000", None, 200)
                .await;
            w.assert_nothing_of_b(route, &log);
            let targets: BTreeSet<String> = log["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["target"].as_str().map(str::to_owned))
                .collect();
            assert!(a.ids().is_subset(&targets), "{log}");
            // Naming org B's user as the target finds nothing either.
            let log = w
                .expect(
                    m(method),
                    &format!("/admin/audit?target={}", b.user),
                    None,
                    200,
                )
                .await;
            assert_eq!(log["data"], json!([]), "{log}");
        }
        other => panic!("no cases for {other:?}: add them here"),
    }
}

/// Every row of the table, then: org B's key still works as before.
async fn every_route(w: &World) {
    for (method, route) in TABLE {
        try_route(w, method, route).await;
    }
    let (status, key) =
        w.t.admin(Method::GET, &format!("/admin/keys/{}", w.b.key), None)
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["revoked_at"], Value::Null, "{key}");
    assert_eq!(key["blocked"], false, "{key}");
    assert_eq!(key["name"], "globex-key", "{key}");
}

#[tokio::test]
async fn an_org_admin_reaches_nothing_of_another_org_on_sqlite() {
    let w = World::new("").await;
    every_route(&w).await;
    w.t.stop().await;
}

#[tokio::test]
async fn an_org_admin_reaches_nothing_of_another_org_on_postgres() {
    let (_, url) = common::db::fresh_postgres().await;
    let w = World::new(&format!("database: {{ url: \"{url}\" }}\n")).await;
    every_route(&w).await;
    w.t.stop().await;
}

/// An org admin without an org manages nothing; a user of org A (not an org admin) gets no
/// more than before.
#[tokio::test]
async fn the_role_without_an_org_and_plain_users_get_nothing_of_an_org() {
    let w = World::new("").await;
    let (_, token) = person(&w.t, "orphan", "org_admin", None).await;
    let token = token.as_str();
    for path in ["/admin/users", "/admin/audit", "/admin/alerts"] {
        let (status, answer) = w.t.call(Method::GET, path, Some(token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    for path in [
        format!("/admin/users/{}", w.a.user),
        format!("/admin/keys/{}", w.a.key),
    ] {
        let (status, answer) = w.t.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    let (status, teams) =
        w.t.call(Method::GET, "/admin/teams", Some(token), None)
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(teams["data"], json!([]), "{teams}");
    w.t.stop().await;
}

/// Through a real Envoy: org A's admin creates a key for org A's user, and it works; org
/// A's admin can neither see nor revoke org B's key, which keeps working.
#[tokio::test]
async fn org_keys_through_envoy() {
    use common::envoy::Envoy;
    use common::upstream::post_json;
    use tollgate::mock_llm::MockLlm;

    let w = World::new("").await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", w.t.grpc, mock.addr).await;
    let chat = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let made = w
        .expect(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "by-org-admin", "user_id": w.a.user})),
            201,
        )
        .await;
    let new_key = made["key"].as_str().unwrap().to_owned();
    let call = |key: String| {
        let envoy = &envoy;
        let chat = &chat;
        async move {
            let auth = format!("Bearer {key}");
            let (status, _, body) = post_json(
                envoy,
                "/v1/chat/completions",
                &[("authorization", &auth)],
                chat,
            )
            .await;
            (status, body)
        }
    };
    let (status, body) = call(new_key.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    w.expect(Method::GET, &format!("/admin/keys/{}", w.b.key), None, 404)
        .await;
    w.expect(
        Method::DELETE,
        &format!("/admin/keys/{}", w.b.key),
        None,
        404,
    )
    .await;
    w.expect(
        Method::POST,
        &format!("/admin/keys/{}/block", w.b.key),
        None,
        404,
    )
    .await;
    let (status, body) = call(w.b.key_secret.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "org B's key after org A's admin tried it: {body}"
    );
    // Its own org's key it does revoke, and Envoy refuses it from then on.
    let (status, _) =
        w.t.call(
            Method::DELETE,
            &format!("/admin/keys/{}", id_of(&made)),
            Some(&w.admin_a.1),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let (status, body) = call(new_key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    w.t.stop().await;
}

/// The web UI as org A's admin: its pages list org A's keys, teams, users and budgets and
/// nothing of org B; org B's key, team and user by address are 404; the key form does not
/// find org B's user as an owner.
#[tokio::test]
async fn the_web_ui_shows_an_org_admin_only_its_org() {
    use common::ui::{Browser, Db, Stack, PASSWORD};

    let s = Stack::start(Db::Sqlite, "").await;
    let a = org(&s.t, "acme").await;
    let b = org(&s.t, "globex").await;
    let body = json!({
        "username": "acme-admin",
        "email": "acme-admin@example.com",
        "role": "org_admin",
        "password": PASSWORD,
        "org_id": a.id,
    });
    master(&s.t, Method::POST, "/admin/users", body).await;
    let browser = Browser::new(format!("http://{}", s.t.http));
    browser.signed_in("acme-admin", PASSWORD).await;
    let shown = |page: &common::ui::Page, what: &str| {
        assert_eq!(page.status, StatusCode::OK, "{what}: {}", page.body);
        for id in b.ids() {
            assert!(!page.body.contains(&id), "{what} shows `{id}` of org B");
        }
        assert!(!page.body.contains("globex"), "{what} names org B");
    };
    let keys = browser.get("/keys").await;
    shown(&keys, "/keys");
    assert!(keys.contains("acme-key"), "{}", keys.body);
    let teams = browser.get("/teams").await;
    shown(&teams, "/teams");
    assert!(teams.contains("acme-team"), "{}", teams.body);
    let users = browser.get("/users").await;
    shown(&users, "/users");
    assert!(users.contains("acme-dev"), "{}", users.body);
    let budgets = browser.get("/budgets").await;
    shown(&budgets, "/budgets");
    assert!(budgets.contains("acme-key"), "{}", budgets.body);
    for path in ["/usage", "/profile"] {
        shown(&browser.get(path).await, path);
    }
    for path in [
        format!("/keys/{}", b.key),
        format!("/teams/{}", b.team),
        format!("/users/{}", b.user),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
    }
    // Filtering the key list by org B's user does not find that user.
    let page = browser.get("/keys?user=globex-dev").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.body);
    assert!(!page.body.contains(&b.user), "{}", page.body);
    s.t.stop().await;
}

/// A viewer, a manager or a custom role with `usage:read` in an org does not read across
/// the installation (that would show other orgs); outside every org they still do.
#[tokio::test]
async fn readers_in_an_org_do_not_read_other_orgs() {
    let w = World::new("").await;
    master(
        &w.t,
        Method::POST,
        "/admin/roles",
        json!({"name": "analyst", "permissions": ["chat", "usage:read"]}),
    )
    .await;
    let global = [
        "/admin/users",
        "/admin/usage",
        "/admin/budgets",
        "/admin/audit",
    ];
    for (name, role) in [("vee", "viewer"), ("mae", "manager"), ("ana", "analyst")] {
        let (_, token) = person(&w.t, name, role, Some(&w.a.id)).await;
        for path in global {
            let (status, answer) = w.t.call(Method::GET, path, Some(&token), None).await;
            // Budgets answer a person their own (their org's); the rest is refused.
            if path != "/admin/budgets" {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {path}: {answer}");
            }
            for id in w.b.ids() {
                assert!(!answer.to_string().contains(&id), "{role} {path}: {answer}");
            }
        }
        let path = format!("/admin/users/{}", w.b.user);
        let (status, answer) = w.t.call(Method::GET, &path, Some(&token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role} {path}: {answer}");
    }
    // The same viewer outside every org reads everything, as before orgs.
    let (_, token) = person(&w.t, "vic", "viewer", None).await;
    let token = token.as_str();
    for path in global {
        let (status, answer) = w.t.call(Method::GET, path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    }
    let (_, users) =
        w.t.call(Method::GET, "/admin/users", Some(token), None)
            .await;
    assert!(users.to_string().contains(&w.b.user), "{users}");
    w.t.stop().await;
}
