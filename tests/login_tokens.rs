//! Login tokens (session access tokens and tokens of an OIDC issuer) end to end: through a
//! real Envoy, in Check called directly, and on the user API; every way a token is refused,
//! OIDC provisioning and group sync, roles, an unreachable issuer, and self-service keys
//! created with a token (docs/DESIGN.md, "Login tokens in Check", "OIDC users", "OIDC").

mod common;

use common::envoy::Envoy;
use common::metrics::sample;
use common::oidc_issuer::{segment, TestIssuer, AUDIENCE};
use common::tollgate::{Tollgate, MASTER_KEY};
use common::upstream::post_json;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use tollgate::authn::session::{kid_of, AccessClaims};
use tollgate::domain::Role;
use tollgate::mock_llm::MockLlm;
use tollgate::secret::Secret;

const SESSION_SECRET: &str = "session-secret-0123456789-0123456789-abcdef";
const PASSWORD: &str = "Correct-Horse-42";
/// `auth.max_token_bytes` of every tollgate here (the default is 8 KiB).
const MAX_TOKEN_BYTES: usize = 4096;
/// The email of the issuer's default claims ([`TestIssuer::claims`]).
const ADA: &str = "ada@example.com";
const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;

const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `claims` with the fields of `extra` set (a `null` removes the field).
fn with(mut claims: Value, extra: Value) -> Value {
    let map = claims.as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    claims
}

/// A tollgate with `auth.session` and one OIDC issuer, `issuer_yaml` being extra keys of
/// the issuer's entry (indented by 6 spaces).
fn config(issuer_url: &str, issuer_yaml: &str) -> String {
    format!(
        "auth:\n  max_token_bytes: {MAX_TOKEN_BYTES}\n  session: {{ secret: {SESSION_SECRET} }}\n  oidc:\n    - issuer: {issuer_url}\n      audiences: [{AUDIENCE}]\n      algorithms: [RS256, ES256, EdDSA, PS256]\n{issuer_yaml}"
    )
}

const AUTO_PROVISION: &str = "      auto_provision: true\n";

/// A test issuer and a tollgate that trusts it (and has sessions).
struct Env {
    issuer: TestIssuer,
    t: Tollgate,
}

impl Env {
    async fn start(issuer_yaml: &str) -> Env {
        let issuer = TestIssuer::start().await;
        let t = Tollgate::start(&config(&issuer.url(), issuer_yaml)).await;
        // App::start read the issuer's keys once, before serving.
        assert_eq!(issuer.jwks_fetches(), 1);
        Env { issuer, t }
    }

    /// A valid RS256 token with the issuer's default claims and `extra`.
    fn token(&self, extra: Value) -> String {
        let claims = with(self.issuer.claims(now()), extra);
        self.issuer.token(&claims, Algorithm::RS256, "rsa-a")
    }

    /// The default claims with `extra`, unsigned (to tamper with).
    fn claims(&self, extra: Value) -> Value {
        with(self.issuer.claims(now()), extra)
    }

    /// Asserts that `token` is refused with 401 both in Check (`invalid_api_key`) and on
    /// the user API (`unauthorized`), both messages naming `reason`, and that the refused
    /// token provisioned nobody.
    async fn refused_everywhere(&self, token: &str, reason: &str) {
        assert_refused_in_check(&self.t, token, reason).await;
        assert_refused_by_api(&self.t, token, reason).await;
        assert_eq!(
            user_by_email(&self.t, ADA).await,
            None,
            "a refused token must not provision a user"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Check, called directly

fn check_request(headers: &[(&str, &str)], path: &str, body: &str) -> CheckRequest {
    common::check::request(headers, path, body)
}

/// Check of a chat completion with `authorization: Bearer <credential>`.
async fn check(t: &Tollgate, credential: &str) -> Result<CheckResponse, tonic::Status> {
    let authorization = format!("Bearer {credential}");
    t.app
        .gate
        .check(&check_request(
            &[("authorization", &authorization)],
            "/v1/chat/completions",
            CHAT,
        ))
        .await
}

/// The headers set and removed by an allowed Check.
fn allowed(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an allowed response, got {response:?}");
    };
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    let set = ok
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (set, ok.headers_to_remove.clone())
}

/// The HTTP status, headers and JSON body of a denied Check.
fn denied(response: &CheckResponse) -> (i32, HashMap<String, String>, Value) {
    let Some(HttpResponse::DeniedResponse(d)) = &response.http_response else {
        panic!("expected a denied response, got {response:?}");
    };
    let headers = d
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (
        d.status.as_ref().unwrap().code,
        headers,
        serde_json::from_str(&d.body).unwrap(),
    )
}

/// Asserts that Check allows `credential` as a person: `x-tollgate-user-id` is `user_id`,
/// no key or team header, and the credential headers are removed.
async fn assert_person_allowed(t: &Tollgate, credential: &str, user_id: &str) {
    let response = check(t, credential).await.expect("an answer");
    let (set, removed) = allowed(&response);
    assert_eq!(
        set.get("x-tollgate-user-id").map(String::as_str),
        Some(user_id)
    );
    assert_eq!(set.get("x-tollgate-key-id"), None, "{set:?}");
    assert_eq!(set.get("x-tollgate-team-id"), None, "{set:?}");
    for header in [
        "x-tollgate-key-id",
        "x-tollgate-team-id",
        "authorization",
        "x-api-key",
        "api-key",
    ] {
        assert!(
            removed.contains(&header.to_owned()),
            "{header}: {removed:?}"
        );
    }
}

/// Asserts a 401 `invalid_api_key` from Check whose message names `reason`.
async fn assert_refused_in_check(t: &Tollgate, token: &str, reason: &str) {
    let response = check(t, token)
        .await
        .expect("a refused token is an answer, not UNAVAILABLE");
    assert_eq!(response.status.as_ref().unwrap().code, GRPC_UNAUTHENTICATED);
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "{message:?} should name {reason:?}"
    );
    assert!(!message.contains(token), "the token leaked into {message}");
}

/// Asserts a 403 `permission_denied` from Check whose message names `reason`.
async fn assert_forbidden_in_check(t: &Tollgate, credential: &str, reason: &str) {
    let response = check(t, credential).await.expect("an answer");
    assert_eq!(
        response.status.as_ref().unwrap().code,
        GRPC_PERMISSION_DENIED
    );
    let (status, _, body) = denied(&response);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "{message:?} should name {reason:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The HTTP API

/// Calls the HTTP API with `authorization: Bearer <credential>`; answers the status,
/// headers and JSON body.
async fn api(
    t: &Tollgate,
    method: Method,
    path: &str,
    credential: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = common::upstream::client()
        .request(method, format!("http://{}{path}", t.http))
        .bearer_auth(credential);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("HTTP API reachable");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, value)
}

async fn profile(t: &Tollgate, token: &str) -> (StatusCode, HeaderMap, Value) {
    api(t, Method::GET, "/v1/user/profile", token, None).await
}

/// Asserts 401 `unauthorized` from `GET /v1/user/profile` whose message names `reason`.
async fn assert_refused_by_api(t: &Tollgate, token: &str, reason: &str) {
    let (status, headers, body) = profile(t, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(reason),
        "{message:?} should name {reason:?}"
    );
    assert!(!message.contains(token), "the token leaked into {message}");
}

/// The user with this email, from `GET /admin/users` as master.
async fn user_by_email(t: &Tollgate, email: &str) -> Option<Value> {
    let (status, body) = t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .cloned()
}

/// The id of the user with this email; panics when there is none.
async fn user_id_by_email(t: &Tollgate, email: &str) -> String {
    let user = user_by_email(t, email)
        .await
        .unwrap_or_else(|| panic!("no user with email {email}"));
    user["id"].as_str().unwrap().to_owned()
}

/// Creates a user with `PASSWORD` through the admin API; returns its id.
async fn user_with_password(t: &Tollgate, username: &str, role: &str) -> String {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "role": role,
        "password": PASSWORD,
    });
    let (status, user) = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    user["id"].as_str().unwrap().to_owned()
}

