//! Which buckets a request touches and what it takes from them (pure), and the
//! `x-ratelimit-*` headers of a decision.
//!
//! Levels, each with an rpm and a tpm bucket when a limit is set: global (`limits.global`),
//! route (`limits.routes`, exact path or a `*` prefix), model (`models[].rpm|tpm`), team,
//! user and key (their `rpm`/`tpm` in the store). A request takes 1 from each rpm bucket and
//! its estimated tokens from each tpm bucket.

use super::bucket::{Shape, View};
use super::{Demand, Outcome, Unit};
use crate::admission::payers::Payers;
use crate::config::{Config, Rate};
use crate::domain::Limits;
use std::collections::HashMap;

/// The configured limits, compiled for matching. Rebuilt with the policy.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    global: Option<Rate>,
    exact_routes: HashMap<String, Rate>,
    /// `(prefix, configured path, rate)`, longest prefix first.
    prefix_routes: Vec<(String, String, Rate)>,
    models: HashMap<String, Rate>,
    /// Output tokens assumed when a request sets no `max_tokens`.
    default_max_tokens: u64,
    model_max_tokens: HashMap<String, u64>,
}

impl Rates {
    pub fn from_config(config: &Config) -> Rates {
        let mut exact_routes = HashMap::new();
        let mut prefix_routes = Vec::new();
        for (path, rate) in &config.limits.routes {
            match path.strip_suffix('*') {
                Some(prefix) => prefix_routes.push((prefix.to_owned(), path.clone(), *rate)),
                None => {
                    exact_routes.insert(path.clone(), *rate);
                }
            }
        }
        prefix_routes.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        let models = config
            .models
            .iter()
            .filter(|m| m.rpm.is_some() || m.tpm.is_some())
            .map(|m| {
                (
                    m.name.clone(),
                    Rate {
                        rpm: m.rpm,
                        tpm: m.tpm,
                        ..Rate::default()
                    },
                )
            })
            .collect();
        let model_max_tokens = config
            .models
            .iter()
            .filter_map(|m| m.default_max_tokens.map(|n| (m.name.clone(), n)))
            .collect();
        Rates {
            global: config.limits.global,
            exact_routes,
            prefix_routes,
            models,
            default_max_tokens: config.limits.default_max_tokens,
            model_max_tokens,
        }
    }

    /// `limits.global.max_parallel`.
    pub fn global_parallel(&self) -> Option<u64> {
        self.global.and_then(|g| g.max_parallel)
    }

    /// The route's limits and the name its buckets carry (the configured path).
    fn route(&self, path: &str) -> Option<(&str, &Rate)> {
        if let Some((p, r)) = self.exact_routes.get_key_value(path) {
            return Some((p.as_str(), r));
        }
        self.prefix_routes
            .iter()
            .find(|(prefix, _, _)| path.starts_with(prefix.as_str()))
            .map(|(_, name, r)| (name.as_str(), r))
    }

    /// The (input, output) tokens a request is expected to use: its body's size in bytes / 4
    /// (a generous stand-in for the prompt's tokens), and its `max_tokens`, or the model's
    /// (or the gateway's) default. Their sum is what token buckets are charged at Check;
    /// priced, they are what budgets reserve.
    pub fn estimate(
        &self,
        body_bytes: u64,
        max_output: Option<u64>,
        model: Option<&str>,
    ) -> (u64, u64) {
        let output = max_output.unwrap_or_else(|| {
            model
                .and_then(|m| self.model_max_tokens.get(m).copied())
                .unwrap_or(self.default_max_tokens)
        });
        (body_bytes.div_ceil(4), output)
    }
}

