//! Bearer JWTs: the pure checks every token goes through around its signature check, each
//! failure with its own [`JwtRejection`] so a log line can say precisely why a token was
//! refused (without ever showing the token).
//!
//! Order: size → three segments → base64url → JSON → header (`alg`, `crit`) → (the caller
//! finds the key) → signature → `exp`, `nbf`, `iat` → `iss` → `aud`. Nothing here does I/O
//! or reads the clock; `now` is passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use std::fmt;

use crate::domain::Timestamp;

/// Which of the three segments of a compact JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Header,
    Payload,
    Signature,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Segment::Header => "header",
            Segment::Payload => "payload",
            Segment::Signature => "signature",
        })
    }
}

/// Why a bearer JWT was refused. `Display` is meant for a log line: it names the reason and,
/// where useful, a short non-secret value (an algorithm, a timestamp), never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRejection {
    TooLarge {
        len: usize,
        max: usize,
    },
    NotThreeSegments,
    MalformedBase64(Segment),
    MalformedJson(Segment),
    /// `alg: none` in any spelling: an unsigned token.
    AlgNone,
    /// An HMAC algorithm for an issuer whose keys are public: the "HS256 signed with the
    /// RSA public key as secret" attack, refused whatever the `kid`.
    SymmetricAlgorithm {
        alg: String,
    },
    /// An asymmetric algorithm that this issuer is not configured to use (or not one at all).
    AlgorithmNotAllowed {
        alg: String,
    },
    /// A `crit` header: it lists extensions the receiver must understand, and we understand
    /// none.
    CritHeader,
    /// The unverified `iss` is missing or names no configured issuer.
    UnknownIssuer,
    /// No `kid` and the issuer publishes more than one key that could have signed it.
    MissingKid,
    /// The issuer publishes no key with this `kid`, even after a re-fetch.
    UnknownKid {
        kid: String,
    },
    /// The key named by `kid` is of another type or curve than `alg` needs.
    KeyMismatch {
        kid: String,
        alg: String,
    },
    BadSignature,
    MissingExp,
    /// A registered claim with the wrong JSON type (`exp` as a string, …).
    MalformedClaim {
        claim: &'static str,
    },
    Expired {
        exp: Timestamp,
        now: Timestamp,
    },
    NotYetValid {
        nbf: Timestamp,
        now: Timestamp,
    },
    IssuedInFuture {
        iat: Timestamp,
        now: Timestamp,
    },
    WrongIssuer,
    WrongAudience,
    /// An ID token's `azp` is not the client, or is missing while it has several audiences.
    WrongAuthorizedParty,
    /// An ID token's `nonce` is not the one its sign-in sent (a token of another sign-in).
    WrongNonce,
    /// The configured subject claim is missing or not a non-empty string.
    MissingSubject {
        claim: String,
    },
}

impl fmt::Display for JwtRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use JwtRejection::*;
        match self {
            TooLarge { len, max } => write!(f, "token is {len} bytes, more than the {max} allowed"),
            NotThreeSegments => f.write_str("token does not have three dot-separated segments"),
            MalformedBase64(s) => write!(f, "token {s} is not valid base64url"),
            MalformedJson(s) => write!(f, "token {s} is not a JSON object"),
            AlgNone => f.write_str("token is unsigned (`alg: none`)"),
            SymmetricAlgorithm { alg } => write!(
                f,
                "`alg: {alg}` is symmetric; tokens of an OIDC issuer must be signed with its public-key algorithms"
            ),
            AlgorithmNotAllowed { alg } => {
                write!(f, "`alg: {alg}` is not allowed for this issuer")
            }
            CritHeader => f.write_str("token has a `crit` header with extensions we do not support"),
            UnknownIssuer => f.write_str("token `iss` is missing or not a configured issuer"),
            MissingKid => f.write_str("token has no `kid` and the issuer has several keys"),
            UnknownKid { kid } => write!(f, "the issuer publishes no key with `kid` {kid}"),
            KeyMismatch { kid, alg } => write!(f, "key `{kid}` cannot verify `alg: {alg}`"),
            BadSignature => f.write_str("signature does not verify (tampered token or wrong key)"),
            MissingExp => f.write_str("token has no `exp` claim"),
            MalformedClaim { claim } => write!(f, "claim `{claim}` has the wrong type"),
            Expired { exp, now } => write!(f, "token expired at {exp} (now {now})"),
            NotYetValid { nbf, now } => write!(f, "token is not valid before {nbf} (now {now})"),
            IssuedInFuture { iat, now } => write!(f, "token is issued in the future at {iat} (now {now})"),
            WrongIssuer => f.write_str("token `iss` is not the expected issuer"),
            WrongAudience => f.write_str("token `aud` names none of the accepted audiences"),
            WrongAuthorizedParty => f.write_str(
                "token `azp` is not this client (or is missing while the token has several audiences)",
            ),
            WrongNonce => f.write_str("token `nonce` is not the one this sign-in sent"),
            MissingSubject { claim } => write!(f, "token has no `{claim}` string claim"),
        }
    }
}

