//! assets/ui/passkey.js in a real browser: Debian's chromium, driven by playwright-core
//! (tests/browser/passkeys.mjs) with a virtual WebAuthn authenticator, registers a passkey
//! and signs in with it against the real ceremonies of `authn::passkey` and a SQLite store.
//!
//! The routes here are a stand-in for the web UI's (which wires the same calls behind its
//! sessions and CSRF protection): a page with the passkey controls, the script, and the
//! four JSON endpoints of the script's contract, guarded by a fixed CSRF token.
//!
//! Needs chromium (`TOLLGATE_CHROMIUM`, default /usr/bin/chromium) and
//! `npm ci` in tests/browser; fails saying so when either is missing.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tollgate::authn::passkey::{
    AuthenticationRequest, AuthenticationStart, PasskeyError, Passkeys, RegistrationRequest,
    RelyingParty,
};
use tollgate::domain::User;
use tollgate::store::{Actor, AuditFilter, NewUser, SharedStore};

const SCRIPT: &str = include_str!("../assets/ui/passkey.js");
const CSRF: &str = "csrf-0123456789";

/// How long a ceremony may take here: short, so the "cancelled" step (an authenticator that
/// never answers) ends by the browser's timeout within the test.
const CEREMONY_SECS: i64 = 15;

struct Site {
    store: SharedStore,
    passkeys: Passkeys,
    rp: RelyingParty,
    ann: User,
}

fn page() -> Html<String> {
    let control = |id: &str, ceremony: &str, path: &str, extra: &str| {
        format!(
            r##"<button type="button" id="{id}" data-passkey="{ceremony}" data-options-url="{path}/options" data-finish-url="{path}" data-status="#status" {extra}>{id}</button>"##
        )
    };
    Html(format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="csrf-token" content="{CSRF}">
<title>passkeys</title><script src="/ui/assets/passkey.js" defer></script></head>
<body>
<input id="passkey-name"> {register}
<input id="username"> {sign_in} {bad}
<p id="status"></p>
</body></html>"#,
        register = control(
            "register",
            "register",
            "/register",
            r##"data-name-input="#passkey-name" data-redirect="/done?after=register""##
        ),
        sign_in = control(
            "sign-in",
            "sign-in",
            "/login",
            r##"data-username-input="#username""##
        ),
        bad = control(
            "sign-in-bad-csrf",
            "sign-in",
            "/login",
            r#"data-csrf-token="wrong" data-csrf-header="x-csrf-token""#
        ),
    ))
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": "passkey", "message": message}})),
    )
        .into_response()
}

fn failed(e: PasskeyError) -> Response {
    match e {
        PasskeyError::Refused(r) => error(StatusCode::BAD_REQUEST, &r.to_string()),
        PasskeyError::Store(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The page's CSRF token is in the request's `x-csrf-token` header.
fn csrf_ok(headers: &HeaderMap) -> bool {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) == Some(CSRF)
}

fn csrf_refused() -> Response {
    error(StatusCode::FORBIDDEN, "CSRF token missing or wrong")
}

async fn register_options(State(site): State<Arc<Site>>, headers: HeaderMap) -> Response {
    if !csrf_ok(&headers) {
        return csrf_refused();
    }
    match site
        .passkeys
        .start_registration(&site.rp, &site.ann, None, tollgate::domain::now())
        .await
    {
        Ok(options) => Json(options).into_response(),
        Err(e) => failed(e),
    }
}

async fn register_finish(
    State(site): State<Arc<Site>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !csrf_ok(&headers) {
        return csrf_refused();
    }
    let request = match RegistrationRequest::from_json(&body) {
        Ok(r) => r,
        Err(r) => return error(StatusCode::BAD_REQUEST, &r.to_string()),
    };
    let actor = Actor::new(format!("user:{}", site.ann.id), None);
    match site
        .passkeys
        .finish_registration(
            &site.rp,
            &actor,
            &site.ann,
            &request,
            None,
            tollgate::domain::now(),
        )
        .await
    {
        Ok(passkey) => Json(json!({ "passkey": passkey })).into_response(),
        Err(e) => failed(e),
    }
}

async fn login_options(State(site): State<Arc<Site>>, headers: HeaderMap, body: Bytes) -> Response {
    if !csrf_ok(&headers) {
        return csrf_refused();
    }
    let start = match AuthenticationStart::from_json(&body) {
        Ok(s) => s,
        Err(r) => return error(StatusCode::BAD_REQUEST, &r.to_string()),
    };
    match site
        .passkeys
        .start_authentication(
            &site.rp,
            start.username.as_deref(),
            None,
            tollgate::domain::now(),
        )
        .await
    {
        Ok(options) => Json(options).into_response(),
        Err(e) => failed(e),
    }
}

async fn login_finish(State(site): State<Arc<Site>>, headers: HeaderMap, body: Bytes) -> Response {
    if !csrf_ok(&headers) {
        return csrf_refused();
    }
    let request = match AuthenticationRequest::from_json(&body) {
        Ok(r) => r,
        Err(r) => return error(StatusCode::BAD_REQUEST, &r.to_string()),
    };
    match site
        .passkeys
        .finish_authentication(
            &site.rp,
            &Actor::new("anonymous", None),
            &request,
            None,
            tollgate::domain::now(),
        )
        .await
    {
        Ok(login) => Json(json!({ "redirect": format!("/done?user={}", login.user.username) }))
            .into_response(),
        Err(e) => failed(e),
    }
}

#[tokio::test]
async fn passkey_js_registers_and_signs_in_in_chromium() {
    common::chromium::chromium();
    let (store, _dir, _url) = common::db::fresh_sqlite().await;
    let store: SharedStore = Arc::new(store);
    let ann = store
        .create_user(
            &Actor::new("master", None),
            NewUser {
                username: "ann".to_string(),
                email: "ann@example.com".to_string(),
                ..NewUser::default()
            },
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Browsers refuse IP addresses as relying party ids; localhost is a secure context.
    let base = format!("http://localhost:{port}");
    let site = Arc::new(Site {
        store: store.clone(),
        passkeys: Passkeys::new(store.clone()).with_challenge_ttl(CEREMONY_SECS),
        rp: RelyingParty::new("localhost", "tollgate tests", &[&base]).unwrap(),
        ann: ann.clone(),
    });
    let app = Router::new()
        .route("/", get(|| async { page() }))
        .route(
            "/ui/assets/passkey.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }),
        )
        .route("/done", get(|| async { Html("<p>done</p>") }))
        .route("/register/options", post(register_options))
        .route("/register", post(register_finish))
        .route("/login/options", post(login_options))
        .route("/login", post(login_finish))
        .with_state(site.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    common::chromium::run(
        "passkeys.mjs",
        &[("TOLLGATE_PASSKEYS_URL", base.clone())],
        Duration::from_secs(180),
    )
    .await
    .unwrap_or_else(|failed| panic!("{failed}"));
    server.abort();

    // What the browser did, as the store saw it.
    let passkeys = site.passkeys.list(&ann.id).await.unwrap();
    assert_eq!(passkeys.len(), 1, "one passkey registered");
    assert_eq!(passkeys[0].name, "Virtual authenticator");
    assert_eq!(
        passkeys[0].algorithm, -7,
        "chromium's virtual authenticator uses ES256"
    );
    assert!(passkeys[0].last_used_at.is_some(), "and signed in with");
    assert!(
        passkeys[0].sign_count >= 2,
        "its counter moved: {}",
        passkeys[0].sign_count
    );
    let created = site
        .store
        .list_audit(AuditFilter {
            action: Some("passkey.create".to_string()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
}
