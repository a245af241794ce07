//! Load phases against one target: warm-up, sequential latency at one
//! connection, and throughput at saturation with C connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::Barrier;

use crate::client::{Endpoint, Era, McpClient};
use crate::stats::{self, CpuTime, Latency, SystemCpu};
use crate::upstream::Counts;

/// Calls each saturation worker makes before the measured window.
const WORKER_WARMUP: usize = 20;
/// A worker (or the sequential phase) gives up after this many failed calls.
const MAX_ERRORS: u64 = 200;
/// CPU is accounted in clock ticks (10 ms): shorter phases give no noise figure.
const MIN_NOISE_WINDOW_S: f64 = 0.25;

#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    pub era: Era,
    pub timeout: Duration,
    /// Process whose CPU is attributed to this run (the gateway), when known.
    pub gateway_pid: Option<u32>,
}

/// Failed calls: a count and the first few distinct messages.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, err: &anyhow::Error) {
        self.count += 1;
        let msg = format!("{err:#}");
        if self.samples.len() < 5 && !self.samples.contains(&msg) {
            self.samples.push(msg);
        }
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < 5 && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}

/// Figures of one measured phase.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub connections: usize,
    pub calls: u64,
    pub elapsed: Duration,
    pub latency: Latency,
    /// Gateway CPU (utime + stime) spent during the phase, when its pid is known.
    pub gateway_cpu: Option<Duration>,
    /// CPU of the bench process itself (load generator + in-process upstream).
    pub bench_cpu: Duration,
    /// CPU used by every other process on the machine (noise), and steal time.
    pub other_cpu: Duration,
    pub steal: Duration,
}

impl Phase {
    pub fn calls_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.calls as f64 / s
        } else {
            0.0
        }
    }

    pub fn gateway_cpu_per_call_us(&self) -> Option<f64> {
        self.gateway_cpu
            .and_then(|cpu| stats::cpu_per_call_us(cpu, self.calls))
    }

    pub fn bench_cpu_per_call_us(&self) -> Option<f64> {
        stats::cpu_per_call_us(self.bench_cpu, self.calls)
    }

    /// Average number of cores used by other processes (plus steal) during
    /// the phase; `None` when the phase is too short for tick-based accounting.
    pub fn other_cores(&self) -> Option<f64> {
        let s = self.elapsed.as_secs_f64();
        (s >= MIN_NOISE_WINDOW_S).then(|| (self.other_cpu + self.steal).as_secs_f64() / s)
    }
}

/// Everything measured against one target for one era.
#[derive(Debug, Clone, Default)]
pub struct TargetRun {
    pub sequential: Phase,
    pub saturation: Phase,
    pub errors: Errors,
    pub warnings: Vec<String>,
    /// Successful calls of the whole run, warm-ups included.
    pub total_calls: u64,
    /// What the upstream served during the whole run (filled in by the caller).
    pub upstream: Counts,
}

impl TargetRun {
    /// Upstream HTTP requests per successful call, session set-up included.
    pub fn upstream_requests_per_call(&self) -> Option<f64> {
        (self.total_calls > 0).then(|| self.upstream.http_requests as f64 / self.total_calls as f64)
    }
}

struct CpuMark {
    gateway: Option<CpuTime>,
    bench: CpuTime,
    system: SystemCpu,
    at: Instant,
}

impl CpuMark {
    fn take(pid: Option<u32>) -> Result<CpuMark> {
        let gateway = pid.map(stats::process_cpu).transpose()?;
        Ok(CpuMark {
            gateway,
            bench: stats::self_cpu()?,
            system: stats::system_cpu()?,
            at: Instant::now(),
        })
    }

