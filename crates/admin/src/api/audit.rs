//! Searching the audit log and its state. Every search is itself recorded
//! (`audit.read`, PCI DSS 10.2.1.3) before the records are returned; while
//! the log fails closed, a search whose record cannot be written is refused.

use super::{ok, param, query, ApiError, ApiResult, Ctx};
use axum::extract::{RawQuery, State};
use axum::Extension;
use http::StatusCode;
use portcullis_audit::{parse_time, Actor, AuditDb, AuditEvent, Query};
use serde_json::{json, Value};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
const PARAMS: &[&str] = &[
    "user", "tool", "server", "outcome", "type", "since", "until", "limit", "before",
];

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "audit_disabled",
        "the audit log is disabled on this gateway (audit.enabled: false)",
    )
}

fn db(identity: &Ctx) -> Result<&AuditDb, ApiError> {
    identity.audit().db().ok_or_else(disabled)
}

fn time(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|t| {
        parse_time(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} {t:?}: use an RFC 3339 time, a date (YYYY-MM-DD), or a duration back from now (15m, 24h, 7d)"
            ))
        })
    })
    .transpose()
}

fn integer(name: &str, v: Option<&str>, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    v.map(|s| match s.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be an integer from {min} to {max}, not {s:?}"
        ))),
    })
    .transpose()
}

/// The search a query string describes, or a 400 naming the bad parameter.
fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
    let q = query(raw, PARAMS)?;
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match param(&q, name) {
            Some(v) if v.trim().is_empty() => {
                Err(ApiError::bad_request(format!("{name} must not be empty")))
            }
            v => Ok(v.map(str::to_owned)),
        }
    };
    let outcome = text("outcome")?;
    if let Some(o) = &outcome {
        if !portcullis_audit::OUTCOMES.contains(&o.as_str()) {
            return Err(ApiError::bad_request(format!(
                "outcome {o:?}: expected one of {}",
                portcullis_audit::OUTCOMES.join(", ")
            )));
        }
    }
    let since_us = time("since", param(&q, "since"))?;
    let until_us = time("until", param(&q, "until"))?;
    if let (Some(s), Some(u)) = (since_us, until_us) {
        if s >= u {
            return Err(ApiError::bad_request("since must be earlier than until"));
        }
    }
    Ok(Query {
        user: text("user")?,
        tool: text("tool")?,
        server: text("server")?,
        outcome,
        event_type: text("type")?,
        since_us,
        until_us,
        before_seq: integer("before", param(&q, "before"), 1, i64::MAX)?,
        limit: Some(integer("limit", param(&q, "limit"), 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT)),
    })
}

/// `GET /api/v1/audit`: records matching every given filter, newest first;
/// `next_before` pages further back.
pub async fn search(
    State(identity): State<Ctx>,
    Extension(actor): Extension<Actor>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let q = parse(raw.as_deref())?;
    let db = db(&identity)?;
    let rows = q.run(db).await.map_err(|e| ApiError::internal(&e))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let next_before = match rows.last() {
        Some(last) if rows.len() as i64 >= limit => Some(last.seq),
        _ => None,
    };
    let detail = json!({
        "via": "api",
        "query": {"user": q.user, "tool": q.tool, "server": q.server, "outcome": q.outcome,
                  "event_type": q.event_type, "since_us": q.since_us, "until_us": q.until_us,
                  "before": q.before_seq, "limit": limit},
        "results": rows.len(),
        "seq_range": rows.last().map(|l| json!([l.seq, rows.first().map_or(l.seq, |f| f.seq)])),
    });
    let audit = identity.audit();
    if let Err(e) = audit
        .record(AuditEvent::security("audit.read", Some(actor), detail))
        .await
    {
        tracing::error!(error = %e, "audit.read not written to the audit log");
        if audit.fails_closed() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "this read cannot be recorded in the audit log right now; try again later",
            ));
        }
    }
    let records: Vec<Value> = rows.iter().map(|r| r.export()).collect();
    Ok(ok(
        StatusCode::OK,
        &json!({ "records": records, "next_before": next_before }),
    ))
}

/// `GET /api/v1/audit/status`: whether the log is on and writable, the key
/// that verifies its checkpoints, group-commit sizes and the newest record.
pub async fn status(State(identity): State<Ctx>, RawQuery(raw): RawQuery) -> ApiResult {
    query(raw.as_deref(), &[])?;
    let audit = identity.audit();
    let head_seq = match audit.db() {
        Some(db) => Some(db.max_seq().await.map_err(|e| ApiError::internal(&e))?),
        None => None,
    };
    Ok(ok(
        StatusCode::OK,
        &json!({
            "enabled": audit.enabled(),
            "healthy": audit.healthy(),
            "fails_closed": audit.fails_closed(),
            "replica": audit.enabled().then(|| audit.replica().to_owned()),
            "public_key": audit.public_key(),
            "batches": audit.batch_stats(),
            "head_seq": head_seq,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_say_why_not() {
        let q = parse(Some("user=alice&outcome=denied&since=24h&limit=5&before=9"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(q.user.as_deref(), Some("alice"));
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.before_seq, Some(9));
        assert!(q.since_us.is_some());
        assert_eq!(parse(None).map(|q| q.limit).ok(), Some(Some(100)));
        for bad in [
            "outcome=maybe",
            "since=yesterday-ish",
            "until=2024-13-45",
            "limit=0",
            "limit=1001",
            "limit=ten",
            "before=-1",
            "user=",
            "colour=red",
            "user=a&user=b",
            "since=2024-02-01&until=2024-01-01",
        ] {
            let e = parse(Some(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
