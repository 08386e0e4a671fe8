//! Usage from Envoy's gRPC access logs: `envoy.service.accesslog.v3.AccessLogService`.
//!
//! Envoy's `envoy.access_loggers.http_grpc` logger (see `envoy/envoy-als.yaml`) streams one
//! `HTTPAccessLogEntry` per finished request to tollgate. An access log entry carries no
//! response body, so this path cannot count tokens itself: it turns token counts that
//! another filter left in the request's **dynamic metadata** into a [`UsageRecord`], and
//! pushes it onto the usage queue ([`UsageSource::AccessLog`]).
//!
//! What is read from each entry:
//!
//! - **request id**: `request.request_id` (Envoy's `x-request-id`, the idempotency key of
//!   usage records). An entry without one is skipped.
//! - **identity**: the string fields `key_id`, `user_id`, `team_id` and `model` of the
//!   `envoy.filters.http.ext_authz` namespace, which Check's `OkHttpResponse` sets as
//!   dynamic metadata on every allowed request (`src/authz/response.rs`). Envoy files the
//!   ext_authz filter's dynamic metadata under the filter's name, and the shipped configs
//!   name it `envoy.filters.http.ext_authz`.
//! - **status**: `response.response_code`; **latency**: `time_to_last_downstream_tx_byte`
//!   (first byte in to last byte out), else the stream's `duration`; **time**:
//!   `start_time`.
//! - **tokens**, from the first of these namespaces that has them:
//!   1. `tollgate.usage` (a `Struct` in `filter_metadata`, tollgate's own): number fields
//!      `input_tokens`, `output_tokens`, `cached_input_tokens`, `reasoning_tokens` (with
//!      the meanings of [`TokenUsage`]: input includes cached, output includes reasoning),
//!      and optionally `estimated` (bool) and `model` (string, used when ext_authz left
//!      none). Whole non-negative numbers only; a numeric string is accepted too. At least
//!      one of `input_tokens` / `output_tokens` must be there.
//!   2. `envoy.ai.token_usage`: what Envoy 1.40's AI Protocol Manager filter
//!      (`envoy.filters.http.ai_protocol_manager` with `response_handling.token_usage`,
//!      alpha / work in progress upstream) publishes at a clean end of a 2xx JSON or SSE
//!      response: an `envoy.data.ai.v3.TokenUsage` message as **typed** dynamic metadata
//!      (`typed_filter_metadata`, an `Any`; the filter emits no `Struct` mirror). Its
//!      counts are already inclusive like ours: `input_tokens` →
//!      input, `input_token_details.cached_tokens` → cached input, `output_tokens` →
//!      output, `output_token_details.reasoning_tokens` → reasoning; `model` (the
//!      response's) is used when ext_authz left none. `extraction_status: PARTIAL` marks
//!      the record estimated; `FAILED` (no usable count) yields no record. A `Struct`
//!      under the same namespace in `filter_metadata`, in the proto's JSON shape
//!      (`{"input_tokens": n, "output_tokens": n, "input_token_details":
//!      {"cached_tokens": n}, "output_token_details": {"reasoning_tokens": n}}`), is read
//!      the same way, for a producer that writes untyped metadata.
//!
//! See <https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/data/ai/v3/token_usage.proto>.
//!
//! No token counts in an entry → no record (logged at debug level): the request may still
//! be counted by the ext_proc path, and the same request reported by both paths is written
//! once, because the store is idempotent on request id.
//!
//! Caveats of Envoy's gRPC access logger: it copies the stream's dynamic metadata into
//! `common_properties.metadata` only when some *untyped* `filter_metadata` is present
//! (ext_authz's identity is, on every allowed request); entries are sent in batches every
//! `buffer_flush_interval`; and the stream is lossy by design (Envoy expects no answer and
//! drops what it cannot send), so this path is for deployments that accept that, or a
//! second source beside ext_proc. Only final downstream entries (`access_log_type`
//! `DownstreamEnd`, or unset) are read: periodic entries of long streams carry counts that
//! are not final, and the first record written for a request id is the one kept.

use crate::config::Model;
use crate::usage::pricing::cost_for;
use crate::usage::queue::{QueueClosed, UsageQueue};
use crate::usage::{TokenUsage, UsageRecord, UsageSource};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogType, HttpAccessLogEntry};
use envoy_types::pb::envoy::data::ai::v3 as ai;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Duration as PbDuration, Struct, Value};
use futures::FutureExt;
use prost::Message;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

