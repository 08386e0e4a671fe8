//! What listing keys costs with many of them: the pages of the key listing (the web UI's
//! `/ui/keys`, `GET /admin/keys?limit=`), read from the store and over HTTP.
//!
//! `KEYS` keys (default 100,000) are written to a fresh store: 1,000 users own them in
//! turn, every fifth key belongs to one big user instead (20,000 keys), every other key
//! also to one of 100 teams; every thousandth key is blocked, every 997th revoked, and every
//! 500th has an expiry (half of them past). Then,
//! each measured `RUNS` times (default 30) and printed as median and slowest, in ms:
//!
//! 1. the store's `page_keys` (50 keys): the first page, a page 50,000 keys deep, an
//!    owner's pages (a user's, a team's, the big user's first and deep pages, the latter
//!    also with the single-column `user_id` index that migration 0008 replaced, to show
//!    why), the rare and the common status, searches that find many, one, or nothing;
//! 2. over HTTP, as a browser signed in with the master key asks them: `/ui/keys` (which
//!    also reads each key's spend and owner), deep and searched, and `GET /admin/keys?limit=50`;
//!    then once `GET /admin/keys` without paging parameters (every key, as before).
//!
//! SQLite in a temporary directory by default; `DATABASE=postgres` uses a schema of its own
//! in `TOLLGATE_TEST_POSTGRES` (default the local `test` database), analysed after the
//! writes as autovacuum would (SQLite is not: tollgate never analyses it). Run with
//! `cargo bench --bench key_pages`.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::app::App;
use tollgate::authn::api_key;
use tollgate::config::Config;
use tollgate::domain::Role;
use tollgate::secret::Secret;
use tollgate::store::sql::{Backend, ConnectOptions, SqlStore};
use tollgate::store::{
    Actor, KeyFilter, KeyPageRequest, KeyStatus, NewKey, NewTeam, NewUiSession, NewUser, PageFrom,
    SharedStore, Store, UiHolder,
};

