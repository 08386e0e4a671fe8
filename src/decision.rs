//! The pure decision pipeline: given what a request is and who is calling, allow or deny.
//!
//! Nothing here does I/O, knows about gRPC or SQL, or reads the clock: the edge
//! ([`crate::authz`]) gathers [`RequestFacts`], [`crate::authn`] resolves a [`Principal`],
//! and [`authorize`] applies the policy in the order DESIGN.md fixes:
//!
//! route → credential → identity → expiry/blocked → permission → model → (budget →
//! rate limits, which need shared counters and run after this, in the edge) → allow.
//!
//! Every denial is a [`Denial`] whose [`DenyReason`] fixes the HTTP status and tollgate's
//! error code; the edge renders it, once, in the client's provider's error shape.

use crate::config::{ApiFamily, Config, RouteRule};
use crate::domain::{CachedKey, Role, Timestamp, User};
use crate::limits::plan::{Quota, Rates};
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::Arc;

/// Permissions every LLM-calling identity has unless narrowed.
pub const LLM_PERMISSIONS: &[&str] = &["chat", "completions", "embeddings", "models:read"];
/// Why a body with more than one top-level `model` member is refused (by Check, or by
/// ext_proc for the part of a body Check did not see).
pub const DUPLICATE_MODEL: &str = "The request body has more than one `model` member";
/// The permission that implies every other.
pub const ADMIN_PERMISSION: &str = "admin";

/// The permissions of the built-in role `viewer`.
pub const VIEWER_PERMISSIONS: &[&str] = &["models:read", "usage:read"];

/// The permissions a role carries, before a key narrows them: a built-in role's fixed
/// ones, a custom role's as the store read them with its user.
pub fn role_permissions(role: &Role) -> Vec<&str> {
    match role {
        Role::Admin => vec![ADMIN_PERMISSION],
        Role::Manager | Role::User | Role::OrgAdmin => LLM_PERMISSIONS.to_vec(),
        Role::Viewer => VIEWER_PERMISSIONS.to_vec(),
        Role::Custom(custom) => custom.permissions.iter().map(|p| &**p).collect(),
    }
}

/// Whether a role carries `wanted` (`admin` carries every permission).
pub fn role_grants(role: &Role, wanted: &str) -> bool {
    match role {
        Role::Custom(custom) => has_permission(&custom.permissions, wanted),
        _ => has_permission_str(&role_permissions(role), wanted),
    }
}

/// What the gateway's configuration says, compiled for fast matching. Rebuilt when the
/// configuration changes; the hot path only reads it.
#[derive(Debug, Default)]
pub struct Policy {
    exact_routes: HashMap<String, RouteRule>,
    /// `(prefix, rule)`, longest prefix first.
    prefix_routes: Vec<(String, RouteRule)>,
    /// The model catalogue. Empty: any model name is accepted.
    models: HashMap<String, ModelPolicy>,
    /// Configured rate limits (global, route, model) and token-estimate defaults.
    pub rates: Rates,
    /// The configured models, for prices.
    pub priced_models: Vec<crate::config::Model>,
}

#[derive(Debug, Clone, Default)]
pub struct ModelPolicy {
    /// Replaces the client's credential upstream when set.
    pub upstream_credential: Option<Secret>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        let mut exact_routes = HashMap::new();
        let mut prefix_routes = Vec::new();
        for (path, rule) in config.effective_routes() {
            match path.strip_suffix('*') {
                Some(prefix) => prefix_routes.push((prefix.to_owned(), rule)),
                None => {
                    exact_routes.insert(path, rule);
                }
            }
        }
        prefix_routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let models = config
            .models
            .iter()
            .map(|m| {
                let policy = ModelPolicy {
                    upstream_credential: m.upstream_api_key.clone().filter(|s| !s.is_empty()),
                };
                (m.name.clone(), policy)
            })
            .collect();
        Policy {
            exact_routes,
            prefix_routes,
            models,
            rates: Rates::from_config(config),
            priced_models: config
                .models
                .iter()
                .filter(|m| m.pricing.is_some())
                .cloned()
                .collect(),
        }
    }

    /// The rule for a request path (query string already removed).
    pub fn route(&self, path: &str) -> Option<&RouteRule> {
        self.exact_routes.get(path).or_else(|| {
            self.prefix_routes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, rule)| rule)
        })
    }

    pub fn model(&self, name: &str) -> Option<&ModelPolicy> {
        self.models.get(name)
    }

    /// Whose API a request path speaks: its route's `api`, else by the path itself (also
    /// for a path no route governs).
    pub fn family(&self, path: &str) -> ApiFamily {
        self.route(path)
            .and_then(|rule| rule.api)
            .unwrap_or_else(|| ApiFamily::of_path(path))
    }
}

