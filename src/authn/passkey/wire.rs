//! What browsers and authenticators send, read strictly: base64url text, `clientDataJSON`,
//! authenticator data and the attestation object (WebAuthn Level 2 §5.8.1, §6.1, §6.5),
//! and the JSON a browser posts (the shape of `PublicKeyCredential.toJSON()`).
//!
//! Every reader here answers a [`Refusal::Malformed`] naming the field and what is wrong
//! with it; none of them echoes the input.

use super::cose::{self, PublicKey};
use super::Refusal;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ciborium::value::Value;
use serde::Deserialize;

/// base64url as WebAuthn's JSON forms use it: written without padding; read with or
/// without it, but never with `+`, `/` or stray bits.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false),
);

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// Decodes the base64url text of the field `field`.
pub fn b64url_decode(field: &str, text: &str) -> Result<Vec<u8>, Refusal> {
    B64URL
        .decode(text)
        .map_err(|_| Refusal::Malformed(format!("`{field}` is not base64url")))
}

// ---- flags of authenticator data (§6.1) -------------------------------------------------

/// User present.
pub const FLAG_UP: u8 = 0x01;
/// User verified.
pub const FLAG_UV: u8 = 0x04;
/// Backup eligible: the credential may be synced.
pub const FLAG_BE: u8 = 0x08;
/// Backup state: the credential is synced now.
pub const FLAG_BS: u8 = 0x10;
/// Attested credential data follows the counter.
pub const FLAG_AT: u8 = 0x40;
/// Extension data follows.
pub const FLAG_ED: u8 = 0x80;

/// The longest credential id WebAuthn allows (§5.8.3's 1023 bytes).
pub const MAX_CREDENTIAL_ID_BYTES: usize = 1023;

/// The client data a browser signs over (§5.8.1): only the members the checks read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientData {
    pub typ: String,
    /// The challenge, decoded.
    pub challenge: Vec<u8>,
    pub origin: String,
    pub cross_origin: bool,
    pub top_origin: Option<String>,
    /// `tokenBinding.status` is `present`: the browser used token binding on this TLS
    /// connection, which tollgate cannot check.
    pub token_binding_present: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientDataJson {
    #[serde(rename = "type")]
    typ: String,
    challenge: String,
    origin: String,
    #[serde(default)]
    cross_origin: Option<bool>,
    #[serde(default)]
    top_origin: Option<String>,
    #[serde(default)]
    token_binding: Option<TokenBindingJson>,
}

#[derive(Deserialize)]
struct TokenBindingJson {
    status: String,
}

/// Reads `clientDataJSON` (the bytes the browser hashed, UTF-8 JSON).
pub fn parse_client_data(bytes: &[u8]) -> Result<ClientData, Refusal> {
    let malformed = |why: String| Refusal::Malformed(format!("clientDataJSON: {why}"));
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8".to_string()))?;
    let json: ClientDataJson = serde_json::from_str(text).map_err(|e| malformed(json_error(&e)))?;
    let challenge = b64url_decode("clientDataJSON.challenge", &json.challenge)?;
    Ok(ClientData {
        typ: json.typ,
        challenge,
        origin: json.origin,
        cross_origin: json.cross_origin.unwrap_or(false),
        top_origin: json.top_origin,
        token_binding_present: json.token_binding.is_some_and(|t| t.status == "present"),
    })
}

/// A JSON error in words, without the input: serde_json quotes a value of the wrong type
/// (`invalid type: string "…", expected a boolean`), so those say only what was expected.
pub(super) fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Data => {
            let message = e.to_string();
            if message.starts_with("invalid type") || message.starts_with("invalid value") {
                let expected = message
                    .rsplit_once(", expected ")
                    .map(|(_, rest)| rest.split(" at line ").next().unwrap_or(rest))
                    .unwrap_or("another type");
                format!("a member has the wrong type or value (expected {expected}; {at})")
            } else {
                message
            }
        }
        Category::Syntax => format!("not valid JSON ({at})"),
        Category::Eof => "the JSON ends early".to_string(),
        Category::Io => "the JSON cannot be read".to_string(),
    }
}

