//! Usage from a `text/event-stream` response, read incrementally as the body passes by.
//! Pure: bytes in, numbers out.
//!
//! [`SseUsage`] never keeps the stream: it holds at most one partial line (bounded by
//! [`MAX_LINE_BYTES`]; a longer line is dropped, not buffered) plus a few counters. Each
//! `data:` line is parsed as one JSON event (`data: [DONE]` and non-JSON lines only mark
//! completion or are ignored; `event:`, `id:`, `retry:` and `:` comment lines are ignored, as
//! the JSON carries its own `type`). Lines end with `\n`, `\r\n` or `\r`, split anywhere
//! across chunks.
//!
//! What each API sends:
//!
//! - **OpenAI chat/completions and completions**: every chunk carries `model`; with
//!   `stream_options.include_usage` the last chunk before `data: [DONE]` carries a non-null
//!   `usage` (the others `usage: null`, or none). Text is in `choices[].delta.content`
//!   (chat) or `choices[].text` (completions).
//! - **OpenAI Responses**: `response.created` … `response.completed` (or
//!   `response.incomplete` / `response.failed`), whose `response.usage` has the counts.
//!   Text is in the `delta` string of `response.*.delta` events.
//! - **Anthropic messages**: `message_start` carries `message.usage.input_tokens` (and the
//!   cache counts; its `output_tokens` is a placeholder), each `message_delta` carries the
//!   cumulative `usage.output_tokens` (the last one wins), `message_stop` ends the stream.
//!   Text is in `content_block_delta.delta.text`.
//!
//! Successive usage objects are merged field by field, the later value winning, and read
//! with the same rules as a JSON body (see [`super::parse`]).

use serde::Deserialize;
use serde_json::Value;

use super::parse::RawUsage;
use super::TokenUsage;

/// The longest line kept, in bytes. Generous because the Responses API's final
/// `response.completed` event repeats the whole response (output text, instructions,
/// tools) on one line; a longer line is dropped whole and the stream reads as if it had
/// not been sent.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// What a stream told about its usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseOutcome {
    /// The counts the provider reported, merged over the stream; `None` when it reported
    /// none (an OpenAI stream without `include_usage`, or one cut before its last chunk).
    /// When `complete` is false these may be partial: an Anthropic stream cut before its
    /// `message_delta` has the real input count but `message_start`'s placeholder output.
    pub usage: Option<TokenUsage>,
    /// The stream reached its end marker: `data: [DONE]` (OpenAI), `message_stop`
    /// (Anthropic), or `response.completed` / `response.incomplete` / `response.failed`
    /// (Responses).
    pub complete: bool,
    /// Output tokens estimated from the text seen: the number of characters (Unicode
    /// scalar values) of generated text in the deltas, divided by 4 and rounded up. Four
    /// characters per token is the usual rule of thumb for English with OpenAI's and
    /// Anthropic's tokenizers; it is only a fallback for streams that end early. Counted:
    /// OpenAI `choices[].delta.content`, `.refusal`, `.reasoning_content`,
    /// `.tool_calls[].function.arguments` and `choices[].text`; Anthropic
    /// `content_block_delta` `delta.text`, `.partial_json`, `.thinking`; Responses
    /// `response.*.delta` strings (not audio).
    pub estimated_output_tokens: u64,
    /// The model the provider named (the first one seen).
    pub model: Option<String>,
}

impl SseOutcome {
    /// The counts to bill and whether they are an estimate. The provider's counts as they
    /// are when the stream completed with usage; otherwise an estimate (`true`): the
    /// provider's counts if any, with output raised to `estimated_output_tokens`, or else
    /// `estimated_input_tokens` (the caller's estimate from the request) and
    /// `estimated_output_tokens`.
    pub fn tokens_or_estimate(&self, estimated_input_tokens: u64) -> (TokenUsage, bool) {
        match self.usage {
            Some(usage) if self.complete => (usage, false),
            Some(mut usage) => {
                usage.output_tokens = usage.output_tokens.max(self.estimated_output_tokens);
                (usage, true)
            }
            None => (
                TokenUsage {
                    input_tokens: estimated_input_tokens,
                    output_tokens: self.estimated_output_tokens,
                    ..TokenUsage::default()
                },
                true,
            ),
        }
    }
}

