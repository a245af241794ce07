//! Gateways in different configurations measured back to back: the whole
//! scenario (warm-up, latency phase, saturation phase) on each, over rounds
//! whose order alternates (A, B, C, then C, B, A, …), so that a drift in the
//! machine's state weighs on every configuration alike. Figures over several
//! rounds are medians, of each configuration's values and of the per-round
//! differences and ratios against the reference configuration (index 0).
//!
//! `--auth compare` (authreport, two configurations plus an interleaved
//! phase per round) and `--audit compare` (auditreport, three) are both one
//! [`Comparison`]; the `extra` of a round is what a kind adds to it.

use serde_json::{json, Map, Value};

use crate::client::Era;
use crate::load::TargetRun;
use crate::report::{self, opt, Outcome};

/// Width of a configuration's column (`audit normal` and a space).
pub const CELL: usize = 14;

/// The reference configuration of every comparison (auth off, audit off).
pub const BASE: usize = 0;

pub type Figure = fn(&TargetRun) -> Option<f64>;

pub const P50: Figure = |t| Some(t.sequential.latency.p50_us);
pub const P99: Figure = |t| Some(t.sequential.latency.p99_us);
pub const MEAN: Figure = |t| Some(t.sequential.latency.mean_us);
pub const SAT_P50: Figure = |t| Some(t.saturation.latency.p50_us);
pub const SAT_P99: Figure = |t| Some(t.saturation.latency.p99_us);
pub const THROUGHPUT: Figure = |t| Some(t.saturation.calls_per_sec());
pub const CPU_SEQ: Figure = |t| t.sequential.gateway_cpu_per_call_us();
pub const CPU_SAT: Figure = |t| t.saturation.gateway_cpu_per_call_us();
pub const OTHER_SEQ: Figure = |t| t.sequential.other_cores();
pub const OTHER_SAT: Figure = |t| t.saturation.other_cores();
pub const ERRORS: Figure = |t| Some(t.errors.count as f64);

