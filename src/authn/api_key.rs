//! Virtual API keys: `sk-tg-` + 43 base62 characters of randomness + a 6-character base62
//! CRC32 of everything before it.
//!
//! The checksum lets a typo or a made-up key be rejected before any cache or store lookup.
//! Keys are stored as SHA-256 of the whole key: right for high-entropy machine secrets, and
//! cheap enough to compute on every request (argon2 is for passwords).

use rand::Rng;
use sha2::{Digest, Sha256};
use std::fmt;

pub const PREFIX: &str = "sk-tg-";
const RANDOM_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A plaintext key, shown once at creation. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainKey(String);

impl PlainKey {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }

    /// A recognisable, non-secret fragment for listings: `sk-tg-AbCd…wxyz`.
    pub fn hint(&self) -> String {
        format!(
            "{}{}…{}",
            PREFIX,
            &self.0[PREFIX.len()..PREFIX.len() + 4],
            &self.0[KEY_LEN - 4..]
        )
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainKey({})", self.hint())
    }
}

/// SHA-256 of a whole key: what the store and the cache are keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(secret: &str) -> KeyHash {
        KeyHash(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &hex::encode(&self.0[..4]))
    }
}

/// Why a string is not a well-formed tollgate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not a tollgate key (expected the sk-tg- prefix)")]
    Prefix,
    #[error("malformed key (wrong length)")]
    Length,
    #[error("malformed key (characters outside base62)")]
    Alphabet,
    #[error("malformed key (checksum mismatch)")]
    Checksum,
}

/// `prefix` followed by `len` base62 characters from the OS-seeded CSPRNG: the shape of
/// every secret tollgate mints (virtual keys, the generated master key, refresh tokens).
pub fn random_token(prefix: &str, len: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut token = String::with_capacity(prefix.len() + len + CHECKSUM_LEN);
    token.push_str(prefix);
    for _ in 0..len {
        token.push(BASE62[rng.gen_range(0..BASE62.len())] as char);
    }
    token
}

/// Draws a new key from the OS-seeded CSPRNG.
pub fn generate() -> PlainKey {
    let mut key = random_token(PREFIX, RANDOM_LEN);
    let checksum = encode_checksum(crc32fast::hash(key.as_bytes()));
    key.push_str(&checksum);
    PlainKey(key)
}

/// Checks prefix, length, alphabet and checksum, without any lookup.
pub fn validate(candidate: &str) -> Result<(), KeyFormatError> {
    if !candidate.starts_with(PREFIX) {
        return Err(KeyFormatError::Prefix);
    }
    if candidate.len() != KEY_LEN {
        return Err(KeyFormatError::Length);
    }
    let body = &candidate.as_bytes()[PREFIX.len()..];
    if !body.iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::Alphabet);
    }
    let (signed, checksum) = candidate.split_at(KEY_LEN - CHECKSUM_LEN);
    if encode_checksum(crc32fast::hash(signed.as_bytes())) != checksum {
        return Err(KeyFormatError::Checksum);
    }
    Ok(())
}

/// Validates and wraps a presented key.
pub fn parse(candidate: &str) -> Result<PlainKey, KeyFormatError> {
    validate(candidate).map(|()| PlainKey(candidate.to_owned()))
}

fn encode_checksum(mut value: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    // 62^6 > 2^32, so nothing is left over.
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_validate_and_are_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), KEY_LEN);
        assert!(a.expose().starts_with("sk-tg-"));
        assert_eq!(validate(a.expose()), Ok(()));
        assert_eq!(validate(b.expose()), Ok(()));
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let key = generate().into_string();
        let mut bytes = key.into_bytes();
        let i = PREFIX.len() + 10;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(validate(&tampered), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn malformed_keys_are_classified() {
        assert_eq!(validate("sk-abc"), Err(KeyFormatError::Prefix));
        assert_eq!(validate("sk-tg-abc"), Err(KeyFormatError::Length));
        let bad = format!("sk-tg-{}", "!".repeat(RANDOM_LEN + CHECKSUM_LEN));
        assert_eq!(validate(&bad), Err(KeyFormatError::Alphabet));
        // Multi-byte characters must not panic on slicing.
        let utf8 = format!("sk-tg-{}", "é".repeat(24) + "abcdef1");
        assert!(validate(&utf8).is_err());
    }

    #[test]
    fn checksum_encoding_is_fixed_width() {
        assert_eq!(encode_checksum(0), "000000");
        assert_eq!(encode_checksum(u32::MAX).len(), 6);
    }

    #[test]
    fn debug_and_hint_do_not_reveal_the_key() {
        let key = generate();
        let shown = format!("{key:?} {:?} {}", key.hash(), key.hint());
        assert!(!shown.contains(&key.expose()[PREFIX.len() + 4..KEY_LEN - 4]));
        assert!(key.hint().starts_with("sk-tg-"));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
