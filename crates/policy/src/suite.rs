//! Policy test suites: requests described in YAML (or JSON) with the decision
//! each should get, run against a compiled policy set. CI gates policy changes
//! on them (`portcullis policy test --suite`), and the admin API answers
//! "what would happen if" with the same case format.
//!
//! A case describes the request as the gateway would see it: who calls, through
//! which virtual server, which tool (prompt, resource) from which upstream, with
//! which arguments, from where and when. Expectations (`expect`, `policies`,
//! `checkpoint`, `listed`) are optional in a single question, required in a
//! suite file (`expect` at least), so a suite cannot silently test nothing.

use crate::engine::{Ask, Checkpoint, Compiled, PolicyEngine};
use crate::facts::{Subject, Target, ToolFlags};
use portcullis_config::Config;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// One described request and what it should get.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub name: String,
    pub principal: CasePrincipal,
    pub virtual_server: String,
    /// Exposed tool name (what clients call). One of tool, prompt, resource.
    pub tool: Option<String>,
    pub prompt: Option<String>,
    /// Resource URI as clients read it.
    pub resource: Option<String>,
    /// The upstream the tool, prompt or resource comes from; the CLI infers it
    /// from the configuration's prefixes when omitted.
    pub server: Option<String>,
    /// The tool's name at the upstream; defaults to the exposed name without
    /// its prefix.
    pub upstream_name: Option<String>,
    /// MCP tool annotations (`readOnlyHint`, `destructiveHint`, ...). MCP's
    /// defaults apply when absent: a tool without annotations is destructive.
    pub annotations: Option<Map<String, Value>>,
    pub risk_tier: Option<u8>,
    pub args: Option<Map<String, Value>>,
    pub source_ip: Option<IpAddr>,
    /// RFC 3339; the time the suite runs when absent.
    pub time: Option<String>,
    pub expect: Option<Expect>,
    /// Ids of the deciding policies, in any order: the satisfied permits of
    /// an allowed call, the forbids of a denied one (`[]`: nothing permitted it).
    pub policies: Option<Vec<String>>,
    pub checkpoint: Option<ExpectedCheckpoint>,
    /// Whether the item appears in the caller's tools/prompts/resources list.
    pub listed: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CasePrincipal {
    pub user: String,
    /// The account id `User::"..."` names; the username when omitted. Real
    /// ids are generated, so policies should prefer `principal.username`.
    pub id: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// A service account instead of a person.
    #[serde(default)]
    pub service: bool,
    #[serde(default)]
    pub admin: bool,
    pub email: Option<String>,
    /// A service account's owner (user id).
    pub owner: Option<String>,
    /// OAuth client id; `api-token` (the gateway's value for API tokens) when omitted.
    pub client: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedCheckpoint {
    None,
    User,
    Approver,
}

impl ExpectedCheckpoint {
    fn of(c: Option<Checkpoint>) -> ExpectedCheckpoint {
        match c {
            None => ExpectedCheckpoint::None,
            Some(Checkpoint::User) => ExpectedCheckpoint::User,
            Some(Checkpoint::Approver) => ExpectedCheckpoint::Approver,
        }
    }
}

/// A suite that cannot run: malformed, or a case that describes no request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuiteError {
    #[error("{0}")]
    Syntax(String),
    #[error("case {index} ({name:?}): {message}")]
    Case {
        /// 1-based position in the suite.
        index: usize,
        name: String,
        message: String,
    },
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    /// True when every expectation the case states holds.
    pub passed: bool,
    pub allowed: bool,
    pub policies: Vec<String>,
    pub checkpoint: Option<Checkpoint>,
    pub errors: Vec<String>,
    pub listed: bool,
    /// The decision's reason, preceded by what did not match on failure.
    pub reason: String,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SuiteReport {
    /// Version of the policy set the suite ran against.
    pub version: u64,
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<CaseResult>,
}

impl SuiteReport {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// A parsed list of cases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Suite {
    pub cases: Vec<Case>,
}

impl Suite {
    /// A suite file: `cases: [...]`, every case with an `expect`.
    pub fn from_yaml(text: &str) -> Result<Suite, SuiteError> {
        let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
                .unwrap_or_default();
            SuiteError::Syntax(format!("{at}{e}"))
        })?;
        let serde_yaml::Value::Mapping(top) = doc else {
            return Err(SuiteError::Syntax(
                "a suite is a mapping with `cases:`".into(),
            ));
        };
        let mut items = None;
        for (k, v) in top {
            match k.as_str() {
                Some("cases") => items = Some(v),
                other => {
                    return Err(SuiteError::Syntax(format!(
                        "unknown key {:?} at the top of the suite: expected `cases`",
                        other.unwrap_or("?")
                    )))
                }
            }
        }
        let Some(serde_yaml::Value::Sequence(items)) = items else {
            return Err(SuiteError::Syntax(
                "`cases:` must be a list of cases".into(),
            ));
        };
        let suite = Suite {
            cases: items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let name = item.get("name").and_then(|n| n.as_str()).map(str::to_owned);
                    parse_case(i, name, serde_yaml::from_value::<Case>(item))
                })
                .collect::<Result<_, _>>()?,
        };
        for (i, c) in suite.cases.iter().enumerate() {
            if c.expect.is_none() {
                return Err(case_error(
                    i,
                    c,
                    "`expect: allow` or `expect: deny` is required in a suite",
                ));
            }
        }
        Ok(suite)
    }

    /// One case, or `{"cases": [...]}`; expectations are optional.
    pub fn from_json(value: Value) -> Result<Suite, SuiteError> {
        let items = match value {
            Value::Object(mut map) if map.contains_key("cases") => {
                if let Some(k) = map.keys().find(|k| *k != "cases") {
                    return Err(SuiteError::Syntax(format!(
                        "unknown key {k:?} next to `cases`"
                    )));
                }
                match map.remove("cases") {
                    Some(Value::Array(items)) => items,
                    _ => return Err(SuiteError::Syntax("`cases` must be a list".into())),
                }
            }
            single @ Value::Object(_) => vec![single],
            _ => {
                return Err(SuiteError::Syntax(
                    "expected a case object or {\"cases\": [...]}".into(),
                ))
            }
        };
        let cases = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
                parse_case(i, name, serde_json::from_value::<Case>(item))
            })
            .collect::<Result<_, _>>()?;
        Ok(Suite { cases })
    }

    /// Fill in what the configuration knows and a case left out: the upstream
    /// a prefixed name comes from, its upstream name, a per-tool risk tier, and
    /// fixed arguments (the gateway adds them before deciding, so policies see
    /// them). Unknown virtual servers are errors: a typo would test nothing.
    pub fn resolve(&mut self, config: &Config) -> Result<(), SuiteError> {
        for (i, case) in self.cases.iter_mut().enumerate() {
            let Some(vs) = config
                .virtual_servers
                .iter()
                .find(|v| v.name == case.virtual_server)
            else {
                let known: Vec<&str> = config
                    .virtual_servers
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect();
                let msg = format!(
                    "no virtual server {:?} in the configuration (known: {})",
                    case.virtual_server,
                    known.join(", ")
                );
                return Err(case_error(i, case, &msg));
            };
            resolve_case(case, vs);
        }
        Ok(())
    }

    /// Run every case; a case that describes no request stops the suite.
    pub fn run(
        &self,
        engine: &PolicyEngine,
        compiled: &Compiled,
        now: i64,
    ) -> Result<SuiteReport, SuiteError> {
        let checked: Vec<Checked> = self
            .cases
            .iter()
            .enumerate()
            .map(|(i, c)| check(c).map_err(|m| case_error(i, c, &m)))
            .collect::<Result<_, _>>()?;
        let cases: Vec<CaseResult> = self
            .cases
            .iter()
            .zip(&checked)
            .enumerate()
            .map(|(i, (c, k))| evaluate(engine, compiled, c, k, now, i))
            .collect();
        let failed = cases.iter().filter(|c| !c.passed).count();
        Ok(SuiteReport {
            version: compiled.version,
            passed: cases.len() - failed,
            failed,
            cases,
        })
    }
}

