//! The route table against the OpenAPI document, and both APIs driven in-process
//! through the real router against a real store.

use super::*;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use portcullis_identity::accounts;
use portcullis_store::Store;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use tower::ServiceExt;

#[test]
fn openapi_documents_exactly_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
    assert_eq!(doc["openapi"], json!("3.1.0"));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = route_table()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(route_table().len(), served.len(), "a route is listed twice");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "openapi.json documents routes not served: {unserved:?}"
    );
    for (m, p) in api::ROUTES {
        assert!(api::endpoint(m, p).is_some(), "{m} {p} has no handler");
    }
    for (m, p) in scim::ROUTES {
        assert!(scim::endpoint(m, p).is_some(), "{m} {p} has no handler");
    }
    for (m, p) in PUBLIC_ROUTES {
        assert!(public_endpoint(m, p).is_some(), "{m} {p} has no handler");
    }
    // Every $ref resolves.
    let text = OPENAPI;
    for part in text.split("\"$ref\": \"#/").skip(1) {
        let target = part.split('"').next().unwrap_or_default();
        let mut node = &doc;
        for seg in target.split('/') {
            node = &node[seg];
        }
        assert!(!node.is_null(), "dangling $ref #/{target}");
    }
}

pub(crate) struct Env {
    pub app: Router,
    pub identity: Arc<Identity>,
    pub dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CONFIG: &str = r#"
upstreams:
  - name: tiny
    transport: stdio
    command: "true"
virtual_servers:
  - name: demo
    upstreams:
      - upstream: tiny
"#;

pub(crate) async fn env() -> Env {
    let dir =
        std::env::temp_dir().join(format!("pc-admin-{}", portcullis_store::identity::new_id()));
    let store = Store::open(&dir).await.expect("store");
    let config = portcullis_config::Config::from_yaml(CONFIG, "test.yaml").expect("config");
    let identity = Identity::open(store, &config).await.expect("identity");
    Env {
        app: router(identity.clone(), None),
        identity,
        dir,
    }
}

impl Env {
    /// A user (admin or not) holding a fresh token with `scopes`.
    pub(crate) async fn token(&self, username: &str, admin: bool, scopes: &[&str]) -> String {
        let store = self.identity.store();
        let user = accounts::upsert_local_user(store, username, "correct horse battery", admin)
            .await
            .expect("user");
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let (_, secret) = accounts::create_api_token(store, &user, "t", &scopes, Some(1), 365)
            .await
            .expect("token");
        self.identity.refresh().await.expect("refresh");
        secret
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(
                    "content-type",
                    if path.starts_with("/scim") {
                        "application/scim+json"
                    } else {
                        "application/json"
                    },
                )
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, headers, v)
    }
}

