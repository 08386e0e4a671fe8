//! The web UI with a working month in it, in chromium: a tollgate with three teams, six
//! people, a dozen keys (one blocked, one revoked, some with budgets) and three weeks of
//! usage over four models, toured by `tests/browser/ui_tour.mjs` as an admin. The script
//! checks that the pages show what was put in (every key, a bar per day, the team budgets
//! with their spend) and saves the screenshots the README shows
//! (`<target dir>/ui-screenshots/tour-*.png`; docs/images/ holds copies).

mod common;

use common::ui::{Db, Stack, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

/// Days of usage, ending today.
const DAYS: i64 = 21;

/// `(model, $ per million input tokens, $ per million output tokens)`.
const MODELS: [(&str, f64, f64); 4] = [
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("text-embedding-3-small", 0.02, 0.0),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_the_ui_in_chromium() {
    common::chromium::chromium();
    let s = Stack::start(Db::Sqlite, "").await;
    let admin = |method, path: String, body| {
        let t = &s.t;
        async move {
            let (status, value) = t.admin(method, &path, Some(body)).await;
            assert!(status.is_success(), "{path}: {status} {value}");
            value
        }
    };

    let mut teams = Vec::new();
    // Monthly budgets (the default period), some nearly spent by the first week.
    for (name, budget) in [("Platform", 40.0), ("Research", 30.0), ("Support", 12.0)] {
        let team = admin(
            Method::POST,
            "/admin/teams".into(),
            json!({"name": name, "max_budget": budget}),
        )
        .await;
        teams.push(team["id"].as_str().unwrap().to_owned());
    }
    let mut people = Vec::new();
    for (name, role, team) in [
        ("ada", "admin", 0),
        ("max", "manager", 0),
        ("uma", "user", 0),
        ("ulf", "user", 1),
        ("ria", "user", 1),
        ("sam", "user", 2),
    ] {
        let id = s.user(name, role).await;
        admin(
            Method::POST,
            format!("/admin/teams/{}/members", teams[team]),
            json!({"user_id": id, "role": if role == "manager" { "owner" } else { "member" }}),
        )
        .await;
        people.push((id, team));
    }
    // (name, owner, budget): a key of a person in a team is charged to that team.
    let key_specs: [(&str, usize, Option<f64>); 12] = [
        ("platform-ci", 1, Some(5.0)),
        ("prod-gateway", 1, None),
        ("staging", 1, Some(25.0)),
        ("uma-laptop", 2, None),
        ("uma-notebooks", 2, Some(2.0)),
        ("ulf-evals", 3, Some(6.0)),
        ("research-batch", 3, None),
        ("ria-laptop", 4, None),
        ("ria-embeddings", 4, None),
        ("support-bot", 5, Some(4.0)),
        ("sam-laptop", 5, None),
        ("ada-admin-tools", 0, None),
    ];
    let mut keys = Vec::new();
    for (name, owner, budget) in key_specs {
        let (person, team) = &people[owner];
        let mut body = json!({"name": name, "user_id": person, "team_id": teams[*team]});
        if let Some(budget) = budget {
            body["max_budget"] = json!(budget);
        }
        let (id, _) = s.t.create_key(body).await;
        keys.push((id, person.clone(), teams[*team].clone()));
    }
    let (status, _) =
        s.t.admin(
            Method::PATCH,
            &format!("/admin/keys/{}", keys[10].0),
            Some(json!({"blocked": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        s.t.admin(Method::DELETE, &format!("/admin/keys/{}", keys[2].0), None)
            .await;
    assert!(status.is_success());

    // Three weeks of requests: each key has its models and a weekly rhythm.
    let today = tollgate::domain::now() / 86_400 * 86_400;
    let mut records = Vec::new();
    for day in 0..DAYS {
        let start = today - (DAYS - 1 - day) * 86_400;
        let weekend = (day + 3) % 7 >= 5;
        for (k, (key, user, team)) in keys.iter().enumerate() {
            let requests = ((k as i64 * 7 + day * 3) % 11 + 2) * if weekend { 1 } else { 3 };
            for r in 0..requests {
                let (model, input_price, output_price) = MODELS[(k + r as usize) % MODELS.len()];
                let input =
                    3_000 + ((k as u64 * 1_031 + r as u64 * 377 + day as u64 * 113) % 12_000);
                let output = if model.starts_with("text-embedding") {
                    0
                } else {
                    400 + (input * 3) % 2_500
                };
                let cost = (input as f64 * input_price + output as f64 * output_price) / 1e6;
                records.push(UsageRecord {
                    request_id: format!("tour-{day}-{k}-{r}"),
                    at: start + 3_600 * 9 + r * 97 + k as i64 * 13,
                    key_id: Some(key.clone()),
                    user_id: Some(user.clone()),
                    team_id: Some(team.clone()),
                    org_id: None,
                    model: Some(model.to_owned()),
                    tokens: TokenUsage {
                        input_tokens: input,
                        output_tokens: output,
                        ..TokenUsage::default()
                    },
                    cost_usd: cost,
                    status: 200,
                    latency_ms: 300 + (r as u64 * 17) % 900,
                    estimated: false,
                    source: UsageSource::ExtProc,
                });
            }
        }
    }
    let written = s.t.app.store.record_usage(&records).await.unwrap();
    assert_eq!(written, records.len() as u64);

    let since = chrono::DateTime::from_timestamp(today - (DAYS - 1) * 86_400, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    common::chromium::run(
        "ui_tour.mjs",
        &[
            ("TOLLGATE_UI_URL", format!("http://{}/ui", s.t.http)),
            ("TOLLGATE_PASSWORD", PASSWORD.to_owned()),
            ("TOLLGATE_SINCE", since),
            ("TOLLGATE_DAYS", DAYS.to_string()),
            ("TOLLGATE_KEYS", (keys.len() - 1).to_string()),
            ("TOLLGATE_REQUESTS", records.len().to_string()),
        ],
        Duration::from_secs(300),
    )
    .await
    .unwrap_or_else(|failed| panic!("{failed}"));
}
