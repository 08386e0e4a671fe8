//! The records tollgate keeps: users, teams, memberships, virtual keys and audit events.
//!
//! These are plain data shared by the store, the admin API and the decision pipeline.
//! Times are Unix seconds (UTC); money is USD as `f64`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Unix seconds, UTC.
pub type Timestamp = i64;

/// Serde for [`Timestamp`]s in the API: RFC 3339 strings out; RFC 3339 strings or Unix
/// seconds in.
pub mod rfc3339 {
    use super::Timestamp;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn format(t: Timestamp) -> String {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| t.to_string())
    }

    /// The first and last second that RFC 3339 can write (years 0000 to 9999): a time
    /// taken in is one the API can give back.
    pub const MIN: Timestamp = -62_167_219_200;
    pub const MAX: Timestamp = 253_402_300_799;

    /// Parses RFC 3339 (`2026-11-24T10:00:00Z`), a date (`2026-11-24`, midnight UTC), or
    /// Unix seconds, from year 0000 to 9999.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<i64>() {
            return in_range(secs);
        }
        if let Ok(d) = chrono::DateTime::parse_from_rfc3339(text) {
            return in_range(d.timestamp());
        }
        if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return in_range(
                d.and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
                    .and_utc()
                    .timestamp(),
            );
        }
        Err(format!(
            "`{text}` is not a time: use RFC 3339 (2026-11-24T10:00:00Z), a date (2026-11-24) or Unix seconds"
        ))
    }

    fn in_range(t: Timestamp) -> Result<Timestamp, String> {
        if (MIN..=MAX).contains(&t) {
            Ok(t)
        } else {
            Err(format!(
                "`{t}` is out of range: times are from year 0000 to 9999 (Unix seconds {MIN} to {MAX})"
            ))
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Input {
        Secs(i64),
        /// `1767225600.0`: the same number to JSON, from clients whose numbers are floats.
        WholeSecs(f64),
        Text(String),
    }

    fn from_input<E: de::Error>(input: Input) -> Result<Timestamp, E> {
        match input {
            Input::Secs(s) => in_range(s).map_err(E::custom),
            Input::WholeSecs(f) if f.fract() == 0.0 && (MIN as f64..=MAX as f64).contains(&f) => {
                Ok(f as i64)
            }
            Input::WholeSecs(f) => Err(E::custom(format!(
                "`{f}` is not a time: Unix seconds are a whole number from {MIN} to {MAX}"
            ))),
            Input::Text(t) => parse(&t).map_err(E::custom),
        }
    }

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        from_input(Input::deserialize(d)?)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<Input>::deserialize(d)?.map(from_input).transpose()
        }
    }
}

/// Current time in Unix seconds.
pub fn now() -> Timestamp {
    chrono::Utc::now().timestamp()
}

/// A new time-ordered identifier (UUIDv7, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A user's role across the whole installation: a built-in one, or a custom role an admin
/// defined (`/admin/roles`). Cloning is cheap (a custom role is shared, not copied).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Manager,
    User,
    Viewer,
    /// Manages one organization (the user's `org_id`): its teams, users, keys, usage and
    /// audit log, nothing of another org (docs/DESIGN.md, "Org admins").
    OrgAdmin,
    /// A custom role, with the permissions the store read along with the user. Parsed from
    /// a name alone (a request body) it holds no permissions, so it grants nothing until
    /// the store resolves it.
    Custom(Arc<CustomRole>),
}

/// A custom role as a user holds it: its name and its permissions.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CustomRole {
    pub name: Box<str>,
    pub permissions: Box<[Box<str>]>,
}

/// The longest custom role name.
pub const MAX_ROLE_NAME_CHARS: usize = 64;

impl Role {
    /// The built-in roles' names. They cannot name a custom role.
    pub const BUILT_IN: [&'static str; 5] = ["admin", "manager", "user", "viewer", "org_admin"];

    /// The built-in role of this name.
    pub fn built_in(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "manager" => Some(Role::Manager),
            "user" => Some(Role::User),
            "viewer" => Some(Role::Viewer),
            "org_admin" => Some(Role::OrgAdmin),
            _ => None,
        }
    }

