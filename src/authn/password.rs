//! Passwords: argon2id hashing and verification, and the configurable policy
//! (`auth.password_policy`).

use crate::config::PasswordPolicy;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use std::sync::OnceLock;

/// Why a password cannot be used. The message names what is missing, never the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyViolation(pub String);

/// Longest password accepted: hashing cost grows with length, so a multi-megabyte password
/// must not reach argon2.
pub const MAX_LENGTH: usize = 1024;

/// Checks `password` against the policy: at least `min_length` characters, and at least
/// `min_classes` of lower case, upper case, digit and other.
pub fn check_policy(policy: &PasswordPolicy, password: &str) -> Result<(), PolicyViolation> {
    let length = password.chars().count();
    if length < policy.min_length {
        return Err(PolicyViolation(format!(
            "`password` must be at least {} characters long (it has {length})",
            policy.min_length
        )));
    }
    if length > MAX_LENGTH {
        return Err(PolicyViolation(format!(
            "`password` must be at most {MAX_LENGTH} characters long"
        )));
    }
    let classes = [
        (
            "a lower-case letter",
            password.chars().any(char::is_lowercase),
        ),
        (
            "an upper-case letter",
            password.chars().any(char::is_uppercase),
        ),
        ("a digit", password.chars().any(|c| c.is_ascii_digit())),
        (
            "another character (punctuation, space, symbol)",
            password
                .chars()
                .any(|c| !c.is_lowercase() && !c.is_uppercase() && !c.is_ascii_digit()),
        ),
    ];
    let present = classes.iter().filter(|(_, has)| *has).count();
    if present < policy.min_classes {
        let missing: Vec<&str> = classes
            .iter()
            .filter(|(_, has)| !*has)
            .map(|(name, _)| *name)
            .collect();
        return Err(PolicyViolation(format!(
            "`password` must contain at least {} of: lower-case letter, upper-case letter, digit, other character; add {} more from: {}",
            policy.min_classes,
            policy.min_classes - present,
            missing.join(", ")
        )));
    }
    Ok(())
}

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
        let short = check_policy(&p, "Ab1!").unwrap_err().0;
        assert!(short.contains("at least 12 characters"), "{short}");
        let classes = check_policy(&p, "alllowercaseletters").unwrap_err().0;
        assert!(classes.contains("add 2 more"), "{classes}");
        assert!(classes.contains("upper-case letter"), "{classes}");
        assert!(!classes.contains("alllowercase"), "{classes}");
        assert!(check_policy(&p, "Lower-and-UPPER-1").is_ok());
        assert!(check_policy(&policy(4, 0), "aaaa").is_ok());
    }
}
