//! An in-process tollgate on ephemeral ports, and a client for its admin API.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tollgate::app::{App, Running};
use tollgate::clock::Clock;
use tollgate::config::Config;
use tollgate::secret::Secret;

pub const MASTER_KEY: &str = "tg-master-test-0123456789";

pub struct Tollgate {
    pub app: Arc<App>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl Tollgate {
    /// Starts tollgate with `yaml` (may be empty) over a fresh SQLite file, unless the YAML
    /// names a `database`. Listeners are on 127.0.0.1:0.
    pub async fn start(yaml: &str) -> Tollgate {
        Self::start_with_clock(yaml, Clock::System).await
    }

    /// [`Tollgate::start`] with its HTTP listener on `http` (a port chosen before tollgate
    /// starts, e.g. for a redirect URI registered at an OpenID Provider).
    pub async fn start_at(yaml: &str, http: SocketAddr) -> Tollgate {
        Self::start_inner(yaml, Clock::System, http).await
    }

    /// [`Tollgate::start`] with rate limits counted in `clock`.
    pub async fn start_with_clock(yaml: &str, clock: Clock) -> Tollgate {
        Self::start_inner(yaml, clock, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_inner(yaml: &str, clock: Clock, http: SocketAddr) -> Tollgate {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::parse_str("test.yaml", yaml, &|_| None)
            .unwrap_or_else(|e| panic!("test config: {e}"))
            .config;
        if !yaml.contains("database:") {
            config.database.url = format!("sqlite://{}", dir.path().join("t.db").display());
        }
        config.listen.grpc = "127.0.0.1:0".parse().unwrap();
        config.listen.http = http;
        let app = App::build_with_clock(config, &Secret::new(MASTER_KEY), clock)
            .await
            .expect("build tollgate");
        let running = app.start().await.expect("start tollgate");
        Tollgate {
            app,
            grpc: running.grpc_addr,
            http: running.http_addr,
            running: Some(running),
            _dir: dir,
        }
    }

    /// What the listeners share: readiness, arrivals, the drain.
    pub fn lifecycle(&self) -> Arc<tollgate::lifecycle::Lifecycle> {
        self.running
            .as_ref()
            .expect("tollgate is running")
            .lifecycle()
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }

    /// Calls the HTTP API with `token` (None: no credential).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            super::upstream::client().request(method, format!("http://{}{path}", self.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP API reachable");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Calls the HTTP API as the master key.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(MASTER_KEY), body).await
    }

    /// Creates a key and returns `(id, plaintext)`.
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let (status, key) = self.admin(Method::POST, "/admin/keys", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a user and returns its id.
    pub async fn create_user(&self, username: &str, role: &str) -> String {
        let body =
            json!({"username": username, "email": format!("{username}@example.com"), "role": role});
        let (status, user) = self.admin(Method::POST, "/admin/users", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        user["id"].as_str().unwrap().to_owned()
    }

    /// The value of one Prometheus sample line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.call(Method::GET, "/metrics", None, None).await;
        let text = text.as_str().unwrap_or_default().to_owned();
        super::metrics::sample_in(&text, sample)
    }
}