    /// A custom role with its permissions.
    pub fn custom(name: &str, permissions: &[String]) -> Role {
        Role::Custom(Arc::new(CustomRole {
            name: name.into(),
            permissions: permissions.iter().map(|p| p.as_str().into()).collect(),
        }))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::User => "user",
            Role::Viewer => "viewer",
            Role::OrgAdmin => "org_admin",
            Role::Custom(role) => &role.name,
        }
    }

    pub fn is_custom(&self) -> bool {
        matches!(self, Role::Custom(_))
    }

    /// Whether `name` is reserved: a built-in role's.
    pub fn is_reserved(name: &str) -> bool {
        Role::BUILT_IN.contains(&name)
    }

    /// Checks a custom role's name: 1 to 64 characters, a lowercase letter first, then
    /// lowercase letters, digits, `-` and `_`; not a built-in role's.
    pub fn check_custom_name(name: &str) -> Result<(), String> {
        let well_formed = name.len() <= MAX_ROLE_NAME_CHARS
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !well_formed {
            return Err(format!(
                "`{name}` is not a role name: 1 to {MAX_ROLE_NAME_CHARS} characters, a lowercase letter first, then lowercase letters, digits, `-` or `_`"
            ));
        }
        if Role::is_reserved(name) {
            return Err(format!("`{name}` is a built-in role's name"));
        }
        Ok(())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in role by name, else a custom role's name (not yet resolved: no permissions).
impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        if let Some(role) = Role::built_in(s) {
            return Ok(role);
        }
        if Role::check_custom_name(s).is_err() {
            return Err(format!(
                "unknown role `{s}` (built-in roles: {}; a custom role's name is 1 to {MAX_ROLE_NAME_CHARS} characters, a lowercase letter first, then lowercase letters, digits, `-` or `_`)",
                Role::BUILT_IN.join(", ")
            ));
        }
        Ok(Role::custom(s, &[]))
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// A custom role as `/admin/roles` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDef {
    pub name: String,
    pub permissions: Vec<String>,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "rfc3339")]
    pub updated_at: Timestamp,
}

/// A user's role inside one team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    Owner,
    Member,
}

macro_rules! string_enum {
    ($ty:ty, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " `{}` (expected one of: {})"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(TeamRole, "team role", { Owner => "owner", Member => "member" });

/// Where a team membership came from: granted by hand, or synced from an identity
/// provider's groups (only the latter are removed by group sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipSource {
    Manual,
    Group,
}

string_enum!(MembershipSource, "membership source", { Manual => "manual", Group => "group" });

/// How often a budget's spend resets: `1d`, `7d`, `30d`, `1mo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BudgetDuration {
    #[serde(rename = "1d")]
    Day,
    #[serde(rename = "7d")]
    Week,
    #[serde(rename = "30d")]
    ThirtyDays,
    #[serde(rename = "1mo")]
    Month,
}

string_enum!(BudgetDuration, "budget_duration", { Day => "1d", Week => "7d", ThirtyDays => "30d", Month => "1mo" });

/// Fields shared by everything that can carry limits and a budget: keys, users, teams.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<BudgetDuration>,
    /// Most requests in flight at once (from Check until their usage record, or
    /// `limits.parallel_lease`); at least 1, none for no cap.
    pub max_parallel: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub full_name: Option<String>,
    pub role: Role,
    /// The org the user belongs to (`None`: none, the installation's own). Set at creation.
    #[serde(default)]
    pub org_id: Option<String>,
    pub blocked: bool,
    #[serde(flatten)]
    pub limits: Limits,
    pub metadata: serde_json::Value,
    /// Set while the account is locked out after repeated failed logins.
    #[serde(with = "rfc3339::option", default)]
    pub locked_until: Option<Timestamp>,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "rfc3339")]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    /// The org the team belongs to (`None`: none). Set at creation; a team never moves.
    #[serde(default)]
    pub org_id: Option<String>,
    /// Models the team's keys may use; empty means no restriction.
    pub models: Vec<String>,
    pub blocked: bool,
    #[serde(flatten)]
    pub limits: Limits,
    pub metadata: serde_json::Value,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "rfc3339")]
    pub updated_at: Timestamp,
}

/// An organization (tenant): teams and users belong to at most one. It carries limits and
/// a budget like a team; its spend is everything its teams' and users' keys spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Org {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub limits: Limits,
    pub metadata: serde_json::Value,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "rfc3339")]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub team_id: String,
    pub user_id: String,
    pub role: TeamRole,
    pub source: MembershipSource,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
}

/// A virtual API key as stored. The plaintext is never stored; `key_hint` is a
/// recognisable fragment (`sk-tg-AbCd…wxyz`) for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub key_hint: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Permissions granted to the key; empty means "as its owner".
    pub permissions: Vec<String>,
    /// Models the key may use; empty means "as its owner".
    pub models: Vec<String>,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(with = "rfc3339::option")]
    pub expires_at: Option<Timestamp>,
    pub blocked: bool,
    pub metadata: serde_json::Value,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "rfc3339")]
    pub updated_at: Timestamp,
    #[serde(with = "rfc3339::option")]
    pub revoked_at: Option<Timestamp>,
    /// When the key was rotated with a grace period: the old secret's end of life.
    #[serde(with = "rfc3339::option")]
    pub previous_expires_at: Option<Timestamp>,
}

