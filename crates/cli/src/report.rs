//! `portcullis report`: the control plane at a glance, for the people who own
//! it. How much of the catalog has an accountable owner and a risk tier, how
//! much traffic is decided by an explicit policy rather than a default, how
//! often calls are denied or fail, and which tools each team leans on.

use anyhow::Context;
use clap::Args;
use portcullis_audit::{parse_time, AuditDb};
use portcullis_config::Config;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long, short, default_value = "portcullis.yaml")]
    config: PathBuf,
    /// Period covered: RFC 3339 time, a date, or a duration back from now.
    #[arg(long, default_value = "30d")]
    since: String,
    /// How many tools to list per team.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[arg(long)]
    json: bool,
}

/// Policies that exist so an unconfigured gateway works; a call they decide
/// was not decided by anybody's explicit rule.
const IMPLICIT_POLICIES: &[&str] = &["builtin:allow-authenticated", "builtin:list"];

/// Methods that use a server's capability (not discovery or housekeeping).
const CALLS: &[&str] = &["tools/call", "prompts/get", "resources/read"];

#[derive(Default)]
struct ToolUse {
    calls: u64,
    latencies_us: Vec<u64>,
}

#[derive(Default)]
struct Tally {
    calls: u64,
    explicit: u64,
    default_deny: u64,
    implicit_allow: u64,
    undecided: u64,
    denied: u64,
    tool_errors: u64,
    protocol_errors: u64,
    approved_by_checkpoint: u64,
    /// team → tool → use
    teams: BTreeMap<String, BTreeMap<String, ToolUse>>,
}

impl Tally {
    fn add(&mut self, body: &Value) {
        let method = body.pointer("/request/method").and_then(Value::as_str);
        if !method.is_some_and(|m| CALLS.contains(&m)) {
            return;
        }
        self.calls += 1;
        let policies: Vec<&str> = body
            .pointer("/decision/policies")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match body.pointer("/decision/result").and_then(Value::as_str) {
            Some("allow") | Some("deny")
                if policies.iter().any(|p| !IMPLICIT_POLICIES.contains(p)) =>
            {
                self.explicit += 1
            }
            Some("deny") => self.default_deny += 1,
            Some("allow") => self.implicit_allow += 1,
            _ => self.undecided += 1,
        }
        match body.pointer("/outcome/status").and_then(Value::as_str) {
            Some("denied") => self.denied += 1,
            Some("tool_error") => self.tool_errors += 1,
            Some("protocol_error") => self.protocol_errors += 1,
            _ => {}
        }
        if matches!(
            body.pointer("/decision/checkpoint_result")
                .and_then(Value::as_str),
            Some("confirmed") | Some("approved")
        ) {
            self.approved_by_checkpoint += 1;
        }
        let tool = body
            .pointer("/target/tool")
            .or_else(|| body.pointer("/target/resource"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let server = body
            .pointer("/target/virtual_server")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let key = format!("{server}/{tool}");
        let latency = body
            .pointer("/outcome/latency_us")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let groups: Vec<String> = body
            .pointer("/actor/groups")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let teams = if groups.is_empty() {
            vec!["(no group)".to_owned()]
        } else {
            groups
        };
        for team in teams {
            let u = self
                .teams
                .entry(team)
                .or_default()
                .entry(key.clone())
                .or_default();
            u.calls += 1;
            u.latencies_us.push(latency);
        }
    }
}

fn share(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!((part as f64 * 1000.0 / whole as f64).round() / 10.0)
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(a: ReportArgs) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let since = parse_time(&a.since)
        .with_context(|| format!("--since {:?}: use RFC 3339, a date, or 7d / 24h", a.since))?;
    let report = build(&config, since, a.top).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

async fn build(config: &Config, since_us: i64, top: usize) -> anyhow::Result<Value> {
    let servers = config.upstreams.len() as u64;
    let named = |f: &dyn Fn(&portcullis_config::Upstream) -> bool| {
        config.upstreams.iter().filter(|u| f(u)).count() as u64
    };
    let with_owner = named(&|u| {
        u.catalog
            .owner
            .as_deref()
            .is_some_and(|o| !o.trim().is_empty())
    });
    let with_tier = named(&|u| u.catalog.risk_tier.is_some());
    let with_both = named(&|u| {
        u.catalog
            .owner
            .as_deref()
            .is_some_and(|o| !o.trim().is_empty())
            && u.catalog.risk_tier.is_some()
    });
    let unowned: Vec<&str> = config
        .upstreams
        .iter()
        .filter(|u| {
            u.catalog
                .owner
                .as_deref()
                .is_none_or(|o| o.trim().is_empty())
        })
        .map(|u| u.name.as_str())
        .collect();

    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".portcullis"));
    let path = config
        .audit
        .path
        .clone()
        .unwrap_or_else(|| data_dir.join("audit.db"));
    let db = AuditDb::open_existing(&path).await?;
    let mut tally = Tally::default();
    let mut after = 0;
    loop {
        let page = db
            .bodies_since("mcp.request", since_us, after, 5000)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, body) in &page {
            if let Ok(v) = serde_json::from_str::<Value>(body) {
                tally.add(&v);
            }
        }
    }
    db.close().await;
    let mut teams = serde_json::Map::new();
    for (team, tools) in &mut tally.teams {
        let mut rows: Vec<(String, u64, u64, u64)> = tools
            .iter_mut()
            .map(|(tool, u)| {
                u.latencies_us.sort_unstable();
                (
                    tool.clone(),
                    u.calls,
                    percentile(&u.latencies_us, 0.5),
                    percentile(&u.latencies_us, 0.95),
                )
            })
            .collect();
        let row = |r: &(String, u64, u64, u64)| json!({"tool": r.0, "calls": r.1, "p50_ms": r.2 as f64 / 1000.0, "p95_ms": r.3 as f64 / 1000.0});
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let by_calls: Vec<Value> = rows.iter().take(top).map(row).collect();
        rows.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)));
        let by_latency: Vec<Value> = rows.iter().take(top).map(row).collect();
        teams.insert(
            team.clone(),
            json!({"by_calls": by_calls, "by_latency_p95": by_latency}),
        );
    }
    let t = &tally;
    Ok(json!({
        "since": portcullis_audit::format_time(since_us),
        "servers": {
            "total": servers,
            "with_owner_pct": share(with_owner, servers),
            "with_risk_tier_pct": share(with_tier, servers),
            "with_owner_and_risk_tier_pct": share(with_both, servers),
            "without_owner": unowned,
        },
        "calls": {
            "total": t.calls,
            "decided_by_explicit_policy_pct": share(t.explicit, t.calls),
            "default_deny_pct": share(t.default_deny, t.calls),
            "built_in_allow_pct": share(t.implicit_allow, t.calls),
            "undecided_pct": share(t.undecided, t.calls),
            "denial_rate_pct": share(t.denied, t.calls),
            "exception_rate_pct": share(t.tool_errors + t.protocol_errors, t.calls),
            "tool_error_pct": share(t.tool_errors, t.calls),
            "protocol_error_pct": share(t.protocol_errors, t.calls),
            "passed_a_checkpoint_pct": share(t.approved_by_checkpoint, t.calls),
        },
        "teams": teams,
    }))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|f| format!("{f:.1} %"))
        .unwrap_or_else(|| "n/a".into())
}

