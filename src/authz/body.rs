//! Reading what the decision needs from the request body Envoy forwards.
//!
//! A complete body is parsed as JSON (fields other than `model` are skipped, not built).
//! A body Envoy cut at `max_request_bytes` (`x-envoy-auth-partial-body: true`) is scanned
//! from the front for a top-level `"model"` string: clients put it first in practice, so
//! large prompts still get a model check without tollgate ever holding the whole body.

use crate::decision::ModelField;
use serde::Deserialize;

const CUT_BEFORE_MODEL: &str = "the body was cut at the forwarding limit before a `model` field";
const NOT_JSON: &str = "the body is not a valid JSON object";

/// What the decision reads from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    pub model: ModelField,
    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, when the body sets one
    /// (not read from a body Envoy cut).
    pub max_output_tokens: Option<u64>,
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
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return only(if truncated {
            ModelField::Unreadable(CUT_BEFORE_MODEL)
        } else {
            ModelField::Absent
        });
    }
    if truncated {
        return only(scan_for_model(body));
    }
    #[derive(Deserialize)]
    struct Probe {
        model: Option<serde_json::Value>,
        max_tokens: Option<serde_json::Value>,
        max_completion_tokens: Option<serde_json::Value>,
        max_output_tokens: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(probe) => BodyFacts {
            model: match probe.model {
                None => ModelField::Absent,
                Some(serde_json::Value::String(m)) => ModelField::Named(m),
                Some(_) => ModelField::NotAString,
            },
            // A cap that is not a non-negative integer is the upstream's to refuse; the
            // estimate then uses the default.
            max_output_tokens: [
                probe.max_tokens,
                probe.max_completion_tokens,
                probe.max_output_tokens,
            ]
            .into_iter()
            .flatten()
            .find_map(|v| v.as_u64()),
        },
        Err(_) => only(ModelField::Unreadable(NOT_JSON)),
    }
}

enum Stop {
    /// The prefix ended inside the object.
    Cut,
    /// What is there is not JSON.
    Invalid,
}

/// Scans a JSON object prefix for a top-level `"model"` member.
fn scan_for_model(prefix: &[u8]) -> ModelField {
    let mut s = Scanner { b: prefix, i: 0 };
    let outcome = (|| -> Result<ModelField, Stop> {
        s.ws();
        s.expect(b'{')?;
        loop {
            s.ws();
            match s.peek()? {
                b'}' => return Ok(ModelField::Absent),
                b'"' => {}
                _ => return Err(Stop::Invalid),
            }
            let key = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            if key == "model" {
                return match s.peek()? {
                    b'"' => Ok(ModelField::Named(s.string()?)),
                    _ => Ok(ModelField::NotAString),
                };
            }
            s.skip_value()?;
            s.ws();
            match s.next()? {
                b',' => continue,
                b'}' => return Ok(ModelField::Absent),
                _ => return Err(Stop::Invalid),
            }
        }
    })();
    match outcome {
        Ok(field) => field,
        Err(Stop::Cut) => ModelField::Unreadable(CUT_BEFORE_MODEL),
        Err(Stop::Invalid) => ModelField::Unreadable(NOT_JSON),
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Result<u8, Stop> {
        self.b.get(self.i).copied().ok_or(Stop::Cut)
    }

    fn next(&mut self) -> Result<u8, Stop> {
        let c = self.peek()?;
        self.i += 1;
        Ok(c)
    }

    fn expect(&mut self, want: u8) -> Result<(), Stop> {
        if self.next()? == want {
            Ok(())
        } else {
            Err(Stop::Invalid)
        }
    }

    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    /// A JSON string, decoded (escapes included) by serde_json once its end is found.
    fn string(&mut self) -> Result<String, Stop> {
        let start = self.i;
        self.expect(b'"')?;
        loop {
            match self.next()? {
                b'\\' => {
                    self.next()?;
                }
                b'"' => break,
                _ => {}
            }
        }
        serde_json::from_slice(&self.b[start..self.i]).map_err(|_| Stop::Invalid)
    }

    /// Skips one value of any kind, nested containers included.
    fn skip_value(&mut self) -> Result<(), Stop> {
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while !matches!(self.peek()?, b',' | b'}' | b']')
                    && !self.peek()?.is_ascii_whitespace()
                {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(Stop::Invalid);
                }
            }
        }
        Ok(())
    }
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
        assert_eq!(
            read(br#"{"model":"m","max_tokens":64"#, true).max_output_tokens,
            None
        );
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
    fn scanner_never_panics_on_garbage() {
        let samples: [&[u8]; 8] = [
            b"{",
            b"{\"",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":]",
            b"{\"a\":1,",
            b"{]",
            b"{\"a\":{]]}",
        ];
        for s in samples {
            let _ = model_field(s, true);
            let _ = model_field(s, false);
        }
    }
}
