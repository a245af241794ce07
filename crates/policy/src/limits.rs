//! Rate limits (token buckets) and daily quotas per user, group, tool and
//! virtual server, with usage counters per team for cost attribution.
//!
//! Everything a call touches is checked and committed under one short lock,
//! so a refused call consumes nothing and two racing calls cannot both take
//! the last token. Counters live in memory; [`RateLimiter::flush`] adds what
//! changed to the store (every few seconds) and [`RateLimiter::restore`]
//! seeds today's quota counters at start, so quotas survive restarts. Quota
//! counters are per replica between flushes: each flush reads the stored
//! totals back, so replicas sharing a database converge within one flush
//! interval.

use portcullis_config::{LimitKey, RateLimit};
use portcullis_store::usage::{QuotaUse, UsageCount};
use portcullis_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// One call, as limits see it.
#[derive(Debug, Clone, Copy)]
pub struct LimitedCall<'a> {
    pub user_id: &'a str,
    pub username: &'a str,
    pub groups: &'a [String],
    pub virtual_server: &'a str,
    /// Exposed tool (or prompt) name.
    pub tool: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    Rate,
    Quota,
}

/// Why a call was refused, for the client's error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub limit: String,
    pub kind: RefusalKind,
    pub retry_after_secs: u64,
    pub message: String,
}

/// Calls of one (UTC day, team, user, virtual server, tool). A caller in
/// several groups is counted once under each, so per-team figures add up
/// to more than the number of calls.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct UsageRow {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// One of the caller's groups, or `-`.
    pub team: String,
    /// Username (readable in reports; ids are in the audit log).
    pub user: String,
    pub virtual_server: String,
    pub tool: String,
    /// Calls the limits admitted (policy may still have denied them).
    pub calls: u64,
    /// Calls a rate limit or quota refused.
    pub refused: u64,
}

const SECS_PER_DAY: i64 = 86_400;
/// How many admits between sweeps of idle buckets.
const SWEEP_EVERY: u32 = 4096;
/// Slack for float rounding: 6 s at 10 calls/min must refill a whole token.
const EPS: f64 = 1e-9;

struct Rule {
    cfg: RateLimit,
    /// Bucket capacity and refill per second, for rules with a rate.
    rate: Option<(f64, f64)>,
}

impl Rule {
    fn selects(&self, call: &LimitedCall) -> bool {
        let c = &self.cfg;
        c.virtual_server
            .as_deref()
            .is_none_or(|v| v == call.virtual_server)
            && c.tool.as_deref().is_none_or(|t| t == call.tool)
            && c.group
                .as_deref()
                .is_none_or(|g| call.groups.iter().any(|x| x == g))
    }

    /// The buckets a call counts against. Callers in no group have no group
    /// bucket, so `per: group` limits do not count them.
    fn keys<'c>(&self, call: &LimitedCall<'c>) -> Vec<&'c str> {
        match self.cfg.per {
            LimitKey::User => vec![call.user_id],
            LimitKey::Tool => vec![call.tool],
            LimitKey::VirtualServer => vec![call.virtual_server],
            LimitKey::Group => match self.cfg.group.as_deref() {
                Some(only) => call
                    .groups
                    .iter()
                    .find(|g| g.as_str() == only)
                    .map(String::as_str)
                    .into_iter()
                    .collect(),
                None => distinct(call.groups).collect(),
            },
        }
    }

    fn subject(&self, call: &LimitedCall, key: &str) -> String {
        match self.cfg.per {
            LimitKey::User => format!("user {}", call.username),
            LimitKey::Group => format!("group {key}"),
            LimitKey::Tool => format!("tool {key}"),
            LimitKey::VirtualServer => format!("virtual server {key}"),
        }
    }

    fn refusal(&self, kind: RefusalKind, subject: String, wait: u64) -> Refusal {
        let name = &self.cfg.name;
        let message = match kind {
            RefusalKind::Rate => {
                let rpm = self.cfg.requests_per_minute.unwrap_or(0);
                let burst = match self.cfg.burst {
                    Some(b) if b != rpm => format!(" (bursts of {b})"),
                    _ => String::new(),
                };
                format!(
                    "rate limit {name:?} exceeded for {subject}: {rpm} calls per minute{burst}; retry in {}",
                    human(wait)
                )
            }
            RefusalKind::Quota => format!(
                "daily quota {name:?} exhausted for {subject}: {} calls per day; resets in {}",
                self.cfg.daily_quota.unwrap_or(0),
                human(wait)
            ),
        };
        Refusal {
            limit: name.clone(),
            kind,
            retry_after_secs: wait,
            message,
        }
    }
}

