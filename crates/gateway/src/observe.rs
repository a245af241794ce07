//! Every request the data plane serves is observed here, once: what it
//! touched and how policy decided (noted by the code that knows, through a
//! task-local `CallNote`), how it ended, how long it took. The audit record is
//! written, durably, before the response is released; traces and metrics are
//! handed to `telemetry_hook`.

use crate::dispatch::{self, Caller, Out};
use crate::respond::cancelled_response;
use crate::telemetry_hook::CallTelemetry;
use crate::{Gateway, Who};
use futures_util::future::{AbortRegistration, Abortable};
use portcullis_audit::{Actor, AuditEvent};
use portcullis_protocol::jsonrpc::error_response;
use portcullis_protocol::{era, ErrorCode};
use serde_json::Value;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How a request ended, as the audit record and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// The tool ran and reported an error (`isError: true`).
    ToolError,
    /// A JSON-RPC error that is not a governance refusal.
    ProtocolError,
    /// Refused by policy, a rate limit or a declined checkpoint.
    Denied,
    /// Cancelled by the client or the session's end.
    Cancelled,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ToolError => "tool_error",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The policy decision behind a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct DecisionNote {
    pub allowed: bool,
    pub policies: Vec<String>,
    pub errors: Vec<String>,
    pub version: u64,
    /// `user`, `approver`, or none.
    pub checkpoint: Option<&'static str>,
    /// How the checkpoint ended: `accepted`, `declined`, `approved`, `refused`, …
    pub checkpoint_result: Option<String>,
    /// The name of the rate limit that refused the call.
    pub limited_by: Option<String>,
}

/// What the data plane learnt about a request while serving it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallNote {
    /// The upstream the request was routed to.
    pub upstream: Option<String>,
    /// Exposed tool or prompt name, or resource URI.
    pub target: Option<String>,
    /// The name the upstream knows the tool or prompt by.
    pub upstream_target: Option<String>,
    pub decision: Option<DecisionNote>,
    /// The policy denied and the denial was made to look like an unknown name.
    pub hidden_denial: bool,
}

tokio::task_local! {
    static NOTE: RefCell<CallNote>;
}

/// Add to the note of the request being served (no-op outside one).
pub(crate) fn note(f: impl FnOnce(&mut CallNote)) {
    let _ = NOTE.try_with(|n| f(&mut n.borrow_mut()));
}

/// What the HTTP edge knows about a request before it is served.
#[derive(Debug, Default, Clone)]
pub(crate) struct Arrival {
    pub traceparent: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    pub bytes_in: usize,
}

/// Serve one request, observed. `abort` lets the caller cancel the work; a
/// cancelled request is still recorded.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    gw: &Gateway,
    caller: &Caller,
    who: Option<&Who>,
    mut msg: Value,
    method: &str,
    id: Value,
    out: &Out,
    arrival: Arrival,
    abort: Option<AbortRegistration>,
) -> Value {
    let started = Instant::now();
    let audit = &gw.auditor;
    if audit.enabled() && audit.fails_closed() && !audit.healthy() && !audit.probe().await {
        // The log is known to be failing: refuse before anything runs upstream.
        return error_response(
            id,
            ErrorCode::AuditUnavailable,
            "the audit log cannot be written; calls are refused until it recovers",
        );
    }
    let vs = caller.binding().vs.name.clone();
    let telemetry = CallTelemetry::start(
        gw,
        arrival.traceparent.as_deref(),
        &mut msg,
        method,
        &vs,
        arrival.session_id.as_deref(),
    );
    // Arguments are masked before the call: the raw values are never kept.
    let recorded_args = audit.masker().and_then(|m| {
        let args = msg.pointer("/params/arguments")?;
        Some((m.arguments(args), m.digest(args)))
    });
    let client_name = client_name(caller, &msg);
    let jsonrpc_id = id.clone();
    let cancelled = cancelled_response(id.clone());
    // What was asked for, even if it turns out not to exist.
    let asked = match method {
        "tools/call" | "prompts/get" => msg.pointer("/params/name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            msg.pointer("/params/uri")
        }
        _ => None,
    };
    let first_note = CallNote {
        target: asked.and_then(Value::as_str).map(str::to_owned),
        ..Default::default()
    };
    let work = NOTE.scope(RefCell::new(first_note), async move {
        let resp = dispatch::handle(gw, caller, who, msg, method, id, out).await;
        (resp, NOTE.with(|n| n.take()))
    });
    let (mut response, note) = match abort {
        Some(reg) => match Abortable::new(work, reg).await {
            Ok(done) => done,
            Err(_) => (cancelled, CallNote::default()),
        },
        None => {
            drop(cancelled);
            work.await
        }
    };
    let outcome = classify(&response, &note);
    let latency = started.elapsed();
    if audit.enabled() {
        let event = Facts {
            who,
            vs: &vs,
            method,
            jsonrpc_id,
            arrival: &arrival,
            client_name,
            args: recorded_args,
            note: &note,
            outcome,
            response: &response,
            latency,
            trace: telemetry.trace_ids(),
        }
        .event(audit);
        if let Err(e) = audit.record(event).await {
            tracing::error!(error = %e, method, "audit record not written");
            if audit.fails_closed() {
                let id = response.get("id").cloned().unwrap_or(Value::Null);
                response = error_response(
                    id,
                    ErrorCode::AuditUnavailable,
                    "the call could not be recorded in the audit log; its result is withheld",
                );
            }
        }
    }
    telemetry.finish(gw, &note, outcome, &response, latency);
    response
}

