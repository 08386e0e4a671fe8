//! Typed configuration: one YAML file, `${VAR}` / `${VAR:-default}` expanded from the
//! environment, unknown keys rejected with their line, and [`Config::validate`] run before
//! any port is bound.
//!
//! Environment variables read here: whatever the file names in `${…}`, plus
//! `TOLLGATE_MASTER_KEY` when the file sets no `master_key`.
//! With no file at all, [`Config::default`] is the embedded default: SQLite in
//! `./tollgate.db`, in-process limits and queue, gRPC on 127.0.0.1:9191, HTTP on 127.0.0.1:9090.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Full-admin credential. Empty: taken from `TOLLGATE_MASTER_KEY`, else generated at start.
    pub master_key: Secret,
    pub listen: Listen,
    /// How the process stops.
    pub server: Server,
    pub database: Database,
    pub redis: Option<Redis>,
    pub cache: Cache,
    pub auth: Auth,
    pub limits: Limits,
    /// Which permission each LLM route needs, and whether it needs a `model` in the body.
    /// Merged over [`default_routes`]; a path matches exactly, or by prefix when it ends in `*`.
    pub routes: BTreeMap<String, RouteRule>,
    pub models: Vec<Model>,
    pub budgets: Budgets,
    /// The usage queue and its writer.
    pub usage: Usage,
    /// The web UI at `/ui`.
    pub ui: Ui,
}

/// The web UI (docs/DESIGN.md, "Web UI").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ui {
    /// How long a browser session lasts from sign-in (checked by the server on every
    /// request; sign-out ends it sooner).
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
    /// When the UI's cookies are marked `Secure`.
    pub secure_cookies: SecureCookies,
    /// The relying party id passkeys are bound to: a host name, the UI's or a parent
    /// domain of it. Default: the host name the UI is reached at.
    pub rp_id: Option<String>,
}

impl Default for Ui {
    fn default() -> Self {
        Ui {
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookies: SecureCookies::Auto,
            rp_id: None,
        }
    }
}

/// When the web UI's cookies carry `Secure` (sent back over HTTPS only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureCookies {
    /// When the request came over TLS, as the proxy in front says (`X-Forwarded-Proto:
    /// https`): tollgate's own listener is plain HTTP.
    #[default]
    Auto,
    /// Always: for a TLS proxy that does not set `X-Forwarded-Proto`.
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Usage {
    /// Records held in memory before ingestion waits for the writer (backpressure).
    pub queue_capacity: usize,
    /// Most records written in one transaction.
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill.
    #[serde(deserialize_with = "duration")]
    pub batch_interval: Duration,
    /// How long raw usage records are kept (none: for ever); their daily sums are kept for
    /// reports all the same.
    #[serde(deserialize_with = "opt_duration")]
    pub retention: Option<Duration>,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            queue_capacity: 100_000,
            batch_size: 2000,
            batch_interval: Duration::from_secs(1),
            retention: None,
        }
    }
}

/// How the process stops (docs/DESIGN.md, "Live, ready, drain").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// After SIGTERM, the longest Check and ext_proc keep being served while requests keep
    /// arriving (they stop sooner once none has arrived for a second).
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            drain_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            grpc: ([127, 0, 0, 1], 9191).into(),
            http: ([127, 0, 0, 1], 9090).into(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// `sqlite://path` or `postgres://user:password@host/db`, TLS set by `sslmode` and
    /// `sslrootcert` as libpq reads them (see [`crate::backend_tls::postgres_url`]).
    pub url: String,
    pub max_connections: u32,
    /// How long one query (or waiting for a connection) may take before the store counts
    /// as unavailable.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "sqlite://tollgate.db".into(),
            max_connections: 10,
            timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// One Redis: `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. Exactly
    /// one of `url` and `cluster` is set.
    #[serde(default)]
    pub url: Option<String>,
    /// The nodes of a Redis Cluster (some or all of them: the others are discovered), each
    /// `redis://[user:password@]host:port` or `rediss://…`, all with the same scheme.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// What rate limiting does while Redis is unreachable.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Most connections in the pool.
    #[serde(default = "default_redis_pool")]
    pub pool_size: usize,
    /// Bound on one call (a bucket decision), connecting included.
    #[serde(default = "default_redis_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Prefix of every key tollgate writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// How many tollgate replicas share this Redis: in `failure_mode: local` each replica
    /// enforces its share (the limit divided by this) in memory.
    #[serde(default = "default_replicas")]
    pub replicas: u64,
    /// What a `rediss://` connection trusts. Absent: the built-in public roots.
    #[serde(default)]
    pub tls: Option<RedisTls>,
}

/// TLS to Redis (`rediss://`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// A PEM bundle of the CA certificates that may sign the server's certificate, trusted
    /// instead of the built-in public roots (a managed Redis' own CA, a private CA).
    pub ca_file: PathBuf,
}

fn default_redis_pool() -> usize {
    16
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_redis_prefix() -> String {
    "tollgate:".to_owned()
}

fn default_replicas() -> u64 {
    1
}

impl Redis {
    /// The node URLs: `url` alone, or every node of `cluster`.
    pub fn urls(&self) -> Vec<&str> {
        match (&self.url, &self.cluster) {
            (Some(url), _) => vec![url.as_str()],
            (None, Some(nodes)) => nodes.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Whether `cluster` names the nodes of a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.url.is_none() && self.cluster.is_some()
    }

    /// Whether the connections use TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.urls()
            .first()
            .is_some_and(|u| u.starts_with("rediss://"))
    }

    /// `url` xor `cluster`, their URLs, and `tls` against them.
    fn validate_nodes(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_owned(), msg));
        let key = match (&self.url, &self.cluster) {
            (Some(_), Some(_)) => {
                return err(
                    "redis.cluster",
                    "give redis.url (one Redis) or redis.cluster (the nodes of a Redis Cluster), not both".to_owned(),
                )
            }
            (None, None) => {
                return err(
                    "redis.url",
                    "required: the URL of Redis (or redis.cluster: the node URLs of a Redis Cluster)".to_owned(),
                )
            }
            (Some(_), None) => "redis.url",
            (None, Some(nodes)) if nodes.is_empty() => {
                return err("redis.cluster", "must list at least one node URL".to_owned())
            }
            (None, Some(_)) => "redis.cluster",
        };
        let urls = self.urls();
        for url in &urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return err(key, "must start with redis:// or rediss://".to_owned());
            }
            if url.ends_with("#insecure") {
                return err(
                    key,
                    "`#insecure` (TLS without verifying the server) is not supported: trust the server's CA with redis.tls.ca_file".to_owned(),
                );
            }
        }
        if self.is_cluster() {
            if urls
                .iter()
                .any(|u| u.starts_with("rediss://") != self.is_tls())
            {
                return err(
                    key,
                    "every node must use the same scheme (TLS applies to the whole cluster): all redis:// or all rediss://".to_owned(),
                );
            }
            if let Some(url) = urls
                .iter()
                .find(|u| database_of(u).is_some_and(|db| db != "0"))
            {
                return err(
                    key,
                    format!(
                        "`{}` selects a database: a Redis Cluster has only database 0",
                        redact_url(url)
                    ),
                );
            }
            if self.key_prefix.contains(['{', '}']) {
                return err(
                    "redis.key_prefix",
                    "must not hold `{` or `}` with redis.cluster: a hash tag in the prefix would put every key in one slot".to_owned(),
                );
            }
        }
        if let Some(tls) = &self.tls {
            if !self.is_tls() {
                return err(
                    "redis.tls",
                    format!("applies to rediss:// URLs only, and {key} is redis://"),
                );
            }
            if let Err(e) = crate::backend_tls::read_ca_bundle(&tls.ca_file) {
                return err("redis.tls.ca_file", e);
            }
        }
        Ok(())
    }
}

