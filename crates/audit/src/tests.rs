use super::*;
use portcullis_config::Audit;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pc-audit-{name}-{}-{}",
        std::process::id(),
        now_us()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn open(dir: &std::path::Path) -> Auditor {
    Auditor::open(&Audit::default(), dir).await.unwrap()
}

fn call(user: &str, tool: &str, args: serde_json::Value) -> AuditEvent {
    let mut e = AuditEvent::new("mcp.request");
    e.actor = Some(Actor {
        kind: "user".into(),
        username: Some(user.into()),
        ..Default::default()
    });
    e.target = Some(Target {
        virtual_server: Some("demo".into()),
        upstream: Some("files".into()),
        tool: Some(tool.into()),
        ..Default::default()
    });
    e.request = Some(Request {
        method: "tools/call".into(),
        arguments: Some(args),
        ..Default::default()
    });
    e.outcome = Some(Outcome {
        status: "success".into(),
        ..Default::default()
    });
    e
}

/// Ids of this process's threads with that name (Linux: `/proc/self/task`).
fn threads_named(name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == name).then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

async fn key(dir: &std::path::Path) -> keys::PublicKey {
    let text = std::fs::read_to_string(dir.join("audit-signing.key.pub")).unwrap();
    keys::PublicKey::from_hex(&text).unwrap()
}

#[test]
fn canonical_json_sorts_keys_and_escapes() {
    let v = json!({"b": 1, "a": {"d": [1, "x\"y\n"], "c": null}});
    assert_eq!(
        canonical_json(&v),
        r#"{"a":{"c":null,"d":[1,"x\"y\n"]},"b":1}"#
    );
}

#[test]
fn canonical_json_escapes_like_before() {
    // The exact bytes existing logs were hashed over.
    let v = json!({"s": "\u{1}\u{8}\u{c}\t\r\u{1f}\u{7f}é\\/", "n": [1.5, -0.0, 1e300, 12]});
    assert_eq!(
        canonical_json(&v),
        "{\"n\":[1.5,-0.0,1e+300,12],\"s\":\"\\u0001\\b\\f\\t\\r\\u001f\u{7f}é\\\\/\"}"
    );
    // UTF-16 order, not UTF-8 byte order: U+FF61 sorts after U+1F600.
    let v = json!({"\u{ff61}": 1, "\u{1f600}": 2, "b": 3, "a": 4});
    assert_eq!(
        canonical_json(&v),
        "{\"a\":4,\"b\":3,\"\u{1f600}\":2,\"\u{ff61}\":1}"
    );
}

#[test]
fn typed_encoding_is_canonical() {
    let mut e = call(
        "alice",
        "read_file",
        json!({"z": 1, "path": "/x", "nested": {"b": [{"y": 1, "x": 2}], "a": null}}),
    );
    e.replica = "host/1".into();
    e.actor = Some(Actor {
        kind: "user".into(),
        id: Some("u1".into()),
        username: Some("alice".into()),
        groups: vec!["eng".into(), "admins".into()],
        token_id: Some("t1".into()),
        auth_method: Some("oauth".into()),
        client_id: Some("c1".into()),
        client_name: Some("claude".into()),
        ip: Some("127.0.0.1".into()),
        user_agent: Some("ua \"quoted\"\n".into()),
    });
    e.target = Some(Target {
        virtual_server: Some("demo".into()),
        upstream: Some("files".into()),
        tool: Some("read_file".into()),
        upstream_tool: Some("read".into()),
        resource: Some("file:///x".into()),
    });
    if let Some(r) = e.request.as_mut() {
        r.jsonrpc_id = Some(json!({"k": 2, "j": 1}));
        r.session_id = Some("s".into());
        r.protocol_version = Some("2025-06-18".into());
        r.arguments_digest = Some("hmac-sha256:00".into());
        r.bytes_in = 10;
        r.trace_id = Some("t".into());
        r.span_id = Some("p".into());
    }
    e.decision = Some(Decision {
        result: "allow".into(),
        policies: vec!["p1".into()],
        errors: vec!["e".into()],
        policy_version: Some(3),
        checkpoint: Some("user".into()),
        checkpoint_result: Some("accepted".into()),
        rate_limit: Some("r".into()),
    });
    e.outcome = Some(Outcome {
        status: "tool_error".into(),
        error_code: Some(-32000),
        error_message: Some("boom".into()),
        latency_us: 5,
        bytes_out: 7,
    });
    e.detail = Some(json!({"b": 1, "a": {"d": 1, "c": 2}}));
    let typed = canon::encode(&e).unwrap();
    let via_value = canonical_json(&serde_json::to_value(&e).unwrap());
    assert_eq!(typed, via_value);
    // And the columns taken from the event are the ones verify reads back.
    let body: serde_json::Value = serde_json::from_str(&typed).unwrap();
    assert_eq!(db::Columns::of(e), StoredRecord::columns_from_body(&body));
}