    /// Fills the elapsed time and CPU deltas of `phase` since this mark.
    fn finish(&self, pid: Option<u32>, phase: &mut Phase) -> Result<()> {
        phase.elapsed = self.at.elapsed();
        let now = CpuMark::take(pid)?;
        phase.bench_cpu = now.bench.since(self.bench);
        phase.gateway_cpu = match (now.gateway, self.gateway) {
            (Some(after), Some(before)) => Some(after.since(before)),
            _ => None,
        };
        let all = now.system.busy.since(self.system.busy);
        let ours = phase.bench_cpu + phase.gateway_cpu.unwrap_or_default();
        phase.other_cpu = all.saturating_sub(ours);
        phase.steal = now.system.steal.since(self.system.steal);
        Ok(())
    }
}

fn add_warnings(into: &mut Vec<String>, from: &[String]) {
    for w in from {
        if !into.contains(w) {
            into.push(w.clone());
        }
    }
}

/// Warm-up, then the sequential and saturation phases.
pub async fn run(
    target: &Target,
    warmup: usize,
    calls: usize,
    connections: usize,
    seconds: f64,
) -> Result<TargetRun> {
    let mut run = TargetRun::default();
    sequential(target, warmup, calls, &mut run).await?;
    saturation(target, connections, seconds, &mut run).await?;
    Ok(run)
}

async fn reconnect_if_broken(client: &mut McpClient) -> Result<()> {
    if client.is_broken() {
        client
            .reconnect()
            .await
            .context("reconnecting after the connection closed")?;
    }
    Ok(())
}

async fn sequential(
    target: &Target,
    warmup: usize,
    calls: usize,
    run: &mut TargetRun,
) -> Result<()> {
    let mut client = McpClient::open(&target.endpoint, target.era, target.timeout)
        .await
        .with_context(|| {
            format!(
                "opening a {} session at {}",
                target.era.name(),
                target.endpoint
            )
        })?;
    // Warm-up and latency phase are bounded in time whatever happens
    // (generous for any sane latency; a hung call costs the per-call timeout).
    let budget = Duration::from_secs(60) + Duration::from_millis((warmup + calls) as u64 * 10);
    let deadline = Instant::now() + budget;
    let mut warm_errors = Errors::default();
    for _ in 0..warmup {
        if Instant::now() > deadline {
            bail!(
                "warm-up deadline exceeded: {}",
                warm_errors.samples.join("; ")
            );
        }
        match client.call_echo().await {
            Ok(()) => run.total_calls += 1,
            Err(e) => {
                warm_errors.add(&e);
                let reconnected = reconnect_if_broken(&mut client).await;
                if let Err(e) = &reconnected {
                    warm_errors.add(e);
                }
                if reconnected.is_err() || warm_errors.count >= MAX_ERRORS.min(warmup as u64) {
                    bail!("warm-up failed: {}", warm_errors.samples.join("; "));
                }
            }
        }
    }
    run.errors.merge(warm_errors);

    let mut samples = Vec::with_capacity(calls);
    let mut errors = Errors::default();
    let mark = CpuMark::take(target.gateway_pid)?;
    for _ in 0..calls {
        if Instant::now() > deadline {
            errors.add(&anyhow::anyhow!(
                "latency phase stopped at its deadline ({:.0} s for warm-up + calls) after {} of {calls} calls",
                budget.as_secs_f64(),
                samples.len()
            ));
            break;
        }
        let t = Instant::now();
        match client.call_echo().await {
            Ok(()) => samples.push(t.elapsed().as_nanos() as u64),
            Err(e) => {
                errors.add(&e);
                if errors.count >= MAX_ERRORS {
                    break;
                }
                if let Err(e) = reconnect_if_broken(&mut client).await {
                    errors.add(&e);
                    break;
                }
            }
        }
    }
    let phase = &mut run.sequential;
    mark.finish(target.gateway_pid, phase)?;
    phase.connections = 1;
    phase.calls = samples.len() as u64;
    phase.latency = Latency::from_nanos(&mut samples);
    run.total_calls += phase.calls;
    run.errors.merge(errors);
    add_warnings(&mut run.warnings, &client.warnings);
    if let Err(e) = client.close().await {
        run.errors.add(&e.context("closing the sequential session"));
    }
    Ok(())
}

