//! Usage from the responses themselves: Envoy's ExternalProcessor (ext_proc v3) service.
//!
//! Envoy opens one gRPC stream per HTTP request that ext_authz let through (the ext_proc
//! filter runs after ext_authz, so it sees the `x-tollgate-*` identity headers Check set) and
//! sends, as `envoy/envoy.yaml` configures it:
//!
//! 1. the request headers: the request id (`x-request-id`, always Envoy's own), the
//!    identity headers, `:path` and `content-length`, and ext_authz's dynamic metadata;
//!    answered at once, unchanged. When Check saw only a prefix of the body (metadata
//!    `body_cut`), the answer switches this request's body to STREAMED (`mode_override`);
//! 2. the request body, buffered (up to Envoy's buffer limit): for OpenAI's
//!    `/chat/completions` and `/completions` a streaming request that did not ask for usage
//!    gets `stream_options.include_usage: true` added, with a matching `content-length`.
//!    A body Check saw cut comes instead piece by piece, each held by Envoy until answered,
//!    and is followed with [`TopLevel`]: a second top-level `model` member is refused with
//!    an immediate 400, so the upstream never receives the end of such a body;
//! 3. the response headers: the status and `content-type`;
//! 4. the response body, chunk by chunk as it passes (each chunk is answered at once, so a
//!    stream reaches the client as it is written): an event stream feeds the incremental
//!    [`SseUsage`] parser, anything else is kept up to [`MAX_JSON_BYTES`] and read with
//!    [`parse::from_json`] at the end. Chunks pass unchanged, except in a stream whose
//!    request tollgate gave `include_usage`: [`UnaskedUsage`] takes out what that caused,
//!    so the client gets the events it asked for.
//!
//! When the response ends (`end_of_stream`), one [`UsageRecord`] is queued with the
//! provider's counts, the cost from the model's pricing, the status and the latency. When the
//! gRPC stream ends before that (the client went away, the upstream reset, Envoy gave up on
//! tollgate), a record is queued all the same from what was seen, marked `estimated`: the
//! provider's counts if they had arrived, else the input estimated from the request body
//! (bytes / 4) and the output from the text streamed so far. The same happens to streams
//! still open when a stopping tollgate has given them all the time it can (see
//! [`crate::lifecycle`]); shutdown waits until every stream's record is queued.
//!
//! The status is the one the client got: the upstream's, or Envoy's own answer (a 503 when
//! the upstream cannot be reached, recorded with no tokens); 0 when no response started
//! (the client left first).
//!
//! A request without an `x-request-id`, or without any identity header (nothing Check
//! granted), yields no record. Records are idempotent on the request id in the store.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    processing_mode::{BodySendMode, HeaderSendMode},
    ProcessingMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, external_processor_server::ExternalProcessor, processing_request,
    processing_response, BodyMutation, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, HttpBody, HttpHeaders, ImmediateResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use futures::Stream;
use std::pin::Pin;
use tokio::sync::watch;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::parse;
use super::pricing;
use super::queue::UsageQueue;
use super::sse::SseUsage;
use super::unasked::UnaskedUsage;
use super::{TokenUsage, UsageRecord, UsageSource};
use crate::authz::body::TopLevel;
use crate::authz::response::{
    self as check_response, ADDS_INCLUDE_USAGE_METADATA, BODY_CUT_METADATA, KEY_ID_HEADER,
    MODEL_HEADER, TEAM_ID_HEADER, USER_ID_HEADER,
};
use crate::config::Config;
use crate::decision::{Denial, DenyReason, Policy, DUPLICATE_MODEL};

/// The dynamic metadata namespace of Envoy's ext_authz filter, where Check's metadata lands;
/// envoy/envoy.yaml forwards it to this filter (`metadata_options`).
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// The most of a non-stream response body kept to read its `usage`. Chat and completion
/// answers are far smaller (100k output tokens are ~400 KB of JSON); what exceeds this is in
/// practice a large embeddings batch, which has no output tokens: its record is estimated
/// from the request (input = request bytes / 4, output 0).
pub const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;

/// The ext_proc service: turns each response Envoy streams through it into a usage record.
#[derive(Clone)]
pub struct UsageProcessor {
    queue: UsageQueue,
    /// For the model list and its pricing.
    config: Arc<Config>,
    /// The route table (Check's), for the shape of a refusal.
    routes: Arc<Policy>,
    /// Runs each stream's task, so that shutdown can wait until every record is queued.
    streams: TaskTracker,
    /// Ends the open streams when it turns true (each still queues what it saw).
    cut: Option<watch::Receiver<bool>>,
}

