//! Many replicas behave as one, proven with real processes: two (or three) `tollgate serve`
//! subprocesses on one Postgres schema (and one Redis prefix), each behind a real Envoy
//! started from the shipped envoy/envoy.yaml, the mock LLM behind the Envoys, and every
//! request a real HTTP request through an Envoy (docs/DESIGN.md, "Changes reach every
//! replica" and "One reservation per request id").
//!
//! - An admin write through one replica's HTTP API is refused by the other replica within
//!   a second, over Redis pub/sub and over Postgres `LISTEN/NOTIFY`. `cache.key_ttl` and
//!   `cache.negative_ttl` are five minutes, so only the pushed invalidation can explain a
//!   refusal seen within a second.
//! - Budgets and token buckets live in Redis: concurrent requests through both Envoys
//!   admit exactly what the budget holds, every usage record is settled by whichever
//!   replica writes it, no settled cost is lost while the replicas read committed spend
//!   from the store again, and a tpm bucket drained (and put into debt by the real token
//!   count) through one replica refuses through the other.
//! - A replica killed with SIGKILL leaves the other deciding, and a replica started again
//!   rejoins the channel.

mod common;

use common::envoy::Envoy;
use common::serve::{Database, Serve};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tollgate::mock_llm::MockLlm;

const REDIS: &str = "redis://127.0.0.1:6379";
/// How long a change may take to reach the other replica (the contract).
const BOUND: Duration = Duration::from_secs(1);
/// How long a trial waits before calling it a failure (the assertion is on `BOUND`).
const GIVE_UP: Duration = Duration::from_secs(5);
/// How long usage records may take to be written and settled on a loaded machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// One replica: `tollgate serve` and the Envoy in front of it.
struct Replica {
    serve: Serve,
    envoy: Envoy,
}

/// Replicas on one database (and one Redis prefix), the mock LLM behind their Envoys.
struct Replicas {
    a: Replica,
    b: Replica,
    mock: MockLlm,
    db_url: String,
    prefix: Option<String>,
    config: String,
}

impl Replicas {
    /// Two replicas with `config` (models, cache, limits...) on a fresh Postgres schema,
    /// and Redis under a fresh prefix when `redis`.
    async fn start(config: &str, redis: bool) -> Replicas {
        let (_, db_url) = common::db::fresh_postgres().await;
        let prefix = redis.then(|| format!("tg-replicas-{}:", uuid::Uuid::new_v4().simple()));
        let mut config = config.to_owned();
        if let Some(prefix) = &prefix {
            config.push_str(&format!(
                "redis: {{ url: \"{REDIS}\", key_prefix: \"{prefix}\", failure_mode: closed, timeout: 2s }}\n"
            ));
        }
        let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            Serve::start(Database::Url(&db_url), &config),
            Serve::start(Database::Url(&db_url), &config)
        );
        let (envoy_a, envoy_b) = tokio::join!(
            Envoy::start("envoy/envoy.yaml", a.grpc, mock.addr),
            Envoy::start("envoy/envoy.yaml", b.grpc, mock.addr)
        );
        let replicas = Replicas {
            a: Replica {
                serve: a,
                envoy: envoy_a,
            },
            b: Replica {
                serve: b,
                envoy: envoy_b,
            },
            mock,
            db_url,
            prefix,
            config,
        };
        let redis = if redis { "up" } else { "absent" };
        for serve in [&replicas.a.serve, &replicas.b.serve] {
            let (status, ready) = serve.readyz().await.expect("readyz answers");
            assert_eq!(status, StatusCode::OK, "{ready}");
            assert_eq!(ready["backends"]["database"], "up", "{ready}");
            assert_eq!(ready["backends"]["redis"], redis, "{ready}");
        }
        replicas
    }

    /// One more replica on the same database and Redis prefix, with its own Envoy.
    async fn another(&self) -> Replica {
        let serve = Serve::start(Database::Url(&self.db_url), &self.config).await;
        let envoy = Envoy::start("envoy/envoy.yaml", serve.grpc, self.mock.addr).await;
        Replica { serve, envoy }
    }

    /// A connection to the shared Redis.
    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis at 127.0.0.1:6379")
    }

    /// Removes this test's keys from the shared Redis.
    async fn clean_redis(&self) {
        let Some(prefix) = &self.prefix else { return };
        let mut redis = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
}

/// A chat request with `max_tokens`.
fn chat(model: &str, content: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    })
}

/// What a client got through an Envoy: status, the refusal's `error.code` ("" when
/// admitted), the headers.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: String,
    headers: reqwest::header::HeaderMap,
    /// The mock's answer or the refusal.
    body: Value,
}

