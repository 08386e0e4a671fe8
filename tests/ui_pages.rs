//! The web UI's teams, users, usage, budgets, alerts and audit pages, over HTTP as a
//! browser speaks it (tests/common/ui.rs), against a real tollgate on SQLite and Postgres:
//! what each role sees and may press, forged posts refused with a valid CSRF token, the
//! usage CSV against the API's report for usage recorded in the store, CSV injection, the
//! SVG chart and its table, budgets and alerts as the API answers them, the audit log's
//! filters and pages, links under a path prefix, and hostile input.

mod common;

use common::ui::{Browser, Db, Page, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate::store::{AlertOutcome, AlertState};
use tollgate::usage::alerts::Alerts;
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

on_both_stores!(
    teams_and_their_members_as_each_role,
    usage_csv_adds_up_to_the_api_s_report,
    budgets_show_spend_against_the_limit_and_the_thresholds_reached,
    the_audit_log_is_filtered_and_paged,
);

/// A tollgate with password sessions, its store, and one user per role: `ada` (admin),
/// `max` (manager), `uma` and `ulf` (user), `vic` (viewer).
struct Stack {
    ui: common::ui::Stack,
    ids: std::collections::HashMap<&'static str, String>,
}

impl std::ops::Deref for Stack {
    type Target = common::ui::Stack;

    fn deref(&self) -> &common::ui::Stack {
        &self.ui
    }
}

impl Stack {
    async fn start(db: Db, yaml: &str) -> Stack {
        let ui = common::ui::Stack::start(db, yaml).await;
        let mut ids = std::collections::HashMap::new();
        for (name, role) in [
            ("ada", "admin"),
            ("max", "manager"),
            ("uma", "user"),
            ("ulf", "user"),
            ("vic", "viewer"),
        ] {
            ids.insert(name, ui.user(name, role).await);
        }
        Stack { ui, ids }
    }

    async fn stop(self) {
        self.ui.t.stop().await;
    }

    fn id(&self, name: &str) -> String {
        self.ids[name].clone()
    }

    /// A browser signed in as `name`.
    async fn as_(&self, name: &str) -> Browser {
        let b = Browser::new(format!("http://{}", self.t.http));
        b.signed_in(name, PASSWORD).await;
        b
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.t.admin(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// The text of an API answer to `token` (the master key when `None`).
    async fn raw(&self, path: &str, token: Option<&str>) -> String {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}{path}", self.t.http))
            .bearer_auth(token.unwrap_or(common::tollgate::MASTER_KEY))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.text().await.unwrap()
    }

    /// A login token of `name`, for the user routes of the API.
    async fn token(&self, name: &str) -> String {
        let (status, tokens) = self
            .t
            .call(
                Method::POST,
                "/v1/login",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        tokens["access_token"].as_str().unwrap().to_owned()
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        self.api(Method::GET, &format!("/admin/audit?{query}"), None)
            .await["data"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn team(&self, id: &str) -> Value {
        self.api(Method::GET, &format!("/admin/teams/{id}"), None)
            .await
    }

    async fn teams(&self) -> Vec<Value> {
        self.api(Method::GET, "/admin/teams", None).await["data"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn redirected_to(page: &Page, to: &str) {
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), Some(to), "{:?}", page.headers);
}

/// The id a redirect to `/ui/{what}/{id}?…` names.
fn id_in(page: &Page, what: &str) -> String {
    let location = page.location().unwrap_or_else(|| panic!("{}", page.body));
    let rest = location
        .strip_prefix(&format!("/ui/{what}/"))
        .unwrap_or_else(|| panic!("{location}"));
    rest.split(['?', '#']).next().unwrap().to_owned()
}

fn refused(page: &Page, status: StatusCode, says: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(page.contains(says), "{says:?} not in {}", page.main());
}

/// The page's forms that post, but sign-out.
fn write_forms(page: &Page) -> Vec<String> {
    page.main()
        .match_indices("<form method=\"post\"")
        .map(|(at, _)| {
            let tail = &page.main()[at..];
            tail[..tail.find('>').unwrap()].to_owned()
        })
        .collect()
}

fn sorted(mut list: Vec<(String, String)>) -> Vec<(String, String)> {
    list.sort();
    list
}

fn members(team: &Value) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

// ---- teams ------------------------------------------------------------------------------

async fn teams_and_their_members_as_each_role(db: Db) {
    let s = Stack::start(db, "").await;
    let ada = s.as_("ada").await;
    let max = s.as_("max").await;
    let uma = s.as_("uma").await;
    let vic = s.as_("vic").await;

    // An admin creates a team; the form's fields are the API's body.
    let page = ada.get("/teams").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.contains("action=\"/ui/teams\""), "{}", page.main());
    let created = ada
        .submit(
            "/teams",
            "/teams",
            &[
                ("name", "Platform"),
                ("models", "gpt-4o, gpt-4o-mini"),
                ("rpm", "60"),
                ("tpm", ""),
                ("max_parallel", "4"),
                ("max_budget", "$100"),
                ("budget_duration", "1mo"),
            ],
        )
        .await;
    let platform = id_in(&created, "teams");
    redirected_to(&created, &format!("/ui/teams/{platform}?done=created"));
    let team = s.team(&platform).await;
    assert_eq!(team["name"], "Platform");
    assert_eq!(team["rpm"], 60);
    assert_eq!(team["max_parallel"], 4);
    assert_eq!(team["max_budget"], 100.0);
    assert_eq!(team["budget_duration"], "1mo");
    assert_eq!(team["models"], json!(["gpt-4o", "gpt-4o-mini"]));
    // An admin who creates a team owns it, as a manager does.
    assert_eq!(members(&team), [(s.id("ada"), "owner".into())]);
    let shown = ada.get(&format!("/teams/{platform}?done=created")).await;
    assert!(shown.contains("The team is created."));
    assert!(
        shown.contains("$100.00 per calendar month"),
        "{}",
        shown.main()
    );
    assert!(
        shown.contains("<dt>Requests in flight at once</dt><dd>4</dd>"),
        "{}",
        shown.main()
    );

    // A manager's team is theirs: they own it, edit it and manage its members.
    let created = max
        .submit(
            "/teams",
            "/teams",
            &[("name", "Research"), ("max_parallel", "2")],
        )
        .await;
    let research = id_in(&created, "teams");
    assert_eq!(s.team(&research).await["max_parallel"], 2);
    assert_eq!(
        members(&s.team(&research).await),
        [(s.id("max"), "owner".into())]
    );
    let page = max.get(&format!("/teams/{research}")).await;
    assert!(page.contains(&format!("action=\"/ui/teams/{research}/edit\"")));
    assert!(page.contains(&format!("action=\"/ui/teams/{research}/members\"")));
    // A manager reads users, so members are named.
    assert!(page.contains(">max</a>"), "{}", page.main());

    // The admin adds a member by username; the audit log names who did it.
    let added = ada
        .submit(
            &format!("/teams/{platform}"),
            &format!("/teams/{platform}/members"),
            &[("user", "uma"), ("role", "member")],
        )
        .await;
    redirected_to(
        &added,
        &format!("/ui/teams/{platform}?done=member_added#members"),
    );
    assert_eq!(
        members(&s.team(&platform).await),
        sorted(vec![
            (s.id("ada"), "owner".into()),
            (s.id("uma"), "member".into())
        ])
    );
    let events = s.audit("action=team.member.add").await;
    assert_eq!(events[0]["actor"], format!("user:{}", s.id("ada")));
    assert_eq!(events[0]["target"], format!("{platform}/{}", s.id("uma")));
    assert_eq!(events[0]["details"]["role"], "member");

    // The listing: budget, spend, member count.
    let list = ada.get("/teams").await;
    let row = row_of(&list, "Platform");
    assert!(row.contains("$100.00 per calendar month"), "{row}");
    assert!(row.contains("$0.00"), "{row}");
    assert!(row.contains("<td class=\"num\">2</td>"), "{row}");
    assert!(list.contains("Research"));

    // A user sees their own team only, reads it, and has no write control on it.
    let list = uma.get("/teams").await;
    assert!(
        list.contains("Platform") && !list.contains("Research"),
        "{}",
        list.main()
    );
    assert!(!list.contains("New team"));
    assert!(write_forms(&list).is_empty(), "{:?}", write_forms(&list));
    let page = uma.get(&format!("/teams/{platform}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(write_forms(&page).is_empty(), "{:?}", write_forms(&page));
    // The API shows a user only ids of other users; the page marks their own row.
    assert!(page.contains("(you)"));
    refused(
        &uma.get(&format!("/teams/{research}")).await,
        StatusCode::FORBIDDEN,
        "may not read a team they do not belong to",
    );

    // Forged posts of a member (valid CSRF) are refused by the API and change nothing.
    let before = s.team(&platform).await;
    let csrf = uma.get("/teams").await.csrf();
    for (action, fields) in [
        (
            format!("/teams/{platform}/members"),
            vec![("user", s.id("ulf")), ("role", "owner".into())],
        ),
        (
            format!("/teams/{platform}/members/remove"),
            vec![("user_id", s.id("uma"))],
        ),
        (
            format!("/teams/{platform}/edit"),
            vec![("name", "Mine".into()), ("max_budget", "1000000".into())],
        ),
        (
            format!("/teams/{platform}/delete"),
            vec![("confirm", "yes".into())],
        ),
        ("/teams".to_owned(), vec![("name", "Sneaky".into())]),
    ] {
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend(fields.iter().map(|(n, v)| (*n, v.as_str())));
        let page = uma.post(&action, &all).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{action}: {}",
            page.body
        );
        assert!(
            page.contains("the role `user` may not"),
            "{action}: {}",
            page.main()
        );
    }
    assert_eq!(s.team(&platform).await, before);
    assert_eq!(s.teams().await.len(), 2);

    // Made an owner, the user manages the members (by id: the API shows them no names)...
    ada.submit(
        &format!("/teams/{platform}"),
        &format!("/teams/{platform}/members"),
        &[("user", "uma"), ("role", "owner")],
    )
    .await;
    let page = uma.get(&format!("/teams/{platform}")).await;
    assert!(page.contains("the user&#39;s id") || page.contains("the user's id"));
    let by_name = uma
        .submit(
            &format!("/teams/{platform}"),
            &format!("/teams/{platform}/members"),
            &[("user", "ulf")],
        )
        .await;
    assert_eq!(by_name.status, StatusCode::BAD_REQUEST, "{}", by_name.body);
    assert!(
        by_name.contains("user ulf does not exist"),
        "{}",
        by_name.main()
    );
    assert!(by_name.contains("value=\"ulf\""), "what was typed stays");
    let added = uma
        .submit(
            &format!("/teams/{platform}"),
            &format!("/teams/{platform}/members"),
            &[("user", &s.id("ulf")), ("role", "member")],
        )
        .await;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
    let removed = uma
        .submit(
            &format!("/teams/{platform}"),
            &format!("/teams/{platform}/members/remove"),
            &[("user_id", &s.id("ulf"))],
        )
        .await;
    redirected_to(
        &removed,
        &format!("/ui/teams/{platform}?done=member_removed#members"),
    );
    assert_eq!(
        members(&s.team(&platform).await),
        sorted(vec![
            (s.id("ada"), "owner".into()),
            (s.id("uma"), "owner".into())
        ])
    );
    let uma_actor = format!("user:{}", s.id("uma"));
    let target = format!("{platform}/{}", s.id("ulf"));
    let add = s.audit("action=team.member.add").await;
    assert!(
        add.iter()
            .any(|e| e["actor"] == uma_actor && e["target"] == target),
        "{add:?}"
    );
    let remove = s.audit("action=team.member.remove").await;
    assert_eq!(remove.len(), 1, "{remove:?}");
    assert_eq!(remove[0]["actor"], uma_actor);
    assert_eq!(remove[0]["target"], target);
    // ... but not the settings (only admins and managers do), nor another team's members.
    let page = uma.get(&format!("/teams/{platform}")).await;
    assert!(!page.contains("/edit\""), "{}", page.main());
    let csrf = page.csrf();
    let forged = uma
        .post(
            &format!("/teams/{research}/members"),
            &[
                ("csrf_token", &csrf),
                ("user", &s.id("uma")),
                ("role", "owner"),
            ],
        )
        .await;
    refused(
        &forged,
        StatusCode::FORBIDDEN,
        "may not manage the members of a team they do not own",
    );
    assert_eq!(members(&s.team(&research).await).len(), 1);

    // A viewer reads every team and has no write control; the server refuses them anyway.
    let list = vic.get("/teams").await;
    assert!(list.contains("Platform") && list.contains("Research"));
    assert!(write_forms(&list).is_empty(), "{:?}", write_forms(&list));
    let page = vic.get(&format!("/teams/{research}")).await;
    assert!(write_forms(&page).is_empty(), "{:?}", write_forms(&page));
    assert!(
        page.contains(">max</a>"),
        "a viewer reads users: {}",
        page.main()
    );
    let csrf = page.csrf();
    let before = s.team(&research).await;
    for (action, fields) in [
        (format!("/teams/{research}/edit"), vec![("name", "Viewed")]),
        (
            format!("/teams/{research}/delete"),
            vec![("confirm", "yes")],
        ),
        (
            format!("/teams/{research}/members"),
            vec![("user", "vic"), ("role", "owner")],
        ),
        ("/teams".to_owned(), vec![("name", "Viewers")]),
    ] {
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend(fields);
        let page = vic.post(&action, &all).await;
        refused(&page, StatusCode::FORBIDDEN, "the role `viewer` may not");
    }
    assert_eq!(s.team(&research).await, before);
    assert_eq!(s.teams().await.len(), 2);

    // Hostile input: a clear error, what was typed kept, nothing changed.
    let huge = "x".repeat(10_000);
    let page = max.submit("/teams", "/teams", &[("name", &huge)]).await;
    refused(
        &page,
        StatusCode::BAD_REQUEST,
        "`name` is longer than 200 characters",
    );
    let page = max
        .submit(
            "/teams",
            "/teams",
            &[
                ("name", "Robert'); DROP TABLE teams;--"),
                ("rpm", "1; DROP TABLE teams"),
            ],
        )
        .await;
    refused(
        &page,
        StatusCode::BAD_REQUEST,
        "`rpm` must be a whole number",
    );
    assert!(
        page.contains("value=\"Robert&#39;); DROP TABLE teams;--\""),
        "{}",
        page.main()
    );
    let page = max
        .submit(
            &format!("/teams/{research}"),
            &format!("/teams/{research}/edit"),
            &[("name", "Research"), ("max_budget", "-5")],
        )
        .await;
    refused(
        &page,
        StatusCode::BAD_REQUEST,
        "`max_budget` must be a USD amount of zero or more",
    );
    assert!(
        page.contains("value=\"-5\""),
        "what was typed stays: {}",
        page.main()
    );
    assert_eq!(s.teams().await.len(), 2);
    let missing = ada.get("/teams/no-such-team").await;
    refused(
        &missing,
        StatusCode::NOT_FOUND,
        "no team with id `no-such-team`",
    );

    // The manager edits and then deletes their team, after a confirmation.
    let edited = max
        .submit(
            &format!("/teams/{research}"),
            &format!("/teams/{research}/edit"),
            &[
                ("name", "Research"),
                ("models", ""),
                ("rpm", ""),
                ("tpm", "5000"),
                ("max_parallel", ""),
                ("max_budget", "25.5"),
                ("budget_duration", "7d"),
            ],
        )
        .await;
    redirected_to(&edited, &format!("/ui/teams/{research}?done=updated"));
    let team = s.team(&research).await;
    assert_eq!(
        (team["tpm"].clone(), team["max_budget"].clone()),
        (json!(5000), json!(25.5))
    );
    assert_eq!(team["budget_duration"], "7d");
    assert!(team["max_parallel"].is_null(), "{team}");
    let ask = max
        .submit(
            &format!("/teams/{research}"),
            &format!("/teams/{research}/delete"),
            &[],
        )
        .await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(ask.contains("Delete the team Research?"));
    assert_eq!(s.teams().await.len(), 2, "asking deletes nothing");
    let deleted = max
        .submit(
            &format!("/teams/{research}"),
            &format!("/teams/{research}/delete"),
            &[("confirm", "yes")],
        )
        .await;
    redirected_to(&deleted, "/ui/teams?done=deleted");
    assert_eq!(s.teams().await.len(), 1);
    assert_eq!(s.audit("action=team.delete").await[0]["target"], research);
    s.stop().await;
}

/// The `<tr>` of a table that mentions `name`.
fn row_of<'p>(page: &'p Page, name: &str) -> &'p str {
    let at = page
        .body
        .find(&format!(">{name}<"))
        .unwrap_or_else(|| panic!("no row of {name}: {}", page.main()));
    let start = page.body[..at].rfind("<tr").unwrap();
    let end = at + page.body[at..].find("</tr>").unwrap();
    &page.body[start..end]
}

// ---- users ------------------------------------------------------------------------------

#[tokio::test]
async fn users_are_listed_found_created_and_changed_by_admins_only() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.as_("ada").await;
    let max = s.as_("max").await;
    let uma = s.as_("uma").await;
    let vic = s.as_("vic").await;

    // Search and role filter over the API's listing.
    let page = ada.get("/users?q=UM").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.contains(">uma</a>") && !page.contains(">ulf</a>"),
        "{}",
        page.main()
    );
    let page = ada.get("/users?role=viewer").await;
    assert!(
        page.contains(">vic</a>") && !page.contains(">uma</a>"),
        "{}",
        page.main()
    );
    let page = ada.get(&format!("/users?q={}", &s.id("ulf")[..8])).await;
    assert!(
        page.contains(">ulf</a>"),
        "by the start of the id: {}",
        page.main()
    );
    let page = ada.get("/users?q=%27%20OR%201%3D1%20--").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.contains("No user matches."), "{}", page.main());
    refused(
        &ada.get(&format!("/users?q={}", "a".repeat(300))).await,
        StatusCode::BAD_REQUEST,
        "`q` is longer than 200 characters",
    );
    refused(
        &ada.get("/users?role=superuser").await,
        StatusCode::BAD_REQUEST,
        "unknown role `superuser`",
    );
    refused(
        &ada.get("/users?page=0").await,
        StatusCode::BAD_REQUEST,
        "`page` must be a page number",
    );
    refused(
        &ada.get("/users?q=a%00b").await,
        StatusCode::BAD_REQUEST,
        "control characters",
    );

    // Pages of 50.
    for i in 0..55 {
        s.t.create_user(&format!("bulk{i:02}"), "user").await;
    }
    let first = ada.get("/users?q=bulk").await;
    assert!(first.contains("1–50 of 55"), "{}", first.main());
    assert!(
        first.contains("href=\"/ui/users?q=bulk&#38;page=2\""),
        "{}",
        first.main()
    );
    let second = ada.get("/users?q=bulk&page=2").await;
    assert!(second.contains("51–55 of 55"));
    assert_eq!(second.main().matches("\">bulk").count(), 5);

    // An admin creates a user; a refusal keeps what was typed, but never the password.
    let bad = ada
        .submit(
            "/users",
            "/users",
            &[
                ("username", "neo"),
                ("email", "not-an-address"),
                ("role", "viewer"),
                ("password", "Secret-Pass-123"),
            ],
        )
        .await;
    refused(&bad, StatusCode::BAD_REQUEST, "is not an email address");
    assert!(bad.contains("value=\"neo\""));
    assert!(!bad.contains("Secret-Pass-123"));
    let weak = ada
        .submit(
            "/users",
            "/users",
            &[
                ("username", "neo"),
                ("email", "neo@example.com"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST, "{}", weak.body);
    assert!(!weak.contains("value=\"short\""));
    let created = ada
        .submit(
            "/users",
            "/users",
            &[
                ("username", "neo"),
                ("email", "neo@example.com"),
                ("full_name", "Thomas Anderson"),
                ("role", "viewer"),
                ("password", "Secret-Pass-123"),
            ],
        )
        .await;
    let neo = id_in(&created, "users");
    redirected_to(&created, &format!("/ui/users/{neo}?done=created"));
    let user = s
        .api(Method::GET, &format!("/admin/users/{neo}"), None)
        .await;
    assert_eq!(
        (user["role"].clone(), user["full_name"].clone()),
        (json!("viewer"), json!("Thomas Anderson"))
    );
    Browser::new(format!("http://{}", s.t.http))
        .signed_in("neo", "Secret-Pass-123")
        .await;
    let duplicate = ada
        .submit(
            "/users",
            "/users",
            &[("username", "neo"), ("email", "neo2@example.com")],
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.body);

    // Role, block, unblock, delete: each as the API's PATCH, audited.
    let page = ada.get(&format!("/users/{neo}")).await;
    assert!(page.contains(&format!("action=\"/ui/users/{neo}/role\"")));
    let changed = ada
        .submit(
            &format!("/users/{neo}"),
            &format!("/users/{neo}/role"),
            &[("role", "manager")],
        )
        .await;
    redirected_to(&changed, &format!("/ui/users/{neo}?done=role"));
    let blocked = ada
        .submit(
            &format!("/users/{neo}"),
            &format!("/users/{neo}/block"),
            &[],
        )
        .await;
    redirected_to(&blocked, &format!("/ui/users/{neo}?done=blocked"));
    let user = s
        .api(Method::GET, &format!("/admin/users/{neo}"), None)
        .await;
    assert_eq!(
        (user["role"].clone(), user["blocked"].clone()),
        (json!("manager"), json!(true))
    );
    let page = ada.get(&format!("/users/{neo}")).await;
    assert!(page.contains("<span class=\"status blocked\">blocked</span>"));
    assert!(page.contains(&format!("action=\"/ui/users/{neo}/unblock\"")));
    ada.submit(
        &format!("/users/{neo}"),
        &format!("/users/{neo}/unblock"),
        &[],
    )
    .await;
    let updates = s.audit(&format!("action=user.update&target={neo}")).await;
    assert_eq!(updates.len(), 3, "{updates:?}");
    assert_eq!(updates[2]["details"]["role"], "manager", "{updates:?}");
    let refused_role = ada
        .submit(
            &format!("/users/{neo}"),
            &format!("/users/{neo}/role"),
            &[("role", "root")],
        )
        .await;
    refused(
        &refused_role,
        StatusCode::BAD_REQUEST,
        "unknown role `root`",
    );

    // The user's page links their teams and keys.
    let team = s
        .api(Method::POST, "/admin/teams", Some(json!({"name": "Ops"})))
        .await;
    let ops = team["id"].as_str().unwrap();
    s.api(
        Method::POST,
        &format!("/admin/teams/{ops}/members"),
        Some(json!({"user_id": neo, "role": "owner"})),
    )
    .await;
    let page = ada.get(&format!("/users/{neo}")).await;
    assert!(
        page.contains(&format!("href=\"/ui/teams/{ops}\">Ops</a>")),
        "{}",
        page.main()
    );
    assert!(page.contains(&format!("href=\"/ui/keys?user={neo}\"")));

    // A manager lists and reads users but changes none; a forged post is refused.
    let page = max.get("/users").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.contains("New user"));
    let page = max.get(&format!("/users/{neo}")).await;
    assert!(write_forms(&page).is_empty(), "{:?}", write_forms(&page));
    assert!(
        !page.contains("/ui/keys?user="),
        "the API lists only their own keys"
    );
    let forged = max
        .post(
            &format!("/users/{neo}/role"),
            &[("csrf_token", &page.csrf()), ("role", "admin")],
        )
        .await;
    refused(
        &forged,
        StatusCode::FORBIDDEN,
        "the role `manager` may not change users",
    );

    // A viewer reads everything and changes nothing.
    let page = vic.get(&format!("/users/{neo}")).await;
    assert!(write_forms(&page).is_empty());
    let csrf = page.csrf();
    for action in ["block", "unlock", "delete"] {
        let forged = vic
            .post(
                &format!("/users/{neo}/{action}"),
                &[("csrf_token", &csrf), ("confirm", "yes")],
            )
            .await;
        assert_eq!(
            forged.status,
            StatusCode::FORBIDDEN,
            "{action}: {}",
            forged.body
        );
    }
    let forged = vic
        .post(
            "/users",
            &[
                ("csrf_token", &csrf),
                ("username", "x"),
                ("email", "x@example.com"),
            ],
        )
        .await;
    refused(
        &forged,
        StatusCode::FORBIDDEN,
        "the role `viewer` may not create users",
    );
    let user = s
        .api(Method::GET, &format!("/admin/users/{neo}"), None)
        .await;
    assert_eq!(user["blocked"], false);

    // A user: no Users in the navigation, the API's 403 on the listing, their own page.
    let keys = uma.get("/keys").await;
    assert!(
        !keys.contains("href=\"/ui/users\""),
        "no Users link for a user"
    );
    refused(
        &uma.get("/users").await,
        StatusCode::FORBIDDEN,
        "the role `user` may not list users",
    );
    let own = uma.get(&format!("/users/{}", s.id("uma"))).await;
    assert_eq!(own.status, StatusCode::OK);
    assert!(own.contains("Your keys"));
    assert!(write_forms(&own).is_empty());
    refused(
        &uma.get(&format!("/users/{neo}")).await,
        StatusCode::FORBIDDEN,
        "may not read other users",
    );

    // Deleting asks first, then deletes and revokes.
    let ask = ada
        .submit(
            &format!("/users/{neo}"),
            &format!("/users/{neo}/delete"),
            &[],
        )
        .await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(ask.contains("Delete the user neo?"));
    let deleted = ada
        .submit(
            &format!("/users/{neo}"),
            &format!("/users/{neo}/delete"),
            &[("confirm", "yes")],
        )
        .await;
    redirected_to(&deleted, "/ui/users?done=deleted");
    let (status, _) =
        s.t.admin(Method::GET, &format!("/admin/users/{neo}"), None)
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.stop().await;
}

// ---- usage ------------------------------------------------------------------------------

/// Unix seconds of an RFC 3339 time.
fn ts(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp()
}

#[allow(clippy::too_many_arguments)]
fn record(
    id: &str,
    at: &str,
    key: Option<&str>,
    user: Option<&str>,
    team: Option<&str>,
    model: &str,
    tokens: (u64, u64),
    cost_usd: f64,
) -> UsageRecord {
    UsageRecord {
        request_id: id.to_owned(),
        at: ts(at),
        key_id: key.map(str::to_owned),
        user_id: user.map(str::to_owned),
        team_id: team.map(str::to_owned),
        org_id: None,
        model: Some(model.to_owned()),
        tokens: TokenUsage {
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            ..TokenUsage::default()
        },
        cost_usd,
        status: 200,
        latency_ms: 20,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

/// Parses CSV as RFC 4180 writes it: quoted fields with doubled quotes, CRLF line ends.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    assert!(text.ends_with("\r\n"), "{text:?}");
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF outside quotes");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\n') => panic!("a bare LF ends a line: {text:?}"),
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted && field.is_empty() && row.is_empty(), "{text:?}");
    rows
}

/// A group of the report as the CSV writes it: defused, as the page's rule says.
fn defused(group: &str) -> String {
    match group.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{group}"),
        _ => group.to_owned(),
    }
}

/// The `cost_usd` numbers of a report's JSON text, in order (the rows', then the
/// total's), read with Rust's exact parser: serde_json's default float parsing may be one
/// unit in the last place off, which would hide whether the sums agree to the last bit.
fn costs_in(raw: &str) -> Vec<f64> {
    raw.split("\"cost_usd\":")
        .skip(1)
        .map(|rest| {
            let end = rest.find([',', '}']).unwrap();
            rest[..end].parse::<f64>().unwrap()
        })
        .collect()
}

/// Checks that the CSV is the API's report (its JSON text), row for row, and that its rows
/// add up to the report's `total`, to the last bit.
fn csv_is_the_report(csv: &str, raw: &str) {
    let report: Value = serde_json::from_str(raw).unwrap();
    let costs = costs_in(raw);
    let rows = parse_csv(csv);
    assert_eq!(
        rows[0],
        [
            "group",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_usd"
        ]
    );
    let data = report["data"].as_array().unwrap();
    assert_eq!(rows.len() - 1, data.len(), "{csv}\n{report}");
    assert_eq!(costs.len(), data.len() + 1);
    let (mut requests, mut input, mut output, mut cost) = (0u64, 0u64, 0u64, 0f64);
    for (i, (row, api)) in rows[1..].iter().zip(data).enumerate() {
        assert_eq!(
            row[0],
            defused(api["group"].as_str().unwrap()),
            "{row:?} {api}"
        );
        let n = |i: usize| row[i].parse::<u64>().unwrap();
        assert_eq!(n(1), api["requests"].as_u64().unwrap());
        assert_eq!(n(2), api["input_tokens"].as_u64().unwrap());
        assert_eq!(n(3), api["output_tokens"].as_u64().unwrap());
        let c: f64 = row[4].parse().unwrap();
        assert_eq!(c.to_bits(), costs[i].to_bits(), "{row:?} {api}");
        requests += n(1);
        input += n(2);
        output += n(3);
        cost += c;
    }
    let total = &report["total"];
    assert_eq!(requests, total["requests"].as_u64().unwrap());
    assert_eq!(input, total["input_tokens"].as_u64().unwrap());
    assert_eq!(output, total["output_tokens"].as_u64().unwrap());
    let api_total = costs[data.len()];
    assert_eq!(cost.to_bits(), api_total.to_bits(), "{cost} vs {api_total}");
}

async fn usage_csv_adds_up_to_the_api_s_report(db: Db) {
    let s = Stack::start(db, "").await;
    let (uma, ulf) = (s.id("uma"), s.id("ulf"));
    let team = s
        .api(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Platform"})),
        )
        .await;
    let platform = team["id"].as_str().unwrap().to_owned();
    let key_of = |user: &str, name: &str| json!({"name": name, "user_id": user});
    let (uma_key, _) = s.t.create_key(key_of(&uma, "uma-laptop")).await;
    let (ulf_key, _) = s.t.create_key(key_of(&ulf, "ulf-ci")).await;
    // Model names come from request bodies: whatever a client sends ends up in a report.
    let hostile = [
        "=HYPERLINK(\"http://evil.example\",\"x\")",
        "+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1:A9)",
        "\tlooks-empty",
        "\rreturn",
        "comma, \"quoted\"",
        "two\nlines",
    ];
    let mut records = vec![
        record(
            "r1",
            "2026-11-03T10:00:00Z",
            Some(&uma_key),
            Some(&uma),
            Some(&platform),
            "gpt-4o",
            (1000, 200),
            0.1,
        ),
        record(
            "r2",
            "2026-11-03T23:59:59Z",
            Some(&uma_key),
            Some(&uma),
            None,
            "gpt-4o-mini",
            (10, 2),
            0.2,
        ),
        record(
            "r3",
            "2026-11-04T00:00:00Z",
            Some(&ulf_key),
            Some(&ulf),
            Some(&platform),
            "gpt-4o",
            (7, 3),
            0.3,
        ),
        record(
            "r4",
            "2026-11-05T12:00:00Z",
            Some(&ulf_key),
            Some(&ulf),
            None,
            "claude-3",
            (5, 5),
            1e-7,
        ),
        record(
            "r5",
            "2026-11-06T00:00:00Z",
            None,
            None,
            None,
            "gpt-4o",
            (1, 1),
            0.7,
        ),
        record(
            "r6",
            "2026-10-31T23:59:59Z",
            Some(&uma_key),
            Some(&uma),
            None,
            "gpt-4o",
            (3, 3),
            5.0,
        ),
    ];
    for (i, model) in hostile.iter().enumerate() {
        records.push(record(
            &format!("h{i}"),
            "2026-11-04T08:00:00Z",
            Some(&ulf_key),
            Some(&ulf),
            None,
            model,
            (1, 1),
            0.01 * (i + 1) as f64,
        ));
    }
    let written = s.t.app.store.record_usage(&records).await.unwrap();
    assert_eq!(written, records.len() as u64);

    let ada = s.as_("ada").await;
    let window = "since=2026-11-01&until=2026-11-05";
    // `until` as a date on the page is its whole day: the API's until is its last second.
    let api_window = "since=2026-11-01&until=2026-11-05T23:59:59Z";
    for group in ["day", "model", "team", "key", "user"] {
        let csv = ada.get(&format!("/usage.csv?{window}&group={group}")).await;
        assert_eq!(csv.status, StatusCode::OK, "{group}: {}", csv.body);
        assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
        let disposition = csv.headers["content-disposition"].to_str().unwrap();
        assert_eq!(
            disposition,
            format!(
                "attachment; filename=\"tollgate-usage-by-{group}-2026-11-01-to-2026-11-05.csv\""
            )
        );
        let raw = s
            .raw(&format!("/admin/usage?{api_window}&group_by={group}"), None)
            .await;
        csv_is_the_report(&csv.body, &raw);
    }
    // The whole window: r6 (October) and r5 (the 6th) are outside it.
    let report = s
        .api(
            Method::GET,
            &format!("/admin/usage?{api_window}&group_by=day"),
            None,
        )
        .await;
    assert_eq!(report["total"]["requests"], 4 + hostile.len());
    let days: Vec<&str> = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(days, ["2026-11-03", "2026-11-04", "2026-11-05"]);

    // CSV injection: every hostile model is defused, and quoted where RFC 4180 says.
    let csv = ada
        .get(&format!("/usage.csv?{window}&group=model"))
        .await
        .body;
    for line in [
        "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",1,1,1,0.01\r\n",
        "'+cmd|' /C calc'!A0,1,1,1,0.02\r\n",
        "'-2+3,1,1,1,0.03\r\n",
        "'@SUM(A1:A9),1,1,1,0.04\r\n",
        "'\tlooks-empty,1,1,1,0.05\r\n",
        "\"'\rreturn\",1,1,1,0.06\r\n",
        "\"comma, \"\"quoted\"\"\",1,1,1,0.07\r\n",
        "\"two\nlines\",1,1,1,0.08\r\n",
    ] {
        assert!(csv.contains(line), "{line:?} not in {csv:?}");
    }
    for line in csv.split("\r\n").filter(|l| !l.is_empty()) {
        assert!(!line.starts_with(['=', '+', '-', '@', '\t']), "{line:?}");
    }

    // The page: an SVG chart (no script, no inline style), its text alternative, and a
    // table of the same numbers.
    let page = ada.get(&format!("/usage?{window}&group=model")).await;
    assert_eq!(page.status, StatusCode::OK);
    let main = page.main();
    assert!(main.contains("<svg viewBox=\"0 0 640 "), "{main}");
    assert!(main.contains("role=\"img\" aria-labelledby=\"chart-title chart-desc\""));
    assert!(
        main.contains(
            "<desc id=\"chart-desc\">Cost in USD by model, 2026-11-01 to 2026-11-05: 11 groups"
        ),
        "{main}"
    );
    assert_eq!(main.matches("<rect ").count(), 11);
    assert!(main.contains("<caption>Usage by model, 2026-11-01 to 2026-11-05</caption>"));
    assert!(main.contains("<th scope=\"row\">gpt-4o</th>"), "{main}");
    assert!(
        main.contains("<td class=\"num\">1,007</td>"),
        "gpt-4o's input tokens: {main}"
    );
    assert!(
        main.contains("=HYPERLINK(&#34;http://evil.example&#34;")
            || main.contains("=HYPERLINK(&quot;http://evil.example&quot;"),
        "escaped: {main}"
    );
    assert!(!page.body.contains(" style="), "no inline style anywhere");
    assert!(!page.body.contains("<script>"), "no inline script");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("style-src 'self';") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(
        main.contains(&format!(
            "href=\"/ui/usage.csv?{}&#38;group=model\"",
            window.replace('&', "&#38;")
        )),
        "{main}"
    );
    // Grouped by key or team, the rows are named.
    let page = ada
        .get(&format!("/usage?{window}&group=key&metric=requests"))
        .await;
    assert!(
        page.contains("<th scope=\"row\">uma-laptop"),
        "{}",
        page.main()
    );
    assert!(page.contains("Requests by key"), "{}", page.main());
    let page = ada.get(&format!("/usage?{window}&group=team")).await;
    assert!(
        page.contains("<th scope=\"row\">Platform"),
        "{}",
        page.main()
    );
    assert!(
        page.contains("<th scope=\"row\">no team"),
        "{}",
        page.main()
    );
    // By default: this month, by day.
    let page = ada.get("/usage").await;
    let month = chrono::Utc::now().format("%Y-%m-01").to_string();
    assert!(page.contains(&format!("{month} to now")), "{}", page.main());
    assert!(page.contains("No usage in this period."));

    // A user sees their own usage only, as the user route reports it.
    let uma_b = s.as_("uma").await;
    let token = s.token("uma").await;
    for group in ["day", "model", "key", "team"] {
        let csv = uma_b
            .get(&format!("/usage.csv?{window}&group={group}"))
            .await;
        assert_eq!(csv.status, StatusCode::OK, "{}", csv.body);
        let raw = s
            .raw(
                &format!("/v1/user/usage?{api_window}&group_by={group}"),
                Some(&token),
            )
            .await;
        csv_is_the_report(&csv.body, &raw);
        let report: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(report["total"]["requests"], 2, "r1 and r2 only: {report}");
    }
    let page = uma_b.get(&format!("/usage?{window}&group=model")).await;
    assert!(page.contains("Your usage"));
    assert!(page.contains("<th scope=\"row\">gpt-4o-mini</th>"));
    assert!(
        !page.contains("claude-3") && !page.contains("HYPERLINK"),
        "{}",
        page.main()
    );
    assert!(
        !page.contains("<option value=\"user\""),
        "no grouping by user for a user"
    );
    refused(
        &uma_b.get(&format!("/usage.csv?{window}&group=user")).await,
        StatusCode::BAD_REQUEST,
        "a user&#39;s own report groups by key, team, model or day",
    );
    refused(
        &uma_b.get(&format!("/usage?{window}&team={platform}")).await,
        StatusCode::BAD_REQUEST,
        "your own usage is not filtered by team",
    );

    // A viewer reads the whole gateway's usage, like an admin.
    let vic = s.as_("vic").await;
    let csv = vic.get(&format!("/usage.csv?{window}&group=user")).await;
    let raw = s
        .raw(&format!("/admin/usage?{api_window}&group_by=user"), None)
        .await;
    csv_is_the_report(&csv.body, &raw);
    let team_csv = vic
        .get(&format!("/usage.csv?{window}&group=model&team={platform}"))
        .await;
    let raw = s
        .raw(
            &format!("/admin/usage?{api_window}&group_by=model&team_id={platform}"),
            None,
        )
        .await;
    csv_is_the_report(&team_csv.body, &raw);
    let report: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(report["total"]["requests"], 2);

    // Bad dates: a clear error on the page and for the CSV.
    for (query, says) in [
        ("since=2026-13-45", "`since`: `2026-13-45` is not a time"),
        (
            "since=2026-11-05&until=2026-11-01",
            "`since` (2026-11-05) is after `until` (2026-11-01)",
        ),
        ("until=tomorrow", "`until`: `tomorrow` is not a time"),
        ("since=99999999999999999", "out of range"),
        ("group=week", "unknown group_by `week`"),
        ("metric=pie", "`metric` must be cost, requests or tokens"),
    ] {
        refused(
            &ada.get(&format!("/usage?{query}")).await,
            StatusCode::BAD_REQUEST,
            says,
        );
        let csv = ada.get(&format!("/usage.csv?{query}")).await;
        assert_eq!(csv.status, StatusCode::BAD_REQUEST, "{query}: {}", csv.body);
        assert!(csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    refused(
        &ada.get(&format!("/usage?since={}", "2".repeat(5_000)))
            .await,
        StatusCode::BAD_REQUEST,
        "`since` is longer than 64 characters",
    );
    s.stop().await;
}

// ---- budgets ----------------------------------------------------------------------------

async fn budgets_show_spend_against_the_limit_and_the_thresholds_reached(db: Db) {
    let s = Stack::start(db, "budgets: { alert_thresholds: [50, 90, 100] }\n").await;
    let uma = s.id("uma");
    let team = s
        .api(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Platform", "max_budget": 2.0})),
        )
        .await;
    let platform = team["id"].as_str().unwrap().to_owned();
    s.api(
        Method::POST,
        &format!("/admin/teams/{platform}/members"),
        Some(json!({"user_id": uma, "role": "member"})),
    )
    .await;
    s.api(
        Method::PATCH,
        &format!("/admin/users/{uma}"),
        Some(json!({"max_budget": 100.0, "budget_duration": "1d"})),
    )
    .await;
    let (key, _) = s
        .t
        .create_key(json!({"name": "uma-laptop", "user_id": uma, "max_budget": 10.0, "budget_duration": "30d"}))
        .await;
    let (other, _) =
        s.t.create_key(json!({"name": "ulf-ci", "user_id": s.id("ulf"), "max_budget": 1.0}))
            .await;
    s.t.create_key(json!({"name": "no-budget", "user_id": uma}))
        .await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    s.t.app
        .store
        .record_usage(&[
            record(
                "b1",
                &now,
                Some(&key),
                Some(&uma),
                Some(&platform),
                "gpt-4o",
                (10, 10),
                6.0,
            ),
            record(
                "b2",
                &now,
                Some(&other),
                Some(&s.id("ulf")),
                None,
                "gpt-4o",
                (10, 10),
                1.5,
            ),
        ])
        .await
        .unwrap();

    // The API: what is budgeted, its spend as the entity's own `spend`, the thresholds.
    let budgets = s.api(Method::GET, "/admin/budgets", None).await["data"]
        .as_array()
        .unwrap()
        .clone();
    let names: Vec<(&str, &str)> = budgets
        .iter()
        .map(|b| (b["kind"].as_str().unwrap(), b["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("key", "ulf-ci"),
            ("key", "uma-laptop"),
            ("user", "uma"),
            ("team", "Platform")
        ],
        "keys, users, teams; each by name"
    );
    let key_spend = s
        .api(Method::GET, &format!("/admin/keys/{key}"), None)
        .await["spend"]
        .clone();
    assert_eq!(budgets[1]["spend"], key_spend);
    assert_eq!(budgets[1]["spend"], 6.0);
    assert_eq!(budgets[1]["thresholds_reached"], json!([50]));
    assert_eq!(budgets[1]["budget_duration"], "30d");
    assert_eq!(budgets[0]["thresholds_reached"], json!([50, 90, 100]));
    assert_eq!(
        budgets[0]["budget_duration"], "1mo",
        "none of its own: calendar months"
    );
    assert_eq!(budgets[2]["spend"], 6.0);
    assert_eq!(budgets[2]["thresholds_reached"], json!([]));
    assert_eq!(
        budgets[3]["thresholds_reached"],
        json!([50, 90, 100]),
        "6 of 2"
    );
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(budgets[2]["period_start"], format!("{day}T00:00:00Z"));
    let (status, body) =
        s.t.admin(Method::GET, "/admin/budgets?kind=tenant", None)
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) =
        s.t.admin(Method::GET, "/admin/budgets?kind=org", None)
            .await;
    assert_eq!(
        (status, &body["data"]),
        (StatusCode::OK, &json!([])),
        "{body}"
    );

    // The page: a meter and the numbers, the period, the thresholds.
    let ada = s.as_("ada").await;
    let page = ada.get("/budgets").await;
    assert_eq!(page.status, StatusCode::OK);
    let row = row_of(&page, "uma-laptop");
    assert!(
        row.contains(
            "<meter min=\"0\" max=\"1\" low=\"0.75\" high=\"0.9\" optimum=\"0\" value=\"0.6\""
        ),
        "{row}"
    );
    assert!(
        row.contains("60 %") && row.contains("$6.00") && row.contains("$10.00"),
        "{row}"
    );
    assert!(
        row.contains("50 %") && row.contains("not yet: 90 %, 100 %"),
        "{row}"
    );
    assert!(row.contains("(30d)"), "{row}");
    let row = row_of(&page, "ulf-ci");
    assert!(row.starts_with("<tr class=\"over\""), "{row}");
    assert!(
        row.contains("value=\"1\"") && row.contains("150 %"),
        "{row}"
    );
    let row = row_of(&page, "Platform");
    assert!(row.contains("300 %"), "{row}");
    assert!(!page.contains(">no-budget<"));
    assert!(page.contains("reaches 50 %, 90 %, 100 % of a budget"));
    let keys_only = ada.get("/budgets?kind=key").await;
    assert!(keys_only.contains("uma-laptop") && !keys_only.contains(">Platform<"));
    refused(
        &ada.get("/budgets?kind=tenant").await,
        StatusCode::BAD_REQUEST,
        "unknown entity kind `tenant`",
    );

    // A user sees their own key, themselves and their team; not another user's key.
    let uma_b = s.as_("uma").await;
    let page = uma_b.get("/budgets").await;
    assert!(page.contains(">uma-laptop<") && page.contains(">uma<") && page.contains(">Platform<"));
    assert!(!page.contains("ulf-ci"), "{}", page.main());
    // A viewer sees every budget.
    let page = s.as_("vic").await.get("/budgets").await;
    assert!(page.contains("ulf-ci") && page.contains("uma-laptop"));
    s.stop().await;
}

// ---- alerts -----------------------------------------------------------------------------

#[tokio::test]
async fn alerts_show_their_delivery_to_admins_and_viewers_only() {
    let s = Stack::start(Db::Sqlite, "").await;
    let (key, _) =
        s.t.create_key(json!({"name": "uma-laptop", "user_id": s.id("uma"), "max_budget": 10.0}))
            .await;
    let alerts = Alerts::new(
        s.t.app.store.clone(),
        &[50, 75, 90, 100],
        None,
        None,
        s.t.app.metrics.clone(),
    );
    let now = chrono::Utc::now().timestamp();
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let records = [record(
        "a1",
        &at,
        Some(&key),
        None,
        None,
        "gpt-4o",
        (1, 1),
        8.0,
    )];
    s.t.app.store.record_usage(&records).await.unwrap();
    assert_eq!(alerts.on_written(&records, now).await, 2, "50 and 75 %");
    let more = [record(
        "a2",
        &at,
        Some(&key),
        None,
        None,
        "gpt-4o",
        (1, 1),
        1.5,
    )];
    s.t.app.store.record_usage(&more).await.unwrap();
    assert_eq!(alerts.on_written(&more, now).await, 1, "90 %");
    let raised = s.api(Method::GET, "/admin/alerts", None).await["data"]
        .as_array()
        .unwrap()
        .clone();
    let id = |threshold: u64| {
        raised.iter().find(|a| a["threshold"] == threshold).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // One delivered, one retried, one given up: how the delivery loop records its attempts.
    let store = &s.t.app.store;
    assert!(store
        .mark_alert(&id(50), AlertOutcome::Delivered { at: now })
        .await
        .unwrap());
    assert!(store
        .mark_alert(
            &id(75),
            AlertOutcome::Retry {
                error: "webhook answered 502 <script>".into(),
                next_attempt_at: now + 120,
            },
        )
        .await
        .unwrap());
    assert!(store
        .mark_alert(
            &id(90),
            AlertOutcome::Failed {
                error: "connection refused".into(),
            },
        )
        .await
        .unwrap());

    let ada = s.as_("ada").await;
    let page = ada.get("/alerts").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.contains("No webhook is configured"));
    let delivered = row_of(&page, "delivered");
    assert!(
        delivered.contains("uma-laptop") && delivered.contains("50 %"),
        "{delivered}"
    );
    assert!(
        delivered.contains("$8.00") && delivered.contains("$10.00"),
        "{delivered}"
    );
    let pending = row_of(&page, "pending");
    assert!(pending.contains("75 %"), "{pending}");
    assert!(
        pending.contains("<td class=\"num\">1</td>"),
        "one attempt: {pending}"
    );
    let next = chrono::DateTime::from_timestamp(now + 120, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M UTC")
        .to_string();
    assert!(pending.contains(&next), "{pending}");
    assert!(pending.contains("webhook answered 502 &"), "{pending}");
    assert!(!pending.contains("<script>"), "escaped: {pending}");
    let failed = row_of(&page, "failed");
    assert!(
        failed.contains("90 %") && failed.contains("$9.50"),
        "{failed}"
    );
    assert!(failed.contains("connection refused"), "{failed}");
    assert!(
        failed.contains("<td></td>\n      <td></td>"),
        "no next attempt, not delivered: {failed}"
    );
    let only = ada.get("/alerts?state=delivered").await;
    assert!(only.contains("delivered") && !only.main().contains(">pending<"));
    refused(
        &ada.get("/alerts?state=lost").await,
        StatusCode::BAD_REQUEST,
        "unknown alert state `lost`",
    );
    refused(
        &ada.get("/alerts?limit=5000").await,
        StatusCode::BAD_REQUEST,
        "`limit` must be from 1 to 1000",
    );
    let by_entity = ada.get(&format!("/alerts?kind=key&entity={key}")).await;
    assert_eq!(
        by_entity.main().matches("<tr>").count(),
        4,
        "header and three alerts"
    );
    assert_eq!(
        s.api(Method::GET, "/admin/alerts?state=pending", None)
            .await["data"][0]["state"],
        json!(AlertState::Pending.as_str())
    );

    // A viewer reads them; a user is told the API's 403 and has no link to them.
    assert_eq!(
        s.as_("vic").await.get("/alerts").await.status,
        StatusCode::OK
    );
    let uma = s.as_("uma").await;
    refused(
        &uma.get("/alerts").await,
        StatusCode::FORBIDDEN,
        "the role `user` may not read budget alerts",
    );
    assert!(!uma.get("/keys").await.contains("href=\"/ui/alerts\""));
    s.stop().await;
}

#[tokio::test]
async fn alerts_show_their_email_delivery_when_mail_is_configured() {
    // Nothing listens on port 9 here: the running delivery loop's attempts fail, which the
    // page shows as the email channel's pending state.
    let s = Stack::start(
        Db::Sqlite,
        "budgets:\n  alert_email: { smtp_url: \"smtp://127.0.0.1:9\", from: a@example.com, to: [b@example.com] }\n",
    )
    .await;
    let (key, _) =
        s.t.create_key(json!({"name": "uma-laptop", "user_id": s.id("uma"), "max_budget": 10.0}))
            .await;
    let now = chrono::Utc::now().timestamp();
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let records = [record(
        "e1",
        &at,
        Some(&key),
        None,
        None,
        "gpt-4o",
        (1, 1),
        5.0,
    )];
    s.t.app.store.record_usage(&records).await.unwrap();
    assert_eq!(s.t.app.alerts.on_written(&records, now).await, 1);
    let id = s.api(Method::GET, "/admin/alerts", None).await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The email channel gives up (as after its last attempt); the webhook's stays pending.
    assert!(s
        .t
        .app
        .store
        .mark_delivery(
            tollgate::store::AlertChannel::Email,
            &id,
            AlertOutcome::Failed {
                error: "cannot connect to the SMTP server <b>".into(),
            },
        )
        .await
        .unwrap());

    let page = s.as_("ada").await.get("/alerts").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.contains("alerts are mailed"), "{}", page.main());
    assert!(page.contains("<th scope=\"col\">Email</th>"));
    let row = row_of(&page, "failed");
    assert!(row.contains("uma-laptop") && row.contains("50 %"), "{row}");
    assert!(row.contains("status email-failed"), "{row}");
    assert!(row.contains("cannot connect to the SMTP server &"), "{row}");
    assert!(!row.contains("<b>"), "escaped: {row}");
    assert!(
        row.contains("<span class=\"status pending\">pending</span>"),
        "{row}"
    );
    let shown = &s.api(Method::GET, "/admin/alerts", None).await["data"][0];
    assert_eq!(shown["email"]["state"], "failed");
    assert_eq!(shown["state"], "pending");
    s.stop().await;
}

// ---- audit ------------------------------------------------------------------------------

async fn the_audit_log_is_filtered_and_paged(db: Db) {
    let s = Stack::start(db, "").await;
    // 120 events from one actor, many in the same second: pages must neither repeat nor
    // skip any.
    for i in 0..60 {
        s.t.create_user(&format!("p{i:02}"), "user").await;
    }
    let team = s
        .api(Method::POST, "/admin/teams", Some(json!({"name": "T"})))
        .await;
    let t = team["id"].as_str().unwrap();
    for i in 0..30 {
        s.api(
            Method::PATCH,
            &format!("/admin/teams/{t}"),
            Some(json!({"rpm": i})),
        )
        .await;
    }
    let ada = s.as_("ada").await;
    let all = s.audit("limit=1000").await;
    let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();

    // The API's cursor: the events after the given one, in the log's order.
    let after = s.audit(&format!("limit=1000&before={}", ids[9])).await;
    let rest: Vec<i64> = after.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(rest, ids[10..]);
    assert!(
        s.audit("before=0").await.is_empty(),
        "no such event, nothing after it"
    );

    // The page, walked by its "Older events" links, shows every event once, in order.
    let mut seen = Vec::new();
    let mut next = Some("/audit".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let page = ada.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        pages += 1;
        let main = page.main();
        for (at, _) in main.match_indices("<tr>\n      <td class=\"when\">") {
            let row = &main[at..at + main[at..].find("</tr>").unwrap()];
            seen.push(row.to_owned());
        }
        next = main
            .split("href=\"/ui")
            .skip(1)
            .find(|l| l.contains("rel=\"next\""))
            .map(|l| l[..l.find('"').unwrap()].replace("&#38;", "&"));
    }
    // The sign-in of ada is in the log too, after `all` was read.
    let total = s.audit("limit=1000").await.len();
    assert_eq!(seen.len(), total, "{pages} pages");
    assert_eq!(pages, total.div_ceil(50));
    assert!(seen[0].contains("ui.login"), "{}", seen[0]);

    // Filters: actor by username (and as the log has it), action, since.
    let page = ada.get("/audit?actor=ada").await;
    assert!(
        page.contains("ui.login") && !page.contains("user.create"),
        "{}",
        page.main()
    );
    assert!(page.contains(&format!(
        ">ada</a> <code class=\"hint\">user:{}…{}</code>",
        &s.id("ada")[..8],
        &s.id("ada")[32..]
    )));
    let page = ada.get("/audit?actor=master&action=team.update").await;
    assert_eq!(page.main().matches("<code>team.update</code>").count(), 30);
    assert!(page.contains(&format!("href=\"/ui/teams/{t}\"")));
    let page = ada.get("/audit?since=2999-01-01").await;
    assert!(page.contains("No event matches."));
    let page = ada.get("/audit?action=%27%20OR%20%271%27%3D%271").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.contains("No event matches."));
    refused(
        &ada.get("/audit?since=last%20week").await,
        StatusCode::BAD_REQUEST,
        "`since`: `last week` is not a time",
    );
    refused(
        &ada.get("/audit?before=abc").await,
        StatusCode::BAD_REQUEST,
        "`before` must be the id of an event",
    );
    refused(
        &ada.get(&format!("/audit?actor={}", "x".repeat(500))).await,
        StatusCode::BAD_REQUEST,
        "`actor` is longer than 200 characters",
    );

    // A viewer reads it; a user and a manager are told the API's 403.
    assert_eq!(
        s.as_("vic").await.get("/audit").await.status,
        StatusCode::OK
    );
    refused(
        &s.as_("uma").await.get("/audit").await,
        StatusCode::FORBIDDEN,
        "the role `user` may not read the audit log",
    );
    refused(
        &s.as_("max").await.get("/audit").await,
        StatusCode::FORBIDDEN,
        "the role `manager` may not read the audit log",
    );
    s.stop().await;
}

// ---- every page ---------------------------------------------------------------------------

/// Every `href` and form `action` of a page.
fn targets(page: &Page) -> Vec<String> {
    let mut all = Vec::new();
    for attr in ["href=\"", "action=\""] {
        for part in page.body.split(attr).skip(1) {
            all.push(part[..part.find('"').unwrap()].to_owned());
        }
    }
    all
}

#[tokio::test]
async fn every_page_answers_each_role_under_a_path_prefix() {
    let s = Stack::start(Db::Sqlite, "").await;
    let team = s
        .api(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Platform"})),
        )
        .await;
    let platform = team["id"].as_str().unwrap().to_owned();
    s.api(
        Method::POST,
        &format!("/admin/teams/{platform}/members"),
        Some(json!({"user_id": s.id("uma"), "role": "owner"})),
    )
    .await;
    let uma_user = format!("/users/{}", s.id("uma"));
    let team_page = format!("/teams/{platform}");
    // What each role may open (200) and what the API refuses them (403).
    let cases: [(&str, Vec<&str>, Vec<&str>); 4] = [
        (
            "ada",
            vec![
                "/teams",
                &team_page,
                "/users",
                &uma_user,
                "/usage",
                "/usage.csv",
                "/budgets",
                "/alerts",
                "/audit",
            ],
            vec![],
        ),
        (
            "max",
            vec![
                "/teams",
                "/users",
                &uma_user,
                "/usage",
                "/usage.csv",
                "/budgets",
            ],
            vec![&team_page, "/alerts", "/audit"],
        ),
        (
            "uma",
            vec![
                "/teams",
                &team_page,
                &uma_user,
                "/usage",
                "/usage.csv",
                "/budgets",
            ],
            vec!["/users", "/alerts", "/audit"],
        ),
        (
            "vic",
            vec![
                "/teams",
                &team_page,
                "/users",
                &uma_user,
                "/usage",
                "/usage.csv",
                "/budgets",
                "/alerts",
                "/audit",
            ],
            vec![],
        ),
    ];
    for (name, open, closed) in cases {
        // tollgate is reached here without the proxy, so the browser would not send the
        // cookie of /gw/ui back: it is handed over as the proxy would pass it.
        let cookie = format!(
            "tollgate_ui={}",
            s.as_(name).await.cookie("/keys", "tollgate_ui").unwrap()
        );
        let b = Browser::behind(format!("http://{}", s.t.http), "/gw");
        let nav = b.get_with_header("/keys", "cookie", &cookie).await;
        assert_eq!(nav.status, StatusCode::OK, "{}", nav.body);
        for path in &open {
            let page = b.get_with_header(path, "cookie", &cookie).await;
            assert_eq!(page.status, StatusCode::OK, "{name} {path}: {}", page.body);
            if path.ends_with(".csv") {
                assert!(page
                    .body
                    .starts_with("group,requests,input_tokens,output_tokens,cost_usd\r\n"));
                continue;
            }
            for target in targets(&page) {
                assert!(
                    target.starts_with("/gw/ui") || target.starts_with('#') || target == "data:,",
                    "{name} {path}: {target}"
                );
            }
            assert!(page.contains("<meta name=\"viewport\""));
            if !path.starts_with("/users/") && !path.starts_with("/teams/") {
                assert!(
                    nav.contains(&format!("href=\"/gw/ui{path}\"")) || path.ends_with(".csv"),
                    "{name}: no link to {path} in the navigation"
                );
            }
        }
        for path in &closed {
            let page = b.get_with_header(path, "cookie", &cookie).await;
            assert_eq!(
                page.status,
                StatusCode::FORBIDDEN,
                "{name} {path}: {}",
                page.body
            );
            assert!(
                page.contains(&format!("the role `{}` may not", role_of(name))),
                "{}",
                page.main()
            );
            if !path.starts_with("/teams/") {
                assert!(
                    !nav.contains(&format!("href=\"/gw/ui{path}\"")),
                    "{name} sees a link to {path}"
                );
            }
        }
    }
    // Tables have headers and captions; every input has a label.
    let b = s.as_("ada").await;
    for path in [
        "/teams", &team_page, "/users", &uma_user, "/usage", "/budgets", "/alerts", "/audit",
    ] {
        let page = b.get(path).await;
        let main = page.main();
        assert_eq!(
            main.matches("<table").count(),
            main.matches("<caption").count(),
            "{path}"
        );
        if main.contains("<table") {
            assert!(main.matches("<th scope=\"col\"").count() >= 2, "{path}");
        }
        for (at, _) in main
            .match_indices("<input ")
            .chain(main.match_indices("<select "))
        {
            let tag = &main[at..at + main[at..].find('>').unwrap()];
            if tag.contains("type=\"hidden\"") {
                continue;
            }
            let id = tag
                .split("id=\"")
                .nth(1)
                .map(|r| &r[..r.find('"').unwrap()]);
            let id = id.unwrap_or_else(|| panic!("{path}: an input without an id: {tag}"));
            assert!(
                main.contains(&format!("<label for=\"{id}\"")),
                "{path}: no label for {id}"
            );
        }
    }
    s.stop().await;
}

fn role_of(name: &str) -> &'static str {
    match name {
        "ada" => "admin",
        "max" => "manager",
        "uma" => "user",
        _ => "viewer",
    }
}

// ---- how long the pages take at size ------------------------------------------------------

/// Not run by default (`cargo test --test ui_pages -- --ignored --nocapture`): times the
/// budgets, users, teams and usage pages, and `GET /admin/budgets`, on SQLite with 20,000
/// keys (one in ten with a budget), 5,000 users and 200 teams, and prints the figures.
#[tokio::test]
#[ignore = "a measurement, not a check: prints how long the pages take at size (minutes on a debug build); run by hand for docs/ARCHITECTURE.md"]
async fn pages_at_size() {
    use std::time::Instant;
    let s = Stack::start(Db::Sqlite, "").await;
    let store = &s.t.app.store;
    let actor = tollgate::store::Actor::new("master", None);
    let mut users = Vec::new();
    for i in 0..5_000 {
        let user = store
            .create_user(
                &actor,
                tollgate::store::NewUser {
                    username: format!("user{i:05}"),
                    email: format!("user{i:05}@example.com"),
                    full_name: None,
                    role: None,
                    password_hash: None,
                    limits: Default::default(),
                    metadata: None,
                    org_id: None,
                    email_unverified: false,
                },
            )
            .await
            .unwrap();
        users.push(user.id);
    }
    for i in 0..200 {
        s.api(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": format!("team{i:03}"), "max_budget": 100.0})),
        )
        .await;
    }
    for batch in 0..20 {
        let keys: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let mut key =
                    json!({"name": format!("key{n:05}"), "user_id": users[n % users.len()]});
                if n % 10 == 0 {
                    key["max_budget"] = json!(5.0);
                }
                key
            })
            .collect();
        s.api(
            Method::POST,
            "/admin/keys/bulk",
            Some(json!({"keys": keys})),
        )
        .await;
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let records: Vec<UsageRecord> = (0..5_000)
        .map(|i| {
            record(
                &format!("r{i}"),
                &now,
                None,
                Some(&users[i % users.len()]),
                None,
                ["gpt-4o", "gpt-4o-mini", "claude-3"][i % 3],
                (100, 10),
                0.001,
            )
        })
        .collect();
    store.record_usage(&records).await.unwrap();
    let ada = s.as_("ada").await;
    let time = |what: &'static str| {
        let started = Instant::now();
        move |status: StatusCode| {
            assert_eq!(status, StatusCode::OK, "{what}");
            println!("{what}: {} ms", started.elapsed().as_millis());
        }
    };
    for _ in 0..2 {
        let started = Instant::now();
        let keys = store
            .list_keys(tollgate::store::KeyFilter::default())
            .await
            .unwrap();
        println!(
            "store: list_keys of {} keys: {} ms",
            keys.len(),
            started.elapsed().as_millis()
        );
        let started = Instant::now();
        let users = store.list_users().await.unwrap();
        println!(
            "store: list_users of {} users: {} ms",
            users.len(),
            started.elapsed().as_millis()
        );
        let done = time("GET /admin/budgets (2,000 of 20,000 keys and 200 teams with a budget)");
        done(s.t.admin(Method::GET, "/admin/budgets", None).await.0);
        let done = time("/ui/budgets");
        done(ada.get("/budgets").await.status);
        let done = time("/ui/users (5,005 users, first page)");
        done(ada.get("/users").await.status);
        let done = time("/ui/users?q=user04 (a search)");
        done(ada.get("/users?q=user04").await.status);
        let done = time("/ui/teams (200 teams)");
        done(ada.get("/teams").await.status);
        let done = time("/ui/usage?group=user (5,000 users' usage)");
        done(ada.get("/usage?group=user").await.status);
        let done = time("/ui/usage.csv?group=user");
        done(ada.get("/usage.csv?group=user").await.status);
    }
    s.stop().await;
}

