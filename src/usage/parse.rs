//! Usage from a complete JSON response body, and the request-side helpers that make a
//! streaming response carry usage at all. Pure: bytes in, numbers out.
//!
//! The `usage` object of three API families is understood:
//!
//! - **OpenAI chat/completions, completions, embeddings**: `prompt_tokens`,
//!   `completion_tokens` (absent for embeddings: 0), `prompt_tokens_details.cached_tokens`,
//!   `completion_tokens_details.reasoning_tokens`.
//! - **OpenAI Responses** (`/v1/responses`): `input_tokens`, `output_tokens`,
//!   `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens`.
//! - **Anthropic messages**: `input_tokens`, `output_tokens`, `cache_read_input_tokens`,
//!   `cache_creation_input_tokens`. Anthropic's `input_tokens` counts only the tokens *after*
//!   the last cache breakpoint, so [`TokenUsage::input_tokens`] is
//!   `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` (every prompt
//!   token, as for OpenAI) and [`TokenUsage::cached_input_tokens`] is
//!   `cache_read_input_tokens`. Cache writes are billed as ordinary input.
//!
//! Bodies are read with serde structs that skip every other field, so a large body (an
//! embeddings answer, a long completion) is scanned once without building a JSON tree.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::TokenUsage;

/// The union of the `usage` fields of every supported API; each count is `None` when absent
/// (or null, negative, or not a number). Shared with the stream parser, which merges the
/// partial usage objects of successive events with [`RawUsage::merge`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct RawUsage {
    // OpenAI chat/completions/embeddings.
    #[serde(deserialize_with = "count")]
    pub prompt_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub completion_tokens: Option<u64>,
    #[serde(deserialize_with = "details")]
    pub prompt_tokens_details: Details,
    #[serde(deserialize_with = "details")]
    pub completion_tokens_details: Details,
    // OpenAI Responses and Anthropic.
    #[serde(deserialize_with = "count")]
    pub input_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub output_tokens: Option<u64>,
    #[serde(deserialize_with = "details")]
    pub input_tokens_details: Details,
    #[serde(deserialize_with = "details")]
    pub output_tokens_details: Details,
    // Anthropic.
    #[serde(deserialize_with = "count")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub cache_creation_input_tokens: Option<u64>,
}

/// `*_tokens_details`: only the two counts tollgate uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct Details {
    #[serde(deserialize_with = "count")]
    pub cached_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub reasoning_tokens: Option<u64>,
}

impl Details {
    fn merge(&mut self, later: &Details) {
        merge_field(&mut self.cached_tokens, later.cached_tokens);
        merge_field(&mut self.reasoning_tokens, later.reasoning_tokens);
    }
}

fn merge_field(into: &mut Option<u64>, later: Option<u64>) {
    if later.is_some() {
        *into = later;
    }
}

