//! Security events of administration in the audit log: who changed which
//! account, credential, policy or approval, through the admin API, SCIM or a
//! policy reload. Records name credentials by id and policy texts by SHA-256;
//! never a token, password or client secret.
//!
//! An administrative change is made in the store first; when its record then
//! cannot be written, the change stands, the answer is sent, and the loss is
//! logged as an error (the record cannot be taken back into the transaction
//! of another database). Reads of the audit log itself are different: they
//! are refused when their `audit.read` record cannot be written and the log
//! fails closed.

use axum::extract::ConnectInfo;
use http::{header, Extensions, HeaderMap};
use portcullis_audit::{Actor, AuditEvent, Auditor, Target};
use portcullis_identity::{Identity, Principal};
use portcullis_policy::{PolicyChange, PolicyRuntime};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The audit actor for an authenticated API request.
pub(crate) fn actor(p: &Principal, headers: &HeaderMap, ext: &Extensions) -> Actor {
    Actor {
        ip: ext
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect()),
        ..p.audit_actor()
    }
}

/// Record an administrative change that has already been made. A record that
/// cannot be written is logged, not returned: the change stands.
pub(crate) async fn changed(identity: &Identity, event_type: &str, actor: &Actor, detail: Value) {
    let event = AuditEvent::security(event_type, Some(actor.clone()), detail);
    write(identity, event).await;
}

/// As [`changed`], with a target (virtual server, tool) to search by.
pub(crate) async fn changed_on(
    identity: &Identity,
    event_type: &str,
    actor: &Actor,
    detail: Value,
    target: Target,
) {
    let event = AuditEvent::security(event_type, Some(actor.clone()), detail).with_target(target);
    write(identity, event).await;
}

async fn write(identity: &Identity, event: AuditEvent) {
    let kind = event.event_type.clone();
    if let Err(e) = identity.audit().record(event).await {
        tracing::error!(
            event = %kind,
            error = %e,
            "an administrative change was made but its audit record could not be written"
        );
    }
}

/// A user as a record's detail names them.
pub(crate) fn who(id: &str, username: &str, kind: &str) -> Value {
    json!({"id": id, "username": username, "kind": kind})
}

/// Hex SHA-256 of a text (policy documents are recorded by digest, not text).
pub fn sha256(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Record every change the policy reload loop finds: `policy.changed` when a
/// new set is installed (a file edited under `policy.dir`, a document stored
/// by the CLI or another replica), `policy.rejected` with the located errors
/// when the new sources are refused and the previous set stays in force.
/// Call once at start, after `PolicyRuntime::open`. Changes made through this
/// process's admin API are recorded by the API (with the administrator as
/// actor), not again here.
pub fn record_policy_reloads(rt: &PolicyRuntime, auditor: &Auditor) {
    if !auditor.enabled() {
        return;
    }
    let auditor = auditor.clone();
    rt.on_change(move |c| {
        let (event_type, detail) = reload_detail(c);
        auditor.record_detached(AuditEvent::security(
            event_type,
            Some(Actor::system()),
            detail,
        ));
    });
}

fn reload_detail(c: &PolicyChange) -> (&'static str, Value) {
    let sources: Vec<Value> = c
        .sources
        .iter()
        .map(|s| json!({"origin": s.origin, "sha256": sha256(&s.text)}))
        .collect();
    if c.applied {
        (
            "policy.changed",
            json!({"operation": "reload", "via": "reload", "version": c.version,
                   "policies": c.policies, "sources": sources}),
        )
    } else {
        (
            "policy.rejected",
            json!({"operation": "reload", "via": "reload", "kept_version": c.version,
                   "policies": c.policies, "sources": sources, "errors": c.errors}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::{PolicySource, SourceError};

    #[test]
    fn reloads_name_sources_by_digest() {
        let change = PolicyChange {
            version: 3,
            applied: false,
            policies: 2,
            sources: vec![PolicySource {
                origin: "a.cedar".into(),
                text: "permit(principal, action, resource);".into(),
            }],
            errors: vec![SourceError {
                origin: "a.cedar".into(),
                line: 1,
                column: 2,
                message: "bad".into(),
            }],
        };
        let (t, d) = reload_detail(&change);
        assert_eq!(t, "policy.rejected");
        assert_eq!(d["kept_version"], json!(3));
        assert_eq!(d["errors"][0]["line"], json!(1));
        assert_eq!(d["sources"][0]["sha256"].as_str().map(str::len), Some(64));
        assert!(!d.to_string().contains("permit("), "no policy text: {d}");
    }
}
