//! Persistence: users, teams, memberships, virtual keys, OIDC identities, login sessions, the
//! audit log, usage records and spend, budget alerts, and passkeys.
//!
//! The contract is split by capability, one trait per kind of record:
//! - [`UserStore`]: users (create, read, patch, soft delete).
//! - [`TeamStore`]: teams and their memberships.
//! - [`OrgStore`]: organizations (tenants) above teams and users.
//! - [`KeyStore`]: virtual keys, and the hot path's lookup of a key by its hash.
//! - [`AuditStore`]: reading the audit log, and audit lines for events that are not writes.
//! - [`IdentityStore`]: OIDC identities: the user of an (issuer, subject), found, linked or
//!   provisioned, with its role and group memberships synced.
//! - [`SessionStore`]: password login: failure counts and lockouts, password hashes, and
//!   refresh-token families (rotation, reuse, logout).
//! - [`UsageStore`]: usage records, the spend they accrue, and usage reports.
//! - [`AlertStore`]: the budget alert outbox.
//! - [`SsoStore`]: sign-ins with SSO between their start and the issuer's answer.
//! - [`PasskeyStore`]: passkeys (WebAuthn credentials) of the web UI, their users' handles,
//!   and the challenges of ceremonies in progress (in `passkeys.rs`, with its records).
//! - [`UiSessionStore`]: the web UI's browser sessions.
//!
//! [`Store`] is their union plus the schema (`migrate`, `ping`). The crate holds a store as
//! [`SharedStore`] (`Arc<dyn Store>`), on which every capability's methods are called without
//! importing its trait; code that calls them on a concrete [`sql::SqlStore`] imports the
//! capability traits it uses.
//!
//! One SQL implementation ([`sql::SqlStore`]) runs on SQLite (the embedded default) and on
//! Postgres through sqlx's `Any` driver. The schemas live in `migrations/sqlite` and
//! `migrations/postgres`; the SQL text is shared, so both backends behave the same and one
//! behaviour suite (`tests/store.rs`) runs over both.
//!
//! Every write takes an [`Actor`] and records its audit event in the same transaction, so an
//! admin write without its audit line cannot happen.

mod passkeys;
pub mod sql;

pub use passkeys::{
    NewPasskey, Passkey, PasskeyCeremony, PasskeyChallenge, PasskeyCredential, PasskeyStore,
    MAX_PASSKEYS_PER_USER, MAX_PASSKEY_NAME_CHARS,
};

use crate::backend::{Backend, BackendError};
use crate::domain::{
    rfc3339, ApiKey, AuditEvent, BudgetDuration, KeyLookup, Limits, Membership, MembershipSource,
    Org, Role, RoleDef, Team, TeamRole, Timestamp, User,
};
use crate::secret::Secret;
use crate::usage::UsageRecord;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub type SharedStore = Arc<dyn Store>;

/// Why a store call failed: a write the data refuses (`Conflict`, `Invalid`: answered as
/// such), or a database that could not do it ([`BackendError`], transient or not).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl StoreError {
    /// The database could not be reached or timed out: the same call can succeed shortly.
    pub fn unavailable(detail: impl Into<String>) -> StoreError {
        StoreError::Backend(BackendError::unavailable(Backend::Database, detail))
    }

    /// The database answered an error that repeating the call will not cure.
    pub fn fault(detail: impl Into<String>) -> StoreError {
        StoreError::Backend(BackendError::fault(Backend::Database, detail))
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend(e) if e.is_transient())
    }
}

