//! Suites against a small policy set: pass, fail, malformed cases, inference
//! from the configuration.

use super::*;
use crate::source::PolicySource;

const CONFIG: &str = r#"
upstreams:
  - name: github
    transport: streamable_http
    url: "http://127.0.0.1:1/mcp"
    catalog: {risk_tier: 3}
  - name: files
    transport: streamable_http
    url: "http://127.0.0.1:2/mcp"
virtual_servers:
  - name: dev
    upstreams:
      - upstream: github
        prefix: gh
        tools:
          create_issue: {fixed_arguments: {owner: acme}}
          delete_repo: {rename: nuke, risk_tier: 4}
      - upstream: files
        prefix: ""
"#;

const POLICIES: &str = r#"
@id("eng-issues")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"dev/gh_create_issue")
when { context.args.owner == "acme" && context.args.repo like "api*" };

@id("office-hours")
permit(principal in Group::"eng", action == Action::"call_tool", resource in Server::"files")
when { context.time.hour >= 8 && context.time.hour < 18 };

@id("critical-needs-approval")
@checkpoint("approver")
permit(principal in Group::"ops", action == Action::"call_tool", resource)
when { resource.risk_tier >= 4 };

@id("no-destruction-for-contractors")
forbid(principal in Group::"contractors", action, resource is Tool)
when { resource.destructive };
"#;

fn engine() -> (PolicyEngine, Config) {
    let config = Config::from_yaml(CONFIG, "t").unwrap();
    let e = PolicyEngine::new(&config).unwrap();
    e.load(&[PolicySource {
        origin: "t.cedar".into(),
        text: POLICIES.into(),
    }])
    .unwrap();
    (e, config)
}

fn run(yaml: &str) -> Result<SuiteReport, SuiteError> {
    let (e, config) = engine();
    let mut suite = Suite::from_yaml(yaml)?;
    suite.resolve(&config)?;
    suite.run(&e, &e.current(), 0)
}

#[test]
fn cases_pass_and_fail_with_reasons() {
    let report = run(r#"
cases:
  - name: issue in an api repo
    principal: {user: alice, groups: [eng]}
    virtual_server: dev
    tool: gh_create_issue
    args: {repo: api-gateway}
    expect: allow
    policies: [eng-issues]
    checkpoint: none
  - name: wrong expectation
    principal: {user: alice, groups: [eng]}
    virtual_server: dev
    tool: gh_create_issue
    args: {repo: web}
    expect: allow
  - name: files out of hours
    principal: {user: alice, groups: [eng]}
    virtual_server: dev
    tool: read_file
    time: "2026-11-24T22:00:00Z"
    expect: deny
    policies: []
  - name: files in office hours
    principal: {user: alice, groups: [eng]}
    virtual_server: dev
    tool: read_file
    time: "2026-11-24T10:00:00+01:00"
    expect: allow
  - name: renamed critical tool waits for an approver
    principal: {user: bob, groups: [ops]}
    virtual_server: dev
    tool: nuke
    expect: allow
    checkpoint: approver
    listed: true
  - name: contractors never destroy
    principal: {user: carl, groups: [ops, contractors]}
    virtual_server: dev
    tool: nuke
    expect: deny
    policies: [no-destruction-for-contractors]
    listed: false
  - name: read-only tools are not destructive
    principal: {user: carl, groups: [ops, contractors]}
    virtual_server: dev
    tool: nuke
    annotations: {readOnlyHint: true}
    expect: allow
"#)
    .unwrap();
    let failed: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, vec!["wrong expectation"], "{report:#?}");
    assert_eq!((report.passed, report.failed, report.ok()), (6, 1, false));
    let wrong = &report.cases[1];
    assert!(
        wrong.reason.starts_with("expected allow, got deny"),
        "{wrong:?}"
    );
    assert_eq!(report.cases[0].policies, vec!["eng-issues"]);
    assert_eq!(report.cases[4].checkpoint, Some(Checkpoint::Approver));
}

