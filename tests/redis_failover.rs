//! The counters (rate limits here) against a Redis server of the test's own, killed and
//! restarted mid-run: every
//! `redis.failure_mode` answers while Redis is down without waiting on it, and Redis takes
//! over again by itself when it is back (its scripts reloaded, since a restarted server has
//! none).

mod common;

use common::metrics::sample;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate::admission::counters::{CountError, Counters, Reservation, Taken};
use tollgate::config::Config;
use tollgate::limits::bucket::Shape;
use tollgate::limits::{Demand, Outcome, Unit};
use tollgate::metrics::Metrics;

/// The bound on one call: the configured timeout.
const TIMEOUT: &str = "200ms";
/// A call taking longer than this hangs (a hang check, not a speed assertion).
const HANG: Duration = Duration::from_secs(2);
/// How long a state the limiter reaches on its own (recovery) may take to show.
const DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` child on a port of its own, without persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        server.restart().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers PING.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (is it on PATH?)");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = self.connect().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "redis-server on port {} does not answer",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(url: &str, mode: &str) -> Config {
    Config::parse_str(
        "t",
        &format!(
            "redis:\n  url: {url}\n  failure_mode: {mode}\n  timeout: {TIMEOUT}\n  pool_size: 4\n\
             \x20 key_prefix: 'failover:'\n  replicas: 2\n"
        ),
        &|_| None,
    )
    .expect("a redis config")
    .config
}

/// The counters of `config` over an empty store of their own, seen as rate limits.
struct Limiter {
    counters: Counters,
}

impl Limiter {
    async fn redis(config: &Config, metrics: Metrics) -> Limiter {
        // A file of its own (each connection to `sqlite::memory:` would be a database of
        // its own), left in the temporary directory.
        let path = std::env::temp_dir().join(format!("tollgate-{}.db", tollgate::domain::new_id()));
        let store = tollgate::store::sql::SqlStore::connect(
            &format!("sqlite://{}", path.display()),
            &tollgate::store::sql::ConnectOptions::default(),
        )
        .await
        .expect("an in-memory store");
        tollgate::store::Store::migrate(&store)
            .await
            .expect("migrations");
        Limiter {
            counters: Counters::from_config(std::sync::Arc::new(store), config, metrics)
                .expect("counters"),
        }
    }

    /// Takes `demands` for a request of its own id.
    async fn admit(&self, demands: &[Demand], now: i64) -> Result<Outcome, CountError> {
        self.admit_as(&tollgate::domain::new_id(), demands, now)
            .await
    }

    async fn admit_as(
        &self,
        request_id: &str,
        demands: &[Demand],
        now: i64,
    ) -> Result<Outcome, CountError> {
        let reservation = Reservation {
            demands: demands.to_vec(),
            ..Reservation::default()
        };
        match self.counters.take(request_id, &reservation, now).await? {
            Taken::Admitted(o) | Taken::RateLimited(o) => Ok(o),
            other => panic!("no budget is charged here: {other:?}"),
        }
    }

    /// Settles request `request_id` at `tokens` (no cost).
    async fn settle(&self, request_id: &str, tokens: u64, now: i64) {
        self.counters.settle(request_id, 0.0, tokens, now).await;
    }

    fn healthy(&self) -> bool {
        self.counters.healthy()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn demand(key: &str, per_minute: u64, burst: u64, cost: u64) -> Demand {
    Demand {
        key: key.to_owned(),
        unit: if cost == 1 {
            Unit::Requests
        } else {
            Unit::Tokens
        },
        shape: Shape { per_minute, burst },
        cost,
    }
}

/// Admits `d` `n` times at `now`, each call checked against [`HANG`]; how many were admitted.
async fn admit_n(limiter: &Limiter, d: &Demand, now: i64, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let started = Instant::now();
        let outcome = limiter.admit(std::slice::from_ref(d), now).await;
        assert!(
            started.elapsed() < HANG,
            "a call took {:?}",
            started.elapsed()
        );
        if outcome.expect("admit").admitted {
            admitted += 1;
        }
    }
    admitted
}

async fn script_loaded(server: &RedisServer) -> bool {
    let config = config(&server.url(), "closed");
    let store = tollgate::store::sql::SqlStore::connect(
        "sqlite::memory:",
        &tollgate::store::sql::ConnectOptions::default(),
    )
    .await
    .unwrap();
    let hash = tollgate::admission::redis::RedisCounters::new(
        config.redis.as_ref().unwrap(),
        std::sync::Arc::new(store),
        &config,
    )
    .unwrap()
    .take_script_hash()
    .to_owned();
    let mut conn = server.connect().await.unwrap();
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(hash)
        .query_async(&mut conn)
        .await
        .unwrap();
    exists == vec![true]
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_errors(metrics: &Metrics) -> u64 {
    sample(metrics, "tollgate_backend_errors_total{backend=\"redis\"}") as u64
}

/// Up, down, up again, with `mode`; `while_down` checks the answers while Redis is down.
async fn failover<F, Fut>(mode: &str, while_down: F)
where
    F: FnOnce(Limiter, i64) -> Fut,
    Fut: std::future::Future<Output = Limiter>,
{
    let mut server = RedisServer::start().await;
    let metrics = Metrics::new();
    let limiter = Limiter::redis(&config(&server.url(), mode), metrics.clone()).await;
    assert!(limiter.healthy());
    assert_eq!(sample(&metrics, "tollgate_redis_up") as i64, 1);
    let by_mode = format!("tollgate_failure_mode_total{{backend=\"redis\",mode=\"{mode}\"}}");
    let decided_by_mode = || sample(&metrics, &by_mode) as u64;

    // Up: Redis enforces the limit.
    let now = now_ms();
    let up = demand("k:up:rpm", 60, 10, 1);
    assert_eq!(admit_n(&limiter, &up, now, 12).await, 10);
    assert!(script_loaded(&server).await);
    let o = limiter.admit(std::slice::from_ref(&up), now).await.unwrap();
    assert_eq!(o.views.len(), 1, "views come from redis");
    assert_eq!(redis_errors(&metrics), 0);
    assert_eq!(decided_by_mode(), 0, "{mode}: redis decides");

    // Down.
    server.kill();
    let limiter = while_down(limiter, now).await;
    assert!(!limiter.healthy());
    assert_eq!(sample(&metrics, "tollgate_redis_up") as i64, 0);
    assert_eq!(
        redis_errors(&metrics),
        1,
        "one failed call, then none tried"
    );
    // Still down after a few probes: calls still answer at once.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!limiter.healthy());
    let started = Instant::now();
    for _ in 0..100 {
        let _ = limiter.admit(std::slice::from_ref(&up), now).await;
    }
    assert!(
        started.elapsed() < HANG,
        "100 calls took {:?}",
        started.elapsed()
    );
    let while_down = decided_by_mode();
    assert!(
        while_down >= 100,
        "{mode}: {while_down} decided by the failure mode"
    );

    // Up again: the probe notices, and Redis enforces limits again, with its scripts
    // loaded anew (the restarted server has none).
    server.restart().await;
    assert!(!script_loaded(&server).await);
    wait_until("redis healthy again", || limiter.healthy()).await;
    assert_eq!(sample(&metrics, "tollgate_redis_up") as i64, 1);
    let again = demand("k:again:rpm", 60, 3, 1);
    let now = now_ms();
    assert_eq!(admit_n(&limiter, &again, now, 5).await, 3);
    assert_eq!(decided_by_mode(), while_down, "{mode}: redis decides again");
    let o = limiter
        .admit(std::slice::from_ref(&again), now)
        .await
        .unwrap();
    assert!(!o.admitted);
    assert_eq!(o.views.len(), 1, "views come from redis");
    assert!(script_loaded(&server).await);
    assert!(limiter.healthy());
    assert_eq!(redis_errors(&metrics), 1);
}

#[tokio::test]
async fn open_admits_everything_while_redis_is_down() {
    failover("open", |limiter, now| async move {
        let d = demand("k:down:rpm", 60, 10, 1);
        for _ in 0..20 {
            let started = Instant::now();
            let o = limiter.admit(std::slice::from_ref(&d), now).await.unwrap();
            assert!(started.elapsed() < HANG);
            assert!(o.admitted);
            assert!(o.views.is_empty(), "no bucket consulted: no headers");
        }
        let started = Instant::now();
        limiter.settle("never-admitted", 5, now).await;
        assert!(started.elapsed() < HANG);
        limiter
    })
    .await;
}

#[tokio::test]
async fn closed_refuses_everything_while_redis_is_down() {
    failover("closed", |limiter, now| async move {
        let d = demand("k:down:rpm", 60, 10, 1);
        for _ in 0..20 {
            let started = Instant::now();
            let r = limiter.admit(std::slice::from_ref(&d), now).await;
            assert!(started.elapsed() < HANG);
            assert!(matches!(r, Err(CountError::Closed)), "{r:?}");
        }
        // Corrections are dropped, not failed.
        limiter.settle("never-admitted", 5, now).await;
        limiter
    })
    .await;
}

#[tokio::test]
async fn local_enforces_each_replicas_share_while_redis_is_down() {
    failover("local", |limiter, now| async move {
        // Burst 10 shared by 2 replicas: 5 here.
        let d = demand("k:down:rpm", 60, 10, 1);
        assert_eq!(admit_n(&limiter, &d, now, 10).await, 5);
        let o = limiter.admit(std::slice::from_ref(&d), now).await.unwrap();
        assert!(!o.admitted);
        assert_eq!(o.views[0].limit, 30);
        assert_eq!(o.views[0].retry_after_ms, 2_000);
        // Corrections apply to the local buckets, with the same share.
        let tpm = demand("k:down:tpm", 600, 1_000, 100);
        assert!(
            limiter
                .admit_as("tpm-local", std::slice::from_ref(&tpm), now)
                .await
                .unwrap()
                .admitted
        );
        // It used 400 tokens, 300 more than it took.
        limiter.settle("tpm-local", 400, now).await;
        let o = limiter
            .admit(&[demand("k:down:tpm", 600, 1_000, 200)], now)
            .await
            .unwrap();
        assert!(!o.admitted);
        assert_eq!((o.views[0].limit, o.views[0].remaining), (300, 100));
        limiter
    })
    .await;
}

/// A decision is one round trip: one EVALSHA, no PING, no script load once loaded.
#[tokio::test]
async fn an_admit_is_one_evalsha() {
    let server = RedisServer::start().await;
    let limiter = Limiter::redis(&config(&server.url(), "closed"), Metrics::new()).await;
    let d = demand("k:rt:rpm", 60, 100, 1);
    let now = now_ms();
    // The first call loads the script.
    assert!(
        limiter
            .admit(std::slice::from_ref(&d), now)
            .await
            .unwrap()
            .admitted
    );
    let mut conn = server.connect().await.unwrap();
    let before = command_calls(&mut conn).await;
    for _ in 0..20 {
        assert!(
            limiter
                .admit(std::slice::from_ref(&d), now)
                .await
                .unwrap()
                .admitted
        );
    }
    let after = command_calls(&mut conn).await;
    let delta = |name: &str| after(name) - before(name);
    assert_eq!(delta("evalsha"), 20);
    assert_eq!(delta("ping"), 0);
    assert_eq!(delta("script|load"), 0);
    assert_eq!(delta("eval"), 0);
}

/// A decision with rate limits and budgets together is one round trip as well: one
/// EVALSHA takes the buckets and reserves on the budgets (once each budget's spend has been
/// read from the store).
#[tokio::test]
async fn buckets_and_budgets_together_are_one_evalsha() {
    let server = RedisServer::start().await;
    let limiter = Limiter::redis(&config(&server.url(), "closed"), Metrics::new()).await;
    let charge = |kind, id: &str| tollgate::budget::Charge {
        kind,
        id: id.to_owned(),
        limit_usd: 1_000.0,
        duration: None,
    };
    let reservation = |_: usize| Reservation {
        demands: vec![
            demand("k:both:rpm", 60, 100, 1),
            demand("k:both:tpm", 6_000, 100_000, 500),
            demand("t:both:tpm", 6_000, 100_000, 500),
        ],
        charges: vec![
            charge(tollgate::store::SpendKind::Key, "both"),
            charge(tollgate::store::SpendKind::Team, "both-team"),
        ],
        amount_usd: 0.5,
        slots: Vec::new(),
    };
    let now = now_ms();
    let first = limiter
        .counters
        .take("first", &reservation(0), now)
        .await
        .unwrap();
    assert!(matches!(first, Taken::Admitted(_)), "{first:?}");
    // MONITOR prints every command the server runs, those a script runs marked `[0 lua]`:
    // what is left is what clients sent.
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let taken = limiter
            .counters
            .take(&format!("req-{i}"), &reservation(i), now)
            .await
            .unwrap();
        let Taken::Admitted(outcome) = taken else {
            panic!("{taken:?}");
        };
        assert_eq!(outcome.views.len(), 3);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.kill().unwrap();
    let output = monitor.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&output.stdout);
    let sent: Vec<&str> = seen
        .lines()
        .filter(|line| line.contains("] \"") && !line.contains("[0 lua]"))
        .collect();
    assert_eq!(sent.len(), 20, "{sent:#?}");
    assert!(
        sent.iter()
            .all(|line| line.contains("\"EVALSHA\"") || line.contains("\"evalsha\"")),
        "{sent:#?}"
    );
    let scripted = seen.lines().filter(|line| line.contains("[0 lua]")).count();
    assert!(
        scripted > 20,
        "the scripts did the work: {scripted} commands"
    );
    // What they hold is in Redis: 21 reservations of $0.5 on each budget.
    assert_eq!(
        limiter
            .counters
            .shared_view(tollgate::store::SpendKind::Team, "both-team", now / 1000)
            .await
            .unwrap(),
        Some((0.0, 10.5))
    );
}

/// `calls` per command from INFO commandstats.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> impl Fn(&str) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let calls: std::collections::HashMap<String, i64> = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect();
    move |name| calls.get(name).copied().unwrap_or(0)
}

/// With Redis never reachable, the first call fails within the timeout and the rest do not
/// wait at all.
#[tokio::test]
async fn an_unreachable_redis_never_makes_a_call_wait() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let metrics = Metrics::new();
    let limiter = Limiter::redis(
        &config(&format!("redis://user:hunter2@127.0.0.1:{port}"), "closed"),
        metrics.clone(),
    )
    .await;
    let d = demand("k:never:rpm", 60, 10, 1);
    let started = Instant::now();
    match limiter.admit(std::slice::from_ref(&d), now_ms()).await {
        Err(CountError::Closed) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < HANG);
    assert!(!limiter.healthy());
    let started = Instant::now();
    for _ in 0..1_000 {
        assert!(limiter
            .admit(std::slice::from_ref(&d), now_ms())
            .await
            .is_err());
    }
    assert!(started.elapsed() < HANG);
    assert_eq!(redis_errors(&metrics), 1);
}
