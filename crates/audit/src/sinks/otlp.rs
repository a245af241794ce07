//! OTLP/HTTP logs, JSON encoding: one `POST` per batch to the configured
//! endpoint (the collector's `/v1/logs`). Encoded by hand rather than through
//! the OpenTelemetry SDK, whose batch processor drops records on overflow.
//!
//! Each record becomes one LogRecord: `body` is the record's export JSON as a
//! string, attributes carry the searchable fields (`event.name`, `audit.seq`,
//! `user.name`, `portcullis.tool`, …), and the request's trace context, when
//! the record has one, becomes the LogRecord's `traceId`/`spanId`. Per the
//! OTLP JSON mapping, 64-bit integers are decimal strings.
//!
//! Acknowledged by any 2xx. A `partialSuccess` with rejected records is
//! logged (the OTLP specification forbids retrying it) and counts as
//! delivered.

use super::{DeliveryError, Level};
use crate::db::StoredRecord;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(super) struct OtlpSink {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: HeaderMap,
    replica: String,
}

impl OtlpSink {
    pub(super) fn new(
        endpoint: &str,
        headers: &BTreeMap<String, String>,
        replica: &str,
    ) -> Result<OtlpSink, String> {
        let endpoint =
            reqwest::Url::parse(endpoint).map_err(|e| format!("endpoint is not a URL: {e}"))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a valid header name"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of {name:?} is not a valid header value"))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(OtlpSink {
            client: super::http::client()?,
            endpoint,
            headers: map,
            replica: replica.to_owned(),
        })
    }

    pub(super) fn describe(&self) -> String {
        super::redact_url(self.endpoint.as_str())
    }

    pub(super) async fn deliver(&mut self, records: &[StoredRecord]) -> Result<(), DeliveryError> {
        let body = request_body(records, &self.replica, crate::clock::now_us());
        let resp = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(super::http::transport_error)?;
        let (status, retry_after, text) = super::http::read_response(resp).await?;
        if !(200..300).contains(&status) {
            return Err(super::http::status_error(status, retry_after, &text));
        }
        if let Some((rejected, message)) = partial_rejection(&text) {
            tracing::warn!(endpoint = %self.describe(), rejected,
                message = %super::http::shorten(&message, 300),
                "the OTLP receiver accepted the batch but rejected some records (not retried)");
        }
        Ok(())
    }
}

/// `ExportLogsServiceRequest` in the OTLP JSON encoding.
pub(crate) fn request_body(records: &[StoredRecord], replica: &str, now_us: i64) -> String {
    let observed = nanos(now_us);
    let logs: Vec<Value> = records.iter().map(|r| log_record(r, &observed)).collect();
    let host = replica.split('/').next().unwrap_or(replica);
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            string_attr("service.name", "portcullis"),
            string_attr("service.version", env!("CARGO_PKG_VERSION")),
            string_attr("service.instance.id", replica),
            string_attr("host.name", host),
        ]},
        "scopeLogs": [{
            "scope": {"name": "portcullis.audit", "version": env!("CARGO_PKG_VERSION")},
            "logRecords": logs,
        }],
    }]})
    .to_string()
}

fn log_record(r: &StoredRecord, observed: &str) -> Value {
    let (number, text) = match super::level(r) {
        Level::Info => (9, "INFO"),
        Level::Notice => (10, "NOTICE"),
        Level::Warning => (13, "WARN"),
    };
    let mut attributes = vec![
        string_attr("event.name", &r.event_type),
        string_attr("audit.event_id", &r.event_id),
        json!({"key": "audit.seq", "value": {"intValue": r.seq.to_string()}}),
        string_attr("audit.hash", &r.hash),
        string_attr("portcullis.replica", &r.replica),
    ];
    let optional = [
        ("user.name", &r.username),
        ("portcullis.virtual_server", &r.virtual_server),
        ("portcullis.upstream", &r.upstream),
        ("portcullis.tool", &r.tool),
        ("portcullis.method", &r.method),
        ("portcullis.outcome", &r.outcome),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attributes.push(string_attr(key, v));
        }
    }
    let mut rec = json!({
        "timeUnixNano": nanos(r.time_us),
        "observedTimeUnixNano": observed,
        "severityNumber": number,
        "severityText": text,
        "body": {"stringValue": super::export_text(r)},
        "attributes": attributes,
    });
    // Correlate with the request's trace when the record names one.
    let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    let hex_of = |p: &str, len: usize| {
        body.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
    };
    if let (Some(trace), Some(span), Value::Object(map)) = (
        hex_of("/request/trace_id", 32),
        hex_of("/request/span_id", 16),
        &mut rec,
    ) {
        map.insert("traceId".into(), Value::String(trace));
        map.insert("spanId".into(), Value::String(span));
    }
    rec
}

fn string_attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn nanos(us: i64) -> String {
    (i128::from(us.max(0)) * 1000).to_string()
}

/// `(rejectedLogRecords, errorMessage)` of a partial success, when any record
/// was rejected.
fn partial_rejection(text: &str) -> Option<(i64, String)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let partial = v.get("partialSuccess")?;
    let rejected = match partial.get("rejectedLogRecords")? {
        Value::String(s) => s.parse().ok()?,
        n => n.as_i64()?,
    };
    (rejected > 0).then(|| {
        let message = partial
            .get("errorMessage")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        (rejected, message)
    })
}
