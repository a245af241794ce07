use super::*;

const BASE: &str = r#"
listen: 127.0.0.1:9000
upstreams:
  - name: everything
    transport: stdio
    command: npx
    args: [mcp-server-everything]
  - name: fs_http
    transport: streamable_http
    url: http://127.0.0.1:3001/mcp
    catalog: {owner: alice, team: platform, risk_tier: 2, data_domains: [files]}
virtual_servers:
  - name: demo
    upstreams:
      - upstream: everything
        prefix: ev
        tools:
          echo: {rename: say}
          printEnv: {hide: true}
      - upstream: fs_http
"#;

#[test]
fn parses_a_full_config() {
    let c = Config::from_yaml(BASE, "t.yaml").unwrap();
    assert_eq!(c.listen, "127.0.0.1:9000");
    assert_eq!(c.limits.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(c.upstreams[1].catalog.risk_tier, Some(2));
    assert_eq!(
        c.virtual_servers[0].upstreams[1].effective_prefix(),
        "fs-http"
    );
}

#[test]
fn unknown_key_names_line_and_key() {
    let bad = BASE.replace("    args: [mcp-server-everything]", "    argz: [x]");
    let e = Config::from_yaml(&bad, "t.yaml").unwrap_err().to_string();
    assert!(e.contains("t.yaml:7:") && e.contains("argz"), "{e}");
}

#[test]
fn load_time_collisions_are_errors() {
    let same_prefix = BASE.replace(
        "      - upstream: fs_http",
        "      - upstream: fs_http\n        prefix: ev",
    );
    let e = Config::from_yaml(&same_prefix, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("both use prefix"), "{e}");

    let rename_clash = BASE.replace(
        "          printEnv: {hide: true}",
        "          add: {rename: say}",
    );
    let e = Config::from_yaml(&rename_clash, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("both exposed as \"say\""), "{e}");

    let into_other_space = BASE.replace("{rename: say}", "{rename: fs-http_read}");
    let e = Config::from_yaml(&into_other_space, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("name space of upstream"), "{e}");
}

#[test]
fn references_and_fields_are_checked() {
    for (from, to, want) in [
        ("upstream: fs_http", "upstream: nope", "unknown upstream"),
        (
            "transport: streamable_http",
            "transport: stdio",
            "`command` is required",
        ),
        ("risk_tier: 2", "risk_tier: 7", "risk_tier must be 1 to 4"),
        ("prefix: ev", "prefix: \"e:v\"", "prefix"),
        ("{rename: say}", "{rename: \"a:b\"}", "must match"),
        (
            "transport: stdio",
            "transport: carrier_pigeon",
            "unknown variant",
        ),
    ] {
        let e = Config::from_yaml(&BASE.replacen(from, to, 1), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{from} -> {to}: {e}");
    }
}

#[test]
fn env_references_expand_and_missing_ones_fail() {
    std::env::set_var("PC_TEST_TOKEN", "s3cret");
    let with_env = BASE.replace(
        "    url: http://127.0.0.1:3001/mcp",
        "    url: http://127.0.0.1:3001/mcp\n    headers: {Authorization: \"Bearer ${PC_TEST_TOKEN}\"}",
    );
    let c = Config::from_yaml(&with_env, "t").unwrap();
    assert_eq!(c.upstreams[1].headers["Authorization"], "Bearer s3cret");
    let missing = with_env.replace("PC_TEST_TOKEN", "PC_TEST_NOT_SET_ANYWHERE");
    assert!(Config::from_yaml(&missing, "t").is_err());
}

#[test]
fn audit_sinks_parse_by_type_and_refuse_stray_keys() {
    let ok = Config::from_yaml(
        "audit:\n  sinks:\n    - {name: s, type: splunk_hec, endpoint: 'http://127.0.0.1:8088/services/collector/event', token: t}\n    - {name: f, type: file, path: /tmp/a.jsonl, batch: 10}\n    - {name: y, type: syslog, address: 'udp://127.0.0.1:514'}\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(ok.audit.sinks.len(), 3);
    assert!(matches!(ok.audit.sinks[0].kind, SinkKind::SplunkHec { .. }));
    assert_eq!(ok.audit.sinks[1].batch, 10);
    for (yaml, needle) in [
        ("{name: f, type: file}", "needs `path`"),
        (
            "{name: f, type: file, path: /x, token: t}",
            "`token` does not apply",
        ),
        ("{name: f, type: kafka}", "unknown type"),
        (
            "{name: f, type: file, path: /x, colour: red}",
            "unknown field",
        ),
    ] {
        let err = Config::from_yaml(&format!("audit:\n  sinks:\n    - {yaml}\n"), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{yaml}: {err}");
    }
}
