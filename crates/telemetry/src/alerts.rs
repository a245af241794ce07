//! Alerts: every `interval_secs` the evaluator reads the cumulative call
//! counters, takes the difference with the previous reading (one window),
//! and applies three rules:
//!
//! - `denial_spike` per virtual server and upstream: denials in the window
//!   reach `threshold` and `factor` times the usual number per window;
//! - `error_rate` per upstream: errors over calls reach `threshold`, judged
//!   only on windows with at least `min_calls` calls;
//! - `latency_drift` per upstream: the window's mean latency reaches `factor`
//!   times the upstream's usual mean, once `warmup_windows` windows of at
//!   least `min_calls` calls have set it.
//!
//! "Usual" is an exponentially weighted average of past windows that moves
//! slowly (and slower still while the alert fires, so a lasting change is
//! eventually accepted). An alert is reported when it starts firing and when
//! it clears: logged at warn under `portcullis::alert` and, with a webhook,
//! POSTed as JSON by a delivery task that retries with backoff and never
//! blocks the evaluator or the data plane.

use crate::metrics::Metrics;
use portcullis_config::Alerts;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Averaging weight of a new window, and while the alert fires.
const ALPHA: f64 = 0.2;
const ALPHA_FIRING: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    DenialSpike,
    ErrorRate,
    LatencyDrift,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::DenialSpike => "denial_spike",
            Rule::ErrorRate => "error_rate",
            Rule::LatencyDrift => "latency_drift",
        }
    }
}

/// Cumulative counters at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Per upstream: calls that reached it, errors among them, and the sum of
    /// their latencies in microseconds.
    pub upstreams: BTreeMap<String, UpstreamCounts>,
    /// Per (virtual server, upstream or empty): denials.
    pub denials: BTreeMap<(String, String), u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpstreamCounts {
    pub calls: u64,
    pub errors: u64,
    pub latency_us: u64,
}

impl Counters {
    /// Read the metrics.
    pub fn read(metrics: &Metrics) -> Counters {
        let mut c = Counters::default();
        for t in metrics.call_totals() {
            let [vs, up, _, _] = &t.labels;
            if t.denied > 0 {
                *c.denials
                    .entry((vs.to_string(), up.to_string()))
                    .or_default() += t.denied;
            }
            if !up.is_empty() && t.served > 0 {
                let u = c.upstreams.entry(up.to_string()).or_default();
                u.calls += t.served;
                u.errors += t.errors;
                u.latency_us += t.served_latency_us;
            }
        }
        c
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let upstreams = self
            .upstreams
            .iter()
            .map(|(k, now)| {
                let before = earlier.upstreams.get(k).copied().unwrap_or_default();
                let d = UpstreamCounts {
                    calls: now.calls.saturating_sub(before.calls),
                    errors: now.errors.saturating_sub(before.errors),
                    latency_us: now.latency_us.saturating_sub(before.latency_us),
                };
                (k.clone(), d)
            })
            .collect();
        let denials = self
            .denials
            .iter()
            .map(|(k, n)| {
                let before = earlier.denials.get(k).copied().unwrap_or(0);
                (k.clone(), n.saturating_sub(before))
            })
            .collect();
        Counters { upstreams, denials }
    }
}

/// An alert starting (`firing`) or clearing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub rule: Rule,
    pub firing: bool,
    pub virtual_server: Option<String>,
    pub upstream: Option<String>,
    /// Denials, error ratio or mean latency (seconds) of the window.
    pub value: f64,
    pub threshold: f64,
    pub baseline: Option<f64>,
    /// Calls in the window (denials for `denial_spike`).
    pub count: u64,
    pub window_secs: u64,
    /// Unix seconds.
    pub at: u64,
}

impl AlertEvent {
    pub fn state(&self) -> &'static str {
        if self.firing {
            "firing"
        } else {
            "resolved"
        }
    }

    /// One line for people (also the webhook's `text`, which chat webhooks show).
    pub fn summary(&self) -> String {
        let place = match (&self.virtual_server, &self.upstream) {
            (Some(vs), Some(up)) => format!("virtual server {vs}, upstream {up}"),
            (Some(vs), None) => format!("virtual server {vs}"),
            (None, Some(up)) => format!("upstream {up}"),
            (None, None) => "the gateway".into(),
        };
        let what = match self.rule {
            Rule::DenialSpike => format!(
                "{} denials in {} s (threshold {:.0})",
                self.value, self.window_secs, self.threshold
            ),
            Rule::ErrorRate => format!(
                "error rate {:.1}% of {} calls in {} s (threshold {:.1}%)",
                self.value * 100.0,
                self.count,
                self.window_secs,
                self.threshold * 100.0
            ),
            Rule::LatencyDrift => format!(
                "mean latency {:.1} ms over {} calls (threshold {:.1} ms, usual {:.1} ms)",
                self.value * 1e3,
                self.count,
                self.threshold * 1e3,
                self.baseline.unwrap_or(0.0) * 1e3
            ),
        };
        format!(
            "[{}] portcullis {} on {place}: {what}",
            self.state().to_uppercase(),
            self.rule.as_str()
        )
    }

    /// The webhook body.
    pub fn to_json(&self) -> Value {
        json!({
            "source": "portcullis",
            "rule": self.rule.as_str(),
            "state": self.state(),
            "virtual_server": self.virtual_server,
            "upstream": self.upstream,
            "value": self.value,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "count": self.count,
            "window_secs": self.window_secs,
            "at": crate::rfc3339(self.at),
            "text": self.summary(),
        })
    }
}

