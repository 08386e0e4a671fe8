//! Envoy's `CheckRequest`, built by hand, and its answer read back: for tests that call
//! `Gate::check` directly, without a network.

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use serde_json::Value;
use std::collections::HashMap;

/// A `POST path` with these headers and body, as Envoy forwards it to ext_authz.
pub fn request(headers: &[(&str, &str)], path: &str, body: &str) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    headers,
                    raw_body: body.as_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// What a Check answered, flattened: the HTTP status (200 when allowed), the headers for
/// the client (allowed: `response_headers_to_add`; denied: the denial's), and the denial's
/// JSON body (null when allowed).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Answer {
    /// The OpenAI error code of a denial ("" when allowed).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} in {self:?}"))
    }
}

pub fn answer(response: CheckResponse) -> Answer {
    let pairs = |headers: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    };
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            status: 200,
            headers: pairs(&ok.response_headers_to_add),
            body: Value::Null,
        },
        Some(HttpResponse::DeniedResponse(denied)) => Answer {
            status: denied.status.map_or(0, |s| s.code as u16),
            headers: pairs(&denied.headers),
            body: serde_json::from_str(&denied.body).unwrap_or(Value::Null),
        },
        other => panic!("unexpected check response {other:?}"),
    }
}
