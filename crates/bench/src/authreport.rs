//! What authentication costs a call: the same scenario through a gateway with
//! `auth: {mode: off}` and one with `auth: {mode: required}`, back to back, over
//! one or more rounds (order alternating: off→on, on→off, …). Each round ends
//! with an interleaved latency phase where calls alternate between the two
//! gateways, so that both see the same machine state: the figure for added
//! latency. Figures over several rounds are medians.

use serde_json::{json, Value};

use crate::client::Era;
use crate::load::{Errors, Phase, TargetRun};
use crate::report::{self, opt, row, Outcome, NOISE_CORES};

/// Targets from the authentication issue (see docs/performance.md).
pub const TARGET_AUTH_ADDED_P99_US: f64 = 20.0;
pub const TARGET_AUTH_THROUGHPUT_RATIO: f64 = 0.90;

/// The interleaved latency phase: one connection to each gateway.
pub struct Interleaved {
    pub off: Phase,
    pub on: Phase,
    pub errors: Errors,
}

/// One round: the gateway without and with authentication, then interleaved.
pub struct Round {
    pub on_first: bool,
    pub off: Outcome,
    pub on: Outcome,
    pub interleaved: Result<Interleaved, String>,
}

type Figure = fn(&TargetRun) -> Option<f64>;
type PhaseFigure = fn(&Phase) -> Option<f64>;

const P50: Figure = |t| Some(t.sequential.latency.p50_us);
const P99: Figure = |t| Some(t.sequential.latency.p99_us);
const MEAN: Figure = |t| Some(t.sequential.latency.mean_us);
const SAT_P50: Figure = |t| Some(t.saturation.latency.p50_us);
const SAT_P99: Figure = |t| Some(t.saturation.latency.p99_us);
const THROUGHPUT: Figure = |t| Some(t.saturation.calls_per_sec());
const CPU_SEQ: Figure = |t| t.sequential.gateway_cpu_per_call_us();
const CPU_SAT: Figure = |t| t.saturation.gateway_cpu_per_call_us();
const OTHER_SEQ: Figure = |t| t.sequential.other_cores();
const OTHER_SAT: Figure = |t| t.saturation.other_cores();
const ERRORS: Figure = |t| Some(t.errors.count as f64);

const I_P50: PhaseFigure = |p| Some(p.latency.p50_us);
const I_P90: PhaseFigure = |p| Some(p.latency.p90_us);
const I_P99: PhaseFigure = |p| Some(p.latency.p99_us);
const I_MEAN: PhaseFigure = |p| Some(p.latency.mean_us);
const I_CPU: PhaseFigure = |p| p.gateway_cpu_per_call_us();

impl Round {
    fn pair(&self) -> Option<(&TargetRun, &TargetRun)> {
        Some((self.off.as_ref().ok()?, self.on.as_ref().ok()?))
    }

    fn diff(&self, f: Figure) -> Option<f64> {
        let (off, on) = self.pair()?;
        Some(f(on)? - f(off)?)
    }

    fn ratio(&self) -> Option<f64> {
        let (off, on) = self.pair()?;
        let base = off.saturation.calls_per_sec();
        (base > 0.0).then(|| on.saturation.calls_per_sec() / base)
    }

    fn inter(&self) -> Option<&Interleaved> {
        self.interleaved.as_ref().ok()
    }

    fn idiff(&self, f: PhaseFigure) -> Option<f64> {
        let i = self.inter()?;
        Some(f(&i.on)? - f(&i.off)?)
    }

    fn noise(&self) -> f64 {
        [self.off.as_ref().ok(), self.on.as_ref().ok()]
            .into_iter()
            .flatten()
            .flat_map(|t| [t.sequential.other_cores(), t.saturation.other_cores()])
            .chain(self.inter().map(|i| i.off.other_cores()))
            .flatten()
            .fold(0.0, f64::max)
    }
}

pub struct AuthReport {
    pub era: Era,
    pub rounds: Vec<Round>,
}

