//! Sign-in with SSO (`src/authn/sso.rs`) against a real OpenID Provider (npm's
//! oidc-provider, `tests/browser/oidc_provider.mjs`): start → the provider's sign-in form →
//! the redirect back → finish, as the web UI's two routes will drive it, on SQLite and on
//! Postgres. Needs `cd tests/browser && npm ci` once.

mod common;

use common::oidc_provider::{
    Browser, OidcProvider, CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET, OTHER_CLIENT, PUBLIC_CLIENT,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tollgate::authn::jwt::JwtRejection;
use tollgate::authn::oidc::{HttpFetch, OidcVerifier};
use tollgate::authn::sso::{code_challenge, SignedIn, Sso, SsoCallback, SsoError, SsoStart};
use tollgate::authn::{Authenticator, MasterKey};
use tollgate::config::Config;
use tollgate::domain::{MembershipSource, Role};
use tollgate::metrics::Metrics;
use tollgate::secret::Secret;
use tollgate::store::{Actor, AuditFilter, NewTeam, NewUser, SharedStore, UserPatch};
use url::Url;

/// tollgate's callback as the browser reaches it; nothing listens there: the test takes
/// the redirect and calls `finish` as the UI's route will.
const REDIRECT_URI: &str = "http://127.0.0.1:9090/ui/auth/callback";

const BASIC_AND_POST: &[&str] = &["client_secret_basic", "client_secret_post"];

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn no_proxy() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// tollgate's sign-in at one issuer: its config, the `Authenticator` Check uses, and the
/// `Sso` the UI's routes call.
struct Tollgate {
    sso: Sso,
    auth: Arc<Authenticator>,
}

/// An issuer entry of `auth.oidc` for `issuer`, with `ui` and the rest of the entry as
/// given (YAML flow mappings).
async fn configure(store: &SharedStore, issuer: &str, ui: &str, policy: &str) -> Tollgate {
    let yaml = format!(
        "auth:\n  oidc:\n    - issuer: {issuer}\n      ui: {ui}\n{}",
        policy
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    let config = Config::parse_str("sso-test.yaml", &yaml, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config;
    let mut auth = Authenticator::new(
        &config,
        MasterKey::from_secret(&Secret::new("tg-master-sso-test")),
        store.clone(),
        None,
        Metrics::new(),
    );
    auth.set_oidc_verifier(Arc::new(OidcVerifier::with_fetch(
        &config.auth.oidc,
        config.auth.max_token_bytes,
        Arc::new(HttpFetch::with_client(no_proxy())),
    )));
    let auth = Arc::new(auth);
    let sso = Sso::with_client(&config, auth.clone(), store.clone(), no_proxy())
        .expect("an issuer with `ui`");
    Tollgate { sso, auth }
}

/// Users of the issuer's groups: `platform-admin` are admins, `engineering` are members of
/// the team Engineering.
const PROVISIONING: &str = "auto_provision: true\n\
                            group_to_role: { platform-admin: admin }\n\
                            group_to_team: { engineering: Engineering }";

fn public_ui() -> String {
    format!("{{ client_id: {PUBLIC_CLIENT}, scopes: [groups] }}")
}

fn confidential_ui(secret: &str) -> String {
    format!("{{ client_id: {CONFIDENTIAL_CLIENT}, client_secret: {secret}, scopes: [groups] }}")
}

/// A provider and a tollgate signing in at it with its public client, provisioning users.
async fn public_setup(store: &SharedStore) -> (OidcProvider, Tollgate) {
    let provider = OidcProvider::start(REDIRECT_URI, BASIC_AND_POST).await;
    let tollgate = configure(store, &provider.issuer, &public_ui(), PROVISIONING).await;
    (provider, tollgate)
}

async fn sqlite() -> (SharedStore, tempfile::TempDir) {
    let (store, dir, _) = common::db::fresh_sqlite().await;
    (Arc::new(store), dir)
}

/// The callback's query, as the UI's router reads it.
fn callback(url: &Url) -> SsoCallback {
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    SsoCallback {
        state: q.get("state").cloned(),
        code: q.get("code").cloned(),
        error: q.get("error").cloned(),
        error_description: q.get("error_description").cloned(),
        iss: q.get("iss").cloned(),
    }
}

fn param(url: &str, name: &str) -> String {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} in {url}"))
        .1
        .into_owned()
}

/// The authorization URL with one parameter replaced (what an attacker between the browser
/// and the provider could do).
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.into()
}

async fn start(tollgate: &Tollgate, return_to: Option<&str>) -> SsoStart {
    tollgate
        .sso
        .start("0", REDIRECT_URI, return_to, now())
        .await
        .expect("sign-in starts")
}

/// Starts, signs in at the provider as `login`, and answers the start and the callback.
async fn to_callback(tollgate: &Tollgate, login: &str) -> (SsoStart, SsoCallback) {
    let started = start(tollgate, None).await;
    let landing = Browser::new(REDIRECT_URI)
        .sign_in(&started.authorization_url, Some(login))
        .await;
    (started, callback(&landing.callback()))
}

async fn finish(
    tollgate: &Tollgate,
    started: &SsoStart,
    cb: &SsoCallback,
) -> Result<SignedIn, SsoError> {
    tollgate
        .sso
        .finish(
            cb,
            Some(started.browser_token.expose()),
            Some("203.0.113.7"),
            now(),
        )
        .await
}

/// A refusal: its message reads on its own and shows none of what the callback carried.
fn refused(outcome: Result<SignedIn, SsoError>, cb: &SsoCallback) -> SsoError {
    let e = outcome.expect_err("the sign-in is refused");
    let shown = format!("{e} {e:?}");
    for secret in [
        cb.code.as_deref(),
        cb.state.as_deref(),
        Some(CONFIDENTIAL_SECRET),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!shown.contains(secret), "{shown} shows {secret}");
    }
    assert!(!e.is_transient(), "{e}");
    e
}

