//! Passwords: argon2id hashing and verification. The configurable policy
//! (`auth.password_policy`) is [`crate::config::PasswordPolicy::check`].

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use std::sync::OnceLock;

/// argon2id with a random salt, as a PHC string. Never logged, never returned.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
}

/// Whether `password` matches the PHC string `hash`. A missing or unparsable hash is a
/// mismatch, verified against a dummy hash first so that the answer takes as long as a
/// real check: timing does not tell which usernames exist.
pub fn verify(password: &str, hash: Option<&str>) -> bool {
    let parsed = hash.and_then(|h| PasswordHash::new(h).ok());
    match parsed {
        Some(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        None => {
            let dummy = PasswordHash::new(dummy_hash()).expect("the dummy hash parses");
            let _ = Argon2::default().verify_password(password.as_bytes(), &dummy);
            false
        }
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash("tollgate-dummy-password").expect("hashing a constant works"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PasswordPolicy;

    fn policy(min_length: usize, min_classes: usize) -> PasswordPolicy {
        PasswordPolicy {
            min_length,
            min_classes,
        }
    }

    #[test]
    fn hashes_and_verifies() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", Some(&h)));
        assert!(!verify("wrong", Some(&h)));
        assert!(!verify("anything", None));
        assert!(!verify("anything", Some("not a phc string")));
    }

    #[test]
    fn policy_names_what_is_missing() {
        let p = policy(12, 3);
        let short = p.check("Ab1!").unwrap_err().0;
        assert!(short.contains("at least 12 characters"), "{short}");
        let classes = p.check("alllowercaseletters").unwrap_err().0;
        assert!(classes.contains("add 2 more"), "{classes}");
        assert!(classes.contains("upper-case letter"), "{classes}");
        assert!(!classes.contains("alllowercase"), "{classes}");
        assert!(p.check("Lower-and-UPPER-1").is_ok());
        assert!(policy(4, 0).check("aaaa").is_ok());
    }
}
