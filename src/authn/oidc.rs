//! Tokens of OIDC issuers (Dex, Keycloak, Entra ID, Auth0, Google), verified against the
//! keys each issuer publishes.
//!
//! Per configured issuer, the discovery document (`{issuer}/.well-known/openid-configuration`,
//! whose `issuer` must equal the configured one exactly) names the JWKS; its signing keys are
//! cached by `kid`. Verifying a token whose `kid` is cached does no I/O. The cache is
//! refreshed in the background every `jwks_refresh`; an unknown `kid` triggers a re-fetch at
//! most once per [`REFETCH_INTERVAL`] per issuer (requests arriving meanwhile wait for that
//! one fetch). A token whose key is still missing after a re-fetch made since it arrived is
//! rejected; one that arrives while a re-fetch is not allowed yet is
//! [`OidcError::KeyNotFetchedYet`] (the issuer may just have published the key: waiting
//! can succeed). An issuer that cannot be reached while no keys are cached is
//! [`OidcError::Unavailable`] (a transient failure, not a rejection).

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::jwt::{self, ClaimRules, JwtRejection};
use crate::config::{ClaimNames, OidcIssuer};
use crate::domain::Timestamp;

/// At most one re-fetch per issuer in this interval on an unknown `kid`, so a stream of
/// tokens with invented `kid`s cannot turn tollgate into a load generator for the issuer.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Every algorithm an OIDC issuer may use (config validation allows only these).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The configured issuer URL (equal to the token's `iss`).
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The token's `email_verified` claim is `true` (or the string `"true"`, as some
    /// issuers send it); anything else, or no claim, is unverified.
    pub email_verified: bool,
    pub name: Option<String>,
    /// From the configured groups claim: a string array, or a single string.
    pub groups: Vec<String>,
    /// The value of the issuer's `org_claim` (a string), when it has one.
    pub org: Option<String>,
}

/// What an issuer's discovery document says about signing in at it with the authorization
/// code flow (read with its keys, and refreshed with them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// `token_endpoint_auth_methods_supported`; when the document leaves it out, its
    /// default (OpenID Connect Discovery §3): `client_secret_basic`.
    pub token_endpoint_auth_methods: Vec<String>,
    /// `code_challenge_methods_supported`, when the document has it.
    pub code_challenge_methods: Option<Vec<String>>,
    /// RFC 9207: the issuer names itself in `iss` on every authorization response.
    pub iss_parameter_supported: bool,
}

impl ProviderMetadata {
    fn from_discovery(doc: &Value) -> ProviderMetadata {
        let url = |name: &str| {
            doc.get(name)
                .and_then(Value::as_str)
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                .map(str::to_owned)
        };
        let strings = |name: &str| {
            doc.get(name).and_then(Value::as_array).map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        };
        ProviderMetadata {
            authorization_endpoint: url("authorization_endpoint"),
            token_endpoint: url("token_endpoint"),
            token_endpoint_auth_methods: strings("token_endpoint_auth_methods_supported")
                .unwrap_or_else(|| vec!["client_secret_basic".to_owned()]),
            code_challenge_methods: strings("code_challenge_methods_supported"),
            iss_parameter_supported: doc
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// What an ID token must say besides what every token of its issuer must: who it was minted
/// for and for which sign-in.
#[derive(Debug, Clone, Copy)]
pub struct IdTokenExpected<'a> {
    /// The client's id: the ID token's audience, and its `azp` when it has one.
    pub client_id: &'a str,
    /// The `nonce` the authorization request carried.
    pub nonce: &'a str,
}

/// ID tokens come from the issuer's token endpoint, not from a client, and carry the
/// profile and groups claims: they may be larger than `auth.max_token_bytes` allows bearer
/// tokens to be.
const MAX_ID_TOKEN_BYTES: usize = 64 * 1024;

/// Verification either refuses the token or cannot decide yet; callers answer the latter
/// two with UNAVAILABLE / 503, never with 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcError {
    Rejected(JwtRejection),
    /// The issuer's keys cannot be read and none are cached.
    Unavailable {
        issuer: String,
        reason: String,
    },
    /// The token's key is not cached and the keys were re-read less than
    /// [`REFETCH_INTERVAL`] before the token arrived: the next re-read, allowed in
    /// `retry_in`, may find a key the issuer has just published.
    KeyNotFetchedYet {
        issuer: String,
        retry_in: Duration,
    },
}

impl fmt::Display for OidcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OidcError::Rejected(r) => write!(f, "token rejected: {r}"),
            OidcError::Unavailable { issuer, reason } => {
                write!(f, "keys of OIDC issuer {issuer} are unavailable: {reason}")
            }
            OidcError::KeyNotFetchedYet { issuer, retry_in } => write!(
                f,
                "the token's key is not among the cached keys of OIDC issuer {issuer}; they are re-read in {}ms",
                retry_in.as_millis()
            ),
        }
    }
}

