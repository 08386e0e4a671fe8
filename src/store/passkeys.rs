//! The passkey records ([`PasskeyStore`]): each user's WebAuthn user handle, their registered
//! credentials, and the challenges of ceremonies in progress. The ceremonies themselves (what
//! is checked before anything is stored) are [`crate::authn::passkey`]'s.

use super::{Actor, StoreResult};
use crate::domain::{rfc3339, Timestamp};
use async_trait::async_trait;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How many passkeys one user may register: the creation options list them all (so that an
/// authenticator does not register twice), and a person has a handful of devices.
pub const MAX_PASSKEYS_PER_USER: i64 = 20;

/// The longest name a passkey may be given, in characters.
pub const MAX_PASSKEY_NAME_CHARS: usize = 64;

/// Which WebAuthn ceremony a challenge was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyCeremony {
    /// `navigator.credentials.create`: a signed-in user registers a passkey.
    Register,
    /// `navigator.credentials.get`: someone signs in with a passkey.
    Authenticate,
}

impl PasskeyCeremony {
    /// `register` or `authenticate`, as stored in `passkey_challenges.ceremony`.
    pub fn as_str(self) -> &'static str {
        match self {
            PasskeyCeremony::Register => "register",
            PasskeyCeremony::Authenticate => "authenticate",
        }
    }
}

impl fmt::Display for PasskeyCeremony {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PasskeyCeremony {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(PasskeyCeremony::Register),
            "authenticate" => Ok(PasskeyCeremony::Authenticate),
            other => Err(format!(
                "unknown passkey ceremony `{other}` (expected register or authenticate)"
            )),
        }
    }
}

/// A challenge handed to a browser, kept until the ceremony ends or it expires. Only its
/// hash is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeyChallenge {
    /// SHA-256 of the challenge bytes, lowercase hex.
    pub challenge_hash: String,
    pub ceremony: PasskeyCeremony,
    /// Registration: the signed-in user. Authentication: the user named at the start, if any
    /// (then only their passkeys can finish it).
    pub user_id: Option<String>,
    /// The relying party id the options named.
    pub rp_id: String,
    /// The options asked for user verification as `required`.
    pub uv_required: bool,
    /// SHA-256 (hex) of what the caller bound the ceremony to, e.g. its browser session: the
    /// ceremony can only be finished by a caller presenting the same value.
    pub binding_hash: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A passkey about to be stored: a credential whose registration was verified.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPasskey {
    pub user_id: String,
    /// The raw credential id, base64url (no padding).
    pub credential_id: String,
    /// The COSE_Key of the credential, base64url, as the authenticator gave it.
    pub public_key: String,
    /// Its COSE algorithm number.
    pub algorithm: i64,
    pub sign_count: u32,
    pub name: String,
    pub transports: Vec<String>,
    pub backup_eligible: bool,
    pub backed_up: bool,
    /// The authenticator's AAGUID, lowercase hex (32 characters; zeros when not told).
    pub aaguid: String,
}

/// A registered passkey as its owner sees it: everything but the public key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passkey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The raw credential id, base64url (no padding).
    pub credential_id: String,
    /// COSE algorithm: -7 (ES256), -8 (EdDSA), -257 (RS256).
    pub algorithm: i64,
    pub sign_count: u32,
    pub transports: Vec<String>,
    /// The authenticator may sync it to other devices (a synced passkey).
    pub backup_eligible: bool,
    /// It was synced when last seen.
    pub backed_up: bool,
    pub aaguid: String,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "rfc3339::option")]
    pub last_used_at: Option<Timestamp>,
}

/// A passkey with what a sign-in checks it against: its public key and its user's handle.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeyCredential {
    pub passkey: Passkey,
    /// The COSE_Key, base64url.
    pub public_key: String,
    /// The user's WebAuthn user handle, base64url.
    pub user_handle: String,
}

/// Passkeys and the challenges of their ceremonies.
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The user's WebAuthn user handle (base64url). The first call for a user stores
    /// `fresh` (random bytes the caller made) and answers it; later calls answer the stored
    /// one. None: there is no such live user.
    async fn passkey_user_handle(&self, user_id: &str, fresh: &str) -> StoreResult<Option<String>>;

    /// Stores a challenge, and deletes the challenges that expired by its `created_at`.
    /// A `user_id` that names no live user is `Invalid`.
    async fn put_passkey_challenge(&self, challenge: PasskeyChallenge) -> StoreResult<()>;

    /// Deletes the challenge with this hash and answers it, expired or not: of concurrent
    /// callers, exactly one gets it, so a challenge finishes at most one ceremony.
    async fn take_passkey_challenge(
        &self,
        challenge_hash: &str,
    ) -> StoreResult<Option<PasskeyChallenge>>;

    /// Stores a verified passkey (audited `passkey.create`, target the user). A credential
    /// id already registered, to this user or another, is `Conflict`; a user who has
    /// [`MAX_PASSKEYS_PER_USER`] already, or is no live user, is `Invalid`.
    async fn create_passkey(&self, actor: &Actor, passkey: NewPasskey) -> StoreResult<Passkey>;

    /// The user's passkeys, oldest first.
    async fn list_passkeys(&self, user_id: &str) -> StoreResult<Vec<Passkey>>;

    /// The passkey with this credential id (base64url) of a live user, with its public key
    /// and its user's handle.
    async fn passkey_credential(
        &self,
        credential_id: &str,
    ) -> StoreResult<Option<PasskeyCredential>>;

    /// Renames one of the user's passkeys (audited `passkey.rename`). None: the user has no
    /// passkey with this id (another user's passkey is not theirs to rename).
    async fn rename_passkey(
        &self,
        actor: &Actor,
        user_id: &str,
        id: &str,
        name: &str,
    ) -> StoreResult<Option<Passkey>>;

    /// Deletes one of the user's passkeys (audited `passkey.delete`). False: the user has no
    /// passkey with this id.
    async fn delete_passkey(&self, actor: &Actor, user_id: &str, id: &str) -> StoreResult<bool>;

    /// Records a verified sign-in: the signature counter moves from `seen_count` (the value
    /// the verification compared with) to `sign_count`, with `backed_up` and
    /// `last_used_at = at`. False when the counter is no longer `seen_count` (another sign-in
    /// with the same passkey got there first) or the passkey is gone; nothing is written
    /// then.
    async fn record_passkey_use(
        &self,
        id: &str,
        seen_count: u32,
        sign_count: u32,
        backed_up: bool,
        at: Timestamp,
    ) -> StoreResult<bool>;
}
