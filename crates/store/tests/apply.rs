use portcullis_config::Config;
use portcullis_store::{Applied, Store, REDACTED};

const YAML: &str = r#"
upstreams:
  - name: api
    transport: streamable_http
    url: http://127.0.0.1:1/mcp
    headers: {Authorization: "Bearer top-secret-value"}
    catalog: {owner: alice, team: platform, risk_tier: 3}
  - name: local
    transport: stdio
    command: /bin/cat
    env: {API_KEY: "another-secret"}
virtual_servers:
  - name: main
    upstreams: [{upstream: api}, {upstream: local}]
"#;

#[tokio::test]
async fn applying_is_idempotent_and_tracks_changes() {
    let dir = std::env::temp_dir().join(format!("pc-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).await.unwrap();
    let config = Config::from_yaml(YAML, "t").unwrap();
    assert!(matches!(
        store.apply_config(&config, "t").await.unwrap(),
        Applied::Changed { .. }
    ));
    assert_eq!(
        store.apply_config(&config, "t").await.unwrap(),
        Applied::Unchanged
    );
    assert_eq!(store.revision_count().await.unwrap(), 1);

    let rows = store.upstreams().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].owner.as_deref(), Some("alice"));
    assert_eq!(rows[0].risk_tier, Some(3));

    let spec = store.upstream_spec("api").await.unwrap().unwrap();
    assert!(
        !spec.contains("top-secret-value") && spec.contains(REDACTED),
        "{spec}"
    );
    let spec = store.upstream_spec("local").await.unwrap().unwrap();
    assert!(!spec.contains("another-secret"), "{spec}");

    let smaller = Config::from_yaml(
        &YAML.replace("[{upstream: api}, {upstream: local}]", "[{upstream: api}]")
            .replace("  - name: local\n    transport: stdio\n    command: /bin/cat\n    env: {API_KEY: \"another-secret\"}\n", ""),
        "t",
    )
    .unwrap();
    assert!(matches!(
        store.apply_config(&smaller, "t").await.unwrap(),
        Applied::Changed { .. }
    ));
    assert_eq!(
        store.upstreams().await.unwrap().len(),
        1,
        "removed upstream is deleted"
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