/// The database a `redis://host:port/<db>` URL selects, if any.
fn database_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = &rest[rest.find('/')? + 1..];
    Some(path).filter(|p| !p.is_empty())
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "cluster",
                &self
                    .cluster
                    .as_ref()
                    .map(|nodes| nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>()),
            )
            .field("failure_mode", &self.failure_mode)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("replicas", &self.replicas)
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    Open,
    Closed,
    #[default]
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// How long a key's record is served from memory before it is read again.
    #[serde(deserialize_with = "duration")]
    pub key_ttl: Duration,
    /// How long "no such key" is remembered.
    #[serde(deserialize_with = "duration")]
    pub negative_ttl: Duration,
    pub max_entries: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            key_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// tollgate's own login sessions (`/v1/login`). Absent: no password login.
    pub session: Option<Session>,
    /// OIDC issuers whose tokens are accepted.
    pub oidc: Vec<OidcIssuer>,
    /// Whether `POST /v1/register` is open. Off by default: a registered user can call
    /// models, so opening it is a decision.
    pub allow_registration: bool,
    /// Created at start when no admin user exists yet.
    pub bootstrap_admin: Option<BootstrapAdmin>,
    pub password_policy: PasswordPolicy,
    pub login: LoginProtection,
    /// Bearer tokens longer than this are refused before any parsing.
    pub max_token_bytes: usize,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            session: None,
            oidc: Vec::new(),
            allow_registration: false,
            bootstrap_admin: None,
            password_policy: PasswordPolicy::default(),
            login: LoginProtection::default(),
            max_token_bytes: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// Signs new tokens (HS256). Its `kid` is derived from it.
    pub secret: Secret,
    /// Earlier secrets: tokens they signed still verify until they are removed here.
    #[serde(default)]
    pub previous_secrets: Vec<Secret>,
    #[serde(default = "default_access_ttl", deserialize_with = "duration")]
    pub access_ttl: Duration,
    #[serde(default = "default_refresh_ttl", deserialize_with = "duration")]
    pub refresh_ttl: Duration,
    /// The `iss` of tollgate's own tokens.
    #[serde(default = "default_session_issuer")]
    pub issuer: String,
}

fn default_access_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_refresh_ttl() -> Duration {
    Duration::from_secs(168 * 3600)
}