/// Where a store call was needed and could not be made at all: a conflict or an invalid
/// record there is the database misbehaving, not the caller.
impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> BackendError {
        match e {
            StoreError::Backend(e) => e,
            StoreError::Conflict(m) | StoreError::Invalid(m) => {
                BackendError::fault(Backend::Database, m)
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Who is writing, for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    /// `master`, `key:<id>` or `user:<id>`.
    pub name: String,
    /// The client's address, when known.
    pub source: Option<String>,
}

impl Actor {
    pub fn new(name: impl Into<String>, source: Option<String>) -> Self {
        Actor {
            name: name.into(),
            source,
        }
    }
}

/// A partial update of the [`Limits`] that keys, users and teams share: `None` leaves a
/// field as it is; `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsPatch {
    pub rpm: Option<Option<i64>>,
    pub tpm: Option<Option<i64>>,
    pub max_budget: Option<Option<f64>>,
    pub budget_duration: Option<Option<BudgetDuration>>,
    pub max_parallel: Option<Option<i64>>,
}

#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub full_name: Option<String>,
    pub role: Option<Role>,
    /// An argon2id PHC string, never a plaintext password.
    pub password_hash: Option<String>,
    pub limits: Limits,
    pub metadata: Option<serde_json::Value>,
    /// The live org the user belongs to (fixed from then on).
    pub org_id: Option<String>,
    /// Nobody vouches for `email`: the user typed it in (registration). No OIDC identity is
    /// linked to this user by email (see [`OidcLogin::email_verified`]).
    pub email_unverified: bool,
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears a nullable field.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<String>,
    /// With `email`: the user changed it themselves (profile), so nobody vouches for it;
    /// otherwise (an admin's change) it counts as verified.
    pub email_unverified: bool,
    pub full_name: Option<Option<String>>,
    pub role: Option<Role>,
    pub blocked: Option<bool>,
    pub limits: LimitsPatch,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct NewTeam {
    pub name: String,
    pub models: Vec<String>,
    pub limits: Limits,
    pub metadata: Option<serde_json::Value>,
    /// The live org the team belongs to (fixed from then on).
    pub org_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TeamPatch {
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
    pub blocked: Option<bool>,
    pub limits: LimitsPatch,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct NewOrg {
    pub name: String,
    pub limits: Limits,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct OrgPatch {
    pub name: Option<String>,
    pub limits: LimitsPatch,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    /// SHA-256 of the whole plaintext key, lowercase hex.
    pub key_hash: String,
    pub key_hint: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub permissions: Vec<String>,
    pub models: Vec<String>,
    pub limits: Limits,
    pub expires_at: Option<Timestamp>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub blocked: Option<bool>,
    pub limits: LimitsPatch,
    pub expires_at: Option<Option<Timestamp>>,
    pub metadata: Option<serde_json::Value>,
}

/// Which keys a listing answers. Every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Keys of this org: of its users, or of its teams.
    pub org_id: Option<String>,
    /// Revoked keys too (ignored when `status` is given: the status decides).
    pub include_revoked: bool,
    /// Keys whose name contains it (case-insensitively, ASCII letters only on SQLite), whose
    /// id starts with it, or whose `key_hint` contains it. `%`, `_` and `\` match
    /// themselves.
    pub search: Option<String>,
    /// Keys in this state at the time of the listing.
    pub status: Option<KeyStatus>,
}

/// What state a key is in, as the key listing filters and the UI shows it. Exactly one
/// holds for every key: revoked first, then expired, then blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Not revoked, not expired, not blocked: it works (its owner's standing aside).
    Active,
    /// Not revoked nor expired, and blocked.
    Blocked,
    Revoked,
    /// Not revoked, and past its `expires_at`.
    Expired,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 4] = [
        KeyStatus::Active,
        KeyStatus::Blocked,
        KeyStatus::Revoked,
        KeyStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Blocked => "blocked",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }

    /// The state of `key` at `now`.
    pub fn of(key: &ApiKey, now: Timestamp) -> KeyStatus {
        if key.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if key.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else if key.blocked {
            KeyStatus::Blocked
        } else {
            KeyStatus::Active
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown key status `{s}` (expected one of: active, blocked, revoked, expired)"
                )
            })
    }
}

/// One page of a key listing: keys by id (UUIDv7, so in creation order), newest first, at
/// most `limit`, after or before a key of an earlier page.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPageRequest {
    /// From 1 to [`MAX_KEY_PAGE`].
    pub limit: u32,
    pub from: PageFrom,
}

/// Most keys one page holds.
pub const MAX_KEY_PAGE: u32 = 1000;

/// Where a page of keys starts.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum PageFrom {
    /// The newest keys.
    #[default]
    Start,
    /// The keys listed after this id (older ones): the next page.
    After(String),
    /// The keys listed before this id (newer ones): the previous page.
    Before(String),
}

/// A page of keys, and where the pages next to it start.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    pub keys: Vec<ApiKey>,
    /// Give as `after` for the next page; `None` on the last page.
    pub next_after: Option<String>,
    /// Give as `before` for the previous page; `None` on the first page.
    pub prev_before: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Only events whose target is this org, or one of its users, teams or keys.
    pub org_id: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// At most this many events, newest first (the store caps it at 1000).
    pub limit: Option<i64>,
    /// Only the events listed after the event with this id (older ones, in the order
    /// `at` then `id`, both descending): the next page after a page that ended with it.
    /// An id that names no event leaves nothing to list.
    pub before: Option<i64>,
}

/// A user as seen by password login: the record and its argon2id PHC hash (`None` for
/// users who cannot log in with a password, e.g. created without one).
#[derive(Clone)]
pub struct LoginUser {
    pub user: User,
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for LoginUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginUser")
            .field("user", &self.user)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// A refresh token about to be stored. The token itself is never stored, only its hash.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub user_id: String,
    /// Every token issued from one login shares the family of the first.
    pub family_id: String,
    /// SHA-256 of the opaque token, lowercase hex.
    pub token_hash: String,
    pub expires_at: Timestamp,
    /// The client's address at issue, for the record.
    pub source: Option<String>,
}

/// What presenting a refresh token led to.
// `Rotated` carries the whole user; the enum lives only on the way out of one refresh.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshOutcome {
    /// The token was live: it is now used, and the new one (same family) is stored.
    Rotated { user: Box<User>, family: String },
    /// The token had already been used or revoked: someone replays it, so its whole family
    /// has just been revoked (and `auth.refresh_reuse` audited).
    Reused { user_id: String, family: String },
    /// The token exists but is past its `expires_at`.
    Expired,
    /// No such token, or its user no longer exists.
    Unknown,
}

