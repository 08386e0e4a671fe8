//! Reading what the decision needs from the request body Envoy forwards.
//!
//! A complete body is parsed as JSON (fields other than `model` and the output-token caps
//! are skipped, not built). A body Envoy cut at `max_request_bytes`
//! (`x-envoy-auth-partial-body: true`, or a `content-length` larger than what arrived) is
//! followed by [`TopLevel`] from the front for its top-level `"model"` members: clients put
//! `model` first in practice, so large prompts still get a model check without tollgate
//! ever holding the whole body.
//!
//! **One model.** The model checked must be the model the upstream serves. JSON parsers
//! disagree on duplicate members (most keep the last, tollgate's scanner sees the first),
//! and some (Go's `encoding/json`) match member names ignoring case, so a body with more
//! than one top-level member named `model` in any ASCII case is [`ModelField::Duplicate`],
//! refused whole or cut. The rest of a cut body is checked by the ext_proc filter, which
//! follows the whole body with the same [`TopLevel`] (src/usage/ext_proc.rs).

use crate::decision::ModelField;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

const CUT_BEFORE_MODEL: &str = "the body was cut at the forwarding limit before a `model` field";
const NOT_JSON: &str = "the body is not a valid JSON object";

/// The longest raw member name that can still decode to `model` (`\u006d` is six bytes).
const MAX_MODEL_KEY_BYTES: usize = 5 * 6;
/// The longest model name read; longer is no model anyone serves, and is refused whole or
/// cut alike.
const MAX_MODEL_BYTES: usize = 4096;
const MODEL_TOO_LONG: &str = "the `model` is longer than 4096 bytes";

/// What the decision reads from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    pub model: ModelField,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, when the body sets one
    /// (not read from a body Envoy cut).
    pub max_output_tokens: Option<u64>,
    /// A stream that does not ask for usage (`"stream": true` without
    /// `stream_options.include_usage: true`): on OpenAI's completion routes ext_proc adds
    /// the option ([`crate::usage::parse::lacks_include_usage`]). Not read from a body
    /// Envoy cut.
    pub lacks_include_usage: bool,
}

/// The `model` of a request body.
pub fn model_field(body: &[u8], truncated: bool) -> ModelField {
    read(body, truncated).model
}

/// The facts of a request body: its model and output-token cap.
pub fn read(body: &[u8], truncated: bool) -> BodyFacts {
    let only = |model| BodyFacts {
        model,
        max_output_tokens: None,
        lacks_include_usage: false,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return only(if truncated {
            ModelField::Unreadable(CUT_BEFORE_MODEL)
        } else {
            ModelField::Absent
        });
    }
    if truncated {
        let mut scan = TopLevel::default();
        scan.feed(body);
        return only(scan.prefix_model());
    }
    // JSON is UTF-8 (RFC 8259); serde_json does not check the strings it skips.
    let Ok(text) = std::str::from_utf8(body) else {
        return only(ModelField::Unreadable(NOT_JSON));
    };
    match serde_json::from_str::<Probe>(text) {
        Ok(probe) => BodyFacts {
            model: match probe.models {
                0 => ModelField::Absent,
                1 => match probe.model {
                    Some(serde_json::Value::String(m)) if m.len() > MAX_MODEL_BYTES => {
                        ModelField::Unreadable(MODEL_TOO_LONG)
                    }
                    Some(serde_json::Value::String(m)) => ModelField::Named(m),
                    _ => ModelField::NotAString,
                },
                _ => ModelField::Duplicate,
            },
            // A cap that is not a non-negative integer is the upstream's to refuse; the
            // estimate then uses the default.
            max_output_tokens: probe.caps.into_iter().flatten().find_map(|v| v.as_u64()),
            lacks_include_usage: crate::usage::parse::lacks_include_usage(
                probe.stream.as_ref(),
                probe.stream_options.as_ref(),
            ),
        },
        Err(_) => only(ModelField::Unreadable(NOT_JSON)),
    }
}

/// Whether a member name is `model` to some JSON decoder: exactly, or ignoring ASCII case.
fn is_model_key(name: &str) -> bool {
    name.eq_ignore_ascii_case("model")
}

