//! Traces and metrics for one request (owned by the telemetry work).
//!
//! `observe.rs` calls `start` before the request is dispatched and `finish`
//! after its response is known; nothing else in the data plane knows about
//! telemetry.

use crate::observe::{CallNote, Outcome};
use crate::Gateway;
use serde_json::Value;
use std::time::Duration;

/// The telemetry side of one request in flight.
pub(crate) struct CallTelemetry {
    /// W3C trace id and span id (lower-case hex) of the request, when known.
    trace: Option<(String, String)>,
}

impl CallTelemetry {
    /// A request is starting. `traceparent` is the HTTP header, if any; `msg`
    /// may carry `params._meta.traceparent`. May rewrite `msg`'s
    /// `params._meta` so the upstream receives this gateway's context.
    pub(crate) fn start(
        _gw: &Gateway,
        traceparent: Option<&str>,
        msg: &mut Value,
        _method: &str,
        _virtual_server: &str,
        _session_id: Option<&str>,
    ) -> CallTelemetry {
        let header = traceparent.or_else(|| {
            msg.pointer("/params/_meta/traceparent")
                .and_then(Value::as_str)
        });
        CallTelemetry {
            trace: header.and_then(parse_traceparent),
        }
    }

    /// `(trace_id, span_id)` for the audit record.
    pub(crate) fn trace_ids(&self) -> Option<(&str, &str)> {
        self.trace.as_ref().map(|(t, s)| (t.as_str(), s.as_str()))
    }

    /// The response is known (it has not been released yet).
    pub(crate) fn finish(
        self,
        _gw: &Gateway,
        _note: &CallNote,
        _outcome: Outcome,
        _response: &Value,
        _latency: Duration,
    ) {
    }
}

fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let mut parts = v.trim().split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(trace, 32) && hex(span, 16)).then(|| (trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
}