/// A verified OIDC token, as the store needs it to find or create the user and sync groups.
#[derive(Debug, Clone)]
pub struct OidcLogin {
    pub issuer: String,
    pub subject: String,
    /// The token's email.
    pub email: Option<String>,
    /// Whether the issuer vouches for `email` (`email_verified`, or the issuer's
    /// `trust_email`). Only then is the identity linked to an existing user with that email
    /// the first time it is seen, and only then does a provisioned user get the email (and
    /// the email as username): otherwise it gets `{handle}@users.invalid`, so an unverified
    /// address neither takes over an account now nor claims one later.
    pub email_verified: bool,
    pub name: Option<String>,
    pub auto_provision: bool,
    /// Role of a user created by this login when `role_from_groups` is None.
    pub default_role: Role,
    /// Some: the role is managed by the issuer's group_to_role map (the caller computed it);
    /// the user's role is set to it if different. None: the role is left alone.
    pub role_from_groups: Option<Role>,
    /// Some: names of the teams the token's groups map to (group_to_team); memberships are
    /// synced. None: memberships are left alone.
    pub teams_from_groups: Option<Vec<String>>,
    /// Create the teams of `teams_from_groups` that do not exist (the issuer's
    /// `auto_create_teams`) instead of skipping them.
    pub auto_create_teams: bool,
    /// The org the token names (`org_claim`): a user this login provisions joins it.
    pub org_id: Option<String>,
}

/// What an OIDC login found or did.
#[derive(Debug, Clone)]
pub struct OidcUser {
    pub user: User,
    pub created: bool,
    /// This login linked the identity to an existing user by email.
    pub linked: bool,
    /// Team names from `teams_from_groups` that name no live team (skipped).
    pub missing_teams: Vec<String>,
    /// Teams this login created (`auto_create_teams`), as (id, name).
    pub created_teams: Vec<(String, String)>,
}

/// A sign-in with SSO that was started and not finished yet: what its callback needs. Kept
/// by the `state` it sent the browser to the issuer with (as a hash: the state travels in
/// URLs) and bound to the browser that started it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSso {
    /// SHA-256 of the `state`, lowercase hex.
    pub state_hash: String,
    /// SHA-256 of the browser's token (the cookie the sign-in started with), lowercase hex.
    pub browser_hash: String,
    /// The configured issuer URL.
    pub issuer: String,
    /// The PKCE code verifier, sent with the code to the token endpoint.
    pub code_verifier: Secret,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The `redirect_uri` of the authorization request; the code exchange repeats it.
    pub redirect_uri: String,
    /// Where the browser goes once signed in: a path under `/ui`.
    pub return_to: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// What taking a pending sign-in by its state found ([`SsoStore::take_sso_login`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SsoTake {
    /// It was pending and live: it is deleted now, handed out this once.
    Pending(PendingSso),
    /// It was pending but past its `expires_at`: deleted, and refused.
    Expired,
    /// No such pending sign-in (never started, or already taken).
    Unknown,
}

/// Whose spend: a key, a user, a team or an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpendKind {
    Key,
    User,
    Team,
    Org,
}

impl SpendKind {
    /// `key`, `user`, `team` or `org`, as stored in `spend.entity_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendKind::Key => "key",
            SpendKind::User => "user",
            SpendKind::Team => "team",
            SpendKind::Org => "org",
        }
    }
}

impl fmt::Display for SpendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "key" => Ok(SpendKind::Key),
            "user" => Ok(SpendKind::User),
            "team" => Ok(SpendKind::Team),
            "org" => Ok(SpendKind::Org),
            other => Err(format!(
                "unknown entity kind `{other}` (expected one of: key, user, team, org)"
            )),
        }
    }
}

/// A key's, user's or team's budget, as budget alerts measure it ([`UsageStore::budgets`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityBudget {
    /// `max_budget`, USD.
    pub budget_usd: f64,
    pub duration: Option<BudgetDuration>,
    /// `created_at`: the anchor of `30d` windows.
    pub anchor: Timestamp,
}

/// What a usage report groups by (`group_by=key|user|team|org|model|day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Key,
    User,
    Team,
    Org,
    Model,
    /// The UTC calendar day of the record's `at`, as `YYYY-MM-DD`.
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::User => "user",
            GroupBy::Team => "team",
            GroupBy::Org => "org",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "key" => Ok(GroupBy::Key),
            "user" => Ok(GroupBy::User),
            "team" => Ok(GroupBy::Team),
            "org" => Ok(GroupBy::Org),
            "model" => Ok(GroupBy::Model),
            "day" => Ok(GroupBy::Day),
            other => Err(format!(
                "unknown group_by `{other}` (expected one of: key, user, team, org, model, day)"
            )),
        }
    }
}

/// The group of records that have no key, user, team or model (e.g. usage of a key without
/// a team, grouped by team): the empty string, which no id or model name can be.
pub const NO_GROUP: &str = "";

/// Which usage records a report covers, and how it groups them.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    /// Records with `at >= since` (inclusive, like [`AuditFilter`]).
    pub since: Option<Timestamp>,
    /// Records with `at <= until` (inclusive).
    pub until: Option<Timestamp>,
    /// Only this user's records.
    pub user_id: Option<String>,
    /// Only this key's records.
    pub key_id: Option<String>,
    /// Only this team's records.
    pub team_id: Option<String>,
    /// Only this org's records.
    pub org_id: Option<String>,
}

impl UsageQuery {
    /// Every record, grouped by `group_by`.
    pub fn new(group_by: GroupBy) -> Self {
        UsageQuery {
            group_by,
            since: None,
            until: None,
            user_id: None,
            key_id: None,
            team_id: None,
            org_id: None,
        }
    }
}

