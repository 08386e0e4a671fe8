//! The request-body reader: `authz::body::read` on any bytes, whole and cut at every
//! prefix.
//!
//! Beyond "no panic", for a body that serde_json reads as an object (a member is a `model`
//! member when its name is `model` in any ASCII case, as `read` counts them):
//! - a whole body with one `model` member, a string of at most 4096 bytes, is read as naming
//!   that model (a longer one as unreadable);
//! - a whole body with several names none;
//! - no prefix of it, read as cut, names another model than its first `model` member.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use tollgate::authz::body::read;
use tollgate::decision::ModelField;

/// The values of the `model` members of a JSON object, in order.
#[derive(Default)]
struct TopLevel {
    models: Vec<Value>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut top = TopLevel::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key.eq_ignore_ascii_case("model") {
                        top.models.push(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

fuzz_target!(|body: &[u8]| {
    let whole = read(body, false);
    let _ = read(body, true);

    let Ok(Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let top: TopLevel = serde_json::from_slice(body).expect("an object reads as its members");
    let first = match top.models.first() {
        Some(Value::String(m)) => Some(m.as_str()),
        _ => None,
    };
    match (top.models.len(), first) {
        // Names over 4096 bytes are refused, whole or cut.
        (1, Some(m)) if m.len() <= 4096 => assert_eq!(
            whole.model,
            ModelField::Named(m.to_owned()),
            "a whole body with one `model` string"
        ),
        (1, Some(_)) => assert!(matches!(whole.model, ModelField::Unreadable(_))),
        (1, None) | (0, _) => {}
        _ => assert!(
            !matches!(whole.model, ModelField::Named(_)),
            "a whole body with several `model` members names {:?}",
            whole.model
        ),
    }

    // Every prefix when the body is short, an even spread of them when it is long.
    let step = (body.len() / 512).max(1);
    for end in (0..=body.len()).step_by(step).chain([body.len()]) {
        if let ModelField::Named(seen) = read(&body[..end], true).model {
            assert_eq!(
                Some(seen.as_str()),
                first,
                "the prefix of {end} bytes names another model than the whole body"
            );
        }
    }
});
