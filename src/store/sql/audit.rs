//! Reading the audit log, and audit lines for events that are not writes ([`AuditStore`]).
//! A write records its own audit row in its transaction (`write_audit` in the parent module).

use super::{col, db_err, json_col, SqlStore};
use crate::domain::{self, AuditEvent};
use crate::store::{Actor, AuditFilter, AuditStore, StoreResult};
use async_trait::async_trait;
use serde_json::Value;
use sqlx::any::AnyRow;

/// Default and maximum number of audit events one `list_audit` call returns.
const AUDIT_DEFAULT_LIMIT: i64 = 100;
const AUDIT_MAX_LIMIT: i64 = 1000;

const AUDIT_COLS: &str = "id, at, actor, action, target, source, details";

fn audit_from_row(row: &AnyRow) -> StoreResult<AuditEvent> {
    Ok(AuditEvent {
        id: col(row, "id")?,
        at: col(row, "at")?,
        actor: col(row, "actor")?,
        action: col(row, "action")?,
        target: col(row, "target")?,
        source: col(row, "source")?,
        details: json_col(row, "details")?,
    })
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn list_audit(&self, filter: AuditFilter) -> StoreResult<Vec<AuditEvent>> {
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
        if let Some(actor) = filter.actor {
            add("actor =", Param::Text(actor));
        }
        if let Some(action) = filter.action {
            add("action =", Param::Text(action));
        }
        if let Some(target) = filter.target {
            add("target =", Param::Text(target));
        }
        if let Some(since) = filter.since {
            add("at >=", Param::Int(since));
        }
        if let Some(until) = filter.until {
            add("at <=", Param::Int(until));
        }
        if let Some(org) = filter.org_id {
            params.push(Param::Text(org));
            conditions.push(super::of_org("target", &format!("${}", params.len())));
        }
        if let Some(before) = filter.before {
            // After the cursor's event in `ORDER BY at DESC, id DESC`; its `at` is read
            // here, so the cursor is the id alone.
            params.push(Param::Int(before));
            let n = params.len();
            conditions.push(format!(
                "(at < (SELECT at FROM audit_log WHERE id = ${n}) \
                 OR (at = (SELECT at FROM audit_log WHERE id = ${n}) AND id < ${n}))"
            ));
        }
        let limit = filter
            .limit
            .unwrap_or(AUDIT_DEFAULT_LIMIT)
            .clamp(0, AUDIT_MAX_LIMIT);
        let mut sql = format!("SELECT {AUDIT_COLS} FROM audit_log");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY at DESC, id DESC LIMIT ${}",
            params.len() + 1
        ));
        let mut query = sqlx::query(&sql);
        for param in params {
            query = match param {
                Param::Text(text) => query.bind(text),
                Param::Int(int) => query.bind(int),
            };
        }
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn record_event(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        details: Value,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, source, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(domain::now())
        .bind(&actor.name)
        .bind(action)
        .bind(target)
        .bind(actor.source.as_deref())
        .bind(details.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
