//! The JSON response and request helpers of `usage::parse`: no panic on any bytes, and
//! - the usage read keeps its invariants (cached ≤ input, reasoning ≤ output);
//! - a body `add_include_usage` rewrites still streams, and rewriting it again changes
//!   nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::usage::parse;

fuzz_target!(|body: &[u8]| {
    if let Some(usage) = parse::from_json(body) {
        assert!(usage.cached_input_tokens <= usage.input_tokens);
        assert!(usage.reasoning_tokens <= usage.output_tokens);
    }
    if let Some(model) = parse::model_from_json(body) {
        assert!(!model.is_empty());
    }
    let streams = parse::wants_stream(body);
    if let Some(rewritten) = parse::add_include_usage(body) {
        assert!(streams, "only a streaming body is rewritten");
        assert!(
            parse::wants_stream(&rewritten),
            "the rewritten body streams"
        );
        assert_eq!(
            parse::add_include_usage(&rewritten),
            None,
            "a rewritten body asks for usage already"
        );
    }
    if let Ok(path) = std::str::from_utf8(body) {
        let _ = parse::include_usage_applies(path);
    }
});
