//! Passkeys (WebAuthn Level 2) for the web UI: the relying party's side of both ceremonies.
//!
//! - Registration (a signed-in user adds a passkey): [`Passkeys::start_registration`]
//!   answers the options for `navigator.credentials.create`; [`Passkeys::finish_registration`]
//!   checks what the browser posts back (§7.1) and stores the passkey.
//! - Authentication (someone signs in): [`Passkeys::start_authentication`] answers the
//!   options for `navigator.credentials.get`, for any passkey (discoverable credentials) or
//!   for the passkeys of one named user; [`Passkeys::finish_authentication`] checks the
//!   assertion (§7.2), moves the signature counter and answers the user.
//!
//! The checks themselves are pure functions of the posted credential and what was issued
//! ([`verify_registration`], [`verify_assertion`]); [`Passkeys`] adds the store around
//! them: challenges are kept in the store (any replica can finish a ceremony another one
//! started), are single use (taken with one atomic delete, whatever the outcome) and expire
//! ([`CHALLENGE_TTL_SECS`]).
//!
//! Attestation is neither asked for (`attestation: "none"`) nor trusted: any attestation
//! format is accepted and its statement is not verified, so a passkey proves that the
//! person holds the private key, not which authenticator model keeps it (the AAGUID is
//! stored for display only).
//!
//! The relying party (its id, name and the origins the UI is served from) is a parameter
//! of every ceremony, [`RelyingParty`]: the web UI builds it from its configuration or from
//! the host it is reached at. `assets/ui/passkey.js` is the browser side.
//!
//! Implemented on RustCrypto (p256, rsa, ed25519-dalek, sha2) and ciborium, not on a
//! WebAuthn crate: the one in wide use needs OpenSSL, which tollgate does not link.

pub mod cose;
pub mod wire;

use crate::domain::{Timestamp, User};
use crate::store::{
    Actor, Passkey, PasskeyCeremony, PasskeyChallenge, SharedStore, StoreError,
    MAX_PASSKEYS_PER_USER, MAX_PASSKEY_NAME_CHARS,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wire::{
    AttestedCredential, AuthenticationCredential, RegistrationCredential, FLAG_AT, FLAG_BE,
    FLAG_BS, FLAG_UP, FLAG_UV,
};

/// How long a ceremony may take, from its options to the browser's answer (also the
/// `timeout` the options give the browser).
pub const CHALLENGE_TTL_SECS: i64 = 300;

/// The largest JSON body [`RegistrationRequest::from_json`] and
/// [`AuthenticationRequest::from_json`] read: an attestation with a certificate chain
/// (packed, TPM) is a few KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The name a passkey gets when its user gives none.
pub const DEFAULT_PASSKEY_NAME: &str = "Passkey";

/// Bytes of randomness in a challenge (WebAuthn asks for at least 16).
const CHALLENGE_BYTES: usize = 32;

/// Bytes of randomness in a user handle (WebAuthn allows up to 64).
const USER_HANDLE_BYTES: usize = 32;

// ---- the relying party ------------------------------------------------------------------

/// Whether a ceremony needs the authenticator to verify the person (PIN, biometrics), or
/// only to see that someone is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserVerification {
    /// Asked for; accepted without (user presence is always required).
    #[default]
    Preferred,
    /// Refused without.
    Required,
}

/// Who asks for passkeys: the relying party id the credentials are bound to (a host name:
/// the UI's host or a parent domain of it), the name authenticators show, and the exact
/// origins the UI is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    id: String,
    name: String,
    origins: Vec<String>,
    user_verification: UserVerification,
}

impl RelyingParty {
    /// Checks and builds a relying party.
    ///
    /// - `id`: a domain name (ASCII; an internationalised name in its `xn--` form), no
    ///   scheme, port or path; not an IP address, which browsers refuse. Case is ignored.
    /// - `name`: shown by authenticators and browsers, e.g. "tollgate".
    /// - `origins`: at least one; each `https://host[:port]` (or `http://` for `localhost`
    ///   and its subdomains, which browsers treat as secure) whose host is `id` or a
    ///   subdomain of it. A path of `/` is dropped; any other path, a query or a user is
    ///   refused.
    pub fn new<S: AsRef<str>>(id: &str, name: &str, origins: &[S]) -> Result<Self, String> {
        let id = valid_rp_id(id)?;
        let name = name.trim();
        if name.is_empty() {
            return Err("the relying party name must not be empty".to_string());
        }
        if origins.is_empty() {
            return Err(format!(
                "give at least one origin the UI is served from (e.g. https://{id})"
            ));
        }
        let origins = origins
            .iter()
            .map(|o| valid_origin(o.as_ref(), &id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RelyingParty {
            id,
            name: name.to_string(),
            origins,
            user_verification: UserVerification::Preferred,
        })
    }

    /// The relying party of a UI served at `origin` (`https://host[:port]`, e.g. made from
    /// the scheme and host a request came with): its id is `rp_id` when one is configured
    /// (`ui.rp_id`), else the origin's host name, as the contract's default says.
    pub fn for_origin(origin: &str, rp_id: Option<&str>, name: &str) -> Result<Self, String> {
        let id = match rp_id {
            Some(id) => id.to_string(),
            None => url::Url::parse(origin.trim())
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .ok_or_else(|| format!("origin `{origin}`: not a URL with a host"))?,
        };
        RelyingParty::new(&id, name, &[origin])
    }

    /// The same relying party, asking for user verification as given.
    pub fn with_user_verification(mut self, uv: UserVerification) -> Self {
        self.user_verification = uv;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The origins, as `scheme://host[:port]`.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    pub fn user_verification(&self) -> UserVerification {
        self.user_verification
    }

    fn id_hash(&self) -> [u8; 32] {
        Sha256::digest(self.id.as_bytes()).into()
    }
}

/// Whether `id` can be a relying party id (see [`RelyingParty::new`]): its normal form
/// (lower case, trimmed), or why not. For the configuration's `ui.rp_id`.
pub fn check_rp_id(id: &str) -> Result<String, String> {
    valid_rp_id(id)
}

fn valid_rp_id(id: &str) -> Result<String, String> {
    let id = id.trim().to_ascii_lowercase();
    let bad = |why: &str| Err(format!("relying party id `{id}`: {why}"));
    if id.is_empty() {
        return Err("the relying party id must not be empty".to_string());
    }
    let ip = id.parse::<std::net::IpAddr>().is_ok()
        || (id.starts_with('[') && id.ends_with(']'))
        || id.parse::<std::net::Ipv4Addr>().is_ok();
    if ip {
        return bad("an IP address cannot be one (browsers refuse them); use a host name");
    }
    if id.contains("://") || id.contains('/') || id.contains(':') {
        return bad("give the host name alone, without scheme, port or path");
    }
    if id.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in id.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return bad("not a host name (labels of letters, digits and inner hyphens; an internationalised name in its xn-- form)");
        }
    }
    if id.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return bad("an IP address cannot be one (browsers refuse them); use a host name");
    }
    Ok(id)
}