/// Logs in with `PASSWORD`; returns the access token.
async fn login(t: &Tollgate, username: &str) -> String {
    let body = json!({"username": username, "password": PASSWORD});
    let (status, answer) = t.call(Method::POST, "/v1/login", None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["access_token"].as_str().unwrap().to_owned()
}

/// A session access token signed with `SESSION_SECRET` (as tollgate signs them: HS256,
/// `kid` = first 16 hex of SHA-256(secret)) for `user_id`, valid from `iat` to `exp`.
fn session_token(user_id: &str, iss: &str, iat: i64, exp: i64) -> String {
    let claims = AccessClaims {
        iss: iss.to_owned(),
        sub: user_id.to_owned(),
        iat,
        nbf: iat,
        exp,
        jti: format!("jti-{iat}-{exp}"),
        sid: "minted-by-the-test".to_owned(),
        typ: "access".to_owned(),
        role: Role::User,
        username: "minted".to_owned(),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid_of(&Secret::new(SESSION_SECRET)));
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SESSION_SECRET.as_bytes()),
    )
    .unwrap()
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

// ---------------------------------------------------------------------------------------
// 1. Through a real Envoy

struct Stack {
    env: Env,
    mock: MockLlm,
    envoy: Envoy,
}

async fn stack() -> Stack {
    let env = Env::start(AUTO_PROVISION).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", env.t.grpc, mock.addr).await;
    Stack { env, mock, envoy }
}

async fn chat_through(s: &Stack, token: &str) -> (StatusCode, HeaderMap, Value) {
    let authorization = format!("Bearer {token}");
    post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[("authorization", &authorization)],
        &serde_json::from_str(CHAT).unwrap(),
    )
    .await
}

fn assert_envoy_401(status: StatusCode, headers: &HeaderMap, body: &Value) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
}

/// Asserts the upstream's last request came from `user_id` as a person: no key id, no
/// team id, and no client credential.
fn assert_upstream_saw_person(mock: &MockLlm, user_id: &str) {
    let seen = mock.last_request().expect("upstream saw the request");
    assert_eq!(seen.header("x-tollgate-user-id"), Some(user_id));
    assert_eq!(seen.header("x-tollgate-key-id"), None);
    assert_eq!(seen.header("x-tollgate-team-id"), None);
    assert_eq!(
        seen.header("authorization"),
        None,
        "the login token must not go upstream"
    );
}

