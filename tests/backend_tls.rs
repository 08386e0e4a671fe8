//! TLS to the backends, against real servers: a private PostgreSQL with `ssl=on` (and TLS
//! connections only) and a `redis-server` listening on a TLS port only, both with
//! certificates from a CA the test makes with the `openssl` command.
//!
//! What is shown: `sslmode=verify-full|verify-ca|require` and `rediss://` with
//! `redis.tls.ca_file` work end to end; a certificate that fails verification (another CA,
//! another host name) stops tollgate at start with an error that names the backend and the
//! reason and holds no password, and `serve` exits 64 on it; Redis down at start is not an
//! error; a Redis Cluster whose nodes listen on TLS only works and is checked alike.
//! Nothing is skipped: without `openssl`, PostgreSQL's server binaries or a
//! TLS-capable `redis-server`, the tests fail and say what is missing.

mod common;

use common::check::answer;
use common::pki::{run, Pki};
use common::redis_cluster::{self, RedisCluster};
use common::tollgate::{Tollgate, MASTER_KEY};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::app::App;
use tollgate::backend_tls::Misconfigured;
use tollgate::config::Config;
use tollgate::secret::Secret;

const PG_PASSWORD: &str = "pg-s3cret-for-tls-tests";
const REDIS_PASSWORD: &str = "redis-s3cret-for-tls-tests";
/// How long a server may take to start.
const DEADLINE: Duration = Duration::from_secs(30);

/// The effective user id of this process (the owner of `/proc/self`).
fn euid() -> u32 {
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

fn id_of(flag: &str, user: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .expect("run id");
    assert!(
        out.status.success(),
        "no `{user}` user to run PostgreSQL as (initdb refuses root)"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// PostgreSQL's server binaries: the newest under /usr/lib/postgresql, else on PATH.
fn postgres_bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
    });
    versions
        .iter()
        .rev()
        .map(|v| v.join("bin").join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(program))
}

/// A private PostgreSQL on a free port, `ssl=on`, accepting TCP connections over TLS only
/// (`hostssl`) and with a password, on 127.0.0.1 and 127.0.0.2. Stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    /// initdb refuses root: then the server runs as `postgres`.
    as_postgres: bool,
}

impl Postgres {
    fn start(pki: &Pki) -> Postgres {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let as_postgres = euid() == 0;
        let owner = as_postgres.then(|| (id_of("-u", "postgres"), id_of("-g", "postgres")));
        let own = |path: &Path| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
            }
        };
        own(dir.path());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        own(&pwfile);
        let data = dir.path().join("data");
        let server = Postgres {
            port: common::envoy::free_port(),
            dir,
            as_postgres,
        };
        run(
            server
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        for name in ["server.pem", "server.key"] {
            let to = data.join(name);
            std::fs::copy(pki.path(name), &to).expect("copy the server certificate");
            own(&to);
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n",
        )
        .unwrap();
        let options = format!(
            "-p {} -k {} -c listen_addresses='127.0.0.1,127.0.0.2' -c ssl=on \
             -c ssl_cert_file=server.pem -c ssl_key_file=server.key -c fsync=off",
            server.port,
            server.dir.path().display()
        );
        run(
            server
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(server.dir.path().join("log"))
                .args(["-w", "-t", &DEADLINE.as_secs().to_string(), "-o", &options])
                .arg("start"),
            "pg_ctl start (PostgreSQL's server binaries are under /usr/lib/postgresql/*/bin)",
        );
        server
    }

    /// A PostgreSQL program, run as `postgres` when this process is root.
    fn command(&self, program: &str) -> Command {
        let program = postgres_bin(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// The URL of the `postgres` database at `host` with the password, and `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@{host}:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `redis-server` with a password, listening on a TLS port only (`--port 0`), on
/// 127.0.0.1 and 127.0.0.2, without persistence. Killed on drop.
struct RedisTls {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisTls {
    async fn start(pki: &Pki) -> RedisTls {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("log");
        let port = common::envoy::free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "127.0.0.2"])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .args(["--requirepass", REDIS_PASSWORD])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (is it on PATH?)");
        let mut server = RedisTls {
            port,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let exited = server.child.try_wait().expect("redis-server's status");
            let log = || std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                exited.is_none(),
                "redis-server exited ({exited:?}); does it support TLS (built with BUILD_TLS)?\n{}",
                log()
            );
            if let Ok(mut conn) = server.connect(pki).await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return server;
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "redis-server does not answer over TLS on port {port}\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, host: &str) -> String {
        format!("rediss://:{REDIS_PASSWORD}@{host}:{}", self.port)
    }

    /// A connection of the test's own, over TLS, trusting the test CA.
    async fn connect(&self, pki: &Pki) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(pki.path("ca.pem")).unwrap()),
        };
        redis::Client::build_with_tls(self.url("127.0.0.1").as_str(), certificates)?
            .get_multiplexed_async_connection()
            .await
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a tollgate (store connected and migrated, Redis checked) from `yaml`, over a
/// SQLite file in `dir` unless the YAML names a database.
async fn build(yaml: &str, dir: &Path) -> anyhow::Result<Arc<App>> {
    let mut config = Config::parse_str("test.yaml", yaml, &|_| None)
        .unwrap_or_else(|e| panic!("test config: {e}"))
        .config;
    if !yaml.contains("database:") {
        config.database.url = format!("sqlite://{}", dir.join("t.db").display());
    }
    App::build(config, &Secret::new(MASTER_KEY)).await
}

