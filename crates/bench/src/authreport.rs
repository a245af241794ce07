//! What authentication costs a call: the same scenario through a gateway with
//! `auth: {mode: off}` and one with `auth: {mode: required}`, back to back, over
//! one or more rounds (order alternating: off→on, on→off, …). Each round ends
//! with an interleaved latency phase where calls alternate between the two
//! gateways, so that both see the same machine state: the figure for added
//! latency. Figures over several rounds are medians.

use serde_json::{json, Value};

use crate::compare::{self, Comparison, CPU_SAT, CPU_SEQ, P50, P99};
use crate::load::{Errors, Phase};
use crate::report::{self, opt};

/// Targets from the authentication issue (see docs/performance.md).
pub const TARGET_AUTH_ADDED_P99_US: f64 = 20.0;
pub const TARGET_AUTH_THROUGHPUT_RATIO: f64 = 0.90;

/// The configurations: `auth: {mode: off}` (the base) and `{mode: required}`.
pub const NAMES: [&str; 2] = ["off", "on"];
const OFF: usize = 0;
const ON: usize = 1;

/// The interleaved latency phase: one connection to each gateway.
pub struct Interleaved {
    pub off: Phase,
    pub on: Phase,
    pub errors: Errors,
}

/// What authentication adds to a round: its interleaved phase.
pub type Extra = Result<Interleaved, String>;
pub type Round = compare::Round<Extra>;
pub type AuthReport = Comparison<Extra>;

type PhaseFigure = fn(&Phase) -> Option<f64>;

const I_P50: PhaseFigure = |p| Some(p.latency.p50_us);
const I_P90: PhaseFigure = |p| Some(p.latency.p90_us);
const I_P99: PhaseFigure = |p| Some(p.latency.p99_us);
const I_MEAN: PhaseFigure = |p| Some(p.latency.mean_us);
const I_CPU: PhaseFigure = |p| p.gateway_cpu_per_call_us();

fn inter(r: &Round) -> Option<&Interleaved> {
    r.extra.as_ref().ok()
}

fn idiff(r: &Round, f: PhaseFigure) -> Option<f64> {
    let i = inter(r)?;
    Some(f(&i.on)? - f(&i.off)?)
}

fn noise(r: &Round) -> f64 {
    inter(r)
        .and_then(|i| i.off.other_cores())
        .unwrap_or(0.0)
        .max(r.noise())
}

impl Comparison<Extra> {
    fn iside(&self, on: bool, f: PhaseFigure) -> Option<f64> {
        let v = self.rounds.iter().filter_map(|r| {
            let i = inter(r)?;
            f(if on { &i.on } else { &i.off })
        });
        compare::median(v.collect())
    }

    fn iadded(&self, f: PhaseFigure) -> Option<f64> {
        compare::median(self.rounds.iter().filter_map(|r| idiff(r, f)).collect())
    }

    /// Added p50 at one connection, from the interleaved phases (median over rounds).
    pub fn added_p50(&self) -> Option<f64> {
        self.iadded(I_P50)
    }

    pub fn added_p99(&self) -> Option<f64> {
        self.iadded(I_P99)
    }

    pub fn auth_noise(&self) -> f64 {
        self.rounds.iter().map(noise).fold(0.0, f64::max)
    }

    pub fn error_count(&self) -> u64 {
        let inter = |r: &Round| r.extra.as_ref().map(|i| i.errors.count).unwrap_or(1);
        self.runs_error_count() + self.rounds.iter().map(inter).sum::<u64>()
    }