/// The members of a complete body the decision reads; every other value is skipped.
#[derive(Default)]
struct Probe {
    /// How many top-level members are named `model` (in any ASCII case).
    models: u32,
    model: Option<serde_json::Value>,
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens`: the last of each, as the
    /// upstream's parser keeps it.
    caps: [Option<serde_json::Value>; 3],
    /// `stream` and `stream_options`, the last of each.
    stream: Option<serde_json::Value>,
    stream_options: Option<serde_json::Value>,
}

/// A top-level member name, sorted into what the probe keeps.
enum Member {
    Model,
    Cap(usize),
    Stream,
    StreamOptions,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "max_tokens" => Member::Cap(0),
                    "max_completion_tokens" => Member::Cap(1),
                    "max_output_tokens" => Member::Cap(2),
                    "stream" => Member::Stream,
                    "stream_options" => Member::StreamOptions,
                    _ if is_model_key(name) => Member::Model,
                    _ => Member::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Name)
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Probe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
                let mut probe = Probe::default();
                while let Some(member) = map.next_key::<Member>()? {
                    match member {
                        Member::Model => {
                            probe.models += 1;
                            probe.model = Some(map.next_value()?);
                        }
                        Member::Cap(i) => probe.caps[i] = Some(map.next_value()?),
                        Member::Stream => probe.stream = Some(map.next_value()?),
                        Member::StreamOptions => probe.stream_options = Some(map.next_value()?),
                        Member::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(probe)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Follows the top level of a JSON object fed in pieces of any size, and counts its members
/// named `model` (in any ASCII case), keeping the first one's value.
///
/// It tokenizes only as far as needed to tell top-level member names from everything else
/// (strings with their escapes, nesting); it does not validate the rest of the JSON, which
/// the upstream's parser refuses when it is broken. Memory stays bounded whatever is fed.
#[derive(Debug, Clone, Default)]
pub struct TopLevel {
    /// Container nesting: 0 before the top-level `{`, 1 inside it.
    depth: usize,
    started: bool,
    closed: bool,
    invalid: bool,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a member name.
    expect_key: bool,
    /// The string being read is a top-level member name.
    in_key: bool,
    key: Vec<u8>,
    key_too_long: bool,
    /// The first `model` member's value has not started yet.
    model_value_pending: bool,
    /// The first `model` member's string value, while it is read.
    capture: Option<Vec<u8>>,
    capture_too_long: bool,
    models: u32,
    first: Option<First>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum First {
    Named(String),
    NotAString,
    TooLong,
}

impl TopLevel {
    /// Reads the next piece of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                if !self.escaped && !self.in_key && self.capture.is_none() {
                    // Most of a body is string contents (the prompt): skip to the next
                    // quote or backslash at memchr's speed.
                    match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                        Some(at) => i += at,
                        None => return,
                    }
                }
                self.string_byte(bytes[i]);
                i += 1;
                continue;
            }
            let c = bytes[i];
            i += 1;
            if c.is_ascii_whitespace() {
                continue;
            }
            if self.depth == 1 && self.model_value_pending && c != b':' {
                self.model_value_pending = false;
                if c == b'"' {
                    self.capture = Some(Vec::new());
                } else {
                    self.first = Some(First::NotAString);
                }
            }
            match c {
                b'"' => {
                    if self.depth == 0 {
                        self.invalid = true;
                    }
                    self.in_string = true;
                    self.in_key = self.depth == 1 && self.expect_key;
                    if self.in_key {
                        self.expect_key = false;
                        self.key.clear();
                        self.key_too_long = false;
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 0 {
                        if c != b'{' || self.started {
                            self.invalid = true;
                        }
                        self.started = true;
                        self.expect_key = true;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => match self.depth {
                    0 => self.invalid = true,
                    1 => {
                        self.depth = 0;
                        self.closed = true;
                    }
                    _ => self.depth -= 1,
                },
                b',' if self.depth == 1 => self.expect_key = true,
                _ if self.depth == 0 => self.invalid = true,
                _ => {}
            }
        }
    }

    fn string_byte(&mut self, c: u8) {
        let end = !self.escaped && c == b'"';
        self.escaped = !self.escaped && c == b'\\';
        if end {
            self.in_string = false;
            if self.in_key {
                self.in_key = false;
                self.member_name_read();
            } else if let Some(raw) = self.capture.take() {
                self.first = Some(match decode_string(&raw) {
                    _ if self.capture_too_long => First::TooLong,
                    Some(name) if name.len() > MAX_MODEL_BYTES => First::TooLong,
                    Some(name) => First::Named(name),
                    None => First::NotAString,
                });
            }
            return;
        }
        if self.in_key {
            if self.key.len() < MAX_MODEL_KEY_BYTES {
                self.key.push(c);
            } else {
                self.key_too_long = true;
            }
        } else if let Some(raw) = &mut self.capture {
            // A character takes at most six bytes written (`\u0061`), so more than six
            // times the limit written is over the limit read.
            if raw.len() < 6 * MAX_MODEL_BYTES {
                raw.push(c);
            } else {
                self.capture_too_long = true;
            }
        }
    }

    fn member_name_read(&mut self) {
        if self.key_too_long {
            return;
        }
        let model = decode_string(&self.key).is_some_and(|name| is_model_key(&name));
        if model {
            self.models += 1;
            self.model_value_pending = self.models == 1;
        }
    }

    /// More than one top-level `model` member has been seen.
    pub fn duplicate_model(&self) -> bool {
        self.models > 1
    }

    /// The model as far as a prefix of the body tells it.
    pub fn prefix_model(&self) -> ModelField {
        if self.models > 1 {
            return ModelField::Duplicate;
        }
        match &self.first {
            Some(First::Named(name)) => return ModelField::Named(name.clone()),
            Some(First::NotAString) => return ModelField::NotAString,
            Some(First::TooLong) => return ModelField::Unreadable(MODEL_TOO_LONG),
            None => {}
        }
        if self.invalid {
            ModelField::Unreadable(NOT_JSON)
        } else if self.closed {
            ModelField::Absent
        } else {
            ModelField::Unreadable(CUT_BEFORE_MODEL)
        }
    }
}

/// The text of a JSON string's raw contents (between the quotes), escapes decoded.
fn decode_string(raw: &[u8]) -> Option<String> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw).ok().map(str::to_owned);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(m: &str) -> ModelField {
        ModelField::Named(m.into())
    }

    #[test]
    fn output_caps_are_read_from_complete_bodies() {
        let cap = |b: &[u8]| read(b, false).max_output_tokens;
        assert_eq!(cap(br#"{"model":"m","max_tokens":64}"#), Some(64));
        assert_eq!(cap(br#"{"model":"m","max_completion_tokens":7}"#), Some(7));
        assert_eq!(cap(br#"{"model":"m","max_output_tokens":9}"#), Some(9));
        assert_eq!(cap(br#"{"model":"m","max_tokens":-1}"#), None);
        assert_eq!(cap(br#"{"model":"m","max_tokens":"64"}"#), None);
        assert_eq!(cap(br#"{"model":"m"}"#), None);
        // The upstream keeps the last of a repeated member; so does the estimate.
        assert_eq!(
            cap(br#"{"model":"m","max_tokens":1,"max_tokens":500}"#),
            Some(500)
        );
        assert_eq!(
            read(br#"{"model":"m","max_tokens":64"#, true).max_output_tokens,
            None
        );
    }

    #[test]
    fn checks_one_pass_knows_which_bodies_ext_proc_rewrites() {
        let bodies: [&[u8]; 14] = [
            br#"{"model":"m","stream":true}"#,
            br#"{"model":"m","stream":true,"stream_options":null}"#,
            br#"{"model":"m","stream":true,"stream_options":{}}"#,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":"true"}}"#,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            br#"{"model":"m","stream":true,"stream_options":"x"}"#,
            br#"{"model":"m","stream":false}"#,
            br#"{"model":"m","stream":"true"}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","metadata":{"stream":true}}"#,
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
            br#"{"model":"m","stream":false,"stream":true}"#,
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"stream_options":{}}"#,
        ];
        for body in bodies {
            assert_eq!(
                read(body, false).lacks_include_usage,
                crate::usage::parse::add_include_usage(body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Not read from a body Envoy cut (ext_proc follows it whole instead).
        assert!(!read(br#"{"model":"m","stream":true"#, true).lacks_include_usage);
    }

    #[test]
    fn complete_bodies() {
        assert_eq!(
            model_field(br#"{"model":"gpt-4o","messages":[]}"#, false),
            named("gpt-4o")
        );
        assert_eq!(
            model_field(br#"{"messages":[]}"#, false),
            ModelField::Absent
        );
        assert_eq!(model_field(b"", false), ModelField::Absent);
        assert_eq!(
            model_field(br#"{"model":4}"#, false),
            ModelField::NotAString
        );
        assert_eq!(
            model_field(b"hello", false),
            ModelField::Unreadable(NOT_JSON)
        );
        assert_eq!(
            model_field(b"[1,2]", false),
            ModelField::Unreadable(NOT_JSON)
        );
        assert_eq!(
            model_field(br#"{"model":"a""#, false),
            ModelField::Unreadable(NOT_JSON)
        );
        assert_eq!(
            model_field(br#"{"model":"gpt\u002d4o"}"#, false),
            named("gpt-4o")
        );
        assert_eq!(
            model_field(br#"{"model":"m"} trailing"#, false),
            ModelField::Unreadable(NOT_JSON)
        );
        assert_eq!(
            model_field(b"{\"model\":\"m\",\"messages\":\"\xff\"}", false),
            ModelField::Unreadable(NOT_JSON)
        );
    }

    #[test]
    fn more_than_one_model_member_is_refused_whole_or_cut() {
        let smuggled: [&[u8]; 6] = [
            br#"{"model":"gpt-4o-mini","messages":[],"model":"gpt-4o"}"#,
            br#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#,
            br#"{"model":"gpt-4o-mini","Model":"gpt-4o"}"#,
            br#"{"MODEL":"gpt-4o","model":"gpt-4o-mini"}"#,
            br#"{"model":"a","model":"a"}"#,
            br#"{"model":1,"model":"gpt-4o"}"#,
        ];
        for body in smuggled {
            assert_eq!(model_field(body, false), ModelField::Duplicate, "{body:?}");
            assert_eq!(model_field(body, true), ModelField::Duplicate, "{body:?}");
        }
        // Nested `model` members are the request's business (tools, metadata).
        let nested = br#"{"model":"a","metadata":{"model":"b"},"tools":[{"model":"c"}]}"#;
        assert_eq!(model_field(nested, false), named("a"));
        assert_eq!(model_field(nested, true), named("a"));
        // A member name that only looks like `model` inside a string value.
        let quoted = br#"{"messages":"\",\"model\":\"x","model":"a"}"#;
        assert_eq!(model_field(quoted, false), named("a"));
        assert_eq!(model_field(quoted, true), named("a"));
    }

    #[test]
    fn an_overlong_model_name_is_refused_whole_or_cut() {
        for (len, escaped) in [(4097, false), (4097, true), (10_000, false)] {
            let name = if escaped { "\\u0061" } else { "a" }.repeat(len);
            let body = format!(r#"{{"model":"{name}"}}"#);
            let want = ModelField::Unreadable(MODEL_TOO_LONG);
            assert_eq!(model_field(body.as_bytes(), false), want, "{len} {escaped}");
            assert_eq!(model_field(body.as_bytes(), true), want, "{len} {escaped}");
        }
        let body = format!(r#"{{"model":"{}"}}"#, "\\u00e9".repeat(2048));
        assert_eq!(
            model_field(body.as_bytes(), false),
            named(&"é".repeat(2048))
        );
        assert_eq!(model_field(body.as_bytes(), true), named(&"é".repeat(2048)));
    }

    #[test]
    fn a_model_member_in_another_case_is_the_model() {
        assert_eq!(
            model_field(br#"{"Model":"gpt-4o"}"#, false),
            named("gpt-4o")
        );
        assert_eq!(
            model_field(br#"{"Model":"gpt-4o","x"#, true),
            named("gpt-4o")
        );
    }

    #[test]
    fn truncated_bodies_are_scanned_from_the_front() {
        let cut = br#"{"model": "gpt-4o", "messages": [{"role":"user","content":"aaaa"#;
        assert_eq!(model_field(cut, true), named("gpt-4o"));
        let late = br#"{"temperature": 0.5, "stream": true, "n": null, "meta": {"a": [1, {"b": "}"}]}, "model": "m\"x", "messages": [{"content": "long"#;
        assert_eq!(model_field(late, true), named("m\"x"));
        let cut_first = br#"{"messages": [{"role":"user","content":"aaaa"#;
        assert_eq!(
            model_field(cut_first, true),
            ModelField::Unreadable(CUT_BEFORE_MODEL)
        );
        assert_eq!(
            model_field(br#"{"model": 12, "x"#, true),
            ModelField::NotAString
        );
        assert_eq!(
            model_field(b"not json at all", true),
            ModelField::Unreadable(NOT_JSON)
        );
        assert_eq!(
            model_field(br#"{"model": "gpt-"#, true),
            ModelField::Unreadable(CUT_BEFORE_MODEL)
        );
        assert_eq!(model_field(br#"{"a": 1}"#, true), ModelField::Absent);
        assert_eq!(
            model_field(b"  ", true),
            ModelField::Unreadable(CUT_BEFORE_MODEL)
        );
    }

    #[test]
    fn fed_in_any_pieces_the_scanner_sees_the_same() {
        let body = br#"{"messages":[{"role":"user","content":"say \"model\": {x}"}],"mod\u0065l":"gpt-4o","stream":true,"MODEL":"b"}"#;
        let mut whole = TopLevel::default();
        whole.feed(body);
        assert!(whole.duplicate_model());
        for split in 0..body.len() {
            let mut pieces = TopLevel::default();
            pieces.feed(&body[..split]);
            pieces.feed(&body[split..]);
            assert!(pieces.duplicate_model(), "split at {split}");
            assert_eq!(pieces.prefix_model(), ModelField::Duplicate);
        }
        // Byte by byte, one model.
        let one = br#"{"model":"gpt\u002d4o","messages":[]}"#;
        let mut bytes = TopLevel::default();
        for b in one {
            bytes.feed(std::slice::from_ref(b));
        }
        assert!(!bytes.duplicate_model());
        assert_eq!(bytes.prefix_model(), named("gpt-4o"));
    }

    #[test]
    fn scanner_never_panics_on_garbage() {
        let samples: [&[u8]; 10] = [
            b"{",
            b"{\"",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":]",
            b"{\"a\":1,",
            b"{]",
            b"{\"a\":{]]}",
            b"}}}}{{",
            b"{\"\\",
        ];
        for s in samples {
            let _ = model_field(s, true);
            let _ = model_field(s, false);
        }
    }
}
