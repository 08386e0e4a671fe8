//! Properties of the parsers of hostile input, over generated cases: the request-body
//! reader against every cut of a body, the event-stream reader against every chunking of a
//! stream, and configuration loading against arbitrary `${…}` text and misspelt keys.
//!
//! Case counts are set per block to keep the whole file to a few seconds; the fuzz targets
//! in `fuzz/` explore the same parsers for longer.

use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate::authz::body;
use tollgate::config::Config;
use tollgate::decision::ModelField;
use tollgate::usage::sse::{SseOutcome, SseUsage};
use tollgate::usage::TokenUsage;

// --- The request body -------------------------------------------------------------------

/// Any JSON value, nested a few levels, with strings full of the characters a hand-written
/// scanner can trip on (quotes, backslashes, brackets, non-ASCII), and objects that may have
/// their own `model`.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z \"\\\\{}\\[\\],:é\u{1F600}\n]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("model".to_owned()), "[a-z_\"{}]{1,8}"],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What the top level holds as `model`.
#[derive(Debug, Clone)]
enum TopModel {
    None,
    Named(String),
    Other(Value),
}

/// A request body written member by member (so `model` can come anywhere, not only where
/// a map would sort it), with varied white space; its first top-level `model`, and whether
/// a second member is `model` to some decoder too (another ASCII case, or escaped).
fn request_body() -> impl Strategy<Value = (Vec<u8>, TopModel, bool)> {
    let members = prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..6);
    let model = prop_oneof![
        Just(TopModel::None),
        "[a-zA-Z0-9.:/ \"\\\\-]{0,20}".prop_map(TopModel::Named),
        prop_oneof![
            Just(json!(4)),
            Just(json!(null)),
            Just(json!({"model": "x"}))
        ]
        .prop_map(TopModel::Other),
    ];
    let second = prop::option::weighted(
        0.2,
        prop_oneof![
            Just(r#""Model""#),
            Just(r#""MODEL""#),
            Just(r#""mOdEl""#),
            Just(r#""\u006dodel""#),
            Just(r#""model""#),
        ],
    );
    let spaces = prop::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n  ")], 16);
    (
        members,
        model,
        second,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        spaces,
    )
        .prop_map(|(members, model, second, at, after, spaces)| {
            // Raw member names (JSON text) and values.
            let mut members: Vec<(String, Value)> = members
                .into_iter()
                .filter(|(k, _)| k != "model")
                .map(|(k, v)| (json!(k).to_string(), v))
                .collect();
            let at = at.index(members.len() + 1);
            let first = match &model {
                TopModel::None => None,
                TopModel::Named(m) => Some(json!(m)),
                TopModel::Other(v) => Some(v.clone()),
            };
            let mut duplicate = false;
            if let Some(value) = first {
                members.insert(at, (r#""model""#.to_owned(), value));
                if let Some(name) = second {
                    let later = at + 1 + after.index(members.len() - at);
                    members.insert(later, (name.to_owned(), json!("other-model")));
                    duplicate = true;
                }
            }
            let ws = |i: usize| spaces[i % spaces.len()];
            let mut text = format!("{}{{", ws(0));
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                let value = if i % 2 == 0 {
                    value.to_string()
                } else {
                    serde_json::to_string_pretty(value).unwrap()
                };
                text.push_str(&format!(
                    "{}{key}{}:{}{value}{}",
                    ws(i + 1),
                    ws(i + 2),
                    ws(i + 3),
                    ws(i + 4)
                ));
            }
            text.push('}');
            (text.into_bytes(), model, duplicate)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A whole body names its one top-level `model`, whether read whole or scanned as if
    /// cut at its very end, and names none when a second member is `model` too; no prefix
    /// of it, scanned as cut, names another model than the first.
    #[test]
    fn body_prefixes_never_name_another_model((body, model, duplicate) in request_body()) {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let first = match &model {
            TopModel::None => ModelField::Absent,
            TopModel::Named(m) => ModelField::Named(m.clone()),
            TopModel::Other(_) => ModelField::NotAString,
        };
        for truncated in [false, true] {
            let whole = body::read(&body, truncated).model;
            if duplicate {
                prop_assert!(!matches!(whole, ModelField::Named(_)), "{:?} in {}", whole, shown);
            } else {
                prop_assert_eq!(&whole, &first, "{}", shown);
            }
        }
        for end in 0..body.len() {
            if let ModelField::Named(seen) = body::read(&body[..end], true).model {
                prop_assert_eq!(
                    ModelField::Named(seen),
                    first.clone(),
                    "the first {} bytes of {}",
                    end,
                    shown
                );
            }
        }
    }
}

// --- Event streams ------------------------------------------------------------------------

/// A generated stream and the usage a complete reading of it must find.
#[derive(Debug, Clone)]
struct Stream {
    bytes: Vec<u8>,
    usage: Option<TokenUsage>,
    complete: bool,
    model: String,
}

fn text_piece() -> impl Strategy<Value = String> {
    "[a-zA-Z ,.!é\u{4E2D}\"\\\\\n]{0,16}"
}

/// An OpenAI chat/completions stream, with or without `include_usage`, maybe cut before
/// `[DONE]`, with keep-alive comments here and there.
fn openai_stream() -> impl Strategy<Value = Stream> {
    (
        "[a-z0-9.-]{1,16}",
        prop::collection::vec(text_piece(), 0..6),
        prop::option::of((0u64..100_000, 0u64..10_000, 0u64..1_000)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(model, pieces, usage, done, comments)| {
            let mut lines = Vec::new();
            let chunk = |delta: Value| {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
                       "usage": null})
            };
            lines.push(format!(
                "data: {}",
                chunk(json!({"role": "assistant", "content": ""}))
            ));
            for (i, piece) in pieces.iter().enumerate() {
                if comments && i % 2 == 1 {
                    lines.push(": keep-alive".to_owned());
                }
                lines.push(format!("data:{}", chunk(json!({ "content": piece }))));
            }
            if let Some((prompt, completion, cached)) = usage {
                lines.push(format!(
                    "data: {}",
                    json!({"id": "chatcmpl-1", "model": model, "choices": [],
                           "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                     "total_tokens": prompt + completion,
                                     "prompt_tokens_details": {"cached_tokens": cached}}})
                ));
            }
            if done {
                lines.push("data: [DONE]".to_owned());
            }
            Stream {
                bytes: events(&lines),
                usage: usage.map(|(prompt, completion, cached)| TokenUsage {
                    input_tokens: prompt,
                    output_tokens: completion,
                    cached_input_tokens: cached.min(prompt),
                    reasoning_tokens: 0,
                }),
                complete: done,
                model,
            }
        })
}

/// An Anthropic messages stream: `message_start`, text deltas, a few cumulative
/// `message_delta`s, maybe `message_stop`.
fn anthropic_stream() -> impl Strategy<Value = Stream> {
    (
        "claude-[a-z0-9-]{1,12}",
        (0u64..100_000, 0u64..10_000, 0u64..10_000),
        prop::collection::vec(text_piece(), 0..6),
        prop::collection::vec(0u64..10_000, 1..4),
        any::<bool>(),
    )
        .prop_map(|(model, (input, read, write), pieces, outputs, stop)| {
            let mut lines = Vec::new();
            let mut event = |kind: &str, data: Value| {
                lines.push(format!("event: {kind}"));
                lines.push(format!("data: {data}"));
            };
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "model": model,
                       "usage": {"input_tokens": input, "cache_read_input_tokens": read,
                                 "cache_creation_input_tokens": write, "output_tokens": 1}}}),
            );
            for piece in &pieces {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": piece}}),
                );
            }
            for output in &outputs {
                event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": null},
                           "usage": {"output_tokens": output}}),
                );
            }
            if stop {
                event("message_stop", json!({"type": "message_stop"}));
            }
            Stream {
                bytes: events(&lines),
                usage: Some(TokenUsage {
                    input_tokens: input + read + write,
                    output_tokens: *outputs.last().unwrap(),
                    cached_input_tokens: read,
                    reasoning_tokens: 0,
                }),
                complete: stop,
                model,
            }
        })
}