/// The namespace of the ext_authz filter's dynamic metadata (the filter's name).
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";
/// tollgate's own token-usage namespace (an untyped `Struct`).
pub const TOLLGATE_USAGE_NAMESPACE: &str = "tollgate.usage";
/// Envoy's AI Protocol Manager default token-usage namespace (typed `TokenUsage`).
pub const ENVOY_TOKEN_USAGE_NAMESPACE: &str = "envoy.ai.token_usage";
/// The type URL of Envoy's typed token usage.
const TOKEN_USAGE_TYPE_URL: &str = "type.googleapis.com/envoy.data.ai.v3.TokenUsage";

/// The gRPC service putting records of `models` on `usage`; its streams end when `stop`
/// turns true.
pub fn service(
    usage: UsageQueue,
    models: Vec<Model>,
    stop: watch::Receiver<bool>,
) -> AccessLogServiceServer<AccessLogIngest> {
    AccessLogServiceServer::new(AccessLogIngest::new(usage, models).with_stop(stop))
}

/// Turns access log entries into usage records on the queue.
#[derive(Clone)]
pub struct AccessLogIngest {
    usage: UsageQueue,
    models: Arc<[Model]>,
    stop: Option<watch::Receiver<bool>>,
}

impl AccessLogIngest {
    /// Pushes to `usage`, pricing with `models` (the configured catalogue).
    pub fn new(usage: UsageQueue, models: impl Into<Arc<[Model]>>) -> Self {
        AccessLogIngest {
            usage,
            models: models.into(),
            stop: None,
        }
    }

