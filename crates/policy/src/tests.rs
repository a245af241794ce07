use super::*;
use portcullis_config::Config;
use serde_json::{json, Map, Value};

const CONFIG: &str = r#"
upstreams:
  - name: github
    transport: streamable_http
    url: "http://127.0.0.1:1/mcp"
    catalog: {risk_tier: 3, owner: platform, team: dev-tools, data_domains: [source]}
  - name: fs
    transport: streamable_http
    url: "http://127.0.0.1:2/mcp"
virtual_servers:
  - name: dev
    upstreams: [{upstream: github}, {upstream: fs}]
policy:
  patterns: {sha: "^[0-9a-f]{40}$"}
  arguments: {count: long}
  checkpoint: {risk_tier_at_least: 4}
"#;

const POLICIES: &str = r#"
@id("eng-issues")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"dev/github_create_issue")
when { context.args.repo like "acme/*" };

@id("eng-read")
permit(principal in Group::"eng", action == Action::"call_tool", resource in Server::"fs")
when { resource.read_only };

@id("ops-all")
permit(principal in Group::"ops", action, resource in VirtualServer::"dev");

@id("no-contractor-destruction")
forbid(principal in Group::"contractors", action == Action::"call_tool", resource)
when { resource.destructive };

@id("deploy-needs-approval")
@checkpoint("approver")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"dev/github_deploy");

@id("count-limit")
forbid(principal, action == Action::"call_tool", resource == Tool::"dev/fs_bulk")
when { context.args.count > 100 };

@id("data-only")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"dev/fs_read_file")
when { context.derived.path.path like "/srv/data/*" };
"#;

fn engine(policies: &str) -> PolicyEngine {
    let config = Config::from_yaml(CONFIG, "t").unwrap();
    let e = PolicyEngine::new(&config).unwrap();
    e.load(&[PolicySource {
        origin: "t.cedar".into(),
        text: policies.into(),
    }])
    .unwrap();
    e
}

fn groups(g: &[&str]) -> Vec<String> {
    g.iter().map(|s| s.to_string()).collect()
}

fn subject<'a>(groups: &'a [String]) -> Subject<'a> {
    Subject {
        user_id: "u1",
        username: "alice",
        email: Some("alice@example.com"),
        service_owner: None,
        is_service: false,
        is_admin: false,
        groups,
        client_id: Some("cursor"),
        source_ip: None,
    }
}

fn tool<'a>(server: &'a str, name: &'a str, flags: ToolFlags) -> Target<'a> {
    Target::Tool {
        virtual_server: "dev",
        server,
        name,
        upstream_name: name,
        flags,
        risk_tier: None,
    }
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

const RO: ToolFlags = ToolFlags {
    read_only: true,
    destructive: false,
    idempotent: true,
    open_world: false,
};
const WRITE: ToolFlags = ToolFlags {
    read_only: false,
    destructive: false,
    idempotent: false,
    open_world: true,
};
const DESTROY: ToolFlags = ToolFlags {
    read_only: false,
    destructive: true,
    idempotent: false,
    open_world: true,
};

fn decide(e: &PolicyEngine, g: &[&str], target: Target, a: Value) -> Decision {
    let gs = groups(g);
    let a = args(a);
    e.decide(&Ask {
        subject: subject(&gs),
        target,
        args: Some(&a),
        now: 1_795_525_500,
    })
}

#[test]
fn group_permit_and_argument_pattern() {
    let e = engine(POLICIES);
    let t = tool("github", "github_create_issue", WRITE);
    let ok = decide(&e, &["eng"], t, json!({"repo": "acme/api"}));
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.policies, vec!["eng-issues"]);
    let outside = decide(&e, &["eng"], t, json!({"repo": "evil/api"}));
    assert!(!outside.allowed);
    assert!(outside.policies.is_empty(), "default deny names no policy");
    let missing = decide(&e, &["eng"], t, json!({}));
    assert!(
        !missing.allowed,
        "a missing argument does not satisfy the pattern"
    );
    let other = decide(&e, &["sales"], t, json!({"repo": "acme/api"}));
    assert!(!other.allowed);
}

#[test]
fn forbid_overrides_permit() {
    let e = engine(POLICIES);
    let t = tool("github", "github_delete_repo", DESTROY);
    assert!(decide(&e, &["ops"], t, json!({})).allowed);
    let d = decide(&e, &["ops", "contractors"], t, json!({}));
    assert!(!d.allowed);
    assert_eq!(d.policies, vec!["no-contractor-destruction"]);
}

#[test]
fn erroring_forbid_fails_closed() {
    let e = engine(POLICIES);
    let t = tool("fs", "fs_bulk", WRITE);
    assert!(decide(&e, &["ops"], t, json!({"count": 5})).allowed);
    assert!(!decide(&e, &["ops"], t, json!({"count": 500})).allowed);
    // A string where a number is expected: the forbid errors, so the call is denied.
    let d = decide(&e, &["ops"], t, json!({"count": "lots"}));
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.policies, vec!["count-limit"]);
    assert!(!d.errors.is_empty());
}