fn print_text(r: &Value) {
    let s = &r["servers"];
    let c = &r["calls"];
    println!(
        "Portcullis control-plane report since {}",
        r["since"].as_str().unwrap_or("")
    );
    println!();
    println!("Servers: {}", s["total"]);
    println!("  with a named owner         {}", pct(&s["with_owner_pct"]));
    println!(
        "  with a risk tier           {}",
        pct(&s["with_risk_tier_pct"])
    );
    println!(
        "  with both                  {}",
        pct(&s["with_owner_and_risk_tier_pct"])
    );
    if let Some(list) = s["without_owner"].as_array().filter(|l| !l.is_empty()) {
        let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        println!("  without an owner: {}", names.join(", "));
    }
    println!();
    println!(
        "Calls (tools/call, prompts/get, resources/read): {}",
        c["total"]
    );
    println!(
        "  decided by an explicit policy  {}",
        pct(&c["decided_by_explicit_policy_pct"])
    );
    println!(
        "  denied by default (no rule)    {}",
        pct(&c["default_deny_pct"])
    );
    println!(
        "  allowed by the built-in rule   {}",
        pct(&c["built_in_allow_pct"])
    );
    println!(
        "  not decided (auth off)         {}",
        pct(&c["undecided_pct"])
    );
    println!(
        "  denial rate                    {}",
        pct(&c["denial_rate_pct"])
    );
    println!(
        "  exception rate (errors)        {}",
        pct(&c["exception_rate_pct"])
    );
    println!(
        "  passed a human checkpoint      {}",
        pct(&c["passed_a_checkpoint_pct"])
    );
    if let Some(teams) = r["teams"].as_object() {
        for (team, t) in teams {
            println!();
            println!("Team {team}");
            for (title, key) in [
                ("top by calls", "by_calls"),
                ("top by p95 latency", "by_latency_p95"),
            ] {
                println!("  {title}:");
                for row in t[key].as_array().into_iter().flatten() {
                    println!(
                        "    {:<40} {:>8} calls  p50 {:>8.1} ms  p95 {:>8.1} ms",
                        row["tool"].as_str().unwrap_or(""),
                        row["calls"],
                        row["p50_ms"].as_f64().unwrap_or(0.0),
                        row["p95_ms"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        team: &str,
        tool: &str,
        result: &str,
        policies: &[&str],
        status: &str,
        us: u64,
    ) -> Value {
        json!({"request": {"method": "tools/call"}, "actor": {"groups": [team]},
               "target": {"virtual_server": "v", "tool": tool},
               "decision": {"result": result, "policies": policies},
               "outcome": {"status": status, "latency_us": us}})
    }

    #[test]
    fn tallies_explicit_decisions_rates_and_teams() {
        let mut t = Tally::default();
        t.add(&call("eng", "a", "allow", &["p1"], "success", 1000));
        t.add(&call(
            "eng",
            "a",
            "allow",
            &["builtin:allow-authenticated"],
            "tool_error",
            3000,
        ));
        t.add(&call("eng", "b", "deny", &[], "denied", 10));
        t.add(&call("ops", "b", "deny", &["never-b"], "denied", 10));
        t.add(&json!({"request": {"method": "tools/list"}}));
        assert_eq!(t.calls, 4);
        assert_eq!(t.explicit, 2);
        assert_eq!((t.default_deny, t.implicit_allow), (1, 1));
        assert_eq!((t.denied, t.tool_errors), (2, 1));
        assert_eq!(t.teams["eng"]["v/a"].calls, 2);
        assert_eq!(share(t.explicit, t.calls), json!(50.0));
        assert_eq!(share(1, 0), Value::Null);
    }
}
