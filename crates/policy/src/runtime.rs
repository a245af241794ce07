//! The policy state a running gateway holds: the engine, where its policies
//! come from (a directory and documents stored through the admin API), the
//! reload loop, rate limits and the approval queue.

use crate::approvals::Approvals;
use crate::engine::{Compiled, PolicyEngine, PolicyError};
use crate::limits::RateLimiter;
use crate::source::{read_dir, PolicySource, SourceError};
use portcullis_config::{Config, DenyMode};
use portcullis_store::Store;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

pub struct PolicyRuntime {
    pub engine: PolicyEngine,
    pub limits: RateLimiter,
    pub approvals: Approvals,
    pub on_deny: DenyMode,
    dir: Option<PathBuf>,
    store: Store,
    reload_interval: Duration,
    /// What the installed set was built from, to skip reloads when nothing changed.
    fingerprint: Mutex<Option<Fingerprint>>,
    /// Why the newest sources were refused, while the previous set stays in force.
    last_error: Mutex<Option<Vec<SourceError>>>,
    /// Told about every change the reload loop finds (the audit log).
    observer: OnceLock<ChangeObserver>,
}

/// A change of the installed policy set found by the reload loop (a file
/// edited under `policy.dir`, a document stored by the CLI or another
/// replica), applied or refused.
#[derive(Debug, Clone)]
pub struct PolicyChange {
    /// The version now in force (the new one when applied, the kept one when refused).
    pub version: u64,
    /// Whether the new sources were installed.
    pub applied: bool,
    /// Number of policies in force.
    pub policies: usize,
    /// What the set was (or would have been) built from.
    pub sources: Vec<PolicySource>,
    /// Why the sources were refused (empty when applied).
    pub errors: Vec<SourceError>,
}

type ChangeObserver = Box<dyn Fn(&PolicyChange) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    files: Vec<(String, u64, Option<SystemTime>)>,
    stored_revision: i64,
}

/// How often usage and quota counters reach the store (and other replicas).
const USAGE_FLUSH: Duration = Duration::from_secs(5);

/// The stored documents' origin prefix, so errors say where a policy lives.
pub const STORED_PREFIX: &str = "api:";

impl PolicyRuntime {
    /// Load the policies once; invalid policies at start are an error (there
    /// is no previous set to keep).
    pub async fn open(config: &Config, store: Store) -> Result<Arc<PolicyRuntime>, PolicyError> {
        let rt = Arc::new(PolicyRuntime {
            engine: PolicyEngine::new(config)?,
            limits: RateLimiter::new(&config.policy.rate_limits),
            approvals: Approvals::default(),
            on_deny: config.policy.on_deny,
            dir: config.policy.dir.clone(),
            store,
            reload_interval: Duration::from_millis(config.policy.reload_interval_ms),
            fingerprint: Mutex::new(None),
            last_error: Mutex::new(None),
            observer: OnceLock::new(),
        });
        rt.reload().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Err(e) = rt.limits.restore(&rt.store, now).await {
            // Quotas then start from zero today; calls are not refused for it.
            tracing::error!(error = %e, "could not restore today's quota counters");
        }
        Ok(rt)
    }

    /// Write usage and quota counters not yet in the store.
    pub async fn flush_usage(&self) {
        if let Err(e) = self.limits.flush(&self.store).await {
            tracing::warn!(error = %e, "could not flush usage counters; they are kept for the next flush");
        }
    }

    /// Every source: the directory's files, then stored documents. With
    /// neither configured, the built-in allow-all applies.
    pub async fn sources(&self) -> Result<Vec<PolicySource>, PolicyError> {
        let mut out = Vec::new();
        if let Some(dir) = &self.dir {
            out = read_dir(dir).map_err(|e| {
                PolicyError::Config(format!("reading policies in {}: {e}", dir.display()))
            })?;
        }
        let stored = self
            .store
            .list_policies()
            .await
            .map_err(|e| PolicyError::Config(format!("reading stored policies: {e}")))?;
        out.extend(stored.into_iter().map(|p| PolicySource {
            origin: format!("{STORED_PREFIX}{}", p.name),
            text: p.text,
        }));
        if self.dir.is_none() && out.is_empty() {
            out.push(PolicySource {
                origin: "builtin".into(),
                text: crate::BUILTIN_ALLOW_ALL.into(),
            });
        }
        Ok(out)
    }

