//! The budget alert outbox ([`AlertStore`]).
//!
//! Budget alerts live in an outbox (`alerts`, unique per entity, period start and threshold):
//! [`AlertStore::raise_alerts`] inserts with `ON CONFLICT … DO NOTHING`, so an alert fires
//! once however often it is raised; [`AlertStore::due_deliveries`] claims due rows with a
//! compare-and-set update on the channel's `next_attempt_at` (portable, no row locks), so
//! one caller delivers each. Each channel (webhook, email) has its own state columns in the
//! same row: claiming or settling one never touches the other.

use super::{col, commit, db_err, enum_col, SqlStore};
use crate::domain::{self, Timestamp};
use crate::store::{
    Alert, AlertChannel, AlertCrossing, AlertDelivery, AlertFilter, AlertOutcome, AlertState,
    AlertStore, StoreError, StoreResult, ALERT_CLAIM_SECS,
};
use async_trait::async_trait;
use sqlx::any::AnyRow;

const ALERT_COLS: &str = "id, entity_kind, entity_id, period_start, period_end, threshold, \
     spend_usd, budget_usd, created_at, state, attempts, next_attempt_at, last_error, \
     delivered_at, email_state, email_attempts, email_next_attempt_at, email_last_error, \
     email_delivered_at";

const ALERT_INSERT: &str = "INSERT INTO alerts (id, entity_kind, entity_id, period_start, \
     period_end, threshold, spend_usd, budget_usd, created_at, state, attempts, \
     next_attempt_at, email_state, email_attempts, email_next_attempt_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, 'pending', 0, $10) \
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
        email: AlertDelivery {
            state: enum_col::<AlertState>(row, "email_state")?,
            attempts: small_count_col(row, "email_attempts")?,
            next_attempt_at: col(row, "email_next_attempt_at")?,
            last_error: col(row, "email_last_error")?,
            delivered_at: col(row, "email_delivered_at")?,
        },
    })
}

/// The columns of one channel's delivery state: the webhook's are the original ones, the
/// others carry the channel's prefix (`email_state`, …).
struct Columns {
    state: &'static str,
    attempts: &'static str,
    next_attempt_at: &'static str,
    last_error: &'static str,
    delivered_at: &'static str,
}

fn columns(channel: AlertChannel) -> Columns {
    match channel {
        AlertChannel::Webhook => Columns {
            state: "state",
            attempts: "attempts",
            next_attempt_at: "next_attempt_at",
            last_error: "last_error",
            delivered_at: "delivered_at",
        },
        AlertChannel::Email => Columns {
            state: "email_state",
            attempts: "email_attempts",
            next_attempt_at: "email_next_attempt_at",
            last_error: "email_last_error",
            delivered_at: "email_delivered_at",
        },
    }
}

/// The claimed `next_attempt_at` of `channel` written into an alert as read.
fn set_next_attempt(alert: &mut Alert, channel: AlertChannel, at: Option<Timestamp>) {
    match channel {
        AlertChannel::Webhook => alert.next_attempt_at = at,
        AlertChannel::Email => alert.email.next_attempt_at = at,
    }
}

fn next_attempt(alert: &Alert, channel: AlertChannel) -> Option<Timestamp> {
    match channel {
        AlertChannel::Webhook => alert.next_attempt_at,
        AlertChannel::Email => alert.email.next_attempt_at,
    }
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

    async fn due_deliveries(
        &self,
        channel: AlertChannel,
        now: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<Alert>> {
        let limit = limit.clamp(0, ALERTS_MAX_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Columns {
            state,
            next_attempt_at,
            ..
        } = columns(channel);
        let sql = format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE {state} = 'pending' \
             AND {next_attempt_at} <= $1 ORDER BY {next_attempt_at}, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let claimed_until = now.saturating_add(ALERT_CLAIM_SECS);
        // Claimed only if nobody else claimed or settled it on this channel since it was
        // read: the update matches the row as it was read, so of two callers exactly one
        // wins. The other channel's columns are not touched.
        let claim = format!(
            "UPDATE alerts SET {next_attempt_at} = $1 \
             WHERE id = $2 AND {state} = 'pending' AND {next_attempt_at} = $3"
        );
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut alert = alert_from_row(row)?;
            let claimed = sqlx::query(&claim)
                .bind(claimed_until)
                .bind(&alert.id)
                .bind(next_attempt(&alert, channel))
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
            if claimed == 1 {
                set_next_attempt(&mut alert, channel, Some(claimed_until));
                due.push(alert);
            }
        }
        Ok(due)
    }

    async fn mark_delivery(
        &self,
        channel: AlertChannel,
        id: &str,
        outcome: AlertOutcome,
    ) -> StoreResult<bool> {
        let Columns {
            state,
            attempts,
            next_attempt_at,
            last_error,
            delivered_at,
        } = columns(channel);
        let pending = format!("WHERE id = $1 AND {state} = 'pending'");
        let sql = match &outcome {
            AlertOutcome::Delivered { .. } => format!(
                "UPDATE alerts SET {state} = 'delivered', {attempts} = {attempts} + 1, \
                 {delivered_at} = $2, {next_attempt_at} = NULL {pending}"
            ),
            AlertOutcome::Retry { .. } => format!(
                "UPDATE alerts SET {attempts} = {attempts} + 1, {last_error} = $2, \
                 {next_attempt_at} = $3 {pending}"
            ),
            AlertOutcome::Failed { .. } => format!(
                "UPDATE alerts SET {state} = 'failed', {attempts} = {attempts} + 1, \
                 {last_error} = $2, {next_attempt_at} = NULL {pending}"
            ),
        };
        let query = sqlx::query(&sql).bind(id);
        let query = match &outcome {
            AlertOutcome::Delivered { at } => query.bind(*at),
            AlertOutcome::Retry {
                error,
                next_attempt_at,
            } => query.bind(alert_error_text(error)).bind(*next_attempt_at),
            AlertOutcome::Failed { error } => query.bind(alert_error_text(error)),
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
        if let Some(org) = filter.org_id {
            params.push(org);
            conditions.push(super::of_org("entity_id", &format!("${}", params.len())));
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
