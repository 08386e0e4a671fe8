//! Usage records, the spend they accrue, the daily rollup, and usage reports
//! ([`UsageStore`]).
//!
//! A batch ([`UsageStore::record_new_usage`]) is written in one transaction, in a handful of
//! statements whatever its size:
//! 1. the records, first of each request id, in request id order, as multi-row
//!    `INSERT … ON CONFLICT (request_id) DO NOTHING RETURNING request_id`: what comes back is
//!    exactly what was new (a request id already stored, by this batch or another, is not);
//! 2. the spend basis (`budget_duration`, `created_at`) of every key, user and team of the
//!    new records, one `SELECT … WHERE id IN (…)` per kind;
//! 3. the new records' sums per (day, key, user, team, model), upserted into `usage_daily`;
//! 4. their cost per (entity, period), upserted into `spend`.
//!
//! Rows are written in one order (sorted) in every step, so concurrent batches wait on each
//! other instead of deadlocking on Postgres. Statements carry at most [`MAX_ROWS`] rows, in
//! chunks of a power of two rows, so each connection prepares a few statement texts once
//! (and SQLite's bound-parameter limit is never reached).
//!
//! Reports are answered from `usage_daily` for the whole UTC days of their range, and from
//! the raw records for the parts of days at its edges, so they equal an aggregation over
//! the raw records. Raw records older than `usage.retention` are deleted
//! ([`UsageStore::prune_usage`]); a day whose raw records are pruned is answered whole from
//! the rollup. Usage is not audited: it is not an admin write.

use super::{col, commit, db_err, opt_enum_col, Backend, SqlStore};
use crate::domain::{self, BudgetDuration, Timestamp};
use crate::store::{
    EntityBudget, GroupBy, SpendKind, StoreError, StoreResult, UsageQuery, UsageReport, UsageRow,
    UsageStore,
};
use crate::usage::{period, UsageRecord, UsageSource};
use async_trait::async_trait;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Most rows in one multi-row statement: 16 parameters each, 16,384 in all, below both
/// SQLite's (32,766) and Postgres' (65,535) limit on bound parameters.
const MAX_ROWS: usize = 1024;

const USAGE_COLUMNS: &str = "INSERT INTO usage_records (request_id, at, key_id, user_id, \
     team_id, model, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, \
     cost_usd, status, latency_ms, estimated, source, written_at, org_id) VALUES ";
const USAGE_CONFLICT: &str = " ON CONFLICT (request_id) DO NOTHING RETURNING request_id";

const ROLLUP_COLUMNS: &str = "INSERT INTO usage_daily (day, key_id, user_id, team_id, model, \
     requests, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, \
     org_id) VALUES ";
/// Sums saturate at `i64::MAX` (counts are stored saturated too), so no sum can fail a
/// batch, which would then be retried for ever.
const ROLLUP_CONFLICT: &str = " ON CONFLICT (day, key_id, user_id, team_id, model) DO UPDATE SET \
     requests = usage_daily.requests + excluded.requests, \
     input_tokens = CASE WHEN usage_daily.input_tokens > 9223372036854775807 - excluded.input_tokens \
     THEN 9223372036854775807 ELSE usage_daily.input_tokens + excluded.input_tokens END, \
     output_tokens = CASE WHEN usage_daily.output_tokens > 9223372036854775807 - excluded.output_tokens \
     THEN 9223372036854775807 ELSE usage_daily.output_tokens + excluded.output_tokens END, \
     cached_input_tokens = CASE WHEN usage_daily.cached_input_tokens > 9223372036854775807 - excluded.cached_input_tokens \
     THEN 9223372036854775807 ELSE usage_daily.cached_input_tokens + excluded.cached_input_tokens END, \
     reasoning_tokens = CASE WHEN usage_daily.reasoning_tokens > 9223372036854775807 - excluded.reasoning_tokens \
     THEN 9223372036854775807 ELSE usage_daily.reasoning_tokens + excluded.reasoning_tokens END, \
     cost_usd = usage_daily.cost_usd + excluded.cost_usd";

/// Adds to a period's spend; a period whose end moved (the entity's `budget_duration`
/// changed) keeps the later end.
const SPEND_COLUMNS: &str = "INSERT INTO spend \
     (entity_kind, entity_id, period_start, period_end, spend_usd) VALUES ";
const SPEND_CONFLICT: &str = " ON CONFLICT (entity_kind, entity_id, period_start) DO UPDATE SET \
     spend_usd = spend.spend_usd + excluded.spend_usd, \
     period_end = CASE WHEN excluded.period_end > spend.period_end \
     THEN excluded.period_end ELSE spend.period_end END";

