//! The lean Check (`authz::wire::Check`) on any bytes, against envoy-types' `CheckRequest`.
//!
//! Beyond "no panic": whenever envoy-types decodes the bytes, so does the lean Check, and it
//! reads the same method, path, body, socket address of the source and every header (the
//! map's last entry of a name, as a protobuf map keeps).

#![no_main]

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::authz::wire::Check;

fuzz_target!(|data: &[u8]| {
    let lean = Check::decode(data);
    let Ok(full) = CheckRequest::decode(data) else {
        return;
    };
    let lean = lean.expect("the lean Check decodes what CheckRequest decodes");
    let http = full
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let Some(http) = http else {
        assert!(lean.http().is_none());
        return;
    };
    let read = lean.http().expect("an HTTP request in both");
    assert_eq!(read.method(), http.method);
    assert_eq!(read.path(), http.path);
    let body: &[u8] = if http.raw_body.is_empty() {
        http.body.as_bytes()
    } else {
        &http.raw_body
    };
    assert_eq!(read.body(), body);
    for (name, value) in &http.headers {
        assert_eq!(read.header(name), Some(value.as_str()), "header {name:?}");
    }
    let source = full
        .attributes
        .as_ref()
        .and_then(|a| a.source.as_ref())
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| match &address.address {
            Some(Address::SocketAddress(s)) => Some(s.address.as_str()),
            _ => None,
        });
    // A `Peer` address that is not a socket address reads as none in both; the lean Check
    // ignores the other members of the address' oneof, so only a socket address is compared.
    if let Some(source) = source {
        assert_eq!(lean.source(), Some(source));
    }
});