/// Median of the values present (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl AuthReport {
    fn side(&self, on: bool, f: Figure) -> Option<f64> {
        let runs = self.rounds.iter().filter_map(|r| {
            let o = if on { &r.on } else { &r.off };
            o.as_ref().ok().and_then(f)
        });
        median(runs.collect())
    }

    fn added(&self, f: Figure) -> Option<f64> {
        median(self.rounds.iter().filter_map(|r| r.diff(f)).collect())
    }

    fn iside(&self, on: bool, f: PhaseFigure) -> Option<f64> {
        let v = self.rounds.iter().filter_map(|r| {
            let i = r.inter()?;
            f(if on { &i.on } else { &i.off })
        });
        median(v.collect())
    }

    fn iadded(&self, f: PhaseFigure) -> Option<f64> {
        median(self.rounds.iter().filter_map(|r| r.idiff(f)).collect())
    }

    /// Added p50 at one connection, from the interleaved phases (median over rounds).
    pub fn added_p50(&self) -> Option<f64> {
        self.iadded(I_P50)
    }

    pub fn added_p99(&self) -> Option<f64> {
        self.iadded(I_P99)
    }

    pub fn throughput_ratio(&self) -> Option<f64> {
        median(self.rounds.iter().filter_map(Round::ratio).collect())
    }

    pub fn noise(&self) -> f64 {
        self.rounds.iter().map(Round::noise).fold(0.0, f64::max)
    }

    pub fn error_count(&self) -> u64 {
        let count = |o: &Outcome| o.as_ref().map(|r| r.errors.count).unwrap_or(1);
        self.rounds
            .iter()
            .map(|r| {
                let inter = r.interleaved.as_ref().map(|i| i.errors.count).unwrap_or(1);
                count(&r.off) + count(&r.on) + inter
            })
            .sum()
    }

    pub fn verdicts(&self) -> Vec<report::Verdict> {
        let p99 = self.added_p99();
        let ratio = self.throughput_ratio();
        let disturbed = if self.noise() > NOISE_CORES {
            " (disturbed)"
        } else {
            ""
        };
        vec![
            report::Verdict {
                name: "auth: added latency p99, interleaved",
                limit: format!("<= +{TARGET_AUTH_ADDED_P99_US} us"),
                meets: p99.map(|v| v <= TARGET_AUTH_ADDED_P99_US),
                measured: opt(p99, 1, "+") + disturbed,
            },
            report::Verdict {
                name: "auth: throughput on / off",
                limit: format!(">= {TARGET_AUTH_THROUGHPUT_RATIO:.2}"),
                meets: ratio.map(|v| v >= TARGET_AUTH_THROUGHPUT_RATIO),
                measured: opt(ratio, 3, "") + disturbed,
            },
        ]
    }
}

/// Renders the off / on table of one era (medians over the rounds).
pub fn render(r: &AuthReport, connections: usize) -> String {
    let n = r.rounds.len();
    let mut out = format!(
        "\n== {} era (MCP {}): gateway without vs with authentication ({n} round{}) ==\n",
        r.era.name(),
        r.era.version(),
        if n == 1 { "" } else { "s, medians" }
    );
    row(&mut out, "", "auth off", "auth on", "added / ratio");
    let c = connections;
    let ratio = r
        .throughput_ratio()
        .map(|x| format!("{x:.3} x off"))
        .unwrap_or_default();
    let ilines: [(&str, PhaseFigure); 5] = [
        ("interleaved p50, 1 conn each (us)", I_P50),
        ("interleaved p90, 1 conn each (us)", I_P90),
        ("interleaved p99, 1 conn each (us)", I_P99),
        ("interleaved mean, 1 conn each (us)", I_MEAN),
        ("interleaved gateway CPU/call (us)", I_CPU),
    ];
    for (label, f) in ilines {
        row(
            &mut out,
            label,
            &opt(r.iside(false, f), 1, ""),
            &opt(r.iside(true, f), 1, ""),
            &opt(r.iadded(f), 1, "+"),
        );
    }
    let added = |f: Figure| opt(r.added(f), 1, "+");
    let lines: [(String, Figure, usize, String); 11] = [
        ("separate p50, 1 conn (us)".into(), P50, 1, added(P50)),
        ("separate p99, 1 conn (us)".into(), P99, 1, added(P99)),
        ("separate mean, 1 conn (us)".into(), MEAN, 1, added(MEAN)),
        (
            format!("latency p50, {c} conns (us)"),
            SAT_P50,
            0,
            added(SAT_P50),
        ),
        (
            format!("latency p99, {c} conns (us)"),
            SAT_P99,
            0,
            added(SAT_P99),
        ),
        (
            format!("throughput, {c} conns (calls/s)"),
            THROUGHPUT,
            0,
            ratio,
        ),
        (
            "gateway CPU/call, 1 conn (us)".into(),
            CPU_SEQ,
            1,
            added(CPU_SEQ),
        ),
        (
            format!("gateway CPU/call, {c} conns (us)"),
            CPU_SAT,
            1,
            added(CPU_SAT),
        ),
        (
            "other CPU, 1 conn (cores)".into(),
            OTHER_SEQ,
            2,
            String::new(),
        ),
        (
            format!("other CPU, {c} conns (cores)"),
            OTHER_SAT,
            2,
            String::new(),
        ),
        ("errors".into(), ERRORS, 0, String::new()),
    ];
    for (label, f, decimals, extra) in &lines {
        row(
            &mut out,
            label,
            &opt(r.side(false, *f), *decimals, ""),
            &opt(r.side(true, *f), *decimals, ""),
            extra,
        );
    }
    for (i, round) in r.rounds.iter().enumerate() {
        out.push_str(&format!(
            "  round {} ({}): interleaved added p50 {} p99 {} us; throughput {}; CPU/call 1-conn {} / {c}-conn {} us\n",
            i + 1,
            if round.on_first { "on, off" } else { "off, on" },
            opt(round.idiff(I_P50), 1, "+"),
            opt(round.idiff(I_P99), 1, "+"),
            opt(round.ratio(), 3, ""),
            opt(round.idiff(I_CPU), 1, "+"),
            opt(round.diff(CPU_SAT), 1, "+"),
        ));
        for (name, o) in [("auth off", &round.off), ("auth on", &round.on)] {
            match o {
                Err(e) => out.push_str(&format!("  {name} failed: {e}\n")),
                Ok(t) => {
                    for s in &t.errors.samples {
                        out.push_str(&format!("  {name} error sample: {s}\n"));
                    }
                }
            }
        }
        match &round.interleaved {
            Err(e) => out.push_str(&format!("  interleaved phase failed: {e}\n")),
            Ok(i) => {
                for s in &i.errors.samples {
                    out.push_str(&format!("  interleaved error sample: {s}\n"));
                }
            }
        }
    }
    let noisy = r.noise();
    if noisy > NOISE_CORES {
        out.push_str(&format!(
            "  WARNING: other processes used up to {noisy:.2} cores during a phase: these figures are disturbed\n"
        ));
    }
    for v in r.verdicts() {
        out.push_str(&report::verdict_line(&v));
    }
    out
}