/// One group of a usage report. `group` is the key, user or team id, the model name, or
/// the day (`YYYY-MM-DD`, UTC); [`NO_GROUP`] (`""`) for records without one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub group: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// The sums over every row of a usage report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// A usage report as the API answers it:
/// `{"data":[{"group","requests","input_tokens","output_tokens","cost_usd"}],"total":{…}}`.
/// Rows are ordered by group (days chronologically); `total` is the sum of exactly these
/// rows, added in row order, so it equals them to the last bit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub data: Vec<UsageRow>,
    pub total: UsageTotals,
}

impl UsageReport {
    /// A report of these rows, with their totals.
    pub fn from_rows(data: Vec<UsageRow>) -> Self {
        let mut total = UsageTotals::default();
        for row in &data {
            total.requests += row.requests;
            total.input_tokens += row.input_tokens;
            total.output_tokens += row.output_tokens;
            total.cost_usd += row.cost_usd;
        }
        UsageReport { data, total }
    }
}

/// A budget threshold an entity's spend has reached in one period: what
/// [`AlertStore::raise_alerts`] turns into an [`Alert`] (once per entity, period and
/// threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertCrossing {
    pub entity_kind: SpendKind,
    pub entity_id: String,
    /// The budget period `[period_start, period_end)`, Unix seconds.
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// Whole percent of the budget (e.g. 50, 75, 90, 100).
    pub threshold: u32,
    /// The period's spend when the crossing was seen.
    pub spend_usd: f64,
    /// The entity's `max_budget` then.
    pub budget_usd: f64,
    /// When the crossing was seen; also when the alert is first due for delivery.
    pub created_at: Timestamp,
}

/// Where an alert is in its delivery to the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Not delivered yet; due at `next_attempt_at`.
    Pending,
    /// The webhook answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Delivered => "delivered",
            AlertState::Failed => "failed",
        }
    }
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlertState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(AlertState::Pending),
            "delivered" => Ok(AlertState::Delivered),
            "failed" => Ok(AlertState::Failed),
            other => Err(format!(
                "unknown alert state `{other}` (expected one of: pending, delivered, failed)"
            )),
        }
    }
}

/// A budget alert in the outbox, as the API shows it (times RFC 3339).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub entity_kind: SpendKind,
    pub entity_id: String,
    #[serde(with = "rfc3339")]
    pub period_start: Timestamp,
    #[serde(with = "rfc3339")]
    pub period_end: Timestamp,
    /// Whole percent of the budget.
    pub threshold: u32,
    pub spend_usd: f64,
    pub budget_usd: f64,
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    pub state: AlertState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When a pending alert is due next; `None` once delivered or failed.
    #[serde(with = "rfc3339::option", default)]
    pub next_attempt_at: Option<Timestamp>,
    /// Why the last attempt failed (kept after a later success).
    pub last_error: Option<String>,
    #[serde(with = "rfc3339::option", default)]
    pub delivered_at: Option<Timestamp>,
    /// Its delivery by email (`budgets.alert_email`); the fields above are the webhook's.
    pub email: AlertDelivery,
}

/// Where an alert is in its delivery on one channel other than the webhook (today: email),
/// with the same meanings as the webhook's fields of [`Alert`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertDelivery {
    pub state: AlertState,
    pub attempts: u32,
    #[serde(with = "rfc3339::option", default)]
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    #[serde(with = "rfc3339::option", default)]
    pub delivered_at: Option<Timestamp>,
}

/// A way an alert is delivered. Each channel delivers each alert once (at least once), with
/// its own attempts, retries and state: one failing never makes the other send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertChannel {
    /// `budgets.alert_webhook`.
    Webhook,
    /// `budgets.alert_email`.
    Email,
}

impl AlertChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertChannel::Webhook => "webhook",
            AlertChannel::Email => "email",
        }
    }
}

impl fmt::Display for AlertChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one delivery attempt of an alert led to ([`AlertStore::mark_alert`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AlertOutcome {
    /// The webhook took it.
    Delivered { at: Timestamp },
    /// It failed; try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: Timestamp,
    },
    /// It failed and no more attempts are made.
    Failed { error: String },
}

/// Which alerts [`AlertStore::list_alerts`] answers, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    pub entity_kind: Option<SpendKind>,
    pub entity_id: Option<String>,
    /// Only alerts of this org, or of one of its users, teams or keys.
    pub org_id: Option<String>,
    /// At most this many (default 100; the store caps it at 1000).
    pub limit: Option<i64>,
}

/// How long [`AlertStore::due_alerts`] holds the alerts it hands out for their delivery:
/// another caller sees them due again only after this many seconds (when the delivering
/// process died before [`AlertStore::mark_alert`]).
pub const ALERT_CLAIM_SECS: i64 = 60;

/// A browser session of the web UI about to be stored. The cookie's token is never stored,
/// only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUiSession {
    /// SHA-256 of the cookie's token, lowercase hex.
    pub token_hash: String,
    pub holder: UiHolder,
    pub expires_at: Timestamp,
    /// The client's address at sign-in, for the record.
    pub source: Option<String>,
    /// How the holder signed in (`password`, `master_key`), for the audit log.
    pub method: &'static str,
}

