//! Limits driven with explicit clocks: no sleeping, no wall-clock dependence.

use super::*;

/// 2026-03-02 00:00:00 UTC.
const DAY0: i64 = 1_772_409_600;

fn rule(yaml: &str) -> RateLimit {
    serde_yaml::from_str(yaml).expect("a valid rate limit")
}

fn limiter(rules: &[&str]) -> RateLimiter {
    RateLimiter::new(&rules.iter().map(|r| rule(r)).collect::<Vec<_>>())
}

fn groups(g: &[&str]) -> Vec<String> {
    g.iter().map(|s| s.to_string()).collect()
}

fn call<'a>(user: &'a str, groups: &'a [String], vs: &'a str, tool: &'a str) -> LimitedCall<'a> {
    LimitedCall {
        user_id: user,
        username: user,
        groups,
        virtual_server: vs,
        tool,
    }
}

/// Admit `n` calls at the same instant; how many got through.
fn burst(l: &RateLimiter, c: &LimitedCall, n: usize, mono: f64) -> usize {
    (0..n).filter(|_| l.admit_at(c, DAY0, mono).is_ok()).count()
}

#[test]
fn burst_then_refusal_with_retry_after() {
    let l = limiter(&["{name: per-user, per: user, requests_per_minute: 6, burst: 2}"]);
    let none = groups(&[]);
    let alice = call("alice", &none, "eng", "t");
    assert_eq!(burst(&l, &alice, 2, 0.0), 2);
    let r = l.admit_at(&alice, DAY0, 0.0).expect_err("bucket empty");
    assert_eq!(r.kind, RefusalKind::Rate);
    assert_eq!(r.limit, "per-user");
    // 6 per minute is one token per 10 s.
    assert_eq!(r.retry_after_secs, 10);
    assert_eq!(
        r.message,
        "rate limit \"per-user\" exceeded for user alice: 6 calls per minute (bursts of 2); retry in 10 s"
    );
    assert_eq!(
        l.admit_at(&alice, DAY0, 4.5)
            .expect_err("still empty")
            .retry_after_secs,
        6
    );
    // Another user has a bucket of their own.
    assert_eq!(burst(&l, &call("bob", &none, "eng", "t"), 3, 0.0), 2);
}

#[test]
fn buckets_refill_with_sub_second_precision() {
    let l = limiter(&["{name: fast, per: user, requests_per_minute: 120, burst: 1}"]);
    let none = groups(&[]);
    let c = call("alice", &none, "eng", "t");
    assert!(l.admit_at(&c, DAY0, 0.0).is_ok());
    assert!(l.admit_at(&c, DAY0, 0.4).is_err());
    assert!(
        l.admit_at(&c, DAY0, 0.5).is_ok(),
        "2 per second: one token after 0.5 s"
    );
    let l = limiter(&["{name: slow, per: user, requests_per_minute: 10}"]);
    assert_eq!(
        burst(&l, &c, 20, 0.0),
        10,
        "burst defaults to the per-minute rate"
    );
    assert!(l.admit_at(&c, DAY0, 5.9).is_err());
    assert!(
        l.admit_at(&c, DAY0, 6.0).is_ok(),
        "6 s at 10/min is a whole token"
    );
    assert_eq!(burst(&l, &c, 20, 600.0), 10, "never more than the burst");
}

#[test]
fn refused_calls_consume_nothing() {
    let l = limiter(&[
        "{name: per-user, per: user, requests_per_minute: 60, burst: 5}",
        "{name: deploys, per: tool, tool: deploy, requests_per_minute: 1, burst: 1}",
        "{name: daily, per: user, daily_quota: 7}",
    ]);
    let none = groups(&[]);
    let deploy = call("alice", &none, "eng", "deploy");
    assert!(l.admit_at(&deploy, DAY0, 0.0).is_ok());
    for _ in 0..10 {
        let r = l
            .admit_at(&deploy, DAY0, 0.0)
            .expect_err("one deploy per minute");
        assert_eq!(r.limit, "deploys");
    }
    // The ten refused deploys took nothing from alice's own bucket.
    let other = call("alice", &none, "eng", "search");
    assert_eq!(burst(&l, &other, 10, 0.0), 4);
    // Nor from her quota: 5 admitted so far, 2 left, refusals included.
    assert_eq!(burst(&l, &other, 10, 60.0), 2);
    assert_eq!(
        l.admit_at(&other, DAY0, 60.0).expect_err("quota").kind,
        RefusalKind::Quota
    );
}

