//! Passkeys end to end below the web UI: the ceremonies of `authn::passkey` against the real
//! store (every `store_suite!` test runs on SQLite and on Postgres), driven by the software
//! authenticator of `tests/common/authenticator.rs`, whose layout is checked here against
//! a real authenticator's output (`real_authenticator_vector`).

mod common;

use common::authenticator::{
    attestation_object_none, authenticator_data, cbor, client_data_json, cose_es256, es256_sign,
    Answer, SoftAuthenticator, AT, BE, BS, UP, UV,
};

use ciborium::value::Value;
use serde_json::{json, Value as Json};
use std::sync::Arc;
use tollgate::authn::passkey::wire::{b64url, b64url_decode};
use tollgate::authn::passkey::{
    verify_assertion, verify_registration, AuthenticationRequest, AuthenticationStart, Issued,
    PasskeyError, Passkeys, Refusal, RegistrationRequest, RelyingParty, UserVerification,
    CHALLENGE_TTL_SECS,
};
use tollgate::domain::{AuditEvent, User};
use tollgate::store::{Actor, AuditFilter, NewUser, SharedStore, MAX_PASSKEYS_PER_USER};

const RP_ID: &str = "tollgate.example.com";
const ORIGIN: &str = "https://tollgate.example.com";
const NOW: i64 = 1_800_000_000;

fn rp() -> RelyingParty {
    RelyingParty::new(RP_ID, "tollgate", &[ORIGIN]).unwrap()
}

fn admin() -> Actor {
    Actor::new("master", Some("10.0.0.7".to_string()))
}

fn actor(user: &User) -> Actor {
    Actor::new(format!("user:{}", user.id), Some("10.0.0.8".to_string()))
}

fn anonymous() -> Actor {
    Actor::new("anonymous", Some("10.0.0.9".to_string()))
}

async fn user(store: &SharedStore, name: &str) -> User {
    store
        .create_user(
            &admin(),
            NewUser {
                username: name.to_string(),
                email: format!("{name}@example.com"),
                full_name: Some(format!("{name} Example")),
                ..NewUser::default()
            },
        )
        .await
        .unwrap()
}

