//! What many virtual keys cost: memory of the key cache when every key is cached, store
//! reads of warm decisions, and how fast keys are created.
//!
//! 1. Creation: `CREATE` keys (default 5,000) through the store (one transaction each) and
//!    over the HTTP API of a started tollgate, one `POST /admin/keys` each, printed side by
//!    side in keys/s.
//! 2. Memory: `KEYS` keys (default 100,000) of 1,000 users and 100 teams are written to a
//!    fresh store; a child process (so nothing of the writing is in its heap) builds the
//!    app as `tollgate serve` does, reads every plaintext, and prints its RSS
//!    (`/proc/self/status` VmRSS) before and after one Check per key, the bytes per cached
//!    key, and what a second pass over every key reads: key cache misses and SQL
//!    statements (sqlx's statement log, counted by a tracing layer). Both must be 0.
//!
//! SQLite in a temporary directory by default; `DATABASE=postgres` uses a schema of its own
//! in `TOLLGATE_TEST_POSTGRES` (default the local `test` database). Run with
//! `cargo bench --bench keys`.

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::app::App;
use tollgate::authn::api_key;
use tollgate::config::Config;
use tollgate::domain::Role;
use tollgate::secret::Secret;
use tollgate::store::sql::{ConnectOptions, SqlStore};
use tollgate::store::{Actor, NewKey, NewTeam, NewUser, SharedStore, Store};

const MASTER: &str = "bench-master-key-0123456789";
const USERS: usize = 1_000;
const TEAMS: usize = 100;
/// Keys per bulk call (the API's most).
const BATCH: usize = 1_000;
/// Set in the child process: the database URL to warm from.
const CHILD_DATABASE: &str = "TOLLGATE_BENCH_WARM_DATABASE";
/// Set in the child process: the file with one plaintext key per line.
const CHILD_KEYS: &str = "TOLLGATE_BENCH_WARM_KEYS";

/// The system allocator, counting the bytes Rust code holds (SQLite's own memory is not
/// counted), so RSS can be told apart from what the key cache keeps.
struct Counting;