/// Parse a YAML suite and run it against `compiled`; cases without `time`
/// are decided at `now` (Unix seconds).
pub fn run_suite(
    engine: &PolicyEngine,
    compiled: &Compiled,
    suite_yaml: &str,
    now: i64,
) -> Result<SuiteReport, SuiteError> {
    Suite::from_yaml(suite_yaml)?.run(engine, compiled, now)
}

fn parse_case<E: std::fmt::Display>(
    index: usize,
    name: Option<String>,
    parsed: Result<Case, E>,
) -> Result<Case, SuiteError> {
    let mut case = parsed.map_err(|e| SuiteError::Case {
        index: index + 1,
        name: name.clone().unwrap_or_default(),
        message: e.to_string(),
    })?;
    if case.name.trim().is_empty() {
        case.name = format!("case {}", index + 1);
    }
    Ok(case)
}

fn case_error(index: usize, case: &Case, message: &str) -> SuiteError {
    SuiteError::Case {
        index: index + 1,
        name: case.name.clone(),
        message: message.to_owned(),
    }
}

fn resolve_case(case: &mut Case, vs: &portcullis_config::VirtualServer) {
    let (name, is_tool) = match (&case.tool, &case.prompt, &case.resource) {
        (Some(t), None, None) => (t.clone(), true),
        (None, Some(p), None) => (p.clone(), false),
        (None, None, Some(uri)) => {
            if case.server.is_none() {
                // Namespaced URIs are `<prefix>+<uri>`; an unprefixed member
                // serves the rest.
                let by_prefix = vs.upstreams.iter().find(|m| {
                    let p = m.effective_prefix();
                    !p.is_empty() && uri.starts_with(&format!("{p}+"))
                });
                let member = by_prefix.or_else(|| only_unprefixed(vs));
                case.server = member.map(|m| m.upstream.clone());
            }
            return;
        }
        _ => return,
    };
    // A rename names the tool exactly; otherwise the longest matching prefix.
    let mut found: Option<(&portcullis_config::Member, String)> = None;
    if is_tool {
        for m in &vs.upstreams {
            if let Some((up, _)) = m
                .tools
                .iter()
                .find(|(_, o)| o.rename.as_deref() == Some(&name))
            {
                found = Some((m, up.clone()));
            }
        }
    }
    if found.is_none() {
        let mut best = 0;
        for m in &vs.upstreams {
            let p = m.effective_prefix();
            if p.is_empty() {
                continue;
            }
            let head = format!("{p}{}", vs.separator);
            if let Some(rest) = name.strip_prefix(&head) {
                if head.len() > best && case.server.as_ref().is_none_or(|s| *s == m.upstream) {
                    best = head.len();
                    found = Some((m, rest.to_owned()));
                }
            }
        }
    }
    if found.is_none() {
        let member = match &case.server {
            Some(s) => vs
                .upstreams
                .iter()
                .find(|m| &m.upstream == s && m.effective_prefix().is_empty()),
            None => only_unprefixed(vs),
        };
        found = member.map(|m| (m, name.clone()));
    }
    let Some((member, upstream_name)) = found else {
        return;
    };
    if case.server.is_none() {
        case.server = Some(member.upstream.clone());
    }
    if case.upstream_name.is_none() {
        case.upstream_name = Some(upstream_name.clone());
    }
    if !is_tool {
        return;
    }
    if let Some(o) = member.tools.get(&upstream_name) {
        if case.risk_tier.is_none() {
            case.risk_tier = o.risk_tier;
        }
        if !o.fixed_arguments.is_empty() {
            let args = case.args.get_or_insert_with(Map::new);
            for (k, v) in &o.fixed_arguments {
                args.insert(k.clone(), v.clone());
            }
        }
    }
}

