//! Rendering a verdict as Envoy's `CheckResponse`, and a refusal the way the client's provider
//! writes its own errors: the only place that knows either shape.

use crate::authn::credential::CREDENTIAL_HEADERS;
use crate::config::ApiFamily;
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
/// On a spent budget's refusal: when its period ends (RFC 3339).
pub const BUDGET_RESET_HEADER: &str = "x-tollgate-budget-reset";

/// Dynamic metadata (namespace `envoy.filters.http.ext_authz`) set when Check saw only a
/// prefix of the body; the ext_proc filter then follows the whole body
/// (src/usage/ext_proc.rs).
pub const BODY_CUT_METADATA: &str = "body_cut";
/// Dynamic metadata set when ext_proc will add `stream_options.include_usage` to the
/// request body; the only other reason for ext_proc to read a request body.
pub const ADDS_INCLUDE_USAGE_METADATA: &str = "adds_include_usage";

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
    for (flag, set) in [
        (BODY_CUT_METADATA, grant.body_cut),
        (ADDS_INCLUDE_USAGE_METADATA, grant.adds_include_usage),
    ] {
        if set {
            metadata.fields.insert(
                flag.to_owned(),
                Value {
                    kind: Some(Kind::BoolValue(true)),
                },
            );
        }
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

/// `error.type` in the family's shape. Anthropic's types are the ones its API documents;
/// a 503 is `api_error` (something on the serving side failed; `overloaded_error` is
/// Anthropic's 529, a load signal, which tollgate does not send).
pub fn error_type(reason: DenyReason, api: ApiFamily) -> &'static str {
    match (api, reason) {
        (_, DenyReason::InvalidRequest) => "invalid_request_error",
        (_, DenyReason::InvalidApiKey) => "authentication_error",
        (_, DenyReason::PermissionDenied | DenyReason::ModelNotAllowed) => "permission_error",
        (_, DenyReason::RateLimitExceeded) => "rate_limit_error",
        (ApiFamily::OpenAi, DenyReason::UnknownRoute) => "invalid_request_error",
        (ApiFamily::OpenAi, DenyReason::InsufficientQuota) => "insufficient_quota",
        (ApiFamily::OpenAi, DenyReason::AuthUnavailable) => "service_unavailable",
        (ApiFamily::Anthropic, DenyReason::UnknownRoute) => "not_found_error",
        (ApiFamily::Anthropic, DenyReason::InsufficientQuota) => "rate_limit_error",
        (ApiFamily::Anthropic, DenyReason::AuthUnavailable) => "api_error",
    }
}

/// The error body as the family's provider writes it, with tollgate's code as `code`:
/// OpenAI `{"error":{"message","type","param":null,"code"}}`, Anthropic
/// `{"type":"error","error":{"type","message","code"}}`.
pub fn error_body(reason: DenyReason, api: ApiFamily, message: &str) -> String {
    let r#type = error_type(reason, api);
    match api {
        ApiFamily::OpenAi => serde_json::json!({
            "error": {
                "message": message,
                "type": r#type,
                "param": null,
                "code": reason.code(),
            }
        }),
        ApiFamily::Anthropic => serde_json::json!({
            "type": "error",
            "error": {
                "type": r#type,
                "message": message,
                "code": reason.code(),
            }
        }),
    }
    .to_string()
}

/// A denied request as the client's provider would refuse it: the status, the body in the
/// route family's shape, the request id Envoy gave the request (`x-request-id`, and
/// Anthropic's `request-id`), and whether and when to retry (`retry-after` and
/// `x-should-retry: true` when waiting can succeed, else `x-should-retry: false`).
pub fn denied(denial: &Denial, request_id: &str) -> CheckResponse {
    let grpc_code = match denial.reason {
        DenyReason::InvalidApiKey => GRPC_UNAUTHENTICATED,
        _ => GRPC_PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            message: denial.reason.code().to_owned(),
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(refusal(denial, request_id))),
    }
}