impl UsageProcessor {
    pub fn new(queue: UsageQueue, config: Arc<Config>, routes: Arc<Policy>) -> Self {
        UsageProcessor {
            queue,
            config,
            routes,
            streams: TaskTracker::new(),
            cut: None,
        }
    }

    /// This processor on a server that stops: its streams run on `streams`, and end when
    /// `cut` turns true (shutdown, once in-flight streams had their time), each queueing a
    /// record of what it saw, marked `estimated` when the response had not ended.
    pub fn stopping(self, streams: TaskTracker, cut: watch::Receiver<bool>) -> Self {
        UsageProcessor {
            streams,
            cut: Some(cut),
            ..self
        }
    }
}

/// Resolves once `cut` is true; never without one (or when its sender is gone).
async fn cut_off(cut: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = cut {
        if rx.wait_for(|cut| *cut).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

#[tonic::async_trait]
impl ExternalProcessor for UsageProcessor {
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    /// Answers each message as the gRPC server pulls the next answer: no task and no channel
    /// of its own per stream (both cost more than the work). Envoy waits for each answer
    /// before sending the next message (but in observability mode, where nothing is
    /// answered).
    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let stream = Box::new(OpenStream {
            inbound: request.into_inner(),
            cut: self.cut.clone(),
            seen: Seen {
                exchange: Exchange::with_routes(self.routes.clone()),
                processor: self.clone(),
                queuing: None,
                _open: self.streams.token(),
            },
            ended: false,
        });
        let answers = futures::stream::unfold(stream, |mut stream| async move {
            let answer = stream.next_answer().await?;
            Some((Ok(answer), stream))
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

/// One ext_proc stream, pulled answer by answer.
struct OpenStream {
    inbound: Streaming<ProcessingRequest>,
    cut: Option<watch::Receiver<bool>>,
    seen: Seen,
    ended: bool,
}

impl OpenStream {
    /// The answer to the next message that gets one; none once the stream is over (Envoy
    /// closed or reset it, or a stopping tollgate cut it off), when the record of what was
    /// seen is queued.
    async fn next_answer(&mut self) -> Option<ProcessingResponse> {
        if self.ended {
            return None;
        }
        loop {
            // The answer that completed the response went out; its record goes now.
            if self.seen.exchange.response_complete() {
                self.seen.queue_record().await;
            }
            let message = tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(message)) => Some(message),
                    // Envoy closed the stream (after the response, or early) or reset it.
                    Ok(None) | Err(_) => None,
                },
                // Shutting down, past the time in-flight streams were given: Envoy lets
                // the response go on without this filter (failure_mode_allow).
                () = cut_off(&mut self.cut) => None,
            };
            let Some(message) = message else {
                self.ended = true;
                // Ended before the response did: what was seen, as an estimate.
                self.seen.queue_record().await;
                return None;
            };
            if let Some(answer) = self.seen.exchange.handle(message) {
                return Some(answer);
            }
        }
    }
}

/// What a stream saw, and where its record goes. Dropped with a record not yet queued (the
/// gRPC server let go of the stream between two messages or during a push: Envoy reset
/// it, or the connection closed), it queues that record from a task of its own. Its token
/// holds shutdown until then.
struct Seen {
    exchange: Exchange,
    processor: UsageProcessor,
    /// The record being queued: a push can wait (Redis, or a full queue), and the stream
    /// can be let go of meanwhile; then this copy is queued again (the store keeps one
    /// record per request id).
    queuing: Option<UsageRecord>,
    _open: TaskTrackerToken,
}

impl Seen {
    /// Queues the exchange's record, once.
    async fn queue_record(&mut self) {
        let Some(record) = self.exchange.take_record(&self.processor.config) else {
            return;
        };
        self.queuing = Some(record.clone());
        self.processor.queue(record).await;
        self.queuing = None;
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        let unqueued = self
            .queuing
            .take()
            .or_else(|| self.exchange.take_record(&self.processor.config));
        let Some(record) = unqueued else {
            return;
        };
        let processor = self.processor.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let queued = self.processor.streams.track_future(async move {
                    processor.queue(record).await;
                });
                runtime.spawn(queued);
            }
            Err(_) => tracing::error!(
                request_id = %record.request_id,
                "no runtime to queue this request's usage on; it is not recorded"
            ),
        }
    }
}

impl UsageProcessor {
    async fn queue(&self, record: UsageRecord) {
        let request_id = record.request_id.clone();
        if self.queue.push(record).await.is_err() {
            tracing::error!(%request_id, "the usage queue is closed; this request's usage is not recorded");
        }
    }
}