    /// Sources as they would be with one stored document replaced (or removed
    /// with `None`), for validating an admin change before storing it.
    pub async fn sources_with(
        &self,
        name: &str,
        text: Option<&str>,
    ) -> Result<Vec<PolicySource>, PolicyError> {
        let origin = format!("{STORED_PREFIX}{name}");
        let mut sources: Vec<PolicySource> = self
            .sources()
            .await?
            .into_iter()
            .filter(|s| s.origin != origin && s.origin != "builtin")
            .collect();
        if let Some(text) = text {
            sources.push(PolicySource {
                origin,
                text: text.to_owned(),
            });
        }
        if self.dir.is_none() && sources.is_empty() {
            sources.push(PolicySource {
                origin: "builtin".into(),
                text: crate::BUILTIN_ALLOW_ALL.into(),
            });
        }
        Ok(sources)
    }

    /// Be told about every change the reload loop (`spawn_watcher`) finds,
    /// applied or refused; set once, at start. Changes made through
    /// [`PolicyRuntime::reload_now`] are the caller's to report.
    pub fn on_change(&self, f: impl Fn(&PolicyChange) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(f));
    }

    /// Reload if the sources changed. `Ok(None)`: nothing changed. On invalid
    /// sources the current set stays installed and the errors are returned.
    pub async fn reload(&self) -> Result<Option<Arc<Compiled>>, PolicyError> {
        self.reload_observed(false).await
    }

    async fn reload_observed(&self, observed: bool) -> Result<Option<Arc<Compiled>>, PolicyError> {
        let fp = self.fingerprint().await?;
        if self.lock_fp().as_ref() == Some(&fp) {
            return Ok(None);
        }
        let sources = self.sources().await?;
        let result = self.engine.load(&sources);
        *self.lock_fp() = Some(fp);
        match result {
            Ok(compiled) => {
                *self.lock_err() = None;
                let builtin = sources.iter().any(|s| s.origin == "builtin");
                if builtin {
                    tracing::warn!("no policies configured: the built-in policy permits every authenticated caller; set policy.dir");
                } else if compiled.policies().is_empty() {
                    tracing::warn!("the policy set is empty: every call is denied");
                }
                tracing::info!(
                    version = compiled.version,
                    policies = compiled.policies().len(),
                    "policies loaded"
                );
                if observed {
                    self.tell(PolicyChange {
                        version: compiled.version,
                        applied: true,
                        policies: compiled.policies().len(),
                        sources,
                        errors: Vec::new(),
                    });
                }
                Ok(Some(compiled))
            }
            Err(e) => {
                if let PolicyError::Invalid(errors) = &e {
                    *self.lock_err() = Some(errors.clone());
                    if observed {
                        let current = self.engine.current();
                        self.tell(PolicyChange {
                            version: current.version,
                            applied: false,
                            policies: current.policies().len(),
                            sources,
                            errors: errors.clone(),
                        });
                    }
                }
                tracing::error!(error = %e, "policies rejected; the previous set stays in force");
                Err(e)
            }
        }
    }

    fn tell(&self, change: PolicyChange) {
        if let Some(f) = self.observer.get() {
            f(&change);
        }
    }

    /// Why the newest sources were refused, if they were.
    pub fn last_error(&self) -> Option<Vec<SourceError>> {
        self.lock_err().clone()
    }

    /// Check the directory and the store every `policy.reload_interval_ms`,
    /// and flush usage counters every few seconds.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let flusher = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(USAGE_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(rt) = flusher.upgrade() else { return };
                rt.flush_usage().await;
            }
        });
        let rt = Arc::downgrade(self);
        let every = self.reload_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(rt) = rt.upgrade() else { return };
                // Errors are logged by reload and kept for the admin API.
                let _ = rt.reload_observed(true).await;
            }
        });
    }

    async fn fingerprint(&self) -> Result<Fingerprint, PolicyError> {
        let mut files = Vec::new();
        if let Some(dir) = &self.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                PolicyError::Config(format!("reading policies in {}: {e}", dir.display()))
            })?;
            for e in entries.filter_map(Result::ok) {
                let path = e.path();
                if path.extension().is_none_or(|x| x != "cedar") {
                    continue;
                }
                let meta = e.metadata().ok();
                files.push((
                    path.display().to_string(),
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.and_then(|m| m.modified().ok()),
                ));
            }
            files.sort();
        }
        let stored_revision = self
            .store
            .policy_revision()
            .await
            .map_err(|e| PolicyError::Config(format!("reading the policy revision: {e}")))?;
        Ok(Fingerprint {
            files,
            stored_revision,
        })
    }

    /// Forget the fingerprint so the next reload reads everything (after an
    /// admin change, which must apply before the API answers).
    pub async fn reload_now(&self) -> Result<Option<Arc<Compiled>>, PolicyError> {
        *self.lock_fp() = None;
        self.reload().await
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock_fp(&self) -> std::sync::MutexGuard<'_, Option<Fingerprint>> {
        self.fingerprint.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_err(&self) -> std::sync::MutexGuard<'_, Option<Vec<SourceError>>> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }
}
