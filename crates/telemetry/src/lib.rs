//! Portcullis telemetry: what the gateway tells operators about its traffic.
//!
//! - **Traces** (`trace`): OpenTelemetry spans per MCP request following the
//!   MCP semantic conventions (`mcp.method.name`, `gen_ai.tool.name`, …), the
//!   caller's W3C trace context continued and the gateway's own passed to the
//!   upstream, exported with OTLP over HTTP when an endpoint is configured.
//! - **Metrics** (`metrics`): Prometheus counters and histograms of calls,
//!   denials and latency per virtual server, upstream, tool and outcome, and
//!   upstream health; always on, a few atomic adds per call.
//! - **Health** (`health`): the named readiness checks behind `/readyz`.
//! - **Alerts** (`alerts`): denial spikes, error rates and latency drift per
//!   upstream, logged and sent to a webhook.
//!
//! It is not the audit log (that is `portcullis-audit`, durable and
//! tamper-evident; telemetry may drop data under pressure) and it does not
//! serve HTTP itself: the binary mounts `/metrics` and `/readyz` and decides
//! who may read them.

pub mod alerts;
pub mod health;
pub mod metrics;
pub mod trace;

pub use health::Readiness;
pub use metrics::{CallRecord, Metrics, UpstreamHealth};
pub use trace::{CallSpan, CallTrace, TraceParent, Tracer};

use portcullis_config::Config;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("trace exporter: {0}")]
    Exporter(String),
    #[error("alert webhook: {0}")]
    Webhook(String),
}

/// How a request ended (the label `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success = 0,
    ToolError = 1,
    ProtocolError = 2,
    Denied = 3,
    Cancelled = 4,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::ToolError,
        Outcome::ProtocolError,
        Outcome::Denied,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ToolError => "tool_error",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The request was answered (not refused by the gateway, not cancelled).
    pub fn served(self) -> bool {
        matches!(
            self,
            Outcome::Success | Outcome::ToolError | Outcome::ProtocolError
        )
    }
}

/// The gateway's telemetry: metrics (always), a tracer (when exporting),
/// readiness checks and the alert tasks.
pub struct Telemetry {
    metrics: Arc<Metrics>,
    tracer: Option<Arc<Tracer>>,
    readiness: Readiness,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.tracer.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Metrics only: no exporter, no alerts (tests, benchmarks, tools).
    pub fn metrics_only<'a>(upstreams: impl IntoIterator<Item = &'a str>) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            metrics: Arc::new(Metrics::new(upstreams)),
            tracer: None,
            readiness: Readiness::default(),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Everything the configuration asks for. Must run inside a tokio
    /// runtime (the alert tasks are spawned on it).
    pub fn start(config: &Config) -> Result<Arc<Telemetry>, TelemetryError> {
        let t = &config.telemetry;
        let metrics = Arc::new(Metrics::new(
            config.upstreams.iter().map(|u| u.name.as_str()),
        ));
        let tracer = match &t.traces.endpoint {
            Some(endpoint) => {
                let tracer = Tracer::new(&t.traces, endpoint)?;
                tracing::info!(endpoint = %endpoint, sample_ratio = t.traces.sample_ratio, "exporting traces (OTLP/HTTP)");
                Some(Arc::new(tracer))
            }
            None => None,
        };
        let mut tasks = Vec::new();
        if t.alerts.enabled {
            let webhook = match &t.alerts.webhook {
                Some(url) => {
                    let mut headers = reqwest::header::HeaderMap::new();
                    for (k, v) in &t.alerts.webhook_headers {
                        let name = reqwest::header::HeaderName::try_from(k.as_str())
                            .map_err(|e| TelemetryError::Webhook(format!("header {k:?}: {e}")))?;
                        let mut value = reqwest::header::HeaderValue::from_str(v)
                            .map_err(|e| TelemetryError::Webhook(format!("header {k:?}: {e}")))?;
                        value.set_sensitive(true);
                        headers.insert(name, value);
                    }
                    let (tx, task) = alerts::spawn_webhook(
                        url.clone(),
                        headers,
                        metrics.clone(),
                        5,
                        std::time::Duration::from_millis(500),
                    )
                    .map_err(|e| TelemetryError::Webhook(e.to_string()))?;
                    tasks.push(task);
                    Some(tx)
                }
                None => None,
            };
            tasks.push(alerts::spawn(
                t.alerts.clone(),
                Arc::downgrade(&metrics),
                webhook,
            ));
        }
        Ok(Arc::new(Telemetry {
            metrics,
            tracer,
            readiness: Readiness::default(),
            tasks: Mutex::new(tasks),
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Present when traces are exported.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.tracer.as_deref()
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Stop the alert tasks and send the spans still queued (waits at most
    /// the export timeout, off the async threads).
    pub async fn shutdown(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(tracer) = self.tracer.clone() {
            let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        }
    }
}

pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (UTC).
pub(crate) fn rfc3339(secs: u64) -> String {
    portcullis_config::calendar::rfc3339_seconds(secs.min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