fn valid_origin(origin: &str, rp_id: &str) -> Result<String, String> {
    let bad = |why: String| Err(format!("origin `{origin}`: {why}"));
    let url = match url::Url::parse(origin.trim()) {
        Ok(url) => url,
        Err(e) => return bad(format!("not a URL ({e})")),
    };
    let Some(host) = url.host_str().map(str::to_owned) else {
        return bad("no host".to_string());
    };
    let local = host == "localhost" || host.ends_with(".localhost");
    match url.scheme() {
        "https" => {}
        "http" if local => {}
        "http" => return bad("use https (http only for localhost)".to_string()),
        other => return bad(format!("scheme `{other}`, expected https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("an origin has no user or password".to_string());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return bad("an origin is scheme://host[:port], without path or query".to_string());
    }
    if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
        return bad(format!(
            "its host `{host}` is neither the relying party id `{rp_id}` nor a subdomain of it"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

// ---- refusals ---------------------------------------------------------------------------

/// Why a ceremony's answer is refused. Every message is safe to show to the person: it
/// says what failed, never a secret, and the browser sent all the rest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request, or a part of it (base64url, JSON, CBOR), is not what WebAuthn sends.
    #[error("malformed passkey answer: {0}")]
    Malformed(String),
    /// No such challenge: never issued, already used (challenges are single use), or
    /// issued for another ceremony.
    #[error("unknown or already used passkey challenge: start again")]
    UnknownChallenge,
    #[error("the passkey challenge expired: start again")]
    ExpiredChallenge,
    /// The ceremony was started by another browser session (see the `binding` parameters).
    #[error("this passkey ceremony was started elsewhere: start again")]
    BindingMismatch,
    /// The ceremony was started under another relying party id.
    #[error("this passkey ceremony was started for another site name: start again")]
    RelyingPartyMismatch,
    /// Registration: the challenge was issued to another user.
    #[error("this passkey registration was started by another user")]
    WrongRegistrant,
    #[error("client data type is `{got}`, expected `{expected}`")]
    WrongType { expected: &'static str, got: String },
    #[error("the passkey answer comes from origin `{0}`, which is not this site")]
    WrongOrigin(String),
    #[error("cross-origin passkey ceremonies (in a frame of another site) are not accepted")]
    CrossOrigin,
    #[error("token binding is not supported")]
    TokenBinding,
    #[error("the passkey is for another site (relying party id hash differs)")]
    RelyingPartyHash,
    #[error("the authenticator did not see the user present")]
    UserNotPresent,
    #[error("the authenticator did not verify the user (PIN or biometrics are required)")]
    UserNotVerified,
    #[error("the authenticator data says backed up but not backup-eligible")]
    BackupState,
    #[error("the registration carries no credential (attested credential data missing)")]
    NoCredential,
    #[error("the credential id is {0} bytes; at most 1023 are allowed")]
    CredentialIdTooLong(usize),
    #[error("the credential id differs from the one in the authenticator data")]
    CredentialIdMismatch,
    #[error("{}", unsupported_algorithm(*.0))]
    UnsupportedAlgorithm(i64),
    #[error("{0}")]
    InvalidPublicKey(String),
    /// Registration: this credential is registered already (to this user or another).
    #[error("this passkey is already registered")]
    AlreadyRegistered,
    #[error("a user may register at most {MAX_PASSKEYS_PER_USER} passkeys; delete one first")]
    TooManyPasskeys,
    #[error("passkey name: {0}")]
    InvalidName(String),
    /// Authentication: no passkey with this credential id (never registered, or deleted).
    #[error("unknown passkey")]
    UnknownCredential,
    /// Authentication: the passkey is not one of the user named at the start.
    #[error("this passkey is not one of the named user's")]
    WrongUser,
    #[error("the authenticator returned another user's handle for this passkey")]
    UserHandleMismatch,
    #[error("the authenticator returned no user handle (needed to sign in without a username)")]
    UserHandleMissing,
    #[error("the passkey signature does not verify")]
    BadSignature,
    /// The signature counter did not grow: the authenticator may have been cloned.
    #[error("the passkey's signature counter went from {stored} to {presented}; it may have been cloned, so it is refused (delete and register it again if this is wrong)")]
    CounterRegression { stored: u32, presented: u32 },
}

fn unsupported_algorithm(alg: i64) -> String {
    cose::KeyError::UnsupportedAlgorithm(alg).to_string()
}

/// What a ceremony can fail with: a refused answer (the person's side; 400 or 401), or the
/// store (503 when transient).
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

// ---- options ----------------------------------------------------------------------------

/// The answer to a registration start, JSON for `navigator.credentials.create`:
/// `{"publicKey": PublicKeyCredentialCreationOptionsJSON}` (binary members base64url).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationOptions {
    pub public_key: PublicKeyCreationOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCreationOptions {
    pub rp: RpEntity,
    pub user: UserEntity,
    pub challenge: String,
    pub pub_key_cred_params: Vec<CredentialParameter>,
    /// Milliseconds.
    pub timeout: u64,
    pub exclude_credentials: Vec<CredentialDescriptor>,
    pub authenticator_selection: AuthenticatorSelection,
    pub attestation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpEntity {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEntity {
    /// The opaque user handle, base64url.
    pub id: String,
    /// The username: what authenticators list to pick an account.
    pub name: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CredentialParameter {
    #[serde(rename = "type")]
    pub typ: &'static str,
    pub alg: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CredentialDescriptor {
    #[serde(rename = "type")]
    pub typ: &'static str,
    /// The credential id, base64url.
    pub id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorSelection {
    pub resident_key: &'static str,
    pub require_resident_key: bool,
    pub user_verification: UserVerification,
}

/// The answer to an authentication start, JSON for `navigator.credentials.get`:
/// `{"publicKey": PublicKeyCredentialRequestOptionsJSON}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestOptions {
    pub public_key: PublicKeyRequestOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyRequestOptions {
    pub challenge: String,
    /// Milliseconds.
    pub timeout: u64,
    pub rp_id: String,
    /// Empty: any passkey of this site the authenticator holds (discoverable credentials).
    pub allow_credentials: Vec<CredentialDescriptor>,
    pub user_verification: UserVerification,
}

fn descriptor(passkey: &Passkey) -> CredentialDescriptor {
    CredentialDescriptor {
        typ: "public-key",
        id: passkey.credential_id.clone(),
        transports: passkey.transports.clone(),
    }
}

// ---- what the browser posts -------------------------------------------------------------

/// The body `passkey.js` posts to finish a registration:
/// `{"credential": RegistrationResponseJSON, "name"?: string}`.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationRequest {
    pub credential: RegistrationCredential,
    #[serde(default)]
    pub name: Option<String>,
}

/// The body `passkey.js` posts to finish a sign-in:
/// `{"credential": AuthenticationResponseJSON}`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthenticationRequest {
    pub credential: AuthenticationCredential,
}

/// The body `passkey.js` posts to start a sign-in: `{"username"?: string}` (empty or absent:
/// any passkey).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthenticationStart {
    #[serde(default)]
    pub username: Option<String>,
}

impl RegistrationRequest {
    /// Reads the body, with an error naming the member at fault.
    pub fn from_json(body: &[u8]) -> Result<Self, Refusal> {
        from_json(body)
    }
}

impl AuthenticationRequest {
    /// Reads the body, with an error naming the member at fault.
    pub fn from_json(body: &[u8]) -> Result<Self, Refusal> {
        from_json(body)
    }
}

impl AuthenticationStart {
    /// Reads the body (an empty one is `{}`), with an error naming the member at fault.
    pub fn from_json(body: &[u8]) -> Result<Self, Refusal> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(AuthenticationStart::default());
        }
        from_json(body)
    }
}

fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::Malformed(format!(
            "the body is {} bytes; at most {MAX_REQUEST_BYTES} are read",
            body.len()
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let why = wire::json_error(e.inner());
        Refusal::Malformed(if path == "." {
            why
        } else {
            format!("`{path}`: {why}")
        })
    })?;
    de.end()
        .map_err(|e| Refusal::Malformed(wire::json_error(&e)))?;
    Ok(value)
}

// ---- the checks (pure) ------------------------------------------------------------------

/// What was issued for a ceremony, as its verification needs it.
#[derive(Debug, Clone, Copy)]
pub struct Issued<'a> {
    pub challenge: &'a [u8],
    /// The options asked for user verification as required.
    pub uv_required: bool,
}

/// A registration that passed every check (§7.1): the credential to store.
#[derive(Debug, Clone)]
pub struct VerifiedRegistration {
    pub credential_id: Vec<u8>,
    /// The COSE_Key, as the authenticator wrote it.
    pub public_key_cose: Vec<u8>,
    pub algorithm: i64,
    pub sign_count: u32,
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub aaguid: [u8; 16],
    /// The attestation format the authenticator used (not verified, not trusted).
    pub attestation_format: String,
    /// The transports the browser reported, those that look like transport names.
    pub transports: Vec<String>,
}

/// An assertion that passed every check (§7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub sign_count: u32,
    pub user_verified: bool,
    pub backed_up: bool,
}

/// The client data checks both ceremonies share (§7.1 steps 7–10, §7.2 steps 11–14).
fn check_client_data(
    rp: &RelyingParty,
    issued: &Issued<'_>,
    client_data: &wire::ClientData,
    expected_type: &'static str,
) -> Result<(), Refusal> {
    if client_data.typ != expected_type {
        return Err(Refusal::WrongType {
            expected: expected_type,
            got: client_data.typ.chars().take(40).collect(),
        });
    }
    if !bool::from(client_data.challenge.ct_eq(issued.challenge)) {
        return Err(Refusal::UnknownChallenge);
    }
    if !rp.origins.contains(&client_data.origin) {
        return Err(Refusal::WrongOrigin(
            client_data.origin.chars().take(200).collect(),
        ));
    }
    if client_data.cross_origin || client_data.top_origin.is_some() {
        return Err(Refusal::CrossOrigin);
    }
    if client_data.token_binding_present {
        return Err(Refusal::TokenBinding);
    }
    Ok(())
}

/// The authenticator data checks both ceremonies share (§7.1 steps 13–16, §7.2 steps
/// 15–17, and Level 3's BE/BS rule).
fn check_authenticator_data(
    rp: &RelyingParty,
    issued: &Issued<'_>,
    data: &wire::AuthenticatorData,
) -> Result<(), Refusal> {
    if !bool::from(data.rp_id_hash[..].ct_eq(&rp.id_hash()[..])) {
        return Err(Refusal::RelyingPartyHash);
    }
    if !data.has(FLAG_UP) {
        return Err(Refusal::UserNotPresent);
    }
    if issued.uv_required && !data.has(FLAG_UV) {
        return Err(Refusal::UserNotVerified);
    }
    if data.has(FLAG_BS) && !data.has(FLAG_BE) {
        return Err(Refusal::BackupState);
    }
    Ok(())
}

/// Checks a registration (WebAuthn Level 2 §7.1) against what was issued: client data
/// (`webauthn.create`, the challenge, one of the origins, not cross-origin), the
/// attestation object (any format; its statement is not verified), and the authenticator
/// data (the relying party id's hash, user present, user verified when required, attested
/// credential data with an id of at most 1023 bytes and a key of an accepted algorithm).
/// Whether the credential is registered already is the store's to say.
pub fn verify_registration(
    rp: &RelyingParty,
    issued: &Issued<'_>,
    credential: &RegistrationCredential,
) -> Result<VerifiedRegistration, Refusal> {
    let raw_id = wire::credential_id(&credential.id, &credential.raw_id, &credential.typ)?;
    let client_data_json = wire::b64url_decode(
        "credential.response.clientDataJSON",
        &credential.response.client_data_json,
    )?;
    let client_data = wire::parse_client_data(&client_data_json)?;
    check_client_data(rp, issued, &client_data, "webauthn.create")?;
    let attestation = wire::parse_attestation_object(&wire::b64url_decode(
        "credential.response.attestationObject",
        &credential.response.attestation_object,
    )?)?;
    let data = wire::parse_authenticator_data(&attestation.auth_data)?;
    check_authenticator_data(rp, issued, &data)?;
    let Some(AttestedCredential {
        aaguid,
        credential_id,
        public_key,
        public_key_cose,
    }) = data.attested.as_ref().filter(|_| data.has(FLAG_AT))
    else {
        return Err(Refusal::NoCredential);
    };
    if *credential_id != raw_id {
        return Err(Refusal::CredentialIdMismatch);
    }
    Ok(VerifiedRegistration {
        credential_id: credential_id.clone(),
        public_key_cose: public_key_cose.clone(),
        algorithm: public_key.algorithm(),
        sign_count: data.sign_count,
        user_verified: data.has(FLAG_UV),
        backup_eligible: data.has(FLAG_BE),
        backed_up: data.has(FLAG_BS),
        aaguid: *aaguid,
        attestation_format: attestation.fmt,
        transports: transports(&credential.response.transports),
    })
}

/// The transports worth keeping: at most 8 names of lowercase letters and hyphens (the
/// browser passes them back as hints; unknown ones it ignores).
fn transports(given: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for t in given {
        let plausible = !t.is_empty()
            && t.len() <= 32
            && t.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        if plausible && !kept.contains(t) && kept.len() < 8 {
            kept.push(t.clone());
        }
    }
    kept
}

/// Checks an assertion (WebAuthn Level 2 §7.2) with the stored credential: client data
/// (`webauthn.get`, the challenge, one of the origins, not cross-origin), the authenticator
/// data (the relying party id's hash, user present, user verified when required), the
/// signature over authenticator data ‖ SHA-256(clientDataJSON) with `public_key_cose`, and
/// the signature counter: when the stored or the presented one is not 0, the presented one
/// must be greater, else the authenticator may have been cloned and it is refused. Which
/// credential and user this is (id, user handle) is the caller's to have checked.
pub fn verify_assertion(
    rp: &RelyingParty,
    issued: &Issued<'_>,
    credential: &AuthenticationCredential,
    public_key_cose: &[u8],
    stored_count: u32,
) -> Result<VerifiedAssertion, Refusal> {
    wire::credential_id(&credential.id, &credential.raw_id, &credential.typ)?;
    let response = &credential.response;
    let client_data_json = wire::b64url_decode(
        "credential.response.clientDataJSON",
        &response.client_data_json,
    )?;
    let client_data = wire::parse_client_data(&client_data_json)?;
    check_client_data(rp, issued, &client_data, "webauthn.get")?;
    let auth_data = wire::b64url_decode(
        "credential.response.authenticatorData",
        &response.authenticator_data,
    )?;
    let data = wire::parse_authenticator_data(&auth_data)?;
    check_authenticator_data(rp, issued, &data)?;
    let signature = wire::b64url_decode("credential.response.signature", &response.signature)?;
    let key = cose::PublicKey::from_cose(public_key_cose)
        .map_err(|e| Refusal::InvalidPublicKey(e.to_string()))?;
    let mut signed = auth_data;
    signed.extend_from_slice(&Sha256::digest(&client_data_json));
    if !key.verify(&signed, &signature) {
        return Err(Refusal::BadSignature);
    }
    if (data.sign_count != 0 || stored_count != 0) && data.sign_count <= stored_count {
        return Err(Refusal::CounterRegression {
            stored: stored_count,
            presented: data.sign_count,
        });
    }
    Ok(VerifiedAssertion {
        sign_count: data.sign_count,
        user_verified: data.has(FLAG_UV),
        backed_up: data.has(FLAG_BS),
    })
}

// ---- the ceremonies, over the store -----------------------------------------------------

/// A signed-in user, as a passkey sign-in found them.
#[derive(Debug, Clone)]
pub struct PasskeyLogin {
    /// The passkey's user. Blocked users are answered too: refusing them (and saying so)
    /// is the caller's, as for a password.
    pub user: User,
    /// The passkey, with its new counter and `last_used_at`.
    pub passkey: Passkey,
    pub user_verified: bool,
}

/// The relying party's ceremonies over the store. Cheap to clone.
#[derive(Clone)]
pub struct Passkeys {
    store: SharedStore,
    challenge_ttl_secs: i64,
}

impl Passkeys {
    pub fn new(store: SharedStore) -> Self {
        Passkeys {
            store,
            challenge_ttl_secs: CHALLENGE_TTL_SECS,
        }
    }

    /// How long a challenge lives (default [`CHALLENGE_TTL_SECS`]; at least 1 s).
    pub fn with_challenge_ttl(mut self, secs: i64) -> Self {
        self.challenge_ttl_secs = secs.max(1);
        self
    }

    /// The options for a signed-in `user` to register a passkey. `binding`, when given (e.g.
    /// the browser session's id), must be given again to finish: only its hash is stored.
    pub async fn start_registration(
        &self,
        rp: &RelyingParty,
        user: &User,
        binding: Option<&str>,
        now: Timestamp,
    ) -> Result<CreationOptions, PasskeyError> {
        let fresh = wire::b64url(&random_bytes(USER_HANDLE_BYTES));
        let handle = self
            .store
            .passkey_user_handle(&user.id, &fresh)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("user {} does not exist", user.id)))?;
        let existing = self.store.list_passkeys(&user.id).await?;
        let challenge = self
            .issue(rp, PasskeyCeremony::Register, Some(&user.id), binding, now)
            .await?;
        Ok(CreationOptions {
            public_key: PublicKeyCreationOptions {
                rp: RpEntity {
                    id: rp.id.clone(),
                    name: rp.name.clone(),
                },
                user: UserEntity {
                    id: handle,
                    name: user.username.clone(),
                    display_name: user
                        .full_name
                        .clone()
                        .filter(|n| !n.trim().is_empty())
                        .unwrap_or_else(|| user.username.clone()),
                },
                challenge,
                pub_key_cred_params: cose::ALGORITHMS
                    .iter()
                    .map(|&alg| CredentialParameter {
                        typ: "public-key",
                        alg,
                    })
                    .collect(),
                timeout: self.timeout_ms(),
                exclude_credentials: existing.iter().map(descriptor).collect(),
                authenticator_selection: AuthenticatorSelection {
                    resident_key: "preferred",
                    require_resident_key: false,
                    user_verification: rp.user_verification,
                },
                attestation: "none",
            },
        })
    }

    /// Checks the browser's answer to [`Passkeys::start_registration`] and stores the
    /// passkey for `user` (audited `passkey.create` by `actor`). The challenge is used up
    /// whatever the outcome.
    pub async fn finish_registration(
        &self,
        rp: &RelyingParty,
        actor: &Actor,
        user: &User,
        request: &RegistrationRequest,
        binding: Option<&str>,
        now: Timestamp,
    ) -> Result<Passkey, PasskeyError> {
        let name = passkey_name(request.name.as_deref())?;
        let challenge = self
            .take(
                rp,
                PasskeyCeremony::Register,
                &request.credential.response.client_data_json,
                binding,
                now,
            )
            .await?;
        if challenge.user_id.as_deref() != Some(user.id.as_str()) {
            return Err(Refusal::WrongRegistrant.into());
        }
        let verified = verify_registration(
            rp,
            &Issued {
                challenge: &challenge.bytes,
                uv_required: challenge.uv_required,
            },
            &request.credential,
        )?;
        let credential_id = wire::b64url(&verified.credential_id);
        if self
            .store
            .passkey_credential(&credential_id)
            .await?
            .is_some()
        {
            return Err(Refusal::AlreadyRegistered.into());
        }
        let new = crate::store::NewPasskey {
            user_id: user.id.clone(),
            credential_id,
            public_key: wire::b64url(&verified.public_key_cose),
            algorithm: verified.algorithm,
            sign_count: verified.sign_count,
            name,
            transports: verified.transports,
            backup_eligible: verified.backup_eligible,
            backed_up: verified.backed_up,
            aaguid: hex::encode(verified.aaguid),
        };
        match self.store.create_passkey(actor, new).await {
            Ok(passkey) => Ok(passkey),
            // Registered by a concurrent request between the check and the insert.
            Err(StoreError::Conflict(_)) => Err(Refusal::AlreadyRegistered.into()),
            Err(StoreError::Invalid(m)) if m.contains("at most") => {
                Err(Refusal::TooManyPasskeys.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The options to sign in with a passkey. Without `username` (or an empty one): any
    /// passkey of this site (discoverable credentials; the authenticator tells whose it is).
    /// With one (a username or an email, as password login reads it): only that user's
    /// passkeys are allowed. A name that matches nobody, or a user without passkeys, gets
    /// the same answer as no name at all, so the answer does not tell which names exist
    /// (and the ceremony is then finished as one without a name).
    pub async fn start_authentication(
        &self,
        rp: &RelyingParty,
        username: Option<&str>,
        binding: Option<&str>,
        now: Timestamp,
    ) -> Result<RequestOptions, PasskeyError> {
        let mut allow = Vec::new();
        let mut user_id = None;
        if let Some(name) = username.map(str::trim).filter(|n| !n.is_empty()) {
            if let Some(found) = self.store.find_login_user(name).await? {
                let passkeys = self.store.list_passkeys(&found.user.id).await?;
                if !passkeys.is_empty() {
                    allow = passkeys.iter().map(descriptor).collect();
                    user_id = Some(found.user.id);
                }
            }
        }
        let challenge = self
            .issue(
                rp,
                PasskeyCeremony::Authenticate,
                user_id.as_deref(),
                binding,
                now,
            )
            .await?;
        Ok(RequestOptions {
            public_key: PublicKeyRequestOptions {
                challenge,
                timeout: self.timeout_ms(),
                rp_id: rp.id.clone(),
                allow_credentials: allow,
                user_verification: rp.user_verification,
            },
        })
    }

    /// Checks the browser's answer to [`Passkeys::start_authentication`]: the challenge, the
    /// passkey (known; its user's handle when the authenticator returns one, and required
    /// when no username was given; the named user's when one was), and
    /// [`verify_assertion`]; then records the new counter. A counter that did not grow is
    /// refused and audited (`auth.passkey_counter`, by `actor`, target the user). The
    /// challenge is used up whatever the outcome.
    pub async fn finish_authentication(
        &self,
        rp: &RelyingParty,
        actor: &Actor,
        request: &AuthenticationRequest,
        binding: Option<&str>,
        now: Timestamp,
    ) -> Result<PasskeyLogin, PasskeyError> {
        let credential = &request.credential;
        let challenge = self
            .take(
                rp,
                PasskeyCeremony::Authenticate,
                &credential.response.client_data_json,
                binding,
                now,
            )
            .await?;
        let raw_id = wire::credential_id(&credential.id, &credential.raw_id, &credential.typ)?;
        let Some(stored) = self
            .store
            .passkey_credential(&wire::b64url(&raw_id))
            .await?
        else {
            return Err(Refusal::UnknownCredential.into());
        };
        if let Some(named) = &challenge.user_id {
            if *named != stored.passkey.user_id {
                return Err(Refusal::WrongUser.into());
            }
        }
        match credential
            .response
            .user_handle
            .as_deref()
            .filter(|h| !h.is_empty())
        {
            Some(handle) => {
                let handle = wire::b64url_decode("credential.response.userHandle", handle)?;
                let expected = wire::b64url_decode("stored user handle", &stored.user_handle)?;
                if !bool::from(handle.ct_eq(&expected)) {
                    return Err(Refusal::UserHandleMismatch.into());
                }
            }
            None if challenge.user_id.is_none() => return Err(Refusal::UserHandleMissing.into()),
            None => {}
        }
        let public_key = wire::b64url_decode("stored public key", &stored.public_key)?;
        let issued = Issued {
            challenge: &challenge.bytes,
            uv_required: challenge.uv_required,
        };
        let passkey = stored.passkey;
        let verified =
            match verify_assertion(rp, &issued, credential, &public_key, passkey.sign_count) {
                Ok(v) => v,
                Err(refusal @ Refusal::CounterRegression { .. }) => {
                    self.audit_counter(actor, &passkey, &refusal).await;
                    return Err(refusal.into());
                }
                Err(refusal) => return Err(refusal.into()),
            };
        let recorded = self
            .store
            .record_passkey_use(
                &passkey.id,
                passkey.sign_count,
                verified.sign_count,
                verified.backed_up,
                now,
            )
            .await?;
        if !recorded {
            // Another sign-in with the same passkey moved the counter (or deleted it)
            // between the read and the write: this one's counter is no longer greater.
            let Some(now_stored) = self
                .store
                .passkey_credential(&passkey.credential_id)
                .await?
            else {
                return Err(Refusal::UnknownCredential.into());
            };
            let refusal = Refusal::CounterRegression {
                stored: now_stored.passkey.sign_count,
                presented: verified.sign_count,
            };
            self.audit_counter(actor, &passkey, &refusal).await;
            return Err(refusal.into());
        }
        let Some(user) = self.store.get_user(&passkey.user_id).await? else {
            return Err(Refusal::UnknownCredential.into());
        };
        Ok(PasskeyLogin {
            user,
            passkey: Passkey {
                sign_count: verified.sign_count,
                backed_up: verified.backed_up,
                last_used_at: Some(now),
                ..passkey
            },
            user_verified: verified.user_verified,
        })
    }

    /// The user's passkeys, oldest first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Passkey>, PasskeyError> {
        Ok(self.store.list_passkeys(user_id).await?)
    }

    /// Renames one of the user's own passkeys (audited `passkey.rename`). None: the user
    /// has no passkey with this id.
    pub async fn rename(
        &self,
        actor: &Actor,
        user_id: &str,
        id: &str,
        name: &str,
    ) -> Result<Option<Passkey>, PasskeyError> {
        let name = passkey_name(Some(name))?;
        Ok(self.store.rename_passkey(actor, user_id, id, &name).await?)
    }

    /// Deletes one of the user's own passkeys (audited `passkey.delete`). False: the user
    /// has no passkey with this id.
    pub async fn delete(
        &self,
        actor: &Actor,
        user_id: &str,
        id: &str,
    ) -> Result<bool, PasskeyError> {
        Ok(self.store.delete_passkey(actor, user_id, id).await?)
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.challenge_ttl_secs)
            .unwrap_or(0)
            .saturating_mul(1000)
    }

    /// Makes and stores a challenge; answers it, base64url.
    async fn issue(
        &self,
        rp: &RelyingParty,
        ceremony: PasskeyCeremony,
        user_id: Option<&str>,
        binding: Option<&str>,
        now: Timestamp,
    ) -> Result<String, PasskeyError> {
        let challenge = random_bytes(CHALLENGE_BYTES);
        self.store
            .put_passkey_challenge(PasskeyChallenge {
                challenge_hash: sha256_hex(&challenge),
                ceremony,
                user_id: user_id.map(str::to_owned),
                rp_id: rp.id.clone(),
                uv_required: rp.user_verification == UserVerification::Required,
                binding_hash: binding.map(|b| sha256_hex(b.as_bytes())),
                created_at: now,
                expires_at: now.saturating_add(self.challenge_ttl_secs),
            })
            .await?;
        Ok(wire::b64url(&challenge))
    }

    /// Takes (uses up) the challenge the client data names, and checks that it is live and
    /// was issued for this ceremony, relying party and binding.
    async fn take(
        &self,
        rp: &RelyingParty,
        ceremony: PasskeyCeremony,
        client_data_b64: &str,
        binding: Option<&str>,
        now: Timestamp,
    ) -> Result<TakenChallenge, PasskeyError> {
        let client_data_json =
            wire::b64url_decode("credential.response.clientDataJSON", client_data_b64)?;
        let bytes = wire::parse_client_data(&client_data_json)?.challenge;
        let Some(issued) = self
            .store
            .take_passkey_challenge(&sha256_hex(&bytes))
            .await?
        else {
            return Err(Refusal::UnknownChallenge.into());
        };
        if issued.ceremony != ceremony {
            return Err(Refusal::UnknownChallenge.into());
        }
        if now >= issued.expires_at {
            return Err(Refusal::ExpiredChallenge.into());
        }
        let presented = binding.map(|b| sha256_hex(b.as_bytes()));
        if presented != issued.binding_hash {
            return Err(Refusal::BindingMismatch.into());
        }
        if issued.rp_id != rp.id {
            return Err(Refusal::RelyingPartyMismatch.into());
        }
        Ok(TakenChallenge {
            bytes,
            user_id: issued.user_id,
            uv_required: issued.uv_required,
        })
    }

    async fn audit_counter(&self, actor: &Actor, passkey: &Passkey, refusal: &Refusal) {
        let Refusal::CounterRegression { stored, presented } = refusal else {
            return;
        };
        let details = json!({
            "passkey": passkey.id,
            "name": passkey.name,
            "stored_count": stored,
            "presented_count": presented,
        });
        // The refusal stands whether or not its audit line could be written.
        if let Err(e) = self
            .store
            .record_event(
                actor,
                "auth.passkey_counter",
                Some(&passkey.user_id),
                details,
            )
            .await
        {
            tracing::warn!(error = %e, passkey = %passkey.id, "could not audit a passkey counter regression");
        }
    }
}

/// A challenge taken from the store, checked.
struct TakenChallenge {
    bytes: Vec<u8>,
    user_id: Option<String>,
    uv_required: bool,
}

/// A passkey's name: trimmed; none or empty is [`DEFAULT_PASSKEY_NAME`]; at most
/// [`MAX_PASSKEY_NAME_CHARS`] characters, none of them control characters.
pub fn passkey_name(given: Option<&str>) -> Result<String, Refusal> {
    let name = given.map(str::trim).unwrap_or("");
    if name.is_empty() {
        return Ok(DEFAULT_PASSKEY_NAME.to_string());
    }
    if name.chars().count() > MAX_PASSKEY_NAME_CHARS {
        return Err(Refusal::InvalidName(format!(
            "at most {MAX_PASSKEY_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Refusal::InvalidName(
            "control characters are not allowed".to_string(),
        ));
    }
    Ok(name.to_string())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relying_party_ids_and_origins_are_checked() {
        let rp = RelyingParty::new(
            "Tollgate.Example.com",
            "tollgate",
            &[
                "https://tollgate.example.com/",
                "https://ui.tollgate.example.com:8443",
            ],
        )
        .unwrap();
        assert_eq!(rp.id(), "tollgate.example.com");
        assert_eq!(
            rp.origins(),
            [
                "https://tollgate.example.com",
                "https://ui.tollgate.example.com:8443"
            ]
        );
        assert!(RelyingParty::new("localhost", "t", &["http://localhost:9090"]).is_ok());

        let err = |id: &str, origins: &[&str]| RelyingParty::new(id, "t", origins).unwrap_err();
        assert!(err("10.0.0.7", &["https://10.0.0.7"]).contains("IP address"));
        assert!(err("[::1]", &["https://[::1]"]).contains("IP address"));
        assert!(err("::1", &["https://[::1]"]).contains("IP address"));
        assert!(err("https://a.example", &["https://a.example"]).contains("host name alone"));
        assert!(err("a.example:443", &["https://a.example"]).contains("host name alone"));
        assert!(err("bad_name.example", &["https://a.example"]).contains("not a host name"));
        assert!(err("ünï.example", &["https://a.example"]).contains("xn--"));
        assert!(err("a.example", &[]).contains("at least one origin"));
        assert!(err("a.example", &["http://a.example"]).contains("use https"));
        assert!(err("a.example", &["https://evil.example"]).contains("neither"));
        assert!(err("a.example", &["https://nota.example"]).contains("neither"));
        assert!(err("a.example", &["https://a.example/ui"]).contains("without path"));
        assert!(err("a.example", &["https://u:p@a.example"]).contains("no user"));
        assert!(err("a.example", &["not a url"]).contains("not a URL"));
        assert!(RelyingParty::new("a.example", " ", &["https://a.example"])
            .unwrap_err()
            .contains("name must not be empty"));
    }

    #[test]
    fn relying_party_of_an_origin() {
        let rp = RelyingParty::for_origin("https://ui.example.com:8443", None, "t").unwrap();
        assert_eq!(rp.id(), "ui.example.com");
        assert_eq!(rp.origins(), ["https://ui.example.com:8443"]);
        let rp =
            RelyingParty::for_origin("https://ui.example.com", Some("example.com"), "t").unwrap();
        assert_eq!(rp.id(), "example.com");
        assert!(
            RelyingParty::for_origin("https://127.0.0.1:9090", None, "t")
                .unwrap_err()
                .contains("IP address")
        );
        assert!(
            RelyingParty::for_origin("https://ui.example.com", Some("other.com"), "t")
                .unwrap_err()
                .contains("neither")
        );
        assert!(RelyingParty::for_origin("nonsense", None, "t")
            .unwrap_err()
            .contains("not a URL with a host"));
    }

    #[test]
    fn passkey_names() {
        assert_eq!(passkey_name(None).unwrap(), DEFAULT_PASSKEY_NAME);
        assert_eq!(passkey_name(Some("  ")).unwrap(), DEFAULT_PASSKEY_NAME);
        assert_eq!(passkey_name(Some(" Laptop ")).unwrap(), "Laptop");
        assert!(passkey_name(Some(&"é".repeat(64))).is_ok());
        assert!(passkey_name(Some(&"é".repeat(65))).is_err());
        assert!(passkey_name(Some("a\nb")).is_err());
    }

    #[test]
    fn transports_keep_plausible_names_once() {
        let given: Vec<String> = ["usb", "usb", "hybrid", "NFC", "", "x y", "internal"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(transports(&given), ["usb", "hybrid", "internal"]);
    }

    #[test]
    fn request_bodies_name_the_member_at_fault() {
        let err = RegistrationRequest::from_json(br#"{"credential":{"id":"a","rawId":"a","type":"public-key","response":{"clientDataJSON":"a"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`credential.response`"), "{err}");
        assert!(err.contains("attestationObject"), "{err}");
        let err = AuthenticationRequest::from_json(b"{\"credential\":1} x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credential"), "{err}");
        let err = AuthenticationRequest::from_json(b"{}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `credential`"), "{err}");
        let err = AuthenticationRequest::from_json(&vec![b' '; MAX_REQUEST_BYTES + 1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 65536"), "{err}");
        assert!(AuthenticationStart::from_json(b"")
            .unwrap()
            .username
            .is_none());
        assert_eq!(
            AuthenticationStart::from_json(br#"{"username":"ann"}"#)
                .unwrap()
                .username
                .as_deref(),
            Some("ann")
        );
        let err = RegistrationRequest::from_json(br#"{"credential":{"id":"a","rawId":"a","type":"public-key","response":{"clientDataJSON":"a","attestationObject":"b"}}} trailing"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn options_serialise_as_the_json_forms_browsers_read() {
        let options = RequestOptions {
            public_key: PublicKeyRequestOptions {
                challenge: "AAEC".to_string(),
                timeout: 300_000,
                rp_id: "a.example".to_string(),
                allow_credentials: vec![CredentialDescriptor {
                    typ: "public-key",
                    id: "AQ".to_string(),
                    transports: vec!["usb".to_string()],
                }],
                user_verification: UserVerification::Preferred,
            },
        };
        assert_eq!(
            serde_json::to_value(&options).unwrap(),
            json!({"publicKey": {
                "challenge": "AAEC", "timeout": 300000, "rpId": "a.example",
                "allowCredentials": [{"type": "public-key", "id": "AQ", "transports": ["usb"]}],
                "userVerification": "preferred"
            }})
        );
    }
}