/// SSE lines, each event followed by a blank line.
fn events(lines: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("data") {
            out.push('\n');
        }
    }
    out.into_bytes()
}

fn read_in_pieces(stream: &[u8], sizes: &[usize]) -> SseOutcome {
    let mut reader = SseUsage::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, more) = rest.split_at(size.min(rest.len()));
        reader.feed(piece);
        rest = more;
    }
    reader.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any chunking of a stream, with any of the three line endings, reads as the stream
    /// whole does, and that reading finds the usage, end and model the stream carries.
    #[test]
    fn sse_chunking_does_not_change_the_usage(
        stream in prop_oneof![openai_stream(), anthropic_stream()],
        ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        sizes in prop::collection::vec(0usize..64, 1..12),
    ) {
        let bytes = String::from_utf8(stream.bytes.clone())
            .unwrap()
            .replace('\n', ending)
            .into_bytes();
        let whole = read_in_pieces(&bytes, &[bytes.len()]);
        prop_assert_eq!(whole.usage, stream.usage);
        prop_assert_eq!(whole.complete, stream.complete);
        prop_assert_eq!(whole.model.as_deref(), Some(stream.model.as_str()));
        // Empty pieces are fed too, but alone they would never advance.
        let mut sizes = sizes;
        if sizes.iter().all(|&s| s == 0) {
            sizes.push(1);
        }
        prop_assert_eq!(read_in_pieces(&bytes, &sizes), whole);
    }
}