/// Incremental reader of one event stream: [`feed`](Self::feed) it every body chunk as it
/// passes, then [`finish`](Self::finish) when the body ends (or is cut).
#[derive(Debug, Clone)]
pub struct SseUsage {
    /// The current, unterminated line.
    line: Vec<u8>,
    max_line: usize,
    /// The current line outgrew `max_line`: its bytes are dropped up to its end.
    skipping: bool,
    /// The previous chunk ended with `\r`: a `\n` opening the next one ends nothing.
    after_cr: bool,
    dropped_lines: u64,
    usage: RawUsage,
    complete: bool,
    content_chars: u64,
    model: Option<String>,
}

impl Default for SseUsage {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields of an event tollgate reads; everything else is skipped. Each is a `Value` so
/// that an unexpected shape is ignored rather than failing the event; `response` is typed
/// because in `response.completed` it holds the whole answer.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Event {
    #[serde(rename = "type")]
    kind: Option<Value>,
    model: Option<Value>,
    usage: Option<Value>,
    choices: Option<Value>,
    message: Option<Value>,
    delta: Option<Value>,
    response: Option<ResponseObject>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponseObject {
    model: Option<Value>,
    usage: Option<Value>,
}

impl SseUsage {
    pub fn new() -> Self {
        Self::with_max_line(MAX_LINE_BYTES)
    }

    /// A reader that drops lines longer than `max_line` bytes.
    pub fn with_max_line(max_line: usize) -> Self {
        SseUsage {
            line: Vec::new(),
            max_line,
            skipping: false,
            after_cr: false,
            dropped_lines: 0,
            usage: RawUsage::default(),
            complete: false,
            content_chars: 0,
            model: None,
        }
    }

