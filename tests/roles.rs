//! The role table of the HTTP API (docs/DESIGN.md, "Roles on the HTTP API" and "Keys narrow
//! their owner"), route by route: who is allowed (and gets a real answer) and who is refused
//! (403 `forbidden`, or 401 without a credential).
//!
//! Every test starts its own tollgate with sessions on and the same cast:
//! - the master key, an admin key (`["admin"]`, no owner), a key without `admin`, no credential;
//! - people logged in through `/v1/login`: `admin`, `manager` (creates and owns team A),
//!   `lone` (a manager in no team), `user` (owner of team B, member of team A), `other` (a
//!   second `user`, in no team) and `viewer` (owner of team C, which gives a viewer nothing).

mod common;

use common::tollgate::{Tollgate, MASTER_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const SECRET: &str = "roles-secret-0123456789-0123456789-abcdefgh";
const PASSWORD: &str = "Correct-Horse-42";

/// Sessions on, and login limits high enough for every login of a test from 127.0.0.1.
fn config() -> String {
    format!(
        "auth:\n  session: {{ secret: {SECRET} }}\n  login: {{ per_address_per_minute: 1000, per_account_per_minute: 1000 }}\n"
    )
}

/// One credential: a label for failure messages, the user's (or key's) id, the bearer token.
struct Cred {
    label: &'static str,
    id: String,
    token: Option<String>,
}

struct World {
    t: Tollgate,
    master: Cred,
    admin_key: Cred,
    model_key: Cred,
    nobody: Cred,
    admin: Cred,
    manager: Cred,
    lone: Cred,
    user: Cred,
    other: Cred,
    viewer: Cred,
    team_a: String,
    team_b: String,
    team_c: String,
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// The ids of a `{"data": [...]}` list.
fn ids(body: &Value) -> BTreeSet<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn set<S: AsRef<str>, const N: usize>(items: [S; N]) -> BTreeSet<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

fn str_of<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{field}` in {body}"))
}

impl World {
    async fn new() -> World {
        let t = Tollgate::start(&config()).await;
        let admin = person(&t, "admin", "admin").await;
        let manager = person(&t, "manager", "manager").await;
        let lone = person(&t, "lone", "manager").await;
        let user = person(&t, "user", "user").await;
        let other = person(&t, "other", "user").await;
        let viewer = person(&t, "viewer", "viewer").await;

        let (admin_key_id, admin_key) = t
            .create_key(json!({"name": "ops", "permissions": ["admin"]}))
            .await;
        let (model_key_id, model_key) = t.create_key(json!({"name": "svc"})).await;

        let mut w = World {
            t,
            master: Cred {
                label: "master",
                id: String::new(),
                token: Some(MASTER_KEY.to_owned()),
            },
            admin_key: Cred {
                label: "admin-key",
                id: admin_key_id,
                token: Some(admin_key),
            },
            model_key: Cred {
                label: "model-key",
                id: model_key_id,
                token: Some(model_key),
            },
            nobody: Cred {
                label: "nobody",
                id: String::new(),
                token: None,
            },
            admin,
            manager,
            lone,
            user,
            other,
            viewer,
            team_a: String::new(),
            team_b: String::new(),
            team_c: String::new(),
        };

        // The manager creates team A and so becomes its owner.
        let team = w
            .expect(
                &w.manager,
                Method::POST,
                "/admin/teams",
                Some(json!({"name": "team-a"})),
                201,
            )
            .await;
        w.team_a = str_of(&team, "id").to_owned();
        let team = w
            .expect(
                &w.master,
                Method::GET,
                &format!("/admin/teams/{}", w.team_a),
                None,
                200,
            )
            .await;
        let members = team["members"].as_array().unwrap();
        assert!(
            members
                .iter()
                .any(|m| m["user_id"] == w.manager.id.as_str() && m["role"] == "owner"),
            "the manager owns the team they created: {team}"
        );
        w.team_b = w.master_team("team-b").await;
        w.team_c = w.master_team("team-c").await;
        w.master_member(&w.team_a, &w.user.id, "member").await;
        w.master_member(&w.team_b, &w.user.id, "owner").await;
        w.master_member(&w.team_c, &w.viewer.id, "owner").await;
        w
    }

    async fn master_team(&self, name: &str) -> String {
        let team = self
            .expect(
                &self.master,
                Method::POST,
                "/admin/teams",
                Some(json!({ "name": name })),
                201,
            )
            .await;
        str_of(&team, "id").to_owned()
    }

    async fn master_member(&self, team: &str, user: &str, role: &str) {
        self.expect(
            &self.master,
            Method::POST,
            &format!("/admin/teams/{team}/members"),
            Some(json!({"user_id": user, "role": role})),
            201,
        )
        .await;
    }

    /// The three kinds of admin: the master key, an admin key, an `admin` user.
    fn admins(&self) -> [&Cred; 3] {
        [&self.master, &self.admin_key, &self.admin]
    }

    /// Calls `method path` as `who` and asserts the status, and for an error its code (403
    /// `forbidden`, 401 `unauthorized`, 404 `not_found`, 400 `invalid_request`). Returns the
    /// body.
    async fn expect(
        &self,
        who: &Cred,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let (got, answer) = self
            .t
            .call(method.clone(), path, who.token.as_deref(), body.clone())
            .await;
        let sent = body.map(|b| b.to_string()).unwrap_or_default();
        assert_eq!(
            got,
            StatusCode::from_u16(status).unwrap(),
            "{method} {path} {sent} as {}: {answer}",
            who.label
        );
        let wanted = match status {
            400 => "invalid_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            _ => "",
        };
        if !wanted.is_empty() {
            assert_eq!(
                code(&answer),
                wanted,
                "{method} {path} {sent} as {}: {answer}",
                who.label
            );
        }
        answer
    }

    /// Creates a key through `POST /admin/keys` as `who`; returns its record.
    async fn key(&self, who: &Cred, body: Value) -> Value {
        self.expect(who, Method::POST, "/admin/keys", Some(body), 201)
            .await
    }
}

/// Creates a user with `PASSWORD` as the master key and logs them in.
async fn person(t: &Tollgate, username: &'static str, role: &str) -> Cred {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "role": role,
        "password": PASSWORD,
    });
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
    assert_eq!(status, StatusCode::OK, "login {username}: {tokens}");
    Cred {
        label: username,
        id: str_of(&user, "id").to_owned(),
        token: Some(str_of(&tokens, "access_token").to_owned()),
    }
}

/// Every admin and user route, with placeholder ids (for refusals that come before the route
/// looks at anything).
fn every_route() -> Vec<(Method, &'static str, Option<Value>)> {
    let user = json!({"username": "u", "email": "u@example.com"});
    vec![
        (Method::GET, "/admin/users", None),
        (Method::POST, "/admin/users", Some(user)),
        (Method::GET, "/admin/users/ID", None),
        (Method::PATCH, "/admin/users/ID", Some(json!({"rpm": 1}))),
        (Method::DELETE, "/admin/users/ID", None),
        (Method::POST, "/admin/users/ID/unlock", None),
        (Method::GET, "/admin/roles", None),
        (Method::POST, "/admin/roles", Some(json!({"name": "r"}))),
        (Method::GET, "/admin/roles/r", None),
        (
            Method::PATCH,
            "/admin/roles/r",
            Some(json!({"permissions": []})),
        ),
        (Method::DELETE, "/admin/roles/r", None),
        (Method::GET, "/admin/teams", None),
        (Method::POST, "/admin/teams", Some(json!({"name": "t"}))),
        (Method::GET, "/admin/teams/ID", None),
        (Method::PATCH, "/admin/teams/ID", Some(json!({"rpm": 1}))),
        (Method::DELETE, "/admin/teams/ID", None),
        (
            Method::POST,
            "/admin/teams/ID/members",
            Some(json!({"user_id": "UID"})),
        ),
        (Method::DELETE, "/admin/teams/ID/members/UID", None),
        (Method::GET, "/admin/keys", None),
        (Method::POST, "/admin/keys", Some(json!({"name": "k"}))),
        (Method::GET, "/admin/keys/ID", None),
        (Method::PATCH, "/admin/keys/ID", Some(json!({"name": "k"}))),
        (Method::DELETE, "/admin/keys/ID", None),
        (Method::POST, "/admin/keys/ID/rotate", Some(json!({}))),
        (Method::POST, "/admin/keys/ID/block", None),
        (Method::POST, "/admin/keys/ID/unblock", None),
        (Method::GET, "/admin/audit", None),
        (Method::GET, "/v1/user/profile", None),
        (
            Method::PUT,
            "/v1/user/profile",
            Some(json!({"full_name": "X"})),
        ),
        (Method::GET, "/v1/user/keys", None),
        (Method::POST, "/v1/user/keys", Some(json!({"name": "k"}))),
        (Method::DELETE, "/v1/user/keys/ID", None),
    ]
}

#[tokio::test]
async fn credentials_none_is_401_model_keys_and_blocked_users_are_403() {
    let w = World::new().await;
    for (method, path, body) in every_route() {
        w.expect(&w.nobody, method.clone(), path, body.clone(), 401)
            .await;
        w.expect(&w.model_key, method.clone(), path, body.clone(), 403)
            .await;
    }
    // The user API is for people: the master key and admin keys are refused there.
    for who in [&w.master, &w.admin_key] {
        for (method, path, body) in every_route() {
            if path.starts_with("/v1/user/") {
                w.expect(who, method, path, body, 403).await;
            }
        }
    }
    // Until blocked, `other` reads their profile; once blocked, every route is 403.
    let me = w
        .expect(&w.other, Method::GET, "/v1/user/profile", None, 200)
        .await;
    assert_eq!(me["id"], w.other.id.as_str());
    let blocked = w
        .expect(
            &w.master,
            Method::PATCH,
            &format!("/admin/users/{}", w.other.id),
            Some(json!({"blocked": true})),
            200,
        )
        .await;
    assert_eq!(blocked["blocked"], true);
    let own = format!("/admin/users/{}", w.other.id);
    w.expect(&w.other, Method::GET, &own, None, 403).await;
    for (method, path, body) in every_route() {
        w.expect(&w.other, method, path, body, 403).await;
    }
    // Unblocked, the same token works again.
    w.expect(
        &w.master,
        Method::PATCH,
        &own,
        Some(json!({"blocked": false})),
        200,
    )
    .await;
    w.expect(&w.other, Method::GET, &own, None, 200).await;
    w.t.stop().await;
}

#[tokio::test]
async fn a_token_acts_with_its_user_s_current_role() {
    let w = World::new().await;
    let path = format!("/admin/users/{}", w.user.id);
    let set_role = |role: &str| json!({ "role": role });
    w.expect(
        &w.user,
        Method::POST,
        "/admin/teams",
        Some(json!({"name": "t1"})),
        403,
    )
    .await;
    // Promoted to manager: the same token creates teams.
    w.expect(
        &w.master,
        Method::PATCH,
        &path,
        Some(set_role("manager")),
        200,
    )
    .await;
    let team = w
        .expect(
            &w.user,
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "t1"})),
            201,
        )
        .await;
    assert_eq!(team["name"], "t1");
    // Demoted to viewer: it reads the audit log and creates no keys, even for team B.
    w.expect(
        &w.master,
        Method::PATCH,
        &path,
        Some(set_role("viewer")),
        200,
    )
    .await;
    w.expect(&w.user, Method::GET, "/admin/audit", None, 200)
        .await;
    w.expect(
        &w.user,
        Method::POST,
        "/v1/user/keys",
        Some(json!({"name": "k"})),
        403,
    )
    .await;
    let team_key = json!({"name": "k", "team_id": w.team_b});
    w.expect(&w.user, Method::POST, "/admin/keys", Some(team_key), 403)
        .await;
    // Made an admin: everything, including creating users.
    w.expect(
        &w.master,
        Method::PATCH,
        &path,
        Some(set_role("admin")),
        200,
    )
    .await;
    let body = json!({"username": "by-promoted", "email": "by-promoted@example.com"});
    let made = w
        .expect(&w.user, Method::POST, "/admin/users", Some(body), 201)
        .await;
    assert_eq!(made["username"], "by-promoted");
    w.t.stop().await;
}

#[tokio::test]
async fn users_admins_write_managers_and_viewers_read_users_see_only_themselves() {
    let w = World::new().await;

    // GET /admin/users
    for who in w
        .admins()
        .into_iter()
        .chain([&w.manager, &w.lone, &w.viewer])
    {
        let list = w.expect(who, Method::GET, "/admin/users", None, 200).await;
        assert!(ids(&list).contains(&w.other.id), "{}: {list}", who.label);
    }
    for who in [&w.user, &w.other] {
        w.expect(who, Method::GET, "/admin/users", None, 403).await;
    }

    // GET /admin/users/{id}: readers any record, a `user` only their own.
    let other_path = format!("/admin/users/{}", w.other.id);
    for who in w
        .admins()
        .into_iter()
        .chain([&w.manager, &w.viewer, &w.other])
    {
        let record = w.expect(who, Method::GET, &other_path, None, 200).await;
        assert_eq!(record["id"], w.other.id.as_str(), "{}", who.label);
        assert_eq!(record["username"], "other");
    }
    w.expect(&w.user, Method::GET, &other_path, None, 403).await;
    let admin_path = format!("/admin/users/{}", w.admin.id);
    w.expect(&w.other, Method::GET, &admin_path, None, 403)
        .await;

    // POST /admin/users: admins only.
    let mut made = Vec::new();
    for who in w.admins() {
        let username = format!("made-by-{}", who.label);
        let body = json!({"username": username, "email": format!("{username}@example.com")});
        let user = w
            .expect(who, Method::POST, "/admin/users", Some(body), 201)
            .await;
        assert_eq!(user["username"], username.as_str());
        assert_eq!(user["role"], "user");
        made.push(str_of(&user, "id").to_owned());
    }
    for who in [&w.manager, &w.lone, &w.user, &w.viewer] {
        let body = json!({"username": "sneaky", "email": "sneaky@example.com", "role": "admin"});
        w.expect(who, Method::POST, "/admin/users", Some(body), 403)
            .await;
    }

    // PATCH /admin/users/{id}: admins only; nobody else, not even on their own record.
    for who in w.admins() {
        let name = format!("renamed by {}", who.label);
        let user = w
            .expect(
                who,
                Method::PATCH,
                &other_path,
                Some(json!({ "full_name": name })),
                200,
            )
            .await;
        assert_eq!(user["full_name"], name.as_str());
    }
    for who in [&w.manager, &w.user, &w.viewer] {
        w.expect(
            who,
            Method::PATCH,
            &other_path,
            Some(json!({"full_name": "nope"})),
            403,
        )
        .await;
    }
    for who in [&w.manager, &w.user, &w.viewer] {
        let own = format!("/admin/users/{}", who.id);
        w.expect(
            who,
            Method::PATCH,
            &own,
            Some(json!({"role": "admin"})),
            403,
        )
        .await;
    }

    // POST /admin/users/{id}/unlock: admins only.
    let unlock = format!("/admin/users/{}/unlock", w.other.id);
    for who in w.admins() {
        let user = w.expect(who, Method::POST, &unlock, None, 200).await;
        assert_eq!(user["id"], w.other.id.as_str());
        assert!(user["locked_until"].is_null(), "{user}");
    }
    for who in [&w.manager, &w.user, &w.other, &w.viewer] {
        w.expect(who, Method::POST, &unlock, None, 403).await;
    }

    // DELETE /admin/users/{id}: admins only.
    for who in [&w.manager, &w.lone, &w.user, &w.viewer] {
        w.expect(who, Method::DELETE, &other_path, None, 403).await;
    }
    let still = w
        .expect(&w.master, Method::GET, &other_path, None, 200)
        .await;
    assert_eq!(still["id"], w.other.id.as_str());
    for (who, id) in w.admins().into_iter().zip(&made) {
        let path = format!("/admin/users/{id}");
        w.expect(who, Method::DELETE, &path, None, 204).await;
        w.expect(&w.master, Method::GET, &path, None, 404).await;
    }
    w.t.stop().await;
}

#[tokio::test]
async fn teams_managers_create_and_manage_their_own_viewers_read_all() {
    let w = World::new().await;
    let (a, b, c) = (&w.team_a, &w.team_b, &w.team_c);

    // GET /admin/teams: admins and viewers all, others the teams they belong to.
    for who in w.admins().into_iter().chain([&w.viewer]) {
        let list = w.expect(who, Method::GET, "/admin/teams", None, 200).await;
        assert_eq!(ids(&list), set([a, b, c]), "{}", who.label);
    }
    for (who, teams) in [
        (&w.manager, set([a])),
        (&w.user, set([a, b])),
        (&w.lone, BTreeSet::new()),
        (&w.other, BTreeSet::new()),
    ] {
        let list = w.expect(who, Method::GET, "/admin/teams", None, 200).await;
        assert_eq!(ids(&list), teams, "{}", who.label);
    }

    // GET /admin/teams/{id}: admins and viewers any team, others if a member.
    for (team, readers, refused) in [
        (
            a,
            vec![&w.manager, &w.user, &w.viewer],
            vec![&w.lone, &w.other],
        ),
        (b, vec![&w.user, &w.viewer], vec![&w.manager, &w.other]),
        (c, vec![&w.viewer], vec![&w.user, &w.manager]),
    ] {
        let path = format!("/admin/teams/{team}");
        for who in w.admins().into_iter().chain(readers) {
            let got = w.expect(who, Method::GET, &path, None, 200).await;
            assert_eq!(got["id"], team.as_str(), "{}", who.label);
            assert!(got["members"].is_array(), "{got}");
        }
        for who in refused {
            w.expect(who, Method::GET, &path, None, 403).await;
        }
    }

    // POST /admin/teams: admins and managers (who become owners); not users or viewers.
    let mut made = Vec::new();
    for who in w.admins().into_iter().chain([&w.manager]) {
        let name = format!("made-by-{}", who.label);
        let team = w
            .expect(
                who,
                Method::POST,
                "/admin/teams",
                Some(json!({ "name": name })),
                201,
            )
            .await;
        assert_eq!(team["name"], name.as_str());
        made.push(str_of(&team, "id").to_owned());
    }
    let second = made.pop().unwrap();
    let team = w
        .expect(
            &w.manager,
            Method::GET,
            &format!("/admin/teams/{second}"),
            None,
            200,
        )
        .await;
    assert_eq!(team["members"][0]["user_id"], w.manager.id.as_str());
    assert_eq!(team["members"][0]["role"], "owner");
    for who in [&w.user, &w.viewer] {
        w.expect(
            who,
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "nope"})),
            403,
        )
        .await;
    }

    // PATCH /admin/teams/{id}: admins, and managers on the teams they own. A `user` owning
    // team B and a viewer owning team C may not; nor may a manager who does not own it.
    for (team, allowed, refused) in [
        (
            a,
            vec![&w.manager],
            vec![&w.lone, &w.user, &w.viewer, &w.other],
        ),
        (b, vec![], vec![&w.user, &w.manager, &w.viewer]),
        (c, vec![], vec![&w.viewer, &w.manager]),
    ] {
        let path = format!("/admin/teams/{team}");
        for (n, who) in w.admins().into_iter().chain(allowed).enumerate() {
            let rpm = 100 + n as i64;
            let got = w
                .expect(who, Method::PATCH, &path, Some(json!({ "rpm": rpm })), 200)
                .await;
            assert_eq!(got["id"], team.as_str());
            assert_eq!(got["rpm"], rpm, "{}: {got}", who.label);
        }
        for who in refused {
            w.expect(who, Method::PATCH, &path, Some(json!({"rpm": 1})), 403)
                .await;
        }
    }

    // DELETE /admin/teams/{id}: the same rule.
    for (team, refused) in [
        (a, vec![&w.lone, &w.user, &w.viewer]),
        (b, vec![&w.user, &w.manager, &w.viewer]),
        (c, vec![&w.viewer, &w.manager, &w.user]),
    ] {
        for who in refused {
            w.expect(
                who,
                Method::DELETE,
                &format!("/admin/teams/{team}"),
                None,
                403,
            )
            .await;
        }
    }
    for who in [&w.user, &w.viewer] {
        w.expect(
            who,
            Method::DELETE,
            &format!("/admin/teams/{second}"),
            None,
            403,
        )
        .await;
    }
    for (who, team) in w
        .admins()
        .into_iter()
        .zip(&made)
        .chain([(&w.manager, &second), (&w.manager, a)])
    {
        let path = format!("/admin/teams/{team}");
        w.expect(who, Method::DELETE, &path, None, 204).await;
        w.expect(&w.master, Method::GET, &path, None, 404).await;
    }
    w.t.stop().await;
}

#[tokio::test]
async fn members_are_managed_by_team_owners_but_viewers() {
    let w = World::new().await;
    let (a, b, c) = (&w.team_a, &w.team_b, &w.team_c);
    let add = |team: &str| format!("/admin/teams/{team}/members");
    let remove = |team: &str, user: &str| format!("/admin/teams/{team}/members/{user}");
    let other = json!({"user_id": w.other.id, "role": "member"});

    // Owners (a manager of A, a `user` of B) and admins add and remove members.
    for (who, team) in [
        (&w.manager, a),
        (&w.user, b),
        (&w.master, b),
        (&w.admin_key, c),
        (&w.admin, a),
    ] {
        let member = w
            .expect(who, Method::POST, &add(team), Some(other.clone()), 201)
            .await;
        assert_eq!(member["team_id"], team.as_str(), "{}", who.label);
        assert_eq!(member["user_id"], w.other.id.as_str());
        assert_eq!(member["role"], "member");
        let got = w
            .expect(
                &w.master,
                Method::GET,
                &format!("/admin/teams/{team}"),
                None,
                200,
            )
            .await;
        assert!(
            got["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["user_id"] == w.other.id.as_str()),
            "{got}"
        );
        w.expect(who, Method::DELETE, &remove(team, &w.other.id), None, 204)
            .await;
    }

    // Members, owners of other teams, outsiders and viewers (even owners) may not.
    for (who, team, member) in [
        (&w.user, a, &w.manager.id),
        (&w.manager, b, &w.user.id),
        (&w.lone, a, &w.user.id),
        (&w.other, b, &w.user.id),
        (&w.viewer, c, &w.viewer.id),
        (&w.viewer, a, &w.user.id),
        (&w.user, c, &w.viewer.id),
    ] {
        w.expect(who, Method::POST, &add(team), Some(other.clone()), 403)
            .await;
        w.expect(who, Method::DELETE, &remove(team, member), None, 403)
            .await;
    }

    // Nothing changed by the refusals.
    let team = w
        .expect(
            &w.master,
            Method::GET,
            &format!("/admin/teams/{b}"),
            None,
            200,
        )
        .await;
    assert_eq!(team["members"].as_array().unwrap().len(), 1, "{team}");
    assert_eq!(team["members"][0]["user_id"], w.user.id.as_str());
    w.t.stop().await;
}

/// The write routes of one key: PATCH, rotate, block, unblock, DELETE (revoke, last).
fn key_writes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::PATCH,
            format!("/admin/keys/{id}"),
            Some(json!({"name": "renamed"})),
        ),
        (
            Method::POST,
            format!("/admin/keys/{id}/rotate"),
            Some(json!({})),
        ),
        (Method::POST, format!("/admin/keys/{id}/block"), None),
        (Method::POST, format!("/admin/keys/{id}/unblock"), None),
        (Method::DELETE, format!("/admin/keys/{id}"), None),
    ]
}

#[tokio::test]
async fn keys_people_manage_their_own_and_their_teams_viewers_read_all() {
    let w = World::new().await;
    let (a, b, c) = (&w.team_a, &w.team_b, &w.team_c);
    let id = |key: &Value| str_of(key, "id").to_owned();

    // POST /admin/keys: without a team, a person's key is their own.
    let user_key = w.key(&w.user, json!({"name": "user-own"})).await;
    assert_eq!(user_key["user_id"], w.user.id.as_str());
    assert!(user_key["team_id"].is_null());
    assert!(str_of(&user_key, "key").starts_with("sk-"), "{user_key}");
    let other_key = w.key(&w.other, json!({"name": "other-own"})).await;
    assert_eq!(other_key["user_id"], w.other.id.as_str());
    let manager_key = w.key(&w.manager, json!({"name": "manager-own"})).await;
    assert_eq!(manager_key["user_id"], w.manager.id.as_str());
    let lone_key = w.key(&w.lone, json!({"name": "lone-own"})).await;
    assert_eq!(lone_key["user_id"], w.lone.id.as_str());
    // A team owner creates the team's keys.
    let b_key = w.key(&w.user, json!({"name": "b", "team_id": b})).await;
    assert_eq!(b_key["team_id"], b.as_str());
    assert!(b_key["user_id"].is_null(), "{b_key}");
    let a_key = w.key(&w.manager, json!({"name": "a", "team_id": a})).await;
    assert_eq!(a_key["team_id"], a.as_str());
    // Admins create keys for anyone, or for no one.
    let for_other = w
        .key(
            &w.admin,
            json!({"name": "for-other", "user_id": w.other.id}),
        )
        .await;
    assert_eq!(for_other["user_id"], w.other.id.as_str());
    let ownerless = w.key(&w.admin_key, json!({"name": "svc2"})).await;
    assert!(ownerless["user_id"].is_null() && ownerless["team_id"].is_null());
    let viewer_key = w
        .key(
            &w.master,
            json!({"name": "viewer-own", "user_id": w.viewer.id}),
        )
        .await;
    assert_eq!(viewer_key["user_id"], w.viewer.id.as_str());
    let c_key = w.key(&w.master, json!({"name": "c", "team_id": c})).await;
    assert_eq!(c_key["team_id"], c.as_str());
    // Refused: another user's key, a team not owned, anything by a viewer.
    for (who, body) in [
        (&w.user, json!({"name": "x", "user_id": w.other.id})),
        (&w.manager, json!({"name": "x", "user_id": w.user.id})),
        (&w.user, json!({"name": "x", "team_id": a})),
        (&w.manager, json!({"name": "x", "team_id": b})),
        (&w.lone, json!({"name": "x", "team_id": a})),
        (&w.other, json!({"name": "x", "team_id": b})),
        (&w.viewer, json!({"name": "x"})),
        (&w.viewer, json!({"name": "x", "team_id": c})),
        (&w.viewer, json!({"name": "x", "user_id": w.viewer.id})),
    ] {
        w.expect(who, Method::POST, "/admin/keys", Some(body), 403)
            .await;
    }

    // GET /admin/keys without a filter: a person's own keys; admins and viewers all.
    let every: BTreeSet<String> = [
        &user_key,
        &other_key,
        &manager_key,
        &lone_key,
        &b_key,
        &a_key,
        &for_other,
        &ownerless,
        &viewer_key,
        &c_key,
    ]
    .into_iter()
    .map(id)
    .chain([w.admin_key.id.clone(), w.model_key.id.clone()])
    .collect();
    for who in w.admins().into_iter().chain([&w.viewer]) {
        let list = w.expect(who, Method::GET, "/admin/keys", None, 200).await;
        assert_eq!(ids(&list), every, "{}", who.label);
    }
    for (who, own) in [
        (&w.user, set([&id(&user_key)])),
        (&w.other, set([&id(&other_key), &id(&for_other)])),
        (&w.manager, set([&id(&manager_key)])),
        (&w.lone, set([&id(&lone_key)])),
    ] {
        let list = w.expect(who, Method::GET, "/admin/keys", None, 200).await;
        assert_eq!(ids(&list), own, "{}", who.label);
    }
    // With filters: the keys of a team they own, their own user id, nothing else.
    let team_b = format!("/admin/keys?team_id={b}");
    let team_a = format!("/admin/keys?team_id={a}");
    let user_filter = |u: &str| format!("/admin/keys?user_id={u}");
    for (who, path, listed) in [
        (&w.user, &team_b, set([&id(&b_key)])),
        (&w.viewer, &team_b, set([&id(&b_key)])),
        (&w.master, &team_b, set([&id(&b_key)])),
        (&w.manager, &team_a, set([&id(&a_key)])),
        (&w.admin, &team_a, set([&id(&a_key)])),
        (&w.user, &user_filter(&w.user.id), set([&id(&user_key)])),
        (
            &w.viewer,
            &user_filter(&w.other.id),
            set([&id(&other_key), &id(&for_other)]),
        ),
    ] {
        let list = w.expect(who, Method::GET, path, None, 200).await;
        assert_eq!(ids(&list), listed, "{} {path}", who.label);
    }
    for (who, path) in [
        (&w.user, &team_a),
        (&w.manager, &team_b),
        (&w.lone, &team_a),
        (&w.other, &team_b),
        (&w.user, &user_filter(&w.other.id)),
        (&w.manager, &user_filter(&w.user.id)),
    ] {
        w.expect(who, Method::GET, path, None, 403).await;
    }

    // GET /admin/keys/{id}: own keys and keys of teams owned; admins and viewers any.
    let read = |key: &Value| format!("/admin/keys/{}", id(key));
    for key in [&user_key, &b_key, &a_key, &other_key, &ownerless, &c_key] {
        for who in w.admins().into_iter().chain([&w.viewer]) {
            let got = w.expect(who, Method::GET, &read(key), None, 200).await;
            assert_eq!(got["id"], key["id"], "{}", who.label);
            assert!(got.get("key").is_none(), "no plaintext on read: {got}");
        }
    }
    for (who, key) in [
        (&w.user, &user_key),
        (&w.user, &b_key),
        (&w.manager, &a_key),
        (&w.manager, &manager_key),
        (&w.other, &for_other),
        (&w.viewer, &viewer_key),
    ] {
        let got = w.expect(who, Method::GET, &read(key), None, 200).await;
        assert_eq!(got["id"], key["id"], "{}", who.label);
    }
    for (who, key) in [
        (&w.user, &other_key),
        (&w.user, &a_key),
        (&w.user, &ownerless),
        (&w.manager, &user_key),
        (&w.manager, &b_key),
        (&w.lone, &a_key),
        (&w.other, &b_key),
    ] {
        w.expect(who, Method::GET, &read(key), None, 403).await;
    }
    // A key that does not exist is 404 first, even to callers who could change no key.
    for who in [&w.user, &w.viewer, &w.master] {
        let mut routes = key_writes("no-such-key");
        routes.push((Method::GET, "/admin/keys/no-such-key".into(), None));
        for (method, path, body) in routes {
            w.expect(who, method, &path, body, 404).await;
        }
    }

    // PATCH, rotate, block, unblock, DELETE: refused to all but the key's user and owners of
    // its team; viewers change nothing, not their own key nor their team's.
    for (who, key) in [
        (&w.user, &other_key),
        (&w.user, &a_key),
        (&w.user, &manager_key),
        (&w.user, &ownerless),
        (&w.manager, &b_key),
        (&w.manager, &user_key),
        (&w.lone, &a_key),
        (&w.other, &b_key),
        (&w.viewer, &viewer_key),
        (&w.viewer, &c_key),
        (&w.viewer, &user_key),
    ] {
        for (method, path, body) in key_writes(&id(key)) {
            w.expect(who, method, &path, body, 403).await;
        }
    }
    // Nothing changed by the refusals.
    let got = w
        .expect(&w.master, Method::GET, &read(&other_key), None, 200)
        .await;
    assert_eq!(got["name"], "other-own");
    assert_eq!(got["blocked"], false);
    assert!(got["revoked_at"].is_null());

    for (who, key) in [
        (&w.user, &user_key),
        (&w.user, &b_key),
        (&w.manager, &a_key),
        (&w.other, &other_key),
        (&w.lone, &lone_key),
        (&w.admin, &for_other),
        (&w.admin_key, &c_key),
        (&w.master, &viewer_key),
    ] {
        let key_id = id(key);
        let ops = key_writes(&key_id);
        let (method, path, body) = &ops[0];
        let got = w.expect(who, method.clone(), path, body.clone(), 200).await;
        assert_eq!(got["name"], "renamed", "{}: {got}", who.label);
        let (method, path, body) = &ops[1];
        let got = w.expect(who, method.clone(), path, body.clone(), 200).await;
        assert_eq!(got["id"], key_id.as_str());
        assert!(str_of(&got, "key").starts_with("sk-"), "rotated: {got}");
        assert_ne!(got["key"], key["key"], "a new secret");
        let (method, path, body) = &ops[2];
        let got = w.expect(who, method.clone(), path, body.clone(), 200).await;
        assert_eq!(got["blocked"], true, "{}: {got}", who.label);
        let (method, path, body) = &ops[3];
        let got = w.expect(who, method.clone(), path, body.clone(), 200).await;
        assert_eq!(got["blocked"], false, "{}: {got}", who.label);
        let (method, path, body) = &ops[4];
        let got = w.expect(who, method.clone(), path, body.clone(), 200).await;
        assert!(got["revoked_at"].is_string(), "{}: {got}", who.label);
    }
    w.t.stop().await;
}

#[tokio::test]
async fn audit_is_read_by_admins_and_viewers_and_names_people_as_actors() {
    let w = World::new().await;
    for who in w.admins().into_iter().chain([&w.viewer]) {
        let list = w.expect(who, Method::GET, "/admin/audit", None, 200).await;
        assert!(!list["data"].as_array().unwrap().is_empty(), "{list}");
    }
    for who in [&w.manager, &w.lone, &w.user, &w.other] {
        w.expect(who, Method::GET, "/admin/audit", None, 403).await;
        w.expect(
            who,
            Method::GET,
            &format!("/admin/audit?actor=user:{}", who.id),
            None,
            403,
        )
        .await;
    }

    // What a person does with their login token is theirs in the audit log.
    let key = w.key(&w.user, json!({"name": "audited"})).await;
    let events = w
        .expect(
            &w.master,
            Method::GET,
            &format!("/admin/audit?actor=user:{}&action=key.create", w.user.id),
            None,
            200,
        )
        .await;
    let events = events["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], format!("user:{}", w.user.id).as_str());
    assert_eq!(events[0]["target"], key["id"]);
    // So is the manager's creation of team A, seen by a viewer too.
    let events = w
        .expect(
            &w.viewer,
            Method::GET,
            &format!(
                "/admin/audit?actor=user:{}&action=team.create",
                w.manager.id
            ),
            None,
            200,
        )
        .await;
    let events = events["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["target"], w.team_a.as_str());
    // An admin key's actions are the key's.
    let key = w.key(&w.admin_key, json!({"name": "by-key"})).await;
    let events = w
        .expect(
            &w.master,
            Method::GET,
            &format!(
                "/admin/audit?actor=key:{}&action=key.create",
                w.admin_key.id
            ),
            None,
            200,
        )
        .await;
    assert_eq!(events["data"][0]["target"], key["id"], "{events}");
    w.t.stop().await;
}

#[tokio::test]
async fn user_api_is_for_people_and_viewers_create_no_keys() {
    let w = World::new().await;
    let people = [&w.admin, &w.manager, &w.user, &w.other, &w.viewer];

    // GET /v1/user/profile: the caller's own record.
    for who in people {
        let me = w
            .expect(who, Method::GET, "/v1/user/profile", None, 200)
            .await;
        assert_eq!(me["id"], who.id.as_str(), "{}", who.label);
        assert_eq!(me["username"], who.label);
        assert!(me.get("password_hash").is_none());
    }
    // PUT /v1/user/profile: a person changes their own name.
    for who in [&w.admin, &w.manager, &w.user] {
        let name = format!("{} renamed", who.label);
        let me = w
            .expect(
                who,
                Method::PUT,
                "/v1/user/profile",
                Some(json!({ "full_name": name })),
                200,
            )
            .await;
        assert_eq!(me["id"], who.id.as_str());
        assert_eq!(me["full_name"], name.as_str());
    }
    // …but not their role.
    w.expect(
        &w.user,
        Method::PUT,
        "/v1/user/profile",
        Some(json!({"role": "admin"})),
        400,
    )
    .await;

    // POST /v1/user/keys: people but viewers; the key is the caller's.
    let mut own = Vec::new();
    for who in [&w.admin, &w.manager, &w.user, &w.other] {
        let key = w
            .expect(
                who,
                Method::POST,
                "/v1/user/keys",
                Some(json!({"name": "self-service", "permissions": ["chat"]})),
                201,
            )
            .await;
        assert_eq!(key["user_id"], who.id.as_str(), "{}", who.label);
        assert!(key["team_id"].is_null());
        assert!(str_of(&key, "key").starts_with("sk-"));
        own.push(str_of(&key, "id").to_owned());
    }
    w.expect(
        &w.viewer,
        Method::POST,
        "/v1/user/keys",
        Some(json!({"name": "nope"})),
        403,
    )
    .await;
    let (user_key, other_key) = (&own[2], &own[3]);

    // GET /v1/user/keys: only the caller's keys (not team keys they own, not others').
    let b_key = w
        .key(&w.user, json!({"name": "b", "team_id": w.team_b}))
        .await;
    let list = w
        .expect(&w.user, Method::GET, "/v1/user/keys", None, 200)
        .await;
    assert_eq!(ids(&list), set([user_key.as_str()]));
    let list = w
        .expect(&w.viewer, Method::GET, "/v1/user/keys", None, 200)
        .await;
    assert_eq!(ids(&list), BTreeSet::new());

    // DELETE /v1/user/keys/{id}: someone else's key is 404, one's own is revoked.
    // (Nor is a team key theirs, even of a team they own.)
    let b_key = str_of(&b_key, "id");
    for (who, key) in [
        (&w.user, other_key.as_str()),
        (&w.user, b_key),
        (&w.viewer, user_key.as_str()),
    ] {
        let path = format!("/v1/user/keys/{key}");
        w.expect(who, Method::DELETE, &path, None, 404).await;
    }
    let still = w
        .expect(
            &w.master,
            Method::GET,
            &format!("/admin/keys/{other_key}"),
            None,
            200,
        )
        .await;
    assert!(still["revoked_at"].is_null(), "{still}");
    let revoked = w
        .expect(
            &w.user,
            Method::DELETE,
            &format!("/v1/user/keys/{user_key}"),
            None,
            200,
        )
        .await;
    assert_eq!(revoked["id"], user_key.as_str());
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // The master key and admin keys are not people.
    for who in [&w.master, &w.admin_key] {
        w.expect(who, Method::GET, "/v1/user/profile", None, 403)
            .await;
        w.expect(who, Method::GET, "/v1/user/keys", None, 403).await;
        w.expect(
            who,
            Method::POST,
            "/v1/user/keys",
            Some(json!({"name": "x"})),
            403,
        )
        .await;
        w.expect(
            who,
            Method::DELETE,
            &format!("/v1/user/keys/{other_key}"),
            None,
            403,
        )
        .await;
    }
    w.t.stop().await;
}

/// `POST /admin/keys/bulk` answers each caller as `POST /admin/keys` does, key by key: what
/// the single route creates, the bulk route creates for the same owner; what it refuses
/// refuses the whole batch with the same status, naming the key's place, and creates
/// nothing, also of the batch's keys the caller may create.
#[tokio::test]
async fn bulk_keys_follow_the_single_route_s_rules() {
    let w = World::new().await;
    let (a, b, c) = (&w.team_a, &w.team_b, &w.team_c);
    for (who, body) in [
        (&w.user, json!({"name": "own"})),
        (&w.user, json!({"name": "b", "team_id": b})),
        (&w.manager, json!({"name": "a", "team_id": a})),
        (&w.lone, json!({"name": "own", "permissions": ["chat"]})),
        (
            &w.admin,
            json!({"name": "for-other", "user_id": w.other.id}),
        ),
        (
            &w.admin_key,
            json!({"name": "svc", "permissions": ["admin"]}),
        ),
        (&w.master, json!({"name": "c", "team_id": c})),
    ] {
        let single = w.key(who, body.clone()).await;
        let batch = json!({ "keys": [body, body] });
        let answer = w
            .expect(who, Method::POST, "/admin/keys/bulk", Some(batch), 201)
            .await;
        let created = answer["data"].as_array().unwrap();
        assert_eq!(created.len(), 2, "{answer}");
        for key in created {
            for field in ["user_id", "team_id", "permissions"] {
                assert_eq!(key[field], single[field], "{field} as {}", who.label);
            }
        }
    }

    let count = || async {
        let list = w
            .expect(&w.master, Method::GET, "/admin/keys", None, 200)
            .await;
        list["data"].as_array().unwrap().len()
    };
    for (who, body, status) in [
        (&w.user, json!({"name": "x", "user_id": w.other.id}), 403),
        (&w.manager, json!({"name": "x", "user_id": w.user.id}), 403),
        (&w.user, json!({"name": "x", "team_id": a}), 403),
        (&w.manager, json!({"name": "x", "team_id": b}), 403),
        (&w.lone, json!({"name": "x", "team_id": a}), 403),
        (&w.other, json!({"name": "x", "team_id": b}), 403),
        (&w.user, json!({"name": "x", "permissions": ["admin"]}), 400),
        (
            &w.manager,
            json!({"name": "x", "permissions": ["usage:read"]}),
            400,
        ),
        (
            &w.admin,
            json!({"name": "x", "user_id": w.viewer.id, "permissions": ["chat"]}),
            400,
        ),
    ] {
        let before = count().await;
        w.expect(who, Method::POST, "/admin/keys", Some(body.clone()), status)
            .await;
        let batch = json!({ "keys": [{"name": "fine"}, body] });
        let answer = w
            .expect(who, Method::POST, "/admin/keys/bulk", Some(batch), status)
            .await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("keys[1]: ") || message.starts_with("`keys[1]."),
            "names the key: {answer}"
        );
        assert_eq!(count().await, before, "as {}: nothing created", who.label);
    }
    // A viewer creates no keys, one or many.
    for body in [json!({"name": "x"}), json!({"name": "x", "team_id": c})] {
        w.expect(
            &w.viewer,
            Method::POST,
            "/admin/keys",
            Some(body.clone()),
            403,
        )
        .await;
        let batch = json!({ "keys": [body] });
        w.expect(
            &w.viewer,
            Method::POST,
            "/admin/keys/bulk",
            Some(batch),
            403,
        )
        .await;
    }
    w.t.stop().await;
}

