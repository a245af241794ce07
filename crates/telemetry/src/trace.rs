//! W3C trace context and the spans of one MCP request.
//!
//! A request gets a SERVER span (the gateway receiving it) and a CLIENT child
//! span (the gateway calling the upstream); the CLIENT span's context is what
//! the upstream receives in `params._meta.traceparent`. Ids and the sampling
//! decision are made when the request starts (so the upstream can be told);
//! the spans are built once, when the response is known, and handed to the
//! OpenTelemetry batch processor, which exports them with OTLP/HTTP from its
//! own thread. The data plane never waits for the collector.

use crate::{Outcome, TelemetryError};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use rand::Rng;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// Attribute names of the OpenTelemetry MCP semantic conventions (status:
/// Development; the semconv crate only has them as deprecated experiments).
pub mod attr {
    pub const MCP_METHOD_NAME: &str = "mcp.method.name";
    pub const MCP_SESSION_ID: &str = "mcp.session.id";
    pub const MCP_PROTOCOL_VERSION: &str = "mcp.protocol.version";
    pub const MCP_RESOURCE_URI: &str = "mcp.resource.uri";
    pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
    pub const GEN_AI_PROMPT_NAME: &str = "gen_ai.prompt.name";
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const JSONRPC_REQUEST_ID: &str = "jsonrpc.request.id";
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
    pub const VIRTUAL_SERVER: &str = "portcullis.virtual_server";
    pub const UPSTREAM: &str = "portcullis.upstream";
    pub const OUTCOME: &str = "portcullis.outcome";
}

/// A parsed W3C `traceparent` (version 00 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Lower-case hex of `bytes` into `out` (which is twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