impl RawUsage {
    /// Takes every count `later` has; keeps the others. Anthropic streams report input in
    /// `message_start` and the cumulative output in `message_delta`; merging gives the whole.
    pub(crate) fn merge(&mut self, later: &RawUsage) {
        merge_field(&mut self.prompt_tokens, later.prompt_tokens);
        merge_field(&mut self.completion_tokens, later.completion_tokens);
        self.prompt_tokens_details
            .merge(&later.prompt_tokens_details);
        self.completion_tokens_details
            .merge(&later.completion_tokens_details);
        merge_field(&mut self.input_tokens, later.input_tokens);
        merge_field(&mut self.output_tokens, later.output_tokens);
        self.input_tokens_details.merge(&later.input_tokens_details);
        self.output_tokens_details
            .merge(&later.output_tokens_details);
        merge_field(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
        merge_field(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
    }

    /// The counts, when the object carries at least one of the four main ones
    /// (`prompt_tokens`, `completion_tokens`, `input_tokens`, `output_tokens`); an empty or
    /// unrelated object is no usage.
    ///
    /// The OpenAI names win when both spellings are present. The cached and reasoning counts
    /// are clamped to the input and output counts, so that `TokenUsage`'s "of" invariants
    /// hold whatever the provider sent.
    pub(crate) fn to_usage(&self) -> Option<TokenUsage> {
        if self.prompt_tokens.is_none()
            && self.completion_tokens.is_none()
            && self.input_tokens.is_none()
            && self.output_tokens.is_none()
        {
            return None;
        }
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        let input = match self.prompt_tokens {
            Some(prompt) => prompt,
            None => self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(cache_read)
                .saturating_add(cache_write),
        };
        let output = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let cached = self
            .prompt_tokens_details
            .cached_tokens
            .or(self.input_tokens_details.cached_tokens)
            .or(self.cache_read_input_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .reasoning_tokens
            .or(self.output_tokens_details.reasoning_tokens)
            .unwrap_or(0);
        Some(TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached.min(input),
            reasoning_tokens: reasoning.min(output),
        })
    }
}

/// A token count: a non-negative integer (or an integral float, as some OpenAI-compatible
/// servers send). Null, negative, fractional and non-numeric values read as absent rather
/// than failing the whole body.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct CountVisitor;

    impl<'de> Visitor<'de> for CountVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a token count")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(v).ok())
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            let integral = v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1.8e19;
            Ok(integral.then_some(v as u64))
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    deserializer.deserialize_any(CountVisitor)
}

/// A `*_tokens_details` object; null or a non-object reads as empty.
fn details<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Details, D::Error> {
    struct DetailsVisitor;

    impl<'de> Visitor<'de> for DetailsVisitor {
        type Value = Details;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a token details object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Details::deserialize(de::value::MapAccessDeserializer::new(map))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Details::default())
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Details::default())
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Details::default())
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Details::default())
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Details::default())
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Details::default())
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Details::default())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Details::default())
        }
    }

    deserializer.deserialize_any(DetailsVisitor)
}

/// Whether the body is a JSON object at all: serde's derived structs would also accept an
/// array, field by field in order.
fn looks_like_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

/// The top level of a response body, reading only `usage`.
#[derive(Deserialize)]
struct UsageEnvelope {
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// The top level of a response body, reading only `model`.
#[derive(Deserialize)]
struct ModelEnvelope {
    #[serde(default)]
    model: Option<String>,
}

/// The token counts of a complete (non-streaming) JSON response body, from its top-level
/// `usage` object in any of the shapes of the module docs. `None` when the body is not a
/// JSON object, has no `usage` (or a null one), or its `usage` carries none of
/// `prompt_tokens`, `completion_tokens`, `input_tokens`, `output_tokens`.
pub fn from_json(body: &[u8]) -> Option<TokenUsage> {
    if !looks_like_object(body) {
        return None;
    }
    let envelope: UsageEnvelope = serde_json::from_slice(body).ok()?;
    envelope.usage?.to_usage()
}

/// The `model` a JSON response body names (providers answer with the model that served the
/// request, which may be a dated version of the one asked for). `None` when absent, empty or
/// not a string, or when the body is not a JSON object.
pub fn model_from_json(body: &[u8]) -> Option<String> {
    if !looks_like_object(body) {
        return None;
    }
    let envelope: ModelEnvelope = serde_json::from_slice(body).ok()?;
    envelope.model.filter(|m| !m.is_empty())
}

/// The request body with `stream_options.include_usage: true` added, so that an OpenAI
/// stream ends with a chunk that carries usage; `None` when nothing needs to change.
///
/// It acts only on a JSON object with `"stream": true` whose `stream_options.include_usage`
/// is not already `true`: it keeps every other field, and every other `stream_options`
/// field, and re-serialises the body compactly (serde_json is built without
/// `preserve_order`, so key order may change; JSON objects are unordered). An explicit
/// `include_usage: false` is overridden: the client then receives one extra final chunk
/// with empty `choices`, which OpenAI clients must accept anyway. It returns `None` for a
/// body that does not stream, already asks for usage, is not JSON, or has a
/// `stream_options` that is present but not an object (the upstream will reject that
/// request itself; tollgate does not repair it).
///
/// Safe to call on any body in the sense that it never touches a non-streaming one, but
/// only OpenAI chat/completions and completions understand `stream_options.include_usage`:
/// Anthropic messages streams always carry usage (`message_start`/`message_delta`), and
/// the Responses API reports it in `response.completed`. Those APIs validate their request
/// fields, so call this only for the routes [`include_usage_applies`] accepts.
pub fn add_include_usage(request_body: &[u8]) -> Option<Vec<u8>> {
    if !looks_like_object(request_body) {
        return None;
    }
    let mut body: Map<String, Value> = serde_json::from_slice(request_body).ok()?;
    if !lacks_include_usage(body.get("stream"), body.get("stream_options")) {
        return None;
    }
    match body.get_mut("stream_options") {
        Some(Value::Object(options)) => {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }
        _ => {
            let mut options = Map::new();
            options.insert("include_usage".to_owned(), Value::Bool(true));
            body.insert("stream_options".to_owned(), Value::Object(options));
        }
    }
    serde_json::to_vec(&body).ok()
}

/// Whether a request body with these top-level `stream` and `stream_options` members is
/// one [`add_include_usage`] changes: `"stream": true`, and `stream_options` absent, null,
/// or an object whose `include_usage` is not `true`. Check reads the same members in its one
/// pass over the body and tells ext_proc, which then skips the request body of every
/// request this is false for.
pub fn lacks_include_usage(stream: Option<&Value>, stream_options: Option<&Value>) -> bool {
    if stream != Some(&Value::Bool(true)) {
        return false;
    }
    match stream_options {
        None | Some(Value::Null) => true,
        Some(Value::Object(options)) => options.get("include_usage") != Some(&Value::Bool(true)),
        Some(_) => false,
    }
}

/// Whether [`add_include_usage`] applies to a request path: OpenAI's `/chat/completions`
/// and `/completions` (under any prefix, e.g. `/v1/` or `/openai/deployments/x/`), query
/// string ignored. Anthropic `/messages` and the `/responses` API report usage in every
/// stream and may reject an unknown `stream_options.include_usage`.
pub fn include_usage_applies(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    path.ends_with("/completions")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(input: u64, output: u64, cached: u64, reasoning: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            reasoning_tokens: reasoning,
        }
    }