// ---- authenticator data (§6.1) ----------------------------------------------------------

/// The attested credential data of a registration (§6.5.1).
#[derive(Debug, Clone)]
pub struct AttestedCredential {
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: PublicKey,
    /// The COSE_Key bytes, as the authenticator wrote them.
    pub public_key_cose: Vec<u8>,
}

/// Authenticator data, every byte of it accounted for.
#[derive(Debug, Clone)]
pub struct AuthenticatorData {
    pub rp_id_hash: [u8; 32],
    pub flags: u8,
    pub sign_count: u32,
    pub attested: Option<AttestedCredential>,
}

impl AuthenticatorData {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Reads authenticator data: the 37 fixed bytes, the attested credential data when AT is
/// set, the extensions (one CBOR map, not interpreted) when ED is set, and nothing after.
pub fn parse_authenticator_data(bytes: &[u8]) -> Result<AuthenticatorData, Refusal> {
    let malformed = |why: String| Refusal::Malformed(format!("authenticator data: {why}"));
    if bytes.len() < 37 {
        return Err(malformed(format!(
            "{} bytes, at least 37 expected",
            bytes.len()
        )));
    }
    let rp_id_hash: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    let flags = bytes[32];
    let sign_count = u32::from_be_bytes(bytes[33..37].try_into().expect("4 bytes"));
    let mut rest = &bytes[37..];
    let attested = if flags & FLAG_AT != 0 {
        if rest.len() < 18 {
            return Err(malformed(
                "the attested credential data ends before the credential id".to_string(),
            ));
        }
        let aaguid: [u8; 16] = rest[..16].try_into().expect("16 bytes");
        let id_len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        rest = &rest[18..];
        if id_len > MAX_CREDENTIAL_ID_BYTES {
            return Err(Refusal::CredentialIdTooLong(id_len));
        }
        if id_len == 0 || rest.len() < id_len {
            return Err(malformed(format!(
                "a credential id of {id_len} bytes with {} bytes left",
                rest.len()
            )));
        }
        let credential_id = rest[..id_len].to_vec();
        rest = &rest[id_len..];
        let (public_key, used) = PublicKey::from_cose_prefix(rest).map_err(|e| match e {
            cose::KeyError::UnsupportedAlgorithm(alg) => Refusal::UnsupportedAlgorithm(alg),
            other => Refusal::InvalidPublicKey(other.to_string()),
        })?;
        let public_key_cose = rest[..used].to_vec();
        rest = &rest[used..];
        Some(AttestedCredential {
            aaguid,
            credential_id,
            public_key,
            public_key_cose,
        })
    } else {
        None
    };
    if flags & FLAG_ED != 0 {
        let mut reader = rest;
        let value: Value = ciborium::de::from_reader(&mut reader)
            .map_err(|e| malformed(format!("extensions: {}", cose::cbor_error(&e))))?;
        if !matches!(value, Value::Map(_)) {
            return Err(malformed("extensions are not a map".to_string()));
        }
        rest = reader;
    }
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes follow what the flags announce",
            rest.len()
        )));
    }
    Ok(AuthenticatorData {
        rp_id_hash,
        flags,
        sign_count,
        attested,
    })
}

// ---- attestation object (§6.5) ----------------------------------------------------------

/// An attestation object: its format and authenticator data. The attestation statement is
/// read only as far as being a map: tollgate asks for no attestation and trusts none.
#[derive(Debug, Clone)]
pub struct AttestationObject {
    pub fmt: String,
    pub auth_data: Vec<u8>,
}