fn default_session_issuer() -> String {
    "tollgate".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapAdmin {
    pub username: String,
    pub email: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    pub min_length: usize,
    /// How many of the four classes (lower case, upper case, digit, other) must appear.
    pub min_classes: usize,
}

/// Why a password cannot be used. The message names what is missing, never the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyViolation(pub String);

/// Longest password accepted: hashing cost grows with length, so a multi-megabyte password
/// must not reach argon2.
pub const MAX_PASSWORD_LENGTH: usize = 1024;

impl PasswordPolicy {
    /// Checks `password` against the policy: at least `min_length` characters, and at least
    /// `min_classes` of lower case, upper case, digit and other.
    pub fn check(&self, password: &str) -> Result<(), PolicyViolation> {
        let policy = self;
        let length = password.chars().count();
        if length < policy.min_length {
            return Err(PolicyViolation(format!(
                "`password` must be at least {} characters long (it has {length})",
                policy.min_length
            )));
        }
        if length > MAX_PASSWORD_LENGTH {
            return Err(PolicyViolation(format!(
                "`password` must be at most {MAX_PASSWORD_LENGTH} characters long"
            )));
        }
        let classes = [
            (
                "a lower-case letter",
                password.chars().any(char::is_lowercase),
            ),
            (
                "an upper-case letter",
                password.chars().any(char::is_uppercase),
            ),
            ("a digit", password.chars().any(|c| c.is_ascii_digit())),
            (
                "another character (punctuation, space, symbol)",
                password
                    .chars()
                    .any(|c| !c.is_lowercase() && !c.is_uppercase() && !c.is_ascii_digit()),
            ),
        ];
        let present = classes.iter().filter(|(_, has)| *has).count();
        if present < policy.min_classes {
            let missing: Vec<&str> = classes
                .iter()
                .filter(|(_, has)| !*has)
                .map(|(name, _)| *name)
                .collect();
            return Err(PolicyViolation(format!(
                "`password` must contain at least {} of: lower-case letter, upper-case letter, digit, other character; add {} more from: {}",
                policy.min_classes,
                policy.min_classes - present,
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 12,
            min_classes: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginProtection {
    /// Consecutive failures that lock an account.
    pub max_failures: u32,
    #[serde(deserialize_with = "duration")]
    pub lockout: Duration,
    /// Login attempts per minute for one account, and for one client address.
    pub per_account_per_minute: u32,
    pub per_address_per_minute: u32,
}

impl Default for LoginProtection {
    fn default() -> Self {
        LoginProtection {
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            per_account_per_minute: 10,
            per_address_per_minute: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// Exactly the `iss` of its tokens; the discovery document is read from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg`s: RS256/384/512, PS256/384/512, ES256/384, EdDSA (default RS256).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    #[serde(default)]
    pub claims: ClaimNames,
    /// How often the JWKS is re-read in the background.
    #[serde(default = "default_jwks_refresh", deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    #[serde(default)]
    pub auto_provision: bool,
    /// Treat every email of this issuer as verified, for issuers that verify all addresses
    /// but do not send `email_verified`. Off: an identity is linked to an existing user by
    /// email only when its token says `email_verified: true`.
    #[serde(default)]
    pub trust_email: bool,
    #[serde(default)]
    pub default_role: Option<String>,
    #[serde(default)]
    pub group_to_team: BTreeMap<String, String>,
    /// Create the teams `group_to_team` names that do not exist (by name, audited), in the
    /// sync of the first token that needs them. Off: such names are skipped with a warning.
    #[serde(default)]
    pub auto_create_teams: bool,
    #[serde(default)]
    pub group_to_role: BTreeMap<String, String>,
    /// The claim whose value names (by name) the org the token's user belongs to, e.g.
    /// `tenant`. Set: a token without it, or naming no org, is refused, and so is a token
    /// of a user in another org; users it provisions join the org.
    #[serde(default)]
    pub org_claim: Option<String>,
    /// "Sign in with SSO" at this issuer: the web UI's OIDC client. Absent: the issuer's
    /// tokens are accepted as bearer tokens only.
    #[serde(default)]
    pub ui: Option<SsoClient>,
}

/// The OIDC client tollgate signs people in with at an issuer (authorization code flow with
/// PKCE, `src/authn/sso.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoClient {
    /// The client registered at the issuer; the ID token's audience.
    pub client_id: String,
    /// Set: a confidential client, authenticated at the token endpoint with
    /// `client_secret_basic` or `client_secret_post`. Absent: a public client (PKCE only).
    #[serde(default, deserialize_with = "present_secret")]
    pub client_secret: Option<Secret>,
    /// Requested besides `openid email profile` (e.g. `groups`, for issuers that put the
    /// groups claim behind a scope).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The label of the issuer's sign-in button, and its name in the sign-in path
    /// (`/ui/auth/sso/{name}`, beside its position in `auth.oidc`). Default: the issuer's
    /// host name.
    #[serde(default)]
    pub name: Option<String>,
}

impl SsoClient {
    /// Checks the client's keys; `names` collects the `name`s seen so far, which must be
    /// unique.
    fn validate(
        &self,
        names: &mut std::collections::HashSet<String>,
    ) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((format!("auth.oidc.ui.{key}"), msg));
        if self.client_id.trim().is_empty() {
            return err("client_id", "must not be empty".into());
        }
        if self.client_secret.as_ref().is_some_and(Secret::is_empty) {
            return err(
                "client_secret",
                "is empty (is its environment variable set?); leave the key out for a public client".into(),
            );
        }
        // RFC 6749 §3.3: scope tokens are printable ASCII without space, `"` and `\`.
        if let Some(scope) = self.scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            return err(
                "scopes",
                format!("`{scope}` is not a scope (one word of printable ASCII, no quotes or backslashes)"),
            );
        }
        if let Some(name) = &self.name {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !name.bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return err(
                    "name",
                    format!("`{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`, and not a number (it is a path segment, beside the issuer's position)"),
                );
            }
            if !names.insert(name.clone()) {
                return err("name", format!("`{name}` names two issuers"));
            }
        }
        Ok(())
    }
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}

/// Which claims carry what (issuers differ: Entra ID puts groups in `roles`, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            subject: "sub".into(),
            email: "email".into(),
            name: "name".into(),
            groups: "groups".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub global: Option<Rate>,
    pub routes: BTreeMap<String, Rate>,
    /// Output tokens a request without `max_tokens` is assumed to use (tpm estimates).
    pub default_max_tokens: u64,
    /// How long a request holds its parallel slots when its usage never arrives.
    #[serde(deserialize_with = "duration")]
    pub parallel_lease: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: None,
            routes: BTreeMap::new(),
            default_max_tokens: 1024,
            parallel_lease: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Most requests a bucket holds (a burst); default `rpm`.
    pub rpm_burst: Option<u64>,
    /// Most tokens a bucket holds; default `tpm`.
    pub tpm_burst: Option<u64>,
    /// Most requests in flight at once (`limits.global` only).
    pub max_parallel: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// The permission an identity needs to use the route (`chat`, `embeddings`, …).
    pub permission: String,
    /// Whether the JSON body must name a `model`.
    #[serde(default)]
    pub model_required: bool,
    /// Whose API the route's clients speak, which is how its refusals are written. Unset:
    /// [`ApiFamily::of_path`] of the request's path.
    #[serde(default)]
    pub api: Option<ApiFamily>,
}

/// The provider API a route's clients speak: refusals are written the way that provider
/// writes its own errors, so its SDK reads them as it reads the provider's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiFamily {
    #[default]
    OpenAi,
    Anthropic,
}

impl ApiFamily {
    /// The family of a request path when no route says: Anthropic for `/v1/messages` and
    /// everything under it (also for paths no route governs, so an Anthropic client's 404
    /// reads as Anthropic's), OpenAI for everything else (`/v1/models` included).
    pub fn of_path(path: &str) -> ApiFamily {
        match path.strip_prefix("/v1/messages") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => ApiFamily::Anthropic,
            _ => ApiFamily::OpenAi,
        }
    }
}

/// The routes governed out of the box: OpenAI's and Anthropic's LLM endpoints.
pub fn default_routes() -> BTreeMap<String, RouteRule> {
    let rule = |permission: &str, model_required: bool| RouteRule {
        permission: permission.into(),
        model_required,
        api: None,
    };
    [
        ("/v1/chat/completions", rule("chat", true)),
        ("/v1/completions", rule("completions", true)),
        ("/v1/embeddings", rule("embeddings", true)),
        ("/v1/responses", rule("chat", true)),
        ("/v1/messages", rule("chat", true)),
        // Anthropic's SDK counts tokens here before sending; no usage comes back.
        ("/v1/messages/count_tokens", rule("chat", true)),
        ("/v1/models", rule("models:read", false)),
        ("/v1/models/*", rule("models:read", false)),
    ]
    .into_iter()
    .map(|(path, rule)| (path.to_owned(), rule))
    .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub name: String,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Output tokens a request for this model without `max_tokens` is assumed to use.
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// The provider credential that replaces the client's `authorization` upstream.
    #[serde(default)]
    pub upstream_api_key: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    pub input_per_million: f64,
    pub output_per_million: f64,
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    pub alert_thresholds: Vec<u8>,
    pub alert_webhook: String,
    /// Signs alert deliveries (`x-tollgate-signature: sha256=<HMAC-SHA256 of the body>`);
    /// empty: unsigned.
    pub alert_secret: Secret,
    /// How long a request's reserved cost is held when its usage never arrives.
    #[serde(deserialize_with = "duration")]
    pub reservation_timeout: Duration,
    /// Alerts also sent by email; absent: no mail.
    pub alert_email: Option<AlertEmail>,
}

/// `budgets.alert_email`: where budget alerts are mailed, beside the webhook.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEmail {
    /// `smtp://[user:password@]host[:port]` (default port 25; STARTTLS when the server
    /// offers it, `?tls=required` to insist on it) or `smtps://…` (implicit TLS, default port
    /// 465). The password is a secret: [`redact_url`] hides it wherever the URL is shown.
    pub smtp_url: String,
    /// The sender, `addr@example.com` or `Name <addr@example.com>`.
    pub from: String,
    /// The recipients (at least one), each as `from`.
    pub to: Vec<String>,
    /// A PEM bundle of the CA certificates that may sign the SMTP server's certificate,
    /// trusted instead of the built-in public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for AlertEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertEmail")
            .field("smtp_url", &redact_url(&self.smtp_url))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl AlertEmail {
    /// Its URL, addresses and CA bundle, as `(key, why)` of the first that is wrong.
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_owned(), msg));
        if let Err(e) = crate::mail::SmtpUrl::parse(&self.smtp_url) {
            return err("budgets.alert_email.smtp_url", e);
        }
        if let Err(e) = crate::mail::mailbox(&self.from) {
            return err("budgets.alert_email.from", e);
        }
        if self.to.is_empty() {
            return err(
                "budgets.alert_email.to",
                "name at least one recipient".to_owned(),
            );
        }
        for to in &self.to {
            if let Err(e) = crate::mail::mailbox(to) {
                return err("budgets.alert_email.to", e);
            }
        }
        if let Some(ca_file) = &self.ca_file {
            if let Err(e) = crate::backend_tls::read_ca_bundle(ca_file) {
                return err("budgets.alert_email.ca_file", e);
            }
        }
        Ok(())
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            alert_thresholds: vec![50, 75, 90, 100],
            alert_webhook: String::new(),
            alert_secret: Secret::default(),
            reservation_timeout: Duration::from_secs(600),
            alert_email: None,
        }
    }
}