async fn audit(store: &SharedStore, action: &str) -> Vec<AuditEvent> {
    store
        .list_audit(AuditFilter {
            action: Some(action.to_string()),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

fn refusal(result: Result<impl std::fmt::Debug, PasskeyError>) -> Refusal {
    match result {
        Err(PasskeyError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn registration(body: &Json) -> RegistrationRequest {
    RegistrationRequest::from_json(body.to_string().as_bytes()).unwrap()
}

fn authentication(body: &Json) -> AuthenticationRequest {
    AuthenticationRequest::from_json(body.to_string().as_bytes()).unwrap()
}

fn options_json<T: serde::Serialize>(options: &T) -> Json {
    serde_json::to_value(options).unwrap()
}

/// Registers a passkey of a new software authenticator for `user`.
async fn register(passkeys: &Passkeys, user: &User) -> SoftAuthenticator {
    let mut authenticator = SoftAuthenticator::new();
    let options = passkeys
        .start_registration(&rp(), user, None, NOW)
        .await
        .unwrap();
    let body = authenticator.create(
        &options_json(&options),
        &Answer::create(ORIGIN, RP_ID),
        Some("Laptop"),
    );
    passkeys
        .finish_registration(&rp(), &actor(user), user, &registration(&body), None, NOW)
        .await
        .unwrap();
    authenticator
}

/// Options for a sign-in without a username.
async fn sign_in_options(passkeys: &Passkeys) -> Json {
    options_json(
        &passkeys
            .start_authentication(&rp(), None, None, NOW)
            .await
            .unwrap(),
    )
}

store_suite!(
    register_then_authenticate,
    sign_in_with_a_username,
    wrong_origin,
    wrong_rp_id_hash,
    wrong_type,
    cross_origin_refused,
    replayed_challenge,
    expired_challenge,
    concurrent_finishes_take_one_challenge,
    bound_ceremonies,
    bad_signature,
    counter_regression,
    authenticators_without_counter,
    user_presence_required,
    user_verification_when_required,
    unknown_credential,
    registered_twice,
    user_handle_mismatch,
    malformed_answers_store_nothing,
    rename_and_delete_only_own,
    deleting_a_user_deletes_passkeys,
    passkeys_per_user_are_capped,
);

async fn register_then_authenticate(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;

    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let o = options_json(&options);
    let pk = &o["publicKey"];
    assert_eq!(pk["rp"], json!({"id": RP_ID, "name": "tollgate"}));
    let handle = b64url_decode("user.id", pk["user"]["id"].as_str().unwrap()).unwrap();
    assert_eq!(handle.len(), 32, "an opaque handle of 32 random bytes");
    for personal in [&ann.id, &ann.email, &ann.username] {
        assert!(!String::from_utf8_lossy(&handle).contains(personal.as_str()));
    }
    assert_eq!(pk["user"]["name"], "ann");
    assert_eq!(pk["user"]["displayName"], "ann Example");
    let challenge = b64url_decode("challenge", pk["challenge"].as_str().unwrap()).unwrap();
    assert_eq!(challenge.len(), 32);
    assert_eq!(
        pk["pubKeyCredParams"],
        json!([{"type":"public-key","alg":-7},{"type":"public-key","alg":-8},{"type":"public-key","alg":-257}])
    );
    assert_eq!(pk["excludeCredentials"], json!([]));
    assert_eq!(pk["attestation"], "none");
    assert_eq!(
        pk["authenticatorSelection"],
        json!({"residentKey":"preferred","requireResidentKey":false,"userVerification":"preferred"})
    );
    assert_eq!(pk["timeout"], json!(CHALLENGE_TTL_SECS * 1000));

    let mut authenticator = SoftAuthenticator::new();
    let body = authenticator.create(&o, &Answer::create(ORIGIN, RP_ID), Some("  Laptop "));
    let passkey = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await
        .unwrap();
    assert_eq!(passkey.user_id, ann.id);
    assert_eq!(passkey.name, "Laptop");
    assert_eq!(passkey.algorithm, -7);
    assert_eq!(passkey.sign_count, 1);
    assert_eq!(passkey.credential_id, b64url(&authenticator.credential_id));
    assert_eq!(passkey.transports, ["internal", "hybrid"]);
    assert_eq!(passkey.aaguid, hex::encode(b"tollgate-testing"));
    assert!(passkey.last_used_at.is_none());
    assert_eq!(passkeys.list(&ann.id).await.unwrap(), vec![passkey.clone()]);
    let created = audit(&store, "passkey.create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].target.as_deref(), Some(ann.id.as_str()));
    assert_eq!(created[0].actor, format!("user:{}", ann.id));
    assert_eq!(created[0].details["passkey"], json!(passkey.id));
    let shown = created[0].details.to_string();
    let stored = store
        .passkey_credential(&passkey.credential_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !shown.contains(&stored.public_key),
        "no key material in the audit log"
    );

    // The same user's handle again, and the passkey excluded from a second registration.
    let again = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(again["publicKey"]["user"]["id"], pk["user"]["id"]);
    assert_eq!(
        again["publicKey"]["excludeCredentials"],
        json!([{"type":"public-key","id": passkey.credential_id,"transports":["internal","hybrid"]}])
    );

    // Sign in without a username: any passkey; the user handle says whose.
    let options = sign_in_options(&passkeys).await;
    assert_eq!(options["publicKey"]["allowCredentials"], json!([]));
    assert_eq!(options["publicKey"]["rpId"], RP_ID);
    assert_eq!(options["publicKey"]["userVerification"], "preferred");
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    let login = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW + 10)
        .await
        .unwrap();
    assert_eq!(login.user.id, ann.id);
    assert!(login.user_verified);
    assert_eq!(login.passkey.sign_count, 2);
    assert_eq!(login.passkey.last_used_at, Some(NOW + 10));
    let listed = passkeys.list(&ann.id).await.unwrap();
    assert_eq!(listed[0].sign_count, 2);
    assert_eq!(listed[0].last_used_at, Some(NOW + 10));
}

async fn sign_in_with_a_username(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut laptop = register(&passkeys, &ann).await;
    let phone = register(&passkeys, &ann).await;

    let start = AuthenticationStart::from_json(br#"{"username":"ann"}"#).unwrap();
    let options = options_json(
        &passkeys
            .start_authentication(&rp(), start.username.as_deref(), None, NOW)
            .await
            .unwrap(),
    );
    let allowed: Vec<&str> = options["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        allowed,
        [b64url(&laptop.credential_id), b64url(&phone.credential_id)]
    );
    // A non-discoverable credential: no user handle comes back, and none is needed.
    let answer = Answer {
        user_handle: Some(None),
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = laptop.get(&options, &answer);
    let login = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();
    assert_eq!(login.user.id, ann.id);

    // By email too; an unknown name answers like no name at all.
    let by_email = options_json(
        &passkeys
            .start_authentication(&rp(), Some("ann@example.com"), None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(
        by_email["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let unknown = options_json(
        &passkeys
            .start_authentication(&rp(), Some("nobody"), None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(unknown["publicKey"]["allowCredentials"], json!([]));
    let no_passkeys = user(&store, "bob").await;
    let of_bob = options_json(
        &passkeys
            .start_authentication(&rp(), Some(&no_passkeys.username), None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(of_bob["publicKey"]["allowCredentials"], json!([]));
    let shape = |v: &Json| {
        let mut v = v.clone();
        v["publicKey"]["challenge"] = json!("");
        v
    };
    assert_eq!(shape(&unknown), shape(&of_bob));
    // Without a username, a passkey that returns no user handle cannot say whose it is.
    let options = sign_in_options(&passkeys).await;
    let body = laptop.get(&options, &answer);
    assert_eq!(
        refusal(
            passkeys
                .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
                .await
        ),
        Refusal::UserHandleMissing
    );
}

async fn wrong_origin(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    for origin in [
        "https://evil.example",
        "http://tollgate.example.com",
        "https://tollgate.example.com:8443",
        "https://sub.tollgate.example.com",
    ] {
        let options = passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap();
        let answer = Answer {
            origin: origin.to_string(),
            ..Answer::create(ORIGIN, RP_ID)
        };
        let body = SoftAuthenticator::new().create(&options_json(&options), &answer, None);
        let result = passkeys
            .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
            .await;
        assert_eq!(refusal(result), Refusal::WrongOrigin(origin.to_string()));
    }
    assert!(passkeys.list(&ann.id).await.unwrap().is_empty());

    let mut authenticator = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let answer = Answer {
        origin: "https://evil.example".to_string(),
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = authenticator.get(&options, &answer);
    let err = refusal(
        passkeys
            .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
            .await,
    );
    assert_eq!(
        err,
        Refusal::WrongOrigin("https://evil.example".to_string())
    );
    assert!(err.to_string().contains("not this site"));

    // A relying party with two origins accepts both.
    let two = RelyingParty::new(
        RP_ID,
        "tollgate",
        &[ORIGIN, "https://ui.tollgate.example.com"],
    )
    .unwrap();
    let options = options_json(
        &passkeys
            .start_authentication(&two, None, None, NOW)
            .await
            .unwrap(),
    );
    let answer = Answer {
        origin: "https://ui.tollgate.example.com".to_string(),
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = authenticator.get(&options, &answer);
    passkeys
        .finish_authentication(&two, &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();
}

async fn wrong_rp_id_hash(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let answer = Answer {
        rp_id: "example.com".to_string(),
        ..Answer::create(ORIGIN, RP_ID)
    };
    let body = SoftAuthenticator::new().create(&options_json(&options), &answer, None);
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::RelyingPartyHash);

    let mut authenticator = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let answer = Answer {
        rp_id: "example.com".to_string(),
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = authenticator.get(&options, &answer);
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::RelyingPartyHash);

    // A ceremony started under one relying party id cannot be finished under another.
    let options = sign_in_options(&passkeys).await;
    let other = RelyingParty::new("example.com", "tollgate", &["https://example.com"]).unwrap();
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    let result = passkeys
        .finish_authentication(&other, &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::RelyingPartyMismatch);
}

async fn wrong_type(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let answer = Answer {
        typ: "webauthn.get",
        ..Answer::create(ORIGIN, RP_ID)
    };
    let body = SoftAuthenticator::new().create(&options_json(&options), &answer, None);
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(
        refusal(result),
        Refusal::WrongType {
            expected: "webauthn.create",
            got: "webauthn.get".to_string()
        }
    );

    let mut authenticator = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let answer = Answer {
        typ: "webauthn.create",
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = authenticator.get(&options, &answer);
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(
        refusal(result),
        Refusal::WrongType {
            expected: "webauthn.get",
            got: "webauthn.create".to_string()
        }
    );

    // A registration challenge does not finish a sign-in (and is used up by trying).
    let reg = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    let body = authenticator.get(&reg, &Answer::get(ORIGIN, RP_ID));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge);
}

async fn cross_origin_refused(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let answer = Answer {
        cross_origin: true,
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = authenticator.get(&options, &answer);
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::CrossOrigin);
}

async fn replayed_challenge(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = SoftAuthenticator::new();
    let options = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    let body = authenticator.create(&options, &Answer::create(ORIGIN, RP_ID), None);
    passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await
        .unwrap();
    // The same answer again, and a second authenticator's answer to the same options.
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge);
    let body = SoftAuthenticator::new().create(&options, &Answer::create(ORIGIN, RP_ID), None);
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge);

    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge);
    // A fresh signature over the used challenge: still used.
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge);
    // A challenge that was never issued.
    let answer = Answer {
        challenge: Some(b64url(&[7u8; 32])),
        ..Answer::get(ORIGIN, RP_ID)
    };
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(&options, &answer);
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge);
}

async fn expired_challenge(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let body = SoftAuthenticator::new().create(
        &options_json(&options),
        &Answer::create(ORIGIN, RP_ID),
        None,
    );
    let late = NOW + CHALLENGE_TTL_SECS;
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, late)
        .await;
    assert_eq!(refusal(result), Refusal::ExpiredChallenge);
    assert!(passkeys.list(&ann.id).await.unwrap().is_empty());

    let mut authenticator = register(&passkeys, &ann).await;
    let short = Passkeys::new(store.clone()).with_challenge_ttl(30);
    let options = options_json(
        &short
            .start_authentication(&rp(), None, None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(options["publicKey"]["timeout"], json!(30_000));
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    let result = short
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW + 31)
        .await;
    assert_eq!(refusal(result), Refusal::ExpiredChallenge);
    // One second before its end it still works.
    let options = options_json(
        &short
            .start_authentication(&rp(), None, None, NOW)
            .await
            .unwrap(),
    );
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    short
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW + 29)
        .await
        .unwrap();

    // Expired challenges nobody finished are deleted by later ones.
    let stale = options_json(
        &short
            .start_authentication(&rp(), None, None, NOW)
            .await
            .unwrap(),
    );
    short
        .start_authentication(&rp(), None, None, NOW + 3600)
        .await
        .unwrap();
    let body = authenticator.get(&stale, &Answer::get(ORIGIN, RP_ID));
    let result = short
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW + 1)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownChallenge, "pruned");
}

async fn concurrent_finishes_take_one_challenge(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    let request = Arc::new(authentication(&body));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let passkeys = passkeys.clone();
            let request = request.clone();
            tokio::spawn(async move {
                passkeys
                    .finish_authentication(&rp(), &anonymous(), &request, None, NOW)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(PasskeyError::Refused(Refusal::UnknownChallenge)) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 1, "one finish gets the challenge");
}

async fn bound_ceremonies(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let options = passkeys
        .start_registration(&rp(), &ann, Some("session-a"), NOW)
        .await
        .unwrap();
    let mut authenticator = SoftAuthenticator::new();
    let body = authenticator.create(
        &options_json(&options),
        &Answer::create(ORIGIN, RP_ID),
        None,
    );
    let result = passkeys
        .finish_registration(
            &rp(),
            &actor(&ann),
            &ann,
            &registration(&body),
            Some("session-b"),
            NOW,
        )
        .await;
    assert_eq!(refusal(result), Refusal::BindingMismatch);

    let options = passkeys
        .start_registration(&rp(), &ann, Some("session-a"), NOW)
        .await
        .unwrap();
    let body = authenticator.create(
        &options_json(&options),
        &Answer::create(ORIGIN, RP_ID),
        None,
    );
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(
        refusal(result),
        Refusal::BindingMismatch,
        "unbound finish of a bound start"
    );

    let options = passkeys
        .start_registration(&rp(), &ann, Some("session-a"), NOW)
        .await
        .unwrap();
    let body = authenticator.create(
        &options_json(&options),
        &Answer::create(ORIGIN, RP_ID),
        None,
    );
    passkeys
        .finish_registration(
            &rp(),
            &actor(&ann),
            &ann,
            &registration(&body),
            Some("session-a"),
            NOW,
        )
        .await
        .unwrap();

    // A registration started for one user cannot be finished by another.
    let bob = user(&store, "bob").await;
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let body = SoftAuthenticator::new().create(
        &options_json(&options),
        &Answer::create(ORIGIN, RP_ID),
        None,
    );
    let result = passkeys
        .finish_registration(&rp(), &actor(&bob), &bob, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::WrongRegistrant);
    assert!(passkeys.list(&bob.id).await.unwrap().is_empty());
}

async fn bad_signature(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = register(&passkeys, &ann).await;

    // Signed by another key.
    let options = sign_in_options(&passkeys).await;
    let other = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let body = authenticator.get_signed_by(&options, &Answer::get(ORIGIN, RP_ID), &other);
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::BadSignature);

    // The right key, but the authenticator data changed after signing (UV bit added).
    let options = sign_in_options(&passkeys).await;
    let mut body = authenticator.get(
        &options,
        &Answer {
            flags: UP,
            ..Answer::get(ORIGIN, RP_ID)
        },
    );
    let auth_data = body["credential"]["response"]["authenticatorData"]
        .as_str()
        .unwrap();
    let mut bytes = b64url_decode("a", auth_data).unwrap();
    bytes[32] |= UV;
    body["credential"]["response"]["authenticatorData"] = json!(b64url(&bytes));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::BadSignature);

    // A signature that is not DER at all.
    let options = sign_in_options(&passkeys).await;
    let mut body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    body["credential"]["response"]["signature"] = json!(b64url(&[0x30, 0x02, 0x01]));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::BadSignature);

    let stored = passkeys.list(&ann.id).await.unwrap();
    assert_eq!(
        stored[0].sign_count, 1,
        "no refused sign-in moved the counter"
    );
    assert!(stored[0].last_used_at.is_none());
}

async fn counter_regression(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = register(&passkeys, &ann).await; // counter 1
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID)); // 2
    passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();

    // A clone that is behind: the same counter again, a lower one, and 0.
    for count in [2, 1, 0] {
        let options = sign_in_options(&passkeys).await;
        let key = authenticator.key.clone();
        let body = authenticator.assertion(&options, &Answer::get(ORIGIN, RP_ID), &key, count);
        let result = passkeys
            .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
            .await;
        assert_eq!(
            refusal(result),
            Refusal::CounterRegression {
                stored: 2,
                presented: count
            }
        );
    }
    let audited = audit(&store, "auth.passkey_counter").await;
    assert_eq!(audited.len(), 3);
    assert_eq!(audited[0].target.as_deref(), Some(ann.id.as_str()));
    assert_eq!(audited[0].actor, "anonymous");
    assert_eq!(audited[0].details["stored_count"], json!(2));
    // The real authenticator goes on.
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID)); // 3
    let login = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();
    assert_eq!(login.passkey.sign_count, 3);
}

async fn authenticators_without_counter(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = SoftAuthenticator::with_counter(false);
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let answer = Answer {
        flags: UP | UV | AT | BE | BS,
        ..Answer::create(ORIGIN, RP_ID)
    };
    let body = authenticator.create(&options_json(&options), &answer, Some("Synced"));
    let passkey = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await
        .unwrap();
    assert_eq!(passkey.sign_count, 0);
    assert!(passkey.backup_eligible && passkey.backed_up);
    // A synced passkey keeps no counter: 0 after 0 is fine, every time.
    for _ in 0..2 {
        let options = sign_in_options(&passkeys).await;
        let body = authenticator.get(
            &options,
            &Answer {
                flags: UP | UV | BE,
                ..Answer::get(ORIGIN, RP_ID)
            },
        );
        let login = passkeys
            .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
            .await
            .unwrap();
        assert_eq!(login.passkey.sign_count, 0);
        assert!(!login.passkey.backed_up, "the backup state is updated");
    }
    // Backed up but not backup-eligible is no valid state.
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(
        &options,
        &Answer {
            flags: UP | BS,
            ..Answer::get(ORIGIN, RP_ID)
        },
    );
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::BackupState);
}

async fn user_presence_required(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let answer = Answer {
        flags: UV | AT,
        ..Answer::create(ORIGIN, RP_ID)
    };
    let body = SoftAuthenticator::new().create(&options_json(&options), &answer, None);
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UserNotPresent);

    let mut authenticator = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(
        &options,
        &Answer {
            flags: UV,
            ..Answer::get(ORIGIN, RP_ID)
        },
    );
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UserNotPresent);

    // Attested credential data flag missing from a registration.
    let options = passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .unwrap();
    let mut other = SoftAuthenticator::new();
    let body = other.create(
        &options_json(&options),
        &Answer {
            flags: UP,
            ..Answer::create(ORIGIN, RP_ID)
        },
        None,
    );
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    let err = refusal(result);
    assert!(
        matches!(err, Refusal::Malformed(ref m) if m.contains("follow what the flags announce")),
        "{err:?}"
    );
}