fn source_text(source: UsageSource) -> &'static str {
    match source {
        UsageSource::ExtProc => "ext_proc",
        UsageSource::AccessLog => "access_log",
    }
}

/// A count as stored: BIGINT, so counts above `i64::MAX` (never real) are stored as the max.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn validate_record(record: &UsageRecord) -> StoreResult<()> {
    if record.request_id.is_empty() {
        return Err(StoreError::Invalid(
            "a usage record needs a request_id".to_string(),
        ));
    }
    if !record.cost_usd.is_finite() || record.cost_usd < 0.0 {
        return Err(StoreError::Invalid(format!(
            "usage record {}: cost_usd must be a finite, non-negative number",
            record.request_id
        )));
    }
    Ok(())
}

/// The sizes of the statements that write `n` rows: [`MAX_ROWS`] as often as it fits, then
/// the powers of two that make up the rest, largest first.
fn chunk_sizes(n: usize) -> impl Iterator<Item = usize> {
    let full = n / MAX_ROWS;
    let rest = n % MAX_ROWS;
    std::iter::repeat_n(MAX_ROWS, full).chain(
        (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// `items` cut in [`chunk_sizes`], in order.
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    chunk_sizes(items.len()).map(move |size| {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        chunk
    })
}

/// The `n`th (from 1) bound parameter: `$n` on Postgres, `?` on SQLite, where each `?` takes
/// the next argument. SQLite finds a numbered parameter by a linear search of the
/// statement's names, so binding a statement of `n` numbered parameters costs `n²`: a
/// 16,384-parameter batch spent most of its time there.
fn param(sql: &mut String, backend: Backend, n: usize) {
    match backend {
        Backend::Postgres => {
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        Backend::Sqlite => sql.push('?'),
    }
}

/// `{head}($1, …, $width), (…), …{tail}` for `rows` rows ([`param`]s).
fn multi_row(backend: Backend, head: &str, width: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * width * 7);
    sql.push_str(head);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            param(&mut sql, backend, row * width + column + 1);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// `$1, $2, …, $n` ([`param`]s).
fn placeholders(backend: Backend, n: usize) -> String {
    let mut sql = String::with_capacity(n * 5);
    for i in 1..=n {
        if i > 1 {
            sql.push_str(", ");
        }
        param(&mut sql, backend, i);
    }
    sql
}

/// What an entity's spend periods derive from: its `budget_duration` and `created_at` (the
/// anchor of `30d` windows).
#[derive(Debug, Clone, Copy)]
struct SpendBasis {
    duration: Option<BudgetDuration>,
    anchor: Timestamp,
}

/// The basis of an id without a row: no duration, so calendar months, where the anchor
/// does not matter.
const NO_BASIS: SpendBasis = SpendBasis {
    duration: None,
    anchor: 0,
};

impl SpendBasis {
    /// The period containing `at` (calendar months without a duration).
    fn window(self, at: Timestamp) -> (Timestamp, Timestamp) {
        period::window(period::effective(self.duration), at, self.anchor)
    }

    fn from_row(row: &AnyRow) -> StoreResult<SpendBasis> {
        Ok(SpendBasis {
            duration: opt_enum_col(row, "budget_duration")?,
            anchor: col(row, "created_at")?,
        })
    }
}

fn entity_table(kind: SpendKind) -> &'static str {
    match kind {
        SpendKind::Key => "api_keys",
        SpendKind::User => "users",
        SpendKind::Team => "teams",
        SpendKind::Org => "orgs",
    }
}

/// The rows of the distinct entities of `kind` among `entities`: `SELECT {columns} FROM`
/// the kind's table `WHERE id IN (…){tail}`, one query per [`MAX_ROWS`] ids.
async fn rows_of_kind(
    conn: &mut AnyConnection,
    backend: Backend,
    entities: &[(SpendKind, &str)],
    kind: SpendKind,
    columns: &str,
    tail: &str,
) -> StoreResult<Vec<AnyRow>> {
    let ids: BTreeSet<&str> = entities
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, id)| *id)
        .collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut rows = Vec::new();
    for chunk in chunks(&ids) {
        let sql = format!(
            "SELECT {columns} FROM {} WHERE id IN ({}){tail}",
            entity_table(kind),
            placeholders(backend, chunk.len())
        );
        let mut select = sqlx::query(&sql);
        for id in chunk {
            select = select.bind(*id);
        }
        rows.extend(select.fetch_all(&mut *conn).await.map_err(db_err)?);
    }
    Ok(rows)
}

