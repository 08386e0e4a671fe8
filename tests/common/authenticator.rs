//! A software authenticator for the passkey tests: it keeps a P-256 key pair and builds
//! what a browser and an authenticator send for `navigator.credentials.create` and `get`:
//! authenticator data byte by byte, a "none" attestation object in CBOR, clientDataJSON,
//! and ES256 assertion signatures over authenticatorData ‖ SHA-256(clientDataJSON). Its
//! layout is checked against a real authenticator's output in tests/passkeys.rs
//! (`real_authenticator_vector`).

use ciborium::value::Value;
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use tollgate::authn::passkey::wire::{b64url, b64url_decode};

/// Authenticator data flags (WebAuthn §6.1).
pub const UP: u8 = 0x01;
pub const UV: u8 = 0x04;
pub const BE: u8 = 0x08;
pub const BS: u8 = 0x10;
pub const AT: u8 = 0x40;

/// What a browser and an authenticator would put in one answer; each test bends one thing.
#[derive(Clone)]
pub struct Answer {
    pub typ: &'static str,
    pub origin: String,
    /// The relying party id hashed into authenticator data.
    pub rp_id: String,
    pub flags: u8,
    /// Some: the challenge to put in clientDataJSON instead of the options' one.
    pub challenge: Option<String>,
    pub cross_origin: bool,
    /// Some(None): no user handle; Some(Some(h)): this one; None: the authenticator's own.
    pub user_handle: Option<Option<Vec<u8>>>,
}

impl Answer {
    /// A registration's answer at `origin` for relying party `rp_id`.
    pub fn create(origin: &str, rp_id: &str) -> Answer {
        Answer {
            typ: "webauthn.create",
            origin: origin.to_string(),
            rp_id: rp_id.to_string(),
            flags: UP | UV | AT,
            challenge: None,
            cross_origin: false,
            user_handle: None,
        }
    }

    /// A sign-in's answer at `origin` for relying party `rp_id`.
    pub fn get(origin: &str, rp_id: &str) -> Answer {
        Answer {
            typ: "webauthn.get",
            flags: UP | UV,
            ..Answer::create(origin, rp_id)
        }
    }
}

/// An authenticator with one ES256 credential, as CTAP2 authenticators build their output.
pub struct SoftAuthenticator {
    pub key: p256::ecdsa::SigningKey,
    pub credential_id: Vec<u8>,
    pub aaguid: [u8; 16],
    /// The next signature counter; 0 means the authenticator keeps no counter.
    pub counter: u32,
    pub counts: bool,
    pub user_handle: Vec<u8>,
}

impl Default for SoftAuthenticator {
    fn default() -> Self {
        SoftAuthenticator::new()
    }
}

impl SoftAuthenticator {
    pub fn new() -> Self {
        SoftAuthenticator::with_counter(true)
    }