impl std::error::Error for OidcError {}

impl From<JwtRejection> for OidcError {
    fn from(r: JwtRejection) -> Self {
        OidcError::Rejected(r)
    }
}

/// How discovery documents and JWKS are read; a trait so tests can count or fail fetches.
#[async_trait]
pub trait Fetch: Send + Sync {
    /// GETs `url` and parses the body as JSON. The error is a short description for a log
    /// line.
    async fn get_json(&self, url: &str) -> Result<Value, String>;
}

/// [`Fetch`] over HTTP(S) with short timeouts: a slow issuer must not hold up decisions.
pub struct HttpFetch {
    client: reqwest::Client,
}

impl HttpFetch {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with rustls and no custom settings builds");
        HttpFetch { client }
    }

    /// With a client configured elsewhere (a proxy, extra root certificates, or none of the
    /// environment's proxy settings for loopback tests).
    pub fn with_client(client: reqwest::Client) -> Self {
        HttpFetch { client }
    }
}

impl Default for HttpFetch {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Fetch for HttpFetch {
    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("GET {url}: body is not JSON: {e}"))
    }
}

/// One published verification key.
#[derive(Debug)]
struct Key {
    kid: Option<String>,
    /// The algorithms this key can verify (by key type and curve, narrowed by the JWK's own
    /// `alg` when it has one).
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn kid_for_log(&self) -> &str {
        self.kid.as_deref().unwrap_or("(none)")
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS: keeps the signature keys of supported types (RSA; EC P-256, P-384; OKP
/// Ed25519) and skips the rest (`use: enc`, other types or curves, broken entries).
fn parse_jwks(doc: &Value) -> Result<Vec<Key>, String> {
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no `keys` array")?;
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = RawJwk::deserialize(entry) else {
            continue;
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let (algorithms, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => match (&jwk.n, &jwk.e) {
                (Some(n), Some(e)) => (
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                    DecodingKey::from_rsa_components(n, e),
                ),
                _ => continue,
            },
            ("EC", Some(crv @ ("P-256" | "P-384"))) => match (&jwk.x, &jwk.y) {
                (Some(x), Some(y)) => (
                    vec![if crv == "P-256" {
                        Algorithm::ES256
                    } else {
                        Algorithm::ES384
                    }],
                    DecodingKey::from_ec_components(x, y),
                ),
                _ => continue,
            },
            ("OKP", Some("Ed25519")) => match &jwk.x {
                Some(x) => (vec![Algorithm::EdDSA], DecodingKey::from_ed_components(x)),
                None => continue,
            },
            _ => continue,
        };
        let Ok(key) = key else { continue };
        let algorithms = match jwk.alg.as_deref().map(str::parse::<Algorithm>) {
            None => algorithms,
            Some(Ok(alg)) if algorithms.contains(&alg) => vec![alg],
            // A key that declares an algorithm its type cannot do is unusable.
            Some(_) => continue,
        };
        keys.push(Key {
            kid: jwk.kid,
            algorithms,
            key,
        });
    }
    Ok(keys)
}

/// The state kept per configured issuer.
struct Issuer {
    config: OidcIssuer,
    algorithms: Vec<Algorithm>,
    /// The latest keys successfully fetched; `None` until the first success.
    keys: arc_swap::ArcSwapOption<Vec<Key>>,
    /// The sign-in part of the discovery document read with those keys.
    metadata: arc_swap::ArcSwapOption<ProviderMetadata>,
    /// When the last on-demand fetch (unknown `kid`, or no keys yet) started. Holding the
    /// lock across the fetch is what makes concurrent requests share one fetch.
    on_demand: Mutex<Option<Instant>>,
    /// Whether the last fetch succeeded, so failures are logged once per transition.
    healthy: AtomicBool,
    /// [`REFETCH_INTERVAL`]; shorter in unit tests.
    refetch_interval: Duration,
}

impl Issuer {
    fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        )
    }

    async fn fetch_keys(&self, fetch: &dyn Fetch) -> Result<(Vec<Key>, ProviderMetadata), String> {
        let discovery = fetch.get_json(&self.discovery_url()).await?;
        // OpenID Connect Discovery §4.3: the document's `issuer` must be identical to the
        // issuer it was fetched for, or another party's keys could be substituted.
        let published = discovery.get("issuer").and_then(Value::as_str);
        if published != Some(self.config.issuer.as_str()) {
            return Err(format!(
                "discovery document names issuer {:?}, not the configured {:?}",
                published.unwrap_or("(none)"),
                self.config.issuer
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or("discovery document has no http(s) `jwks_uri`")?;
        let keys = parse_jwks(&fetch.get_json(jwks_uri).await?)?;
        Ok((keys, ProviderMetadata::from_discovery(&discovery)))
    }

    /// Fetches and, on success, replaces the cached keys. Failures keep the old keys.
    async fn refresh(&self, fetch: &dyn Fetch) -> Result<(), String> {
        match self.fetch_keys(fetch).await {
            Ok((keys, metadata)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "OIDC issuer keys fetched again");
                }
                if keys.is_empty() {
                    tracing::warn!(issuer = %self.config.issuer, "OIDC issuer publishes no usable signing key");
                }
                self.keys.store(Some(Arc::new(keys)));
                self.metadata.store(Some(Arc::new(metadata)));
                Ok(())
            }
            Err(reason) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    let cached = self.keys.load_full().map_or(0, |k| k.len());
                    tracing::warn!(issuer = %self.config.issuer, cached, %reason, "fetching OIDC issuer keys failed; keeping the cached keys");
                }
                Err(reason)
            }
        }
    }