/// The `model` field of the request body, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelField {
    /// The body is JSON (or empty) and names no model.
    Absent,
    Named(String),
    /// `model` is present but not a string.
    NotAString,
    /// The body is not JSON, or was truncated before a model was seen.
    Unreadable(&'static str),
    /// More than one top-level `model` member: parsers disagree on which one counts, so the
    /// model checked might not be the model served.
    Duplicate,
}

/// Who the credential resolved to.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The master key: full admin.
    Master,
    /// A virtual key, with its owners' facts, as the key cache holds it.
    Key(Arc<CachedKey>),
    /// A person signed in with a login token (a session or an OIDC issuer's): their live
    /// user record. They act with their role's permissions, on no team's behalf.
    User(Arc<User>),
}

/// What an allowed request carries onward: identity for upstream headers and metadata,
/// the model, and the provider credential to inject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub model: Option<String>,
    pub upstream_credential: Option<Secret>,
    /// The tightest rate-limit buckets after this request was counted (response headers).
    pub quota: Option<Quota>,
    /// Check saw only a prefix of the body: the ext_proc filter follows the rest of it for
    /// a second `model` member (dynamic metadata `body_cut`).
    pub body_cut: bool,
    /// ext_proc adds `stream_options.include_usage` to this request's body (dynamic
    /// metadata `adds_include_usage`); without it, and without `body_cut`, ext_proc lets the
    /// request body pass without reading it.
    pub adds_include_usage: bool,
}

/// Why a request is refused. Fixes the HTTP status and tollgate's error `code` (the error
/// `type` of each provider's shape is the edge's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    UnknownRoute,
    InvalidRequest,
    InvalidApiKey,
    PermissionDenied,
    ModelNotAllowed,
    RateLimitExceeded,
    InsufficientQuota,
    AuthUnavailable,
}

impl DenyReason {
    /// Every reason, in declaration order ([`DenyReason::index`]).
    pub const ALL: [DenyReason; 8] = [
        DenyReason::UnknownRoute,
        DenyReason::InvalidRequest,
        DenyReason::InvalidApiKey,
        DenyReason::PermissionDenied,
        DenyReason::ModelNotAllowed,
        DenyReason::RateLimitExceeded,
        DenyReason::InsufficientQuota,
        DenyReason::AuthUnavailable,
    ];