/// The spend bases of keys, users and teams from their own rows, deleted or not: one
/// `SELECT … WHERE id IN (…)` per kind (and per [`MAX_ROWS`] ids). Ids without a row get
/// [`NO_BASIS`].
async fn spend_bases<'a>(
    conn: &mut AnyConnection,
    backend: Backend,
    entities: &BTreeSet<(SpendKind, &'a str)>,
) -> StoreResult<HashMap<(SpendKind, &'a str), SpendBasis>> {
    let wanted: Vec<(SpendKind, &str)> = entities.iter().copied().collect();
    let mut found: HashMap<(SpendKind, String), SpendBasis> = HashMap::with_capacity(wanted.len());
    for kind in [
        SpendKind::Key,
        SpendKind::User,
        SpendKind::Team,
        SpendKind::Org,
    ] {
        let columns = "id, budget_duration, created_at";
        for row in rows_of_kind(conn, backend, &wanted, kind, columns, "").await? {
            found.insert((kind, col(&row, "id")?), SpendBasis::from_row(&row)?);
        }
    }
    let bases = wanted
        .into_iter()
        .map(|(kind, id)| {
            let basis = found
                .get(&(kind, id.to_owned()))
                .copied()
                .unwrap_or(NO_BASIS);
            ((kind, id), basis)
        })
        .collect();
    Ok(bases)
}

/// One group of the daily rollup: a day and who and what the records were of (`""` for
/// none, as [`crate::store::NO_GROUP`]).
type DayGroup<'a> = (i64, &'a str, &'a str, &'a str, &'a str);

/// The sums of a [`DayGroup`].
#[derive(Debug, Default, Clone, Copy)]
struct DaySums {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_input_tokens: i64,
    reasoning_tokens: i64,
    cost_usd: f64,
}

impl DaySums {
    fn add(&mut self, record: &UsageRecord) {
        let t = &record.tokens;
        self.requests += 1;
        self.input_tokens = self.input_tokens.saturating_add(count(t.input_tokens));
        self.output_tokens = self.output_tokens.saturating_add(count(t.output_tokens));
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(count(t.cached_input_tokens));
        self.reasoning_tokens = self
            .reasoning_tokens
            .saturating_add(count(t.reasoning_tokens));
        self.cost_usd += record.cost_usd;
    }
}

