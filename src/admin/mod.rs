//! The HTTP API: admin routes, operational endpoints, and (later) the user API.
//!
//! One router factory ([`router`]), one file per resource, one error type ([`ApiError`])
//! that renders `{"error":{"code","message"}}`. Every admin and user route goes through
//! the [`Caller`] extractor and checks what the caller's role allows ([`access`]).

mod access;
mod error;
mod ops;
mod permission;
// The web UI (`crate::ui`) calls the handlers' functions of these, so that a page does what
// the API does, with the same role checks.
pub(crate) mod alerts;
pub(crate) mod audit;
pub(crate) mod budgets;
pub(crate) mod keys;
pub(crate) mod orgs;
pub(crate) mod profile;
pub(crate) mod roles;
pub(crate) mod session;
pub(crate) mod teams;
pub(crate) mod usage;
pub(crate) mod user_keys;
pub(crate) mod users;

pub use access::{Caller, OrgThing, SignedIn, Who};
pub use error::ApiError;
pub use session::SessionUser;

use crate::admission::Admission;
use crate::authn::login::Sessions;
use crate::authn::Authenticator;
use crate::config::Config;
use crate::invalidation::Invalidator;
use crate::metrics::Metrics;
use crate::store::SharedStore;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

/// What the HTTP API works with: the store it reads and writes, who a credential is, the
/// counters whose health `/readyz` reports, where admin writes are announced.
pub struct Api {
    pub config: Arc<Config>,
    pub store: SharedStore,
    pub auth: Arc<Authenticator>,
    pub admission: Arc<Admission>,
    pub invalidator: Arc<Invalidator>,
    pub metrics: Metrics,
    /// tollgate's own login sessions; `None` when `auth.session` is not configured.
    pub sessions: Option<Arc<Sessions>>,
}

pub type AppState = Arc<Api>;

/// Bodies larger than this are refused with 413 before they are parsed.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The whole HTTP API.
pub fn router(app: Arc<Api>) -> Router {
    Router::new()
        .merge(ops::routes())
        .merge(keys::routes())
        .merge(users::routes())
        .merge(teams::routes())
        .merge(orgs::routes())
        .merge(roles::routes())
        .merge(audit::routes())
        .merge(session::routes())
        .merge(profile::routes())
        .merge(user_keys::routes())
        .merge(usage::routes())
        .merge(alerts::routes())
        .merge(budgets::routes())
        .merge(permission::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// A JSON body, parsed whatever its `content-type` (curl users forget it), with our 400
/// on failure saying what is wrong and where. An empty body reads as `{}` where `T`
/// allows it, so bodies with only optional fields may be left out. The body is exactly one
/// JSON value: anything after it but whitespace (`{"name":"x"} trailing`, a second value)
/// is a 400, so what a proxy or a log shows is what was parsed.
///
/// `LIMIT` is the body limit the 413 names: the router's [`MAX_BODY_BYTES`], unless the
/// route sets a `DefaultBodyLimit` of its own (then its handler names the same number).
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

impl<T: DeserializeOwned, S: Send + Sync, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection.status().as_u16() {
                413 => ApiError::TooLarge(format!("request body is larger than {LIMIT} bytes")),
                _ => ApiError::BadRequest(rejection.body_text()),
            })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        // Every body is an object: serde would also fill a struct from an array, by position.
        if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "invalid JSON body: the body must be a JSON object".into(),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            ApiError::BadRequest(match path.as_str() {
                "." => format!("invalid JSON body: {}", e.inner()),
                _ => format!("invalid JSON body: `{path}`: {}", e.inner()),
            })
        })?;
        // `deserialize` stops after the first value; `end` refuses whatever follows it.
        de.end().map_err(|e| {
            ApiError::BadRequest(format!(
                "invalid JSON body: {e}: the body must be one JSON value"
            ))
        })?;
        Ok(JsonBody(value))
    }
}

/// Query strings with our error shape on failure.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// For PATCH bodies: tells "absent" (`None`) from "null" (`Some(None)`).
pub fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Whole numbers in bodies (`rpm`, `tpm`, `grace_seconds`): `5`, and also `5.0`, which is
/// the same number to JSON (and to JSON Schema's `integer`) and what clients whose numbers
/// are all floats send. A fraction or a number outside `i64` is refused.
pub mod whole {
    use serde::{de, Deserialize, Deserializer};

    struct Whole(i64);

