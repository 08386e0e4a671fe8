//! "Sign in with SSO" in the web UI, end to end: the sign-in page's button, `GET
//! /ui/auth/sso/{provider}` → a real OpenID Provider's sign-in form (npm's oidc-provider,
//! `tests/browser/oidc_provider.mjs`) → `GET /ui/auth/callback` → a browser session, on
//! SQLite and Postgres; the browser-token cookie, replays, another browser, the provider's
//! refusal, a blocked user, a path prefix, the attempt limit, and a gateway without SSO.
//! The flow's own checks (PKCE, state, nonce, tokens) are tested in tests/sso.rs.
//! Needs `cd tests/browser && npm ci` once.

mod common;

use common::envoy::free_port;
use common::oidc_provider::{self, OidcProvider, PUBLIC_CLIENT};
use common::ui::{redirected_to, Browser, Db, Page, Stack};
use reqwest::{Method, StatusCode};
use serde_json::json;
use url::Url;

const BASIC_AND_POST: &[&str] = &["client_secret_basic", "client_secret_post"];

on_both_stores!(signing_in_with_sso);

/// A tollgate whose UI signs in at a provider started for it (its public client, button
/// `corp`), reached at `prefix`; `auth_lines` go under `auth:` beside `oidc`.
async fn setup(db: Db, prefix: &str, auth_lines: &str) -> (Stack, OidcProvider) {
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}{prefix}/ui/auth/callback");
    let provider = OidcProvider::start(&redirect_uri, BASIC_AND_POST).await;
    let oidc = format!(
        "  oidc:\n    - issuer: {}\n      ui: {{ client_id: {PUBLIC_CLIENT}, scopes: [groups], name: corp }}\n      auto_provision: true\n      group_to_role: {{ platform-admin: admin }}\n{auth_lines}",
        provider.issuer
    );
    let http = format!("127.0.0.1:{port}").parse().unwrap();
    let s = Stack::start_at(db, &oidc, "", http).await;
    (s, provider)
}

/// Starts a sign-in from the UI and signs in at the provider as `login` (Cancel when
/// `None`): the start's answer, and the path under the UI (with the query) the provider
/// sends the browser back to.
async fn through_provider(
    b: &Browser,
    provider: &OidcProvider,
    start: &str,
    login: Option<&str>,
) -> (Page, String) {
    let started = b.get(start).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let authorization = started.location().unwrap().to_owned();
    assert!(
        authorization.starts_with(&provider.issuer),
        "{authorization}"
    );
    let at_provider = oidc_provider::Browser::new(&provider.redirect_uri);
    let callback = at_provider.sign_in(&authorization, login).await.callback();
    (started, under_ui(b, &callback))
}

/// The path under the UI a URL of it names (`/auth/callback?…`).
fn under_ui(b: &Browser, url: &Url) -> String {
    let path = url
        .path()
        .strip_prefix(&format!("{}/ui", b.prefix))
        .unwrap_or_else(|| panic!("not a page of the UI: {url}"));
    format!("{path}?{}", url.query().unwrap_or_default())
}

async fn signing_in_with_sso(db: Db) {
    let (s, provider) = setup(db, "", "").await;
    let b = s.browser();

    let login = b.get("/login?next=%2Fusage").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(
        login.contains("href=\"/ui/auth/sso/corp?next=%2Fusage\""),
        "{}",
        login.main()
    );
    assert!(login.contains("Sign in with corp"));

    let (started, callback) =
        through_provider(&b, &provider, "/auth/sso/corp?next=%2Fusage", Some("alice")).await;
    let cookie = started
        .set_cookie("tollgate_ui_sso")
        .expect("a browser token");
    for part in ["HttpOnly", "SameSite=Lax", "Path=/ui/auth", "Max-Age=600"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let authorization = Url::parse(started.location().unwrap()).unwrap();
    let param = |name: &str| {
        authorization
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("redirect_uri").as_deref(),
        Some(provider.redirect_uri.as_str())
    );
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));

    let back = b.get(&callback).await;
    redirected_to(&back, "/ui/usage");
    assert!(back.set_cookie("tollgate_ui").is_some());
    let cleared = back.set_cookie("tollgate_ui_sso").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(s.sessions().await, 1);

    // Signed in as the provisioned user, an admin through the group.
    let usage = b.get("/usage").await;
    assert_eq!(usage.status, StatusCode::OK);
    assert!(
        usage.contains("Signed in as <strong>alice"),
        "{}",
        usage.body
    );
    let profile = b.get("/profile").await;
    assert!(profile.contains("alice@example.com"), "{}", profile.main());
    assert!(
        profile.contains("This account has no password"),
        "an SSO account is not offered a password change: {}",
        profile.main()
    );
    assert!(!profile.contains("Change the password"));
    let logins = s.audit("ui.login").await;
    assert_eq!(logins[0]["details"]["method"], "sso", "{logins:?}");
    assert_eq!(s.audit("auth.login").await[0]["details"]["method"], "sso");

    // The same callback again: the state was used.
    let replay = b.get(&callback).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{}", replay.body);
    assert!(
        replay.contains("unknown or was already used"),
        "{}",
        replay.main()
    );
    assert_eq!(s.sessions().await, 1);

    // Signing out and in again finds the same user.
    b.submit("/profile", "/logout", &[]).await;
    let (_, callback) = through_provider(&b, &provider, "/auth/sso/corp", Some("alice")).await;
    redirected_to(&b.get(&callback).await, "/ui/keys");
    let (_, users) = s.t.admin(Method::GET, "/admin/users", None).await;
    let alices = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["email"] == "alice@example.com")
        .count();
    assert_eq!(alices, 1, "{users}");
}

