//! Credential public keys as authenticators give them (COSE_Key, RFC 9052 §7 and RFC 9053),
//! for the three algorithms tollgate accepts, and the check of a signature with one.
//!
//! | COSE alg | name | key | signature |
//! |---|---|---|---|
//! | -7 | ES256 | EC2 (kty 2), P-256 (crv 1), x and y of 32 bytes | ECDSA with SHA-256, ASN.1 DER |
//! | -8 | EdDSA | OKP (kty 1), Ed25519 (crv 6), x of 32 bytes | Ed25519, 64 bytes |
//! | -257 | RS256 | RSA (kty 3), n of 2048 to 4096 bits, e | RSASSA-PKCS1-v1_5 with SHA-256 |
//!
//! The key must name its algorithm (label 3), and the key type and curve must be those of the
//! algorithm. Every label is read once: a key repeating one is refused.

use ciborium::value::Value;
use p256::ecdsa::signature::Verifier;
use sha2::Sha256;

/// ECDSA on P-256 with SHA-256.
pub const ES256: i64 = -7;
/// Ed25519.
pub const EDDSA: i64 = -8;
/// RSASSA-PKCS1-v1_5 with SHA-256.
pub const RS256: i64 = -257;

/// The algorithms a passkey may use, in the order the creation options prefer them.
pub const ALGORITHMS: [i64; 3] = [ES256, EDDSA, RS256];

/// The smallest and largest RSA moduli accepted, in bits.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 4096;

/// Why a COSE_Key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the credential public key is not valid CBOR: {0}")]
    Cbor(String),
    #[error("the credential public key is not a COSE_Key: {0}")]
    Shape(String),
    #[error("the credential public key uses COSE algorithm {0}, which is not accepted (accepted: -7 ES256, -8 EdDSA, -257 RS256)")]
    UnsupportedAlgorithm(i64),
    #[error("the credential public key is not a valid {alg} key: {why}")]
    InvalidKey { alg: &'static str, why: String },
}

/// A credential public key, ready to check signatures.
#[derive(Clone)]
pub enum PublicKey {
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_dalek::VerifyingKey),
    Rs256(rsa::RsaPublicKey),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", algorithm_name(self.algorithm()))
    }
}

/// `ES256`, `EdDSA`, `RS256`, or the number.
pub fn algorithm_name(alg: i64) -> String {
    match alg {
        ES256 => "ES256".to_string(),
        EDDSA => "EdDSA".to_string(),
        RS256 => "RS256".to_string(),
        other => format!("COSE algorithm {other}"),
    }
}

impl PublicKey {
    /// The COSE_Key that is the whole of `bytes` (as stored).
    pub fn from_cose(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let (key, used) = PublicKey::from_cose_prefix(bytes)?;
        if used != bytes.len() {
            return Err(KeyError::Shape(format!(
                "{} bytes follow the key",
                bytes.len() - used
            )));
        }
        Ok(key)
    }

    /// The COSE_Key at the start of `bytes` (inside authenticator data, where more may
    /// follow) and how many bytes it takes.
    pub fn from_cose_prefix(bytes: &[u8]) -> Result<(PublicKey, usize), KeyError> {
        let mut rest = bytes;
        let value: Value =
            ciborium::de::from_reader(&mut rest).map_err(|e| KeyError::Cbor(cbor_error(&e)))?;
        let used = bytes.len() - rest.len();
        Ok((PublicKey::from_value(value)?, used))
    }

