//! Usage ingestion and usage reports on Postgres (`TOLLGATE_TEST_POSTGRES`, default the
//! local `test` database; every section works in a schema of its own, dropped afterwards).
//!
//! - `write`: records/s of the store's batch write (`UsageStore::record_new_usage`, records,
//!   spend and the daily rollup in one transaction) at batch sizes 100, 500 and 2000, one
//!   writer, `RECORDS` records each (default 200,000): a few thousand keys (most with a
//!   budget duration in their row), some users and teams, eight models, 2 % duplicates
//!   (within a batch and of earlier batches).
//! - `lag`: the real in-process usage queue and writer of an `App` on Postgres, offered
//!   5,000 records/s for 10 s; the lag of a record is from its push to the moment a poller
//!   (every 2 ms) sees it committed. Prints p50, p99 and max.
//! - `reports`: loads 10,000,000 records over three months with `INSERT … SELECT
//!   generate_series` (secondary indexes built afterwards), builds the daily rollup with the
//!   SQL of migration 0007's backfill, then times `UsageStore::usage_report` for one month
//!   grouped by day, model, team, key and user (best of 3 after a warm-up), next to the same
//!   aggregation over the raw records, and prints the month query's plan.
//!
//! `cargo bench --bench ingest` runs `write` and `lag`; name sections to choose, e.g.
//! `cargo bench --bench ingest -- reports` (`REPORT_RECORDS` changes the 10,000,000).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, Executor, PgConnection};
use std::time::{Duration, Instant};
use tollgate::app::App;
use tollgate::config::Config;
use tollgate::secret::Secret;
use tollgate::store::sql::{ConnectOptions, SqlStore};
use tollgate::store::{GroupBy, Store, UsageQuery, UsageStore};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

const KEYS: usize = 3000;
const USERS: usize = 300;
const TEAMS: usize = 30;
const MODELS: [&str; 8] = [
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "gpt-4.1",
    "claude-sonnet-4",
    "claude-haiku-3.5",
    "text-embedding-3-small",
    "llama-3.1-70b",
];

fn base_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A new schema, and the URL that selects it.
struct Schema {
    name: String,
    url: String,
}

impl Schema {
    async fn new(tag: &str) -> Schema {
        let base = base_url();
        let name = format!("tg_bench_{tag}_{}", std::process::id());
        let mut admin = PgConnection::connect(&base)
            .await
            .expect("the Postgres of TOLLGATE_TEST_POSTGRES");
        admin
            .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}").as_str())
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
        Schema { name, url }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    async fn store(&self) -> SqlStore {
        let store = SqlStore::connect(
            &self.url,
            &ConnectOptions {
                max_connections: 4,
                ..ConnectOptions::default()
            },
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn drop(self) {
        let mut admin = PgConnection::connect(&base_url()).await.unwrap();
        admin
            .execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name).as_str())
            .await
            .unwrap();
    }
}

/// Users, teams and keys with ids `user-N`, `team-N`, `key-N`: durations of every kind, so
/// spend is accrued in every kind of period.
async fn seed_entities(conn: &mut PgConnection) {
    let now = chrono::Utc::now().timestamp();
    let durations = "(ARRAY['1d','7d','30d','1mo',NULL])[1 + g % 5]";
    conn.execute(
        format!(
            "INSERT INTO users (id, username, email, role, budget_duration, max_budget, \
             created_at, updated_at) SELECT 'user-' || g, 'u' || g, 'u' || g || '@example.com', \
             'user', {durations}, 100, {now} - g * 3600, {now} FROM generate_series(0, {}) g",
            USERS - 1
        )
        .as_str(),
    )
    .await
    .unwrap();
    conn.execute(
        format!(
            "INSERT INTO teams (id, name, budget_duration, max_budget, created_at, updated_at) \
             SELECT 'team-' || g, 'team ' || g, {durations}, 1000, {now} - g * 7200, {now} \
             FROM generate_series(0, {}) g",
            TEAMS - 1
        )
        .as_str(),
    )
    .await
    .unwrap();
    conn.execute(
        format!(
            "INSERT INTO api_keys (id, name, key_hash, key_hint, user_id, team_id, \
             budget_duration, max_budget, created_at, updated_at) \
             SELECT 'key-' || g, 'k' || g, md5('key' || g) || md5('hash' || g), 'sk-tg-…', \
             CASE WHEN g % 5 <> 0 THEN 'user-' || (g % {USERS}) END, \
             CASE WHEN g % 3 = 0 THEN 'team-' || (g % {TEAMS}) END, \
             {durations}, 10, {now} - g * 60, {now} FROM generate_series(0, {}) g",
            KEYS - 1
        )
        .as_str(),
    )
    .await
    .unwrap();
}

