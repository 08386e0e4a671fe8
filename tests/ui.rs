//! The web UI (`/ui`) of a real tollgate, through HTTP as a browser speaks it (forms,
//! cookies, redirects), on SQLite and, where the store is involved, on Postgres: sign-in
//! and sign-out, expiry, lockout, CSRF, what each role may see and do, the key's secret
//! shown once, the headers of every answer, the path prefix, pages over thousands of keys,
//! and hostile input.

mod common;

use common::tollgate::{Tollgate, MASTER_KEY};
use common::ui::{encode, redirected_to, Browser, Db, Page, Stack, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate::decision::Principal;

on_both_stores!(
    signing_in_and_out,
    a_session_expires_on_the_server,
    a_deleted_or_blocked_user_s_session_stops_at_once,
    pages_and_search_over_thousands_of_keys,
);

// ---- signing in and out -----------------------------------------------------------------

async fn signing_in_and_out(db: Db) {
    let s = Stack::start(db, "").await;
    s.user("ada", "user").await;
    let b = s.browser();

    // Not signed in: every page sends to the sign-in page, and back afterwards.
    redirected_to(&b.get("/keys?q=x").await, "/ui/login?next=%2Fkeys%3Fq%3Dx");
    redirected_to(&b.get("/").await, "/ui/login");
    let login = b.get("/login?next=%2Fkeys%3Fq%3Dx").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.set_cookie("tollgate_ui_signin").is_some());
    assert_eq!(login.input_value("next").as_deref(), Some("/keys?q=x"));

    let page = b
        .post(
            "/login",
            &[
                ("csrf_token", &login.csrf()),
                ("username", "ada"),
                ("password", PASSWORD),
                ("next", "/keys?q=x"),
            ],
        )
        .await;
    redirected_to(&page, "/ui/keys?q=x");
    let cookie = page.set_cookie("tollgate_ui").expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Lax", "Path=/ui"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(
        !cookie.contains("Max-Age"),
        "a browser-session cookie: {cookie}"
    );
    let token = b.cookie("/keys", "tollgate_ui").unwrap();
    assert_eq!(s.sessions().await, 1);
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM ui_sessions")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert_ne!(stored, token, "only the token's hash is stored");
    assert_eq!(stored.len(), 64);

    let keys = b.get("/keys").await;
    assert_eq!(keys.status, StatusCode::OK);
    assert!(
        keys.contains("Signed in as <strong>ada</strong>"),
        "{}",
        keys.body
    );
    // Signed in, the sign-in page and the start send to the keys.
    redirected_to(&b.get("/login").await, "/ui/keys");
    redirected_to(&b.get("/").await, "/ui/keys");
    assert_eq!(s.audit("ui.login").await.len(), 1);

    // Sign-out deletes the session: the old cookie opens nothing any more.
    let out = b.submit("/keys", "/logout", &[]).await;
    redirected_to(&out, "/ui/login?ended=signed_out");
    assert!(out.set_cookie("tollgate_ui").unwrap().contains("Max-Age=0"));
    assert_eq!(s.sessions().await, 0);
    assert_eq!(s.audit("ui.logout").await.len(), 1);
    let replay = s.browser();
    replay.set_cookie("tollgate_ui", &token);
    let refused = replay.get("/keys").await;
    redirected_to(&refused, "/ui/login?next=%2Fkeys&ended=expired");
    let signed_out = b.follow("/login?ended=signed_out").await;
    assert!(signed_out.contains("You have signed out."));
    s.t.stop().await;
}

async fn a_session_expires_on_the_server(db: Db) {
    let s = Stack::start(db, "ui: { session_ttl: 5m }\n").await;
    s.user("ada", "user").await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;
    let expires: i64 = sqlx::query_scalar("SELECT expires_at FROM ui_sessions")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 295..=now + 305).contains(&expires),
        "{expires} vs {now}"
    );
    assert_eq!(b.get("/keys").await.status, StatusCode::OK);

    // Whatever the browser keeps, the server decides: past expires_at, no session.
    sqlx::query("UPDATE ui_sessions SET expires_at = $1")
        .bind(now - 1)
        .execute(s.db.pool())
        .await
        .unwrap();
    let page = b.get("/keys").await;
    redirected_to(&page, "/ui/login?next=%2Fkeys&ended=expired");
    assert!(b
        .follow("/login?ended=expired")
        .await
        .contains("Your session has ended."));
    // The next sign-in clears expired rows away.
    b.signed_in("ada", PASSWORD).await;
    assert_eq!(s.sessions().await, 1);
    s.t.stop().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_repeated_failures_lock_the_account() {
    let s = Stack::start_with(Db::Sqlite, "  login: { max_failures: 3 }\n", "").await;
    s.user("ada", "user").await;
    let b = s.browser();
    let page = b.sign_in("ada", "wrong-Password-1").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert!(
        page.contains("invalid username, email or password"),
        "{}",
        page.body
    );
    assert!(page.set_cookie("tollgate_ui").is_none());
    // The name tried is shown again; the password is not.
    assert_eq!(page.input_value("username").as_deref(), Some("ada"));
    assert!(!page.contains("wrong-Password-1"));
    let unknown = b.sign_in("nobody", PASSWORD).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.contains("invalid username, email or password"));
    assert_eq!(
        b.sign_in("", PASSWORD).await.status,
        StatusCode::BAD_REQUEST
    );

    // auth.login.max_failures (3 here, set below): the fourth try with the right password
    // is answered like a wrong one.
    for _ in 0..4 {
        b.sign_in("ada", "wrong-Password-1").await;
    }
    let locked = b.sign_in("ada", PASSWORD).await;
    assert_eq!(locked.status, StatusCode::UNAUTHORIZED, "{}", locked.body);
    assert!(locked.contains("invalid username, email or password"));
    assert!(!s.audit("auth.lockout").await.is_empty());
    let failed = s.audit("auth.login_failed").await;
    assert!(
        failed.iter().any(|e| e["details"]["reason"] == "locked"),
        "{failed:?}"
    );
    assert_eq!(s.sessions().await, 0);
    s.t.stop().await;
}

