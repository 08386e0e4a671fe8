//! The `tollgate` binary as users run it: `config check`, `migrate`, and the admin commands
//! against a real `tollgate serve` subprocess (free ports, a temporary SQLite database).
//! Every server is stopped by its guard's `Drop`, pass or fail.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const MASTER_KEY: &str = "tg-master-cli-tests-0123456789";

/// The binary with a clean environment for what tollgate reads, so the developer's own
/// `TOLLGATE_*` variables cannot change a test.
fn tollgate(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for var in [
        "TOLLGATE_URL",
        "TOLLGATE_TOKEN",
        "TOLLGATE_MASTER_KEY",
        "TOLLGATE_LOG_FORMAT",
    ] {
        command.env_remove(var);
    }
    command.env("TOLLGATE_LOG", "warn");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the tollgate binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// config check

#[test]
fn config_check_accepts_a_good_file() {
    let dir = TempDir::new().unwrap();
    let file = write(
        dir.path(),
        "good.yaml",
        "listen: { grpc: 127.0.0.1:9191, http: 127.0.0.1:9090 }\ncache:\n  key_ttl: 30s\n",
    );
    let file = file.to_str().unwrap();
    for args in [
        ["config", "check", file].as_slice(),
        &["config", "check", "-c", file],
    ] {
        let out = run(&mut tollgate(args));
        assert_exit(&out, 0);
        assert_eq!(stdout(&out).trim(), format!("ok: {file}"));
    }
}

#[test]
fn config_check_names_an_unknown_key_and_its_line() {
    let dir = TempDir::new().unwrap();
    let file = write(
        dir.path(),
        "bad.yaml",
        "listen:\n  grpc: 127.0.0.1:9191\ncache:\n  key_ttl: 5s\n  max_entires: 10\n",
    );
    let out = run(&mut tollgate(&["config", "check", file.to_str().unwrap()]));
    assert_exit(&out, 64);
    let err = stderr(&out);
    assert!(err.contains("max_entires"), "{err}");
    assert!(err.contains("bad.yaml:5"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn config_check_names_the_key_of_a_validation_error_without_its_secret() {
    let dir = TempDir::new().unwrap();
    let file = write(
        dir.path(),
        "bad.yaml",
        "# comment\ndatabase:\n  url: mysql://root:hunter2@db/x\n",
    );
    let out = run(&mut tollgate(&["config", "check", file.to_str().unwrap()]));
    assert_exit(&out, 64);
    let err = stderr(&out);
    assert!(err.contains("bad.yaml:3"), "{err}");
    assert!(err.contains("database.url"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn config_check_of_a_missing_file_is_a_usage_error() {
    let out = run(&mut tollgate(&[
        "config",
        "check",
        "/nonexistent/tollgate.yaml",
    ]));
    assert_exit(&out, 64);
    assert!(stderr(&out).contains("/nonexistent/tollgate.yaml"));
}

#[test]
fn config_check_warns_about_unset_variables() {
    let dir = TempDir::new().unwrap();
    let file = write(
        dir.path(),
        "env.yaml",
        "budgets: { alert_webhook: ${TOLLGATE_TEST_UNSET_HOOK} }\n",
    );
    let out = run(tollgate(&["config", "check", file.to_str().unwrap()])
        .env_remove("TOLLGATE_TEST_UNSET_HOOK"));
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("${TOLLGATE_TEST_UNSET_HOOK} is not set"),
        "{}",
        stderr(&out)
    );
}

/// The tollgate configs shipped in the repository: every `examples/*.yaml` and any file
/// named `tollgate*.yaml` (deployments), except those under k8s/, which read their
/// database and Redis from the Secret their Pods are given: tests/k8s.rs checks each with
/// exactly that environment.
fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | ".git" | "examples" | "node_modules" | "k8s"
                ) {
                    stack.push(path);
                }
            } else if name.starts_with("tollgate")
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_shipped_config_is_valid() {
    let configs = shipped_configs();
    let names: Vec<String> = configs.iter().map(|p| p.display().to_string()).collect();
    for required in ["examples/tollgate.yaml", "examples/postgres.yaml"] {
        assert!(
            names.iter().any(|n| n.ends_with(required)),
            "{required} missing from {names:?}"
        );
    }
    for path in &configs {
        // The secrets the examples expect from the environment, with plausible values.
        let out = run(tollgate(&["config", "check", path.to_str().unwrap()])
            .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
            .env(
                "TOLLGATE_JWT_SECRET",
                "an-example-session-secret-of-40-characters",
            )
            .env("OPENAI_API_KEY", "sk-example")
            .env("ANTHROPIC_API_KEY", "sk-ant-example"));
        assert_exit(&out, 0);
        assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
    }
}

// ---------------------------------------------------------------------------------------
// migrate

#[test]
fn migrate_creates_and_migrates_a_sqlite_database_once() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("m.db");
    let file = write(
        dir.path(),
        "m.yaml",
        &format!("database: {{ url: \"sqlite://{}\" }}\n", db.display()),
    );
    let file = file.to_str().unwrap();

    let out = run(&mut tollgate(&["migrate", "-c", file]));
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("applied"), "{text}");
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(db.exists());

    let out = run(&mut tollgate(&["migrate", "-c", file]));
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("up to date"), "{}", stdout(&out));
}

#[test]
fn migrate_with_a_bad_config_exits_64() {
    let dir = TempDir::new().unwrap();
    let file = write(dir.path(), "m.yaml", "database: { url: mysql://x }\n");
    let out = run(&mut tollgate(&["migrate", "-c", file.to_str().unwrap()]));
    assert_exit(&out, 64);
    assert!(stderr(&out).contains("database.url"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// serve + admin commands

/// A `tollgate serve` subprocess; killed when dropped.
struct Server {
    child: Child,
    url: String,
    token: String,
    dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /healthz` over a raw socket: true on a 200.
fn healthy(url: &str) -> bool {
    let addr = url.trim_start_matches("http://");
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

impl Server {
    /// Starts `serve` with the master key in `TOLLGATE_MASTER_KEY`.
    fn start() -> Server {
        Server::start_with(Some(MASTER_KEY), "")
    }

    /// Starts `serve` on free ports with a fresh SQLite database; `extra` is appended to
    /// the config file. Retries when a port was taken between choosing and binding it.
    fn start_with(master_key: Option<&str>, extra: &str) -> Server {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Server::try_start(master_key, extra) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("tollgate serve did not become healthy:\n{last_error}");
    }

    fn try_start(master_key: Option<&str>, extra: &str) -> Result<Server, String> {
        let dir = TempDir::new().unwrap();
        let (grpc, http) = (free_port(), free_port());
        let config = write(
            dir.path(),
            "tollgate.yaml",
            &format!(
                "listen: {{ grpc: 127.0.0.1:{grpc}, http: 127.0.0.1:{http} }}\n\
                 database: {{ url: \"sqlite://{}/t.db\" }}\n{extra}",
                dir.path().display()
            ),
        );
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let mut command = tollgate(&["serve", "-c", config.to_str().unwrap()]);
        command
            .env("TOLLGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"));
        if let Some(key) = master_key {
            command.env("TOLLGATE_MASTER_KEY", key);
        }
        let child = command.spawn().expect("tollgate serve starts");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{http}"),
            token: master_key.unwrap_or_default().to_owned(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if healthy(&server.url) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", server.stderr()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("not healthy after 30s:\n{}", server.stderr()))
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// An admin command against this server, as the master key.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.token, args)
    }

    fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        run(tollgate(args)
            .env("TOLLGATE_URL", &self.url)
            .env("TOLLGATE_TOKEN", token))
    }

    /// An admin command with `--output json` that must succeed; its parsed stdout.
    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = self.cli(&args);
        assert_exit(&out, 0);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}):\n{}", stdout(&out)))
    }

    /// An admin command with the default table output that must succeed; its stdout.
    #[track_caller]
    fn table(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_exit(&out, 0);
        stdout(&out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list answer has `data`")
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn id(record: &Value) -> String {
    record["id"].as_str().expect("record has an id").to_owned()
}

#[test]
fn key_lifecycle() {
    let server = Server::start();
    let user = server.json(&[
        "user",
        "create",
        "--username",
        "kim",
        "--email",
        "kim@example.com",
    ]);
    let user_id = id(&user);

    // create, JSON: the secret is in the answer once.
    let created = server.json(&[
        "key",
        "create",
        "--name",
        "ci",
        "--user",
        &user_id,
        "--models",
        "gpt-4o,gpt-4o-mini",
        "--permissions",
        "chat",
        "--rpm",
        "60",
        "--max-parallel",
        "4",
        "--max-budget",
        "5",
        "--budget-duration",
        "30d",
        "--expires-at",
        "30d",
        "--metadata",
        r#"{"env":"test"}"#,
    ]);
    let key_id = id(&created);
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-tg-"), "{created}");
    assert_eq!(
        created["models"],
        serde_json::json!(["gpt-4o", "gpt-4o-mini"])
    );
    assert_eq!(created["permissions"], serde_json::json!(["chat"]));
    assert_eq!(created["rpm"], 60);
    assert_eq!(created["max_parallel"], 4);
    assert_eq!(created["budget_duration"], "30d");
    assert_eq!(created["metadata"]["env"], "test");
    assert!(created["expires_at"].is_string(), "{created}");

    // create, table: the secret is printed prominently.
    let text = server.table(&["key", "create", "--name", "table-key", "--user", &user_id]);
    assert!(text.contains("shown only this once"), "{text}");
    let shown = text
        .split_whitespace()
        .find(|w| w.starts_with("sk-tg-") && !w.contains('…'))
        .unwrap_or_else(|| panic!("no key in:\n{text}"));
    assert_eq!(shown.len(), "sk-tg-".len() + 43 + 6, "{shown}");

    // list and get.
    let listed = server.json(&["key", "list"]);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(ids(&listed).contains(&key_id));
    let mine = server.json(&["key", "list", "--user", &user_id]);
    assert_eq!(ids(&mine).len(), 2);
    let table = server.table(&["key", "list"]);
    assert!(table.starts_with("ID "), "{table}");
    for column in ["NAME", "KEY", "OWNER", "STATUS"] {
        assert!(table.lines().next().unwrap().contains(column), "{table}");
    }
    assert!(
        table.contains("table-key") && table.contains("active"),
        "{table}"
    );
    let got = server.json(&["key", "get", &key_id]);
    assert_eq!(got["name"], "ci");
    assert!(
        got.get("key").is_none(),
        "get must not show a secret: {got}"
    );
    let detail = server.table(&["key", "get", &key_id]);
    assert!(
        detail.contains("key_hint") && detail.contains("ci"),
        "{detail}"
    );
    assert!(!detail.contains(&secret), "{detail}");

    // block / unblock.
    assert_eq!(server.json(&["key", "block", &key_id])["blocked"], true);
    let table = server.table(&["key", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&key_id) && l.contains("blocked")),
        "{table}"
    );
    assert!(server
        .table(&["key", "unblock", &key_id])
        .contains("unblocked key"));
    assert_eq!(server.json(&["key", "get", &key_id])["blocked"], false);

    // update: set and clear.
    let updated = server.json(&[
        "key",
        "update",
        &key_id,
        "--name",
        "ci-2",
        "--rpm",
        "none",
        "--max-parallel",
        "none",
    ]);
    assert_eq!(updated["name"], "ci-2");
    assert!(updated["rpm"].is_null(), "{updated}");
    assert!(updated["max_parallel"].is_null(), "{updated}");

    // rotate with a grace period (JSON), then without one (table).
    let rotated = server.json(&["key", "rotate", &key_id, "--grace", "60s"]);
    let new_secret = rotated["key"].as_str().unwrap();
    assert!(
        new_secret.starts_with("sk-tg-") && new_secret != secret,
        "{rotated}"
    );
    assert!(rotated["previous_expires_at"].is_string(), "{rotated}");
    let text = server.table(&["key", "rotate", &key_id, "--grace-seconds", "0"]);
    assert!(text.contains("stopped working now"), "{text}");

    // revoke: gone from the default list, shown with --include-revoked.
    let revoked = server.json(&["key", "revoke", &key_id]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert!(!ids(&server.json(&["key", "list"])).contains(&key_id));
    assert!(ids(&server.json(&["key", "list", "--include-revoked"])).contains(&key_id));
    let table = server.table(&["key", "list", "--include-revoked"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&key_id) && l.contains("revoked")),
        "{table}"
    );
}

#[test]
fn keys_from_a_file() {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    // `n` key bodies after a blank line (line 1): key i is on line i + 2.
    let lines = |n: usize, bad: Option<usize>| -> String {
        let mut text = String::from("\n");
        for i in 0..n {
            if bad == Some(i) {
                text.push_str(r#"{"name":"bad","team_id":"no-such-team"}"#);
            } else {
                text.push_str(&format!(r#"{{"name":"k{i}","models":["gpt-4o"]}}"#));
            }
            text.push('\n');
        }
        text
    };

    // 1,001 keys: two requests, the keys in the file's order with their secrets.
    let file = write(dir.path(), "keys.jsonl", &lines(1001, None));
    let created = server.json(&["key", "create", "--from-file", file.to_str().unwrap()]);
    let data = created["data"].as_array().unwrap();
    assert_eq!(data.len(), 1001);
    for (i, key) in data.iter().enumerate() {
        assert_eq!(key["name"], format!("k{i}"));
        assert!(key["key"].as_str().unwrap().starts_with("sk-tg-"), "{key}");
    }
    assert_eq!(ids(&server.json(&["key", "list"])).len(), 1001);

    // A refused key in the second request: the first request's keys exist and are printed
    // with their secrets; the error names the file's line; nothing of the second exists.
    let file = write(dir.path(), "bad.jsonl", &lines(1002, Some(1001)));
    let out = server.cli(&[
        "key",
        "create",
        "--from-file",
        file.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_exit(&out, 1);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["data"].as_array().unwrap().len(), 1000);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:1003: `keys[1].team_id`: no team",
            file.display()
        )),
        "{err}"
    );
    assert!(err.contains("(400 invalid_request)"), "{err}");
    assert!(
        err.contains("nothing from line 1002 on was created; the 1000 keys before it were"),
        "{err}"
    );
    assert_eq!(ids(&server.json(&["key", "list"])).len(), 2001);

    // Standard input, and the table: each secret, and the warning.
    let mut child = tollgate(&["key", "create", "--from-file", "-"])
        .env("TOLLGATE_URL", &server.url)
        .env("TOLLGATE_TOKEN", MASTER_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"name\":\"piped\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    let table = stdout(&out);
    assert!(
        table.contains("piped") && table.contains("sk-tg-"),
        "{table}"
    );
    assert!(table.contains("shown only this once"), "{table}");

    // A line that is not a key body is refused before anything is sent.
    let file = write(dir.path(), "junk.jsonl", "{\"name\":\"a\"}\n[1, 2]\n");
    let out = server.cli(&["key", "create", "--from-file", file.to_str().unwrap()]);
    assert_exit(&out, 64);
    assert!(stderr(&out).contains("junk.jsonl:2: each line must be a JSON object"));
    let out = server.cli(&[
        "key",
        "create",
        "--from-file",
        file.to_str().unwrap(),
        "--rpm",
        "5",
    ]);
    assert_exit(&out, 64);
    let out = server.cli(&["key", "create", "--from-file", "-", "--name", "x"]);
    assert_exit(&out, 64);
    assert_eq!(ids(&server.json(&["key", "list"])).len(), 2002);
}

#[test]
fn an_admin_key_works_as_the_cli_token() {
    let server = Server::start();
    let admin = server.json(&["key", "create", "--name", "ops", "--permissions", "admin"]);
    let token = admin["key"].as_str().unwrap();
    let out = server.cli_as(token, &["key", "list", "-o", "json"]);
    assert_exit(&out, 0);

    let chat = server.json(&["key", "create", "--name", "app", "--permissions", "chat"]);
    let out = server.cli_as(chat["key"].as_str().unwrap(), &["key", "list"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("(403 forbidden)"), "{}", stderr(&out));
}

#[test]
fn users_and_teams() {
    let server = Server::start();
    let bob = server.json(&[
        "user",
        "create",
        "--username",
        "bob",
        "--email",
        "bob@example.com",
        "--role",
        "viewer",
    ]);
    let bob_id = id(&bob);
    assert_eq!(bob["role"], "viewer");
    assert!(bob.get("password_hash").is_none());

    // A duplicate is the API's 409, printed as such, exit 1.
    let out = server.cli(&[
        "user",
        "create",
        "--username",
        "bob",
        "--email",
        "bob2@example.com",
    ]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("(409 conflict)"), "{}", stderr(&out));

    let table = server.table(&["user", "list"]);
    assert!(
        table.lines().next().unwrap().contains("USERNAME"),
        "{table}"
    );
    assert!(table.contains("bob@example.com"), "{table}");
    assert_eq!(server.json(&["user", "get", &bob_id])["username"], "bob");
    let unlocked = server.json(&["user", "unlock", &bob_id]);
    assert_eq!(unlocked["id"], bob_id.as_str());
    assert!(unlocked["locked_until"].is_null(), "{unlocked}");

    let updated = server.json(&[
        "user",
        "update",
        &bob_id,
        "--role",
        "manager",
        "--blocked",
        "true",
        "--rpm",
        "10",
        "--max-budget",
        "20",
        "--budget-duration",
        "7d",
    ]);
    assert_eq!(updated["role"], "manager");
    assert_eq!(updated["blocked"], true);
    assert_eq!(updated["rpm"], 10);
    assert_eq!(updated["budget_duration"], "7d");
    let table = server.table(&["user", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("bob") && l.contains("blocked")),
        "{table}"
    );

    let team = server.json(&[
        "team",
        "create",
        "--name",
        "platform",
        "--models",
        "gpt-4o",
        "--max-budget",
        "100",
        "--budget-duration",
        "1mo",
    ]);
    let team_id = id(&team);
    assert_eq!(team["models"], serde_json::json!(["gpt-4o"]));
    assert!(server.table(&["team", "list"]).contains("platform"));

    let added = server.table(&[
        "team",
        "add-member",
        &team_id,
        "--user",
        &bob_id,
        "--role",
        "owner",
    ]);
    assert!(added.contains("owner"), "{added}");
    let got = server.json(&["team", "get", &team_id]);
    let members = got["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{got}");
    assert_eq!(members[0]["user_id"], bob_id.as_str());
    assert_eq!(members[0]["role"], "owner");
    let detail = server.table(&["team", "get", &team_id]);
    assert!(
        detail.contains("members (1)") && detail.contains(&bob_id),
        "{detail}"
    );

    assert!(server
        .table(&["team", "remove-member", &team_id, &bob_id])
        .contains("removed"));
    assert!(server.json(&["team", "get", &team_id])["members"]
        .as_array()
        .unwrap()
        .is_empty());
    let out = server.cli(&["team", "remove-member", &team_id, &bob_id]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("(404 not_found)"), "{}", stderr(&out));

    assert_eq!(
        server.json(&["team", "update", &team_id, "--blocked", "true"])["blocked"],
        true
    );
    assert!(server
        .table(&["team", "delete", &team_id])
        .contains("deleted team"));
    assert_exit(&server.cli(&["team", "get", &team_id]), 1);

    assert!(server
        .table(&["user", "delete", &bob_id])
        .contains("deleted user"));
    let out = server.cli(&["user", "get", &bob_id]);
    assert_exit(&out, 1);
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("(404 not_found)"), "{}", stderr(&out));
}

#[test]
fn team_budgets_and_team_assignments() {
    let server = Server::start();
    let team_id = id(&server.json(&["team", "create", "--name", "platform"]));

    // set-budget, by name and by id; a period not given stays as it was.
    let set = server.json(&[
        "team",
        "set-budget",
        "platform",
        "--max-budget",
        "250",
        "--budget-duration",
        "30d",
    ]);
    assert_eq!(set["id"], team_id.as_str());
    assert_eq!(set["max_budget"], 250.0);
    assert_eq!(set["budget_duration"], "30d");
    let line = server.table(&["team", "set-budget", &team_id, "--max-budget", "300.5"]);
    assert_eq!(
        line.trim(),
        format!("team platform ({team_id}): budget 300.50 USD per 30d")
    );
    let got = server.json(&["team", "get", &team_id]);
    assert_eq!(got["max_budget"], 300.5);
    assert_eq!(got["budget_duration"], "30d");
    let line = server.table(&[
        "team",
        "set-budget",
        "platform",
        "--max-budget",
        "10",
        "--budget-duration",
        "none",
    ]);
    assert_eq!(
        line.trim(),
        format!("team platform ({team_id}): budget 10.00 USD in total (no period)")
    );
    // `none` clears the budget and its period.
    let line = server.table(&["team", "set-budget", "platform", "--max-budget", "none"]);
    assert_eq!(line.trim(), format!("team platform ({team_id}): no budget"));
    let got = server.json(&["team", "get", &team_id]);
    assert!(got["max_budget"].is_null(), "{got}");
    assert!(got["budget_duration"].is_null(), "{got}");
    let updates = server.json(&["audit", "list", "--action", "team.update"]);
    assert_eq!(updates["data"].as_array().unwrap().len(), 4, "{updates}");
    let out = server.cli(&["team", "set-budget", "nope", "--max-budget", "1"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no team with id or name `nope` (404 not_found)"),
        "{}",
        stderr(&out)
    );

    // assign-team: by username and team name, by email and ids.
    let bob_id = id(&server.json(&[
        "user",
        "create",
        "--username",
        "bob",
        "--email",
        "bob@example.com",
    ]));
    let members = |server: &Server| -> Vec<(String, String, String)> {
        server.json(&["team", "get", &team_id])["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["user_id"].as_str().unwrap().to_owned(),
                    m["role"].as_str().unwrap().to_owned(),
                    m["source"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let member = |role: &str| vec![(bob_id.clone(), role.to_owned(), "manual".to_owned())];
    let line = server.table(&["user", "assign-team", "bob", "platform"]);
    assert_eq!(line.trim(), "user bob is now a member of team platform");
    assert_eq!(members(&server), member("member"));
    // Already a member: said so, nothing written.
    let line = server.table(&["user", "assign-team", "bob@example.com", &team_id]);
    assert_eq!(
        line.trim(),
        "user bob already is a member of team platform (nothing changed)"
    );
    let adds = || {
        server.json(&["audit", "list", "--action", "team.member.add"])["data"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(adds(), 1);
    // A role given: changed.
    let line = server.table(&[
        "user",
        "assign-team",
        &bob_id,
        "platform",
        "--role",
        "owner",
    ]);
    assert_eq!(
        line.trim(),
        "user bob was a member of team platform; now an owner"
    );
    assert_eq!(members(&server), member("owner"));
    assert_eq!(adds(), 2);
    // No role given: an owner stays an owner.
    let membership = server.json(&["user", "assign-team", "bob", "platform"]);
    assert_eq!(membership["user_id"], bob_id.as_str());
    assert_eq!(membership["team_id"], team_id.as_str());
    assert_eq!(membership["role"], "owner");
    assert_eq!(membership["source"], "manual");
    assert_eq!(members(&server), member("owner"));
    assert_eq!(adds(), 2);
    let membership = server.json(&["user", "assign-team", "bob", "platform", "--role", "member"]);
    assert_eq!(membership["role"], "member");
    assert_eq!(members(&server), member("member"));

    let out = server.cli(&["user", "assign-team", "carol", "platform"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no user with id, username or email `carol` (404 not_found)"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["user", "assign-team", "bob", "nope"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no team with id or name `nope`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn audit_list_shows_the_writes() {
    let server = Server::start();
    let user = server.json(&[
        "user",
        "create",
        "--username",
        "ann",
        "--email",
        "ann@example.com",
    ]);
    let key = server.json(&["key", "create", "--name", "k", "--user", &id(&user)]);
    server.json(&["key", "block", &id(&key)]);
    server.json(&["team", "create", "--name", "t"]);

    let events = server.json(&["audit", "list"]);
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["user.create", "key.create", "key.block", "team.create"] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    for event in events["data"].as_array().unwrap() {
        assert_eq!(event["actor"], "master", "{event}");
        let secret = key["key"].as_str().unwrap();
        assert!(
            !event.to_string().contains(secret),
            "a secret in the audit log: {event}"
        );
    }

    let only = server.json(&["audit", "list", "--action", "key.create"]);
    assert_eq!(only["data"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["data"][0]["target"], id(&key).as_str());
    let limited = server.json(&["audit", "list", "--since", "1h", "--limit", "2"]);
    assert_eq!(limited["data"].as_array().unwrap().len(), 2, "{limited}");
    let future = server.json(&["audit", "list", "--since", "2999-01-01"]);
    assert!(future["data"].as_array().unwrap().is_empty(), "{future}");

    let table = server.table(&["audit", "list"]);
    assert!(table.lines().next().unwrap().contains("ACTION"), "{table}");
    assert!(
        table.contains("key.block") && table.contains("master"),
        "{table}"
    );
}

#[test]
fn serve_without_a_master_key_prints_one_that_works() {
    let server = Server::start_with(None, "limits: { global: { rpm: 100 } }\n");
    let out = server.stdout();
    let keys: Vec<&str> = out
        .split_whitespace()
        .filter(|w| w.starts_with("tg-master-"))
        .collect();
    assert_eq!(keys.len(), 1, "the key is printed exactly once:\n{out}");
    assert!(out.contains("Set TOLLGATE_MASTER_KEY"), "{out}");
    let key = keys[0];
    let log = server.stderr();
    assert!(
        !log.contains(key),
        "the generated key leaked into the log:\n{log}"
    );

    let listed = server.cli_as(key, &["key", "list", "-o", "json"]);
    assert_exit(&listed, 0);
    let wrong = server.cli_as("tg-master-wrong", &["key", "list"]);
    assert_exit(&wrong, 1);
    assert!(
        stderr(&wrong).contains("(401 unauthorized)"),
        "{}",
        stderr(&wrong)
    );
}

#[cfg(unix)]
#[test]
fn serve_stops_gracefully_on_sigterm() {
    let mut server = Server::start();
    // /healthz can answer a moment before the line saying where tollgate serves is written.
    let serving = server.url.replace("http://", "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains(&serving) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.stderr();
    assert!(log.contains(&serving), "{log}");
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", server.stderr());
    assert!(
        server.stderr().contains("tollgate stopped"),
        "{}",
        server.stderr()
    );
}

#[test]
fn serve_with_a_bad_config_exits_64_before_binding() {
    let dir = TempDir::new().unwrap();
    let file = write(dir.path(), "bad.yaml", "listen:\n  grpcc: 127.0.0.1:1\n");
    let out = run(&mut tollgate(&["serve", "-c", file.to_str().unwrap()]));
    assert_exit(&out, 64);
    assert!(stderr(&out).contains("bad.yaml:2"), "{}", stderr(&out));
    assert!(stderr(&out).contains("grpcc"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// errors and usage

#[test]
fn an_unreachable_server_prints_a_hint() {
    let port = free_port();
    let out = run(&mut tollgate(&[
        "key",
        "list",
        "--url",
        &format!("http://127.0.0.1:{port}"),
    ]));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("cannot reach tollgate"), "{err}");
    assert!(
        err.contains("tollgate serve") && err.contains("--url"),
        "{err}"
    );
}

#[test]
fn api_errors_print_message_status_and_code() {
    let server = Server::start();
    let out = server.cli(&["key", "get", "no-such-key"]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("no-such-key") && err.contains("(404 not_found)"),
        "{err}"
    );

    // Without any token the server says 401, and the CLI says how to give one.
    let out = run(tollgate(&["key", "list"]).env("TOLLGATE_URL", &server.url));
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("(401 unauthorized)"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("TOLLGATE_TOKEN"), "{}", stderr(&out));

    // A server-side validation error.
    let out = server.cli(&[
        "user",
        "create",
        "--username",
        "x",
        "--email",
        "not-an-email",
    ]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("(400 invalid_request)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_usage_exits_64() {
    for args in [
        vec!["key", "create"],
        vec!["key", "create", "--name", "n", "--rpm", "lots"],
        vec!["key", "create", "--name", "n", "--metadata", "[1]"],
        vec!["key", "create", "--name", "n", "--budget-duration", "2w"],
        vec!["key", "create", "--name", "n", "--user", "u", "--team", "t"],
        vec!["key", "update", "some-id"],
        vec![
            "key",
            "rotate",
            "id",
            "--grace",
            "1m",
            "--grace-seconds",
            "5",
        ],
        vec![
            "user",
            "create",
            "--username",
            "u",
            "--email",
            "e",
            "--role",
            // Not a role's name at all (a well-formed one may be a custom role: the API
            // decides).
            "Root!",
        ],
        vec!["team", "add-member", "t", "--user", "u", "--role", "boss"],
        vec!["team", "set-budget", "t"],
        vec!["team", "set-budget", "t", "--max-budget", "lots"],
        vec!["team", "set-budget", "t", "--max-budget=-5"],
        vec![
            "team",
            "set-budget",
            "t",
            "--max-budget",
            "none",
            "--budget-duration",
            "7d",
        ],
        vec!["user", "assign-team", "u"],
        vec!["user", "assign-team", "u", "t", "--role", "boss"],
        vec!["audit", "list", "--since", "the dawn of time"],
        vec!["key", "list", "--url", "ftp://example.com"],
        vec!["frobnicate"],
    ] {
        // No server: each must fail before sending anything.
        let out = run(tollgate(&args).env("TOLLGATE_URL", "http://127.0.0.1:1"));
        assert_exit(&out, 64);
        assert!(
            !stderr(&out).contains("cannot reach"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let help = run(&mut tollgate(&["--help"]));
    assert_exit(&help, 0);
    assert!(stdout(&help).contains("64"), "{}", stdout(&help));
}

#[test]
fn orgs() {
    let server = Server::start();
    let acme = server.json(&[
        "org",
        "create",
        "--name",
        "Acme",
        "--max-budget",
        "50",
        "--budget-duration",
        "1mo",
        "--max-parallel",
        "4",
    ]);
    let acme_id = id(&acme);
    assert_eq!(acme["max_budget"], 50.0);
    assert_eq!(acme["max_parallel"], 4);
    let table = server.table(&["org", "list"]);
    assert!(
        table.lines().next().unwrap().contains("PARALLEL"),
        "{table}"
    );
    assert!(table.contains("Acme"), "{table}");
    assert_eq!(ids(&server.json(&["org", "list"])), vec![acme_id.clone()]);
    let got = server.json(&["org", "get", &acme_id]);
    assert_eq!(got["spend"], 0.0);
    let shown = server.table(&["org", "get", &acme_id]);
    assert!(shown.contains("max_parallel"), "{shown}");

    let updated = server.json(&[
        "org",
        "update",
        &acme_id,
        "--max-parallel",
        "none",
        "--name",
        "Acme Corp",
    ]);
    assert_eq!(updated["name"], "Acme Corp");
    assert!(updated["max_parallel"].is_null(), "{updated}");
    let out = server.cli(&["org", "update", &acme_id]);
    assert_exit(&out, 64);

    // Teams and users join it at creation; it cannot be deleted while they are in it.
    let team = server.json(&["team", "create", "--name", "eng", "--org", &acme_id]);
    assert_eq!(team["org_id"], acme_id.as_str());
    let user = server.json(&[
        "user",
        "create",
        "--username",
        "ada",
        "--email",
        "ada@example.com",
        "--org",
        &acme_id,
    ]);
    assert_eq!(user["org_id"], acme_id.as_str());
    let out = server.cli(&["org", "delete", &acme_id]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("(409 conflict)"), "{}", stderr(&out));
    assert_exit(&server.cli(&["team", "delete", &id(&team)]), 0);
    assert_exit(&server.cli(&["user", "delete", &id(&user)]), 0);
    let out = server.cli(&["org", "delete", &acme_id]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("deleted org"), "{}", stdout(&out));
}

#[test]
fn custom_roles() {
    let server = Server::start();
    let made = server.json(&[
        "role",
        "create",
        "analyst",
        "--permissions",
        "chat,usage:read",
    ]);
    assert_eq!(made["name"], "analyst");
    assert_eq!(made["permissions"], json!(["chat", "usage:read"]));

    let table = server.table(&["role", "list"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("NAME") && header.contains("PERMISSIONS"),
        "{table}"
    );
    let viewer = table.lines().find(|l| l.starts_with("viewer")).unwrap();
    assert!(
        viewer.contains("models:read,usage:read") && viewer.contains("built-in"),
        "{table}"
    );
    let analyst = table.lines().find(|l| l.starts_with("analyst")).unwrap();
    assert!(
        analyst.contains("chat,usage:read") && analyst.contains("custom"),
        "{table}"
    );
    // The five built-in roles (admin, org_admin, manager, user, viewer) and analyst.
    let listed = server.json(&["role", "list"]);
    assert_eq!(listed["data"].as_array().unwrap().len(), 6, "{listed}");
    assert!(server
        .table(&["role", "get", "analyst"])
        .contains("usage:read"));

    let changed = server.json(&["role", "update", "analyst", "--permissions", "embeddings"]);
    assert_eq!(changed["permissions"], json!(["embeddings"]));

    // A user takes the custom role by name; while they hold it, it is not deleted.
    let ann = server.json(&[
        "user",
        "create",
        "--username",
        "ann",
        "--email",
        "ann@example.com",
        "--role",
        "analyst",
    ]);
    assert_eq!(ann["role"], "analyst");
    let out = server.cli(&["role", "delete", "analyst"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("(409 conflict)"), "{}", stderr(&out));
    server.json(&["user", "update", &id(&ann), "--role", "user"]);
    assert_eq!(
        server.table(&["role", "delete", "analyst"]).trim(),
        "deleted role analyst"
    );

    // Refusals are the API's, exit 1: a built-in role, `admin`, an unknown role.
    for args in [
        &["role", "update", "viewer", "--permissions", "chat"][..],
        &["role", "create", "boss", "--permissions", "admin"],
        &["role", "get", "analyst"],
        &["user", "update", &id(&ann), "--role", "analyst"],
    ] {
        let out = server.cli(args);
        assert_exit(&out, 1);
    }
    // A malformed name is bad usage before any request.
    let out = server.cli(&["user", "update", &id(&ann), "--role", "Not A Role"]);
    assert_exit(&out, 64);
}

#[test]
fn org_admins_are_made_with_role_org_admin() {
    let server = Server::start();
    let acme = server.json(&["org", "create", "--name", "Acme"]);
    let acme_id = id(&acme);
    let admin = server.json(&[
        "user",
        "create",
        "--username",
        "acme-admin",
        "--email",
        "acme-admin@example.com",
        "--role",
        "org_admin",
        "--org",
        &acme_id,
    ]);
    assert_eq!(admin["role"], "org_admin");
    assert_eq!(admin["org_id"], acme_id.as_str());
    let dev = server.json(&[
        "user",
        "create",
        "--username",
        "acme-dev",
        "--email",
        "acme-dev@example.com",
        "--org",
        &acme_id,
    ]);
    let promoted = server.json(&["user", "update", &id(&dev), "--role", "org_admin"]);
    assert_eq!(promoted["role"], "org_admin");
}
