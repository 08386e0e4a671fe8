//! tollgate's own login sessions over a real listener: registration, login, refresh
//! rotation and reuse detection, logout, lockout and unlock, login rate limits, signing
//! secret rotation, password change, the bootstrap admin, and what the audit log keeps.

mod common;

use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, OnceLock};

const SECRET: &str = "session-secret-0123456789-0123456789-abcdef";
const OLD_SECRET: &str = "older-secret-0123456789-0123456789-abcdefgh";
const PASSWORD: &str = "Correct-Horse-42";

fn config(extra: &str) -> String {
    format!("auth:\n  session: {{ secret: {SECRET} }}\n{extra}")
}

async fn start(extra: &str) -> Tollgate {
    Tollgate::start(&config(extra)).await
}

/// Creates a user with `PASSWORD` through the admin API; returns its id.
async fn user(t: &Tollgate, username: &str) -> String {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "role": "user",
        "password": PASSWORD,
    });
    let (status, user) = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    user["id"].as_str().unwrap().to_owned()
}

async fn login(t: &Tollgate, body: Value) -> (StatusCode, Value) {
    t.call(Method::POST, "/v1/login", None, Some(body)).await
}

/// Logs in and returns `(access_token, refresh_token)`.
async fn tokens(t: &Tollgate, username: &str, password: &str) -> (String, String) {
    let (status, body) = login(t, json!({"username": username, "password": password})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn refresh(t: &Tollgate, token: &str) -> (StatusCode, Value) {
    t.call(
        Method::POST,
        "/v1/refresh",
        None,
        Some(json!({ "refresh_token": token })),
    )
    .await
}

async fn profile(t: &Tollgate, access: &str) -> (StatusCode, Value) {
    t.call(Method::GET, "/v1/user/profile", Some(access), None)
        .await
}

async fn audit(t: &Tollgate, action: &str) -> Vec<Value> {
    let (status, body) = t
        .admin(
            Method::GET,
            &format!("/admin/audit?action={action}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn routes_answer_sessions_disabled_without_auth_session() {
    let t = Tollgate::start("").await;
    for (method, path) in [
        (Method::POST, "/v1/login"),
        (Method::POST, "/v1/register"),
        (Method::POST, "/v1/refresh"),
        (Method::POST, "/v1/logout"),
        (Method::PUT, "/v1/user/password"),
    ] {
        let (status, body) = t.call(method, path, None, Some(json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(code(&body), "sessions_disabled", "{path}: {body}");
    }
    // The profile also serves OIDC users, so it exists without sessions.
    let (status, body) = t.call(Method::GET, "/v1/user/profile", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    t.stop().await;
}

#[tokio::test]
async fn registration_is_off_by_default_and_checks_the_policy_when_on() {
    let closed = start("").await;
    let body = json!({"username": "eve", "email": "eve@example.com", "password": PASSWORD});
    let (status, answer) = closed
        .call(Method::POST, "/v1/register", None, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(code(&answer), "registration_disabled");
    closed.stop().await;

    let open = start("  allow_registration: true\n").await;
    let (status, user) = open
        .call(Method::POST, "/v1/register", None, Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["role"], "user");
    assert_eq!(user["username"], "eve");
    assert!(user.get("password_hash").is_none());
    let (status, _) = open
        .call(Method::POST, "/v1/register", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    for (password, expected) in [
        ("Sh0rt!", "at least 12 characters"),
        ("alllowercaseletters", "upper-case letter"),
    ] {
        let (status, answer) = open
            .call(
                Method::POST,
                "/v1/register",
                None,
                Some(
                    json!({"username": "mallory", "email": "m@example.com", "password": password}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains(password), "{message}");
    }
    // The registered user can log in.
    tokens(&open, "eve", PASSWORD).await;
    open.stop().await;
}

#[tokio::test]
async fn login_by_username_or_email_and_one_answer_for_bad_credentials() {
    let t = start("").await;
    let id = user(&t, "ada").await;
    let (status, by_name) = login(&t, json!({"username": "ada", "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::OK, "{by_name}");
    assert_eq!(by_name["token_type"], "bearer");
    assert_eq!(by_name["expires_in"], 900);
    assert!(by_name["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("tg-rt-"));
    let (status, by_email) = login(
        &t,
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{by_email}");

    let (status, me) = profile(&t, by_email["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], id.as_str());

    let (wrong_status, wrong) = login(
        &t,
        json!({"username": "ada", "password": "Not-The-Password-1"}),
    )
    .await;
    let (unknown_status, unknown) =
        login(&t, json!({"username": "nobody", "password": PASSWORD})).await;
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&wrong), "invalid_credentials");
    assert_eq!(wrong, unknown);

    assert_eq!(audit(&t, "auth.login").await.len(), 2);
    let failures = audit(&t, "auth.login_failed").await;
    assert_eq!(failures.len(), 2);
    assert!(failures
        .iter()
        .any(|e| e["details"]["username"] == "nobody"));
    assert!(failures.iter().all(|e| e["source"] == "127.0.0.1"));
    t.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let t = start("").await;
    let id = user(&t, "grace").await;
    let (_, first) = tokens(&t, "grace", PASSWORD).await;
    let (status, second) = refresh(&t, &first).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first);
    assert_eq!(profile(&t, &second_access).await.0, StatusCode::OK);

    // The used token again: refused, and the whole family goes with it.
    let (status, answer) = refresh(&t, &first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(code(&answer), "invalid_refresh_token");
    let (status, _) = refresh(&t, &second_refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // This process also refuses the family's access tokens at once.
    assert_eq!(
        profile(&t, &second_access).await.0,
        StatusCode::UNAUTHORIZED
    );

    let reuse = audit(&t, "auth.refresh_reuse").await;
    assert!(!reuse.is_empty());
    assert_eq!(reuse.last().unwrap()["target"], id.as_str());

    let (status, _) = refresh(&t, "tg-rt-not-a-real-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    t.stop().await;
}

#[tokio::test]
async fn logout_ends_the_access_and_refresh_tokens() {
    let t = start("").await;
    user(&t, "hedy").await;
    let (access, refresh_token) = tokens(&t, "hedy", PASSWORD).await;
    let (other_access, _) = tokens(&t, "hedy", PASSWORD).await;
    let (status, _) = t
        .call(
            Method::POST,
            "/v1/logout",
            Some(&access),
            Some(json!({ "refresh_token": refresh_token })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(profile(&t, &access).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&t, &refresh_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Another session of the same user is untouched.
    assert_eq!(profile(&t, &other_access).await.0, StatusCode::OK);
    assert_eq!(audit(&t, "auth.logout").await.len(), 1);

    let (status, _) = t.call(Method::POST, "/v1/logout", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    t.stop().await;
}

#[tokio::test]
async fn lockout_after_repeated_failures_until_an_admin_unlocks() {
    let t = start("  login: { max_failures: 3, lockout: 10m }\n").await;
    let id = user(&t, "linus").await;
    for _ in 0..3 {
        let (status, _) = login(
            &t,
            json!({"username": "linus", "password": "Wrong-Password-9"}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Locked: even the right password is refused, with the answer of a wrong one.
    let (status, answer) = login(&t, json!({"username": "linus", "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(code(&answer), "invalid_credentials");

    // Admins see the lock: on the user record and in the audit log.
    let (_, shown) = t
        .admin(Method::GET, &format!("/admin/users/{id}"), None)
        .await;
    assert!(shown["locked_until"].is_string(), "{shown}");
    let lockouts = audit(&t, "auth.lockout").await;
    assert_eq!(lockouts.len(), 1);
    assert_eq!(lockouts[0]["target"], id.as_str());
    let failures = audit(&t, "auth.login_failed").await;
    let locked: Vec<&Value> = failures
        .iter()
        .filter(|e| e["details"]["reason"] == "locked")
        .collect();
    assert_eq!(locked.len(), 1, "{failures:?}");
    assert_eq!(locked[0]["target"], id.as_str());

    let (status, unlocked) = t
        .admin(Method::POST, &format!("/admin/users/{id}/unlock"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{unlocked}");
    assert!(unlocked["locked_until"].is_null());
    assert_eq!(audit(&t, "user.unlock").await.len(), 1);
    tokens(&t, "linus", PASSWORD).await;

    let (status, _) = t
        .admin(Method::POST, "/admin/users/no-such-user/unlock", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.stop().await;
}

/// `POST /v1/login` sent as is: the status, every header but `date`, the body bytes, and
/// how long the answer took.
async fn login_answer(t: &Tollgate, body: Value) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
    let response = common::upstream::client()
        .post(format!("http://{}/v1/login", t.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = response.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

#[tokio::test]
async fn unknown_wrong_and_locked_logins_answer_alike() {
    let t = start(
        "  login: { max_failures: 1, lockout: 5m, per_address_per_minute: 1000, per_account_per_minute: 1000 }\n",
    )
    .await;
    user(&t, "ken").await;
    user(&t, "kim").await;
    let wrong = json!({"username": "kim", "password": "Wrong-Password-9"});
    let unknown = json!({"username": "nobody", "password": PASSWORD});
    let unknown_email = json!({"email": "nobody@example.com", "password": PASSWORD});
    // One failure locks ken.
    let (status, _, _) = login_answer(
        &t,
        json!({"username": "ken", "password": "Wrong-Password-9"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let locked_right = json!({"username": "ken", "password": PASSWORD});
    let locked_wrong = json!({"email": "ken@example.com", "password": "Wrong-Password-9"});

    let (status, headers, body) = login_answer(&t, unknown.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code(&parsed), "invalid_credentials", "{parsed}");
    assert!(
        !headers.iter().any(|(name, _)| name == "retry-after"),
        "{headers:?}"
    );
    for attempt in [&locked_right, &locked_wrong, &unknown_email, &wrong] {
        let (s, h, b) = login_answer(&t, attempt.clone()).await;
        assert_eq!(
            (s, &h, String::from_utf8_lossy(&b)),
            (status, &headers, String::from_utf8_lossy(&body)),
            "{attempt}"
        );
    }

    t.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let t = start("  login: { per_address_per_minute: 3, per_account_per_minute: 100 }\n").await;
    user(&t, "barbara").await;
    for i in 0..3 {
        let (status, _) = login(
            &t,
            json!({"username": format!("guess{i}"), "password": "Whatever-123"}),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = common::upstream::client()
        .post(format!("http://{}/v1/login", t.http))
        .json(&json!({"username": "barbara", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "rate_limited");
    t.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_account() {
    let t = start(
        "  login: { per_address_per_minute: 100, per_account_per_minute: 2, max_failures: 50 }\n",
    )
    .await;
    user(&t, "katherine").await;
    for _ in 0..2 {
        login(
            &t,
            json!({"username": "katherine", "password": "Wrong-Password-9"}),
        )
        .await;
    }
    let (status, body) = login(
        &t,
        json!({"email": "katherine@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    t.stop().await;
}

#[tokio::test]
async fn signing_secret_rotation_keeps_old_tokens_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!(
        "database: {{ url: \"sqlite://{}\" }}\n",
        dir.path().join("s.db").display()
    );
    let old = Tollgate::start(&format!(
        "{db}auth:\n  session: {{ secret: {OLD_SECRET} }}\n"
    ))
    .await;
    user(&old, "margaret").await;
    let (access, _) = tokens(&old, "margaret", PASSWORD).await;
    old.stop().await;

    let rotated = Tollgate::start(&format!(
        "{db}auth:\n  session: {{ secret: {SECRET}, previous_secrets: [{OLD_SECRET}] }}\n"
    ))
    .await;
    assert_eq!(profile(&rotated, &access).await.0, StatusCode::OK);
    // New tokens are signed with the new secret.
    let (fresh, _) = tokens(&rotated, "margaret", PASSWORD).await;
    rotated.stop().await;

    let removed = Tollgate::start(&format!("{db}auth:\n  session: {{ secret: {SECRET} }}\n")).await;
    let (status, answer) = profile(&removed, &access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(profile(&removed, &fresh).await.0, StatusCode::OK);
    removed.stop().await;
}

#[tokio::test]
async fn password_change_needs_the_current_password_and_ends_other_sessions() {
    let t = start("").await;
    user(&t, "barbara").await;
    let (mine, my_refresh) = tokens(&t, "barbara", PASSWORD).await;
    let (other, other_refresh) = tokens(&t, "barbara", PASSWORD).await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/user/password",
            Some(&mine),
            Some(change("Wrong-Password-9", "Brand-New-Pass-7")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/user/password",
            Some(&mine),
            Some(change(PASSWORD, "short")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/user/password",
            Some(&mine),
            Some(change(PASSWORD, "Brand-New-Pass-7")),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    assert_eq!(profile(&t, &mine).await.0, StatusCode::OK);
    assert_eq!(refresh(&t, &my_refresh).await.0, StatusCode::OK);
    assert_eq!(profile(&t, &other).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&t, &other_refresh).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = login(&t, json!({"username": "barbara", "password": PASSWORD})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    tokens(&t, "barbara", "Brand-New-Pass-7").await;
    assert_eq!(audit(&t, "user.password").await.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn profile_update_changes_only_what_a_user_may_change() {
    let t = start("").await;
    user(&t, "alan").await;
    let (access, _) = tokens(&t, "alan", PASSWORD).await;
    let (status, me) = t
        .call(
            Method::PUT,
            "/v1/user/profile",
            Some(&access),
            Some(json!({"full_name": "Alan Turing", "email": "alan@bletchley.example"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["full_name"], "Alan Turing");
    let (status, body) = t
        .call(
            Method::PUT,
            "/v1/user/profile",
            Some(&access),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    t.stop().await;
}

#[tokio::test]
async fn bootstrap_admin_is_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "database: {{ url: \"sqlite://{}\" }}\nauth:\n  session: {{ secret: {SECRET} }}\n  bootstrap_admin: {{ username: root, email: root@example.com, password: {PASSWORD} }}\n",
        dir.path().join("b.db").display()
    );
    let first = Tollgate::start(&yaml).await;
    let (access, _) = tokens(&first, "root", PASSWORD).await;
    let (_, me) = profile(&first, &access).await;
    assert_eq!(me["role"], "admin");
    first.stop().await;

    let second = Tollgate::start(&yaml).await;
    let (_, users) = second.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(users["data"].as_array().unwrap().len(), 1);
    let created = audit(&second, "user.create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["actor"], "bootstrap");
    assert_eq!(created[0]["details"]["password_set"], true);
    second.stop().await;
}

#[tokio::test]
async fn no_password_token_or_hash_in_the_audit_log() {
    let t = start("  allow_registration: true\n  login: { max_failures: 2 }\n").await;
    let (status, _) = t
        .call(
            Method::POST,
            "/v1/register",
            None,
            Some(json!({"username": "ursula", "email": "u@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (access, refresh_token) = tokens(&t, "ursula", PASSWORD).await;
    let (status, rotated) = refresh(&t, &refresh_token).await;
    assert_eq!(status, StatusCode::OK);
    refresh(&t, &refresh_token).await;
    let wrong = "Secret-Guess-Password-1";
    login(&t, json!({"username": "ursula", "password": wrong})).await;
    login(&t, json!({"username": "ursula", "password": wrong})).await;
    t.call(
        Method::PUT,
        "/v1/user/password",
        Some(&access),
        Some(json!({"current_password": PASSWORD, "new_password": "Another-Pass-88"})),
    )
    .await;
    let (_, all) = t.admin(Method::GET, "/admin/audit?limit=1000", None).await;
    let text = all.to_string();
    for needle in [
        PASSWORD,
        wrong,
        "Another-Pass-88",
        "argon2",
        access.as_str(),
        refresh_token.as_str(),
        rotated["refresh_token"].as_str().unwrap(),
        SECRET,
    ] {
        assert!(!text.contains(needle), "the audit log contains {needle}");
    }
    for action in [
        "auth.login",
        "auth.login_failed",
        "auth.lockout",
        "auth.refresh_reuse",
    ] {
        assert!(text.contains(action), "no {action} in {text}");
    }
    t.stop().await;
}

/// Everything logged in this test binary from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("tollgate=trace,sqlx=debug,info")
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_password_token_or_hash_in_the_logs() {
    let logs = captured_logs();
    let t = start("  login: { max_failures: 2 }\n").await;
    user(&t, "logan").await;
    let (access, refresh_token) = tokens(&t, "logan", PASSWORD).await;
    let (_, rotated) = refresh(&t, &refresh_token).await;
    refresh(&t, &refresh_token).await;
    let wrong = "Logged-Guess-Password-1";
    login(&t, json!({"username": "logan", "password": wrong})).await;
    login(&t, json!({"username": "logan", "password": wrong})).await;
    login(&t, json!({"username": "logan", "password": PASSWORD})).await;
    profile(&t, &access).await;
    t.stop().await;

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("refresh token reused"), "{text}");
    for needle in [
        PASSWORD,
        wrong,
        "argon2",
        access.as_str(),
        refresh_token.as_str(),
        rotated["refresh_token"].as_str().unwrap(),
        SECRET,
    ] {
        assert!(!text.contains(needle), "the logs contain {needle}");
    }
}