#[tokio::test]
async fn admin_api_in_process() {
    let e = env().await;
    let admin = e.token("root", true, &["admin"]).await;
    let plain = e.token("pat", false, &["admin", "vs:demo"]).await;
    let scoped = e.token("root2", true, &["vs:demo"]).await;

    let (s, h, b) = e.call("GET", "/api/v1/users", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(h
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer")));
    assert_eq!(b["error"], json!("invalid_token"));
    assert_eq!(
        e.call("GET", "/api/v1/users", Some(&plain), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        e.call("GET", "/api/v1/users", Some(&scoped), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        e.call("GET", "/api/v1/users", Some("pcp_nonsense"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _, doc) = e.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(
        (s, doc["openapi"].as_str()),
        (StatusCode::OK, Some("3.1.0"))
    );

    // Users.
    let (s, _, u) = e
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "email": "c@example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let carol = u["id"].as_str().expect("id").to_owned();
    assert!(u.get("password_hash").is_none());
    let (s, _, err) = e
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "carol"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    let (s, _, err) = e
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "x", "colour": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        err["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("colour"),
        "{err}"
    );
    let (s, _, err) = e
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "y", "password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let (s, _, _) = e
        .call("GET", "/api/v1/users?kind=robot", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = e
        .call("GET", "/api/v1/users/nope", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let big = json!({"username": "z".repeat(70 * 1024)});
    assert_eq!(
        e.call("POST", "/api/v1/users", Some(&admin), Some(big))
            .await
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Service account, group, token.
    let (s, _, sa) = e
        .call(
            "POST",
            "/api/v1/service-accounts",
            Some(&admin),
            Some(json!({"name": "ci-bot", "owner": "carol"})),
        )
        .await;
    assert_eq!(
        (s, sa["kind"].as_str(), sa["owner_id"].as_str()),
        (StatusCode::CREATED, Some("service"), Some(carol.as_str()))
    );
    let (s, _, g) = e
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"display_name": "eng", "members": [carol]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().expect("gid").to_owned();
    assert_eq!(
        e.identity.user(&carol).map(|u| u.groups.clone()),
        Some(vec!["eng".to_owned()])
    );
    let (s, _, t) = e
        .call("POST", "/api/v1/tokens", Some(&admin), Some(json!({"user_id": carol, "name": "laptop", "scopes": ["vs:demo"], "expires_in_days": 7})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let secret = t["token"].as_str().expect("token").to_owned();
    assert!(e
        .identity
        .authenticate(Some(&format!("Bearer {secret}")), "demo")
        .is_ok());
    let (s, _, err) = e
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"user_id": carol, "name": "x", "scopes": ["vs:nope"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let (_, _, list) = e
        .call(
            "GET",
            &format!("/api/v1/tokens?user_id={carol}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(list["tokens"].as_array().map(Vec::len), Some(1));
    let text = list.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("secret_hash") && !text.contains("pcp_"),
        "{text}"
    );

    // Membership removal, then deactivation revokes the token in this process at once.
    let (s, _, _) = e
        .call(
            "DELETE",
            &format!("/api/v1/groups/{gid}/members/{carol}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(e.identity.user(&carol).map(|u| u.groups.len()), Some(0));
    let (s, _, u) = e
        .call(
            "PATCH",
            &format!("/api/v1/users/{carol}"),
            Some(&admin),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!((s, u["active"].as_bool()), (StatusCode::OK, Some(false)));
    assert!(e
        .identity
        .authenticate(Some(&format!("Bearer {secret}")), "demo")
        .is_err());
    let sa_id = sa["id"].as_str().unwrap_or_default();
    assert_eq!(
        e.identity.user(sa_id).map(|u| u.active),
        Some(false),
        "owned service accounts stop too"
    );

    // Self-protection, clients, grants, keys.
    let root = e
        .identity
        .store()
        .user_by_username("root")
        .await
        .ok()
        .flatten()
        .expect("root");
    let (s, _, _) = e
        .call(
            "DELETE",
            &format!("/api/v1/users/{}", root.id),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, c) = e.call("GET", "/api/v1/clients", Some(&admin), None).await;
    assert_eq!(
        (s, c["clients"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    assert_eq!(
        e.call("DELETE", "/api/v1/clients/nope", Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        e.call("DELETE", "/api/v1/grants/nope", Some(&admin), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let before = e.identity.jwks();
    let (s, _, k) = e
        .call("POST", "/api/v1/keys/rotate", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(e
        .identity
        .jwks()
        .to_string()
        .contains(k["kid"].as_str().expect("kid")));
    assert_ne!(before, e.identity.jwks());
    let (s, _, _) = e
        .call(
            "DELETE",
            &format!("/api/v1/users/{carol}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(e.identity.user(&carol).is_none());
}

#[tokio::test]
async fn scim_in_process() {
    let e = env().await;
    let scim = e.token("okta", false, &["scim"]).await;
    let admin_only = e.token("root", true, &["admin"]).await;

    let (s, h, err) = e.call("GET", "/scim/v2/Users", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        err["schemas"][0],
        json!("urn:ietf:params:scim:api:messages:2.0:Error")
    );
    assert_eq!(err["status"], json!("401"));
    assert_eq!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/scim+json")
    );
    assert_eq!(
        e.call("GET", "/scim/v2/Users", Some(&admin_only), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    let (s, h, u) = e
        .call(
            "POST",
            "/scim/v2/Users",
            Some(&scim),
            Some(json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "dana@example.com", "externalId": "00u9",
                "name": {"givenName": "Dana", "familyName": "Scully"},
                "emails": [{"value": "dana@example.com", "primary": true}], "active": true
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let id = u["id"].as_str().expect("id").to_owned();
    assert_eq!(
        h.get("location").and_then(|v| v.to_str().ok()),
        u["meta"]["location"].as_str()
    );
    assert_eq!(u["displayName"], json!("Dana Scully"));
    let row = e
        .identity
        .store()
        .user(&id)
        .await
        .ok()
        .flatten()
        .expect("row");
    assert_eq!(
        (row.idp.as_deref(), row.external_id.as_deref()),
        (Some("scim"), Some("00u9"))
    );
    let (s, _, err) = e
        .call(
            "POST",
            "/scim/v2/Users",
            Some(&scim),
            Some(json!({"userName": "DANA@example.com"})),
        )
        .await;
    assert_eq!(
        (s, err["scimType"].as_str()),
        (StatusCode::CONFLICT, Some("uniqueness"))
    );

    let (s, _, l) = e
        .call(
            "GET",
            "/scim/v2/Users?filter=userName%20eq%20%22Dana%40Example.com%22",
            Some(&scim),
            None,
        )
        .await;
    assert_eq!(
        (s, l["totalResults"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{l}"
    );
    let (_, _, l) = e
        .call(
            "GET",
            "/scim/v2/Users?filter=externalId%20eq%20%22nobody%22",
            Some(&scim),
            None,
        )
        .await;
    assert_eq!(l["totalResults"], json!(0));
    let (_, _, l) = e
        .call(
            "GET",
            "/scim/v2/Users?startIndex=1&count=1",
            Some(&scim),
            None,
        )
        .await;
    assert_eq!(
        (l["totalResults"].as_u64(), l["itemsPerPage"].as_u64()),
        (Some(1), Some(1)),
        "local users (okta, root) are not SCIM resources: {l}"
    );
    let (s, _, err) = e
        .call(
            "GET",
            "/scim/v2/Users?filter=userName%20eq",
            Some(&scim),
            None,
        )
        .await;
    assert_eq!(
        (s, err["scimType"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalidFilter"))
    );

    let (s, _, g) = e
        .call(
            "POST",
            "/scim/v2/Groups",
            Some(&scim),
            Some(json!({"displayName": "analysts", "members": [{"value": id}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().expect("gid").to_owned();
    assert_eq!(
        e.identity.user(&id).map(|u| u.groups.clone()),
        Some(vec!["analysts".to_owned()])
    );
    let (s, _, g) = e
        .call(
            "PATCH",
            &format!("/scim/v2/Groups/{gid}"),
            Some(&scim),
            Some(json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Remove", "path": format!("members[value eq \"{id}\"]")}]
            })),
        )
        .await;
    assert_eq!(
        (s, g["members"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{g}"
    );
    assert_eq!(e.identity.user(&id).map(|u| u.groups.len()), Some(0));

    // A token for the provisioned user, then deactivation through PATCH.
    let row = e
        .identity
        .store()
        .user(&id)
        .await
        .ok()
        .flatten()
        .expect("row");
    let (_, pat) = accounts::create_api_token(
        e.identity.store(),
        &row,
        "p",
        &["vs:demo".to_owned()],
        Some(1),
        365,
    )
    .await
    .expect("token");
    e.identity.refresh().await.expect("refresh");
    assert!(e
        .identity
        .authenticate(Some(&format!("Bearer {pat}")), "demo")
        .is_ok());
    let (s, _, u) = e
        .call(
            "PATCH",
            &format!("/scim/v2/Users/{id}"),
            Some(&scim),
            Some(json!({
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}]
            })),
        )
        .await;
    assert_eq!(
        (s, u["active"].as_bool()),
        (StatusCode::OK, Some(false)),
        "{u}"
    );
    assert!(e
        .identity
        .authenticate(Some(&format!("Bearer {pat}")), "demo")
        .is_err());

    let (s, _, _) = e
        .call("GET", "/scim/v2/ServiceProviderConfig", Some(&scim), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, rt) = e
        .call("GET", "/scim/v2/ResourceTypes", Some(&scim), None)
        .await;
    assert_eq!(rt["totalResults"], json!(2));
    let (s, _, _) = e
        .call(
            "GET",
            "/scim/v2/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group",
            Some(&scim),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let root = e
        .identity
        .store()
        .user_by_username("root")
        .await
        .ok()
        .flatten()
        .expect("root");
    let deactivate = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    let (s, _, _) = e
        .call(
            "PATCH",
            &format!("/scim/v2/Users/{}", root.id),
            Some(&scim),
            Some(deactivate),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "SCIM cannot touch local administrators"
    );
    assert_eq!(
        e.call("DELETE", &format!("/scim/v2/Users/{id}"), Some(&scim), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        e.call("GET", &format!("/scim/v2/Users/{id}"), Some(&scim), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}