#[test]
fn derived_path_cannot_be_escaped() {
    let e = engine(POLICIES);
    let t = tool("fs", "fs_read_file", WRITE);
    assert!(decide(&e, &["eng"], t, json!({"path": "/srv/data/a.txt"})).allowed);
    assert!(
        !decide(
            &e,
            &["eng"],
            t,
            json!({"path": "/srv/data/../../etc/passwd"})
        )
        .allowed
    );
    assert!(decide(&e, &["eng"], t, json!({"path": "file:///srv/data/x"})).allowed);
}

#[test]
fn checkpoints_from_annotations_and_rules() {
    let e = engine(POLICIES);
    let d = decide(
        &e,
        &["eng"],
        tool("github", "github_deploy", WRITE),
        json!({}),
    );
    assert!(d.allowed);
    assert_eq!(d.checkpoint, Some(Checkpoint::Approver));
    let plain = decide(&e, &["ops"], tool("github", "github_list", RO), json!({}));
    assert_eq!(plain.checkpoint, None);
    let critical = Target::Tool {
        virtual_server: "dev",
        server: "github",
        name: "github_rotate",
        upstream_name: "rotate",
        flags: WRITE,
        risk_tier: Some(4),
    };
    assert_eq!(
        decide(&e, &["ops"], critical, json!({})).checkpoint,
        Some(Checkpoint::User),
        "risk tier 4 meets checkpoint.risk_tier_at_least"
    );
}

#[test]
fn lists_show_what_some_arguments_allow() {
    let e = engine(POLICIES);
    let c = e.current();
    let gs = groups(&["eng"]);
    let ask = |target| Ask {
        subject: subject(&gs),
        target,
        args: None,
        now: 0,
    };
    assert!(e.visible(&c, &ask(tool("github", "github_create_issue", WRITE))));
    assert!(e.visible(&c, &ask(tool("fs", "fs_list", RO))));
    assert!(!e.visible(&c, &ask(tool("fs", "fs_write", WRITE))));
    assert!(!e.visible(&c, &ask(tool("github", "github_merge", WRITE))));
    let cg = groups(&["ops", "contractors"]);
    let contractor = Ask {
        subject: subject(&cg),
        target: tool("github", "github_delete_repo", DESTROY),
        args: None,
        now: 0,
    };
    assert!(
        !e.visible(&c, &contractor),
        "an unconditional forbid hides it"
    );
}

#[test]
fn invalid_policies_name_the_line_and_keep_the_old_set() {
    let e = engine(POLICIES);
    let before = e.current().version;
    let bad = "permit(principal, action, resource);\n\npermit(principal, action == Action::\"call_tool\", resource)\nwhen { resource.risk_teir > 2 };\n";
    let err = e
        .load(&[PolicySource {
            origin: "bad.cedar".into(),
            text: bad.into(),
        }])
        .unwrap_err();
    let PolicyError::Invalid(errors) = err else {
        panic!("expected validation errors")
    };
    assert_eq!(errors[0].origin, "bad.cedar");
    assert_eq!(errors[0].line, 4, "{errors:?}");
    assert!(errors[0].message.contains("risk_teir"), "{errors:?}");
    assert_eq!(e.current().version, before);
    let t = tool("github", "github_create_issue", WRITE);
    assert!(decide(&e, &["eng"], t, json!({"repo": "acme/x"})).allowed);
    let unknown_action = e.load(&[PolicySource {
        origin: "a.cedar".into(),
        text: "permit(principal, action == Action::\"call_tools\", resource);".into(),
    }]);
    assert!(unknown_action.is_err(), "typos in actions are caught");
}

#[test]
fn a_slice_only_holds_what_applies() {
    let mut text = String::from(POLICIES);
    for i in 0..500 {
        text.push_str(&format!(
            "permit(principal in Group::\"g{i}\", action == Action::\"call_tool\", resource == Tool::\"dev/t{i}\");\n"
        ));
    }
    let e = engine(&text);
    let d = decide(&e, &["g7"], tool("fs", "t7", WRITE), json!({}));
    assert!(d.allowed);
    assert!(!decide(&e, &["g7"], tool("fs", "t8", WRITE), json!({})).allowed);
}

#[test]
fn list_action_needs_no_permit_but_can_be_forbidden() {
    let gs = groups(&["eng"]);
    let ask = Ask {
        subject: subject(&gs),
        target: Target::List {
            virtual_server: "dev",
        },
        args: None,
        now: 0,
    };
    assert!(engine(POLICIES).decide(&ask).allowed);
    let e = engine(&format!(
        "{POLICIES}\n@id(\"no-list\") forbid(principal in Group::\"eng\", action == Action::\"list\", resource);"
    ));
    assert!(!e.decide(&ask).allowed);
}
