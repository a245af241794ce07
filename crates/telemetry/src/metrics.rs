//! Prometheus metrics: counters, histograms and gauges on atomics, rendered in
//! the text exposition format (0.0.4) when scraped.
//!
//! Recording a call costs one hash of its label values, a read lock on the
//! series map (never held across `.await`) and a few relaxed atomic adds; a
//! series is allocated once, the first time its label set is seen. Label sets
//! are bounded: methods come from a fixed list, tools only for calls routed
//! to an upstream, and past `MAX_SERIES` new label sets share one overflow
//! series.

use crate::Outcome;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Most label sets per metric family; beyond it new ones are folded into one
/// `_overflow` series (and a warning is logged once).
pub const MAX_SERIES: usize = 20_000;

/// Latency histogram bucket bounds, in seconds.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const AUDIT_BATCH_BOUNDS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Bounds (seconds) of the wait for a durable audit record: a group commit
/// takes a fraction of a millisecond to tens of milliseconds.
const AUDIT_WAIT_BOUNDS: [f64; 11] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// MCP methods get their own label value; anything else is `other` (the
/// method comes from the client, so it must not mint series).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "initialize" => "initialize",
        "ping" => "ping",
        "tools/list" => "tools/list",
        "tools/call" => "tools/call",
        "prompts/list" => "prompts/list",
        "prompts/get" => "prompts/get",
        "resources/list" => "resources/list",
        "resources/read" => "resources/read",
        "resources/templates/list" => "resources/templates/list",
        "resources/subscribe" => "resources/subscribe",
        "resources/unsubscribe" => "resources/unsubscribe",
        "completion/complete" => "completion/complete",
        "logging/setLevel" => "logging/setLevel",
        "server/discover" => "server/discover",
        "subscriptions/listen" => "subscriptions/listen",
        "tasks/get" => "tasks/get",
        "tasks/list" => "tasks/list",
        "tasks/result" => "tasks/result",
        "tasks/cancel" => "tasks/cancel",
        _ => "other",
    }
}

/// A histogram with fixed bounds: per-bucket counts (made cumulative when
/// rendered) and the sum in microseconds (or units, for sizes).
pub struct Histogram<const B: usize> {
    bounds: &'static [f64],
    buckets: [AtomicU64; B],
    sum: AtomicU64,
}

impl<const B: usize> Histogram<B> {
    fn new(bounds: &'static [f64]) -> Self {
        debug_assert_eq!(bounds.len() + 1, B);
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64, sum_units: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(sum_units, Relaxed);
    }

    pub(crate) fn counts(&self) -> [u64; B] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }
}

type LatencyHistogram = Histogram<17>;

/// One label set of calls: counts per outcome and the latency histogram.
pub struct CallSeries {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    latency: LatencyHistogram,
    /// Latency sum (µs) of the calls that reached an upstream (not denied,
    /// not cancelled): the alerts' latency baseline.
    served_latency_us: AtomicU64,
}

impl Default for CallSeries {
    fn default() -> Self {
        CallSeries {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::new(&LATENCY_BOUNDS),
            served_latency_us: AtomicU64::new(0),
        }
    }
}

/// Cumulative counts of one call series, for the alert evaluator.
pub(crate) struct CallTotals {
    pub labels: [Box<str>; 4],
    pub served: u64,
    pub errors: u64,
    pub denied: u64,
    pub served_latency_us: u64,
}

struct Entry<const N: usize, V> {
    labels: [Box<str>; N],
    value: V,
}

/// Series of one metric keyed by label values, found without allocating.
struct Family<const N: usize, V> {
    hasher: RandomState,
    map: RwLock<HashMap<u64, Vec<Arc<Entry<N, V>>>>>,
    len: AtomicUsize,
    overflow_logged: AtomicBool,
    name: &'static str,
}

impl<const N: usize, V: Default> Family<N, V> {
    fn new(name: &'static str) -> Self {
        Family {
            hasher: RandomState::new(),
            map: RwLock::new(HashMap::new()),
            len: AtomicUsize::new(0),
            overflow_logged: AtomicBool::new(false),
            name,
        }
    }

