//! The store's behaviour suite. Every `store_suite!` test runs on SQLite and on Postgres,
//! so the two backends cannot drift apart; a few tests at the end cover one backend's
//! plumbing (URLs, schemas, caps that need direct inserts).

mod common;

use common::db::{fresh_postgres, fresh_sqlite, test_connect_options};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tollgate::domain::{BudgetDuration, Limits, MembershipSource, Role, TeamRole};
use tollgate::store::sql::{Backend, ConnectOptions, SqlStore};
use tollgate::store::{
    Actor, Alert, AlertChannel, AlertCrossing, AlertFilter, AlertOutcome, AlertState, AuditFilter,
    GroupBy, KeyFilter, KeyPageRequest, KeyPatch, KeyStatus, LimitsPatch, NewKey, NewRefreshToken,
    NewTeam, NewUiSession, NewUser, OidcLogin, PageFrom, RefreshOutcome, SharedStore, SpendKind,
    Store, StoreError, TeamPatch, UiHolder, UsageQuery, UsageReport, UsageRow, UsageTotals,
    UserPatch, UserStore, ALERT_CLAIM_SECS, NO_GROUP,
};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn admin() -> Actor {
    Actor::new("master", Some("10.0.0.7".to_string()))
}

fn new_user(username: &str) -> NewUser {
    NewUser {
        username: username.to_string(),
        email: format!("{username}@example.com"),
        ..NewUser::default()
    }
}

fn new_team(name: &str) -> NewTeam {
    NewTeam {
        name: name.to_string(),
        ..NewTeam::default()
    }
}

fn new_key(name: &str, secret: &str) -> NewKey {
    NewKey {
        name: name.to_string(),
        key_hash: hash(secret),
        key_hint: format!("sk-tg-{}…", &secret[..4]),
        ..NewKey::default()
    }
}

