//! Rendering a verdict as Envoy's `CheckResponse`: the only place that knows its shape.

use crate::authn::credential::CREDENTIAL_HEADERS;
use crate::decision::{Denial, DenyReason, Grant};
use crate::limits::plan::Quota;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;

/// Identity headers set towards the upstream. A client-sent header of the same name is
/// always overwritten or removed, so an upstream can trust them.
pub const KEY_ID_HEADER: &str = "x-tollgate-key-id";
pub const USER_ID_HEADER: &str = "x-tollgate-user-id";
pub const TEAM_ID_HEADER: &str = "x-tollgate-team-id";
pub const MODEL_HEADER: &str = "x-tollgate-model";

const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// An allowed request: identity headers to upstream, the client's credential removed (or
/// replaced by the model's provider key), identity as dynamic metadata for access logs.
pub fn allowed(grant: &Grant) -> CheckResponse {
    let mut headers = Vec::with_capacity(5);
    let mut headers_to_remove = Vec::with_capacity(6);
    let mut metadata = Struct::default();
    for (name, field, value) in [
        (KEY_ID_HEADER, "key_id", &grant.key_id),
        (USER_ID_HEADER, "user_id", &grant.user_id),
        (TEAM_ID_HEADER, "team_id", &grant.team_id),
        (MODEL_HEADER, "model", &grant.model),
    ] {
        match value {
            Some(v) => {
                headers.push(header(name, v));
                metadata.fields.insert(field.to_owned(), string_value(v));
            }
            None => headers_to_remove.push(name.to_owned()),
        }
    }
    match &grant.upstream_credential {
        Some(secret) => {
            headers.push(header(
                "authorization",
                &format!("Bearer {}", secret.expose()),
            ));
            headers_to_remove.extend(
                CREDENTIAL_HEADERS
                    .iter()
                    .filter(|h| **h != "authorization")
                    .map(|h| (*h).to_owned()),
            );
        }
        None => headers_to_remove.extend(CREDENTIAL_HEADERS.iter().map(|h| (*h).to_owned())),
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: GRPC_OK,
            ..Default::default()
        }),
        dynamic_metadata: Some(metadata),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            response_headers_to_add: quota_headers(grant.quota.as_ref()),
            ..Default::default()
        })),
    }
}

/// OpenAI's `x-ratelimit-*` headers for the tightest buckets, to the client.
fn quota_headers(quota: Option<&Quota>) -> Vec<HeaderValueOption> {
    quota
        .into_iter()
        .flat_map(Quota::headers)
        .map(|(name, value)| header(name, &value))
        .collect()
}

/// The OpenAI-shaped error body.
pub fn error_body(reason: DenyReason, message: &str) -> String {
    serde_json::json!({
        "error": {
            "message": message,
            "type": reason.error_type(),
            "param": null,
            "code": reason.code(),
        }
    })
    .to_string()
}

/// A denied request: the status and OpenAI-shaped JSON body from DESIGN.md.
pub fn denied(denial: &Denial) -> CheckResponse {
    let reason = denial.reason;
    let mut headers = vec![header("content-type", "application/json")];
    if reason == DenyReason::InvalidApiKey {
        headers.push(header("www-authenticate", "Bearer"));
    }
    if let Some(seconds) = denial.retry_after {
        headers.push(header("retry-after", &seconds.to_string()));
    }
    headers.extend(quota_headers(denial.quota.as_deref()));
    let grpc_code = match reason {
        DenyReason::InvalidApiKey => GRPC_UNAUTHENTICATED,
        _ => GRPC_PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: reason.code().to_owned(),
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(reason.status()),
            }),
            headers,
            body: error_body(reason, &denial.message),
        })),
    }
}
