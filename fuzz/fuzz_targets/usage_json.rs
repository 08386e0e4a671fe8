//! The JSON response and request helpers of `usage::parse`: no panic on any bytes, and
//! - the usage read keeps its invariants (cached ≤ input, reasoning ≤ output);
//! - `add_include_usage` rewrites exactly the bodies Check's one pass marks as lacking it
//!   (`lacks_include_usage`, which ext_proc relies on to skip every other body), and
//!   rewriting a rewritten body changes nothing.

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
    let lacks = tollgate::authz::body::read(body, false).lacks_include_usage;
    let rewritten = parse::add_include_usage(body);
    assert_eq!(
        lacks,
        rewritten.is_some(),
        "Check and ext_proc agree on which bodies are rewritten"
    );
    if let Some(rewritten) = rewritten {
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
