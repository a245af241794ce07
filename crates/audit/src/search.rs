//! Searching the log by who, what, where, when and how it ended.

use crate::db::{AuditDb, StoredRecord};
use crate::AuditError;
use serde::Deserialize;

/// Filters; all given ones must match. Newest first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Query {
    pub user: Option<String>,
    pub tool: Option<String>,
    /// Virtual server or upstream name.
    pub server: Option<String>,
    pub outcome: Option<String>,
    pub event_type: Option<String>,
    /// Inclusive lower bound, microseconds since the epoch.
    pub since_us: Option<i64>,
    /// Exclusive upper bound, microseconds since the epoch.
    pub until_us: Option<i64>,
    /// Only records with `seq` below this (for paging backwards).
    pub before_seq: Option<i64>,
    pub limit: Option<i64>,
}

pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

impl Query {
    pub async fn run(&self, db: &AuditDb) -> Result<Vec<StoredRecord>, AuditError> {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        let mut text = |clause: &str, v: &Option<String>, binds: &mut Vec<Bind>, n: usize| {
            if let Some(v) = v {
                clauses.push(clause.to_owned());
                for _ in 0..n {
                    binds.push(Bind::Text(v.clone()));
                }
            }
        };
        text("username = ?", &self.user, &mut binds, 1);
        text("tool = ?", &self.tool, &mut binds, 1);
        text(
            "(virtual_server = ? OR upstream = ?)",
            &self.server,
            &mut binds,
            2,
        );
        text("outcome = ?", &self.outcome, &mut binds, 1);
        text("event_type = ?", &self.event_type, &mut binds, 1);
        for (clause, v) in [
            ("time_us >= ?", self.since_us),
            ("time_us < ?", self.until_us),
            ("seq < ?", self.before_seq),
        ] {
            if let Some(v) = v {
                clauses.push(clause.to_owned());
                binds.push(Bind::Int(v));
            }
        }
        let sql_where = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let limit = self.limit.unwrap_or(100).clamp(1, 10_000);
        db.query_records(&sql_where, &binds, limit).await
    }
}