    fn with<R>(&self, labels: [&str; N], f: impl FnOnce(&V) -> R) -> R {
        fn same<const N: usize, V>(e: &Entry<N, V>, labels: &[&str; N]) -> bool {
            e.labels.iter().zip(labels).all(|(a, b)| **a == **b)
        }
        let h = self.hasher.hash_one(labels);
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map
                .get(&h)
                .and_then(|v| v.iter().find(|e| same(e, &labels)))
            {
                return f(&e.value);
            }
        }
        let labels = if self.len.load(Relaxed) >= MAX_SERIES {
            if !self.overflow_logged.swap(true, Relaxed) {
                tracing::warn!(
                    metric = self.name,
                    limit = MAX_SERIES,
                    "too many label sets; new ones are counted as _overflow"
                );
            }
            ["_overflow"; N]
        } else {
            labels
        };
        let h = self.hasher.hash_one(labels);
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(h).or_default();
        if let Some(e) = bucket.iter().find(|e| same(e, &labels)) {
            return f(&e.value);
        }
        let e = Arc::new(Entry {
            labels: labels.map(Box::from),
            value: V::default(),
        });
        bucket.push(e.clone());
        self.len.fetch_add(1, Relaxed);
        drop(map);
        f(&e.value)
    }

    /// Every series, sorted by labels (stable output).
    fn entries(&self) -> Vec<Arc<Entry<N, V>>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().flatten().cloned().collect();
        drop(map);
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }
}

/// Up/down state and failure count of one upstream.
#[derive(Default)]
pub struct UpstreamHealth {
    /// 0 unknown (never contacted), 1 up, 2 down.
    state: AtomicU8,
    errors: AtomicU64,
}

impl UpstreamHealth {
    pub fn record(&self, ok: bool) {
        self.state.store(if ok { 1 } else { 2 }, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
    }
}

/// What one served request contributes to the metrics.
#[derive(Debug, Clone, Copy)]
pub struct CallRecord<'a> {
    pub virtual_server: &'a str,
    /// Empty when the request was not routed to one upstream.
    pub upstream: &'a str,
    pub method: &'a str,
    /// Tool or prompt name (empty for other methods).
    pub tool: &'a str,
    pub outcome: Outcome,
    pub latency: Duration,
    /// Why a denied request was refused: `policy`, `rate_limit`, `checkpoint`.
    pub denial_reason: &'a str,
}

/// Every metric the gateway exposes.
pub struct Metrics {
    calls: Family<4, CallSeries>,
    denials: Family<4, AtomicU64>,
    upstreams: BTreeMap<String, Arc<UpstreamHealth>>,
    audit_batches: Histogram<12>,
    audit_waits: Histogram<12>,
    /// 0 unknown, 1 healthy, 2 failing.
    audit_healthy: AtomicU8,
    pub(crate) alerts_firing: Mutex<Vec<(String, String, String)>>,
    pub(crate) webhook_failures: AtomicU64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

impl Metrics {
    /// Metrics for a gateway with these upstreams.
    pub fn new<'a>(upstreams: impl IntoIterator<Item = &'a str>) -> Metrics {
        START.get_or_init(unix_now);
        Metrics {
            calls: Family::new("portcullis_requests_total"),
            denials: Family::new("portcullis_denials_total"),
            upstreams: upstreams
                .into_iter()
                .map(|u| (u.to_owned(), Arc::default()))
                .collect(),
            audit_batches: Histogram::new(&AUDIT_BATCH_BOUNDS),
            audit_waits: Histogram::new(&AUDIT_WAIT_BOUNDS),
            audit_healthy: AtomicU8::new(0),
            alerts_firing: Mutex::new(Vec::new()),
            webhook_failures: AtomicU64::new(0),
        }
    }

    /// Count one served request.
    pub fn record_call(&self, c: &CallRecord<'_>) {
        let method = method_label(c.method);
        self.calls
            .with([c.virtual_server, c.upstream, method, c.tool], |s| {
                let us = c.latency.as_micros() as u64;
                s.outcomes[c.outcome as usize].fetch_add(1, Relaxed);
                s.latency.observe(c.latency.as_secs_f64(), us);
                if c.outcome.served() {
                    s.served_latency_us.fetch_add(us, Relaxed);
                }
            });
        if c.outcome == Outcome::Denied {
            self.denials.with(
                [c.virtual_server, c.upstream, c.tool, c.denial_reason],
                |n| n.fetch_add(1, Relaxed),
            );
        }
    }

