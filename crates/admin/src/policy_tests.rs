//! The policy, approval and usage routes in-process, against a real store
//! and a real policy runtime (a policy directory plus stored documents).

use super::tests::Env;
use super::*;
use axum::body::Body;
use http::{Request, StatusCode};
use portcullis_policy::PendingApproval;
use portcullis_store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

const CONFIG: &str = r#"
upstreams:
  - name: github
    transport: stdio
    command: "true"
    catalog: {risk_tier: 3}
virtual_servers:
  - name: dev
    upstreams:
      - upstream: github
policy:
  dir: policies
"#;

const BASE: &str = r#"// Engineers may use read-only GitHub tools.
@id("eng-read")
permit(principal in Group::"eng", action == Action::"call_tool", resource in Server::"github")
when { resource.read_only };
"#;

async fn policy_env() -> (Env, Arc<PolicyRuntime>) {
    let dir =
        std::env::temp_dir().join(format!("pc-admin-{}", portcullis_store::identity::new_id()));
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(policies.join("base.cedar"), BASE).expect("policy file");
    let store = Store::open(&dir).await.expect("store");
    let config = config_at(&dir);
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

/// The configuration as a file in `base`, so `policy.dir` resolves against
/// it the way `Config::load` resolves it for a real file.
fn config_at(base: &std::path::Path) -> portcullis_config::Config {
    let path = base.join("portcullis.yaml");
    std::fs::write(&path, CONFIG).expect("config file");
    portcullis_config::Config::load(&path).expect("config")
}

/// A request with a raw body and content type.
async fn raw(
    e: &Env,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Body::from(body.to_owned()))
        .expect("request");
    let resp = e.app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn issue_case() -> Value {
    json!({
        "name": "issue",
        "principal": {"user": "alice", "groups": ["eng"]},
        "virtual_server": "dev",
        "tool": "github_create_issue",
        "server": "github",
        "annotations": {"readOnlyHint": false, "destructiveHint": false},
        "args": {"repo": "acme/api", "title": "x"}
    })
}

/// (allowed, deciding policies) of the issue case under the installed set.
async fn issue_decision(e: &Env, admin: &str) -> (bool, Vec<String>) {
    let (s, _, r) = e
        .call(
            "POST",
            "/api/v1/policies/test",
            Some(admin),
            Some(issue_case()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let case = &r["cases"][0];
    let policies = case["policies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (case["allowed"].as_bool().unwrap_or(false), policies)
}

const ISSUES: &str = r#"@id("eng-issues")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"dev/github_create_issue")
when { context.args.repo like "acme/*" };
"#;

#[tokio::test]
async fn policy_documents_are_validated_stored_and_applied() {
    let (e, rt) = policy_env().await;
    let admin = e.token("root", true, &["admin"]).await;
    let plain = e.token("pat", false, &["admin"]).await;
    assert_eq!(
        e.call("GET", "/api/v1/policies", Some(&plain), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (s, _, set) = e.call("GET", "/api/v1/policies", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{set}");
    let v1 = set["version"].as_u64().expect("version");
    assert_eq!(set["policies"][0]["id"], json!("eng-read"));
    assert_eq!(set["policies"][0]["origin"], json!("base.cedar"));
    assert_eq!(set["policies"][0]["line"], json!(2));
    assert_eq!(set["last_error"], Value::Null);
    assert_eq!(issue_decision(&e, &admin).await, (false, vec![]));

    // An invalid document: located errors, nothing stored, nothing changed.
    let bad = "@id(\"x\")\npermit(principal, action == Action::\"call_tool\", resource)\nwhen { resource.risk_teir > 2 };\n";
    let (s, err) = raw(
        &e,
        "PUT",
        "/api/v1/policies/issues",
        &admin,
        "text/plain",
        bad,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], json!("invalid_policy"));
    assert_eq!(err["errors"][0]["origin"], json!("api:issues"));
    assert_eq!(err["errors"][0]["line"], json!(3), "{err}");
    assert!(
        err["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("risk_teir")),
        "{err}"
    );
    let (s, _, _) = e
        .call("GET", "/api/v1/policies/issues", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(rt.engine.current().version, v1);
    assert_eq!(issue_decision(&e, &admin).await, (false, vec![]));
    let syntax = raw(
        &e,
        "PUT",
        "/api/v1/policies/issues",
        &admin,
        "text/plain",
        "permit(principal, action resource);",
    )
    .await;
    assert_eq!(syntax.1["errors"][0]["line"], json!(1), "{}", syntax.1);
    let dup = "@id(\"eng-read\") permit(principal, action, resource);";
    let (s, err) = raw(&e, "PUT", "/api/v1/policies/dup", &admin, "text/plain", dup).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        err.to_string().contains("already used in base.cedar"),
        "{err}"
    );

    // A valid document applies before the answer.
    let (s, _, change) = e
        .call(
            "PUT",
            "/api/v1/policies/issues",
            Some(&admin),
            Some(json!({ "text": ISSUES })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{change}");
    assert_eq!(change["applied"], json!(true));
    let v2 = change["version"].as_u64().expect("version");
    assert!(v2 > v1);
    assert_eq!(rt.engine.current().version, v2);
    assert_eq!(
        issue_decision(&e, &admin).await,
        (true, vec!["eng-issues".to_owned()])
    );
    let (_, _, set) = e.call("GET", "/api/v1/policies", Some(&admin), None).await;
    assert_eq!(set["policies"].as_array().map(Vec::len), Some(2), "{set}");
    assert_eq!(set["documents"][0]["name"], json!("issues"));
    assert_eq!(set["documents"][0]["updated_by"], json!("root"));
    let (_, _, doc) = e
        .call("GET", "/api/v1/policies/issues", Some(&admin), None)
        .await;
    assert_eq!(doc["text"], json!(ISSUES));

    // Names, media types and bodies.
    for path in [
        "/api/v1/policies/a%20b",
        "/api/v1/policies/..",
        &format!("/api/v1/policies/{}", "n".repeat(65)),
    ] {
        let (s, _) = raw(&e, "PUT", path, &admin, "text/plain", ISSUES).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
    }
    let (s, _) = raw(
        &e,
        "PUT",
        "/api/v1/policies/x",
        &admin,
        "application/xml",
        ISSUES,
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, _) = raw(
        &e,
        "PUT",
        "/api/v1/policies/x",
        &admin,
        "text/plain",
        "  \n",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = e
        .call(
            "PUT",
            "/api/v1/policies/x",
            Some(&admin),
            Some(json!({"txt": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The test endpoint: several cases, expectations, refusals of bad cases.
    let mut failing = issue_case();
    failing["expect"] = json!("deny");
    let (s, _, r) = e
        .call(
            "POST",
            "/api/v1/policies/test",
            Some(&admin),
            Some(json!({"cases": [issue_case(), failing]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["passed"].as_u64(), r["failed"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["version"].as_u64(), Some(v2));
    assert_eq!(
        r["cases"][1]["failures"][0],
        json!("expected deny, got allow")
    );
    let mut typo = issue_case();
    typo["tol"] = json!("x");
    let (s, _, err) = e
        .call("POST", "/api/v1/policies/test", Some(&admin), Some(typo))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        err["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("tol")),
        "{err}"
    );

    // Delete: unknown names are 404; the decision reverts at once.
    let (s, _, _) = e
        .call("DELETE", "/api/v1/policies/nope", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, change) = e
        .call("DELETE", "/api/v1/policies/issues", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{change}");
    assert!(change["version"].as_u64() > Some(v2));
    assert_eq!(issue_decision(&e, &admin).await, (false, vec![]));
    let (_, _, set) = e.call("GET", "/api/v1/policies", Some(&admin), None).await;
    assert_eq!(set["documents"], json!([]));
}

#[tokio::test]
async fn approvals_are_listed_and_decided() {
    let (e, rt) = policy_env().await;
    let admin = e.token("root", true, &["admin"]).await;
    let (_, _, list) = e.call("GET", "/api/v1/approvals", Some(&admin), None).await;
    assert_eq!(list, json!({"approvals": []}));
    let (id, waiting) = rt.approvals.open(PendingApproval {
        id: String::new(),
        user: "alice".into(),
        virtual_server: "dev".into(),
        tool: "github_deploy".into(),
        arguments: json!({"env": "prod"}),
        policies: vec!["deploy-needs-approval".into()],
        requested_at: 1,
    });
    let (s, _, list) = e.call("GET", "/api/v1/approvals", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["approvals"][0]["id"], json!(id));
    assert_eq!(list["approvals"][0]["arguments"], json!({"env": "prod"}));
    let path = format!("/api/v1/approvals/{id}");
    let (s, _, _) = e
        .call("POST", &path, Some(&admin), Some(json!({"approve": "yes"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, r) = e
        .call("POST", &path, Some(&admin), Some(json!({"approve": true})))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["approved"].as_bool(), r["by"].as_str()),
        (Some(true), Some("root"))
    );
    let verdict = waiting.await.expect("verdict");
    assert!(verdict.approved);
    assert_eq!(verdict.by, "root");
    let (s, _, _) = e
        .call("POST", &path, Some(&admin), Some(json!({"approve": false})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "decided approvals are gone");
}

#[tokio::test]
async fn usage_by_day() {
    let (e, _rt) = policy_env().await;
    let admin = e.token("root", true, &["admin"]).await;
    let store = e.identity.store();
    let row = |day: &str, calls| portcullis_store::usage::UsageCount {
        day: day.into(),
        team: "eng".into(),
        user: "alice".into(),
        virtual_server: "dev".into(),
        tool: "github_create_issue".into(),
        calls,
        refused: 1,
    };
    store
        .add_usage(&[row("2001-02-03", 3), row("2001-02-04", 5)])
        .await
        .expect("usage");
    let (s, _, u) = e
        .call("GET", "/api/v1/usage?day=2001-02-03", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(
        (u["calls"].as_u64(), u["refused"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(u["usage"][0]["team"], json!("eng"));
    let (_, _, today) = e.call("GET", "/api/v1/usage", Some(&admin), None).await;
    assert_eq!(today["usage"], json!([]));
    for bad in ["2026-13-01", "yesterday", "2001-02-03T00:00:00Z"] {
        let (s, _, _) = e
            .call(
                "GET",
                &format!("/api/v1/usage?day={bad}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn without_a_policy_engine_the_routes_say_so() {
    let e = super::tests::env().await;
    let admin = e.token("root", true, &["admin"]).await;
    let (s, _, err) = e.call("GET", "/api/v1/policies", Some(&admin), None).await;
    assert_eq!(
        (s, err["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("policy_disabled"))
    );
    let (s, _, _) = e.call("GET", "/api/v1/approvals", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