async fn audit_of(store: &SharedStore, action: &str) -> Vec<tollgate::domain::AuditEvent> {
    store
        .list_audit(AuditFilter {
            action: Some(action.to_string()),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

fn assert_conflict(err: StoreError, expected: &str) {
    match err {
        StoreError::Conflict(msg) => assert_eq!(msg, expected),
        other => panic!("expected Conflict({expected:?}), got {other:?}"),
    }
}

fn assert_invalid(err: StoreError, expected_part: &str) {
    match err {
        StoreError::Invalid(msg) => assert!(
            msg.contains(expected_part),
            "expected Invalid containing {expected_part:?}, got {msg:?}"
        ),
        other => panic!("expected Invalid containing {expected_part:?}, got {other:?}"),
    }
}

store_suite!(
    user_crud,
    user_uniqueness,
    username_reusable_after_delete,
    team_crud,
    team_name_conflict,
    memberships,
    key_crud_and_filters,
    lookup_by_current_hash,
    create_keys_in_one_transaction,
    create_keys_all_or_nothing,
    rotate_with_grace,
    rotate_without_grace_clears_previous,
    revoked_key_is_still_returned,
    delete_user_revokes_keys_and_memberships,
    delete_team_revokes_keys_and_memberships,
    audit_rows_for_every_write,
    audit_filters,
    patch_semantics,
    key_block_and_unblock,
    invalid_references,
    key_hash_rules,
    sql_text_is_plain_data,
    migrate_twice_is_noop,
    concurrent_writes,
    budgets_written_after_empty_ones_read_back_exactly,
    key_pages_walk_every_key_once_both_ways,
    key_search_and_status,
    ui_sessions_live_until_they_expire_or_end,
);

/// Pages of 7 over 50 keys, an owner's keys and a search: forward with `after` and back
/// with `before`, each key once, newest first.
async fn key_pages_walk_every_key_once_both_ways(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let mut made = Vec::new();
    for i in 0..50 {
        let mut key = new_key(&format!("key-{i:02}"), &format!("page-secret-{i:04}"));
        if i % 3 == 0 {
            key.user_id = Some(ada.id.clone());
        }
        made.push(store.create_key(&admin(), key).await.unwrap());
    }
    let newest_first: Vec<String> = made.iter().rev().map(|k| k.id.clone()).collect();
    for (filter, expected) in [
        (KeyFilter::default(), newest_first.clone()),
        (
            KeyFilter {
                user_id: Some(ada.id.clone()),
                ..KeyFilter::default()
            },
            made.iter()
                .rev()
                .filter(|k| k.user_id.is_some())
                .map(|k| k.id.clone())
                .collect(),
        ),
    ] {
        let mut forward = Vec::new();
        let mut pages = Vec::new();
        let mut from = PageFrom::Start;
        loop {
            let page = store
                .page_keys(filter.clone(), KeyPageRequest { limit: 7, from })
                .await
                .unwrap();
            assert!(page.keys.len() <= 7);
            assert_eq!(page.prev_before.is_none(), pages.is_empty());
            forward.extend(page.keys.iter().map(|k| k.id.clone()));
            pages.push(page.clone());
            match page.next_after {
                Some(after) => from = PageFrom::After(after),
                None => break,
            }
        }
        assert_eq!(forward, expected);
        // Back from the last page: the same pages, in reverse.
        let mut back = pages.pop().unwrap();
        while let Some(before) = back.prev_before.clone() {
            let page = store
                .page_keys(
                    filter.clone(),
                    KeyPageRequest {
                        limit: 7,
                        from: PageFrom::Before(before),
                    },
                )
                .await
                .unwrap();
            let expected = pages.pop().unwrap();
            assert_eq!(page.keys, expected.keys);
            assert_eq!(page.next_after, expected.next_after);
            back = page;
        }
        assert!(pages.is_empty());
    }
    let err = store
        .page_keys(
            KeyFilter::default(),
            KeyPageRequest {
                limit: 0,
                from: PageFrom::Start,
            },
        )
        .await
        .unwrap_err();
    assert_invalid(err, "from 1 to 1000");
}

async fn key_search_and_status(store: SharedStore) {
    let names = [
        "Alpha prod",
        "alpha-dev",
        "beta",
        "100%_done",
        "back\\slash",
    ];
    let mut keys = Vec::new();
    for (i, name) in names.iter().enumerate() {
        keys.push(
            store
                .create_key(&admin(), new_key(name, &format!("search-secret-{i:04}")))
                .await
                .unwrap(),
        );
    }
    let search = |q: &str, status: Option<KeyStatus>| KeyFilter {
        search: Some(q.to_owned()),
        status,
        ..KeyFilter::default()
    };
    let names_of = |keys: Vec<tollgate::domain::ApiKey>| -> Vec<String> {
        keys.into_iter().map(|k| k.name).collect()
    };
    assert_eq!(
        names_of(store.list_keys(search("ALPHA", None)).await.unwrap()),
        ["Alpha prod", "alpha-dev"]
    );
    // LIKE's wildcards and its escape character match themselves.
    assert_eq!(
        names_of(store.list_keys(search("%_", None)).await.unwrap()),
        ["100%_done"]
    );
    assert!(store
        .list_keys(search("0_d", None))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        names_of(store.list_keys(search("k\\s", None)).await.unwrap()),
        ["back\\slash"]
    );
    assert!(store
        .list_keys(search("'; DROP TABLE api_keys; --", None))
        .await
        .unwrap()
        .is_empty());
    // The start of an id; a part of the hint.
    let id = &keys[2].id;
    assert_eq!(
        names_of(
            store
                .list_keys(search(&id[..id.len() - 2], None))
                .await
                .unwrap()
        ),
        ["beta"]
    );
    assert!(store
        .list_keys(search(&id[2..], None))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        names_of(store.list_keys(search("sk-tg-SEAR", None)).await.unwrap()).len(),
        5
    );

    // Status: exactly one per key.
    let now = chrono::Utc::now().timestamp();
    store
        .update_key(
            &admin(),
            &keys[0].id,
            KeyPatch {
                blocked: Some(true),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    store.revoke_key(&admin(), &keys[1].id).await.unwrap();
    store
        .update_key(
            &admin(),
            &keys[2].id,
            KeyPatch {
                expires_at: Some(Some(now + 3600)),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    // The HTTP API refuses an expiry in the past; the store takes one.
    let mut expired = new_key("old", "search-secret-expired");
    expired.expires_at = Some(now - 10);
    let expired = store.create_key(&admin(), expired).await.unwrap();
    let status = |s: KeyStatus| KeyFilter {
        status: Some(s),
        ..KeyFilter::default()
    };
    assert_eq!(
        names_of(store.list_keys(status(KeyStatus::Blocked)).await.unwrap()),
        ["Alpha prod"]
    );
    assert_eq!(
        names_of(store.list_keys(status(KeyStatus::Revoked)).await.unwrap()),
        ["alpha-dev"]
    );
    assert_eq!(
        names_of(store.list_keys(status(KeyStatus::Expired)).await.unwrap()),
        ["old"]
    );
    assert_eq!(
        names_of(store.list_keys(status(KeyStatus::Active)).await.unwrap()),
        ["beta", "100%_done", "back\\slash"]
    );
    let all = store
        .list_keys(KeyFilter {
            include_revoked: true,
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    for key in &all {
        let only = store
            .list_keys(status(KeyStatus::of(key, now)))
            .await
            .unwrap();
        assert!(only.iter().any(|k| k.id == key.id), "{}", key.name);
    }
    assert_eq!(KeyStatus::of(&expired, now), KeyStatus::Expired);
    assert_eq!(
        names_of(
            store
                .list_keys(search("alpha", Some(KeyStatus::Revoked)))
                .await
                .unwrap()
        ),
        ["alpha-dev"]
    );
}

async fn ui_sessions_live_until_they_expire_or_end(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let open = |token: &str, holder: UiHolder, expires_at: i64| NewUiSession {
        token_hash: hash(token),
        holder,
        expires_at,
        source: Some("10.0.0.9".into()),
        method: "password",
    };
    let actor = Actor::new(format!("user:{}", ada.id), None);
    let one = store
        .create_ui_session(
            &actor,
            open("tok-1", UiHolder::User(ada.id.clone()), now + 600),
        )
        .await
        .unwrap();
    assert_eq!(
        one.user.as_ref().map(|u| u.id.as_str()),
        Some(ada.id.as_str())
    );
    let two = store
        .create_ui_session(
            &actor,
            open("tok-2", UiHolder::User(ada.id.clone()), now + 600),
        )
        .await
        .unwrap();
    let master = store
        .create_ui_session(
            &admin(),
            open("tok-3", UiHolder::Master { tag: "fp".into() }, now + 600),
        )
        .await
        .unwrap();
    assert!(master.user.is_none());
    let logins = audit_of(&store, "ui.login").await;
    assert_eq!(logins.len(), 3);
    assert_eq!(logins[0].details["method"], "password");
    assert!(logins
        .iter()
        .all(|e| !e.details.to_string().contains("tok-")));

    let found = store
        .ui_session(&hash("tok-1"), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, one.id);
    assert_eq!(found.holder, UiHolder::User(ada.id.clone()));
    assert_eq!(found.user.unwrap().username, "ada");
    let found = store
        .ui_session(&hash("tok-3"), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.holder, UiHolder::Master { tag: "fp".into() });
    assert!(store
        .ui_session(&hash("tok-9"), now)
        .await
        .unwrap()
        .is_none());
    // Expired at `now`: not found.
    assert!(store
        .ui_session(&hash("tok-1"), now + 600)
        .await
        .unwrap()
        .is_none());
    assert_invalid(
        store
            .create_ui_session(
                &actor,
                open("tok-x", UiHolder::User("no-such-user".into()), now + 60),
            )
            .await
            .unwrap_err(),
        "does not exist",
    );
    assert_invalid(
        store
            .create_ui_session(
                &actor,
                NewUiSession {
                    token_hash: "tok-plain".into(),
                    ..open("x", UiHolder::User(ada.id.clone()), now + 60)
                },
            )
            .await
            .unwrap_err(),
        "lowercase hex",
    );

    // A password change ends the others; sign-out ends one.
    assert_eq!(
        store
            .delete_user_ui_sessions(&actor, &ada.id, Some(&two.id))
            .await
            .unwrap(),
        1
    );
    assert!(store
        .ui_session(&hash("tok-1"), now)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .ui_session(&hash("tok-2"), now)
        .await
        .unwrap()
        .is_some());
    assert_eq!(audit_of(&store, "ui.sessions_revoked").await.len(), 1);
    assert!(store
        .delete_ui_session(Some(&actor), &two.id)
        .await
        .unwrap());
    assert!(!store
        .delete_ui_session(Some(&actor), &two.id)
        .await
        .unwrap());
    assert_eq!(audit_of(&store, "ui.logout").await.len(), 1);

    // A deleted user's session is found without its user; the next sign-in sweeps out
    // expired rows.
    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let bobs = open("tok-bob", UiHolder::User(bob.id.clone()), now + 600);
    store.create_ui_session(&actor, bobs).await.unwrap();
    store
        .create_ui_session(
            &actor,
            open("tok-old", UiHolder::User(bob.id.clone()), now - 1),
        )
        .await
        .unwrap();
    store.delete_user(&admin(), &bob.id).await.unwrap();
    let orphan = store
        .ui_session(&hash("tok-bob"), now)
        .await
        .unwrap()
        .unwrap();
    assert!(orphan.user.is_none());
    store
        .create_ui_session(
            &admin(),
            open("tok-4", UiHolder::Master { tag: "fp".into() }, now + 60),
        )
        .await
        .unwrap();
    assert!(store
        .ui_session(&hash("tok-old"), now - 5)
        .await
        .unwrap()
        .is_none());
}

/// Every connection of the pool first writes keys, users and teams without a budget, then
/// with one: a statement prepared with a NULL budget must take a number later, and the
/// number must read back bit for bit.
async fn budgets_written_after_empty_ones_read_back_exactly(store: SharedStore) {
    let budget = |i: usize| 0.1 + 0.2 * i as f64;
    let mut keys = Vec::new();
    for i in 0..12 {
        keys.push(
            store
                .create_key(
                    &admin(),
                    new_key(&format!("k{i}"), &format!("secret-{i:04}")),
                )
                .await
                .unwrap(),
        );
    }
    for key in &keys {
        let blocked = KeyPatch {
            blocked: Some(true),
            ..KeyPatch::default()
        };
        store.update_key(&admin(), &key.id, blocked).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let patch = KeyPatch {
            limits: LimitsPatch {
                max_budget: Some(Some(budget(i))),
                ..LimitsPatch::default()
            },
            ..KeyPatch::default()
        };
        let updated = store
            .update_key(&admin(), &key.id, patch)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.limits.max_budget, Some(budget(i)));
        let read = store.get_key(&key.id).await.unwrap().unwrap();
        assert_eq!(
            read.limits.max_budget.map(f64::to_bits),
            Some(budget(i).to_bits())
        );
    }
    let mut teams = Vec::new();
    for i in 0..12 {
        teams.push(
            store
                .create_team(&admin(), new_team(&format!("t{i}")))
                .await
                .unwrap(),
        );
    }
    for (i, team) in teams.iter().enumerate() {
        let patch = TeamPatch {
            limits: LimitsPatch {
                max_budget: Some(Some(budget(i))),
                ..LimitsPatch::default()
            },
            ..TeamPatch::default()
        };
        store.update_team(&admin(), &team.id, patch).await.unwrap();
        let read = store.get_team(&team.id).await.unwrap().unwrap();
        assert_eq!(
            read.limits.max_budget.map(f64::to_bits),
            Some(budget(i).to_bits())
        );
    }
    for i in 0..12 {
        let user = store
            .create_user(&admin(), new_user(&format!("b{i}")))
            .await
            .unwrap();
        let patch = UserPatch {
            limits: LimitsPatch {
                max_budget: Some(Some(budget(i))),
                ..LimitsPatch::default()
            },
            ..UserPatch::default()
        };
        store.update_user(&admin(), &user.id, patch).await.unwrap();
        let read = store.get_user(&user.id).await.unwrap().unwrap();
        assert_eq!(
            read.limits.max_budget.map(f64::to_bits),
            Some(budget(i).to_bits())
        );
    }
    // And back to none.
    let patch = KeyPatch {
        limits: LimitsPatch {
            max_budget: Some(None),
            ..LimitsPatch::default()
        },
        ..KeyPatch::default()
    };
    store
        .update_key(&admin(), &keys[0].id, patch)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_key(&keys[0].id)
            .await
            .unwrap()
            .unwrap()
            .limits
            .max_budget,
        None
    );
}

async fn user_crud(store: SharedStore) {
    let user = store
        .create_user(
            &admin(),
            NewUser {
                username: "ada".into(),
                email: "ada@example.com".into(),
                full_name: Some("Ada Lovelace".into()),
                role: Some(Role::Manager),
                password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
                limits: Limits {
                    rpm: Some(60),
                    tpm: Some(10_000),
                    max_budget: Some(12.5),
                    budget_duration: Some(BudgetDuration::Month),
                    max_parallel: Some(4),
                },
                metadata: Some(json!({"cost_center": "R&D"})),
                org_id: None,
                email_unverified: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(user.username, "ada");
    assert_eq!(user.role, Role::Manager);
    assert!(!user.blocked);
    assert_eq!(user.limits.max_budget, Some(12.5));

    let got = store.get_user(&user.id).await.unwrap().unwrap();
    assert_eq!(got, user);

    let defaulted = store.create_user(&admin(), new_user("bob")).await.unwrap();
    assert_eq!(defaulted.role, Role::User);
    assert_eq!(defaulted.metadata, json!({}));
    assert_eq!(defaulted.full_name, None);

    let all = store.list_users().await.unwrap();
    assert_eq!(
        all.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["ada", "bob"]
    );

    let updated = store
        .update_user(
            &admin(),
            &user.id,
            UserPatch {
                blocked: Some(true),
                role: Some(Role::Viewer),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(updated.blocked);
    assert_eq!(updated.role, Role::Viewer);
    assert_eq!(store.get_user(&user.id).await.unwrap().unwrap(), updated);

    assert!(store.delete_user(&admin(), &user.id).await.unwrap());
    assert_eq!(store.get_user(&user.id).await.unwrap(), None);
    assert!(!store.delete_user(&admin(), &user.id).await.unwrap());
    assert_eq!(store.list_users().await.unwrap(), vec![defaulted]);
    assert!(store
        .update_user(&admin(), &user.id, UserPatch::default())
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.get_user("no-such-id").await.unwrap(), None);
}

async fn user_uniqueness(store: SharedStore) {
    const MSG: &str = "a user with that username or email already exists";
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let err = store
        .create_user(
            &admin(),
            NewUser {
                email: "other@example.com".into(),
                ..new_user("ada")
            },
        )
        .await
        .unwrap_err();
    assert_conflict(err, MSG);
    let err = store
        .create_user(
            &admin(),
            NewUser {
                email: ada.email.clone(),
                ..new_user("ada2")
            },
        )
        .await
        .unwrap_err();
    assert_conflict(err, MSG);

    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let err = store
        .update_user(
            &admin(),
            &bob.id,
            UserPatch {
                email: Some(ada.email.clone()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_conflict(err, MSG);
    // The failed update left bob as he was, and wrote no audit row.
    assert_eq!(store.get_user(&bob.id).await.unwrap().unwrap(), bob);
    assert!(audit_of(&store, "user.update").await.is_empty());
    assert_eq!(audit_of(&store, "user.create").await.len(), 2);
}

async fn username_reusable_after_delete(store: SharedStore) {
    let first = store.create_user(&admin(), new_user("ada")).await.unwrap();
    assert!(store.delete_user(&admin(), &first.id).await.unwrap());
    let second = store.create_user(&admin(), new_user("ada")).await.unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(store.list_users().await.unwrap(), vec![second.clone()]);
    // Still unique among live users.
    assert!(matches!(
        store.create_user(&admin(), new_user("ada")).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn team_crud(store: SharedStore) {
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                name: "Engineering".into(),
                models: vec!["gpt-4o".into(), "gpt-4o-mini".into()],
                limits: Limits {
                    rpm: Some(100),
                    tpm: None,
                    max_budget: Some(1000.0),
                    budget_duration: Some(BudgetDuration::Week),
                    max_parallel: Some(8),
                },
                metadata: Some(json!({"slack": "#eng"})),
                org_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_team(&team.id).await.unwrap().unwrap(), team);
    let other = store
        .create_team(&admin(), new_team("Sales"))
        .await
        .unwrap();
    assert!(other.models.is_empty());
    assert_eq!(
        store.list_teams().await.unwrap(),
        vec![team.clone(), other.clone()]
    );

    let renamed = store
        .update_team(
            &admin(),
            &team.id,
            TeamPatch {
                name: Some("Platform".into()),
                models: Some(vec![]),
                blocked: Some(true),
                ..TeamPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "Platform");
    assert!(renamed.models.is_empty());
    assert!(renamed.blocked);
    assert_eq!(renamed.limits.rpm, Some(100));
    assert_eq!(store.get_team(&team.id).await.unwrap().unwrap(), renamed);

    assert!(store.delete_team(&admin(), &team.id).await.unwrap());
    assert!(!store.delete_team(&admin(), &team.id).await.unwrap());
    assert_eq!(store.get_team(&team.id).await.unwrap(), None);
    assert_eq!(store.list_teams().await.unwrap(), vec![other]);
    assert!(store
        .update_team(&admin(), &team.id, TeamPatch::default())
        .await
        .unwrap()
        .is_none());
    // The name is free again.
    store
        .create_team(&admin(), new_team("Platform"))
        .await
        .unwrap();
}

async fn team_name_conflict(store: SharedStore) {
    store
        .create_team(&admin(), new_team("Engineering"))
        .await
        .unwrap();
    let err = store
        .create_team(&admin(), new_team("Engineering"))
        .await
        .unwrap_err();
    assert_conflict(err, "a team named Engineering already exists");
    let sales = store
        .create_team(&admin(), new_team("Sales"))
        .await
        .unwrap();
    let err = store
        .update_team(
            &admin(),
            &sales.id,
            TeamPatch {
                name: Some("Engineering".into()),
                ..TeamPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_conflict(err, "a team named Engineering already exists");
    assert_eq!(
        store.get_team(&sales.id).await.unwrap().unwrap().name,
        "Sales"
    );
}

async fn memberships(store: SharedStore) {
    let team = store.create_team(&admin(), new_team("Eng")).await.unwrap();
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();

    let m = store
        .add_member(
            &admin(),
            &team.id,
            &ada.id,
            TeamRole::Owner,
            MembershipSource::Manual,
        )
        .await
        .unwrap();
    assert_eq!(
        (m.team_id.as_str(), m.user_id.as_str()),
        (team.id.as_str(), ada.id.as_str())
    );
    assert_eq!(m.role, TeamRole::Owner);
    assert_eq!(m.source, MembershipSource::Manual);
    store
        .add_member(
            &admin(),
            &team.id,
            &bob.id,
            TeamRole::Member,
            MembershipSource::Group,
        )
        .await
        .unwrap();
    let members = store.list_members(&team.id).await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0], m);

    // Adding again changes role and source, keeps the original join time.
    let changed = store
        .add_member(
            &admin(),
            &team.id,
            &ada.id,
            TeamRole::Member,
            MembershipSource::Group,
        )
        .await
        .unwrap();
    assert_eq!(changed.role, TeamRole::Member);
    assert_eq!(changed.source, MembershipSource::Group);
    assert_eq!(changed.created_at, m.created_at);
    assert_eq!(store.list_members(&team.id).await.unwrap().len(), 2);

    let adds = audit_of(&store, "team.member.add").await;
    assert_eq!(adds.len(), 3);
    assert_eq!(
        adds[0].target.as_deref(),
        Some(format!("{}/{}", team.id, ada.id).as_str())
    );
    assert_eq!(adds[0].details["previous_role"], "owner");
    assert_eq!(adds[0].details["role"], "member");

    assert!(store
        .remove_member(&admin(), &team.id, &ada.id)
        .await
        .unwrap());
    assert!(!store
        .remove_member(&admin(), &team.id, &ada.id)
        .await
        .unwrap());
    let members = store.list_members(&team.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, bob.id);
    let removes = audit_of(&store, "team.member.remove").await;
    assert_eq!(removes.len(), 1, "a no-op removal writes no audit row");
    assert_eq!(
        removes[0].target.as_deref(),
        Some(format!("{}/{}", team.id, ada.id).as_str())
    );

    assert!(store.list_members("no-such-team").await.unwrap().is_empty());
}

async fn key_crud_and_filters(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let team = store.create_team(&admin(), new_team("Eng")).await.unwrap();
    let personal = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                permissions: vec!["chat".into(), "embeddings".into()],
                models: vec!["gpt-4o".into()],
                limits: Limits {
                    rpm: Some(10),
                    tpm: Some(1000),
                    max_budget: Some(5.25),
                    budget_duration: Some(BudgetDuration::Day),
                    max_parallel: Some(2),
                },
                expires_at: Some(4_102_444_800),
                metadata: Some(json!({"purpose": "laptop", "n": 1})),
                ..new_key("laptop", "secret-one")
            },
        )
        .await
        .unwrap();
    assert_eq!(personal.user_id.as_deref(), Some(ada.id.as_str()));
    assert_eq!(personal.revoked_at, None);
    assert_eq!(personal.previous_expires_at, None);
    assert_eq!(
        store.get_key(&personal.id).await.unwrap().unwrap(),
        personal
    );

    let team_key = store
        .create_key(
            &admin(),
            NewKey {
                team_id: Some(team.id.clone()),
                ..new_key("ci", "secret-two")
            },
        )
        .await
        .unwrap();
    let both = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                team_id: Some(team.id.clone()),
                ..new_key("ada-in-eng", "secret-three")
            },
        )
        .await
        .unwrap();
    let service = store
        .create_key(&admin(), new_key("service", "secret-four"))
        .await
        .unwrap();
    assert_eq!(
        (service.user_id.clone(), service.team_id.clone()),
        (None, None)
    );

    let ids =
        |keys: Vec<tollgate::domain::ApiKey>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_keys(KeyFilter::default()).await.unwrap()),
        [
            personal.id.as_str(),
            team_key.id.as_str(),
            both.id.as_str(),
            service.id.as_str()
        ]
    );
    let by_user = KeyFilter {
        user_id: Some(ada.id.clone()),
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(store.list_keys(by_user.clone()).await.unwrap()),
        [personal.id.as_str(), both.id.as_str()]
    );
    let by_team = KeyFilter {
        team_id: Some(team.id.clone()),
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(store.list_keys(by_team).await.unwrap()),
        [team_key.id.as_str(), both.id.as_str()]
    );
    let by_both = KeyFilter {
        user_id: Some(ada.id.clone()),
        team_id: Some(team.id.clone()),
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(store.list_keys(by_both).await.unwrap()),
        [both.id.as_str()]
    );

    store
        .revoke_key(&admin(), &personal.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(store.list_keys(by_user.clone()).await.unwrap()),
        [both.id.as_str()]
    );
    let with_revoked = KeyFilter {
        include_revoked: true,
        ..by_user
    };
    assert_eq!(
        ids(store.list_keys(with_revoked).await.unwrap()),
        [personal.id.as_str(), both.id.as_str()]
    );
    assert_eq!(store.get_key("no-such-key").await.unwrap(), None);
}

async fn lookup_by_current_hash(store: SharedStore) {
    let ada = store
        .create_user(
            &admin(),
            NewUser {
                role: Some(Role::Admin),
                ..new_user("ada")
            },
        )
        .await
        .unwrap();
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                models: vec!["gpt-4o".into()],
                ..new_team("Eng")
            },
        )
        .await
        .unwrap();
    let key = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                team_id: Some(team.id.clone()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap();

    let found = store
        .lookup_key(&hash("secret-one"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.key, key);
    assert!(!found.via_previous);
    let user = found.user.unwrap();
    assert_eq!(
        (user.id.as_str(), user.role, user.blocked),
        (ada.id.as_str(), Role::Admin, false)
    );
    let owner_team = found.team.unwrap();
    assert_eq!(owner_team.id, team.id);
    assert_eq!(owner_team.models, ["gpt-4o"]);
    assert!(!owner_team.blocked);

    assert_eq!(store.lookup_key(&hash("secret-two")).await.unwrap(), None);

    // Owners' blocked flags travel with the lookup.
    store
        .update_user(
            &admin(),
            &ada.id,
            UserPatch {
                blocked: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    store
        .update_team(
            &admin(),
            &team.id,
            TeamPatch {
                blocked: Some(true),
                ..TeamPatch::default()
            },
        )
        .await
        .unwrap();
    let found = store
        .lookup_key(&hash("secret-one"))
        .await
        .unwrap()
        .unwrap();
    assert!(found.user.unwrap().blocked);
    assert!(found.team.unwrap().blocked);

    // A key without owners has neither.
    store
        .create_key(&admin(), new_key("service", "secret-svc"))
        .await
        .unwrap();
    let found = store
        .lookup_key(&hash("secret-svc"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.user, found.team), (None, None));
}

/// Many keys in one call: answered in the order given, each stored as `create_key` stores
/// it, found by its hash, and audited with its own `key.create` row.
async fn create_keys_in_one_transaction(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                models: vec!["gpt-4o*".into()],
                ..new_team("Eng")
            },
        )
        .await
        .unwrap();
    let batch: Vec<NewKey> = (0..7)
        .map(|i| NewKey {
            user_id: (i % 2 == 0).then(|| ada.id.clone()),
            team_id: (i % 3 == 0).then(|| team.id.clone()),
            models: vec![format!("gpt-4o-{i}")],
            limits: Limits {
                rpm: Some(i),
                ..Limits::default()
            },
            metadata: Some(json!({ "i": i })),
            ..new_key(&format!("k{i}"), &format!("secret-bulk-{i}"))
        })
        .collect();
    let created = store.create_keys(&admin(), batch).await.unwrap();
    let names: Vec<&str> = created.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);
    for (i, key) in created.iter().enumerate() {
        assert_eq!(key.user_id.is_some(), i.is_multiple_of(2));
        assert_eq!(key.team_id.is_some(), i.is_multiple_of(3));
        assert_eq!(key.limits.rpm, Some(i as i64));
        assert_eq!(key.metadata, json!({ "i": i }));
        assert_eq!(store.get_key(&key.id).await.unwrap().as_ref(), Some(key));
        let found = store
            .lookup_key(&hash(&format!("secret-bulk-{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&found.key, key);
        assert_eq!(found.user.map(|u| u.id), key.user_id);
        assert_eq!(found.team.map(|t| t.id), key.team_id);
    }
    let audit = audit_of(&store, "key.create").await;
    let mut targets: Vec<String> = audit.iter().filter_map(|e| e.target.clone()).collect();
    let mut ids: Vec<String> = created.iter().map(|k| k.id.clone()).collect();
    targets.sort();
    ids.sort();
    assert_eq!(targets, ids, "one key.create row per key");
    let event = audit
        .iter()
        .find(|e| e.target.as_deref() == Some(created[3].id.as_str()))
        .unwrap();
    assert_eq!(event.actor, "master");
    assert_eq!(event.source.as_deref(), Some("10.0.0.7"));
    assert_eq!(event.details["name"], "k3");
    assert_eq!(event.details["rpm"], 3);
    assert_eq!(event.details["team_id"], team.id.as_str());
    assert!(!event.details.to_string().contains(&hash("secret-bulk-3")));

    assert!(store
        .create_keys(&admin(), Vec::new())
        .await
        .unwrap()
        .is_empty());
}

/// A key the store refuses anywhere in a batch leaves nothing of the batch behind, and the
/// error names its place.
async fn create_keys_all_or_nothing(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let taken = store
        .create_key(&admin(), new_key("taken", "secret-taken"))
        .await
        .unwrap();
    let batch = |bad: usize, key: NewKey| -> Vec<NewKey> {
        (0..4)
            .map(|i| {
                if i == bad {
                    return key.clone();
                }
                NewKey {
                    user_id: Some(ada.id.clone()),
                    ..new_key(&format!("k{i}"), &format!("secret-fine-{i}"))
                }
            })
            .collect()
    };
    let err = store
        .create_keys(
            &admin(),
            batch(
                2,
                NewKey {
                    team_id: Some("ghost-team".into()),
                    ..new_key("ghost", "secret-ghost")
                },
            ),
        )
        .await
        .unwrap_err();
    assert_invalid(err, "keys[2]: team ghost-team does not exist");
    let err = store
        .create_keys(&admin(), batch(3, new_key("again", "secret-taken")))
        .await
        .unwrap_err();
    assert_conflict(err, "keys[3]: a key with that secret already exists");
    // Two keys of one batch with one secret: the second is the conflict.
    let err = store
        .create_keys(&admin(), batch(1, new_key("twin", "secret-fine-0")))
        .await
        .unwrap_err();
    assert_conflict(err, "keys[1]: a key with that secret already exists");
    let err = store
        .create_keys(&admin(), batch(1, new_key(" ", "secret-blank")))
        .await
        .unwrap_err();
    assert_invalid(err, "keys[1]: key name must not be empty");
    let err = store
        .create_keys(
            &admin(),
            batch(
                0,
                NewKey {
                    key_hash: "sk-tg-plaintext".into(),
                    ..new_key("plain", "secret-plain")
                },
            ),
        )
        .await
        .unwrap_err();
    assert_invalid(err, "keys[0]: key_hash must be a lowercase hex SHA-256");

    let keys = store
        .list_keys(KeyFilter {
            include_revoked: true,
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(keys, [taken], "no key of a refused batch was kept");
    assert_eq!(audit_of(&store, "key.create").await.len(), 1);
    for i in 0..4 {
        let secret = format!("secret-fine-{i}");
        assert_eq!(store.lookup_key(&hash(&secret)).await.unwrap(), None);
    }
    // The same batch without its bad key goes through whole.
    let fine: Vec<NewKey> = batch(9, new_key("unused", "secret-unused"));
    assert_eq!(store.create_keys(&admin(), fine).await.unwrap().len(), 4);
}

async fn rotate_with_grace(store: SharedStore) {
    let key = store
        .create_key(&admin(), new_key("k", "secret-old"))
        .await
        .unwrap();
    let grace_end = tollgate::domain::now() + 3600;
    let rotated = store
        .rotate_key(
            &admin(),
            &key.id,
            &hash("secret-new"),
            "sk-tg-new…",
            Some(grace_end),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.key_hint, "sk-tg-new…");
    assert_eq!(rotated.previous_expires_at, Some(grace_end));
    assert_eq!(store.get_key(&key.id).await.unwrap().unwrap(), rotated);

    let current = store
        .lookup_key(&hash("secret-new"))
        .await
        .unwrap()
        .unwrap();
    assert!(!current.via_previous);
    assert_eq!(current.key, rotated);
    let previous = store
        .lookup_key(&hash("secret-old"))
        .await
        .unwrap()
        .unwrap();
    assert!(previous.via_previous);
    assert_eq!(previous.key.id, key.id);
    assert_eq!(previous.key.previous_expires_at, Some(grace_end));

    // A second rotation with grace moves the window on: the first secret is gone.
    store
        .rotate_key(
            &admin(),
            &key.id,
            &hash("secret-newer"),
            "sk-tg-nwr…",
            Some(grace_end),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.lookup_key(&hash("secret-old")).await.unwrap(), None);
    assert!(
        store
            .lookup_key(&hash("secret-new"))
            .await
            .unwrap()
            .unwrap()
            .via_previous
    );
    assert!(
        !store
            .lookup_key(&hash("secret-newer"))
            .await
            .unwrap()
            .unwrap()
            .via_previous
    );

    assert_eq!(
        store
            .rotate_key(&admin(), "no-such-key", &hash("x"), "h", None)
            .await
            .unwrap(),
        None
    );
}

async fn rotate_without_grace_clears_previous(store: SharedStore) {
    let key = store
        .create_key(&admin(), new_key("k", "secret-one"))
        .await
        .unwrap();
    store
        .rotate_key(
            &admin(),
            &key.id,
            &hash("secret-two"),
            "h2",
            Some(tollgate::domain::now() + 60),
        )
        .await
        .unwrap();
    assert!(store
        .lookup_key(&hash("secret-one"))
        .await
        .unwrap()
        .is_some());

    let rotated = store
        .rotate_key(&admin(), &key.id, &hash("secret-three"), "h3", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.previous_expires_at, None);
    assert_eq!(store.lookup_key(&hash("secret-one")).await.unwrap(), None);
    assert_eq!(store.lookup_key(&hash("secret-two")).await.unwrap(), None);
    let found = store
        .lookup_key(&hash("secret-three"))
        .await
        .unwrap()
        .unwrap();
    assert!(!found.via_previous);
    assert_eq!(found.key.previous_expires_at, None);

    // A secret in use by another key cannot become this key's secret.
    let other = store
        .create_key(&admin(), new_key("other", "secret-other"))
        .await
        .unwrap();
    let err = store
        .rotate_key(&admin(), &other.id, &hash("secret-three"), "hx", None)
        .await
        .unwrap_err();
    assert_conflict(err, "a key with that secret already exists");
}

async fn revoked_key_is_still_returned(store: SharedStore) {
    let key = store
        .create_key(&admin(), new_key("k", "secret-one"))
        .await
        .unwrap();
    let revoked = store.revoke_key(&admin(), &key.id).await.unwrap().unwrap();
    let at = revoked.revoked_at.expect("revoked_at set");
    let found = store
        .lookup_key(&hash("secret-one"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.key.revoked_at, Some(at));
    assert_eq!(found.key, revoked);

    // Revoking again changes nothing and records nothing.
    let again = store.revoke_key(&admin(), &key.id).await.unwrap().unwrap();
    assert_eq!(again, revoked);
    assert_eq!(audit_of(&store, "key.revoke").await.len(), 1);

    assert_invalid(
        store
            .update_key(
                &admin(),
                &key.id,
                KeyPatch {
                    name: Some("renamed".into()),
                    ..KeyPatch::default()
                },
            )
            .await
            .unwrap_err(),
        "key is revoked",
    );
    assert_invalid(
        store
            .rotate_key(&admin(), &key.id, &hash("secret-two"), "h", None)
            .await
            .unwrap_err(),
        "key is revoked",
    );
    assert_eq!(store.get_key(&key.id).await.unwrap().unwrap(), revoked);
    assert_eq!(
        store.revoke_key(&admin(), "no-such-key").await.unwrap(),
        None
    );
}

async fn delete_user_revokes_keys_and_memberships(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let team = store.create_team(&admin(), new_team("Eng")).await.unwrap();
    store
        .add_member(
            &admin(),
            &team.id,
            &ada.id,
            TeamRole::Owner,
            MembershipSource::Manual,
        )
        .await
        .unwrap();
    let key = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap();
    let already = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                ..new_key("old", "secret-two")
            },
        )
        .await
        .unwrap();
    let old_revocation = store
        .revoke_key(&admin(), &already.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at;

    assert!(store.delete_user(&admin(), &ada.id).await.unwrap());
    let kept = store.get_key(&key.id).await.unwrap().expect("key row kept");
    assert!(kept.revoked_at.is_some());
    assert_eq!(kept.user_id.as_deref(), Some(ada.id.as_str()));
    assert_eq!(
        store
            .get_key(&already.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        old_revocation,
        "an earlier revocation keeps its time"
    );
    let found = store
        .lookup_key(&hash("secret-one"))
        .await
        .unwrap()
        .unwrap();
    assert!(found.key.revoked_at.is_some());
    assert!(store.list_members(&team.id).await.unwrap().is_empty());
    assert!(store
        .list_keys(KeyFilter {
            user_id: Some(ada.id.clone()),
            ..KeyFilter::default()
        })
        .await
        .unwrap()
        .is_empty());

    let deletes = audit_of(&store, "user.delete").await;
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].target.as_deref(), Some(ada.id.as_str()));
    assert_eq!(deletes[0].details["keys_revoked"], 1);
    assert_eq!(deletes[0].details["memberships_removed"], 1);

    let again = store.create_user(&admin(), new_user("ada")).await.unwrap();
    assert_ne!(again.id, ada.id);
    assert!(store
        .list_keys(KeyFilter {
            user_id: Some(again.id.clone()),
            ..KeyFilter::default()
        })
        .await
        .unwrap()
        .is_empty());
}

async fn delete_team_revokes_keys_and_memberships(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let team = store.create_team(&admin(), new_team("Eng")).await.unwrap();
    store
        .add_member(
            &admin(),
            &team.id,
            &ada.id,
            TeamRole::Member,
            MembershipSource::Manual,
        )
        .await
        .unwrap();
    let key = store
        .create_key(
            &admin(),
            NewKey {
                team_id: Some(team.id.clone()),
                ..new_key("ci", "secret-one")
            },
        )
        .await
        .unwrap();
    let personal = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                ..new_key("mine", "secret-two")
            },
        )
        .await
        .unwrap();

    assert!(store.delete_team(&admin(), &team.id).await.unwrap());
    assert!(store
        .get_key(&key.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert_eq!(
        store
            .get_key(&personal.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    assert!(store.list_members(&team.id).await.unwrap().is_empty());
    assert!(store.get_user(&ada.id).await.unwrap().is_some());
    let deletes = audit_of(&store, "team.delete").await;
    assert_eq!(deletes[0].details["keys_revoked"], 1);
    assert_eq!(deletes[0].details["name"], "Eng");
}

async fn audit_rows_for_every_write(store: SharedStore) {
    let password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$c2VjcmV0aGFzaA";
    let actor = Actor::new("key:abc", Some("192.0.2.1".to_string()));
    let ada = store
        .create_user(
            &actor,
            NewUser {
                password_hash: Some(password_hash.into()),
                ..new_user("ada")
            },
        )
        .await
        .unwrap();
    let team = store.create_team(&actor, new_team("Eng")).await.unwrap();
    store
        .update_user(
            &actor,
            &ada.id,
            UserPatch {
                limits: LimitsPatch {
                    rpm: Some(Some(5)),
                    ..LimitsPatch::default()
                },
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    store
        .update_team(
            &actor,
            &team.id,
            TeamPatch {
                name: Some("Platform".into()),
                ..TeamPatch::default()
            },
        )
        .await
        .unwrap();
    store
        .add_member(
            &actor,
            &team.id,
            &ada.id,
            TeamRole::Member,
            MembershipSource::Manual,
        )
        .await
        .unwrap();
    store
        .remove_member(&actor, &team.id, &ada.id)
        .await
        .unwrap();
    let key = store
        .create_key(
            &actor,
            NewKey {
                user_id: Some(ada.id.clone()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap();
    store
        .update_key(
            &actor,
            &key.id,
            KeyPatch {
                limits: LimitsPatch {
                    rpm: Some(Some(1)),
                    ..LimitsPatch::default()
                },
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    let block = KeyPatch {
        blocked: Some(true),
        ..KeyPatch::default()
    };
    store.update_key(&actor, &key.id, block).await.unwrap();
    let unblock = KeyPatch {
        blocked: Some(false),
        ..KeyPatch::default()
    };
    store.update_key(&actor, &key.id, unblock).await.unwrap();
    store
        .rotate_key(
            &actor,
            &key.id,
            &hash("secret-two"),
            "h2",
            Some(tollgate::domain::now() + 60),
        )
        .await
        .unwrap();
    store.revoke_key(&actor, &key.id).await.unwrap();
    store.delete_team(&actor, &team.id).await.unwrap();
    store.delete_user(&actor, &ada.id).await.unwrap();

    let events = store.list_audit(AuditFilter::default()).await.unwrap();
    let seen: Vec<(String, String)> = events
        .iter()
        .rev()
        .map(|e| (e.action.clone(), e.target.clone().unwrap_or_default()))
        .collect();
    let member = format!("{}/{}", team.id, ada.id);
    let expected: Vec<(String, String)> = [
        ("user.create", &ada.id),
        ("team.create", &team.id),
        ("user.update", &ada.id),
        ("team.update", &team.id),
        ("team.member.add", &member),
        ("team.member.remove", &member),
        ("key.create", &key.id),
        ("key.update", &key.id),
        ("key.block", &key.id),
        ("key.unblock", &key.id),
        ("key.rotate", &key.id),
        ("key.revoke", &key.id),
        ("team.delete", &team.id),
        ("user.delete", &ada.id),
    ]
    .iter()
    .map(|(a, t)| (a.to_string(), t.to_string()))
    .collect();
    assert_eq!(seen, expected);

    // Newest first, ids strictly decreasing.
    assert!(events
        .windows(2)
        .all(|w| w[0].id > w[1].id && w[0].at >= w[1].at));
    for event in &events {
        assert_eq!(event.actor, "key:abc");
        assert_eq!(event.source.as_deref(), Some("192.0.2.1"));
        assert!(event.details.is_object(), "{event:?}");
        let text = event.details.to_string();
        for secret in [
            hash("secret-one"),
            hash("secret-two"),
            password_hash.to_string(),
        ] {
            assert!(
                !text.contains(&secret),
                "secret in audit details: {event:?}"
            );
        }
    }
    let by_action = |action: &str| events.iter().find(|e| e.action == action).unwrap();
    assert_eq!(by_action("user.create").details["username"], "ada");
    assert_eq!(by_action("user.create").details["password_set"], true);
    assert_eq!(by_action("user.update").details, json!({"rpm": 5}));
    assert_eq!(
        by_action("team.update").details,
        json!({"name": "Platform"})
    );
    assert_eq!(by_action("key.block").details, json!({"blocked": true}));
    assert_eq!(by_action("key.create").details["name"], "k");
    assert_eq!(by_action("key.rotate").details["key_hint"], "h2");
}

async fn audit_filters(store: SharedStore) {
    let alice = Actor::new("user:alice", None);
    let bob = Actor::new("user:bob", Some("203.0.113.9".into()));
    let t0 = tollgate::domain::now();
    let u1 = store.create_user(&alice, new_user("u1")).await.unwrap();
    let u2 = store.create_user(&bob, new_user("u2")).await.unwrap();
    let team = store.create_team(&alice, new_team("T")).await.unwrap();
    store
        .update_user(
            &bob,
            &u1.id,
            UserPatch {
                full_name: Some(Some("U One".into())),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    let t1 = tollgate::domain::now();

    let query = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .list_audit(filter)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.actor, e.action, e.target.unwrap_or_default()))
                .collect::<Vec<_>>()
        }
    };
    let row = |actor: &str, action: &str, target: &str| {
        (actor.to_string(), action.to_string(), target.to_string())
    };

    assert_eq!(
        query(AuditFilter {
            actor: Some("user:alice".into()),
            ..AuditFilter::default()
        })
        .await,
        [
            row("user:alice", "team.create", &team.id),
            row("user:alice", "user.create", &u1.id)
        ]
    );
    assert_eq!(
        query(AuditFilter {
            action: Some("user.create".into()),
            ..AuditFilter::default()
        })
        .await,
        [
            row("user:bob", "user.create", &u2.id),
            row("user:alice", "user.create", &u1.id)
        ]
    );
    assert_eq!(
        query(AuditFilter {
            target: Some(u1.id.clone()),
            ..AuditFilter::default()
        })
        .await,
        [
            row("user:bob", "user.update", &u1.id),
            row("user:alice", "user.create", &u1.id)
        ]
    );
    // Filters combine with AND.
    assert_eq!(
        query(AuditFilter {
            actor: Some("user:bob".into()),
            target: Some(u1.id.clone()),
            ..AuditFilter::default()
        })
        .await,
        [row("user:bob", "user.update", &u1.id)]
    );
    assert!(query(AuditFilter {
        actor: Some("user:alice".into()),
        action: Some("user.update".into()),
        ..AuditFilter::default()
    })
    .await
    .is_empty());

    // since and until are inclusive bounds on `at`.
    let all = query(AuditFilter {
        since: Some(t0),
        until: Some(t1),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(all.len(), 4);
    assert!(query(AuditFilter {
        since: Some(t1 + 1),
        ..AuditFilter::default()
    })
    .await
    .is_empty());
    assert!(query(AuditFilter {
        until: Some(t0 - 1),
        ..AuditFilter::default()
    })
    .await
    .is_empty());
    let newest = store.list_audit(AuditFilter::default()).await.unwrap()[0].clone();
    let exact = store
        .list_audit(AuditFilter {
            since: Some(newest.at),
            until: Some(newest.at),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(exact.iter().any(|e| e.id == newest.id));

    // limit keeps the newest.
    assert_eq!(
        query(AuditFilter {
            limit: Some(2),
            ..AuditFilter::default()
        })
        .await,
        [
            row("user:bob", "user.update", &u1.id),
            row("user:alice", "team.create", &team.id)
        ]
    );
    assert!(query(AuditFilter {
        limit: Some(0),
        ..AuditFilter::default()
    })
    .await
    .is_empty());
    assert_eq!(
        query(AuditFilter {
            limit: Some(-5),
            ..AuditFilter::default()
        })
        .await
        .len(),
        0
    );
}

async fn patch_semantics(store: SharedStore) {
    let ada = store
        .create_user(
            &admin(),
            NewUser {
                full_name: Some("Ada".into()),
                limits: Limits {
                    rpm: Some(1),
                    tpm: Some(2),
                    max_budget: Some(3.5),
                    budget_duration: Some(BudgetDuration::ThirtyDays),
                    max_parallel: Some(3),
                },
                metadata: Some(json!({"a": 1})),
                ..new_user("ada")
            },
        )
        .await
        .unwrap();
    // None leaves everything as it is.
    let same = store
        .update_user(&admin(), &ada.id, UserPatch::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            same.full_name.clone(),
            same.limits.clone(),
            same.metadata.clone()
        ),
        (
            ada.full_name.clone(),
            ada.limits.clone(),
            ada.metadata.clone()
        )
    );
    // Some(None) clears, Some(Some(_)) sets.
    let cleared = store
        .update_user(
            &admin(),
            &ada.id,
            UserPatch {
                full_name: Some(None),
                limits: LimitsPatch {
                    rpm: Some(None),
                    tpm: Some(Some(20)),
                    max_budget: Some(None),
                    budget_duration: Some(None),
                    max_parallel: Some(None),
                },
                metadata: Some(json!({"b": [1, 2]})),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.full_name, None);
    assert_eq!(cleared.limits.rpm, None);
    assert_eq!(cleared.limits.tpm, Some(20));
    assert_eq!(cleared.limits.max_budget, None);
    assert_eq!(cleared.limits.budget_duration, None);
    assert_eq!(cleared.limits.max_parallel, None);
    assert_eq!(cleared.metadata, json!({"b": [1, 2]}));
    assert_eq!(cleared.email, ada.email);
    assert_eq!(store.get_user(&ada.id).await.unwrap().unwrap(), cleared);
    let details = &audit_of(&store, "user.update").await[0].details;
    assert_eq!(details["full_name"], serde_json::Value::Null);
    assert_eq!(details["tpm"], 20);
    assert_eq!(details["max_parallel"], serde_json::Value::Null);
    assert!(details.get("email").is_none());

    let team = store
        .create_team(
            &admin(),
            NewTeam {
                limits: Limits {
                    max_budget: Some(9.0),
                    ..Limits::default()
                },
                ..new_team("T")
            },
        )
        .await
        .unwrap();
    let team = store
        .update_team(
            &admin(),
            &team.id,
            TeamPatch {
                limits: LimitsPatch {
                    max_budget: Some(None),
                    rpm: Some(Some(7)),
                    max_parallel: Some(Some(5)),
                    ..LimitsPatch::default()
                },
                ..TeamPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            team.limits.max_budget,
            team.limits.rpm,
            team.limits.max_parallel
        ),
        (None, Some(7), Some(5))
    );
    assert_eq!(store.get_team(&team.id).await.unwrap().unwrap(), team);

    let key = store
        .create_key(
            &admin(),
            NewKey {
                expires_at: Some(4_102_444_800),
                limits: Limits {
                    rpm: Some(3),
                    ..Limits::default()
                },
                permissions: vec!["chat".into()],
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap();
    let key = store
        .update_key(
            &admin(),
            &key.id,
            KeyPatch {
                expires_at: Some(None),
                permissions: Some(vec![]),
                models: Some(vec!["gpt-4o".into()]),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.expires_at, None);
    assert!(key.permissions.is_empty());
    assert_eq!(key.models, ["gpt-4o"]);
    assert_eq!(key.limits.rpm, Some(3));
    assert_eq!(store.get_key(&key.id).await.unwrap().unwrap(), key);
    assert!(store
        .update_key(&admin(), "no-such-key", KeyPatch::default())
        .await
        .unwrap()
        .is_none());
}

async fn key_block_and_unblock(store: SharedStore) {
    let key = store
        .create_key(&admin(), new_key("k", "secret-one"))
        .await
        .unwrap();
    let blocked = store
        .update_key(
            &admin(),
            &key.id,
            KeyPatch {
                blocked: Some(true),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(blocked.blocked);
    assert!(
        store
            .lookup_key(&hash("secret-one"))
            .await
            .unwrap()
            .unwrap()
            .key
            .blocked
    );
    // Blocking together with another change is an ordinary update.
    store
        .update_key(
            &admin(),
            &key.id,
            KeyPatch {
                blocked: Some(false),
                name: Some("k2".into()),
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(!store.get_key(&key.id).await.unwrap().unwrap().blocked);
    assert_eq!(audit_of(&store, "key.block").await.len(), 1);
    assert_eq!(audit_of(&store, "key.unblock").await.len(), 0);
    assert_eq!(audit_of(&store, "key.update").await.len(), 1);
}

async fn invalid_references(store: SharedStore) {
    let err = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some("ghost".into()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap_err();
    assert_invalid(err, "user ghost does not exist");
    let err = store
        .create_key(
            &admin(),
            NewKey {
                team_id: Some("ghost-team".into()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap_err();
    assert_invalid(err, "team ghost-team does not exist");

    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let team = store.create_team(&admin(), new_team("T")).await.unwrap();
    store.delete_user(&admin(), &ada.id).await.unwrap();
    let err = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(ada.id.clone()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap_err();
    assert_invalid(err, &format!("user {} does not exist", ada.id));
    let err = store
        .add_member(
            &admin(),
            &team.id,
            &ada.id,
            TeamRole::Member,
            MembershipSource::Manual,
        )
        .await
        .unwrap_err();
    assert_invalid(err, &format!("user {} does not exist", ada.id));
    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let err = store
        .add_member(
            &admin(),
            "ghost-team",
            &bob.id,
            TeamRole::Member,
            MembershipSource::Manual,
        )
        .await
        .unwrap_err();
    assert_invalid(err, "team ghost-team does not exist");

    // Nothing was written by the failed calls.
    assert!(store
        .list_keys(KeyFilter {
            include_revoked: true,
            ..KeyFilter::default()
        })
        .await
        .unwrap()
        .is_empty());
    assert!(audit_of(&store, "key.create").await.is_empty());
    assert!(audit_of(&store, "team.member.add").await.is_empty());

    assert_invalid(
        store.create_user(&admin(), new_user("")).await.unwrap_err(),
        "username",
    );
    assert_invalid(
        store
            .create_team(&admin(), new_team(" "))
            .await
            .unwrap_err(),
        "team name",
    );
}

async fn key_hash_rules(store: SharedStore) {
    let plaintext = "sk-tg-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijkl";
    let err = store
        .create_key(
            &admin(),
            NewKey {
                key_hash: plaintext.to_string(),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(!err.to_string().contains(plaintext));

    let upper = NewKey {
        key_hash: hash("secret-one").to_uppercase(),
        ..new_key("k", "secret-one")
    };
    assert!(matches!(
        store.create_key(&admin(), upper).await,
        Err(StoreError::Invalid(_))
    ));

    store
        .create_key(&admin(), new_key("k", "secret-one"))
        .await
        .unwrap();
    let err = store
        .create_key(&admin(), new_key("k-again", "secret-one"))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(&hash("secret-one")));
    assert_conflict(err, "a key with that secret already exists");
}

async fn sql_text_is_plain_data(store: SharedStore) {
    let evil = "'; DROP TABLE users; --";
    let quote = "O'Brien \"$1\" \\ %_ ? ?1 $2";
    let user = store
        .create_user(
            &admin(),
            NewUser {
                username: evil.into(),
                email: format!("{evil}@example.com"),
                full_name: Some(quote.into()),
                metadata: Some(json!({ evil: quote })),
                ..NewUser::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_user(&user.id).await.unwrap().unwrap(), user);
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                name: evil.into(),
                models: vec![evil.into(), quote.into()],
                ..NewTeam::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_team(&team.id).await.unwrap().unwrap(), team);
    let key = store
        .create_key(
            &admin(),
            NewKey {
                name: evil.into(),
                key_hint: quote.into(),
                permissions: vec![evil.into()],
                user_id: Some(user.id.clone()),
                ..new_key("k", "secret-one")
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_key(&key.id).await.unwrap().unwrap(), key);

    // Tables intact; the strings work as lookup values and filters.
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    assert_eq!(store.lookup_key(evil).await.unwrap(), None);
    assert!(store.get_user(evil).await.unwrap().is_none());
    let events = store
        .list_audit(AuditFilter {
            actor: Some(evil.into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(events.is_empty());
    let evil_actor = Actor::new(evil, Some(quote.into()));
    store
        .update_user(
            &evil_actor,
            &user.id,
            UserPatch {
                blocked: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    let events = store
        .list_audit(AuditFilter {
            actor: Some(evil.into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source.as_deref(), Some(quote));
    assert_eq!(
        store
            .create_team(&admin(), new_team(evil))
            .await
            .unwrap_err()
            .to_string(),
        format!("a team named {evil} already exists")
    );
}

async fn migrate_twice_is_noop(store: SharedStore) {
    let user = store.create_user(&admin(), new_user("ada")).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.get_user(&user.id).await.unwrap().unwrap(), user);
    store.ping().await.unwrap();
}

async fn concurrent_writes(store: SharedStore) {
    let team = store.create_team(&admin(), new_team("T")).await.unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let store = store.clone();
            let team_id = team.id.clone();
            tokio::spawn(async move {
                let user = store
                    .create_user(&admin(), new_user(&format!("user{i}")))
                    .await?;
                store
                    .add_member(
                        &admin(),
                        &team_id,
                        &user.id,
                        TeamRole::Member,
                        MembershipSource::Group,
                    )
                    .await?;
                store
                    .create_key(
                        &admin(),
                        NewKey {
                            user_id: Some(user.id.clone()),
                            team_id: Some(team_id.clone()),
                            ..new_key("k", &format!("secret-{i}"))
                        },
                    )
                    .await?;
                store
                    .update_team(
                        &admin(),
                        &team_id,
                        TeamPatch {
                            limits: LimitsPatch {
                                rpm: Some(Some(i)),
                                ..LimitsPatch::default()
                            },
                            ..TeamPatch::default()
                        },
                    )
                    .await?;
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.list_users().await.unwrap().len(), 24);
    assert_eq!(store.list_members(&team.id).await.unwrap().len(), 24);
    assert_eq!(
        store.list_keys(KeyFilter::default()).await.unwrap().len(),
        24
    );
    assert_eq!(
        store
            .list_audit(AuditFilter {
                limit: Some(1000),
                ..AuditFilter::default()
            })
            .await
            .unwrap()
            .len(),
        1 + 24 * 4
    );

    // Deleting the team while keys are being made never leaves a live key on a dead team.
    let creators: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let team_id = team.id.clone();
            tokio::spawn(async move {
                store
                    .create_key(
                        &admin(),
                        NewKey {
                            team_id: Some(team_id),
                            ..new_key("late", &format!("late-secret-{i}"))
                        },
                    )
                    .await
            })
        })
        .collect();
    assert!(store.delete_team(&admin(), &team.id).await.unwrap());
    for task in creators {
        match task.await.unwrap() {
            Ok(_) | Err(StoreError::Invalid(_)) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    let live = store
        .list_keys(KeyFilter {
            team_id: Some(team.id.clone()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert!(live.is_empty(), "live keys on a deleted team: {live:?}");
}

// ---- backend-specific plumbing ---------------------------------------------------------

#[tokio::test]
async fn closed_store_reports_unavailable() {
    let (sqlite, _dir, _) = fresh_sqlite().await;
    let (postgres, _) = fresh_postgres().await;
    for store in [sqlite, postgres] {
        store.close().await;
        let err = store.get_user("x").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(store.ping().await.unwrap_err().is_transient());
    }
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable_and_redacted() {
    let opts = ConnectOptions {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(2),
    };
    // Port 1 on loopback: nothing listens there.
    let err = SqlStore::connect("postgres://app:hunter2@127.0.0.1:1/db", &opts)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
}

#[tokio::test]
async fn unsupported_scheme_is_invalid() {
    let err = SqlStore::connect(
        "mysql://root:hunter2@127.0.0.1/db",
        &ConnectOptions::default(),
    )
    .await
    .unwrap_err();
    match err {
        StoreError::Invalid(msg) => {
            assert!(msg.contains("mysql"), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_url_forms_create_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short-form.db");
    let url = format!("sqlite:{}", path.display());
    let store = SqlStore::connect(&url, &test_connect_options())
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    store.migrate().await.unwrap();
    assert!(path.exists());
    store.create_user(&admin(), new_user("ada")).await.unwrap();
    store.close().await;

    // Reopening the same file sees the data; WAL and foreign keys are on.
    let store = SqlStore::connect(
        &format!("sqlite://{}", path.display()),
        &test_connect_options(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
}

#[tokio::test]
async fn postgres_store_uses_its_own_schema() {
    let (store, url) = fresh_postgres().await;
    assert_eq!(store.backend(), Backend::Postgres);
    let schema: String = sqlx::query_scalar("SELECT CAST(current_schema() AS TEXT)")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(schema.starts_with("tg_test_"), "{schema}");
    assert!(url.contains(&schema));
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name IN ('users', 'teams', 'team_members', 'api_keys', 'audit_log')",
    )
    .bind(&schema)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(tables, 5);
}

/// Adds `n` audit rows straight into the table, one transaction.
async fn bulk_audit(store: &SqlStore, n: i64) {
    let mut tx = store.pool().begin().await.unwrap();
    for i in 0..n {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, source, details) \
             VALUES ($1, 'bulk', 'test.bulk', NULL, NULL, '{}')",
        )
        .bind(1_700_000_000 + i)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn check_audit_limits(store: SqlStore) {
    bulk_audit(&store, 1005).await;
    let shared: SharedStore = Arc::new(store);
    let default = shared.list_audit(AuditFilter::default()).await.unwrap();
    assert_eq!(default.len(), 100);
    assert_eq!(default[0].at, 1_700_000_000 + 1004, "newest first");
    let capped = shared
        .list_audit(AuditFilter {
            limit: Some(5000),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(capped.len(), 1000);
    let window = shared
        .list_audit(AuditFilter {
            since: Some(1_700_000_010),
            until: Some(1_700_000_019),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(window.len(), 10);
    assert_eq!(window.first().unwrap().at, 1_700_000_019);
    assert_eq!(window.last().unwrap().at, 1_700_000_010);
}

#[tokio::test]
async fn audit_limit_defaults_and_cap_sqlite() {
    let (store, _dir, _) = fresh_sqlite().await;
    check_audit_limits(store).await;
}

#[tokio::test]
async fn audit_limit_defaults_and_cap_postgres() {
    let (store, _) = fresh_postgres().await;
    check_audit_limits(store).await;
}

/// Migration 0006 on a store that had users before it: emails registered or changed by
/// their own user become unverified, the others stay verified. The migration is undone by
/// hand and run again over rows written as before it.
async fn check_email_verified_backfill(store: SqlStore) {
    let registered = store
        .create_user(&Actor::new("registration", None), new_user("reg"))
        .await
        .unwrap();
    let mut users = Vec::new();
    for name in ["self-email", "self-name", "admin-email", "plain"] {
        users.push(store.create_user(&admin(), new_user(name)).await.unwrap());
    }
    let patch = |email: Option<&str>, name: Option<&str>| UserPatch {
        email: email.map(str::to_string),
        full_name: name.map(|n| Some(n.to_string())),
        ..UserPatch::default()
    };
    let own = |id: &str| Actor::new(format!("user:{id}"), None);
    let changes = [
        (
            own(&users[0].id),
            patch(Some("self-email@new.example.com"), None),
        ),
        (own(&users[1].id), patch(None, Some("Self Name"))),
        (admin(), patch(Some("admin-email@new.example.com"), None)),
    ];
    for (user, (actor, change)) in users.iter().zip(changes) {
        store
            .update_user(&actor, &user.id, change)
            .await
            .unwrap()
            .unwrap();
    }
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // Later migrations do not touch users.email_verified.
    assert!(version >= 6, "{version}");
    for sql in [
        "DELETE FROM _sqlx_migrations WHERE version = 6",
        "ALTER TABLE users DROP COLUMN email_verified",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();

    let shared: SharedStore = Arc::new(store);
    let mut linked = Vec::new();
    for user in shared.list_users().await.unwrap() {
        let login = OidcLogin {
            auto_provision: false,
            ..oidc(&format!("sub-{}", user.username), Some(&user.email))
        };
        if let Some(found) = shared.oidc_login(&oidc_actor(), login).await.unwrap() {
            assert_eq!(found.user.id, user.id);
            linked.push(user.username);
        }
    }
    linked.sort();
    assert_eq!(linked, ["admin-email", "plain", "self-name"]);
    assert!(!linked.contains(&registered.username));
}

#[tokio::test]
async fn email_verified_backfill_sqlite() {
    let (store, _dir, _) = fresh_sqlite().await;
    check_email_verified_backfill(store).await;
}

#[tokio::test]
async fn email_verified_backfill_postgres() {
    let (store, _) = fresh_postgres().await;
    check_email_verified_backfill(store).await;
}

// ---- login sessions ----------------------------------------------------------------------

store_suite!(
    login_lookup_by_username_or_email,
    failed_logins_lock_and_unlock,
    password_hash_is_replaced_and_audited_without_it,
    refresh_rotation_and_reuse,
    refresh_expired_and_unknown,
    logout_and_password_change_revoke_families,
    record_event_writes_an_audit_line,
    concurrent_rotation_has_one_winner,
    oidc_provisions_users,
    oidc_second_login_finds_the_same_user,
    oidc_links_to_a_user_by_email,
    oidc_links_and_provisions_only_with_a_verified_email,
    oidc_links_only_to_a_user_whose_email_is_verified,
    oidc_without_auto_provision_writes_nothing,
    oidc_role_from_groups,
    oidc_group_sync_leaves_manual_memberships,
    oidc_identity_of_a_deleted_user_provisions_a_new_one,
    user_memberships_skip_deleted_teams,
    oidc_concurrent_first_logins_make_one_user,
    oidc_auto_create_teams_creates_missing_teams,
    oidc_concurrent_logins_create_a_team_once,
);

fn refresh(user_id: &str, family: &str, secret: &str, expires_at: i64) -> NewRefreshToken {
    NewRefreshToken {
        user_id: user_id.to_string(),
        family_id: family.to_string(),
        token_hash: hash(secret),
        expires_at,
        source: Some("10.0.0.8".to_string()),
    }
}

async fn user_with_password(store: &SharedStore, username: &str) -> String {
    let mut new = new_user(username);
    new.password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into());
    store.create_user(&admin(), new).await.unwrap().id
}

async fn login_lookup_by_username_or_email(store: SharedStore) {
    let id = user_with_password(&store, "grace").await;
    let by_name = store.find_login_user("grace").await.unwrap().unwrap();
    assert_eq!(by_name.user.id, id);
    assert!(by_name.password_hash.unwrap().starts_with("$argon2id$"));
    let by_email = store
        .find_login_user("grace@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.user.id, id);
    assert!(store.find_login_user("nobody").await.unwrap().is_none());
    store.delete_user(&admin(), &id).await.unwrap();
    assert!(store.find_login_user("grace").await.unwrap().is_none());
}

async fn failed_logins_lock_and_unlock(store: SharedStore) {
    let id = user_with_password(&store, "linus").await;
    let actor = Actor::new("anonymous", Some("10.0.0.9".into()));
    let until = tollgate::domain::now() + 600;
    for _ in 0..2 {
        let locked = store
            .record_login_failure(&actor, &id, 3, until)
            .await
            .unwrap();
        assert_eq!(locked, None);
    }
    // A success in between resets the count.
    store.record_login_success(&id).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            store
                .record_login_failure(&actor, &id, 3, until)
                .await
                .unwrap(),
            None
        );
    }
    let locked = store
        .record_login_failure(&actor, &id, 3, until)
        .await
        .unwrap();
    assert_eq!(locked, Some(until));
    let user = store.get_user(&id).await.unwrap().unwrap();
    assert_eq!(user.locked_until, Some(until));
    let lockouts = audit_of(&store, "auth.lockout").await;
    assert_eq!(lockouts.len(), 1);
    assert_eq!(lockouts[0].target.as_deref(), Some(id.as_str()));
    assert_eq!(lockouts[0].source.as_deref(), Some("10.0.0.9"));

    let unlocked = store.unlock_user(&admin(), &id).await.unwrap().unwrap();
    assert_eq!(unlocked.locked_until, None);
    assert_eq!(
        store.get_user(&id).await.unwrap().unwrap().locked_until,
        None
    );
    assert_eq!(audit_of(&store, "user.unlock").await.len(), 1);
    assert!(store
        .unlock_user(&admin(), "no-such-user")
        .await
        .unwrap()
        .is_none());
}

async fn password_hash_is_replaced_and_audited_without_it(store: SharedStore) {
    let id = user_with_password(&store, "barbara").await;
    let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA";
    assert!(store
        .set_password_hash(&admin(), &id, new_hash)
        .await
        .unwrap());
    let login = store.find_login_user("barbara").await.unwrap().unwrap();
    assert_eq!(login.password_hash.as_deref(), Some(new_hash));
    let events = audit_of(&store, "user.password").await;
    assert_eq!(events.len(), 1);
    assert!(!events[0].details.to_string().contains("argon2"));
    assert!(!store
        .set_password_hash(&admin(), "no-such-user", new_hash)
        .await
        .unwrap());
}

async fn refresh_rotation_and_reuse(store: SharedStore) {
    let id = user_with_password(&store, "margaret").await;
    let later = tollgate::domain::now() + 3600;
    store
        .create_refresh_token(refresh(&id, "fam-1", "rt-one", later))
        .await
        .unwrap();
    let outcome = store
        .rotate_refresh_token(&hash("rt-one"), &hash("rt-two"), later, Some("10.0.0.8"))
        .await
        .unwrap();
    match outcome {
        RefreshOutcome::Rotated { user, family } => {
            assert_eq!(user.id, id);
            assert_eq!(family, "fam-1");
        }
        other => panic!("expected Rotated, got {other:?}"),
    }
    // The old token again: reuse, the whole family goes.
    let outcome = store
        .rotate_refresh_token(&hash("rt-one"), &hash("rt-three"), later, Some("10.6.6.6"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RefreshOutcome::Reused {
            user_id: id.clone(),
            family: "fam-1".into()
        }
    );
    let outcome = store
        .rotate_refresh_token(&hash("rt-two"), &hash("rt-four"), later, None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, RefreshOutcome::Reused { .. }),
        "{outcome:?}"
    );
    let events = audit_of(&store, "auth.refresh_reuse").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].source.as_deref(), Some("10.6.6.6"));
    assert_eq!(events[1].target.as_deref(), Some(id.as_str()));
    assert_eq!(
        store.refresh_token_family(&hash("rt-two")).await.unwrap(),
        Some((id.clone(), "fam-1".to_string()))
    );
}

async fn refresh_expired_and_unknown(store: SharedStore) {
    let id = user_with_password(&store, "katherine").await;
    let now = tollgate::domain::now();
    store
        .create_refresh_token(refresh(&id, "fam-old", "rt-old", now - 1))
        .await
        .unwrap();
    assert_eq!(
        store
            .rotate_refresh_token(&hash("rt-old"), &hash("rt-x"), now + 60, None)
            .await
            .unwrap(),
        RefreshOutcome::Expired
    );
    assert_eq!(
        store
            .rotate_refresh_token(&hash("rt-none"), &hash("rt-y"), now + 60, None)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );
    // A deleted user's tokens are unknown.
    store
        .create_refresh_token(refresh(&id, "fam-live", "rt-live", now + 60))
        .await
        .unwrap();
    store.delete_user(&admin(), &id).await.unwrap();
    assert_eq!(
        store
            .rotate_refresh_token(&hash("rt-live"), &hash("rt-z"), now + 60, None)
            .await
            .unwrap(),
        RefreshOutcome::Unknown
    );
}

async fn logout_and_password_change_revoke_families(store: SharedStore) {
    let id = user_with_password(&store, "hedy").await;
    let later = tollgate::domain::now() + 3600;
    for (family, secret) in [("fa", "rt-a"), ("fb", "rt-b"), ("fc", "rt-c")] {
        store
            .create_refresh_token(refresh(&id, family, secret, later))
            .await
            .unwrap();
    }
    let me = Actor::new(format!("user:{id}"), Some("10.0.0.8".into()));
    assert_eq!(store.revoke_refresh_family(&me, "fa").await.unwrap(), 1);
    assert!(matches!(
        store
            .rotate_refresh_token(&hash("rt-a"), &hash("rt-a2"), later, None)
            .await
            .unwrap(),
        RefreshOutcome::Reused { .. }
    ));
    assert_eq!(audit_of(&store, "auth.logout").await.len(), 1);
    // Password change: every other family goes, the current one stays.
    assert_eq!(
        store
            .revoke_user_sessions(&me, &id, Some("fc"))
            .await
            .unwrap(),
        vec!["fb".to_string()]
    );
    assert!(matches!(
        store
            .rotate_refresh_token(&hash("rt-c"), &hash("rt-c2"), later, None)
            .await
            .unwrap(),
        RefreshOutcome::Rotated { .. }
    ));
    assert!(matches!(
        store
            .rotate_refresh_token(&hash("rt-b"), &hash("rt-b2"), later, None)
            .await
            .unwrap(),
        RefreshOutcome::Reused { .. }
    ));
    assert_eq!(
        store.revoke_user_sessions(&me, &id, None).await.unwrap(),
        vec!["fc".to_string()]
    );
    assert_eq!(audit_of(&store, "auth.sessions_revoked").await.len(), 2);
}

async fn record_event_writes_an_audit_line(store: SharedStore) {
    let actor = Actor::new("anonymous", Some("10.0.0.10".into()));
    store
        .record_event(
            &actor,
            "auth.login_failed",
            None,
            json!({"username": "mallory"}),
        )
        .await
        .unwrap();
    let events = audit_of(&store, "auth.login_failed").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "anonymous");
    assert_eq!(events[0].target, None);
    assert_eq!(events[0].details["username"], "mallory");
}

async fn concurrent_rotation_has_one_winner(store: SharedStore) {
    let id = user_with_password(&store, "ada").await;
    let later = tollgate::domain::now() + 3600;
    store
        .create_refresh_token(refresh(&id, "fam", "rt-race", later))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .rotate_refresh_token(
                        &hash("rt-race"),
                        &hash(&format!("rt-next-{i}")),
                        later,
                        None,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut rotated = 0;
    for task in tasks {
        match task.await.unwrap() {
            RefreshOutcome::Rotated { .. } => rotated += 1,
            RefreshOutcome::Reused { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rotated, 1);
    // The losers were reuses, so the winner's new token is revoked too.
    for i in 0..8 {
        let outcome = store
            .rotate_refresh_token(
                &hash(&format!("rt-next-{i}")),
                &hash(&format!("rt-after-{i}")),
                later,
                None,
            )
            .await
            .unwrap();
        assert!(
            matches!(
                outcome,
                RefreshOutcome::Reused { .. } | RefreshOutcome::Unknown
            ),
            "{outcome:?}"
        );
    }
}

// ---- OIDC identities ---------------------------------------------------------------------

const ISSUER: &str = "https://idp.example.com";

fn oidc_actor() -> Actor {
    Actor::new(format!("oidc:{ISSUER}"), Some("10.0.0.9".to_string()))
}

/// A provisioning login without group mappings; tests adjust the fields they need.
fn oidc(subject: &str, email: Option<&str>) -> OidcLogin {
    OidcLogin {
        issuer: ISSUER.to_string(),
        subject: subject.to_string(),
        email: email.map(str::to_string),
        email_verified: true,
        name: Some("Ada Lovelace".to_string()),
        auto_provision: true,
        default_role: Role::Viewer,
        role_from_groups: None,
        teams_from_groups: None,
        auto_create_teams: false,
        org_id: None,
    }
}

/// `oidc-` + the first 12 hex characters of SHA-256(issuer "\n" subject).
fn oidc_handle(subject: &str) -> String {
    format!("oidc-{}", &hash(&format!("{ISSUER}\n{subject}"))[..12])
}

fn teams(names: &[&str]) -> Option<Vec<String>> {
    Some(names.iter().map(|n| n.to_string()).collect())
}

/// The user's memberships as (team id, role, source), sorted by team id.
async fn memberships_of(
    store: &SharedStore,
    user_id: &str,
) -> Vec<(String, TeamRole, MembershipSource)> {
    let mut all: Vec<_> = store
        .user_memberships(user_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            assert_eq!(m.user_id, user_id);
            (m.team_id, m.role, m.source)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

async fn oidc_provisions_users(store: SharedStore) {
    let ada = store
        .oidc_login(&oidc_actor(), oidc("sub-ada", Some("ada@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert!(ada.created);
    assert!(ada.missing_teams.is_empty());
    assert_eq!(ada.user.username, "ada@example.com");
    assert_eq!(ada.user.email, "ada@example.com");
    assert_eq!(ada.user.full_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(ada.user.role, Role::Viewer);
    assert!(!ada.user.blocked);
    assert_eq!(
        store.get_user(&ada.user.id).await.unwrap().unwrap(),
        ada.user
    );
    // No password: the user can only log in through the issuer.
    let login = store
        .find_login_user("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(login.password_hash, None);

    let events = audit_of(&store, "user.create").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, format!("oidc:{ISSUER}"));
    assert_eq!(events[0].source.as_deref(), Some("10.0.0.9"));
    assert_eq!(events[0].target.as_deref(), Some(ada.user.id.as_str()));
    assert_eq!(events[0].details["source"], "oidc");
    assert_eq!(events[0].details["issuer"], ISSUER);
    assert_eq!(events[0].details["username"], "ada@example.com");
    assert_eq!(events[0].details["role"], "viewer");
    assert_eq!(events[0].details["password_set"], false);
    assert!(audit_of(&store, "auth.identity_link").await.is_empty());

    // No email: both names come from the identity's hash.
    let anon = store
        .oidc_login(&oidc_actor(), oidc("sub-anon", None))
        .await
        .unwrap()
        .unwrap();
    let handle = oidc_handle("sub-anon");
    assert_eq!(handle.len(), "oidc-".len() + 12);
    assert!(anon.created);
    assert_eq!(anon.user.username, handle);
    assert_eq!(anon.user.email, format!("{handle}@users.invalid"));

    // The email is some other user's username: the username falls back to the handle.
    store
        .create_user(
            &admin(),
            NewUser {
                username: "bob@example.com".into(),
                email: "robert@example.com".into(),
                ..NewUser::default()
            },
        )
        .await
        .unwrap();
    let bob = store
        .oidc_login(&oidc_actor(), oidc("sub-bob", Some("bob@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert!(bob.created);
    assert_eq!(bob.user.username, oidc_handle("sub-bob"));
    assert_eq!(bob.user.email, "bob@example.com");

    // A role from groups wins over the default, with no separate role change.
    let cy = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                role_from_groups: Some(Role::Manager),
                ..oidc("sub-cy", Some("cy@example.com"))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(cy.created);
    assert_eq!(cy.user.role, Role::Manager);
    assert!(audit_of(&store, "user.role").await.is_empty());
    assert_eq!(audit_of(&store, "user.create").await.len(), 5);
}

async fn oidc_second_login_finds_the_same_user(store: SharedStore) {
    let first = store
        .oidc_login(&oidc_actor(), oidc("sub-1", Some("ada@example.com")))
        .await
        .unwrap()
        .unwrap();
    // Same identity, another email at the issuer now: still the same user, unchanged.
    let second = store
        .oidc_login(&oidc_actor(), oidc("sub-1", Some("ada@new.example.com")))
        .await
        .unwrap()
        .unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(second.user, first.user);
    // A known identity is found even when provisioning is off.
    let third = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_provision: false,
                ..oidc("sub-1", None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.user.id, first.user.id);
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    assert_eq!(audit_of(&store, "user.create").await.len(), 1);
    let all = store.list_audit(AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1, "a plain repeat login audits nothing: {all:?}");

    // The same subject at another issuer is another identity.
    let other = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                issuer: "https://other-idp.example.com".into(),
                ..oidc("sub-1", None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(other.created);
    assert_ne!(other.user.id, first.user.id);
}

async fn oidc_links_to_a_user_by_email(store: SharedStore) {
    let ada = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let linked = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_provision: false,
                ..oidc("sub-ada", Some("ada@example.com"))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!linked.created);
    assert_eq!(linked.user, ada);
    let events = audit_of(&store, "auth.identity_link").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, format!("oidc:{ISSUER}"));
    assert_eq!(events[0].target.as_deref(), Some(ada.id.as_str()));
    assert_eq!(events[0].details, json!({ "issuer": ISSUER }));

    // Linked once: later logins find the user through the identity, whatever the email.
    let again = store
        .oidc_login(&oidc_actor(), oidc("sub-ada", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.user.id, ada.id);
    assert!(!again.created);
    assert_eq!(audit_of(&store, "auth.identity_link").await.len(), 1);
    assert_eq!(store.list_users().await.unwrap(), vec![ada.clone()]);

    // The email must match exactly.
    let other = store
        .oidc_login(&oidc_actor(), oidc("sub-x", Some("ADA@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert!(other.created);
    assert_ne!(other.user.id, ada.id);
}

async fn oidc_links_and_provisions_only_with_a_verified_email(store: SharedStore) {
    let admin_user = store
        .create_user(
            &admin(),
            NewUser {
                role: Some(Role::Admin),
                ..new_user("root")
            },
        )
        .await
        .unwrap();
    let unverified = |subject: &str, auto_provision: bool| OidcLogin {
        email_verified: false,
        auto_provision,
        ..oidc(subject, Some("root@example.com"))
    };

    // Without auto_provision: not linked, nothing written.
    let before = store.list_audit(AuditFilter::default()).await.unwrap();
    let none = store
        .oidc_login(&oidc_actor(), unverified("sub-mallory", false))
        .await
        .unwrap();
    assert!(none.is_none(), "{none:?}");
    assert_eq!(
        store.list_audit(AuditFilter::default()).await.unwrap(),
        before
    );

    // With auto_provision: a new user, without the address (neither as email nor as
    // username), so the address's owner keeps their account and gets no second one.
    let mallory = store
        .oidc_login(&oidc_actor(), unverified("sub-mallory", true))
        .await
        .unwrap()
        .unwrap();
    assert!(mallory.created);
    assert_ne!(mallory.user.id, admin_user.id);
    let handle = oidc_handle("sub-mallory");
    assert_eq!(mallory.user.username, handle);
    assert_eq!(mallory.user.email, format!("{handle}@users.invalid"));
    assert_eq!(mallory.user.role, Role::Viewer);
    assert!(audit_of(&store, "auth.identity_link").await.is_empty());
    assert_eq!(
        store.get_user(&admin_user.id).await.unwrap().unwrap(),
        admin_user
    );
    // Later tokens of that identity stay with its own user, verified or not.
    let again = store
        .oidc_login(&oidc_actor(), oidc("sub-mallory", Some("root@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.user.id, mallory.user.id);
    assert!(!again.created);

    // A verified email links another identity, at this or another issuer, to the owner.
    let linked = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_provision: false,
                ..oidc("sub-root", Some("root@example.com"))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linked.user.id, admin_user.id);
    assert!(!linked.created);
    let second_issuer = |verified: bool| OidcLogin {
        issuer: "https://other-idp.example.com".into(),
        email_verified: verified,
        ..oidc("sub-root-2", Some("root@example.com"))
    };
    let other = store
        .oidc_login(&oidc_actor(), second_issuer(false))
        .await
        .unwrap()
        .unwrap();
    assert!(other.created);
    assert_ne!(other.user.id, admin_user.id);
    let other = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                subject: "sub-root-3".into(),
                ..second_issuer(true)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.user.id, admin_user.id);
    let links = audit_of(&store, "auth.identity_link").await;
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(links
        .iter()
        .all(|l| l.target.as_deref() == Some(admin_user.id.as_str())));
}

async fn oidc_links_only_to_a_user_whose_email_is_verified(store: SharedStore) {
    // Registered with an address nobody checked, and an address changed by its user.
    let registered = store
        .create_user(
            &Actor::new("registration", None),
            NewUser {
                email_unverified: true,
                ..new_user("eve")
            },
        )
        .await
        .unwrap();
    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let bob = store
        .update_user(
            &Actor::new(format!("user:{}", bob.id), None),
            &bob.id,
            UserPatch {
                email: Some("boss@example.com".into()),
                email_unverified: true,
                ..UserPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    for (subject, user) in [("sub-eve", &registered), ("sub-boss", &bob)] {
        // Not linked, even with a verified token; without provisioning, nobody.
        let none = store
            .oidc_login(
                &oidc_actor(),
                OidcLogin {
                    auto_provision: false,
                    ..oidc(subject, Some(&user.email))
                },
            )
            .await
            .unwrap();
        assert!(none.is_none(), "{none:?}");
        // With provisioning: a new user, who cannot have the taken address.
        let other = store
            .oidc_login(&oidc_actor(), oidc(subject, Some(&user.email)))
            .await
            .unwrap()
            .unwrap();
        assert!(other.created);
        assert_ne!(other.user.id, user.id);
        assert_eq!(
            other.user.username, user.email,
            "the address is a free username"
        );
        assert_eq!(
            other.user.email,
            format!("{}@users.invalid", oidc_handle(subject))
        );
    }
    assert!(audit_of(&store, "auth.identity_link").await.is_empty());

    // An admin setting the address vouches for it: linked from then on.
    store
        .update_user(
            &admin(),
            &bob.id,
            UserPatch {
                email: Some("boss@example.com".into()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let linked = store
        .oidc_login(&oidc_actor(), oidc("sub-boss-2", Some("boss@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linked.user.id, bob.id);
    assert!(linked.linked);
    // A change that leaves the email alone keeps it verified.
    store
        .update_user(
            &Actor::new(format!("user:{}", bob.id), None),
            &bob.id,
            UserPatch {
                full_name: Some(Some("Bob".into())),
                email_unverified: true,
                ..UserPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let linked = store
        .oidc_login(&oidc_actor(), oidc("sub-boss-3", Some("boss@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linked.user.id, bob.id);
}

async fn oidc_without_auto_provision_writes_nothing(store: SharedStore) {
    let team = store.create_team(&admin(), new_team("T")).await.unwrap();
    let before = store.list_audit(AuditFilter::default()).await.unwrap();
    let login = OidcLogin {
        auto_provision: false,
        role_from_groups: Some(Role::Admin),
        teams_from_groups: teams(&["T"]),
        ..oidc("sub-1", Some("ada@example.com"))
    };
    assert!(store
        .oidc_login(&oidc_actor(), login.clone())
        .await
        .unwrap()
        .is_none());
    assert!(store.list_users().await.unwrap().is_empty());
    assert!(store.list_members(&team.id).await.unwrap().is_empty());
    assert_eq!(
        store.list_audit(AuditFilter::default()).await.unwrap(),
        before
    );
    // No identity row was left behind either: provisioning later creates the user.
    let later = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_provision: true,
                ..login
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(later.created);
    assert_eq!(later.user.role, Role::Admin);
}

async fn oidc_role_from_groups(store: SharedStore) {
    let first = store
        .oidc_login(&oidc_actor(), oidc("sub-1", Some("ada@example.com")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.user.role, Role::Viewer);
    let promoted = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                role_from_groups: Some(Role::Admin),
                ..oidc("sub-1", Some("ada@example.com"))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(promoted.user.role, Role::Admin);
    assert!(promoted.user.updated_at >= first.user.updated_at);
    assert_eq!(
        store.get_user(&first.user.id).await.unwrap().unwrap(),
        promoted.user
    );
    let events = audit_of(&store, "user.role").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, format!("oidc:{ISSUER}"));
    assert_eq!(events[0].target.as_deref(), Some(first.user.id.as_str()));
    assert_eq!(
        events[0].details,
        json!({ "from": "viewer", "to": "admin", "source": "oidc" })
    );

    // Same role again: nothing to change, nothing audited.
    store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                role_from_groups: Some(Role::Admin),
                ..oidc("sub-1", None)
            },
        )
        .await
        .unwrap();
    // Roles not managed by groups: an admin's change stays.
    store
        .update_user(
            &admin(),
            &first.user.id,
            UserPatch {
                role: Some(Role::Manager),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    let unmanaged = store
        .oidc_login(&oidc_actor(), oidc("sub-1", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unmanaged.user.role, Role::Manager);
    assert_eq!(audit_of(&store, "user.role").await.len(), 1);
}

async fn oidc_group_sync_leaves_manual_memberships(store: SharedStore) {
    let a = store.create_team(&admin(), new_team("A")).await.unwrap();
    let b = store.create_team(&admin(), new_team("B")).await.unwrap();
    let c = store.create_team(&admin(), new_team("C")).await.unwrap();
    let d = store.create_team(&admin(), new_team("D")).await.unwrap();
    let first = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                teams_from_groups: teams(&["A", "B", "ghost", "A"]),
                ..oidc("sub-1", Some("ada@example.com"))
            },
        )
        .await
        .unwrap()
        .unwrap();
    let uid = first.user.id.clone();
    assert_eq!(first.missing_teams, ["ghost"]);
    let mut expected = vec![
        (a.id.clone(), TeamRole::Member, MembershipSource::Group),
        (b.id.clone(), TeamRole::Member, MembershipSource::Group),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(memberships_of(&store, &uid).await, expected);
    let members_a = store.list_members(&a.id).await.unwrap();
    assert_eq!(members_a.len(), 1);
    assert_eq!(members_a[0].user_id, uid);
    assert_eq!(members_a[0].source, MembershipSource::Group);
    let adds = audit_of(&store, "team.member.add").await;
    assert_eq!(adds.len(), 2);
    for event in &adds {
        assert_eq!(event.actor, format!("oidc:{ISSUER}"));
        assert_eq!(
            event.details,
            json!({ "role": "member", "source": "group" })
        );
    }
    let mut targets: Vec<_> = adds.iter().map(|e| e.target.clone().unwrap()).collect();
    targets.sort();
    let mut want = vec![format!("{}/{uid}", a.id), format!("{}/{uid}", b.id)];
    want.sort();
    assert_eq!(targets, want);

    // An admin adds manual memberships: C (a team the groups will name) and D.
    for team in [&c, &d] {
        store
            .add_member(
                &admin(),
                &team.id,
                &uid,
                TeamRole::Owner,
                MembershipSource::Manual,
            )
            .await
            .unwrap();
    }

    // The groups now map to B and C: A (group) goes, B stays, C stays manual, D untouched.
    let second = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                teams_from_groups: teams(&["B", "C", "ghost2"]),
                ..oidc("sub-1", None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.missing_teams, ["ghost2"]);
    let mut expected = vec![
        (b.id.clone(), TeamRole::Member, MembershipSource::Group),
        (c.id.clone(), TeamRole::Owner, MembershipSource::Manual),
        (d.id.clone(), TeamRole::Owner, MembershipSource::Manual),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(memberships_of(&store, &uid).await, expected);
    assert!(store.list_members(&a.id).await.unwrap().is_empty());
    let removes = audit_of(&store, "team.member.remove").await;
    assert_eq!(removes.len(), 1);
    assert_eq!(removes[0].actor, format!("oidc:{ISSUER}"));
    assert_eq!(removes[0].target, Some(format!("{}/{uid}", a.id)));
    assert_eq!(removes[0].details, json!({ "source": "group" }));
    // Only the two admin adds since the first login.
    assert_eq!(audit_of(&store, "team.member.add").await.len(), 4);

    // No group mapping: memberships are left alone.
    store
        .oidc_login(&oidc_actor(), oidc("sub-1", None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(memberships_of(&store, &uid).await, expected);

    // No groups at all: every group membership goes, manual ones stay.
    let emptied = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                teams_from_groups: teams(&[]),
                ..oidc("sub-1", None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(emptied.missing_teams.is_empty());
    let mut expected = vec![
        (c.id.clone(), TeamRole::Owner, MembershipSource::Manual),
        (d.id.clone(), TeamRole::Owner, MembershipSource::Manual),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(memberships_of(&store, &uid).await, expected);
    assert_eq!(audit_of(&store, "team.member.remove").await.len(), 2);

    // A deleted team counts as missing, even though its name was once live.
    store.delete_team(&admin(), &b.id).await.unwrap();
    let after = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                teams_from_groups: teams(&["B"]),
                ..oidc("sub-1", None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.missing_teams, ["B"]);
    assert!(store.list_members(&b.id).await.unwrap().is_empty());
}

async fn oidc_identity_of_a_deleted_user_provisions_a_new_one(store: SharedStore) {
    for (subject, email) in [("sub-mail", Some("ada@example.com")), ("sub-anon", None)] {
        let old = store
            .oidc_login(&oidc_actor(), oidc(subject, email))
            .await
            .unwrap()
            .unwrap();
        assert!(store.delete_user(&admin(), &old.user.id).await.unwrap());
        let new = store
            .oidc_login(&oidc_actor(), oidc(subject, email))
            .await
            .unwrap()
            .unwrap();
        assert!(new.created);
        assert_ne!(new.user.id, old.user.id);
        // The old user's names are free again.
        assert_eq!(new.user.username, old.user.username);
        assert_eq!(new.user.email, old.user.email);
        assert_eq!(store.get_user(&old.user.id).await.unwrap(), None);
        // The identity now points at the new user.
        let again = store
            .oidc_login(&oidc_actor(), oidc(subject, email))
            .await
            .unwrap()
            .unwrap();
        assert!(!again.created);
        assert_eq!(again.user.id, new.user.id);
    }
    // Without provisioning, the identity of a deleted user finds nobody.
    let old = store
        .oidc_login(&oidc_actor(), oidc("sub-gone", None))
        .await
        .unwrap()
        .unwrap();
    store.delete_user(&admin(), &old.user.id).await.unwrap();
    let gone = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_provision: false,
                ..oidc("sub-gone", None)
            },
        )
        .await
        .unwrap();
    assert!(gone.is_none());
    // …unless a live user has the email: then the identity is linked to it.
    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let old = store
        .oidc_login(&oidc_actor(), oidc("sub-bob", None))
        .await
        .unwrap()
        .unwrap();
    store.delete_user(&admin(), &old.user.id).await.unwrap();
    let linked = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_provision: false,
                ..oidc("sub-bob", Some("bob@example.com"))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linked.user.id, bob.id);
    assert!(!linked.created);
    assert_eq!(audit_of(&store, "auth.identity_link").await.len(), 1);
}

async fn user_memberships_skip_deleted_teams(store: SharedStore) {
    let user = store.create_user(&admin(), new_user("ada")).await.unwrap();
    let other = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let a = store.create_team(&admin(), new_team("A")).await.unwrap();
    let b = store.create_team(&admin(), new_team("B")).await.unwrap();
    store
        .add_member(
            &admin(),
            &a.id,
            &user.id,
            TeamRole::Owner,
            MembershipSource::Manual,
        )
        .await
        .unwrap();
    store
        .add_member(
            &admin(),
            &b.id,
            &user.id,
            TeamRole::Member,
            MembershipSource::Group,
        )
        .await
        .unwrap();
    store
        .add_member(
            &admin(),
            &b.id,
            &other.id,
            TeamRole::Owner,
            MembershipSource::Manual,
        )
        .await
        .unwrap();
    let mut expected = vec![
        (a.id.clone(), TeamRole::Owner, MembershipSource::Manual),
        (b.id.clone(), TeamRole::Member, MembershipSource::Group),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(memberships_of(&store, &user.id).await, expected);

    store.delete_team(&admin(), &b.id).await.unwrap();
    assert_eq!(
        memberships_of(&store, &user.id).await,
        [(a.id.clone(), TeamRole::Owner, MembershipSource::Manual)]
    );
    assert!(memberships_of(&store, &other.id).await.is_empty());
    assert!(store
        .user_memberships("no-such-user")
        .await
        .unwrap()
        .is_empty());
}

async fn oidc_concurrent_first_logins_make_one_user(store: SharedStore) {
    let team = store.create_team(&admin(), new_team("T")).await.unwrap();
    for (subject, email) in [("sub-race", Some("ada@example.com")), ("sub-anon", None)] {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                let login = OidcLogin {
                    teams_from_groups: teams(&["T"]),
                    ..oidc(subject, email)
                };
                tokio::spawn(async move { store.oidc_login(&oidc_actor(), login).await })
            })
            .collect();
        let mut ids = Vec::new();
        let mut created = 0;
        for task in tasks {
            let outcome = task.await.unwrap().unwrap().unwrap();
            created += usize::from(outcome.created);
            ids.push(outcome.user.id);
        }
        assert_eq!(ids[0], ids[1]);
        assert_eq!(created, 1);
        let members = store.list_members(&team.id).await.unwrap();
        assert!(members.iter().filter(|m| m.user_id == ids[0]).count() == 1);
    }
    assert_eq!(store.list_users().await.unwrap().len(), 2);
    assert_eq!(audit_of(&store, "user.create").await.len(), 2);
    assert_eq!(audit_of(&store, "team.member.add").await.len(), 2);
}

/// The live team named `name`, if any.
async fn team_named(store: &SharedStore, name: &str) -> Option<tollgate::domain::Team> {
    let mut found: Vec<_> = store
        .list_teams()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.name == name)
        .collect();
    assert!(found.len() <= 1, "two live teams named {name}: {found:?}");
    found.pop()
}

async fn oidc_auto_create_teams_creates_missing_teams(store: SharedStore) {
    let a = store.create_team(&admin(), new_team("A")).await.unwrap();
    let login = |auto_create_teams: bool| OidcLogin {
        teams_from_groups: teams(&["A", "Fresh"]),
        auto_create_teams,
        ..oidc("sub-1", Some("ada@example.com"))
    };

    // Off: the missing team is skipped, nothing is created.
    let off = store
        .oidc_login(&oidc_actor(), login(false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(off.missing_teams, ["Fresh"]);
    assert!(off.created_teams.is_empty());
    assert!(team_named(&store, "Fresh").await.is_none());
    let uid = off.user.id.clone();
    assert_eq!(
        memberships_of(&store, &uid).await,
        [(a.id.clone(), TeamRole::Member, MembershipSource::Group)]
    );

    // On: created (no limits, no models), audited, and the user is a group member of it.
    let on = store
        .oidc_login(&oidc_actor(), login(true))
        .await
        .unwrap()
        .unwrap();
    assert!(on.missing_teams.is_empty(), "{:?}", on.missing_teams);
    let fresh = team_named(&store, "Fresh").await.expect("Fresh created");
    assert_eq!(on.created_teams, [(fresh.id.clone(), "Fresh".to_string())]);
    assert!(fresh.models.is_empty());
    assert_eq!(fresh.limits, Limits::default());
    assert!(!fresh.blocked);
    let mut expected = vec![
        (a.id.clone(), TeamRole::Member, MembershipSource::Group),
        (fresh.id.clone(), TeamRole::Member, MembershipSource::Group),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(memberships_of(&store, &uid).await, expected);
    let creates = audit_of(&store, "team.create").await;
    let created: Vec<_> = creates
        .iter()
        .filter(|e| e.target.as_deref() == Some(fresh.id.as_str()))
        .collect();
    assert_eq!(created.len(), 1, "{creates:?}");
    assert_eq!(created[0].actor, format!("oidc:{ISSUER}"));
    assert_eq!(created[0].details["name"], "Fresh");
    assert_eq!(created[0].details["source"], "oidc");
    assert_eq!(created[0].details["issuer"], ISSUER);
    assert_eq!(created[0].details["max_budget"], json!(null));

    // Once it exists, later logins only find it.
    let again = store
        .oidc_login(&oidc_actor(), login(true))
        .await
        .unwrap()
        .unwrap();
    assert!(again.created_teams.is_empty());
    assert_eq!(audit_of(&store, "team.create").await.len(), creates.len());
    assert_eq!(memberships_of(&store, &uid).await, expected);

    // A deleted team does not exist: the mapping creates a new one (a new id).
    assert!(store.delete_team(&admin(), &fresh.id).await.unwrap());
    let after = store
        .oidc_login(&oidc_actor(), login(true))
        .await
        .unwrap()
        .unwrap();
    let renewed = team_named(&store, "Fresh")
        .await
        .expect("Fresh created again");
    assert_ne!(renewed.id, fresh.id);
    assert_eq!(
        after.created_teams,
        [(renewed.id.clone(), "Fresh".to_string())]
    );
    assert_eq!(
        audit_of(&store, "team.create").await.len(),
        creates.len() + 1
    );
    assert!(memberships_of(&store, &uid).await.contains(&(
        renewed.id,
        TeamRole::Member,
        MembershipSource::Group
    )));

    // Without a group mapping nothing is created, whatever the flag says.
    let unmapped = store
        .oidc_login(
            &oidc_actor(),
            OidcLogin {
                auto_create_teams: true,
                ..oidc("sub-2", None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(unmapped.created_teams.is_empty());
    assert_eq!(store.list_teams().await.unwrap().len(), 2);
}

async fn oidc_concurrent_logins_create_a_team_once(store: SharedStore) {
    // Distinct people whose first tokens all name the same two new teams, at once: as on
    // two replicas, each in its own transaction.
    for round in 0..3 {
        let names = [format!("Alpha-{round}"), format!("Beta-{round}")];
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                let login = OidcLogin {
                    teams_from_groups: Some(names.to_vec()),
                    auto_create_teams: true,
                    ..oidc(&format!("sub-{round}-{i}"), None)
                };
                tokio::spawn(async move { store.oidc_login(&oidc_actor(), login).await })
            })
            .collect();
        let mut users = Vec::new();
        let mut created = Vec::new();
        for task in tasks {
            let outcome = task.await.unwrap().unwrap().unwrap();
            assert!(outcome.missing_teams.is_empty());
            created.extend(outcome.created_teams);
            users.push(outcome.user.id);
        }
        created.sort_by(|x, y| x.1.cmp(&y.1));
        let mut want = Vec::new();
        for name in &names {
            let team = team_named(&store, name).await.expect("team created");
            let mut members: Vec<_> = store
                .list_members(&team.id)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            members.sort();
            users.sort();
            assert_eq!(members, users, "every login joined {name}");
            want.push((team.id, name.clone()));
        }
        assert_eq!(created, want, "each team was created by exactly one login");
    }
    assert_eq!(store.list_teams().await.unwrap().len(), 6);
    assert_eq!(audit_of(&store, "team.create").await.len(), 6);
}

// ---- usage and spend ---------------------------------------------------------------------

store_suite!(
    usage_is_idempotent_on_request_id,
    spend_accrues_per_entity_in_its_period,
    spend_in_thirty_day_windows_from_created_at,
    usage_report_groups_and_filters,
    usage_report_days_before_1970,
    usage_batch_of_a_thousand,
    usage_of_unknown_and_deleted_owners,
    usage_rejects_bad_records_whole,
    concurrent_usage_batches_count_once,
);

/// Unix seconds of an RFC 3339 time.
fn ts(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp()
}

const DAY: i64 = 86_400;

/// A record with no owners, no model, 10 input and 1 output tokens.
fn usage(request_id: &str, at: i64, cost_usd: f64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_string(),
        at,
        key_id: None,
        user_id: None,
        team_id: None,
        org_id: None,
        model: None,
        tokens: TokenUsage {
            input_tokens: 10,
            output_tokens: 1,
            ..TokenUsage::default()
        },
        cost_usd,
        status: 200,
        latency_ms: 120,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

/// A record of `key`, `user` and `team` (any may be absent).
fn owned(
    request_id: &str,
    at: i64,
    cost_usd: f64,
    key: Option<&str>,
    user: Option<&str>,
    team: Option<&str>,
) -> UsageRecord {
    UsageRecord {
        key_id: key.map(str::to_string),
        user_id: user.map(str::to_string),
        team_id: team.map(str::to_string),
        ..usage(request_id, at, cost_usd)
    }
}

fn row(group: &str, requests: u64, input: u64, output: u64, cost_usd: f64) -> UsageRow {
    UsageRow {
        group: group.to_string(),
        requests,
        input_tokens: input,
        output_tokens: output,
        cost_usd,
    }
}

/// The report's totals are the rows' sums, to the last bit, added in row order.
fn assert_totals(report: &UsageReport) {
    let expected = UsageTotals {
        requests: report.data.iter().map(|r| r.requests).sum(),
        input_tokens: report.data.iter().map(|r| r.input_tokens).sum(),
        output_tokens: report.data.iter().map(|r| r.output_tokens).sum(),
        cost_usd: report.data.iter().fold(0.0, |sum, r| sum + r.cost_usd),
    };
    assert_eq!(report.total, expected);
    assert_eq!(report.total.cost_usd.to_bits(), expected.cost_usd.to_bits());
}

async fn report(store: &SharedStore, query: UsageQuery) -> UsageReport {
    let report = store.usage_report(query).await.unwrap();
    assert_totals(&report);
    report
}

async fn spend(store: &SharedStore, kind: SpendKind, id: &str, at: &str) -> f64 {
    store.current_spend(kind, id, ts(at)).await.unwrap()
}

fn budget(duration: Option<BudgetDuration>) -> Limits {
    Limits {
        max_budget: Some(100.0),
        budget_duration: duration,
        ..Limits::default()
    }
}

async fn usage_is_idempotent_on_request_id(store: SharedStore) {
    let at = ts("2026-03-04T10:00:00Z");
    let k = Some("key-1");
    let batch = [
        owned("r1", at, 0.25, k, Some("user-1"), Some("team-1")),
        owned("r2", at + 1, 0.5, k, Some("user-1"), None),
        owned("r3", at + 2, 1.0, k, None, None),
    ];
    assert_eq!(store.record_usage(&batch).await.unwrap(), 3);
    assert_eq!(store.record_usage(&batch).await.unwrap(), 0);
    let now = "2026-03-04T12:00:00Z";
    assert_eq!(spend(&store, SpendKind::Key, "key-1", now).await, 1.75);
    assert_eq!(spend(&store, SpendKind::User, "user-1", now).await, 0.75);
    assert_eq!(spend(&store, SpendKind::Team, "team-1", now).await, 0.25);

    // Overlapping: r3 again, r4 twice in the same batch (the first one counts).
    let overlapping = [
        owned("r4", at + 3, 2.0, k, None, None),
        owned("r3", at + 2, 1.0, k, None, None),
        owned("r4", at + 4, 64.0, k, Some("user-1"), None),
    ];
    assert_eq!(store.record_usage(&overlapping).await.unwrap(), 1);
    assert_eq!(spend(&store, SpendKind::Key, "key-1", now).await, 3.75);
    assert_eq!(spend(&store, SpendKind::User, "user-1", now).await, 0.75);
    assert_eq!(store.record_usage(&overlapping).await.unwrap(), 0);
    assert_eq!(store.record_usage(&[]).await.unwrap(), 0);
    assert_eq!(spend(&store, SpendKind::Key, "key-1", now).await, 3.75);

    let all = report(&store, UsageQuery::new(GroupBy::Key)).await;
    assert_eq!(all.data, vec![row("key-1", 4, 40, 4, 3.75)]);
    // The kept r4 is the first of the batch: at + 3, no user.
    let r4 = report(
        &store,
        UsageQuery {
            since: Some(at + 3),
            ..UsageQuery::new(GroupBy::User)
        },
    )
    .await;
    assert_eq!(r4.data, vec![row(NO_GROUP, 1, 10, 1, 2.0)]);
}

async fn spend_accrues_per_entity_in_its_period(store: SharedStore) {
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                limits: budget(Some(BudgetDuration::Month)),
                ..new_team("T")
            },
        )
        .await
        .unwrap();
    let user = store
        .create_user(
            &admin(),
            NewUser {
                limits: budget(Some(BudgetDuration::Week)),
                ..new_user("ada")
            },
        )
        .await
        .unwrap();
    let key = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(user.id.clone()),
                team_id: Some(team.id.clone()),
                limits: budget(Some(BudgetDuration::Day)),
                ..new_key("k", "secret-day")
            },
        )
        .await
        .unwrap();
    // A user with a budget but no duration, and one with neither: calendar months.
    let plain = store
        .create_user(
            &admin(),
            NewUser {
                limits: budget(None),
                ..new_user("bob")
            },
        )
        .await
        .unwrap();
    let bare = store.create_user(&admin(), new_user("cy")).await.unwrap();

    let (k, u, t) = (&key.id, &user.id, &team.id);
    let rec = |id: &str, at: &str, cost: f64| owned(id, ts(at), cost, Some(k), Some(u), Some(t));
    let k = k.as_str();
    let u = u.as_str();
    let t = t.as_str();

    // 2026-03-04 is a Wednesday.
    store
        .record_usage(&[
            rec("a", "2026-03-04T10:00:00Z", 1.0),
            rec("b", "2026-03-04T23:59:59Z", 0.5),
        ])
        .await
        .unwrap();
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-04T00:00:00Z").await,
        1.5
    );
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-04T23:59:59Z").await,
        1.5
    );
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-05T00:00:00Z").await,
        0.0
    );
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-03T23:59:59Z").await,
        0.0
    );

    // The next day's record does not touch the previous day's spend.
    store
        .record_usage(&[rec("c", "2026-03-05T00:00:00Z", 0.25)])
        .await
        .unwrap();
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-04T12:00:00Z").await,
        1.5
    );
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-05T00:00:00Z").await,
        0.25
    );

    store
        .record_usage(&[
            rec("d", "2026-03-08T23:59:59Z", 2.0), // Sunday
            rec("e", "2026-03-09T00:00:00Z", 4.0), // Monday
            rec("f", "2026-03-31T23:59:59Z", 8.0),
            rec("g", "2026-04-01T00:00:00Z", 16.0),
            owned(
                "h",
                ts("2026-03-15T09:00:00Z"),
                32.0,
                None,
                Some(&plain.id),
                None,
            ),
            owned(
                "i",
                ts("2026-04-30T23:59:59Z"),
                64.0,
                None,
                Some(&bare.id),
                None,
            ),
        ])
        .await
        .unwrap();

    // Key: calendar days.
    for (at, expected) in [
        ("2026-03-04T12:00:00Z", 1.5),
        ("2026-03-05T23:59:59Z", 0.25),
        ("2026-03-06T12:00:00Z", 0.0),
        ("2026-03-08T00:00:00Z", 2.0),
        ("2026-03-09T00:00:00Z", 4.0),
        ("2026-03-31T00:00:00Z", 8.0),
        ("2026-04-01T00:00:00Z", 16.0),
    ] {
        assert_eq!(
            spend(&store, SpendKind::Key, k, at).await,
            expected,
            "key {at}"
        );
    }
    // User: weeks from Monday; Sunday night → Monday is the switch.
    for (at, expected) in [
        ("2026-03-02T00:00:00Z", 3.75),
        ("2026-03-08T23:59:59Z", 3.75),
        ("2026-03-09T00:00:00Z", 4.0),
        ("2026-03-15T23:59:59Z", 4.0),
        ("2026-03-16T00:00:00Z", 0.0),
        ("2026-03-30T00:00:00Z", 24.0), // Monday 30 March to Sunday 5 April
        ("2026-04-05T23:59:59Z", 24.0),
        ("2026-04-06T00:00:00Z", 0.0),
        ("2026-03-01T23:59:59Z", 0.0),
    ] {
        assert_eq!(
            spend(&store, SpendKind::User, u, at).await,
            expected,
            "user {at}"
        );
    }
    // Team: calendar months.
    for (at, expected) in [
        ("2026-03-01T00:00:00Z", 15.75),
        ("2026-03-31T23:59:59Z", 15.75),
        ("2026-04-01T00:00:00Z", 16.0),
        ("2026-04-30T23:59:59Z", 16.0),
        ("2026-02-28T23:59:59Z", 0.0),
        ("2026-05-01T00:00:00Z", 0.0),
    ] {
        assert_eq!(
            spend(&store, SpendKind::Team, t, at).await,
            expected,
            "team {at}"
        );
    }
    // No duration: calendar months, with or without a budget.
    let plain_id = plain.id.as_str();
    assert_eq!(
        spend(&store, SpendKind::User, plain_id, "2026-03-01T00:00:00Z").await,
        32.0
    );
    assert_eq!(
        spend(&store, SpendKind::User, plain_id, "2026-03-31T23:59:59Z").await,
        32.0
    );
    assert_eq!(
        spend(&store, SpendKind::User, plain_id, "2026-04-01T00:00:00Z").await,
        0.0
    );
    let bare_id = bare.id.as_str();
    assert_eq!(
        spend(&store, SpendKind::User, bare_id, "2026-04-01T00:00:00Z").await,
        64.0
    );
    assert_eq!(
        spend(&store, SpendKind::User, bare_id, "2026-05-01T00:00:00Z").await,
        0.0
    );
    // Kinds are separate: the key's id is no user's.
    assert_eq!(
        spend(&store, SpendKind::User, k, "2026-03-04T12:00:00Z").await,
        0.0
    );
    assert_eq!(
        spend(
            &store,
            SpendKind::Key,
            "no-such-key",
            "2026-03-04T12:00:00Z"
        )
        .await,
        0.0
    );

    // Changing the duration later: spend accrued in days of March counts toward March.
    store
        .update_key(
            &admin(),
            k,
            KeyPatch {
                limits: LimitsPatch {
                    budget_duration: Some(Some(BudgetDuration::Month)),
                    ..LimitsPatch::default()
                },
                ..KeyPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-03-20T00:00:00Z").await,
        15.75
    );
    assert_eq!(
        spend(&store, SpendKind::Key, k, "2026-04-20T00:00:00Z").await,
        16.0
    );
}

async fn spend_in_thirty_day_windows_from_created_at(store: SharedStore) {
    let key = store
        .create_key(
            &admin(),
            NewKey {
                limits: budget(Some(BudgetDuration::ThirtyDays)),
                ..new_key("rolling", "secret-rolling")
            },
        )
        .await
        .unwrap();
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                limits: budget(Some(BudgetDuration::ThirtyDays)),
                ..new_team("rolling")
            },
        )
        .await
        .unwrap();
    let anchor = key.created_at;
    let team_anchor = team.created_at;
    let k = Some(key.id.as_str());
    let t = Some(team.id.as_str());
    store
        .record_usage(&[
            owned("a", anchor + 10, 1.0, k, None, None),
            owned("b", anchor + 30 * DAY - 1, 2.0, k, None, None),
            owned("c", anchor + 30 * DAY, 4.0, k, None, None),
            owned("d", anchor - 1, 8.0, k, None, None),
            owned("e", anchor - 30 * DAY, 16.0, k, None, None),
            owned("f", team_anchor + 45 * DAY, 32.0, None, None, t),
        ])
        .await
        .unwrap();
    let at = |t: i64| store.current_spend(SpendKind::Key, &key.id, t);
    assert_eq!(at(anchor).await.unwrap(), 3.0);
    assert_eq!(at(anchor + 30 * DAY - 1).await.unwrap(), 3.0);
    assert_eq!(at(anchor + 30 * DAY).await.unwrap(), 4.0);
    assert_eq!(at(anchor + 60 * DAY - 1).await.unwrap(), 4.0);
    assert_eq!(at(anchor + 60 * DAY).await.unwrap(), 0.0);
    // Before the anchor, windows go on backwards.
    assert_eq!(at(anchor - 1).await.unwrap(), 24.0);
    assert_eq!(at(anchor - 30 * DAY).await.unwrap(), 24.0);
    assert_eq!(at(anchor - 30 * DAY - 1).await.unwrap(), 0.0);
    let team_at = |t: i64| store.current_spend(SpendKind::Team, &team.id, t);
    assert_eq!(team_at(team_anchor + 30 * DAY).await.unwrap(), 32.0);
    assert_eq!(team_at(team_anchor + 60 * DAY - 1).await.unwrap(), 32.0);
    assert_eq!(team_at(team_anchor + 30 * DAY - 1).await.unwrap(), 0.0);
    assert_eq!(team_at(team_anchor + 60 * DAY).await.unwrap(), 0.0);
}

/// Six records over three days, three keys, two users, one team and three models (one
/// without a team, one without a model).
async fn report_fixture(store: &SharedStore) {
    let model = |record: UsageRecord, model: Option<&str>, input: u64, output: u64| UsageRecord {
        model: model.map(str::to_string),
        tokens: TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: input / 2,
            reasoning_tokens: output / 2,
        },
        ..record
    };
    let (a, b, c) = (Some("key-a"), Some("key-b"), Some("key-c"));
    let (u1, u2, x) = (Some("user-1"), Some("user-2"), Some("team-x"));
    let records = [
        model(
            owned("r1", ts("2026-05-10T00:00:00Z"), 0.5, a, u1, x),
            Some("gpt-4o"),
            100,
            10,
        ),
        model(
            owned("r2", ts("2026-05-10T12:00:00Z"), 0.25, a, u1, x),
            Some("gpt-4o-mini"),
            200,
            20,
        ),
        model(
            owned("r3", ts("2026-05-10T23:59:59Z"), 1.0, b, u1, None),
            Some("gpt-4o"),
            300,
            30,
        ),
        model(
            owned("r4", ts("2026-05-11T00:00:00Z"), 2.0, c, u2, x),
            Some("claude"),
            400,
            40,
        ),
        model(
            owned("r5", ts("2026-05-11T18:00:00Z"), 0.125, b, u1, None),
            None,
            500,
            50,
        ),
        model(
            owned("r6", ts("2026-05-12T06:00:00Z"), 4.0, c, u2, x),
            Some("gpt-4o"),
            600,
            60,
        ),
    ];
    assert_eq!(store.record_usage(&records).await.unwrap(), 6);
}

async fn usage_report_groups_and_filters(store: SharedStore) {
    report_fixture(&store).await;
    let by = |group_by| UsageQuery::new(group_by);

    let keys = report(&store, by(GroupBy::Key)).await;
    assert_eq!(
        keys.data,
        vec![
            row("key-a", 2, 300, 30, 0.75),
            row("key-b", 2, 800, 80, 1.125),
            row("key-c", 2, 1000, 100, 6.0),
        ]
    );
    assert_eq!(
        keys.total,
        UsageTotals {
            requests: 6,
            input_tokens: 2100,
            output_tokens: 210,
            cost_usd: 7.875,
        }
    );
    assert_eq!(
        report(&store, by(GroupBy::User)).await.data,
        vec![
            row("user-1", 4, 1100, 110, 1.875),
            row("user-2", 2, 1000, 100, 6.0),
        ]
    );
    assert_eq!(
        report(&store, by(GroupBy::Team)).await.data,
        vec![
            row(NO_GROUP, 2, 800, 80, 1.125),
            row("team-x", 4, 1300, 130, 6.75),
        ]
    );
    assert_eq!(
        report(&store, by(GroupBy::Model)).await.data,
        vec![
            row(NO_GROUP, 1, 500, 50, 0.125),
            row("claude", 1, 400, 40, 2.0),
            row("gpt-4o", 3, 1000, 100, 5.5),
            row("gpt-4o-mini", 1, 200, 20, 0.25),
        ]
    );
    assert_eq!(
        report(&store, by(GroupBy::Day)).await.data,
        vec![
            row("2026-05-10", 3, 600, 60, 1.75),
            row("2026-05-11", 2, 900, 90, 2.125),
            row("2026-05-12", 1, 600, 60, 4.0),
        ]
    );

    // since and until are inclusive, to the second.
    let edges = report(
        &store,
        UsageQuery {
            since: Some(ts("2026-05-10T23:59:59Z")),
            until: Some(ts("2026-05-11T00:00:00Z")),
            ..by(GroupBy::Day)
        },
    )
    .await;
    assert_eq!(
        edges.data,
        vec![
            row("2026-05-10", 1, 300, 30, 1.0),
            row("2026-05-11", 1, 400, 40, 2.0),
        ]
    );
    let since = report(
        &store,
        UsageQuery {
            since: Some(ts("2026-05-11T00:00:00Z")),
            ..by(GroupBy::Key)
        },
    )
    .await;
    assert_eq!(
        since.data,
        vec![
            row("key-b", 1, 500, 50, 0.125),
            row("key-c", 2, 1000, 100, 6.0)
        ]
    );
    let until = report(
        &store,
        UsageQuery {
            until: Some(ts("2026-05-10T23:59:59Z")),
            ..by(GroupBy::Key)
        },
    )
    .await;
    assert_eq!(
        until.data,
        vec![
            row("key-a", 2, 300, 30, 0.75),
            row("key-b", 1, 300, 30, 1.0)
        ]
    );
    let nothing = report(
        &store,
        UsageQuery {
            since: Some(ts("2026-05-12T06:00:01Z")),
            ..by(GroupBy::Model)
        },
    )
    .await;
    assert_eq!(nothing, UsageReport::default());

    // Filters by user, key and team, alone and together.
    let user = report(
        &store,
        UsageQuery {
            user_id: Some("user-1".into()),
            ..by(GroupBy::Model)
        },
    )
    .await;
    assert_eq!(
        user.data,
        vec![
            row(NO_GROUP, 1, 500, 50, 0.125),
            row("gpt-4o", 2, 400, 40, 1.5),
            row("gpt-4o-mini", 1, 200, 20, 0.25),
        ]
    );
    let key = report(
        &store,
        UsageQuery {
            key_id: Some("key-c".into()),
            ..by(GroupBy::Day)
        },
    )
    .await;
    assert_eq!(
        key.data,
        vec![
            row("2026-05-11", 1, 400, 40, 2.0),
            row("2026-05-12", 1, 600, 60, 4.0),
        ]
    );
    let team = report(
        &store,
        UsageQuery {
            team_id: Some("team-x".into()),
            ..by(GroupBy::User)
        },
    )
    .await;
    assert_eq!(
        team.data,
        vec![
            row("user-1", 2, 300, 30, 0.75),
            row("user-2", 2, 1000, 100, 6.0),
        ]
    );
    let together = report(
        &store,
        UsageQuery {
            user_id: Some("user-1".into()),
            team_id: Some("team-x".into()),
            since: Some(ts("2026-05-10T12:00:00Z")),
            ..by(GroupBy::Key)
        },
    )
    .await;
    assert_eq!(together.data, vec![row("key-a", 1, 200, 20, 0.25)]);
    let unknown = report(
        &store,
        UsageQuery {
            key_id: Some("key-z".into()),
            ..by(GroupBy::Key)
        },
    )
    .await;
    assert_eq!(unknown, UsageReport::default());

    // The API shape.
    assert_eq!(
        serde_json::to_value(&key).unwrap(),
        json!({
            "data": [
                {"group": "2026-05-11", "requests": 1, "input_tokens": 400, "output_tokens": 40, "cost_usd": 2.0},
                {"group": "2026-05-12", "requests": 1, "input_tokens": 600, "output_tokens": 60, "cost_usd": 4.0},
            ],
            "total": {"requests": 2, "input_tokens": 1000, "output_tokens": 100, "cost_usd": 6.0},
        })
    );

    // Costs that binary floating point cannot hold exactly: the totals still are the sum
    // of the rows.
    let tenths: Vec<UsageRecord> = (0..30)
        .map(|i| {
            let key = format!("tenth-{}", i % 7);
            owned(
                &format!("t{i}"),
                ts("2026-06-01T00:00:00Z") + i,
                0.1 * (i % 4 + 1) as f64,
                Some(&key),
                None,
                None,
            )
        })
        .collect();
    assert_eq!(store.record_usage(&tenths).await.unwrap(), 30);
    let tenths = report(
        &store,
        UsageQuery {
            since: Some(ts("2026-06-01T00:00:00Z")),
            ..by(GroupBy::Key)
        },
    )
    .await;
    assert_eq!(tenths.data.len(), 7);
    assert_eq!(tenths.total.requests, 30);
}

async fn usage_report_days_before_1970(store: SharedStore) {
    store
        .record_usage(&[
            usage("old-1", -DAY - 1, 1.0),
            usage("old-2", -DAY, 2.0),
            usage("old-3", -1, 4.0),
            usage("old-4", 0, 8.0),
            usage("old-5", DAY - 1, 16.0),
            usage("old-6", DAY, 32.0),
        ])
        .await
        .unwrap();
    let days = report(&store, UsageQuery::new(GroupBy::Day)).await;
    assert_eq!(
        days.data,
        vec![
            row("1969-12-30", 1, 10, 1, 1.0),
            row("1969-12-31", 2, 20, 2, 6.0),
            row("1970-01-01", 2, 20, 2, 24.0),
            row("1970-01-02", 1, 10, 1, 32.0),
        ]
    );
    assert_eq!(days.total.cost_usd, 63.0);
}

async fn usage_batch_of_a_thousand(store: SharedStore) {
    let user = store.create_user(&admin(), new_user("bulk")).await.unwrap();
    let start = ts("2026-07-01T00:00:00Z");
    let batch: Vec<UsageRecord> = (0..1000)
        .map(|i| UsageRecord {
            model: Some(format!("model-{}", i % 4)),
            ..owned(
                &format!("bulk-{i:04}"),
                start + i * 120,
                0.125,
                Some(&format!("key-{}", i % 10)),
                Some(&user.id),
                None,
            )
        })
        .collect();
    assert_eq!(store.record_usage(&batch).await.unwrap(), 1000);
    assert_eq!(
        store
            .current_spend(SpendKind::User, &user.id, start)
            .await
            .unwrap(),
        125.0
    );
    assert_eq!(
        store
            .current_spend(SpendKind::Key, "key-3", start)
            .await
            .unwrap(),
        12.5
    );
    let models = report(&store, UsageQuery::new(GroupBy::Model)).await;
    assert_eq!(
        models.data,
        (0..4)
            .map(|m| row(&format!("model-{m}"), 250, 2500, 250, 31.25))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        models.total,
        UsageTotals {
            requests: 1000,
            input_tokens: 10_000,
            output_tokens: 1000,
            cost_usd: 125.0,
        }
    );
    // Every two minutes from midnight: 720 records on July 1st, 280 on July 2nd.
    let days = report(&store, UsageQuery::new(GroupBy::Day)).await;
    assert_eq!(
        days.data,
        vec![
            row("2026-07-01", 720, 7200, 720, 90.0),
            row("2026-07-02", 280, 2800, 280, 35.0),
        ]
    );
    // Again, with 10 new ones at the end: only those count.
    let mut again = batch.clone();
    again.extend((1000..1010).map(|i| {
        owned(
            &format!("bulk-{i:04}"),
            start + i * 120,
            0.125,
            None,
            Some(&user.id),
            None,
        )
    }));
    assert_eq!(store.record_usage(&again).await.unwrap(), 10);
    assert_eq!(
        store
            .current_spend(SpendKind::User, &user.id, start)
            .await
            .unwrap(),
        126.25
    );
}

async fn usage_of_unknown_and_deleted_owners(store: SharedStore) {
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                limits: budget(Some(BudgetDuration::Day)),
                ..new_team("gone")
            },
        )
        .await
        .unwrap();
    let user = store
        .create_user(
            &admin(),
            NewUser {
                limits: budget(Some(BudgetDuration::Week)),
                ..new_user("gone")
            },
        )
        .await
        .unwrap();
    let key = store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(user.id.clone()),
                limits: budget(Some(BudgetDuration::Day)),
                ..new_key("gone", "secret-gone")
            },
        )
        .await
        .unwrap();
    assert!(store.delete_user(&admin(), &user.id).await.unwrap());
    assert!(store.delete_team(&admin(), &team.id).await.unwrap());
    assert!(store
        .get_key(&key.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());

    let at = ts("2026-03-04T10:00:00Z"); // a Wednesday
    let records = [
        owned("x1", at, 1.0, Some(&key.id), Some(&user.id), Some(&team.id)),
        owned(
            "x2",
            at + DAY,
            2.0,
            Some(&key.id),
            Some(&user.id),
            Some(&team.id),
        ),
        owned(
            "x3",
            at,
            4.0,
            Some("ghost-key"),
            Some("ghost-user"),
            Some("ghost-team"),
        ),
        owned("x4", at + 20 * DAY, 8.0, Some("ghost-key"), None, None),
    ];
    assert_eq!(store.record_usage(&records).await.unwrap(), 4);

    // Deleted entities keep their durations: the key and team by day, the user by week.
    let on = |kind, id: &str, at: i64| {
        let store = store.clone();
        let id = id.to_string();
        async move { store.current_spend(kind, &id, at).await.unwrap() }
    };
    assert_eq!(on(SpendKind::Key, &key.id, at).await, 1.0);
    assert_eq!(on(SpendKind::Key, &key.id, at + DAY).await, 2.0);
    assert_eq!(on(SpendKind::Team, &team.id, at).await, 1.0);
    assert_eq!(on(SpendKind::User, &user.id, at).await, 3.0);
    // Unknown ids accrue in calendar months (2026-03-24 is still March).
    assert_eq!(on(SpendKind::Key, "ghost-key", at).await, 12.0);
    assert_eq!(
        on(SpendKind::Key, "ghost-key", ts("2026-04-01T00:00:00Z")).await,
        0.0
    );
    assert_eq!(on(SpendKind::User, "ghost-user", at).await, 4.0);
    assert_eq!(on(SpendKind::Team, "ghost-team", at).await, 4.0);

    let keys = report(&store, UsageQuery::new(GroupBy::Key)).await;
    let mut expected = vec![
        row(&key.id, 2, 20, 2, 3.0),
        row("ghost-key", 2, 20, 2, 12.0),
    ];
    expected.sort_by(|a, b| a.group.cmp(&b.group));
    assert_eq!(keys.data, expected);
}

async fn usage_rejects_bad_records_whole(store: SharedStore) {
    let at = ts("2026-03-04T10:00:00Z");
    let good = owned("ok", at, 1.0, Some("key-1"), None, None);
    for bad in [
        usage("", at, 1.0),
        usage("nan", at, f64::NAN),
        usage("inf", at, f64::INFINITY),
        usage("neg", at, -0.5),
    ] {
        let err = store
            .record_usage(&[good.clone(), bad.clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(
        report(&store, UsageQuery::new(GroupBy::Key)).await,
        UsageReport::default()
    );
    assert_eq!(
        store
            .current_spend(SpendKind::Key, "key-1", at)
            .await
            .unwrap(),
        0.0
    );
    // Zero cost is fine, and accrues nothing.
    assert_eq!(
        store
            .record_usage(&[good, usage("free", at, 0.0)])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .current_spend(SpendKind::Key, "key-1", at)
            .await
            .unwrap(),
        1.0
    );
}

async fn concurrent_usage_batches_count_once(store: SharedStore) {
    let at = ts("2026-03-04T10:00:00Z");
    let records: Vec<UsageRecord> = (0..60)
        .map(|i| {
            owned(
                &format!("c{i:02}"),
                at + i,
                0.5,
                Some("key-1"),
                Some("user-1"),
                None,
            )
        })
        .collect();
    // Four writers, each with an overlapping slice, in different orders.
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let mut slice: Vec<UsageRecord> = records[w * 10..w * 10 + 30].to_vec();
            if w % 2 == 1 {
                slice.reverse();
            }
            tokio::spawn(async move { store.record_usage(&slice).await })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += task.await.unwrap().unwrap();
    }
    assert_eq!(new, 60);
    assert_eq!(
        store
            .current_spend(SpendKind::Key, "key-1", at)
            .await
            .unwrap(),
        30.0
    );
    assert_eq!(
        store
            .current_spend(SpendKind::User, "user-1", at)
            .await
            .unwrap(),
        30.0
    );
    assert_eq!(
        report(&store, UsageQuery::new(GroupBy::Key))
            .await
            .total
            .requests,
        60
    );
}

/// Every column of a record as stored, read back directly.
async fn check_stored_columns(store: SqlStore) {
    let record = UsageRecord {
        model: Some("gpt-4o".into()),
        tokens: TokenUsage {
            input_tokens: 1234,
            output_tokens: 567,
            cached_input_tokens: 1000,
            reasoning_tokens: 89,
        },
        status: 499,
        latency_ms: 4321,
        estimated: true,
        source: UsageSource::AccessLog,
        ..owned(
            "req-cols",
            1_780_000_000,
            0.015625,
            Some("key-1"),
            Some("user-1"),
            Some("team-1"),
        )
    };
    let shared: SharedStore = Arc::new(store.clone());
    let before = tollgate::domain::now();
    assert_eq!(shared.record_usage(&[record]).await.unwrap(), 1);
    let row = sqlx::query(
        "SELECT request_id, at, key_id, user_id, team_id, model, input_tokens, output_tokens, \
         cached_input_tokens, reasoning_tokens, cost_usd, status, latency_ms, source, \
         written_at FROM usage_records WHERE request_id = $1 AND estimated = $2",
    )
    .bind("req-cols")
    .bind(true)
    .fetch_one(store.pool())
    .await
    .unwrap();
    use sqlx::Row;
    assert_eq!(row.get::<String, _>("request_id"), "req-cols");
    assert_eq!(row.get::<i64, _>("at"), 1_780_000_000);
    assert_eq!(row.get::<String, _>("key_id"), "key-1");
    assert_eq!(row.get::<String, _>("user_id"), "user-1");
    assert_eq!(row.get::<String, _>("team_id"), "team-1");
    assert_eq!(row.get::<String, _>("model"), "gpt-4o");
    assert_eq!(row.get::<i64, _>("input_tokens"), 1234);
    assert_eq!(row.get::<i64, _>("output_tokens"), 567);
    assert_eq!(row.get::<i64, _>("cached_input_tokens"), 1000);
    assert_eq!(row.get::<i64, _>("reasoning_tokens"), 89);
    assert_eq!(row.get::<f64, _>("cost_usd"), 0.015625);
    assert_eq!(row.get::<i64, _>("status"), 499);
    assert_eq!(row.get::<i64, _>("latency_ms"), 4321);
    assert_eq!(row.get::<String, _>("source"), "access_log");
    let written_at = row.get::<i64, _>("written_at");
    assert!(written_at >= before && written_at <= tollgate::domain::now());

    // The spend rows: one per entity, keyed by the calendar month of `at` (no entities, so
    // no durations), 2026-05-28 → May 2026.
    let rows = sqlx::query(
        "SELECT entity_kind, entity_id, period_start, period_end, spend_usd FROM spend \
         ORDER BY entity_kind",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let got: Vec<(String, String, i64, i64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.get("entity_kind"),
                r.get("entity_id"),
                r.get("period_start"),
                r.get("period_end"),
                r.get("spend_usd"),
            )
        })
        .collect();
    let (may, june) = (ts("2026-05-01T00:00:00Z"), ts("2026-06-01T00:00:00Z"));
    assert_eq!(
        got,
        vec![
            ("key".into(), "key-1".into(), may, june, 0.015625),
            ("team".into(), "team-1".into(), may, june, 0.015625),
            ("user".into(), "user-1".into(), may, june, 0.015625),
        ]
    );
}

#[tokio::test]
async fn usage_columns_are_stored_sqlite() {
    let (store, _dir, _) = fresh_sqlite().await;
    check_stored_columns(store).await;
}

#[tokio::test]
async fn usage_columns_are_stored_postgres() {
    let (store, _) = fresh_postgres().await;
    check_stored_columns(store).await;
}

// ---- budget alerts -------------------------------------------------------------------------

store_suite!(
    alerts_fire_once_per_entity_period_and_threshold,
    alerts_due_are_claimed_once,
    alerts_outcomes,
    alerts_list_filters_newest_first,
    alerts_reject_bad_crossings,
    alert_channels_are_delivered_independently,
);

fn crossing(kind: SpendKind, id: &str, period_start: i64, threshold: u32) -> AlertCrossing {
    AlertCrossing {
        entity_kind: kind,
        entity_id: id.to_string(),
        period_start,
        period_end: period_start + DAY,
        threshold,
        spend_usd: 7.5,
        budget_usd: 10.0,
        created_at: period_start + 3600,
    }
}

async fn all_alerts(store: &SharedStore) -> Vec<Alert> {
    store.list_alerts(AlertFilter::default()).await.unwrap()
}

async fn alerts_fire_once_per_entity_period_and_threshold(store: SharedStore) {
    let day = ts("2026-03-04T00:00:00Z");
    let key = SpendKind::Key;
    let first = [crossing(key, "k1", day, 50), crossing(key, "k1", day, 75)];
    assert_eq!(store.raise_alerts(&first).await.unwrap(), 2);
    assert_eq!(store.raise_alerts(&first).await.unwrap(), 0);
    // A repeat inside one call counts once; a new threshold is new.
    let again = [
        crossing(key, "k1", day, 75),
        crossing(key, "k1", day, 90),
        crossing(key, "k1", day, 90),
    ];
    assert_eq!(store.raise_alerts(&again).await.unwrap(), 1);
    // Another period, another entity, another kind with the same id: all new.
    let others = [
        crossing(key, "k1", day + DAY, 50),
        crossing(key, "k2", day, 50),
        crossing(SpendKind::User, "k1", day, 50),
    ];
    assert_eq!(store.raise_alerts(&others).await.unwrap(), 3);
    assert_eq!(store.raise_alerts(&[]).await.unwrap(), 0);

    let alerts = all_alerts(&store).await;
    assert_eq!(alerts.len(), 6);
    let a = alerts
        .iter()
        .find(|a| {
            a.entity_kind == SpendKind::Key
                && a.entity_id == "k1"
                && a.threshold == 50
                && a.period_start == day
        })
        .unwrap();
    assert_eq!(a.entity_kind, SpendKind::Key);
    assert_eq!(a.period_end, day + DAY);
    assert_eq!(a.spend_usd, 7.5);
    assert_eq!(a.budget_usd, 10.0);
    assert_eq!(a.created_at, day + 3600);
    assert_eq!(a.state, AlertState::Pending);
    assert_eq!(a.attempts, 0);
    assert_eq!(a.next_attempt_at, Some(day + 3600));
    assert_eq!(a.last_error, None);
    assert_eq!(a.delivered_at, None);
    // Ids are unique.
    let mut ids: Vec<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);

    // The API shape: times RFC 3339, kinds and states lowercase.
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["period_start"], "2026-03-04T00:00:00Z");
    assert_eq!(json["period_end"], "2026-03-05T00:00:00Z");
    assert_eq!(json["created_at"], "2026-03-04T01:00:00Z");
    assert_eq!(json["next_attempt_at"], "2026-03-04T01:00:00Z");
    assert_eq!(json["entity_kind"], "key");
    assert_eq!(json["state"], "pending");
    assert_eq!(json["delivered_at"], serde_json::Value::Null);
}

async fn alerts_due_are_claimed_once(store: SharedStore) {
    let day = ts("2026-03-04T00:00:00Z");
    let mut early = crossing(SpendKind::Team, "t1", day, 50);
    early.created_at = day + 10;
    let mut late = crossing(SpendKind::Team, "t1", day, 75);
    late.created_at = day + 20;
    store.raise_alerts(&[late, early]).await.unwrap();

    // Not due before created_at.
    assert!(store.due_alerts(day + 9, 10).await.unwrap().is_empty());
    let due = store.due_alerts(day + 10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].threshold, 50);
    assert_eq!(due[0].next_attempt_at, Some(day + 10 + ALERT_CLAIM_SECS));
    // Claimed: not handed out again until the claim runs out, even when it is due.
    let due = store.due_alerts(day + 30, 10).await.unwrap();
    assert_eq!(due.iter().map(|a| a.threshold).collect::<Vec<_>>(), [75]);
    assert!(store.due_alerts(day + 31, 10).await.unwrap().is_empty());
    // A claim that ran out (its deliverer died) makes the alert due again.
    let due = store
        .due_alerts(day + 10 + ALERT_CLAIM_SECS, 10)
        .await
        .unwrap();
    assert_eq!(due.iter().map(|a| a.threshold).collect::<Vec<_>>(), [50]);
    assert_eq!(
        store.list_alerts(AlertFilter::default()).await.unwrap()[0].attempts,
        0,
        "claims are not attempts"
    );

    // The longest due first, and at most `limit`.
    let far = day + 10 * DAY;
    let due = store.due_alerts(far, 1).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].threshold, 75,
        "75 was claimed until day+90, 50 until day+130"
    );
    assert!(store.due_alerts(far, 0).await.unwrap().is_empty());

    // Concurrent callers: each alert goes to exactly one.
    let many: Vec<AlertCrossing> = (1..=20)
        .map(|i| crossing(SpendKind::Key, &format!("key-{i:02}"), day, 100))
        .collect();
    assert_eq!(store.raise_alerts(&many).await.unwrap(), 20);
    let at = day + DAY;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.due_alerts(at, 100).await.unwrap() })
        })
        .collect();
    let mut claimed: Vec<String> = Vec::new();
    for handle in handles {
        claimed.extend(handle.await.unwrap().into_iter().map(|a| a.id));
    }
    let total = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "an alert was handed out twice");
    // The 20 new ones and t1's 50 %, whose claim (until day+130) ran out.
    assert_eq!(total, 21);
}

/// The migrations of `flavour` before 0014 (alert mail) in a directory of their own, for a
/// database as it was before that migration.
fn migrations_before_alert_email(flavour: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(flavour);
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: u32 = name[..4].parse().unwrap();
        if version < 14 {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// An alert raised before migration 0014 is pending on email, due since it was raised; its
/// webhook delivery is kept as it was.
async fn alerts_from_before_0014_are_due_by_email(store: SharedStore) {
    let (web, mail) = (AlertChannel::Webhook, AlertChannel::Email);
    store.migrate().await.unwrap();
    let alerts = store.list_alerts(AlertFilter::default()).await.unwrap();
    assert_eq!(alerts.len(), 2);
    for a in &alerts {
        assert_eq!(a.email.state, AlertState::Pending, "{a:?}");
        assert_eq!(a.email.attempts, 0);
        assert_eq!(a.email.next_attempt_at, Some(a.created_at));
    }
    let delivered = alerts.iter().find(|a| a.threshold == 50).unwrap();
    assert_eq!(delivered.state, AlertState::Delivered);
    assert_eq!(delivered.attempts, 2);
    let due = store.due_deliveries(mail, 2_000_000_000, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    let due = store.due_deliveries(web, 2_000_000_000, 10).await.unwrap();
    assert_eq!(due.iter().map(|a| a.threshold).collect::<Vec<_>>(), [75]);
}

const OLD_ALERTS: &str = "INSERT INTO alerts (id, entity_kind, entity_id, period_start, \
     period_end, threshold, spend_usd, budget_usd, created_at, state, attempts, \
     next_attempt_at, delivered_at) VALUES \
     ('old-50', 'key', 'k1', 1700000000, 1700086400, 50, 5.0, 10.0, 1700000100, 'delivered', \
      2, NULL, 1700000200), \
     ('old-75', 'key', 'k1', 1700000000, 1700086400, 75, 7.5, 10.0, 1700000300, 'pending', \
      0, 1700000300, NULL)";

#[tokio::test]
async fn alerts_from_before_0014_are_due_by_email_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let old = migrations_before_alert_email("sqlite");
    {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(OLD_ALERTS).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store = SqlStore::connect(&url, &test_connect_options())
        .await
        .unwrap();
    alerts_from_before_0014_are_due_by_email(Arc::new(store)).await;
}

#[tokio::test]
async fn alerts_from_before_0014_are_due_by_email_postgres() {
    use sqlx::{Connection, Executor};
    let mut admin = common::db::postgres_admin_connection().await;
    let schema = format!(
        "tg_test_{}_{}",
        chrono::Utc::now().timestamp(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let _ = admin.close().await;
    let base = common::db::postgres_base_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let old = migrations_before_alert_email("postgres");
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(old.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(OLD_ALERTS).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store = SqlStore::connect(&url, &test_connect_options())
        .await
        .unwrap();
    alerts_from_before_0014_are_due_by_email(Arc::new(store)).await;
}

/// The webhook and email each claim, retry, deliver and give up an alert on their own
/// columns: one channel's claim, retry or outcome never makes the other send again nor
/// hides an alert from it.
async fn alert_channels_are_delivered_independently(store: SharedStore) {
    let day = ts("2026-03-04T00:00:00Z");
    let (web, mail) = (AlertChannel::Webhook, AlertChannel::Email);
    store
        .raise_alerts(&[
            crossing(SpendKind::Team, "t1", day, 50),
            crossing(SpendKind::Team, "t1", day, 75),
        ])
        .await
        .unwrap();
    let now = day + 3600;
    let raised = all_alerts(&store).await;
    for a in &raised {
        assert_eq!(a.email.state, AlertState::Pending);
        assert_eq!(a.email.attempts, 0);
        assert_eq!(
            a.email.next_attempt_at,
            Some(now),
            "due by email when raised"
        );
        assert_eq!(
            (a.email.last_error.as_ref(), a.email.delivered_at),
            (None, None)
        );
    }

    // Claimed on the webhook: still due by email, and the other way round.
    let by_web = store.due_deliveries(web, now, 10).await.unwrap();
    assert_eq!(by_web.len(), 2);
    assert_eq!(
        by_web[0].email.next_attempt_at,
        Some(now),
        "email untouched"
    );
    assert!(store.due_deliveries(web, now, 10).await.unwrap().is_empty());
    let by_mail = store.due_deliveries(mail, now, 10).await.unwrap();
    assert_eq!(by_mail.len(), 2);
    assert_eq!(
        by_mail[0].email.next_attempt_at,
        Some(now + ALERT_CLAIM_SECS)
    );
    assert_eq!(by_mail[0].next_attempt_at, Some(now + ALERT_CLAIM_SECS));
    assert!(store
        .due_deliveries(mail, now, 10)
        .await
        .unwrap()
        .is_empty());
    let id = |threshold: u32| {
        raised
            .iter()
            .find(|a| a.threshold == threshold)
            .unwrap()
            .id
            .clone()
    };
    let (a50, a75) = (id(50), id(75));

    // 50 %: the webhook delivers, email fails once and is retried: only email is due again.
    assert!(store
        .mark_delivery(web, &a50, AlertOutcome::Delivered { at: now })
        .await
        .unwrap());
    let retry = AlertOutcome::Retry {
        error: "cannot connect to the SMTP server".into(),
        next_attempt_at: now + 1,
    };
    assert!(store
        .mark_delivery(mail, &a50, retry.clone())
        .await
        .unwrap());
    // 75 %: email delivers, the webhook gives up.
    assert!(store
        .mark_delivery(mail, &a75, AlertOutcome::Delivered { at: now })
        .await
        .unwrap());
    assert!(store
        .mark_delivery(
            web,
            &a75,
            AlertOutcome::Failed {
                error: "HTTP 500".into()
            }
        )
        .await
        .unwrap());

    let later = now + DAY;
    assert!(store
        .due_deliveries(web, later, 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.due_deliveries(mail, later, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [a50.as_str()]
    );
    assert_eq!(due[0].email.attempts, 1);
    assert_eq!(
        due[0].email.last_error.as_deref(),
        Some("cannot connect to the SMTP server")
    );
    assert_eq!(
        due[0].state,
        AlertState::Delivered,
        "the webhook's state kept"
    );
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].last_error, None);

    // A channel that settled takes no more outcomes; the other still does.
    assert!(!store
        .mark_delivery(mail, &a75, retry.clone())
        .await
        .unwrap());
    assert!(!store.mark_delivery(web, &a50, retry.clone()).await.unwrap());
    assert!(store
        .mark_delivery(mail, &a50, AlertOutcome::Delivered { at: later })
        .await
        .unwrap());

    let all = all_alerts(&store).await;
    let shown = |id: &str| all.iter().find(|a| a.id == id).unwrap().clone();
    let (s50, s75) = (shown(&a50), shown(&a75));
    assert_eq!(
        (
            s50.state,
            s50.email.state,
            s50.email.attempts,
            s50.email.delivered_at
        ),
        (AlertState::Delivered, AlertState::Delivered, 2, Some(later))
    );
    assert_eq!(
        (
            s75.state,
            s75.attempts,
            s75.email.state,
            s75.email.delivered_at
        ),
        (AlertState::Failed, 1, AlertState::Delivered, Some(now))
    );
    assert_eq!(s75.email.next_attempt_at, None);
    // The API shape of the email channel.
    let json = serde_json::to_value(&s75).unwrap();
    assert_eq!(json["email"]["state"], "delivered");
    assert_eq!(json["email"]["attempts"], 1);
    assert_eq!(json["email"]["delivered_at"], "2026-03-04T01:00:00Z");
    assert_eq!(json["email"]["next_attempt_at"], serde_json::Value::Null);
    assert_eq!(json["state"], "failed");
}

async fn alerts_outcomes(store: SharedStore) {
    let day = ts("2026-03-04T00:00:00Z");
    let crossings = [
        crossing(SpendKind::User, "u1", day, 50),
        crossing(SpendKind::User, "u1", day, 75),
        crossing(SpendKind::User, "u1", day, 90),
    ];
    store.raise_alerts(&crossings).await.unwrap();
    let due = store.due_alerts(day + 3600, 10).await.unwrap();
    assert_eq!(due.len(), 3);
    let id = |threshold: u32| {
        due.iter()
            .find(|a| a.threshold == threshold)
            .unwrap()
            .id
            .clone()
    };
    let (a50, a75, a90) = (id(50), id(75), id(90));

    // A retry counts the attempt, keeps the error and sets when it is due.
    let retry = AlertOutcome::Retry {
        error: "the webhook answered HTTP 500 Internal Server Error".into(),
        next_attempt_at: day + 3601,
    };
    assert!(store.mark_alert(&a50, retry.clone()).await.unwrap());
    let due = store.due_alerts(day + 3601, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, a50);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(
        due[0].last_error.as_deref(),
        Some("the webhook answered HTTP 500 Internal Server Error")
    );
    // Then delivered: attempts 2, delivered_at set, no longer due, the error kept.
    assert!(store
        .mark_alert(&a50, AlertOutcome::Delivered { at: day + 3602 })
        .await
        .unwrap());
    let delivered = store
        .list_alerts(AlertFilter {
            state: Some(AlertState::Delivered),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
    let d = &delivered[0];
    assert_eq!(
        (d.id.as_str(), d.attempts, d.delivered_at, d.next_attempt_at),
        (a50.as_str(), 2, Some(day + 3602), None)
    );
    assert!(d.last_error.is_some());
    // A settled alert takes no more outcomes.
    assert!(!store.mark_alert(&a50, retry.clone()).await.unwrap());
    assert!(!store
        .mark_alert(&a50, AlertOutcome::Failed { error: "x".into() })
        .await
        .unwrap());
    assert!(!store.mark_alert("no-such-alert", retry).await.unwrap());

    // Failed: no longer due; a very long error is cut.
    let long = "e".repeat(5000);
    assert!(store
        .mark_alert(&a75, AlertOutcome::Failed { error: long })
        .await
        .unwrap());
    let failed = store
        .list_alerts(AlertFilter {
            state: Some(AlertState::Failed),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, a75);
    assert_eq!(failed[0].attempts, 1);
    assert_eq!(failed[0].next_attempt_at, None);
    assert_eq!(failed[0].delivered_at, None);
    let error = failed[0].last_error.as_deref().unwrap();
    assert!(error.chars().count() <= 501, "{}", error.len());
    let still_due: Vec<String> = store
        .due_alerts(day + 10 * DAY, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(still_due, [a90]);
}

async fn alerts_list_filters_newest_first(store: SharedStore) {
    let day = ts("2026-03-04T00:00:00Z");
    let mut crossings = Vec::new();
    for (i, (kind, id)) in [
        (SpendKind::Key, "k1"),
        (SpendKind::User, "u1"),
        (SpendKind::Team, "t1"),
        (SpendKind::Key, "k2"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = crossing(kind, id, day, 50);
        c.created_at = day + i as i64;
        crossings.push(c);
    }
    store.raise_alerts(&crossings).await.unwrap();
    let ids =
        |alerts: Vec<Alert>| -> Vec<String> { alerts.into_iter().map(|a| a.entity_id).collect() };
    assert_eq!(ids(all_alerts(&store).await), ["k2", "t1", "u1", "k1"]);
    let keys = store
        .list_alerts(AlertFilter {
            entity_kind: Some(SpendKind::Key),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(keys), ["k2", "k1"]);
    let one = store
        .list_alerts(AlertFilter {
            entity_kind: Some(SpendKind::Key),
            entity_id: Some("k1".into()),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(one), ["k1"]);
    let by_id_only = store
        .list_alerts(AlertFilter {
            entity_id: Some("u1".into()),
            state: Some(AlertState::Pending),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(by_id_only), ["u1"]);
    let none = store
        .list_alerts(AlertFilter {
            state: Some(AlertState::Delivered),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let limited = store
        .list_alerts(AlertFilter {
            limit: Some(2),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(limited), ["k2", "t1"]);
    // Values that look like SQL are plain data.
    let odd = store
        .list_alerts(AlertFilter {
            entity_id: Some("k1' OR '1'='1".into()),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert!(odd.is_empty());
}

async fn alerts_reject_bad_crossings(store: SharedStore) {
    let day = ts("2026-03-04T00:00:00Z");
    let good = crossing(SpendKind::Key, "k1", day, 50);
    let mut empty_id = crossing(SpendKind::Key, "", day, 75);
    empty_id.entity_id.clear();
    let zero = crossing(SpendKind::Key, "k1", day, 0);
    let mut nan = crossing(SpendKind::Key, "k1", day, 90);
    nan.spend_usd = f64::NAN;
    for bad in [empty_id, zero, nan] {
        let err = store.raise_alerts(&[good.clone(), bad]).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    }
    assert!(
        all_alerts(&store).await.is_empty(),
        "a bad batch writes nothing"
    );
}

// ---- the daily rollup and retention --------------------------------------------------------

/// A record of random owners, model, tokens and a cost in 1/1024 USD, so that sums are
/// exact in any order and reports can be compared to the bit.
fn random_record(rng: &mut rand::rngs::StdRng, id: usize, from: i64, span: i64) -> UsageRecord {
    use rand::Rng;
    let pick = |rng: &mut rand::rngs::StdRng, prefix: &str, n: usize| {
        let i = rng.gen_range(0..=n);
        (i < n).then(|| format!("{prefix}{i}"))
    };
    let input = rng.gen_range(0..100_000u64);
    let output = rng.gen_range(0..10_000u64);
    UsageRecord {
        key_id: pick(rng, "key-", 5),
        user_id: pick(rng, "user-", 3),
        team_id: pick(rng, "team-", 2),
        model: pick(rng, "model-", 3),
        tokens: TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: input / 3,
            reasoning_tokens: output / 5,
        },
        ..usage(
            &format!("rnd-{id:05}"),
            from + rng.gen_range(0..span),
            rng.gen_range(0..4096) as f64 / 1024.0,
        )
    }
}

/// The report an aggregation of `records` (first of each request id) gives, days before
/// `pruned` counted whole.
fn expected_report(
    records: &[UsageRecord],
    query: &UsageQuery,
    pruned: Option<i64>,
) -> UsageReport {
    if query.since.zip(query.until).is_some_and(|(s, u)| s > u) {
        return UsageReport::default();
    }
    let day = |at: i64| at.div_euclid(DAY);
    let whole = |at: i64| pruned.is_some_and(|first| day(at) < first);
    let since = query.since.map(|s| if whole(s) { day(s) * DAY } else { s });
    let until = query
        .until
        .map(|u| if whole(u) { day(u) * DAY + DAY - 1 } else { u });
    let mut seen = std::collections::HashSet::new();
    let mut groups: std::collections::BTreeMap<(i64, String), UsageRow> = Default::default();
    for r in records {
        if !seen.insert(r.request_id.clone()) {
            continue;
        }
        let matches = |filter: &Option<String>, id: &Option<String>| {
            filter.as_ref().is_none_or(|f| id.as_ref() == Some(f))
        };
        if since.is_some_and(|s| r.at < s)
            || until.is_some_and(|u| r.at > u)
            || !matches(&query.user_id, &r.user_id)
            || !matches(&query.key_id, &r.key_id)
            || !matches(&query.team_id, &r.team_id)
            || !matches(&query.org_id, &r.org_id)
        {
            continue;
        }
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let (sort, group) = match query.group_by {
            GroupBy::Day => {
                let d = day(r.at);
                let text = chrono::DateTime::from_timestamp(d * DAY, 0)
                    .unwrap()
                    .format("%Y-%m-%d")
                    .to_string();
                ((d, String::new()), text)
            }
            GroupBy::Key => ((0, text(&r.key_id)), text(&r.key_id)),
            GroupBy::User => ((0, text(&r.user_id)), text(&r.user_id)),
            GroupBy::Team => ((0, text(&r.team_id)), text(&r.team_id)),
            GroupBy::Org => ((0, text(&r.org_id)), text(&r.org_id)),
            GroupBy::Model => ((0, text(&r.model)), text(&r.model)),
        };
        let slot = groups
            .entry(sort)
            .or_insert_with(|| row(&group, 0, 0, 0, 0.0));
        slot.requests += 1;
        slot.input_tokens += r.tokens.input_tokens;
        slot.output_tokens += r.tokens.output_tokens;
        slot.cost_usd += r.cost_usd;
    }
    UsageReport::from_rows(groups.into_values().collect())
}

/// A random report query over `from .. from + span`: bounds open, on a day's edge or
/// anywhere; owner filters absent, matching or matching nothing.
fn random_query(rng: &mut rand::rngs::StdRng, from: i64, span: i64) -> UsageQuery {
    use rand::Rng;
    let bound = |rng: &mut rand::rngs::StdRng| match rng.gen_range(0..4) {
        0 => None,
        1 => Some((from + rng.gen_range(-DAY..span + DAY)).div_euclid(DAY) * DAY),
        2 => Some((from + rng.gen_range(-DAY..span + DAY)).div_euclid(DAY) * DAY - 1),
        _ => Some(from + rng.gen_range(-DAY..span + DAY)),
    };
    let since = bound(rng);
    let until = bound(rng);
    let filter = |rng: &mut rand::rngs::StdRng, prefix: &str| match rng.gen_range(0..8) {
        0 => Some(format!("{prefix}0")),
        1 => Some(format!("{prefix}9")),
        _ => None,
    };
    UsageQuery {
        since,
        until,
        user_id: filter(rng, "user-"),
        key_id: filter(rng, "key-"),
        team_id: filter(rng, "team-"),
        ..UsageQuery::new(
            [
                GroupBy::Day,
                GroupBy::Key,
                GroupBy::User,
                GroupBy::Team,
                GroupBy::Model,
            ][rng.gen_range(0..5)],
        )
    }
}

/// The rollup rows, sorted, as text.
async fn rollup_rows(store: &SqlStore) -> Vec<String> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT day, key_id, user_id, team_id, model, requests, input_tokens, output_tokens, \
         cached_input_tokens, reasoning_tokens, cost_usd FROM usage_daily",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {:?} {:?} {:?} {:?} {} {} {} {} {} {}",
                r.get::<i64, _>("day"),
                r.get::<String, _>("key_id"),
                r.get::<String, _>("user_id"),
                r.get::<String, _>("team_id"),
                r.get::<String, _>("model"),
                r.get::<i64, _>("requests"),
                r.get::<i64, _>("input_tokens"),
                r.get::<i64, _>("output_tokens"),
                r.get::<i64, _>("cached_input_tokens"),
                r.get::<i64, _>("reasoning_tokens"),
                r.get::<f64, _>("cost_usd"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Reports answered from the daily rollup (whole days) and the raw records (edges) equal an
/// aggregation of the records themselves, for random records over six days around
/// midnights and random queries; migration 0007's backfill builds the same rollup as the
/// writes did; after pruning, days without raw records are answered whole.
async fn check_rollup_matches_raw(store: SqlStore) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let shared: SharedStore = Arc::new(store.clone());
    let from = ts("2026-05-09T00:00:00Z");
    let span = 6 * DAY;
    let mut records: Vec<UsageRecord> = Vec::new();
    let mut id = 0;
    while records.len() < 1500 {
        let size = rng.gen_range(1..200);
        let mut batch: Vec<UsageRecord> = Vec::with_capacity(size);
        for _ in 0..size {
            if !records.is_empty() && rng.gen_bool(0.05) {
                // A request id seen before (another batch or this one), with other counts:
                // skipped.
                let mut again = records[rng.gen_range(0..records.len())].clone();
                again.cost_usd += 1.0;
                again.tokens.input_tokens += 1;
                batch.push(again);
            } else {
                id += 1;
                batch.push(random_record(&mut rng, id, from, span));
            }
            records.push(batch.last().unwrap().clone());
        }
        shared.record_usage(&batch).await.unwrap();
    }
    // Records before 1970, on both sides of its midnights.
    let old: Vec<UsageRecord> = (0..40)
        .map(|_| {
            id += 1;
            random_record(&mut rng, id, -DAY - DAY / 2, 2 * DAY)
        })
        .collect();
    shared.record_usage(&old).await.unwrap();
    records.extend(old);

    for query in [UsageQuery::new(GroupBy::Day), UsageQuery::new(GroupBy::Key)] {
        assert_eq!(
            report(&shared, query.clone()).await,
            expected_report(&records, &query, None),
            "{query:?}"
        );
    }
    for _ in 0..300 {
        let query = random_query(&mut rng, from, span);
        assert_eq!(
            report(&shared, query.clone()).await,
            expected_report(&records, &query, None),
            "{query:?}"
        );
    }

    // Migration 0007 undone and run again: its backfill builds the rollup the writes built.
    let written = rollup_rows(&store).await;
    assert!(written.len() > 100, "{}", written.len());
    for sql in [
        "DELETE FROM _sqlx_migrations WHERE version = 7",
        "DROP TABLE usage_daily",
        "DROP TABLE usage_retention",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();
    assert_eq!(rollup_rows(&store).await, written);

    // Raw records before 2026-05-12 deleted (a batch at a time): the days before are
    // answered whole from the rollup, the others as before.
    let cut = ts("2026-05-12T15:00:00Z");
    let mut deleted = 0;
    loop {
        let n = shared.prune_usage(cut, 100).await.unwrap();
        deleted += n;
        if n < 100 {
            break;
        }
    }
    let before = ts("2026-05-12T00:00:00Z");
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE at < $1")
        .bind(before)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let mut unique = std::collections::HashSet::new();
    let gone = records
        .iter()
        .filter(|r| unique.insert(r.request_id.clone()) && r.at < before)
        .count();
    assert_eq!(deleted, gone as u64);
    assert_eq!(shared.prune_usage(cut, 100).await.unwrap(), 0);
    let pruned = Some(before.div_euclid(DAY));
    for _ in 0..300 {
        let query = random_query(&mut rng, from, span);
        assert_eq!(
            report(&shared, query.clone()).await,
            expected_report(&records, &query, pruned),
            "{query:?}"
        );
    }
    // An earlier cut does not move the mark back.
    shared
        .prune_usage(ts("2026-05-01T00:00:00Z"), 100)
        .await
        .unwrap();
    let query = UsageQuery {
        since: Some(ts("2026-05-10T12:00:00Z")),
        ..UsageQuery::new(GroupBy::Day)
    };
    assert_eq!(
        report(&shared, query.clone()).await,
        expected_report(&records, &query, pruned)
    );
}

#[tokio::test]
async fn rollup_matches_raw_sqlite() {
    let (store, _dir, _) = fresh_sqlite().await;
    check_rollup_matches_raw(store).await;
}

#[tokio::test]
async fn rollup_matches_raw_postgres() {
    let (store, _) = fresh_postgres().await;
    check_rollup_matches_raw(store).await;
}

store_suite!(budgets_and_spends_of_many);

/// The batched reads of budget alerts and listings answer what `get_*` and `current_spend`
/// answer, in the order asked.
async fn budgets_and_spends_of_many(store: SharedStore) {
    let team = store
        .create_team(
            &admin(),
            NewTeam {
                limits: budget(Some(BudgetDuration::Day)),
                ..new_team("many")
            },
        )
        .await
        .unwrap();
    let gone = store
        .create_user(
            &admin(),
            NewUser {
                limits: budget(None),
                ..new_user("gone")
            },
        )
        .await
        .unwrap();
    let plain = store
        .create_user(&admin(), new_user("plain"))
        .await
        .unwrap();
    let key = store
        .create_key(
            &admin(),
            NewKey {
                limits: budget(Some(BudgetDuration::Week)),
                ..new_key("many", "secret-many")
            },
        )
        .await
        .unwrap();
    store.revoke_key(&admin(), &key.id).await.unwrap();
    assert!(store.delete_user(&admin(), &gone.id).await.unwrap());
    let asked = [
        (SpendKind::Team, team.id.as_str()),
        (SpendKind::User, gone.id.as_str()),
        (SpendKind::User, plain.id.as_str()),
        (SpendKind::Key, key.id.as_str()),
        (SpendKind::Key, "no-such-key"),
        (SpendKind::Team, team.id.as_str()),
    ];
    let budgets = store.budgets(&asked).await.unwrap();
    let expected = |duration, anchor| {
        Some(tollgate::store::EntityBudget {
            budget_usd: 100.0,
            duration: Some(duration),
            anchor,
        })
    };
    assert_eq!(
        budgets,
        vec![
            expected(BudgetDuration::Day, team.created_at),
            None,                                           // deleted
            None,                                           // no max_budget
            expected(BudgetDuration::Week, key.created_at), // revoked keys still count
            None,
            expected(BudgetDuration::Day, team.created_at),
        ]
    );

    let at = ts("2026-03-04T10:00:00Z");
    store
        .record_usage(&[
            owned("s1", at, 1.5, Some(&key.id), None, Some(&team.id)),
            owned("s2", at + DAY, 2.25, Some(&key.id), None, Some(&team.id)),
        ])
        .await
        .unwrap();
    let day = at.div_euclid(DAY) * DAY;
    let periods = [
        (SpendKind::Team, team.id.as_str(), day, day + DAY),
        (SpendKind::Team, team.id.as_str(), day + DAY, day + 2 * DAY),
        (SpendKind::Team, team.id.as_str(), day, day + 2 * DAY),
        (SpendKind::Key, "no-such-key", day, day + DAY),
        (SpendKind::User, team.id.as_str(), day, day + DAY),
    ];
    let spends = store.spends(&periods).await.unwrap();
    assert_eq!(spends, vec![1.5, 2.25, 3.75, 0.0, 0.0]);
    for (i, (kind, id, start, _)) in periods.iter().enumerate().take(2) {
        assert_eq!(
            store.current_spend(*kind, id, *start).await.unwrap(),
            spends[i]
        );
    }
    assert!(store.spends(&[]).await.unwrap().is_empty());
    assert!(store.budgets(&[]).await.unwrap().is_empty());

    // What listings answer with each record: current_spend of each, in the order asked,
    // whatever the entity's period (a day, a week, a month without one) or standing.
    for when in [at, at + DAY, at + 8 * DAY, at + 40 * DAY] {
        let many = store.current_spends(&asked, when).await.unwrap();
        let mut one_by_one = Vec::new();
        for (kind, id) in asked {
            one_by_one.push(store.current_spend(kind, id, when).await.unwrap());
        }
        assert_eq!(many, one_by_one, "at {when}");
    }
    assert_eq!(
        store.current_spends(&asked, at + DAY).await.unwrap(),
        vec![2.25, 0.0, 0.0, 3.75, 0.0, 2.25]
    );
    assert!(store.current_spends(&[], at).await.unwrap().is_empty());

    // Names, as a listing shows its owners: revoked keys named, deleted users and unknown
    // ids left out, an id asked twice answered once.
    let names = store.names(&asked).await.unwrap();
    let expected: std::collections::HashMap<(SpendKind, String), String> = [
        ((SpendKind::Team, team.id.clone()), team.name.clone()),
        ((SpendKind::User, plain.id.clone()), plain.username.clone()),
        ((SpendKind::Key, key.id.clone()), key.name.clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected);
    assert!(store.names(&[]).await.unwrap().is_empty());
}

store_suite!(
    org_crud,
    org_delete_refused_while_it_has_teams_or_users,
    teams_and_users_belong_to_an_org,
    memberships_and_keys_stay_inside_one_org,
    listings_filter_by_org,
);

/// A new user `name` in `org`.
async fn user_in(
    store: &SharedStore,
    name: &str,
    org: &tollgate::domain::Org,
) -> tollgate::domain::User {
    let new = NewUser {
        org_id: Some(org.id.clone()),
        ..new_user(name)
    };
    store.create_user(&admin(), new).await.unwrap()
}

/// A new team `name` in `org`.
async fn team_in(
    store: &SharedStore,
    name: &str,
    org: &tollgate::domain::Org,
) -> tollgate::domain::Team {
    let new = NewTeam {
        org_id: Some(org.id.clone()),
        ..new_team(name)
    };
    store.create_team(&admin(), new).await.unwrap()
}

fn new_org(name: &str) -> tollgate::store::NewOrg {
    tollgate::store::NewOrg {
        name: name.to_string(),
        ..Default::default()
    }
}

async fn org_crud(store: SharedStore) {
    let acme = store
        .create_org(
            &admin(),
            tollgate::store::NewOrg {
                name: "Acme".into(),
                limits: Limits {
                    rpm: Some(600),
                    tpm: Some(90_000),
                    max_budget: Some(250.5),
                    budget_duration: Some(BudgetDuration::Month),
                    max_parallel: Some(8),
                },
                metadata: Some(json!({"tier": "gold"})),
            },
        )
        .await
        .unwrap();
    assert_eq!(acme.limits.max_parallel, Some(8));
    assert_eq!(store.get_org(&acme.id).await.unwrap().unwrap(), acme);
    assert_eq!(store.org_by_name("Acme").await.unwrap().unwrap(), acme);
    assert_eq!(store.org_by_name("acme").await.unwrap(), None);
    let globex = store.create_org(&admin(), new_org("Globex")).await.unwrap();
    assert_eq!(globex.limits, Limits::default());
    assert_eq!(globex.metadata, json!({}));
    assert_eq!(
        store.list_orgs().await.unwrap(),
        vec![acme.clone(), globex.clone()]
    );
    assert_conflict(
        store
            .create_org(&admin(), new_org("Acme"))
            .await
            .unwrap_err(),
        "an org named Acme already exists",
    );
    assert_invalid(
        store.create_org(&admin(), new_org("  ")).await.unwrap_err(),
        "org name must not be empty",
    );

    let patched = store
        .update_org(
            &admin(),
            &acme.id,
            tollgate::store::OrgPatch {
                name: Some("Acme Corp".into()),
                limits: LimitsPatch {
                    max_budget: Some(None),
                    tpm: Some(Some(1)),
                    max_parallel: Some(None),
                    ..LimitsPatch::default()
                },
                metadata: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.name, "Acme Corp");
    assert_eq!(patched.limits.max_budget, None);
    assert_eq!(patched.limits.tpm, Some(1));
    assert_eq!(patched.limits.rpm, Some(600));
    assert_eq!(patched.limits.max_parallel, None);
    assert_eq!(patched.metadata, json!({"tier": "gold"}));
    assert_eq!(store.get_org(&acme.id).await.unwrap().unwrap(), patched);
    assert_conflict(
        store
            .update_org(
                &admin(),
                &globex.id,
                tollgate::store::OrgPatch {
                    name: Some("Acme Corp".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
        "an org named Acme Corp already exists",
    );

    assert!(store.delete_org(&admin(), &acme.id).await.unwrap());
    assert!(!store.delete_org(&admin(), &acme.id).await.unwrap());
    assert_eq!(store.get_org(&acme.id).await.unwrap(), None);
    assert_eq!(store.org_by_name("Acme Corp").await.unwrap(), None);
    assert!(store
        .update_org(&admin(), &acme.id, Default::default())
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.list_orgs().await.unwrap(), vec![globex]);
    // The name is free again.
    store
        .create_org(&admin(), new_org("Acme Corp"))
        .await
        .unwrap();

    let created = audit_of(&store, "org.create").await;
    assert_eq!(created.len(), 3);
    let first = created
        .iter()
        .find(|e| e.target.as_deref() == Some(acme.id.as_str()));
    let first = first.expect("org.create of Acme");
    assert_eq!(first.actor, "master");
    assert_eq!(first.details["name"], "Acme");
    assert_eq!(first.details["max_budget"], 250.5);
    assert_eq!(first.details["max_parallel"], 8);
    let updated = audit_of(&store, "org.update").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(
        updated[0].details,
        json!({"name": "Acme Corp", "tpm": 1, "max_budget": null, "max_parallel": null})
    );
    let deleted = audit_of(&store, "org.delete").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].target.as_deref(), Some(acme.id.as_str()));
}

async fn org_delete_refused_while_it_has_teams_or_users(store: SharedStore) {
    let org = store.create_org(&admin(), new_org("Acme")).await.unwrap();
    let team = team_in(&store, "eng", &org).await;
    let user = user_in(&store, "ada", &org).await;
    assert_conflict(
        store.delete_org(&admin(), &org.id).await.unwrap_err(),
        "org Acme still has 1 team(s) and 1 user(s): delete them first",
    );
    assert!(store.delete_team(&admin(), &team.id).await.unwrap());
    assert_conflict(
        store.delete_org(&admin(), &org.id).await.unwrap_err(),
        "org Acme still has 0 team(s) and 1 user(s): delete them first",
    );
    assert!(store.delete_user(&admin(), &user.id).await.unwrap());
    assert!(store.delete_org(&admin(), &org.id).await.unwrap());
    assert!(audit_of(&store, "org.delete").await.len() == 1);
}

async fn teams_and_users_belong_to_an_org(store: SharedStore) {
    let org = store.create_org(&admin(), new_org("Acme")).await.unwrap();
    let team = team_in(&store, "eng", &org).await;
    assert_eq!(team.org_id.as_deref(), Some(org.id.as_str()));
    assert_eq!(store.get_team(&team.id).await.unwrap().unwrap(), team);
    let user = user_in(&store, "ada", &org).await;
    assert_eq!(user.org_id.as_deref(), Some(org.id.as_str()));
    assert_eq!(store.get_user(&user.id).await.unwrap().unwrap(), user);
    assert_eq!(
        store.list_users().await.unwrap()[0].org_id.as_deref(),
        Some(org.id.as_str())
    );
    let outside = store.create_team(&admin(), new_team("ops")).await.unwrap();
    assert_eq!(outside.org_id, None);
    let created = audit_of(&store, "team.create").await;
    let in_org = created
        .iter()
        .find(|e| e.target.as_deref() == Some(team.id.as_str()))
        .unwrap();
    assert_eq!(in_org.details["org_id"], json!(org.id));

    // An org that does not exist, or no longer does, cannot be joined.
    for missing in ["no-such-org".to_string(), {
        let gone = store.create_org(&admin(), new_org("Gone")).await.unwrap();
        assert!(store.delete_org(&admin(), &gone.id).await.unwrap());
        gone.id
    }] {
        assert_invalid(
            store
                .create_team(
                    &admin(),
                    NewTeam {
                        org_id: Some(missing.clone()),
                        ..new_team("t")
                    },
                )
                .await
                .unwrap_err(),
            &format!("org {missing} does not exist"),
        );
        assert_invalid(
            store
                .create_user(
                    &admin(),
                    NewUser {
                        org_id: Some(missing.clone()),
                        ..new_user("u")
                    },
                )
                .await
                .unwrap_err(),
            &format!("org {missing} does not exist"),
        );
    }
    // A patch never moves a team or a user.
    let patched = store
        .update_team(
            &admin(),
            &team.id,
            TeamPatch {
                name: Some("platform".into()),
                ..TeamPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.org_id, team.org_id);
}

async fn memberships_and_keys_stay_inside_one_org(store: SharedStore) {
    let acme = store.create_org(&admin(), new_org("Acme")).await.unwrap();
    let globex = store.create_org(&admin(), new_org("Globex")).await.unwrap();
    let in_org = |name: &str, org: &str| NewTeam {
        org_id: Some(org.to_string()),
        ..new_team(name)
    };
    let acme_team = store
        .create_team(&admin(), in_org("a-team", &acme.id))
        .await
        .unwrap();
    let plain_team = store
        .create_team(&admin(), new_team("plain"))
        .await
        .unwrap();
    let ada = user_in(&store, "ada", &acme).await;
    let gus = user_in(&store, "gus", &globex).await;
    let pat = store.create_user(&admin(), new_user("pat")).await.unwrap();

    let add = |team: String, user: String| {
        let store = store.clone();
        async move {
            store
                .add_member(
                    &admin(),
                    &team,
                    &user,
                    TeamRole::Member,
                    MembershipSource::Manual,
                )
                .await
        }
    };
    add(acme_team.id.clone(), ada.id.clone()).await.unwrap();
    add(plain_team.id.clone(), pat.id.clone()).await.unwrap();
    for (team, user) in [(&acme_team, &gus), (&acme_team, &pat), (&plain_team, &ada)] {
        assert_invalid(
            add(team.id.clone(), user.id.clone()).await.unwrap_err(),
            "meet only inside one org",
        );
    }
    assert_eq!(store.list_members(&acme_team.id).await.unwrap().len(), 1);

    let key = |name: &str, user: &str, team: &str| NewKey {
        user_id: Some(user.to_string()),
        team_id: Some(team.to_string()),
        ..new_key(name, &format!("org-secret-{name}-0000"))
    };
    store
        .create_key(&admin(), key("ok", &ada.id, &acme_team.id))
        .await
        .unwrap();
    assert_invalid(
        store
            .create_key(&admin(), key("cross", &gus.id, &acme_team.id))
            .await
            .unwrap_err(),
        "meet only inside one org",
    );
    let err = store
        .create_keys(
            &admin(),
            vec![
                key("b0", &ada.id, &acme_team.id),
                key("b1", &pat.id, &acme_team.id),
            ],
        )
        .await
        .unwrap_err();
    assert_invalid(err, "keys[1]");
    assert_eq!(
        store.list_keys(KeyFilter::default()).await.unwrap().len(),
        1
    );
}

store_suite!(usage_is_charged_to_the_org_of_its_team_else_its_user);

/// A record's org is its team's, else its user's ([`UsageStore::assign_orgs`]); its cost
/// accrues to the org, and reports group and filter by org.
async fn usage_is_charged_to_the_org_of_its_team_else_its_user(store: SharedStore) {
    let acme = store
        .create_org(
            &admin(),
            tollgate::store::NewOrg {
                name: "Acme".into(),
                limits: Limits {
                    max_budget: Some(10.0),
                    budget_duration: Some(BudgetDuration::Day),
                    ..Limits::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let team = team_in(&store, "eng", &acme).await;
    let ada = user_in(&store, "ada", &acme).await;
    let pat = store.create_user(&admin(), new_user("pat")).await.unwrap();
    let at = ts("2026-03-04T10:00:00Z");
    let mut records = vec![
        owned("o1", at, 1.5, None, None, Some(&team.id)),
        owned("o2", at + 1, 2.0, None, Some(&ada.id), None),
        owned("o3", at + 2, 4.0, None, Some(&pat.id), None),
        owned("o4", at + 3, 8.0, None, None, Some("no-such-team")),
        UsageRecord {
            org_id: Some("kept".into()),
            ..owned("o5", at + 4, 16.0, None, Some("elsewhere"), None)
        },
    ];
    store.assign_orgs(&mut records).await.unwrap();
    let orgs: Vec<Option<&str>> = records.iter().map(|r| r.org_id.as_deref()).collect();
    assert_eq!(
        orgs,
        vec![
            Some(acme.id.as_str()),
            Some(acme.id.as_str()),
            None,
            None,
            Some("kept")
        ]
    );
    assert_eq!(store.record_usage(&records).await.unwrap(), 5);
    assert_eq!(
        store
            .current_spend(SpendKind::Org, &acme.id, at)
            .await
            .unwrap(),
        3.5
    );
    // The org's day (budget_duration 1d) ends at midnight.
    assert_eq!(
        store
            .current_spend(SpendKind::Org, &acme.id, at + DAY)
            .await
            .unwrap(),
        0.0
    );
    let by_org = report(&store, UsageQuery::new(GroupBy::Org)).await;
    let groups: Vec<(&str, u64, f64)> = by_org
        .data
        .iter()
        .map(|r| (r.group.as_str(), r.requests, r.cost_usd))
        .collect();
    let mut expected = vec![
        (NO_GROUP, 2, 12.0),
        (acme.id.as_str(), 2, 3.5),
        ("kept", 1, 16.0),
    ];
    expected.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(groups, expected);
    let only = report(
        &store,
        UsageQuery {
            org_id: Some(acme.id.clone()),
            ..UsageQuery::new(GroupBy::Team)
        },
    )
    .await;
    assert_eq!(
        only.data,
        vec![row(NO_GROUP, 1, 10, 1, 2.0), row(&team.id, 1, 10, 1, 1.5)]
    );
    // Budget alerts and listings read the org's budget and name like a team's.
    let budgets = store
        .budgets(&[(SpendKind::Org, acme.id.as_str())])
        .await
        .unwrap();
    assert_eq!(budgets[0].map(|b| b.budget_usd), Some(10.0));
    let names = store
        .names(&[(SpendKind::Org, acme.id.as_str())])
        .await
        .unwrap();
    assert_eq!(names[&(SpendKind::Org, acme.id.clone())], "Acme");
}

store_suite!(
    custom_roles_are_created_changed_and_deleted_with_audit,
    users_hold_custom_roles_with_their_permissions,
);

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Custom roles: created, listed by name, their permissions replaced, deleted; names are
/// unique and never a built-in role's; `admin` is refused; every write is audited.
async fn custom_roles_are_created_changed_and_deleted_with_audit(store: SharedStore) {
    let made = store
        .create_role(&admin(), "analyst", strings(&["usage:read", "models:read"]))
        .await
        .unwrap();
    assert_eq!(made.name, "analyst");
    assert_eq!(made.permissions, strings(&["usage:read", "models:read"]));
    store
        .create_role(&admin(), "chatter", strings(&["chat"]))
        .await
        .unwrap();
    assert_eq!(store.get_role("analyst").await.unwrap(), Some(made.clone()));
    assert_eq!(store.get_role("nobody").await.unwrap(), None);
    let names: Vec<String> = store
        .list_roles()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, strings(&["analyst", "chatter"]));

    let taken = store.create_role(&admin(), "analyst", vec![]).await;
    assert_conflict(taken.unwrap_err(), "a role named analyst already exists");
    for reserved in ["viewer", "admin", "org_admin"] {
        let err = store.create_role(&admin(), reserved, vec![]).await;
        assert_invalid(err.unwrap_err(), "built-in role");
    }
    let err = store.create_role(&admin(), "Bad Name", vec![]).await;
    assert_invalid(err.unwrap_err(), "is not a role name");
    let err = store
        .create_role(&admin(), "boss", strings(&["chat", "admin"]))
        .await;
    assert_invalid(err.unwrap_err(), "`admin`");
    let err = store
        .update_role(&admin(), "analyst", strings(&["admin"]))
        .await;
    assert_invalid(err.unwrap_err(), "`admin`");

    let changed = store
        .update_role(&admin(), "analyst", strings(&["chat"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.permissions, strings(&["chat"]));
    assert_eq!(changed.created_at, made.created_at);
    assert_eq!(
        store
            .get_role("analyst")
            .await
            .unwrap()
            .unwrap()
            .permissions,
        strings(&["chat"])
    );
    assert_eq!(
        store.update_role(&admin(), "nobody", vec![]).await.unwrap(),
        None
    );

    assert!(store.delete_role(&admin(), "chatter").await.unwrap());
    assert!(!store.delete_role(&admin(), "chatter").await.unwrap());
    assert_eq!(store.get_role("chatter").await.unwrap(), None);

    let created = audit_of(&store, "role.create").await;
    assert_eq!(created.len(), 2, "refused writes leave no audit row");
    let analyst = created
        .iter()
        .find(|e| e.target.as_deref() == Some("analyst"))
        .unwrap();
    assert_eq!(analyst.actor, "master");
    assert_eq!(
        analyst.details,
        json!({ "permissions": ["usage:read", "models:read"] })
    );
    let updated = audit_of(&store, "role.update").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(
        updated[0].details,
        json!({ "from": ["usage:read", "models:read"], "to": ["chat"] })
    );
    let deleted = audit_of(&store, "role.delete").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].target.as_deref(), Some("chatter"));
}

/// A user given a custom role is read with its permissions (by id, in listings, as a key's
/// owner, at login); an unknown role is refused; a role is not deleted while a live user
/// holds it.
async fn users_hold_custom_roles_with_their_permissions(store: SharedStore) {
    store
        .create_role(&admin(), "analyst", strings(&["chat", "usage:read"]))
        .await
        .unwrap();
    let analyst = Role::custom("analyst", &strings(&["chat", "usage:read"]));

    // A name alone (as a request body has it) is resolved by the store.
    let mut new = new_user("ada");
    new.role = Some("analyst".parse().unwrap());
    let ada = store.create_user(&admin(), new).await.unwrap();
    assert_eq!(ada.role, analyst);
    assert_eq!(
        store.get_user(&ada.id).await.unwrap().unwrap().role,
        analyst
    );
    let listed = store.list_users().await.unwrap();
    assert_eq!(listed[0].role, analyst);
    let login = store.find_login_user("ada").await.unwrap().unwrap();
    assert_eq!(login.user.role, analyst);

    let mut key = new_key("ada's", "sk-tg-role-secret-0001");
    key.user_id = Some(ada.id.clone());
    store.create_key(&admin(), key).await.unwrap();
    let owner_role = |store: SharedStore| async move {
        let found = store
            .lookup_key(&hash("sk-tg-role-secret-0001"))
            .await
            .unwrap()
            .unwrap();
        found.user.unwrap().role
    };
    assert_eq!(owner_role(store.clone()).await, analyst);

    // Unknown roles are refused, on create and on patch, and nothing is written.
    let mut ghost = new_user("ghost");
    ghost.role = Some("nosuchrole".parse().unwrap());
    let err = store.create_user(&admin(), ghost).await.unwrap_err();
    assert_invalid(err, "unknown role `nosuchrole`");
    assert!(store.find_login_user("ghost").await.unwrap().is_none());
    let bob = store.create_user(&admin(), new_user("bob")).await.unwrap();
    let patch = UserPatch {
        role: Some("nosuchrole".parse().unwrap()),
        ..UserPatch::default()
    };
    let err = store
        .update_user(&admin(), &bob.id, patch)
        .await
        .unwrap_err();
    assert_invalid(err, "unknown role `nosuchrole`");
    assert_eq!(
        store.get_user(&bob.id).await.unwrap().unwrap().role,
        Role::User
    );

    // The role's new permissions are what its holders are read with from then on.
    store
        .update_role(&admin(), "analyst", strings(&["embeddings"]))
        .await
        .unwrap();
    let now = Role::custom("analyst", &strings(&["embeddings"]));
    assert_eq!(store.get_user(&ada.id).await.unwrap().unwrap().role, now);
    assert_eq!(owner_role(store.clone()).await, now);

    // Held: not deleted. A patch gives bob the role; then neither holder lets it go until
    // both are gone (one moved to a built-in role, one deleted).
    let patch = UserPatch {
        role: Some("analyst".parse().unwrap()),
        ..UserPatch::default()
    };
    let bob = store
        .update_user(&admin(), &bob.id, patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.role, now);
    let err = store.delete_role(&admin(), "analyst").await.unwrap_err();
    assert_conflict(
        err,
        "the role analyst is held by 2 user(s); give them another role first",
    );
    let patch = UserPatch {
        role: Some(Role::Viewer),
        ..UserPatch::default()
    };
    store.update_user(&admin(), &bob.id, patch).await.unwrap();
    assert!(store.delete_role(&admin(), "analyst").await.is_err());
    assert!(store.delete_user(&admin(), &ada.id).await.unwrap());
    assert!(store.delete_role(&admin(), "analyst").await.unwrap());
    assert_eq!(
        audit_of(&store, "role.delete").await[0].target.as_deref(),
        Some("analyst")
    );
}

/// `org_id` of a key listing, the audit log and alerts: the org itself, its users and
/// teams, and their keys; nothing of another org or of none.
async fn listings_filter_by_org(store: SharedStore) {
    let mut orgs = Vec::new();
    for name in ["Acme", "Globex"] {
        let org = store.create_org(&admin(), new_org(name)).await.unwrap();
        let team = store
            .create_team(
                &admin(),
                NewTeam {
                    org_id: Some(org.id.clone()),
                    ..new_team(&format!("{name}-team"))
                },
            )
            .await
            .unwrap();
        let user = store
            .create_user(
                &admin(),
                NewUser {
                    org_id: Some(org.id.clone()),
                    ..new_user(&format!("{name}-dev"))
                },
            )
            .await
            .unwrap();
        let by_user = store
            .create_key(
                &admin(),
                NewKey {
                    user_id: Some(user.id.clone()),
                    ..new_key(&format!("{name}-u"), &format!("{name}-user-secret"))
                },
            )
            .await
            .unwrap();
        let by_team = store
            .create_key(
                &admin(),
                NewKey {
                    team_id: Some(team.id.clone()),
                    ..new_key(&format!("{name}-t"), &format!("{name}-team-secret"))
                },
            )
            .await
            .unwrap();
        orgs.push((org.id, team.id, user.id, by_user.id, by_team.id));
    }
    let loner = store
        .create_user(&admin(), new_user("loner"))
        .await
        .unwrap();
    store
        .create_key(
            &admin(),
            NewKey {
                user_id: Some(loner.id.clone()),
                ..new_key("loner", "loner-secret")
            },
        )
        .await
        .unwrap();
    let (acme, team, user, user_key, team_key) = orgs[0].clone();
    let of_acme = [&acme, &team, &user, &user_key, &team_key]
        .into_iter()
        .cloned()
        .collect::<std::collections::BTreeSet<String>>();

    let keys = store
        .list_keys(KeyFilter {
            org_id: Some(acme.clone()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<String> = keys.into_iter().map(|k| k.id).collect();
    ids.sort();
    let mut want = vec![user_key.clone(), team_key.clone()];
    want.sort();
    assert_eq!(ids, want);
    let none = store
        .list_keys(KeyFilter {
            org_id: Some(acme.clone()),
            user_id: Some(orgs[1].2.clone()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());

    // Events of every target of Acme's, and of Acme's key after it is revoked.
    store.revoke_key(&admin(), &user_key).await.unwrap();
    let events = store
        .list_audit(AuditFilter {
            org_id: Some(acme.clone()),
            limit: Some(1000),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let targets: std::collections::BTreeSet<String> =
        events.iter().filter_map(|e| e.target.clone()).collect();
    assert_eq!(targets, of_acme);
    assert!(events.iter().any(|e| e.action == "key.revoke"));

    let now = tollgate::domain::now();
    let crossings: Vec<AlertCrossing> = orgs
        .iter()
        .flat_map(|(org, team, user, key, _)| {
            [
                (SpendKind::Org, org),
                (SpendKind::Team, team),
                (SpendKind::User, user),
                (SpendKind::Key, key),
            ]
        })
        .chain([(SpendKind::User, &loner.id)])
        .map(|(entity_kind, id)| AlertCrossing {
            entity_kind,
            entity_id: id.clone(),
            period_start: now - 60,
            period_end: now + 3600,
            threshold: 50,
            spend_usd: 6.0,
            budget_usd: 10.0,
            created_at: now,
        })
        .collect();
    store.raise_alerts(&crossings).await.unwrap();
    let alerts = store
        .list_alerts(AlertFilter {
            org_id: Some(acme.clone()),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    let entities: std::collections::BTreeSet<String> =
        alerts.into_iter().map(|a| a.entity_id).collect();
    let mut want = of_acme.clone();
    want.remove(&team_key);
    assert_eq!(entities, want);
}