#[derive(Debug, Clone, Default)]
struct RuleState {
    firing: bool,
    baseline: f64,
    /// Windows that have fed the baseline.
    windows: u32,
}

/// The alert rules over successive windows. Pure: time and counters are
/// given, so it is tested without clocks.
pub struct AlertEngine {
    cfg: Alerts,
    prev: Option<Counters>,
    state: BTreeMap<(Rule, String, String), RuleState>,
}

impl AlertEngine {
    pub fn new(cfg: Alerts) -> AlertEngine {
        AlertEngine {
            cfg,
            prev: None,
            state: BTreeMap::new(),
        }
    }

    /// Feed the cumulative counters read at `now`; the first reading only
    /// sets the starting point.
    pub fn tick(&mut self, now: u64, counters: Counters) -> Vec<AlertEvent> {
        let events = match &self.prev {
            Some(prev) => {
                let window = counters.since(prev);
                self.evaluate(now, &window)
            }
            None => Vec::new(),
        };
        self.prev = Some(counters);
        events
    }

    /// Alerts currently firing: (rule, virtual server, upstream).
    pub fn firing(&self) -> Vec<(String, String, String)> {
        self.state
            .iter()
            .filter(|(_, s)| s.firing)
            .map(|((r, vs, up), _)| (r.as_str().to_owned(), vs.clone(), up.clone()))
            .collect()
    }

    /// Apply the rules to one window of counts.
    pub fn evaluate(&mut self, now: u64, window: &Counters) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let secs = self.cfg.interval_secs;
        // Denial spikes: keys seen before keep being judged (with 0 denials),
        // so their baseline decays and a firing alert clears.
        let mut keys: Vec<(String, String)> = window.denials.keys().cloned().collect();
        for (rule, vs, up) in self.state.keys() {
            if *rule == Rule::DenialSpike && !window.denials.contains_key(&(vs.clone(), up.clone()))
            {
                keys.push((vs.clone(), up.clone()));
            }
        }
        let rule = self.cfg.denials.clone();
        for (vs, up) in keys {
            let n = window
                .denials
                .get(&(vs.clone(), up.clone()))
                .copied()
                .unwrap_or(0);
            let s = self
                .state
                .entry((Rule::DenialSpike, vs.clone(), up.clone()))
                .or_default();
            let bar = (rule.threshold as f64).max(rule.factor * s.baseline);
            let on = n as f64 >= bar;
            if on != s.firing {
                s.firing = on;
                events.push(AlertEvent {
                    rule: Rule::DenialSpike,
                    firing: on,
                    virtual_server: Some(vs.clone()),
                    upstream: (!up.is_empty()).then(|| up.clone()),
                    value: n as f64,
                    threshold: bar,
                    baseline: Some(s.baseline),
                    count: n,
                    window_secs: secs,
                    at: now,
                });
            }
            let alpha = if s.firing { ALPHA_FIRING } else { ALPHA };
            s.baseline += alpha * (n as f64 - s.baseline);
            s.windows = s.windows.saturating_add(1);
        }
        for (up, w) in &window.upstreams {
            self.error_rate(now, up, w, &mut events);
            self.latency(now, up, w, &mut events);
        }
        events
    }

    fn error_rate(&mut self, now: u64, up: &str, w: &UpstreamCounts, events: &mut Vec<AlertEvent>) {
        let rule = &self.cfg.error_rate;
        if w.calls < rule.min_calls {
            return;
        }
        let rate = w.errors as f64 / w.calls as f64;
        let s = self
            .state
            .entry((Rule::ErrorRate, String::new(), up.to_owned()))
            .or_default();
        let on = rate >= rule.threshold;
        if on != s.firing {
            s.firing = on;
            events.push(AlertEvent {
                rule: Rule::ErrorRate,
                firing: on,
                virtual_server: None,
                upstream: Some(up.to_owned()),
                value: rate,
                threshold: rule.threshold,
                baseline: None,
                count: w.calls,
                window_secs: self.cfg.interval_secs,
                at: now,
            });
        }
    }

    fn latency(&mut self, now: u64, up: &str, w: &UpstreamCounts, events: &mut Vec<AlertEvent>) {
        let rule = &self.cfg.latency;
        if w.calls < rule.min_calls {
            return;
        }
        let mean = w.latency_us as f64 / w.calls as f64 / 1e6;
        let s = self
            .state
            .entry((Rule::LatencyDrift, String::new(), up.to_owned()))
            .or_default();
        if s.windows >= rule.warmup_windows.max(1) {
            let bar = rule.factor * s.baseline;
            let on = mean >= bar;
            if on != s.firing {
                s.firing = on;
                events.push(AlertEvent {
                    rule: Rule::LatencyDrift,
                    firing: on,
                    virtual_server: None,
                    upstream: Some(up.to_owned()),
                    value: mean,
                    threshold: bar,
                    baseline: Some(s.baseline),
                    count: w.calls,
                    window_secs: self.cfg.interval_secs,
                    at: now,
                });
            }
        }
        s.baseline = if s.windows == 0 {
            mean
        } else {
            let alpha = if s.firing { ALPHA_FIRING } else { ALPHA };
            s.baseline + alpha * (mean - s.baseline)
        };
        s.windows = s.windows.saturating_add(1);
    }
}