/// The owners of key `k`, as seeded.
fn owners(k: usize) -> (Option<String>, Option<String>) {
    let user = (!k.is_multiple_of(5)).then(|| format!("user-{}", k % USERS));
    let team = k.is_multiple_of(3).then(|| format!("team-{}", k % TEAMS));
    (user, team)
}

fn record(rng: &mut StdRng, request_id: String, at: i64) -> UsageRecord {
    let k = rng.gen_range(0..KEYS);
    let (user_id, team_id) = owners(k);
    let input = rng.gen_range(10..4000u64);
    let output = rng.gen_range(1..1000u64);
    UsageRecord {
        request_id,
        at,
        key_id: Some(format!("key-{k}")),
        user_id,
        team_id,
        org_id: None,
        model: Some(MODELS[rng.gen_range(0..MODELS.len())].to_owned()),
        tokens: TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: input / 4,
            reasoning_tokens: 0,
        },
        cost_usd: (input * 25 + output * 100) as f64 / 1e7,
        status: 200,
        latency_ms: rng.gen_range(100..5000),
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

/// `n` records in batches of `size`, over the last three days; about 2 % repeat a request
/// id of the same batch or of an earlier one.
fn batches(n: usize, size: usize) -> Vec<Vec<UsageRecord>> {
    let mut rng = StdRng::seed_from_u64(7);
    let now = chrono::Utc::now().timestamp();
    let mut all: Vec<UsageRecord> = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 && rng.gen_bool(0.02) {
            let again = all[rng.gen_range(i.saturating_sub(3 * size)..i)].clone();
            all.push(again);
        } else {
            let at = now - 3 * 86_400 + (i as i64 * 3 * 86_400) / n as i64;
            all.push(record(&mut rng, format!("req-{i:09}"), at));
        }
    }
    all.chunks(size).map(<[UsageRecord]>::to_vec).collect()
}

async fn write_section(n: usize) {
    println!("\n## write: UsageStore::record_new_usage on Postgres, one writer, {n} records");
    println!("| batch size | records/s | ms per batch | new records |");
    println!("| --- | --- | --- | --- |");
    for size in [100, 500, 2000] {
        let schema = Schema::new("write").await;
        let store = schema.store().await;
        seed_entities(&mut schema.connect().await).await;
        let batches = batches(n, size);
        let started = Instant::now();
        let mut new = 0;
        for batch in &batches {
            new += store.record_new_usage(batch).await.unwrap().len();
        }
        let took = started.elapsed();
        println!(
            "| {size} | {:.0} | {:.1} | {new} |",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / batches.len() as f64
        );
        store.close().await;
        schema.drop().await;
    }
}