    fn unavailable(&self, reason: String) -> OidcError {
        OidcError::Unavailable {
            issuer: self.config.issuer.clone(),
            reason,
        }
    }

    fn key_not_fetched_yet(&self, retry_in: Duration) -> OidcError {
        OidcError::KeyNotFetchedYet {
            issuer: self.config.issuer.clone(),
            retry_in,
        }
    }

    /// The key for `kid` (or the only candidate when the token has none), as the key set
    /// and its index there (no copy of the key on the hot path), fetching on demand when it
    /// is not cached, at most once per [`REFETCH_INTERVAL`]. Missing after a successful
    /// fetch that started once this call had begun: rejected. Missing while a fetch is not
    /// allowed yet, or after a failed one: [`OidcError::KeyNotFetchedYet`].
    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        fetch: &dyn Fetch,
    ) -> Result<(Arc<Vec<Key>>, usize), OidcError> {
        let arrived = Instant::now();
        if let Some(keys) = self.keys.load_full() {
            if let Some(found) = pick(&keys, kid, alg)? {
                return Ok((keys, found));
            }
        }
        let mut last = self.on_demand.lock().await;
        // Another request may have fetched while this one waited for the lock.
        let cached = self.keys.load_full();
        if let Some(keys) = &cached {
            if let Some(found) = pick(keys, kid, alg)? {
                return Ok((Arc::clone(keys), found));
            }
        }
        match *last {
            Some(at) if at.elapsed() < self.refetch_interval => {
                if cached.is_none() {
                    return Err(self.unavailable(format!(
                        "no keys fetched yet; next attempt within {}s",
                        self.refetch_interval.as_secs()
                    )));
                }
                // The keys were last read before this token arrived (they may predate its
                // key), or that read failed: whether the key exists is still open.
                if at < arrived || !self.healthy.load(Ordering::Relaxed) {
                    return Err(self
                        .key_not_fetched_yet(self.refetch_interval.saturating_sub(at.elapsed())));
                }
            }
            _ => {
                *last = Some(Instant::now());
                let fetched = self.refresh(fetch).await;
                if let Some(keys) = self.keys.load_full() {
                    if let Some(found) = pick(&keys, kid, alg)? {
                        return Ok((keys, found));
                    }
                }
                if let Err(reason) = fetched {
                    return Err(match cached {
                        None => self.unavailable(reason),
                        Some(_) => self.key_not_fetched_yet(self.refetch_interval),
                    });
                }
            }
        }
        Err(match kid {
            Some(kid) => JwtRejection::UnknownKid { kid: shorten(kid) },
            None => JwtRejection::MissingKid,
        }
        .into())
    }
}