impl std::error::Error for JwtRejection {}

/// Whether a credential has the shape of a compact JWT (three base64url segments, the first
/// starting `eyJ`, i.e. `{"`), so a credential router can send it to the JWT verifier
/// instead of the API key parser. The signature may be empty so that unsigned tokens still
/// reach the verifier and get their precise rejection.
pub fn looks_like_jwt(s: &str) -> bool {
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = s.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(sig), None) => {
            h.starts_with("eyJ") && !p.is_empty() && b64url(h) && b64url(p) && b64url(sig)
        }
        _ => false,
    }
}

/// A token whose structure has been checked but whose signature has not: nothing in it is
/// trustworthy yet. Its `Debug` shows the header fields only.
pub struct UnverifiedJwt<'t> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

impl fmt::Debug for UnverifiedJwt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("alg", &self.header.get("alg"))
            .field("kid", &self.header.get("kid"))
            .finish_non_exhaustive()
    }
}

fn b64_json(segment: &str, which: Segment) -> Result<Map<String, Value>, JwtRejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtRejection::MalformedBase64(which))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtRejection::MalformedJson(which)),
    }
}

/// Checks size, segments, base64url and JSON. Size comes first so that an oversized
/// credential costs nothing to refuse.
pub fn parse(token: &str, max_bytes: usize) -> Result<UnverifiedJwt<'_>, JwtRejection> {
    if token.len() > max_bytes {
        return Err(JwtRejection::TooLarge {
            len: token.len(),
            max: max_bytes,
        });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtRejection::NotThreeSegments);
    };
    let header = b64_json(h, Segment::Header)?;
    let claims = b64_json(p, Segment::Payload)?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtRejection::MalformedBase64(Segment::Signature))?;
    Ok(UnverifiedJwt {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// The unverified `iss` of a token, to pick which issuer's keys to verify it with.
pub fn unverified_issuer(token: &str, max_bytes: usize) -> Result<String, JwtRejection> {
    parse(token, max_bytes)?
        .issuer()
        .map(str::to_owned)
        .ok_or(JwtRejection::UnknownIssuer)
}

impl<'t> UnverifiedJwt<'t> {
    /// The unverified `iss` claim, if it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// The `kid` header, if it is a string.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// The claims; trust them only after [`verify_signature`](Self::verify_signature).
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Checks the header against an asymmetric issuer's allowed algorithms and answers the
    /// token's algorithm. `alg: none` and HMAC are refused before any key is looked at.
    pub fn check_header(&self, allowed: &[Algorithm]) -> Result<Algorithm, JwtRejection> {
        let alg = match self.header.get("alg") {
            Some(Value::String(a)) => a.as_str(),
            // A missing or non-string `alg` cannot name a signature algorithm.
            _ => return Err(JwtRejection::MalformedJson(Segment::Header)),
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(JwtRejection::AlgNone);
        }
        // Attacker-chosen text ends up in a log line: keep it short and printable.
        let shown: String = alg
            .chars()
            .take(16)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        if alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
            return Err(JwtRejection::SymmetricAlgorithm { alg: shown });
        }
        let parsed: Algorithm = alg
            .parse()
            .map_err(|_| JwtRejection::AlgorithmNotAllowed { alg: shown.clone() })?;
        if !allowed.contains(&parsed) {
            return Err(JwtRejection::AlgorithmNotAllowed { alg: shown });
        }
        // RFC 7515 §4.1.11: a recipient must reject a token whose `crit` lists extensions
        // it does not understand; we understand none, so any `crit` is refused.
        if self.header.contains_key("crit") {
            return Err(JwtRejection::CritHeader);
        }
        Ok(parsed)
    }

    /// Verifies the signature with `key`. `kid` is only for the rejection message.
    pub fn verify_signature(
        &self,
        alg: Algorithm,
        key: &DecodingKey,
        kid: &str,
    ) -> Result<(), JwtRejection> {
        match jsonwebtoken::crypto::verify(self.signature, self.signing_input.as_bytes(), key, alg)
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(JwtRejection::BadSignature),
            // The key cannot be used with this algorithm (another family, a broken key).
            Err(_) => Err(JwtRejection::KeyMismatch {
                kid: kid.to_owned(),
                alg: format!("{alg:?}"),
            }),
        }
    }
}

