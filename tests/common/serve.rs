//! `tollgate serve` as a subprocess (the shipped binary, not an in-process app) on free
//! ports, with a config file written for it: the listeners, a database, and what the caller
//! adds. Killed when dropped; a test that cares how it stops sends the signal itself.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
pub const MASTER_KEY: &str = "tg-master-serve-tests-0123456789";
/// How long a start may take: generous, the suite starts many processes on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a `serve` keeps its records.
pub enum Database<'a> {
    /// A SQLite file, `t.db` in the process's own directory ([`Serve::sqlite_path`]).
    Sqlite,
    /// This URL (e.g. a schema of [`super::db::fresh_postgres`], shared with other
    /// replicas), through a pool of at most 4 connections (as the other tests' stores), so
    /// that many replicas in parallel stay well below Postgres' connection limit.
    Url(&'a str),
}

/// A `tollgate serve` subprocess; killed when dropped.
pub struct Serve {
    child: Child,
    dir: TempDir,
    pub http: String,
    pub grpc: std::net::SocketAddr,
}

impl Serve {
    /// Starts `serve` on free ports with `database`; `config` is appended to the config
    /// file (models, redis, cache, limits...). Returns once `/healthz` answers 200.
    pub async fn start(database: Database<'_>, config: &str) -> Serve {
        let dir = TempDir::new().unwrap();
        let (grpc, http) = (super::envoy::free_port(), super::envoy::free_port());
        let database = match database {
            Database::Sqlite => format!("{{ url: \"sqlite://{}/t.db\" }}", dir.path().display()),
            Database::Url(url) => format!("{{ url: \"{url}\", max_connections: 4 }}"),
        };
        let config = format!(
            "listen: {{ grpc: 127.0.0.1:{grpc}, http: 127.0.0.1:{http} }}\n\
             database: {database}\n{config}"
        );
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, config).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "-c", path.to_str().unwrap()])
            .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
            .env("TOLLGATE_LOG", "info")
            .env_remove("TOLLGATE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("tollgate serve starts");
        let mut serve = Serve {
            child,
            dir,
            http: format!("http://127.0.0.1:{http}"),
            grpc: ([127, 0, 0, 1], grpc).into(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = client().get(format!("{}/healthz", serve.http)).send().await {
                if response.status() == StatusCode::OK {
                    return serve;
                }
            }
            if let Some(status) = serve.child.try_wait().unwrap() {
                panic!("tollgate serve exited with {status}:\n{}", serve.log());
            }
            assert!(
                Instant::now() < deadline,
                "tollgate serve not healthy after {START_TIMEOUT:?}:\n{}",
                serve.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The SQLite file of a [`Database::Sqlite`] serve.
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self.dir.path().join("t.db")
    }

    /// The process's own directory (config, logs, SQLite file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// SIGKILL (no drain, nothing flushed), and waits for the process to be gone.
    pub fn sigkill(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL tollgate serve");
        self.child.wait().expect("reap tollgate serve")
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn readyz(&self) -> Option<(StatusCode, Value)> {
        let response = client()
            .get(format!("{}/readyz", self.http))
            .send()
            .await
            .ok()?;
        let status = response.status();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Calls the HTTP API as the master key; the answer's body as JSON (`null` if empty).
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = client()
            .request(method, format!("{}{path}", self.http))
            .bearer_auth(MASTER_KEY);
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

    /// Creates a key through the admin API and returns `(id, plaintext)`.
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let (status, key) = self.admin(Method::POST, "/admin/keys", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a user through the admin API and returns its id.
    pub async fn create_user(&self, username: &str, role: &str) -> String {
        let body =
            json!({"username": username, "email": format!("{username}@example.com"), "role": role});
        let (status, user) = self.admin(Method::POST, "/admin/users", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        user["id"].as_str().unwrap().to_owned()
    }

    /// The value of one Prometheus sample line (`name{labels}`) of `/metrics`, 0 when
    /// absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.http))
            .send()
            .await
            .expect("/metrics reachable")
            .text()
            .await
            .expect("/metrics body");
        super::metrics::sample_in(&text, sample)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    super::upstream::client()
}