const MASTER: &str = "bench-master-key-0123456789";
const USERS: usize = 1_000;
const TEAMS: usize = 100;
const PAGE: u32 = 50;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A SQLite file in `dir`, or a fresh Postgres schema.
async fn database(dir: &std::path::Path) -> String {
    if std::env::var("DATABASE").as_deref() != Ok("postgres") {
        return format!("sqlite://{}", dir.join("pages.db").display());
    }
    use sqlx::Executor;
    let base = std::env::var("TOLLGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("tg_bench_pages_{}", std::process::id());
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

struct Data {
    store: Arc<SqlStore>,
    a_user: String,
    big_user: String,
    a_team: String,
    /// The id of the key in the middle of the listing.
    middle: String,
    big_user_middle: String,
}

async fn populate(url: &str, n: usize) -> Data {
    let store = Arc::new(
        SqlStore::connect(url, &ConnectOptions::default())
            .await
            .expect("open the bench database"),
    );
    store.migrate().await.expect("migrate");
    let shared: SharedStore = store.clone();
    let actor = Actor::new("bench", None);
    let mut users = Vec::new();
    for i in 0..=USERS {
        let user = shared
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
    let big_user = users.pop().unwrap();
    let mut teams = Vec::new();
    for i in 0..TEAMS {
        let team = shared
            .create_team(
                &actor,
                NewTeam {
                    name: format!("team-{i}"),
                    ..NewTeam::default()
                },
            )
            .await
            .unwrap();
        teams.push(team.id);
    }
    let mut ids = Vec::with_capacity(n);
    let mut big_ids = Vec::new();
    for start in (0..n).step_by(1000) {
        let batch: Vec<NewKey> = (start..(start + 1000).min(n))
            .map(|i| {
                let plain = api_key::generate();
                let user = if i % 5 == 0 {
                    &big_user
                } else {
                    &users[i % USERS]
                };
                NewKey {
                    name: format!("svc-{}-key-{i}", i % 500),
                    key_hash: plain.hash().to_hex(),
                    key_hint: plain.hint(),
                    user_id: Some(user.clone()),
                    team_id: (i % 2 == 0).then(|| teams[i % TEAMS].clone()),
                    ..NewKey::default()
                }
            })
            .collect();
        for key in shared.create_keys(&actor, batch).await.unwrap() {
            if key.user_id.as_deref() == Some(big_user.as_str()) {
                big_ids.push(key.id.clone());
            }
            ids.push(key.id);
        }
    }
    let pool = store.pool();
    let now = tollgate::domain::now();
    for (i, id) in ids.iter().enumerate() {
        if i % 500 == 250 {
            let at = if i % 1000 == 250 {
                now - 60
            } else {
                now + 86_400
            };
            sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
        }
        if i % 1000 == 999 {
            sqlx::query("UPDATE api_keys SET blocked = $1 WHERE id = $2")
                .bind(true)
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
        } else if i % 997 == 996 {
            sqlx::query("UPDATE api_keys SET revoked_at = 1 WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
        }
    }
    analyse(&store).await;
    Data {
        a_user: users[7].clone(),
        a_team: teams[4].clone(),
        middle: ids[n / 2].clone(),
        big_user_middle: big_ids[big_ids.len() / 2].clone(),
        big_user,
        store,
    }
}

/// Postgres' statistics, as autovacuum keeps them. SQLite's planner works without any
/// (tollgate never runs ANALYZE), and is measured so.
async fn analyse(store: &SqlStore) {
    if store.backend() == Backend::Postgres {
        sqlx::query("ANALYZE api_keys")
            .execute(store.pool())
            .await
            .unwrap();
    }
}

/// Median and slowest of `runs` calls, in ms.
async fn measure<F, Fut>(runs: usize, mut call: F) -> (f64, f64, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut took: Vec<Duration> = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let started = Instant::now();
        found = call().await;
        took.push(started.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(took[runs / 2]), ms(took[runs - 1]), found)
}

fn print(what: &str, (median, slowest, found): (f64, f64, usize)) {
    println!("{what:<58} {median:>9.2} {slowest:>9.2} {found:>7}");
}

async fn page(store: &SqlStore, filter: KeyFilter, from: PageFrom) -> usize {
    use tollgate::store::KeyStore;
    store
        .page_keys(filter, KeyPageRequest { limit: PAGE, from })
        .await
        .unwrap()
        .keys
        .len()
}

async fn store_pages(data: &Data, runs: usize) {
    let store = &data.store;
    let all = KeyFilter::default;
    let user = |id: &str| KeyFilter {
        user_id: Some(id.to_owned()),
        ..KeyFilter::default()
    };
    let search = |q: &str| KeyFilter {
        search: Some(q.to_owned()),
        ..KeyFilter::default()
    };
    let status = |s: KeyStatus| KeyFilter {
        status: Some(s),
        ..KeyFilter::default()
    };
    println!(
        "{:<58} {:>9} {:>9} {:>7}",
        "store: page_keys, 50 a page", "median", "slowest", "keys"
    );
    print(
        "first page",
        measure(runs, || page(store, all(), PageFrom::Start)).await,
    );
    let after = PageFrom::After(data.middle.clone());
    print(
        "a page 50,000 keys deep",
        measure(runs, || page(store, all(), after.clone())).await,
    );
    let before = PageFrom::Before(data.middle.clone());
    print(
        "the page before it",
        measure(runs, || page(store, all(), before.clone())).await,
    );
    print(
        "a user's first page (80 keys)",
        measure(runs, || page(store, user(&data.a_user), PageFrom::Start)).await,
    );
    let team = KeyFilter {
        team_id: Some(data.a_team.clone()),
        ..KeyFilter::default()
    };
    print(
        "a team's first page (500 keys)",
        measure(runs, || page(store, team.clone(), PageFrom::Start)).await,
    );
    let big = user(&data.big_user);
    let deep = PageFrom::After(data.big_user_middle.clone());
    print(
        "the big user's first page (20,000 keys)",
        measure(runs, || page(store, big.clone(), PageFrom::Start)).await,
    );
    print(
        "the big user's page 10,000 keys deep",
        measure(runs, || page(store, big.clone(), deep.clone())).await,
    );
    print(
        "status active, first page",
        measure(runs, || {
            page(store, status(KeyStatus::Active), PageFrom::Start)
        })
        .await,
    );
    print(
        "status blocked (100 of them), first page",
        measure(runs, || {
            page(store, status(KeyStatus::Blocked), PageFrom::Start)
        })
        .await,
    );
    print(
        "status revoked (100 of them), first page",
        measure(runs, || {
            page(store, status(KeyStatus::Revoked), PageFrom::Start)
        })
        .await,
    );
    print(
        "status expired (100 of them), first page",
        measure(runs, || {
            page(store, status(KeyStatus::Expired), PageFrom::Start)
        })
        .await,
    );
    print(
        "search `svc-42-` (200 match), first page",
        measure(runs, || page(store, search("svc-42-"), PageFrom::Start)).await,
    );
    print(
        "search `key-99999` (1 matches)",
        measure(runs, || page(store, search("key-99999"), PageFrom::Start)).await,
    );
    print(
        "search that matches nothing",
        measure(runs, || {
            page(store, search("no-such-key-name"), PageFrom::Start)
        })
        .await,
    );
    print(
        "search by the start of an id",
        measure(runs, || {
            page(store, search(&data.middle[..20]), PageFrom::Start)
        })
        .await,
    );

    // The same owner pages with the single-column index migration 0008 replaced.
    let pool = store.pool();
    for sql in [
        "DROP INDEX api_keys_user_id",
        "CREATE INDEX api_keys_user ON api_keys (user_id)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    analyse(store).await;
    print(
        "  with only (user_id): the big user's first page",
        measure(runs, || page(store, big.clone(), PageFrom::Start)).await,
    );
    print(
        "  with only (user_id): ... 10,000 keys deep",
        measure(runs, || page(store, big.clone(), deep.clone())).await,
    );
    for sql in [
        "DROP INDEX api_keys_user",
        "CREATE INDEX api_keys_user_id ON api_keys (user_id, id)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    analyse(store).await;
}

async fn http_pages(url: &str, data: &Data, runs: usize) {
    let mut config = Config::parse_str(
        "bench.yaml",
        &format!("database: {{ url: \"{url}\" }}\n"),
        &|_| None,
    )
    .expect("bench config")
    .config;
    config.listen.grpc = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    let app = App::build(config, &Secret::new(MASTER)).await.unwrap();
    let running = app.start().await.unwrap();
    let base = format!("http://{}", running.http_addr);
    // A browser signed in with the master key.
    let token = tollgate::ui::session::new_token();
    app.store
        .create_ui_session(
            &Actor::new("master", None),
            NewUiSession {
                token_hash: tollgate::ui::session::token_hash(&token),
                holder: UiHolder::Master {
                    tag: app.auth.master.fingerprint(),
                },
                expires_at: tollgate::domain::now() + 3600,
                source: None,
                method: "master_key",
            },
        )
        .await
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: String, browser: bool| {
        let client = client.clone();
        let url = format!("{base}{path}");
        let token = token.clone();
        async move {
            let mut request = client.get(url);
            request = if browser {
                request.header("cookie", format!("tollgate_ui={token}"))
            } else {
                request.bearer_auth(MASTER)
            };
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.text().await.unwrap().len()
        }
    };
    println!();
    println!(
        "{:<58} {:>9} {:>9} {:>7}",
        "over HTTP", "median", "slowest", "bytes"
    );
    print(
        "/ui/keys",
        measure(runs, || get("/ui/keys".into(), true)).await,
    );
    print(
        "/ui/keys, 50,000 keys deep",
        measure(runs, || {
            get(format!("/ui/keys?after={}", data.middle), true)
        })
        .await,
    );
    print(
        "/ui/keys?q=svc-42-",
        measure(runs, || get("/ui/keys?q=svc-42-".into(), true)).await,
    );
    print(
        "/ui/keys?q=… (matches nothing)",
        measure(runs, || get("/ui/keys?q=no-such-key-name".into(), true)).await,
    );
    print(
        "/ui/keys?user=user-7",
        measure(runs, || get("/ui/keys?user=user-7".into(), true)).await,
    );
    print(
        "/ui/keys?status=blocked",
        measure(runs, || get("/ui/keys?status=blocked".into(), true)).await,
    );
    print(
        "GET /admin/keys?limit=50",
        measure(runs, || get("/admin/keys?limit=50".into(), false)).await,
    );
    print(
        "GET /admin/keys (every key, unpaged, as before)",
        measure(1, || get("/admin/keys".into(), false)).await,
    );
    running.shutdown().await.unwrap();
}

fn main() {
    let n = env_count("KEYS", 100_000);
    let runs = env_count("RUNS", 30).max(1);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = database(dir.path()).await;
        let started = Instant::now();
        let data = populate(&url, n).await;
        eprintln!("({n} keys written in {:.1?})", started.elapsed());
        store_pages(&data, runs).await;
        http_pages(&url, &data, runs).await;
    });
}