#[tokio::test]
async fn oidc_tokens_through_envoy() {
    let s = stack().await;
    let issuer = &s.env.issuer;

    let (status, _, body) = chat_through(&s, &s.env.token(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let user_id = user_id_by_email(&s.env.t, ADA).await;
    assert_upstream_saw_person(&s.mock, &user_id);
    assert_eq!(s.mock.requests().len(), 1);

    // Expired well beyond the 60 s leeway.
    let t = now() - 3600;
    let expired = with(issuer.claims(t), json!({"exp": t + 300}));
    let (status, headers, body) =
        chat_through(&s, &issuer.token(&expired, Algorithm::RS256, "rsa-a")).await;
    assert_envoy_401(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("token expired at"),
        "{body}"
    );

    let (status, headers, body) =
        chat_through(&s, &s.env.token(json!({"aud": "another-app"}))).await;
    assert_envoy_401(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`aud` names none of the accepted audiences"),
        "{body}"
    );

    assert_eq!(
        s.mock.requests().len(),
        1,
        "refused tokens reach no upstream"
    );
    s.env.t.stop().await;
}

#[tokio::test]
async fn session_tokens_through_envoy() {
    let s = stack().await;
    let user_id = user_with_password(&s.env.t, "bob", "user").await;
    let access = login(&s.env.t, "bob").await;

    let (status, _, body) = chat_through(&s, &access).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_upstream_saw_person(&s.mock, &user_id);

    // A token minted here like tollgate mints them is accepted while valid, so the refusals
    // below are about their one changed claim.
    let t = now();
    let minted = session_token(&user_id, "tollgate", t - 10, t + 600);
    let (status, _, body) = chat_through(&s, &minted).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_upstream_saw_person(&s.mock, &user_id);

    let expired = session_token(&user_id, "tollgate", t - 1000, t - 100);
    let (status, headers, body) = chat_through(&s, &expired).await;
    assert_envoy_401(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the token has expired"),
        "{body}"
    );

    // Neither the session issuer nor a configured OIDC issuer: it goes to the OIDC
    // verifier, which refuses HS256 first.
    let foreign = session_token(&user_id, "someone-else", t - 10, t + 600);
    let (status, headers, body) = chat_through(&s, &foreign).await;
    assert_envoy_401(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`alg: HS256` is symmetric"),
        "{body}"
    );

    assert_eq!(
        s.mock.requests().len(),
        2,
        "refused tokens reach no upstream"
    );
    s.env.t.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. Every rejection, in Check and on the user API

#[tokio::test]
async fn a_valid_oidc_token_is_accepted_in_check_and_on_the_user_api() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.token(json!({}));
    let (status, _, me) = profile(&env.t, &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], ADA);
    assert_eq!(me["full_name"], "Ada Lovelace");
    assert_eq!(me["role"], "user");
    let user_id = user_id_by_email(&env.t, ADA).await;
    assert_eq!(me["id"], user_id.as_str());
    assert_person_allowed(&env.t, &token, &user_id).await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_alg_none() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = format!(
        "{}.{}.",
        segment(&json!({"alg": "none", "typ": "JWT"})),
        segment(&env.claims(json!({})))
    );
    env.refused_everywhere(&token, "token is unsigned (`alg: none`)")
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_hs256_signed_with_the_issuers_rsa_public_key() {
    let env = Env::start(AUTO_PROVISION).await;
    let public_pem = common::oidc_issuer::fixture("rsa_a.pub.pem");
    let message = format!(
        "{}.{}",
        segment(&json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-a"})),
        segment(&env.claims(json!({})))
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(&public_pem),
        Algorithm::HS256,
    )
    .unwrap();
    env.refused_everywhere(
        &format!("{message}.{signature}"),
        "`alg: HS256` is symmetric",
    )
    .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_an_expired_token() {
    let env = Env::start(AUTO_PROVISION).await;
    let t = now() - 3600;
    let claims = with(env.issuer.claims(t), json!({"exp": t + 300}));
    let token = env.issuer.token(&claims, Algorithm::RS256, "rsa-a");
    env.refused_everywhere(&token, &format!("token expired at {}", t + 300))
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_token_not_yet_valid() {
    let env = Env::start(AUTO_PROVISION).await;
    let nbf = now() + 3600;
    let token = env.token(json!({"nbf": nbf, "exp": nbf + 300}));
    env.refused_everywhere(&token, &format!("token is not valid before {nbf}"))
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_wrong_issuer() {
    let env = Env::start(AUTO_PROVISION).await;
    let reason = "token `iss` is missing or not a configured issuer";
    for iss in [
        "https://evil.example".to_owned(),
        format!("{}/", env.issuer.url()),
    ] {
        env.refused_everywhere(&env.token(json!({ "iss": iss })), reason)
            .await;
    }
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_wrong_audience() {
    let env = Env::start(AUTO_PROVISION).await;
    let reason = "token `aud` names none of the accepted audiences";
    for aud in [json!("another-app"), json!(["a", "b"])] {
        env.refused_everywhere(&env.token(json!({ "aud": aud })), reason)
            .await;
    }
    env.t.stop().await;
}

/// Asserts that Check and the user API both answer `token` with 503 `auth_unavailable`
/// and a `retry-after` of at most 10 s (the JWKS re-read interval); answers that wait.
async fn assert_asked_to_wait(t: &Tollgate, token: &str) -> u64 {
    let response = check(t, token)
        .await
        .expect("a key not read yet is an answer, not UNAVAILABLE");
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "auth_unavailable", "{body}");
    assert_eq!(headers["x-should-retry"], "true", "{headers:?}");
    assert!(!headers.contains_key("www-authenticate"), "{headers:?}");
    let wait: u64 = headers["retry-after"].parse().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");

    let (status, headers, body) = profile(t, token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "auth_unavailable", "{body}");
    let api_wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=wait).contains(&api_wait), "{api_wait} after {wait}");
    wait
}

#[tokio::test]
async fn refuses_an_unknown_kid_after_one_refetch() {
    let env = Env::start(AUTO_PROVISION).await;
    // rsa-b is a real key of the issuer's, but not published.
    let claims = env.claims(json!({}));
    let token = env.issuer.token(&claims, Algorithm::RS256, "rsa-b");
    // The keys are read again for it, and still lack it: refused.
    assert_refused_in_check(
        &env.t,
        &token,
        "the issuer publishes no key with `kid` rsa-b",
    )
    .await;
    assert_eq!(env.issuer.jwks_fetches(), 2);
    // Within 10 s of that read the issuer is not asked again, and the token is asked to wait
    // for the next read rather than refused (it may be signed with a key published since).
    assert_asked_to_wait(&env.t, &token).await;
    assert_eq!(env.issuer.jwks_fetches(), 2);
    assert_eq!(
        user_by_email(&env.t, ADA).await,
        None,
        "a token not accepted must not provision a user"
    );
    env.t.stop().await;
}

#[tokio::test]
async fn a_key_published_just_after_a_read_is_waited_for_not_refused() {
    let env = Env::start(AUTO_PROVISION).await;
    // A token naming an invented kid makes tollgate read the issuer's keys again.
    let invented = env.issuer.sign(
        &json!({"alg": "RS256", "kid": "invented"}),
        &env.claims(json!({})),
        Algorithm::RS256,
        "rsa-a",
    );
    assert_refused_in_check(&env.t, &invented, "invented").await;
    assert_eq!(env.issuer.jwks_fetches(), 2);
    // Right after, the issuer rotates in a new key and signs with it.
    env.issuer
        .publish(&["rsa-a", "rsa-b", "ec-p256", "ed25519"]);
    let token = env
        .issuer
        .token(&env.claims(json!({})), Algorithm::RS256, "rsa-b");
    let wait = assert_asked_to_wait(&env.t, &token).await;
    // Waiting as told is enough: the keys are read again and the token passes.
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let response = check(&env.t, &token).await.expect("an answer");
    allowed(&response);
    assert_eq!(env.issuer.jwks_fetches(), 3);
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_tampered_payload() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.token(json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = env.claims(json!({"sub": "admin", "email": ADA}));
    let tampered = format!("{}.{}.{}", parts[0], segment(&forged), parts[2]);
    env.refused_everywhere(&tampered, "signature does not verify")
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_tampered_signature() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.token(json!({}));
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<u8> = signature.bytes().collect();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{message}.{}", String::from_utf8(sig).unwrap());
    env.refused_everywhere(&tampered, "signature does not verify")
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_crit_header() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.issuer.sign(
        &json!({"alg": "RS256", "kid": "rsa-a", "crit": ["http://example.com/ext"], "http://example.com/ext": true}),
        &env.claims(json!({})),
        Algorithm::RS256,
        "rsa-a",
    );
    env.refused_everywhere(&token, "token has a `crit` header")
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_token_without_exp() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.token(json!({"exp": null}));
    env.refused_everywhere(&token, "token has no `exp` claim")
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_a_token_larger_than_max_token_bytes() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.token(json!({"padding": "x".repeat(MAX_TOKEN_BYTES)}));
    assert!(token.len() > MAX_TOKEN_BYTES);
    env.refused_everywhere(
        &token,
        &format!(
            "token is {} bytes, more than the {MAX_TOKEN_BYTES} allowed",
            token.len()
        ),
    )
    .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_malformed_base64() {
    let env = Env::start(AUTO_PROVISION).await;
    let token = env.token(json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    // Still made of base64url characters (so it is taken for a JWT, not an API key), but
    // of a length no base64 has: 4n + 1 characters.
    let mut payload = parts[1].to_owned();
    while payload.len() % 4 != 1 {
        payload.push('A');
    }
    let bad = format!("{}.{payload}.{}", parts[0], parts[2]);
    env.refused_everywhere(&bad, "token payload is not valid base64url")
        .await;
    env.t.stop().await;
}

#[tokio::test]
async fn refuses_malformed_json() {
    let env = Env::start(AUTO_PROVISION).await;
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let header = segment(&json!({"alg": "RS256", "kid": "rsa-a"}));
    let token = format!("{header}.{}.c2ln", b64("{\"sub\":"));
    env.refused_everywhere(&token, "token payload is not a JSON object")
        .await;
    let token = format!(
        "{}.{}.c2ln",
        b64("{\"alg\":RS256}"),
        segment(&env.claims(json!({})))
    );
    env.refused_everywhere(&token, "token header is not a JSON object")
        .await;
    env.t.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. Provisioning and group sync through tokens

async fn create_team(t: &Tollgate, name: &str) -> String {
    let (status, team) = t
        .admin(Method::POST, "/admin/teams", Some(json!({ "name": name })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    team["id"].as_str().unwrap().to_owned()
}

/// `(role, source)` of `user_id` in the team, from `GET /admin/teams/{id}` as master.
async fn membership(t: &Tollgate, team_id: &str, user_id: &str) -> Option<(String, String)> {
    let (status, team) = t
        .admin(Method::GET, &format!("/admin/teams/{team_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{team}");
    team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == user_id)
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap().to_owned(),
            )
        })
}

#[tokio::test]
async fn tokens_provision_users_and_sync_role_and_teams_from_groups() {
    let env = Env::start(
        "      auto_provision: true\n      group_to_role: { platform-admin: admin }\n      group_to_team: { engineering: Engineering }\n",
    )
    .await;
    let t = &env.t;
    let engineering = create_team(t, "Engineering").await;
    let research = create_team(t, "Research").await;

    // First login: provisioned with the default role and put in Engineering by its group.
    let engineer = env.token(json!({"groups": ["engineering"]}));
    let (status, _, me) = profile(t, &engineer).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let user_id = user_id_by_email(t, ADA).await;
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["role"], "user");
    assert_eq!(me["username"], ADA, "the email is the username when free");
    assert_eq!(
        membership(t, &engineering, &user_id).await,
        Some(("member".to_owned(), "group".to_owned()))
    );
    assert_eq!(membership(t, &research, &user_id).await, None);
    assert_person_allowed(t, &engineer, &user_id).await;
    let created = audit(t, "user.create").await;
    let created: Vec<&Value> = created
        .iter()
        .filter(|e| e["target"] == user_id.as_str())
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["actor"], format!("oidc:{}", env.issuer.url()));
    assert_eq!(created[0]["details"]["source"], "oidc");
    // A `user` lists no users.
    let (status, _, body) = api(t, Method::GET, "/admin/users", &engineer, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    // A membership granted by hand.
    let (status, added) = t
        .admin(
            Method::POST,
            &format!("/admin/teams/{research}/members"),
            Some(json!({ "user_id": user_id })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["source"], "manual");

    // Other groups: synced again at once.
    let admin = env.token(json!({"groups": ["platform-admin"]}));
    let (status, _, me) = profile(t, &admin).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["role"], "admin");
    assert_eq!(
        membership(t, &engineering, &user_id).await,
        None,
        "the group-sourced membership went with the group"
    );
    assert_eq!(
        membership(t, &research, &user_id).await,
        Some(("member".to_owned(), "manual".to_owned())),
        "a manual membership survives the sync"
    );
    let (status, _, body) = api(t, Method::GET, "/admin/users", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == user_id.as_str()),
        "{body}"
    );
    let changes = audit(t, "user.role").await;
    let change = changes
        .iter()
        .find(|e| e["target"] == user_id.as_str())
        .expect("user.role audited");
    assert_eq!(change["actor"], format!("oidc:{}", env.issuer.url()));
    assert_eq!(
        (&change["details"]["from"], &change["details"]["to"]),
        (&json!("user"), &json!("admin"))
    );
    // Still one user: the identity stayed linked.
    let (_, users) = t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(users["data"].as_array().unwrap().len(), 1, "{users}");
    env.t.stop().await;
}

/// The live teams, as `(name, id)` sorted by name, from `GET /admin/teams` as master.
async fn teams(t: &Tollgate) -> Vec<(String, String)> {
    let (status, body) = t.admin(Method::GET, "/admin/teams", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut all: Vec<(String, String)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|team| {
            (
                team["name"].as_str().unwrap().to_owned(),
                team["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

const AUTO_CREATE_TEAMS: &str = "      auto_provision: true\n      auto_create_teams: true\n      group_to_team: { engineering: Engineering, research: Research, ml: Research }\n";

#[tokio::test]
async fn auto_create_teams_creates_the_teams_groups_name() {
    let env = Env::start(AUTO_CREATE_TEAMS).await;
    let t = &env.t;
    assert!(teams(t).await.is_empty());

    // Ada's first token names Engineering, which does not exist: created, and she is in it.
    let ada = env.token(json!({"groups": ["engineering", "unmapped"]}));
    let (status, _, me) = profile(t, &ada).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let ada_id = user_id_by_email(t, ADA).await;
    let all = teams(t).await;
    assert_eq!(
        all.iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["Engineering"]
    );
    let engineering = all[0].1.clone();
    assert_eq!(
        membership(t, &engineering, &ada_id).await,
        Some(("member".to_owned(), "group".to_owned()))
    );
    assert_person_allowed(t, &ada, &ada_id).await;
    let created = audit(t, "team.create").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["actor"], format!("oidc:{}", env.issuer.url()));
    assert_eq!(created[0]["target"], engineering.as_str());
    assert_eq!(created[0]["details"]["name"], "Engineering");
    assert_eq!(created[0]["details"]["source"], "oidc");
    assert_eq!(created[0]["details"]["issuer"], env.issuer.url());
    let added = audit(t, "team.member.add").await;
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0]["target"], format!("{engineering}/{ada_id}"));

    // Two people's first tokens naming Research (through two groups) arrive at once: one
    // team, created once, both in it.
    let grace =
        env.token(json!({"sub": "user-2", "email": "grace@example.com", "groups": ["research"]}));
    let alan = env.token(
        json!({"sub": "user-3", "email": "alan@example.com", "groups": ["ml", "engineering"]}),
    );
    let (g, a) = tokio::join!(profile(t, &grace), profile(t, &alan));
    assert_eq!(g.0, StatusCode::OK, "{}", g.2);
    assert_eq!(a.0, StatusCode::OK, "{}", a.2);
    let all = teams(t).await;
    assert_eq!(
        all.iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["Engineering", "Research"]
    );
    let research = all[1].1.clone();
    let grace_id = user_id_by_email(t, "grace@example.com").await;
    let alan_id = user_id_by_email(t, "alan@example.com").await;
    for (team, user) in [
        (&research, &grace_id),
        (&research, &alan_id),
        (&engineering, &alan_id),
    ] {
        assert_eq!(
            membership(t, team, user).await,
            Some(("member".to_owned(), "group".to_owned()))
        );
    }
    assert_eq!(membership(t, &engineering, &grace_id).await, None);
    let created = audit(t, "team.create").await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(
        created
            .iter()
            .filter(|e| e["target"] == research.as_str())
            .count(),
        1
    );
    env.t.stop().await;
}

/// With `org_claim`, a team `auto_create_teams` creates belongs to the org of the token's
/// user; a name already taken by a team of another org is neither joined nor created.
#[tokio::test]
async fn auto_created_teams_belong_to_the_tokens_org() {
    let env = Env::start(&format!("{AUTO_CREATE_TEAMS}      org_claim: tenant\n")).await;
    let t = &env.t;
    let (_, acme) = t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Acme"})))
        .await;
    let (_, globex) = t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Globex"})))
        .await;
    let (status, research) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Research", "org_id": globex["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{research}");

    let ada = env.token(json!({"tenant": "Acme", "groups": ["engineering", "research"]}));
    let (status, _, me) = profile(t, &ada).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let ada_id = user_id_by_email(t, ADA).await;
    let all = teams(t).await;
    assert_eq!(
        all.iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["Engineering", "Research"]
    );
    let engineering = all[0].1.clone();
    let (_, team) = t
        .admin(Method::GET, &format!("/admin/teams/{engineering}"), None)
        .await;
    assert_eq!(team["org_id"], acme["id"], "{team}");
    assert_eq!(
        membership(t, &engineering, &ada_id).await,
        Some(("member".to_owned(), "group".to_owned()))
    );
    // Globex's Research is not Ada's to join, and no second Research was made.
    assert_eq!(all[1].1, research["id"].as_str().unwrap());
    assert_eq!(membership(t, &all[1].1, &ada_id).await, None);
    let created = audit(t, "team.create").await;
    let by_oidc: Vec<_> = created
        .iter()
        .filter(|e| e["details"]["source"] == "oidc")
        .collect();
    assert_eq!(by_oidc.len(), 1, "{created:?}");
    assert_eq!(by_oidc[0]["target"], engineering.as_str());
    assert_eq!(by_oidc[0]["details"]["org_id"], acme["id"]);
    env.t.stop().await;
}

/// The `tollgate` binary against `t` with `token`: (success, stdout, stderr).
async fn cli(t: &Tollgate, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_URL", format!("http://{}", t.http))
        .env("TOLLGATE_TOKEN", token)
        .env_remove("TOLLGATE_MASTER_KEY")
        .output()
        .await
        .expect("the tollgate binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// `tollgate user assign-team` (table output) as master; its stdout.
async fn assign_team_cli(t: &Tollgate, args: &[&str]) -> String {
    let mut all = vec!["user", "assign-team"];
    all.extend(args);
    let (ok, stdout, stderr) = cli(t, MASTER_KEY, &all).await;
    assert!(ok, "{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn assigning_a_group_member_by_hand_keeps_the_membership_past_the_group() {
    let env = Env::start(AUTO_CREATE_TEAMS).await;
    let t = &env.t;
    let ada = env.token(json!({"groups": ["engineering"]}));
    assert_eq!(profile(t, &ada).await.0, StatusCode::OK);
    let ada_id = user_id_by_email(t, ADA).await;
    let engineering = teams(t).await[0].1.clone();
    assert_eq!(
        membership(t, &engineering, &ada_id).await,
        Some(("member".to_owned(), "group".to_owned()))
    );

    let said = assign_team_cli(t, &[ADA, "Engineering"]).await;
    assert_eq!(
        said,
        format!("user {ADA} is a member of team Engineering, now granted by hand (it came from a group)")
    );
    assert_eq!(
        membership(t, &engineering, &ada_id).await,
        Some(("member".to_owned(), "manual".to_owned()))
    );
    // Leaving the group no longer takes her out of the team.
    let left = env.token(json!({"groups": []}));
    assert_eq!(profile(t, &left).await.0, StatusCode::OK);
    assert_eq!(
        membership(t, &engineering, &ada_id).await,
        Some(("member".to_owned(), "manual".to_owned()))
    );
    let said = assign_team_cli(t, &[ADA, "Engineering"]).await;
    assert!(said.ends_with("(nothing changed)"), "{said}");
    env.t.stop().await;
}

#[tokio::test]
async fn the_team_commands_by_name_as_a_manager_and_a_team_owner() {
    let env = Env::start("").await;
    let t = &env.t;
    user_with_password(t, "maria", "manager").await;
    let owner_id = user_with_password(t, "olga", "user").await;
    let grace_id = user_with_password(t, "grace", "user").await;
    let maria = login(t, "maria").await;
    let olga = login(t, "olga").await;

    // A manager creates a team (and owns it), then names it: the id lookup is refused
    // (not her team by that "id"), the list she may read has it.
    let (status, _, team) = api(
        t,
        Method::POST,
        "/admin/teams",
        &maria,
        Some(json!({ "name": "platform" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let team_id = team["id"].as_str().unwrap().to_owned();
    let (ok, said, err) = cli(
        t,
        &maria,
        &[
            "team",
            "set-budget",
            "platform",
            "--max-budget",
            "40",
            "--budget-duration",
            "7d",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        said,
        format!("team platform ({team_id}): budget 40.00 USD per 7d")
    );
    // A manager may read users: she names one by username.
    let (ok, said, err) = cli(
        t,
        &maria,
        &["user", "assign-team", "olga", "platform", "--role", "owner"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(said, "user olga is now an owner of team platform");

    // A team owner whose role is `user` may not read users: she names them by id.
    let (ok, said, err) = cli(t, &olga, &["user", "assign-team", &grace_id, "platform"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        said,
        format!("user {grace_id} is now a member of team platform")
    );
    assert_eq!(
        membership(t, &team_id, &grace_id).await,
        Some(("member".to_owned(), "manual".to_owned()))
    );
    let (ok, _, err) = cli(t, &olga, &["user", "assign-team", "grace", "platform"]).await;
    assert!(!ok);
    assert!(err.contains("(400 invalid_request)"), "{err}");
    // Nor may she change the budget.
    let (ok, _, err) = cli(
        t,
        &olga,
        &["team", "set-budget", "platform", "--max-budget", "1"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("(403 forbidden)"), "{err}");
    assert_eq!(membership(t, &team_id, &owner_id).await.unwrap().0, "owner");
    env.t.stop().await;
}

#[tokio::test]
async fn without_auto_create_teams_no_team_is_created() {
    let env = Env::start(
        "      auto_provision: true\n      group_to_team: { engineering: Engineering }\n",
    )
    .await;
    let t = &env.t;
    let ada = env.token(json!({"groups": ["engineering"]}));
    let (status, _, me) = profile(t, &ada).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let ada_id = user_id_by_email(t, ADA).await;
    assert_person_allowed(t, &ada, &ada_id).await;
    assert!(teams(t).await.is_empty());
    assert!(audit(t, "team.create").await.is_empty());
    assert!(audit(t, "team.member.add").await.is_empty());

    // An admin creates the team: the very same token syncs into it at once, without
    // waiting for `cache.key_ttl` to forget that it was synced.
    let engineering = create_team(t, "Engineering").await;
    assert_eq!(profile(t, &ada).await.0, StatusCode::OK);
    assert_eq!(
        membership(t, &engineering, &ada_id).await,
        Some(("member".to_owned(), "group".to_owned()))
    );
    env.t.stop().await;
}

#[tokio::test]
async fn without_auto_provision_only_existing_users_are_linked() {
    let env = Env::start("").await;
    let t = &env.t;

    let stranger = env.token(json!({"sub": "stranger", "email": "stranger@example.com"}));
    assert_refused_in_check(t, &stranger, "no tollgate account").await;
    assert_refused_by_api(t, &stranger, "no tollgate account").await;
    assert_eq!(user_by_email(t, "stranger@example.com").await, None);
    // Once an admin creates the account, the very same token is let in at once (the
    // remembered refusal is forgotten).
    let stranger_id = t.create_user("stranger", "user").await;
    assert_person_allowed(t, &stranger, &stranger_id).await;

    let grace = t.create_user("grace", "user").await;
    let token = env.token(json!({"sub": "grace-sub", "email": "grace@example.com"}));
    assert_person_allowed(t, &token, &grace).await;
    let (status, _, me) = profile(t, &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], grace.as_str());
    assert_eq!(me["email"], "grace@example.com");
    let links = audit(t, "auth.identity_link").await;
    let grace_links: Vec<_> = links
        .iter()
        .filter(|l| l["target"] == grace.as_str())
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    assert_eq!(grace_links.len(), 1, "{links:?}");
    let links = grace_links;
    assert_eq!(links[0]["details"]["issuer"], env.issuer.url());
    let (_, users) = t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(users["data"].as_array().unwrap().len(), 2, "{users}");
    env.t.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. Roles in Check

#[tokio::test]
async fn a_viewers_token_may_not_call_models() {
    let env = Env::start("").await;
    let vera = env.t.create_user("vera", "viewer").await;
    let token = env.token(json!({"sub": "vera-sub", "email": "vera@example.com"}));
    assert_forbidden_in_check(
        &env.t,
        &token,
        "The role `viewer` lacks the `chat` permission",
    )
    .await;
    // The token itself is good: the viewer reads their profile.
    let (status, _, me) = profile(&env.t, &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], vera.as_str());
    assert_eq!(me["role"], "viewer");
    env.t.stop().await;
}

#[tokio::test]
async fn a_blocked_users_session_token_is_403() {
    let env = Env::start("").await;
    let t = &env.t;
    let bob = user_with_password(t, "bob", "user").await;
    let access = login(t, "bob").await;
    assert_person_allowed(t, &access, &bob).await;

    let (status, body) = t
        .admin(
            Method::PATCH,
            &format!("/admin/users/{bob}"),
            Some(json!({"blocked": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_forbidden_in_check(t, &access, "This user is blocked").await;
    let (status, _, body) = profile(t, &access).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    env.t.stop().await;
}

#[tokio::test]
async fn a_deleted_users_tokens_are_401() {
    let env = Env::start("").await;
    let t = &env.t;
    let dora = user_with_password(t, "dora", "user").await;
    let session = login(t, "dora").await;
    let olga = t.create_user("olga", "user").await;
    let oidc = env.token(json!({"sub": "olga-sub", "email": "olga@example.com"}));
    assert_person_allowed(t, &session, &dora).await;
    assert_person_allowed(t, &oidc, &olga).await;

    for id in [&dora, &olga] {
        let (status, body) = t
            .admin(Method::DELETE, &format!("/admin/users/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    // The session token names the deleted user; the OIDC identity's user is gone and this
    // issuer provisions nobody, so it has no account any more.
    for (token, reason) in [
        (&session, "The account of this token no longer exists"),
        (&oidc, "This identity has no tollgate account"),
    ] {
        assert_refused_in_check(t, token, reason).await;
        assert_refused_by_api(t, token, reason).await;
    }
    env.t.stop().await;
}

// ---------------------------------------------------------------------------------------
// 5. Issuer down

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable_not_a_refusal() {
    // A port nothing listens on.
    let port = common::envoy::free_port();
    let down = format!("http://127.0.0.1:{port}");
    let t = Tollgate::start(&config(&down, AUTO_PROVISION)).await;
    // Signed by another issuer's key, naming the unreachable one: its keys are unknown, so
    // nothing can be said about the token.
    let signer = TestIssuer::start().await;
    let claims = with(signer.claims(now()), json!({ "iss": down }));
    let token = signer.token(&claims, Algorithm::RS256, "rsa-a");

    let status = check(&t, &token)
        .await
        .expect_err("an unreadable issuer is no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (status, _, body) = profile(&t, &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "auth_unavailable", "{body}");
    assert_eq!(
        sample(
            &t.app.metrics,
            "tollgate_backend_errors_total{backend=\"oidc\"}"
        ) as u64,
        2
    );
    // Other credentials still work.
    let (status, _) = t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check(&t, MASTER_KEY).await.unwrap().status.unwrap().code, 0);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6. Self-service keys with an OIDC token

#[tokio::test]
async fn self_service_keys_with_an_oidc_token() {
    let env = Env::start(AUTO_PROVISION).await;
    let t = &env.t;
    let token = env.token(json!({}));

    let (status, _, created) = api(
        t,
        Method::POST,
        "/v1/user/keys",
        &token,
        Some(json!({"name": "laptop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let user_id = user_id_by_email(t, ADA).await;
    assert_eq!(created["user_id"], user_id.as_str());
    assert_eq!(created["name"], "laptop");
    let key_id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"]
        .as_str()
        .expect("the key, shown once")
        .to_owned();

    let response = check(t, &key).await.unwrap();
    let (set, _) = allowed(&response);
    assert_eq!(set["x-tollgate-key-id"], key_id);
    assert_eq!(set["x-tollgate-user-id"], user_id);

    let (status, _, listed) = api(t, Method::GET, "/v1/user/keys", &token, None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [key_id.as_str()]);
    assert!(
        listed["data"][0].get("key").is_none(),
        "the secret is not listed"
    );

    let (status, _, revoked) = api(
        t,
        Method::DELETE,
        &format!("/v1/user/keys/{key_id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["id"], key_id.as_str());
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    assert_refused_in_check(t, &key, "revoked").await;
    let (_, _, listed) = api(t, Method::GET, "/v1/user/keys", &token, None).await;
    assert_eq!(listed["data"], json!([]), "{listed}");
    env.t.stop().await;
}

// ---------------------------------------------------------------------------------------
// 7. Linking by email needs a verified email

/// Asserts that `token` is a person other than `not_id`, with no `admin` power: their own
/// profile (role `user`, no email taken from the token), 403 on the admin API, and Check
/// sees them as themselves. Answers their user id.
async fn assert_someone_else(t: &Tollgate, token: &str, not_id: &str) -> String {
    let (status, _, me) = profile(t, token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let id = me["id"].as_str().unwrap().to_owned();
    assert_ne!(id, not_id, "{me}");
    assert_eq!(me["role"], "user", "{me}");
    let email = me["email"].as_str().unwrap();
    assert!(email.ends_with("@users.invalid"), "{me}");
    assert!(
        me["username"].as_str().unwrap().starts_with("oidc-"),
        "{me}"
    );
    let (status, _, body) = api(t, Method::GET, "/admin/users", token, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_person_allowed(t, token, &id).await;
    id
}

#[tokio::test]
async fn an_unverified_email_does_not_sign_in_as_its_owner() {
    let env = Env::start(AUTO_PROVISION).await;
    let t = &env.t;
    let root = t.create_user("root", "admin").await;
    let root_email = "root@example.com";

    // The attack: a token naming the admin's email, not verified by the issuer.
    let mut seen = Vec::new();
    for (sub, verified) in [
        ("mallory-1", json!(false)),
        ("mallory-2", Value::Null),
        ("mallory-3", json!("false")),
    ] {
        let token = env.token(json!({"sub": sub, "email": root_email, "email_verified": verified}));
        let id = assert_someone_else(t, &token, &root).await;
        // Again: the same account, still nobody's admin.
        assert_eq!(assert_someone_else(t, &token, &root).await, id);
        seen.push(id);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "one new user per identity: {seen:?}");
    assert!(audit(t, "auth.identity_link").await.is_empty());
    let (_, shown) = t
        .admin(Method::GET, &format!("/admin/users/{root}"), None)
        .await;
    assert_eq!(shown["email"], root_email, "{shown}");

    // The owner's verified token is linked to the admin account.
    let owner = env.token(json!({"sub": "root-sub", "email": root_email, "email_verified": true}));
    assert_person_allowed(t, &owner, &root).await;
    let (status, _, body) = api(t, Method::GET, "/admin/users", &owner, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let links = audit(t, "auth.identity_link").await;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["target"], root.as_str());
    env.t.stop().await;
}

#[tokio::test]
async fn without_auto_provision_an_unverified_email_is_refused() {
    let env = Env::start("").await;
    let t = &env.t;
    let root = t.create_user("root", "admin").await;
    let claims = json!({"sub": "root-sub", "email": "root@example.com"});
    let unverified = env.token(with(claims.clone(), json!({"email_verified": false})));
    assert_refused_in_check(t, &unverified, "no tollgate account").await;
    assert_refused_by_api(t, &unverified, "no tollgate account").await;
    // The same identity with the email verified: linked at once (the refusal above is not
    // remembered for it), and an admin.
    let verified = env.token(with(claims, json!({"email_verified": true})));
    assert_person_allowed(t, &verified, &root).await;
    let (status, _, body) = api(t, Method::GET, "/admin/users", &verified, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Linked now: the identity's later tokens work whatever they say about the email.
    assert_person_allowed(t, &unverified, &root).await;
    env.t.stop().await;
}

#[tokio::test]
async fn trust_email_links_without_the_claim() {
    let env = Env::start("      trust_email: true\n").await;
    let t = &env.t;
    let grace = t.create_user("grace", "user").await;
    let token = env
        .token(json!({"sub": "grace-sub", "email": "grace@example.com", "email_verified": null}));
    assert_person_allowed(t, &token, &grace).await;
    let (status, _, me) = profile(t, &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], grace.as_str());
    env.t.stop().await;
}

#[tokio::test]
async fn a_second_issuer_links_by_email_on_the_same_terms() {
    let trusted = TestIssuer::start().await;
    let other = TestIssuer::start().await;
    let yaml = format!(
        "auth:\n  oidc:\n    - issuer: {}\n      audiences: [{AUDIENCE}]\n      trust_email: true\n    - issuer: {}\n      audiences: [{AUDIENCE}]\n      auto_provision: true\n",
        trusted.url(),
        other.url()
    );
    let t = Tollgate::start(&yaml).await;
    let root = t.create_user("root", "admin").await;
    let sign = |issuer: &TestIssuer, extra: Value| {
        let claims = with(issuer.claims(now()), extra);
        issuer.token(&claims, Algorithm::RS256, "rsa-a")
    };
    let email = json!({"email": "root@example.com", "email_verified": null});

    // The first issuer vouches for every email: linked.
    let first = sign(&trusted, email.clone());
    assert_person_allowed(&t, &first, &root).await;
    // The second does not: an unverified email of it is someone else, however linked the
    // account already is.
    let unverified = sign(&other, with(email.clone(), json!({"sub": "mallory"})));
    assert_someone_else(&t, &unverified, &root).await;
    // And a verified one is linked too.
    let verified = sign(
        &other,
        with(email, json!({"sub": "root-2", "email_verified": true})),
    );
    assert_person_allowed(&t, &verified, &root).await;
    let links = audit(&t, "auth.identity_link").await;
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(
        links.iter().all(|l| l["target"] == root.as_str()),
        "{links:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn an_email_its_user_set_is_not_linked_to_an_identity() {
    let issuer = TestIssuer::start().await;
    let yaml = format!(
        "auth:\n  allow_registration: true\n  session: {{ secret: {SESSION_SECRET} }}\n  oidc:\n    - issuer: {}\n      audiences: [{AUDIENCE}]\n      auto_provision: true\n      group_to_role: {{ platform-admin: admin }}\n",
        issuer.url()
    );
    let t = Tollgate::start(&yaml).await;
    let sign = |extra: Value| {
        let claims = with(issuer.claims(now()), extra);
        issuer.token(&claims, Algorithm::RS256, "rsa-a")
    };

    // Mallory registers with the address of someone who has no account yet; Bob changes
    // his own address to another's.
    let body = json!({"username": "mallory", "email": "ceo@example.com", "password": PASSWORD});
    let (status, mallory) = t.call(Method::POST, "/v1/register", None, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{mallory}");
    let mallory = mallory["id"].as_str().unwrap().to_owned();
    let bob = user_with_password(&t, "bob", "user").await;
    let bob_session = login(&t, "bob").await;
    let (status, _, me) = api(
        &t,
        Method::PUT,
        "/v1/user/profile",
        &bob_session,
        Some(json!({"email": "cto@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");

    // The owners of those addresses sign in: each gets an account of their own (an admin,
    // by their group), not Mallory's or Bob's.
    let ceo = sign(json!({"sub": "ceo", "email": "ceo@example.com", "groups": ["platform-admin"]}));
    let (status, _, me) = profile(&t, &ceo).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_ne!(me["id"], mallory.as_str());
    assert_eq!(me["role"], "admin");
    assert!(
        me["email"].as_str().unwrap().ends_with("@users.invalid"),
        "the address is Mallory's: {me}"
    );
    let cto = sign(json!({"sub": "cto", "email": "cto@example.com", "groups": []}));
    let (status, _, me) = profile(&t, &cto).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_ne!(me["id"], bob.as_str());
    assert!(audit(&t, "auth.identity_link").await.is_empty());

    // Mallory's password still opens a plain user's account.
    let mallory_session = login(&t, "mallory").await;
    let (status, _, me) = profile(&t, &mallory_session).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], mallory.as_str());
    assert_eq!(me["role"], "user");
    let (status, _, body) = api(&t, Method::GET, "/admin/users", &mallory_session, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // An admin setting Bob's address vouches for it: a new identity with it is linked.
    let (status, body) = t
        .admin(
            Method::PATCH,
            &format!("/admin/users/{bob}"),
            Some(json!({"email": "cto@example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bobs = sign(json!({"sub": "bob-at-idp", "email": "cto@example.com", "groups": []}));
    assert_person_allowed(&t, &bobs, &bob).await;
    t.stop().await;
}

/// `org_claim: tenant`: the claim names (by name) the org of the token's user. A token
/// without it, or naming no org, is refused and provisions nobody; a provisioned user joins
/// the named org; a token naming another org than its user's is refused.
#[tokio::test]
async fn org_claim_names_the_org_of_the_tokens_user() {
    let env = Env::start(&format!("{AUTO_PROVISION}      org_claim: tenant\n")).await;
    env.refused_everywhere(&env.token(json!({})), "no `tenant` claim")
        .await;
    env.refused_everywhere(
        &env.token(json!({"tenant": "Acme"})),
        "names no organization here: \"Acme\"",
    )
    .await;

    let (status, acme) = env
        .t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Acme"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{acme}");
    // The refusal above was remembered; creating the org makes the same token good.
    let token = env.token(json!({"tenant": "Acme"}));
    let (status, _, me) = profile(&env.t, &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let user_id = user_id_by_email(&env.t, ADA).await;
    let user = user_by_email(&env.t, ADA).await.unwrap();
    assert_eq!(user["org_id"], acme["id"], "{user}");
    assert_person_allowed(&env.t, &token, &user_id).await;
    let created = audit(&env.t, "user.create").await;
    assert_eq!(created[0]["details"]["org_id"], acme["id"]);

    // The same person with a token of another org is refused.
    let (_, _globex) = env
        .t
        .admin(Method::POST, "/admin/orgs", Some(json!({"name": "Globex"})))
        .await;
    let other = env.token(json!({"tenant": "Globex"}));
    assert_refused_in_check(&env.t, &other, "belongs to another organization").await;
    assert_refused_by_api(&env.t, &other, "belongs to another organization").await;
    env.t.stop().await;
}