/// Asserts a 400 `invalid_request` whose message names `what`.
async fn refused_400(w: &World, who: &Cred, method: Method, path: &str, body: Value, what: &str) {
    let answer = w.expect(who, method, path, Some(body), 400).await;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(what),
        "the message names `{what}`: {answer}"
    );
}

#[tokio::test]
async fn keys_narrow_their_owner_for_every_caller() {
    let w = World::new().await;
    let b = &w.team_b;

    // A user's key: only the permissions of the user's role, whoever creates it.
    refused_400(
        &w,
        &w.user,
        Method::POST,
        "/admin/keys",
        json!({"name": "x", "permissions": ["admin"]}),
        "admin",
    )
    .await;
    refused_400(
        &w,
        &w.user,
        Method::POST,
        "/v1/user/keys",
        json!({"name": "x", "permissions": ["admin"]}),
        "admin",
    )
    .await;
    refused_400(
        &w,
        &w.master,
        Method::POST,
        "/admin/keys",
        json!({"name": "x", "user_id": w.user.id, "permissions": ["admin"]}),
        "admin",
    )
    .await;
    refused_400(
        &w,
        &w.admin,
        Method::POST,
        "/admin/keys",
        json!({"name": "x", "user_id": w.viewer.id, "permissions": ["chat"]}),
        "chat",
    )
    .await;
    let chat = w
        .key(&w.user, json!({"name": "chat", "permissions": ["chat"]}))
        .await;
    assert_eq!(chat["user_id"], w.user.id.as_str());
    assert_eq!(chat["permissions"], json!(["chat"]));
    let chat_path = format!("/admin/keys/{}", str_of(&chat, "id"));
    refused_400(
        &w,
        &w.user,
        Method::PATCH,
        &chat_path,
        json!({"permissions": ["admin"]}),
        "admin",
    )
    .await;
    refused_400(
        &w,
        &w.master,
        Method::PATCH,
        &chat_path,
        json!({"permissions": ["admin"]}),
        "admin",
    )
    .await;
    let got = w
        .expect(
            &w.user,
            Method::PATCH,
            &chat_path,
            Some(json!({"permissions": ["chat", "embeddings"]})),
            200,
        )
        .await;
    assert_eq!(got["permissions"], json!(["chat", "embeddings"]));
    // An admin user's key may carry `admin`.
    let admins_own = w
        .key(
            &w.admin,
            json!({"name": "mine", "user_id": w.admin.id, "permissions": ["admin"]}),
        )
        .await;
    assert_eq!(admins_own["user_id"], w.admin.id.as_str());

    // A team's key: only the team's models.
    let team = w
        .expect(
            &w.master,
            Method::PATCH,
            &format!("/admin/teams/{b}"),
            Some(json!({"models": ["gpt-4o*"]})),
            200,
        )
        .await;
    assert_eq!(team["models"], json!(["gpt-4o*"]));
    for (who, models, what) in [
        (&w.user, json!(["o1"]), "o1"),
        (&w.user, json!(["gpt-*"]), "gpt-*"),
        (&w.user, json!(["gpt-4o-mini", "claude-3"]), "claude-3"),
        (&w.master, json!(["o1"]), "o1"),
    ] {
        refused_400(
            &w,
            who,
            Method::POST,
            "/admin/keys",
            json!({"name": "x", "team_id": b, "models": models}),
            what,
        )
        .await;
    }
    let mini = w
        .key(
            &w.user,
            json!({"name": "mini", "team_id": b, "models": ["gpt-4o-mini"]}),
        )
        .await;
    assert_eq!(mini["team_id"], b.as_str());
    assert_eq!(mini["models"], json!(["gpt-4o-mini"]));
    let mini_path = format!("/admin/keys/{}", str_of(&mini, "id"));
    refused_400(
        &w,
        &w.user,
        Method::PATCH,
        &mini_path,
        json!({"models": ["o1"]}),
        "o1",
    )
    .await;
    let got = w
        .expect(
            &w.user,
            Method::PATCH,
            &mini_path,
            Some(json!({"models": ["gpt-4o*"]})),
            200,
        )
        .await;
    assert_eq!(got["models"], json!(["gpt-4o*"]));

    // A key without a user: only an admin gives it more than the LLM permissions.
    refused_400(
        &w,
        &w.user,
        Method::POST,
        "/admin/keys",
        json!({"name": "x", "team_id": b, "permissions": ["admin"]}),
        "admin",
    )
    .await;
    refused_400(
        &w,
        &w.manager,
        Method::POST,
        "/admin/keys",
        json!({"name": "x", "team_id": w.team_a, "permissions": ["usage:read"]}),
        "usage:read",
    )
    .await;
    refused_400(
        &w,
        &w.user,
        Method::PATCH,
        &mini_path,
        json!({"permissions": ["admin"]}),
        "admin",
    )
    .await;
    let team_admin = w
        .key(
            &w.admin,
            json!({"name": "team-admin", "team_id": b, "permissions": ["admin"]}),
        )
        .await;
    assert_eq!(team_admin["permissions"], json!(["admin"]));
    let team_chat = w
        .key(
            &w.user,
            json!({"name": "team-chat", "team_id": b, "permissions": ["chat", "models:read"]}),
        )
        .await;
    assert_eq!(team_chat["permissions"], json!(["chat", "models:read"]));
    w.t.stop().await;
}