impl TraceParent {
    /// Parse a `traceparent` value per W3C Trace Context: lower-case hex,
    /// version not `ff`, non-zero ids; a version above 00 may append fields.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim().as_bytes();
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = unhex::<1>(&v[0..2])?[0];
        if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let trace_id = unhex::<16>(&v[3..35])?;
        let span_id = unhex::<8>(&v[36..52])?;
        let flags = unhex::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` header value (version 00).
    pub fn to_header(&self) -> String {
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id, &mut b[3..35]);
        hex_into(&self.span_id, &mut b[36..52]);
        hex_into(&[self.flags & 1], &mut b[53..55]);
        String::from_utf8_lossy(&b).into_owned()
    }

    /// `(trace_id, span_id)` in lower-case hex, without allocating.
    pub fn hex_ids(&self) -> ([u8; 32], [u8; 16]) {
        let (mut t, mut s) = ([0u8; 32], [0u8; 16]);
        hex_into(&self.trace_id, &mut t);
        hex_into(&self.span_id, &mut s);
        (t, s)
    }

    fn span_context(&self, remote: bool, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags & 1),
            remote,
            state,
        )
    }
}

/// The trace context of one request in flight (only when tracing is on).
#[derive(Debug, Clone)]
pub struct CallTrace {
    /// The caller's context, continued.
    pub parent: Option<TraceParent>,
    /// Another valid context the request carried (the HTTP header when
    /// `_meta` won), kept as a span link.
    pub link: Option<TraceParent>,
    /// The gateway's SERVER span.
    pub server: TraceParent,
    /// The CLIENT span towards the upstream: what the upstream receives.
    pub client: TraceParent,
    pub started: SystemTime,
}

impl CallTrace {
    pub fn sampled(&self) -> bool {
        self.server.sampled()
    }
}

/// What is known about a request when its response is.
#[derive(Debug, Clone)]
pub struct CallSpan<'a> {
    pub method: &'a str,
    /// Tool or prompt name, or resource URI.
    pub target: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
    pub virtual_server: &'a str,
    pub upstream: Option<&'a str>,
    pub outcome: Outcome,
    /// The JSON-RPC error code of an error response.
    pub error_code: Option<i64>,
    pub latency: Duration,
    /// Whether the request was forwarded at all (no CLIENT span otherwise).
    pub forwarded: bool,
}

/// Span name per the MCP conventions: `{method} {target}` for tools and
/// prompts, else the method.
pub fn span_name(method: &str, target: Option<&str>) -> String {
    match (method, target) {
        ("tools/call" | "prompts/get", Some(t)) => format!("{method} {t}"),
        _ => method.to_owned(),
    }
}

/// Exports request spans; present only when `telemetry.traces.endpoint` is set.
pub struct Tracer {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    /// Root traces are sampled when the low 64 bits of the trace id are below.
    ratio_bound: u64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("ratio_bound", &self.ratio_bound)
            .finish()
    }
}

impl Tracer {
    pub fn new(cfg: &portcullis_config::Traces, endpoint: &str) -> Result<Tracer, TelemetryError> {
        let client = ExportClient::new(Duration::from_millis(cfg.timeout_ms))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_millis(cfg.timeout_ms))
            .with_headers(cfg.headers.clone().into_iter().collect())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.max_queue)
            .with_max_export_batch_size(512.min(cfg.max_queue))
            .with_scheduled_delay(Duration::from_millis(cfg.batch_delay_ms))
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
            .build();
        processor.set_resource(&resource);
        Ok(Tracer {
            processor,
            scope: InstrumentationScope::builder("portcullis")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            ratio_bound: ratio_bound(cfg.sample_ratio),
        })
    }

    /// Continue `parent` (or start a trace) for a request arriving now.
    pub fn begin(&self, parent: Option<TraceParent>, link: Option<TraceParent>) -> CallTrace {
        let mut rng = rand::thread_rng();
        let trace_id = match &parent {
            Some(p) => p.trace_id,
            None => loop {
                let t: [u8; 16] = rng.gen();
                if t != [0; 16] {
                    break t;
                }
            },
        };
        let sampled = match &parent {
            Some(p) => p.sampled(),
            None => sample_root(&trace_id, self.ratio_bound),
        };
        let mut span = || loop {
            let s: [u8; 8] = rng.gen();
            if s != [0; 8] {
                break s;
            }
        };
        let flags = sampled as u8;
        CallTrace {
            parent,
            link,
            server: TraceParent {
                trace_id,
                span_id: span(),
                flags,
            },
            client: TraceParent {
                trace_id,
                span_id: span(),
                flags,
            },
            started: SystemTime::now(),
        }
    }

    /// Record the spans of a finished request (when it was sampled).
    pub fn export(&self, call: &CallTrace, span: &CallSpan<'_>) {
        if !call.sampled() {
            return;
        }
        let end = call.started + span.latency;
        let name = span_name(span.method, span.target);
        let mut attrs = semantic_attributes(span);
        let status = match error_type(span) {
            Some(e) => {
                attrs.push(KeyValue::new(attr::ERROR_TYPE, e.clone()));
                Status::Error {
                    description: Cow::Owned(e),
                }
            }
            None => Status::Unset,
        };
        if span.forwarded {
            let mut client_attrs = attrs.clone();
            if let Some(u) = span.upstream {
                client_attrs.push(KeyValue::new("server.address", u.to_owned()));
            }
            self.processor.on_end(SpanData {
                span_context: call.client.span_context(false, TraceState::NONE),
                parent_span_id: SpanId::from_bytes(call.server.span_id),
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Owned(name.clone()),
                start_time: call.started,
                end_time: end,
                attributes: client_attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: status.clone(),
                instrumentation_scope: self.scope.clone(),
            });
        }
        attrs.push(KeyValue::new(attr::NETWORK_TRANSPORT, "tcp"));
        attrs.push(KeyValue::new(attr::NETWORK_PROTOCOL_NAME, "http"));
        let mut links = SpanLinks::default();
        if let Some(l) = &call.link {
            links.links.push(opentelemetry::trace::Link::with_context(
                l.span_context(true, TraceState::NONE),
            ));
        }
        self.processor.on_end(SpanData {
            span_context: call.server.span_context(false, TraceState::NONE),
            parent_span_id: call
                .parent
                .map(|p| SpanId::from_bytes(p.span_id))
                .unwrap_or(SpanId::INVALID),
            parent_span_is_remote: call.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: call.started,
            end_time: end,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Send what is queued and stop the export thread. Blocks: call it from a
    /// blocking context.
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

fn ratio_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        (ratio * u64::MAX as f64) as u64
    }
}

/// Trace-id ratio sampling: the decision depends only on the trace id, so
/// every participant that uses the same rule agrees.
fn sample_root(trace_id: &[u8; 16], bound: u64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    bound == u64::MAX || u64::from_be_bytes(low) < bound
}

/// `error.type` per the conventions: the JSON-RPC code, or `tool_error`.
pub fn error_type(span: &CallSpan<'_>) -> Option<String> {
    match (span.error_code, span.outcome) {
        (_, Outcome::ToolError) => Some("tool_error".into()),
        (Some(code), _) => Some(code.to_string()),
        (None, Outcome::Success) => None,
        (None, o) => Some(o.as_str().into()),
    }
}

fn semantic_attributes(span: &CallSpan<'_>) -> Vec<KeyValue> {
    let s = |v: &str| Value::String(v.to_owned().into());
    let mut a = Vec::with_capacity(14);
    a.push(KeyValue::new(attr::MCP_METHOD_NAME, s(span.method)));
    if let Some(t) = span.target {
        match span.method {
            "tools/call" => {
                a.push(KeyValue::new(attr::GEN_AI_TOOL_NAME, s(t)));
                a.push(KeyValue::new(attr::GEN_AI_OPERATION_NAME, "execute_tool"));
            }
            "prompts/get" => a.push(KeyValue::new(attr::GEN_AI_PROMPT_NAME, s(t))),
            m if m.starts_with("resources/") => a.push(KeyValue::new(attr::MCP_RESOURCE_URI, s(t))),
            _ => {}
        }
    }
    if let Some(id) = span.request_id {
        a.push(KeyValue::new(attr::JSONRPC_REQUEST_ID, s(id)));
    }
    if let Some(sid) = span.session_id {
        a.push(KeyValue::new(attr::MCP_SESSION_ID, s(sid)));
    }
    if let Some(v) = span.protocol_version {
        a.push(KeyValue::new(attr::MCP_PROTOCOL_VERSION, s(v)));
    }
    if let Some(code) = span.error_code {
        a.push(KeyValue::new(
            attr::RPC_RESPONSE_STATUS_CODE,
            code.to_string(),
        ));
    }
    a.push(KeyValue::new(attr::VIRTUAL_SERVER, s(span.virtual_server)));
    if let Some(u) = span.upstream {
        a.push(KeyValue::new(attr::UPSTREAM, s(u)));
    }
    a.push(KeyValue::new(attr::OUTCOME, span.outcome.as_str()));
    a
}

/// The OTLP exporter's HTTP client: our reqwest (no second HTTP stack) on a
/// small runtime of its own, driven by the batch processor's thread, so
/// exports never run on the data plane's threads.
#[derive(Debug)]
struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
}

impl ExportClient {
    fn new(timeout: Duration) -> Result<ExportClient, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(ExportClient {
            client,
            runtime,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, HttpError> {
        let request: reqwest::Request = request.try_into()?;
        let client = self.client.clone();
        let timeout = self.timeout;
        // The processor's thread is not a tokio thread: drive the request on
        // our own runtime.
        self.runtime.block_on(async move {
            let resp = tokio::time::timeout(timeout, client.execute(request))
                .await
                .map_err(|_| "OTLP export timed out")??;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            let mut out = http::Response::builder().status(status).body(body)?;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_traceparent() {
        let tp = TraceParent::parse(TP).expect("valid");
        assert!(tp.sampled());
        assert_eq!(tp.to_header(), TP);
        let (t, s) = tp.hex_ids();
        assert_eq!(&t, b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&s, b"00f067aa0ba902b7");
        let unsampled = TraceParent::parse(&TP.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.sampled());
        // A later version may append fields after a dash.
        assert!(TraceParent::parse(&format!("01{}-extra", &TP[2..])).is_some());
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?} was accepted");
        }
    }

    #[test]
    fn root_sampling_follows_the_ratio() {
        let id = |low: u64| {
            let mut t = [1u8; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            t
        };
        assert!(sample_root(&id(u64::MAX), ratio_bound(1.0)));
        assert!(!sample_root(&id(0), ratio_bound(0.0)));
        assert!(sample_root(&id(u64::MAX / 4), ratio_bound(0.5)));
        assert!(!sample_root(&id(u64::MAX / 4 * 3), ratio_bound(0.5)));
    }

    #[test]
    fn names_and_error_types_follow_the_conventions() {
        assert_eq!(
            span_name("tools/call", Some("gh_create")),
            "tools/call gh_create"
        );
        assert_eq!(
            span_name("resources/read", Some("file:///x")),
            "resources/read"
        );
        assert_eq!(span_name("tools/list", None), "tools/list");
        let mut s = CallSpan {
            method: "tools/call",
            target: Some("t"),
            request_id: Some("7"),
            session_id: None,
            protocol_version: None,
            virtual_server: "vs",
            upstream: Some("up"),
            outcome: Outcome::Success,
            error_code: None,
            latency: Duration::from_millis(1),
            forwarded: true,
        };
        assert_eq!(error_type(&s), None);
        s.outcome = Outcome::ToolError;
        assert_eq!(error_type(&s).as_deref(), Some("tool_error"));
        s.outcome = Outcome::Denied;
        s.error_code = Some(-31010);
        assert_eq!(error_type(&s).as_deref(), Some("-31010"));
        let attrs = semantic_attributes(&s);
        let get = |k: &str| {
            attrs
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(get(attr::GEN_AI_TOOL_NAME).as_deref(), Some("t"));
        assert_eq!(
            get(attr::GEN_AI_OPERATION_NAME).as_deref(),
            Some("execute_tool")
        );
        assert_eq!(get(attr::JSONRPC_REQUEST_ID).as_deref(), Some("7"));
        assert_eq!(
            get(attr::RPC_RESPONSE_STATUS_CODE).as_deref(),
            Some("-31010")
        );
        assert_eq!(get(attr::MCP_SESSION_ID), None);
    }
}