/// The buckets of one request, in a fixed order (global, route, model, team, user, key;
/// requests before tokens).
pub fn demands(
    rates: &Rates,
    path: &str,
    model: Option<&str>,
    payers: &Payers<'_>,
    tokens: u64,
) -> Vec<Demand> {
    let mut out = Vec::new();
    let mut add = |name: String, rate: Rate| {
        if let Some(rpm) = rate.rpm {
            out.push(Demand {
                key: format!("{name}:rpm"),
                unit: Unit::Requests,
                shape: Shape {
                    per_minute: rpm,
                    burst: rate.rpm_burst.unwrap_or(rpm),
                },
                cost: 1,
            });
        }
        if let Some(tpm) = rate.tpm {
            out.push(Demand {
                key: format!("{name}:tpm"),
                unit: Unit::Tokens,
                shape: Shape {
                    per_minute: tpm,
                    burst: rate.tpm_burst.unwrap_or(tpm),
                },
                cost: tokens,
            });
        }
    };
    if let Some(rate) = rates.global {
        add("g".to_owned(), rate);
    }
    if let Some((name, rate)) = rates.route(path) {
        add(format!("r:{name}"), *rate);
    }
    if let Some((name, rate)) = model.and_then(|m| rates.models.get_key_value(m)) {
        add(format!("m:{name}"), *rate);
    }
    for payer in payers.iter() {
        let level = crate::admission::payers::level(payer.kind);
        add(format!("{level}:{}", payer.id), rate_of(payer.limits));
    }
    out
}

/// Limits stored as signed numbers (the API refuses negatives).
fn rate_of(limits: &Limits) -> Rate {
    let positive = |v: Option<i64>| v.map(|n| n.max(0) as u64);
    Rate {
        rpm: positive(limits.rpm),
        tpm: positive(limits.tpm),
        ..Rate::default()
    }
}

/// The tightest bucket of each unit after a decision, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub requests: Option<View>,
    pub tokens: Option<View>,
}

impl Quota {
    /// The bucket with the fewest units left, per unit (ties: the smaller limit). Views are
    /// in the order of `demands`; an outcome without views (no bucket consulted) gives none.
    pub fn of(demands: &[Demand], outcome: &Outcome) -> Quota {
        let tightest = |unit: Unit| {
            demands
                .iter()
                .zip(&outcome.views)
                .filter(|(d, _)| d.unit == unit)
                .map(|(_, v)| *v)
                .min_by_key(|v| (v.remaining, v.limit))
        };
        Quota {
            requests: tightest(Unit::Requests),
            tokens: tightest(Unit::Tokens),
        }
    }

    /// For `retry-after`: the longest wait among the buckets (0 for those with room).
    pub fn retry_after_ms(outcome: &Outcome) -> u64 {
        outcome
            .views
            .iter()
            .map(|v| v.retry_after_ms)
            .max()
            .unwrap_or(0)
    }