#[test]
fn a_caller_in_two_groups_counts_against_both() {
    let l = limiter(&["{name: teams, per: group, requests_per_minute: 60, burst: 2}"]);
    let (both, dev, ops, qa) = (
        groups(&["dev", "ops", "dev"]),
        groups(&["dev"]),
        groups(&["ops"]),
        groups(&["qa"]),
    );
    assert_eq!(burst(&l, &call("alice", &both, "eng", "t"), 5, 0.0), 2);
    let r = l
        .admit_at(&call("bob", &dev, "eng", "t"), DAY0, 0.0)
        .expect_err("dev used up");
    assert!(r.message.contains("for group dev:"), "{}", r.message);
    assert!(l
        .admit_at(&call("carol", &ops, "eng", "t"), DAY0, 0.0)
        .is_err());
    assert!(l
        .admit_at(&call("dave", &qa, "eng", "t"), DAY0, 0.0)
        .is_ok());
    let none = groups(&[]);
    assert_eq!(
        burst(&l, &call("eve", &none, "eng", "t"), 5, 0.0),
        5,
        "no group, no bucket"
    );

    // With a group filter only that group's bucket counts.
    let l = limiter(&["{name: ops, per: group, group: ops, requests_per_minute: 60, burst: 2}"]);
    assert_eq!(burst(&l, &call("alice", &both, "eng", "t"), 5, 0.0), 2);
    assert_eq!(burst(&l, &call("bob", &dev, "eng", "t"), 5, 0.0), 5);
    assert!(l
        .admit_at(&call("carol", &ops, "eng", "t"), DAY0, 0.0)
        .is_err());
}

#[test]
fn filters_choose_the_calls_a_limit_counts() {
    let l = limiter(&[
        "{name: eng-deploy, per: virtual_server, virtual_server: eng, tool: deploy, requests_per_minute: 1}",
        "{name: contractors, per: user, group: contractors, requests_per_minute: 1}",
    ]);
    let (none, ext) = (groups(&[]), groups(&["contractors"]));
    assert_eq!(burst(&l, &call("alice", &none, "eng", "deploy"), 3, 0.0), 1);
    let r = l
        .admit_at(&call("bob", &none, "eng", "deploy"), DAY0, 0.0)
        .expect_err("shared");
    assert!(
        r.message.contains("for virtual server eng:"),
        "{}",
        r.message
    );
    assert_eq!(
        burst(&l, &call("alice", &none, "ops", "deploy"), 3, 0.0),
        3,
        "other server"
    );
    assert_eq!(
        burst(&l, &call("alice", &none, "eng", "search"), 3, 0.0),
        3,
        "other tool"
    );
    assert_eq!(
        burst(&l, &call("x", &ext, "ops", "search"), 3, 0.0),
        1,
        "in the group"
    );
}

#[test]
fn daily_quotas_reset_at_utc_midnight() {
    let l = limiter(&[
        "{name: contractors-daily, per: group, daily_quota: 2}",
        "{name: closed, per: tool, tool: off, daily_quota: 0}",
    ]);
    let g = groups(&["contractors"]);
    let c = call("alice", &g, "eng", "t");
    let late = DAY0 + SECS_PER_DAY - 60 * 60 * 5 - 60 * 12;
    assert!(l.admit_at(&c, late, 0.0).is_ok());
    assert!(l.admit_at(&c, late + 1, 0.0).is_ok());
    let r = l.admit_at(&c, late, 0.0).expect_err("quota used up");
    assert_eq!(r.kind, RefusalKind::Quota);
    assert_eq!(r.retry_after_secs, 5 * 3600 + 12 * 60);
    assert_eq!(
        r.message,
        "daily quota \"contractors-daily\" exhausted for group contractors: 2 calls per day; resets in 5 h 12 min"
    );
    let r = l
        .admit_at(&c, DAY0 + SECS_PER_DAY - 1, 0.0)
        .expect_err("one second left");
    assert_eq!(
        (r.retry_after_secs, human(r.retry_after_secs).as_str()),
        (1, "1 s")
    );
    assert!(
        l.admit_at(&c, DAY0 + SECS_PER_DAY, 0.0).is_ok(),
        "a new day"
    );
    let r = l
        .admit_at(&call("a", &g, "eng", "off"), DAY0, 0.0)
        .expect_err("quota 0");
    assert_eq!(r.limit, "closed");
}