/// Latency of two targets measured together: one connection to each, calls
/// alternating between them (a, b, b, a, ...), so that both see the same
/// machine state. Each phase gets its own gateway's CPU; `other_cpu` excludes
/// both gateways; `bench_cpu` is the bench's CPU for the whole interleaved run.
pub async fn interleaved(
    a: &Target,
    b: &Target,
    warmup: usize,
    calls: usize,
) -> Result<([Phase; 2], Errors)> {
    let open = |t: &Target| {
        let t = t.clone();
        async move {
            McpClient::open(&t.endpoint, t.era, t.timeout)
                .await
                .with_context(|| format!("opening a {} session at {}", t.era.name(), t.endpoint))
        }
    };
    let mut clients = [open(a).await?, open(b).await?];
    let targets = [a, b];
    let mut errors = Errors::default();
    for i in 0..warmup {
        for k in [i % 2, 1 - i % 2] {
            if let Err(e) = clients[k].call_echo().await {
                errors.add(&e);
                reconnect_if_broken(&mut clients[k]).await?;
            }
        }
        if errors.count >= MAX_ERRORS.min(warmup as u64) {
            bail!("interleaved warm-up failed: {}", errors.samples.join("; "));
        }
    }
    let budget = Duration::from_secs(60) + Duration::from_millis(calls as u64 * 20);
    let deadline = Instant::now() + budget;
    let mut samples = [Vec::with_capacity(calls), Vec::with_capacity(calls)];
    let marks = [CpuMark::take(a.gateway_pid)?, CpuMark::take(b.gateway_pid)?];
    'calls: for i in 0..calls {
        if Instant::now() > deadline {
            errors.add(&anyhow::anyhow!(
                "interleaved phase stopped at its deadline after {i} of {calls} calls"
            ));
            break;
        }
        for k in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            match clients[k].call_echo().await {
                Ok(()) => samples[k].push(t.elapsed().as_nanos() as u64),
                Err(e) => {
                    errors.add(&e);
                    if errors.count >= MAX_ERRORS {
                        break 'calls;
                    }
                    if let Err(e) = reconnect_if_broken(&mut clients[k]).await {
                        errors.add(&e);
                        break 'calls;
                    }
                }
            }
        }
    }
    let mut phases = [Phase::default(), Phase::default()];
    for k in 0..2 {
        marks[k].finish(targets[k].gateway_pid, &mut phases[k])?;
        phases[k].connections = 1;
        phases[k].calls = samples[k].len() as u64;
        phases[k].latency = Latency::from_nanos(&mut samples[k]);
    }
    for k in 0..2 {
        let other_gw = phases[1 - k].gateway_cpu.unwrap_or_default();
        phases[k].other_cpu = phases[k].other_cpu.saturating_sub(other_gw);
    }
    for c in clients {
        if let Err(e) = c.close().await {
            errors.add(&e.context("closing an interleaved session"));
        }
    }
    Ok((phases, errors))
}

struct WorkerOut {
    client: Option<McpClient>,
    warmed: u64,
    samples: Vec<u64>,
    errors: Errors,
}

async fn worker(target: Target, barrier: Arc<Barrier>, stop: Arc<AtomicBool>) -> WorkerOut {
    let mut out = WorkerOut {
        client: None,
        warmed: 0,
        samples: Vec::new(),
        errors: Errors::default(),
    };
    let opened = McpClient::open(&target.endpoint, target.era, target.timeout).await;
    let mut client = match opened {
        Ok(mut c) => {
            for _ in 0..WORKER_WARMUP {
                if let Err(e) = c.call_echo().await {
                    out.errors.add(&e);
                    break;
                }
                out.warmed += 1;
            }
            Some(c)
        }
        Err(e) => {
            out.errors.add(&e.context("opening a saturation client"));
            None
        }
    };
    barrier.wait().await;
    let Some(c) = client.as_mut() else {
        return out;
    };
    out.samples.reserve(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match c.call_echo().await {
            Ok(()) => out.samples.push(t.elapsed().as_nanos() as u64),
            Err(e) => {
                out.errors.add(&e);
                if out.errors.count >= MAX_ERRORS {
                    break;
                }
                if let Err(e) = reconnect_if_broken(c).await {
                    out.errors.add(&e);
                    break;
                }
            }
        }
    }
    out.client = client;
    out
}