/// A credential made of a key's plaintext, for calling the API with it.
fn key_cred(label: &'static str, key: &Value) -> Cred {
    Cred {
        label,
        id: str_of(key, "id").to_owned(),
        token: Some(str_of(key, "key").to_owned()),
    }
}

#[tokio::test]
async fn only_admins_hand_out_or_re_enable_keys_beyond_the_caller_s_role() {
    let w = World::new().await;
    let b = &w.team_b;

    // The attack: the master key makes an `admin` key for team B, whose owner is a `user`.
    let team_admin = w
        .key(
            &w.master,
            json!({"name": "team-admin", "team_id": b, "permissions": ["admin"]}),
        )
        .await;
    let path = format!("/admin/keys/{}", str_of(&team_admin, "id"));
    // The owner may not rotate it: no new secret, and the old one still works.
    let refused = w
        .expect(
            &w.user,
            Method::POST,
            &format!("{path}/rotate"),
            Some(json!({})),
            403,
        )
        .await;
    assert!(refused.get("key").is_none(), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`admin`") && message.contains("`user`"),
        "{message}"
    );
    let holder = key_cred("team-admin-key", &team_admin);
    w.expect(&holder, Method::GET, "/admin/users", None, 200)
        .await;
    // Nor unblock it, re-enable it with a PATCH, or change it in any other way.
    w.expect(&w.master, Method::POST, &format!("{path}/block"), None, 200)
        .await;
    w.expect(&w.user, Method::POST, &format!("{path}/unblock"), None, 403)
        .await;
    for patch in [
        json!({"blocked": false}),
        json!({"blocked": true, "name": "mine"}),
        json!({"name": "mine"}),
        json!({"expires_at": null}),
        json!({"rpm": 1000}),
        json!({"permissions": ["chat"]}),
    ] {
        w.expect(&w.user, Method::PATCH, &path, Some(patch), 403)
            .await;
    }
    let got = w.expect(&w.master, Method::GET, &path, None, 200).await;
    assert_eq!(got["blocked"], true, "{got}");
    assert_eq!(got["name"], "team-admin");
    assert_eq!(got["key_hint"], team_admin["key_hint"]);
    // Blocking and revoking only take power away: the owner may.
    w.expect(
        &w.user,
        Method::PATCH,
        &path,
        Some(json!({"blocked": true})),
        200,
    )
    .await;
    w.expect(&w.user, Method::POST, &format!("{path}/block"), None, 200)
        .await;
    // Admins may do all of it.
    for who in w.admins() {
        w.expect(who, Method::POST, &format!("{path}/unblock"), None, 200)
            .await;
        let rotated = w
            .expect(
                who,
                Method::POST,
                &format!("{path}/rotate"),
                Some(json!({})),
                200,
            )
            .await;
        assert!(str_of(&rotated, "key").starts_with("sk-tg-"), "{rotated}");
    }
    let revoked = w.expect(&w.user, Method::DELETE, &path, None, 200).await;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Keys of an admin in a team owned by a `user`. Without permissions of its own, the
    // key does what its admin owner does: the owner may not rotate it.
    let admins_team_key = w
        .key(
            &w.master,
            json!({"name": "admins-in-b", "team_id": b, "user_id": w.admin.id}),
        )
        .await;
    let path = format!("/admin/keys/{}", str_of(&admins_team_key, "id"));
    w.expect(
        &w.user,
        Method::POST,
        &format!("{path}/rotate"),
        Some(json!({})),
        403,
    )
    .await;
    // With `chat` only, the team owner manages it; but may not widen it to `admin`, which
    // its admin owner has and the team owner has not.
    let admins_chat_key = w
        .key(
            &w.master,
            json!({"name": "admins-chat-in-b", "team_id": b, "user_id": w.admin.id, "permissions": ["chat"]}),
        )
        .await;
    let path = format!("/admin/keys/{}", str_of(&admins_chat_key, "id"));
    w.expect(
        &w.user,
        Method::PATCH,
        &path,
        Some(json!({"permissions": ["admin"]})),
        403,
    )
    .await;
    let got = w.expect(&w.master, Method::GET, &path, None, 200).await;
    assert_eq!(got["permissions"], json!(["chat"]), "{got}");
    w.expect(
        &w.user,
        Method::POST,
        &format!("{path}/rotate"),
        Some(json!({})),
        200,
    )
    .await;

    // Not only `admin`: anything the caller's role lacks (`usage:read` for a `user`), and
    // the same for a manager in the team they own.
    let usage = w
        .key(
            &w.master,
            json!({"name": "usage-b", "team_id": b, "permissions": ["chat", "usage:read"]}),
        )
        .await;
    let usage_path = format!("/admin/keys/{}", str_of(&usage, "id"));
    w.expect(
        &w.user,
        Method::POST,
        &format!("{usage_path}/rotate"),
        Some(json!({})),
        403,
    )
    .await;
    let a_admin = w
        .key(
            &w.admin,
            json!({"name": "team-a-admin", "team_id": w.team_a, "permissions": ["admin"]}),
        )
        .await;
    let a_path = format!("/admin/keys/{}", str_of(&a_admin, "id"));
    w.expect(
        &w.manager,
        Method::POST,
        &format!("{a_path}/rotate"),
        Some(json!({})),
        403,
    )
    .await;
    w.expect(
        &w.manager,
        Method::POST,
        &format!("{a_path}/block"),
        None,
        200,
    )
    .await;
    w.expect(
        &w.manager,
        Method::POST,
        &format!("{a_path}/unblock"),
        None,
        403,
    )
    .await;

    // Keys within the caller's role are theirs to manage as before.
    let own = w
        .key(
            &w.user,
            json!({"name": "b-chat", "team_id": b, "permissions": ["chat"]}),
        )
        .await;
    let own_path = format!("/admin/keys/{}", str_of(&own, "id"));
    let rotated = w
        .expect(
            &w.user,
            Method::POST,
            &format!("{own_path}/rotate"),
            Some(json!({})),
            200,
        )
        .await;
    assert_ne!(rotated["key"], own["key"]);
    w.expect(
        &w.user,
        Method::POST,
        &format!("{own_path}/block"),
        None,
        200,
    )
    .await;
    w.expect(
        &w.user,
        Method::POST,
        &format!("{own_path}/unblock"),
        None,
        200,
    )
    .await;
    let narrowed = w
        .expect(
            &w.user,
            Method::PATCH,
            &own_path,
            Some(json!({"permissions": ["chat", "embeddings"], "expires_at": null})),
            200,
        )
        .await;
    assert_eq!(narrowed["permissions"], json!(["chat", "embeddings"]));
    w.t.stop().await;
}