/// What the response headers tell ext_proc: the status, whether the body is an event
/// stream, and its announced length.
pub struct ResponseHead {
    pub status: Option<u16>,
    pub event_stream: bool,
    pub content_length: Option<u64>,
}

impl ResponseHead {
    pub fn of(headers: &HttpHeaders) -> ResponseHead {
        let mut head = ResponseHead {
            status: None,
            event_stream: false,
            content_length: None,
        };
        for header in headers.headers.iter().flat_map(|map| &map.headers) {
            match header.key.as_str() {
                ":status" => head.status = header_value(header).and_then(|v| v.trim().parse().ok()),
                "content-type" => {
                    head.event_stream = header_value(header).is_some_and(|v| {
                        v.trim_start()
                            .to_ascii_lowercase()
                            .starts_with("text/event-stream")
                    })
                }
                "content-length" => {
                    head.content_length = header_value(header).and_then(|v| v.trim().parse().ok())
                }
                _ => {}
            }
        }
        head
    }

    /// The mode for the rest of the response: a body that is not an event stream and
    /// announces at most [`BUFFER_AT_MOST`] bytes comes whole, in one message; anything
    /// else as it passes (unchanged mode).
    pub fn mode(&self, end_of_stream: bool) -> Option<ProcessingMode> {
        let small = self.content_length.is_some_and(|n| n <= BUFFER_AT_MOST);
        (!end_of_stream && !self.event_stream && small).then(buffer_the_response)
    }
}

/// What is kept of the response body.
enum ResponseBody {
    /// Nothing seen yet (no response headers).
    Unknown,
    /// `text/event-stream`: read as it passes.
    Sse(Box<SseUsage>),
    /// Anything else, kept whole up to [`MAX_JSON_BYTES`].
    Json(Vec<u8>),
    /// A non-stream body larger than [`MAX_JSON_BYTES`].
    TooLarge,
}

/// One HTTP request's exchange with Envoy: what was seen so far. Pure; the service drives
/// it with the stream's messages.
pub struct Exchange {
    started: Instant,
    at: i64,
    request_id: Option<String>,
    key_id: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    model: Option<String>,
    path: String,
    content_length: Option<u64>,
    request_bytes: u64,
    status: Option<u16>,
    body: ResponseBody,
    /// The response ended (`end_of_stream`, or its trailers arrived).
    complete: bool,
    /// The record was taken (or there is none to take).
    taken: bool,
    /// Check saw only a prefix of the body: the whole body is followed for a second `model`.
    body_check: Option<TopLevel>,
    /// The request was refused here (a second `model` past the part Check saw): no record.
    refused: bool,
    /// `stream_options.include_usage` was added to the request: what it causes in the
    /// response stream is taken out again before the client sees it.
    added_include_usage: bool,
    unasked: Option<UnaskedUsage>,
    /// The route table, for the shape of a refusal.
    routes: Arc<Policy>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    /// An exchange whose refusals take their shape from these routes.
    pub fn with_routes(routes: Arc<Policy>) -> Self {
        Exchange {
            routes,
            ..Self::new()
        }
    }

    /// An exchange on the default routes.
    pub fn new() -> Self {
        Exchange {
            started: Instant::now(),
            at: unix_now(),
            request_id: None,
            key_id: None,
            user_id: None,
            team_id: None,
            model: None,
            path: String::new(),
            content_length: None,
            request_bytes: 0,
            status: None,
            body: ResponseBody::Unknown,
            complete: false,
            taken: false,
            body_check: None,
            refused: false,
            added_include_usage: false,
            unasked: None,
            routes: Arc::default(),
        }
    }