/// A configuration problem, with the key and (when known) the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source_name: String,
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A loaded configuration and what loading noticed on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Environment variables named in the file but unset (they expanded to "").
    pub unset_vars: Vec<String>,
}

impl Config {
    /// Reads, expands, parses and validates a file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            key: None,
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_str(&name, &text, &|var| std::env::var(var).ok())
    }

    /// Parses YAML text; `env` answers `${VAR}` look-ups (tests pass their own).
    pub fn parse_str(
        source_name: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let error = |key: Option<String>, line: Option<usize>, message: String| ConfigError {
            source_name: source_name.to_owned(),
            key,
            line,
            message,
        };
        let (expanded, unset_vars) =
            expand_env(text, env).map_err(|(line, message)| error(None, Some(line), message))?;
        let config: Config = if expanded.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(&expanded).map_err(|e| {
                let line = e
                    .location()
                    .map(|l| l.line())
                    .or_else(|| second_document_line(&expanded));
                // serde_yaml appends " at line L column C"; the line is already in front.
                let message = e.to_string();
                let message = match message.find(" at line ") {
                    Some(i) => message[..i].to_owned(),
                    None => message,
                };
                error(None, line, message)
            })?
        };
        config
            .validate()
            .map_err(|(key, message)| error(Some(key.clone()), locate_key(text, &key), message))?;
        Ok(Loaded { config, unset_vars })
    }

    /// Semantic checks that types alone cannot express. Returns the offending key's dotted
    /// path and what is wrong with it.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_owned(), msg));
        let url = self.database.url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return err(
                "database.url",
                format!(
                    "unsupported database URL `{}`: use sqlite://PATH or postgres://…",
                    redact_url(url)
                ),
            );
        }
        if url.starts_with("postgres") {
            if let Err(e) = crate::backend_tls::postgres_url(url) {
                return err("database.url", e);
            }
        }
        if self.server.drain_timeout.is_zero() {
            return err("server.drain_timeout", "must be greater than zero".into());
        }
        if self.database.max_connections == 0 {
            return err("database.max_connections", "must be at least 1".into());
        }
        if self.database.timeout.is_zero() {
            return err("database.timeout", "must be greater than zero".into());
        }
        if self.usage.queue_capacity == 0 {
            return err("usage.queue_capacity", "must be at least 1".into());
        }
        if self.usage.batch_size == 0 {
            return err("usage.batch_size", "must be at least 1".into());
        }
        if self.usage.batch_interval.is_zero() {
            return err("usage.batch_interval", "must be greater than zero".into());
        }
        if self
            .usage
            .retention
            .is_some_and(|keep| keep < Duration::from_secs(86_400))
        {
            return err(
                "usage.retention",
                "must be at least 1d (raw usage records older than it are deleted)".into(),
            );
        }
        if self.cache.max_entries == 0 {
            return err("cache.max_entries", "must be at least 1".into());
        }
        if self.cache.key_ttl.is_zero() {
            return err("cache.key_ttl", "must be greater than zero".into());
        }
        if let Some(redis) = &self.redis {
            redis.validate_nodes()?;
            if redis.pool_size == 0 {
                return err("redis.pool_size", "must be at least 1".into());
            }
            if redis.timeout.is_zero() {
                return err("redis.timeout", "must be greater than zero".into());
            }
            if redis.replicas == 0 {
                return err("redis.replicas", "must be at least 1".into());
            }
        }
        let rates = self
            .limits
            .global
            .iter()
            .map(|r| ("limits.global".to_owned(), r))
            .chain(
                self.limits
                    .routes
                    .iter()
                    .map(|(path, r)| (format!("limits.routes.{path}"), r)),
            );
        for (at, rate) in rates {
            for (name, burst) in [
                ("rpm_burst", rate.rpm_burst),
                ("tpm_burst", rate.tpm_burst),
                ("max_parallel", rate.max_parallel),
            ] {
                if burst == Some(0) {
                    return err(&format!("{at}.{name}"), "must be at least 1".into());
                }
            }
        }
        if let Some((path, _)) = self
            .limits
            .routes
            .iter()
            .find(|(_, r)| r.max_parallel.is_some())
        {
            return err(
                &format!("limits.routes.{path}.max_parallel"),
                "parallel limits apply to limits.global, keys, users and teams, not routes".into(),
            );
        }
        if self.limits.parallel_lease.is_zero() {
            return err("limits.parallel_lease", "must be greater than zero".into());
        }
        if let Some(session) = &self.auth.session {
            if session.secret.expose().len() < 32 {
                return err(
                    "auth.session.secret",
                    "must be at least 32 characters (use a random value)".into(),
                );
            }
            if session
                .previous_secrets
                .iter()
                .any(|s| s.expose().len() < 32)
            {
                return err(
                    "auth.session.previous_secrets",
                    "every secret must be at least 32 characters".into(),
                );
            }
        }
        if self.auth.password_policy.min_classes > 4 {
            return err(
                "auth.password_policy.min_classes",
                "there are only 4 classes (lower, upper, digit, other)".into(),
            );
        }
        if let Some(admin) = &self.auth.bootstrap_admin {
            // Not `${VAR}`-empty: the admin would have no usable password.
            if let Err(violation) = self.auth.password_policy.check(admin.password.expose()) {
                return err(
                    "auth.bootstrap_admin.password",
                    format!("{} (auth.password_policy applies to it too)", violation.0),
                );
            }
        }
        if self.auth.max_token_bytes < 512 {
            return err("auth.max_token_bytes", "must be at least 512".into());
        }
        const ALGORITHMS: [&str; 9] = [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ];
        let mut issuers = std::collections::HashSet::new();
        let mut sso_names = std::collections::HashSet::new();
        for oidc in &self.auth.oidc {
            if !(oidc.issuer.starts_with("https://") || oidc.issuer.starts_with("http://")) {
                return err(
                    "auth.oidc.issuer",
                    format!("`{}` is not an http(s) URL", oidc.issuer),
                );
            }
            if !issuers.insert(oidc.issuer.as_str()) {
                return err(
                    "auth.oidc.issuer",
                    format!("`{}` is listed twice", oidc.issuer),
                );
            }
            if oidc.audiences.is_empty() && oidc.ui.is_none() {
                return err(
                    "auth.oidc.audiences",
                    format!(
                        "`{}` needs at least one audience: tokens minted for other applications must not be accepted (an issuer used only to sign in to the web UI needs `ui` instead)",
                        oidc.issuer
                    ),
                );
            }
            if let Some(ui) = &oidc.ui {
                ui.validate(&mut sso_names)?;
            }
            if oidc.auto_create_teams {
                if oidc.group_to_team.is_empty() {
                    return err(
                        "auth.oidc.auto_create_teams",
                        format!(
                            "`{}` has no `group_to_team` to create teams from; add one, or remove `auto_create_teams`",
                            oidc.issuer
                        ),
                    );
                }
                // The names become teams: the rules of `POST /admin/teams` apply.
                if let Some(name) = oidc.group_to_team.values().find(|name| {
                    name.trim().is_empty()
                        || name.chars().count() > 200
                        || name.chars().any(char::is_control)
                }) {
                    return err(
                        "auth.oidc.group_to_team",
                        format!(
                            "`{}` cannot be created as a team (a team name is 1 to 200 characters, not blank, without control characters)",
                            name.escape_debug()
                        ),
                    );
                }
            }
            if let Some(alg) = oidc
                .algorithms
                .iter()
                .find(|a| !ALGORITHMS.contains(&a.as_str()))
            {
                return err(
                    "auth.oidc.algorithms",
                    format!(
                        "`{alg}` is not accepted for OIDC issuers (use {}; HS256 is only for tollgate's own sessions)",
                        ALGORITHMS.join(", ")
                    ),
                );
            }
            if let Some(claim) = &oidc.org_claim {
                if claim.trim().is_empty() || claim.chars().any(char::is_whitespace) {
                    return err(
                        "auth.oidc.org_claim",
                        format!("`{claim}` is not a claim name: a non-empty name without spaces"),
                    );
                }
            }
            for (key, role) in oidc
                .group_to_role
                .values()
                .map(|r| ("auth.oidc.group_to_role", r))
                .chain(
                    oidc.default_role
                        .iter()
                        .map(|r| ("auth.oidc.default_role", r)),
                )
            {
                if crate::domain::Role::built_in(role).is_none() {
                    return err(
                        key,
                        format!(
                            "`{role}` is not a role ({})",
                            crate::domain::Role::BUILT_IN.join(", ")
                        ),
                    );
                }
            }
        }
        for (path, rule) in &self.routes {
            if !path.starts_with('/') {
                return err(
                    &format!("routes.{path}"),
                    "a route must start with `/`".into(),
                );
            }
            if rule.permission.trim().is_empty() {
                return err(
                    &format!("routes.{path}.permission"),
                    "must not be empty".into(),
                );
            }
        }
        for path in self.limits.routes.keys() {
            if !path.starts_with('/') {
                return err(
                    &format!("limits.routes.{path}"),
                    "a route must start with `/`".into(),
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            if model.name.trim().is_empty() {
                return err("models.name", "a model needs a name".into());
            }
            if !seen.insert(model.name.as_str()) {
                return err(
                    "models.name",
                    format!("model `{}` is listed twice", model.name),
                );
            }
            if let Some(p) = &model.pricing {
                if p.input_per_million < 0.0 || p.output_per_million < 0.0 {
                    return err("models.pricing", "prices cannot be negative".into());
                }
            }
        }
        let ttl = self.ui.session_ttl;
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(30 * 86_400) {
            return err(
                "ui.session_ttl",
                "must be from 1m to 30d (a browser session lasts this long after sign-in)".into(),
            );
        }
        if let Some(id) = &self.ui.rp_id {
            if let Err(why) = crate::authn::passkey::check_rp_id(id) {
                return err("ui.rp_id", why);
            }
        }
        for t in &self.budgets.alert_thresholds {
            if *t == 0 || *t > 100 {
                return err(
                    "budgets.alert_thresholds",
                    format!("{t} is not a percentage from 1 to 100"),
                );
            }
        }
        if let Some(email) = &self.budgets.alert_email {
            email.validate()?;
        }
        Ok(())
    }

    /// The route table in force: the defaults with the file's `routes` laid over them.
    pub fn effective_routes(&self) -> BTreeMap<String, RouteRule> {
        let mut routes = default_routes();
        routes.extend(self.routes.clone());
        routes
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` outside YAML comments; `$${` is a literal
/// `${`. Returns the text and the names of unset variables used without a default.
fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let (content, comment) = line.split_at(comment_start(line));
        expand_line(content, env, &mut out, &mut unset).map_err(|m| (index + 1, m))?;
        out.push_str(comment);
    }
    Ok((out, unset))
}

/// Where a line's YAML comment begins: a `#` at the start or after white space, outside
/// quotes. The line's length when there is none.
fn comment_start(line: &str) -> usize {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q && previous != '\\' => quote = None,
            (None, '#') if previous.is_whitespace() => return i,
            _ => {}
        }
        previous = c;
    }
    line.len()
}

fn expand_line(
    line: &str,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    unset: &mut Vec<String>,
) -> Result<(), String> {
    let mut rest = line;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated `${` (missing `}`)".to_owned())?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference"));
            }
            let value = match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_owned(),
                (None, None) => {
                    unset.push(name.to_owned());
                    String::new()
                }
            };
            if value.contains('\n') {
                return Err(format!("the value of ${{{name}}} spans several lines"));
            }
            // Spliced as written, like a shell would: quoting is the file's business.
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(())
}