/// Custom roles on the users pages: offered where an admin gives a role, shown on a user's
/// page and in the listing, and a filter of the listing; an unknown one is refused.
#[tokio::test]
async fn custom_roles_are_offered_shown_and_filtered_on_the_users_pages() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.api(
        Method::POST,
        "/admin/roles",
        Some(json!({"name": "analyst", "permissions": ["usage:read"]})),
    )
    .await;
    let ada = s.as_("ada").await;
    let uma = s.id("uma");

    let page = ada.get(&format!("/users/{uma}")).await;
    assert!(
        page.contains("<option value=\"analyst\">analyst</option>"),
        "{}",
        page.main()
    );
    let changed = ada
        .submit(
            &format!("/users/{uma}"),
            &format!("/users/{uma}/role"),
            &[("role", "analyst")],
        )
        .await;
    redirected_to(&changed, &format!("/ui/users/{uma}?done=role"));
    let user = s
        .api(Method::GET, &format!("/admin/users/{uma}"), None)
        .await;
    assert_eq!(user["role"], "analyst");
    let page = ada.get(&format!("/users/{uma}")).await;
    assert!(
        page.contains("<option value=\"analyst\" selected>analyst</option>"),
        "{}",
        page.main()
    );

    let page = ada.get("/users?role=analyst").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.contains(">uma</a>") && !page.contains(">ulf</a>"),
        "{}",
        page.main()
    );
    assert!(row_of(&page, "uma").contains("analyst"), "{}", page.main());
    assert!(page.contains("<option value=\"analyst\" selected>analyst</option>"));
    refused(
        &ada.get("/users?role=nosuchrole").await,
        StatusCode::BAD_REQUEST,
        "unknown role `nosuchrole`",
    );
    // The create form offers it too.
    let page = ada.get("/users").await;
    assert!(page.contains("<option value=\"analyst\">analyst</option>"));
    s.stop().await;
}