    /// Reads one message from Envoy; the answer to send back (`None` in observability
    /// mode, where Envoy ignores answers).
    pub fn handle(&mut self, message: ProcessingRequest) -> Option<ProcessingResponse> {
        let observing = message.observability_mode;
        let mut mode_override = None;
        let response = match message.request? {
            processing_request::Request::RequestHeaders(headers) => {
                self.request_headers(&headers);
                let check = CheckNote::of(message.metadata_context.as_ref());
                if headers.end_of_stream {
                    // No body to read or skip.
                } else if check.body_cut {
                    // Check saw a prefix: follow the whole body, each piece before it goes on.
                    self.body_check = Some(TopLevel::default());
                    mode_override = Some(follow_the_request_body());
                } else if check.granted && !check.adds_include_usage {
                    // Nothing to add: the body goes on unread (its size is the
                    // content-length, for an estimate).
                    mode_override = Some(skip_the_request_body());
                }
                processing_response::Response::RequestHeaders(HeadersResponse {
                    response: Some(CommonResponse::default()),
                })
            }
            processing_request::Request::RequestBody(body) => match self.check_body(&body) {
                Some(refusal) => processing_response::Response::ImmediateResponse(refusal),
                None => processing_response::Response::RequestBody(BodyResponse {
                    response: Some(self.request_body(&body)),
                }),
            },
            processing_request::Request::RequestTrailers(_) => {
                processing_response::Response::RequestTrailers(TrailersResponse::default())
            }
            processing_request::Request::ResponseHeaders(headers) => {
                let (answer, mode) = self.response_headers(&headers);
                mode_override = mode;
                processing_response::Response::ResponseHeaders(HeadersResponse {
                    response: Some(answer),
                })
            }
            processing_request::Request::ResponseBody(body) => {
                processing_response::Response::ResponseBody(BodyResponse {
                    response: Some(self.response_body(&body)),
                })
            }
            processing_request::Request::ResponseTrailers(_) => {
                self.complete = true;
                processing_response::Response::ResponseTrailers(TrailersResponse::default())
            }
        };
        (!observing).then(|| ProcessingResponse {
            response: Some(response),
            mode_override,
            ..ProcessingResponse::default()
        })
    }

    /// Follows a request body Check saw only the start of; a refusal when it has a second
    /// `model` member. Envoy holds each piece until it is answered, so the upstream never
    /// receives the end of such a body.
    fn check_body(&mut self, body: &HttpBody) -> Option<ImmediateResponse> {
        let scan = self.body_check.as_mut()?;
        scan.feed(&body.body);
        if !scan.duplicate_model() {
            return None;
        }
        self.body_check = None;
        self.refused = true;
        let mut denial = Denial::new(DenyReason::InvalidRequest, DUPLICATE_MODEL);
        denial.api = self.routes.family(&self.path);
        let request_id = self.request_id.as_deref().unwrap_or_default();
        tracing::debug!(%request_id, "a second `model` member past the part Check saw; refused");
        let denied = check_response::refusal(&denial, request_id);
        Some(ImmediateResponse {
            status: denied.status,
            headers: Some(HeaderMutation {
                set_headers: denied.headers,
                remove_headers: Vec::new(),
            }),
            body: denied.body.into_bytes(),
            details: "tollgate_duplicate_model".to_owned(),
            ..ImmediateResponse::default()
        })
    }

    /// The response has ended and its record not yet been taken.
    pub fn response_complete(&self) -> bool {
        self.complete && !self.taken
    }

    fn request_headers(&mut self, headers: &HttpHeaders) {
        self.started = Instant::now();
        self.at = unix_now();
        for header in headers.headers.iter().flat_map(|map| &map.headers) {
            let value = || header_value(header).filter(|v| !v.is_empty());
            match header.key.as_str() {
                "x-request-id" => self.request_id = value(),
                KEY_ID_HEADER => self.key_id = value(),
                USER_ID_HEADER => self.user_id = value(),
                TEAM_ID_HEADER => self.team_id = value(),
                MODEL_HEADER => self.model = value(),
                ":path" => self.path = value().unwrap_or_default(),
                "content-length" => {
                    self.content_length = value().and_then(|v| v.trim().parse().ok())
                }
                _ => {}
            }
        }
    }