    /// The position in [`DenyReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn status(self) -> u16 {
        match self {
            DenyReason::UnknownRoute => 404,
            DenyReason::InvalidRequest => 400,
            DenyReason::InvalidApiKey => 401,
            DenyReason::PermissionDenied | DenyReason::ModelNotAllowed => 403,
            DenyReason::RateLimitExceeded | DenyReason::InsufficientQuota => 429,
            DenyReason::AuthUnavailable => 503,
        }
    }

    /// `error.code` in every shape, also the `code` label of `tollgate_check_total`.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::UnknownRoute => "unknown_route",
            DenyReason::InvalidRequest => "invalid_request",
            DenyReason::InvalidApiKey => "invalid_api_key",
            DenyReason::PermissionDenied => "permission_denied",
            DenyReason::ModelNotAllowed => "model_not_allowed",
            DenyReason::RateLimitExceeded => "rate_limit_exceeded",
            DenyReason::InsufficientQuota => "insufficient_quota",
            DenyReason::AuthUnavailable => "auth_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    /// Safe to show the client: never contains a credential.
    pub message: String,
    /// Whether waiting can help: `Some(seconds)` when the same request can succeed after
    /// that long (`retry-after`, `x-should-retry: true`); `None` when waiting will not fix
    /// it soon (`x-should-retry: false`, so SDKs do not retry).
    pub retry_after: Option<u64>,
    /// When a spent budget's period ends (Unix seconds; `x-tollgate-budget-reset`).
    pub budget_reset: Option<Timestamp>,
    /// The rate-limit buckets as they stand, for a 429's `x-ratelimit-*` headers (boxed:
    /// denials travel in `Result`s and should stay small).
    pub quota: Option<Box<Quota>>,
    /// Whose error shape the refusal is written in. Set by the edge from the request's path
    /// ([`Policy::family`]) before rendering, whichever step refused.
    pub api: ApiFamily,
}

impl Denial {
    /// A refusal that waiting does not fix, in OpenAI's shape until the edge says otherwise.
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            message: message.into(),
            retry_after: None,
            budget_reset: None,
            quota: None,
            api: ApiFamily::OpenAi,
        }
    }

    /// The same refusal, worth retrying after `seconds` (at least 1).
    pub fn with_retry_after(mut self, seconds: u64) -> Denial {
        self.retry_after = Some(seconds.max(1));
        self
    }
}

/// Step 1: the route. Paths tollgate does not govern are refused, so a gap in the
/// route table can never become an open door.
pub fn route<'p>(policy: &'p Policy, method: &str, path: &str) -> Result<&'p RouteRule, Denial> {
    if let Err(why) = plain_path(path) {
        return Err(Denial::new(
            DenyReason::InvalidRequest,
            format!("The request path {why}"),
        ));
    }
    policy.route(path).ok_or_else(|| {
        Denial::new(
            DenyReason::UnknownRoute,
            format!("Unknown route ({method} {path})"),
        )
    })
}

/// Whether a path means the same to tollgate and to the upstream: no `.` or `..` segment
/// (raw or percent-encoded), no encoded slash or backslash, no backslash. Envoy normalises
/// paths before Check (the shipped configs set `normalize_path`, `merge_slashes` and
/// `path_with_escaped_slashes_action`); what still holds one of these was sent to confuse a
/// route match (`/v1/models/../chat/completions` is a chat request to the upstream).
pub fn plain_path(path: &str) -> Result<(), &'static str> {
    if path.contains('\\') {
        return Err("holds a backslash");
    }
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    // Each segment decoded on the fly (nothing allocated on the hot path): an escape that
    // decodes to a slash is refused, a segment that decodes to `.` or `..` too.
    for segment in path.as_bytes().split(|b| *b == b'/') {
        let (mut length, mut dots, mut i) = (0, 0, 0);
        while i < segment.len() {
            let byte = match (segment[i], hex(segment.get(i + 1)), hex(segment.get(i + 2))) {
                (b'%', Some(high), Some(low)) => {
                    i += 3;
                    (high * 16 + low) as u8
                }
                (byte, _, _) => {
                    i += 1;
                    byte
                }
            };
            if matches!(byte, b'/' | b'\\') {
                return Err("holds an encoded slash");
            }
            length += 1;
            dots += usize::from(byte == b'.');
        }
        if (1..=2).contains(&length) && dots == length {
            return Err("holds a `.` or `..` segment");
        }
    }
    Ok(())
}