    fn from_value(value: Value) -> Result<PublicKey, KeyError> {
        let Value::Map(entries) = value else {
            return Err(KeyError::Shape("it is not a map".to_string()));
        };
        let mut labels: Vec<(i64, Value)> = Vec::with_capacity(entries.len());
        for (label, value) in entries {
            let label = match label {
                Value::Integer(i) => i64::try_from(i128::from(i))
                    .map_err(|_| KeyError::Shape("a label is out of range".to_string()))?,
                // Text labels are allowed by COSE but carry nothing tollgate reads.
                Value::Text(_) => continue,
                _ => {
                    return Err(KeyError::Shape(
                        "a label is neither integer nor text".into(),
                    ))
                }
            };
            if labels.iter().any(|(l, _)| *l == label) {
                return Err(KeyError::Shape(format!("label {label} appears twice")));
            }
            labels.push((label, value));
        }
        let get = |label: i64| labels.iter().find(|(l, _)| *l == label).map(|(_, v)| v);
        let int = |label: i64, what: &str| -> Result<i64, KeyError> {
            match get(label) {
                Some(Value::Integer(i)) => i64::try_from(i128::from(*i))
                    .map_err(|_| KeyError::Shape(format!("{what} is out of range"))),
                Some(_) => Err(KeyError::Shape(format!("{what} is not an integer"))),
                None => Err(KeyError::Shape(format!("{what} is missing"))),
            }
        };
        let bytes = |label: i64, what: &str| -> Result<&[u8], KeyError> {
            match get(label) {
                Some(Value::Bytes(b)) => Ok(b.as_slice()),
                Some(_) => Err(KeyError::Shape(format!("{what} is not a byte string"))),
                None => Err(KeyError::Shape(format!("{what} is missing"))),
            }
        };
        let alg = int(3, "alg (3)")?;
        let kty = int(1, "kty (1)")?;
        let expect = |alg_name: &'static str, want_kty: i64, want_crv: Option<i64>| {
            if kty != want_kty {
                return Err(KeyError::InvalidKey {
                    alg: alg_name,
                    why: format!("key type {kty}, expected {want_kty}"),
                });
            }
            if let Some(want) = want_crv {
                let crv = int(-1, "crv (-1)")?;
                if crv != want {
                    return Err(KeyError::InvalidKey {
                        alg: alg_name,
                        why: format!("curve {crv}, expected {want}"),
                    });
                }
            }
            Ok(())
        };
        match alg {
            ES256 => {
                expect("ES256", 2, Some(1))?;
                let x = bytes(-2, "x (-2)")?;
                let y = bytes(-3, "y (-3)")?;
                let invalid = |why: &str| KeyError::InvalidKey {
                    alg: "ES256",
                    why: why.to_string(),
                };
                if x.len() != 32 || y.len() != 32 {
                    return Err(invalid("x and y must be 32 bytes each"));
                }
                let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map(PublicKey::Es256)
                    .map_err(|_| invalid("the point is not on P-256"))
            }
            EDDSA => {
                expect("EdDSA", 1, Some(6))?;
                let x = bytes(-2, "x (-2)")?;
                let invalid = |why: &str| KeyError::InvalidKey {
                    alg: "EdDSA",
                    why: why.to_string(),
                };
                let x: &[u8; 32] = x.try_into().map_err(|_| invalid("x must be 32 bytes"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(x)
                    .map_err(|_| invalid("x is not a point of Ed25519"))?;
                if key.is_weak() {
                    return Err(invalid("x is a point of small order"));
                }
                Ok(PublicKey::EdDsa(key))
            }
            RS256 => {
                expect("RS256", 3, None)?;
                let n = bytes(-1, "n (-1)")?;
                let e = bytes(-2, "e (-2)")?;
                let invalid = |why: String| KeyError::InvalidKey { alg: "RS256", why };
                let n = rsa::BigUint::from_bytes_be(n);
                let bits = n.bits();
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(invalid(format!(
                        "a modulus of {bits} bits (accepted: {RSA_MIN_BITS} to {RSA_MAX_BITS})"
                    )));
                }
                rsa::RsaPublicKey::new(n, rsa::BigUint::from_bytes_be(e))
                    .map(PublicKey::Rs256)
                    .map_err(|e| invalid(e.to_string()))
            }
            other => Err(KeyError::UnsupportedAlgorithm(other)),
        }
    }

    /// The key's COSE algorithm.
    pub fn algorithm(&self) -> i64 {
        match self {
            PublicKey::Es256(_) => ES256,
            PublicKey::EdDsa(_) => EDDSA,
            PublicKey::Rs256(_) => RS256,
        }
    }

    /// Whether `signature` is this key's signature of `message`, in the algorithm's own
    /// encoding (see the module docs). ECDSA signatures with a high S are accepted: WebAuthn
    /// does not ask authenticators to normalise them.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Es256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            PublicKey::EdDsa(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok()),
            PublicKey::Rs256(key) => {
                let key = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone());
                rsa::pkcs1v15::Signature::try_from(signature)
                    .is_ok_and(|sig| key.verify(message, &sig).is_ok())
            }
        }
    }
}