/// Where the second document of a YAML text starts, when it has one: serde_yaml refuses a
/// second document without saying where it is.
fn second_document_line(text: &str) -> Option<usize> {
    struct Nothing;
    impl serde::de::Visitor<'_> for Nothing {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("one document")
        }
    }
    let second = serde_yaml::Deserializer::from_str(text).nth(1)?;
    let error = second.deserialize_any(Nothing).err()?;
    error.location().map(|l| l.line())
}

/// Finds the line of a dotted key path (`cache.key_ttl`, `models.name`) in YAML text:
/// each segment is searched below the line of its parent. Best effort: when the key is not
/// written in the file (a member validation requires), the line of its closest enclosing
/// key that is; `None` when not even its section is (a default that fails validation).
pub fn locate_key(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for segment in path.split('.') {
        let needle_block = format!("{segment}:");
        let hit = lines.iter().enumerate().skip(from).find(|(_, line)| {
            let content = line.split('#').next().unwrap_or("");
            content
                .trim_start()
                .trim_start_matches("- ")
                .starts_with(&needle_block)
                || content.contains(&format!("{{ {segment}:"))
                || content.contains(&format!(", {segment}:"))
                || content.contains(&format!("{{{segment}:"))
        });
        match hit {
            Some((i, _)) => {
                found = Some(i + 1);
                from = i;
            }
            None => return found,
        }
    }
    found
}

/// The URL with any password (in the userinfo or in a `password=` query parameter)
/// replaced by `***`, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let auth_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(auth_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => head.to_string(),
                },
                None => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_param(key) => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn is_secret_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
}

/// A secret whose key is written: `${VAR}` of an unset variable leaves it empty (YAML
/// null), which must not quietly mean "no secret", so it is kept as an empty [`Secret`]
/// for validation to refuse with the key's name and line.
fn present_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret::new(
        Option::<String>::deserialize(d)?.unwrap_or_default(),
    )))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?, "500ms, 60s, 15m or 168h")
}

/// A duration as humantime reads it (`90d`, `15m`), or an error naming the text and showing
/// examples `like` it.
fn parse_duration<E: serde::de::Error>(text: &str, like: &str) -> Result<Duration, E> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        E::custom(format!(
            "invalid duration `{text}` ({e}); write it like {like}"
        ))
    })
}