/// Steps after identity: standing (revoked, expired, blocked), the route's permission,
/// then the model. `now` is Unix seconds.
pub fn authorize(
    policy: &Policy,
    rule: &RouteRule,
    principal: &Principal,
    model: &ModelField,
    now: Timestamp,
) -> Result<Grant, Denial> {
    let mut grant = Grant::default();
    match principal {
        Principal::Master => {
            grant.key_id = Some("master".to_owned());
        }
        Principal::Key(key) => {
            standing(key, now)?;
            if !has_permission(&effective_permissions(key), &rule.permission) {
                return Err(Denial::new(
                    DenyReason::PermissionDenied,
                    format!(
                        "This API key lacks the `{}` permission needed for this route",
                        rule.permission
                    ),
                ));
            }
            grant.key_id = Some(key.id.to_string());
            grant.user_id = key.user.as_ref().map(|u| u.id.clone());
            grant.team_id = key.team.as_ref().map(|t| t.id.clone());
        }
        Principal::User(user) => {
            if user.blocked {
                return Err(Denial::new(
                    DenyReason::PermissionDenied,
                    "This user is blocked",
                ));
            }
            if !role_grants(&user.role, &rule.permission) {
                return Err(Denial::new(
                    DenyReason::PermissionDenied,
                    format!(
                        "The role `{}` lacks the `{}` permission needed for this route",
                        user.role, rule.permission
                    ),
                ));
            }
            grant.user_id = Some(user.id.clone());
        }
    }

    let name = match model {
        // Refused on every route: whichever one the upstream reads, it was not checked.
        ModelField::Duplicate => {
            return Err(Denial::new(DenyReason::InvalidRequest, DUPLICATE_MODEL))
        }
        _ if !rule.model_required => return Ok(grant),
        ModelField::Named(name) => name,
        ModelField::Absent => {
            return Err(Denial::new(
                DenyReason::InvalidRequest,
                "You must provide a model parameter",
            ))
        }
        ModelField::NotAString => {
            return Err(Denial::new(
                DenyReason::InvalidRequest,
                "The model parameter must be a string",
            ))
        }
        ModelField::Unreadable(why) => {
            return Err(Denial::new(
                DenyReason::InvalidRequest,
                format!("Could not read the model from the request body: {why}"),
            ))
        }
    };
    let not_allowed = || {
        Err(Denial::new(
            DenyReason::ModelNotAllowed,
            format!("This API key is not allowed to use the model `{name}`"),
        ))
    };
    let catalogued = policy.model(name);
    if !policy.models.is_empty() && catalogued.is_none() {
        return Err(Denial::new(
            DenyReason::ModelNotAllowed,
            format!("The model `{name}` is not available on this gateway"),
        ));
    }
    if let Principal::Key(key) = principal {
        if !models_allow(&key.models, name) {
            return not_allowed();
        }
        if let Some(team) = &key.team {
            if !models_allow(&team.models, name) {
                return not_allowed();
            }
        }
    }
    grant.upstream_credential = catalogued.and_then(|m| m.upstream_credential.clone());
    grant.model = Some(name.clone());
    Ok(grant)
}

/// Revoked, expired, rotated-out past its grace, or blocked (the key, its user or team).
pub fn standing(key: &CachedKey, now: Timestamp) -> Result<(), Denial> {
    let invalid = |message: &str| Err(Denial::new(DenyReason::InvalidApiKey, message));
    if key.revoked {
        return invalid("This API key has been revoked");
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return invalid("This API key has expired");
    }
    if key.via_previous && key.previous_expires_at.is_none_or(|at| at <= now) {
        return invalid("This API key was rotated and is no longer valid");
    }
    let blocked = |message: &str| Err(Denial::new(DenyReason::PermissionDenied, message));
    if key.blocked {
        return blocked("This API key is blocked");
    }
    if key.user.as_ref().is_some_and(|u| u.blocked) {
        return blocked("The user owning this API key is blocked");
    }
    if key.team.as_ref().is_some_and(|t| t.blocked) {
        return blocked("The team owning this API key is blocked");
    }
    Ok(())
}