/// The HTTP answer of a refusal (status, headers, body), for Check and for the refusals
/// ext_proc makes itself.
pub fn refusal(denial: &Denial, request_id: &str) -> DeniedHttpResponse {
    let reason = denial.reason;
    let mut headers = vec![header("content-type", "application/json")];
    if !request_id.is_empty() {
        headers.push(header("x-request-id", request_id));
        if denial.api == ApiFamily::Anthropic {
            headers.push(header("request-id", request_id));
        }
    }
    if reason == DenyReason::InvalidApiKey {
        headers.push(header("www-authenticate", "Bearer"));
    }
    match denial.retry_after {
        Some(seconds) => {
            headers.push(header("retry-after", &seconds.to_string()));
            headers.push(header("x-should-retry", "true"));
        }
        None => headers.push(header("x-should-retry", "false")),
    }
    if let Some(reset) = denial.budget_reset {
        headers.push(header(
            BUDGET_RESET_HEADER,
            &crate::domain::rfc3339::format(reset),
        ));
    }
    headers.extend(quota_headers(denial.quota.as_deref()));
    DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(reason.status()),
        }),
        headers,
        body: error_body(reason, denial.api, &denial.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::bucket::View;
    use serde_json::{json, Value};

    const REQUEST_ID: &str = "7f1c2a9e-0b6d-4c55-9a51-3d2b8e4f6a10";

    /// Each reason as tollgate refuses with it: ordinary 429s and 503s say when to retry, a
    /// spent budget says when it resets.
    fn denial(reason: DenyReason, api: ApiFamily) -> Denial {
        let mut d = Denial::new(reason, format!("why: {}", reason.code()));
        match reason {
            DenyReason::RateLimitExceeded => {
                d = d.with_retry_after(20);
                d.quota = Some(Box::new(Quota {
                    requests: Some(View {
                        limit: 3,
                        remaining: 0,
                        reset_ms: 60_000,
                        retry_after_ms: 20_000,
                    }),
                    tokens: None,
                }));
            }
            DenyReason::AuthUnavailable => d = d.with_retry_after(1),
            DenyReason::InsufficientQuota => d.budget_reset = Some(1_800_057_600),
            _ => {}
        }
        d.api = api;
        d
    }

    /// Status, headers in order, and body of a denied answer.
    fn render(d: &Denial, request_id: &str) -> (i32, Vec<(String, String)>, Value) {
        let response = denied(d, request_id);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not a denial: {response:?}");
        };
        let headers = denied
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect();
        let body = serde_json::from_str(&denied.body).unwrap();
        (denied.status.unwrap().code, headers, body)
    }

    const REASONS: [DenyReason; 8] = DenyReason::ALL;

    /// The headers of a refusal after the request ids, per reason (the same in both shapes).
    fn retry_headers(reason: DenyReason) -> Vec<(&'static str, &'static str)> {
        match reason {
            DenyReason::InvalidApiKey => {
                vec![("www-authenticate", "Bearer"), ("x-should-retry", "false")]
            }
            DenyReason::RateLimitExceeded => vec![
                ("retry-after", "20"),
                ("x-should-retry", "true"),
                ("x-ratelimit-limit-requests", "3"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1m0s"),
            ],
            DenyReason::InsufficientQuota => vec![
                ("x-should-retry", "false"),
                ("x-tollgate-budget-reset", "2027-01-16T00:00:00Z"),
            ],
            DenyReason::AuthUnavailable => {
                vec![("retry-after", "1"), ("x-should-retry", "true")]
            }
            _ => vec![("x-should-retry", "false")],
        }
    }

    fn owned(pairs: Vec<(&str, &str)>) -> Vec<(String, String)> {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn openai_routes_refuse_in_openai_shape() {
        for reason in REASONS {
            let (status, headers, body) = render(&denial(reason, ApiFamily::OpenAi), REQUEST_ID);
            assert_eq!(status, i32::from(reason.status()), "{reason:?}");
            let r#type = match reason {
                DenyReason::UnknownRoute | DenyReason::InvalidRequest => "invalid_request_error",
                DenyReason::InvalidApiKey => "authentication_error",
                DenyReason::PermissionDenied | DenyReason::ModelNotAllowed => "permission_error",
                DenyReason::RateLimitExceeded => "rate_limit_error",
                DenyReason::InsufficientQuota => "insufficient_quota",
                DenyReason::AuthUnavailable => "service_unavailable",
            };
            assert_eq!(
                body,
                json!({"error": {
                    "message": format!("why: {}", reason.code()),
                    "type": r#type,
                    "param": null,
                    "code": reason.code(),
                }}),
                "{reason:?}"
            );
            let mut want = vec![
                ("content-type", "application/json"),
                ("x-request-id", REQUEST_ID),
            ];
            want.extend(retry_headers(reason));
            assert_eq!(headers, owned(want), "{reason:?}");
        }
    }

    #[test]
    fn anthropic_routes_refuse_in_anthropic_shape() {
        for reason in REASONS {
            let (status, headers, body) = render(&denial(reason, ApiFamily::Anthropic), REQUEST_ID);
            assert_eq!(status, i32::from(reason.status()), "{reason:?}");
            let r#type = match reason {
                DenyReason::UnknownRoute => "not_found_error",
                DenyReason::InvalidRequest => "invalid_request_error",
                DenyReason::InvalidApiKey => "authentication_error",
                DenyReason::PermissionDenied | DenyReason::ModelNotAllowed => "permission_error",
                DenyReason::RateLimitExceeded | DenyReason::InsufficientQuota => "rate_limit_error",
                DenyReason::AuthUnavailable => "api_error",
            };
            assert_eq!(
                body,
                json!({"type": "error", "error": {
                    "type": r#type,
                    "message": format!("why: {}", reason.code()),
                    "code": reason.code(),
                }}),
                "{reason:?}"
            );
            let mut want = vec![
                ("content-type", "application/json"),
                ("x-request-id", REQUEST_ID),
                ("request-id", REQUEST_ID),
            ];
            want.extend(retry_headers(reason));
            assert_eq!(headers, owned(want), "{reason:?}");
        }
    }

    #[test]
    fn a_request_that_can_never_fit_is_not_worth_retrying() {
        // A 429 without a wait (more tokens than a bucket holds) tells SDKs not to retry.
        let mut d = Denial::new(DenyReason::RateLimitExceeded, "too big");
        d.api = ApiFamily::Anthropic;
        let (status, headers, _) = render(&d, REQUEST_ID);
        assert_eq!(status, 429);
        assert!(headers.contains(&("x-should-retry".into(), "false".into())));
        assert!(!headers.iter().any(|(k, _)| k == "retry-after"));
    }

    #[test]
    fn grpc_status_and_no_ids_without_one() {
        let d = denial(DenyReason::InvalidApiKey, ApiFamily::Anthropic);
        assert_eq!(
            denied(&d, REQUEST_ID).status.unwrap().code,
            GRPC_UNAUTHENTICATED
        );
        let d = denial(DenyReason::PermissionDenied, ApiFamily::OpenAi);
        assert_eq!(
            denied(&d, REQUEST_ID).status.unwrap().code,
            GRPC_PERMISSION_DENIED
        );
        let (_, headers, _) = render(&denial(DenyReason::UnknownRoute, ApiFamily::Anthropic), "");
        assert!(!headers.iter().any(|(k, _)| k.ends_with("request-id")));
    }
}