fn only_unprefixed(vs: &portcullis_config::VirtualServer) -> Option<&portcullis_config::Member> {
    let mut it = vs
        .upstreams
        .iter()
        .filter(|m| m.effective_prefix().is_empty());
    match (it.next(), it.next()) {
        (Some(m), None) => Some(m),
        _ => None,
    }
}

/// What a case asks, checked: the facts the engine needs.
struct Checked {
    now: Option<i64>,
    server: String,
    upstream_name: String,
    flags: ToolFlags,
}

fn check(c: &Case) -> Result<Checked, String> {
    let kinds = [c.tool.is_some(), c.prompt.is_some(), c.resource.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("name exactly one of `tool`, `prompt` or `resource`".into());
    }
    if c.principal.user.trim().is_empty() {
        return Err("principal.user must not be empty".into());
    }
    if c.virtual_server.trim().is_empty() {
        return Err("virtual_server must not be empty".into());
    }
    if c.tool.is_none() && (c.annotations.is_some() || c.risk_tier.is_some()) {
        return Err("`annotations` and `risk_tier` describe tools only".into());
    }
    if c.resource.is_some() && c.args.is_some() {
        return Err("resources take no `args`".into());
    }
    if let Some(t) = c.risk_tier {
        if !(1..=4).contains(&t) {
            return Err(format!(
                "risk_tier {t}: tiers are 1 (harmless) to 4 (critical)"
            ));
        }
    }
    if c.expect == Some(Expect::Deny) && c.checkpoint.is_some_and(|k| k != ExpectedCheckpoint::None)
    {
        return Err("a denied call has no checkpoint".into());
    }
    let now = match &c.time {
        Some(t) => Some(parse_rfc3339(t).ok_or_else(|| {
            format!("time {t:?} is not an RFC 3339 timestamp (2026-11-24T10:00:00Z)")
        })?),
        None => None,
    };
    let server = c.server.clone().ok_or_else(|| {
        "`server` is required: the upstream the tool, prompt or resource comes from".to_owned()
    })?;
    let label = c
        .tool
        .as_ref()
        .or(c.prompt.as_ref())
        .or(c.resource.as_ref());
    let upstream_name = c
        .upstream_name
        .clone()
        .or_else(|| label.cloned())
        .unwrap_or_default();
    let annotations = c.annotations.clone().map(Value::Object);
    Ok(Checked {
        now,
        server,
        upstream_name,
        flags: ToolFlags::from_annotations(annotations.as_ref()),
    })
}