    pub fn with_counter(counts: bool) -> Self {
        let mut credential_id = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut credential_id);
        SoftAuthenticator {
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
            credential_id,
            aaguid: *b"tollgate-testing",
            counter: 0,
            counts,
            user_handle: Vec::new(),
        }
    }

    /// The credential public key as a COSE_Key, labels in CTAP2's canonical order.
    pub fn cose_key(&self) -> Vec<u8> {
        cose_es256(self.key.verifying_key())
    }

    pub fn next_count(&mut self) -> u32 {
        if self.counts {
            self.counter += 1;
        }
        self.counter
    }

    /// `navigator.credentials.create` with these options: the request body `passkey.js`
    /// posts.
    pub fn create(&mut self, options: &Json, answer: &Answer, name: Option<&str>) -> Json {
        let public_key = &options["publicKey"];
        self.user_handle =
            b64url_decode("user.id", public_key["user"]["id"].as_str().unwrap()).unwrap();
        let challenge = answer
            .challenge
            .clone()
            .unwrap_or_else(|| public_key["challenge"].as_str().unwrap().to_string());
        let client_data =
            client_data_json(answer.typ, &challenge, &answer.origin, answer.cross_origin);
        let count = self.next_count();
        let auth_data = authenticator_data(
            &answer.rp_id,
            answer.flags,
            count,
            Some((&self.aaguid, &self.credential_id, &self.cose_key())),
        );
        let attestation = attestation_object_none(&auth_data);
        json!({
            "credential": {
                "id": b64url(&self.credential_id),
                "rawId": b64url(&self.credential_id),
                "type": "public-key",
                "authenticatorAttachment": "platform",
                "response": {
                    "clientDataJSON": b64url(&client_data),
                    "attestationObject": b64url(&attestation),
                    "transports": ["internal", "hybrid"],
                },
                "clientExtensionResults": {},
            },
            "name": name,
        })
    }

    /// `navigator.credentials.get` with these options, signed with this authenticator's key.
    pub fn get(&mut self, options: &Json, answer: &Answer) -> Json {
        let key = self.key.clone();
        self.get_signed_by(options, answer, &key)
    }

    pub fn get_signed_by(
        &mut self,
        options: &Json,
        answer: &Answer,
        key: &p256::ecdsa::SigningKey,
    ) -> Json {
        let count = self.next_count();
        self.assertion(options, answer, key, count)
    }

    pub fn assertion(
        &self,
        options: &Json,
        answer: &Answer,
        key: &p256::ecdsa::SigningKey,
        count: u32,
    ) -> Json {
        let challenge = answer.challenge.clone().unwrap_or_else(|| {
            options["publicKey"]["challenge"]
                .as_str()
                .unwrap()
                .to_string()
        });
        let client_data =
            client_data_json(answer.typ, &challenge, &answer.origin, answer.cross_origin);
        let auth_data = authenticator_data(&answer.rp_id, answer.flags, count, None);
        let signature = es256_sign(key, &auth_data, &client_data);
        let user_handle = match &answer.user_handle {
            None => Some(self.user_handle.clone()),
            Some(h) => h.clone(),
        };
        json!({
            "credential": {
                "id": b64url(&self.credential_id),
                "rawId": b64url(&self.credential_id),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(&client_data),
                    "authenticatorData": b64url(&auth_data),
                    "signature": b64url(&signature),
                    "userHandle": user_handle.map(|h| b64url(&h)),
                },
                "clientExtensionResults": {},
            }
        })
    }
}

pub fn cose_es256(key: &p256::ecdsa::VerifyingKey) -> Vec<u8> {
    let point = key.to_encoded_point(false);
    let int = |i: i64| Value::Integer(i.into());
    cbor(&Value::Map(vec![
        (int(1), int(2)),
        (int(3), int(-7)),
        (int(-1), int(1)),
        (int(-2), Value::Bytes(point.x().unwrap().to_vec())),
        (int(-3), Value::Bytes(point.y().unwrap().to_vec())),
    ]))
}

pub fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

/// The members a browser writes, in its order (the verifier must not depend on it).
pub fn client_data_json(typ: &str, challenge: &str, origin: &str, cross_origin: bool) -> Vec<u8> {
    format!(
        r#"{{"type":"{typ}","challenge":"{challenge}","origin":"{origin}","crossOrigin":{cross_origin}}}"#
    )
    .into_bytes()
}

/// Authenticator data (WebAuthn §6.1): SHA-256(rp id), flags, big-endian counter, and for a
/// registration the attested credential data (AAGUID, 2-byte id length, id, COSE_Key).
pub fn authenticator_data(
    rp_id: &str,
    flags: u8,
    count: u32,
    attested: Option<(&[u8; 16], &[u8], &[u8])>,
) -> Vec<u8> {
    let mut out = Sha256::digest(rp_id.as_bytes()).to_vec();
    out.push(flags);
    out.extend_from_slice(&count.to_be_bytes());
    if let Some((aaguid, id, key)) = attested {
        out.extend_from_slice(aaguid);
        out.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(key);
    }
    out
}

/// A "none" attestation object: `{"fmt": "none", "attStmt": {}, "authData": …}`.
pub fn attestation_object_none(auth_data: &[u8]) -> Vec<u8> {
    let text = |s: &str| Value::Text(s.to_string());
    cbor(&Value::Map(vec![
        (text("fmt"), text("none")),
        (text("attStmt"), Value::Map(vec![])),
        (text("authData"), Value::Bytes(auth_data.to_vec())),
    ]))
}

/// ES256 as authenticators sign: ECDSA P-256 over authenticatorData ‖ SHA-256(clientData),
/// SHA-256 inside, the signature ASN.1 DER.
pub fn es256_sign(key: &p256::ecdsa::SigningKey, auth_data: &[u8], client_data: &[u8]) -> Vec<u8> {
    let mut signed = auth_data.to_vec();
    signed.extend_from_slice(&Sha256::digest(client_data));
    let signature: p256::ecdsa::Signature = key.sign(&signed);
    signature.to_der().as_bytes().to_vec()
}