    fn bytes(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn openai_chat_with_cached_and_reasoning_tokens() {
        // A real-world o-series chat completion.
        let body = br#"{
          "id": "chatcmpl-abc123",
          "object": "chat.completion",
          "created": 1741570283,
          "model": "o3-mini-2025-01-31",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
          "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 946,
            "total_tokens": 2063,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 704, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
          },
          "service_tier": "default",
          "system_fingerprint": "fp_7fcd609668"
        }"#;
        assert_eq!(from_json(body), Some(usage(1117, 946, 1024, 704)));
        assert_eq!(model_from_json(body).as_deref(), Some("o3-mini-2025-01-31"));
    }

    #[test]
    fn openai_chat_without_details_and_with_null_details() {
        let body = bytes(json!({
            "model": "gpt-3.5-turbo",
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        }));
        assert_eq!(from_json(&body), Some(usage(9, 12, 0, 0)));
        let body = bytes(json!({
            "usage": {"prompt_tokens": 9, "completion_tokens": 12,
                      "prompt_tokens_details": null, "completion_tokens_details": null},
        }));
        assert_eq!(from_json(&body), Some(usage(9, 12, 0, 0)));
    }

    #[test]
    fn openai_embeddings_have_no_completion_tokens() {
        let body = bytes(json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }));
        assert_eq!(from_json(&body), Some(usage(8, 0, 0, 0)));
        assert_eq!(
            model_from_json(&body).as_deref(),
            Some("text-embedding-3-small")
        );
    }

    #[test]
    fn openai_responses_api() {
        let body = bytes(json!({
            "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
            "object": "response",
            "created_at": 1741476777,
            "status": "completed",
            "model": "o3-2025-04-16",
            "output": [{"type": "reasoning", "id": "rs_1", "summary": []}],
            "usage": {
                "input_tokens": 3000,
                "input_tokens_details": {"cached_tokens": 2048},
                "output_tokens": 500,
                "output_tokens_details": {"reasoning_tokens": 384},
                "total_tokens": 3500,
            },
        }));
        assert_eq!(from_json(&body), Some(usage(3000, 500, 2048, 384)));
        assert_eq!(model_from_json(&body).as_deref(), Some("o3-2025-04-16"));
    }

    #[test]
    fn anthropic_messages_count_cache_reads_and_writes_as_input() {
        let body = bytes(json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-20250514",
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 21,
                "cache_creation_input_tokens": 188,
                "cache_read_input_tokens": 1500,
                "cache_creation": {"ephemeral_5m_input_tokens": 188, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 393,
                "service_tier": "standard",
                "server_tool_use": {"web_search_requests": 1},
            },
        }));
        // 21 + 188 + 1500 input, of which the 1500 cache reads are cached.
        assert_eq!(from_json(&body), Some(usage(1709, 393, 1500, 0)));
        assert_eq!(
            model_from_json(&body).as_deref(),
            Some("claude-sonnet-4-20250514")
        );
    }

    #[test]
    fn missing_or_invalid_usage_is_none() {
        assert_eq!(from_json(b""), None);
        assert_eq!(from_json(b"not json"), None);
        assert_eq!(from_json(b"[1,2]"), None);
        assert_eq!(from_json(br#"[{"prompt_tokens":1}]"#), None);
        assert_eq!(from_json(br#"{"model":"x"}"#), None);
        assert_eq!(from_json(br#"{"usage":null}"#), None);
        assert_eq!(from_json(br#"{"usage":{}}"#), None);
        assert_eq!(from_json(br#"{"usage":"lots"}"#), None);
        assert_eq!(from_json(br#"{"usage":{"total_tokens":5}}"#), None);
        // An error body.
        assert_eq!(
            from_json(
                br#"{"error":{"message":"x","type":"server_error","param":null,"code":null}}"#
            ),
            None
        );
        // Truncated.
        assert_eq!(
            from_json(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}"#),
            None
        );
    }

    #[test]
    fn odd_counts_read_as_absent_without_failing_the_body() {
        let body = br#"{"usage":{"prompt_tokens":10.0,"completion_tokens":-1,
            "prompt_tokens_details":{"cached_tokens":"x"},"completion_tokens_details":7}}"#;
        assert_eq!(from_json(body), Some(usage(10, 0, 0, 0)));
        // Cached and reasoning counts never exceed what they are part of.
        let body = br#"{"usage":{"prompt_tokens":5,"completion_tokens":2,
            "prompt_tokens_details":{"cached_tokens":9},
            "completion_tokens_details":{"reasoning_tokens":3}}}"#;
        assert_eq!(from_json(body), Some(usage(5, 2, 5, 2)));
    }

    #[test]
    fn model_is_a_non_empty_string_or_none() {
        assert_eq!(model_from_json(br#"{"model":""}"#), None);
        assert_eq!(model_from_json(br#"{"model":4}"#), None);
        assert_eq!(model_from_json(br#"{"id":"x"}"#), None);
        assert_eq!(model_from_json(b"nope"), None);
        assert_eq!(model_from_json(br#"["gpt-4o"]"#), None);
    }

    #[test]
    fn only_stream_true_is_a_stream() {
        let streams = |body: &[u8]| add_include_usage(body).is_some();
        assert!(streams(br#"{"model":"m","stream":true}"#));
        assert!(!streams(br#"{"model":"m","stream":false}"#));
        assert!(!streams(br#"{"model":"m"}"#));
        assert!(!streams(br#"{"model":"m","stream":"true"}"#));
        assert!(!streams(br#"{"stream":null}"#));
        assert!(!streams(b"[true]"));
        assert!(!streams(b""));
        // Only the top level counts.
        assert!(!streams(br#"{"metadata":{"stream":true}}"#));
        // A repeated member: the last one, as the upstream's parser keeps it.
        assert!(streams(br#"{"stream":false,"stream":true}"#));
        assert!(!streams(br#"{"stream":true,"stream":false}"#));
    }

    #[test]
    fn include_usage_is_added_to_streaming_requests() {
        let body = bytes(json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true,
            "temperature": 0.5,
        }));
        let out: Value = serde_json::from_slice(&add_include_usage(&body).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true,
                "temperature": 0.5,
                "stream_options": {"include_usage": true},
            })
        );
        // The result needs nothing more.
        assert_eq!(add_include_usage(&serde_json::to_vec(&out).unwrap()), None);
    }

    #[test]
    fn include_usage_keeps_other_stream_options_and_overrides_false() {
        let body = bytes(json!({
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": false, "include_obfuscation": false},
        }));
        let out: Value = serde_json::from_slice(&add_include_usage(&body).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "gpt-4o",
                "stream": true,
                "stream_options": {"include_usage": true, "include_obfuscation": false},
            })
        );
        let body = bytes(json!({"stream": true, "stream_options": null}));
        let out: Value = serde_json::from_slice(&add_include_usage(&body).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn include_usage_leaves_other_bodies_alone() {
        assert_eq!(add_include_usage(br#"{"model":"m"}"#), None);
        assert_eq!(add_include_usage(br#"{"model":"m","stream":false}"#), None);
        assert_eq!(
            add_include_usage(
                br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
            ),
            None
        );
        assert_eq!(
            add_include_usage(br#"{"model":"m","stream":true,"stream_options":"x"}"#),
            None
        );
        assert_eq!(add_include_usage(b"not json"), None);
        assert_eq!(add_include_usage(b"[]"), None);
    }

    #[test]
    fn include_usage_applies_to_openai_generation_routes() {
        assert!(include_usage_applies("/v1/chat/completions"));
        assert!(include_usage_applies("/v1/completions"));
        assert!(include_usage_applies("/v1/chat/completions?x=1"));
        assert!(include_usage_applies(
            "/openai/deployments/gpt4/chat/completions"
        ));
        assert!(!include_usage_applies("/v1/messages"));
        assert!(!include_usage_applies("/v1/responses"));
        assert!(!include_usage_applies("/v1/embeddings"));
    }

    // Against the bodies the project's mock upstream really answers.
    mod mock {
        use super::*;
        use crate::mock_llm::{router, MockState};
        use axum::body::Body;
        use axum::http::Request;
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        pub(crate) async fn answer(path: &str, request: Value) -> Vec<u8> {
            let app = router(MockState::default());
            let response = app
                .oneshot(
                    Request::post(path)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&request).unwrap()))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        }

        #[tokio::test]
        async fn chat_completions() {
            let body = answer(
                "/v1/chat/completions",
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}),
            )
            .await;
            assert_eq!(from_json(&body), Some(usage(3, 5, 0, 0)));
            assert_eq!(model_from_json(&body).as_deref(), Some("gpt-4o"));
        }

        #[tokio::test]
        async fn completions() {
            let body = answer(
                "/v1/completions",
                json!({"model": "gpt-3.5-turbo-instruct", "prompt": "a b c d"}),
            )
            .await;
            assert_eq!(from_json(&body), Some(usage(4, 12, 0, 0)));
        }

        #[tokio::test]
        async fn embeddings() {
            let body = answer(
                "/v1/embeddings",
                json!({"model": "text-embedding-3-small", "input": ["a b", "c"]}),
            )
            .await;
            assert_eq!(from_json(&body), Some(usage(3, 0, 0, 0)));
            assert_eq!(
                model_from_json(&body).as_deref(),
                Some("text-embedding-3-small")
            );
        }

        #[tokio::test]
        async fn responses() {
            let body = answer(
                "/v1/responses",
                json!({"model": "gpt-4o", "input": "x y", "instructions": "z", "max_output_tokens": 7}),
            )
            .await;
            assert_eq!(from_json(&body), Some(usage(3, 7, 0, 0)));
        }

        #[tokio::test]
        async fn messages() {
            let body = answer(
                "/v1/messages",
                json!({"model": "claude-3-5-sonnet-latest", "system": "be nice",
                       "messages": [{"role": "user", "content": "hello"}], "max_tokens": 9}),
            )
            .await;
            assert_eq!(from_json(&body), Some(usage(3, 9, 0, 0)));
            assert_eq!(
                model_from_json(&body).as_deref(),
                Some("claude-3-5-sonnet-latest")
            );
        }
    }
}
