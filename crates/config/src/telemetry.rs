//! The `telemetry:` section: OpenTelemetry traces, Prometheus metrics and
//! alerts.

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    pub traces: Traces,
    pub metrics: Metrics,
    pub alerts: Alerts,
}

/// OpenTelemetry traces, exported with OTLP over HTTP (protobuf). Without an
/// `endpoint` nothing is exported, and a client's `traceparent` still reaches
/// the upstreams untouched.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Traces {
    /// The collector's traces URL, used as is, e.g.
    /// `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: Option<String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of new traces (requests without an incoming sampled context) that
    /// are recorded, 0.0 to 1.0. A client's sampling decision is always kept.
    pub sample_ratio: f64,
    /// Extra HTTP headers for the collector; `${ENV}` references are expanded.
    pub headers: BTreeMap<String, String>,
    /// Longest one export may take.
    pub timeout_ms: u64,
    /// Spans wait at most this long before being sent.
    pub batch_delay_ms: u64,
    /// Spans held while the collector is slow; beyond it new spans are dropped
    /// (the data plane never waits for the collector).
    pub max_queue: usize,
}

impl Default for Traces {
    fn default() -> Self {
        Traces {
            endpoint: None,
            service_name: "portcullis".into(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            timeout_ms: 10_000,
            batch_delay_ms: 1_000,
            max_queue: 4_096,
        }
    }
}

/// Prometheus metrics (always collected; this says where they are served).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve `/metrics` on the main listener. With authentication on, a scrape
    /// needs an API token with the `admin` scope of an administrator.
    pub main_listener: bool,
    /// A separate, unauthenticated listener for scrapers on an internal
    /// network (`/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:9464`.
    pub listen: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            main_listener: true,
            listen: None,
        }
    }
}

/// Alerts computed from the metrics every `interval_secs`, per upstream (and
/// virtual server for denials). Firing and clearing are logged at warn under
/// the target `portcullis::alert` and, with a `webhook`, POSTed as JSON.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    pub enabled: bool,
    /// Where alert events are POSTed (JSON).
    pub webhook: Option<String>,
    /// Extra HTTP headers for the webhook; `${ENV}` references are expanded.
    pub webhook_headers: BTreeMap<String, String>,
    /// Length of one evaluation window.
    pub interval_secs: u64,
    pub denials: DenialRule,
    pub error_rate: ErrorRateRule,
    pub latency: LatencyRule,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            enabled: true,
            webhook: None,
            webhook_headers: BTreeMap::new(),
            interval_secs: 60,
            denials: DenialRule::default(),
            error_rate: ErrorRateRule::default(),
            latency: LatencyRule::default(),
        }
    }
}

/// Denials in one window reach `threshold` and `factor` times the usual
/// number (a slow moving average of past windows).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DenialRule {
    pub threshold: u64,
    pub factor: f64,
}

impl Default for DenialRule {
    fn default() -> Self {
        DenialRule {
            threshold: 20,
            factor: 3.0,
        }
    }
}

/// Errors (JSON-RPC errors and tool errors) over calls in one window reach
/// `threshold`, counted only when the window has at least `min_calls`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorRateRule {
    pub threshold: f64,
    pub min_calls: u64,
}

impl Default for ErrorRateRule {
    fn default() -> Self {
        ErrorRateRule {
            threshold: 0.25,
            min_calls: 20,
        }
    }
}

/// The mean latency of one window reaches `factor` times the upstream's
/// usual mean (a slow moving average), after `warmup_windows` windows with at
/// least `min_calls` calls have set that baseline.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyRule {
    pub factor: f64,
    pub min_calls: u64,
    pub warmup_windows: u32,
}

impl Default for LatencyRule {
    fn default() -> Self {
        LatencyRule {
            factor: 3.0,
            min_calls: 20,
            warmup_windows: 5,
        }
    }
}

impl Telemetry {
    /// Expand `${ENV}` in header values (secrets stay out of the YAML).
    pub(crate) fn expand_env(
        &mut self,
        expand: impl Fn(&str) -> Result<String, ConfigError>,
    ) -> Result<(), ConfigError> {
        for v in self
            .traces
            .headers
            .values_mut()
            .chain(self.alerts.webhook_headers.values_mut())
        {
            *v = expand(v)?;
        }
        Ok(())
    }
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

fn http_url(at: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid(format!("{at} must be an http:// or https:// URL")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(format!("{at} has no host")));
    }
    Ok(())
}

fn header_names(at: &str, headers: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (k, v) in headers {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if k.is_empty() || !k.bytes().all(token) {
            return Err(invalid(format!("{at}: {k:?} is not a header name")));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(invalid(format!(
                "{at}: the value of {k:?} has a line break"
            )));
        }
    }
    Ok(())
}

fn positive(at: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(invalid(format!("{at} must be a positive number")));
    }
    Ok(())
}

