//! An OIDC issuer for tests, standing in for Dex, Keycloak and the like: it serves a
//! discovery document and a JWKS on 127.0.0.1, signs tokens with the test-only keys in
//! `tests/fixtures/oidc/`, and can rotate its published keys, count JWKS fetches, publish a
//! wrong `issuer` in its discovery document, or fail with 500.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tollgate::config::OidcIssuer;

/// The fixture keys by `kid`: `rsa-a`, `rsa-b` (for rotation), `ec-p256`, `ed25519`.
pub const KIDS: [&str; 4] = ["rsa-a", "rsa-b", "ec-p256", "ed25519"];

/// The audience the helpers put in tokens and in the issuer's config.
pub const AUDIENCE: &str = "tollgate";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/oidc/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn file_stem(kid: &str) -> String {
    kid.replace('-', "_")
}

struct Shared {
    issuer: String,
    /// `kid`s currently in the JWKS.
    published: Mutex<Vec<String>>,
    /// Public JWKs by `kid`.
    jwks: BTreeMap<String, Value>,
    jwks_fetches: AtomicUsize,
    failing: AtomicBool,
    /// When set, the discovery document names this issuer instead of the real one.
    discovery_issuer: Mutex<Option<String>>,
}

pub struct TestIssuer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    signing: BTreeMap<String, EncodingKey>,
    server: JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let named = s
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| s.issuer.clone());
    Json(json!({
        "issuer": named,
        "jwks_uri": format!("{}/keys", s.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
    }))
    .into_response()
}

async fn serve_jwks(State(s): State<Arc<Shared>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys: Vec<Value> = s
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|kid| s.jwks[kid].clone())
        .collect();
    Json(json!({ "keys": keys })).into_response()
}

impl TestIssuer {
    /// Starts on 127.0.0.1:0 publishing `rsa-a`, `ec-p256` and `ed25519` (not `rsa-b`).
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let mut jwks = BTreeMap::new();
        let mut signing = BTreeMap::new();
        for kid in KIDS {
            let stem = file_stem(kid);
            let jwk: Value = serde_json::from_slice(&fixture(&format!("{stem}.jwk.json"))).unwrap();
            jwks.insert(kid.to_string(), jwk);
            let pem = fixture(&format!("{stem}.pem"));
            let key = match kid {
                "ec-p256" => EncodingKey::from_ec_pem(&pem),
                "ed25519" => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            }
            .unwrap();
            signing.insert(kid.to_string(), key);
        }
        let shared = Arc::new(Shared {
            issuer,
            published: Mutex::new(vec!["rsa-a".into(), "ec-p256".into(), "ed25519".into()]),
            jwks,
            jwks_fetches: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            discovery_issuer: Mutex::new(None),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(serve_jwks))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestIssuer {
            addr,
            shared,
            signing,
            server,
        }
    }

    /// The issuer URL (`iss` of its tokens).
    pub fn url(&self) -> String {
        self.shared.issuer.clone()
    }

    /// A config entry for this issuer: audience [`AUDIENCE`], leeway 60 s, and
    /// `extra` YAML lines (e.g. `"algorithms: [RS256, ES256]"`) merged in.
    pub fn config(&self, extra: &str) -> OidcIssuer {
        let mut yaml = format!(
            "issuer: {}\naudiences: [{AUDIENCE}]\nalgorithms: [RS256, PS256, ES256, EdDSA]\n",
            self.url()
        );
        for line in extra.lines() {
            let key = line.split(':').next().unwrap();
            yaml = yaml
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            yaml.push_str(line);
            yaml.push('\n');
        }
        serde_yaml::from_str(&yaml).unwrap()
    }

    /// Claims of a valid token at `now`: `sub` user-1, audience [`AUDIENCE`], 5 minutes, a
    /// verified email.
    pub fn claims(&self, now: i64) -> Value {
        json!({
            "iss": self.url(),
            "sub": "user-1",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "email": "ada@example.com",
            "email_verified": true,
            "name": "Ada Lovelace",
            "groups": ["engineering", "admins"],
        })
    }

    /// Signs `claims` with the key `kid`, naming `kid` in the header.
    pub fn token(&self, claims: &Value, alg: Algorithm, kid: &str) -> String {
        self.sign(
            &json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": kid}),
            claims,
            alg,
            kid,
        )
    }

    /// Signs `header` and `claims` as given with the key `key` (whatever the header says).
    pub fn sign(&self, header: &Value, claims: &Value, alg: Algorithm, key: &str) -> String {
        let message = format!("{}.{}", segment(header), segment(claims));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.signing[key], alg).unwrap();
        format!("{message}.{signature}")
    }

    /// Publishes exactly these `kid`s from now on.
    pub fn publish(&self, kids: &[&str]) {
        *self.shared.published.lock().unwrap() = kids.iter().map(|k| k.to_string()).collect();
    }

    /// How many times the JWKS was requested.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Makes both endpoints answer 500 (or serve again).
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes the discovery document name another issuer.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        *self.shared.discovery_issuer.lock().unwrap() = Some(issuer.to_string());
    }
}

/// A JSON value as a base64url JWT segment.
pub fn segment(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}