    /// Counts the body; asks for usage in a stream that did not. Only a body seen whole, in
    /// one message, is rewritten: a cut-off prefix (Envoy's buffer limit) or a chunk of a
    /// streamed body passes unchanged.
    fn request_body(&mut self, body: &HttpBody) -> CommonResponse {
        let whole = body.end_of_stream && self.request_bytes == 0;
        self.request_bytes += body.body.len() as u64;
        if !whole || !parse::include_usage_applies(&self.path) {
            return CommonResponse::default();
        }
        let Some(rewritten) = parse::add_include_usage(&body.body) else {
            return CommonResponse::default();
        };
        self.added_include_usage = true;
        CommonResponse {
            // Envoy forwards the content-length as it was unless told: the processor owns it
            // when it changes a buffered body.
            header_mutation: Some(HeaderMutation {
                set_headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "content-length".to_owned(),
                        raw_value: rewritten.len().to_string().into_bytes(),
                        ..HeaderValue::default()
                    }),
                    ..HeaderValueOption::default()
                }],
                remove_headers: Vec::new(),
            }),
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::Body(rewritten)),
            }),
            ..CommonResponse::default()
        }
    }

    /// Reads the status and the kind of body; a small JSON body (its length known) is then
    /// asked for in one message instead of chunk by chunk.
    fn response_headers(
        &mut self,
        headers: &HttpHeaders,
    ) -> (CommonResponse, Option<ProcessingMode>) {
        let head = ResponseHead::of(headers);
        self.status = head.status;
        let mut answer = CommonResponse::default();
        if head.event_stream && self.added_include_usage {
            self.unasked = Some(UnaskedUsage::default());
            if head.content_length.is_some() {
                // The client gets fewer bytes than the upstream sent.
                answer.header_mutation = Some(HeaderMutation {
                    set_headers: Vec::new(),
                    remove_headers: vec!["content-length".to_owned()],
                });
            }
        }
        self.body = if head.event_stream {
            ResponseBody::Sse(Box::default())
        } else {
            ResponseBody::Json(Vec::new())
        };
        if headers.end_of_stream {
            self.complete = true;
        }
        (answer, head.mode(headers.end_of_stream))
    }

    /// Reads a piece of the response for usage (as the upstream sent it); what the client
    /// gets is that piece, less the usage tollgate asked for on its behalf.
    fn response_body(&mut self, body: &HttpBody) -> CommonResponse {
        match &mut self.body {
            ResponseBody::Sse(parser) => parser.feed(&body.body),
            ResponseBody::Json(buffer) => {
                if buffer.len() + body.body.len() > MAX_JSON_BYTES {
                    self.body = ResponseBody::TooLarge;
                } else {
                    buffer.extend_from_slice(&body.body);
                }
            }
            ResponseBody::TooLarge | ResponseBody::Unknown => {}
        }
        if body.end_of_stream {
            self.complete = true;
        }
        let Some(filter) = &mut self.unasked else {
            return CommonResponse::default();
        };
        let mutation = match filter.filter(&body.body, body.end_of_stream) {
            None => return CommonResponse::default(),
            Some(bytes) if bytes.is_empty() => body_mutation::Mutation::ClearBody(true),
            Some(bytes) => body_mutation::Mutation::Body(bytes),
        };
        CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(mutation),
            }),
            ..CommonResponse::default()
        }
    }

    /// The record of this exchange, once: `None` the second time, and when the request has
    /// no request id or no identity.
    pub fn take_record(&mut self, config: &Config) -> Option<UsageRecord> {
        if self.taken {
            return None;
        }
        self.taken = true;
        if self.refused {
            return None;
        }
        let request_id = self.request_id.clone()?;
        if self.key_id.is_none() && self.user_id.is_none() && self.team_id.is_none() {
            return None;
        }
        let estimated_input = self
            .request_bytes
            .max(self.content_length.unwrap_or(0))
            .div_ceil(4);
        let estimate = TokenUsage {
            input_tokens: estimated_input,
            ..TokenUsage::default()
        };
        let mut model = self.model.clone();
        let body = std::mem::replace(&mut self.body, ResponseBody::Unknown);
        let (tokens, estimated) = match body {
            ResponseBody::Sse(parser) => {
                let outcome = parser.finish();
                if model.is_none() {
                    model = outcome.model.clone();
                }
                let (tokens, estimated) = outcome.tokens_or_estimate(estimated_input);
                (tokens, estimated || !self.complete)
            }
            ResponseBody::Json(buffer) => {
                if model.is_none() {
                    model = parse::model_from_json(&buffer);
                }
                match parse::from_json(&buffer) {
                    Some(tokens) => (tokens, !self.complete),
                    // An error answer, a model list: a complete body without usage used no
                    // tokens. A cut one may have.
                    None if self.complete => (TokenUsage::default(), false),
                    None => (estimate, true),
                }
            }
            ResponseBody::TooLarge | ResponseBody::Unknown => (estimate, true),
        };
        let cost_usd = pricing::cost_for(&config.models, model.as_deref(), &tokens);
        Some(UsageRecord {
            request_id,
            at: self.at,
            key_id: self.key_id.clone(),
            user_id: self.user_id.clone(),
            team_id: self.team_id.clone(),
            org_id: None,
            model,
            tokens,
            cost_usd,
            status: self.status.unwrap_or(0),
            latency_ms: self.started.elapsed().as_millis() as u64,
            estimated,
            source: UsageSource::ExtProc,
        })
    }
}