/// Whose a web UI session is.
#[derive(Debug, Clone, PartialEq)]
pub enum UiHolder {
    /// A user (its id), acting with the role the user has at each request.
    User(String),
    /// The master key; the tag is a fingerprint of the master key that opened the session
    /// (not a secret), so that a session of an earlier master key is not honoured.
    Master { tag: String },
}

/// A live web UI session, as a request finds it by its cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct UiSession {
    pub id: String,
    pub holder: UiHolder,
    /// The holder's record as stored now: `None` for a master-key session, and for a user
    /// who has been deleted since.
    pub user: Option<User>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The persistence contract: every capability trait below, plus the schema. Implementations
/// must be safe to share across tasks; [`SharedStore`] is how the crate holds one.
///
/// Reads that find nothing return `Ok(None)` / `Ok(false)`; uniqueness violations return
/// [`StoreError::Conflict`]; a reference to a missing user or team returns
/// [`StoreError::Invalid`].
#[async_trait]
pub trait Store:
    UserStore
    + TeamStore
    + OrgStore
    + KeyStore
    + AuditStore
    + IdentityStore
    + SessionStore
    + UsageStore
    + AlertStore
    + SsoStore
    + PasskeyStore
    + UiSessionStore
    + RoleStore
    + Send
    + Sync
    + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;
}

/// Users: created, read, patched and (soft) deleted.
#[async_trait]
pub trait UserStore: Send + Sync {
    async fn create_user(&self, actor: &Actor, user: NewUser) -> StoreResult<User>;
    async fn get_user(&self, id: &str) -> StoreResult<Option<User>>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    async fn update_user(
        &self,
        actor: &Actor,
        id: &str,
        patch: UserPatch,
    ) -> StoreResult<Option<User>>;
    /// Deletes the user, their memberships and passkeys, and revokes their keys.
    async fn delete_user(&self, actor: &Actor, id: &str) -> StoreResult<bool>;
}

/// Custom roles. A user's custom role is read with the user ([`Role::Custom`] carries its
/// permissions); creating or patching a user with a role name that is neither built in nor
/// here is [`StoreError::Invalid`].
#[async_trait]
pub trait RoleStore: Send + Sync {
    /// Every custom role, by name.
    async fn list_roles(&self) -> StoreResult<Vec<RoleDef>>;
    async fn get_role(&self, name: &str) -> StoreResult<Option<RoleDef>>;
    /// [`StoreError::Conflict`] when the name is taken; [`StoreError::Invalid`] for a name
    /// that is not a custom role's ([`Role::check_custom_name`]) or the `admin` permission.
    async fn create_role(
        &self,
        actor: &Actor,
        name: &str,
        permissions: Vec<String>,
    ) -> StoreResult<RoleDef>;
    /// Replaces the role's permissions; `None` when there is no such role.
    async fn update_role(
        &self,
        actor: &Actor,
        name: &str,
        permissions: Vec<String>,
    ) -> StoreResult<Option<RoleDef>>;
    /// `false` when there is no such role; [`StoreError::Conflict`] while a live user holds
    /// it.
    async fn delete_role(&self, actor: &Actor, name: &str) -> StoreResult<bool>;
}

/// Teams and their memberships.
#[async_trait]
pub trait TeamStore: Send + Sync {
    async fn create_team(&self, actor: &Actor, team: NewTeam) -> StoreResult<Team>;
    async fn get_team(&self, id: &str) -> StoreResult<Option<Team>>;
    async fn list_teams(&self) -> StoreResult<Vec<Team>>;
    async fn update_team(
        &self,
        actor: &Actor,
        id: &str,
        patch: TeamPatch,
    ) -> StoreResult<Option<Team>>;
    /// Deletes the team, its memberships, and revokes its keys.
    async fn delete_team(&self, actor: &Actor, id: &str) -> StoreResult<bool>;

    /// Adds a member, or changes the role and source of an existing one.
    async fn add_member(
        &self,
        actor: &Actor,
        team_id: &str,
        user_id: &str,
        role: TeamRole,
        source: MembershipSource,
    ) -> StoreResult<Membership>;
    async fn remove_member(&self, actor: &Actor, team_id: &str, user_id: &str)
        -> StoreResult<bool>;
    async fn list_members(&self, team_id: &str) -> StoreResult<Vec<Membership>>;
    /// Memberships of a user in live teams (for "which teams does this caller own").
    async fn user_memberships(&self, user_id: &str) -> StoreResult<Vec<Membership>>;
}

/// Organizations (tenants). Soft-deleted like teams; teams and users name theirs in
/// `org_id`, set when they are created.
#[async_trait]
pub trait OrgStore: Send + Sync {
    /// A name another live org has is a `Conflict`.
    async fn create_org(&self, actor: &Actor, org: NewOrg) -> StoreResult<Org>;
    async fn get_org(&self, id: &str) -> StoreResult<Option<Org>>;
    /// The live org named `name` (exact match).
    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>>;
    /// Live orgs, oldest first.
    async fn list_orgs(&self) -> StoreResult<Vec<Org>>;
    async fn update_org(
        &self,
        actor: &Actor,
        id: &str,
        patch: OrgPatch,
    ) -> StoreResult<Option<Org>>;
    /// Deletes an org that has no live team nor user (else `Conflict`, naming how many).
    /// Its row is kept (soft delete) for its usage history. False: no such live org.
    async fn delete_org(&self, actor: &Actor, id: &str) -> StoreResult<bool>;
}

