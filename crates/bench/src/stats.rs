//! Latency statistics and CPU accounting (`/proc/<pid>/stat`).

use std::time::Duration;

use anyhow::{Context, Result};

/// Summary of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// Summarises samples given in nanoseconds (sorts them in place).
    pub fn from_nanos(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Latency {
            p50_us: percentile(samples, 50.0),
            p90_us: percentile(samples, 90.0),
            p99_us: percentile(samples, 99.0),
            mean_us: sum as f64 / n as f64 / 1000.0,
            max_us: samples[n - 1] as f64 / 1000.0,
        }
    }
}

/// Nearest-rank percentile of sorted nanosecond samples, in microseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

/// User + system CPU time consumed by a process so far.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime(Duration);

impl CpuTime {
    pub fn since(self, earlier: CpuTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

/// Reads utime + stime (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn process_cpu(pid: u32) -> Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text).with_context(|| format!("parsing {path}"))
}

/// CPU time of the bench process itself (load generator + in-process upstream).
pub fn self_cpu() -> Result<CpuTime> {
    process_cpu(std::process::id())
}

fn parse_stat(text: &str) -> Result<CpuTime> {
    // Field 2 (comm) is parenthesised and may contain spaces: split after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .context("no ')' in stat line")?;
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |field: usize| -> Result<u64> {
        let s = fields
            .get(field - 3)
            .with_context(|| format!("stat line has no field {field}"))?;
        s.parse::<u64>()
            .with_context(|| format!("field {field} is not a number: {s:?}"))
    };
    let ticks = get(14)? + get(15)?;
    Ok(CpuTime(ticks_to_duration(ticks, clock_ticks_per_second())))
}

fn ticks_to_duration(ticks: u64, hz: u64) -> Duration {
    Duration::from_nanos(((u128::from(ticks) * 1_000_000_000) / u128::from(hz.max(1))) as u64)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// Machine-wide busy CPU (all processes, all cores) from the `cpu` line of
/// `/proc/stat`: user + nice + system + irq + softirq, and steal separately.
#[derive(Debug, Clone, Copy)]
pub struct SystemCpu {
    pub busy: CpuTime,
    pub steal: CpuTime,
}

pub fn system_cpu() -> Result<SystemCpu> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_proc_stat(&text).context("parsing /proc/stat")
}

fn parse_proc_stat(text: &str) -> Result<SystemCpu> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no aggregate cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().context("non-numeric field"))
        .collect::<Result<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal ...
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    let hz = clock_ticks_per_second();
    Ok(SystemCpu {
        busy: CpuTime(ticks_to_duration(busy, hz)),
        steal: CpuTime(ticks_to_duration(at(7), hz)),
    })
}

/// Microseconds of CPU per call, or `None` when there were no calls.
pub fn cpu_per_call_us(cpu: Duration, calls: u64) -> Option<f64> {
    (calls > 0).then(|| cpu.as_secs_f64() * 1e6 / calls as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::from_nanos(&mut v);
        assert_eq!(l.p50_us, 50.0);
        assert_eq!(l.p99_us, 99.0);
        assert_eq!(l.max_us, 100.0);
        assert!((l.mean_us - 50.5).abs() < 1e-9);
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 20 1000 3 1 2 7 0 0\ncpu0 50 0 10 500 1 0 1 3 0 0\n";
        let s = parse_proc_stat(text).expect("parse");
        let hz = clock_ticks_per_second();
        assert_eq!(s.busy.0, ticks_to_duration(128, hz));
        assert_eq!(s.steal.0, ticks_to_duration(7, hz));
    }

    #[test]
    fn parses_stat_with_spaces_in_comm() {
        let line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let cpu = parse_stat(line).expect("parse");
        let hz = clock_ticks_per_second();
        assert_eq!(cpu.0, ticks_to_duration(300, hz));
    }
}