/// What the store returns for a credential lookup: the key, whether the presented
/// secret is the previous (rotated-out) one, and the owner's facts that the decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyLookup {
    pub key: ApiKey,
    /// The presented secret is the key's previous one, valid until `key.previous_expires_at`.
    pub via_previous: bool,
    /// The owning user, when the key belongs to a user.
    pub user: Option<KeyOwnerUser>,
    /// The owning team, when the key belongs to a team.
    pub team: Option<KeyOwnerTeam>,
    /// The org of the key's team, else of its user, when it has one.
    pub org: Option<KeyOwnerOrg>,
}

/// A virtual key as the key cache keeps it and a decision reads it: standing,
/// permissions, models, limits and the identity it grants, and nothing else (the name,
/// hint, metadata and timestamps of [`ApiKey`] are the API's). Text is boxed rather than
/// growable, and the owners and the permission and model lists are shared with the other
/// cached keys that have the same ones (`authn::key_cache`): at 100,000 cached keys, every
/// byte here is 100 kB of memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedKey {
    pub id: Box<str>,
    /// Permissions granted to the key; empty means "as its owner".
    pub permissions: Names,
    /// Models the key may use; empty means "as its owner".
    pub models: Names,
    /// Shared by the cached keys with equal limits (most have none, or one of a few tiers).
    pub limits: Arc<Limits>,
    pub expires_at: Option<Timestamp>,
    /// When the key was rotated with a grace period: the old secret's end of life.
    pub previous_expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub blocked: bool,
    /// The presented secret is the key's previous one, valid until `previous_expires_at`.
    pub via_previous: bool,
    /// The owning user, when the key belongs to a user.
    pub user: Option<Arc<KeyOwnerUser>>,
    /// The owning team, when the key belongs to a team.
    pub team: Option<Arc<KeyOwnerTeam>>,
    /// The org of the key's team, else of its user, when it has one.
    pub org: Option<Arc<KeyOwnerOrg>>,
}

/// A list of names (permissions, models) as cached keys hold it.
pub type Names = Arc<[Box<str>]>;

/// A lookup as its own copy, sharing nothing with other keys (the key cache shares).
impl From<KeyLookup> for CachedKey {
    fn from(lookup: KeyLookup) -> CachedKey {
        let names = |list: Vec<String>| list.into_iter().map(String::into_boxed_str).collect();
        CachedKey {
            permissions: names(lookup.key.permissions),
            models: names(lookup.key.models),
            limits: Arc::new(lookup.key.limits),
            expires_at: lookup.key.expires_at,
            previous_expires_at: lookup.key.previous_expires_at,
            revoked: lookup.key.revoked_at.is_some(),
            blocked: lookup.key.blocked,
            via_previous: lookup.via_previous,
            user: lookup.user.map(Arc::new),
            team: lookup.team.map(Arc::new),
            org: lookup.org.map(Arc::new),
            id: lookup.key.id.into_boxed_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwnerUser {
    pub id: String,
    pub role: Role,
    pub blocked: bool,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwnerTeam {
    pub id: String,
    pub models: Vec<String>,
    pub blocked: bool,
    pub limits: Limits,
}

/// The org a request is charged to: its limits and budget (see [`Org`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwnerOrg {
    pub id: String,
    pub limits: Limits,
}

impl From<&Org> for KeyOwnerOrg {
    fn from(org: &Org) -> KeyOwnerOrg {
        KeyOwnerOrg {
            id: org.id.clone(),
            limits: org.limits.clone(),
        }
    }
}

/// One line of the audit log. `details` never carries a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    #[serde(with = "rfc3339")]
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub source: Option<String>,
    pub details: serde_json::Value,
}

/// An audit event about to be written (the store assigns `id`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub source: Option<String>,
    pub details: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print_by_name() {
        for name in Role::BUILT_IN {
            let role: Role = name.parse().unwrap();
            assert!(!role.is_custom());
            assert_eq!(role.as_str(), name);
            assert_eq!(serde_json::to_value(&role).unwrap(), name);
        }
        let custom: Role = "data-team_2".parse().unwrap();
        assert_eq!(custom, Role::custom("data-team_2", &[]));
        assert_eq!(serde_json::to_value(&custom).unwrap(), "data-team_2");
        let back: Role = serde_json::from_value(serde_json::json!("data-team_2")).unwrap();
        assert_eq!(back, custom);
        for bad in ["", "Data", "2fast", "a b", "ok!", &"x".repeat(65)] {
            let e = bad.parse::<Role>().unwrap_err();
            assert!(
                e.starts_with(&format!("unknown role `{bad}`")),
                "{bad}: {e}"
            );
        }
        assert!("x".repeat(64).parse::<Role>().is_ok());
        for name in ["viewer", "org_admin"] {
            let e = Role::check_custom_name(name).unwrap_err();
            assert!(e.contains("built-in role"), "{e}");
        }
        let e = Role::check_custom_name("Data").unwrap_err();
        assert!(e.contains("is not a role name"), "{e}");
        assert!(serde_json::from_value::<Role>(serde_json::json!("Nope")).is_err());
    }
}