/// Virtual keys: their lifecycle, and the hot path's lookup by hash.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn create_key(&self, actor: &Actor, key: NewKey) -> StoreResult<ApiKey>;
    /// Creates every key in one transaction, all or nothing, each with its own `key.create`
    /// audit row, and answers them in the order given. A key the store refuses fails the
    /// batch with the error [`KeyStore::create_key`] gives it, its message starting with
    /// its position (`keys[3]: …`).
    async fn create_keys(&self, actor: &Actor, keys: Vec<NewKey>) -> StoreResult<Vec<ApiKey>>;
    async fn get_key(&self, id: &str) -> StoreResult<Option<ApiKey>>;
    /// Every key the filter matches, oldest first (by `created_at`, then id).
    async fn list_keys(&self, filter: KeyFilter) -> StoreResult<Vec<ApiKey>>;
    /// [`KeyStore::list_keys`] of the keys that have a `max_budget` (the budgets page: one
    /// key in many has one, and reading the others would cost most of the time).
    async fn budgeted_keys(&self, filter: KeyFilter) -> StoreResult<Vec<ApiKey>>;
    /// One page of the keys the filter matches, newest first (by id), read by the
    /// primary key or the (owner, id) indexes: a page costs the same on the first page and
    /// the thousandth. A search reads keys until it has filled the page.
    async fn page_keys(&self, filter: KeyFilter, page: KeyPageRequest) -> StoreResult<KeyPage>;
    async fn update_key(
        &self,
        actor: &Actor,
        id: &str,
        patch: KeyPatch,
    ) -> StoreResult<Option<ApiKey>>;
    /// Replaces the key's secret; the old one stays valid until `previous_expires_at`
    /// (when `None`, the old secret stops working at once).
    async fn rotate_key(
        &self,
        actor: &Actor,
        id: &str,
        new_hash: &str,
        new_hint: &str,
        previous_expires_at: Option<Timestamp>,
    ) -> StoreResult<Option<ApiKey>>;
    /// Marks the key revoked (kept for the audit trail and usage history).
    async fn revoke_key(&self, actor: &Actor, id: &str) -> StoreResult<Option<ApiKey>>;
    /// The hot path's only store read: the key whose current or previous secret hashes
    /// to `key_hash`, with its owner's facts. Revoked keys are returned (with `revoked_at`
    /// set) so the decision can say why it denies.
    async fn lookup_key(&self, key_hash: &str) -> StoreResult<Option<KeyLookup>>;
}

/// The audit log: reading it, and lines for events that are not store writes.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn list_audit(&self, filter: AuditFilter) -> StoreResult<Vec<AuditEvent>>;

    /// Writes one audit line for something that is not a store write (a login, a failed
    /// login). `details` must not carry a secret.
    async fn record_event(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        details: serde_json::Value,
    ) -> StoreResult<()>;
}

/// OIDC identities: the user behind an (issuer, subject), found, linked or provisioned.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Finds (or links, or provisions) the user of an OIDC identity and syncs role and group
    /// memberships, in one transaction. None: no user and auto_provision is off.
    ///
    /// The identity (issuer, subject) is looked up first; the first time it is seen it is
    /// linked to the live user with exactly the token's email when both the token's and the
    /// user's email are verified (audited `auth.identity_link`), else a user is provisioned
    /// when `auto_provision` is on (without the email when another user has it)
    /// (audited `user.create` with `"source": "oidc"`). Then the role is set from
    /// `role_from_groups` (audited `user.role`) and group memberships are synced with
    /// `teams_from_groups` (audited `team.member.add` / `team.member.remove` with
    /// `"source": "group"`); memberships with source manual are never touched. With
    /// `auto_create_teams`, a named team that does not exist is created first (audited
    /// `team.create` with `"source": "oidc"`); concurrent logins naming the same new team
    /// create it once.
    async fn oidc_login(&self, actor: &Actor, login: OidcLogin) -> StoreResult<Option<OidcUser>>;
}

