//! Tokens of OIDC issuers, verified against a real HTTP issuer on 127.0.0.1 (discovery,
//! JWKS, key rotation, outages): one test per accepted and per rejected case.

mod common;

use common::oidc_issuer::{segment, TestIssuer, AUDIENCE};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate::authn::jwt::{JwtRejection, Segment};
use tollgate::authn::oidc::{HttpFetch, OidcError, OidcIdentity, OidcVerifier};
use tollgate::config::OidcIssuer;

const MAX_TOKEN_BYTES: usize = 8 * 1024;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A verifier reading over HTTP, bypassing any proxy of the environment (loopback tests).
fn verifier(issuers: &[OidcIssuer]) -> OidcVerifier {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    OidcVerifier::with_fetch(
        issuers,
        MAX_TOKEN_BYTES,
        Arc::new(HttpFetch::with_client(client)),
    )
}

/// An issuer and a verifier for it whose keys were fetched once, as at start.
async fn setup(extra_config: &str) -> (TestIssuer, OidcVerifier) {
    let issuer = TestIssuer::start().await;
    let verifier = verifier(&[issuer.config(extra_config)]);
    assert_eq!(verifier.refresh_all().await, vec![]);
    assert_eq!(issuer.jwks_fetches(), 1);
    (issuer, verifier)
}