/// The UTC day (days since 1970-01-01) of a moment.
fn day_of(at: Timestamp) -> i64 {
    at.div_euclid(period::DAY)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn day_text(day: i64) -> String {
    day.checked_mul(period::DAY)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

/// A non-negative BIGINT aggregate as a count.
fn count_col(row: &AnyRow, name: &str) -> StoreResult<u64> {
    let n: Option<i64> = col(row, name)?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// A bound parameter of a report query.
enum Param {
    Text(String),
    Int(i64),
}

/// Where a report reads: raw records over ranges of `at`, or the rollup over a range of
/// days.
enum Source {
    /// `usage_records` with `from <= at <= to` (either bound may be open).
    Raw {
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    },
    /// `usage_daily` with `from <= day <= to` (either bound may be open).
    Daily { from: Option<i64>, to: Option<i64> },
}

/// The sort key of a report row: days by number, the rest by the group's bytes.
type SortKey = (i64, String);

impl SqlStore {
    /// The groups of one source, with the query's owner filters, added into `groups`.
    async fn aggregate_into(
        &self,
        query: &UsageQuery,
        source: Source,
        groups: &mut BTreeMap<SortKey, UsageRow>,
    ) -> StoreResult<()> {
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut add = |condition: &str, param: Param| {
            params.push(param);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        let (table, time_column, from, to) = match source {
            Source::Raw { from, to } => ("usage_records", "at", from, to),
            Source::Daily { from, to } => ("usage_daily", "day", from, to),
        };
        if let Some(from) = from {
            add(&format!("{time_column} >="), Param::Int(from));
        }
        if let Some(to) = to {
            add(&format!("{time_column} <="), Param::Int(to));
        }
        if let Some(user_id) = &query.user_id {
            add("user_id =", Param::Text(user_id.clone()));
        }
        if let Some(key_id) = &query.key_id {
            add("key_id =", Param::Text(key_id.clone()));
        }
        if let Some(team_id) = &query.team_id {
            add("team_id =", Param::Text(team_id.clone()));
        }
        if let Some(org_id) = &query.org_id {
            add("org_id =", Param::Text(org_id.clone()));
        }
        let daily = table == "usage_daily";
        // Records without an owner or model fall in the NO_GROUP ("") group; the rollup
        // keeps them as "" already. Days are numbered in SQL (floor division, the same on
        // both backends, also before 1970) and formatted here.
        let group = match (query.group_by, daily) {
            (GroupBy::Key, false) => "COALESCE(key_id, '')",
            (GroupBy::User, false) => "COALESCE(user_id, '')",
            (GroupBy::Team, false) => "COALESCE(team_id, '')",
            (GroupBy::Org, false) => "COALESCE(org_id, '')",
            (GroupBy::Model, false) => "COALESCE(model, '')",
            (GroupBy::Day, false) => "(at - ((at % 86400) + 86400) % 86400) / 86400",
            (GroupBy::Key, true) => "key_id",
            (GroupBy::User, true) => "user_id",
            (GroupBy::Team, true) => "team_id",
            (GroupBy::Org, true) => "org_id",
            (GroupBy::Model, true) => "model",
            (GroupBy::Day, true) => "day",
        };
        let requests = if daily {
            "CAST(COALESCE(SUM(requests), 0) AS BIGINT)"
        } else {
            "COUNT(*)"
        };
        let mut sql = format!(
            "SELECT {group} AS grp, {requests} AS requests, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_sum, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_sum, \
             COALESCE(SUM(cost_usd), 0.0) AS cost_sum FROM {table}"
        );
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" GROUP BY {group}"));
        let mut select = sqlx::query(&sql);
        for param in params {
            select = match param {
                Param::Text(text) => select.bind(text),
                Param::Int(int) => select.bind(int),
            };
        }
        let rows = select.fetch_all(&self.pool).await.map_err(db_err)?;
        for row in &rows {
            let (sort, group) = match query.group_by {
                GroupBy::Day => {
                    let day: i64 = col(row, "grp")?;
                    ((day, String::new()), day_text(day))
                }
                _ => {
                    let group: String = col(row, "grp")?;
                    ((0, group.clone()), group)
                }
            };
            let slot = groups.entry(sort).or_insert_with(|| UsageRow {
                group,
                requests: 0,
                input_tokens: 0,
                output_tokens: 0,
                cost_usd: 0.0,
            });
            slot.requests += count_col(row, "requests")?;
            slot.input_tokens += count_col(row, "input_sum")?;
            slot.output_tokens += count_col(row, "output_sum")?;
            slot.cost_usd += col::<Option<f64>>(row, "cost_sum")?.unwrap_or(0.0);
        }
        Ok(())
    }

    /// The first day whose raw records are all still stored: days before it were pruned
    /// ([`UsageStore::prune_usage`]) and live in the rollup only.
    async fn first_raw_day(&self) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT pruned_before FROM usage_retention WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|row| col::<i64>(&row, "pruned_before").map(day_of))
            .transpose()
    }
}

