//! Human-readable table, targets/verdicts and the JSON document.

use serde_json::{json, Value};

use crate::client::Era;
use crate::load::{Phase, TargetRun};

/// Targets for the gateway (see docs/performance.md).
pub const TARGET_CPU_US: f64 = 40.0;
pub const TARGET_ADDED_P50_US: f64 = 60.0;
pub const TARGET_ADDED_P99_US: f64 = 150.0;
/// Above this average load from other processes a phase is flagged as disturbed.
pub const NOISE_CORES: f64 = 0.15;

/// Outcome of one target: its figures, or why it could not be measured.
pub type Outcome = Result<TargetRun, String>;

pub struct EraReport {
    pub era: Era,
    pub direct: Outcome,
    /// `None` with --direct-only.
    pub gateway: Option<Outcome>,
}

pub struct Verdict {
    pub name: &'static str,
    pub limit: String,
    /// `None` when the figure could not be measured.
    pub meets: Option<bool>,
    pub measured: String,
}

impl EraReport {
    fn gw(&self) -> Option<&TargetRun> {
        self.gateway.as_ref().and_then(|g| g.as_ref().ok())
    }

    fn dr(&self) -> Option<&TargetRun> {
        self.direct.as_ref().ok()
    }

    pub fn added_p50(&self) -> Option<f64> {
        Some(self.gw()?.sequential.latency.p50_us - self.dr()?.sequential.latency.p50_us)
    }

    pub fn added_p99(&self) -> Option<f64> {
        Some(self.gw()?.sequential.latency.p99_us - self.dr()?.sequential.latency.p99_us)
    }

    pub fn throughput_ratio(&self) -> Option<f64> {
        let direct = self.dr()?.saturation.calls_per_sec();
        let gateway = self.gw()?.saturation.calls_per_sec();
        (direct > 0.0).then(|| gateway / direct)
    }

    pub fn error_count(&self) -> u64 {
        let count = |o: &Outcome| o.as_ref().map(|r| r.errors.count).unwrap_or(1);
        count(&self.direct) + self.gateway.as_ref().map(count).unwrap_or(0)
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        if self.gateway.is_none() {
            return Vec::new();
        }
        let seq = self
            .gw()
            .and_then(|g| g.sequential.gateway_cpu_per_call_us());
        let sat = self
            .gw()
            .and_then(|g| g.saturation.gateway_cpu_per_call_us());
        let cpu = match (seq, sat) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let within = |v: Option<f64>, limit: f64| v.map(|v| v <= limit);
        vec![
            Verdict {
                name: "gateway CPU per call (worse of seq/sat)",
                limit: format!("<= {TARGET_CPU_US} us"),
                meets: within(cpu, TARGET_CPU_US),
                measured: format!("seq {}, sat {}", opt(seq, 1, ""), opt(sat, 1, "")),
            },
            Verdict {
                name: "added latency p50",
                limit: format!("<= +{TARGET_ADDED_P50_US} us"),
                meets: within(self.added_p50(), TARGET_ADDED_P50_US),
                measured: opt(self.added_p50(), 1, "+"),
            },
            Verdict {
                name: "added latency p99",
                limit: format!("<= +{TARGET_ADDED_P99_US} us"),
                meets: within(self.added_p99(), TARGET_ADDED_P99_US),
                measured: opt(self.added_p99(), 1, "+"),
            },
        ]
    }
}

pub fn opt(v: Option<f64>, decimals: usize, sign: &str) -> String {
    match v {
        Some(v) if sign == "+" => format!("{v:+.decimals$}"),
        Some(v) => format!("{v:.decimals$}"),
        None => "n/a".into(),
    }
}

type Figure = fn(&TargetRun) -> Option<f64>;

pub fn row(out: &mut String, label: &str, direct: &str, gateway: &str, extra: &str) {
    row_cells(out, label, &[direct, gateway], 12, extra);
}

/// A table row with any number of cells, right-aligned in `width` characters.
pub fn row_cells(
    out: &mut String,
    label: &str,
    cells: &[impl AsRef<str>],
    width: usize,
    extra: &str,
) {
    out.push_str(&format!("  {label:<36}"));
    for c in cells {
        out.push_str(&format!("{:>width$}", c.as_ref()));
    }
    out.push_str(&format!("  {extra}\n"));
}

/// The WARNING line when other processes disturbed a phase.
pub fn noise_warning(out: &mut String, noise: f64) {
    if noise > NOISE_CORES {
        out.push_str(&format!(
            "  WARNING: other processes used up to {noise:.2} cores during a phase: these figures are disturbed\n"
        ));
    }
}

