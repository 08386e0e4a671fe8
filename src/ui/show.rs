//! What the teams, users, usage, budgets, alerts and audit pages share: how times, amounts
//! and names are shown, the choices of a select, the `{id}` of a page's path, and the form
//! fields that become the API's numbers.
//!
//! Reading a form field never decides anything the API decides: a field that is not a
//! number is refused here with its name (the API takes numbers, not text), and the number
//! goes to the API's function, which checks it as it checks a JSON body.

use super::web::UiError;
use super::UiState;
use crate::admin::AppState;
use crate::domain::{BudgetDuration, Limits, Timestamp};
use crate::store::SpendKind;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::str::FromStr;

/// A time as the pages show it: `2026-12-07 08:58 UTC`.
pub fn when(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| at.to_string())
}

/// A UTC day: `2026-12-07`.
pub fn day(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| at.to_string())
}

/// USD with cents: `$12.50`; amounts under a cent that are not zero keep four decimals, so
/// that a little usage does not read as none.
pub fn usd(amount: f64) -> String {
    if amount != 0.0 && amount.abs() < 0.01 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

/// `$25.00 per 7 days`, `$100.00 per calendar month`, or empty without a budget.
pub fn budget(limits: &Limits) -> String {
    let period = match limits.budget_duration {
        Some(BudgetDuration::Day) => "day",
        Some(BudgetDuration::Week) => "7 days",
        Some(BudgetDuration::ThirtyDays) => "30 days",
        Some(BudgetDuration::Month) | None => "calendar month",
    };
    match limits.max_budget {
        Some(max) => format!("{} per {period}", usd(max)),
        None => String::new(),
    }
}

/// A count with thousands separated: `12,345`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first part of an id, for something whose name has gone.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A fixed choice in a select.
pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

pub fn choices(options: &[(&'static str, &'static str)], selected: &str) -> Vec<Choice> {
    options
        .iter()
        .map(|(value, label)| Choice {
            value,
            label,
            selected: *value == selected,
        })
        .collect()
}

/// A choice whose value is not fixed (a team).
pub struct Pick {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

/// The budget period's choices, as every form with a budget offers them.
pub const DURATIONS: [(&str, &str); 5] = [
    ("", "Calendar month (no period of its own)"),
    ("1d", "1 day"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("1mo", "Calendar month"),
];

/// The roles, as the forms offer them.
pub const ROLES: [(&str, &str); 4] = [
    ("user", "user"),
    ("manager", "manager"),
    ("viewer", "viewer"),
    ("admin", "admin"),
];

/// The `{id}` of a page's path (a team, a user): an id as the store makes them, else no
/// such page.
pub struct PathId(pub String);

impl FromRequestParts<UiState> for PathId {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState) -> Result<PathId, UiError> {
        let axum::extract::Path(id) = axum::extract::Path::<String>::from_request_parts(parts, ui)
            .await
            .map_err(|_| UiError::bad_request("The id in the address cannot be read."))?;
        if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
            return Err(UiError::not_found("There is no such page."));
        }
        Ok(PathId(id))
    }
}

// ---- form fields ------------------------------------------------------------------------

/// A whole-number field (`rpm`, `tpm`): empty is none.
pub fn whole(field: &str, text: &str) -> Result<Option<i64>, UiError> {
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| {
            UiError::bad_request(format!(
                "`{field}` must be a whole number, not `{}`.",
                clip(t)
            ))
        }),
    }
}

/// An amount in USD (`max_budget`), `25`, `12.50` or `$12.50`: empty is none.
pub fn amount(field: &str, text: &str) -> Result<Option<f64>, UiError> {
    match text.trim().trim_start_matches('$') {
        "" => Ok(None),
        t => t.parse::<f64>().map(Some).map_err(|_| {
            UiError::bad_request(format!(
                "`{field}` must be an amount in USD such as 25 or 12.50, not `{}`.",
                clip(t)
            ))
        }),
    }
}

/// A budget period (`1d`, `7d`, `30d`, `1mo`): empty is none.
pub fn duration(text: &str) -> Result<Option<BudgetDuration>, UiError> {
    match text.trim() {
        "" => Ok(None),
        t => BudgetDuration::from_str(t)
            .map(Some)
            .map_err(UiError::bad_request),
    }
}