/// A CBOR decoding error in words (ciborium's `Debug` names byte offsets; that is enough).
pub(super) fn cbor_error<E: std::fmt::Debug>(e: &ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(_) => "it ends early".to_string(),
        ciborium::de::Error::Syntax(at) => format!("invalid CBOR at byte {at}"),
        ciborium::de::Error::Semantic(at, why) => match at {
            Some(at) => format!("{why} at byte {at}"),
            None => why.clone(),
        },
        ciborium::de::Error::RecursionLimitExceeded => "it is nested too deeply".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).unwrap();
        out
    }

    fn int(i: i64) -> Value {
        Value::Integer(i.into())
    }

    fn es256_cose(key: &p256::ecdsa::VerifyingKey) -> Value {
        let point = key.to_encoded_point(false);
        Value::Map(vec![
            (int(1), int(2)),
            (int(3), int(ES256)),
            (int(-1), int(1)),
            (int(-2), Value::Bytes(point.x().unwrap().to_vec())),
            (int(-3), Value::Bytes(point.y().unwrap().to_vec())),
        ])
    }

    fn p256_key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    #[test]
    fn es256_round_trip_and_prefix_length() {
        let signing = p256_key();
        let mut bytes = encode(&es256_cose(signing.verifying_key()));
        let len = bytes.len();
        bytes.extend_from_slice(&[0xa0]); // an empty map after it (extensions)
        let (key, used) = PublicKey::from_cose_prefix(&bytes).unwrap();
        assert_eq!(used, len);
        assert_eq!(key.algorithm(), ES256);
        let sig: p256::ecdsa::Signature = signing.sign(b"message");
        assert!(key.verify(b"message", sig.to_der().as_bytes()));
        assert!(!key.verify(b"massage", sig.to_der().as_bytes()));
        // Raw r‖s is not DER: refused, not misread.
        assert!(!key.verify(b"message", &sig.to_bytes()));
        assert!(PublicKey::from_cose(&bytes).is_err(), "trailing byte");
    }

    #[test]
    fn es256_accepts_high_s() {
        let signing = p256_key();
        let key = PublicKey::Es256(*signing.verifying_key());
        let sig: p256::ecdsa::Signature = signing.sign(b"m");
        let low = sig.normalize_s().unwrap_or(sig);
        let (r, s) = low.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        assert!(high.normalize_s().is_some(), "this S is high");
        assert!(key.verify(b"m", low.to_der().as_bytes()));
        assert!(key.verify(b"m", high.to_der().as_bytes()));
    }

    #[test]
    fn eddsa_and_rs256_keys_verify() {
        use ed25519_dalek::Signer as _;
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let cose = Value::Map(vec![
            (int(1), int(1)),
            (int(3), int(EDDSA)),
            (int(-1), int(6)),
            (
                int(-2),
                Value::Bytes(ed.verifying_key().to_bytes().to_vec()),
            ),
        ]);
        let key = PublicKey::from_cose(&encode(&cose)).unwrap();
        assert_eq!(key.algorithm(), EDDSA);
        let sig = ed.sign(b"m").to_bytes();
        assert!(key.verify(b"m", &sig));
        assert!(!key.verify(b"n", &sig));

        use rsa::pkcs1v15::SigningKey;
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::SignatureEncoding;
        use rsa::traits::PublicKeyParts;
        let pem = include_str!("../../../tests/fixtures/oidc/rsa_a.pem");
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem).unwrap();
        let public = private.to_public_key();
        let cose = Value::Map(vec![
            (int(1), int(3)),
            (int(3), int(RS256)),
            (int(-1), Value::Bytes(public.n().to_bytes_be())),
            (int(-2), Value::Bytes(public.e().to_bytes_be())),
        ]);
        let key = PublicKey::from_cose(&encode(&cose)).unwrap();
        let sig = SigningKey::<Sha256>::new(private).sign(b"m").to_vec();
        assert!(key.verify(b"m", &sig));
        assert!(!key.verify(b"n", &sig));
    }

    #[test]
    fn refuses_what_is_not_an_accepted_key() {
        let signing = p256_key();
        let good = es256_cose(signing.verifying_key());
        let with = |label: i64, value: Value| {
            let Value::Map(mut entries) = good.clone() else {
                unreachable!()
            };
            entries.retain(|(l, _)| *l != int(label));
            entries.push((int(label), value));
            encode(&Value::Map(entries))
        };
        let err = |bytes: Vec<u8>| PublicKey::from_cose(&bytes).unwrap_err().to_string();

        assert!(err(with(3, int(-35))).contains("COSE algorithm -35, which is not accepted"));
        assert!(err(with(1, int(3))).contains("key type 3, expected 2"));
        assert!(err(with(-1, int(2))).contains("curve 2, expected 1"));
        assert!(err(with(-2, Value::Bytes(vec![1; 31]))).contains("32 bytes"));
        assert!(err(with(-3, Value::Bytes(vec![1; 32]))).contains("not on P-256"));
        assert!(err(with(-2, Value::Text("x".into()))).contains("x (-2) is not a byte string"));
        let Value::Map(mut entries) = good.clone() else {
            unreachable!()
        };
        entries.push((int(3), int(ES256)));
        assert!(err(encode(&Value::Map(entries))).contains("label 3 appears twice"));
        let Value::Map(mut entries) = good.clone() else {
            unreachable!()
        };
        entries.retain(|(l, _)| *l != int(3));
        assert!(err(encode(&Value::Map(entries))).contains("alg (3) is missing"));
        assert!(err(encode(&Value::Array(vec![]))).contains("not a map"));
        assert!(err(vec![0xa5, 0x01]).contains("ends early"));
        assert!(err(vec![0xff]).contains("CBOR"));

        // An RSA modulus below 2048 bits.
        let small = Value::Map(vec![
            (int(1), int(3)),
            (int(3), int(RS256)),
            (int(-1), Value::Bytes(vec![0xc5; 128])),
            (int(-2), Value::Bytes(vec![1, 0, 1])),
        ]);
        assert!(err(encode(&small)).contains("1024 bits"));
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        // An array, a map and a byte string each claiming 2^63 items or bytes, in 9 bytes.
        for head in [0x9b, 0xbb, 0x5b] {
            let bytes = [head, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
            assert!(PublicKey::from_cose(&bytes).is_err());
        }
    }
}