// --- Configuration --------------------------------------------------------------------------

/// Text made of the pieces `${…}` expansion cares about.
fn expansion_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("${".to_owned()),
        Just("$${".to_owned()),
        Just("$".to_owned()),
        Just("}".to_owned()),
        Just(":-".to_owned()),
        Just("#".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("\\".to_owned()),
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("{".to_owned()),
        Just("SET".to_owned()),
        Just("TWO_LINES".to_owned()),
        Just("master_key".to_owned()),
        Just("listen".to_owned()),
        "[A-Za-z_0-9é]{1,6}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn env_lookup(vars: &BTreeMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    |name| vars.get(name).cloned()
}

/// The keys a section accepts (the ones the generated files use), to keep the unknown
/// ones unknown.
const SECTIONS: [(&str, &[&str]); 4] = [
    ("listen", &["grpc: 127.0.0.1:9191", "http: 127.0.0.1:9090"]),
    ("cache", &["key_ttl: 60s", "max_entries: 1000"]),
    (
        "database",
        &["url: sqlite://tollgate.db", "max_connections: 4"],
    ),
    ("usage", &["batch_size: 100", "batch_interval: 1s"]),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Loading never panics on text full of `${`, `$${`, `}`, `:-`, comments and quotes,
    /// whatever the variables hold (a value spanning lines included), and an error names
    /// a line of the file.
    #[test]
    fn config_expansion_never_panics(
        text in expansion_text(),
        vars in prop::collection::btree_map(
            prop_oneof![Just("SET".to_owned()), Just("TWO_LINES".to_owned()), "[A-Z]{1,3}"],
            "[a-z0-9:\\n${}#]{0,8}",
            0..4,
        ),
    ) {
        if let Err(e) = Config::parse_str("t.yaml", &text, &env_lookup(&vars)) {
            let line = e.line;
            prop_assert!(line.is_some(), "no line: {}", e);
            prop_assert!(line.unwrap() <= text.lines().count() + 1, "{}", e);
        }
    }

    /// A misspelt key, at the top level or inside a section, in block or flow style, after
    /// comments and blank lines, is refused with its own line and name.
    #[test]
    fn unknown_keys_name_their_line(
        name in "[a-z]{1,6}_?[a-z]{0,6}".prop_map(|n| format!("x{n}")),
        section in 0..SECTIONS.len() + 1,
        position in 0usize..3,
        flow in any::<bool>(),
        blank_lines in prop::collection::vec(prop_oneof![Just(""), Just("# note: x"), Just("  # indented")], 0..3),
    ) {
        let mut lines: Vec<String> = Vec::new();
        let mut expected = None;
        for (i, (head, keys)) in SECTIONS.iter().enumerate() {
            lines.extend(blank_lines.iter().map(|l| l.to_string()));
            let mut members: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let here = i == section;
            if here {
                members.insert(position.min(members.len()), format!("{name}: 1"));
            }
            if flow {
                if here {
                    expected = Some(lines.len() + 1);
                }
                lines.push(format!("{head}: {{ {} }}", members.join(", ")));
            } else {
                lines.push(format!("{head}:"));
                for member in members {
                    if member.starts_with(&name) {
                        expected = Some(lines.len() + 1);
                    }
                    lines.push(format!("  {member}"));
                }
            }
        }
        if section == SECTIONS.len() {
            // First or last: in between it would cut a section in two.
            let at = if position == 0 { 0 } else { lines.len() };
            lines.insert(at, format!("{name}: 1"));
            expected = Some(at + 1);
        }
        let text = lines.join("\n") + "\n";
        let e = Config::parse_str("t.yaml", &text, &|_| None)
            .map(|_| ())
            .expect_err("an unknown key is refused");
        prop_assert_eq!(e.line, expected, "{}\n{}", e, text);
        prop_assert!(e.message.contains(&name), "{}", e);
    }
}