/// Model names separated by commas or spaces.
pub fn models(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What was typed, cut for a message: a field of 60,000 characters is named, not repeated.
pub fn clip(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A filter of a listing's query string (`q`, `actor`): at most `max` characters, no
/// control characters; refused with the field's name otherwise.
pub fn filter_text(field: &str, text: &str, max: usize) -> Result<String, UiError> {
    let text = text.trim();
    if text.chars().count() > max {
        return Err(UiError::bad_request(format!(
            "`{field}` is longer than {max} characters."
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(UiError::bad_request(format!(
            "`{field}` must not contain control characters."
        )));
    }
    Ok(text.to_owned())
}

// ---- names ------------------------------------------------------------------------------

/// The names of users, teams, orgs and keys, each read once per page. Used only where the page's
/// reader may read the record through the API (admins and viewers read every record).
#[derive(Default)]
pub struct Names {
    users: HashMap<String, Option<String>>,
    teams: HashMap<String, Option<String>>,
    orgs: HashMap<String, Option<String>>,
    keys: HashMap<String, Option<String>>,
}

impl Names {
    /// The username, or `None` when there is no such live user.
    pub async fn user(&mut self, app: &AppState, id: &str) -> Result<Option<String>, UiError> {
        if !self.users.contains_key(id) {
            let name = app.store.get_user(id).await?.map(|u| u.username);
            self.users.insert(id.to_owned(), name);
        }
        Ok(self.users[id].clone())
    }

    /// Reads the names of `wanted` at once (one query per kind, [`crate::store::UsageStore::names`]),
    /// so that the lookups that follow are answered from here: a page that names its rows'
    /// owners reads them before its loop. An id without such a record is remembered as
    /// none.
    pub async fn load(
        &mut self,
        app: &AppState,
        wanted: &[(SpendKind, &str)],
    ) -> Result<(), UiError> {
        let mut found = app.store.names(wanted).await?;
        for &(kind, id) in wanted {
            let name = found.remove(&(kind, id.to_owned()));
            let map = match kind {
                SpendKind::Key => &mut self.keys,
                SpendKind::User => &mut self.users,
                SpendKind::Team => &mut self.teams,
                SpendKind::Org => &mut self.orgs,
            };
            map.entry(id.to_owned()).or_insert(name);
        }
        Ok(())
    }

    /// The org's name, or `None` when there is no such live org.
    pub async fn org(&mut self, app: &AppState, id: &str) -> Result<Option<String>, UiError> {
        if !self.orgs.contains_key(id) {
            let name = app.store.get_org(id).await?.map(|o| o.name);
            self.orgs.insert(id.to_owned(), name);
        }
        Ok(self.orgs[id].clone())
    }

    /// The team's name, or `None` when there is no such live team.
    pub async fn team(&mut self, app: &AppState, id: &str) -> Result<Option<String>, UiError> {
        if !self.teams.contains_key(id) {
            let name = app.store.get_team(id).await?.map(|t| t.name);
            self.teams.insert(id.to_owned(), name);
        }
        Ok(self.teams[id].clone())
    }

    /// The key's name (revoked keys too), or `None` when there is no such key.
    pub async fn key(&mut self, app: &AppState, id: &str) -> Result<Option<String>, UiError> {
        if !self.keys.contains_key(id) {
            let name = app.store.get_key(id).await?.map(|k| k.name);
            self.keys.insert(id.to_owned(), name);
        }
        Ok(self.keys[id].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_counts_read_as_people_write_them() {
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(0.0025), "$0.0025");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(12_345_678), "12,345,678");
    }

    #[test]
    fn fields_name_themselves_when_they_cannot_be_read() {
        assert_eq!(whole("rpm", " 60 ").unwrap(), Some(60));
        assert_eq!(whole("rpm", "").unwrap(), None);
        assert!(whole("rpm", "lots").unwrap_err().message.contains("`rpm`"));
        assert_eq!(amount("max_budget", "$12.50").unwrap(), Some(12.5));
        assert!(amount("max_budget", "ten")
            .unwrap_err()
            .message
            .contains("`max_budget`"));
        assert_eq!(duration("1mo").unwrap(), Some(BudgetDuration::Month));
        assert!(duration("2w").is_err());
        assert_eq!(models("a, b  c"), ["a", "b", "c"]);
        let huge = "9".repeat(10_000);
        let message = whole("tpm", &format!("{huge}x")).unwrap_err().message;
        assert!(message.len() < 200, "{message}");
        assert!(filter_text("q", &"a".repeat(201), 200).is_err());
        assert!(filter_text("q", "a\u{0}b", 200).is_err());
        assert_eq!(
            filter_text("q", " ' OR 1=1 -- ", 200).unwrap(),
            "' OR 1=1 --"
        );
    }
}