/// Groups without repeats (a repeated group must not be charged twice).
fn distinct(groups: &[String]) -> impl Iterator<Item = &str> {
    groups
        .iter()
        .enumerate()
        .filter(|(i, g)| !groups[..*i].contains(g))
        .map(|(_, g)| g.as_str())
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Monotonic seconds of the last update.
    at: f64,
}

impl Bucket {
    fn level(&self, now: f64, capacity: f64, per_sec: f64) -> f64 {
        (self.tokens + (now - self.at).max(0.0) * per_sec).min(capacity)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UsageKey {
    day: i64,
    team: String,
    user: String,
    virtual_server: String,
    tool: String,
}

/// Counters not yet written to the store.
#[derive(Default)]
struct Pending {
    usage: HashMap<UsageKey, (u64, u64)>,
    /// (day, rule index, bucket) → calls.
    quota: HashMap<(i64, usize, String), u64>,
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        for (k, (c, r)) in other.usage {
            let e = self.usage.entry(k).or_default();
            e.0 += c;
            e.1 += r;
        }
        for (k, n) in other.quota {
            *self.quota.entry(k).or_default() += n;
        }
    }
}

struct State {
    /// Per rule: bucket key → bucket.
    buckets: Vec<HashMap<String, Bucket>>,
    /// Per rule: bucket key → calls counted on `quota_day`.
    quota: Vec<HashMap<String, u64>>,
    quota_day: i64,
    pending: Pending,
    since_sweep: u32,
}

pub struct RateLimiter {
    rules: Vec<Rule>,
    state: Mutex<State>,
    /// Origin of the monotonic clock buckets use (wall-clock jumps must not
    /// refill or drain them).
    started: Instant,
    /// Serialises flushes: a report must not read the store while another
    /// flush has taken counters out of memory but not yet written them. An
    /// async lock because it is held across the store's awaits.
    flushing: tokio::sync::Mutex<()>,
}

impl RateLimiter {
    pub fn new(rules: &[RateLimit]) -> RateLimiter {
        let rules: Vec<Rule> = rules
            .iter()
            .map(|cfg| Rule {
                rate: cfg.requests_per_minute.map(|rpm| {
                    let capacity = f64::from(cfg.burst.unwrap_or(rpm));
                    (capacity, f64::from(rpm) / 60.0)
                }),
                cfg: cfg.clone(),
            })
            .collect();
        let n = rules.len();
        RateLimiter {
            rules,
            state: Mutex::new(State {
                buckets: vec![HashMap::new(); n],
                quota: vec![HashMap::new(); n],
                quota_day: i64::MIN,
                pending: Pending::default(),
                since_sweep: 0,
            }),
            started: Instant::now(),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// Count one call against every matching limit; a refused call consumes nothing.
    pub fn admit(&self, call: &LimitedCall<'_>, now_unix: i64) -> Result<(), Refusal> {
        self.admit_at(call, now_unix, self.started.elapsed().as_secs_f64())
    }

    /// `admit` with the monotonic clock given (seconds), for tests.
    fn admit_at(&self, call: &LimitedCall<'_>, now_unix: i64, mono: f64) -> Result<(), Refusal> {
        let day = now_unix.div_euclid(SECS_PER_DAY);
        let mut st = self.lock();
        if day > st.quota_day {
            // A new UTC day: yesterday's quota counters no longer matter. (A
            // clock stepping back keeps counting into the newer day.)
            st.quota_day = day;
            st.quota.iter_mut().for_each(HashMap::clear);
        }
        let quota_day = st.quota_day;

        // Check everything first, so that a refused call takes nothing.
        let mut hits: Vec<(usize, &str)> = Vec::new();
        let mut refusal: Option<Refusal> = None;
        let mut refuse = |r: Refusal| {
            // Report the limit that keeps the call out longest.
            if refusal
                .as_ref()
                .is_none_or(|old| r.retry_after_secs > old.retry_after_secs)
            {
                refusal = Some(r);
            }
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.selects(call) {
                continue;
            }
            for key in rule.keys(call) {
                if let Some((capacity, per_sec)) = rule.rate {
                    let level = st.buckets[i]
                        .get(key)
                        .map_or(capacity, |b| b.level(mono, capacity, per_sec));
                    if level + EPS < 1.0 {
                        let wait = ((1.0 - level) / per_sec - EPS).ceil().max(1.0) as u64;
                        refuse(rule.refusal(RefusalKind::Rate, rule.subject(call, key), wait));
                    }
                }
                if let Some(quota) = rule.cfg.daily_quota {
                    let used = st.quota[i].get(key).copied().unwrap_or(0);
                    if used >= quota {
                        let wait = (SECS_PER_DAY - now_unix.rem_euclid(SECS_PER_DAY)) as u64;
                        refuse(rule.refusal(RefusalKind::Quota, rule.subject(call, key), wait));
                    }
                }
                hits.push((i, key));
            }
        }

        let admitted = refusal.is_none();
        if admitted {
            for (i, key) in hits {
                let rule = &self.rules[i];
                if let Some((capacity, per_sec)) = rule.rate {
                    let buckets = &mut st.buckets[i];
                    match buckets.get_mut(key) {
                        Some(b) => {
                            b.tokens = b.level(mono, capacity, per_sec) - 1.0;
                            b.at = b.at.max(mono);
                        }
                        None => {
                            let b = Bucket {
                                tokens: capacity - 1.0,
                                at: mono,
                            };
                            buckets.insert(key.to_owned(), b);
                        }
                    }
                }
                if rule.cfg.daily_quota.is_some() {
                    match st.quota[i].get_mut(key) {
                        Some(n) => *n += 1,
                        None => {
                            st.quota[i].insert(key.to_owned(), 1);
                        }
                    }
                    *st.pending
                        .quota
                        .entry((quota_day, i, key.to_owned()))
                        .or_default() += 1;
                }
            }
        }
        count_usage(&mut st.pending, day, call, admitted);

        st.since_sweep += 1;
        if st.since_sweep >= SWEEP_EVERY {
            st.since_sweep = 0;
            self.sweep(&mut st, mono);
        }
        match refusal {
            None => Ok(()),
            Some(r) => Err(r),
        }
    }

    /// Forget buckets that have refilled: a missing bucket reads as full,
    /// so this changes no decision and bounds memory to active callers.
    fn sweep(&self, st: &mut State, mono: f64) {
        for (rule, buckets) in self.rules.iter().zip(st.buckets.iter_mut()) {
            if let Some((capacity, per_sec)) = rule.rate {
                buckets.retain(|_, b| b.level(mono, capacity, per_sec) + EPS < capacity);
            }
        }
    }

    /// Usage counted in memory and not yet flushed to the store, for one day
    /// (`YYYY-MM-DD`) or all, sorted. Complete figures (persisted plus
    /// pending) come from [`RateLimiter::usage_report`].
    pub fn usage(&self, day: Option<&str>) -> Vec<UsageRow> {
        let st = self.lock();
        let mut rows: Vec<UsageRow> = st
            .pending
            .usage
            .iter()
            .map(|(k, &(calls, refused))| UsageRow {
                day: day_label(k.day),
                team: k.team.clone(),
                user: k.user.clone(),
                virtual_server: k.virtual_server.clone(),
                tool: k.tool.clone(),
                calls,
                refused,
            })
            .filter(|r| day.is_none_or(|d| r.day == d))
            .collect();
        drop(st);
        rows.sort();
        rows
    }

    /// Drain the counters not yet persisted, as store deltas.
    pub fn take_deltas(&self) -> (Vec<UsageCount>, Vec<QuotaUse>) {
        let pending = std::mem::take(&mut self.lock().pending);
        self.rows(&pending)
    }

    fn rows(&self, p: &Pending) -> (Vec<UsageCount>, Vec<QuotaUse>) {
        let mut usage: Vec<UsageCount> = p
            .usage
            .iter()
            .map(|(k, &(calls, refused))| UsageCount {
                day: day_label(k.day),
                team: k.team.clone(),
                user: k.user.clone(),
                virtual_server: k.virtual_server.clone(),
                tool: k.tool.clone(),
                calls,
                refused,
            })
            .collect();
        let mut quota: Vec<QuotaUse> = p
            .quota
            .iter()
            .filter_map(|((day, i, bucket), &used)| {
                Some(QuotaUse {
                    day: day_label(*day),
                    limit: self.rules.get(*i)?.cfg.name.clone(),
                    bucket: bucket.clone(),
                    used,
                })
            })
            .collect();
        usage.sort();
        quota.sort();
        (usage, quota)
    }

    /// Seed the quota counters of UTC day `day` (`now_unix.div_euclid(86400)`)
    /// from stored totals: each counter becomes the stored total plus what
    /// this replica counted and has not flushed yet. Rows of limits no
    /// longer configured, and rows of a day already past, are ignored.
    pub fn restore_quota(&self, day: i64, rows: &[QuotaUse]) {
        let mut st = self.lock();
        if day < st.quota_day {
            return;
        }
        if day > st.quota_day {
            st.quota_day = day;
            st.quota.iter_mut().for_each(HashMap::clear);
        }
        let label = day_label(day);
        for row in rows.iter().filter(|r| r.day == label) {
            let Some(i) = self.rules.iter().position(|r| r.cfg.name == row.limit) else {
                continue;
            };
            if self.rules[i].cfg.daily_quota.is_none() {
                continue;
            }
            let unflushed = st
                .pending
                .quota
                .get(&(day, i, row.bucket.clone()))
                .copied()
                .unwrap_or(0);
            st.quota[i].insert(row.bucket.clone(), row.used.saturating_add(unflushed));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every point a panic could unwind
        // from (plain counter updates), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn count_usage(p: &mut Pending, day: i64, call: &LimitedCall, admitted: bool) {
    let mut teams: Vec<&str> = distinct(call.groups).collect();
    if teams.is_empty() {
        teams.push("-");
    }
    for team in teams {
        let key = UsageKey {
            day,
            team: team.to_owned(),
            user: call.username.to_owned(),
            virtual_server: call.virtual_server.to_owned(),
            tool: call.tool.to_owned(),
        };
        let e = p.usage.entry(key).or_default();
        if admitted {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
}

impl RateLimiter {
    /// Add the unflushed counters to the store, then read today's quota
    /// totals back (they include other replicas' calls). Call every few
    /// seconds and at shutdown. On a store error nothing is lost: the
    /// counters go back into memory for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock().await;
        let mut pending = std::mem::take(&mut self.lock().pending);
        let (usage, quota) = self.rows(&pending);
        if let Err(e) = store.add_usage(&usage).await {
            self.lock().pending.merge(pending);
            return Err(e);
        }
        // Usage is in; only quota use may still need to go back.
        pending.usage.clear();
        if let Err(e) = store.add_quota_use(&quota).await {
            self.lock().pending.merge(pending);
            return Err(e);
        }
        let day = self.lock().quota_day;
        if day != i64::MIN && self.rules.iter().any(|r| r.cfg.daily_quota.is_some()) {
            let rows = store.quota_use(&day_label(day)).await?;
            self.restore_quota(day, &rows);
        }
        Ok(())
    }

    /// Seed today's quota counters from the store (at start, so quotas
    /// survive restarts) and drop stored quota counters of earlier days.
    pub async fn restore(&self, store: &Store, now_unix: i64) -> Result<(), StoreError> {
        let day = now_unix.div_euclid(SECS_PER_DAY);
        let label = day_label(day);
        let rows = store.quota_use(&label).await?;
        self.restore_quota(day, &rows);
        store.prune_quota_before(&label).await?;
        Ok(())
    }

    /// Usage of one day (`YYYY-MM-DD`) or all days, complete: flushes
    /// first, then reads the store. For the admin API.
    pub async fn usage_report(
        &self,
        store: &Store,
        day: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.flush(store).await?;
        let rows = store.usage(day).await?;
        Ok(rows
            .into_iter()
            .map(|r| UsageRow {
                day: r.day,
                team: r.team,
                user: r.user,
                virtual_server: r.virtual_server,
                tool: r.tool,
                calls: r.calls,
                refused: r.refused,
            })
            .collect())
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
pub fn day_label(days: i64) -> String {
    portcullis_config::calendar::day_label(days)
}

/// "4 s", "2 min 5 s", "5 h 12 min".
fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 && s % 60 == 0 => format!("{} min", s / 60),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if s % 3600 < 60 => format!("{} h", s / 3600),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests;
