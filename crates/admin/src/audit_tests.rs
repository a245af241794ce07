//! Security events of administration, in-process: each admin action leaves
//! exactly one record of the right type, with the administrator as actor and
//! no secret anywhere in the log; the audit search filters, pages, refuses
//! bad parameters and is itself recorded.

use super::tests::{env, Env};
use super::*;
use http::StatusCode;
use portcullis_audit::{Actor, AuditEvent, Auditor, Outcome, StoredRecord};
use portcullis_policy::PendingApproval;
use portcullis_store::Store;
use serde_json::{json, Value};

async fn audited(e: &Env) -> Auditor {
    let config = portcullis_config::Config::from_yaml("{}", "test.yaml").expect("config");
    let auditor = Auditor::open(&config.audit, &e.dir)
        .await
        .expect("audit log");
    e.identity.set_auditor(auditor.clone());
    auditor
}

async fn records(a: &Auditor) -> Vec<StoredRecord> {
    a.db()
        .expect("enabled")
        .read_after(0, 10_000)
        .await
        .expect("records")
}

/// The bodies of every record of `event_type`.
async fn of_type(a: &Auditor, event_type: &str) -> Vec<Value> {
    records(a)
        .await
        .iter()
        .filter(|r| r.event_type == event_type)
        .map(|r| serde_json::from_str(&r.body).expect("json body"))
        .collect()
}

/// No stored body contains any of `secrets`.
async fn no_secrets(a: &Auditor, secrets: &[&str]) {
    for r in records(a).await {
        for s in secrets {
            assert!(
                !r.body.contains(s),
                "record {} ({}) holds a secret: {}",
                r.seq,
                r.event_type,
                r.body
            );
        }
    }
}

/// The id of the token `username` holds (the test users hold one each).
async fn token_id_of(e: &Env, username: &str) -> String {
    let store = e.identity.store();
    let user = store
        .user_by_username(username)
        .await
        .expect("store")
        .expect("user");
    store
        .api_tokens(Some(&user.id))
        .await
        .expect("tokens")
        .first()
        .map(|t| t.id.clone())
        .expect("a token")
}

#[tokio::test]
async fn token_and_account_changes_are_recorded_once_without_secrets() {
    let e = env().await;
    let auditor = audited(&e).await;
    let admin = e.token("root", true, &["admin"]).await;
    let admin_token_id = token_id_of(&e, "root").await;
    let password = "a long and secret password 17";
    let (s, _, bob) = e
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "bob", "password": password})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{bob}");
    let bob_id = bob["id"].as_str().expect("id").to_owned();
    let changes = of_type(&auditor, "account.changed").await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["detail"]["operation"], json!("user.created"));
    assert_eq!(changes[0]["detail"]["user"]["username"], json!("bob"));

    let (s, _, created) = e
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"user_id": bob_id, "name": "laptop", "scopes": ["vs:demo"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().expect("token").to_owned();
    let token_id = created["id"].as_str().expect("id").to_owned();
    let issued = of_type(&auditor, "token.issued").await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    let actor = &issued[0]["actor"];
    assert_eq!(
        (
            actor["kind"].as_str(),
            actor["username"].as_str(),
            actor["auth_method"].as_str(),
            actor["token_id"].as_str()
        ),
        (
            Some("user"),
            Some("root"),
            Some("api_token"),
            Some(admin_token_id.as_str())
        )
    );
    let d = &issued[0]["detail"];
    assert_eq!(d["token_id"], json!(token_id));
    assert_eq!(d["user"]["username"], json!("bob"));
    assert_eq!(d["scopes"], json!(["vs:demo"]));
    assert_eq!(d["via"], json!("api"));

    let path = format!("/api/v1/tokens/{token_id}");
    assert_eq!(
        e.call("DELETE", &path, Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        e.call("DELETE", &path, Some(&admin), None).await.0,
        StatusCode::NO_CONTENT,
        "revoking twice is fine"
    );
    let revoked = of_type(&auditor, "token.revoked").await;
    assert_eq!(revoked.len(), 1, "one revocation happened: {revoked:?}");
    assert_eq!(revoked[0]["detail"]["token_id"], json!(token_id));
    assert_eq!(revoked[0]["detail"]["reason"], json!("revoked_by_admin"));
    assert_eq!(revoked[0]["actor"]["username"], json!("root"));

    let (s, _, _) = e
        .call(
            "PATCH",
            &format!("/api/v1/users/{bob_id}"),
            Some(&admin),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, k) = e
        .call("POST", "/api/v1/keys/rotate", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let changes = of_type(&auditor, "account.changed").await;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1]["detail"]["operation"], json!("user.disabled"));
    assert_eq!(changes[1]["detail"]["changed"], json!({"active": false}));
    let rotated = of_type(&auditor, "keys.rotated").await;
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["detail"]["kid"], k["kid"]);

    no_secrets(&auditor, &[&secret, &admin, password]).await;
    auditor.close().await;
}