async fn user_verification_when_required(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let strict = rp().with_user_verification(UserVerification::Required);
    let options = options_json(
        &passkeys
            .start_registration(&strict, &ann, None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(
        options["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    let mut authenticator = SoftAuthenticator::new();
    let body = authenticator.create(
        &options,
        &Answer {
            flags: UP | AT,
            ..Answer::create(ORIGIN, RP_ID)
        },
        None,
    );
    let result = passkeys
        .finish_registration(&strict, &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UserNotVerified);

    let mut authenticator = register(&passkeys, &ann).await;
    let options = options_json(
        &passkeys
            .start_authentication(&strict, None, None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(options["publicKey"]["userVerification"], "required");
    let body = authenticator.get(
        &options,
        &Answer {
            flags: UP,
            ..Answer::get(ORIGIN, RP_ID)
        },
    );
    let result = passkeys
        .finish_authentication(&strict, &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UserNotVerified);
    // Preferred: presence alone is enough, and the answer says it was not verified.
    let options = sign_in_options(&passkeys).await;
    let body = authenticator.get(
        &options,
        &Answer {
            flags: UP,
            ..Answer::get(ORIGIN, RP_ID)
        },
    );
    let login = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();
    assert!(!login.user_verified);
}

async fn unknown_credential(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    register(&passkeys, &ann).await;
    let mut stranger = SoftAuthenticator::new();
    stranger.user_handle = vec![1; 32];
    let options = sign_in_options(&passkeys).await;
    let body = stranger.get(&options, &Answer::get(ORIGIN, RP_ID));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownCredential);
}

async fn registered_twice(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let mut authenticator = register(&passkeys, &ann).await;

    // The same credential again, for its user and for another.
    for who in [&ann, &bob] {
        let options = options_json(
            &passkeys
                .start_registration(&rp(), who, None, NOW)
                .await
                .unwrap(),
        );
        let body = authenticator.create(&options, &Answer::create(ORIGIN, RP_ID), None);
        let result = passkeys
            .finish_registration(&rp(), &actor(who), who, &registration(&body), None, NOW)
            .await;
        assert_eq!(refusal(result), Refusal::AlreadyRegistered);
    }
    assert_eq!(passkeys.list(&ann.id).await.unwrap().len(), 1);
    assert!(passkeys.list(&bob.id).await.unwrap().is_empty());
    assert_eq!(audit(&store, "passkey.create").await.len(), 1);
}

async fn user_handle_mismatch(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    let ann_key = register(&passkeys, &ann).await;
    let mut bob_key = register(&passkeys, &bob).await;
    assert_ne!(ann_key.user_handle, bob_key.user_handle);

    // Bob's credential presented with Ann's user handle.
    let options = sign_in_options(&passkeys).await;
    let answer = Answer {
        user_handle: Some(Some(ann_key.user_handle.clone())),
        ..Answer::get(ORIGIN, RP_ID)
    };
    let body = bob_key.get(&options, &answer);
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UserHandleMismatch);

    // Bob's credential for a sign-in that named Ann.
    let options = options_json(
        &passkeys
            .start_authentication(&rp(), Some("ann"), None, NOW)
            .await
            .unwrap(),
    );
    let body = bob_key.get(&options, &Answer::get(ORIGIN, RP_ID));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::WrongUser);

    // Bob's own handle works.
    let options = sign_in_options(&passkeys).await;
    let body = bob_key.get(&options, &Answer::get(ORIGIN, RP_ID));
    let login = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await
        .unwrap();
    assert_eq!(login.user.id, bob.id);
}

async fn malformed_answers_store_nothing(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;

    // Bodies that are not JSON, or lack members: refused before any store call.
    let cases: [(&[u8], &str); 4] = [
        (b"not json", "not valid JSON"),
        (b"{\"credential\": {\"id\": 1}}", "`credential.id`"),
        (b"{\"credential\": {}}", "missing field `id`"),
        (b"[]", "expected struct RegistrationRequest"),
    ];
    for (body, expected) in cases {
        let err = RegistrationRequest::from_json(body).unwrap_err();
        assert!(err.to_string().contains(expected), "{body:?}: {err}");
    }

    // Well-formed JSON carrying bad base64url, JSON or CBOR: each a clear refusal.
    let mut authenticator = SoftAuthenticator::new();
    type Bend = Box<dyn Fn(&mut Json)>;
    let bends: Vec<(Bend, &str)> = vec![
        (
            Box::new(|b| b["credential"]["response"]["clientDataJSON"] = json!("not base64!")),
            "`credential.response.clientDataJSON` is not base64url",
        ),
        (
            Box::new(|b| {
                b["credential"]["response"]["clientDataJSON"] = json!(b64url(b"{\"type\":"))
            }),
            "clientDataJSON: the JSON ends early",
        ),
        (
            Box::new(|b| b["credential"]["response"]["attestationObject"] = json!("@@")),
            "`credential.response.attestationObject` is not base64url",
        ),
        (
            Box::new(|b| {
                b["credential"]["response"]["attestationObject"] = json!(b64url(&[0xa3, 0x63]))
            }),
            "attestationObject: it ends early",
        ),
        (
            Box::new(|b| b["credential"]["response"]["attestationObject"] = json!(b64url(&[0x1c]))),
            "attestationObject: invalid CBOR",
        ),
        (
            Box::new(|b| b["credential"]["rawId"] = json!("AAAA")),
            "`credential.id` and `credential.rawId` differ",
        ),
        (
            Box::new(|b| b["credential"]["type"] = json!("password")),
            "must be \"public-key\"",
        ),
    ];
    for (bend, expected) in bends {
        let options = options_json(
            &passkeys
                .start_registration(&rp(), &ann, None, NOW)
                .await
                .unwrap(),
        );
        let mut body = authenticator.create(&options, &Answer::create(ORIGIN, RP_ID), None);
        bend(&mut body);
        let request = registration(&body);
        let err = refusal(
            passkeys
                .finish_registration(&rp(), &actor(&ann), &ann, &request, None, NOW)
                .await,
        );
        assert!(matches!(err, Refusal::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }

    // A COSE key in the authenticator data that is not CBOR, and one of another algorithm.
    let options = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    let challenge = options["publicKey"]["challenge"].as_str().unwrap();
    let client_data = client_data_json("webauthn.create", challenge, ORIGIN, false);
    let auth_data = authenticator_data(
        RP_ID,
        UP | AT,
        0,
        Some((&[0; 16], &authenticator.credential_id, &[0xa5, 0x01])),
    );
    let body = json!({"credential": {
        "id": b64url(&authenticator.credential_id), "rawId": b64url(&authenticator.credential_id),
        "type": "public-key",
        "response": {"clientDataJSON": b64url(&client_data),
                     "attestationObject": b64url(&attestation_object_none(&auth_data))}}});
    let err = refusal(
        passkeys
            .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
            .await,
    );
    assert!(err.to_string().contains("not valid CBOR"), "{err}");

    let options = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    let challenge = options["publicKey"]["challenge"].as_str().unwrap();
    let client_data = client_data_json("webauthn.create", challenge, ORIGIN, false);
    let int = |i: i64| Value::Integer(i.into());
    let es384 = cbor(&Value::Map(vec![
        (int(1), int(2)),
        (int(3), int(-35)),
        (int(-1), int(2)),
        (int(-2), Value::Bytes(vec![1; 48])),
        (int(-3), Value::Bytes(vec![2; 48])),
    ]));
    let auth_data = authenticator_data(
        RP_ID,
        UP | AT,
        0,
        Some((&[0; 16], &authenticator.credential_id, &es384)),
    );
    let body = json!({"credential": {
        "id": b64url(&authenticator.credential_id), "rawId": b64url(&authenticator.credential_id),
        "type": "public-key",
        "response": {"clientDataJSON": b64url(&client_data),
                     "attestationObject": b64url(&attestation_object_none(&auth_data))}}});
    let err = refusal(
        passkeys
            .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
            .await,
    );
    assert_eq!(err, Refusal::UnsupportedAlgorithm(-35));
    assert!(err.to_string().contains("-7 ES256"), "{err}");

    // A credential id longer than WebAuthn allows.
    let options = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    authenticator.credential_id = vec![5; 1024];
    let body = authenticator.create(&options, &Answer::create(ORIGIN, RP_ID), None);
    let err = refusal(
        passkeys
            .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
            .await,
    );
    assert!(err.to_string().contains("1024 bytes"), "{err}");

    assert!(
        passkeys.list(&ann.id).await.unwrap().is_empty(),
        "nothing stored"
    );
    assert!(audit(&store, "passkey.create").await.is_empty());

    // Sign-in answers with bad parts.
    let mut good = register(&passkeys, &ann).await;
    let options = sign_in_options(&passkeys).await;
    let mut body = good.get(&options, &Answer::get(ORIGIN, RP_ID));
    body["credential"]["response"]["authenticatorData"] = json!(b64url(&[1, 2, 3]));
    let err = refusal(
        passkeys
            .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
            .await,
    );
    assert!(
        err.to_string().contains("authenticator data: 3 bytes"),
        "{err}"
    );
    let options = sign_in_options(&passkeys).await;
    let mut body = good.get(&options, &Answer::get(ORIGIN, RP_ID));
    body["credential"]["response"]["userHandle"] = json!("***");
    let err = refusal(
        passkeys
            .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
            .await,
    );
    assert!(
        err.to_string().contains("userHandle` is not base64url"),
        "{err}"
    );
    assert_eq!(passkeys.list(&ann.id).await.unwrap()[0].sign_count, 1);
}

async fn rename_and_delete_only_own(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    register(&passkeys, &ann).await;
    let id = passkeys.list(&ann.id).await.unwrap()[0].id.clone();

    assert!(passkeys
        .rename(&actor(&bob), &bob.id, &id, "Mine now")
        .await
        .unwrap()
        .is_none());
    assert!(!passkeys.delete(&actor(&bob), &bob.id, &id).await.unwrap());
    assert_eq!(passkeys.list(&ann.id).await.unwrap()[0].name, "Laptop");

    let renamed = passkeys
        .rename(&actor(&ann), &ann.id, &id, " Work laptop ")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "Work laptop");
    assert_eq!(passkeys.list(&ann.id).await.unwrap()[0].name, "Work laptop");
    let err = passkeys
        .rename(&actor(&ann), &ann.id, &id, &"x".repeat(65))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 64 characters"), "{err}");
    let renames = audit(&store, "passkey.rename").await;
    assert_eq!(renames.len(), 1);
    assert_eq!(renames[0].details["previous_name"], "Laptop");

    assert!(passkeys.delete(&actor(&ann), &ann.id, &id).await.unwrap());
    assert!(!passkeys.delete(&actor(&ann), &ann.id, &id).await.unwrap());
    assert!(passkeys.list(&ann.id).await.unwrap().is_empty());
    let deletes = audit(&store, "passkey.delete").await;
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].target.as_deref(), Some(ann.id.as_str()));
    assert_eq!(deletes[0].details["passkey"], json!(id));
}

async fn deleting_a_user_deletes_passkeys(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    let mut authenticator = register(&passkeys, &ann).await;
    let credential_id = b64url(&authenticator.credential_id);
    let options = sign_in_options(&passkeys).await;
    assert!(store.delete_user(&admin(), &ann.id).await.unwrap());
    assert!(store
        .passkey_credential(&credential_id)
        .await
        .unwrap()
        .is_none());
    assert!(passkeys.list(&ann.id).await.unwrap().is_empty());
    let deleted = audit(&store, "user.delete").await;
    assert_eq!(deleted[0].details["passkeys_deleted"], json!(1));
    let body = authenticator.get(&options, &Answer::get(ORIGIN, RP_ID));
    let result = passkeys
        .finish_authentication(&rp(), &anonymous(), &authentication(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownCredential);
    // No registration for a deleted user.
    assert!(passkeys
        .start_registration(&rp(), &ann, None, NOW)
        .await
        .is_err());
}

async fn passkeys_per_user_are_capped(store: SharedStore) {
    let passkeys = Passkeys::new(store.clone());
    let ann = user(&store, "ann").await;
    for _ in 0..MAX_PASSKEYS_PER_USER {
        register(&passkeys, &ann).await;
    }
    let options = options_json(
        &passkeys
            .start_registration(&rp(), &ann, None, NOW)
            .await
            .unwrap(),
    );
    assert_eq!(
        options["publicKey"]["excludeCredentials"]
            .as_array()
            .unwrap()
            .len(),
        MAX_PASSKEYS_PER_USER as usize
    );
    let body = SoftAuthenticator::new().create(&options, &Answer::create(ORIGIN, RP_ID), None);
    let result = passkeys
        .finish_registration(&rp(), &actor(&ann), &ann, &registration(&body), None, NOW)
        .await;
    assert_eq!(refusal(result), Refusal::TooManyPasskeys);
}

// ---- a real authenticator's output ------------------------------------------------------

/// A registration and a sign-in by a YubiKey 5 NFC at demo.yubico.com ("packed"
/// attestation, ES256, counter 57 then 58), as published among the test vectors of Yubico's
/// java-webauthn-server (`RealExamples.YubiKey5Nfc`).
mod yubikey_5_nfc {
    pub const RP_ID: &str = "demo.yubico.com";
    pub const ORIGIN: &str = "https://demo.yubico.com";
    pub const REGISTRATION_CLIENT_DATA: &str = r#"{"type":"webauthn.create","challenge":"0b-5-z3_EvP6pqaBj6Fu7A4M5SdefgZ_jcAoFa6_miU","origin":"https://demo.yubico.com","crossOrigin":false}"#;
    pub const ATTESTATION_OBJECT: &str = "o2NmbXRmcGFja2VkZ2F0dFN0bXSjY2FsZyZjc2lnWEcwRQIgZUEF7FMB8dEzallsJvUFVhHRU8xdWDkDwQQI-ZU8XRMCIQCqzI3-lWRlSEBLGk2XVqkp72q2QzbhdOzZyWOrke4jsmN4NWOBWQLAMIICvDCCAaSgAwIBAgIEA63wEjANBgkqhkiG9w0BAQsFADAuMSwwKgYDVQQDEyNZdWJpY28gVTJGIFJvb3QgQ0EgU2VyaWFsIDQ1NzIwMDYzMTAgFw0xNDA4MDEwMDAwMDBaGA8yMDUwMDkwNDAwMDAwMFowbTELMAkGA1UEBhMCU0UxEjAQBgNVBAoMCVl1YmljbyBBQjEiMCAGA1UECwwZQXV0aGVudGljYXRvciBBdHRlc3RhdGlvbjEmMCQGA1UEAwwdWXViaWNvIFUyRiBFRSBTZXJpYWwgNjE3MzA4MzQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQZnoecFi233DnuSkKgRhalswn-ygkvdr4JSPltbpXK5MxlzVSgWc-9x8mzGysdbBhEecLAYfQYqpVLWWosHPoXo2wwajAiBgkrBgEEAYLECgIEFTEuMy42LjEuNC4xLjQxNDgyLjEuNzATBgsrBgEEAYLlHAIBAQQEAwIEMDAhBgsrBgEEAYLlHAEBBAQSBBD6K5ncnjlCV4-SSjDSPEEYMAwGA1UdEwEB_wQCMAAwDQYJKoZIhvcNAQELBQADggEBACjrs2f-0djw4onryp_22AdXxg6a5XyxcoybHDjKu72E2SN9qDGsIZSfDy38DDFr_bF1s25joiu7WA6tylKA0HmEDloeJXJiWjv7h2Az2_siqWnJOLic4XE1lAChJS2XAqkSk9VFGelg3SLOiifrBet-ebdQwAL-2QFrcR7JrXRQG9kUy76O2VcSgbdPROsHfOYeywarhalyVSZ-6OOYK_Q_DLIaOC0jXrnkzm2ymMQFQlBAIysrYeEM1wxiFbwDt-lAcbcOEtHEf5ZlWi75nUzlWn8bSx_5FO4TbZ5hIEcUiGRpiIBEMRZlOIm4ZIbZycn_vJOFRTVps0V0S4ygtDdoYXV0aERhdGFYxMRs74KtG1Rkd1kdAIsIdZ7D5tLstPOUdL_qaWmSXQO3QQAAADn6K5ncnjlCV4-SSjDSPEEYAECSDhJoaRjVyhU9DO24CFhDHIm8rwh5dHFRVONEpTj2eXiqpzRs5xNoNlEq5cotavl1nTbQ6DhXaOYm_ulT16RMpQECAyYgASFYIJbLqy9JV7ETZUEdPtNzlfl6fBTDZNgioYpDIxIVhRGOIlggS8YE-ZzHh63D4jN3vShnN3F7heKxyJuAApMeRvTJuc8";
    pub const CREDENTIAL_ID: &str =
        "kg4SaGkY1coVPQztuAhYQxyJvK8IeXRxUVTjRKU49nl4qqc0bOcTaDZRKuXKLWr5dZ020Og4V2jmJv7pU9ekTA";
    pub const ASSERTION_CLIENT_DATA: &str = r#"{"type":"webauthn.get","challenge":"AK6EVGBeT_DvQQk3hoUCocO8k3WVvnQnwL5Kd2oFWzM","origin":"https://demo.yubico.com","crossOrigin":false,"extra_keys_may_be_added_here":"do not compare clientDataJSON against a template. See https://goo.gl/yabPex"}"#;
    pub const ASSERTION_AUTH_DATA: &str = "xGzvgq0bVGR3WR0Aiwh1nsPm0uy085R0v-ppaZJdA7cBAAAAOg";
    pub const SIGNATURE: &str = "MEUCIDkZa6d7HwRxGCZdAldFuTo4qUZvaV8j7IYGjO74liKcAiEAj_PLArWm-VylAUsKgWoj50NQSpnn_qhZEgasgfWmG1Y";
}

/// The checks accept a real authenticator's registration and sign-in, and the software
/// authenticator above lays out authenticator data and attestation objects byte for byte
/// as that authenticator does.
#[test]
fn real_authenticator_vector() {
    use tollgate::authn::passkey::wire::{
        parse_attestation_object, parse_authenticator_data, AssertionResponse, AttestationResponse,
        AuthenticationCredential, RegistrationCredential,
    };
    use yubikey_5_nfc as v;
    let rp = RelyingParty::new(v::RP_ID, "YubicoDemo", &[v::ORIGIN]).unwrap();
    let challenge = |client_data: &str| {
        let json: Json = serde_json::from_str(client_data).unwrap();
        b64url_decode("challenge", json["challenge"].as_str().unwrap()).unwrap()
    };

    let registration = RegistrationCredential {
        id: v::CREDENTIAL_ID.to_string(),
        raw_id: v::CREDENTIAL_ID.to_string(),
        typ: "public-key".to_string(),
        response: AttestationResponse {
            client_data_json: b64url(v::REGISTRATION_CLIENT_DATA.as_bytes()),
            attestation_object: v::ATTESTATION_OBJECT.to_string(),
            transports: vec!["usb".to_string(), "nfc".to_string()],
        },
    };
    let reg_challenge = challenge(v::REGISTRATION_CLIENT_DATA);
    let issued = Issued {
        challenge: &reg_challenge,
        uv_required: false,
    };
    let verified = verify_registration(&rp, &issued, &registration).unwrap();
    assert_eq!(
        verified.attestation_format, "packed",
        "accepted, not trusted"
    );
    assert_eq!(verified.algorithm, -7);
    assert_eq!(verified.sign_count, 57);
    assert_eq!(b64url(&verified.credential_id), v::CREDENTIAL_ID);
    assert_eq!(
        hex::encode(verified.aaguid),
        "fa2b99dc9e3942578f924a30d23c4118"
    );

    // The software authenticator's layout gives the same bytes from the same parts.
    let attestation =
        parse_attestation_object(&b64url_decode("a", v::ATTESTATION_OBJECT).unwrap()).unwrap();
    let parsed = parse_authenticator_data(&attestation.auth_data).unwrap();
    let rebuilt = authenticator_data(
        v::RP_ID,
        parsed.flags,
        parsed.sign_count,
        Some((
            &verified.aaguid,
            &verified.credential_id,
            &verified.public_key_cose,
        )),
    );
    assert_eq!(rebuilt, attestation.auth_data);
    assert_eq!(parsed.flags, UP | AT);
    let key =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1_point(&verified.public_key_cose)).unwrap();
    assert_eq!(
        cose_es256(&key),
        verified.public_key_cose,
        "COSE_Key encoding"
    );
    let assertion_auth_data = b64url_decode("a", v::ASSERTION_AUTH_DATA).unwrap();
    assert_eq!(
        authenticator_data(v::RP_ID, UP, 58, None),
        assertion_auth_data
    );

    let assertion = AuthenticationCredential {
        id: v::CREDENTIAL_ID.to_string(),
        raw_id: v::CREDENTIAL_ID.to_string(),
        typ: "public-key".to_string(),
        response: AssertionResponse {
            client_data_json: b64url(v::ASSERTION_CLIENT_DATA.as_bytes()),
            authenticator_data: v::ASSERTION_AUTH_DATA.to_string(),
            signature: v::SIGNATURE.to_string(),
            user_handle: None,
        },
    };
    let get_challenge = challenge(v::ASSERTION_CLIENT_DATA);
    let issued = Issued {
        challenge: &get_challenge,
        uv_required: false,
    };
    let ok = verify_assertion(&rp, &issued, &assertion, &verified.public_key_cose, 57).unwrap();
    assert_eq!(ok.sign_count, 58);
    assert!(!ok.user_verified);
    assert_eq!(
        verify_assertion(&rp, &issued, &assertion, &verified.public_key_cose, 58),
        Err(Refusal::CounterRegression {
            stored: 58,
            presented: 58
        })
    );
    let uv = Issued {
        challenge: &get_challenge,
        uv_required: true,
    };
    assert_eq!(
        verify_assertion(&rp, &uv, &assertion, &verified.public_key_cose, 57),
        Err(Refusal::UserNotVerified)
    );
    // One bit of the signed client data changed: the signature no longer verifies.
    let mut tampered = assertion.clone();
    tampered.response.client_data_json = b64url(
        v::ASSERTION_CLIENT_DATA
            .replace("goo.gl", "goo.gm")
            .as_bytes(),
    );
    assert_eq!(
        verify_assertion(&rp, &issued, &tampered, &verified.public_key_cose, 57),
        Err(Refusal::BadSignature)
    );
    // The software authenticator's signatures verify the same way.
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let client_data = client_data_json("webauthn.get", &b64url(&get_challenge), v::ORIGIN, false);
    let auth_data = authenticator_data(v::RP_ID, UP, 1, None);
    let signature = es256_sign(&key, &auth_data, &client_data);
    let soft = AuthenticationCredential {
        response: AssertionResponse {
            client_data_json: b64url(&client_data),
            authenticator_data: b64url(&auth_data),
            signature: b64url(&signature),
            user_handle: None,
        },
        ..assertion
    };
    verify_assertion(&rp, &issued, &soft, &cose_es256(key.verifying_key()), 0).unwrap();
}

/// The uncompressed SEC1 point of an ES256 COSE_Key.
fn sec1_point(cose: &[u8]) -> Vec<u8> {
    let value: Value = ciborium::de::from_reader(cose).unwrap();
    let Value::Map(entries) = value else {
        panic!("a map")
    };
    let coordinate = |label: i64| {
        entries
            .iter()
            .find(|(l, _)| *l == Value::Integer(label.into()))
            .and_then(|(_, v)| v.as_bytes().cloned())
            .unwrap()
    };
    let mut point = vec![0x04];
    point.extend(coordinate(-2));
    point.extend(coordinate(-3));
    point
}

/// The fuzz target's seed of a registration that passes every check (a "none" attestation
/// of the P-256 generator's key; attestation needs no signature) does pass them, so the
/// fuzzer starts from the end of the happy path.
#[test]
fn fuzz_seed_registration_verifies() {
    let body = include_bytes!("../fuzz/seeds/passkey_wire/registration_request_valid.json");
    let request = RegistrationRequest::from_json(body).unwrap();
    let rp = RelyingParty::new(RP_ID, "tollgate", &[ORIGIN]).unwrap();
    let issued = Issued {
        challenge: &[0u8; 32],
        uv_required: false,
    };
    let verified = verify_registration(&rp, &issued, &request.credential).unwrap();
    assert_eq!(verified.credential_id, (0u8..16).collect::<Vec<_>>());
    assert_eq!(verified.algorithm, -7);
    assert_eq!(verified.attestation_format, "none");
}