    pub fn verdicts(&self) -> Vec<report::Verdict> {
        let p99 = self.added_p99();
        let ratio = self.throughput_ratio(ON);
        let disturbed = report::disturbed(self.auth_noise());
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
    let mut out = String::new();
    r.header(&mut out, "gateway without vs with authentication");
    let c = connections;
    let ilines: [(&str, PhaseFigure); 5] = [
        ("interleaved p50, 1 conn each (us)", I_P50),
        ("interleaved p90, 1 conn each (us)", I_P90),
        ("interleaved p99, 1 conn each (us)", I_P99),
        ("interleaved mean, 1 conn each (us)", I_MEAN),
        ("interleaved gateway CPU/call (us)", I_CPU),
    ];
    for (label, f) in ilines {
        let cells = [opt(r.iside(false, f), 1, ""), opt(r.iside(true, f), 1, "")];
        report::row_cells(
            &mut out,
            label,
            &cells,
            compare::CELL,
            &opt(r.iadded(f), 1, "+"),
        );
    }
    r.table(&mut out, c);
    for (i, round) in r.rounds.iter().enumerate() {
        out.push_str(&format!(
            "  round {} ({}): interleaved added p50 {} p99 {} us; throughput {}; CPU/call 1-conn {} / {c}-conn {} us\n",
            i + 1,
            round.order_text(&NAMES),
            opt(idiff(round, I_P50), 1, "+"),
            opt(idiff(round, I_P99), 1, "+"),
            opt(round.ratio(ON), 3, ""),
            opt(idiff(round, I_CPU), 1, "+"),
            opt(round.diff(ON, CPU_SAT), 1, "+"),
        ));
        r.round_samples(&mut out, round);
        match &round.extra {
            Err(e) => out.push_str(&format!("  interleaved phase failed: {e}\n")),
            Ok(i) => {
                for s in &i.errors.samples {
                    out.push_str(&format!("  interleaved error sample: {s}\n"));
                }
            }
        }
    }
    report::noise_warning(&mut out, r.auth_noise());
    for v in r.verdicts() {
        out.push_str(&report::verdict_line(&v));
    }
    out
}

pub fn auth_json(r: &AuthReport) -> Value {
    let side = |k: usize| {
        let on = k == ON;
        let mut m = r.side_json(k);
        m.insert(
            "interleaved_latency_us".into(),
            json!({
                "p50": r.iside(on, I_P50), "p90": r.iside(on, I_P90),
                "p99": r.iside(on, I_P99), "mean": r.iside(on, I_MEAN),
            }),
        );
        m.insert(
            "interleaved_gateway_cpu_us_per_call".into(),
            json!(r.iside(on, I_CPU)),
        );
        Value::Object(m)
    };
    let rounds: Vec<Value> = r
        .rounds
        .iter()
        .map(|x| {
            let interleaved = match &x.extra {
                Err(e) => json!({"ok": false, "failure": e}),
                Ok(i) => json!({
                    "ok": true,
                    "off": report::phase_json(&i.off),
                    "on": report::phase_json(&i.on),
                    "errors": i.errors.count,
                    "error_samples": i.errors.samples,
                }),
            };
            let mut m = r.round_json(x);
            let more = json!({
                "interleaved": interleaved,
                "interleaved_added_latency_us": {
                    "p50": idiff(x, I_P50), "p90": idiff(x, I_P90),
                    "p99": idiff(x, I_P99), "mean": idiff(x, I_MEAN),
                },
                "separate_added_latency_us": {"p50": x.diff(ON, P50), "p99": x.diff(ON, P99)},
                "throughput_ratio": x.ratio(ON),
                "added_gateway_cpu_us_per_call": {
                    "interleaved": idiff(x, I_CPU), "sequential": x.diff(ON, CPU_SEQ),
                    "saturation": x.diff(ON, CPU_SAT),
                },
            });
            if let Value::Object(more) = more {
                m.extend(more);
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "era": r.era.name(),
        "rounds": rounds,
        "median": {
            "off": side(OFF),
            "on": side(ON),
            "added_latency_us": {
                "p50": r.added_p50(), "p90": r.iadded(I_P90),
                "p99": r.added_p99(), "mean": r.iadded(I_MEAN),
            },
            "separate_added_latency_us": {"p50": r.added(ON, P50), "p99": r.added(ON, P99)},
            "throughput_ratio": r.throughput_ratio(ON),
            "added_gateway_cpu_us_per_call": {
                "interleaved": r.iadded(I_CPU), "sequential": r.added(ON, CPU_SEQ),
                "saturation": r.added(ON, CPU_SAT),
            },
        },
        "max_other_cores": r.auth_noise(),
        "verdicts": report::verdicts_json(&r.verdicts()),
    })
}