/// `" (disturbed)"` when other processes disturbed a phase.
pub fn disturbed(noise: f64) -> &'static str {
    if noise > NOISE_CORES {
        " (disturbed)"
    } else {
        ""
    }
}

/// The verdicts as JSON.
pub fn verdicts_json(verdicts: &[Verdict]) -> Vec<Value> {
    verdicts
        .iter()
        .map(|v| json!({"target": v.name, "limit": v.limit, "meets": v.meets, "measured": v.measured}))
        .collect()
}

/// Renders the table of one era.
pub fn render(r: &EraReport, connections: usize) -> String {
    let mut out = format!(
        "\n== {} era (MCP {}): tools/call echo ==\n",
        r.era.name(),
        r.era.version()
    );
    row(&mut out, "", "direct", "gateway", "added / ratio");
    let (d, g) = (r.dr(), r.gw());
    let c = connections;
    let ratio = r
        .throughput_ratio()
        .map(|x| format!("{x:.2} x direct"))
        .unwrap_or_default();
    let figures: [(String, Figure, usize, bool, String); 14] = [
        (
            "latency p50, 1 conn (us)".into(),
            |t| Some(t.sequential.latency.p50_us),
            1,
            true,
            opt(r.added_p50(), 1, "+"),
        ),
        (
            "latency p99, 1 conn (us)".into(),
            |t| Some(t.sequential.latency.p99_us),
            1,
            true,
            opt(r.added_p99(), 1, "+"),
        ),
        (
            "latency mean, 1 conn (us)".into(),
            |t| Some(t.sequential.latency.mean_us),
            1,
            true,
            String::new(),
        ),
        (
            format!("latency p50, {c} conns (us)"),
            |t| Some(t.saturation.latency.p50_us),
            0,
            true,
            String::new(),
        ),
        (
            format!("latency p99, {c} conns (us)"),
            |t| Some(t.saturation.latency.p99_us),
            0,
            true,
            String::new(),
        ),
        (
            format!("throughput, {c} conns (calls/s)"),
            |t| Some(t.saturation.calls_per_sec()),
            0,
            true,
            ratio,
        ),
        (
            "gateway CPU per call, 1 conn (us)".into(),
            |t| t.sequential.gateway_cpu_per_call_us(),
            1,
            false,
            String::new(),
        ),
        (
            format!("gateway CPU per call, {c} conns (us)"),
            |t| t.saturation.gateway_cpu_per_call_us(),
            1,
            false,
            String::new(),
        ),
        (
            "bench CPU per call, 1 conn (us)".into(),
            |t| t.sequential.bench_cpu_per_call_us(),
            1,
            true,
            "load generator + upstream".into(),
        ),
        (
            format!("bench CPU per call, {c} conns (us)"),
            |t| t.saturation.bench_cpu_per_call_us(),
            1,
            true,
            String::new(),
        ),
        (
            "other CPU, 1 conn (cores)".into(),
            |t| t.sequential.other_cores(),
            2,
            true,
            "other processes + steal: ~0 when quiet".into(),
        ),
        (
            format!("other CPU, {c} conns (cores)"),
            |t| t.saturation.other_cores(),
            2,
            true,
            String::new(),
        ),
        (
            "upstream HTTP requests per call".into(),
            |t| t.upstream_requests_per_call(),
            2,
            true,
            "session set-up included".into(),
        ),
        (
            "errors".into(),
            |t| Some(t.errors.count as f64),
            0,
            true,
            String::new(),
        ),
    ];
    for (label, f, decimals, show_direct, extra) in &figures {
        let cell = |t: Option<&TargetRun>| match t {
            Some(t) => opt(f(t), *decimals, ""),
            None => "-".into(),
        };
        let direct = if *show_direct { cell(d) } else { String::new() };
        let gateway = match &r.gateway {
            None => "-".into(),
            Some(Err(_)) => "FAILED".into(),
            Some(Ok(t)) => cell(Some(t)),
        };
        let direct = if r.direct.is_err() {
            "FAILED".into()
        } else {
            direct
        };
        row(&mut out, label, &direct, &gateway, extra);
    }
    for (name, o) in [("direct", Some(&r.direct)), ("gateway", r.gateway.as_ref())] {
        match o {
            Some(Err(e)) => out.push_str(&format!("  {name} failed: {e}\n")),
            Some(Ok(t)) => {
                let u = &t.upstream;
                out.push_str(&format!(
                    "  {name}: upstream saw {} connections, {} HTTP requests: tools/call {}, tools/list {}, \
                     initialize {}, server/discover {}, notifications {}, other {} ({} calls made)\n",
                    u.connections,
                    u.http_requests,
                    u.tools_call,
                    u.tools_list,
                    u.initialize,
                    u.discover,
                    u.notifications,
                    u.other,
                    t.total_calls
                ));
                for s in &t.errors.samples {
                    out.push_str(&format!("  {name} error sample: {s}\n"));
                }
                for w in &t.warnings {
                    out.push_str(&format!("  {name} warning: {w}\n"));
                }
            }
            None => {}
        }
    }
    let noisy = [d, g]
        .into_iter()
        .flatten()
        .flat_map(|t| [t.sequential.other_cores(), t.saturation.other_cores()])
        .flatten()
        .fold(0.0, f64::max);
    noise_warning(&mut out, noisy);
    if let Some(p50) = g.map(|t| t.sequential.latency.p50_us) {
        if (38_000.0..50_000.0).contains(&p50) {
            out.push_str(
                "  hint: a ~40 ms p50 is the signature of Nagle + delayed ACK: a response written in \
                 several small writes on a socket without TCP_NODELAY\n",
            );
        }
    }
    if let Some(idle) = d.and_then(|t| t.saturation.gateway_cpu) {
        let ms = idle.as_secs_f64() * 1e3;
        if ms >= 50.0 {
            out.push_str(&format!(
                "  note: the idle gateway used {ms:.0} ms of CPU during the direct saturation phase\n"
            ));
        }
    }
    for v in r.verdicts() {
        out.push_str(&verdict_line(&v));
    }
    out
}