    /// Lines dropped so far for being longer than the limit.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// Reads the next piece of the body, split anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.after_cr = false;
        }
        while !rest.is_empty() {
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.append(rest);
                return;
            };
            let (part, tail) = rest.split_at(end);
            if self.line.is_empty() && !self.skipping {
                // The whole line is in this chunk: read it in place.
                if part.len() <= self.max_line {
                    self.line_done(part);
                } else {
                    self.dropped_lines += 1;
                }
            } else {
                self.append(part);
                self.end_buffered_line();
            }
            rest = match tail {
                [b'\r', b'\n', more @ ..] => more,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, more @ ..] => more,
                [] => &[],
            };
        }
    }

    /// The outcome, reading a last line the stream did not terminate.
    pub fn finish(mut self) -> SseOutcome {
        if !self.skipping && !self.line.is_empty() {
            self.end_buffered_line();
        }
        SseOutcome {
            usage: self.usage.to_usage(),
            complete: self.complete,
            estimated_output_tokens: self.content_chars.div_ceil(4),
            model: self.model,
        }
    }

    fn append(&mut self, part: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + part.len() > self.max_line {
            self.line = Vec::new();
            self.skipping = true;
            self.dropped_lines += 1;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_buffered_line(&mut self) {
        if self.skipping {
            self.skipping = false;
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.line_done(&line);
        // Keep the allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    fn line_done(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data.trim_ascii() == b"[DONE]" {
            self.complete = true;
            return;
        }
        if let Ok(event) = serde_json::from_slice::<Event>(data) {
            self.event(event);
        }
    }

    fn event(&mut self, event: Event) {
        let kind = event.kind.as_ref().and_then(Value::as_str).unwrap_or("");
        match kind {
            "message_stop" | "response.completed" | "response.incomplete" | "response.failed" => {
                self.complete = true
            }
            _ => {}
        }

        self.note_model(event.model.as_ref());
        self.note_usage(event.usage.as_ref());
        if let Some(message) = &event.message {
            self.note_model(message.get("model"));
            self.note_usage(message.get("usage"));
        }
        if let Some(response) = &event.response {
            self.note_model(response.model.as_ref());
            self.note_usage(response.usage.as_ref());
        }

        // Generated text, for the estimate.
        if let Some(Value::Array(choices)) = &event.choices {
            for choice in choices {
                self.count_text(choice.get("text"));
                if let Some(delta) = choice.get("delta") {
                    for field in ["content", "refusal", "reasoning_content"] {
                        self.count_text(delta.get(field));
                    }
                    if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                        for call in calls {
                            self.count_text(call.pointer("/function/arguments"));
                        }
                    }
                }
            }
        }
        if let Some(delta) = &event.delta {
            if kind == "content_block_delta" {
                for field in ["text", "partial_json", "thinking"] {
                    self.count_text(delta.get(field));
                }
            } else if kind.starts_with("response.")
                && kind.ends_with(".delta")
                && !kind.contains("audio")
            {
                self.count_text(Some(delta));
            }
        }
    }

    fn note_model(&mut self, model: Option<&Value>) {
        if self.model.is_none() {
            if let Some(model) = model.and_then(Value::as_str).filter(|m| !m.is_empty()) {
                self.model = Some(model.to_owned());
            }
        }
    }

    fn note_usage(&mut self, usage: Option<&Value>) {
        if let Some(usage @ Value::Object(_)) = usage {
            if let Ok(raw) = RawUsage::deserialize(usage) {
                self.usage.merge(&raw);
            }
        }
    }

    fn count_text(&mut self, text: Option<&Value>) {
        if let Some(Value::String(text)) = text {
            self.content_chars = self
                .content_chars
                .saturating_add(text.chars().count() as u64);
        }
    }
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

    fn read_whole(stream: &[u8]) -> SseOutcome {
        let mut reader = SseUsage::new();
        reader.feed(stream);
        reader.finish()
    }

    fn read_bytewise(stream: &[u8]) -> SseOutcome {
        let mut reader = SseUsage::new();
        for b in stream {
            reader.feed(std::slice::from_ref(b));
        }
        reader.finish()
    }

    /// Feeds the stream in pieces of pseudo-random sizes (empty ones included).
    fn read_split(stream: &[u8], seed: u64) -> SseOutcome {
        let mut state = seed | 1;
        let mut reader = SseUsage::new();
        let mut rest = stream;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (state % 40) as usize;
            let n = n.min(rest.len());
            reader.feed(&rest[..n]);
            rest = &rest[n..];
        }
        reader.finish()
    }

    /// Reads the stream whole, byte by byte, in random splits, with `\r\n` and with `\r`
    /// line endings, and checks every reading agrees.
    fn read_every_way(stream: &[u8]) -> SseOutcome {
        let whole = read_whole(stream);
        assert_eq!(read_bytewise(stream), whole, "byte by byte");
        for seed in 1..=50 {
            assert_eq!(read_split(stream, seed), whole, "split with seed {seed}");
        }
        let text = std::str::from_utf8(stream).unwrap();
        for ending in ["\r\n", "\r"] {
            let other = text.replace('\n', ending);
            assert_eq!(read_whole(other.as_bytes()), whole, "{ending:?}");
            assert_eq!(
                read_bytewise(other.as_bytes()),
                whole,
                "{ending:?} bytewise"
            );
            for seed in 1..=10 {
                assert_eq!(
                    read_split(other.as_bytes(), seed),
                    whole,
                    "{ending:?} split"
                );
            }
        }
        whole
    }

    #[test]
    fn openai_chat_stream_with_usage_and_details() {
        // A real-world stream (include_usage on), `data:` written without a space on some
        // lines and with a keep-alive comment.
        let stream = concat!(
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"o4-mini-2025-04-16\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n",
            ": keep-alive\n\n",
            "data:{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"o4-mini-2025-04-16\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Héllo, wörld\"},\"finish_reason\":null}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"o4-mini-2025-04-16\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"o4-mini-2025-04-16\",\"choices\":[],\"usage\":{\"prompt_tokens\":2006,\"completion_tokens\":300,\"total_tokens\":2306,\"prompt_tokens_details\":{\"cached_tokens\":1920,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":256,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
            "data: [DONE]\n\n",
        );
        let outcome = read_every_way(stream.as_bytes());
        assert_eq!(
            outcome,
            SseOutcome {
                usage: Some(usage(2006, 300, 1920, 256)),
                complete: true,
                // "Héllo, wörld" is 12 characters (14 bytes).
                estimated_output_tokens: 3,
                model: Some("o4-mini-2025-04-16".to_owned()),
            }
        );
        assert_eq!(
            outcome.tokens_or_estimate(99),
            (usage(2006, 300, 1920, 256), false)
        );
    }

    #[test]
    fn openai_tool_call_arguments_count_towards_the_estimate() {
        let stream = concat!(
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]}}]}\n\n",
        );
        let outcome = read_every_way(stream.as_bytes());
        // `{"city":"Paris"}` is 16 characters.
        assert_eq!(outcome.estimated_output_tokens, 4);
        assert_eq!(outcome.usage, None);
        assert!(!outcome.complete);
        assert_eq!(outcome.tokens_or_estimate(10), (usage(10, 4, 0, 0), true));
    }

    #[test]
    fn anthropic_stream_with_cache_and_cumulative_deltas() {
        // A real-world stream: cache counts in message_start, and a newer-API
        // message_delta that repeats the input counts next to the final output.
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n",
            "event: ping\n",
            "data: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello!\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":42}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let outcome = read_every_way(stream.as_bytes());
        assert_eq!(
            outcome,
            SseOutcome {
                usage: Some(usage(2125, 42, 2000, 0)),
                complete: true,
                // "Let me think" (12) + "Hello!" (6) = 18 characters; signatures don't count.
                estimated_output_tokens: 5,
                model: Some("claude-sonnet-4-20250514".to_owned()),
            }
        );
    }

    #[test]
    fn anthropic_stream_cut_after_message_start_keeps_the_input() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-5-haiku-latest\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Once upon a time\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_de",
        );
        let outcome = read_every_way(stream.as_bytes());
        assert_eq!(
            outcome,
            SseOutcome {
                usage: Some(usage(40, 1, 0, 0)),
                complete: false,
                estimated_output_tokens: 4,
                model: Some("claude-3-5-haiku-latest".to_owned()),
            }
        );
        assert_eq!(outcome.tokens_or_estimate(7), (usage(40, 4, 0, 0), true));
    }

    #[test]
    fn responses_stream_with_details() {
        let stream = concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"o3-2025-04-16\",\"output\":[],\"usage\":null}}\n\n",
            "event: response.reasoning_summary_text.delta\n",
            "data: {\"type\":\"response.reasoning_summary_text.delta\",\"sequence_number\":1,\"item_id\":\"rs_1\",\"output_index\":0,\"summary_index\":0,\"delta\":\"Thinking\"}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\"Hi there\"}\n\n",
            "event: response.output_text.done\n",
            "data: {\"type\":\"response.output_text.done\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"text\":\"Hi there\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"sequence_number\":4,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"o3-2025-04-16\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there\"}]}],\"usage\":{\"input_tokens\":5000,\"input_tokens_details\":{\"cached_tokens\":4096},\"output_tokens\":900,\"output_tokens_details\":{\"reasoning_tokens\":832},\"total_tokens\":5900}}}\n\n",
        );
        let outcome = read_every_way(stream.as_bytes());
        assert_eq!(
            outcome,
            SseOutcome {
                usage: Some(usage(5000, 900, 4096, 832)),
                complete: true,
                // "Thinking" (8) + "Hi there" (8).
                estimated_output_tokens: 4,
                model: Some("o3-2025-04-16".to_owned()),
            }
        );
    }

    #[test]
    fn a_last_line_without_newline_is_read() {
        let outcome = read_every_way(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
        );
        assert_eq!(outcome.usage, Some(usage(1, 2, 0, 0)));
        assert!(!outcome.complete);
    }

    #[test]
    fn garbage_is_ignored() {
        let stream = concat!(
            "data: not json\n\n",
            "data: {\"usage\": \"many\"}\n\n",
            "data: {\"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 4}, \"model\": 5}\n\n",
            "data: [1, 2]\n\n",
            "data:\n\n",
            "retry: 100\n",
            "id: 7\n",
            "datum: [DONE]\n\n",
            "\n\n\n",
        );
        let outcome = read_every_way(stream.as_bytes());
        assert_eq!(
            outcome,
            SseOutcome {
                usage: Some(usage(3, 4, 0, 0)),
                complete: false,
                estimated_output_tokens: 0,
                model: None,
            }
        );
        assert_eq!(read_whole(b""), SseOutcome::default());
    }

    #[test]
    fn over_long_lines_are_dropped_and_memory_stays_bounded() {
        let long = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n",
            "x".repeat(1000)
        );
        let tail =
            "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let stream = format!("{long}\n{tail}");

        let mut whole = SseUsage::with_max_line(100);
        whole.feed(stream.as_bytes());
        assert_eq!(whole.dropped_lines(), 1);
        let whole = whole.finish();
        assert_eq!(
            whole,
            SseOutcome {
                usage: Some(usage(1, 2, 0, 0)),
                complete: true,
                estimated_output_tokens: 0,
                model: None,
            }
        );

        let mut pieces = SseUsage::with_max_line(100);
        for piece in stream.as_bytes().chunks(7) {
            pieces.feed(piece);
            assert!(pieces.line.len() <= 100);
        }
        assert_eq!(pieces.dropped_lines(), 1);
        assert_eq!(pieces.finish(), whole);

        // A never-ending line is dropped too, without growing the buffer.
        let mut endless = SseUsage::with_max_line(100);
        for _ in 0..1000 {
            endless.feed(b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            assert!(endless.line.len() <= 100);
        }
        assert_eq!(endless.finish(), SseOutcome::default());
    }

    #[test]
    fn without_usage_the_estimate_stands_in() {
        let outcome = SseOutcome {
            usage: None,
            complete: true,
            estimated_output_tokens: 9,
            model: None,
        };
        assert_eq!(outcome.tokens_or_estimate(3), (usage(3, 9, 0, 0), true));
    }

    // Against the streams the project's mock upstream really answers.
    mod mock {
        use super::*;
        use crate::mock_llm::{router, MockState};
        use axum::body::Body;
        use axum::http::Request;
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        async fn stream(path: &str, request: Value) -> Vec<u8> {
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
            let content_type = response.headers()["content-type"].to_str().unwrap();
            assert!(
                content_type.starts_with("text/event-stream"),
                "{content_type}"
            );
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        }

        // The mock answers "The quick brown fox jumps over the dog." cycled; the first
        // five words with their separating spaces are 25 characters (7 tokens), the first
        // twelve 59 (15 tokens).

        #[tokio::test]
        async fn chat_with_include_usage() {
            let body = stream(
                "/v1/chat/completions",
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "one two three"}],
                       "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}),
            )
            .await;
            assert_eq!(
                read_every_way(&body),
                SseOutcome {
                    usage: Some(usage(3, 5, 0, 0)),
                    complete: true,
                    estimated_output_tokens: 7,
                    model: Some("gpt-4o".to_owned()),
                }
            );
        }

        #[tokio::test]
        async fn chat_without_include_usage() {
            let body = stream(
                "/v1/chat/completions",
                json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
            )
            .await;
            let outcome = read_every_way(&body);
            assert_eq!(
                outcome,
                SseOutcome {
                    usage: None,
                    complete: true,
                    estimated_output_tokens: 15,
                    model: Some("gpt-4o-mini".to_owned()),
                }
            );
            assert_eq!(outcome.tokens_or_estimate(1), (usage(1, 15, 0, 0), true));
        }

        #[tokio::test]
        async fn chat_after_add_include_usage() {
            let request = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a b"}], "stream": true});
            let rewritten =
                crate::usage::parse::add_include_usage(&serde_json::to_vec(&request).unwrap())
                    .unwrap();
            let body = stream(
                "/v1/chat/completions",
                serde_json::from_slice(&rewritten).unwrap(),
            )
            .await;
            assert_eq!(read_every_way(&body).usage, Some(usage(2, 12, 0, 0)));
        }

        #[tokio::test]
        async fn chat_cut_short() {
            let body = stream(
                "/v1/chat/completions",
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                       "stream": true, "stream_options": {"include_usage": true}}),
            )
            .await;
            // Up to and including the third word's chunk: "The quick brown" is 15 chars.
            let text = String::from_utf8(body).unwrap();
            let cut = text.find("\" fox\"").unwrap();
            let outcome = read_every_way(&text.as_bytes()[..cut]);
            assert_eq!(
                outcome,
                SseOutcome {
                    usage: None,
                    complete: false,
                    estimated_output_tokens: 4,
                    model: Some("gpt-4o".to_owned()),
                }
            );
        }

        #[tokio::test]
        async fn completions_with_include_usage() {
            let body = stream(
                "/v1/completions",
                json!({"model": "gpt-3.5-turbo-instruct", "prompt": "a b c d", "max_tokens": 5,
                       "stream": true, "stream_options": {"include_usage": true}}),
            )
            .await;
            assert_eq!(
                read_every_way(&body),
                SseOutcome {
                    usage: Some(usage(4, 5, 0, 0)),
                    complete: true,
                    estimated_output_tokens: 7,
                    model: Some("gpt-3.5-turbo-instruct".to_owned()),
                }
            );
        }

        #[tokio::test]
        async fn responses() {
            let body = stream(
                "/v1/responses",
                json!({"model": "gpt-4o", "input": "x y", "instructions": "z",
                       "max_output_tokens": 5, "stream": true}),
            )
            .await;
            assert_eq!(
                read_every_way(&body),
                SseOutcome {
                    usage: Some(usage(3, 5, 0, 0)),
                    complete: true,
                    estimated_output_tokens: 7,
                    model: Some("gpt-4o".to_owned()),
                }
            );
        }

        #[tokio::test]
        async fn messages() {
            let body = stream(
                "/v1/messages",
                json!({"model": "claude-3-5-sonnet-latest", "system": "be nice",
                       "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5, "stream": true}),
            )
            .await;
            assert_eq!(
                read_every_way(&body),
                SseOutcome {
                    usage: Some(usage(3, 5, 0, 0)),
                    complete: true,
                    estimated_output_tokens: 7,
                    model: Some("claude-3-5-sonnet-latest".to_owned()),
                }
            );
        }
    }
}