fn evaluate(
    engine: &PolicyEngine,
    compiled: &Compiled,
    c: &Case,
    k: &Checked,
    now: i64,
    index: usize,
) -> CaseResult {
    let p = &c.principal;
    let subject = Subject {
        user_id: p.id.as_deref().unwrap_or(&p.user),
        username: &p.user,
        email: p.email.as_deref(),
        service_owner: p.owner.as_deref(),
        is_service: p.service,
        is_admin: p.admin,
        groups: &p.groups,
        client_id: p.client.as_deref(),
        source_ip: c.source_ip,
    };
    let vs = c.virtual_server.as_str();
    let target = if let Some(name) = &c.tool {
        Target::Tool {
            virtual_server: vs,
            server: &k.server,
            name,
            upstream_name: &k.upstream_name,
            flags: k.flags,
            risk_tier: c.risk_tier,
        }
    } else if let Some(name) = &c.prompt {
        Target::Prompt {
            virtual_server: vs,
            server: &k.server,
            name,
            upstream_name: &k.upstream_name,
        }
    } else {
        Target::Resource {
            virtual_server: vs,
            server: &k.server,
            uri: c.resource.as_deref().unwrap_or_default(),
        }
    };
    let ask = Ask {
        subject,
        target,
        args: c.args.as_ref(),
        now: k.now.unwrap_or(now),
    };
    let decision = engine.decide_with(compiled, &ask);
    // Lists are decided without arguments, as the gateway filters them.
    let listed = engine.visible(compiled, &Ask { args: None, ..ask });
    let mut failures = Vec::new();
    let word = |allowed: bool| if allowed { "allow" } else { "deny" };
    if let Some(e) = c.expect {
        let want = e == Expect::Allow;
        if want != decision.allowed {
            failures.push(format!(
                "expected {}, got {}",
                word(want),
                word(decision.allowed)
            ));
        }
    }
    if let Some(want) = &c.policies {
        let mut want = want.clone();
        want.sort();
        let mut got = decision.policies.clone();
        got.sort();
        if want != got {
            failures.push(format!(
                "expected policies [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    if let Some(want) = c.checkpoint {
        let got = ExpectedCheckpoint::of(decision.checkpoint);
        if want != got {
            failures.push(format!("expected checkpoint {want:?}, got {got:?}").to_lowercase());
        }
    }
    if let Some(want) = c.listed {
        if want != listed {
            failures.push(format!(
                "expected it {} in lists",
                if want { "shown" } else { "hidden" }
            ));
        }
    }
    let mut reason = decision.reason();
    if !failures.is_empty() {
        reason = format!("{}: {reason}", failures.join("; "));
    }
    CaseResult {
        name: if c.name.is_empty() {
            format!("case {}", index + 1)
        } else {
            c.name.clone()
        },
        passed: failures.is_empty(),
        allowed: decision.allowed,
        policies: decision.policies,
        checkpoint: decision.checkpoint,
        errors: decision.errors,
        listed,
        reason,
        failures,
    }
}

/// Unix seconds of an RFC 3339 timestamp (`2026-11-24T10:00:00Z`, fractions
/// and `+hh:mm` offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > days_in[(month - 1) as usize] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || !matches!(ob[0], b'+' | b'-') || ob[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests;