/// Ranges, URLs and addresses of the `telemetry:` section.
pub(crate) fn validate(t: &Telemetry) -> Result<(), ConfigError> {
    let tr = &t.traces;
    if let Some(e) = &tr.endpoint {
        http_url("telemetry.traces.endpoint", e)?;
    }
    if tr.service_name.trim().is_empty() {
        return Err(invalid("telemetry.traces.service_name is empty".into()));
    }
    if !(0.0..=1.0).contains(&tr.sample_ratio) {
        return Err(invalid(
            "telemetry.traces.sample_ratio must be between 0.0 and 1.0".into(),
        ));
    }
    header_names("telemetry.traces.headers", &tr.headers)?;
    if tr.timeout_ms == 0 || tr.batch_delay_ms == 0 {
        return Err(invalid(
            "telemetry.traces.timeout_ms and batch_delay_ms must be at least 1".into(),
        ));
    }
    if !(64..=1_000_000).contains(&tr.max_queue) {
        return Err(invalid(
            "telemetry.traces.max_queue must be between 64 and 1000000".into(),
        ));
    }
    if let Some(l) = &t.metrics.listen {
        l.parse::<SocketAddr>()
            .map_err(|_| invalid(format!("telemetry.metrics.listen {l:?} is not IP:PORT")))?;
    }
    let a = &t.alerts;
    if let Some(w) = &a.webhook {
        http_url("telemetry.alerts.webhook", w)?;
    }
    header_names("telemetry.alerts.webhook_headers", &a.webhook_headers)?;
    if !(1..=86_400).contains(&a.interval_secs) {
        return Err(invalid(
            "telemetry.alerts.interval_secs must be between 1 and 86400".into(),
        ));
    }
    if a.denials.threshold == 0 {
        return Err(invalid(
            "telemetry.alerts.denials.threshold must be at least 1".into(),
        ));
    }
    positive("telemetry.alerts.denials.factor", a.denials.factor)?;
    if !(a.error_rate.threshold > 0.0 && a.error_rate.threshold <= 1.0) {
        return Err(invalid(
            "telemetry.alerts.error_rate.threshold must be above 0.0 and at most 1.0".into(),
        ));
    }
    if a.error_rate.min_calls == 0 || a.latency.min_calls == 0 {
        return Err(invalid(
            "telemetry.alerts: min_calls must be at least 1".into(),
        ));
    }
    positive("telemetry.alerts.latency.factor", a.latency.factor)?;
    if a.latency.factor <= 1.0 {
        return Err(invalid(
            "telemetry.alerts.latency.factor must be above 1.0".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn load(telemetry: &str) -> Result<Config, crate::ConfigError> {
        Config::from_yaml(
            &format!("upstreams: []\nvirtual_servers: []\ntelemetry: {telemetry}\n"),
            "t",
        )
    }

    #[test]
    fn defaults_and_full_section() {
        let c = load("{}").expect("empty section");
        assert!(c.telemetry.traces.endpoint.is_none());
        assert!(c.telemetry.metrics.main_listener);
        assert!(c.telemetry.alerts.enabled);
        std::env::set_var("PC_TELEMETRY_TEST_TOKEN", "s3cret");
        let c = load(
            "{traces: {endpoint: 'http://127.0.0.1:4318/v1/traces', sample_ratio: 0.5, \
             headers: {Authorization: 'Bearer ${PC_TELEMETRY_TEST_TOKEN}'}}, \
             metrics: {listen: '127.0.0.1:9464', main_listener: false}, \
             alerts: {webhook: 'https://hooks.example.com/x', interval_secs: 5, \
             denials: {threshold: 3, factor: 2.0}, error_rate: {threshold: 0.5, min_calls: 4}, \
             latency: {factor: 2.5, min_calls: 3, warmup_windows: 2}}}",
        )
        .expect("full section");
        assert_eq!(c.telemetry.traces.headers["Authorization"], "Bearer s3cret");
        assert_eq!(c.telemetry.alerts.denials.threshold, 3);
        assert_eq!(
            c.telemetry.metrics.listen.as_deref(),
            Some("127.0.0.1:9464")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "{traces: {endpoint: 'ftp://x'}}",
            "{traces: {sample_ratio: 1.5}}",
            "{traces: {headers: {'bad header': x}}}",
            "{traces: {max_queue: 1}}",
            "{metrics: {listen: 'localhost'}}",
            "{alerts: {interval_secs: 0}}",
            "{alerts: {denials: {threshold: 0}}}",
            "{alerts: {error_rate: {threshold: 0}}}",
            "{alerts: {latency: {factor: 1.0}}}",
            "{alerts: {webhook: 'http://'}}",
            "{alerts: {nonsense: 1}}",
        ] {
            assert!(load(bad).is_err(), "{bad} was accepted");
        }
    }
}
