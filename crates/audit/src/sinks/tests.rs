//! Every sink against a real receiver on loopback: the right records, in
//! order, exactly once, in the right format, with masked secrets staying
//! masked; receivers that are down (or refuse) and come back; backlog
//! overflow; shutdown and restart. Waits poll with a generous deadline; no
//! assertion is about speed.

mod receivers;

use super::*;
use crate::event::{Outcome, Request, Target as EventTarget};
use portcullis_config::Audit;
use receivers::{free_port, parse_syslog, Http, Syslog, Tcp, Udp};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

const SECRET: &str = "hunter2";
const DEADLINE: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pc-sinks-{name}-{}-{}",
        std::process::id(),
        crate::now_us()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn open(dir: &Path) -> Auditor {
    Auditor::open(&Audit::default(), dir).await.unwrap()
}

fn sink(name: &str, kind: SinkKind) -> Sink {
    Sink {
        name: name.into(),
        kind,
        batch: 7,
        backoff_min_ms: 20,
        backoff_max_ms: 200,
        max_backlog: 1_000_000,
    }
}

/// `n` tool calls whose arguments carry a password, masked as the gateway
/// masks them.
async fn record_calls(a: &Auditor, n: usize, tag: &str) {
    for i in 0..n {
        let args = json!({"password": SECRET, "path": format!("/srv/{tag}/{i}")});
        let mut e = AuditEvent::new("mcp.request");
        e.actor = Some(Actor {
            kind: "user".into(),
            username: Some("alice \"the\" [admin]".into()),
            ..Default::default()
        });
        e.target = Some(EventTarget {
            virtual_server: Some("demo".into()),
            upstream: Some("files".into()),
            tool: Some(format!("read_{tag}")),
            ..Default::default()
        });
        e.request = Some(Request {
            method: "tools/call".into(),
            arguments: Some(a.masker().unwrap().arguments(&args)),
            ..Default::default()
        });
        e.outcome = Some(Outcome {
            status: "success".into(),
            ..Default::default()
        });
        a.record(e).await.unwrap();
    }
}

/// Poll `check` until it holds; fail after the deadline.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_records(a: &Auditor) -> Vec<StoredRecord> {
    a.db().unwrap().read_after(0, 1_000_000).await.unwrap()
}

async fn status_of(set: &SinkSet) -> SinkStatus {
    set.status().await.remove(0)
}

fn seq_of(export: &Value) -> i64 {
    export["integrity"]["seq"].as_i64().unwrap()
}

/// The received exports are exactly the log's records, in order, unchanged.
fn assert_exact(received: &[Value], log: &[StoredRecord]) {
    let seqs: Vec<i64> = received.iter().map(seq_of).collect();
    let want: Vec<i64> = log.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, want, "received sequence numbers");
    for (got, r) in received.iter().zip(log) {
        assert_eq!(got, &r.export(), "record {} changed on the way", r.seq);
    }
}

fn assert_no_secret(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text.contains(SECRET),
        "the secret left the gateway: {text}"
    );
}