/// Where a report over `since ..= until` reads: the rollup for the days it covers whole,
/// the raw records for the parts of days at its edges (`pruned`: days before this one have
/// no raw records left, so they are read whole from the rollup).
fn plan(since: Option<Timestamp>, until: Option<Timestamp>, pruned: Option<i64>) -> Vec<Source> {
    let is_pruned = |day: i64| pruned.is_some_and(|first| day < first);
    // Bounds of a day, saturating at the ends of time.
    let start = |day: i64| day.saturating_mul(period::DAY);
    let end = |day: i64| start(day.saturating_add(1)).saturating_sub(1);
    // The first and last days read from the rollup, and the edges read raw.
    let (mut first, mut lower) = (None, None);
    if let Some(since) = since {
        let day = day_of(since);
        if since == start(day) || is_pruned(day) {
            first = Some(day);
        } else {
            first = Some(day + 1);
            lower = Some((since, end(day)));
        }
    }
    let (mut last, mut upper) = (None, None);
    if let Some(until) = until {
        let day = day_of(until);
        if until == end(day) || is_pruned(day) {
            last = Some(day);
        } else {
            last = Some(day - 1);
            upper = Some((start(day), until));
        }
    }
    let mut sources = Vec::with_capacity(3);
    if first.zip(last).is_none_or(|(first, last)| first <= last) {
        sources.push(Source::Daily {
            from: first,
            to: last,
        });
    }
    match (lower, upper) {
        // Both edges in one day: that part of it, once.
        (Some((from, _)), Some((_, to))) if day_of(from) == day_of(to) => {
            sources.push(Source::Raw {
                from: Some(from),
                to: Some(to),
            });
        }
        (lower, upper) => {
            for (from, to) in lower.into_iter().chain(upper) {
                sources.push(Source::Raw {
                    from: Some(from),
                    to: Some(to),
                });
            }
        }
    }
    sources
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn assign_orgs(&self, records: &mut [UsageRecord]) -> StoreResult<()> {
        let wanted: Vec<(SpendKind, &str)> = records
            .iter()
            .filter(|r| r.org_id.is_none())
            .flat_map(|r| {
                [
                    r.team_id.as_deref().map(|id| (SpendKind::Team, id)),
                    r.user_id.as_deref().map(|id| (SpendKind::User, id)),
                ]
            })
            .flatten()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut orgs: HashMap<(SpendKind, String), String> = HashMap::new();
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        for kind in [SpendKind::Team, SpendKind::User] {
            let columns = "id, org_id";
            let tail = " AND org_id IS NOT NULL";
            for row in rows_of_kind(&mut conn, self.backend, &wanted, kind, columns, tail).await? {
                orgs.insert((kind, col(&row, "id")?), col(&row, "org_id")?);
            }
        }
        drop(conn);
        for record in records.iter_mut().filter(|r| r.org_id.is_none()) {
            let of = |kind: SpendKind, id: &Option<String>| {
                id.as_ref()
                    .and_then(|id| orgs.get(&(kind, id.clone())))
                    .cloned()
            };
            record.org_id = of(SpendKind::Team, &record.team_id)
                .or_else(|| of(SpendKind::User, &record.user_id));
        }
        Ok(())
    }

    async fn record_new_usage(&self, records: &[UsageRecord]) -> StoreResult<Vec<usize>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        for record in records {
            validate_record(record)?;
        }
        // The first record of each request id, in request id order (a stable sort, so the
        // first of duplicates is kept), so that concurrent batches wait on each other's ids
        // in one order instead of deadlocking.
        let mut ordered: Vec<(usize, &UsageRecord)> = records.iter().enumerate().collect();
        ordered.sort_by(|a, b| a.1.request_id.cmp(&b.1.request_id));
        ordered.dedup_by(|later, first| later.1.request_id == first.1.request_id);

        let written_at = domain::now();
        let mut tx = self.begin_write().await?;
        let mut new: Vec<(usize, &UsageRecord)> = Vec::with_capacity(ordered.len());
        for chunk in chunks(&ordered) {
            let sql = multi_row(self.backend, USAGE_COLUMNS, 17, chunk.len(), USAGE_CONFLICT);
            let mut insert = sqlx::query(&sql);
            for (_, record) in chunk {
                insert = bind_record(insert, record, written_at);
            }
            let rows = insert.fetch_all(&mut *tx).await.map_err(db_err)?;
            let mut inserted: HashSet<String> = HashSet::with_capacity(rows.len());
            for row in &rows {
                inserted.insert(col(row, "request_id")?);
            }
            new.extend(
                chunk
                    .iter()
                    .filter(|(_, record)| inserted.contains(&record.request_id)),
            );
        }

        // Sums of the new records per day and owner, and their cost per (entity, period),
        // both added in request id order and written sorted.
        let mut daily: BTreeMap<DayGroup, DaySums> = BTreeMap::new();
        // The org of each group (its key, user and team determine it; the first record's).
        let mut daily_orgs: HashMap<DayGroup, &str> = HashMap::new();
        let mut payers: BTreeSet<(SpendKind, &str)> = BTreeSet::new();
        for (_, record) in &new {
            let group = (
                day_of(record.at),
                record.key_id.as_deref().unwrap_or(""),
                record.user_id.as_deref().unwrap_or(""),
                record.team_id.as_deref().unwrap_or(""),
                record.model.as_deref().unwrap_or(""),
            );
            daily.entry(group).or_default().add(record);
            daily_orgs
                .entry(group)
                .or_insert(record.org_id.as_deref().unwrap_or(""));
            payers.extend(crate::admission::payers::of_record(record));
        }
        let bases = spend_bases(&mut tx, self.backend, &payers).await?;
        // (kind, id, period start) → (period end, USD).
        let mut accrued: BTreeMap<(SpendKind, &str, Timestamp), (Timestamp, f64)> = BTreeMap::new();
        for (_, record) in &new {
            for payer in crate::admission::payers::of_record(record) {
                let basis = bases.get(&payer).copied().unwrap_or(NO_BASIS);
                let (start, end) = basis.window(record.at);
                let slot = accrued
                    .entry((payer.0, payer.1, start))
                    .or_insert((end, 0.0));
                slot.1 += record.cost_usd;
            }
        }

        let daily: Vec<(DayGroup, DaySums)> = daily.into_iter().collect();
        for chunk in chunks(&daily) {
            let sql = multi_row(
                self.backend,
                ROLLUP_COLUMNS,
                12,
                chunk.len(),
                ROLLUP_CONFLICT,
            );
            let mut upsert = sqlx::query(&sql);
            for ((day, key, user, team, model), sums) in chunk {
                upsert = upsert
                    .bind(*day)
                    .bind(*key)
                    .bind(*user)
                    .bind(*team)
                    .bind(*model)
                    .bind(sums.requests)
                    .bind(sums.input_tokens)
                    .bind(sums.output_tokens)
                    .bind(sums.cached_input_tokens)
                    .bind(sums.reasoning_tokens)
                    .bind(sums.cost_usd)
                    .bind(
                        daily_orgs
                            .get(&(*day, *key, *user, *team, *model))
                            .copied()
                            .unwrap_or(""),
                    );
            }
            upsert.execute(&mut *tx).await.map_err(db_err)?;
        }

        let spend: Vec<_> = accrued
            .into_iter()
            .filter(|(_, (_, usd))| *usd != 0.0)
            .collect();
        for chunk in chunks(&spend) {
            let sql = multi_row(self.backend, SPEND_COLUMNS, 5, chunk.len(), SPEND_CONFLICT);
            let mut upsert = sqlx::query(&sql);
            for ((kind, id, start), (end, usd)) in chunk {
                upsert = upsert
                    .bind(kind.as_str())
                    .bind(*id)
                    .bind(*start)
                    .bind(*end)
                    .bind(*usd);
            }
            upsert.execute(&mut *tx).await.map_err(db_err)?;
        }
        commit(tx).await?;
        let mut positions: Vec<usize> = new.into_iter().map(|(position, _)| position).collect();
        positions.sort_unstable();
        Ok(positions)
    }

    async fn current_spend(&self, kind: SpendKind, id: &str, at: Timestamp) -> StoreResult<f64> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let bases = spend_bases(&mut conn, self.backend, &BTreeSet::from([(kind, id)])).await?;
        let basis = bases.get(&(kind, id)).copied().unwrap_or(NO_BASIS);
        let (start, end) = basis.window(at);
        let row = sqlx::query(
            "SELECT COALESCE(SUM(spend_usd), 0.0) AS spend FROM spend \
             WHERE entity_kind = $1 AND entity_id = $2 AND period_start >= $3 \
             AND period_start < $4",
        )
        .bind(kind.as_str())
        .bind(id)
        .bind(start)
        .bind(end)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
        Ok(col::<Option<f64>>(&row, "spend")?.unwrap_or(0.0))
    }

    async fn current_spends(
        &self,
        entities: &[(SpendKind, &str)],
        at: Timestamp,
    ) -> StoreResult<Vec<f64>> {
        let wanted: BTreeSet<(SpendKind, &str)> = entities.iter().copied().collect();
        let bases = {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            spend_bases(&mut conn, self.backend, &wanted).await?
        };
        let periods: Vec<(SpendKind, &str, Timestamp, Timestamp)> = entities
            .iter()
            .map(|&(kind, id)| {
                let basis = bases.get(&(kind, id)).copied().unwrap_or(NO_BASIS);
                let (start, end) = basis.window(at);
                (kind, id, start, end)
            })
            .collect();
        self.spends(&periods).await
    }

    async fn usage_report(&self, query: UsageQuery) -> StoreResult<UsageReport> {
        if let (Some(since), Some(until)) = (query.since, query.until) {
            if since > until {
                return Ok(UsageReport::default());
            }
        }
        // The rollup keeps "no owner" as "", so a filter on the empty id (which only a raw
        // record with an empty id matches) is answered from the raw records.
        let empty_filter = [&query.user_id, &query.key_id, &query.team_id, &query.org_id]
            .into_iter()
            .any(|id| id.as_deref() == Some(""));
        let sources = if empty_filter {
            vec![Source::Raw {
                from: query.since,
                to: query.until,
            }]
        } else {
            plan(query.since, query.until, self.first_raw_day().await?)
        };
        // Sorted here, not by ORDER BY: Postgres orders text by its collation, SQLite by
        // bytes, and days must sort by number before they become text.
        let mut groups: BTreeMap<SortKey, UsageRow> = BTreeMap::new();
        for source in sources {
            self.aggregate_into(&query, source, &mut groups).await?;
        }
        Ok(UsageReport::from_rows(groups.into_values().collect()))
    }

    async fn budgets(
        &self,
        entities: &[(SpendKind, &str)],
    ) -> StoreResult<Vec<Option<EntityBudget>>> {
        let mut found: HashMap<(SpendKind, String), EntityBudget> = HashMap::new();
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        for kind in [
            SpendKind::Key,
            SpendKind::User,
            SpendKind::Team,
            SpendKind::Org,
        ] {
            // Revoked keys still have a budget (their late usage counts); deleted users and
            // teams do not.
            let live = match kind {
                SpendKind::Key => "",
                SpendKind::User | SpendKind::Team | SpendKind::Org => " AND deleted_at IS NULL",
            };
            let columns = "id, max_budget, budget_duration, created_at";
            let rows = rows_of_kind(&mut conn, self.backend, entities, kind, columns, live).await?;
            for row in rows {
                let Some(budget_usd) = col::<Option<f64>>(&row, "max_budget")? else {
                    continue;
                };
                found.insert(
                    (kind, col(&row, "id")?),
                    EntityBudget {
                        budget_usd,
                        duration: opt_enum_col(&row, "budget_duration")?,
                        anchor: col(&row, "created_at")?,
                    },
                );
            }
        }
        Ok(entities
            .iter()
            .map(|(kind, id)| found.get(&(*kind, (*id).to_string())).copied())
            .collect())
    }

    async fn names(
        &self,
        entities: &[(SpendKind, &str)],
    ) -> StoreResult<HashMap<(SpendKind, String), String>> {
        let mut found = HashMap::with_capacity(entities.len());
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        for kind in [
            SpendKind::Key,
            SpendKind::User,
            SpendKind::Team,
            SpendKind::Org,
        ] {
            let (columns, live) = match kind {
                SpendKind::Key => ("id, name", ""),
                SpendKind::User => ("id, username AS name", " AND deleted_at IS NULL"),
                SpendKind::Team | SpendKind::Org => ("id, name", " AND deleted_at IS NULL"),
            };
            let rows = rows_of_kind(&mut conn, self.backend, entities, kind, columns, live).await?;
            for row in rows {
                found.insert((kind, col(&row, "id")?), col(&row, "name")?);
            }
        }
        Ok(found)
    }

    async fn spends(
        &self,
        periods: &[(SpendKind, &str, Timestamp, Timestamp)],
    ) -> StoreResult<Vec<f64>> {
        let mut spends = vec![0.0; periods.len()];
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let numbered: Vec<(usize, &(SpendKind, &str, Timestamp, Timestamp))> =
            periods.iter().enumerate().collect();
        for chunk in chunks(&numbered) {
            let sql = multi_row(
                self.backend,
                "WITH wanted (i, kind, id, start_at, end_at) AS (VALUES ",
                5,
                chunk.len(),
                ") SELECT wanted.i AS i, COALESCE(SUM(spend.spend_usd), 0.0) AS spend \
                 FROM wanted JOIN spend ON spend.entity_kind = wanted.kind \
                 AND spend.entity_id = wanted.id AND spend.period_start >= wanted.start_at \
                 AND spend.period_start < wanted.end_at GROUP BY wanted.i",
            );
            let mut select = sqlx::query(&sql);
            for (i, (kind, id, start, end)) in chunk {
                select = select
                    .bind(i64::try_from(*i).unwrap_or(i64::MAX))
                    .bind(kind.as_str())
                    .bind(*id)
                    .bind(*start)
                    .bind(*end);
            }
            for row in select.fetch_all(&mut *conn).await.map_err(db_err)? {
                let i: i64 = col(&row, "i")?;
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| spends.get_mut(i)) {
                    *slot = col::<Option<f64>>(&row, "spend")?.unwrap_or(0.0);
                }
            }
        }
        Ok(spends)
    }

    async fn prune_usage(&self, before: Timestamp, limit: u64) -> StoreResult<u64> {
        let before = day_of(before).saturating_mul(period::DAY);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO usage_retention (id, pruned_before) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET pruned_before = CASE \
             WHEN excluded.pruned_before > usage_retention.pruned_before \
             THEN excluded.pruned_before ELSE usage_retention.pruned_before END",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let deleted = sqlx::query(
            "DELETE FROM usage_records WHERE request_id IN \
             (SELECT request_id FROM usage_records WHERE at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        commit(tx).await?;
        Ok(deleted)
    }
}