    impl<'de> Deserialize<'de> for Whole {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = serde_json::Number::deserialize(d)?;
            n.as_i64()
                .or_else(|| {
                    n.as_f64()
                        // `i64::MIN as f64` is exactly -2^63; `-(i64::MIN as f64)` is 2^63.
                        .filter(|f| {
                            f.fract() == 0.0 && (i64::MIN as f64..-(i64::MIN as f64)).contains(f)
                        })
                        .map(|f| f as i64)
                })
                .map(Whole)
                .ok_or_else(|| de::Error::custom(format!("expected a whole number, got {n}")))
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Whole::deserialize(d).map(|w| w.0)
    }

    /// Absent or `null`: `None`.
    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<Whole>::deserialize(d).map(|w| w.map(|w| w.0))
    }

    /// For PATCH bodies, as [`super::nullable`]: absent `None`, `null` `Some(None)`.
    pub fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
        option(d).map(Some)
    }
}

/// A key, user or team as the API answers it: the record and its current-period spend.
#[derive(serde::Serialize)]
pub struct WithSpend<T> {
    #[serde(flatten)]
    pub item: T,
    /// USD spent in the entity's current budget period (calendar month without a
    /// `budget_duration`).
    pub spend: f64,
}

/// The record with its current-period spend read from the store.
pub async fn with_spend<T>(
    app: &AppState,
    kind: crate::store::SpendKind,
    id: &str,
    item: T,
) -> Result<WithSpend<T>, ApiError> {
    let spend = app
        .store
        .current_spend(kind, id, crate::domain::now())
        .await?;
    Ok(WithSpend { item, spend })
}

/// Each record of a list with its current-period spend, read for all of them at once
/// ([`UsageStore::current_spends`](crate::store::UsageStore::current_spends)).
pub async fn all_with_spend<T>(
    app: &AppState,
    kind: crate::store::SpendKind,
    items: Vec<T>,
    id: impl Fn(&T) -> String,
) -> Result<Vec<WithSpend<T>>, ApiError> {
    let ids: Vec<String> = items.iter().map(id).collect();
    let entities: Vec<(crate::store::SpendKind, &str)> =
        ids.iter().map(|id| (kind, id.as_str())).collect();
    let spends = app
        .store
        .current_spends(&entities, crate::domain::now())
        .await?;
    Ok(items
        .into_iter()
        .zip(spends)
        .map(|(item, spend)| WithSpend { item, spend })
        .collect())
}

/// `{"data": [...]}`, the shape of every list.
pub fn list<T: serde::Serialize>(items: Vec<T>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "data": items }))
}

/// The four limit fields of a create body (key, user or team) as one [`Limits`].
///
/// The request bodies list `rpm`, `tpm`, `max_budget`, `budget_duration` and
/// `max_parallel` themselves:
/// `#[serde(flatten)]` does not work together with `deny_unknown_fields`.
///
/// [`Limits`]: crate::domain::Limits
macro_rules! limits_of {
    ($body:ident) => {
        $crate::domain::Limits {
            rpm: $body.rpm,
            tpm: $body.tpm,
            max_budget: $body.max_budget,
            budget_duration: $body.budget_duration,
            max_parallel: $body.max_parallel,
        }
    };
}

/// The four limit fields of an update body as one [`LimitsPatch`] (see [`limits_of`]).
///
/// [`LimitsPatch`]: crate::store::LimitsPatch
macro_rules! limits_patch_of {
    ($body:ident) => {
        $crate::store::LimitsPatch {
            rpm: $body.rpm,
            tpm: $body.tpm,
            max_budget: $body.max_budget,
            budget_duration: $body.budget_duration,
            max_parallel: $body.max_parallel,
        }
    };
}

use {limits_of, limits_patch_of};

/// Shared checks of the fields that keys, users and teams have in common.
pub mod validate {
    use super::ApiError;
    use crate::domain::Limits;
    use crate::store::LimitsPatch;

    pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(ApiError::BadRequest(format!("`{field}` must not be empty")));
        }
        if value.chars().count() > 200 {
            return Err(ApiError::BadRequest(format!(
                "`{field}` is longer than 200 characters"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "`{field}` must not contain control characters"
            )));
        }
        Ok(())
    }

    pub fn limit(field: &str, value: Option<i64>) -> Result<(), ApiError> {
        match value {
            Some(v) if v < 0 => Err(ApiError::BadRequest(format!(
                "`{field}` must be zero or more, got {v}"
            ))),
            _ => Ok(()),
        }
    }

    pub fn budget(value: Option<f64>) -> Result<(), ApiError> {
        match value {
            Some(v) if !v.is_finite() || v < 0.0 => Err(ApiError::BadRequest(format!(
                "`max_budget` must be a USD amount of zero or more, got {v}"
            ))),
            _ => Ok(()),
        }
    }

    /// The limits of a key, user or team: `rpm` and `tpm` zero or more, `max_budget` a USD
    /// amount of zero or more, `max_parallel` one or more (0 would refuse everything: block
    /// the entity instead).
    pub fn limits(limits: &Limits) -> Result<(), ApiError> {
        limit("rpm", limits.rpm)?;
        limit("tpm", limits.tpm)?;
        parallel(limits.max_parallel)?;
        budget(limits.max_budget)
    }

    pub fn parallel(value: Option<i64>) -> Result<(), ApiError> {
        match value {
            Some(v) if v < 1 => Err(ApiError::BadRequest(format!(
                "`max_parallel` must be 1 or more (or null for no cap), got {v}"
            ))),
            _ => Ok(()),
        }
    }

    /// The limits a patch sets, checked as [`limits`]; clearing a limit is always allowed.
    pub fn limits_patch(patch: &LimitsPatch) -> Result<(), ApiError> {
        limits(&Limits {
            rpm: patch.rpm.flatten(),
            tpm: patch.tpm.flatten(),
            max_budget: patch.max_budget.flatten(),
            budget_duration: patch.budget_duration.flatten(),
            max_parallel: patch.max_parallel.flatten(),
        })
    }

    /// `metadata`, when given, is a JSON object.
    pub fn metadata(value: &Option<serde_json::Value>) -> Result<(), ApiError> {
        match value {
            Some(m) if !m.is_object() => Err(ApiError::BadRequest(
                "`metadata` must be a JSON object".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Permission and model names: short, printable, no spaces.
    pub fn tokens(field: &str, values: &[String]) -> Result<(), ApiError> {
        for v in values {
            if v.is_empty()
                || v.chars().count() > 128
                || v.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ApiError::BadRequest(format!(
                    "`{field}` has an invalid entry {v:?}: entries are non-empty, at most 128 characters, without spaces"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::whole;
    use crate::domain::rfc3339;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Limits {
        #[serde(default, deserialize_with = "whole::option")]
        rpm: Option<i64>,
        #[serde(default, deserialize_with = "whole::nullable")]
        tpm: Option<Option<i64>>,
    }

    fn limits(json: &str) -> Result<(Option<i64>, Option<Option<i64>>), String> {
        serde_json::from_str::<Limits>(json)
            .map(|l| (l.rpm, l.tpm))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats_but_not_with_a_fraction() {
        assert_eq!(
            limits(r#"{"rpm": 5, "tpm": 7}"#),
            Ok((Some(5), Some(Some(7))))
        );
        assert_eq!(
            limits(r#"{"rpm": 5.0, "tpm": 7e2}"#),
            Ok((Some(5), Some(Some(700))))
        );
        assert_eq!(
            limits(r#"{"rpm": null, "tpm": null}"#),
            Ok((None, Some(None)))
        );
        assert_eq!(limits("{}"), Ok((None, None)));
        for bad in [r#"{"rpm": 5.5}"#, r#"{"rpm": 1e19}"#, r#"{"rpm": "5"}"#] {
            assert!(limits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_those_rfc_3339_can_write() {
        assert_eq!(rfc3339::parse("0000-01-01T00:00:00Z"), Ok(rfc3339::MIN));
        assert_eq!(rfc3339::parse("9999-12-31"), Ok(rfc3339::MAX - 86_399));
        assert_eq!(rfc3339::parse("253402300799"), Ok(rfc3339::MAX));
        assert!(rfc3339::parse("253402300800").is_err());
        assert!(rfc3339::parse("-62167219201").is_err());
        #[derive(Deserialize)]
        struct At {
            #[serde(with = "rfc3339")]
            at: i64,
        }
        let at = |json: &str| serde_json::from_str::<At>(json).map(|a| a.at).ok();
        assert_eq!(at(r#"{"at": 1767225600}"#), Some(1_767_225_600));
        assert_eq!(at(r#"{"at": 1767225600.0}"#), Some(1_767_225_600));
        assert_eq!(at(r#"{"at": 1767225600.5}"#), None);
        assert_eq!(at(r#"{"at": 9223372036854775806}"#), None);
    }
}