/// Record a legacy session's `initialize`. Returns the response to send, which
/// is an error instead when the record cannot be written and audit fails
/// closed (the session is then closed too).
pub(crate) async fn record_session_start(
    gw: &Gateway,
    who: Option<&Who>,
    vs: &str,
    client: Option<&str>,
    arrival: &Arrival,
    response: Value,
    started: Instant,
) -> Value {
    let audit = &gw.auditor;
    if !audit.enabled() {
        return response;
    }
    let note = CallNote::default();
    let outcome = classify(&response, &note);
    let event = Facts {
        who,
        vs,
        method: "initialize",
        jsonrpc_id: response.get("id").cloned().unwrap_or(Value::Null),
        arrival,
        client_name: client.map(str::to_owned),
        args: None,
        note: &note,
        outcome,
        response: &response,
        latency: started.elapsed(),
        trace: None,
    }
    .event(audit);
    match audit.record(event).await {
        Ok(_) => response,
        Err(e) => {
            tracing::error!(error = %e, "audit record of a session start not written");
            if !audit.fails_closed() {
                return response;
            }
            if let Some(id) = &arrival.session_id {
                if let Some(s) = gw.sessions.remove(id) {
                    tokio::spawn(async move { s.close().await });
                }
            }
            error_response(
                response.get("id").cloned().unwrap_or(Value::Null),
                ErrorCode::AuditUnavailable,
                "the session could not be recorded in the audit log; refused",
            )
        }
    }
}

fn client_name(caller: &Caller, msg: &Value) -> Option<String> {
    match caller {
        Caller::Legacy(s) => s.binding.client_name().map(str::to_owned),
        Caller::Modern { .. } => msg
            .pointer("/params/_meta")
            .and_then(|m| m.get(era::META_CLIENT_INFO))
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// Everything known about a finished request, to become its audit record.
struct Facts<'a> {
    who: Option<&'a Who>,
    vs: &'a str,
    method: &'a str,
    jsonrpc_id: Value,
    arrival: &'a Arrival,
    client_name: Option<String>,
    args: Option<(Value, String)>,
    note: &'a CallNote,
    outcome: Outcome,
    response: &'a Value,
    latency: Duration,
    trace: Option<(&'a str, &'a str)>,
}

impl Facts<'_> {
    fn event(self, audit: &portcullis_audit::Auditor) -> AuditEvent {
        let mut e = AuditEvent::new("mcp.request");
        e.actor = Some(actor(self.who, self.client_name, self.arrival));
        let is_resource = self.method.starts_with("resources/");
        e.target = Some(portcullis_audit::Target {
            virtual_server: Some(self.vs.to_owned()),
            upstream: self.note.upstream.clone(),
            tool: self.note.target.clone().filter(|_| !is_resource),
            upstream_tool: self.note.upstream_target.clone(),
            resource: self.note.target.clone().filter(|_| is_resource),
        });
        let (arguments, arguments_digest) = match self.args {
            Some((a, d)) => (Some(a), Some(d)),
            None => (None, None),
        };
        e.request = Some(portcullis_audit::Request {
            method: self.method.to_owned(),
            jsonrpc_id: Some(self.jsonrpc_id),
            session_id: self.arrival.session_id.clone(),
            protocol_version: self.arrival.protocol_version.clone(),
            arguments,
            arguments_digest,
            bytes_in: self.arrival.bytes_in as u64,
            trace_id: self.trace.map(|t| t.0.to_owned()),
            span_id: self.trace.map(|t| t.1.to_owned()),
        });
        e.decision = Some(match &self.note.decision {
            Some(d) => portcullis_audit::Decision {
                result: if d.allowed { "allow" } else { "deny" }.into(),
                policies: d.policies.clone(),
                errors: d.errors.clone(),
                policy_version: Some(d.version),
                checkpoint: d.checkpoint.map(str::to_owned),
                checkpoint_result: d.checkpoint_result.clone(),
                rate_limit: d.limited_by.clone(),
            },
            None => portcullis_audit::Decision {
                result: "none".into(),
                ..Default::default()
            },
        });
        let error = self.response.get("error");
        e.outcome = Some(portcullis_audit::Outcome {
            status: self.outcome.as_str().to_owned(),
            error_code: error.and_then(|e| e.get("code")).and_then(Value::as_i64),
            error_message: error
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(|m| audit.masker().map(|k| k.text(m)).unwrap_or_default()),
            latency_us: latency_us(self.latency),
            bytes_out: encoded_len(self.response),
        });
        e
    }
}

/// The audit actor for a request's caller.
pub(crate) fn actor(who: Option<&Who>, client_name: Option<String>, arrival: &Arrival) -> Actor {
    let Some(who) = who else {
        return Actor {
            kind: "anonymous".into(),
            client_name,
            user_agent: arrival
                .user_agent
                .as_deref()
                .map(|v| v.chars().take(256).collect()),
            ..Default::default()
        };
    };
    Actor {
        client_name,
        ip: who.ip.map(|ip| ip.to_string()),
        user_agent: arrival
            .user_agent
            .as_deref()
            .map(|v| v.chars().take(256).collect()),
        ..who.principal.audit_actor()
    }
}

/// Bytes of `v` as JSON, counted without building the text.
fn encoded_len(v: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn latency_us(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Name how a response ended.
pub(crate) fn classify(response: &Value, note: &CallNote) -> Outcome {
    if let Some(err) = response.get("error") {
        let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
        if code == ErrorCode::PolicyDenied.code()
            || code == ErrorCode::RateLimited.code()
            || code == ErrorCode::ConfirmationRefused.code()
            || note.hidden_denial
        {
            return Outcome::Denied;
        }
        if err.get("message").and_then(Value::as_str) == Some("request cancelled") {
            return Outcome::Cancelled;
        }
        return Outcome::ProtocolError;
    }
    if response.pointer("/result/isError") == Some(&Value::Bool(true)) {
        return Outcome::ToolError;
    }
    Outcome::Success
}