    /// Ends open streams when `stop` turns true. Envoy keeps one access log stream open
    /// for as long as it runs, and a graceful gRPC shutdown waits for open streams, so
    /// without this tollgate could not stop while Envoy is up.
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Handles one message of the stream: queues a record for each HTTP entry that carries
    /// token usage, and answers how many were queued.
    pub async fn ingest(&self, message: StreamAccessLogsMessage) -> Result<usize, QueueClosed> {
        if let Some(identifier) = &message.identifier {
            tracing::debug!(log_name = %identifier.log_name, "access log stream identified");
        }
        let entries = match message.log_entries {
            Some(LogEntries::HttpLogs(http)) => http.log_entry,
            Some(LogEntries::TcpLogs(_)) => {
                tracing::debug!("TCP access log entries carry no LLM usage; ignored");
                return Ok(0);
            }
            None => return Ok(0),
        };
        let mut queued = 0;
        for entry in &entries {
            if let Some(record) = record_from_entry(entry, &self.models) {
                self.usage.push(record).await?;
                queued += 1;
            }
        }
        Ok(queued)
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogIngest {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut stop = self.stop.clone();
        // Envoy never expects an answer; the stream ends when Envoy closes it or when
        // tollgate stops (Envoy opens a new one, to another replica or later, for its next
        // entries).
        loop {
            let message = tokio::select! {
                message = stream.message() => message?,
                () = stopped(&mut stop) => {
                    // What has already arrived is still queued; the writer drains it.
                    while let Some(Ok(Some(message))) = stream.message().now_or_never() {
                        if self.ingest(message).await.is_err() {
                            break;
                        }
                    }
                    tracing::debug!("access log stream closed: tollgate is stopping");
                    return Ok(Response::new(StreamAccessLogsResponse {}));
                }
            };
            let Some(message) = message else {
                return Ok(Response::new(StreamAccessLogsResponse {}));
            };
            if self.ingest(message).await.is_err() {
                return Err(Status::unavailable("tollgate is shutting down"));
            }
        }
    }
}

/// Resolves once `stop` is true; never without a stop signal (or when its sender is gone).
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = stop {
        if rx.wait_for(|stop| *stop).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// The usage record of one access log entry, or `None` when it has no request id, is an
/// intermediate entry, or carries no token usage.
pub fn record_from_entry(entry: &HttpAccessLogEntry, models: &[Model]) -> Option<UsageRecord> {
    let common = entry.common_properties.as_ref();
    let request_id = entry
        .request
        .as_ref()
        .map(|r| r.request_id.as_str())
        .unwrap_or_default();
    if request_id.is_empty() {
        tracing::debug!("access log entry without a request id; no usage record");
        return None;
    }
    // Only the entry written when the downstream stream ended has final counts; periodic
    // and upstream entries of the same request would otherwise be written first.
    let kind = common.map_or(0, |c| c.access_log_type);
    if kind != AccessLogType::NotSet as i32 && kind != AccessLogType::DownstreamEnd as i32 {
        tracing::debug!(
            request_id,
            kind,
            "not a final downstream access log entry; skipped"
        );
        return None;
    }
    let metadata = common.and_then(|c| c.metadata.as_ref());
    let authz = metadata.and_then(|m| m.filter_metadata.get(EXT_AUTHZ_NAMESPACE));
    let field = |name: &str| authz.and_then(|s| string_field(s, name));
    let (key_id, user_id, team_id) = (field("key_id"), field("user_id"), field("team_id"));
    let Some(found) = metadata.and_then(usage_from_metadata) else {
        tracing::debug!(
            request_id,
            key_id = key_id.as_deref().unwrap_or_default(),
            "access log entry without token usage ({TOLLGATE_USAGE_NAMESPACE} or {ENVOY_TOKEN_USAGE_NAMESPACE}); no usage record"
        );
        return None;
    };
    let model = field("model").or(found.model);
    let cost_usd = cost_for(models, model.as_deref(), &found.tokens);
    let status = entry
        .response
        .as_ref()
        .and_then(|r| r.response_code)
        .and_then(|code| u16::try_from(code.value).ok())
        .unwrap_or(0);
    let latency = common.and_then(|c| c.time_to_last_downstream_tx_byte.or(c.duration));
    let at = common
        .and_then(|c| c.start_time)
        .map(|t| t.seconds)
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    tracing::debug!(
        request_id,
        source = found.source,
        input_tokens = found.tokens.input_tokens,
        output_tokens = found.tokens.output_tokens,
        "usage from an access log entry"
    );
    Some(UsageRecord {
        request_id: request_id.to_owned(),
        at,
        key_id,
        user_id,
        team_id,
        org_id: None,
        model,
        tokens: found.tokens,
        cost_usd,
        status,
        latency_ms: latency.map_or(0, duration_ms),
        estimated: found.estimated,
        source: UsageSource::AccessLog,
    })
}

/// Token usage found in an entry's metadata, and where.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    tokens: TokenUsage,
    estimated: bool,
    /// The model the producer reported, for when ext_authz left none.
    model: Option<String>,
    source: &'static str,
}

/// Token usage from `tollgate.usage`, else from `envoy.ai.token_usage` (typed, then
/// untyped).
fn usage_from_metadata(metadata: &Metadata) -> Option<Found> {
    if let Some(found) = metadata
        .filter_metadata
        .get(TOLLGATE_USAGE_NAMESPACE)
        .and_then(from_tollgate_struct)
    {
        return Some(found);
    }
    let typed = metadata
        .typed_filter_metadata
        .get(ENVOY_TOKEN_USAGE_NAMESPACE)
        .filter(|any| any.type_url == TOKEN_USAGE_TYPE_URL)
        .and_then(|any| match ai::TokenUsage::decode(any.value.as_slice()) {
            Ok(usage) => Some(usage),
            Err(e) => {
                tracing::warn!(error = %e, "cannot decode {ENVOY_TOKEN_USAGE_NAMESPACE} metadata");
                None
            }
        });
    if let Some(usage) = typed {
        return from_envoy_token_usage(&usage);
    }
    metadata
        .filter_metadata
        .get(ENVOY_TOKEN_USAGE_NAMESPACE)
        .and_then(|s| from_envoy_token_usage(&envoy_usage_from_struct(s)))
}

fn from_tollgate_struct(s: &Struct) -> Option<Found> {
    let input = count_field(s, "input_tokens");
    let output = count_field(s, "output_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let estimated = matches!(
        s.fields.get("estimated").and_then(|v| v.kind.as_ref()),
        Some(Kind::BoolValue(true))
    );
    Some(Found {
        tokens: TokenUsage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            cached_input_tokens: count_field(s, "cached_input_tokens").unwrap_or(0),
            reasoning_tokens: count_field(s, "reasoning_tokens").unwrap_or(0),
        },
        estimated,
        model: string_field(s, "model"),
        source: TOLLGATE_USAGE_NAMESPACE,
    })
}

fn from_envoy_token_usage(usage: &ai::TokenUsage) -> Option<Found> {
    use ai::token_usage::ExtractionStatus;
    let status = ExtractionStatus::try_from(usage.extraction_status)
        .unwrap_or(ExtractionStatus::Unspecified);
    let input = usage.input_tokens.map(|v| v.value);
    let output = usage.output_tokens.map(|v| v.value);
    if status == ExtractionStatus::Failed || (input.is_none() && output.is_none()) {
        return None;
    }
    let cached = usage
        .input_token_details
        .and_then(|d| d.cached_tokens)
        .map_or(0, |v| v.value);
    let reasoning = usage
        .output_token_details
        .and_then(|d| d.reasoning_tokens)
        .map_or(0, |v| v.value);
    Some(Found {
        tokens: TokenUsage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            cached_input_tokens: cached,
            reasoning_tokens: reasoning,
        },
        // A count is missing, or some usage-bearing input was lost.
        estimated: status == ExtractionStatus::Partial || input.is_none() || output.is_none(),
        model: Some(usage.model.clone()).filter(|m| !m.is_empty()),
        source: ENVOY_TOKEN_USAGE_NAMESPACE,
    })
}

