//! Where the credential is: `authorization: Bearer …` (OpenAI clients), `x-api-key`
//! (Anthropic clients) or `api-key` (Azure OpenAI clients), in that order of preference.

/// The headers that can carry a client credential; all are removed before the request goes
/// upstream.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// Longest credential we look at: keys are 55 bytes, JWTs a few KiB. Anything longer is
/// treated as absent rather than hashed or parsed.
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

/// Picks the credential from lowercase header names. An `authorization` header with another
/// scheme (`Basic …`) does not count, so an `x-api-key` next to it still can.
pub fn extract<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<&'h str> {
    let bearer = header("authorization").and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    bearer
        .into_iter()
        .chain(header("x-api-key").map(str::trim))
        .chain(header("api-key").map(str::trim))
        .find(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pick<'a>(headers: &'a HashMap<&str, &str>) -> Option<&'a str> {
        extract(|name| headers.get(name).copied())
    }

    #[test]
    fn bearer_wins_then_x_api_key_then_api_key() {
        let h = HashMap::from([
            ("authorization", "Bearer a"),
            ("x-api-key", "b"),
            ("api-key", "c"),
        ]);
        assert_eq!(pick(&h), Some("a"));
        let h = HashMap::from([("x-api-key", "b"), ("api-key", "c")]);
        assert_eq!(pick(&h), Some("b"));
        let h = HashMap::from([("api-key", " c ")]);
        assert_eq!(pick(&h), Some("c"));
    }

    #[test]
    fn other_schemes_and_empty_values_do_not_count() {
        let h = HashMap::from([("authorization", "Basic dXNlcg=="), ("x-api-key", "b")]);
        assert_eq!(pick(&h), Some("b"));
        let h = HashMap::from([("authorization", "bearer   "), ("api-key", "")]);
        assert_eq!(pick(&h), None);
        let h = HashMap::from([("authorization", "BEARER tok")]);
        assert_eq!(pick(&h), Some("tok"));
        let long = "x".repeat(MAX_CREDENTIAL_LEN + 1);
        let h = HashMap::from([("x-api-key", long.as_str())]);
        assert_eq!(pick(&h), None);
    }
}
