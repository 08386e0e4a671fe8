//! The HTTP API against its own OpenAPI document: schemathesis (in `.venv`, installed by
//! scripts/test) generates requests from `/openapi.json` of a real `tollgate serve` and
//! checks every answer with all of its checks: no 5xx, every status declared, every body
//! as its schema says, schema-valid requests accepted and invalid ones refused, resources
//! that were created can be found, auth is not ignored, unsupported methods are 405.
//!
//! Two runs against one server: first the user API (`/v1/user/*`, `/v1/logout`) as a
//! person logged in with a password (schemathesis logs in again whenever a 401 says the
//! session ended, e.g. after it called `/v1/logout`), then everything else with the
//! master key, which may block or delete that person. The seed is fixed; a failure prints
//! schemathesis's report, with a `curl` line for each failing request.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const MASTER_KEY: &str = "tg-master-schemathesis-0123456789";
const PERSON: &str = "sam";
const PASSWORD: &str = "Schemathesis-pass-1";

/// Test cases per operation and phase: enough to find what the checks find, small enough
/// for about a minute per run on a 2-core machine.
const MAX_EXAMPLES: u32 = 50;
const SEED: u32 = 1;

/// Operations whose requests must also meet a rule that a JSON Schema cannot state, so that a
/// schema-valid request may still be a 400 there (the check that schema-valid requests are
/// accepted allows 400 for these only):
/// - keys (one or in bulk): `expires_at` in the future; a user's key within its user's
///   role, a team's key within its team's models, a named owner that exists (DESIGN "Keys
///   narrow their owner");
/// - members: the `user_id` names an existing user;
/// - key listings: `after` and `before`, each valid alone, are not taken together;
/// - teams and users: an `org_id` names an existing org;
/// - users: a `role` that is not built in names an existing custom role;
/// - custom roles: each permission is one a custom role can have (the LLM route permissions
///   of the configuration's routes, `usage:read`), and a name is not a built-in role's.
const RULES_BEYOND_THE_SCHEMA: [&str; 12] = [
    "POST /admin/keys",
    "POST /admin/keys/bulk",
    "PATCH /admin/keys/{id}",
    "POST /v1/user/keys",
    "POST /admin/teams/{id}/members",
    "GET /admin/keys",
    "GET /v1/user/keys",
    "POST /admin/teams",
    "POST /admin/users",
    "PATCH /admin/users/{id}",
    "POST /admin/roles",
    "PATCH /admin/roles/{name}",
];

/// The user API, run as a logged-in person.
const USER_API: &str = "^/v1/(user/|logout$)";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `.venv/bin/schemathesis` of the crate (or `$TOLLGATE_SCHEMATHESIS`).
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/schemathesis")
        });
    assert!(
        path.is_file(),
        "no schemathesis at {}: run scripts/test once (it installs \
         scripts/requirements-test.txt into .venv), or set TOLLGATE_SCHEMATHESIS",
        path.display()
    );
    path
}

/// `tollgate serve` as users run it, on free ports with a fresh SQLite database; killed on
/// drop.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let mut last = String::new();
        for _ in 0..3 {
            match Server::try_start().await {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("tollgate serve did not become healthy:\n{last}");
    }

    async fn try_start() -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http) = (free_port(), free_port());
        // The password policy is configuration; the schema states what every policy shares
        // (1 to 1024 characters), and this run uses the policy that accepts all of those.
        // Login limits are raised so that schemathesis's logins and wrong passwords neither
        // rate-limit nor lock the person it logs in as.
        let config = format!(
            r#"
listen: {{ grpc: "127.0.0.1:{grpc}", http: "127.0.0.1:{http}" }}
database: {{ url: "sqlite://{db}" }}
auth:
  session: {{ secret: "schemathesis-session-secret-0123456789abcdef" }}
  allow_registration: true
  password_policy: {{ min_length: 1, min_classes: 1 }}
  login: {{ max_failures: 1000000, per_account_per_minute: 1000000, per_address_per_minute: 1000000 }}
models:
  - name: gpt-4o
    pricing: {{ input_per_million: 2.5, output_per_million: 10 }}
"#,
            db = dir.path().join("t.db").display()
        );
        let config_path = dir.path().join("tollgate.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&config_path)
            .env_remove("TOLLGATE_URL")
            .env_remove("TOLLGATE_TOKEN")
            .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
            .env("TOLLGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tollgate serve starts");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{http}"),
            dir,
        };
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let healthy = client
                .get(format!("{}/healthz", server.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", server.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("not healthy after 30 s:\n{}", server.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// An admin call that must succeed; its JSON answer.
    async fn admin(&self, path: &str, body: Value) -> Value {
        let response = client()
            .post(format!("{}{path}", self.url))
            .bearer_auth(MASTER_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {answer}");
        answer
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The config file of both runs: the fixed seed and examples, both security schemes of
/// the document (`bearer`: the master key; `session`: a login as the person), and the 400s
/// that [`RULES_BEYOND_THE_SCHEMA`] allows.
fn config(dir: &Path) -> PathBuf {
    let operations = RULES_BEYOND_THE_SCHEMA
        .iter()
        .map(|op| format!("{op:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        r#"
seed = {SEED}
workers = 1

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"

[cache]
enabled = false

[auth.openapi.bearer]
bearer = "{MASTER_KEY}"

[auth.dynamic.openapi.session]
path = "/v1/login"
payload = {{ username = "{PERSON}", password = "{PASSWORD}" }}
extract_selector = "/access_token"

[[operations]]
include-name = [{operations}]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", 400, 401, 403, 404, 409, 429]
"#
    );
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// One schemathesis run; its report when it found anything.
async fn run(server: &Server, config: &Path, filter: [&str; 2]) -> Result<String, String> {
    let home = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(schemathesis())
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("{}/openapi.json", server.url))
        .args(["--checks", "all", "--no-color"])
        .args(filter)
        .current_dir(home.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("COLUMNS", "120")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(report)
    } else {
        Err(format!(
            "schemathesis {filter:?} exited with {}:\n{report}\n--- tollgate serve log ---\n{}",
            output.status,
            server.log()
        ))
    }
}

#[tokio::test]
async fn the_http_api_does_what_its_openapi_document_says() {
    let server = Server::start().await;
    // Something to find: a person with a password (the `session` login), a team they own,
    // a key of theirs and a key of the team.
    let person = server
        .admin(
            "/admin/users",
            json!({"username": PERSON, "email": "sam@example.com", "role": "manager",
                   "password": PASSWORD}),
        )
        .await;
    let team = server
        .admin(
            "/admin/teams",
            json!({"name": "platform", "models": ["gpt-*"]}),
        )
        .await;
    server
        .admin(
            &format!("/admin/teams/{}/members", team["id"].as_str().unwrap()),
            json!({"user_id": person["id"], "role": "owner"}),
        )
        .await;
    server
        .admin(
            "/admin/keys",
            json!({"name": "sam's", "user_id": person["id"]}),
        )
        .await;
    server
        .admin(
            "/admin/keys",
            json!({"name": "platform's", "team_id": team["id"], "models": ["gpt-4o"]}),
        )
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let user_api = run(&server, &config, ["--include-path-regex", USER_API]).await;
    let the_rest = run(&server, &config, ["--exclude-path-regex", USER_API]).await;
    match (user_api, the_rest) {
        (Ok(_), Ok(_)) => {}
        (user_api, the_rest) => panic!(
            "schemathesis found the API and docs/openapi.json disagreeing:\n{}\n{}",
            user_api.err().unwrap_or_default(),
            the_rest.err().unwrap_or_default()
        ),
    }
}
