//! Passkeys in the web UI, over HTTP as `passkey.js` speaks it (JSON posts with the CSRF
//! token in `x-csrf-token`), with the software authenticator of
//! tests/common/authenticator.rs, against a real tollgate on SQLite and Postgres: a passkey
//! added on the profile, signing in with it, renaming and deleting it; ceremonies bound to
//! the browser, replays, forged origins, a blocked user, the master key, the attempt limit,
//! hostile requests, and a UI behind a TLS proxy with `ui.rp_id`. chromium's own WebAuthn
//! drives the same routes in tests/ui_sign_in_browser.rs.

mod common;

use common::authenticator::{Answer, SoftAuthenticator};
use common::ui::{redirected_to, Browser, Db, Page, Stack, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_stores!(a_passkey_added_on_the_profile_signs_in);

/// The UI as a browser reaches it at `localhost`: passkeys need a host name.
fn at_localhost(s: &Stack) -> Browser {
    Browser::new(format!("http://localhost:{}", s.t.http.port()))
}

/// A browser signed in with `name`'s password at `localhost`.
async fn signed_in(s: &Stack, name: &str) -> Browser {
    let b = at_localhost(s);
    b.signed_in(name, PASSWORD).await;
    b
}

fn create_answer(b: &Browser) -> Answer {
    Answer::create(&b.origin, "localhost")
}

fn get_answer(b: &Browser) -> Answer {
    Answer::get(&b.origin, "localhost")
}

/// Adds a passkey of a new authenticator on `b`'s profile; the authenticator and the
/// finish answer.
async fn add_passkey(b: &Browser, name: &str) -> (SoftAuthenticator, Value) {
    let profile = b.get("/profile").await;
    let csrf = profile
        .attribute("data-csrf-token")
        .expect("the passkey button");
    let options = b
        .post_json("/profile/passkeys/options", &csrf, &json!({}))
        .await;
    assert_eq!(options.status, StatusCode::OK, "{}", options.body);
    let mut authenticator = SoftAuthenticator::new();
    let body = authenticator.create(&options.json(), &create_answer(b), Some(name));
    let finished = b.post_json("/profile/passkeys/finish", &csrf, &body).await;
    assert_eq!(finished.status, StatusCode::CREATED, "{}", finished.body);
    (authenticator, finished.json())
}

/// The sign-in page's CSRF token for scripts, and the options of a passkey sign-in.
async fn sign_in_options(b: &Browser) -> (String, Page) {
    let login = b.get("/login").await;
    let csrf = login
        .attribute("data-csrf-token")
        .expect("the passkey button");
    let options = b
        .post_json("/login/passkey/options", &csrf, &json!({}))
        .await;
    (csrf, options)
}

/// Signs in on `b` with `authenticator`'s passkey; the finish answer.
async fn sign_in_with(b: &Browser, authenticator: &mut SoftAuthenticator, next: &str) -> Page {
    let (csrf, options) = sign_in_options(b).await;
    assert_eq!(options.status, StatusCode::OK, "{}", options.body);
    let body = authenticator.get(&options.json(), &get_answer(b));
    b.post_json(&format!("/login/passkey/finish?next={next}"), &csrf, &body)
        .await
}

async fn a_passkey_added_on_the_profile_signs_in(db: Db) {
    let s = Stack::start(db, "").await;
    s.user("ada", "user").await;
    let b = signed_in(&s, "ada").await;

    let profile = b.get("/profile").await;
    assert!(
        profile.contains("You have no passkeys yet"),
        "{}",
        profile.main()
    );
    assert_eq!(
        profile.attribute("data-options-url").as_deref(),
        Some("/ui/profile/passkeys/options")
    );
    assert!(profile.contains("src=\"/ui/assets/passkey.js?v="));
    let options = b
        .post_json(
            "/profile/passkeys/options",
            &profile.attribute("data-csrf-token").unwrap(),
            &json!({}),
        )
        .await;
    let public_key = &options.json()["publicKey"];
    assert_eq!(
        public_key["rp"],
        json!({"id": "localhost", "name": "tollgate"})
    );
    assert_eq!(public_key["user"]["name"], "ada");
    assert_eq!(public_key["attestation"], "none");

    let (mut authenticator, added) = add_passkey(&b, "Laptop").await;
    assert_eq!(added["redirect"], "/ui/profile?done=passkey_added");
    assert_eq!(added["passkey"]["name"], "Laptop");
    let id = added["passkey"]["id"].as_str().unwrap().to_owned();
    let profile = b.get("/profile?done=passkey_added").await;
    assert!(
        profile.contains("The passkey is added"),
        "{}",
        profile.main()
    );
    assert!(profile.contains("Laptop"));
    assert_eq!(s.audit("passkey.create").await.len(), 1);

    // A new browser signs in with it, without a name, and goes on to `next`.
    let other = at_localhost(&s);
    let finished = sign_in_with(&other, &mut authenticator, "%2Fusage").await;
    assert_eq!(finished.status, StatusCode::OK, "{}", finished.body);
    assert_eq!(finished.json(), json!({"redirect": "/ui/usage"}));
    let cookie = finished.set_cookie("tollgate_ui").expect("a session");
    for part in ["HttpOnly", "SameSite=Lax", "Path=/ui"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(finished
        .set_cookie("tollgate_ui_signin")
        .unwrap()
        .contains("Max-Age=0"));
    let usage = other.get("/usage").await;
    assert_eq!(usage.status, StatusCode::OK);
    assert!(usage.contains("Signed in as <strong>ada</strong>"));
    assert_eq!(s.audit("ui.login").await[0]["details"]["method"], "passkey");
    let login = &s.audit("auth.login").await[0];
    assert_eq!(login["details"]["method"], "passkey");
    assert_eq!(login["details"]["passkey"], id.as_str());

    // Renamed, then deleted after the confirmation page (without JavaScript).
    let renamed = other
        .submit(
            "/profile",
            &format!("/profile/passkeys/{id}/rename"),
            &[("name", "Work laptop")],
        )
        .await;
    redirected_to(&renamed, "/ui/profile?done=passkey_renamed");
    assert!(other.get("/profile").await.contains("Work laptop"));
    let bad = other
        .submit(
            "/profile",
            &format!("/profile/passkeys/{id}/rename"),
            &[("name", &"x".repeat(65))],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.contains("64"), "{}", bad.main());

    let delete = format!("/profile/passkeys/{id}/delete");
    let ask = other.submit("/profile", &delete, &[]).await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(
        ask.contains("Delete the passkey Work laptop?"),
        "{}",
        ask.main()
    );
    let deleted = other
        .submit("/profile", &delete, &[("confirm", "yes")])
        .await;
    redirected_to(&deleted, "/ui/profile?done=passkey_deleted");
    assert!(other
        .get("/profile")
        .await
        .contains("You have no passkeys yet"));

    // It no longer signs in.
    let third = at_localhost(&s);
    let refused = sign_in_with(&third, &mut authenticator, "%2Fkeys").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    assert_eq!(
        refused.json()["error"]["message"],
        "The passkey was refused: unknown passkey."
    );
    assert!(refused.set_cookie("tollgate_ui").is_none());
}

#[tokio::test]
async fn ceremonies_are_bound_used_once_and_checked() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "user").await;
    let b = signed_in(&s, "ada").await;
    let (mut authenticator, _) = add_passkey(&b, "Key").await;

    // Options fetched in one browser, answered from another: refused, no session.
    let one = at_localhost(&s);
    let (_, options) = sign_in_options(&one).await;
    let two = at_localhost(&s);
    let (csrf_two, _) = sign_in_options(&two).await;
    let body = authenticator.get(&options.json(), &get_answer(&one));
    let page = two
        .post_json("/login/passkey/finish", &csrf_two, &body)
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    assert!(page.body.contains("started elsewhere"), "{}", page.body);

    // A replayed answer finds its challenge used.
    let three = at_localhost(&s);
    let (csrf, options) = sign_in_options(&three).await;
    let body = authenticator.get(&options.json(), &get_answer(&three));
    let first = three.post_json("/login/passkey/finish", &csrf, &body).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = at_localhost(&s);
    let (csrf_again, _) = sign_in_options(&again).await;
    let replay = again
        .post_json("/login/passkey/finish", &csrf_again, &body)
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(replay.body.contains("already used"), "{}", replay.body);

    // clientDataJSON from another origin (a phishing site relaying the ceremony).
    let four = at_localhost(&s);
    let (csrf, options) = sign_in_options(&four).await;
    let mut answer = get_answer(&four);
    answer.origin = "http://localhost:1".into();
    let body = authenticator.get(&options.json(), &answer);
    let page = four.post_json("/login/passkey/finish", &csrf, &body).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("http://localhost:1"), "{}", page.body);

    // A registration answer made for another session is refused.
    let other_session = signed_in(&s, "ada").await;
    let csrf_b = b
        .get("/profile")
        .await
        .attribute("data-csrf-token")
        .unwrap();
    let csrf_other = other_session
        .get("/profile")
        .await
        .attribute("data-csrf-token")
        .unwrap();
    let options = b
        .post_json("/profile/passkeys/options", &csrf_b, &json!({}))
        .await;
    let body = SoftAuthenticator::new().create(&options.json(), &create_answer(&b), None);
    let page = other_session
        .post_json("/profile/passkeys/finish", &csrf_other, &body)
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert_eq!(page.json()["error"]["type"], "invalid_request");

    // A blocked user's passkey does not sign in, and the refusal is audited.
    let (_, users) = s.t.admin(Method::GET, "/admin/users", None).await;
    let ada = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "ada")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.t.admin(
        Method::PATCH,
        &format!("/admin/users/{ada}"),
        Some(json!({"blocked": true})),
    )
    .await;
    let five = at_localhost(&s);
    let page = sign_in_with(&five, &mut authenticator, "%2Fkeys").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert_eq!(page.json()["error"]["message"], "This account is blocked.");
    let failed = s.audit("auth.login_failed").await;
    assert_eq!(failed[0]["details"]["method"], "passkey");
    assert_eq!(failed[0]["details"]["reason"], "blocked");
}