async fn make_team(store: &SharedStore, name: &str) -> String {
    store
        .create_team(
            &Actor::new("master", None),
            NewTeam {
                name: name.into(),
                ..NewTeam::default()
            },
        )
        .await
        .unwrap()
        .id
}

async fn public_client_signs_in_and_finds_the_same_user_again(store: SharedStore) {
    let engineering = make_team(&store, "Engineering").await;
    let (provider, tollgate) = public_setup(&store).await;

    let started = start(&tollgate, Some("/ui/keys?page=2")).await;
    let url = &started.authorization_url;
    assert!(
        url.starts_with(&format!("{}/auth?", provider.issuer)),
        "{url}"
    );
    assert_eq!(param(url, "response_type"), "code");
    assert_eq!(param(url, "client_id"), PUBLIC_CLIENT);
    assert_eq!(param(url, "redirect_uri"), REDIRECT_URI);
    assert_eq!(param(url, "scope"), "openid email profile groups");
    assert_eq!(param(url, "code_challenge_method"), "S256");
    assert_eq!(param(url, "code_challenge").len(), 43);
    assert_eq!(param(url, "state").len(), 43);
    assert_eq!(param(url, "nonce").len(), 43);
    assert_eq!(started.browser_token.expose().len(), 43);
    assert_eq!(started.expires_in, 600);

    let landing = Browser::new(REDIRECT_URI)
        .sign_in(url, Some("alice"))
        .await
        .callback();
    let cb = callback(&landing);
    assert_eq!(cb.iss.as_deref(), Some(provider.issuer.as_str()));
    let signed_in = finish(&tollgate, &started, &cb).await.expect("signed in");
    let user = &signed_in.user;
    assert_eq!(signed_in.return_to, "/ui/keys?page=2");
    assert_eq!(signed_in.issuer, provider.issuer);
    assert_eq!(user.email, "alice@example.com");
    assert_eq!(user.full_name.as_deref(), Some("Alice Example"));
    // Role and team from the groups, as a token of Alice's would give them in Check.
    assert_eq!(user.role, Role::Admin);
    let memberships = store.user_memberships(&user.id).await.unwrap();
    assert_eq!(memberships.len(), 1, "{memberships:?}");
    assert_eq!(memberships[0].team_id, engineering);
    assert_eq!(memberships[0].source, MembershipSource::Group);
    let logins = store
        .list_audit(AuditFilter {
            action: Some("auth.login".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].target.as_deref(), Some(user.id.as_str()));
    assert_eq!(logins[0].source.as_deref(), Some("203.0.113.7"));
    assert_eq!(logins[0].details["method"], "sso");
    assert_eq!(logins[0].details["issuer"], provider.issuer.as_str());
    let created = store
        .list_audit(AuditFilter {
            action: Some("user.create".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].details["source"], "oidc");

    // A second sign-in (a new browser, the form again) finds the same user.
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let again = finish(&tollgate, &started, &cb)
        .await
        .expect("signed in again");
    assert_eq!(again.user.id, user.id);
    assert_eq!(again.return_to, "/ui/");
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

async fn unknown_replayed_and_expired_states_are_refused(store: SharedStore) {
    let (_provider, tollgate) = public_setup(&store).await;
    let (started, cb) = to_callback(&tollgate, "alice").await;

    let unknown = SsoCallback {
        state: Some("an-invented-state".into()),
        ..cb.clone()
    };
    let e = refused(finish(&tollgate, &started, &unknown).await, &cb);
    assert!(matches!(e, SsoError::UnknownState), "{e:?}");
    assert_eq!(
        e.to_string(),
        "This sign-in is unknown or was already used; start signing in again"
    );
    let no_state = SsoCallback {
        state: None,
        ..cb.clone()
    };
    let e = refused(finish(&tollgate, &started, &no_state).await, &cb);
    assert!(matches!(e, SsoError::MissingState), "{e:?}");

    // The real one signs in once; the same callback again is a replay.
    finish(&tollgate, &started, &cb).await.expect("signed in");
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(matches!(e, SsoError::UnknownState), "{e:?}");

    // Finished after ten minutes: expired, and gone (a second try is unknown).
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let late = |at| {
        tollgate
            .sso
            .finish(&cb, Some(started.browser_token.expose()), None, at)
    };
    let e = refused(late(now() + 601).await, &cb);
    assert!(matches!(e, SsoError::Expired), "{e:?}");
    assert_eq!(
        e.to_string(),
        "This sign-in took more than 10 minutes; start signing in again"
    );
    let e = refused(late(now()).await, &cb);
    assert!(matches!(e, SsoError::UnknownState), "{e:?}");

    // A sign-in left to expire is deleted by the next start.
    let stale = tollgate
        .sso
        .start("0", REDIRECT_URI, None, now() - 700)
        .await
        .unwrap();
    start(&tollgate, None).await;
    let stale_cb = SsoCallback {
        state: Some(param(&stale.authorization_url, "state")),
        code: Some("whatever".into()),
        ..SsoCallback::default()
    };
    let e = refused(finish(&tollgate, &stale, &stale_cb).await, &stale_cb);
    assert!(matches!(e, SsoError::UnknownState), "{e:?}");
}

async fn racing_callbacks_sign_in_once(store: SharedStore) {
    let (_provider, tollgate) = public_setup(&store).await;
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let outcomes =
        futures::future::join_all((0..8).map(|_| finish(&tollgate, &started, &cb))).await;
    let signed_in = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(signed_in, 1, "{outcomes:?}");
    for outcome in outcomes.into_iter().filter(Result::is_err) {
        let e = refused(outcome, &cb);
        assert!(matches!(e, SsoError::UnknownState), "{e:?}");
    }
}

async fn confidential_client_signs_in_with_basic_or_post(store: SharedStore) {
    // The provider takes the client's secret only in the method the client is registered
    // with: basic where the discovery document lists both, post where it lists only post.
    let mut users = Vec::new();
    for methods in [BASIC_AND_POST, &["client_secret_post"][..]] {
        let provider = OidcProvider::start(REDIRECT_URI, methods).await;
        let tollgate = configure(
            &store,
            &provider.issuer,
            &confidential_ui(CONFIDENTIAL_SECRET),
            PROVISIONING,
        )
        .await;
        let (started, cb) = to_callback(&tollgate, "alice").await;
        let signed_in = finish(&tollgate, &started, &cb)
            .await
            .unwrap_or_else(|e| panic!("{methods:?}: {e}"));
        users.push(signed_in.user.id.clone());

        // A wrong secret: the provider refuses the client, and nothing shows the secret.
        let wrong = configure(
            &store,
            &provider.issuer,
            &confidential_ui("not-the-secret-0987654321"),
            PROVISIONING,
        )
        .await;
        let (started, cb) = to_callback(&wrong, "alice").await;
        let e = refused(finish(&wrong, &started, &cb).await, &cb);
        match &e {
            SsoError::CodeRefused { error, .. } => assert_eq!(error, "invalid_client"),
            other => panic!("{other:?}"),
        }
        assert!(!e.to_string().contains("not-the-secret"), "{e}");
    }
    // The second issuer's identity was linked by its verified email to the first's user.
    assert_eq!(users[0], users[1]);
}

store_suite!(
    public_client_signs_in_and_finds_the_same_user_again,
    unknown_replayed_and_expired_states_are_refused,
    racing_callbacks_sign_in_once,
    confidential_client_signs_in_with_basic_or_post,
);

#[tokio::test]
async fn a_tampered_code_or_a_wrong_verifier_is_refused_by_the_provider() {
    let (store, _dir) = sqlite().await;
    let (_provider, tollgate) = public_setup(&store).await;

    let (started, mut cb) = to_callback(&tollgate, "alice").await;
    let code = cb.code.clone().unwrap();
    cb.code = Some(format!("{}x", &code[..code.len() - 1]));
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(!e.to_string().contains(&code[..code.len() - 1]), "{e}");
    match &e {
        SsoError::CodeRefused { error, .. } => assert_eq!(error, "invalid_grant"),
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("The sign-in provider refused to complete the sign-in: invalid_grant"),
        "{e}"
    );

    // The provider was given the challenge of another verifier than the one tollgate keeps.
    let started = start(&tollgate, None).await;
    let tampered = with_param(
        &started.authorization_url,
        "code_challenge",
        &code_challenge("another-verifier-of-at-least-forty-three-characters"),
    );
    let landing = Browser::new(REDIRECT_URI)
        .sign_in(&tampered, Some("alice"))
        .await;
    let cb = callback(&landing.callback());
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    match &e {
        SsoError::CodeRefused { error, .. } => assert_eq!(error, "invalid_grant"),
        other => panic!("{other:?}"),
    }
    assert!(store.list_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn id_tokens_of_another_sign_in_or_another_client_are_refused() {
    let (store, _dir) = sqlite().await;
    let (provider, tollgate) = public_setup(&store).await;

    // The provider was asked for another nonce: its ID token belongs to another sign-in.
    let started = start(&tollgate, None).await;
    let tampered = with_param(&started.authorization_url, "nonce", "someone-elses-nonce");
    let landing = Browser::new(REDIRECT_URI)
        .sign_in(&tampered, Some("alice"))
        .await;
    let cb = callback(&landing.callback());
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(
        matches!(e, SsoError::InvalidIdToken(JwtRejection::WrongNonce)),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "The sign-in provider's ID token was refused: token `nonce` is not the one this sign-in sent"
    );

    // ID tokens signed by the provider, minted for another client.
    let cases = [
        (json!({"aud": OTHER_CLIENT}), JwtRejection::WrongAudience),
        (
            json!({"aud": [PUBLIC_CLIENT, OTHER_CLIENT]}),
            JwtRejection::WrongAuthorizedParty,
        ),
        (
            json!({"aud": [PUBLIC_CLIENT, OTHER_CLIENT], "azp": OTHER_CLIENT}),
            JwtRejection::WrongAuthorizedParty,
        ),
        (
            json!({"azp": OTHER_CLIENT}),
            JwtRejection::WrongAuthorizedParty,
        ),
        (
            json!({"iss": "https://elsewhere.example"}),
            JwtRejection::WrongIssuer,
        ),
    ];
    for (claims, rejection) in cases {
        provider.fault_id_token_claims(claims.clone()).await;
        let (started, cb) = to_callback(&tollgate, "alice").await;
        let e = refused(finish(&tollgate, &started, &cb).await, &cb);
        match &e {
            SsoError::InvalidIdToken(r) => assert_eq!(r, &rejection, "{claims}"),
            other => panic!("{claims}: {other:?}"),
        }
    }
    let (started, cb) = to_callback(&tollgate, "alice").await;
    provider
        .fault_id_token_claims(json!({"exp": now() - 3600, "iat": now() - 7200}))
        .await;
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(
        matches!(e, SsoError::InvalidIdToken(JwtRejection::Expired { .. })),
        "{e:?}"
    );
    // Several audiences with this client as `azp` are accepted.
    provider
        .fault_id_token_claims(json!({"aud": [PUBLIC_CLIENT, OTHER_CLIENT], "azp": PUBLIC_CLIENT}))
        .await;
    let (started, cb) = to_callback(&tollgate, "alice").await;
    finish(&tollgate, &started, &cb).await.expect("signed in");
}

#[tokio::test]
async fn the_providers_refusal_is_shown_as_such() {
    let (store, _dir) = sqlite().await;
    let (_provider, tollgate) = public_setup(&store).await;
    let started = start(&tollgate, None).await;
    let landing = Browser::new(REDIRECT_URI)
        .sign_in(&started.authorization_url, None)
        .await;
    let cb = callback(&landing.callback());
    assert!(cb.code.is_none());
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(
        matches!(&e, SsoError::Refused { error, .. } if error == "access_denied"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "The sign-in provider refused the sign-in: access_denied (End-User aborted interaction)"
    );

    // An error made up by someone else (with no sign-in of this browser behind it) is not
    // shown: the state is unknown.
    let forged = SsoCallback {
        state: Some("forged".into()),
        error: Some("access_denied".into()),
        error_description: Some("Call +1 555 0100 to unlock your account".into()),
        ..SsoCallback::default()
    };
    let e = refused(finish(&tollgate, &started, &forged).await, &forged);
    assert!(matches!(e, SsoError::UnknownState), "{e:?}");
}

#[tokio::test]
async fn another_browser_or_another_issuer_is_refused() {
    let (store, _dir) = sqlite().await;
    let (_provider, tollgate) = public_setup(&store).await;

    // A callback brought by a browser without the sign-in's cookie, or with another one:
    // refused, and the sign-in is used up.
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let other = start(&tollgate, None).await;
    for token in [None, Some(other.browser_token.expose())] {
        let (started_again, cb_again) = to_callback(&tollgate, "alice").await;
        let e = refused(
            tollgate.sso.finish(&cb_again, token, None, now()).await,
            &cb_again,
        );
        assert!(matches!(e, SsoError::OtherBrowser), "{e:?}");
        let e = refused(
            finish(&tollgate, &started_again, &cb_again).await,
            &cb_again,
        );
        assert!(matches!(e, SsoError::UnknownState), "{e:?}");
    }

    // RFC 9207: an answer naming another issuer, or none from an issuer that names itself.
    let e = refused(
        finish(
            &tollgate,
            &started,
            &SsoCallback {
                iss: Some("https://elsewhere.example".into()),
                ..cb.clone()
            },
        )
        .await,
        &cb,
    );
    assert!(matches!(e, SsoError::WrongIssuer), "{e:?}");
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let e = refused(
        finish(
            &tollgate,
            &started,
            &SsoCallback {
                iss: None,
                ..cb.clone()
            },
        )
        .await,
        &cb,
    );
    assert!(matches!(e, SsoError::WrongIssuer), "{e:?}");

    let (started, cb) = to_callback(&tollgate, "alice").await;
    let e = refused(
        finish(
            &tollgate,
            &started,
            &SsoCallback {
                code: None,
                ..cb.clone()
            },
        )
        .await,
        &cb,
    );
    assert!(matches!(e, SsoError::MissingCode), "{e:?}");
    assert!(store.list_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn return_to_off_site_is_ignored() {
    let (store, _dir) = sqlite().await;
    let (_provider, tollgate) = public_setup(&store).await;
    for elsewhere in [
        "https://evil.example/ui/",
        "//evil.example/ui/",
        "/\\evil.example",
        "/ui/../admin/keys",
        "/ui/%2e%2e/admin",
        "/admin/keys",
    ] {
        let started = start(&tollgate, Some(elsewhere)).await;
        let landing = Browser::new(REDIRECT_URI)
            .sign_in(&started.authorization_url, Some("alice"))
            .await;
        let cb = callback(&landing.callback());
        let signed_in = finish(&tollgate, &started, &cb).await.expect("signed in");
        assert_eq!(signed_in.return_to, "/ui/", "{elsewhere}");
    }
}

#[tokio::test]
async fn providers_by_name_or_position_and_bad_starts() {
    let (store, _dir) = sqlite().await;
    let provider = OidcProvider::start(REDIRECT_URI, BASIC_AND_POST).await;
    let ui = format!("{{ client_id: {PUBLIC_CLIENT}, name: corp }}");
    let tollgate = configure(&store, &provider.issuer, &ui, PROVISIONING).await;
    let providers = tollgate.sso.providers();
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0].id, "corp");
    assert_eq!(providers[0].label, "corp");
    assert_eq!(providers[0].issuer, provider.issuer);
    for id in ["corp", "0"] {
        let started = tollgate
            .sso
            .start(id, REDIRECT_URI, None, now())
            .await
            .unwrap();
        // No `groups` scope configured: the base scopes only.
        assert_eq!(
            param(&started.authorization_url, "scope"),
            "openid email profile"
        );
    }
    for id in ["1", "other", "<script>"] {
        let e = tollgate
            .sso
            .start(id, REDIRECT_URI, None, now())
            .await
            .unwrap_err();
        assert!(matches!(e, SsoError::UnknownProvider(_)), "{e:?}");
    }
    let e = tollgate
        .sso
        .start("corp", "https://evil.example/collect", None, now())
        .await
        .unwrap_err();
    assert!(matches!(e, SsoError::InvalidRedirectUri(_)), "{e:?}");

    // Without `ui`, an issuer offers no sign-in.
    let yaml = format!(
        "auth:\n  oidc:\n    - {{ issuer: {}, audiences: [x] }}\n",
        provider.issuer
    );
    let config = Config::parse_str("t.yaml", &yaml, &|_| None)
        .unwrap()
        .config;
    let auth = Authenticator::new(
        &config,
        MasterKey::from_secret(&Secret::new("m")),
        store.clone(),
        None,
        Metrics::new(),
    );
    assert!(Sso::new(&config, Arc::new(auth), store.clone()).is_none());
}

#[tokio::test]
async fn no_account_and_blocked_users_are_refused() {
    let (store, _dir) = sqlite().await;
    let provider = OidcProvider::start(REDIRECT_URI, BASIC_AND_POST).await;
    let tollgate = configure(
        &store,
        &provider.issuer,
        &public_ui(),
        "auto_provision: false",
    )
    .await;

    let (started, cb) = to_callback(&tollgate, "alice").await;
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(matches!(e, SsoError::NoAccount), "{e:?}");
    assert_eq!(
        e.to_string(),
        "This identity has no tollgate account; ask an admin to create one with your email"
    );

    // An admin creates the account with Alice's email: her next sign-in is linked to it.
    let admin = Actor::new("master", None);
    let alice = store
        .create_user(
            &admin,
            NewUser {
                username: "alice".into(),
                email: "alice@example.com".into(),
                ..NewUser::default()
            },
        )
        .await
        .unwrap();
    // (The admin API tells the authenticator about the users it writes; so does this test.)
    tollgate.auth.user_created();
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let signed_in = finish(&tollgate, &started, &cb).await.expect("linked");
    assert_eq!(signed_in.user.id, alice.id);

    // Blocked: refused, and audited as a failed login.
    store
        .update_user(
            &admin,
            &alice.id,
            UserPatch {
                blocked: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    tollgate
        .auth
        .invalidate(tollgate::authn::Invalidation::User(alice.id.clone()));
    let (started, cb) = to_callback(&tollgate, "alice").await;
    let e = refused(finish(&tollgate, &started, &cb).await, &cb);
    assert!(matches!(e, SsoError::Blocked), "{e:?}");
    let failed = store
        .list_audit(AuditFilter {
            action: Some("auth.login_failed".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].details["reason"], "blocked");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_transient_failure() {
    let (store, _dir) = sqlite().await;
    let port = common::envoy::free_port();
    let tollgate = configure(
        &store,
        &format!("http://127.0.0.1:{port}"),
        &public_ui(),
        "",
    )
    .await;
    let e = tollgate
        .sso
        .start("0", REDIRECT_URI, None, now())
        .await
        .unwrap_err();
    assert!(matches!(e, SsoError::ProviderUnavailable { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("try again"), "{e}");
}
