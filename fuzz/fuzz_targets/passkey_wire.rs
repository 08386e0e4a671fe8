//! What a browser posts for a passkey ceremony, read before any signature is checked
//! (`authn::passkey`): the request bodies (JSON), and inside them clientDataJSON, the
//! attestation object (CBOR), authenticator data and COSE keys; then both verifications on
//! whatever parses.
//!
//! Beyond "no panic":
//! - authenticator data that is read, without extensions, is exactly its parts laid out
//!   again (so nothing in it was skipped or read twice);
//! - a COSE key read at the start of the input reads the same on its own;
//! - a verified registration's credential and key are those of its authenticator data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate::authn::passkey::cose::PublicKey;
use tollgate::authn::passkey::wire::{self, FLAG_AT, FLAG_ED};
use tollgate::authn::passkey::{
    verify_assertion, verify_registration, AuthenticationRequest, Issued, RegistrationRequest,
    RelyingParty,
};

fn rp() -> &'static RelyingParty {
    static RP: OnceLock<RelyingParty> = OnceLock::new();
    RP.get_or_init(|| {
        RelyingParty::new("tollgate.example.com", "tollgate", &["https://tollgate.example.com"])
            .expect("a valid relying party")
    })
}

/// An ES256 COSE key (the P-256 generator), for the assertions to be checked against.
const KEY: &[u8] = &[
    0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20, 0x6b, 0x17, 0xd1, 0xf2, 0xe1,
    0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81,
    0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x22, 0x58, 0x20,
    0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
    0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf,
    0x51, 0xf5,
];

fn authenticator_data(data: &[u8]) {
    let Ok(parsed) = wire::parse_authenticator_data(data) else {
        return;
    };
    assert_eq!(parsed.attested.is_some(), parsed.flags & FLAG_AT != 0);
    if parsed.flags & FLAG_ED != 0 {
        return;
    }
    let mut again = parsed.rp_id_hash.to_vec();
    again.push(parsed.flags);
    again.extend_from_slice(&parsed.sign_count.to_be_bytes());
    if let Some(attested) = &parsed.attested {
        again.extend_from_slice(&attested.aaguid);
        again.extend_from_slice(&(attested.credential_id.len() as u16).to_be_bytes());
        again.extend_from_slice(&attested.credential_id);
        again.extend_from_slice(&attested.public_key_cose);
        assert_eq!(
            PublicKey::from_cose(&attested.public_key_cose)
                .expect("the key read inside reads alone")
                .algorithm(),
            attested.public_key.algorithm()
        );
    }
    assert_eq!(again, data, "authenticator data is its parts");
}

fuzz_target!(|data: &[u8]| {
    authenticator_data(data);
    if let Ok(object) = wire::parse_attestation_object(data) {
        assert!(!object.fmt.is_empty());
        authenticator_data(&object.auth_data);
    }
    if let Ok((key, used)) = PublicKey::from_cose_prefix(data) {
        assert!(used <= data.len());
        let alone = PublicKey::from_cose(&data[..used]).expect("a prefix key reads alone");
        assert_eq!(alone.algorithm(), key.algorithm());
        assert!(!key.verify(b"message", data));
    }
    if let Ok(client_data) = wire::parse_client_data(data) {
        let _ = format!("{client_data:?}");
    }

    let challenge = [0u8; 32];
    let issued = Issued {
        challenge: &challenge,
        uv_required: false,
    };
    match RegistrationRequest::from_json(data) {
        Ok(request) => {
            if let Ok(verified) = verify_registration(rp(), &issued, &request.credential) {
                let raw = wire::b64url_decode("rawId", &request.credential.raw_id).unwrap();
                assert_eq!(verified.credential_id, raw);
                assert!(PublicKey::from_cose(&verified.public_key_cose).is_ok());
            }
        }
        Err(refusal) => assert!(!refusal.to_string().is_empty()),
    }
    if let Ok(request) = AuthenticationRequest::from_json(data) {
        let _ = verify_assertion(rp(), &issued, &request.credential, KEY, 0);
    }
});