/// A `kid` is attacker-chosen text bound for a log line: keep it short and printable.
fn shorten(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Finds the key for `kid` among `keys`. `Ok(None)` means "not there" (worth a re-fetch);
/// a key that is there but cannot do `alg` is a rejection.
fn pick(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Result<Option<usize>, JwtRejection> {
    match kid {
        Some(kid) => match keys.iter().position(|k| k.kid.as_deref() == Some(kid)) {
            None => Ok(None),
            Some(i) if keys[i].algorithms.contains(&alg) => Ok(Some(i)),
            Some(_) => Err(JwtRejection::KeyMismatch {
                kid: shorten(kid),
                alg: format!("{alg:?}"),
            }),
        },
        // Without a `kid`, a token is only verifiable when exactly one key can do its alg.
        None => {
            let mut candidates = (0..keys.len()).filter(|&i| keys[i].algorithms.contains(&alg));
            match (candidates.next(), candidates.next()) {
                (Some(i), None) => Ok(Some(i)),
                (Some(_), Some(_)) => Err(JwtRejection::MissingKid),
                (None, _) => Ok(None),
            }
        }
    }
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Reads the identity from verified claims using the issuer's claim names.
fn identity(
    issuer: &str,
    claims: &Map<String, Value>,
    names: &ClaimNames,
    org_claim: Option<&str>,
) -> Result<OidcIdentity, JwtRejection> {
    let subject =
        string_claim(claims, &names.subject).ok_or_else(|| JwtRejection::MissingSubject {
            claim: names.subject.clone(),
        })?;
    let groups = match claims.get(&names.groups) {
        Some(Value::String(g)) if !g.is_empty() => vec![g.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Ok(OidcIdentity {
        issuer: issuer.to_owned(),
        subject,
        email: string_claim(claims, &names.email),
        email_verified: match claims.get("email_verified") {
            Some(Value::Bool(verified)) => *verified,
            Some(Value::String(verified)) => verified == "true",
            _ => false,
        },
        name: string_claim(claims, &names.name),
        groups,
        org: org_claim.and_then(|claim| string_claim(claims, claim)),
    })
}

/// Verifies tokens of the configured OIDC issuers.
pub struct OidcVerifier {
    issuers: HashMap<String, Arc<Issuer>>,
    fetch: Arc<dyn Fetch>,
    max_token_bytes: usize,
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// A verifier reading issuers over HTTP(S). No I/O happens here: keys are fetched by
    /// [`refresh_all`](Self::refresh_all), the refresher, or on demand.
    pub fn new(issuers: &[OidcIssuer], max_token_bytes: usize) -> Self {
        Self::with_fetch(issuers, max_token_bytes, Arc::new(HttpFetch::new()))
    }

    /// A verifier reading discovery documents and JWKS through `fetch`.
    pub fn with_fetch(
        issuers: &[OidcIssuer],
        max_token_bytes: usize,
        fetch: Arc<dyn Fetch>,
    ) -> Self {
        let issuers = issuers
            .iter()
            .map(|config| {
                // Config validation only lets names of asymmetric algorithms through.
                let mut algorithms: Vec<Algorithm> = config
                    .algorithms
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .filter(|a: &Algorithm| {
                        a.family() != jsonwebtoken::AlgorithmFamily::Hmac
                    })
                    .collect();
                if config.algorithms.is_empty() {
                    algorithms.push(Algorithm::RS256);
                }
                if config.audiences.is_empty() && config.ui.is_none() {
                    tracing::warn!(issuer = %config.issuer, "OIDC issuer has no `audiences`: none of its tokens will be accepted");
                }
                let issuer = Issuer {
                    config: config.clone(),
                    algorithms,
                    keys: arc_swap::ArcSwapOption::empty(),
                    metadata: arc_swap::ArcSwapOption::empty(),
                    on_demand: Mutex::new(None),
                    healthy: AtomicBool::new(true),
                    refetch_interval: REFETCH_INTERVAL,
                };
                (config.issuer.clone(), Arc::new(issuer))
            })
            .collect();
        OidcVerifier {
            issuers,
            fetch,
            max_token_bytes,
        }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every issuer's keys now (at start, so the first tokens need no fetch).
    /// Answers the issuers that failed with the reason; their old keys, if any, stay.
    pub async fn refresh_all(&self) -> Vec<(String, String)> {
        let results = futures::future::join_all(self.issuers.values().map(|issuer| async {
            issuer
                .refresh(self.fetch.as_ref())
                .await
                .err()
                .map(|reason| (issuer.config.issuer.clone(), reason))
        }))
        .await;
        results.into_iter().flatten().collect()
    }

    /// Re-reads each issuer's keys every `jwks_refresh` until the handle is aborted
    /// (aborting it stops all issuers' loops). The first round runs after one interval.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut loops = tokio::task::JoinSet::new();
            for issuer in this.issuers.values() {
                let issuer = Arc::clone(issuer);
                let fetch = Arc::clone(&this.fetch);
                loops.spawn(async move {
                    let period = issuer.config.jwks_refresh.max(Duration::from_secs(1));
                    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        // Failures are logged inside, once per transition.
                        let _ = issuer.refresh(fetch.as_ref()).await;
                    }
                });
            }
            while loops.join_next().await.is_some() {}
        })
    }

    /// Verifies `token` at `now` (Unix seconds) and answers who it names. With the token's
    /// key cached this does no I/O.
    pub async fn verify(&self, token: &str, now: Timestamp) -> Result<OidcIdentity, OidcError> {
        let jwt = jwt::parse(token, self.max_token_bytes)?;
        // `alg: none`, HMAC and `crit` are refused whatever the token claims as its issuer,
        // so the log line names the real problem.
        jwt.check_header(&ASYMMETRIC)?;
        let issuer = jwt
            .issuer()
            .and_then(|iss| self.issuers.get(iss))
            .ok_or(JwtRejection::UnknownIssuer)?;
        self.check(issuer, &jwt, &issuer.config.audiences, now)
            .await?;
        let config = &issuer.config;
        Ok(identity(
            &config.issuer,
            jwt.claims(),
            &config.claims,
            config.org_claim.as_deref(),
        )?)
    }

    /// Verifies an ID token that `issuer`'s token endpoint answered to a sign-in, as a
    /// bearer token of that issuer is verified, except: its `iss` must be `issuer` itself,
    /// its audience is the client (`expected.client_id`, not `audiences`), an `azp` must be
    /// the client too (and is required when the token has several audiences, OpenID
    /// Connect Core §3.1.3.7), and its `nonce` must be the sign-in's.
    pub async fn verify_id_token(
        &self,
        issuer: &str,
        token: &str,
        expected: IdTokenExpected<'_>,
        now: Timestamp,
    ) -> Result<OidcIdentity, OidcError> {
        let jwt = jwt::parse(token, MAX_ID_TOKEN_BYTES.max(self.max_token_bytes))?;
        jwt.check_header(&ASYMMETRIC)?;
        let issuer = self
            .issuers
            .get(issuer)
            .ok_or(JwtRejection::UnknownIssuer)?;
        if jwt.issuer() != Some(issuer.config.issuer.as_str()) {
            return Err(JwtRejection::WrongIssuer.into());
        }
        let audiences = [expected.client_id.to_owned()];
        self.check(issuer, &jwt, &audiences, now).await?;
        let claims = jwt.claims();
        let several_audiences = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|list| list.len() > 1);
        match claims.get("azp") {
            None if !several_audiences => {}
            Some(Value::String(azp)) if azp == expected.client_id => {}
            _ => return Err(JwtRejection::WrongAuthorizedParty.into()),
        }
        if claims.get("nonce").and_then(Value::as_str) != Some(expected.nonce) {
            return Err(JwtRejection::WrongNonce.into());
        }
        let config = &issuer.config;
        Ok(identity(
            &config.issuer,
            claims,
            &config.claims,
            config.org_claim.as_deref(),
        )?)
    }

    /// Header, key, signature and registered claims of a token of `issuer`, with
    /// `audiences` accepted.
    async fn check(
        &self,
        issuer: &Issuer,
        jwt: &jwt::UnverifiedJwt<'_>,
        audiences: &[String],
        now: Timestamp,
    ) -> Result<(), OidcError> {
        let alg = jwt.check_header(&issuer.algorithms)?;
        let (keys, index) = issuer.key_for(jwt.kid(), alg, self.fetch.as_ref()).await?;
        let key = &keys[index];
        jwt.verify_signature(alg, &key.key, key.kid_for_log())?;
        let config = &issuer.config;
        jwt::check_claims(
            jwt.claims(),
            &ClaimRules {
                issuer: &config.issuer,
                audiences,
                leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
            },
            now,
        )?;
        Ok(())
    }

    /// The sign-in endpoints of a configured issuer, from its discovery document: as last
    /// read with its keys, else read now (one read at a time per issuer).
    pub async fn provider_metadata(
        &self,
        issuer: &str,
    ) -> Result<Arc<ProviderMetadata>, OidcError> {
        let Some(issuer) = self.issuers.get(issuer) else {
            return Err(JwtRejection::UnknownIssuer.into());
        };
        if let Some(metadata) = issuer.metadata.load_full() {
            return Ok(metadata);
        }
        let _one_at_a_time = issuer.on_demand.lock().await;
        if let Some(metadata) = issuer.metadata.load_full() {
            return Ok(metadata);
        }
        issuer
            .refresh(self.fetch.as_ref())
            .await
            .map_err(|reason| issuer.unavailable(reason))?;
        issuer
            .metadata
            .load_full()
            .ok_or_else(|| issuer.unavailable("no discovery document read".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    /// An issuer whose JWKS is a fixed document and which counts fetches.
    struct Fixed {
        jwks: Value,
        fetches: AtomicUsize,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Fetch for Fixed {
        async fn get_json(&self, url: &str) -> Result<Value, String> {
            if self.fail.load(Ordering::Relaxed) {
                return Err("down".into());
            }
            if url.ends_with("/.well-known/openid-configuration") {
                return Ok(
                    json!({"issuer": "https://id.example", "jwks_uri": "https://id.example/keys"}),
                );
            }
            self.fetches.fetch_add(1, Ordering::Relaxed);
            Ok(self.jwks.clone())
        }
    }

    fn config() -> OidcIssuer {
        serde_yaml::from_str("{ issuer: 'https://id.example', audiences: [app] }").unwrap()
    }

    #[test]
    fn jwks_keeps_supported_signing_keys() {
        let rsa = json!({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"});
        let doc = json!({"keys": [
            rsa,
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p256", "crv": "P-256", "x": "AQAB", "y": "AQAB"},
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AQAB", "y": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AQAB"},
            {"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "liar", "alg": "ES256", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "broken"},
            "not an object"
        ]});
        let keys = parse_jwks(&doc).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["r", "p256", "ed", "ps"]);
        assert_eq!(keys[3].algorithms, [Algorithm::PS256]);
        assert!(parse_jwks(&json!({"nokeys": []})).is_err());
    }

    #[test]
    fn groups_as_array_or_string() {
        let names = ClaimNames::default();
        let claims = |v: Value| v.as_object().unwrap().clone();
        let id = identity(
            "i",
            &claims(json!({"sub": "u", "groups": ["a", 1, "b"], "email": ""})),
            &names,
            None,
        )
        .unwrap();
        assert_eq!(id.groups, ["a", "b"]);
        assert_eq!(id.email, None);
        let id = identity(
            "i",
            &claims(json!({"sub": "u", "groups": "a"})),
            &names,
            None,
        )
        .unwrap();
        assert_eq!(id.groups, ["a"]);
        assert!(!id.email_verified);
        assert_eq!(
            identity("i", &claims(json!({"sub": 5})), &names, None).unwrap_err(),
            JwtRejection::MissingSubject {
                claim: "sub".into()
            }
        );
    }

    #[test]
    fn email_verified_only_when_the_claim_says_true() {
        let names = ClaimNames::default();
        let verified = |v: Value| {
            let claims = json!({"sub": "u", "email": "a@x", "email_verified": v});
            identity("i", claims.as_object().unwrap(), &names, None)
                .unwrap()
                .email_verified
        };
        assert!(verified(json!(true)));
        assert!(verified(json!("true")));
        for no in [
            json!(false),
            json!("false"),
            json!("yes"),
            json!(1),
            json!(null),
        ] {
            assert!(!verified(no.clone()), "{no}");
        }
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_per_interval() {
        let fixed = Arc::new(Fixed {
            jwks: json!({"keys": [{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AQAB"}]}),
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        });
        let mut verifier = OidcVerifier::with_fetch(&[config()], 8192, fixed.clone());
        let interval = Duration::from_millis(300);
        Arc::get_mut(verifier.issuers.get_mut("https://id.example").unwrap())
            .unwrap()
            .refetch_interval = interval;
        let issuer = &verifier.issuers["https://id.example"];
        let fetch: &dyn Fetch = fixed.as_ref();
        // No keys yet: the first lookup fetches.
        assert!(issuer
            .key_for(Some("ed"), Algorithm::EdDSA, fetch)
            .await
            .is_ok());
        assert_eq!(fixed.fetches.load(Ordering::Relaxed), 1);
        let unknown = |kid: &'static str| async move {
            issuer
                .key_for(Some(kid), Algorithm::EdDSA, fetch)
                .await
                .unwrap_err()
        };
        // That fetch counts: an unknown kid within the interval is not fetched for, and not
        // refused either: the issuer may have published it since, so it is asked to wait
        // until a re-fetch is allowed.
        match unknown("a").await {
            OidcError::KeyNotFetchedYet { issuer, retry_in } => {
                assert_eq!(issuer, "https://id.example");
                assert!(
                    retry_in > Duration::ZERO && retry_in <= interval,
                    "{retry_in:?}"
                );
            }
            other => panic!("expected KeyNotFetchedYet, got {other:?}"),
        }
        assert_eq!(fixed.fetches.load(Ordering::Relaxed), 1);
        tokio::time::sleep(interval).await;
        // A re-fetch made for this token that still lacks its key: refused.
        assert!(matches!(
            unknown("b").await,
            OidcError::Rejected(JwtRejection::UnknownKid { .. })
        ));
        assert_eq!(fixed.fetches.load(Ordering::Relaxed), 2);
        assert!(matches!(
            unknown("c").await,
            OidcError::KeyNotFetchedYet { .. }
        ));
        assert_eq!(fixed.fetches.load(Ordering::Relaxed), 2);
        // A cached key of the wrong type is a rejection, not a fetch.
        assert!(matches!(
            issuer.key_for(Some("ed"), Algorithm::RS256, fetch).await,
            Err(OidcError::Rejected(JwtRejection::KeyMismatch { .. }))
        ));
        // The issuer going down keeps the cached keys; a re-fetch that failed says nothing
        // about an unknown kid, so it waits for the next one rather than being refused.
        fixed.fail.store(true, Ordering::Relaxed);
        tokio::time::sleep(interval).await;
        match unknown("d").await {
            OidcError::KeyNotFetchedYet { retry_in, .. } => assert_eq!(retry_in, interval),
            other => panic!("expected KeyNotFetchedYet, got {other:?}"),
        }
        assert!(matches!(
            unknown("d").await,
            OidcError::KeyNotFetchedYet { .. }
        ));
        assert!(issuer
            .key_for(Some("ed"), Algorithm::EdDSA, fetch)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn requests_waiting_for_a_refetch_take_its_answer() {
        let fixed = Arc::new(Fixed {
            jwks: json!({"keys": [{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AQAB"}]}),
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        });
        let verifier = OidcVerifier::with_fetch(&[config()], 8192, fixed.clone());
        let issuer = &verifier.issuers["https://id.example"];
        let fetch: &dyn Fetch = fixed.as_ref();
        assert!(issuer
            .key_for(Some("ed"), Algorithm::EdDSA, fetch)
            .await
            .is_ok());
        // Many requests for one unknown kid arrive while a re-fetch may start (the interval
        // has passed): one of them re-fetches, the others wait for that answer, which is
        // final for all of them since it was read after they arrived.
        let mut busy = issuer.on_demand.lock().await;
        *busy = None;
        let release = async move {
            tokio::task::yield_now().await;
            drop(busy);
        };
        let (answers, ()) = tokio::join!(
            futures::future::join_all((0..8).map(|_| issuer.key_for(
                Some("new"),
                Algorithm::EdDSA,
                fetch
            )),),
            release
        );
        assert_eq!(fixed.fetches.load(Ordering::Relaxed), 2);
        for answer in answers {
            assert!(
                matches!(
                    answer,
                    Err(OidcError::Rejected(JwtRejection::UnknownKid { .. }))
                ),
                "{answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn no_keys_and_issuer_down_is_unavailable() {
        let fixed = Arc::new(Fixed {
            jwks: json!({"keys": []}),
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(true),
        });
        let verifier = OidcVerifier::with_fetch(&[config()], 8192, fixed.clone());
        assert_eq!(verifier.refresh_all().await.len(), 1);
        let issuer = &verifier.issuers["https://id.example"];
        for _ in 0..2 {
            assert!(matches!(
                issuer
                    .key_for(Some("k"), Algorithm::RS256, fixed.as_ref())
                    .await,
                Err(OidcError::Unavailable { .. })
            ));
        }
    }
}