async fn lag_section(rate: usize, batch_size: usize) {
    const SECONDS: usize = 10;
    const TICK_MS: usize = 10;
    println!(
        "\n## lag: in-process queue + writer on Postgres (usage.batch_size {batch_size}), \
         {rate} records/s for {SECONDS} s"
    );
    let schema = Schema::new("lag").await;
    let mut config = Config::parse_str("bench.yaml", "", &|_| None)
        .unwrap()
        .config;
    config.usage.batch_size = batch_size;
    config.database.url = schema.url.clone();
    config.listen.grpc = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    let app = App::build(config, &Secret::new("bench-master-key-0123456789"))
        .await
        .expect("build");
    seed_entities(&mut schema.connect().await).await;
    let running = app.start().await.expect("start");

    let total = rate * SECONDS;
    let per_tick = rate * TICK_MS / 1000;
    let mut rng = StdRng::seed_from_u64(11);
    let records: Vec<UsageRecord> = (0..total)
        .map(|i| {
            record(
                &mut rng,
                format!("lag-{i:09}"),
                chrono::Utc::now().timestamp(),
            )
        })
        .collect();
    let origin = Instant::now();
    let mut pushed: Vec<u64> = vec![0; total];

    // Commits are seen by polling the highest request id written: the queue is first in,
    // first out with one writer, so everything up to it is committed.
    let poller = {
        let url = schema.url.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let mut seen: Vec<u64> = Vec::with_capacity(total);
            while seen.len() < total {
                let max: Option<String> =
                    sqlx::query_scalar("SELECT max(request_id) FROM usage_records")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                let at = origin.elapsed().as_micros() as u64;
                if let Some(max) = max {
                    let upto: usize = max["lag-".len()..].parse().unwrap();
                    while seen.len() <= upto {
                        seen.push(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (n, chunk) in records.chunks(per_tick).enumerate() {
        tick.tick().await;
        for (i, record) in chunk.iter().enumerate() {
            pushed[n * per_tick + i] = origin.elapsed().as_micros() as u64;
            app.usage.push(record.clone()).await.unwrap();
        }
    }
    let offered = origin.elapsed();
    let seen = poller.await.unwrap();
    let mut lags: Vec<u64> = seen
        .iter()
        .zip(pushed.iter())
        .map(|(seen, pushed)| seen.saturating_sub(*pushed))
        .collect();
    lags.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "offered {total} records in {:.2} s; lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        offered.as_secs_f64(),
        ms(lags[lags.len() / 2]),
        ms(lags[lags.len() * 99 / 100]),
        ms(lags[lags.len() - 1])
    );
    running.shutdown().await.unwrap();
    drop(app);
    schema.drop().await;
}

/// Migration 0007, whose statements after its `-- Backfill` line build the rollup.
const MIGRATION_0007: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/migrations/postgres/0007_usage_daily.sql"
);

async fn reports_section(n: u64) {
    println!("\n## reports: {n} records over 2026-08-01 .. 2026-10-31 on Postgres");
    let schema = Schema::new("reports").await;
    let store = schema.store().await;
    let mut conn = schema.connect().await;
    conn.execute("SET maintenance_work_mem = '512MB'; SET synchronous_commit = off")
        .await
        .unwrap();
    let secondary = [("usage_records_at", "(at)")];
    for (name, _) in secondary {
        conn.execute(format!("DROP INDEX {name}").as_str())
            .await
            .unwrap();
    }
    // 92 days from 2026-08-01T00:00:00Z, spread evenly; keys, owners and models as in the
    // other sections.
    let start = 1_785_542_400i64;
    let span = 92 * 86_400i64;
    let started = Instant::now();
    let chunk = 1_000_000u64;
    let mut from = 0u64;
    while from < n {
        let to = (from + chunk).min(n) - 1;
        conn.execute(
            format!(
                "INSERT INTO usage_records (request_id, at, key_id, user_id, team_id, model, \
                 input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, \
                 status, latency_ms, estimated, source, written_at) \
                 SELECT 'r' || g, {start} + (g * {span}) / {n}, 'key-' || k, \
                 CASE WHEN k % 5 <> 0 THEN 'user-' || (k % {USERS}) END, \
                 CASE WHEN k % 3 = 0 THEN 'team-' || (k % {TEAMS}) END, \
                 (ARRAY['{}'])[(1 + (g * 7 + g / 13) % {})::int], \
                 10 + g % 3990, 1 + g % 997, (10 + g % 3990) / 4, 0, \
                 ((10 + g % 3990) * 25 + (1 + g % 997) * 100) / 1e7, 200, 100 + g % 4900, \
                 false, 'ext_proc', {start} + (g * {span}) / {n} \
                 FROM (SELECT g, (g * 2654435761) % {KEYS} AS k \
                       FROM generate_series({from}::bigint, {to}::bigint) g) s",
                MODELS.join("','"),
                MODELS.len()
            )
            .as_str(),
        )
        .await
        .unwrap();
        from = to + 1;
    }
    let inserted = started.elapsed();
    for (name, columns) in secondary {
        conn.execute(format!("CREATE INDEX {name} ON usage_records {columns}").as_str())
            .await
            .unwrap();
    }
    let indexed = started.elapsed();
    let migration = std::fs::read_to_string(MIGRATION_0007).unwrap_or_default();
    let backfill = migration
        .split_once("-- Backfill")
        .and_then(|(_, rest)| rest.split_once('\n'));
    let rollup = match backfill {
        Some((_, statements)) => {
            conn.execute("TRUNCATE usage_daily").await.unwrap();
            conn.execute(statements).await.unwrap();
            true
        }
        None => false,
    };
    conn.execute("ANALYZE usage_records").await.unwrap();
    if rollup {
        conn.execute("ANALYZE usage_daily").await.unwrap();
    }
    let loaded = started.elapsed();
    println!(
        "load: rows {:.1} s, indexes {:.1} s, rollup {:.1} s, total {:.1} s",
        inserted.as_secs_f64(),
        (indexed - inserted).as_secs_f64(),
        (loaded - indexed).as_secs_f64(),
        loaded.as_secs_f64()
    );
    if rollup {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_daily")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        println!("rollup rows: {rows}");
    }

    let since = 1_790_812_800i64; // 2026-10-01T00:00:00Z
    let until = 1_793_491_199i64; // 2026-10-31T23:59:59Z
    println!("| group_by | rows | store ms (best of 3) | raw aggregation ms |");
    println!("| --- | --- | --- | --- |");
    for group_by in [
        GroupBy::Day,
        GroupBy::Model,
        GroupBy::Team,
        GroupBy::Key,
        GroupBy::User,
    ] {
        let query = UsageQuery {
            since: Some(since),
            until: Some(until),
            ..UsageQuery::new(group_by)
        };
        let mut best = Duration::MAX;
        let mut rows = 0;
        for _ in 0..4 {
            let t = Instant::now();
            let report = store.usage_report(query.clone()).await.unwrap();
            best = best.min(t.elapsed());
            rows = report.data.len();
        }
        let raw = raw_report_ms(&mut conn, group_by, since, until).await;
        println!(
            "| {group_by} | {rows} | {:.1} | {raw:.1} |",
            best.as_secs_f64() * 1000.0
        );
    }
    if rollup {
        let plan: Vec<String> = sqlx::query_scalar(
            format!(
                "EXPLAIN SELECT model AS grp, SUM(requests) FROM usage_daily \
                 WHERE day >= {} AND day <= {} GROUP BY model",
                since / 86_400,
                until / 86_400
            )
            .as_str(),
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        println!("plan of the month query on the rollup (group_by model):");
        for line in plan {
            println!("    {line}");
        }
    }
    store.close().await;
    drop(conn);
    schema.drop().await;
}

/// The aggregation reports made over the raw records before the rollup, for one month.
async fn raw_report_ms(conn: &mut PgConnection, group_by: GroupBy, since: i64, until: i64) -> f64 {
    let group = match group_by {
        GroupBy::Key => "COALESCE(key_id, '')",
        GroupBy::User => "COALESCE(user_id, '')",
        GroupBy::Team => "COALESCE(team_id, '')",
        GroupBy::Org => "COALESCE(org_id, '')",
        GroupBy::Model => "COALESCE(model, '')",
        GroupBy::Day => "(at - ((at % 86400) + 86400) % 86400) / 86400",
    };
    let sql = format!(
        "SELECT {group} AS grp, COUNT(*) AS requests, \
         CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_sum, \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_sum, \
         COALESCE(SUM(cost_usd), 0.0) AS cost_sum FROM usage_records \
         WHERE at >= {since} AND at <= {until} GROUP BY {group}"
    );
    let t = Instant::now();
    conn.execute(sql.as_str()).await.unwrap();
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| {
        if args.is_empty() {
            name != "reports"
        } else {
            args.iter().any(|a| a == name)
        }
    };
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if wants("write") {
            write_section(env("RECORDS", 200_000) as usize).await;
        }
        if wants("lag") {
            let batch_size = env("BATCH_SIZE", 500) as usize;
            for rate in [5000, 20_000] {
                lag_section(rate, batch_size).await;
            }
        }
        if wants("reports") {
            reports_section(env("REPORT_RECORDS", 10_000_000)).await;
        }
    });
}
