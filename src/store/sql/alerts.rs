//! The budget alert outbox ([`AlertStore`]).
//!
//! Budget alerts live in an outbox (`alerts`, unique per entity, period start and threshold):
//! [`AlertStore::raise_alerts`] inserts with `ON CONFLICT … DO NOTHING`, so an alert fires
//! once however often it is raised; [`AlertStore::due_alerts`] claims due rows with a
//! compare-and-set update on `next_attempt_at` (portable, no row locks), so one caller
//! delivers each.

use super::{col, commit, db_err, enum_col, SqlStore};
use crate::domain::{self, Timestamp};
use crate::store::{
    Alert, AlertCrossing, AlertFilter, AlertOutcome, AlertState, AlertStore, StoreError,
    StoreResult, ALERT_CLAIM_SECS,
};
use async_trait::async_trait;
use sqlx::any::AnyRow;

const ALERT_COLS: &str = "id, entity_kind, entity_id, period_start, period_end, threshold, \
     spend_usd, budget_usd, created_at, state, attempts, next_attempt_at, last_error, \
     delivered_at";

const ALERT_INSERT: &str = "INSERT INTO alerts (id, entity_kind, entity_id, period_start, \
     period_end, threshold, spend_usd, budget_usd, created_at, state, attempts, \
     next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10) \
     ON CONFLICT (entity_kind, entity_id, period_start, threshold) DO NOTHING";

/// Default and maximum number of alerts one `list_alerts` call returns.
const ALERTS_DEFAULT_LIMIT: i64 = 100;
const ALERTS_MAX_LIMIT: i64 = 1000;

/// Longest `last_error` kept, in characters.
const ALERT_ERROR_MAX_CHARS: usize = 500;

fn validate_crossing(c: &AlertCrossing) -> StoreResult<()> {
    if c.entity_id.is_empty() {
        return Err(StoreError::Invalid(
            "an alert needs an entity id".to_string(),
        ));
    }
    if c.threshold == 0 {
        return Err(StoreError::Invalid(format!(
            "alert of {} {}: the threshold must be above 0 %",
            c.entity_kind, c.entity_id
        )));
    }
    if !c.spend_usd.is_finite() || !c.budget_usd.is_finite() {
        return Err(StoreError::Invalid(format!(
            "alert of {} {}: spend_usd and budget_usd must be finite",
            c.entity_kind, c.entity_id
        )));
    }
    Ok(())
}

/// A non-negative BIGINT column as a `u32` (larger values, never real, are capped).
fn small_count_col(row: &AnyRow, name: &str) -> StoreResult<u32> {
    let n: i64 = col(row, name)?;
    Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

fn alert_from_row(row: &AnyRow) -> StoreResult<Alert> {
    Ok(Alert {
        id: col(row, "id")?,
        entity_kind: enum_col(row, "entity_kind")?,
        entity_id: col(row, "entity_id")?,
        period_start: col(row, "period_start")?,
        period_end: col(row, "period_end")?,
        threshold: small_count_col(row, "threshold")?,
        spend_usd: col(row, "spend_usd")?,
        budget_usd: col(row, "budget_usd")?,
        created_at: col(row, "created_at")?,
        state: enum_col::<AlertState>(row, "state")?,
        attempts: small_count_col(row, "attempts")?,
        next_attempt_at: col(row, "next_attempt_at")?,
        last_error: col(row, "last_error")?,
        delivered_at: col(row, "delivered_at")?,
    })
}

/// An error message as kept in `last_error`: at most [`ALERT_ERROR_MAX_CHARS`] characters.
fn alert_error_text(error: &str) -> String {
    match error.char_indices().nth(ALERT_ERROR_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &error[..cut]),
        None => error.to_string(),
    }
}

#[async_trait]
impl AlertStore for SqlStore {
    async fn raise_alerts(&self, crossings: &[AlertCrossing]) -> StoreResult<u64> {
        if crossings.is_empty() {
            return Ok(0);
        }
        for crossing in crossings {
            validate_crossing(crossing)?;
        }
        // In one order, so that concurrent raises on Postgres wait on each other's rows
        // instead of deadlocking.
        let mut ordered: Vec<&AlertCrossing> = crossings.iter().collect();
        ordered.sort_by(|a, b| {
            (a.entity_kind, &a.entity_id, a.period_start, a.threshold).cmp(&(
                b.entity_kind,
                &b.entity_id,
                b.period_start,
                b.threshold,
            ))
        });
        let mut tx = self.begin_write().await?;
        let mut new = 0u64;
        for c in ordered {
            new += sqlx::query(ALERT_INSERT)
                .bind(domain::new_id())
                .bind(c.entity_kind.as_str())
                .bind(&c.entity_id)
                .bind(c.period_start)
                .bind(c.period_end)
                .bind(i64::from(c.threshold))
                .bind(c.spend_usd)
                .bind(c.budget_usd)
                .bind(c.created_at)
                .bind(c.created_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        commit(tx).await?;
        Ok(new)
    }

    async fn due_alerts(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<Alert>> {
        let limit = limit.clamp(0, ALERTS_MAX_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let claimed_until = now.saturating_add(ALERT_CLAIM_SECS);
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut alert = alert_from_row(row)?;
            // Claimed only if nobody else claimed or settled it since it was read: the
            // update matches the row as it was read, so of two callers exactly one wins.
            let claimed = sqlx::query(
                "UPDATE alerts SET next_attempt_at = $1 \
                 WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3",
            )
            .bind(claimed_until)
            .bind(&alert.id)
            .bind(alert.next_attempt_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
            if claimed == 1 {
                alert.next_attempt_at = Some(claimed_until);
                due.push(alert);
            }
        }
        Ok(due)
    }

    async fn mark_alert(&self, id: &str, outcome: AlertOutcome) -> StoreResult<bool> {
        let query = match &outcome {
            AlertOutcome::Delivered { at } => sqlx::query(
                "UPDATE alerts SET state = 'delivered', attempts = attempts + 1, \
                 delivered_at = $2, next_attempt_at = NULL \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(*at),
            AlertOutcome::Retry {
                error,
                next_attempt_at,
            } => sqlx::query(
                "UPDATE alerts SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = $3 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(alert_error_text(error))
            .bind(*next_attempt_at),
            AlertOutcome::Failed { error } => sqlx::query(
                "UPDATE alerts SET state = 'failed', attempts = attempts + 1, \
                 last_error = $2, next_attempt_at = NULL WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(alert_error_text(error)),
        };
        let updated = query
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        Ok(updated > 0)
    }

    async fn list_alerts(&self, filter: AlertFilter) -> StoreResult<Vec<Alert>> {
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<String> = Vec::new();
        let mut add = |condition: &str, param: String| {
            params.push(param);
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(state) = filter.state {
            add("state =", state.as_str().to_string());
        }
        if let Some(kind) = filter.entity_kind {
            add("entity_kind =", kind.as_str().to_string());
        }
        if let Some(id) = filter.entity_id {
            add("entity_id =", id);
        }
        let limit = filter
            .limit
            .unwrap_or(ALERTS_DEFAULT_LIMIT)
            .clamp(0, ALERTS_MAX_LIMIT);
        let mut sql = format!("SELECT {ALERT_COLS} FROM alerts");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            params.len() + 1
        ));
        let mut query = sqlx::query(&sql);
        for param in params {
            query = query.bind(param);
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(alert_from_row).collect()
    }
}