#[tokio::test]
async fn too_many_attempts_from_one_address_are_refused_with_retry_after() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "user").await;
    let b = s.browser();
    // auth.login.per_account_per_minute is 10.
    let mut last = None;
    for _ in 0..11 {
        last = Some(b.sign_in("ada", "wrong-Password-1").await);
    }
    let last = last.unwrap();
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS, "{}", last.body);
    assert!(last.headers.contains_key("retry-after"));
    assert!(last.contains("too many login attempts"), "{}", last.body);
    s.t.stop().await;
}

#[tokio::test]
async fn the_master_key_signs_in_as_an_admin_without_a_profile() {
    let s = Stack::start(Db::Sqlite, "").await;
    let b = s.browser();
    let wrong = b.sign_in_master("tg-master-not-it").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.contains("That is not the master key."));
    assert!(!wrong.contains("tg-master-not-it"));
    let failed = s.audit("ui.login_failed").await;
    assert_eq!(failed.len(), 1);
    assert!(!failed[0].to_string().contains("tg-master-not-it"));

    let page = b.sign_in_master(MASTER_KEY).await;
    redirected_to(&page, "/ui/keys");
    let keys = b.get("/keys").await;
    assert!(keys.contains("Signed in as <strong>master key</strong>"));
    assert!(keys.contains(">admin<"));
    assert!(!keys.contains("/ui/profile\""), "no profile link");
    let profile = b.get("/profile").await;
    assert_eq!(profile.status, StatusCode::NOT_FOUND);
    assert!(profile.contains("The master key has no profile"));
    // The row names the master key by its fingerprint, never by the key.
    let tag: String = sqlx::query_scalar("SELECT master_tag FROM ui_sessions")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert_eq!(tag, s.t.app.auth.master.fingerprint());
    assert!(!tag.contains(MASTER_KEY));

    // A session of another master key (the key changed since) is ended.
    sqlx::query("UPDATE ui_sessions SET master_tag = 'a-master-key-of-the-past'")
        .execute(s.db.pool())
        .await
        .unwrap();
    redirected_to(&b.get("/keys").await, "/ui/login?next=%2Fkeys&ended=master");
    assert_eq!(s.sessions().await, 0);
    s.t.stop().await;
}