    /// OpenAI's header names and formats: limits and remaining as integers, resets as
    /// durations (`250ms`, `1.5s`, `6m0s`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (view, limit, remaining, reset) in [
            (
                self.requests,
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ),
            (
                self.tokens,
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ),
        ] {
            if let Some(v) = view {
                out.push((limit, v.limit.to_string()));
                out.push((remaining, v.remaining.to_string()));
                out.push((reset, duration_text(v.reset_ms)));
            }
        }
        out
    }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`.
pub fn duration_text(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest = ms % 60_000;
    let seconds = if rest.is_multiple_of(1_000) {
        format!("{}s", rest / 1_000)
    } else {
        let text = format!("{:.3}", rest as f64 / 1_000.0);
        format!("{}s", text.trim_end_matches('0'))
    };
    if minutes == 0 {
        seconds
    } else {
        format!("{minutes}m{seconds}")
    }
}

/// Whole seconds for `retry-after`, rounded up, at least 1.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::payers::Payer;
    use crate::store::SpendKind;

    fn rates(yaml: &str) -> Rates {
        Rates::from_config(&Config::parse_str("t", yaml, &|_| None).unwrap().config)
    }

    #[test]
    fn every_level_with_a_limit_has_its_buckets_in_order() {
        let r = rates(
            "limits:\n  global: { rpm: 1000, tpm: 100000, rpm_burst: 50 }\n  routes: { /v1/chat/completions: { rpm: 100 }, /v1/x*: { rpm: 7 } }\nmodels:\n  - { name: gpt-4o, rpm: 10, tpm: 5000 }\n  - { name: free }\n",
        );
        let team = Limits {
            tpm: Some(900),
            ..Limits::default()
        };
        let user = Limits::default();
        let key = Limits {
            rpm: Some(3),
            ..Limits::default()
        };
        let d = demands(
            &r,
            "/v1/chat/completions",
            Some("gpt-4o"),
            &Payers {
                key: Some(Payer {
                    kind: SpendKind::Key,
                    id: "k1",
                    limits: &key,
                }),
                user: Some(Payer {
                    kind: SpendKind::User,
                    id: "u1",
                    limits: &user,
                }),
                team: Some(Payer {
                    kind: SpendKind::Team,
                    id: "t1",
                    limits: &team,
                }),
                org: None,
            },
            42,
        );
        let names: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            names,
            [
                "g:rpm",
                "g:tpm",
                "r:/v1/chat/completions:rpm",
                "m:gpt-4o:rpm",
                "m:gpt-4o:tpm",
                "t:t1:tpm",
                "k:k1:rpm"
            ]
        );
        assert_eq!(
            d[0].shape,
            Shape {
                per_minute: 1000,
                burst: 50
            }
        );
        assert_eq!((d[0].cost, d[1].cost), (1, 42));
        // Prefix routes; models without limits have no buckets.
        let d = demands(&r, "/v1/xyz", Some("free"), &Payers::default(), 1);
        let names: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(names, ["g:rpm", "g:tpm", "r:/v1/x*:rpm"]);
        assert!(demands(
            &rates(""),
            "/v1/chat/completions",
            None,
            &Payers::default(),
            1
        )
        .is_empty());
    }

    #[test]
    fn token_estimates_use_body_size_and_max_tokens() {
        let r = rates("limits: { default_max_tokens: 100 }\nmodels:\n  - { name: big, default_max_tokens: 4000 }\n");
        assert_eq!(r.estimate(400, Some(50), Some("big")), (100, 50));
        assert_eq!(r.estimate(401, None, Some("big")), (101, 4000));
        assert_eq!(r.estimate(0, None, Some("other")), (0, 100));
        assert_eq!(r.estimate(0, None, None), (0, 100));
    }

    #[test]
    fn the_tightest_bucket_fills_the_headers() {
        let d = demands(
            &rates(
                "limits:\n  global: { rpm: 100, tpm: 1000 }\nmodels:\n  - { name: m, rpm: 10 }\n",
            ),
            "/p",
            Some("m"),
            &Payers::default(),
            5,
        );
        let view = |limit, remaining, reset_ms| View {
            limit,
            remaining,
            reset_ms,
            retry_after_ms: 0,
        };
        let outcome = Outcome {
            admitted: true,
            views: vec![view(100, 99, 600), view(1000, 995, 300), view(10, 9, 6000)],
        };
        let q = Quota::of(&d, &outcome);
        assert_eq!(q.requests, Some(view(10, 9, 6000)));
        assert_eq!(q.tokens, Some(view(1000, 995, 300)));
        assert_eq!(
            q.headers(),
            vec![
                ("x-ratelimit-limit-requests", "10".to_owned()),
                ("x-ratelimit-remaining-requests", "9".to_owned()),
                ("x-ratelimit-reset-requests", "6s".to_owned()),
                ("x-ratelimit-limit-tokens", "1000".to_owned()),
                ("x-ratelimit-remaining-tokens", "995".to_owned()),
                ("x-ratelimit-reset-tokens", "300ms".to_owned()),
            ]
        );
        let empty = Outcome {
            admitted: true,
            views: vec![],
        };
        assert!(Quota::of(&d, &empty).headers().is_empty());
    }

    #[test]
    fn durations_read_like_openai_s() {
        assert_eq!(duration_text(0), "0ms");
        assert_eq!(duration_text(999), "999ms");
        assert_eq!(duration_text(1_500), "1.5s");
        assert_eq!(duration_text(60_000), "1m0s");
        assert_eq!(duration_text(361_250), "6m1.25s");
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_001), 2);
        assert_eq!(retry_after_secs(0), 1);
    }
}