async fn rejection(verifier: &OidcVerifier, token: &str) -> JwtRejection {
    match verifier.verify(token, now()).await {
        Err(OidcError::Rejected(r)) => {
            let shown = r.to_string();
            assert!(!shown.contains(token), "the token leaked into {shown}");
            r
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

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

async fn accepts(alg: Algorithm, kid: &str) -> OidcIdentity {
    let (issuer, verifier) = setup("").await;
    let token = issuer.token(&issuer.claims(now()), alg, kid);
    let id = verifier.verify(&token, now()).await.unwrap();
    assert_eq!(id.issuer, issuer.url());
    // The key was cached: verifying did not fetch.
    assert_eq!(issuer.jwks_fetches(), 1);
    id
}

#[tokio::test]
async fn accepts_rs256() {
    let id = accepts(Algorithm::RS256, "rsa-a").await;
    assert_eq!(id.subject, "user-1");
    assert_eq!(id.email.as_deref(), Some("ada@example.com"));
    assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(id.groups, ["engineering", "admins"]);
}

#[tokio::test]
async fn accepts_es256() {
    accepts(Algorithm::ES256, "ec-p256").await;
}

#[tokio::test]
async fn accepts_eddsa() {
    accepts(Algorithm::EdDSA, "ed25519").await;
}

#[tokio::test]
async fn accepts_ps256() {
    accepts(Algorithm::PS256, "rsa-a").await;
}

#[tokio::test]
async fn cached_keys_serve_many_tokens_without_fetching() {
    let (issuer, verifier) = setup("").await;
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-a"),
        (Algorithm::ES256, "ec-p256"),
        (Algorithm::EdDSA, "ed25519"),
    ] {
        for _ in 0..3 {
            let token = issuer.token(&issuer.claims(now()), alg, kid);
            verifier.verify(&token, now()).await.unwrap();
        }
    }
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn leeway_is_honoured() {
    let (issuer, verifier) = setup("leeway: 60s").await;
    let t = now();
    let late = with(issuer.claims(t), json!({"exp": t - 30}));
    verifier
        .verify(&issuer.token(&late, Algorithm::RS256, "rsa-a"), t)
        .await
        .unwrap();
    let early = with(issuer.claims(t), json!({"nbf": t + 30, "iat": t + 30}));
    verifier
        .verify(&issuer.token(&early, Algorithm::RS256, "rsa-a"), t)
        .await
        .unwrap();
    let too_late = with(issuer.claims(t), json!({"exp": t - 61}));
    let r = verifier
        .verify(&issuer.token(&too_late, Algorithm::RS256, "rsa-a"), t)
        .await;
    assert!(matches!(
        r,
        Err(OidcError::Rejected(JwtRejection::Expired { .. }))
    ));
}

#[tokio::test]
async fn rejects_wrong_issuer() {
    let (issuer, verifier) = setup("").await;
    for iss in ["https://evil.example", &format!("{}/", issuer.url())] {
        let claims = with(issuer.claims(now()), json!({ "iss": iss }));
        let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
        assert_eq!(
            rejection(&verifier, &token).await,
            JwtRejection::UnknownIssuer
        );
    }
    let claims = with(issuer.claims(now()), json!({ "iss": null }));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert_eq!(
        rejection(&verifier, &token).await,
        JwtRejection::UnknownIssuer
    );
}

#[tokio::test]
async fn rejects_wrong_audience() {
    let (issuer, verifier) = setup("").await;
    for aud in [json!("another-app"), json!(null), json!(["a", "b"])] {
        let claims = with(issuer.claims(now()), json!({ "aud": aud }));
        let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
        assert_eq!(
            rejection(&verifier, &token).await,
            JwtRejection::WrongAudience
        );
    }
}

#[tokio::test]
async fn accepts_one_of_multiple_audiences() {
    let (issuer, verifier) = setup("audiences: [web, tollgate]").await;
    let claims = with(issuer.claims(now()), json!({"aud": ["some-api", AUDIENCE]}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    verifier.verify(&token, now()).await.unwrap();
    let claims = with(issuer.claims(now()), json!({"aud": "web"}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    verifier.verify(&token, now()).await.unwrap();
}

#[tokio::test]
async fn rejects_expired() {
    let (issuer, verifier) = setup("leeway: 0s").await;
    let claims = with(issuer.claims(now() - 600), json!({}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert!(matches!(
        rejection(&verifier, &token).await,
        JwtRejection::Expired { .. }
    ));
}

#[tokio::test]
async fn rejects_not_yet_valid() {
    let (issuer, verifier) = setup("leeway: 5s").await;
    let claims = with(issuer.claims(now()), json!({"nbf": now() + 120}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert!(matches!(
        rejection(&verifier, &token).await,
        JwtRejection::NotYetValid { .. }
    ));
}

#[tokio::test]
async fn rejects_issued_in_the_future() {
    let (issuer, verifier) = setup("leeway: 5s").await;
    let claims = with(issuer.claims(now()), json!({"iat": now() + 120}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert!(matches!(
        rejection(&verifier, &token).await,
        JwtRejection::IssuedInFuture { .. }
    ));
}

#[tokio::test]
async fn rejects_missing_exp() {
    let (issuer, verifier) = setup("").await;
    let claims = with(issuer.claims(now()), json!({"exp": null}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert_eq!(rejection(&verifier, &token).await, JwtRejection::MissingExp);
}

#[tokio::test]
async fn rejects_alg_none() {
    let (issuer, verifier) = setup("").await;
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            segment(&json!({"alg": alg, "typ": "JWT"})),
            segment(&issuer.claims(now()))
        );
        assert_eq!(rejection(&verifier, &token).await, JwtRejection::AlgNone);
    }
    // Also when the token claims an issuer we do not know.
    let claims = with(issuer.claims(now()), json!({"iss": "https://evil.example"}));
    let token = format!("{}.{}.", segment(&json!({"alg": "none"})), segment(&claims));
    assert_eq!(rejection(&verifier, &token).await, JwtRejection::AlgNone);
}

#[tokio::test]
async fn rejects_hs256_signed_with_the_rsa_public_key() {
    let (issuer, verifier) = setup("").await;
    // The classic confusion attack: the issuer's public key (PEM bytes, public by design)
    // used as an HMAC secret, naming the RSA key's kid.
    let public_pem = common::oidc_issuer::fixture("rsa_a.pub.pem");
    let message = format!(
        "{}.{}",
        segment(&json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-a"})),
        segment(&issuer.claims(now()))
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(&public_pem),
        Algorithm::HS256,
    )
    .unwrap();
    let token = format!("{message}.{signature}");
    assert_eq!(
        rejection(&verifier, &token).await,
        JwtRejection::SymmetricAlgorithm {
            alg: "HS256".into()
        }
    );
}

#[tokio::test]
async fn rejects_algorithm_not_allowed_for_the_issuer() {
    let (issuer, verifier) = setup("algorithms: [RS256]").await;
    let token = issuer.token(&issuer.claims(now()), Algorithm::ES256, "ec-p256");
    assert_eq!(
        rejection(&verifier, &token).await,
        JwtRejection::AlgorithmNotAllowed {
            alg: "ES256".into()
        }
    );
}

#[tokio::test]
async fn rejects_alg_that_does_not_fit_the_kid() {
    let (issuer, verifier) = setup("").await;
    // Signed by the EC key but claiming the RSA key's kid.
    let token = issuer.sign(
        &json!({"alg": "ES256", "kid": "rsa-a"}),
        &issuer.claims(now()),
        Algorithm::ES256,
        "ec-p256",
    );
    assert!(matches!(
        rejection(&verifier, &token).await,
        JwtRejection::KeyMismatch { .. }
    ));
}

#[tokio::test]
async fn rejects_crit_header() {
    let (issuer, verifier) = setup("").await;
    let token = issuer.sign(
        &json!({"alg": "RS256", "kid": "rsa-a", "crit": ["http://example.com/ext"], "http://example.com/ext": true}),
        &issuer.claims(now()),
        Algorithm::RS256,
        "rsa-a",
    );
    assert_eq!(rejection(&verifier, &token).await, JwtRejection::CritHeader);
}

#[tokio::test]
async fn rejects_tampered_payload() {
    let (issuer, verifier) = setup("").await;
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-a");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = with(issuer.claims(now()), json!({"sub": "admin"}));
    let tampered = format!("{}.{}.{}", parts[0], segment(&forged), parts[2]);
    assert_eq!(
        rejection(&verifier, &tampered).await,
        JwtRejection::BadSignature
    );
}

#[tokio::test]
async fn rejects_tampered_signature() {
    let (issuer, verifier) = setup("").await;
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-a"),
        (Algorithm::ES256, "ec-p256"),
        (Algorithm::EdDSA, "ed25519"),
    ] {
        let token = issuer.token(&issuer.claims(now()), alg, kid);
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut sig: Vec<u8> = signature.bytes().collect();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{message}.{}", String::from_utf8(sig).unwrap());
        assert_eq!(
            rejection(&verifier, &tampered).await,
            JwtRejection::BadSignature,
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn rejects_malformed_base64() {
    let (issuer, verifier) = setup("").await;
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-a");
    let parts: Vec<&str> = token.split('.').collect();
    let cases = [
        (
            format!("{}*.{}.{}", parts[0], parts[1], parts[2]),
            Segment::Header,
        ),
        (
            format!("{}.{}+/.{}", parts[0], parts[1], parts[2]),
            Segment::Payload,
        ),
        (
            format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
            Segment::Signature,
        ),
    ];
    for (token, segment) in cases {
        assert_eq!(
            rejection(&verifier, &token).await,
            JwtRejection::MalformedBase64(segment)
        );
    }
}

#[tokio::test]
async fn rejects_malformed_json() {
    let (issuer, verifier) = setup("").await;
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let header = segment(&json!({"alg": "RS256", "kid": "rsa-a"}));
    let payload = segment(&issuer.claims(now()));
    let cases = [
        (
            format!("{header}.{}.c2ln", b64("{\"sub\":")),
            Segment::Payload,
        ),
        (
            format!("{}.{payload}.c2ln", b64("{alg:RS256}")),
            Segment::Header,
        ),
        (
            format!("{header}.{}.c2ln", b64("\"a string\"")),
            Segment::Payload,
        ),
    ];
    for (token, segment) in cases {
        assert_eq!(
            rejection(&verifier, &token).await,
            JwtRejection::MalformedJson(segment)
        );
    }
}

#[tokio::test]
async fn rejects_token_without_three_segments() {
    let (issuer, verifier) = setup("").await;
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-a");
    for bad in [
        token.rsplit_once('.').unwrap().0.to_string(),
        format!("{token}.e30"),
    ] {
        assert_eq!(
            rejection(&verifier, &bad).await,
            JwtRejection::NotThreeSegments
        );
    }
}

#[tokio::test]
async fn rejects_oversized_token() {
    let (issuer, verifier) = setup("").await;
    let claims = with(
        issuer.claims(now()),
        json!({"padding": "x".repeat(MAX_TOKEN_BYTES)}),
    );
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert!(matches!(
        rejection(&verifier, &token).await,
        JwtRejection::TooLarge {
            max: MAX_TOKEN_BYTES,
            ..
        }
    ));
}

/// A token whose key is missing from the cache while a re-fetch is not allowed yet: the
/// issuer may have published it since the last read, so the answer is "not yet", with the
/// time until the next read allowed.
fn assert_not_fetched_yet(outcome: Result<OidcIdentity, OidcError>) {
    match outcome {
        Err(OidcError::KeyNotFetchedYet { retry_in, .. }) => assert!(
            retry_in > Duration::ZERO && retry_in <= Duration::from_secs(10),
            "{retry_in:?}"
        ),
        other => panic!("expected KeyNotFetchedYet, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_rejects_and_throttles() {
    let (issuer, verifier) = setup("").await;
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-b");
    assert_eq!(
        rejection(&verifier, &token).await,
        JwtRejection::UnknownKid {
            kid: "rsa-b".into()
        }
    );
    assert_eq!(issuer.jwks_fetches(), 2, "exactly one re-fetch");
    // Another unknown kid within 10 s: the issuer is not asked again, and the token is not
    // refused either (its key may be newer than that read): it is to come back.
    let other = issuer.sign(
        &json!({"alg": "RS256", "kid": "invented"}),
        &issuer.claims(now()),
        Algorithm::RS256,
        "rsa-a",
    );
    assert_not_fetched_yet(verifier.verify(&other, now()).await);
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn key_rotation_is_picked_up_on_unknown_kid() {
    let (issuer, verifier) = setup("").await;
    let old = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-a");
    verifier.verify(&old, now()).await.unwrap();
    // The issuer rotates: publishes B, retires A.
    issuer.publish(&["rsa-b", "ec-p256", "ed25519"]);
    let new = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-b");
    let id = verifier.verify(&new, now()).await.unwrap();
    assert_eq!(id.subject, "user-1");
    assert_eq!(issuer.jwks_fetches(), 2);
    // The retired key is gone from the cache with the re-fetch; within 10 s of it the token
    // waits for the next read rather than being refused.
    assert_not_fetched_yet(verifier.verify(&old, now()).await);
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let (issuer, verifier) = setup("").await;
    issuer.publish(&["rsa-a", "rsa-b"]);
    let verifier = Arc::new(verifier);
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-b");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (verifier, token) = (Arc::clone(&verifier), token.clone());
            tokio::spawn(async move { verifier.verify(&token, now()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn issuer_down_at_start_is_transient_not_a_rejection() {
    let issuer = TestIssuer::start().await;
    issuer.set_failing(true);
    let verifier = verifier(&[issuer.config("")]);
    let failed = verifier.refresh_all().await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.contains("500"), "{failed:?}");
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-a");
    for _ in 0..2 {
        match verifier.verify(&token, now()).await {
            Err(OidcError::Unavailable { issuer: iss, .. }) => assert_eq!(iss, issuer.url()),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn issuer_down_later_keeps_the_cached_keys() {
    let (issuer, verifier) = setup("").await;
    issuer.set_failing(true);
    assert_eq!(verifier.refresh_all().await.len(), 1);
    let token = issuer.token(&issuer.claims(now()), Algorithm::ES256, "ec-p256");
    verifier.verify(&token, now()).await.unwrap();
}

#[tokio::test]
async fn unreachable_issuer_is_transient() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config: OidcIssuer = serde_yaml::from_str(&format!(
        "{{ issuer: 'http://127.0.0.1:{port}', audiences: [x] }}"
    ))
    .unwrap();
    let verifier = verifier(&[config]);
    let issuer = TestIssuer::start().await;
    let claims = with(
        issuer.claims(now()),
        json!({"iss": format!("http://127.0.0.1:{port}")}),
    );
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert!(matches!(
        verifier.verify(&token, now()).await,
        Err(OidcError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn discovery_issuer_mismatch_is_refused() {
    let issuer = TestIssuer::start().await;
    issuer.set_discovery_issuer("https://evil.example");
    let verifier = verifier(&[issuer.config("")]);
    let failed = verifier.refresh_all().await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.contains("evil.example"), "{failed:?}");
    assert_eq!(issuer.jwks_fetches(), 0, "the JWKS it names is not read");
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-a");
    assert!(matches!(
        verifier.verify(&token, now()).await,
        Err(OidcError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn groups_as_array() {
    let (issuer, verifier) = setup("").await;
    let claims = with(issuer.claims(now()), json!({"groups": ["a", "b", ""]}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert_eq!(
        verifier.verify(&token, now()).await.unwrap().groups,
        ["a", "b"]
    );
}

#[tokio::test]
async fn groups_as_string() {
    let (issuer, verifier) = setup("").await;
    let claims = with(issuer.claims(now()), json!({"groups": "solo"}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert_eq!(
        verifier.verify(&token, now()).await.unwrap().groups,
        ["solo"]
    );
}

#[tokio::test]
async fn missing_email_name_and_groups_are_empty() {
    let (issuer, verifier) = setup("").await;
    let claims = with(
        issuer.claims(now()),
        json!({"email": null, "name": null, "groups": null}),
    );
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    let id = verifier.verify(&token, now()).await.unwrap();
    assert_eq!((id.email, id.name), (None, None));
    assert!(id.groups.is_empty());
}

#[tokio::test]
async fn email_verified_only_when_the_token_says_so() {
    let (issuer, verifier) = setup("").await;
    for (claim, verified) in [
        (json!(true), true),
        (json!("true"), true),
        (json!(false), false),
        (json!("yes"), false),
        (Value::Null, false),
    ] {
        let claims = with(issuer.claims(now()), json!({ "email_verified": claim }));
        let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
        let id = verifier.verify(&token, now()).await.unwrap();
        assert_eq!(id.email_verified, verified, "email_verified: {claim}");
        assert_eq!(id.email.as_deref(), Some("ada@example.com"));
    }
}

#[tokio::test]
async fn rejects_missing_subject() {
    let (issuer, verifier) = setup("").await;
    let claims = with(issuer.claims(now()), json!({"sub": null}));
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    assert_eq!(
        rejection(&verifier, &token).await,
        JwtRejection::MissingSubject {
            claim: "sub".into()
        }
    );
}

#[tokio::test]
async fn custom_claim_names() {
    // Entra ID style: object id, UPN, display name, app roles.
    let (issuer, verifier) =
        setup("claims: { subject: oid, email: upn, name: display_name, groups: roles }").await;
    let claims = with(
        issuer.claims(now()),
        json!({
            "sub": "pairwise-sub",
            "oid": "0f1e2d3c",
            "upn": "ada@contoso.example",
            "display_name": "Ada",
            "roles": ["Tollgate.Admin"],
        }),
    );
    let token = issuer.token(&claims, Algorithm::RS256, "rsa-a");
    let id = verifier.verify(&token, now()).await.unwrap();
    assert_eq!(id.subject, "0f1e2d3c");
    assert_eq!(id.email.as_deref(), Some("ada@contoso.example"));
    assert_eq!(id.name.as_deref(), Some("Ada"));
    assert_eq!(id.groups, ["Tollgate.Admin"]);
}

#[tokio::test]
async fn background_refresh_picks_up_new_keys() {
    let (issuer, verifier) = setup("jwks_refresh: 1s").await;
    let verifier = Arc::new(verifier);
    let refresher = verifier.spawn_refresher();
    issuer.publish(&["rsa-b"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(issuer.jwks_fetches(), 2);
    // Already cached by the background round: no on-demand fetch.
    let token = issuer.token(&issuer.claims(now()), Algorithm::RS256, "rsa-b");
    verifier.verify(&token, now()).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 2);
    refresher.abort();
}