pub fn parse_attestation_object(bytes: &[u8]) -> Result<AttestationObject, Refusal> {
    let malformed = |why: String| Refusal::Malformed(format!("attestationObject: {why}"));
    let mut reader = bytes;
    let value: Value =
        ciborium::de::from_reader(&mut reader).map_err(|e| malformed(cose::cbor_error(&e)))?;
    if !reader.is_empty() {
        return Err(malformed(format!("{} bytes follow it", reader.len())));
    }
    let Value::Map(entries) = value else {
        return Err(malformed("not a map".to_string()));
    };
    let mut fmt = None;
    let mut att_stmt = None;
    let mut auth_data = None;
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(malformed("a key is not text".to_string()));
        };
        let slot = match key.as_str() {
            "fmt" => &mut fmt,
            "attStmt" => &mut att_stmt,
            "authData" => &mut auth_data,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(malformed(format!("`{key}` appears twice")));
        }
    }
    let fmt = match fmt {
        Some(Value::Text(fmt)) if !fmt.is_empty() => fmt,
        Some(_) => return Err(malformed("`fmt` is not text".to_string())),
        None => return Err(malformed("`fmt` is missing".to_string())),
    };
    match att_stmt {
        Some(Value::Map(_)) => {}
        Some(_) => return Err(malformed("`attStmt` is not a map".to_string())),
        None => return Err(malformed("`attStmt` is missing".to_string())),
    }
    let auth_data = match auth_data {
        Some(Value::Bytes(b)) => b,
        Some(_) => return Err(malformed("`authData` is not a byte string".to_string())),
        None => return Err(malformed("`authData` is missing".to_string())),
    };
    Ok(AttestationObject { fmt, auth_data })
}

// ---- what the browser posts -------------------------------------------------------------

/// A `PublicKeyCredential` from `navigator.credentials.create`, in its JSON form
/// (`RegistrationResponseJSON`). Members other than these are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationCredential {
    pub id: String,
    pub raw_id: String,
    #[serde(rename = "type")]
    pub typ: String,
    pub response: AttestationResponse,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AttestationResponse {
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: String,
    #[serde(rename = "attestationObject")]
    pub attestation_object: String,
    /// `getTransports()`, when the browser has it.
    #[serde(default)]
    pub transports: Vec<String>,
}

/// A `PublicKeyCredential` from `navigator.credentials.get`, in its JSON form
/// (`AuthenticationResponseJSON`). Members other than these are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationCredential {
    pub id: String,
    pub raw_id: String,
    #[serde(rename = "type")]
    pub typ: String,
    pub response: AssertionResponse,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AssertionResponse {
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: String,
    #[serde(rename = "authenticatorData")]
    pub authenticator_data: String,
    pub signature: String,
    /// The user handle the authenticator keeps with a discoverable credential; absent or
    /// null otherwise.
    #[serde(rename = "userHandle", default)]
    pub user_handle: Option<String>,
}

