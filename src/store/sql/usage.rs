//! Usage records, the spend they accrue, and usage reports ([`UsageStore`]).
//!
//! Usage records are written in batches ([`UsageStore::record_usage`]): each record is
//! inserted with `ON CONFLICT (request_id) DO NOTHING`, and only records actually inserted
//! accrue spend, summed per (entity, period) and upserted with `ON CONFLICT … DO UPDATE` in
//! one order (sorted), so concurrent batches cannot deadlock on Postgres. Usage is not
//! audited: it is not an admin write.

use super::{col, commit, db_err, opt_enum_col, SqlStore};
use crate::domain::{self, BudgetDuration, Timestamp};
use crate::store::{
    GroupBy, SpendKind, StoreError, StoreResult, UsageQuery, UsageReport, UsageRow, UsageStore,
};
use crate::usage::{period, UsageRecord, UsageSource};
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::collections::{BTreeMap, HashMap};

const USAGE_INSERT: &str = "INSERT INTO usage_records (request_id, at, key_id, user_id, team_id, \
     model, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, \
     status, latency_ms, estimated, source, written_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
     ON CONFLICT (request_id) DO NOTHING";

/// Adds to a period's spend; a period whose end moved (the entity's `budget_duration`
/// changed) keeps the later end.
const SPEND_UPSERT: &str = "INSERT INTO spend \
     (entity_kind, entity_id, period_start, period_end, spend_usd) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (entity_kind, entity_id, period_start) DO UPDATE SET \
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

/// What an entity's spend periods derive from: its `budget_duration` and `created_at` (the
/// anchor of `30d` windows).
#[derive(Debug, Clone, Copy)]
struct SpendBasis {
    duration: Option<BudgetDuration>,
    anchor: Timestamp,
}

impl SpendBasis {
    /// The period containing `at` (calendar months without a duration).
    fn window(self, at: Timestamp) -> (Timestamp, Timestamp) {
        period::window(period::effective(self.duration), at, self.anchor)
    }
}

/// The spend basis of a key, user or team from its own row, deleted or not; with no row,
/// no duration (so calendar months, where the anchor does not matter).
async fn spend_basis(
    conn: &mut AnyConnection,
    kind: SpendKind,
    id: &str,
) -> StoreResult<SpendBasis> {
    let table = match kind {
        SpendKind::Key => "api_keys",
        SpendKind::User => "users",
        SpendKind::Team => "teams",
    };
    let sql = format!("SELECT budget_duration, created_at FROM {table} WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    match row {
        Some(row) => Ok(SpendBasis {
            duration: opt_enum_col(&row, "budget_duration")?,
            anchor: col(&row, "created_at")?,
        }),
        None => Ok(SpendBasis {
            duration: None,
            anchor: 0,
        }),
    }
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

#[async_trait]
impl UsageStore for SqlStore {
    async fn record_new_usage(&self, records: &[UsageRecord]) -> StoreResult<Vec<usize>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        for record in records {
            validate_record(record)?;
        }
        // In request id order (stable, so the first of duplicates wins), so that concurrent
        // batches wait on each other's ids in one order instead of deadlocking.
        let mut ordered: Vec<(usize, &UsageRecord)> = records.iter().enumerate().collect();
        ordered.sort_by(|a, b| a.1.request_id.cmp(&b.1.request_id));

        let written_at = domain::now();
        let mut tx = self.begin_write().await?;
        let mut bases: HashMap<(SpendKind, &str), SpendBasis> = HashMap::new();
        // (kind, id, period start) → (period end, USD), applied in this (sorted) order.
        let mut accrued: BTreeMap<(SpendKind, &str, Timestamp), (Timestamp, f64)> = BTreeMap::new();
        let mut new = Vec::new();
        for (position, record) in ordered {
            let tokens = &record.tokens;
            let inserted = sqlx::query(USAGE_INSERT)
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
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
            if inserted == 0 {
                continue;
            }
            new.push(position);
            for (kind, id) in crate::admission::payers::of_record(record) {
                let basis = match bases.get(&(kind, id)) {
                    Some(basis) => *basis,
                    None => {
                        let basis = spend_basis(&mut tx, kind, id).await?;
                        bases.insert((kind, id), basis);
                        basis
                    }
                };
                let (start, end) = basis.window(record.at);
                let slot = accrued.entry((kind, id, start)).or_insert((end, 0.0));
                slot.1 += record.cost_usd;
            }
        }
        for ((kind, id, start), (end, usd)) in accrued {
            if usd == 0.0 {
                continue;
            }
            sqlx::query(SPEND_UPSERT)
                .bind(kind.as_str())
                .bind(id)
                .bind(start)
                .bind(end)
                .bind(usd)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        commit(tx).await?;
        new.sort_unstable();
        Ok(new)
    }

    async fn current_spend(&self, kind: SpendKind, id: &str, at: Timestamp) -> StoreResult<f64> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let (start, end) = spend_basis(&mut conn, kind, id).await?.window(at);
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

    async fn usage_report(&self, query: UsageQuery) -> StoreResult<UsageReport> {
        enum Param {
            Text(String),
            Int(i64),
        }
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut add = |condition: &str, param: Param| {
            params.push(param);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(since) = query.since {
            add("at >=", Param::Int(since));
        }
        if let Some(until) = query.until {
            add("at <=", Param::Int(until));
        }
        if let Some(user_id) = query.user_id {
            add("user_id =", Param::Text(user_id));
        }
        if let Some(key_id) = query.key_id {
            add("key_id =", Param::Text(key_id));
        }
        if let Some(team_id) = query.team_id {
            add("team_id =", Param::Text(team_id));
        }
        // Records without an owner or model fall in the NO_GROUP ("") group. Days are
        // numbered in SQL (floor division, the same on both backends, also before 1970)
        // and formatted here.
        let group = match query.group_by {
            GroupBy::Key => "COALESCE(key_id, '')",
            GroupBy::User => "COALESCE(user_id, '')",
            GroupBy::Team => "COALESCE(team_id, '')",
            GroupBy::Model => "COALESCE(model, '')",
            GroupBy::Day => "(at - ((at % 86400) + 86400) % 86400) / 86400",
        };
        let mut sql = format!(
            "SELECT {group} AS grp, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_sum, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_sum, \
             COALESCE(SUM(cost_usd), 0.0) AS cost_sum FROM usage_records"
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

        // Sorted here, not by ORDER BY: Postgres orders text by its collation, SQLite by
        // bytes, and days must sort by number before they become text.
        let mut keyed: Vec<((i64, String), UsageRow)> = Vec::with_capacity(rows.len());
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
            let usage = UsageRow {
                group,
                requests: count_col(row, "requests")?,
                input_tokens: count_col(row, "input_sum")?,
                output_tokens: count_col(row, "output_sum")?,
                cost_usd: col::<Option<f64>>(row, "cost_sum")?.unwrap_or(0.0),
            };
            keyed.push((sort, usage));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(UsageReport::from_rows(
            keyed.into_iter().map(|(_, row)| row).collect(),
        ))
    }
}