#[tokio::test]
async fn file_sink_waits_for_a_writable_path_then_appends_every_record_once() {
    let dir = temp_dir("file");
    let a = open(&dir).await;
    let path = dir.join("out").join("audit.jsonl");
    // A directory where the file should be: every append fails.
    std::fs::create_dir_all(&path).unwrap();
    let set = SinkSet::start(&a, &[sink("f", SinkKind::File { path: path.clone() })]).unwrap();
    record_calls(&a, 25, "file").await;
    wait_until("the sink failed twice", || async {
        status_of(&set).await.consecutive_failures >= 2
    })
    .await;
    let st = status_of(&set).await;
    assert_eq!(st.cursor, 0);
    assert_eq!(st.backlog, 26);
    assert!(st.last_error.unwrap().contains("audit.jsonl"));
    assert_eq!(a.db().unwrap().cursor("f").await.unwrap(), None);

    std::fs::remove_dir(&path).unwrap();
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("the file holds every record", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    // Live records after catching up.
    record_calls(&a, 5, "later").await;
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("the later records arrived", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    let text = std::fs::read(&path).unwrap();
    assert_no_secret(&text);
    let lines: Vec<Value> = String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_exact(&lines, &all_records(&a).await);
    let st = status_of(&set).await;
    assert_eq!(
        (st.backlog, st.delivered, st.consecutive_failures),
        (0, 31, 0)
    );
    assert!(st.last_success_us.is_some());
    assert_eq!(a.db().unwrap().cursor("f").await.unwrap(), Some(max));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the export file is private");
    }
    set.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn otlp_sink_waits_for_the_collector_then_delivers_every_record_once() {
    let dir = temp_dir("otlp");
    let a = open(&dir).await;
    let port = free_port();
    let headers = BTreeMap::from([("x-api-key".to_owned(), "otlp-header-secret".to_owned())]);
    let s = sink(
        "otel",
        SinkKind::Otlp {
            endpoint: format!("http://127.0.0.1:{port}/v1/logs"),
            headers,
        },
    );
    let set = SinkSet::start(&a, &[s]).unwrap();
    record_calls(&a, 20, "otlp").await;
    wait_until("the sink failed twice", || async {
        status_of(&set).await.consecutive_failures >= 2
    })
    .await;
    let st = status_of(&set).await;
    assert_eq!((st.cursor, st.backlog), (0, 21));
    assert!(st.last_error.unwrap().contains("connect"));
    assert_eq!(a.db().unwrap().cursor("otel").await.unwrap(), None);

    let collector = Http::start(port, 200, "{}").await;
    record_calls(&a, 3, "live").await;
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("the collector has every record", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    let mut received = Vec::new();
    for (headers, body) in collector.accepted() {
        assert_no_secret(&body);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-api-key"], "otlp-header-secret");
        let v: Value = serde_json::from_slice(&body).unwrap();
        let rl = &v["resourceLogs"][0];
        let attrs = &rl["resource"]["attributes"];
        let attr = |attrs: &Value, key: &str| {
            attrs
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == key)
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            attr(attrs, "service.name").unwrap()["stringValue"],
            "portcullis"
        );
        assert_eq!(
            attr(attrs, "service.instance.id").unwrap()["stringValue"],
            a.replica()
        );
        let scope = &rl["scopeLogs"][0];
        assert_eq!(scope["scope"]["name"], "portcullis.audit");
        for lr in scope["logRecords"].as_array().unwrap() {
            let export: Value =
                serde_json::from_str(lr["body"]["stringValue"].as_str().unwrap()).unwrap();
            let seq = seq_of(&export);
            assert_eq!(
                attr(&lr["attributes"], "audit.seq").unwrap()["intValue"],
                seq.to_string()
            );
            assert_eq!(
                attr(&lr["attributes"], "event.name").unwrap()["stringValue"],
                export["event_type"]
            );
            let time: i128 = lr["timeUnixNano"].as_str().unwrap().parse().unwrap();
            let us = crate::parse_time(export["time"].as_str().unwrap()).unwrap();
            assert_eq!(time, i128::from(us) * 1000);
            assert!(lr["observedTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<i128>()
                .is_ok());
            if export["event_type"] == "mcp.request" {
                assert_eq!(
                    (lr["severityNumber"].as_i64(), lr["severityText"].as_str()),
                    (Some(9), Some("INFO"))
                );
                assert_eq!(
                    attr(&lr["attributes"], "user.name").unwrap()["stringValue"],
                    "alice \"the\" [admin]"
                );
                assert!(attr(&lr["attributes"], "portcullis.tool").is_some());
            }
            received.push(export);
        }
    }
    assert_exact(&received, &all_records(&a).await);
    assert_eq!(a.db().unwrap().cursor("otel").await.unwrap(), Some(max));
    set.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn hec_sink_retries_refusals_and_bad_tokens_then_delivers_every_record_once() {
    let dir = temp_dir("hec");
    let a = open(&dir).await;
    let splunk = Http::start(0, 503, r#"{"text":"Server is busy","code":9}"#).await;
    let s = sink(
        "splunk",
        SinkKind::SplunkHec {
            endpoint: splunk.url("/services/collector/event"),
            token: "hec-token-0000".into(),
            index: Some("audit".into()),
            sourcetype: Some("portcullis:test".into()),
        },
    );
    let set = SinkSet::start(&a, &[s]).unwrap();
    record_calls(&a, 20, "hec").await;
    wait_until("Splunk refused twice", || async { splunk.refused() >= 2 }).await;
    assert!(splunk.accepted().is_empty());
    assert_eq!(status_of(&set).await.cursor, 0);
    assert_eq!(a.db().unwrap().cursor("splunk").await.unwrap(), None);

    // A bad token: a configuration error, retried, never dropped, and the
    // token never shows in the status.
    let before = splunk.refused();
    splunk.answer(403, r#"{"text":"Invalid token","code":4}"#);
    wait_until("the sink reports the bad token", || async {
        splunk.refused() >= before + 2
            && status_of(&set)
                .await
                .last_error
                .is_some_and(|e| e.contains("403"))
    })
    .await;
    let st = status_of(&set).await;
    assert_eq!(st.cursor, 0);
    assert!(!format!("{st:?}").contains("hec-token-0000"));

    splunk.answer(200, r#"{"text":"Success","code":0}"#);
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("Splunk has every record", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    let mut received = Vec::new();
    for (headers, body) in splunk.accepted() {
        assert_no_secret(&body);
        assert_eq!(headers["authorization"], "Splunk hec-token-0000");
        assert!(!String::from_utf8_lossy(&body).contains("hec-token-0000"));
        for obj in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
            let obj = obj.unwrap();
            assert_eq!(obj["source"], "portcullis");
            assert_eq!(obj["sourcetype"], "portcullis:test");
            assert_eq!(obj["index"], "audit");
            assert_eq!(obj["host"], a.replica());
            let export = obj["event"].clone();
            let us = crate::parse_time(export["time"].as_str().unwrap()).unwrap();
            let time = obj["time"].as_f64().unwrap();
            assert!((time - us as f64 / 1e6).abs() < 1e-3, "{time} vs {us}");
            // The fraction is written out, not rounded through a float.
            let raw = String::from_utf8_lossy(&body).into_owned();
            let stamp = format!("\"time\":{}.{:06},", us / 1_000_000, us % 1_000_000);
            assert!(raw.contains(&stamp), "{stamp} not in {raw}");
            received.push(export);
        }
    }
    assert_exact(&received, &all_records(&a).await);
    set.shutdown(Duration::from_secs(5)).await;
}

fn check_syslog(m: &Syslog, app: &str) {
    let export = &m.json;
    assert_eq!(m.app, app);
    assert_eq!(m.sd_id, "portcullis@32473");
    assert_eq!(m.params["seq"], seq_of(export).to_string());
    assert_eq!(m.params["event_id"], export["event_id"].as_str().unwrap());
    assert_eq!(m.msgid, export["event_type"].as_str().unwrap());
    assert_eq!(m.timestamp, export["time"].as_str().unwrap());
    if export["event_type"] == "mcp.request" {
        assert_eq!(m.pri, 10 * 8 + 6, "authpriv.info");
        assert_eq!(m.params["user"], "alice \"the\" [admin]");
        assert_eq!(m.params["outcome"], "success");
        assert!(m.params["tool"].starts_with("read_"));
    } else {
        assert_eq!(m.pri, 10 * 8 + 5, "authpriv.notice");
    }
}

#[tokio::test]
async fn syslog_udp_sends_one_rfc5424_datagram_per_record_and_shortens_huge_ones() {
    let dir = temp_dir("udp");
    let a = open(&dir).await;
    let rx = Udp::start().await;
    let s = sink(
        "syslog-udp",
        SinkKind::Syslog {
            address: format!("udp://127.0.0.1:{}", rx.port),
            app_name: "pc-test".into(),
        },
    );
    let set = SinkSet::start(&a, &[s]).unwrap();
    record_calls(&a, 20, "udp").await;
    // A record far larger than a datagram (many short, unmasked arguments).
    let big: serde_json::Map<String, Value> = (0..800)
        .map(|i| (format!("field_{i:04}"), json!("some value of thirty bytes")))
        .collect();
    let mut e = AuditEvent::new("mcp.request");
    e.request = Some(Request {
        method: "tools/call".into(),
        arguments: Some(Value::Object(big)),
        ..Default::default()
    });
    let big_seq = a.record(e).await.unwrap();
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("every datagram arrived", || async {
        rx.messages().len() as i64 >= max
    })
    .await;
    let messages = rx.messages();
    assert_eq!(messages.len() as i64, max);
    let mut received = Vec::new();
    for msg in &messages {
        assert!(msg.len() <= syslog::MAX_DATAGRAM);
        assert_no_secret(msg);
        let m = parse_syslog(msg);
        if seq_of(&m.json) == big_seq {
            assert!(m.json["truncated"].as_str().unwrap().contains("exceeds"));
            assert_eq!(m.params["seq"], big_seq.to_string());
            continue;
        }
        check_syslog(&m, "pc-test");
        received.push(m.json);
    }
    let log: Vec<StoredRecord> = all_records(&a)
        .await
        .into_iter()
        .filter(|r| r.seq != big_seq)
        .collect();
    assert_exact(&received, &log);
    set.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn syslog_tcp_survives_a_receiver_that_is_down_then_restarts() {
    let dir = temp_dir("tcp");
    let a = open(&dir).await;
    let port = free_port();
    let s = sink(
        "syslog-tcp",
        SinkKind::Syslog {
            address: format!("tcp://127.0.0.1:{port}"),
            app_name: "portcullis".into(),
        },
    );
    let set = SinkSet::start(&a, &[s]).unwrap();
    record_calls(&a, 20, "tcp").await;
    wait_until("the sink failed twice", || async {
        status_of(&set).await.consecutive_failures >= 2
    })
    .await;
    assert_eq!(status_of(&set).await.cursor, 0);

    let messages = Arc::new(Mutex::new(Vec::new()));
    let rx = Tcp::start(port, messages.clone()).await;
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("every frame arrived", || async {
        messages.lock().unwrap().len() as i64 >= max && status_of(&set).await.cursor == max
    })
    .await;

    // The receiver goes away (closing its connections) and comes back.
    rx.stop().await;
    record_calls(&a, 10, "again").await;
    wait_until("the sink noticed", || async {
        status_of(&set).await.consecutive_failures >= 1
    })
    .await;
    let rx = Tcp::start(port, messages.clone()).await;
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("every later frame arrived", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    assert!(rx.garbage.lock().unwrap().is_empty());
    let received: Vec<Value> = messages
        .lock()
        .unwrap()
        .iter()
        .map(|msg| {
            assert_no_secret(msg);
            let m = parse_syslog(msg);
            check_syslog(&m, "portcullis");
            m.json
        })
        .collect();
    assert_exact(&received, &all_records(&a).await);
    set.shutdown(Duration::from_secs(5)).await;
    rx.stop().await;
}

#[tokio::test]
async fn an_overflowing_backlog_is_skipped_audited_and_the_sink_resumes() {
    let dir = temp_dir("overflow");
    let a = open(&dir).await;
    let splunk = Http::start(0, 503, "").await;
    let mut s = sink(
        "small",
        SinkKind::SplunkHec {
            endpoint: splunk.url("/services/collector/event"),
            token: "t".into(),
            index: None,
            sourcetype: None,
        },
    );
    s.max_backlog = 10;
    s.batch = 3;
    let set = SinkSet::start(&a, &[s]).unwrap();
    record_calls(&a, 40, "flood").await;
    let overflows = || async {
        all_records(&a)
            .await
            .into_iter()
            .filter(|r| r.event_type == "audit.sink_overflow")
            .collect::<Vec<_>>()
    };
    wait_until("the overflow is recorded and the sink skipped", || async {
        !overflows().await.is_empty() && status_of(&set).await.overflowed > 0
    })
    .await;
    assert!(splunk.accepted().is_empty());

    splunk.answer(200, r#"{"text":"Success","code":0}"#);
    wait_until("the sink caught up", || async {
        let max = a.db().unwrap().max_seq().await.unwrap();
        status_of(&set).await.cursor == max
    })
    .await;
    let mut skipped = std::collections::BTreeSet::new();
    for r in overflows().await {
        let d = &r.export()["detail"];
        assert_eq!(d["sink"], "small");
        let (from, through) = (
            d["skipped_from_seq"].as_i64().unwrap(),
            d["skipped_through_seq"].as_i64().unwrap(),
        );
        assert_eq!(d["skipped"].as_i64().unwrap(), through - from + 1);
        skipped.extend(from..=through);
    }
    let st = status_of(&set).await;
    assert_eq!(st.overflowed, skipped.len() as u64);
    let received: Vec<Value> = splunk
        .accepted()
        .iter()
        .flat_map(|(_, body)| {
            serde_json::Deserializer::from_slice(body)
                .into_iter::<Value>()
                .map(|o| o.unwrap()["event"].clone())
                .collect::<Vec<_>>()
        })
        .collect();
    // Everything but the skipped ranges, the overflow records included.
    let expected: Vec<StoredRecord> = all_records(&a)
        .await
        .into_iter()
        .filter(|r| !skipped.contains(&r.seq))
        .collect();
    assert!(expected
        .iter()
        .any(|r| r.event_type == "audit.sink_overflow"));
    assert_exact(&received, &expected);
    // The log itself lost nothing.
    assert_eq!(
        all_records(&a).await.len() as i64,
        a.db().unwrap().max_seq().await.unwrap()
    );
    set.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn records_pruned_before_a_sink_existed_are_not_an_overflow() {
    let dir = temp_dir("pruned");
    let a = open(&dir).await;
    record_calls(&a, 30, "old").await;
    let db = a.db().unwrap().clone();
    let report = crate::prune(&db, &a, crate::now_us() + 1, &dir.join("archive"), &[])
        .await
        .unwrap();
    assert!(report.pruned >= 30);
    let path = dir.join("new.jsonl");
    let mut s = sink("new", SinkKind::File { path: path.clone() });
    s.max_backlog = 5;
    let set = SinkSet::start(&a, &[s]).unwrap();
    let max = db.max_seq().await.unwrap();
    wait_until("the new sink delivered what is kept", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kept = all_records(&a).await;
    assert!(kept.len() < 5 && kept.iter().all(|r| r.event_type != "audit.sink_overflow"));
    assert_exact(&lines, &kept);
    assert_eq!(status_of(&set).await.overflowed, 0);
    set.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_is_bounded_and_a_restart_resumes_from_the_stored_cursor() {
    let dir = temp_dir("restart");
    let a = open(&dir).await;
    let path = dir.join("audit.jsonl");
    let dead = sink(
        "dead",
        SinkKind::Syslog {
            address: format!("tcp://127.0.0.1:{}", free_port()),
            app_name: "portcullis".into(),
        },
    );
    let file = sink("file", SinkKind::File { path: path.clone() });
    let set = SinkSet::start(&a, &[file.clone(), dead.clone()]).unwrap();
    record_calls(&a, 10, "before").await;
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("the file sink delivered", || async {
        set.status().await[0].cursor == max
    })
    .await;
    let monitor = set.monitor();
    assert!(monitor.status_now().iter().all(|s| s.running));
    // A dead receiver does not hold shutdown up beyond its grace.
    tokio::time::timeout(DEADLINE, set.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown ends");
    let after = monitor.status_now();
    assert!(after.iter().all(|s| !s.running), "{after:?}");
    assert_eq!(after[0].cursor, max);
    assert!(after[1].last_error.is_some());
    assert_eq!(a.db().unwrap().cursor("dead").await.unwrap(), None);

    record_calls(&a, 10, "between").await;
    let set = SinkSet::start(&a, &[file]).unwrap();
    let max = a.db().unwrap().max_seq().await.unwrap();
    wait_until("the restarted sink caught up", || async {
        status_of(&set).await.cursor == max
    })
    .await;
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_exact(&lines, &all_records(&a).await);
    let stored = stored_status(a.db().unwrap(), &[dead]).await.unwrap();
    assert_eq!((stored[0].cursor, stored[0].backlog), (0, max));
    set.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn validation_names_each_problem_without_secrets() {
    let good = vec![
        sink(
            "f",
            SinkKind::File {
                path: "/var/log/pc.jsonl".into(),
            },
        ),
        sink(
            "o",
            SinkKind::Otlp {
                endpoint: "https://collector:4318/v1/logs".into(),
                headers: BTreeMap::new(),
            },
        ),
        sink(
            "h",
            SinkKind::SplunkHec {
                endpoint: "https://splunk:8088/services/collector/event".into(),
                token: "tok".into(),
                index: None,
                sourcetype: None,
            },
        ),
        sink(
            "u",
            SinkKind::Syslog {
                address: "udp://[::1]:514".into(),
                app_name: "portcullis".into(),
            },
        ),
        sink(
            "t",
            SinkKind::Syslog {
                address: "tcp://siem.example:601".into(),
                app_name: "portcullis".into(),
            },
        ),
    ];
    assert_eq!(validate_sinks(&good), Ok(()));

    let mut bad = good.clone();
    bad[1].name = "f".into();
    bad[0].batch = 0;
    bad[2].backoff_min_ms = 5_000;
    bad[2].backoff_max_ms = 100;
    bad[3].kind = SinkKind::Syslog {
        address: "syslog.example:514".into(),
        app_name: "has space".into(),
    };
    bad[4].kind = SinkKind::SplunkHec {
        endpoint: "ftp://x/".into(),
        token: "secret\ntoken".into(),
        index: None,
        sourcetype: None,
    };
    bad.push(sink(
        "o2",
        SinkKind::Otlp {
            endpoint: "http://c/v1/logs".into(),
            headers: BTreeMap::from([("x-key".into(), "val\nue-secret".into())]),
        },
    ));
    let err = validate_sinks(&bad).unwrap_err();
    for needle in [
        "used by another sink",
        "batch",
        "backoff_min_ms",
        "udp:// or tcp://",
        "app_name",
        "http:// or https://",
        "token contains",
        "\"x-key\"",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
    assert!(!err.contains("secret"), "{err}");
    assert!(SinkSet::start(&Auditor::disabled(), &bad).is_err());
}

#[test]
fn formats_escape_and_shorten() {
    assert_eq!(syslog::param_value(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
    assert_eq!(syslog::printable("tool call é", 8), "tool_cal");
    assert_eq!(syslog::printable("", 8), "-");
    assert_eq!(
        redact_url("https://user:pw@splunk.example:8088/services/collector/event?token=x#f"),
        "https://splunk.example:8088/services/collector/event"
    );
    for failures in 1..40 {
        let d = backoff(failures, 200, 30_000);
        assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(30_000));
    }
    assert_eq!(backoff(1, 200, 30_000), Duration::from_millis(200));
    let rec = |event_type: &str, outcome: Option<&str>| StoredRecord {
        seq: 1,
        event_id: String::new(),
        time_us: 0,
        event_type: event_type.into(),
        replica: String::new(),
        username: None,
        virtual_server: None,
        upstream: None,
        tool: None,
        method: None,
        outcome: outcome.map(str::to_owned),
        body: "{}".into(),
        prev_hash: String::new(),
        hash: String::new(),
    };
    assert_eq!(level(&rec("mcp.request", Some("success"))), Level::Info);
    assert_eq!(level(&rec("mcp.request", Some("denied"))), Level::Warning);
    assert_eq!(
        level(&rec("mcp.request", Some("tool_error"))),
        Level::Notice
    );
    assert_eq!(level(&rec("auth.login_failed", None)), Level::Warning);
    assert_eq!(level(&rec("token.issued", None)), Level::Notice);
}

#[tokio::test]
async fn a_disabled_audit_log_starts_no_sinks() {
    let set = SinkSet::start(
        &Auditor::disabled(),
        &[sink(
            "f",
            SinkKind::File {
                path: "/nonexistent/x".into(),
            },
        )],
    )
    .unwrap();
    assert!(set.is_empty());
    assert!(set.status().await.is_empty());
    set.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn the_documented_example_parses_and_validates() {
    let doc = include_str!("../../../../docs/audit.md");
    let section = &doc[doc.find("## SIEM export").unwrap()..];
    let start = section.find("```yaml\n").unwrap() + "```yaml\n".len();
    let yaml = &section[start..start + section[start..].find("```").unwrap()];
    std::env::set_var("OTEL_TOKEN", "otel-token");
    std::env::set_var("SPLUNK_HEC_TOKEN", "hec-token");
    let config = portcullis_config::Config::from_yaml(yaml, "docs/audit.md").unwrap();
    let sinks = &config.audit.sinks;
    let kinds: Vec<&str> = sinks.iter().map(|s| kind_name(&s.kind)).collect();
    assert_eq!(kinds, ["file", "otlp", "splunk_hec", "syslog"]);
    assert_eq!(validate_sinks(sinks), Ok(()));
    assert!(matches!(&sinks[2].kind, SinkKind::SplunkHec { token, .. } if token == "hec-token"));
}