#[tokio::test]
async fn refusals_are_shown_on_the_sign_in_page() {
    let (s, provider) = setup(Db::Sqlite, "", "").await;

    // The callback reaches another browser (a link sent by someone else): no session.
    let b = s.browser();
    let (_, callback) = through_provider(&b, &provider, "/auth/sso/corp", Some("alice")).await;
    let other = s.browser();
    let page = other.get(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(
        page.contains("started in another browser"),
        "{}",
        page.main()
    );
    assert!(
        page.contains("<h1>Sign in</h1>"),
        "shown on the sign-in page"
    );
    assert_eq!(s.sessions().await, 0);
    // The state was taken: the right browser cannot use it after that either.
    assert_eq!(b.get(&callback).await.status, StatusCode::BAD_REQUEST);

    // Cancelled at the provider.
    let (_, callback) = through_provider(&b, &provider, "/auth/sso/corp", None).await;
    assert!(callback.contains("error=access_denied"), "{callback}");
    let page = b.get(&callback).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert!(
        page.contains("The sign-in provider refused the sign-in: access_denied"),
        "{}",
        page.main()
    );

    // No such provider.
    let page = b.get("/auth/sso/nope").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(
        page.contains("There is no sign-in provider"),
        "{}",
        page.main()
    );

    // A blocked user is refused after signing in at the provider.
    let (_, callback) = through_provider(&b, &provider, "/auth/sso/corp", Some("alice")).await;
    redirected_to(&b.get(&callback).await, "/ui/keys");
    b.submit("/keys", "/logout", &[]).await;
    let (_, users) = s.t.admin(Method::GET, "/admin/users", None).await;
    let alice = users["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) =
        s.t.admin(
            Method::PATCH,
            &format!("/admin/users/{alice}"),
            Some(json!({"blocked": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, callback) = through_provider(&b, &provider, "/auth/sso/corp", Some("alice")).await;
    let page = b.get(&callback).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.contains("This account is blocked"), "{}", page.main());
    assert_eq!(s.sessions().await, 0);
    let failed = s.audit("auth.login_failed").await;
    assert_eq!(failed[0]["details"]["reason"], "blocked", "{failed:?}");

    // A callback with a query a browser does not send is refused, not misread.
    let page = b.get("/auth/callback?state=%FF").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn behind_a_path_prefix() {
    let (s, provider) = setup(Db::Sqlite, "/gateway", "").await;
    let b = Browser::behind(s.origin(), "/gateway");
    let login = b.get("/login").await;
    assert!(
        login.contains("href=\"/gateway/ui/auth/sso/corp?next=%2Fkeys\""),
        "{}",
        login.main()
    );
    let (started, callback) = through_provider(
        &b,
        &provider,
        "/auth/sso/corp?next=%2Fprofile",
        Some("alice"),
    )
    .await;
    let cookie = started.set_cookie("tollgate_ui_sso").unwrap();
    assert!(cookie.contains("Path=/gateway/ui/auth;"), "{cookie}");
    // tollgate is reached here without the proxy, so the browser would not send a cookie
    // of /gateway/ui back: hand it over as the proxy would pass it.
    let pair = |cookie: &str| cookie.split(';').next().unwrap().to_owned();
    let back = b.get_with_header(&callback, "cookie", &pair(&cookie)).await;
    redirected_to(&back, "/gateway/ui/profile");
    let session = back.set_cookie("tollgate_ui").unwrap();
    assert!(session.contains("Path=/gateway/ui;"), "{session}");
    let profile = b
        .get_with_header("/profile", "cookie", &pair(&session))
        .await;
    assert_eq!(profile.status, StatusCode::OK, "{}", profile.body);
    assert!(profile.contains("alice@example.com"));
}

#[tokio::test]
async fn starts_are_limited_per_client_address() {
    let (s, _provider) = setup(Db::Sqlite, "", "  login: { per_address_per_minute: 2 }\n").await;
    let b = s.browser();
    for _ in 0..2 {
        assert_eq!(b.get("/auth/sso/corp").await.status, StatusCode::SEE_OTHER);
    }
    let page = b.get("/auth/sso/corp").await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.headers.contains_key("retry-after"));
    assert!(
        page.contains("Too many sign-in attempts"),
        "{}",
        page.main()
    );
}

#[tokio::test]
async fn a_gateway_without_sso_offers_none() {
    let s = Stack::start(Db::Sqlite, "").await;
    let b = s.browser();
    let login = b.get("/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(!login.contains("single sign-on"), "{}", login.main());
    for path in ["/auth/sso/0", "/auth/callback?state=x&code=y"] {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(page.contains("not configured"), "{}", page.main());
    }
}