/// The error of a build that must be refused as a configuration error, as `serve` prints it.
async fn refused(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    match build(yaml, dir.path()).await {
        Ok(_) => panic!("tollgate started with {yaml}"),
        Err(e) => {
            assert!(e.is::<Misconfigured>(), "not a configuration error: {e:#}");
            format!("{e:#}")
        }
    }
}

fn database(url: &str) -> String {
    format!("database:\n  url: \"{url}\"\n")
}

async fn chat(t: &Tollgate, key: &str) -> u16 {
    let body = json!({"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let request = common::check::request(
        &[("x-api-key", key)],
        "/v1/chat/completions",
        &body.to_string(),
    );
    answer(t.app.gate.check(&request).await.expect("a decision")).status
}

/// The mean time to open a connection with `connect`, over a few.
async fn mean_connect<F, Fut, T, E>(connect: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    const N: u32 = 5;
    let started = Instant::now();
    for _ in 0..N {
        connect().await.expect("connect");
    }
    started.elapsed() / N
}

#[tokio::test]
async fn postgres_over_tls_serves_with_verify_full_verify_ca_and_require() {
    let pki = Pki::new();
    let pg = Postgres::start(&pki);
    let plain = PgConnection::connect(&pg.url("127.0.0.1", "sslmode=disable")).await;
    assert!(plain.is_err(), "the server takes TLS connections only");

    let verified = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca()),
    );
    let t = Tollgate::start(&database(&verified)).await;
    let (id, key) = t.create_key(json!({"name": "over-tls"})).await;
    let stored = t.app.store.get_key(&id).await.expect("a store read");
    assert_eq!(stored.expect("the key is in Postgres").name, "over-tls");
    assert_eq!(chat(&t, &key).await, 200);
    t.stop().await;
    let took = mean_connect(|| PgConnection::connect(&verified)).await;
    eprintln!("postgres: a verify-full connection (TLS and SCRAM) takes {took:?}");

    // require: encrypted, the certificate not checked (the test CA is trusted nowhere).
    let dir = tempfile::tempdir().unwrap();
    let app = build(
        &database(&pg.url("127.0.0.1", "sslmode=require")),
        dir.path(),
    )
    .await;
    assert!(app.is_ok(), "require: {:#}", app.err().unwrap());

    let url = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", pki.ca()),
    );
    let app = build(&database(&url), dir.path()).await;
    assert!(app.is_ok(), "verify-ca: {:#}", app.err().unwrap());
}