fn log(e: &AlertEvent) {
    tracing::warn!(
        target: "portcullis::alert",
        rule = e.rule.as_str(),
        state = e.state(),
        virtual_server = e.virtual_server.as_deref().unwrap_or(""),
        upstream = e.upstream.as_deref().unwrap_or(""),
        value = e.value,
        threshold = e.threshold,
        "{}",
        e.summary()
    );
}

/// Run the evaluator until the metrics go away or the task is aborted.
pub(crate) fn spawn(
    cfg: Alerts,
    metrics: Weak<Metrics>,
    webhook: Option<mpsc::Sender<Value>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut engine = AlertEngine::new(cfg.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(m) = metrics.upgrade() else { return };
            let events = engine.tick(crate::unix_secs(), Counters::read(&m));
            if events.is_empty() {
                continue;
            }
            *m.alerts_firing.lock().unwrap_or_else(|p| p.into_inner()) = engine.firing();
            for e in &events {
                log(e);
                if let Some(tx) = &webhook {
                    if tx.try_send(e.to_json()).is_err() {
                        m.webhook_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(target: "portcullis::alert", "alert webhook queue full; event dropped");
                    }
                }
            }
        }
    })
}

/// Deliver alert events to the webhook, one at a time, retrying each with
/// exponential backoff (0.5 s doubling, at most `attempts` tries).
pub(crate) fn spawn_webhook(
    url: String,
    headers: reqwest::header::HeaderMap,
    metrics: Arc<Metrics>,
    attempts: u32,
    backoff: Duration,
) -> Result<(mpsc::Sender<Value>, tokio::task::JoinHandle<()>), reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (tx, mut rx) = mpsc::channel::<Value>(256);
    let metrics = Arc::downgrade(&metrics);
    let task = tokio::spawn(async move {
        while let Some(body) = rx.recv().await {
            let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            let mut delay = backoff;
            let mut delivered = false;
            for attempt in 1..=attempts {
                let sent = client
                    .post(&url)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(r) => {
                        tracing::debug!(status = %r.status(), attempt, "alert webhook refused the event")
                    }
                    Err(e) => tracing::debug!(error = %e, attempt, "alert webhook unreachable"),
                }
                if attempt < attempts {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
            if !delivered {
                tracing::warn!(target: "portcullis::alert", url = %url, "alert webhook did not accept an event after {attempts} attempts");
                if let Some(m) = metrics.upgrade() {
                    m.webhook_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    Ok((tx, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Alerts {
        use portcullis_config::{DenialRule, ErrorRateRule, LatencyRule};
        Alerts {
            interval_secs: 10,
            denials: DenialRule {
                threshold: 5,
                factor: 3.0,
            },
            error_rate: ErrorRateRule {
                threshold: 0.5,
                min_calls: 4,
            },
            latency: LatencyRule {
                factor: 2.0,
                min_calls: 2,
                warmup_windows: 3,
            },
            ..Alerts::default()
        }
    }

    fn denials(vs: &str, up: &str, n: u64) -> Counters {
        let mut c = Counters::default();
        c.denials.insert((vs.into(), up.into()), n);
        c
    }

    fn calls(up: &str, calls: u64, errors: u64, mean_ms: u64) -> Counters {
        let mut c = Counters::default();
        c.upstreams.insert(
            up.into(),
            UpstreamCounts {
                calls,
                errors,
                latency_us: calls * mean_ms * 1000,
            },
        );
        c
    }

    #[test]
    fn denial_spike_fires_and_clears() {
        let mut e = AlertEngine::new(cfg());
        assert!(
            e.evaluate(1, &denials("demo", "files", 4)).is_empty(),
            "below threshold"
        );
        let ev = e.evaluate(2, &denials("demo", "files", 9));
        assert_eq!(ev.len(), 1);
        assert!(ev[0].firing);
        assert_eq!(ev[0].rule, Rule::DenialSpike);
        assert_eq!(ev[0].virtual_server.as_deref(), Some("demo"));
        assert_eq!(ev[0].upstream.as_deref(), Some("files"));
        assert_eq!(ev[0].value, 9.0);
        assert_eq!(
            e.firing(),
            vec![("denial_spike".into(), "demo".into(), "files".into())]
        );
        // Still high: no new event. Then a quiet window (no key at all) clears it.
        assert!(e.evaluate(3, &denials("demo", "files", 9)).is_empty());
        let ev = e.evaluate(4, &Counters::default());
        assert_eq!(ev.len(), 1);
        assert!(!ev[0].firing);
        assert!(e.firing().is_empty());
    }

    #[test]
    fn a_usual_denial_rate_is_not_a_spike() {
        let mut e = AlertEngine::new(cfg());
        // Steady 6 per window: the first fires (no history), then the baseline
        // catches up and the same rate stops being a spike.
        let mut states = Vec::new();
        for t in 0..40 {
            for ev in e.evaluate(t, &denials("vs", "", 6)) {
                states.push(ev.firing);
            }
        }
        assert_eq!(states, vec![true, false]);
        // Three times the usual rate is a spike again.
        let ev = e.evaluate(50, &denials("vs", "", 18));
        assert!(
            ev.len() == 1 && ev[0].firing && ev[0].upstream.is_none(),
            "{ev:?}"
        );
    }

    #[test]
    fn error_rate_needs_enough_calls() {
        let mut e = AlertEngine::new(cfg());
        assert!(
            e.evaluate(1, &calls("up", 3, 3, 1)).is_empty(),
            "3 calls < min_calls"
        );
        let ev = e.evaluate(2, &calls("up", 4, 2, 1));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].rule, Rule::ErrorRate);
        assert!(ev[0].firing);
        assert_eq!(ev[0].value, 0.5);
        assert!(
            e.evaluate(3, &calls("up", 1, 0, 1)).is_empty(),
            "too few calls: no change"
        );
        let ev = e.evaluate(4, &calls("up", 10, 1, 1));
        assert!(ev.len() == 1 && !ev[0].firing);
    }

    #[test]
    fn latency_drift_after_warmup() {
        let mut e = AlertEngine::new(cfg());
        for t in 0..3 {
            assert!(
                e.evaluate(t, &calls("up", 5, 0, 10)).is_empty(),
                "warming up"
            );
        }
        assert!(
            e.evaluate(3, &calls("up", 5, 0, 15)).is_empty(),
            "1.5x is not 2x"
        );
        let ev = e.evaluate(4, &calls("up", 5, 0, 40));
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].rule, Rule::LatencyDrift);
        assert!(ev[0].firing);
        assert!((ev[0].value - 0.040).abs() < 1e-9);
        let base = ev[0].baseline.unwrap_or(0.0);
        assert!(base > 0.010 && base < 0.012, "{base}");
        let ev = e.evaluate(5, &calls("up", 5, 0, 10));
        assert!(ev.len() == 1 && !ev[0].firing);
    }

    #[test]
    fn ticks_turn_cumulative_counters_into_windows() {
        let mut e = AlertEngine::new(cfg());
        let mut c = denials("vs", "up", 100);
        assert!(
            e.tick(0, c.clone()).is_empty(),
            "first reading is the origin"
        );
        c.denials.insert(("vs".into(), "up".into()), 103);
        assert!(e.tick(10, c.clone()).is_empty(), "3 new denials");
        c.denials.insert(("vs".into(), "up".into()), 110);
        let ev = e.tick(20, c);
        assert!(
            ev.len() == 1 && ev[0].firing && ev[0].value == 7.0,
            "{ev:?}"
        );
        let body = ev[0].to_json();
        assert_eq!(body["rule"], "denial_spike");
        assert_eq!(body["state"], "firing");
        assert_eq!(body["virtual_server"], "vs");
        assert_eq!(body["upstream"], "up");
        assert_eq!(body["at"], "1970-01-01T00:00:20Z");
        assert!(body["text"].as_str().unwrap_or("").contains("denial_spike"));
    }
}