#[test]
fn chain_hash_is_stable() {
    assert_eq!(
        chain_hash(GENESIS, 42, r#"{"a":1}"#),
        "7f8224c48183bd1c42d3befb0053c808c091a49be82ce1708d781d3e9533a1d2"
    );
    assert_eq!(
        chain_hash("ab", -7, "x"),
        "f491e568cd51eae676fe6b2cde6b082b3c423e3198b1d3f12152df154c139eff"
    );
}

#[test]
fn times_round_trip() {
    let t = 1_795_000_000_123_456;
    assert_eq!(parse_time(&format_time(t)), Some(t));
    assert_eq!(format_time(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(parse_time("2024-02-29"), Some(1_709_164_800_000_000));
    assert_eq!(
        parse_time("2024-02-29T01:00:00+01:00"),
        Some(1_709_164_800_000_000)
    );
    assert!(parse_time("yesterday").is_none());
    assert!(parse_time("1h").unwrap() < now_us());
}

#[test]
fn masks_secret_names_and_shapes() {
    let m = Masker::new(&["ssn".into()], b"k".to_vec());
    let out = m.arguments(&json!({
        "password": "hunter2", "apiToken": "abc", "ssn": "123", "path": "/tmp/x",
        "note": "use ghp_0123456789abcdefghijABCDEFGHIJ0123 please",
        "nested": {"client_secret": "s3cr3t", "list": ["Bearer abcdefghijklmnopqrstuv"]},
        "long": "x".repeat(1000)
    }));
    let text = out.to_string();
    for secret in [
        "hunter2",
        "abc\"",
        "123\"",
        "ghp_0123",
        "s3cr3t",
        "abcdefghijklmnopqrstuv",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(out["path"], "/tmp/x");
    assert!(out["long"].as_str().unwrap().ends_with("[len=1000]"));
    assert!(m.digest(&json!({"a": 1})).starts_with("hmac-sha256:"));
}

#[tokio::test]
async fn records_chain_and_verify_then_detect_edit_insert_delete() {
    let dir = temp_dir("chain");
    let a = open(&dir).await;
    let mut seqs = Vec::new();
    for i in 0..20 {
        seqs.push(
            a.record(call("alice", &format!("t{i}"), json!({"i": i})))
                .await
                .unwrap(),
        );
    }
    assert_eq!(seqs.windows(2).filter(|w| w[1] != w[0] + 1).count(), 0);
    a.close().await;
    let db = AuditDb::open_existing(&dir.join("audit.db")).await.unwrap();
    let pk = key(&dir).await;
    let r = verify(&db, &pk).await.unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.records, 22); // audit.started, 20 calls, audit.stopped
    assert!(r.checkpoints_verified >= 1);
    assert_eq!(r.unsealed, 0);

    // Edit a column only.
    sqlx::query("UPDATE audit_records SET username = 'mallory' WHERE seq = 5")
        .execute(db.pool())
        .await
        .unwrap();
    let r = verify(&db, &pk).await.unwrap();
    assert_eq!(r.problem.as_ref().map(|p| p.seq), Some(5), "{r:?}");
    assert!(r.problem.unwrap().reason.contains("username"));
    sqlx::query("UPDATE audit_records SET username = 'alice' WHERE seq = 5")
        .execute(db.pool())
        .await
        .unwrap();
    assert!(verify(&db, &pk).await.unwrap().ok());

    // Edit the body.
    let body: String = sqlx::query_scalar("SELECT body FROM audit_records WHERE seq = 7")
        .fetch_one(db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_records SET body = ? WHERE seq = 7")
        .bind(body.replace("\"success\"", "\"denied\""))
        .execute(db.pool())
        .await
        .unwrap();
    let r = verify(&db, &pk).await.unwrap();
    assert_eq!(r.problem.as_ref().map(|p| p.seq), Some(7), "{r:?}");
    sqlx::query("UPDATE audit_records SET body = ? WHERE seq = 7")
        .bind(&body)
        .execute(db.pool())
        .await
        .unwrap();

    // Delete one in the middle.
    let row: (String, String, String) =
        sqlx::query_as("SELECT body, prev_hash, hash FROM audit_records WHERE seq = 10")
            .fetch_one(db.pool())
            .await
            .unwrap();
    sqlx::query("DELETE FROM audit_records WHERE seq = 10")
        .execute(db.pool())
        .await
        .unwrap();
    let r = verify(&db, &pk).await.unwrap();
    assert_eq!(r.problem.as_ref().map(|p| p.seq), Some(11), "{r:?}");
    assert!(r.problem.unwrap().reason.contains("missing"));

    // Insert a forged record in its place.
    let forged = row.0.replace("t8", "t8-forged");
    sqlx::query("INSERT INTO audit_records (seq, event_id, time_us, event_type, replica, username, virtual_server, upstream, tool, method, outcome, body, prev_hash, hash) SELECT 10, event_id, time_us, event_type, replica, username, virtual_server, upstream, 't8-forged', method, outcome, ?, ?, ? FROM audit_records WHERE seq = 9")
        .bind(&forged).bind(&row.1).bind(chain_hash(&row.1, 10, &forged))
        .execute(db.pool()).await.unwrap();
    let r = verify(&db, &pk).await.unwrap();
    assert!(
        matches!(r.problem.as_ref().map(|p| p.seq), Some(10) | Some(11)),
        "{r:?}"
    );

    // Truncate the tail.
    let fresh = temp_dir("tail");
    let a = open(&fresh).await;
    for i in 0..5 {
        a.record(call("bob", &format!("t{i}"), json!({})))
            .await
            .unwrap();
    }
    a.close().await;
    let db2 = AuditDb::open_existing(&fresh.join("audit.db"))
        .await
        .unwrap();
    let max = db2.max_seq().await.unwrap();
    sqlx::query("DELETE FROM audit_records WHERE seq = ?")
        .bind(max)
        .execute(db2.pool())
        .await
        .unwrap();
    let r = verify(&db2, &key(&fresh).await).await.unwrap();
    assert_eq!(r.problem.as_ref().map(|p| p.seq), Some(max), "{r:?}");
}

#[tokio::test]
async fn a_wrong_key_fails_verification() {
    let dir = temp_dir("key");
    let a = open(&dir).await;
    a.record(call("alice", "t", json!({}))).await.unwrap();
    a.close().await;
    let db = AuditDb::open_existing(&dir.join("audit.db")).await.unwrap();
    let other = temp_dir("other");
    let _ = SigningKey::load_or_create(&other.join("k")).unwrap();
    let wrong =
        keys::PublicKey::from_hex(&std::fs::read_to_string(other.join("k.pub")).unwrap()).unwrap();
    let r = verify(&db, &wrong).await.unwrap();
    assert!(r.problem.unwrap().reason.contains("signature"));
}

#[tokio::test]
async fn concurrent_records_group_commit_and_search() {
    let dir = temp_dir("group");
    let a = open(&dir).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.record(call(
                if i % 2 == 0 { "alice" } else { "bob" },
                "echo",
                json!({"i": i}),
            ))
            .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 200);
    let stats = a.batch_stats();
    assert_eq!(stats["records"], 201);
    let db = a.db().unwrap().clone();
    let hits = Query {
        user: Some("alice".into()),
        limit: Some(1000),
        ..Default::default()
    }
    .run(&db)
    .await
    .unwrap();
    assert_eq!(hits.len(), 100);
    assert!(hits.windows(2).all(|w| w[0].seq > w[1].seq));
    let none = Query {
        user: Some("alice".into()),
        outcome: Some("denied".into()),
        ..Default::default()
    }
    .run(&db)
    .await
    .unwrap();
    assert!(none.is_empty());
    a.close().await;
    assert!(verify(&db, &key(&dir).await).await.unwrap().ok());
}

#[tokio::test]
async fn observers_see_each_group_and_every_callers_wait() {
    let dir = temp_dir("waits");
    let a = open(&dir).await;
    type Seen = Vec<(usize, bool, Vec<Duration>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    a.observe_batches(move |g| {
        sink.lock()
            .unwrap()
            .push((g.records, g.written, g.waits.to_vec()));
    });
    let mut tasks = Vec::new();
    for i in 0..50 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let start = std::time::Instant::now();
            a.record(call("alice", "echo", json!({"i": i})))
                .await
                .unwrap();
            start.elapsed()
        }));
    }
    let mut longest_call = Duration::ZERO;
    for t in tasks {
        longest_call = longest_call.max(t.await.unwrap());
    }
    let groups = seen.lock().unwrap().clone();
    assert_eq!(groups.iter().map(|g| g.0).sum::<usize>(), 50);
    for (records, written, waits) in &groups {
        assert!(*written);
        assert_eq!(waits.len(), *records, "one wait per caller");
        // A wait is measured inside the caller's own call, so none can exceed it.
        assert!(waits
            .iter()
            .all(|w| *w > Duration::ZERO && *w <= longest_call));
    }
    // The statistics count the opening record as well.
    let stats = a.batch_stats();
    let waited: u64 = stats["wait_histogram_us"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(waited, 51);
    for (histogram, label) in [
        ("histogram", "<=1"),
        ("histogram", ">256"),
        ("wait_histogram_us", "<=250"),
        ("wait_histogram_us", ">100000"),
    ] {
        assert!(stats[histogram].get(label).is_some(), "{histogram} {label}");
    }
    assert!(stats["wait_mean_us"].as_f64().unwrap() > 0.0);
    a.close().await;
}

#[tokio::test]
async fn the_wal_is_copied_into_the_database_while_the_log_is_open() {
    let dir = temp_dir("walcheck");
    let a = open(&dir).await;
    let db_file = dir.join("audit.db");
    let before = std::fs::metadata(&db_file).unwrap().len();
    // ~3,000 records of ~1 KiB: about 1,000 WAL pages, far below the
    // committer's own checkpoint threshold, so only the checkpointer can have
    // copied them into the database file.
    let filler = "x".repeat(300);
    for chunk in 0..30 {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let a = a.clone();
            let args = json!({"i": chunk * 100 + i, "text": filler});
            tasks.push(tokio::spawn(async move {
                a.record(call("alice", "echo", args)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let mut grown = 0;
    for _ in 0..400 {
        grown = std::fs::metadata(&db_file).unwrap().len();
        if grown > before + 2_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        grown > before + 2_000_000,
        "database file {before} -> {grown} bytes: the WAL was not checkpointed"
    );
    if cfg!(target_os = "linux") {
        assert!(
            !threads_named("audit-wal").is_empty(),
            "no checkpointer thread"
        );
    }
    let db = a.db().unwrap().clone();
    a.close().await;
    assert!(verify(&db, &key(&dir).await).await.unwrap().ok());
}

#[tokio::test]
async fn under_load_a_group_waits_commit_delay_for_companions() {
    let dir = temp_dir("delay");
    let config = Audit {
        commit_delay_us: 400_000,
        ..Audit::default()
    };
    let a = Auditor::open(&config, &dir).await.unwrap();
    // A burst first, so the committer sees load (a previous group of more
    // than one).
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.record(call("alice", "echo", json!({"i": i}))).await })
        })
        .collect();
    for t in burst {
        t.await.unwrap().unwrap();
    }
    let before = a.batch_stats()["batches"].as_u64().unwrap();
    assert!(a.batch_stats()["largest"].as_u64().unwrap() >= 8);
    // Then six records 20 ms apart: each would find the committer idle and
    // go alone, but the delay gathers them.
    let mut spaced = Vec::new();
    for i in 0..6 {
        let a = a.clone();
        spaced.push(tokio::spawn(async move {
            a.record(call("bob", "echo", json!({"i": i}))).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for t in spaced {
        t.await.unwrap().unwrap();
    }
    let groups = a.batch_stats()["batches"].as_u64().unwrap() - before;
    assert!(
        groups <= 2,
        "six spaced records took {groups} group commits"
    );
    a.close().await;
    assert!(verify(a.db().unwrap(), &key(&dir).await)
        .await
        .unwrap()
        .ok());
}

#[tokio::test]
async fn prune_archives_then_deletes_and_the_rest_still_verifies() {
    let dir = temp_dir("prune");
    let a = open(&dir).await;
    for i in 0..10 {
        a.record(call("alice", &format!("t{i}"), json!({})))
            .await
            .unwrap();
    }
    let db = a.db().unwrap().clone();
    let report = prune(&db, &a, now_us() + 1, &dir.join("archive"), &[])
        .await
        .unwrap();
    assert_eq!(report.through_seq, Some(10));
    let archived = std::fs::read_to_string(report.archive.unwrap()).unwrap();
    assert_eq!(archived.lines().count(), 10);
    a.close().await;
    let pk = key(&dir).await;
    let r = verify(&db, &pk).await.unwrap();
    assert!(r.ok(), "{r:?}");
    // Deleting the oldest remaining record is not a prune.
    sqlx::query("DELETE FROM audit_records WHERE seq = 11")
        .execute(db.pool())
        .await
        .unwrap();
    let r = verify(&db, &pk).await.unwrap();
    assert_eq!(r.problem.map(|p| p.seq), Some(12));
}

#[test]
fn every_secret_shape_compiles() {
    let m = Masker::new(&[], vec![]);
    assert_eq!(m.shape_count(), mask::SHAPE_COUNT);
}

/// The committer runs as `SCHED_BATCH` so that it never preempts a server
/// thread on wake-up (see `committer::batch_scheduling`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_committer_thread_runs_with_batch_scheduling() {
    let dir = temp_dir("sched");
    let a = Auditor::open(&Audit::default(), &dir).await.unwrap();
    // The thread is named `audit-commit` at spawn; its policy is set first thing in `run`,
    // before it takes any record, so once a record is committed it is set.
    a.record(call("alice", "echo", json!({}))).await.unwrap();
    let committers = threads_named("audit-commit");
    assert!(!committers.is_empty(), "no committer thread found");
    for tid in committers {
        // SAFETY: a read-only query of a thread of this process.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        assert_eq!(policy, libc::SCHED_BATCH, "committer thread {tid}");
    }
    a.close().await;
}

#[tokio::test]
async fn a_closed_log_is_one_self_contained_file() {
    let dir = temp_dir("closed");
    let a = open(&dir).await;
    for i in 0..50 {
        a.record(call("alice", "echo", json!({"i": i})))
            .await
            .unwrap();
    }
    assert!(
        dir.join("audit.db-wal").exists(),
        "the log is written through a WAL"
    );
    a.close_and_release().await;
    // The database file alone, copied without its WAL, holds every record,
    // the last (`audit.stopped`) and the final signed checkpoint included.
    let alone = temp_dir("closed-copy");
    std::fs::copy(dir.join("audit.db"), alone.join("audit.db")).unwrap();
    std::fs::copy(
        dir.join("audit-signing.key.pub"),
        alone.join("audit-signing.key.pub"),
    )
    .unwrap();
    let db = AuditDb::open_existing(&alone.join("audit.db"))
        .await
        .unwrap();
    let report = verify(&db, &key(&alone).await).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records, 52, "started + 50 calls + stopped");
    assert_eq!(report.unsealed, 0, "the final checkpoint is in the file");
    db.close().await;
}