/// The configurations' indices in the order round `round` measures them:
/// forward in even rounds, backward in odd ones.
pub fn order(n: usize, round: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// Runs `rounds` rounds over `n` configurations: `measure(k, round)` for each
/// `k` in the round's [`order`], then `extra(order, round)`.
pub fn run_rounds<X>(
    n: usize,
    rounds: usize,
    mut measure: impl FnMut(usize, usize) -> Outcome,
    mut extra: impl FnMut(&[usize], usize) -> X,
) -> Vec<Round<X>> {
    (0..rounds)
        .map(|i| {
            let order = order(n, i);
            let mut runs: Vec<Outcome> = vec![Err("not measured".into()); n];
            for &k in &order {
                runs[k] = measure(k, i);
            }
            let extra = extra(&order, i);
            Round { order, runs, extra }
        })
        .collect()
}

/// One round: every configuration's outcome (by index), the order they ran
/// in, and what the kind of comparison adds.
pub struct Round<X> {
    pub order: Vec<usize>,
    pub runs: Vec<Outcome>,
    pub extra: X,
}

impl<X> Round<X> {
    pub fn run(&self, k: usize) -> Option<&TargetRun> {
        self.runs.get(k)?.as_ref().ok()
    }

    /// `f(k) - f(base)`.
    pub fn diff(&self, k: usize, f: Figure) -> Option<f64> {
        Some(f(self.run(k)?)? - f(self.run(BASE)?)?)
    }

    /// Saturation throughput of `k` over that of the base.
    pub fn ratio(&self, k: usize) -> Option<f64> {
        let base = self.run(BASE)?.saturation.calls_per_sec();
        let this = self.run(k)?.saturation.calls_per_sec();
        (base > 0.0).then(|| this / base)
    }

    /// Most cores other processes used during any phase of the round.
    pub fn noise(&self) -> f64 {
        self.runs
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .flat_map(|t| [t.sequential.other_cores(), t.saturation.other_cores()])
            .flatten()
            .fold(0.0, f64::max)
    }

    /// Failed calls (a configuration that could not be measured counts one).
    pub fn error_count(&self) -> u64 {
        self.runs
            .iter()
            .map(|o| o.as_ref().map(|r| r.errors.count).unwrap_or(1))
            .sum()
    }

    /// The names in the order measured: `off, on`.
    pub fn order_text(&self, names: &[&str]) -> String {
        let names: Vec<&str> = self.order.iter().map(|&k| names[k]).collect();
        names.join(", ")
    }
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

/// The rounds of one era. `subject` and `names` name the configurations
/// (`auth` + `off`, `on`); index [`BASE`] is the reference.
pub struct Comparison<X> {
    pub era: Era,
    pub subject: &'static str,
    pub names: Vec<&'static str>,
    pub rounds: Vec<Round<X>>,
}

impl<X> Comparison<X> {
    pub fn new(
        era: Era,
        subject: &'static str,
        names: &[&'static str],
        rounds: Vec<Round<X>>,
    ) -> Comparison<X> {
        Comparison {
            era,
            subject,
            names: names.to_vec(),
            rounds,
        }
    }

    /// The reference configuration's outcome in the first round (for the
    /// era's direct-vs-gateway table).
    pub fn first_base(&self) -> Outcome {
        self.rounds
            .first()
            .and_then(|r| r.runs.get(BASE).cloned())
            .unwrap_or_else(|| Err("no round was run".into()))
    }

    /// Median over the rounds of configuration `k`'s figure.
    pub fn side(&self, k: usize, f: Figure) -> Option<f64> {
        median(
            self.rounds
                .iter()
                .filter_map(|r| r.run(k).and_then(f))
                .collect(),
        )
    }

    /// Median over the rounds of `f(k) - f(base)`.
    pub fn added(&self, k: usize, f: Figure) -> Option<f64> {
        median(self.rounds.iter().filter_map(|r| r.diff(k, f)).collect())
    }

    /// Median over the rounds of the throughput ratio `k / base`.
    pub fn throughput_ratio(&self, k: usize) -> Option<f64> {
        median(self.rounds.iter().filter_map(|r| r.ratio(k)).collect())
    }

    /// Most cores other processes used during any measured phase.
    pub fn noise(&self) -> f64 {
        self.rounds.iter().map(Round::noise).fold(0.0, f64::max)
    }

    pub fn runs_error_count(&self) -> u64 {
        self.rounds.iter().map(Round::error_count).sum()
    }

    fn others(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.names.len()).filter(|&k| k != BASE)
    }

    /// `+12.0` with two configurations, `on +12.0, normal +3.1` with more.
    fn per_other(&self, cell: impl Fn(usize) -> Option<String>) -> String {
        let single = self.names.len() == 2;
        let parts: Vec<String> = self
            .others()
            .filter_map(|k| {
                let c = cell(k)?;
                Some(if single {
                    c
                } else {
                    format!("{} {c}", self.names[k])
                })
            })
            .collect();
        parts.join(", ")
    }

    /// The title line and the column header.
    pub fn header(&self, out: &mut String, what: &str) {
        let n = self.rounds.len();
        out.push_str(&format!(
            "\n== {} era (MCP {}): {what} ({n} round{}) ==\n",
            self.era.name(),
            self.era.version(),
            if n == 1 { "" } else { "s, medians" }
        ));
        let cells: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("{} {n}", self.subject))
            .collect();
        report::row_cells(out, "", &cells, CELL, "added / ratio");
    }

    /// The rows every comparison shows: the separate latency phases, the
    /// saturation phase (throughput with its ratio), CPU, noise, errors.
    pub fn table(&self, out: &mut String, connections: usize) {
        let c = connections;
        let cells = |f: Figure, decimals: usize| -> Vec<String> {
            (0..self.names.len())
                .map(|k| opt(self.side(k, f), decimals, ""))
                .collect()
        };
        let added = |f: Figure| self.per_other(|k| self.added(k, f).map(|v| opt(Some(v), 1, "+")));
        let base = self.names[BASE];
        let ratio =
            self.per_other(|k| self.throughput_ratio(k).map(|x| format!("{x:.3} x {base}")));
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
            report::row_cells(out, label, &cells(*f, *decimals), CELL, extra);
        }
    }

    /// The error samples of one round's runs.
    pub fn round_samples(&self, out: &mut String, round: &Round<X>) {
        for (k, o) in round.runs.iter().enumerate() {
            let name = format!("{} {}", self.subject, self.names[k]);
            match o {
                Err(e) => out.push_str(&format!("  {name} failed: {e}\n")),
                Ok(t) => {
                    for s in &t.errors.samples {
                        out.push_str(&format!("  {name} error sample: {s}\n"));
                    }
                }
            }
        }
    }

    /// Configuration `k`'s medians over the rounds.
    pub fn side_json(&self, k: usize) -> Map<String, Value> {
        let s = |f| self.side(k, f);
        let v = json!({
            "latency_1conn_us": {"p50": s(P50), "p99": s(P99), "mean": s(MEAN)},
            "latency_saturation_us": {"p50": s(SAT_P50), "p99": s(SAT_P99)},
            "calls_per_s": s(THROUGHPUT),
            "gateway_cpu_us_per_call": {"sequential": s(CPU_SEQ), "saturation": s(CPU_SAT)},
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// One round's runs by name, its order and its ratios.
    pub fn round_json(&self, round: &Round<X>) -> Map<String, Value> {
        let mut m = Map::new();
        let order: Vec<&str> = round.order.iter().map(|&k| self.names[k]).collect();
        m.insert("order".into(), json!(order.join(",")));
        for (k, o) in round.runs.iter().enumerate() {
            m.insert(self.names[k].into(), report::outcome_json(o));
        }
        m
    }
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

    #[test]
    fn order_alternates() {
        assert_eq!(order(2, 0), [0, 1]);
        assert_eq!(order(2, 1), [1, 0]);
        assert_eq!(order(3, 2), [0, 1, 2]);
        assert_eq!(order(3, 3), [2, 1, 0]);
    }

    #[test]
    fn rounds_measure_in_order_and_store_by_index() {
        let mut seen = Vec::new();
        let rounds = run_rounds(
            3,
            2,
            |k, i| {
                seen.push((i, k));
                Err(format!("{k}"))
            },
            |order, _| order.to_vec(),
        );
        assert_eq!(seen, [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]);
        assert_eq!(rounds[1].extra, [2, 1, 0]);
        assert_eq!(
            rounds[1].runs[2].as_ref().err().map(String::as_str),
            Some("2")
        );
        assert_eq!(rounds[1].order_text(&["a", "b", "c"]), "c, b, a");
    }
}