/// Password login and its sessions: the login guard's failure counts and lockouts, password
/// hashes, and refresh-token families.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The live user whose username or email is `name` (exact match), with its password
    /// hash, for password login.
    async fn find_login_user(&self, name: &str) -> StoreResult<Option<LoginUser>>;
    /// Counts one more consecutive failed login. When the count reaches `max_failures` the
    /// account is locked until `lock_until`, the count starts again, and `auth.lockout` is
    /// audited. Returns the lock's end when this failure locked the account.
    async fn record_login_failure(
        &self,
        actor: &Actor,
        user_id: &str,
        max_failures: u32,
        lock_until: Timestamp,
    ) -> StoreResult<Option<Timestamp>>;
    /// Resets the failure count and any expired lock after a successful login.
    async fn record_login_success(&self, user_id: &str) -> StoreResult<()>;
    /// Lifts a lockout and resets the failure count (audited `user.unlock`).
    async fn unlock_user(&self, actor: &Actor, id: &str) -> StoreResult<Option<User>>;
    /// Replaces the user's password hash (audited `user.password`, without the hash).
    /// Returns false when there is no such live user.
    async fn set_password_hash(&self, actor: &Actor, id: &str, hash: &str) -> StoreResult<bool>;

    /// Stores a new refresh token (the first of a family, at login).
    async fn create_refresh_token(&self, token: NewRefreshToken) -> StoreResult<()>;
    /// Atomically exchanges the refresh token hashing to `presented_hash` for the one
    /// hashing to `new_hash` (same family, valid until `new_expires_at`); see
    /// [`RefreshOutcome`] for the other cases. `source` is the client's address.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at: Timestamp,
        source: Option<&str>,
    ) -> StoreResult<RefreshOutcome>;
    /// The family (user id, family id) of a refresh token, whatever its state.
    async fn refresh_token_family(&self, token_hash: &str)
        -> StoreResult<Option<(String, String)>>;
    /// Revokes every token of a family (logout; audited `auth.logout`). Returns how many
    /// tokens were still live (not yet used nor revoked); a used token needs no revoking,
    /// since presenting it again is a reuse anyway.
    async fn revoke_refresh_family(&self, actor: &Actor, family_id: &str) -> StoreResult<u64>;
    /// Revokes every refresh token of a user except those of `keep_family` (password
    /// change; audited `auth.sessions_revoked` when any was live). Returns the families
    /// that had live tokens.
    async fn revoke_user_sessions(
        &self,
        actor: &Actor,
        user_id: &str,
        keep_family: Option<&str>,
    ) -> StoreResult<Vec<String>>;
}

/// Usage records, the spend they accrue, and reports over them.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Writes usage records and accrues their cost on key, user and team, in one
    /// transaction. Idempotent on `request_id`: a record already stored (or repeated within
    /// the batch) is skipped and its spend is not added again. Answers how many records
    /// were new.
    ///
    /// Each entity's cost goes to the period of its `budget_duration` that contains the
    /// record's `at` (see [`crate::usage::period::window`]; `30d` windows are anchored at
    /// the entity's `created_at`); an entity without a `budget_duration` accrues in
    /// calendar months (`1mo`). Records whose key, user or team was deleted, or never
    /// existed, are stored all the same (usage history is never lost); the spend of an id
    /// without a row accrues in calendar months. A record with an empty `request_id` or a
    /// negative or non-finite `cost_usd` fails the whole batch with `Invalid`. Token counts
    /// and latencies above `i64::MAX` are stored as `i64::MAX`.
    async fn record_usage(&self, records: &[UsageRecord]) -> StoreResult<u64> {
        Ok(self.record_new_usage(records).await?.len() as u64)
    }
    /// [`UsageStore::record_usage`], answering the positions in `records` of the records that
    /// were new (ascending), so callers can count exactly what was added.
    async fn record_new_usage(&self, records: &[UsageRecord]) -> StoreResult<Vec<usize>>;

    /// Fills in the `org_id` of the records that have none: their team's org, else their
    /// user's (deleted teams and users included; none when neither has one). Records that
    /// name an org keep it. One query per kind (and per 1024 ids), before a batch is
    /// written, so its spend accrues to the org as well.
    async fn assign_orgs(&self, records: &mut [UsageRecord]) -> StoreResult<()>;

    /// The spend of a key, user or team in the budget period that contains `at` (0 when
    /// none): the period of the entity's own `budget_duration`, read from its row (deleted
    /// users and teams and revoked keys included). When the entity has none (whether or not
    /// it has a `max_budget`), or there is no such entity, the period is the calendar month
    /// (`1mo`), as in [`UsageStore::record_usage`].
    ///
    /// Spend is the sum of the spend rows whose period starts inside that period, so after
    /// a `budget_duration` change the spend accrued under the old duration counts toward
    /// the new period that contains its period's start.
    async fn current_spend(&self, kind: SpendKind, id: &str, at: Timestamp) -> StoreResult<f64>;

    /// [`UsageStore::current_spend`] of many entities, in the order asked, in a few queries
    /// whatever their number (their periods in one query per 1024, as [`UsageStore::spends`]
    /// sums them): what a listing of keys, users or teams answers with each record.
    async fn current_spends(
        &self,
        entities: &[(SpendKind, &str)],
        at: Timestamp,
    ) -> StoreResult<Vec<f64>>;

    /// A usage report: one row per group over the records with `since <= at <= until`,
    /// optionally restricted to one user, key and/or team, and their totals (see
    /// [`UsageReport`]). Whole UTC days are read from the daily rollup, the parts of days at
    /// the edges from the raw records; a day whose raw records were pruned
    /// ([`UsageStore::prune_usage`]) counts whole.
    async fn usage_report(&self, query: UsageQuery) -> StoreResult<UsageReport>;

    /// The names of many keys (revoked ones included: their `name`), live users (their
    /// `username`) and live teams (their `name`), by kind and id; an id without such a row
    /// is left out. One query per kind (and per 1024 ids): what a page that names the owners
    /// of its rows reads.
    async fn names(
        &self,
        entities: &[(SpendKind, &str)],
    ) -> StoreResult<std::collections::HashMap<(SpendKind, String), String>>;

    /// The budgets of many keys (revoked ones included), live users and live teams, in the
    /// order asked: `None` for an entity without such a row or without a `max_budget`. One
    /// query per kind, for the budget alerts of a whole batch.
    async fn budgets(
        &self,
        entities: &[(SpendKind, &str)],
    ) -> StoreResult<Vec<Option<EntityBudget>>>;

    /// The spend of many entities over periods `[start, end)`, in the order asked: the sum
    /// of their spend rows whose period starts inside (as [`UsageStore::current_spend`]
    /// sums them), 0 when none. One query per 1024 periods.
    async fn spends(
        &self,
        periods: &[(SpendKind, &str, Timestamp, Timestamp)],
    ) -> StoreResult<Vec<f64>>;

    /// Deletes up to `limit` raw usage records from before the start of the UTC day of
    /// `before`, and marks the days before it as pruned (the mark never moves back). Their
    /// sums stay in the daily rollup, so reports over those days still answer, per whole
    /// day. Answers how many records were deleted (fewer than `limit`: none is left).
    async fn prune_usage(&self, before: Timestamp, limit: u64) -> StoreResult<u64>;
}