/// Binds the 16 columns of a record, in [`USAGE_COLUMNS`] order.
fn bind_record<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    record: &'q UsageRecord,
    written_at: Timestamp,
) -> Query<'q, Any, AnyArguments<'q>> {
    let tokens = &record.tokens;
    query
        .bind(&record.request_id)
        .bind(record.at)
        .bind(record.key_id.as_deref())
        .bind(record.user_id.as_deref())
        .bind(record.team_id.as_deref())
        .bind(record.model.as_deref())
        .bind(count(tokens.input_tokens))
        .bind(count(tokens.output_tokens))
        .bind(count(tokens.cached_input_tokens))
        .bind(count(tokens.reasoning_tokens))
        .bind(record.cost_usd)
        .bind(i64::from(record.status))
        .bind(count(record.latency_ms))
        .bind(record.estimated)
        .bind(source_text(record.source))
        .bind(written_at)
        .bind(record.org_id.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_below_the_cap() {
        let sizes = |n: usize| chunk_sizes(n).collect::<Vec<usize>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(500), vec![256usize, 128, 64, 32, 16, 4]);
        assert_eq!(sizes(2 * MAX_ROWS + 3), vec![MAX_ROWS, MAX_ROWS, 2, 1]);
        let items: Vec<usize> = (0..2051).collect();
        let parts: Vec<&[usize]> = chunks(&items).collect();
        assert_eq!(parts.concat(), items);
    }

    #[test]
    fn multi_row_numbers_parameters_row_by_row() {
        assert_eq!(
            multi_row(
                Backend::Postgres,
                "INSERT INTO t (a, b) VALUES ",
                2,
                2,
                " RETURNING a"
            ),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING a"
        );
        assert_eq!(
            multi_row(Backend::Sqlite, "INSERT INTO t (a, b) VALUES ", 2, 2, ""),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(placeholders(Backend::Postgres, 3), "$1, $2, $3");
        assert_eq!(placeholders(Backend::Sqlite, 2), "?, ?");
    }

    fn ranges(sources: &[Source]) -> Vec<String> {
        sources
            .iter()
            .map(|s| match s {
                Source::Raw { from, to } => format!("raw {from:?}..={to:?}"),
                Source::Daily { from, to } => format!("daily {from:?}..={to:?}"),
            })
            .collect()
    }

    fn raw(from: i64, to: i64) -> String {
        format!("raw Some({from})..=Some({to})")
    }

    #[test]
    fn reports_read_whole_days_from_the_rollup_and_edges_raw() {
        const D: i64 = period::DAY;
        // Open ranges: the rollup only.
        assert_eq!(ranges(&plan(None, None, None)), vec!["daily None..=None"]);
        // Day-aligned: the rollup only.
        assert_eq!(
            ranges(&plan(Some(10 * D), Some(12 * D - 1), None)),
            vec!["daily Some(10)..=Some(11)"]
        );
        // Partial days at both ends.
        assert_eq!(
            ranges(&plan(Some(10 * D + 5), Some(12 * D + 7), None)),
            vec![
                "daily Some(11)..=Some(11)".to_string(),
                raw(10 * D + 5, 11 * D - 1),
                raw(12 * D, 12 * D + 7),
            ]
        );
        // Within one day: raw, once.
        assert_eq!(
            ranges(&plan(Some(10 * D + 5), Some(10 * D + 7), None)),
            vec![raw(10 * D + 5, 10 * D + 7)]
        );
        // Two partial adjacent days: no whole day, two raw parts.
        assert_eq!(
            ranges(&plan(Some(10 * D + 5), Some(11 * D + 7), None)),
            vec![raw(10 * D + 5, 11 * D - 1), raw(11 * D, 11 * D + 7)]
        );
        // Before 1970.
        assert_eq!(
            ranges(&plan(Some(-D - 1), None, None)),
            vec!["daily Some(-1)..=None".to_string(), raw(-D - 1, -D - 1)]
        );
        // Days whose raw records were pruned are read whole from the rollup.
        assert_eq!(
            ranges(&plan(Some(10 * D + 5), Some(12 * D + 7), Some(12))),
            vec![
                "daily Some(10)..=Some(11)".to_string(),
                raw(12 * D, 12 * D + 7)
            ]
        );
        assert_eq!(
            ranges(&plan(Some(10 * D + 5), Some(10 * D + 7), Some(11))),
            vec!["daily Some(10)..=Some(10)"]
        );
        // The far ends of time do not overflow.
        assert_eq!(ranges(&plan(Some(i64::MIN), Some(i64::MAX), None)).len(), 2);
    }
}