pub fn auth_json(r: &AuthReport) -> Value {
    let side = |on: bool| {
        json!({
            "interleaved_latency_us": {
                "p50": r.iside(on, I_P50), "p90": r.iside(on, I_P90),
                "p99": r.iside(on, I_P99), "mean": r.iside(on, I_MEAN),
            },
            "interleaved_gateway_cpu_us_per_call": r.iside(on, I_CPU),
            "latency_1conn_us": {"p50": r.side(on, P50), "p99": r.side(on, P99), "mean": r.side(on, MEAN)},
            "latency_saturation_us": {"p50": r.side(on, SAT_P50), "p99": r.side(on, SAT_P99)},
            "calls_per_s": r.side(on, THROUGHPUT),
            "gateway_cpu_us_per_call": {"sequential": r.side(on, CPU_SEQ), "saturation": r.side(on, CPU_SAT)},
        })
    };
    let rounds: Vec<Value> = r
        .rounds
        .iter()
        .map(|x| {
            let interleaved = match &x.interleaved {
                Err(e) => json!({"ok": false, "failure": e}),
                Ok(i) => json!({
                    "ok": true,
                    "off": report::phase_json(&i.off),
                    "on": report::phase_json(&i.on),
                    "errors": i.errors.count,
                    "error_samples": i.errors.samples,
                }),
            };
            json!({
                "order": if x.on_first { "on,off" } else { "off,on" },
                "off": report::outcome_json(&x.off),
                "on": report::outcome_json(&x.on),
                "interleaved": interleaved,
                "interleaved_added_latency_us": {
                    "p50": x.idiff(I_P50), "p90": x.idiff(I_P90),
                    "p99": x.idiff(I_P99), "mean": x.idiff(I_MEAN),
                },
                "separate_added_latency_us": {"p50": x.diff(P50), "p99": x.diff(P99)},
                "throughput_ratio": x.ratio(),
                "added_gateway_cpu_us_per_call": {
                    "interleaved": x.idiff(I_CPU), "sequential": x.diff(CPU_SEQ),
                    "saturation": x.diff(CPU_SAT),
                },
            })
        })
        .collect();
    let verdicts: Vec<Value> = r
        .verdicts()
        .iter()
        .map(|v| json!({"target": v.name, "limit": v.limit, "meets": v.meets, "measured": v.measured}))
        .collect();
    json!({
        "era": r.era.name(),
        "rounds": rounds,
        "median": {
            "off": side(false),
            "on": side(true),
            "added_latency_us": {
                "p50": r.added_p50(), "p90": r.iadded(I_P90),
                "p99": r.added_p99(), "mean": r.iadded(I_MEAN),
            },
            "separate_added_latency_us": {"p50": r.added(P50), "p99": r.added(P99)},
            "throughput_ratio": r.throughput_ratio(),
            "added_gateway_cpu_us_per_call": {
                "interleaved": r.iadded(I_CPU), "sequential": r.added(CPU_SEQ),
                "saturation": r.added(CPU_SAT),
            },
        },
        "max_other_cores": r.noise(),
        "verdicts": verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }
}
