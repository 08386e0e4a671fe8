//! The master key: full admin. Only its SHA-256 is kept after start, and a presented
//! credential is compared against it in constant time.

use super::api_key::KeyHash;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

pub struct MasterKey {
    hash: [u8; 32],
}

impl MasterKey {
    pub fn from_secret(secret: &Secret) -> MasterKey {
        MasterKey {
            hash: KeyHash::of(secret.expose()).0,
        }
    }

    /// A new random master key (`tg-master-` + 43 base62 characters), for when none is
    /// configured. The caller shows it once and keeps only the [`MasterKey`].
    pub fn generate() -> Secret {
        Secret::new(super::api_key::random_token("tg-master-", 43))
    }

    /// A fingerprint of this master key for records that must tell it from another one
    /// without holding it (the web UI's master-key sessions): 32 hex characters of a
    /// SHA-256 over its hash. It reveals nothing that helps guess the key.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"tollgate master key fingerprint\0");
        hasher.update(self.hash);
        hex::encode(&hasher.finalize()[..16])
    }

    /// Constant-time comparison of hashes, so timing reveals nothing about the key.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_hash(&KeyHash::of(presented))
    }

    /// [`MasterKey::matches`] of a credential already hashed (SHA-256, as virtual keys are:
    /// a Check hashes what it is given once).
    pub fn matches_hash(&self, presented: &KeyHash) -> bool {
        presented.0.ct_eq(&self.hash).into()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_configured_key() {
        let m = MasterKey::from_secret(&Secret::new("sk-admin"));
        assert!(m.matches("sk-admin"));
        assert!(!m.matches("sk-admin "));
        assert!(!m.matches(""));
        assert_eq!(format!("{m:?}"), "MasterKey([redacted])");
    }

    #[test]
    fn fingerprints_tell_keys_apart_without_showing_them() {
        let a = MasterKey::from_secret(&Secret::new("sk-admin"));
        let b = MasterKey::from_secret(&Secret::new("sk-admin-2"));
        assert_eq!(a.fingerprint(), a.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32);
        assert!(!a.fingerprint().contains(&hex::encode(&a.hash[..8])));
    }

    #[test]
    fn generated_keys_differ() {
        let a = MasterKey::generate();
        assert!(a.expose().starts_with("tg-master-"));
        assert_ne!(a, MasterKey::generate());
    }
}