/// The budget alert outbox.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Adds an alert (state `pending`, due at its `created_at`) for each crossing that has
    /// none yet for the same entity, period start and threshold; the others are skipped, so
    /// raising the same crossing again, from any replica, does nothing. Answers how many
    /// alerts are new. A crossing with an empty entity id, a zero threshold or a non-finite
    /// amount fails the whole call with `Invalid`.
    async fn raise_alerts(&self, crossings: &[AlertCrossing]) -> StoreResult<u64>;

    /// Up to `limit` alerts pending on the webhook and due at `now` (`next_attempt_at <=
    /// now`), the longest due first, claimed for delivery: each is answered to one caller only, and is due again
    /// only [`ALERT_CLAIM_SECS`] after `now` unless [`AlertStore::mark_alert`] records its
    /// outcome first (so two replicas do not deliver one alert at once, and an alert whose
    /// deliverer died is retried). The answer shows the claimed `next_attempt_at`.
    async fn due_alerts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<Alert>> {
        self.due_deliveries(AlertChannel::Webhook, now, limit).await
    }

    /// Records the outcome of one webhook delivery attempt of a pending alert (counting the
    /// attempt). Answers false when there is no such pending alert (it was already delivered or failed).
    async fn mark_alert(&self, id: &str, outcome: AlertOutcome) -> StoreResult<bool> {
        self.mark_delivery(AlertChannel::Webhook, id, outcome).await
    }

    /// [`AlertStore::due_alerts`] on one channel: up to `limit` alerts pending on `channel`
    /// and due on it at `now`, claimed on that channel only (the other channel's state is
    /// neither read nor changed).
    async fn due_deliveries(
        &self,
        channel: AlertChannel,
        now: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<Alert>>;

    /// [`AlertStore::mark_alert`] on one channel: records one attempt's outcome on `channel`
    /// only. False when the alert is not pending on that channel.
    async fn mark_delivery(
        &self,
        channel: AlertChannel,
        id: &str,
        outcome: AlertOutcome,
    ) -> StoreResult<bool>;

    /// Alerts matching the filter, newest first (`created_at`, then id).
    async fn list_alerts(&self, filter: AlertFilter) -> StoreResult<Vec<Alert>>;
}

/// Sign-ins with SSO between their start and the issuer's answer, shared by every replica
/// (the browser may come back to another one).
#[async_trait]
pub trait SsoStore: Send + Sync {
    /// Stores a started sign-in, and deletes every one that expired before its
    /// `created_at` (nobody can finish them any more). A `state_hash` already stored is a
    /// `Conflict`.
    async fn put_sso_login(&self, login: PendingSso) -> StoreResult<()>;
    /// Takes the sign-in whose state hashes to `state_hash`: deletes it and answers it, at
    /// most once however many callers race for it. Expired at `now` (`expires_at <= now`):
    /// deleted and answered [`SsoTake::Expired`].
    async fn take_sso_login(&self, state_hash: &str, now: Timestamp) -> StoreResult<SsoTake>;
}

/// Browser sessions of the web UI: opened at sign-in, found by the hash of the cookie's
/// token on every request, deleted at sign-out, at expiry and when their user goes.
#[async_trait]
pub trait UiSessionStore: Send + Sync {
    /// Stores a new session (audited `ui.login`, details the session id) and deletes the
    /// sessions whose `expires_at` has passed.
    async fn create_ui_session(&self, actor: &Actor, new: NewUiSession) -> StoreResult<UiSession>;
    /// The session whose token hashes to `token_hash`, unless it has expired at `now`,
    /// with its user's record as stored now.
    async fn ui_session(&self, token_hash: &str, now: Timestamp) -> StoreResult<Option<UiSession>>;
    /// Ends a session (sign-out; audited `ui.logout` when `actor` is given). Answers false
    /// when there was no such session.
    async fn delete_ui_session(&self, actor: Option<&Actor>, id: &str) -> StoreResult<bool>;
    /// Ends every session of a user but `keep` (a password change; audited
    /// `ui.sessions_revoked` when any ended). Answers how many ended.
    async fn delete_user_ui_sessions(
        &self,
        actor: &Actor,
        user_id: &str,
        keep: Option<&str>,
    ) -> StoreResult<u64>;
}