#[tokio::test]
async fn password_sign_in_says_when_it_is_not_configured() {
    let t = Tollgate::start("").await;
    let b = Browser::new(format!("http://{}", t.http));
    let login = b.get("/login").await;
    assert!(login.contains("Password sign-in is not enabled"));
    let page = b
        .post(
            "/login",
            &[
                ("csrf_token", &login.csrf()),
                ("username", "ada"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.contains("auth.session is not configured"));
    redirected_to(&b.sign_in_master(MASTER_KEY).await, "/ui/keys");
    t.stop().await;
}

// ---- CSRF and origins -------------------------------------------------------------------

#[tokio::test]
async fn writes_without_this_session_s_token_or_from_another_site_are_refused() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.user("ada", "user").await;
    s.user("bob", "user").await;
    let (id, _) = s.key(json!({"name": "ada-key", "user_id": ada})).await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;
    let other = s.browser();
    other.signed_in("bob", PASSWORD).await;
    let mine = b.get("/keys").await.csrf();
    let theirs = other.get("/keys").await.csrf();
    assert_ne!(mine, theirs, "each session has its own token");
    let block = format!("/keys/{id}/block");

    let refusals = [
        ("missing", vec![], vec![("origin", b.origin.clone())]),
        (
            "wrong",
            vec![("csrf_token", "0".repeat(64))],
            vec![("origin", b.origin.clone())],
        ),
        (
            "another session's",
            vec![("csrf_token", theirs.clone())],
            vec![("origin", b.origin.clone())],
        ),
        (
            "another origin",
            vec![("csrf_token", mine.clone())],
            vec![("origin", "https://evil.example".to_owned())],
        ),
        (
            "the null origin",
            vec![("csrf_token", mine.clone())],
            vec![("origin", "null".to_owned())],
        ),
        (
            "a cross-site fetch",
            vec![("csrf_token", mine.clone())],
            vec![("sec-fetch-site", "cross-site".to_owned())],
        ),
    ];
    for (what, fields, headers) in refusals {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let page = b.post_with(&block, &fields, &headers).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: {}", page.body);
        assert!(
            page.contains("nothing was changed") || page.contains("Nothing was changed"),
            "{what}: {}",
            page.body
        );
        assert_eq!(s.key_record(&id).await["blocked"], false, "{what}");
    }
    // The same post, from this site with this session's token, works.
    let page = b
        .post_with(&block, &[("csrf_token", &mine)], &[("origin", &b.origin)])
        .await;
    redirected_to(&page, &format!("/ui/keys/{id}?done=blocked"));
    assert_eq!(s.key_record(&id).await["blocked"], true);
    // Without an Origin header (older browsers), the token alone decides.
    let page = b
        .post_with(
            &format!("/keys/{id}/unblock"),
            &[("csrf_token", &mine)],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);

    // Sign-out is a write too.
    let page = b.post_with("/logout", &[], &[("origin", &b.origin)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(s.sessions().await, 2);
    s.t.stop().await;
}

#[tokio::test]
async fn another_site_cannot_sign_a_browser_in() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("mallory", "user").await;
    let fields = [("username", "mallory"), ("password", PASSWORD)];

    // A page of another site posting the sign-in form: the browser holds no sign-in cookie
    // for this site's form (SameSite), and the token cannot be known.
    let b = s.browser();
    let page = b.post_with("/login", &fields, &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    let csrf = b.get("/login").await.csrf();
    let page = b
        .post_with(
            "/login",
            &[
                ("csrf_token", "f".repeat(64).as_str()),
                fields[0],
                fields[1],
            ],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = b
        .post_with(
            "/login",
            &[("csrf_token", csrf.as_str()), fields[0], fields[1]],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = b
        .post_with(
            "/login/master",
            &[("csrf_token", csrf.as_str()), ("master_key", MASTER_KEY)],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // A token of another browser's sign-in cookie is not this one's.
    let other = s.browser().get("/login").await.csrf();
    let page = b
        .post_with(
            "/login",
            &[("csrf_token", other.as_str()), fields[0], fields[1]],
            &[],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(s.sessions().await, 0);
    assert!(s.audit("auth.login").await.is_empty());
    s.t.stop().await;
}

// ---- roles ------------------------------------------------------------------------------

#[tokio::test]
async fn a_viewer_sees_every_key_has_no_write_controls_and_is_refused_anyway() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.user("ada", "user").await;
    let vera = s.user("vera", "viewer").await;
    let (id, _) = s.key(json!({"name": "ada-key", "user_id": ada})).await;
    let (own, _) = s.key(json!({"name": "vera-key", "user_id": vera})).await;
    let b = s.browser();
    b.signed_in("vera", PASSWORD).await;

    let keys = b.get("/keys").await;
    assert_eq!(keys.status, StatusCode::OK);
    assert!(keys.contains("ada-key") && keys.contains("vera-key"));
    assert!(!keys.contains("New key"), "a viewer creates nothing");
    assert!(!keys.contains(&format!("{id}/block")));
    assert!(!keys.contains(&format!("{id}/revoke")));
    // A viewer may revoke a key of their own (as `DELETE /v1/user/keys/{id}` allows).
    assert!(keys.contains(&format!("{own}/revoke")));
    assert!(!keys.contains(&format!("{own}/block")));
    let detail = b.get(&format!("/keys/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(!detail.contains("/rotate"));

    // Forged posts with a valid token: the API's refusal, shown with its status.
    let csrf = keys.csrf();
    for (action, message) in [
        ("block", "the role `viewer` may not change this key"),
        ("rotate", "the role `viewer` may not change this key"),
    ] {
        let page = b
            .post(&format!("/keys/{id}/{action}"), &[("csrf_token", &csrf)])
            .await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "{action}: {}",
            page.body
        );
        assert!(page.contains(message), "{action}: {}", page.body);
    }
    let page = b
        .post(
            &format!("/keys/{id}/revoke"),
            &[("csrf_token", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.body);
    let page = b
        .post("/keys", &[("csrf_token", &csrf), ("name", "forged")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(
        page.contains("the role `viewer` may not create keys"),
        "{}",
        page.body
    );
    let page = b.get("/keys/new").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let record = s.key_record(&id).await;
    assert_eq!(record["blocked"], false);
    assert!(record["revoked_at"].is_null());
    assert_eq!(s.key_record(&id).await["key_hint"], record["key_hint"]);

    let page = b
        .post(
            &format!("/keys/{own}/revoke"),
            &[("csrf_token", &csrf), ("confirm", "yes")],
        )
        .await;
    redirected_to(&page, &format!("/ui/keys/{own}?done=revoked"));
    assert!(s.key_record(&own).await["revoked_at"].is_string());
    s.t.stop().await;
}

#[tokio::test]
async fn a_user_sees_and_changes_only_their_own_keys() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.user("ada", "user").await;
    let bob = s.user("bob", "user").await;
    let (theirs, _) = s.key(json!({"name": "bob-key", "user_id": bob})).await;
    let (mine, _) = s.key(json!({"name": "ada-key", "user_id": ada})).await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;

    let keys = b.get("/keys").await;
    assert!(keys.contains("ada-key"));
    assert!(!keys.contains("bob-key"));
    assert!(!keys.contains(&theirs));
    assert!(!keys.contains("id=\"user\""), "no owner filter for a user");
    // Asking for someone else's keys through the filters changes nothing.
    let keys = b.get(&format!("/keys?user={bob}&q=bob")).await;
    assert!(!keys.contains("bob-key"));

    let page = b.get(&format!("/keys/{theirs}")).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(!page.contains("bob-key"));
    let csrf = keys.csrf();
    for action in ["block", "rotate"] {
        let page = b
            .post(
                &format!("/keys/{theirs}/{action}"),
                &[("csrf_token", &csrf)],
            )
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{action}");
    }
    let page = b
        .post(
            &format!("/keys/{theirs}/revoke"),
            &[("csrf_token", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(
        page.contains(&format!("no key with id `{theirs}`")),
        "{}",
        page.body
    );
    let page = b.get(&format!("/keys/{theirs}/secret")).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let record = s.key_record(&theirs).await;
    assert_eq!(record["blocked"], false);
    assert!(record["revoked_at"].is_null());

    // Their own: block, unblock, rotate, revoke.
    for (action, done) in [("block", "blocked"), ("unblock", "unblocked")] {
        let page = b
            .post(
                &format!("/keys/{mine}/{action}"),
                &[("csrf_token", &csrf), ("back", "/keys?q=ada")],
            )
            .await;
        redirected_to(&page, &format!("/ui/keys?q=ada&done={done}"));
    }
    // A `back` that leaves the keys pages is not followed.
    let page = b
        .post(
            &format!("/keys/{mine}/block"),
            &[("csrf_token", &csrf), ("back", "//evil.example/x")],
        )
        .await;
    redirected_to(&page, &format!("/ui/keys/{mine}?done=blocked"));
    // Without the browser's confirmation, revoking asks first, on a page.
    let page = b
        .post(&format!("/keys/{mine}/revoke"), &[("csrf_token", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.contains("Revoke the key ada-key?"));
    assert!(s.key_record(&mine).await["revoked_at"].is_null());
    let page = b
        .post(
            &format!("/keys/{mine}/revoke"),
            &[("csrf_token", &page.csrf()), ("confirm", "yes")],
        )
        .await;
    redirected_to(&page, &format!("/ui/keys/{mine}?done=revoked"));
    assert!(s.key_record(&mine).await["revoked_at"].is_string());
    s.t.stop().await;
}

#[tokio::test]
async fn a_role_change_applies_to_the_next_page() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.user("ada", "user").await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;
    assert!(b.get("/keys").await.contains("New key"));
    let (status, _) =
        s.t.admin(
            Method::PATCH,
            &format!("/admin/users/{ada}"),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let keys = b.get("/keys").await;
    assert!(!keys.contains("New key"));
    assert!(keys.contains(">viewer<"));
    let page = b
        .post("/keys", &[("csrf_token", &keys.csrf()), ("name", "k")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    s.t.stop().await;
}

async fn a_deleted_or_blocked_user_s_session_stops_at_once(db: Db) {
    let s = Stack::start(db, "").await;
    let ada = s.user("ada", "user").await;
    let bob = s.user("bob", "user").await;
    let a = s.browser();
    a.signed_in("ada", PASSWORD).await;
    let b = s.browser();
    b.signed_in("bob", PASSWORD).await;
    assert_eq!(a.get("/keys").await.status, StatusCode::OK);

    let (status, _) =
        s.t.admin(Method::DELETE, &format!("/admin/users/{ada}"), None)
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let page = a.get("/keys").await;
    redirected_to(&page, "/ui/login?next=%2Fkeys&ended=gone");
    assert!(page
        .set_cookie("tollgate_ui")
        .unwrap()
        .contains("Max-Age=0"));
    assert!(a
        .follow("/login?ended=gone")
        .await
        .contains("the account no longer exists"));

    let (status, _) =
        s.t.admin(
            Method::PATCH,
            &format!("/admin/users/{bob}"),
            Some(json!({"blocked": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    redirected_to(
        &b.get("/profile").await,
        "/ui/login?next=%2Fprofile&ended=blocked",
    );
    // Their rows are gone, not only refused.
    assert_eq!(s.sessions().await, 0);
    s.t.stop().await;
}

// ---- the key's secret -------------------------------------------------------------------

#[tokio::test]
async fn a_new_key_s_secret_is_shown_exactly_once() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "user").await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;

    let form = b.get("/keys/new").await;
    assert_eq!(form.status, StatusCode::OK);
    let page = b
        .post(
            "/keys",
            &[
                ("csrf_token", &form.csrf()),
                ("name", "laptop"),
                ("models", "gpt-4o, gpt-4o-mini"),
                ("rpm", "60"),
                ("tpm", ""),
                ("max_parallel", "3"),
                ("max_budget", "12.50"),
                ("budget_duration", "30d"),
                ("expires_at", "2099-01-01T00:00"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let location = page.location().unwrap().to_owned();
    let id = location
        .strip_prefix("/ui/keys/")
        .and_then(|r| r.strip_suffix("/secret"))
        .unwrap()
        .to_owned();
    assert!(!location.contains("sk-tg-"), "never in a URL");
    assert!(!page.body.contains("sk-tg-"));
    let cookie = page.set_cookie("tollgate_ui_secret").unwrap();
    assert!(
        cookie.contains(&format!("Path=/ui/keys/{id}/secret")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    let shown = b.get(&format!("/keys/{id}/secret")).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.headers["cache-control"], "no-store");
    let secret = extract_secret(&shown.body);
    assert_eq!(shown.body.matches(&secret).count(), 1, "{}", shown.body);
    assert!(shown
        .set_cookie("tollgate_ui_secret")
        .unwrap()
        .contains("Max-Age=0"));
    // It is the key's secret: it authenticates as the key.
    match s.t.app.auth.resolve(Some(&secret), None, 0).await {
        Ok(Principal::Key(key)) => assert_eq!(&*key.id, id.as_str()),
        _ => panic!("the shown secret is not the key's"),
    }
    let record = s.key_record(&id).await;
    assert_eq!(record["models"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(record["rpm"], 60);
    assert_eq!(record["max_parallel"], 3);
    assert_eq!(record["max_budget"], 12.5);
    assert_eq!(record["budget_duration"], "30d");
    assert_eq!(record["expires_at"], "2099-01-01T00:00:00Z");

    // Reloading shows that it is gone; no other page shows it.
    let again = b.get(&format!("/keys/{id}/secret")).await;
    assert_eq!(again.status, StatusCode::GONE);
    assert!(!again.contains(&secret));
    assert!(again.contains("shown once and cannot be shown again"));
    for path in [
        "/keys".to_owned(),
        format!("/keys/{id}"),
        "/profile".to_owned(),
    ] {
        assert!(!b.get(&path).await.contains(&secret), "{path}");
    }
    // Another key's secret page cannot be made to show a secret planted in the cookie.
    let (other, other_secret) = s.key(json!({"name": "other"})).await;
    let planted = s.browser();
    planted.signed_in("ada", PASSWORD).await;
    planted.set_cookie("tollgate_ui_secret", &other_secret);
    let page = planted.get(&format!("/keys/{id}/secret")).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(!page.contains(&other_secret));
    assert!(!s
        .audit("key.create")
        .await
        .iter()
        .any(|e| e.to_string().contains(&secret)));
    assert_ne!(other, id);

    // Rotation shows the new secret once, and the old one stops at once (no grace).
    let detail = b.get(&format!("/keys/{id}")).await;
    let page = b
        .post(
            &format!("/keys/{id}/rotate"),
            &[("csrf_token", &detail.csrf()), ("grace_seconds", "0")],
        )
        .await;
    redirected_to(&page, &format!("/ui/keys/{id}/secret"));
    let shown = b.get(&format!("/keys/{id}/secret")).await;
    let rotated = extract_secret(&shown.body);
    assert_ne!(rotated, secret);
    assert!(s.t.app.auth.resolve(Some(&rotated), None, 0).await.is_ok());
    assert!(s.t.app.auth.resolve(Some(&secret), None, 0).await.is_err());
    assert_eq!(
        b.get(&format!("/keys/{id}/secret")).await.status,
        StatusCode::GONE
    );
    s.t.stop().await;
}

fn extract_secret(body: &str) -> String {
    let start = body.find("sk-tg-").expect("a secret on the page");
    body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

#[tokio::test]
async fn the_create_form_says_what_is_wrong_and_keeps_what_was_typed() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "manager").await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;
    let csrf = b.get("/keys/new").await.csrf();
    for (fields, status, message) in [
        (
            vec![("name", ""), ("owner", "me")],
            400,
            "`name` must not be empty",
        ),
        (
            vec![("name", "k"), ("owner", "me"), ("rpm", "fast")],
            400,
            "`rpm` must be a whole number",
        ),
        (
            vec![("name", "k"), ("owner", "me"), ("rpm", "-1")],
            400,
            "`rpm` must be zero or more",
        ),
        (
            vec![("name", "k"), ("owner", "me"), ("max_parallel", "0")],
            400,
            "`max_parallel` must be 1 or more",
        ),
        (
            vec![
                ("name", "k"),
                ("owner", "me"),
                ("expires_at", "2001-01-01T00:00"),
            ],
            400,
            "is in the past",
        ),
        (
            vec![("name", "k"), ("owner", "me"), ("budget_duration", "2w")],
            400,
            "unknown budget_duration",
        ),
        (
            vec![("name", "k"), ("owner", "user"), ("owner_user", "bob")],
            400,
            "no user is named",
        ),
    ] {
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend(fields);
        let page = b.post("/keys", &all).await;
        assert_eq!(page.status.as_u16(), status, "{all:?}: {}", page.main());
        assert!(page.contains(message), "{all:?}: {}", page.main());
        assert!(page.contains("role=\"alert\""));
    }
    let page = b
        .post(
            "/keys",
            &[
                ("csrf_token", &csrf),
                ("name", "kept name"),
                ("rpm", "fast"),
            ],
        )
        .await;
    assert!(page.contains("value=\"kept name\""));
    assert!(page.contains("value=\"fast\""));
    let (_, keys) = s.t.admin(Method::GET, "/admin/keys", None).await;
    assert_eq!(keys["data"], json!([]));
    s.t.stop().await;
}

// ---- profile ----------------------------------------------------------------------------

#[tokio::test]
async fn the_profile_shows_who_you_are_and_changes_your_password() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.user("ada", "manager").await;
    let (_, team) =
        s.t.admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "research"})),
        )
        .await;
    let team = team["id"].as_str().unwrap().to_owned();
    s.t.admin(
        Method::POST,
        &format!("/admin/teams/{team}/members"),
        Some(json!({"user_id": ada, "role": "owner"})),
    )
    .await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;
    let elsewhere = s.browser();
    elsewhere.signed_in("ada", PASSWORD).await;
    let (status, tokens) =
        s.t.call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": "ada", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let profile = b.get("/profile").await;
    assert_eq!(profile.status, StatusCode::OK);
    for text in ["ada@example.com", ">manager<", "research", "(owner)"] {
        assert!(profile.contains(text), "{text}: {}", profile.main());
    }
    let csrf = profile.csrf();
    let change = |current: &'static str, new: &'static str, repeat: &'static str| {
        let csrf = csrf.clone();
        let b = &b;
        async move {
            b.post(
                "/profile/password",
                &[
                    ("csrf_token", csrf.as_str()),
                    ("current_password", current),
                    ("new_password", new),
                    ("repeat_password", repeat),
                ],
            )
            .await
        }
    };
    let page = change("Not-The-Password-1", "New-Password-42", "New-Password-42").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("invalid username, email or password"));
    let page = change(PASSWORD, "New-Password-42", "New-Password-43").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.contains("differ"));
    let page = change(PASSWORD, "short", "short").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.contains("at least 12 characters"), "{}", page.main());
    assert!(!page.contains("value=\"short\""));

    let page = change(PASSWORD, "New-Password-42", "New-Password-42").await;
    redirected_to(&page, "/ui/profile?done=password");
    assert!(b
        .get("/profile?done=password")
        .await
        .contains("Your password is changed"));
    // Every other session of hers ended: the other browser's, and her login tokens'.
    assert!(elsewhere
        .get("/keys")
        .await
        .location()
        .unwrap()
        .contains("ended=expired"));
    let (status, _) =
        s.t.call(
            Method::POST,
            "/v1/refresh",
            None,
            Some(json!({"refresh_token": tokens["refresh_token"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.get("/keys").await.status,
        StatusCode::OK,
        "this one continues"
    );
    let (status, _) =
        s.t.call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": "ada", "password": "New-Password-42"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    s.t.stop().await;
}

// ---- headers, prefix --------------------------------------------------------------------

fn assert_ui_headers(path: &str, page: &Page) {
    let header = |name: &str| {
        page.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: no {name}"))
            .to_owned()
    };
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{path}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    assert_eq!(header("referrer-policy"), "same-origin", "{path}");
    if !path.starts_with("/assets/") {
        assert_eq!(header("cache-control"), "no-store", "{path}");
    }
    if page
        .headers
        .get("content-type")
        .is_some_and(|t| t.to_str().unwrap().starts_with("text/html"))
    {
        // No inline script or style for the policy to refuse.
        assert!(!page.body.contains("<script>"), "{path}");
        assert!(!page.body.contains("style="), "{path}");
        assert!(!page.body.contains("<style"), "{path}");
        assert!(
            !has_inline_handler(&page.body),
            "{path}: an inline event handler"
        );
    }
}

/// Whether HTML holds an `on…=` attribute.
fn has_inline_handler(html: &str) -> bool {
    html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    })
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let s = Stack::start(Db::Sqlite, "").await;
    let ada = s.user("ada", "user").await;
    let (id, _) = s.key(json!({"name": "k", "user_id": ada})).await;
    let b = s.browser();
    let mut seen = Vec::new();
    for path in [
        "/",
        "/login",
        "/keys",
        "/nowhere",
        "/assets/tollgate.css",
        "/assets/tollgate.js",
    ] {
        seen.push((path.to_owned(), b.get(path).await));
    }
    let refused = b.sign_in("ada", "wrong-Password-1").await;
    seen.push(("a refused sign-in".into(), refused));
    seen.push(("a sign-in".into(), b.sign_in("ada", PASSWORD).await));
    for path in [
        "/".to_owned(),
        "/keys".into(),
        "/keys?q=k&status=active".into(),
        "/keys/new".into(),
        format!("/keys/{id}"),
        format!("/keys/{id}/secret"),
        "/keys/no-such-key".into(),
        "/profile".into(),
        "/nowhere".into(),
    ] {
        seen.push((path.clone(), b.get(&path).await));
    }
    let csrf = b.get("/keys").await.csrf();
    seen.push((
        "a refused post".into(),
        b.post("/keys", &[("csrf_token", "x")]).await,
    ));
    seen.push((
        "a post".into(),
        b.post(&format!("/keys/{id}/block"), &[("csrf_token", &csrf)])
            .await,
    ));
    for (path, page) in &seen {
        assert_ui_headers(path, page);
    }
    let keys = b.get("/keys").await;
    let css = b.get("/assets/tollgate.css").await;
    assert!(css.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    let versioned = b
        .get(&format!(
            "/assets/tollgate.css?v={}",
            keys.body
                .split("tollgate.css?v=")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        ))
        .await;
    assert!(versioned.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(
        b.get("/assets/none.css").await.status,
        StatusCode::NOT_FOUND
    );
    // The API keeps its own answers.
    let (status, body) = s.t.call(Method::GET, "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    s.t.stop().await;
}

#[tokio::test]
async fn a_path_prefix_is_applied_to_links_redirects_and_cookies() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "user").await;
    let b = Browser::behind(format!("http://{}", s.t.http), "/gateway");
    redirected_to(&b.get("/").await, "/gateway/ui/login");
    redirected_to(&b.get("/keys").await, "/gateway/ui/login?next=%2Fkeys");
    let login = b.get("/login").await;
    assert!(login.contains("action=\"/gateway/ui/login\""));
    assert!(login.contains("href=\"/gateway/ui/assets/tollgate.css?v="));
    assert!(login
        .set_cookie("tollgate_ui_signin")
        .unwrap()
        .contains("Path=/gateway/ui;"));
    // The sign-in cookie is handed over explicitly, as the proxy passes it on.
    let token = login
        .set_cookie("tollgate_ui_signin")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = b
        .post_with(
            "/login",
            &[
                ("csrf_token", &login.csrf()),
                ("username", "ada"),
                ("password", PASSWORD),
            ],
            &[("cookie", &token), ("origin", &b.origin)],
        )
        .await;
    redirected_to(&page, "/gateway/ui/keys");
    let session = page.set_cookie("tollgate_ui").unwrap();
    assert!(session.contains("Path=/gateway/ui;"), "{session}");
    let cookie = session.split(';').next().unwrap().to_owned();
    let keys = Browser::behind(format!("http://{}", s.t.http), "/gateway");
    let page = keys
        .post_with("/logout", &[("csrf_token", "x")], &[("cookie", &cookie)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = keys_page(&keys, &cookie).await;
    assert!(page.contains("href=\"/gateway/ui/keys/new\""));
    assert!(page.contains("action=\"/gateway/ui/logout\""));
    assert!(!page.contains("\"/ui/"), "every link carries the prefix");

    // A prefix that is not a plain path is ignored, never copied into the page.
    for hostile in [
        "//evil.example",
        "/a/../b",
        "/x\"><script>",
        "/a b",
        "https://evil.example",
    ] {
        let page = s
            .browser()
            .get_with_header("/login", "x-forwarded-prefix", hostile)
            .await;
        assert!(page.contains("action=\"/ui/login\""), "{hostile}");
        assert!(!page.contains("evil"), "{hostile}");
    }
    // TLS at the proxy: cookies are Secure.
    let page = s
        .browser()
        .get_with_header("/login", "x-forwarded-proto", "https")
        .await;
    assert!(page
        .set_cookie("tollgate_ui_signin")
        .unwrap()
        .contains("; Secure"));
    s.t.stop().await;
}

async fn keys_page(b: &Browser, cookie: &str) -> Page {
    b.get_with_header("/keys", "cookie", cookie).await
}

#[tokio::test]
async fn secure_cookies_can_be_required_by_config() {
    let s = Stack::start(Db::Sqlite, "ui: { secure_cookies: always }\n").await;
    let login = s.browser().get("/login").await;
    assert!(login
        .set_cookie("tollgate_ui_signin")
        .unwrap()
        .contains("; Secure"));
    s.t.stop().await;
}

// ---- many keys --------------------------------------------------------------------------

async fn pages_and_search_over_thousands_of_keys(db: Db) {
    const KEYS: usize = 3000;
    let s = Stack::start(db, "").await;
    let ada = s.user("ada", "user").await;
    let mut made = 0;
    while made < KEYS {
        let batch: Vec<Value> = (made..made + 1000)
            .map(|i| {
                let mut key = json!({"name": format!("key-{i:04}")});
                if i % 10 == 0 {
                    key["user_id"] = json!(ada);
                }
                key
            })
            .collect();
        let (status, body) =
            s.t.admin(
                Method::POST,
                "/admin/keys/bulk",
                Some(json!({"keys": batch})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        made += 1000;
    }
    let (_, all) = s.t.admin(Method::GET, "/admin/keys", None).await;
    let ids: std::collections::HashMap<String, String> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_owned(),
                k["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ids.len(),
        KEYS,
        "without paging parameters: every key, as before"
    );
    assert!(all.get("next_after").is_none());
    let (status, _) =
        s.t.admin(
            Method::POST,
            &format!("/admin/keys/{}/block", ids["key-0001"]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        s.t.admin(
            Method::DELETE,
            &format!("/admin/keys/{}", ids["key-0002"]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let b = s.browser();
    b.sign_in_master(MASTER_KEY).await;
    // Every page, following "Older keys": each key once, newest first.
    let mut names = Vec::new();
    let mut path = "/keys".to_owned();
    let mut pages = 0;
    loop {
        let page = b.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        names.extend(row_names(&page));
        pages += 1;
        match link(&page, "Older keys") {
            Some(next) => path = next,
            None => break,
        }
        if pages == 2 {
            // "Newer keys" goes back to exactly the first page.
            let newer = link(&page, "Newer keys").expect("a link back");
            let first = b.get(&newer).await;
            assert_eq!(row_names(&first), names[..50].to_vec());
            assert!(link(&first, "Newer keys").is_none());
        }
    }
    assert_eq!(
        pages,
        (KEYS - 1).div_ceil(50),
        "{KEYS} keys but one revoked, 50 a page"
    );
    let expected: Vec<String> = (0..KEYS)
        .rev()
        .filter(|i| *i != 2)
        .map(|i| format!("key-{i:04}"))
        .collect();
    assert_eq!(names, expected);

    // Search: a part of the name, case aside.
    let found = row_names(&b.get("/keys?q=KEY-12").await);
    assert_eq!(found.len(), 50, "a full first page");
    assert!(found.iter().all(|n| n.starts_with("key-12")), "{found:?}");
    let all_found = walk(&b, "/keys?q=key-12").await;
    assert_eq!(all_found.len(), 100, "key-1200 to key-1299");
    // The start of an id, and a part of the hint.
    let id = &ids["key-1234"];
    let page = b.get(&format!("/keys?q={}", &id[..30])).await;
    assert!(row_names(&page).contains(&"key-1234".to_owned()));
    let (_, key) =
        s.t.admin(Method::GET, &format!("/admin/keys/{id}"), None)
            .await;
    let hint = key["key_hint"].as_str().unwrap();
    let tail = hint.rsplit('…').next().unwrap();
    assert!(row_names(&b.get(&format!("/keys?q={tail}")).await).contains(&"key-1234".to_owned()));
    // LIKE's wildcards match themselves.
    assert!(row_names(&b.get("/keys?q=key_1").await).is_empty());
    assert!(row_names(&b.get("/keys?q=%25").await).is_empty());

    // Status and owner filters.
    assert_eq!(
        row_names(&b.get("/keys?status=blocked").await),
        ["key-0001"]
    );
    assert_eq!(
        row_names(&b.get("/keys?status=revoked").await),
        ["key-0002"]
    );
    assert!(row_names(&b.get("/keys?status=expired").await).is_empty());
    let theirs = walk(&b, "/keys?user=ada").await;
    assert_eq!(theirs.len(), KEYS / 10);
    assert!(theirs.iter().all(|n| n.ends_with('0')));
    let by_email = walk(&b, "/keys?user=ada%40example.com&q=key-29").await;
    assert_eq!(
        by_email,
        [
            "key-2990", "key-2980", "key-2970", "key-2960", "key-2950", "key-2940", "key-2930",
            "key-2920", "key-2910", "key-2900"
        ]
    );
    let page = b.get("/keys?user=nobody").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.contains("No user is named"));

    // The API pages the same way: `limit`, `after`, `before`.
    let (status, page) =
        s.t.admin(Method::GET, "/admin/keys?limit=2&q=key-29", None)
            .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["name"], "key-2999");
    assert!(page["prev_before"].is_null());
    let after = page["next_after"].as_str().unwrap();
    let (_, next) =
        s.t.admin(
            Method::GET,
            &format!("/admin/keys?limit=2&q=key-29&after={after}"),
            None,
        )
        .await;
    assert_eq!(next["data"][0]["name"], "key-2997");
    let before = next["prev_before"].as_str().unwrap();
    let (_, back) =
        s.t.admin(
            Method::GET,
            &format!("/admin/keys?limit=2&q=key-29&before={before}"),
            None,
        )
        .await;
    assert_eq!(back["data"], page["data"]);
    for (query, message) in [
        ("limit=0", "`limit` must be from 1 to 1000"),
        ("limit=1001", "`limit` must be from 1 to 1000"),
        ("after=a&before=b", "not both"),
        ("status=lost", "unknown variant"),
        ("q=%00", "control characters"),
    ] {
        let (status, body) =
            s.t.admin(Method::GET, &format!("/admin/keys?{query}"), None)
                .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(message),
            "{query}: {body}"
        );
    }
    // A user's own listing pages too.
    let (status, tokens) =
        s.t.call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": "ada", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = tokens["access_token"].as_str().unwrap();
    let (status, own) =
        s.t.call(
            Method::GET,
            "/v1/user/keys?limit=5&status=active",
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["data"].as_array().unwrap().len(), 5);
    assert_eq!(own["data"][0]["name"], "key-2990");
    assert!(own["next_after"].is_string());
    s.t.stop().await;
}

/// The key names of a listing page, in order.
fn row_names(page: &Page) -> Vec<String> {
    let body = page.main();
    let Some(start) = body.find("<tbody>") else {
        return Vec::new();
    };
    body[start..]
        .split("<td><a href=\"")
        .skip(1)
        .filter_map(|cell| {
            let name = cell.split("\">").nth(1)?;
            Some(name.split("</a>").next()?.to_owned())
        })
        .collect()
}

/// The link (under the UI) whose text is `text`.
fn link(page: &Page, text: &str) -> Option<String> {
    let end = page.body.find(&format!(
        "\" rel=\"{}\">{text}</a>",
        if text.starts_with("Older") {
            "next"
        } else {
            "prev"
        }
    ))?;
    let start = page.body[..end].rfind("href=\"")? + "href=\"".len();
    // The page writes `&` in an attribute as an entity, as HTML allows.
    let href = page.body[start..end]
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    Some(href.strip_prefix("/ui").unwrap_or(&href).to_owned())
}

/// Every name of a listing, page after page.
async fn walk(b: &Browser, start: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut path = start.to_owned();
    for _ in 0..100 {
        let page = b.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.main());
        names.extend(row_names(&page));
        match link(&page, "Older keys") {
            Some(next) => path = next,
            None => return names,
        }
    }
    panic!("more than 100 pages from {start}");
}

// ---- hostile input ----------------------------------------------------------------------

#[tokio::test]
async fn hostile_input_gets_a_clear_error_and_changes_nothing() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "user").await;
    let b = s.browser();
    b.signed_in("ada", PASSWORD).await;
    let csrf = b.get("/keys").await.csrf();
    let keys_now = || async {
        let (_, keys) =
            s.t.admin(Method::GET, "/admin/keys?include_revoked=true", None)
                .await;
        keys["data"].as_array().unwrap().len()
    };

    // A body over 64 KiB: refused before it is read further.
    let huge = "x".repeat(200 * 1024);
    let page = b
        .post("/keys", &[("csrf_token", &csrf), ("name", &huge)])
        .await;
    assert_eq!(
        page.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        page.main()
    );
    assert!(page.contains("larger than 64 KiB"));
    // A long field within the limit: the API's own message.
    let long = "x".repeat(10 * 1024);
    let page = b
        .post("/keys", &[("csrf_token", &csrf), ("name", &long)])
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.contains("`name` is longer than 200 characters"));

    // Bytes that are not UTF-8, a NUL: refused, named.
    let body = format!("csrf_token={csrf}&name=%FF%FEkey").into_bytes();
    let page = b.post_raw("/keys", body, &[("origin", &b.origin)]).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("`name` is not valid UTF-8"),
        "{}",
        page.main()
    );
    let mut raw = format!("csrf_token={csrf}&name=").into_bytes();
    raw.extend_from_slice(&[0xC3, 0x28]);
    let page = b.post_raw("/keys", raw, &[("origin", &b.origin)]).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    let page = b
        .post("/keys", &[("csrf_token", &csrf), ("name", "a\0b")])
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.contains("control characters"));
    // Another encoding than a form's.
    let page = b
        .post_with_type(
            "/keys",
            "multipart/form-data; boundary=x",
            &format!("csrf_token={csrf}"),
        )
        .await;
    assert_eq!(page.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Markup is shown as text.
    let page = b
        .post(
            "/keys",
            &[
                ("csrf_token", &csrf),
                ("name", "<script>alert(1)</script>"),
                ("rpm", "x"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(!page.contains("<script>alert(1)"));
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") || page.contains("&#60;script&#62;")
    );
    assert_eq!(keys_now().await, 0);

    // SQL in a search is text to look for.
    s.key(json!({"name": "real"})).await;
    for q in [
        "'; DROP TABLE api_keys; --",
        "\" OR 1=1 --",
        "%' OR '1'='1",
        "\\",
        "é’‽",
    ] {
        let page = b.get(&format!("/keys?{}", encode(&[("q", q)]))).await;
        assert_eq!(page.status, StatusCode::OK, "{q}");
        assert!(row_names(&page).is_empty(), "{q}");
    }
    let page = b
        .get(&format!("/keys?{}", encode(&[("q", &"q".repeat(201))])))
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.contains("`q` is longer than 200 characters"));
    let page = b.get("/keys?q=%FF%FE").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.main());
    assert!(page.contains("not valid UTF-8"));
    let page = b.get("/keys?status=everything").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.contains("unknown key status"));
    let page = b.get("/keys/%FF").await;
    assert!(page.status.is_client_error(), "{}", page.status);
    assert_eq!(keys_now().await, 1);
    // The table is intact: the master's listing still reads it.
    let (status, _) = s.t.admin(Method::GET, "/admin/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    s.t.stop().await;
}
