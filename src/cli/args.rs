//! Argument types shared by the admin commands, parsed (and rejected with exit 64) before
//! any request is sent: comma lists, JSON metadata, times, and values that `none` clears.

use crate::domain::{rfc3339, BudgetDuration};
use clap::Args;
use serde::Serialize;
use serde_json::{Map, Value};
use std::str::FromStr;
use std::time::Duration;

/// A JSON request body under construction; only the fields the user gave are set, so a
/// PATCH leaves everything else as it is.
pub type Body = Map<String, Value>;

/// Sets `field` when `value` is given.
pub fn set<T: Serialize>(body: &mut Body, field: &str, value: Option<T>) {
    if let Some(value) = value {
        body.insert(
            field.to_owned(),
            serde_json::to_value(value).expect("CLI values serialize"),
        );
    }
}

/// A value, or `none` to clear it (sent as JSON `null`). On create, `none` is the same as
/// leaving the flag out.
#[derive(Debug, Clone, PartialEq)]
pub enum Clearable<T> {
    Set(T),
    Clear,
}

impl<T: FromStr<Err: std::fmt::Display>> FromStr for Clearable<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" | "null" => Ok(Clearable::Clear),
            other => other
                .parse()
                .map(Clearable::Set)
                .map_err(|e| format!("{e} (or `none` to clear)")),
        }
    }
}

impl<T: Serialize> Serialize for Clearable<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Clearable::Set(v) => v.serialize(s),
            Clearable::Clear => s.serialize_none(),
        }
    }
}

/// `a,b,c`; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct CommaList(pub Vec<String>);

impl FromStr for CommaList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(CommaList(
            s.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// A JSON object given on the command line (`--metadata '{"env":"prod"}'`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct JsonObject(pub Value);

impl FromStr for JsonObject {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
        if !value.is_object() {
            return Err("must be a JSON object, like '{\"env\":\"prod\"}'".into());
        }
        Ok(JsonObject(value))
    }
}

/// A point in time sent as RFC 3339. Accepts RFC 3339, a date (`2026-11-24`), Unix seconds,
/// or a duration (`30d`, `12h`) counted from now: forward for a [`FutureTime`], back for a
/// [`PastTime`].
fn parse_time(s: &str, future: bool) -> Result<String, String> {
    let s = s.trim();
    if let Ok(duration) = humantime::parse_duration(s) {
        let secs = i64::try_from(duration.as_secs()).map_err(|_| "duration too long")?;
        let now = crate::domain::now();
        let at = if future { now + secs } else { now - secs };
        return Ok(rfc3339::format(at));
    }
    rfc3339::parse(s)
        .map(rfc3339::format)
        .map_err(|e| format!("{e}, or a duration like 30d"))
}

/// A time in the future; a duration means "from now" (`--expires-at 30d`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct FutureTime(pub String);

impl FromStr for FutureTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_time(s, true).map(FutureTime)
    }
}

/// A time in the past; a duration means "ago" (`--since 24h`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct PastTime(pub String);

impl FromStr for PastTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_time(s, false).map(PastTime)
    }
}

/// `true` or `false`, spelled out so `--blocked false` reads as intended.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        other => Err(format!("`{other}` is not true or false")),
    }
}

/// A grace period: `60s`, `15m`, `1h`.
pub fn parse_grace(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s.trim())
        .map(|d: Duration| d.as_secs())
        .map_err(|e| format!("invalid duration `{s}` ({e}); write it like 60s, 15m or 1h"))
}

/// Rate limits, parallel limit and budget, shared by keys, users and teams.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Requests per minute (`none`: no limit of its own)
    #[arg(long, value_name = "N")]
    pub rpm: Option<Clearable<u64>>,
    /// Tokens per minute (`none`: no limit of its own)
    #[arg(long, value_name = "N")]
    pub tpm: Option<Clearable<u64>>,
    /// Budget in USD per period (`none`: no budget)
    #[arg(long, value_name = "USD")]
    pub max_budget: Option<Clearable<f64>>,
    /// Budget period: 1d, 7d, 30d or 1mo (`none`: the budget never resets)
    #[arg(long, value_name = "PERIOD")]
    pub budget_duration: Option<Clearable<BudgetDuration>>,
    /// Most requests in flight at once, at least 1 (`none`: no limit of its own)
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<Clearable<u64>>,
}

impl LimitArgs {
    pub fn write(&self, body: &mut Body) {
        set(body, "rpm", self.rpm.as_ref());
        set(body, "tpm", self.tpm.as_ref());
        set(body, "max_budget", self.max_budget.as_ref());
        set(body, "budget_duration", self.budget_duration.as_ref());
        set(body, "max_parallel", self.max_parallel.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearable_parses_values_and_none() {
        assert_eq!("12".parse::<Clearable<u64>>(), Ok(Clearable::Set(12)));
        assert_eq!("none".parse::<Clearable<u64>>(), Ok(Clearable::Clear));
        assert!("x".parse::<Clearable<u64>>().unwrap_err().contains("none"));
        assert_eq!(
            "7d".parse::<Clearable<BudgetDuration>>(),
            Ok(Clearable::Set(BudgetDuration::Week))
        );
        let mut body = Body::new();
        set(&mut body, "rpm", Some(Clearable::<u64>::Clear));
        set(&mut body, "tpm", None::<u64>);
        assert_eq!(Value::Object(body), serde_json::json!({ "rpm": null }));
    }

    #[test]
    fn comma_lists_drop_blanks() {
        assert_eq!(
            "a, b,,c".parse::<CommaList>().unwrap().0,
            vec!["a".to_owned(), "b".into(), "c".into()]
        );
        assert!("".parse::<CommaList>().unwrap().0.is_empty());
    }

    #[test]
    fn times_accept_rfc3339_dates_and_durations() {
        assert_eq!(
            "2030-01-02".parse::<FutureTime>().unwrap().0,
            "2030-01-02T00:00:00Z"
        );
        assert_eq!(
            "2030-01-02T03:04:05+01:00".parse::<PastTime>().unwrap().0,
            "2030-01-02T02:04:05Z"
        );
        let soon = rfc3339::parse(&"1h".parse::<FutureTime>().unwrap().0).unwrap();
        assert!((soon - crate::domain::now() - 3600).abs() < 5);
        assert!("yesterday-ish".parse::<PastTime>().is_err());
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(r#"{"a":1}"#.parse::<JsonObject>().is_ok());
        assert!("[1]".parse::<JsonObject>().is_err());
        assert!("{".parse::<JsonObject>().is_err());
    }
}