static HEAP: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            HEAP.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        HEAP.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, size) };
        if !q.is_null() {
            HEAP.fetch_add(size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn check_request(key: &str) -> CheckRequest {
    let headers = [
        ("authorization".to_owned(), format!("Bearer {key}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ]
    .into_iter()
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers,
                    raw_body: br#"{"model":"gpt-4o-mini","messages":[]}"#.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A database for one part of the run: a SQLite file in `dir`, or a fresh Postgres schema.
async fn database(dir: &std::path::Path, name: &str) -> String {
    if std::env::var("DATABASE").as_deref() != Ok("postgres") {
        return format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    }
    use sqlx::Executor;
    let base = std::env::var("TOLLGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("tg_bench_keys_{}_{name}", std::process::id());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("the Postgres of TOLLGATE_TEST_POSTGRES");
    admin
        .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

async fn open(url: &str) -> SharedStore {
    let store = SqlStore::connect(url, &ConnectOptions::default())
        .await
        .expect("open the bench database");
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

fn config(url: &str) -> Config {
    // Entries live long enough for both passes, whatever the machine's speed.
    let yaml = format!("database: {{ url: \"{url}\" }}\ncache: {{ key_ttl: 1h }}\n");
    let mut config = Config::parse_str("bench.yaml", &yaml, &|_| None)
        .expect("bench config")
        .config;
    config.listen.grpc = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    config
}

/// The users and teams keys belong to: every key has a user; every other key a team too.
async fn owners(store: &SharedStore) -> (Vec<String>, Vec<String>) {
    let actor = Actor::new("bench", None);
    let mut users = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let user = store
            .create_user(
                &actor,
                NewUser {
                    username: format!("user-{i}"),
                    email: format!("user-{i}@example.com"),
                    role: Some(Role::User),
                    ..NewUser::default()
                },
            )
            .await
            .unwrap();
        users.push(user.id);
    }
    let mut teams = Vec::with_capacity(TEAMS);
    for i in 0..TEAMS {
        let team = store
            .create_team(
                &actor,
                NewTeam {
                    name: format!("team-{i}"),
                    models: vec!["gpt-4o*".into(), "gpt-4.1*".into()],
                    ..NewTeam::default()
                },
            )
            .await
            .unwrap();
        teams.push(team.id);
    }
    (users, teams)
}

/// The body of key `i`, as `POST /admin/keys` takes it.
fn key_body(i: usize, users: &[String], teams: &[String]) -> serde_json::Value {
    let mut body = json!({
        "name": format!("svc-{}-key-{i}", i % 500),
        "user_id": users[i % users.len()],
        "metadata": {"service": format!("svc-{}", i % 500), "env": "prod"},
    });
    if i.is_multiple_of(2) {
        body["team_id"] = json!(teams[i % teams.len()]);
    }
    if i.is_multiple_of(3) {
        body["models"] = json!(["gpt-4o-mini", "gpt-4o"]);
    }
    if i.is_multiple_of(4) {
        body["permissions"] = json!(["chat", "embeddings"]);
    }
    body
}

/// The same key as the store takes it, with its secret.
fn new_key(i: usize, users: &[String], teams: &[String]) -> (NewKey, String) {
    let body = key_body(i, users, teams);
    let plain = api_key::generate();
    let strings = |field: &str| -> Vec<String> {
        body[field]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let key = NewKey {
        name: body["name"].as_str().unwrap().to_owned(),
        key_hash: plain.hash().to_hex(),
        key_hint: plain.hint(),
        user_id: body["user_id"].as_str().map(str::to_owned),
        team_id: body["team_id"].as_str().map(str::to_owned),
        permissions: strings("permissions"),
        models: strings("models"),
        metadata: Some(body["metadata"].clone()),
        ..NewKey::default()
    };
    (key, plain.into_string())
}

fn rate(n: usize, took: Duration) -> String {
    format!(
        "{:>10.0} keys/s  {:>8.1} µs/key",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64
    )
}

/// Keys created one by one through the store and through the API, side by side.
async fn creation(dir: &std::path::Path, n: usize) {
    let url = database(dir, "create").await;
    let app = App::build(config(&url), &Secret::new(MASTER))
        .await
        .expect("build");
    let running = app.start().await.expect("start");
    let (users, teams) = owners(&app.store).await;
    let actor = Actor::new("bench", None);

    let started = Instant::now();
    for i in 0..n {
        let (key, _) = new_key(i, &users, &teams);
        app.store.create_key(&actor, key).await.unwrap();
    }
    let store_one = started.elapsed();

    let http = reqwest::Client::new();
    let admin = format!("http://{}/admin/keys", running.http_addr);
    let started = Instant::now();
    for i in 0..n {
        let response = http
            .post(&admin)
            .bearer_auth(MASTER)
            .json(&key_body(i, &users, &teams))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    let api_one = started.elapsed();

    let started = Instant::now();
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let keys = batch
            .iter()
            .map(|&i| new_key(i, &users, &teams).0)
            .collect();
        app.store.create_keys(&actor, keys).await.unwrap();
    }
    let store_bulk = started.elapsed();

    let started = Instant::now();
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let keys: Vec<_> = batch.iter().map(|&i| key_body(i, &users, &teams)).collect();
        let response = http
            .post(format!("{admin}/bulk"))
            .bearer_auth(MASTER)
            .json(&json!({ "keys": keys }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    let api_bulk = started.elapsed();

    println!("creating {n} keys");
    println!(
        "  store.create_key, one transaction each  {}",
        rate(n, store_one)
    );
    println!(
        "  store.create_keys, {BATCH} per transaction {}",
        rate(n, store_bulk)
    );
    println!(
        "  POST /admin/keys, one key each          {}",
        rate(n, api_one)
    );
    println!(
        "  POST /admin/keys/bulk, {BATCH} per call    {}",
        rate(n, api_bulk)
    );
    running.shutdown().await.unwrap();
}

/// Writes `n` keys to a fresh store and their plaintexts to `keys`, one per line.
async fn populate(url: &str, n: usize, keys: &std::path::Path) {
    let store = open(url).await;
    let (users, teams) = owners(&store).await;
    let actor = Actor::new("bench", None);
    let mut out = std::io::BufWriter::new(std::fs::File::create(keys).unwrap());
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        let (keys, plains): (Vec<_>, Vec<_>) =
            batch.iter().map(|&i| new_key(i, &users, &teams)).unzip();
        store.create_keys(&actor, keys).await.unwrap();
        for plain in plains {
            writeln!(out, "{plain}").unwrap();
        }
    }
    out.flush().unwrap();
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Counts the statements sqlx runs (its `sqlx::query` log events).
struct Statements(Arc<AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Statements {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// The child: the app as `serve` builds it, every key checked twice.
fn warm(url: &str, keys: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    let statements = Arc::new(AtomicU64::new(0));
    let subscriber = tracing_subscriber::registry()
        .with(Statements(statements.clone()))
        .with(
            tracing_subscriber::filter::Targets::new()
                .with_target("sqlx::query", tracing::Level::TRACE),
        );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let keys: Vec<String> = std::io::BufReader::new(std::fs::File::open(keys).unwrap())
            .lines()
            .map(Result::unwrap)
            .collect();
        let app = App::build(config(url), &Secret::new(MASTER))
            .await
            .expect("build");
        // One decision first, so what is made once (policy, metrics) is in the baseline.
        let allowed = |answer: envoy_types::ext_authz::v3::pb::CheckResponse| {
            answer.status.is_some_and(|s| s.code == 0)
        };
        assert!(allowed(
            app.gate.check(&check_request(&keys[0])).await.unwrap()
        ));
        let (before, heap_before) = (rss_bytes(), HEAP.load(Ordering::Relaxed));
        let started = Instant::now();
        for key in &keys {
            let answer = app.gate.check(&check_request(key)).await.unwrap();
            assert!(allowed(answer), "every bench key is allowed");
        }
        let first = started.elapsed();
        let (after, heap_after) = (rss_bytes(), HEAP.load(Ordering::Relaxed));
        let metrics = app.metrics.render();
        let misses = |text: &str| {
            sample(
                text,
                "tollgate_cache_requests_total{cache=\"key\",result=\"miss\"}",
            )
        };
        let (misses_before, statements_before) =
            (misses(&metrics), statements.load(Ordering::Relaxed));
        let started = Instant::now();
        for key in &keys {
            let answer = app.gate.check(&check_request(key)).await.unwrap();
            assert!(allowed(answer));
        }
        let second = started.elapsed();
        let misses_second = misses(&app.metrics.render()) - misses_before;
        let statements_second = statements.load(Ordering::Relaxed) - statements_before;
        let n = keys.len() as u64;
        println!("{n} keys, each checked once (cold) and again (warm)");
        println!(
            "  RSS before the first pass               {:>12}",
            mib(before)
        );
        println!(
            "  RSS after it (every key cached)         {:>12}",
            mib(after)
        );
        println!(
            "  per cached key                          {:>10} B",
            (after.saturating_sub(before)) / n
        );
        println!(
            "  of which Rust heap in use               {:>10} B",
            (heap_after - heap_before).max(0) as u64 / n
        );
        println!(
            "  keys in the key cache                   {:>12}",
            app.auth.keys.cached()
        );
        println!(
            "  first pass                              {:>10.1} µs/check",
            first.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "  second pass                             {:>10.1} µs/check",
            second.as_secs_f64() * 1e6 / n as f64
        );
        println!("  second pass: key cache misses           {misses_second:>12}");
        println!("  second pass: SQL statements             {statements_second:>12}");
    });
}

fn main() {
    if let (Ok(url), Ok(keys)) = (std::env::var(CHILD_DATABASE), std::env::var(CHILD_KEYS)) {
        return warm(&url, &keys);
    }
    let n = env_count("KEYS", 100_000);
    let create = env_count("CREATE", 5_000);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (url, keys) = runtime.block_on(async {
        if create > 0 {
            creation(dir.path(), create).await;
        }
        let url = database(dir.path(), "warm").await;
        let keys = dir.path().join("keys.txt");
        let started = Instant::now();
        populate(&url, n, &keys).await;
        eprintln!("({n} keys written in {:.1?})", started.elapsed());
        (url, keys)
    });
    drop(runtime);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_DATABASE, &url)
        .env(CHILD_KEYS, &keys)
        .status()
        .expect("run the measuring child");
    assert!(status.success(), "the measuring child failed");
}
