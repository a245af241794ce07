//! What the durable audit log costs: the same scenario through gateways with
//! `audit: {enabled: false}`, `{}` (the default: one fsync per group commit)
//! and `{sync: normal}`, back to back over rounds with alternating order (see
//! [`crate::compare`]). The group-commit sizes each gateway saw come from its
//! log once it has stopped ([`crate::gateway::BatchStats`]).

use serde_json::{json, Map, Value};

use crate::compare::{Comparison, P50, P99, SAT_P50, SAT_P99};
use crate::gateway::{Audit, BatchStats};
use crate::report::{self, opt};

/// The target of the audit issue: throughput with audit on ≥ 0.9 × off.
pub const TARGET_AUDIT_THROUGHPUT_RATIO: f64 = 0.90;

/// The configurations, by index: the same order as [`Audit::ALL`].
pub const NAMES: [&str; 3] = ["off", "on", "normal"];
const ON: usize = 1;
const NORMAL: usize = 2;

pub type AuditReport = Comparison<()>;

/// The configurations whose figures are compared with audit off.
const AUDITED: [usize; 2] = [ON, NORMAL];

impl Comparison<()> {
    pub fn verdicts(&self) -> Vec<report::Verdict> {
        let disturbed = report::disturbed(self.noise());
        let verdict = |name, k| {
            let ratio = self.throughput_ratio(k);
            report::Verdict {
                name,
                limit: format!(">= {TARGET_AUDIT_THROUGHPUT_RATIO:.2}"),
                meets: ratio.map(|v| v >= TARGET_AUDIT_THROUGHPUT_RATIO),
                measured: opt(ratio, 3, "") + disturbed,
            }
        };
        vec![
            verdict("audit: throughput on (sync full) / off", ON),
            verdict("audit: throughput sync normal / off", NORMAL),
        ]
    }

    pub fn error_count(&self) -> u64 {
        self.runs_error_count()
    }
}

/// Renders the off / on / normal table of one era (medians over the rounds).
pub fn render(r: &AuditReport, connections: usize) -> String {
    let mut out = String::new();
    r.header(
        &mut out,
        "gateway with audit off, on (sync full) and sync normal",
    );
    r.table(&mut out, connections);
    for (i, round) in r.rounds.iter().enumerate() {
        let per = |f: &dyn Fn(usize) -> String| {
            AUDITED
                .iter()
                .map(|&k| format!("{} {}", NAMES[k], f(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "  round {} ({}): throughput / off: {}; added p50 {}; added p99 {} us\n",
            i + 1,
            round.order_text(&NAMES),
            per(&|k| opt(round.ratio(k), 3, "")),
            per(&|k| opt(round.diff(k, P50), 1, "+")),
            per(&|k| opt(round.diff(k, P99), 1, "+")),
        ));
        r.round_samples(&mut out, round);
    }
    report::noise_warning(&mut out, r.noise());
    for v in r.verdicts() {
        out.push_str(&report::verdict_line(&v));
    }
    let ratio = r.throughput_ratio(ON);
    out.push_str(&format!(
        "  audit throughput on / off = {} (target >= {TARGET_AUDIT_THROUGHPUT_RATIO:.2}): {}\n",
        opt(ratio, 3, ""),
        match ratio {
            Some(v) if v >= TARGET_AUDIT_THROUGHPUT_RATIO => "PASS",
            Some(_) => "FAIL",
            None => "n/a",
        }
    ));
    out
}

fn by_name(f: impl Fn(usize) -> Value) -> Value {
    let m: Map<String, Value> = AUDITED.iter().map(|&k| (NAMES[k].into(), f(k))).collect();
    Value::Object(m)
}

pub fn audit_json(r: &AuditReport) -> Value {
    let rounds: Vec<Value> = r
        .rounds
        .iter()
        .map(|x| {
            let mut m = r.round_json(x);
            m.insert("throughput_ratio".into(), by_name(|k| json!(x.ratio(k))));
            m.insert(
                "added_latency_us".into(),
                by_name(|k| json!({"p50": x.diff(k, P50), "p99": x.diff(k, P99)})),
            );
            Value::Object(m)
        })
        .collect();
    let mut median: Map<String, Value> = (0..NAMES.len())
        .map(|k| (NAMES[k].into(), Value::Object(r.side_json(k))))
        .collect();
    median.insert(
        "throughput_ratio".into(),
        by_name(|k| json!(r.throughput_ratio(k))),
    );
    median.insert(
        "added_latency_us".into(),
        by_name(|k| {
            json!({
                "p50": r.added(k, P50), "p99": r.added(k, P99),
                "saturation_p50": r.added(k, SAT_P50), "saturation_p99": r.added(k, SAT_P99),
            })
        }),
    );
    json!({
        "era": r.era.name(),
        "rounds": rounds,
        "median": median,
        "max_other_cores": r.noise(),
        "verdicts": report::verdicts_json(&r.verdicts()),
    })
}

/// Group-commit sizes of one spawned gateway, from its log after it stopped.
pub struct Batches {
    pub label: String,
    pub audit: Audit,
    pub stats: Result<BatchStats, String>,
}

/// The group-commit section: one block per gateway with audit on.
pub fn render_batches(all: &[Batches]) -> String {
    let mut out = String::new();
    if all.is_empty() {
        return out;
    }
    out.push_str(
        "\n== audit group commits, per gateway, over its whole run (all eras, rounds and phases) ==\n",
    );
    for b in all {
        match &b.stats {
            Err(e) => out.push_str(&format!("  {}: n/a ({e})\n", b.label)),
            Ok(s) => {
                out.push_str(&format!(
                    "  {}: {} records in {} group commits: mean {:.2}, largest {}\n",
                    b.label, s.records, s.batches, s.mean, s.largest
                ));
                out.push_str(&format!("    histogram: {}\n", s.histogram_text()));
                if let Some(mean) = s.wait_mean_us {
                    out.push_str(&format!(
                        "    wait for a durable record: mean {mean:.0} us; {}\n",
                        s.wait_text()
                    ));
                }
            }
        }
    }
    out
}

pub fn batches_json(all: &[Batches]) -> Value {
    let v: Vec<Value> = all
        .iter()
        .map(|b| {
            let stats = match &b.stats {
                Ok(s) => s.to_json(),
                Err(e) => json!({"failure": e}),
            };
            json!({"gateway": b.label, "audit": b.audit.name(), "batches": stats})
        })
        .collect();
    Value::Array(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_audit_modes() {
        for (k, a) in Audit::ALL.iter().enumerate() {
            assert_eq!(NAMES[k], a.name());
        }
    }
}