#[tokio::test]
async fn postgres_certificates_that_fail_verification_refuse_to_start() {
    let pki = Pki::new();
    let pg = Postgres::start(&pki);
    for (host, query, why) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={}", pki.other_ca()),
            format!("its CA is not among sslrootcert `{}`", pki.other_ca()),
        ),
        // Without sslrootcert only the built-in public roots are trusted.
        (
            "127.0.0.1",
            "sslmode=verify-full".to_owned(),
            "its CA is not among the built-in public roots".to_owned(),
        ),
        // As in libpq, require with a root certificate checks the chain.
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={}", pki.other_ca()),
            format!("its CA is not among sslrootcert `{}`", pki.other_ca()),
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={}", pki.other_ca()),
            format!("its CA is not among sslrootcert `{}`", pki.other_ca()),
        ),
        (
            "127.0.0.2",
            format!("sslmode=verify-full&sslrootcert={}", pki.ca()),
            "not issued for the host name".to_owned(),
        ),
        // libpq's verify-ca would accept a certificate for another name; the driver checks
        // the name (docs/configuration.md says so). Should this start to pass, the driver
        // got fixed: update the documentation.
        (
            "127.0.0.2",
            format!("sslmode=verify-ca&sslrootcert={}", pki.ca()),
            "verify-ca (also what require becomes with an sslrootcert) checks the host name too"
                .to_owned(),
        ),
    ] {
        let error = refused(&database(&pg.url(host, &query))).await;
        assert!(error.starts_with("database: "), "{error}");
        assert!(
            error.contains("over TLS: the server's certificate is not trusted"),
            "{error}"
        );
        assert!(error.contains(&why), "{query}: {error}");
        assert!(error.contains(&format!("{host}:{}", pg.port)), "{error}");
        assert!(!error.contains(PG_PASSWORD), "the password leaked: {error}");
    }
}

#[tokio::test]
async fn redis_over_tls_counts_rate_limits_in_that_redis() {
    let pki = Pki::new();
    let redis = RedisTls::start(&pki).await;
    let prefix = format!("tg-tls-{}:", tollgate::domain::new_id());
    // failure_mode closed: were Redis not counting, the requests would be refused with 503.
    let t = Tollgate::start(&format!(
        "redis:\n  url: \"{}\"\n  tls:\n    ca_file: {}\n  key_prefix: \"{prefix}\"\n  failure_mode: closed\n  timeout: 2s\n",
        redis.url("127.0.0.1"),
        pki.ca()
    ))
    .await;
    let (_, key) = t.create_key(json!({"name": "k", "rpm": 2})).await;
    assert_eq!(chat(&t, &key).await, 200);
    assert_eq!(chat(&t, &key).await, 200);
    assert_eq!(chat(&t, &key).await, 429, "the third request of rpm 2");
    assert_eq!(t.metric("tollgate_redis_up").await, 1.0);

    let mut conn = redis
        .connect(&pki)
        .await
        .expect("the test's own TLS connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !keys.is_empty(),
        "no bucket under {prefix} in the TLS Redis"
    );
    t.stop().await;
    let took = mean_connect(|| redis.connect(&pki)).await;
    eprintln!("redis: a TLS connection (handshake and HELLO/AUTH) takes {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_cluster_over_tls_counts_rate_limits_and_its_certificates_are_checked() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_tls(redis_cluster::Tls {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        ca: pki.path("ca.pem"),
        password: REDIS_PASSWORD.to_owned(),
    })
    .await;
    let prefix = format!("tg-tls-{}:", tollgate::domain::new_id());
    let t = Tollgate::start(&format!(
        "redis:\n  cluster: {}\n  tls:\n    ca_file: {}\n  key_prefix: \"{prefix}\"\n  failure_mode: closed\n  timeout: 2s\n",
        cluster.yaml_nodes(),
        pki.ca()
    ))
    .await;
    let (_, key) = t.create_key(json!({"name": "k", "rpm": 2})).await;
    assert_eq!(chat(&t, &key).await, 200);
    assert_eq!(chat(&t, &key).await, 200);
    assert_eq!(chat(&t, &key).await, 429, "the third request of rpm 2");
    assert_eq!(t.metric("tollgate_redis_up").await, 1.0);
    let mut held = Vec::new();
    for i in 0..3 {
        held.extend(cluster.keys_on(i, &format!("{prefix}*")).await);
    }
    assert!(
        !held.is_empty(),
        "no bucket under {prefix} in the TLS cluster"
    );
    t.stop().await;

    // A CA that signed none of the nodes' certificates: refused at start, no password said.
    let error = refused(&format!(
        "redis:\n  cluster: {}\n  tls: {{ ca_file: {} }}\n",
        cluster.yaml_nodes(),
        pki.other_ca()
    ))
    .await;
    assert!(
        error.starts_with("redis: cannot connect to `rediss://"),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "its CA is not among redis.tls.ca_file `{}`",
            pki.other_ca()
        )),
        "{error}"
    );
    assert!(
        !error.contains(REDIS_PASSWORD),
        "the password leaked: {error}"
    );
}

