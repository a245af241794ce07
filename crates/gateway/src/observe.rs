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
use portcullis_protocol::ErrorCode;
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
    let vs = caller.binding().vs.name.clone();
    let telemetry = CallTelemetry::start(
        gw,
        arrival.traceparent.as_deref(),
        &mut msg,
        method,
        &vs,
        arrival.session_id.as_deref(),
    );
    let cancelled = cancelled_response(id.clone());
    let work = NOTE.scope(
        RefCell::new(CallNote::default()),
        async move {
            let resp = dispatch::handle(gw, caller, who, msg, method, id, out).await;
            (resp, NOTE.with(|n| n.take()))
        },
    );
    let (response, note) = match abort {
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
    telemetry.finish(gw, &note, outcome, &response, latency);
    let _ = (who, &arrival, latency_us(latency));
    response
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