/// [`duration`] for an optional key: absent or `null` is none.
fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct OptDuration;
    impl<'de> serde::de::Visitor<'de> for OptDuration {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 90d, or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        // Parsed here, not after deserializing a string, so that an error keeps its line.
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            parse_duration(text, "30d, 90d or 2160h").map(Some)
        }
    }
    d.deserialize_any(OptDuration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_retention_is_a_day_or_more() {
        assert_eq!(parse("").unwrap().config.usage.retention, None);
        let c = parse("usage: { retention: 90d }\n").unwrap().config;
        assert_eq!(c.usage.retention, Some(Duration::from_secs(90 * 86_400)));
        let c = parse("usage: { retention: null }\n").unwrap().config;
        assert_eq!(c.usage.retention, None);
        let e = parse("listen: { grpc: 127.0.0.1:1 }\nusage:\n  retention: 12h\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("usage.retention"));
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("usage:\n  batch_size: 10\n  retention: forever\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = parse("usage: { retension: 90d }\n").unwrap_err();
        assert!(e.message.contains("retension"), "{e}");
    }

    #[test]
    fn ui_sessions_last_from_a_minute_to_thirty_days() {
        let c = parse("").unwrap().config;
        assert_eq!(c.ui.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(c.ui.secure_cookies, SecureCookies::Auto);
        let c = parse("ui: { session_ttl: 30m, secure_cookies: always }\n")
            .unwrap()
            .config;
        assert_eq!(c.ui.session_ttl, Duration::from_secs(1800));
        assert_eq!(c.ui.secure_cookies, SecureCookies::Always);
        for bad in ["30s", "31d"] {
            let e = parse(&format!("ui:\n  session_ttl: {bad}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("ui.session_ttl"), "{e}");
            assert_eq!(e.line, Some(2), "{e}");
        }
        let e = parse("ui: { secure_cookies: sometimes }\n").unwrap_err();
        assert!(e.message.contains("sometimes"), "{e}");
    }

    #[test]
    fn ui_rp_id_is_a_host_name() {
        assert_eq!(parse("").unwrap().config.ui.rp_id, None);
        let c = parse("ui: { rp_id: example.com }\n").unwrap().config;
        assert_eq!(c.ui.rp_id.as_deref(), Some("example.com"));
        for bad in [
            "10.0.0.1",
            "https://example.com",
            "example.com:8443",
            "a..b",
        ] {
            let e = parse(&format!("ui:\n  rp_id: '{bad}'\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("ui.rp_id"), "{bad}: {e}");
            assert_eq!(e.line, Some(2), "{bad}: {e}");
        }
    }

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Config::parse_str("test.yaml", text, &|var| match var {
            "SET" => Some("value".into()),
            "PORT" => Some("7000".into()),
            _ => None,
        })
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = parse("").unwrap().config;
        assert!(!c.auth.allow_registration, "registration is opt-in");
        assert_eq!(c.auth.password_policy.min_length, 12);
        assert_eq!(c.database.url, "sqlite://tollgate.db");
        assert_eq!(c.listen.grpc.to_string(), "127.0.0.1:9191");
        assert_eq!(c.listen.http.to_string(), "127.0.0.1:9090");
        assert_eq!(c.cache.key_ttl, Duration::from_secs(60));
        assert_eq!(c.server.drain_timeout, Duration::from_secs(15));
        assert!(c.redis.is_none());
    }

    #[test]
    fn drain_timeout_is_a_positive_duration() {
        let c = parse("server: { drain_timeout: 40s }\n").unwrap().config;
        assert_eq!(c.server.drain_timeout, Duration::from_secs(40));
        let e = parse("listen: { grpc: 127.0.0.1:1 }\nserver:\n  drain_timeout: 0s\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.drain_timeout"));
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("server:\n  drain_timeout: soon\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = parse("server: { drain_timout: 5s }\n").unwrap_err();
        assert!(e.message.contains("drain_timout"), "{e}");
    }

    #[test]
    fn env_vars_expand_with_defaults_and_report_unset() {
        let loaded = parse(
            "master_key: ${SET}\nlisten: { grpc: \"127.0.0.1:${PORT}\", http: \"127.0.0.1:${HTTP:-9999}\" }\nbudgets: { alert_webhook: ${MISSING} }\n",
        )
        .unwrap();
        assert_eq!(loaded.config.master_key.expose(), "value");
        assert_eq!(loaded.config.listen.grpc.port(), 7000);
        assert_eq!(loaded.config.listen.http.port(), 9999);
        assert_eq!(loaded.unset_vars, vec!["MISSING".to_owned()]);
    }

    #[test]
    fn dollar_escape_and_bare_dollars_pass_through() {
        let (out, _) = expand_env("a: $${X} $5 $", &|_| None).unwrap();
        assert_eq!(out, "a: ${X} $5 $");
    }

    #[test]
    fn comments_are_not_expanded() {
        let (out, unset) = expand_env(
            "# uses ${NOPE} and ${broken\nkey: \"a # ${SET}\" # ${ALSO_NOT}\n",
            &|v| (v == "SET").then(|| "x".to_owned()),
        )
        .unwrap();
        assert_eq!(
            out,
            "# uses ${NOPE} and ${broken\nkey: \"a # x\" # ${ALSO_NOT}\n"
        );
        assert!(unset.is_empty());
    }

    #[test]
    fn unterminated_reference_names_its_line() {
        let e = parse("listen:\n  grpc: ${OOPS\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("unterminated"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let e = parse("listen:\n  grpc: 127.0.0.1:1\ncache:\n  key_ttl: 5s\n  max_entires: 10\n")
            .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("max_entires"), "{e}");
        assert!(e.to_string().starts_with("test.yaml:5: "), "{e}");
    }

    #[test]
    fn bad_duration_names_the_line_and_the_format() {
        let e = parse("cache:\n  key_ttl: 60 parsecs\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn validation_errors_name_key_and_line() {
        let e = parse("database:\n  url: mysql://root:hunter2@db/x\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("database.url"));
        assert_eq!(e.line, Some(2));
        assert!(!e.to_string().contains("hunter2"), "{e}");

        let e = parse("cache: { key_ttl: 1s, max_entries: 0 }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("cache.max_entries"));
        assert_eq!(e.line, Some(1));

        let e = parse("models:\n  - name: a\n  - name: a\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("models.name"));
        assert!(e.message.contains("twice"));
    }

    #[test]
    fn parallel_limits_are_validated() {
        let ok = parse("limits:\n  global: { max_parallel: 8 }\n  parallel_lease: 90s\n").unwrap();
        assert_eq!(ok.config.limits.global.unwrap().max_parallel, Some(8));
        assert_eq!(ok.config.limits.parallel_lease, Duration::from_secs(90));
        assert_eq!(
            parse("").unwrap().config.limits.parallel_lease,
            Duration::from_secs(600)
        );
        let e = parse("limits:\n  global: { max_parallel: 0 }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.global.max_parallel"));
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("limits:\n  routes:\n    /v1/x: { max_parallel: 2 }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.routes./v1/x.max_parallel"));
        assert!(e.message.contains("not routes"), "{e}");
        let e = parse("limits: { parallel_lease: 0s }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.parallel_lease"));
    }

    #[test]
    fn oidc_issuers_are_validated() {
        let e = parse(
            "auth:\n  oidc:\n    - issuer: https://id.example.com\n      audiences: [t]\n      algorithms: [HS256]\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.oidc.algorithms"));
        assert_eq!(e.line, Some(5), "{e}");
        let e = parse("auth:\n  oidc:\n    - { issuer: https://a }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.oidc.audiences"));
        let e = parse(
            "auth:\n  oidc:\n    - { issuer: https://a, audiences: [t], group_to_role: { g: emperor } }\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.oidc.group_to_role"));
        let e = parse(
            "auth:\n  oidc:\n    - issuer: https://a\n      audiences: [t]\n      auto_create_teams: true\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.oidc.auto_create_teams"));
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("group_to_team"), "{e}");
        let e = parse(
            "auth:\n  oidc:\n    - { issuer: https://a, audiences: [t], auto_create_teams: true, group_to_team: { eng: \" \" } }\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.oidc.group_to_team"));
        // Without auto_create_teams a name is only looked up, never created.
        let c = parse(
            "auth:\n  oidc:\n    - { issuer: https://a, audiences: [t], group_to_team: { eng: \" \" } }\n",
        )
        .unwrap()
        .config;
        assert!(!c.auth.oidc[0].auto_create_teams);
        let c = parse(
            "auth:\n  oidc:\n    - { issuer: https://a, audiences: [t], auto_create_teams: true, group_to_team: { eng: Engineering } }\n",
        )
        .unwrap()
        .config;
        assert!(c.auth.oidc[0].auto_create_teams);
        for claim in ["''", "'two words'"] {
            let e = parse(&format!(
                "auth:\n  oidc:\n    - {{ issuer: https://a, audiences: [t], org_claim: {claim} }}\n"
            ))
            .unwrap_err();
            assert_eq!(e.key.as_deref(), Some("auth.oidc.org_claim"), "{e}");
        }
        let c = parse(
            "auth:\n  oidc:\n    - { issuer: https://a, audiences: [t], leeway: 5s, claims: { groups: roles } }\n",
        )
        .unwrap()
        .config;
        assert_eq!(c.auth.oidc[0].claims.groups, "roles");
        assert_eq!(c.auth.oidc[0].claims.subject, "sub");
    }

    #[test]
    fn sso_clients_are_validated() {
        let env = |var: &str| (var == "SSO_SECRET").then(|| "s3cret-value".to_owned());
        let c = Config::parse_str(
            "t.yaml",
            "auth:\n  oidc:\n    - issuer: https://id.example\n      ui:\n        client_id: tollgate\n        client_secret: ${SSO_SECRET}\n        scopes: [groups]\n        name: corp\n",
            &env,
        )
        .unwrap()
        .config;
        // An issuer used only for sign-in needs no audiences.
        let ui = c.auth.oidc[0].ui.as_ref().unwrap();
        assert!(c.auth.oidc[0].audiences.is_empty());
        assert_eq!(ui.client_secret.as_ref().unwrap().expose(), "s3cret-value");
        assert_eq!(ui.scopes, ["groups"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");

        let fails = |yaml: &str| Config::parse_str("t.yaml", yaml, &|_| None).unwrap_err();
        let e = fails(
            "auth:\n  oidc:\n    - issuer: https://id.example\n      ui:\n        client_id: tollgate\n        client_secret: ${UNSET}\n",
        );
        assert_eq!(e.key.as_deref(), Some("auth.oidc.ui.client_secret"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("empty"), "{e}");
        let e = fails(
            "auth:\n  oidc:\n    - issuer: https://id.example\n      ui: { client_id: ' ' }\n",
        );
        assert_eq!(e.key.as_deref(), Some("auth.oidc.ui.client_id"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = fails(
            "auth:\n  oidc:\n    - issuer: https://id.example\n      ui:\n        client_id: t\n        scopes: ['a b']\n",
        );
        assert_eq!(e.key.as_deref(), Some("auth.oidc.ui.scopes"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        for name in ["0", "a/b", "", "x y"] {
            let e = fails(&format!(
                "auth:\n  oidc:\n    - issuer: https://id.example\n      ui: {{ client_id: t, name: '{name}' }}\n"
            ));
            assert_eq!(e.key.as_deref(), Some("auth.oidc.ui.name"), "{name}: {e}");
        }
        let e = fails(
            "auth:\n  oidc:\n    - { issuer: https://a.example, ui: { client_id: t, name: corp } }\n    - { issuer: https://b.example, ui: { client_id: t, name: corp } }\n",
        );
        assert!(e.message.contains("two issuers"), "{e}");
        let e = fails(
            "auth:\n  oidc:\n    - issuer: https://id.example\n      ui: { client_id: t, redirect: x }\n",
        );
        assert!(e.message.contains("unknown field `redirect`"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn the_bootstrap_admin_password_follows_the_policy() {
        let e = parse(
            "auth:\n  bootstrap_admin:\n    username: root\n    email: r@example.com\n    password: short\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.bootstrap_admin.password"));
        assert!(e.to_string().contains("at least"), "{e}");
        assert!(
            !e.to_string().contains("short"),
            "the password is not echoed: {e}"
        );
    }

    #[test]
    fn rediss_urls_are_accepted_with_or_without_a_ca_file() {
        let c = parse("redis:\n  url: rediss://:pw@redis.example:6380\n")
            .unwrap()
            .config;
        assert!(c.redis.unwrap().tls.is_none());

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, crate::backend_tls::tests::CA_PEM).unwrap();
        let c = parse(&format!(
            "redis:\n  url: rediss://:pw@redis.example:6380\n  tls:\n    ca_file: {}\n",
            ca.display()
        ))
        .unwrap()
        .config;
        assert_eq!(c.redis.unwrap().tls.unwrap().ca_file, ca);
    }

    #[test]
    fn alert_email_is_read_and_its_password_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, crate::backend_tls::tests::CA_PEM).unwrap();
        let c = parse(&format!(
            "budgets:\n  alert_email:\n    smtp_url: smtps://alerts:hunter2@smtp.example.com\n    from: Alerts <alerts@example.com>\n    to: [a@example.com, b@example.com]\n    ca_file: {}\n",
            ca.display()
        ))
        .unwrap()
        .config;
        let email = c.budgets.alert_email.clone().expect("alert_email");
        assert_eq!(email.to, ["a@example.com", "b@example.com"]);
        assert_eq!(email.ca_file.as_deref(), Some(ca.as_path()));
        for shown in [format!("{email:?}"), format!("{c:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("smtps://alerts:***@smtp.example.com"),
                "{shown}"
            );
        }
        assert!(parse("").unwrap().config.budgets.alert_email.is_none());
    }

    #[test]
    fn alert_email_errors_name_the_key_and_line() {
        let cases = [
            (
                "budgets:\n  alert_email:\n    smtp_url: http://u:hunter2@mail\n    from: a@b.c\n    to: [d@e.f]\n",
                "budgets.alert_email.smtp_url",
                3,
                "smtp://",
            ),
            (
                "budgets:\n  alert_email:\n    smtp_url: smtp://u:hunter2@mail?tls=yes\n    from: a@b.c\n    to: [d@e.f]\n",
                "budgets.alert_email.smtp_url",
                3,
                "tls=required",
            ),
            (
                "budgets:\n  alert_email:\n    smtp_url: smtp://mail\n    from: not-an-address\n    to: [d@e.f]\n",
                "budgets.alert_email.from",
                4,
                "not an email address",
            ),
            (
                "budgets:\n  alert_email:\n    smtp_url: smtp://mail\n    from: a@b.c\n    to: []\n",
                "budgets.alert_email.to",
                5,
                "at least one",
            ),
            (
                "budgets:\n  alert_email:\n    smtp_url: smtp://mail\n    from: a@b.c\n    to: [d@e.f, nobody]\n",
                "budgets.alert_email.to",
                5,
                "`nobody`",
            ),
            (
                "budgets:\n  alert_email:\n    smtp_url: smtp://mail\n    from: a@b.c\n    to: [d@e.f]\n    ca_file: /no/such/ca.pem\n",
                "budgets.alert_email.ca_file",
                6,
                "cannot read",
            ),
        ];
        for (yaml, key, line, message) in cases {
            let e = parse(yaml).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert_eq!(e.line, Some(line), "{e}");
            assert!(e.message.contains(message), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        // Missing and unknown members are errors too.
        let e = parse("budgets:\n  alert_email:\n    smtp_url: smtp://mail\n    to: [d@e.f]\n")
            .unwrap_err();
        assert!(e.to_string().contains("from"), "{e}");
        let e = parse(
            "budgets:\n  alert_email: { smtp_url: smtp://mail, from: a@b.c, to: [d@e.f], cc: [x@y.z] }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cc"), "{e}");
    }

    #[test]
    fn a_redis_ca_file_must_be_a_readable_pem_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = parse(&format!(
            "redis:\n  url: rediss://:hunter2@r:6380\n  tls:\n    ca_file: {}\n",
            missing.display()
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.tls.ca_file"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("cannot read"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "just text\n").unwrap();
        let e = parse(&format!(
            "redis: {{ url: \"rediss://r:6380\", tls: {{ ca_file: {} }} }}\n",
            not_pem.display()
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.tls.ca_file"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("no PEM certificate"), "{e}");

        let e = parse("redis:\n  url: redis://r:6379\n  tls: { ca_file: /x.pem }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.tls"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");

        let e = parse("redis:\n  url: rediss://r:6379/#insecure\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.url"), "{e}");
    }

    #[test]
    fn redis_is_one_url_or_the_nodes_of_a_cluster() {
        let c = parse(
            "redis:\n  cluster: [redis://:pw@h1:6379, \"redis://:pw@h2:6379\"]\n  key_prefix: \"tg:\"\n",
        )
        .unwrap()
        .config;
        let redis = c.redis.unwrap();
        assert!(redis.is_cluster());
        assert_eq!(redis.urls(), ["redis://:pw@h1:6379", "redis://:pw@h2:6379"]);
        assert!(!format!("{redis:?}").contains("pw"), "{redis:?}");

        let e = parse("redis:\n  failure_mode: open\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.url"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("redis.cluster"), "{e}");

        let e = parse("redis:\n  url: redis://r:6379\n  cluster: [redis://h1:6379]\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.cluster"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("not both"), "{e}");

        let e = parse("redis:\n  cluster: []\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.cluster"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");

        let e =
            parse("redis:\n  cluster:\n    - redis://h1:6379\n    - http://h2:6379\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.cluster"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("redis://"), "{e}");

        let e = parse("redis:\n  cluster: [rediss://h1:6380, redis://h2:6379]\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.cluster"), "{e}");
        assert!(e.message.contains("same scheme"), "{e}");

        let e = parse("redis:\n  cluster: [\"redis://u:hunter2@h1:6379/2\"]\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.cluster"), "{e}");
        assert!(e.message.contains("database 0"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        parse("redis:\n  cluster: [redis://h1:6379/0, redis://h2:6379/]\n").unwrap();

        let e = parse("redis:\n  cluster: [redis://h1:6379]\n  tls: { ca_file: /x.pem }\n")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.tls"), "{e}");
        assert!(e.message.contains("redis.cluster is redis://"), "{e}");

        let e = parse("redis:\n  cluster: [redis://h1:6379]\n  key_prefix: \"tg:{all}:\"\n")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("redis.key_prefix"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn postgres_tls_parameters_are_checked() {
        let e = parse("database:\n  url: postgres://u:hunter2@db/x?sslmode=verify\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("database.url"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("sslmode"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");

        let e = parse(
            "database:\n  url: postgres://u:hunter2@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("database.url"), "{e}");
        assert!(e.message.contains("sslrootcert: cannot read"), "{e}");

        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            parse(&format!(
                "database:\n  url: postgres://db/x?sslmode={mode}\n"
            ))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = parse(
            "master_key: sk-admin-123456\ndatabase: { url: \"postgres://u:pw123@h/db\" }\nmodels:\n  - { name: m, upstream_api_key: sk-provider-999 }\n",
        )
        .unwrap()
        .config;
        let shown = format!("{c:?}");
        for secret in ["sk-admin-123456", "pw123", "sk-provider-999"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
    }

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://u:p@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn routes_merge_over_defaults() {
        let c = parse("routes:\n  /v1/audio/speech: { permission: audio }\n  /v1/embeddings: { permission: embed, model_required: true }\n")
            .unwrap()
            .config;
        let routes = c.effective_routes();
        assert_eq!(routes["/v1/audio/speech"].permission, "audio");
        assert_eq!(routes["/v1/embeddings"].permission, "embed");
        assert_eq!(routes["/v1/chat/completions"].permission, "chat");
    }

    #[test]
    fn a_route_names_its_api_family() {
        let c = parse("routes:\n  /claude/*: { permission: chat, model_required: true, api: anthropic }\n  /v1/messages: { permission: chat, model_required: true, api: openai }\n")
            .unwrap()
            .config;
        let routes = c.effective_routes();
        assert_eq!(routes["/claude/*"].api, Some(ApiFamily::Anthropic));
        assert_eq!(routes["/v1/messages"].api, Some(ApiFamily::OpenAi));
        assert_eq!(routes["/v1/chat/completions"].api, None);
        let count = &routes["/v1/messages/count_tokens"];
        assert_eq!(
            (count.permission.as_str(), count.model_required),
            ("chat", true)
        );
        let e = parse("routes:\n  /x: { permission: chat, api: gemini }\n").unwrap_err();
        assert!(e.to_string().contains("gemini"), "{e}");

        for (path, family) in [
            ("/v1/messages", ApiFamily::Anthropic),
            ("/v1/messages/count_tokens", ApiFamily::Anthropic),
            ("/v1/messages/batches/x", ApiFamily::Anthropic),
            ("/v1/messagesx", ApiFamily::OpenAi),
            ("/v1/models", ApiFamily::OpenAi),
            ("/v1/chat/completions", ApiFamily::OpenAi),
            ("/", ApiFamily::OpenAi),
        ] {
            assert_eq!(ApiFamily::of_path(path), family, "{path}");
        }
    }

    #[test]
    fn a_second_document_names_its_line() {
        let e = parse("cache:\n  key_ttl: 5s\n---\nlisten: {}\n").unwrap_err();
        assert!(e.message.contains("more than one document"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn a_missing_member_names_the_line_of_its_section() {
        let e = parse("auth:\n  oidc:\n    - issuer: https://id.example\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth.oidc.audiences"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
    }
}