#[tokio::test]
async fn scim_provisioning_is_recorded() {
    let e = env().await;
    let auditor = audited(&e).await;
    let scim = e.token("okta", false, &["scim"]).await;
    let (s, _, u) = e
        .call(
            "POST",
            "/scim/v2/Users",
            Some(&scim),
            Some(json!({"userName": "dana@example.com", "externalId": "00u9"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let id = u["id"].as_str().expect("id");
    let (s, _, _) = e
        .call(
            "PATCH",
            &format!("/scim/v2/Users/{id}"),
            Some(&scim),
            Some(json!({"Operations": [{"op": "replace", "value": {"active": false}}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let changes = of_type(&auditor, "account.changed").await;
    let ops: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["detail"]["operation"].as_str().unwrap_or(""),
                c["detail"]["via"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [("user.provisioned", "scim"), ("user.deprovisioned", "scim")]
    );
    assert_eq!(changes[1]["actor"]["username"], json!("okta"));
    assert_eq!(
        changes[1]["detail"]["user"]["username"],
        json!("dana@example.com")
    );
    no_secrets(&auditor, &[&scim]).await;
    auditor.close().await;
}

const POLICY_CONFIG: &str = r#"
upstreams:
  - name: github
    transport: stdio
    command: "true"
virtual_servers:
  - name: dev
    upstreams:
      - upstream: github
policy:
  dir: policies
  reload_interval_ms: 100
"#;

const BASE: &str = "@id(\"all\")\npermit(principal, action, resource);\n";

async fn policy_env() -> (Env, Arc<PolicyRuntime>) {
    let dir =
        std::env::temp_dir().join(format!("pc-admin-{}", portcullis_store::identity::new_id()));
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(policies.join("base.cedar"), BASE).expect("policy file");
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, POLICY_CONFIG).expect("config file");
    let config = portcullis_config::Config::load(&path).expect("config");
    let store = Store::open(&dir).await.expect("store");
    let identity = Identity::open(store.clone(), &config)
        .await
        .expect("identity");
    let rt = PolicyRuntime::open(&config, store).await.expect("policies");
    let env = Env {
        app: router(identity.clone(), Some(rt.clone())),
        identity,
        dir,
    };
    (env, rt)
}

#[tokio::test]
async fn policy_changes_and_approvals_are_recorded() {
    let (e, rt) = policy_env().await;
    let auditor = audited(&e).await;
    let admin = e.token("root", true, &["admin"]).await;
    let text = "// secret_marker_xyz\n@id(\"extra\")\npermit(principal, action, resource);\n";
    let req = http::Request::builder()
        .method("PUT")
        .uri("/api/v1/policies/extra")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "text/plain")
        .body(axum::body::Body::from(text))
        .expect("request");
    let resp = tower::ServiceExt::oneshot(e.app.clone(), req)
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let changed = of_type(&auditor, "policy.changed").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    let d = &changed[0]["detail"];
    assert_eq!(
        (
            d["operation"].as_str(),
            d["name"].as_str(),
            d["applied"].as_bool()
        ),
        (Some("put"), Some("extra"), Some(true))
    );
    assert_eq!(d["sha256"], json!(crate::audit_log::sha256(text)));
    assert_eq!(
        d["version"].as_u64(),
        Some(rt.engine.current().version),
        "the version in force after the change"
    );
    no_secrets(&auditor, &["secret_marker_xyz"]).await;

    let (id, _waiting) = rt.approvals.open(PendingApproval {
        id: String::new(),
        user: "alice".into(),
        virtual_server: "dev".into(),
        tool: "github_deploy".into(),
        arguments: json!({"password": "hunter2-do-not-log"}),
        policies: vec!["deploy-needs-approval".into()],
        requested_at: 1,
    });
    let (s, _, _) = e
        .call(
            "POST",
            &format!("/api/v1/approvals/{id}"),
            Some(&admin),
            Some(json!({"approve": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let decided = of_type(&auditor, "checkpoint.decided").await;
    assert_eq!(decided.len(), 1);
    let d = &decided[0]["detail"];
    assert_eq!(
        (
            d["approval_id"].as_str(),
            d["decision"].as_str(),
            d["approver"].as_str(),
            d["requesting_user"].as_str(),
            d["tool"].as_str()
        ),
        (
            Some(id.as_str()),
            Some("refused"),
            Some("root"),
            Some("alice"),
            Some("github_deploy")
        )
    );
    assert_eq!(decided[0]["target"]["tool"], json!("github_deploy"));
    no_secrets(&auditor, &["hunter2-do-not-log", &admin]).await;

    // A reload the watcher finds is recorded by the hook the gateway installs.
    record_policy_reloads(&rt, &auditor);
    rt.spawn_watcher();
    let bad = e.dir.join("policies").join("broken.cedar");
    std::fs::write(&bad, "permit(principal, action, resource) when {").expect("write");
    let mut rejected = Vec::new();
    for _ in 0..200 {
        rejected = of_type(&auditor, "policy.rejected").await;
        if !rejected.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(rejected.len(), 1, "the refused reload is recorded once");
    let d = &rejected[0]["detail"];
    assert_eq!(d["errors"][0]["origin"], json!("broken.cedar"));
    assert_eq!(rejected[0]["actor"]["kind"], json!("system"));
    auditor.close().await;
}

async fn request(a: &Auditor, user: &str, tool: &str, outcome: &str) {
    let mut ev = AuditEvent::new("mcp.request");
    ev.actor = Some(Actor {
        kind: "user".into(),
        username: Some(user.into()),
        ..Default::default()
    });
    ev.target = Some(portcullis_audit::Target {
        virtual_server: Some("demo".into()),
        tool: Some(tool.into()),
        ..Default::default()
    });
    ev.outcome = Some(Outcome {
        status: outcome.into(),
        ..Default::default()
    });
    a.record(ev).await.expect("recorded");
}

#[tokio::test]
async fn search_filters_pages_refuses_bad_queries_and_is_recorded() {
    let e = env().await;
    let admin = e.token("root", true, &["admin"]).await;
    let (s, _, b) = e.call("GET", "/api/v1/audit", Some(&admin), None).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("audit_disabled"))
    );
    let auditor = audited(&e).await;
    request(&auditor, "alice", "gh_issue", "denied").await;
    request(&auditor, "alice", "gh_issue", "success").await;
    request(&auditor, "bob", "gh_issue", "denied").await;
    request(&auditor, "alice", "gh_push", "denied").await;

    let (s, _, b) = e
        .call(
            "GET",
            "/api/v1/audit?user=alice&outcome=denied&tool=gh_issue&server=demo&since=1h",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let got = b["records"].as_array().expect("records");
    assert_eq!(got.len(), 1, "{b}");
    assert_eq!(got[0]["actor"]["username"], json!("alice"));
    assert_eq!(got[0]["outcome"]["status"], json!("denied"));
    assert!(got[0]["integrity"]["hash"].is_string());
    assert_eq!(b["next_before"], Value::Null);

    let reads = of_type(&auditor, "audit.read").await;
    assert_eq!(reads.len(), 1, "the search is recorded once");
    assert_eq!(reads[0]["actor"]["username"], json!("root"));
    assert_eq!(reads[0]["detail"]["results"], json!(1));
    assert_eq!(reads[0]["detail"]["query"]["outcome"], json!("denied"));

    // Paging, newest first.
    let (_, _, p1) = e
        .call(
            "GET",
            "/api/v1/audit?type=mcp.request&limit=3",
            Some(&admin),
            None,
        )
        .await;
    let page1 = p1["records"].as_array().expect("records");
    assert_eq!(page1.len(), 3);
    assert_eq!(page1[0]["target"]["tool"], json!("gh_push"));
    let next = p1["next_before"].as_i64().expect("another page");
    let (_, _, p2) = e
        .call(
            "GET",
            &format!("/api/v1/audit?type=mcp.request&limit=3&before={next}"),
            Some(&admin),
            None,
        )
        .await;
    let page2 = p2["records"].as_array().expect("records");
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0]["actor"]["username"], json!("alice"));
    assert_eq!(page2[0]["outcome"]["status"], json!("denied"));

    for (bad, says) in [
        ("outcome=maybe", "outcome"),
        ("since=last-tuesday", "since"),
        ("limit=5000", "limit"),
        ("before=x", "before"),
        ("colour=red", "colour"),
    ] {
        let (s, _, b) = e
            .call("GET", &format!("/api/v1/audit?{bad}"), Some(&admin), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(
            b["error_description"]
                .as_str()
                .is_some_and(|d| d.contains(says)),
            "{bad}: {b}"
        );
    }
    assert_eq!(
        of_type(&auditor, "audit.read").await.len(),
        3,
        "refused searches read nothing and are not recorded as reads"
    );
    let plain = e.token("pat", false, &["admin"]).await;
    assert_eq!(
        e.call("GET", "/api/v1/audit", Some(&plain), None).await.0,
        StatusCode::FORBIDDEN
    );

    let (s, _, st) = e
        .call("GET", "/api/v1/audit/status", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (st["enabled"].as_bool(), st["healthy"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(st["public_key"].as_str().map(str::len), Some(64));
    let head = auditor.db().expect("db").max_seq().await.expect("max");
    assert_eq!(st["head_seq"], json!(head));
    assert!(st["batches"]["records"].as_u64() > Some(0));
    auditor.close().await;
}