#[test]
fn usage_is_counted_per_team_and_day() {
    let l = limiter(&["{name: u, per: user, requests_per_minute: 60, burst: 1}"]);
    let (two, none) = (groups(&["dev", "ops"]), groups(&[]));
    let alice = call("alice", &two, "eng", "search");
    assert!(l.admit_at(&alice, DAY0, 0.0).is_ok());
    assert!(l.admit_at(&alice, DAY0, 0.0).is_err());
    let bob = call("bob", &none, "eng", "search");
    assert!(l.admit_at(&bob, DAY0 + SECS_PER_DAY, 0.0).is_ok());
    let row = |day: &str, team: &str, user: &str, calls, refused| UsageRow {
        day: day.into(),
        team: team.into(),
        user: user.into(),
        virtual_server: "eng".into(),
        tool: "search".into(),
        calls,
        refused,
    };
    assert_eq!(
        l.usage(None),
        vec![
            row("2026-03-02", "dev", "alice", 1, 1),
            row("2026-03-02", "ops", "alice", 1, 1),
            row("2026-03-03", "-", "bob", 1, 0),
        ]
    );
    assert_eq!(l.usage(Some("2026-03-03")).len(), 1);
    let (usage, quota) = l.take_deltas();
    assert_eq!((usage.len(), quota.len()), (3, 0));
    assert!(l.usage(None).is_empty(), "taken");
}

#[test]
fn quota_counters_are_taken_and_restored() {
    let rules = ["{name: daily, per: user, daily_quota: 3}"];
    let l = limiter(&rules);
    let none = groups(&[]);
    let c = call("u1", &none, "eng", "t");
    assert_eq!(burst(&l, &c, 2, 0.0), 2);
    let (_, quota) = l.take_deltas();
    let used = |n| QuotaUse {
        day: "2026-03-02".into(),
        limit: "daily".into(),
        bucket: "u1".into(),
        used: n,
    };
    assert_eq!(quota, vec![used(2)]);

    // A restarted limiter picks the day's count up, plus what it counted since.
    let l = limiter(&rules);
    assert!(l.admit_at(&c, DAY0, 0.0).is_ok());
    l.restore_quota(DAY0 / SECS_PER_DAY, &[used(2)]);
    assert!(l.admit_at(&c, DAY0, 0.0).is_err());
    // Yesterday's counts are not today's.
    let l = limiter(&rules);
    l.restore_quota(DAY0 / SECS_PER_DAY - 1, &[used(3)]);
    assert_eq!(burst(&l, &c, 5, 0.0), 3);
}

#[test]
fn idle_full_buckets_are_swept() {
    let l = limiter(&["{name: u, per: user, requests_per_minute: 60, burst: 2}"]);
    let none = groups(&[]);
    let users: Vec<String> = (0..SWEEP_EVERY).map(|i| format!("u{i}")).collect();
    for u in &users {
        assert!(l.admit_at(&call(u, &none, "eng", "t"), DAY0, 0.0).is_ok());
    }
    // The sweep ran at the last call: none of the buckets had refilled.
    assert_eq!(l.lock().buckets[0].len(), users.len());
    let busy = call("busy", &none, "eng", "t");
    assert_eq!(burst(&l, &busy, SWEEP_EVERY as usize, 1000.0), 2);
    assert_eq!(
        l.lock().buckets[0].len(),
        1,
        "only the busy caller's bucket is kept"
    );
}

#[test]
fn labels_and_durations() {
    assert_eq!(day_label(0), "1970-01-01");
    assert_eq!(day_label(1_700_000_000 / SECS_PER_DAY), "2023-11-14");
    assert_eq!(day_label(DAY0 / SECS_PER_DAY), "2026-03-02");
    assert_eq!(human(4), "4 s");
    assert_eq!(human(125), "2 min 5 s");
    assert_eq!(human(3600), "1 h");
    assert_eq!(human(18_720), "5 h 12 min");
}

#[tokio::test]
async fn flush_and_restore_through_the_store() {
    let dir = std::env::temp_dir().join(format!("pc-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).await.expect("store");
    let rules = ["{name: daily, per: user, daily_quota: 3}"];
    let none = groups(&[]);
    let c = call("u1", &none, "eng", "t");
    let l = limiter(&rules);
    assert_eq!(burst(&l, &c, 2, 0.0), 2);
    l.flush(&store).await.expect("flush");
    assert!(l.usage(None).is_empty());
    assert_eq!(burst(&l, &c, 2, 0.0), 1);
    let report = l
        .usage_report(&store, Some("2026-03-02"))
        .await
        .expect("report");
    assert_eq!(
        (report.len(), report[0].calls, report[0].refused),
        (1, 3, 1)
    );

    let restarted = limiter(&rules);
    restarted.restore(&store, DAY0 + 10).await.expect("restore");
    assert!(
        restarted.admit_at(&c, DAY0 + 10, 0.0).is_err(),
        "3 of 3 used before the restart"
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