async fn saturation(
    target: &Target,
    connections: usize,
    seconds: f64,
    run: &mut TargetRun,
) -> Result<()> {
    let barrier = Arc::new(Barrier::new(connections + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(target.clone(), barrier.clone(), stop.clone())))
        .collect();
    barrier.wait().await;
    let mark = CpuMark::take(target.gateway_pid)?;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outs = Vec::with_capacity(connections);
    for h in handles {
        outs.push(h.await.context("saturation worker panicked")?);
    }
    // Everything up to the last in-flight call is counted, time and CPU alike.
    let phase = &mut run.saturation;
    mark.finish(target.gateway_pid, phase)?;
    phase.connections = connections;
    let mut all = Vec::new();
    let mut opened = 0;
    for out in outs {
        all.extend_from_slice(&out.samples);
        run.total_calls += out.warmed;
        run.errors.merge(out.errors);
        if let Some(client) = out.client {
            opened += 1;
            add_warnings(&mut run.warnings, &client.warnings);
            if let Err(e) = client.close().await {
                run.errors.add(&e.context("closing a saturation session"));
            }
        }
    }
    if opened == 0 {
        bail!(
            "no saturation client could open: {}",
            run.errors.samples.join("; ")
        );
    }
    phase.calls = all.len() as u64;
    phase.latency = Latency::from_nanos(&mut all);
    run.total_calls += phase.calls;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    fn target(up: &Upstream, era: Era) -> Target {
        Target {
            endpoint: Endpoint::new(up.addr, "/mcp"),
            era,
            timeout: Duration::from_secs(5),
            gateway_pid: Some(std::process::id()),
        }
    }

    #[test]
    fn both_eras_run_cleanly_against_the_builtin_upstream() {
        let up = Upstream::start(0).expect("upstream");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for era in [Era::Legacy, Era::Modern] {
            let run = rt
                .block_on(run(&target(&up, era), 5, 50, 3, 0.2))
                .expect("run");
            assert_eq!(run.errors.count, 0, "{:?}: {:?}", era, run.errors.samples);
            assert!(run.warnings.is_empty(), "{:?}", run.warnings);
            assert_eq!(run.sequential.calls, 50);
            assert!(run.sequential.latency.p50_us > 0.0);
            assert_eq!(run.saturation.connections, 3);
            assert!(run.saturation.calls > 0);
            assert!(run.saturation.gateway_cpu.is_some());
        }
    }

    #[test]
    fn interleaved_measures_both_targets() {
        let up = Upstream::start(0).expect("upstream");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for era in [Era::Legacy, Era::Modern] {
            let (a, b) = (target(&up, era), target(&up, era));
            let ([pa, pb], errors) = rt
                .block_on(interleaved(&a, &b, 4, 30))
                .expect("interleaved");
            assert_eq!(errors.count, 0, "{:?}", errors.samples);
            assert_eq!((pa.calls, pb.calls), (30, 30));
            assert!(pa.latency.p50_us > 0.0 && pb.latency.p99_us > 0.0);
        }
    }

    #[test]
    fn a_dead_target_fails_the_run() {
        let up = Upstream::start(0).expect("upstream");
        let mut t = target(&up, Era::Legacy);
        t.endpoint.path = "/nope".into();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        assert!(rt.block_on(run(&t, 1, 1, 1, 0.1)).is_err());
    }
}