/// `  verdict: meets|misses|n/a <target> <limit> measured <figure>`.
pub fn verdict_line(v: &Verdict) -> String {
    let word = match v.meets {
        Some(true) => "meets ",
        Some(false) => "misses",
        None => "n/a   ",
    };
    format!(
        "  verdict: {word} {:<40} {:<12} measured {}\n",
        v.name, v.limit, v.measured
    )
}

pub fn phase_json(p: &Phase) -> Value {
    json!({
        "connections": p.connections,
        "calls": p.calls,
        "elapsed_s": p.elapsed.as_secs_f64(),
        "calls_per_s": p.calls_per_sec(),
        "latency_us": {
            "p50": p.latency.p50_us, "p90": p.latency.p90_us, "p99": p.latency.p99_us,
            "mean": p.latency.mean_us, "max": p.latency.max_us,
        },
        "gateway_cpu_s": p.gateway_cpu.map(|d| d.as_secs_f64()),
        "gateway_cpu_us_per_call": p.gateway_cpu_per_call_us(),
        "bench_cpu_s": p.bench_cpu.as_secs_f64(),
        "bench_cpu_us_per_call": p.bench_cpu_per_call_us(),
        "other_processes_cpu_s": p.other_cpu.as_secs_f64(),
        "steal_s": p.steal.as_secs_f64(),
        "other_cores": p.other_cores(),
    })
}

pub fn outcome_json(o: &Outcome) -> Value {
    match o {
        Ok(t) => json!({
            "ok": true,
            "sequential": phase_json(&t.sequential),
            "saturation": phase_json(&t.saturation),
            "errors": t.errors.count,
            "error_samples": t.errors.samples,
            "warnings": t.warnings,
            "total_calls": t.total_calls,
            "upstream_requests_per_call": t.upstream_requests_per_call(),
            "upstream_served": {
                "connections": t.upstream.connections,
                "http_requests": t.upstream.http_requests,
                "tools_call": t.upstream.tools_call,
                "tools_list": t.upstream.tools_list,
                "initialize": t.upstream.initialize,
                "server_discover": t.upstream.discover,
                "notifications": t.upstream.notifications,
                "other": t.upstream.other,
            },
        }),
        Err(e) => json!({"ok": false, "failure": e}),
    }
}

/// The JSON form of one era's figures.
pub fn era_json(r: &EraReport) -> Value {
    let verdicts = verdicts_json(&r.verdicts());
    json!({
        "era": r.era.name(),
        "protocol_version": r.era.version(),
        "direct": outcome_json(&r.direct),
        "gateway": r.gateway.as_ref().map(outcome_json),
        "added_latency_us": {"p50": r.added_p50(), "p99": r.added_p99()},
        "throughput_ratio": r.throughput_ratio(),
        "gateway_cpu_us_per_call": {
            "sequential": r.gw().and_then(|g| g.sequential.gateway_cpu_per_call_us()),
            "saturation": r.gw().and_then(|g| g.saturation.gateway_cpu_per_call_us()),
        },
        "verdicts": verdicts,
    })
}