/// The raw credential id of a posted credential: `rawId` decoded, and `id` the same bytes.
pub fn credential_id(id: &str, raw_id: &str, typ: &str) -> Result<Vec<u8>, Refusal> {
    if typ != "public-key" {
        return Err(Refusal::Malformed(
            "`credential.type` must be \"public-key\"".to_string(),
        ));
    }
    let raw = b64url_decode("credential.rawId", raw_id)?;
    let named = b64url_decode("credential.id", id)?;
    if raw != named {
        return Err(Refusal::Malformed(
            "`credential.id` and `credential.rawId` differ".to_string(),
        ));
    }
    if raw.is_empty() || raw.len() > MAX_CREDENTIAL_ID_BYTES {
        return Err(Refusal::Malformed(format!(
            "`credential.rawId` is {} bytes (1 to {MAX_CREDENTIAL_ID_BYTES} expected)",
            raw.len()
        )));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_reads_with_or_without_padding_and_nothing_else() {
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64url_decode("f", "-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(b64url_decode("f", "-_8=").unwrap(), vec![0xfb, 0xff]);
        assert!(b64url_decode("f", "+/8").is_err(), "standard alphabet");
        assert!(b64url_decode("f", "-_9").is_err(), "trailing bits");
        assert_eq!(
            b64url_decode("credential.rawId", "a b").unwrap_err(),
            Refusal::Malformed("`credential.rawId` is not base64url".to_string())
        );
    }

    #[test]
    fn client_data_is_read_strictly() {
        let ok = br#"{"type":"webauthn.get","challenge":"AAEC","origin":"https://a.example","crossOrigin":false,"other":1}"#;
        let c = parse_client_data(ok).unwrap();
        assert_eq!(c.typ, "webauthn.get");
        assert_eq!(c.challenge, vec![0, 1, 2]);
        assert!(!c.cross_origin && c.top_origin.is_none() && !c.token_binding_present);

        let err = |b: &[u8]| parse_client_data(b).unwrap_err().to_string();
        assert!(err(b"\xff").contains("not UTF-8"));
        assert!(err(b"[]").contains("clientDataJSON"));
        assert!(
            err(br#"{"type":"webauthn.get","origin":"o"}"#).contains("missing field `challenge`")
        );
        assert!(
            err(br#"{"type":"a","type":"b","challenge":"AA","origin":"o"}"#)
                .contains("duplicate field `type`")
        );
        assert!(err(br#"{"type":"a","challenge":"A+","origin":"o"}"#)
            .contains("challenge` is not base64url"));
        let tb = br#"{"type":"a","challenge":"AA","origin":"o","tokenBinding":{"status":"present","id":"x"}}"#;
        assert!(parse_client_data(tb).unwrap().token_binding_present);
        let typed = err(br#"{"type":"a","challenge":"AA","origin":"o","crossOrigin":"s3cret"}"#);
        assert!(typed.contains("expected a boolean"), "{typed}");
        assert!(!typed.contains("s3cret"), "{typed}");
    }

    #[test]
    fn authenticator_data_accounts_for_every_byte() {
        let mut bytes = vec![0u8; 37];
        bytes[32] = FLAG_UP;
        bytes[36] = 5;
        let data = parse_authenticator_data(&bytes).unwrap();
        assert_eq!(data.sign_count, 5);
        assert!(data.has(FLAG_UP) && !data.has(FLAG_UV) && data.attested.is_none());

        let err = |b: &[u8]| parse_authenticator_data(b).unwrap_err().to_string();
        assert!(err(&bytes[..36]).contains("36 bytes, at least 37"));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(err(&trailing).contains("1 bytes follow"));
        let mut ext = bytes.clone();
        ext[32] |= FLAG_ED;
        ext.push(0xa0);
        assert!(parse_authenticator_data(&ext).is_ok());
        ext.pop();
        assert!(err(&ext).contains("extensions"));
        let mut at = bytes.clone();
        at[32] |= FLAG_AT;
        at.extend_from_slice(&[0; 16]);
        at.extend_from_slice(&[0x04, 0x00]); // 1024-byte credential id
        assert_eq!(
            parse_authenticator_data(&at).unwrap_err(),
            Refusal::CredentialIdTooLong(1024)
        );
    }

    #[test]
    fn attestation_object_needs_its_three_members() {
        let encode = |v: Value| {
            let mut out = Vec::new();
            ciborium::ser::into_writer(&v, &mut out).unwrap();
            out
        };
        let text = |s: &str| Value::Text(s.to_string());
        let good = Value::Map(vec![
            (text("fmt"), text("none")),
            (text("attStmt"), Value::Map(vec![])),
            (text("authData"), Value::Bytes(vec![1, 2])),
        ]);
        let obj = parse_attestation_object(&encode(good.clone())).unwrap();
        assert_eq!(obj.fmt, "none");
        assert_eq!(obj.auth_data, vec![1, 2]);

        let err = |b: Vec<u8>| parse_attestation_object(&b).unwrap_err().to_string();
        let mut trailing = encode(good);
        trailing.push(0);
        assert!(err(trailing).contains("1 bytes follow"));
        assert!(err(encode(Value::Map(vec![(text("fmt"), text("none"))])))
            .contains("`attStmt` is missing"));
        assert!(err(encode(Value::Array(vec![]))).contains("not a map"));
        assert!(err(vec![0xbf]).contains("attestationObject"));
    }

    #[test]
    fn credential_ids_must_agree() {
        assert_eq!(
            credential_id("AQI", "AQI", "public-key").unwrap(),
            vec![1, 2]
        );
        assert!(credential_id("AQI", "AQM", "public-key")
            .unwrap_err()
            .to_string()
            .contains("differ"));
        assert!(credential_id("AQI", "AQI", "password")
            .unwrap_err()
            .to_string()
            .contains("public-key"));
        assert!(credential_id("", "", "public-key").is_err());
    }
}