    /// The health record of a configured upstream (for the connection hook).
    pub fn upstream(&self, name: &str) -> Option<Arc<UpstreamHealth>> {
        self.upstreams.get(name).cloned()
    }

    /// Count one audit group commit of `size` records.
    pub fn observe_audit_batch(&self, size: usize) {
        self.audit_batches.observe(size as f64, size as u64);
    }

    /// Count one caller's wait for its audit record to become durable.
    pub fn observe_audit_wait(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.audit_waits.observe(wait.as_secs_f64(), us);
    }

    /// Whether the audit writer is currently able to write.
    pub fn set_audit_healthy(&self, healthy: bool) {
        self.audit_healthy
            .store(if healthy { 1 } else { 2 }, Relaxed);
    }

    /// Cumulative per-series totals, for the alert evaluator.
    pub(crate) fn call_totals(&self) -> Vec<CallTotals> {
        self.calls
            .entries()
            .iter()
            .map(|e| {
                let n = |o: Outcome| e.value.outcomes[o as usize].load(Relaxed);
                CallTotals {
                    labels: e.labels.clone(),
                    served: Outcome::ALL
                        .iter()
                        .filter(|o| o.served())
                        .map(|o| n(*o))
                        .sum(),
                    errors: n(Outcome::ToolError) + n(Outcome::ProtocolError),
                    denied: n(Outcome::Denied),
                    served_latency_us: e.value.served_latency_us.load(Relaxed),
                }
            })
            .collect()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let calls = self.calls.entries();
        header(
            &mut out,
            "portcullis_requests_total",
            "counter",
            "Requests served, by virtual server, upstream, method, tool and outcome.",
        );
        for e in &calls {
            let [vs, up, method, tool] = &e.labels;
            for o in Outcome::ALL {
                let n = e.value.outcomes[o as usize].load(Relaxed);
                if n > 0 {
                    let l = labels(&[
                        ("virtual_server", vs),
                        ("upstream", up),
                        ("method", method),
                        ("tool", tool),
                        ("outcome", o.as_str()),
                    ]);
                    let _ = writeln!(out, "portcullis_requests_total{{{l}}} {n}");
                }
            }
        }
        header(&mut out, "portcullis_request_duration_seconds", "histogram",
            "Time from a request's arrival to its response, by virtual server, upstream, method and tool.");
        for e in &calls {
            let [vs, up, method, tool] = &e.labels;
            let l = labels(&[
                ("virtual_server", vs),
                ("upstream", up),
                ("method", method),
                ("tool", tool),
            ]);
            write_histogram(
                &mut out,
                "portcullis_request_duration_seconds",
                &l,
                &LATENCY_BOUNDS,
                &e.value.latency.counts(),
                e.value.latency.sum.load(Relaxed) as f64 / 1e6,
            );
        }
        // The MCP semantic-convention histogram, aggregated from the same data.
        let mut semconv: BTreeMap<(&str, &str), ([u64; 17], u64)> = BTreeMap::new();
        for e in &calls {
            let slot = semconv
                .entry((&e.labels[2], &e.labels[3]))
                .or_insert(([0; 17], 0));
            for (acc, n) in slot.0.iter_mut().zip(e.value.latency.counts()) {
                *acc += n;
            }
            slot.1 += e.value.latency.sum.load(Relaxed);
        }
        header(
            &mut out,
            "mcp_server_operation_duration_seconds",
            "histogram",
            "MCP server operation duration (OpenTelemetry MCP semantic conventions).",
        );
        for ((method, target), (counts, sum)) in &semconv {
            let (tool, prompt) = match *method {
                "prompts/get" => ("", *target),
                _ => (*target, ""),
            };
            let l = labels(&[
                ("mcp_method_name", method),
                ("gen_ai_tool_name", tool),
                ("gen_ai_prompt_name", prompt),
            ]);
            write_histogram(
                &mut out,
                "mcp_server_operation_duration_seconds",
                &l,
                &LATENCY_BOUNDS,
                counts,
                *sum as f64 / 1e6,
            );
        }
        header(
            &mut out,
            "portcullis_denials_total",
            "counter",
            "Requests refused by policy, a rate limit or a declined checkpoint.",
        );
        for e in self.denials.entries() {
            let [vs, up, tool, reason] = &e.labels;
            let l = labels(&[
                ("virtual_server", vs),
                ("upstream", up),
                ("tool", tool),
                ("reason", reason),
            ]);
            let _ = writeln!(
                out,
                "portcullis_denials_total{{{l}}} {}",
                e.value.load(Relaxed)
            );
        }
        header(&mut out, "portcullis_upstream_up", "gauge",
            "1 when the last exchange with the upstream succeeded, 0 when it failed (absent before the first).");
        for (name, h) in &self.upstreams {
            let v = match h.state.load(Relaxed) {
                1 => 1,
                2 => 0,
                _ => continue,
            };
            let _ = writeln!(
                out,
                "portcullis_upstream_up{{{}}} {v}",
                labels(&[("upstream", name)])
            );
        }
        header(
            &mut out,
            "portcullis_upstream_errors_total",
            "counter",
            "Failed exchanges with the upstream (connect, initialize, request).",
        );
        for (name, h) in &self.upstreams {
            let _ = writeln!(
                out,
                "portcullis_upstream_errors_total{{{}}} {}",
                labels(&[("upstream", name)]),
                h.errors.load(Relaxed)
            );
        }
        header(
            &mut out,
            "portcullis_audit_batch_size",
            "histogram",
            "Records per audit group commit.",
        );
        write_histogram(
            &mut out,
            "portcullis_audit_batch_size",
            "",
            &AUDIT_BATCH_BOUNDS,
            &self.audit_batches.counts(),
            self.audit_batches.sum.load(Relaxed) as f64,
        );
        header(
            &mut out,
            "portcullis_audit_wait_seconds",
            "histogram",
            "Time from handing an audit record to the writer until it is durable: what audit adds to a call.",
        );
        write_histogram(
            &mut out,
            "portcullis_audit_wait_seconds",
            "",
            &AUDIT_WAIT_BOUNDS,
            &self.audit_waits.counts(),
            self.audit_waits.sum.load(Relaxed) as f64 / 1e6,
        );
        let audit = self.audit_healthy.load(Relaxed);
        if audit != 0 {
            header(
                &mut out,
                "portcullis_audit_healthy",
                "gauge",
                "1 while the audit writer can write.",
            );
            let _ = writeln!(out, "portcullis_audit_healthy {}", u8::from(audit == 1));
        }
        header(
            &mut out,
            "portcullis_alerts_firing",
            "gauge",
            "Alerts currently firing.",
        );
        for (rule, vs, up) in self
            .alerts_firing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let l = labels(&[("rule", rule), ("virtual_server", vs), ("upstream", up)]);
            let _ = writeln!(out, "portcullis_alerts_firing{{{l}}} 1");
        }
        header(
            &mut out,
            "portcullis_alert_webhook_failures_total",
            "counter",
            "Alert events the webhook did not accept after every retry.",
        );
        let _ = writeln!(
            out,
            "portcullis_alert_webhook_failures_total {}",
            self.webhook_failures.load(Relaxed)
        );
        header(
            &mut out,
            "portcullis_build_info",
            "gauge",
            "The running version.",
        );
        let _ = writeln!(
            out,
            "portcullis_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            &mut out,
            "portcullis_start_time_seconds",
            "gauge",
            "Start time of the process, Unix seconds.",
        );
        let _ = writeln!(
            out,
            "portcullis_start_time_seconds {}",
            START.get().copied().unwrap_or(0.0)
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escape a label value: backslash, double quote and line feed.
pub fn escape(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    Cow::Owned(s)
}

use std::borrow::Cow;

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s
}

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (i, n) in counts.iter().enumerate() {
        cumulative += n;
        let le = match bounds.get(i) {
            Some(b) => format!("{b}"),
            None => "+Inf".to_owned(),
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(up: &'a str, tool: &'a str, outcome: Outcome, ms: u64) -> CallRecord<'a> {
        CallRecord {
            virtual_server: "demo",
            upstream: up,
            method: "tools/call",
            tool,
            outcome,
            latency: Duration::from_millis(ms),
            denial_reason: if outcome == Outcome::Denied {
                "policy"
            } else {
                ""
            },
        }
    }

    #[test]
    fn counts_and_renders_the_exposition_format() {
        let m = Metrics::new(["files", "idle"]);
        m.record_call(&call("files", "read", Outcome::Success, 3));
        m.record_call(&call("files", "read", Outcome::Success, 40));
        m.record_call(&call("files", "read", Outcome::ToolError, 2));
        m.record_call(&call("", "rm", Outcome::Denied, 1));
        m.upstream("files").expect("configured").record(true);
        m.upstream("files").expect("configured").record(false);
        m.upstream("files").expect("configured").record(true);
        m.observe_audit_batch(3);
        m.observe_audit_wait(Duration::from_micros(700));
        m.observe_audit_wait(Duration::from_micros(3_000));
        m.set_audit_healthy(true);
        let text = m.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(
                r#"portcullis_requests_total{virtual_server="demo",upstream="files",method="tools/call",tool="read",outcome="success"} 2"#
            ),
            "{text}"
        );
        assert!(has(
            r#"portcullis_requests_total{virtual_server="demo",upstream="files",method="tools/call",tool="read",outcome="tool_error"} 1"#
        ));
        assert!(has(
            r#"portcullis_denials_total{virtual_server="demo",upstream="",tool="rm",reason="policy"} 1"#
        ));
        // Buckets are cumulative; 3 ms falls in le=0.005, 40 ms in le=0.05.
        assert!(has(
            r#"portcullis_request_duration_seconds_bucket{virtual_server="demo",upstream="files",method="tools/call",tool="read",le="0.0025"} 1"#
        ));
        assert!(has(
            r#"portcullis_request_duration_seconds_bucket{virtual_server="demo",upstream="files",method="tools/call",tool="read",le="0.005"} 2"#
        ));
        assert!(has(
            r#"portcullis_request_duration_seconds_bucket{virtual_server="demo",upstream="files",method="tools/call",tool="read",le="+Inf"} 3"#
        ));
        assert!(has(
            r#"portcullis_request_duration_seconds_count{virtual_server="demo",upstream="files",method="tools/call",tool="read"} 3"#
        ));
        assert!(has(
            r#"portcullis_request_duration_seconds_sum{virtual_server="demo",upstream="files",method="tools/call",tool="read"} 0.045"#
        ));
        assert!(has(
            r#"mcp_server_operation_duration_seconds_count{mcp_method_name="tools/call",gen_ai_tool_name="read",gen_ai_prompt_name=""} 3"#
        ));
        assert!(has(r#"portcullis_upstream_up{upstream="files"} 1"#));
        assert!(!text.contains(r#"portcullis_upstream_up{upstream="idle"}"#));
        assert!(has(
            r#"portcullis_upstream_errors_total{upstream="files"} 1"#
        ));
        assert!(has(
            r#"portcullis_upstream_errors_total{upstream="idle"} 0"#
        ));
        assert!(has(r#"portcullis_audit_batch_size_bucket{le="4"} 1"#));
        assert!(has(
            r#"portcullis_audit_wait_seconds_bucket{le="0.0005"} 0"#
        ));
        assert!(has(r#"portcullis_audit_wait_seconds_bucket{le="0.001"} 1"#));
        assert!(has(r#"portcullis_audit_wait_seconds_bucket{le="0.005"} 2"#));
        assert!(has("portcullis_audit_wait_seconds_sum 0.0037"));
        assert!(has("portcullis_audit_wait_seconds_count 2"));
        assert!(has("portcullis_audit_healthy 1"));
        // Every sample line belongs to a family announced by # TYPE.
        let mut typed = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or("").to_owned());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or("");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
                    .unwrap_or(name);
                assert!(typed.contains(base), "{l} has no # TYPE");
            }
        }
    }

    #[test]
    fn label_values_are_escaped_and_methods_bounded() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("made/up"), "other");
        let m = Metrics::new([]);
        m.record_call(&CallRecord {
            method: "made/up",
            ..call("", "we\"ird", Outcome::ProtocolError, 1)
        });
        assert!(m
            .render()
            .contains(r#"method="other",tool="we\"ird",outcome="protocol_error"} 1"#));
    }

    #[test]
    fn series_beyond_the_limit_share_the_overflow_series() {
        let f: Family<1, AtomicU64> = Family::new("t");
        for i in 0..MAX_SERIES + 5 {
            f.with([&i.to_string()], |n| n.fetch_add(1, Relaxed));
        }
        let e = f.entries();
        assert_eq!(e.len(), MAX_SERIES + 1);
        let over = e
            .iter()
            .find(|e| &*e.labels[0] == "_overflow")
            .expect("overflow");
        assert_eq!(over.value.load(Relaxed), 5);
    }
}
