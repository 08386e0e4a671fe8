//! A Check as tollgate reads it off the wire, and the gRPC service that reads it.
//!
//! Envoy's `CheckRequest` carries far more than a decision needs: every request header in a
//! map, peer and TLS details, metadata. Decoded into envoy-types' `CheckRequest`, every
//! header becomes two `String`s hashed into a `HashMap` (SipHash), which cost more
//! instructions than the decision itself. [`Check`] declares only the fields admission
//! reads, with the same field numbers: protobuf skips the others without building them,
//! the headers are a list (a `map` is on the wire a repeated key/value message) and every
//! string stays a slice of the received buffer ([`Bytes`]), read as UTF-8 only when used.
//!
//! [`CheckServer`] serves `envoy.service.auth.v3.Authorization/Check` with it, as the
//! envoy-types server would with `CheckRequest`.

use super::Gate;
use crate::lifecycle::Lifecycle;
use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use prost::Message;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// `envoy.service.auth.v3.CheckRequest`, the fields admission reads.
#[derive(Clone, PartialEq, Message)]
pub struct Check {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<Attributes>,
}

/// `AttributeContext`: `source` (1) and `request` (4).
#[derive(Clone, PartialEq, Message)]
pub struct Attributes {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<HttpOnly>,
}

/// `AttributeContext.Peer`: `address` (1).
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address`: its `socket_address` (1).
#[derive(Clone, PartialEq, Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `SocketAddress`: `address` (2).
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    #[prost(bytes = "bytes", tag = "2")]
    pub address: Bytes,
}

/// `AttributeContext.Request`: `http` (2).
#[derive(Clone, PartialEq, Message)]
pub struct HttpOnly {
    #[prost(message, optional, tag = "2")]
    pub http: Option<Http>,
}

/// `AttributeContext.HttpRequest`: `method` (2), `headers` (3), `path` (4), `body` (11),
/// `raw_body` (12).
#[derive(Clone, PartialEq, Message)]
pub struct Http {
    #[prost(bytes = "bytes", tag = "2")]
    pub method: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Header>,
    #[prost(bytes = "bytes", tag = "4")]
    pub path: Bytes,
    #[prost(bytes = "bytes", tag = "11")]
    pub body: Bytes,
    #[prost(bytes = "bytes", tag = "12")]
    pub raw_body: Bytes,
}

/// One entry of the `headers` map.
#[derive(Clone, PartialEq, Message)]
pub struct Header {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `bytes` as text; not UTF-8 reads as empty (as absent, for a header).
fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl Check {
    /// The HTTP request asked about (absent only from a malformed Check).
    pub fn http(&self) -> Option<&Http> {
        self.attributes.as_ref()?.request.as_ref()?.http.as_ref()
    }

    /// The client's address, when Envoy sent a socket address.
    pub fn source(&self) -> Option<&str> {
        let address = self
            .attributes
            .as_ref()?
            .source
            .as_ref()?
            .address
            .as_ref()?
            .socket_address
            .as_ref()?;
        Some(text(&address.address))
    }
}

impl From<&CheckRequest> for Check {
    /// The same Check as tollgate reads it from the wire (used where a `CheckRequest` is
    /// built in process: tests and benchmarks).
    fn from(request: &CheckRequest) -> Check {
        Check::decode(request.encode_to_vec().as_slice())
            .expect("a CheckRequest encodes to a valid Check")
    }
}

impl Http {
    pub fn method(&self) -> &str {
        text(&self.method)
    }

    /// The path with its query string, as Envoy sent it.
    pub fn path(&self) -> &str {
        text(&self.path)
    }

    /// A header's value by its lowercase name; one that is not UTF-8 reads as absent. As in
    /// a protobuf map, the last entry of a name counts (Envoy sends each name once).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|h| h.key.as_ref() == name.as_bytes())
            .and_then(|h| std::str::from_utf8(&h.value).ok())
    }

    /// The body as far as it reached tollgate (`raw_body` with `pack_as_bytes`, else
    /// `body`).
    pub fn body(&self) -> &[u8] {
        if self.raw_body.is_empty() {
            &self.body
        } else {
            &self.raw_body
        }
    }
}

/// `envoy.service.auth.v3.Authorization` over a [`Gate`], reading [`Check`]: each Check is
/// counted in flight ([`Lifecycle`]), and refused while tollgate stops.
#[derive(Clone)]
pub struct CheckServer {
    gate: Arc<Gate>,
    lifecycle: Arc<Lifecycle>,
}

impl CheckServer {
    pub fn new(gate: Arc<Gate>, lifecycle: Arc<Lifecycle>) -> Self {
        CheckServer { gate, lifecycle }
    }
}

pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

impl NamedService for CheckServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl UnaryService<Check> for CheckServer {
    type Response = CheckResponse;
    type Future = BoxFuture<Response<CheckResponse>, Status>;

    fn call(&mut self, request: Request<Check>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let _counted = server.lifecycle.check_began()?;
            server
                .gate
                .answer(request.get_ref())
                .await
                .map(Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for CheckServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            if request.uri().path() != CHECK_PATH {
                return Ok(Status::unimplemented("").into_http());
            }
            let codec = tonic_prost::ProstCodec::<CheckResponse, Check>::default();
            Ok(tonic::server::Grpc::new(codec).unary(server, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::config::core::v3::Address as EnvoyAddress;
    use envoy_types::pb::envoy::config::core::v3::{address, SocketAddress as EnvoySocket};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer as EnvoyPeer, Request as EnvoyRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn full(headers: &[(&str, &str)], raw_body: &[u8]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(EnvoyPeer {
                    address: Some(EnvoyAddress {
                        address: Some(address::Address::SocketAddress(EnvoySocket {
                            address: "10.1.2.3".into(),
                            ..Default::default()
                        })),
                    }),
                    principal: "spiffe://cluster/ns/a".into(),
                    ..Default::default()
                }),
                request: Some(EnvoyRequest {
                    http: Some(HttpRequest {
                        id: "123".into(),
                        method: "POST".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        path: "/v1/chat/completions?x=1".into(),
                        host: "llm".into(),
                        raw_body: raw_body.to_vec(),
                        body: "ignored when raw_body is set".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_what_envoy_types_reads_and_skips_the_rest() {
        let request = full(
            &[
                ("authorization", "Bearer sk-1"),
                ("x-request-id", "r-1"),
                ("user-agent", "OpenAI/Python"),
            ],
            b"{\"model\":\"m\"}",
        );
        let check = Check::from(&request);
        let http = check.http().unwrap();
        assert_eq!(http.method(), "POST");
        assert_eq!(http.path(), "/v1/chat/completions?x=1");
        assert_eq!(http.header("authorization"), Some("Bearer sk-1"));
        assert_eq!(http.header("x-request-id"), Some("r-1"));
        assert_eq!(http.header("x-api-key"), None);
        assert_eq!(http.headers.len(), 3);
        assert_eq!(http.body(), b"{\"model\":\"m\"}");
        assert_eq!(check.source(), Some("10.1.2.3"));
        // Nothing else is kept: the lean message re-encodes smaller.
        assert!(check.encoded_len() < request.encoded_len());
    }

    #[test]
    fn a_body_sent_as_text_is_read_when_there_are_no_raw_bytes() {
        let mut request = full(&[], b"");
        let http = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.body = "{\"model\":\"t\"}".into();
        let check = Check::from(&request);
        assert_eq!(check.http().unwrap().body(), b"{\"model\":\"t\"}");
    }

    #[test]
    fn a_header_that_is_not_utf8_reads_as_absent_and_the_check_still_decodes() {
        // A map entry whose value is not UTF-8 fails envoy-types' whole decode; here only
        // that header is unreadable.
        let mut wire = Vec::new();
        let entry = Header {
            key: Bytes::from_static(b"x-api-key"),
            value: Bytes::from_static(b"\xff\xfe"),
        };
        let http = Http {
            method: Bytes::from_static(b"GET"),
            headers: vec![entry],
            ..Default::default()
        };
        Check {
            attributes: Some(Attributes {
                source: None,
                request: Some(HttpOnly { http: Some(http) }),
            }),
        }
        .encode(&mut wire)
        .unwrap();
        assert!(CheckRequest::decode(wire.as_slice()).is_err());
        let check = Check::decode(wire.as_slice()).unwrap();
        assert_eq!(check.http().unwrap().header("x-api-key"), None);
        assert_eq!(check.http().unwrap().method(), "GET");
    }

    #[test]
    fn no_attributes_means_no_http_request() {
        assert!(Check::from(&CheckRequest::default()).http().is_none());
        assert_eq!(Check::from(&CheckRequest::default()).source(), None);
    }
}