impl Answer {
    fn outcome(&self) -> (u16, &str) {
        (self.status, self.code.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `body` to `/v1/chat/completions` through `envoy` with `key`.
async fn send(envoy_url: &str, key: &str, body: &Value) -> Answer {
    let response = common::upstream::client()
        .post(format!("{envoy_url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("Envoy answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let code = if status == 200 {
        String::new()
    } else {
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    Answer {
        status,
        code,
        headers,
        body,
    }
}

fn url(envoy: &Envoy) -> String {
    format!("http://{}", envoy.listen)
}

/// A decision through `envoy` for a small gpt-4o chat with `key`. A 503 is not a decision
/// (Envoy's `status_on_error` when Check did not answer within its second, which a machine
/// running the whole suite can cause): it is asked again, and counted in `unanswered`.
async fn decide(envoy: &Envoy, key: &str, unanswered: &mut usize) -> (u16, String) {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let answer = send(&url(envoy), key, &chat("gpt-4o", "hello there", 4)).await;
        if answer.status != 503 {
            return (answer.status, answer.code);
        }
        *unanswered += 1;
        assert!(
            Instant::now() < deadline,
            "503 for {GIVE_UP:?}: {}",
            answer.body
        );
    }
}

async fn admin(serve: &Serve, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = serve.admin(method, path, body).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

fn unique(what: &str) -> String {
    format!(
        "{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The invalidation tests' tollgates: two priced models, caches that never expire within a
/// test, a quick usage writer.
const INVALIDATION_CONFIG: &str = "models:\n\
  - { name: gpt-4o, pricing: { input_per_million: 1, output_per_million: 2 } }\n\
  - { name: gpt-4o-mini, pricing: { input_per_million: 1, output_per_million: 2 } }\n\
cache: { key_ttl: 300s, negative_ttl: 300s }\n\
usage: { batch_interval: 100ms }\n";

/// An admin write that changes a decision, and what the other replica answers after it.
struct Change {
    name: &'static str,
    /// (status, error code) once the change applies; (200, "") for one that admits again.
    then: (u16, &'static str),
}

const CHANGES: [Change; 12] = [
    Change {
        name: "revoke key",
        then: (401, "invalid_api_key"),
    },
    Change {
        name: "block key",
        then: (403, "permission_denied"),
    },
    Change {
        name: "unblock key",
        then: (200, ""),
    },
    Change {
        name: "rotate key",
        then: (401, "invalid_api_key"),
    },
    Change {
        name: "key budget",
        then: (429, "insufficient_quota"),
    },
    Change {
        name: "key models",
        then: (403, "model_not_allowed"),
    },
    Change {
        name: "key rpm",
        then: (429, "rate_limit_exceeded"),
    },
    Change {
        name: "block user",
        then: (403, "permission_denied"),
    },
    Change {
        name: "user role",
        then: (403, "permission_denied"),
    },
    Change {
        name: "delete user",
        then: (401, "invalid_api_key"),
    },
    Change {
        name: "block team",
        then: (403, "permission_denied"),
    },
    Change {
        name: "team budget",
        then: (429, "insufficient_quota"),
    },
];

/// Polls through `to`'s Envoy until `key` is answered `then` (anything else but 200 on the
/// way is a failure); answers how long after `started`. Panics past [`GIVE_UP`].
async fn until(
    to: &Replica,
    key: &str,
    then: (u16, &str),
    started: Instant,
    what: &str,
    unanswered: &mut usize,
) -> Duration {
    // Until the change applies the key is admitted (or, for a change that admits again,
    // refused as before it).
    let before: (u16, &str) = if then.0 == 200 {
        (403, "permission_denied")
    } else {
        (200, "")
    };
    loop {
        let seen = decide(&to.envoy, key, unanswered).await;
        if (seen.0, seen.1.as_str()) == then {
            return started.elapsed();
        }
        assert_eq!(
            (seen.0, seen.1.as_str()),
            before,
            "{what}: neither before nor after the change"
        );
        assert!(
            started.elapsed() < GIVE_UP,
            "{what}: the other replica still answers {seen:?} after {GIVE_UP:?}\n{}",
            to.serve.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One trial: a fresh user, team and key (the user's, on the team); the key warm in
/// `to`'s cache through `to`'s Envoy; `change` made through `from`'s admin API; answers how
/// long until `to` answers as the change says.
async fn trial(
    from: &Replica,
    to: &Replica,
    n: usize,
    change: &Change,
    unanswered: &mut usize,
) -> Duration {
    let a = &from.serve;
    let user = a.create_user(&unique(&format!("u{n}")), "user").await;
    let team = admin(
        a,
        Method::POST,
        "/admin/teams",
        Some(json!({"name": unique("team")})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key_id, key) = a
        .create_key(json!({"name": "k", "user_id": user, "team_id": team}))
        .await;
    let what = format!("trial {n} ({})", change.name);

    // Warm: the other replica admits the key through its Envoy until it answers from its
    // cache, so that a refusal after the change is not a cold read. (A lookup overtaken by
    // an invalidation is not cached: the key's own creation, published to the other replica,
    // may arrive while its first lookup is on its way.)
    let hit = "tollgate_cache_requests_total{cache=\"key\",result=\"hit\"}";
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let hits = to.serve.metric(hit).await;
        assert_eq!(decide(&to.envoy, &key, unanswered).await.0, 200, "{what}");
        if to.serve.metric(hit).await > hits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the other replica never answers from its cache"
        );
    }
    if change.name == "unblock key" {
        // Blocked first (untimed), so that the blocked record is what the other replica
        // has cached when the unblock comes.
        let started = Instant::now();
        admin(
            a,
            Method::POST,
            &format!("/admin/keys/{key_id}/block"),
            None,
        )
        .await;
        until(
            to,
            &key,
            (403, "permission_denied"),
            started,
            &what,
            unanswered,
        )
        .await;
        assert_eq!(
            decide(&to.envoy, &key, unanswered).await,
            (403, "permission_denied".to_owned())
        );
    }

    let started = Instant::now();
    let mut new_secret = None;
    let (method, path, body) = common::changes::admin_call(change.name, &key_id, &user, &team);
    let (status, answer) = a.admin(method, &path, body).await;
    assert!(status.is_success(), "{}: {status} {answer}", change.name);
    if change.name == "delete user" {
        assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    }
    if change.name == "rotate key" {
        new_secret = Some(answer["key"].as_str().unwrap().to_owned());
    }
    let lag = until(to, &key, change.then, started, &what, unanswered).await;
    if let Some(secret) = new_secret {
        // The new secret is admitted by the other replica at once.
        assert_eq!(
            decide(&to.envoy, &secret, unanswered).await,
            (200, String::new()),
            "{what}: the new secret"
        );
    }
    lag
}

/// The start-up of a replica waits at most 2 s for its invalidation listener and then
/// serves anyway (a loaded machine); the listener's late first connection flushes the
/// caches. When that happened, one untimed change first makes sure `to` listens.
async fn listening(from: &Replica, to: &Replica) {
    if !to.serve.log().contains("not listening yet") {
        return;
    }
    eprintln!("the listener was late at start-up: one untimed change first");
    let (key_id, key) = from.serve.create_key(json!({"name": "probe"})).await;
    let mut unanswered = 0;
    assert_eq!(decide(&to.envoy, &key, &mut unanswered).await.0, 200);
    let started = Instant::now();
    admin(
        &from.serve,
        Method::DELETE,
        &format!("/admin/keys/{key_id}"),
        None,
    )
    .await;
    until(
        to,
        &key,
        (401, "invalid_api_key"),
        started,
        "probe",
        &mut unanswered,
    )
    .await;
}

/// Every change, `rounds` times, made on `from` and seen through `to`'s Envoy; every one
/// within [`BOUND`]. Prints the lags.
async fn every_change_reaches_the_other_replica(
    from: &Replica,
    to: &Replica,
    rounds: usize,
    channel: &str,
) {
    listening(from, to).await;
    let mut lags = Vec::new();
    let mut unanswered = 0;
    for round in 0..rounds {
        for (i, change) in CHANGES.iter().enumerate() {
            let n = round * CHANGES.len() + i;
            let lag = trial(from, to, n, change, &mut unanswered).await;
            assert!(
                lag < BOUND,
                "trial {n} ({}): refused after {lag:?}, more than {BOUND:?}",
                change.name
            );
            lags.push((lag, change.name));
        }
    }
    lags.sort();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize].0;
    eprintln!(
        "invalidation over {channel}, seen through another replica's Envoy: {} trials \
         ({} changes x {rounds}), lag p50 {:?}, p90 {:?}, max {:?} ({}); {unanswered} \
         answers were 503 and asked again",
        lags.len(),
        CHANGES.len(),
        at(0.5),
        at(0.9),
        lags[lags.len() - 1].0,
        lags[lags.len() - 1].1,
    );
    // The other replica applied them as received changes (its lag histogram counts each;
    // on Postgres other tests' changes arrive too).
    let applied = to
        .serve
        .metric("tollgate_invalidation_lag_seconds_count")
        .await;
    assert!(applied >= lags.len() as f64, "{applied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_on_one_replica_are_refused_by_another_within_a_second_over_redis() {
    let replicas = Replicas::start(INVALIDATION_CONFIG, true).await;
    every_change_reaches_the_other_replica(&replicas.a, &replicas.b, 5, "Redis pub/sub").await;
    replicas.clean_redis().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_on_one_replica_are_refused_by_another_within_a_second_over_postgres() {
    let replicas = Replicas::start(INVALIDATION_CONFIG, false).await;
    every_change_reaches_the_other_replica(&replicas.a, &replicas.b, 2, "Postgres NOTIFY").await;
}

/// The shared budget tests' tollgates: `gpt-4o` charges only output ($1 a token), so a
/// request's estimate is its real cost; `gpt-4o-mini` charges input too ($1 a token), so
/// the estimate (body bytes / 4) exceeds the real cost (the mock counts words). `CACHE` is
/// replaced by each test's cache settings (`cache.key_ttl` is how often a replica reads a
/// budget's committed spend from the store again).
const BUDGET_CONFIG: &str = "models:\n\
  - { name: gpt-4o, pricing: { input_per_million: 0, output_per_million: 1000000 } }\n\
  - { name: gpt-4o-mini, pricing: { input_per_million: 1000000, output_per_million: 1000000 } }\n\
cache: CACHE\n\
usage: { batch_interval: 100ms }\n";

fn budget_config(cache: &str) -> String {
    BUDGET_CONFIG.replace("CACHE", cache)
}

/// How many requests each Envoy gets at once.
const PER_ENVOY: usize = 20;
/// Output tokens of every hammering request.
const MAX_TOKENS: u64 = 10;

/// `PER_ENVOY` concurrent requests through each Envoy; answers every status and code.
async fn hammer(replicas: &Replicas, key: &str, body: &Value) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for i in 0..2 * PER_ENVOY {
        let envoy = if i % 2 == 0 {
            &replicas.a.envoy
        } else {
            &replicas.b.envoy
        };
        let (url, key, body) = (url(envoy), key.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let answer = send(&url, &key, &body).await;
            (answer.status, answer.code)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// Committed and reserved spend of a key's budget as Redis holds it.
async fn redis_budget(replicas: &Replicas, key_id: &str) -> (f64, f64) {
    let prefix = replicas.prefix.as_deref().unwrap();
    let mut redis = replicas.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}{{k:{key_id}}}:b:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "one budget period: {keys:?}");
    let (committed, reserved): (Option<f64>, Option<f64>) = redis::cmd("HMGET")
        .arg(&keys[0])
        .arg("committed")
        .arg("reserved")
        .query_async(&mut redis)
        .await
        .unwrap();
    (committed.unwrap_or(0.0), reserved.unwrap_or(0.0))
}

/// How many usage records the key has, and their cost.
async fn records(db: &sqlx::PgPool, key_id: &str) -> (i64, f64) {
    sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0)::float8 FROM usage_records WHERE key_id = $1",
    )
    .bind(key_id)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Waits until every request the upstream answered has its usage record written and its
/// reservation settled (gone from Redis).
async fn all_settled(replicas: &Replicas, db: &sqlx::PgPool) {
    let prefix = replicas.prefix.as_deref().unwrap();
    let ids: Vec<String> = replicas
        .mock
        .requests()
        .iter()
        .filter_map(|r| Some(r.header("x-request-id")?.to_owned()))
        .collect();
    let reservations: Vec<String> = ids.iter().map(|id| format!("{prefix}r:{{{id}}}")).collect();
    let mut redis = replicas.redis().await;
    let started = Instant::now();
    loop {
        let written: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE request_id = ANY($1)")
                .bind(&ids)
                .fetch_one(db)
                .await
                .unwrap();
        let held: i64 = redis::cmd("EXISTS")
            .arg(&reservations)
            .query_async(&mut redis)
            .await
            .unwrap();
        if written == ids.len() as i64 && held == 0 {
            return;
        }
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "after {SETTLE_WITHIN:?}: {written} of {} records written, {held} reservations \
             held\nA:\n{}\nB:\n{}",
            ids.len(),
            replicas.a.serve.log(),
            replicas.b.serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a hammer on one key's budget came to, once every record is written and settled.
struct Spent {
    admitted: usize,
    refused: usize,
    unanswered: usize,
    /// The key's `spend` in the admin API.
    spend: f64,
    /// Sum of the key's usage records (the hammer's and the warm-up's).
    recorded: f64,
    committed: f64,
    reserved: f64,
}

/// One request through each Envoy, written and settled, then [`PER_ENVOY`] concurrent
/// requests through each; waits until every admitted request's record is written and its
/// reservation settled, and reads the spend everywhere. After the warm-up each replica has
/// read the budget's committed spend from the store, and reads it again only after
/// `cache.key_ttl`: during the hammer Redis alone counts.
async fn hammer_budget(
    replicas: &Replicas,
    db: &sqlx::PgPool,
    key_id: &str,
    key: &str,
    body: &Value,
) -> Spent {
    for replica in [&replicas.a, &replicas.b] {
        let answer = send(&url(&replica.envoy), key, body).await;
        assert_eq!(answer.status, 200, "warm-up: {:?}", answer.body);
    }
    all_settled(replicas, db).await;
    let answers = hammer(replicas, key, body).await;
    let (mut admitted, mut refused, mut unanswered) = (0, 0, 0);
    for (status, code) in &answers {
        match (*status, code.as_str()) {
            (200, _) => admitted += 1,
            (429, "insufficient_quota") => refused += 1,
            // Check did not answer Envoy within its second (a loaded machine): not admitted;
            // its reservation, if one was taken, is never settled.
            (503, _) => unanswered += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    all_settled(replicas, db).await;
    let (count, recorded) = records(db, key_id).await;
    assert_eq!(count, admitted as i64 + 2, "a record per admitted request");
    let (committed, reserved) = redis_budget(replicas, key_id).await;
    let key = admin(
        &replicas.a.serve,
        Method::GET,
        &format!("/admin/keys/{key_id}"),
        None,
    )
    .await;
    Spent {
        admitted,
        refused,
        unanswered,
        spend: key["spend"].as_f64().unwrap(),
        recorded,
        committed,
        reserved,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_two_replicas_spend_exactly_one_budget() {
    let config = budget_config("{ key_ttl: 300s, negative_ttl: 300s }");
    let replicas = Replicas::start(&config, true).await;
    let db = sqlx::PgPool::connect(&replicas.db_url).await.unwrap();

    // An exact estimate: each request reserves and costs $10 (10 output tokens); the budget
    // holds the two warm-up requests and ten more.
    let exact = chat("gpt-4o", "hello there", MAX_TOKENS);
    let cost = MAX_TOKENS as f64;
    let fits = 10;
    let budget = (fits + 2) as f64 * cost;
    let (key_id, key) = replicas
        .a
        .serve
        .create_key(json!({"name": "exact", "max_budget": budget, "budget_duration": "1mo"}))
        .await;
    let spent = hammer_budget(&replicas, &db, &key_id, &key, &exact).await;
    eprintln!(
        "exact estimates: budget ${budget}, 2 warm-up requests then {} at once through two \
         Envoys: {} admitted (room for {fits}), {} refused, {} unanswered (503); spend ${}, \
         records ${}, Redis committed ${} + reserved ${}",
        2 * PER_ENVOY,
        spent.admitted,
        spent.refused,
        spent.unanswered,
        spent.spend,
        spent.recorded,
        spent.committed,
        spent.reserved
    );
    // The budget is used up to the cent: what was admitted is what was recorded, and a
    // request Envoy gave up on (503) holds its reservation until it expires.
    assert_eq!(spent.recorded, (spent.admitted + 2) as f64 * cost);
    assert_eq!(spent.spend, spent.recorded);
    assert_eq!(spent.committed, spent.recorded);
    assert_eq!(spent.committed + spent.reserved, budget);
    let held = (spent.reserved / cost).round() as usize;
    assert!(
        held <= spent.unanswered,
        "{held} reservations never settled"
    );
    assert_eq!(spent.admitted + held, fits);
    assert_eq!(
        spent.refused,
        2 * PER_ENVOY - spent.admitted - spent.unanswered
    );
    if spent.unanswered == 0 {
        assert_eq!(spent.admitted, fits);
        assert_eq!(spent.reserved, 0.0);
    }
    // The upstream saw exactly the admitted requests.
    let upstream: BTreeSet<String> = replicas
        .mock
        .requests()
        .iter()
        .filter_map(|r| Some(r.header("x-request-id")?.to_owned()))
        .collect();
    assert_eq!(upstream.len(), spent.admitted + 2);

    // Estimates above the real cost: a request reserves its body bytes / 4 in input tokens
    // but costs the words the mock counts, so settled requests give back the difference
    // and more than the budget holds at the estimate may be admitted, but the spend never
    // passes the budget.
    let estimated = chat("gpt-4o-mini", "hello there", MAX_TOKENS);
    let bytes = serde_json::to_vec(&estimated).unwrap().len() as u64;
    let estimate = (bytes.div_ceil(4) + MAX_TOKENS) as f64;
    let real = (2 + MAX_TOKENS) as f64;
    let budget = 12.0 * estimate;
    let (key_id, key) = replicas
        .a
        .serve
        .create_key(json!({"name": "estimated", "max_budget": budget, "budget_duration": "1mo"}))
        .await;
    let spent = hammer_budget(&replicas, &db, &key_id, &key, &estimated).await;
    let at_least = ((budget - 2.0 * real) / estimate).floor() as usize;
    eprintln!(
        "estimates above cost (${estimate} reserved, ${real} spent per request): budget \
         ${budget}, 2 + {} sent: {} admitted (at least {at_least}), {} refused, {} \
         unanswered; spend ${}, records ${}, Redis committed ${} + reserved ${}",
        2 * PER_ENVOY,
        spent.admitted,
        spent.refused,
        spent.unanswered,
        spent.spend,
        spent.recorded,
        spent.committed,
        spent.reserved
    );
    assert_eq!(spent.recorded, (spent.admitted + 2) as f64 * real);
    assert_eq!(spent.spend, spent.recorded);
    assert_eq!(spent.committed, spent.recorded);
    assert!(
        spent.recorded <= budget,
        "overspent: ${} of ${budget}",
        spent.recorded
    );
    assert!(spent.committed + spent.reserved <= budget);
    let held = (spent.reserved / estimate).round() as usize;
    assert!(
        held <= spent.unanswered,
        "{held} reservations never settled"
    );
    assert!(
        spent.admitted + held >= at_least,
        "fewer admitted than the budget holds at the estimate: {}",
        spent.admitted
    );
    db.close().await;
    replicas.clean_redis().await;
}

/// Each replica reads a budget's committed spend from the store again every
/// `cache.key_ttl` (here a second) while the other replica's records are written and
/// settled: a cost settled while such a read is on its way must not be lost (it would be
/// admitted again: overspend). Clients send through both Envoys until the budget refuses
/// them; the spend never passes the budget, Redis never counts less than the records, and
/// after a read with nothing in flight it counts exactly the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_settled_cost_is_lost_while_replicas_read_committed_spend_again() {
    let config = budget_config("{ key_ttl: 1s, negative_ttl: 1s }");
    let replicas = Replicas::start(&config, true).await;
    let db = sqlx::PgPool::connect(&replicas.db_url).await.unwrap();
    // $1 a request (one output token); a budget of 400 requests.
    let body = chat("gpt-4o", "hello there", 1);
    let budget = 400.0;
    let (key_id, key) = replicas
        .a
        .serve
        .create_key(json!({"name": "reread", "max_budget": budget, "budget_duration": "1mo"}))
        .await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..8 {
        let envoy = if i % 2 == 0 {
            &replicas.a.envoy
        } else {
            &replicas.b.envoy
        };
        let (url, key, body) = (url(envoy), key.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let (mut admitted, mut unanswered) = (0usize, 0usize);
            loop {
                let answer = send(&url, &key, &body).await;
                match answer.outcome() {
                    (200, _) => admitted += 1,
                    (429, "insufficient_quota") => return (admitted, unanswered),
                    (503, _) => unanswered += 1,
                    other => panic!("unexpected answer {other:?}: {:?}", answer.body),
                }
            }
        }));
    }
    let (mut admitted, mut unanswered) = (0, 0);
    for client in clients {
        let (a, u) = client.await.unwrap();
        admitted += a;
        unanswered += u;
    }
    let took = started.elapsed();
    all_settled(&replicas, &db).await;
    let (count, recorded) = records(&db, &key_id).await;
    let (committed, reserved) = redis_budget(&replicas, &key_id).await;
    eprintln!(
        "re-reading committed spend every second: budget ${budget} ($1 a request), {admitted} \
         admitted through two Envoys in {took:?}, {unanswered} unanswered; records ${recorded}, \
         Redis committed ${committed} + reserved ${reserved}"
    );
    assert_eq!(count, admitted as i64);
    assert_eq!(recorded, admitted as f64);
    assert!(recorded <= budget, "overspent: ${recorded} of ${budget}");
    // Nothing settled is lost; a cost committed before a read and settled after it may
    // count twice until the next read (refusing early, never overspending).
    assert!(
        committed >= recorded,
        "Redis lost ${}",
        recorded - committed
    );

    // The next read with nothing in flight counts exactly the records (a refused request
    // reads too; an admitted one is written and settled before looking).
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut more = 0;
    loop {
        for replica in [&replicas.a, &replicas.b] {
            let answer = send(&url(&replica.envoy), &key, &body).await;
            match answer.outcome() {
                (200, _) => more += 1,
                (429, "insufficient_quota") | (503, _) => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
        all_settled(&replicas, &db).await;
        let (_, recorded) = records(&db, &key_id).await;
        let (committed, _) = redis_budget(&replicas, &key_id).await;
        if committed == recorded {
            assert!(recorded <= budget, "overspent: ${recorded} of ${budget}");
            eprintln!("after a read: committed ${committed} = records ({more} more admitted)");
            break;
        }
        assert!(
            committed >= recorded,
            "Redis lost ${}",
            recorded - committed
        );
        assert!(
            Instant::now() < deadline,
            "Redis counts ${committed}, the records ${recorded}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.close().await;
    replicas.clean_redis().await;
}

/// Reads `x-ratelimit-remaining-tokens` of an admitted answer.
fn remaining_tokens(answer: &Answer) -> i64 {
    answer
        .header("x-ratelimit-remaining-tokens")
        .unwrap_or_else(|| panic!("no x-ratelimit-remaining-tokens: {answer:?}"))
        .parse()
        .unwrap()
}

/// Waits until the usage record of the request the upstream saw last with `content` is
/// written and its reservation settled; answers its request id.
async fn settled(replicas: &Replicas, db: &sqlx::PgPool, content: &str) -> String {
    let request_id = replicas
        .mock
        .requests()
        .iter()
        .rev()
        .find(|r| {
            r.json()
                .is_some_and(|b| b["messages"][0]["content"] == content)
        })
        .and_then(|r| r.header("x-request-id").map(str::to_owned))
        .expect("the upstream saw the request");
    let reservation = format!("{}r:{{{request_id}}}", replicas.prefix.as_deref().unwrap());
    let mut redis = replicas.redis().await;
    let started = Instant::now();
    loop {
        let written: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE request_id = $1")
                .bind(&request_id)
                .fetch_one(db)
                .await
                .unwrap();
        let held: bool = redis::cmd("EXISTS")
            .arg(&reservation)
            .query_async(&mut redis)
            .await
            .unwrap();
        if written == 1 && !held {
            return request_id;
        }
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "{request_id}: written {written}, reservation held {held}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_bucket_used_up_through_one_replica_refuses_through_the_other() {
    let replicas = Replicas::start(
        &budget_config("{ key_ttl: 300s, negative_ttl: 300s }"),
        true,
    )
    .await;
    let db = sqlx::PgPool::connect(&replicas.db_url).await.unwrap();
    // 3000 tokens a minute: a burst of 3000, refilled at 50 a second.
    let tpm = 3000i64;
    let per_second = tpm as f64 / 60.0;
    let (key_id, key) = replicas
        .a
        .serve
        .create_key(json!({"name": "tpm", "tpm": tpm}))
        .await;
    let estimate = |body: &Value| {
        (serde_json::to_vec(body).unwrap().len() as u64).div_ceil(4) as i64
            + body["max_tokens"].as_i64().unwrap()
    };

    // A small request through A, then the same through B: B's view of the bucket is A's
    // take (and A's settle, when it came first) less its own.
    let small = chat("gpt-4o", "hello there", 200);
    let (e, real) = (estimate(&small), 2 + 200);
    let started = Instant::now();
    let first = send(&url(&replicas.a.envoy), &key, &small).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert!((tpm - e - 1..=tpm - e).contains(&remaining_tokens(&first)));
    let second = send(&url(&replicas.b.envoy), &key, &small).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    let refill = (per_second * started.elapsed().as_secs_f64()).ceil() as i64;
    let seen = remaining_tokens(&second);
    // Lowest: both estimates taken, nothing refilled. Highest: A's request settled at its
    // real count, and the refill since. B alone would see tpm - e.
    assert!(
        (tpm - 2 * e - 1..=tpm - e - real + refill).contains(&seen),
        "B sees {seen} tokens left, {} after A's take",
        tpm - e
    );
    eprintln!(
        "tpm {tpm}: A's request left {}, B's next {seen} (B alone would have {})",
        remaining_tokens(&first),
        tpm - e
    );

    // A request through A whose real count is about twice its estimate (one-letter words:
    // two bytes, a quarter token each, estimated; one token each, counted by the mock).
    // Once A's ext_proc has metered it and a writer settled it, the bucket is in debt.
    let words = 4000;
    let big = chat("gpt-4o", &vec!["a"; words].join(" "), 1);
    let (big_estimate, big_real) = (estimate(&big), words as i64 + 1);
    assert!(big_real > big_estimate + tpm / 3);
    let third = send(&url(&replicas.a.envoy), &key, &big).await;
    assert_eq!(third.status, 200, "{:?}", third.body);
    let content = big["messages"][0]["content"].as_str().unwrap();
    let request_id = settled(&replicas, &db, content).await;
    let mut redis = replicas.redis().await;
    let bucket = format!("{}{{k:{key_id}}}:tpm", replicas.prefix.as_deref().unwrap());
    let units: f64 = redis::cmd("HGET")
        .arg(&bucket)
        .arg("t")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        units < 0.0,
        "the bucket is in debt after {request_id}: {units}"
    );

    // B refuses, even a small request, until the debt is repaid (tens of seconds).
    let refused = send(&url(&replicas.b.envoy), &key, &small).await;
    assert_eq!(
        refused.outcome(),
        (429, "rate_limit_exceeded"),
        "{:?}",
        refused.body
    );
    let retry_after: f64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(refused.header("x-should-retry"), Some("true"));
    // The wait is the debt plus the request's estimate, at 50 tokens a second, less the
    // refill since the bucket was read.
    let wait = (e as f64 - units) / per_second;
    assert!(
        retry_after <= wait.ceil() + 1.0 && retry_after >= 1.0,
        "retry-after {retry_after}, debt {units}"
    );
    // And so does A.
    let refused = send(&url(&replicas.a.envoy), &key, &small).await;
    assert_eq!(refused.outcome(), (429, "rate_limit_exceeded"));
    eprintln!(
        "tpm {tpm}: A admitted {big_estimate} estimated tokens that were {big_real}; the \
         bucket is {units:.0} in debt; B refuses for {retry_after}s"
    );
    db.close().await;
    replicas.clean_redis().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_leaves_the_other_deciding_and_one_started_again_rejoins() {
    let mut replicas = Replicas::start(INVALIDATION_CONFIG, true).await;
    let mut unanswered = 0;
    let (k1_id, k1) = replicas.a.serve.create_key(json!({"name": "k1"})).await;
    let (k2_id, k2) = replicas.a.serve.create_key(json!({"name": "k2"})).await;
    for key in [&k1, &k2] {
        for replica in [&replicas.a, &replicas.b] {
            assert_eq!(decide(&replica.envoy, key, &mut unanswered).await.0, 200);
        }
    }

    // A dies without a drain.
    let status = replicas.a.serve.sigkill();
    assert!(!status.success(), "{status}");
    // Its Envoy fails closed (503: tollgate unreachable); B keeps deciding.
    let answer = send(&url(&replicas.a.envoy), &k2, &chat("gpt-4o", "hi", 4)).await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(decide(&replicas.b.envoy, &k1, &mut unanswered).await.0, 200);
    assert_eq!(decide(&replicas.b.envoy, &k2, &mut unanswered).await.0, 200);

    // A write through B is refused by B at once (its own cache is dropped before the
    // write answers).
    admin(
        &replicas.b.serve,
        Method::DELETE,
        &format!("/admin/keys/{k1_id}"),
        None,
    )
    .await;
    assert_eq!(
        decide(&replicas.b.envoy, &k1, &mut unanswered).await,
        (401, "invalid_api_key".to_owned())
    );
    assert_eq!(decide(&replicas.b.envoy, &k2, &mut unanswered).await.0, 200);

    // A replica started again reads what was written meanwhile from the store...
    let again = replicas.another().await;
    assert_eq!(
        decide(&again.envoy, &k1, &mut unanswered).await,
        (401, "invalid_api_key".to_owned())
    );
    assert_eq!(decide(&again.envoy, &k2, &mut unanswered).await.0, 200);
    // ...and its writes reach B within the bound.
    listening(&again, &replicas.b).await;
    let started = Instant::now();
    admin(
        &again.serve,
        Method::DELETE,
        &format!("/admin/keys/{k2_id}"),
        None,
    )
    .await;
    let lag = until(
        &replicas.b,
        &k2,
        (401, "invalid_api_key"),
        started,
        "revoked through the restarted replica",
        &mut unanswered,
    )
    .await;
    assert!(lag < BOUND, "{lag:?}");
    eprintln!("revoked through a restarted replica, refused by the other after {lag:?}");
    replicas.clean_redis().await;
}