/// The key's permissions, narrowed to what its owner has. A key with no permissions of its
/// own has its owner's; a key with no user owner (a team or service key) is capped at the
/// LLM permissions unless it was given `admin` by an admin.
pub fn effective_permissions(key: &CachedKey) -> Vec<String> {
    let owner: Vec<&str> = match &key.user {
        Some(user) => role_permissions(&user.role),
        None => LLM_PERMISSIONS.to_vec(),
    };
    if key.permissions.is_empty() {
        return owner.into_iter().map(str::to_owned).collect();
    }
    let owner_is_admin = owner.contains(&ADMIN_PERMISSION);
    let ownerless = key.user.is_none();
    key.permissions
        .iter()
        .filter(|p| owner_is_admin || ownerless || has_permission_str(&owner, p))
        .map(|p| p.to_string())
        .collect()
}

/// Whether `granted` (a role's permissions) includes `wanted`; `admin` includes all.
pub fn has_permission_str(granted: &[&str], wanted: &str) -> bool {
    granted
        .iter()
        .any(|p| *p == wanted || *p == ADMIN_PERMISSION)
}

pub fn has_permission<S: AsRef<str>>(granted: &[S], wanted: &str) -> bool {
    granted
        .iter()
        .any(|p| p.as_ref() == wanted || p.as_ref() == ADMIN_PERMISSION)
}