#[tokio::test]
async fn script_requests_are_refused_before_anything_is_stored() {
    let s = Stack::start(Db::Sqlite, "").await;
    s.user("ada", "user").await;
    let b = at_localhost(&s);
    let (csrf, _) = sign_in_options(&b).await;
    let challenges = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM passkey_challenges")
            .fetch_one(s.db.pool())
            .await
            .unwrap()
    };
    let before = challenges().await;

    // No or a wrong CSRF token, another site's Origin, a form body, too large a body.
    let page = b.post_json("/login/passkey/options", "", &json!({})).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(page.json()["error"]["type"], "permission_denied");
    let page = b
        .post_json("/login/passkey/options", &"0".repeat(64), &json!({}))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = b
        .post_raw(
            "/login/passkey/options",
            b"{}".to_vec(),
            &[
                ("origin", "https://evil.example"),
                ("x-csrf-token", &csrf),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    let page = b
        .post_raw(
            "/login/passkey/options",
            b"username=ada".to_vec(),
            &[("origin", &b.origin), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({ "username": "a".repeat(70 * 1024) });
    let page = b.post_json("/login/passkey/options", &csrf, &huge).await;
    assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Malformed answers name what is wrong.
    for (body, says) in [
        (json!({"username": 5}), "username"),
        (json!("ada"), "wrong type"),
    ] {
        let page = b.post_json("/login/passkey/options", &csrf, &body).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(page.body.contains(says), "{body}: {}", page.body);
    }
    let page = b
        .post_json(
            "/login/passkey/finish",
            &csrf,
            &json!({"credential": {"id": "'; DROP TABLE users; --"}}),
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert_eq!(challenges().await, before, "nothing stored for refusals");

    // The profile's routes need a session (JSON, not a redirect), and the master key has
    // no passkeys.
    let page = b
        .post_json("/profile/passkeys/options", &csrf, &json!({}))
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    let master = at_localhost(&s);
    let signed = master.sign_in_master(common::tollgate::MASTER_KEY).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER);
    let csrf = master.get("/keys").await.csrf();
    let page = master
        .post_json("/profile/passkeys/options", &csrf, &json!({}))
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("master key"), "{}", page.body);

    // Reached by IP address, passkeys cannot work (browsers refuse IP relying parties).
    let by_ip = s.browser();
    let login = by_ip.get("/login").await;
    let csrf = login.attribute("data-csrf-token").unwrap();
    let page = by_ip
        .post_json("/login/passkey/options", &csrf, &json!({}))
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(
        page.body
            .contains("Passkeys cannot be used at this address"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn sign_in_requests_are_limited_per_client_address() {
    let s = Stack::start_with(Db::Sqlite, "  login: { per_address_per_minute: 3 }\n", "").await;
    let b = at_localhost(&s);
    let (csrf, first) = sign_in_options(&b).await;
    assert_eq!(first.status, StatusCode::OK);
    for _ in 0..2 {
        let page = b
            .post_json("/login/passkey/options", &csrf, &json!({}))
            .await;
        assert_eq!(page.status, StatusCode::OK);
    }
    let page = b
        .post_json("/login/passkey/options", &csrf, &json!({}))
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.headers.contains_key("retry-after"));
    assert_eq!(page.json()["error"]["type"], "rate_limit_exceeded");
}

#[tokio::test]
async fn behind_a_tls_proxy_with_a_configured_rp_id() {
    let s = Stack::start(Db::Sqlite, "ui: { rp_id: example.com }\n").await;
    s.user("ada", "user").await;
    let served = s.origin();
    let b = Browser::proxied(served.clone(), "https://ui.example.com");
    b.signed_in("ada", PASSWORD).await;
    let profile = b.get("/profile").await;
    let csrf = profile.attribute("data-csrf-token").unwrap();
    let options = b
        .post_json("/profile/passkeys/options", &csrf, &json!({}))
        .await;
    assert_eq!(options.status, StatusCode::OK, "{}", options.body);
    assert_eq!(options.json()["publicKey"]["rp"]["id"], "example.com");
    let mut authenticator = SoftAuthenticator::new();
    let body = authenticator.create(
        &options.json(),
        &Answer::create("https://ui.example.com", "example.com"),
        None,
    );
    let page = b.post_json("/profile/passkeys/finish", &csrf, &body).await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);

    // Another name under the same parent domain signs in with it.
    let other = Browser::proxied(served, "https://gateway.example.com");
    let login = other.get("/login").await;
    let csrf = login.attribute("data-csrf-token").unwrap();
    let options = other
        .post_json("/login/passkey/options", &csrf, &json!({}))
        .await;
    let body = authenticator.get(
        &options.json(),
        &Answer::get("https://gateway.example.com", "example.com"),
    );
    let page = other.post_json("/login/passkey/finish", &csrf, &body).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let cookie = page.set_cookie("tollgate_ui").unwrap();
    assert!(cookie.contains("Secure"), "over TLS: {cookie}");
}