/// `envoy.data.ai.v3.TokenUsage` from its JSON shape in a `Struct`.
fn envoy_usage_from_struct(s: &Struct) -> ai::TokenUsage {
    use envoy_types::pb::google::protobuf::UInt64Value;
    let wrap = |v: Option<u64>| v.map(|value| UInt64Value { value });
    let nested = |outer: &str, inner: &str| match s.fields.get(outer).and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StructValue(d)) => count_field(d, inner),
        _ => None,
    };
    let status = match s
        .fields
        .get("extraction_status")
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(name)) => {
            ai::token_usage::ExtractionStatus::from_str_name(name).map_or(0, |status| status as i32)
        }
        _ => 0,
    };
    ai::TokenUsage {
        model: string_field(s, "model").unwrap_or_default(),
        input_tokens: wrap(count_field(s, "input_tokens")),
        output_tokens: wrap(count_field(s, "output_tokens")),
        input_token_details: Some(ai::InputTokenDetails {
            cached_tokens: wrap(nested("input_token_details", "cached_tokens")),
            ..Default::default()
        }),
        output_token_details: Some(ai::OutputTokenDetails {
            reasoning_tokens: wrap(nested("output_token_details", "reasoning_tokens")),
        }),
        extraction_status: status,
        ..Default::default()
    }
}

/// A non-empty string field.
fn string_field(s: &Struct, name: &str) -> Option<String> {
    match s.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(v) if !v.is_empty() => Some(v.clone()),
        _ => None,
    }
}

/// A token count: a whole, non-negative number (protobuf JSON writes 64-bit integers as
/// strings, so a string of digits counts too).
fn count_field(s: &Struct, name: &str) -> Option<u64> {
    count(s.fields.get(name)?)
}

fn count(value: &Value) -> Option<u64> {
    match value.kind.as_ref()? {
        Kind::NumberValue(n) if n.is_finite() && *n >= 0.0 && n.fract() == 0.0 => {
            // Beyond 2^53 a double is no longer a whole count we can trust.
            (*n <= 9_007_199_254_740_992.0).then_some(*n as u64)
        }
        Kind::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn duration_ms(d: PbDuration) -> u64 {
    let ms = i128::from(d.seconds) * 1000 + i128::from(d.nanos) / 1_000_000;
    u64::try_from(ms).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn counts_are_whole_and_non_negative() {
        assert_eq!(count(&number(12.0)), Some(12));
        assert_eq!(count(&number(0.0)), Some(0));
        assert_eq!(count(&number(-1.0)), None);
        assert_eq!(count(&number(1.5)), None);
        assert_eq!(count(&number(f64::NAN)), None);
        assert_eq!(count(&number(1e300)), None);
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_owned())),
        };
        assert_eq!(count(&s("42")), Some(42));
        assert_eq!(count(&s("-3")), None);
        assert_eq!(
            count(&Value {
                kind: Some(Kind::BoolValue(true))
            }),
            None
        );
    }

    #[test]
    fn durations_in_milliseconds() {
        assert_eq!(
            duration_ms(PbDuration {
                seconds: 2,
                nanos: 345_678_901
            }),
            2345
        );
        assert_eq!(
            duration_ms(PbDuration {
                seconds: -1,
                nanos: 0
            }),
            0
        );
    }

    #[test]
    fn a_failed_or_empty_envoy_extraction_is_no_usage() {
        use envoy_types::pb::google::protobuf::UInt64Value;
        let failed = ai::TokenUsage {
            input_tokens: Some(UInt64Value { value: 3 }),
            extraction_status: ai::token_usage::ExtractionStatus::Failed as i32,
            ..Default::default()
        };
        assert_eq!(from_envoy_token_usage(&failed), None);
        assert_eq!(from_envoy_token_usage(&ai::TokenUsage::default()), None);
        let partial = ai::TokenUsage {
            input_tokens: Some(UInt64Value { value: 3 }),
            output_tokens: Some(UInt64Value { value: 4 }),
            extraction_status: ai::token_usage::ExtractionStatus::Partial as i32,
            ..Default::default()
        };
        let found = from_envoy_token_usage(&partial).unwrap();
        assert!(found.estimated);
        assert_eq!(found.tokens.input_tokens, 3);
        assert_eq!(found.tokens.output_tokens, 4);
    }
}