/// Whether a model list lets `model` through. Empty: no restriction. An entry ending in `*`
/// matches by prefix (`gpt-4o*`).
pub fn models_allow<S: AsRef<str>>(allowed: &[S], model: &str) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .any(|pattern| match pattern.as_ref().strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => pattern.as_ref() == model,
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ApiKey, KeyLookup, KeyOwnerTeam, KeyOwnerUser, Limits};

    const NOW: Timestamp = 1_800_000_000;

    fn policy(yaml: &str) -> Policy {
        let config = Config::parse_str("t", yaml, &|_| None).unwrap().config;
        Policy::from_config(&config)
    }

    fn key() -> ApiKey {
        ApiKey {
            id: "k1".into(),
            name: "ci".into(),
            key_hint: "sk-tg-abcd…wxyz".into(),
            user_id: Some("u1".into()),
            team_id: None,
            permissions: vec![],
            models: vec![],
            limits: Limits::default(),
            expires_at: None,
            blocked: false,
            metadata: serde_json::json!({}),
            created_at: NOW - 10,
            updated_at: NOW - 10,
            revoked_at: None,
            previous_expires_at: None,
        }
    }

    fn lookup(key: ApiKey) -> Principal {
        Principal::Key(Arc::new(CachedKey::from(KeyLookup {
            key,
            via_previous: false,
            user: Some(KeyOwnerUser {
                id: "u1".into(),
                role: Role::User,
                blocked: false,
                limits: Limits::default(),
            }),
            team: None,
            org: None,
        })))
    }

    fn chat(policy: &Policy) -> RouteRule {
        route(policy, "POST", "/v1/chat/completions")
            .unwrap()
            .clone()
    }

    fn named(m: &str) -> ModelField {
        ModelField::Named(m.into())
    }

    #[test]
    fn unknown_routes_are_refused() {
        let p = policy("");
        let d = route(&p, "POST", "/v1/secret").unwrap_err();
        assert_eq!(d.reason, DenyReason::UnknownRoute);
        assert_eq!(
            route(&p, "GET", "/v1/models/gpt-4o").unwrap().permission,
            "models:read"
        );
    }

    #[test]
    fn the_family_comes_from_the_route_else_the_path() {
        let p = policy("routes:\n  /claude/*: { permission: chat, api: anthropic }\n  /v1/messages/legacy: { permission: chat, api: openai }\n");
        for (path, family) in [
            ("/v1/chat/completions", ApiFamily::OpenAi),
            ("/v1/models", ApiFamily::OpenAi),
            ("/v1/messages", ApiFamily::Anthropic),
            ("/v1/messages/count_tokens", ApiFamily::Anthropic),
            // Not governed: the path still says whose client is asking.
            ("/v1/messages/batches", ApiFamily::Anthropic),
            ("/v1/secret", ApiFamily::OpenAi),
            // The route's `api` wins over the path.
            ("/claude/v1/messages", ApiFamily::Anthropic),
            ("/v1/messages/legacy", ApiFamily::OpenAi),
        ] {
            assert_eq!(p.family(path), family, "{path}");
        }
    }

    #[test]
    fn a_plain_key_is_allowed_with_its_identity() {
        let p = policy("");
        let g = authorize(&p, &chat(&p), &lookup(key()), &named("gpt-4o"), NOW).unwrap();
        assert_eq!(g.key_id.as_deref(), Some("k1"));
        assert_eq!(g.user_id.as_deref(), Some("u1"));
        assert_eq!(g.team_id, None);
        assert_eq!(g.model.as_deref(), Some("gpt-4o"));
        assert_eq!(g.upstream_credential, None);
    }

    #[test]
    fn standing_is_checked_in_order() {
        let p = policy("");
        let rule = chat(&p);
        let deny = |k: ApiKey| authorize(&p, &rule, &lookup(k), &named("m"), NOW).unwrap_err();

        let mut k = key();
        k.revoked_at = Some(NOW - 1);
        k.blocked = true;
        assert_eq!(deny(k).reason, DenyReason::InvalidApiKey);

        let mut k = key();
        k.expires_at = Some(NOW);
        assert_eq!(deny(k).message, "This API key has expired");

        let mut k = key();
        k.blocked = true;
        assert_eq!(deny(k).reason, DenyReason::PermissionDenied);

        let mut k = key();
        k.expires_at = Some(NOW + 1);
        assert!(authorize(&p, &rule, &lookup(k), &named("m"), NOW).is_ok());
    }

    #[test]
    fn a_rotated_out_secret_works_only_during_grace() {
        let p = policy("");
        let rule = chat(&p);
        let via_previous = |grace_end: Option<Timestamp>| {
            let mut k = key();
            k.previous_expires_at = grace_end;
            let Principal::Key(l) = lookup(k) else {
                unreachable!()
            };
            let mut l = (*l).clone();
            l.via_previous = true;
            authorize(&p, &rule, &Principal::Key(Arc::new(l)), &named("m"), NOW)
        };
        assert!(via_previous(Some(NOW + 30)).is_ok());
        assert_eq!(
            via_previous(Some(NOW)).unwrap_err().reason,
            DenyReason::InvalidApiKey
        );
        assert_eq!(
            via_previous(None).unwrap_err().reason,
            DenyReason::InvalidApiKey
        );
    }

    #[test]
    fn blocked_owners_block_their_keys() {
        let p = policy("");
        let rule = chat(&p);
        let Principal::Key(l) = lookup(key()) else {
            unreachable!()
        };
        let mut l = (*l).clone();
        l.team = Some(Arc::new(KeyOwnerTeam {
            id: "t1".into(),
            models: vec![],
            blocked: true,
            limits: Limits::default(),
        }));
        let d = authorize(&p, &rule, &Principal::Key(Arc::new(l)), &named("m"), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::PermissionDenied);
        assert!(d.message.contains("team"));
    }

    #[test]
    fn permissions_narrow_and_admin_implies_all() {
        let p = policy("");
        let embeddings = route(&p, "POST", "/v1/embeddings").unwrap().clone();
        let mut k = key();
        k.permissions = vec!["chat".into()];
        let d = authorize(&p, &embeddings, &lookup(k.clone()), &named("m"), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::PermissionDenied);
        assert!(d.message.contains("`embeddings`"));
        assert!(authorize(&p, &chat(&p), &lookup(k), &named("m"), NOW).is_ok());

        // A user's key cannot claim admin: it is narrowed away.
        let mut k = key();
        k.permissions = vec!["admin".into(), "chat".into()];
        let Principal::Key(l) = lookup(k) else {
            unreachable!()
        };
        assert_eq!(effective_permissions(&l), vec!["chat".to_owned()]);
    }

    #[test]
    fn a_custom_role_grants_its_permissions_and_narrows_its_keys() {
        let p = policy("");
        let embeddings = route(&p, "POST", "/v1/embeddings").unwrap().clone();
        let embedder = Role::custom("embedder", &["embeddings".to_owned()]);
        let with_role = |k: ApiKey, role: &Role| {
            let Principal::Key(l) = lookup(k) else {
                unreachable!()
            };
            let mut l = (*l).clone();
            Arc::make_mut(l.user.as_mut().unwrap()).role = role.clone();
            Principal::Key(Arc::new(l))
        };
        // A key with no permissions of its own has the role's.
        let k = with_role(key(), &embedder);
        assert!(authorize(&p, &embeddings, &k, &named("m"), NOW).is_ok());
        let d = authorize(&p, &chat(&p), &k, &named("m"), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::PermissionDenied);
        // A key that lists more is narrowed to the role.
        let mut wide = key();
        wide.permissions = vec!["chat".into(), "embeddings".into()];
        let Principal::Key(l) = with_role(wide, &embedder) else {
            unreachable!()
        };
        assert_eq!(effective_permissions(&l), vec!["embeddings".to_owned()]);
        // A role known by name only (not resolved by the store) grants nothing.
        let unresolved: Role = "embedder".parse().unwrap();
        let k = with_role(key(), &unresolved);
        assert!(authorize(&p, &embeddings, &k, &named("m"), NOW).is_err());
        // A person with the role: the same answers.
        assert!(authorize(
            &p,
            &embeddings,
            &person(embedder.clone(), false),
            &named("m"),
            NOW
        )
        .is_ok());
        let d = authorize(&p, &chat(&p), &person(embedder, false), &named("m"), NOW).unwrap_err();
        assert!(
            d.message
                .contains("The role `embedder` lacks the `chat` permission"),
            "{}",
            d.message
        );
    }

    #[test]
    fn viewers_cannot_chat() {
        let p = policy("");
        let Principal::Key(l) = lookup(key()) else {
            unreachable!()
        };
        let mut l = (*l).clone();
        Arc::make_mut(l.user.as_mut().unwrap()).role = Role::Viewer;
        let d = authorize(
            &p,
            &chat(&p),
            &Principal::Key(Arc::new(l)),
            &named("m"),
            NOW,
        )
        .unwrap_err();
        assert_eq!(d.reason, DenyReason::PermissionDenied);
    }

    #[test]
    fn models_are_checked_against_key_team_and_catalogue() {
        let p = policy(
            "models:\n  - { name: gpt-4o, upstream_api_key: sk-up }\n  - { name: gpt-4o-mini }\n",
        );
        let rule = chat(&p);
        let mut k = key();
        k.models = vec!["gpt-4o-mini".into()];
        let d = authorize(&p, &rule, &lookup(k.clone()), &named("gpt-4o"), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::ModelNotAllowed);
        assert!(authorize(&p, &rule, &lookup(k), &named("gpt-4o-mini"), NOW).is_ok());

        let d = authorize(&p, &rule, &lookup(key()), &named("claude"), NOW).unwrap_err();
        assert!(d.message.contains("not available"));

        let g = authorize(&p, &rule, &lookup(key()), &named("gpt-4o"), NOW).unwrap();
        assert_eq!(g.upstream_credential.unwrap().expose(), "sk-up");
    }

    #[test]
    fn model_patterns_match_by_prefix() {
        assert!(models_allow::<String>(&[], "x"));
        assert!(models_allow::<String>(&["gpt-4o*".into()], "gpt-4o-mini"));
        assert!(!models_allow::<String>(&["gpt-4o*".into()], "gpt-3.5"));
        assert!(!models_allow::<String>(&["gpt-4o".into()], "gpt-4o-mini"));
    }

    #[test]
    fn model_field_problems_are_invalid_requests() {
        let p = policy("");
        let rule = chat(&p);
        for field in [
            ModelField::Absent,
            ModelField::NotAString,
            ModelField::Unreadable("not JSON"),
        ] {
            let d = authorize(&p, &rule, &lookup(key()), &field, NOW).unwrap_err();
            assert_eq!(d.reason, DenyReason::InvalidRequest, "{field:?}");
            assert_eq!(d.reason.status(), 400);
        }
        // Routes that need no model ignore the body.
        let models = route(&p, "GET", "/v1/models").unwrap().clone();
        assert!(authorize(
            &p,
            &models,
            &lookup(key()),
            &ModelField::Unreadable("x"),
            NOW
        )
        .is_ok());
    }

    #[test]
    fn master_passes_everything_but_the_catalogue() {
        let p = policy("models:\n  - { name: gpt-4o }\n");
        let g = authorize(&p, &chat(&p), &Principal::Master, &named("gpt-4o"), NOW).unwrap();
        assert_eq!(g.key_id.as_deref(), Some("master"));
        let d = authorize(&p, &chat(&p), &Principal::Master, &named("other"), NOW).unwrap_err();
        assert_eq!(d.reason, DenyReason::ModelNotAllowed);
    }

    fn person(role: Role, blocked: bool) -> Principal {
        Principal::User(Arc::new(User {
            id: "u9".into(),
            username: "ada".into(),
            email: "ada@example.com".into(),
            full_name: None,
            role,
            org_id: None,
            blocked,
            limits: Limits::default(),
            metadata: serde_json::json!({}),
            locked_until: None,
            created_at: NOW - 10,
            updated_at: NOW - 10,
        }))
    }

    #[test]
    fn people_act_with_their_role_and_carry_no_key_or_team() {
        let p = policy("models:\n  - { name: gpt-4o }\n");
        let g = authorize(
            &p,
            &chat(&p),
            &person(Role::User, false),
            &named("gpt-4o"),
            NOW,
        )
        .unwrap();
        assert_eq!(g.user_id.as_deref(), Some("u9"));
        assert_eq!(g.key_id, None);
        assert_eq!(g.team_id, None);

        let d = authorize(
            &p,
            &chat(&p),
            &person(Role::Viewer, false),
            &named("gpt-4o"),
            NOW,
        )
        .unwrap_err();
        assert_eq!(d.reason, DenyReason::PermissionDenied);
        assert!(d.message.contains("`viewer`"), "{}", d.message);
        let models = route(&p, "GET", "/v1/models").unwrap().clone();
        assert!(authorize(
            &p,
            &models,
            &person(Role::Viewer, false),
            &ModelField::Absent,
            NOW
        )
        .is_ok());

        let d = authorize(
            &p,
            &chat(&p),
            &person(Role::Admin, true),
            &named("gpt-4o"),
            NOW,
        )
        .unwrap_err();
        assert_eq!(d.reason, DenyReason::PermissionDenied);
        assert_eq!(d.message, "This user is blocked");

        // The catalogue applies to people too.
        let d = authorize(
            &p,
            &chat(&p),
            &person(Role::Admin, false),
            &named("other"),
            NOW,
        )
        .unwrap_err();
        assert_eq!(d.reason, DenyReason::ModelNotAllowed);
    }
    #[test]
    fn paths_that_mean_something_else_upstream_are_refused() {
        let p = Policy::default();
        for path in [
            "/v1/models/../chat/completions",
            "/v1/models/%2e%2e/chat/completions",
            "/v1/models/%2E./chat/completions",
            "/v1/models/..%2Fchat/completions",
            "/v1/models/x%2fy",
            "/v1/models/x%5Cy",
            "/v1/models/x\\y",
            "//../../v1/chat/completions",
            "/v1/./chat/completions",
            "/v1/models/.",
        ] {
            let denial = route(&p, "POST", path).unwrap_err();
            assert_eq!(denial.reason, DenyReason::InvalidRequest, "{path}");
            assert!(
                denial.message.starts_with("The request path holds"),
                "{path}"
            );
        }
        for path in [
            "/v1/models/gpt-4o",
            "/v1/models/a.b",
            "/v1/models/..a",
            "/v1/models/%41",
        ] {
            assert!(plain_path(path).is_ok(), "{path}");
        }
        let policy = policy("{}");
        assert!(route(&policy, "GET", "/v1/models/gpt-4o.1").is_ok());
    }
}
