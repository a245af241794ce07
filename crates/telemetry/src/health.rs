//! Readiness: named checks that `/readyz` runs (each within a deadline);
//! the gateway is ready when it has started and every check passes.

use serde_json::{json, Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A check's answer: `Err` says what is wrong.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Longest one check may take before it counts as failed.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Readiness {
    started: AtomicBool,
    checks: RwLock<Vec<(String, Check)>>,
}

impl Readiness {
    /// The listener is bound and the gateway serves.
    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Relaxed);
    }

    /// Add an asynchronous check (e.g. a store round trip).
    pub fn add_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> CheckFuture + Send + Sync + 'static,
    ) {
        self.checks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), Arc::new(check)));
    }

    /// Add a check that only reads state (e.g. `Auditor::healthy`).
    pub fn add_sync_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let check = Arc::new(check);
        self.add_check(name, move || {
            let r = check();
            Box::pin(async move { r })
        });
    }

    /// Run every check concurrently: (ready, JSON report).
    pub async fn check(&self) -> (bool, Value) {
        let checks: Vec<(String, Check)> = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let started = self.started.load(Ordering::Relaxed);
        let runs = checks.iter().map(|(name, c)| {
            let fut = c();
            async move {
                let r = match tokio::time::timeout(CHECK_DEADLINE, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {CHECK_DEADLINE:?}")),
                };
                (name.clone(), r)
            }
        });
        let results = futures_util::future::join_all(runs).await;
        let mut ready = started;
        let mut report = Map::new();
        report.insert(
            "started".into(),
            Value::from(if started { "ok" } else { "starting" }),
        );
        for (name, r) in results {
            let v = match r {
                Ok(()) => "ok".to_owned(),
                Err(why) => {
                    ready = false;
                    why
                }
            };
            report.insert(name, Value::from(v));
        }
        (ready, json!({"ready": ready, "checks": report}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_started_and_every_check_passes() {
        let r = Readiness::default();
        let (ready, body) = r.check().await;
        assert!(!ready);
        assert_eq!(body["checks"]["started"], "starting");
        r.set_started(true);
        let flag = Arc::new(AtomicBool::new(true));
        let f2 = flag.clone();
        r.add_sync_check("audit", move || {
            if f2.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("audit writer failing".into())
            }
        });
        r.add_check("store", || Box::pin(async { Ok(()) }));
        let (ready, body) = r.check().await;
        assert!(ready, "{body}");
        assert_eq!(body["checks"]["store"], "ok");
        flag.store(false, Ordering::Relaxed);
        let (ready, body) = r.check().await;
        assert!(!ready);
        assert_eq!(body["checks"]["audit"], "audit writer failing");
        assert_eq!(body["ready"], false);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_fails_at_the_deadline() {
        let r = Readiness::default();
        r.set_started(true);
        r.add_check("stuck", || Box::pin(std::future::pending()));
        let (ready, body) = r.check().await;
        assert!(!ready);
        assert!(body["checks"]["stuck"]
            .as_str()
            .unwrap_or("")
            .contains("no answer"));
    }
}