/// The largest response body (by its `content-length`) asked for in one message
/// (BUFFERED_PARTIAL) rather than chunk by chunk: far below Envoy's default buffer limit
/// (1 MiB per request), so that the whole body fits in the one message even where the limit
/// was lowered. A chat or completion answer is a few KiB; a larger body (a big embeddings
/// batch) is read chunk by chunk as configured.
pub const BUFFER_AT_MOST: u64 = 64 * 1024;

/// What Check told this filter about the request, in ext_authz's dynamic metadata
/// (forwarded by envoy/envoy.yaml's `metadata_options`).
#[derive(Debug, Default, Clone, Copy)]
struct CheckNote {
    /// Check granted the request (it named a key, user or team).
    granted: bool,
    /// Check saw only a prefix of the body (`body_cut`).
    body_cut: bool,
    /// The body is an OpenAI stream that does not ask for usage (`adds_include_usage`).
    adds_include_usage: bool,
}

impl CheckNote {
    fn of(metadata: Option<&Metadata>) -> CheckNote {
        let Some(fields) = metadata.and_then(|m| m.filter_metadata.get(EXT_AUTHZ_NAMESPACE)) else {
            return CheckNote::default();
        };
        let flag = |name: &str| {
            fields
                .fields
                .get(name)
                .is_some_and(|v| matches!(v.kind, Some(Kind::BoolValue(true))))
        };
        let named = |name: &str| {
            fields
                .fields
                .get(name)
                .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if !s.is_empty()))
        };
        CheckNote {
            granted: named("key_id") || named("user_id") || named("team_id"),
            body_cut: flag(BODY_CUT_METADATA),
            adds_include_usage: flag(ADDS_INCLUDE_USAGE_METADATA),
        }
    }
}

/// The processing modes this filter switches a request to (`mode_override`); each must be
/// listed in envoy/envoy.yaml's `allowed_override_modes`, which Envoy matches exactly.
fn mode(request_body: BodySendMode, response_body: BodySendMode) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: request_body as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        response_body_mode: response_body as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// For a request whose body Check saw only in part: the request body streamed through this
/// filter piece by piece (each held until answered).
fn follow_the_request_body() -> ProcessingMode {
    mode(BodySendMode::Streamed, BodySendMode::Streamed)
}

/// For a request whose body needs nothing: it goes on unread.
pub fn skip_the_request_body() -> ProcessingMode {
    mode(BodySendMode::None, BodySendMode::Streamed)
}

/// For a small JSON response (at response headers; the request is over): its body in one
/// message.
pub fn buffer_the_response() -> ProcessingMode {
    mode(BodySendMode::None, BodySendMode::BufferedPartial)
}

