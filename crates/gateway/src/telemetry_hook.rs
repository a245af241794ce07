//! Traces and metrics for one request.
//!
//! `observe.rs` calls `start` before the request is dispatched and `finish`
//! after its response is known; nothing else in the data plane knows about
//! telemetry. With no trace exporter configured, `start` only parses an
//! incoming `traceparent` (for the audit record) and leaves the message
//! untouched; metrics are always recorded in `finish`.

use crate::observe::{CallNote, Outcome};
use crate::vserver::VirtualServerRt;
use crate::Gateway;
use portcullis_protocol::era;
use portcullis_telemetry::{CallRecord, CallSpan, CallTrace, TraceParent};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The telemetry side of one request in flight.
pub(crate) struct CallTelemetry {
    /// W3C trace id and span id (lower-case hex) of the request, when known.
    ids: Option<([u8; 32], [u8; 16])>,
    vs: Option<Arc<VirtualServerRt>>,
    method: &'static str,
    /// Present when this request's spans are exported.
    span: Option<Box<Recording>>,
}

/// What a sampled request's spans need that `finish` is not told.
struct Recording {
    trace: CallTrace,
    method: String,
    request_id: Option<String>,
    session_id: Option<String>,
    protocol_version: Option<String>,
    /// The name or URI the client asked for (the note's resolved one wins).
    asked: Option<String>,
}

impl CallTelemetry {
    /// A request is starting. `traceparent` is the HTTP header, if any; `msg`
    /// may carry `params._meta.traceparent`. When traces are exported, the
    /// gateway's context replaces the caller's in `params._meta` so the
    /// upstream continues the gateway's CLIENT span.
    pub(crate) fn start(
        gw: &Gateway,
        traceparent: Option<&str>,
        msg: &mut Value,
        method: &str,
        virtual_server: &str,
        session_id: Option<&str>,
    ) -> CallTelemetry {
        // `_meta` carries the MCP client's span (SEP-414); the HTTP header is
        // the transport's, so `_meta` wins and the header becomes a link.
        let from_meta = msg
            .pointer("/params/_meta/traceparent")
            .and_then(Value::as_str)
            .and_then(TraceParent::parse);
        let from_header = traceparent.and_then(TraceParent::parse);
        let parent = from_meta.or(from_header);
        let mut t = CallTelemetry {
            ids: parent.map(|p| p.hex_ids()),
            vs: gw.vservers.get(virtual_server).cloned(),
            method: portcullis_telemetry::metrics::method_label(method),
            span: None,
        };
        let Some(tracer) = gw.telemetry.tracer() else {
            return t;
        };
        let link = match (from_meta, from_header) {
            (Some(m), Some(h)) if m != h => Some(h),
            _ => None,
        };
        let trace = tracer.begin(parent, link);
        t.ids = Some(trace.server.hex_ids());
        inject(msg, &trace.client.to_header());
        if trace.sampled() {
            let params = msg.get("params");
            let asked = match method {
                "tools/call" | "prompts/get" => params.and_then(|p| p.get("name")),
                m if m.starts_with("resources/") => params.and_then(|p| p.get("uri")),
                _ => None,
            };
            t.span = Some(Box::new(Recording {
                method: method.to_owned(),
                request_id: msg.get("id").map(|id| match id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
                session_id: session_id.map(str::to_owned),
                protocol_version: era::meta_protocol_version(msg).map(str::to_owned),
                asked: asked.and_then(Value::as_str).map(str::to_owned),
                trace,
            }));
        }
        t
    }

    /// `(trace_id, span_id)` for the audit record: the gateway's SERVER span
    /// when tracing, else the caller's context when it sent one.
    pub(crate) fn trace_ids(&self) -> Option<(&str, &str)> {
        let (t, s) = self.ids.as_ref()?;
        Some((std::str::from_utf8(t).ok()?, std::str::from_utf8(s).ok()?))
    }

    /// The response is known (it has not been released yet).
    pub(crate) fn finish(
        self,
        gw: &Gateway,
        note: &CallNote,
        outcome: Outcome,
        response: &Value,
        latency: Duration,
    ) {
        let outcome = convert(outcome);
        let vs = self.vs.as_deref().map(|v| v.name.as_str()).unwrap_or("");
        let upstream = note.upstream.as_deref();
        // Tool names only for routed calls: a client cannot mint series.
        let tool = match (self.method, upstream) {
            ("tools/call" | "prompts/get", Some(_)) => note.target.as_deref().unwrap_or(""),
            _ => "",
        };
        gw.telemetry.metrics().record_call(&CallRecord {
            virtual_server: vs,
            upstream: upstream.unwrap_or(""),
            method: self.method,
            tool,
            outcome,
            latency,
            denial_reason: denial_reason(note),
        });
        let (Some(rec), Some(tracer)) = (self.span, gw.telemetry.tracer()) else {
            return;
        };
        let forwarded = outcome.served()
            && (upstream.is_some() || rec.method.ends_with("/list") || rec.method == "initialize");
        tracer.export(
            &rec.trace,
            &CallSpan {
                method: &rec.method,
                target: note.target.as_deref().or(rec.asked.as_deref()),
                request_id: rec.request_id.as_deref(),
                session_id: rec.session_id.as_deref(),
                protocol_version: rec.protocol_version.as_deref(),
                virtual_server: vs,
                upstream,
                outcome,
                error_code: response.pointer("/error/code").and_then(Value::as_i64),
                latency,
                forwarded,
            },
        );
    }
}

/// Put `traceparent` in `params._meta` (creating both when absent); an
/// incoming `tracestate` there is kept. Messages whose `params` or `_meta`
/// is not an object are left alone.
fn inject(msg: &mut Value, traceparent: &str) {
    let Some(obj) = msg.as_object_mut() else {
        return;
    };
    let params = obj
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(params) = params.as_object_mut() else {
        return;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("traceparent".into(), Value::from(traceparent));
    }
}

fn convert(o: Outcome) -> portcullis_telemetry::Outcome {
    use portcullis_telemetry::Outcome as T;
    match o {
        Outcome::Success => T::Success,
        Outcome::ToolError => T::ToolError,
        Outcome::ProtocolError => T::ProtocolError,
        Outcome::Denied => T::Denied,
        Outcome::Cancelled => T::Cancelled,
    }
}

/// Why a request was refused: `rate_limit`, `checkpoint` or `policy`.
fn denial_reason(note: &CallNote) -> &'static str {
    match &note.decision {
        Some(d) if d.limited_by.is_some() => "rate_limit",
        Some(d) if d.allowed && d.checkpoint_result.is_some() => "checkpoint",
        _ => "policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn injects_into_meta_and_keeps_tracestate() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut m = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        inject(&mut m, tp);
        assert_eq!(m["params"]["_meta"]["traceparent"], tp);
        let mut m = json!({"id": 1, "method": "tools/call", "params": {"name": "t",
            "_meta": {"traceparent": "old", "tracestate": "k=v", "progressToken": 3}}});
        inject(&mut m, tp);
        assert_eq!(m["params"]["_meta"]["traceparent"], tp);
        assert_eq!(m["params"]["_meta"]["tracestate"], "k=v");
        assert_eq!(m["params"]["_meta"]["progressToken"], 3);
        let mut m = json!({"id": 1, "method": "x", "params": [1, 2]});
        inject(&mut m, tp);
        assert_eq!(m["params"], json!([1, 2]));
    }
}