#[tokio::test]
async fn redis_certificates_that_fail_verification_refuse_to_start() {
    let pki = Pki::new();
    let redis = RedisTls::start(&pki).await;
    let local = redis.url("127.0.0.1");
    for (yaml, why) in [
        (
            format!(
                "redis:\n  url: \"{local}\"\n  tls: {{ ca_file: {} }}\n",
                pki.other_ca()
            ),
            format!("its CA is not among redis.tls.ca_file `{}`", pki.other_ca()),
        ),
        // Without ca_file only the built-in public roots are trusted.
        (
            format!("redis:\n  url: \"{local}\"\n"),
            "its CA is not among the built-in public roots".to_owned(),
        ),
        (
            format!(
                "redis:\n  url: \"{}\"\n  tls: {{ ca_file: {} }}\n",
                redis.url("127.0.0.2"),
                pki.ca()
            ),
            "not issued for the host name".to_owned(),
        ),
    ] {
        let error = refused(&yaml).await;
        assert!(
            error.starts_with("redis: cannot connect to `rediss://"),
            "{error}"
        );
        assert!(
            error.contains("over TLS: the server's certificate is not trusted"),
            "{error}"
        );
        assert!(error.contains(&why), "{yaml}: {error}");
        assert!(
            !error.contains(REDIS_PASSWORD),
            "the password leaked: {error}"
        );
    }

    // Redis down at start is an outage, not a configuration error: tollgate starts.
    let dir = tempfile::tempdir().unwrap();
    let down = format!(
        "redis:\n  url: \"rediss://127.0.0.1:{}\"\n  tls: {{ ca_file: {} }}\n",
        common::envoy::free_port(),
        pki.ca()
    );
    let app = build(&down, dir.path()).await;
    assert!(app.is_ok(), "Redis down: {:#}", app.err().unwrap());
}

#[tokio::test]
async fn serve_exits_64_naming_the_backend_whose_certificate_fails() {
    let pki = Pki::new();
    let redis = RedisTls::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "master_key: {MASTER_KEY}\nlisten: {{ grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\" }}\n\
             database: {{ url: \"sqlite://{}\" }}\n\
             redis:\n  url: \"{}\"\n  tls: {{ ca_file: {} }}\n",
            dir.path().join("t.db").display(),
            redis.url("127.0.0.1"),
            pki.other_ca()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tollgate serve");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("tollgate serve started with an untrusted Redis certificate");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        error.starts_with("error: redis: cannot connect to `rediss://:***@127.0.0.1:"),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "its CA is not among redis.tls.ca_file `{}`",
            pki.other_ca()
        )),
        "{error}"
    );
    assert!(
        !stderr.contains(REDIS_PASSWORD),
        "the password leaked: {stderr}"
    );
}