/// What the registered claims must satisfy.
#[derive(Debug, Clone)]
pub struct ClaimRules<'r> {
    /// The exact expected `iss`.
    pub issuer: &'r str,
    /// Accepted `aud` values; the token must name at least one. Empty accepts none.
    pub audiences: &'r [String],
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
}

fn numeric(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, JwtRejection> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(JwtRejection::MalformedClaim { claim }),
        Some(_) => Err(JwtRejection::MalformedClaim { claim }),
    }
}

/// Checks `exp` (required), `nbf`, `iat`, `iss` and `aud` of signature-verified claims at
/// `now` (Unix seconds).
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: Timestamp,
) -> Result<(), JwtRejection> {
    let exp = numeric(claims, "exp")?.ok_or(JwtRejection::MissingExp)?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(JwtRejection::Expired { exp, now });
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if nbf > now.saturating_add(rules.leeway) {
            return Err(JwtRejection::NotYetValid { nbf, now });
        }
    }
    if let Some(iat) = numeric(claims, "iat")? {
        if iat > now.saturating_add(rules.leeway) {
            return Err(JwtRejection::IssuedInFuture { iat, now });
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err(JwtRejection::WrongIssuer);
    }
    let accepted = |a: &Value| {
        a.as_str()
            .is_some_and(|a| rules.audiences.iter().any(|r| r == a))
    };
    let audience_ok = match claims.get("aud") {
        Some(Value::String(_)) => accepted(&claims["aud"]),
        Some(Value::Array(list)) => list.iter().any(accepted),
        _ => false,
    };
    if !audience_ok {
        return Err(JwtRejection::WrongAudience);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seg(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", seg(&header), seg(&claims))
    }

    const NOW: Timestamp = 1_800_000_000;

    fn rules(aud: &[String]) -> ClaimRules<'_> {
        ClaimRules {
            issuer: "https://id.example",
            audiences: aud,
            leeway: 30,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn jwt_shape_is_told_from_api_keys() {
        let t = token(json!({"alg": "RS256"}), json!({"sub": "a"}));
        assert!(looks_like_jwt(&t));
        assert!(looks_like_jwt(&format!(
            "{}.{}.",
            seg(&json!({"alg":"none"})),
            seg(&json!({}))
        )));
        assert!(!looks_like_jwt("sk-tg-abcdef"));
        assert!(!looks_like_jwt("eyJa.b"));
        assert!(!looks_like_jwt("eyJa.b.c.d"));
        assert!(!looks_like_jwt("abc.def.ghi"));
        assert!(!looks_like_jwt("eyJa..c"));
        assert!(!looks_like_jwt("eyJ+.b.c"));
    }

    #[test]
    fn structure_is_checked_in_order() {
        assert_eq!(
            parse("eyJ.a.b", 4).unwrap_err(),
            JwtRejection::TooLarge { len: 7, max: 4 }
        );
        assert_eq!(
            parse("a.b", 100).unwrap_err(),
            JwtRejection::NotThreeSegments
        );
        assert_eq!(
            parse("e!.a.b", 100).unwrap_err(),
            JwtRejection::MalformedBase64(Segment::Header)
        );
        let not_json = URL_SAFE_NO_PAD.encode("{nope");
        assert_eq!(
            parse(&format!("{}.{not_json}.c2ln", seg(&json!({}))), 100).unwrap_err(),
            JwtRejection::MalformedJson(Segment::Payload)
        );
        let array = seg(&json!([1]));
        assert_eq!(
            parse(&format!("{array}.{array}.c2ln"), 100).unwrap_err(),
            JwtRejection::MalformedJson(Segment::Header)
        );
        let t = token(json!({"alg": "RS256"}), json!({"iss": "x"}));
        assert_eq!(
            parse(&format!("{t}="), 1000).unwrap_err(),
            JwtRejection::MalformedBase64(Segment::Signature)
        );
        assert_eq!(unverified_issuer(&t, 1000).unwrap(), "x");
    }

    #[test]
    fn header_rules() {
        let allowed = [Algorithm::RS256, Algorithm::ES256];
        let check = |h: Value| {
            parse(&token(h, json!({})), 10_000)
                .unwrap()
                .check_header(&allowed)
        };
        assert_eq!(check(json!({"alg": "RS256"})), Ok(Algorithm::RS256));
        for none in ["none", "None", "NONE", "nOnE"] {
            assert_eq!(check(json!({ "alg": none })), Err(JwtRejection::AlgNone));
        }
        assert!(matches!(
            check(json!({"alg": "HS256", "kid": "rsa"})),
            Err(JwtRejection::SymmetricAlgorithm { .. })
        ));
        assert!(matches!(
            check(json!({"alg": "hs512"})),
            Err(JwtRejection::SymmetricAlgorithm { .. })
        ));
        assert_eq!(
            check(json!({"alg": "PS256"})),
            Err(JwtRejection::AlgorithmNotAllowed {
                alg: "PS256".into()
            })
        );
        assert!(matches!(
            check(json!({"alg": "XX1\n\u{7}".repeat(10)})),
            Err(JwtRejection::AlgorithmNotAllowed { alg }) if alg.len() == 16 && !alg.contains('\n')
        ));
        assert_eq!(
            check(json!({"alg": "RS256", "crit": ["b64"], "b64": false})),
            Err(JwtRejection::CritHeader)
        );
        assert_eq!(
            check(json!({"typ": "JWT"})),
            Err(JwtRejection::MalformedJson(Segment::Header))
        );
    }

    #[test]
    fn time_claims_with_leeway() {
        let aud = vec!["app".to_string()];
        let r = rules(&aud);
        let base = |extra: Value| {
            let mut c = claims(json!({"iss": "https://id.example", "aud": "app"}));
            c.extend(claims(extra));
            check_claims(&c, &r, NOW)
        };
        assert_eq!(base(json!({"exp": NOW + 1})), Ok(()));
        assert_eq!(base(json!({})), Err(JwtRejection::MissingExp));
        assert_eq!(
            base(json!({"exp": "soon"})),
            Err(JwtRejection::MalformedClaim { claim: "exp" })
        );
        // Within leeway: accepted; at the leeway's end: expired.
        assert_eq!(base(json!({"exp": NOW - 29})), Ok(()));
        assert_eq!(
            base(json!({"exp": NOW - 30})),
            Err(JwtRejection::Expired {
                exp: NOW - 30,
                now: NOW
            })
        );
        assert_eq!(base(json!({"exp": NOW + 100, "nbf": NOW + 30})), Ok(()));
        assert!(matches!(
            base(json!({"exp": NOW + 100, "nbf": NOW + 31})),
            Err(JwtRejection::NotYetValid { .. })
        ));
        assert!(matches!(
            base(json!({"exp": NOW + 100, "iat": NOW + 31})),
            Err(JwtRejection::IssuedInFuture { .. })
        ));
        assert_eq!(base(json!({"exp": (NOW + 5) as f64 + 0.5})), Ok(()));
    }

    #[test]
    fn issuer_and_audience() {
        let aud = vec!["app".to_string(), "cli".to_string()];
        let r = rules(&aud);
        let check = |c: Value| check_claims(&claims(c), &r, NOW);
        let exp = NOW + 60;
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://id.example/", "aud": "app"})),
            Err(JwtRejection::WrongIssuer)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://id.example", "aud": "other"})),
            Err(JwtRejection::WrongAudience)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://id.example"})),
            Err(JwtRejection::WrongAudience)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://id.example", "aud": ["x", "cli"]})),
            Ok(())
        );
        let none: Vec<String> = vec![];
        assert_eq!(
            check_claims(
                &claims(json!({"exp": exp, "iss": "https://id.example", "aud": "app"})),
                &rules(&none),
                NOW
            ),
            Err(JwtRejection::WrongAudience)
        );
    }

    #[test]
    fn debug_and_display_never_show_the_token() {
        let t = token(
            json!({"alg": "RS256", "kid": "k1"}),
            json!({"sub": "secret-subject"}),
        );
        let parsed = parse(&t, 10_000).unwrap();
        let shown = format!("{parsed:?}");
        assert!(
            !shown.contains("secret-subject") && !shown.contains(&t),
            "{shown}"
        );
        let e = parse(&t, 10).unwrap_err().to_string();
        assert!(!e.contains(&t));
    }
}