#[test]
fn mismatched_policies_and_checkpoints_fail() {
    let report = run(r#"
cases:
  - name: c
    principal: {user: bob, groups: [ops]}
    virtual_server: dev
    tool: nuke
    expect: allow
    policies: [something-else]
    checkpoint: user
"#)
    .unwrap();
    let c = &report.cases[0];
    assert!(!c.passed);
    assert_eq!(c.failures.len(), 2, "{c:?}");
    assert!(c.failures[0].contains("[critical-needs-approval]"), "{c:?}");
    assert!(
        c.failures[1].contains("checkpoint user, got approver"),
        "{c:?}"
    );
}

/// A one-case suite with `extra` lines appended to the case.
fn one(extra: &str) -> Result<SuiteReport, SuiteError> {
    let mut yaml = String::from("cases:\n  - name: x\n");
    for line in extra.lines() {
        yaml.push_str("    ");
        yaml.push_str(line.trim());
        yaml.push('\n');
    }
    run(&yaml)
}

#[test]
fn malformed_cases_name_the_case() {
    let err = one("principal: {user: a}\nvirtual_server: dev\ntool: x\nexpcet: allow").unwrap_err();
    let SuiteError::Case {
        index,
        name,
        message,
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!((index, name.as_str()), (1, "x"));
    assert!(message.contains("expcet"), "{message}");
    let cases = [
        (
            "principal: {user: a, grups: [x]}\nvirtual_server: dev\ntool: x\nexpect: allow",
            "grups",
        ),
        (
            "principal: {user: a}\nvirtual_server: dev\ntool: x",
            "expect",
        ),
        (
            "principal: {user: a}\nvirtual_server: prod\ntool: x\nexpect: deny",
            "no virtual server \"prod\"",
        ),
        (
            "principal: {user: a}\nvirtual_server: dev\ntool: x\nprompt: y\nexpect: deny",
            "exactly one",
        ),
        (
            "principal: {user: a}\nvirtual_server: dev\ntool: x\ntime: yesterday\nexpect: deny",
            "RFC 3339",
        ),
        (
            "principal: {user: a}\nvirtual_server: dev\ntool: x\nexpect: deny\ncheckpoint: user",
            "no checkpoint",
        ),
    ];
    for (extra, wanted) in cases {
        let err = one(extra).unwrap_err().to_string();
        assert!(
            err.contains(wanted) && err.contains("case 1 (\"x\")"),
            "{extra}: {err}"
        );
    }
    let err = run("tests: []\n").unwrap_err();
    assert!(matches!(err, SuiteError::Syntax(_)), "{err:?}");
    let err = run("cases: [\n").unwrap_err();
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn servers_come_from_prefixes_and_fixed_arguments_apply() {
    let (_, config) = engine();
    let mut suite = Suite::from_json(serde_json::json!({
        "principal": {"user": "a"}, "virtual_server": "dev", "tool": "gh_create_issue",
        "args": {"owner": "evil", "repo": "api"}
    }))
    .unwrap();
    suite.resolve(&config).unwrap();
    let c = &suite.cases[0];
    assert_eq!(c.server.as_deref(), Some("github"));
    assert_eq!(c.upstream_name.as_deref(), Some("create_issue"));
    assert_eq!(
        c.args.as_ref().and_then(|a| a.get("owner")),
        Some(&Value::from("acme"))
    );
    assert_eq!(c.name, "case 1");
    let mut unprefixed = Suite::from_json(serde_json::json!({"cases": [
        {"principal": {"user": "a"}, "virtual_server": "dev", "tool": "read_file"},
        {"principal": {"user": "a"}, "virtual_server": "dev", "tool": "nuke"}
    ]}))
    .unwrap();
    unprefixed.resolve(&config).unwrap();
    assert_eq!(unprefixed.cases[0].server.as_deref(), Some("files"));
    assert_eq!(unprefixed.cases[1].risk_tier, Some(4));
    assert!(Suite::from_json(serde_json::json!([1])).is_err());
    assert!(Suite::from_json(serde_json::json!({"cases": [], "x": 1})).is_err());
}

#[test]
fn a_case_without_server_needs_one() {
    let (e, _) = engine();
    let suite = Suite::from_json(serde_json::json!({
        "principal": {"user": "a"}, "virtual_server": "dev", "tool": "x"
    }))
    .unwrap();
    let err = suite.run(&e, &e.current(), 0).unwrap_err();
    assert!(err.to_string().contains("`server` is required"), "{err}");
}

#[test]
fn timestamps() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2024-02-29T23:59:59Z"), Some(1_709_251_199));
    assert_eq!(
        parse_rfc3339("2024-02-29T23:59:59.250Z"),
        Some(1_709_251_199)
    );
    assert_eq!(
        parse_rfc3339("2024-03-01T01:59:59+02:00"),
        Some(1_709_251_199)
    );
    assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
    assert_eq!(parse_rfc3339("2024-02-29"), None);
    assert_eq!(parse_rfc3339("2024-02-29T24:00:00Z"), None);
    assert_eq!(parse_rfc3339("2024-02-29T23:59:59"), None);
}

/// The shipped example policies pass their shipped suite, and the same suite
/// with one expectation flipped fails (what CI relies on).
#[test]
fn the_examples_pass_their_suite() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let config = Config::load(&root.join("policy-config.yaml")).expect("example config");
    let dir = config.policy.dir.clone().expect("policy.dir");
    let engine = PolicyEngine::new(&config).expect("engine");
    engine
        .load(&crate::read_dir(&dir).expect("example policies"))
        .expect("the example policies are valid");
    let text = std::fs::read_to_string(root.join("policy-tests.yaml")).expect("example suite");
    let mut suite = Suite::from_yaml(&text).expect("suite parses");
    assert!(suite.cases.len() >= 12);
    suite.resolve(&config).expect("resolves");
    let report = suite
        .run(&engine, &engine.current(), unix_now())
        .expect("runs");
    let failed: Vec<_> = report.cases.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let allowed = report.cases.iter().filter(|c| c.allowed).count();
    assert!(allowed > 3 && report.cases.len() - allowed > 3);

    let flipped = text.replacen("expect: allow", "expect: deny", 1);
    let mut suite = Suite::from_yaml(&flipped).expect("suite parses");
    suite.resolve(&config).expect("resolves");
    let report = suite.run(&engine, &engine.current(), 0).expect("runs");
    assert_eq!(report.failed, 1);
}

/// Cases without `time` are decided now, as the CLI does.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}