/// A header's value: Envoy sends `raw_value` (bytes); older versions `value`.
fn header_value(header: &HeaderValue) -> Option<String> {
    if !header.raw_value.is_empty() {
        return String::from_utf8(header.raw_value.clone()).ok();
    }
    Some(header.value.clone())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Request headers as Envoy sends them, for tests.
pub fn http_headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(key, value)| HeaderValue {
                    key: (*key).to_owned(),
                    raw_value: value.as_bytes().to_vec(),
                    ..HeaderValue::default()
                })
                .collect(),
        }),
        end_of_stream,
        ..HttpHeaders::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use processing_request::Request as In;

    fn config() -> Config {
        let yaml = "models:\n  - name: gpt-4o\n    pricing: { input_per_million: 2.5, output_per_million: 10 }\n";
        Config::parse_str("t.yaml", yaml, &|_| None).unwrap().config
    }

    fn message(request: In) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(request),
            ..ProcessingRequest::default()
        }
    }

    fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
        HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        }
    }

    fn identity(path: &str) -> Vec<(&str, &str)> {
        vec![
            (":path", path),
            ("x-request-id", "req-1"),
            ("x-tollgate-key-id", "key-1"),
            ("x-tollgate-user-id", "user-1"),
            ("x-tollgate-model", "gpt-4o"),
        ]
    }

    fn common(reply: ProcessingResponse) -> CommonResponse {
        match reply.response.unwrap() {
            processing_response::Response::RequestHeaders(h)
            | processing_response::Response::ResponseHeaders(h) => h.response.unwrap(),
            processing_response::Response::RequestBody(b)
            | processing_response::Response::ResponseBody(b) => b.response.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_json_response_gives_the_providers_counts_and_cost() {
        let mut x = Exchange::new();
        let reply = x.handle(message(In::RequestHeaders(http_headers(
            &identity("/v1/chat/completions"),
            false,
        ))));
        assert_eq!(common(reply.unwrap()), CommonResponse::default());
        let reply = x.handle(message(In::RequestBody(body(
            br#"{"model":"gpt-4o"}"#,
            true,
        ))));
        assert_eq!(common(reply.unwrap()), CommonResponse::default());
        x.handle(message(In::ResponseHeaders(http_headers(
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        ))));
        x.handle(message(In::ResponseBody(body(
            br#"{"usage":{"prompt_"#,
            false,
        ))));
        assert!(!x.response_complete());
        x.handle(message(In::ResponseBody(body(
            br#"tokens":1000,"completion_tokens":2000}}"#,
            true,
        ))));
        assert!(x.response_complete());
        let record = x.take_record(&config()).unwrap();
        assert_eq!(record.request_id, "req-1");
        assert_eq!(record.key_id.as_deref(), Some("key-1"));
        assert_eq!(record.team_id, None);
        assert_eq!(record.tokens.input_tokens, 1000);
        assert_eq!(record.tokens.output_tokens, 2000);
        assert_eq!(record.cost_usd, 0.0225);
        assert_eq!(record.status, 200);
        assert!(!record.estimated);
        assert_eq!(record.source, UsageSource::ExtProc);
        assert!(
            x.take_record(&config()).is_none(),
            "one record per exchange"
        );
    }

    #[test]
    fn a_stream_without_include_usage_gets_it_with_a_matching_content_length() {
        let mut x = Exchange::new();
        x.handle(message(In::RequestHeaders(http_headers(
            &identity("/v1/chat/completions"),
            false,
        ))));
        let request = br#"{"model":"gpt-4o","stream":true}"#;
        let reply = common(
            x.handle(message(In::RequestBody(body(request, true))))
                .unwrap(),
        );
        let Some(body_mutation::Mutation::Body(new)) = reply.body_mutation.unwrap().mutation else {
            panic!("no body mutation")
        };
        let value: serde_json::Value = serde_json::from_slice(&new).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        let set = &reply.header_mutation.unwrap().set_headers[0];
        let header = set.header.as_ref().unwrap();
        assert_eq!(header.key, "content-length");
        assert_eq!(header.raw_value, new.len().to_string().into_bytes());
    }

    #[test]
    fn only_a_whole_completions_body_is_rewritten() {
        let request = br#"{"model":"gpt-4o","stream":true}"#;
        // Anthropic messages report usage in every stream.
        let mut x = Exchange::new();
        x.handle(message(In::RequestHeaders(http_headers(
            &identity("/v1/messages"),
            false,
        ))));
        let reply = common(
            x.handle(message(In::RequestBody(body(request, true))))
                .unwrap(),
        );
        assert_eq!(reply, CommonResponse::default());
        // A prefix cut at Envoy's buffer limit.
        let mut x = Exchange::new();
        x.handle(message(In::RequestHeaders(http_headers(
            &identity("/v1/chat/completions"),
            false,
        ))));
        let reply = common(
            x.handle(message(In::RequestBody(body(request, false))))
                .unwrap(),
        );
        assert_eq!(reply, CommonResponse::default());
        let reply = common(x.handle(message(In::RequestBody(body(b"", true)))).unwrap());
        assert_eq!(reply, CommonResponse::default());
    }

    #[test]
    fn a_stream_cut_short_is_estimated_from_what_was_seen() {
        let mut x = Exchange::new();
        let mut headers = identity("/v1/chat/completions");
        headers.push(("content-length", "400"));
        x.handle(message(In::RequestHeaders(http_headers(&headers, false))));
        x.handle(message(In::ResponseHeaders(http_headers(
            &[(":status", "200"), ("content-type", "text/event-stream")],
            false,
        ))));
        x.handle(message(In::ResponseBody(body(
            b"data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n",
            false,
        ))));
        assert!(!x.response_complete());
        let record = x.take_record(&config()).unwrap();
        assert!(record.estimated);
        assert_eq!(record.tokens.input_tokens, 100);
        assert_eq!(record.tokens.output_tokens, 2);
        assert_eq!(record.cost_usd, 0.00027);
    }

    #[test]
    fn no_request_id_or_no_identity_means_no_record() {
        let mut x = Exchange::new();
        x.handle(message(In::RequestHeaders(http_headers(
            &[(":path", "/v1/models"), ("x-request-id", "r")],
            true,
        ))));
        assert!(x.take_record(&config()).is_none());
        let mut x = Exchange::new();
        x.handle(message(In::RequestHeaders(http_headers(
            &[(":path", "/v1/models"), ("x-tollgate-key-id", "k")],
            true,
        ))));
        assert!(x.take_record(&config()).is_none());
    }

    /// ext_authz's dynamic metadata as Envoy forwards it: Check's identity and flags.
    fn from_check(request: In, flags: &[&str]) -> ProcessingRequest {
        let mut fields: std::collections::HashMap<
            String,
            envoy_types::pb::google::protobuf::Value,
        > = flags
            .iter()
            .map(|flag| {
                let value = envoy_types::pb::google::protobuf::Value {
                    kind: Some(Kind::BoolValue(true)),
                };
                ((*flag).to_owned(), value)
            })
            .collect();
        fields.insert(
            "key_id".to_owned(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(Kind::StringValue("key-1".to_owned())),
            },
        );
        let mut metadata = Metadata::default();
        metadata.filter_metadata.insert(
            EXT_AUTHZ_NAMESPACE.to_owned(),
            envoy_types::pb::google::protobuf::Struct {
                fields: fields.into_iter().collect(),
            },
        );
        ProcessingRequest {
            metadata_context: Some(metadata),
            ..message(request)
        }
    }

    fn request_headers_mode(
        x: &mut Exchange,
        flags: &[&str],
        end_of_stream: bool,
    ) -> Option<ProcessingMode> {
        let headers = http_headers(&identity("/v1/chat/completions"), end_of_stream);
        x.handle(from_check(In::RequestHeaders(headers), flags))
            .unwrap()
            .mode_override
    }

    #[test]
    fn the_request_body_is_read_only_when_check_says_it_needs_to_be() {
        // Check granted it and saw the whole body, with nothing to add: skipped.
        let mut x = Exchange::new();
        assert_eq!(
            request_headers_mode(&mut x, &[], false),
            Some(skip_the_request_body())
        );
        // A stream without include_usage: read, to add it (the configured mode).
        let mut x = Exchange::new();
        assert_eq!(
            request_headers_mode(&mut x, &[ADDS_INCLUDE_USAGE_METADATA], false),
            None
        );
        // A body Check saw cut: followed piece by piece.
        let mut x = Exchange::new();
        assert_eq!(
            request_headers_mode(
                &mut x,
                &[BODY_CUT_METADATA, ADDS_INCLUDE_USAGE_METADATA],
                false
            ),
            Some(follow_the_request_body())
        );
        // No body at all: nothing to switch.
        let mut x = Exchange::new();
        assert_eq!(request_headers_mode(&mut x, &[], true), None);
        // No word from Check (metadata not forwarded): the configured mode, which reads it.
        let mut x = Exchange::new();
        let headers = http_headers(&identity("/v1/chat/completions"), false);
        let reply = x.handle(message(In::RequestHeaders(headers))).unwrap();
        assert_eq!(reply.mode_override, None);
    }

    fn response_headers_mode(x: &mut Exchange, headers: &[(&str, &str)]) -> Option<ProcessingMode> {
        x.handle(message(In::ResponseHeaders(http_headers(headers, false))))
            .unwrap()
            .mode_override
    }

    #[test]
    fn a_small_json_answer_comes_in_one_message_and_a_stream_chunk_by_chunk() {
        let json = |length: &str| {
            let mut x = Exchange::new();
            let mode = response_headers_mode(
                &mut x,
                &[
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-length", length),
                ],
            );
            (x, mode)
        };
        let (mut x, mode) = json("60");
        assert_eq!(mode, Some(buffer_the_response()));
        x.handle(message(In::ResponseBody(body(
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            true,
        ))));
        assert!(x.response_complete());
        assert_eq!(
            json(&BUFFER_AT_MOST.to_string()).1,
            Some(buffer_the_response())
        );
        // Larger, or of unknown length: chunk by chunk, as configured.
        assert_eq!(json(&(BUFFER_AT_MOST + 1).to_string()).1, None);
        let mut x = Exchange::new();
        assert_eq!(
            response_headers_mode(
                &mut x,
                &[(":status", "200"), ("content-type", "application/json")]
            ),
            None
        );
        // An event stream passes chunk by chunk, whatever its length.
        let mut x = Exchange::new();
        assert_eq!(
            response_headers_mode(
                &mut x,
                &[
                    (":status", "200"),
                    ("content-type", "text/event-stream"),
                    ("content-length", "60")
                ],
            ),
            None
        );
    }

    #[test]
    fn observability_mode_is_not_answered() {
        let mut x = Exchange::new();
        let mut m = message(In::RequestHeaders(http_headers(&identity("/"), true)));
        m.observability_mode = true;
        assert!(x.handle(m).is_none());
    }
}
