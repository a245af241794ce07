//! Spawning the Portcullis gateway under test with a generated config.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::authcli::{Cli, BENCH_USER};
use crate::client::{Conn, Endpoint};

/// A set of cores (`--pin`: the bench on core 0, gateways on the others).
#[derive(Clone, Copy)]
pub struct Cores(libc::cpu_set_t);

impl Cores {
    pub fn range(cores: std::ops::Range<usize>) -> Cores {
        // SAFETY: cpu_set_t is plain data; the CPU_* helpers only touch the set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            for c in cores {
                libc::CPU_SET(c, &mut set);
            }
            Cores(set)
        }
    }

    /// Restricts the calling thread (and the threads and processes it creates
    /// afterwards) to these cores.
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY: plain syscall on the calling thread with a valid set.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// A spawned gateway; terminated (SIGTERM, then SIGKILL) when dropped.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
}

/// Finds the gateway binary: the explicit path, else `portcullis` next to the
/// bench executable (both live in target/release), else ./target/release.
pub fn locate_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!(
            "gateway binary {} not found; build it with `cargo build --release` \
             (or pass --direct-only / --gateway-url)",
            p.display()
        );
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("portcullis"));
    }
    candidates.push(PathBuf::from("target/release/portcullis"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "gateway binary not found (looked at {}); build it first with `cargo build --release`, \
         or pass --gateway-bin PATH, --gateway-url URL or --direct-only",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A free loopback port (bound then released; the gateway binds it next).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The `audit:` section of the generated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// `{enabled: false}`: nothing recorded.
    Off,
    /// `{}`: the gateway's default, one fsync per group commit (`sync: full`).
    Full,
    /// `{sync: normal}`: no fsync per group (survives a crash of the process only).
    Normal,
}

impl Audit {
    pub const ALL: [Audit; 3] = [Audit::Off, Audit::Full, Audit::Normal];

    fn yaml(self) -> &'static str {
        match self {
            Audit::Off => "{enabled: false}",
            Audit::Full => "{}",
            Audit::Normal => "{sync: normal}",
        }
    }

    /// How reports name it (`on` is the default, fsync per group).
    pub fn name(self) -> &'static str {
        match self {
            Audit::Off => "off",
            Audit::Full => "on",
            Audit::Normal => "normal",
        }
    }
}

/// How a spawned gateway is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// `auth: {mode: required}` (else `off`).
    pub auth: bool,
    pub audit: Audit,
}

impl Mode {
    /// `auth off, audit on`: for labels and directory names.
    pub fn label(self) -> String {
        format!(
            "auth {}, audit {}",
            if self.auth { "on" } else { "off" },
            self.audit.name()
        )
    }

    pub fn dir_name(self) -> String {
        format!(
            "auth-{}-audit-{}",
            if self.auth { "on" } else { "off" },
            self.audit.name()
        )
    }
}

/// Writes `<dir>/bench.yaml` (data in `<dir>/data`): one upstream, one virtual
/// server `bench`, authentication required or off, the audit section of `mode`.
pub fn write_config(dir: &Path, port: u16, upstream: SocketAddr, mode: Mode) -> Result<PathBuf> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = format!(
        "listen: 127.0.0.1:{port}\n\
         data_dir: {data}\n\
         auth: {{mode: {auth}}}\n\
         audit: {audit}\n\
         upstreams:\n  - name: fast\n    transport: streamable_http\n    url: http://{upstream}/mcp\n\
         virtual_servers:\n  - name: bench\n    upstreams: [{{upstream: fast, prefix: \"\"}}]\n",
        data = data_dir.display(),
        auth = if mode.auth { "required" } else { "off" },
        audit = mode.audit.yaml(),
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A spawned, healthy gateway and how to reach it.
pub struct Started {
    pub gateway: Gateway,
    /// `/mcp/bench`, with the bench user's token when authentication is on.
    pub endpoint: Endpoint,
    /// The CLI bound to this gateway's config (authentication on only).
    pub cli: Option<Cli>,
}

/// Writes a config in `dir` and starts a gateway on it. With `mode.auth`, the
/// config requires tokens and, before the gateway starts, the CLI creates the
/// user `bench` and a personal access token for `vs:bench` in its store.
/// Must be called from the main thread (see [`Gateway::spawn`]).
pub fn start(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    mode: Mode,
    cores: Option<Cores>,
) -> Result<Started> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = free_port()?;
    let config = write_config(dir, port, upstream, mode)?;
    let mut token = None;
    let mut cli = None;
    if mode.auth {
        crate::authcli::require_token_commands(bin)?;
        let c = Cli::new(bin, &config);
        c.create_admin(BENCH_USER)?;
        token = Some(c.create_token(BENCH_USER, "bench", "vs:bench")?);
        cli = Some(c);
    }
    let mut gateway = Gateway::spawn(bin, &config, dir, port, cores)?;
    rt.block_on(gateway.wait_healthy(Duration::from_secs(30)))?;
    let mut endpoint = Endpoint::new(gateway.addr, "/mcp/bench");
    if let Some(t) = &token {
        endpoint = endpoint.with_bearer(&t.secret)?;
    }
    Ok(Started {
        gateway,
        endpoint,
        cli,
    })
}

impl Gateway {
    /// Spawns `<bin> serve --config <config>`, output to `<dir>/gateway.log`.
    /// Must be called from the main thread: the child gets SIGKILL if the
    /// spawning thread dies (PR_SET_PDEATHSIG), so a crashed or interrupted
    /// bench never leaves a gateway behind.
    /// With `cores`, the gateway runs on those cores only.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        dir: &Path,
        port: u16,
        cores: Option<Cores>,
    ) -> Result<Gateway> {
        let log_path = dir.join("gateway.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(c) = &cores {
                    c.apply()?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Gateway {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the gateway has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `GET /healthz` until it answers 200.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                bail!(
                    "the gateway exited ({status}) before becoming healthy:\n{}",
                    self.log_tail(40)
                );
            }
            match health_once(self.addr).await {
                Ok(StatusCode::OK) => return Ok(()),
                Ok(status) => last = format!("/healthz answered {status}"),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the gateway did not answer 200 on http://{}/healthz within {timeout:?} ({last}); its output:\n{}",
            self.addr,
            self.log_tail(40)
        )
    }

    /// The last `n` lines of the gateway's output.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "(no output)".into();
        }
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines of the gateway's output that look like warnings or errors.
    pub fn log_problems(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            // Expected with `auth: {mode: off}` and `audit: {enabled: false}`.
            .filter(|l| !l.contains("authentication is OFF") && !l.contains(AUDIT_OFF_WARNING))
            .collect();
        (
            bad.len(),
            bad.iter().take(5).map(|s| s.to_string()).collect(),
        )
    }

    /// SIGTERM, up to 3 s of grace, then SIGKILL.
    pub fn stop(&mut self) {
        self.shutdown(Duration::from_secs(3));
    }

    /// SIGTERM, up to `grace` for a clean shutdown, then SIGKILL. True when the
    /// gateway exited on its own (within `grace`, or before it was asked to):
    /// only then has it written its closing log lines (see [`Gateway::audit_batches`]).
    pub fn shutdown(&mut self, grace: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscall on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// The group-commit statistics the gateway logged when it closed its audit
    /// log (after a clean [`Gateway::shutdown`]).
    pub fn audit_batches(&self) -> Result<BatchStats> {
        let text = std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        BatchStats::from_log(&text)
            .with_context(|| format!("in the gateway log {}", self.log_path.display()))
    }
}

/// What the gateway logs at start with `audit: {enabled: false}` (a WARN line
/// that is expected in the benchmark).
const AUDIT_OFF_WARNING: &str = "audit log is OFF";

/// The message of the line the audit writer logs at a clean shutdown, under
/// target `portcullis::audit`, with the field `batches={…}` (JSON).
const AUDIT_CLOSED: &str = "audit log closed";

/// Group-commit sizes of one gateway over its whole life, from its log.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    pub batches: u64,
    pub records: u64,
    pub mean: f64,
    pub largest: u64,
    /// `("<=1", n), ("<=2", n), …, (">256", n)`, smallest bucket first.
    pub histogram: Vec<(String, u64)>,
    /// Mean wait of a caller for its record to be durable (µs), when the
    /// gateway reports it.
    pub wait_mean_us: Option<f64>,
    /// `("<=250", n), …, (">100000", n)` in µs; empty when not reported.
    pub wait_histogram: Vec<(String, u64)>,
}

impl BatchStats {
    /// Parses the last `audit log closed … batches={…}` line of a gateway log
    /// (ANSI colour codes allowed). An error, never a panic, when the line is
    /// missing (audit off, or the gateway was killed) or malformed.
    pub fn from_log(log: &str) -> Result<BatchStats> {
        let line = log
            .lines()
            .rev()
            .map(strip_ansi)
            .find(|l| l.contains(AUDIT_CLOSED))
            .with_context(|| {
                format!(
                    "no \"{AUDIT_CLOSED}\" line (audit off, or the gateway did not shut down cleanly)"
                )
            })?;
        let at = line
            .find("batches=")
            .with_context(|| format!("no batches= field in {line:?}"))?;
        let json = &line[at + "batches=".len()..];
        let value: serde_json::Value = serde_json::Deserializer::from_str(json)
            .into_iter()
            .next()
            .context("nothing after batches=")?
            .with_context(|| format!("batches= is not JSON in {line:?}"))?;
        let count = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("batches.{key} is missing or not a count"))
        };
        let histogram = buckets(&value, "histogram")?.context("batches.histogram is missing")?;
        Ok(BatchStats {
            batches: count("batches")?,
            records: count("records")?,
            mean: value
                .get("mean")
                .and_then(serde_json::Value::as_f64)
                .context("batches.mean is missing")?,
            largest: count("largest")?,
            histogram,
            wait_mean_us: value
                .get("wait_mean_us")
                .and_then(serde_json::Value::as_f64),
            wait_histogram: buckets(&value, "wait_histogram_us")?.unwrap_or_default(),
        })
    }

    /// `<=1: 5012, <=2: 40, …` (empty buckets left out).
    pub fn histogram_text(&self) -> String {
        buckets_text(&self.histogram)
    }

    /// The wait histogram, as `histogram_text` (µs bounds).
    pub fn wait_text(&self) -> String {
        buckets_text(&self.wait_histogram)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let map = |b: &[(String, u64)]| -> serde_json::Map<String, serde_json::Value> {
            b.iter().map(|(k, n)| (k.clone(), (*n).into())).collect()
        };
        serde_json::json!({
            "batches": self.batches, "records": self.records, "mean": self.mean,
            "largest": self.largest, "histogram": map(&self.histogram),
            "wait_mean_us": self.wait_mean_us, "wait_histogram_us": map(&self.wait_histogram),
        })
    }
}

/// The buckets of the histogram under `key`, smallest first; `None` when the
/// key is absent.
fn buckets(value: &serde_json::Value, key: &str) -> Result<Option<Vec<(String, u64)>>> {
    let Some(map) = value.get(key) else {
        return Ok(None);
    };
    let mut out = map
        .as_object()
        .with_context(|| format!("batches.{key} is not a map"))?
        .iter()
        .map(|(k, v)| {
            let n = v
                .as_u64()
                .with_context(|| format!("{key} bucket {k} is not a count"))?;
            Ok((k.clone(), n))
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| bucket_bound(&a.0).total_cmp(&bucket_bound(&b.0)));
    Ok(Some(out))
}

/// `<=1: 5012, <=2: 40, …` (empty buckets left out).
fn buckets_text(buckets: &[(String, u64)]) -> String {
    let parts: Vec<String> = buckets
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(", ")
    }
}

/// Orders `<=N` buckets by N, and `>N` just after N.
fn bucket_bound(label: &str) -> f64 {
    let num = |s: &str| s.trim().parse::<f64>().unwrap_or(f64::INFINITY);
    match (label.strip_prefix("<="), label.strip_prefix('>')) {
        (Some(n), _) => num(n),
        (None, Some(n)) => num(n) + 0.5,
        _ => f64::INFINITY,
    }
}

/// Removes ANSI escape sequences (`ESC [ … letter`), which tracing writes
/// around field names.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn health_once(addr: SocketAddr) -> Result<StatusCode> {
    let mut conn = Conn::connect(addr, Duration::from_secs(2)).await?;
    let resp = conn
        .send(Method::GET, "/healthz", &[], Bytes::new())
        .await?;
    Ok(resp.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real closing line of a gateway's log (tracing's default format, with
    /// its ANSI colours), from `--audit compare` with 8 connections.
    const CLOSED: &str = "\u{1b}[2m2026-11-24T14:11:28.279994Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
        \u{1b}[2mportcullis::audit\u{1b}[0m\u{1b}[2m:\u{1b}[0m audit log closed \
        \u{1b}[3mbatches\u{1b}[0m\u{1b}[2m=\u{1b}[0m{\"batches\":1254,\"records\":3031,\
        \"mean\":2.417065390749601,\"largest\":7,\"histogram\":{\"<=1\":725,\"<=2\":106,\
        \"<=4\":202,\"<=8\":221,\"<=16\":0,\"<=64\":0,\"<=256\":0,\">256\":0}}";

    #[test]
    fn batch_stats_are_parsed_from_the_closing_line() {
        let log = format!(
            "\u{1b}[32m INFO\u{1b}[0m portcullis: listening on 127.0.0.1:9\n{CLOSED}\n\
             2026-11-24T14:20:01.6Z  INFO portcullis: stopped\n"
        );
        let s = BatchStats::from_log(&log).expect("parsed");
        assert_eq!((s.batches, s.records, s.largest), (1254, 3031, 7));
        assert!((s.mean - 2.417065390749601).abs() < 1e-12);
        let labels: Vec<&str> = s.histogram.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            labels,
            ["<=1", "<=2", "<=4", "<=8", "<=16", "<=64", "<=256", ">256"]
        );
        let counts: Vec<u64> = s.histogram.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [725, 106, 202, 221, 0, 0, 0, 0]);
        assert_eq!(s.histogram_text(), "<=1: 725, <=2: 106, <=4: 202, <=8: 221");
        assert_eq!(s.to_json()["histogram"]["<=8"], 221);
        // A gateway from before the wait figures: none, and no error.
        assert_eq!((s.wait_mean_us, s.wait_histogram.len()), (None, 0));
        let with_waits = CLOSED.replace(
            "}}",
            "},\"wait_mean_us\":2950.5,\"wait_histogram_us\":{\">100000\":1,\"<=250\":0,\"<=2500\":30,\"<=5000\":3000}}",
        );
        let w = BatchStats::from_log(&with_waits).expect("with waits");
        assert_eq!(w.wait_mean_us, Some(2950.5));
        assert_eq!(w.wait_text(), "<=2500: 30, <=5000: 3000, >100000: 1");
        assert_eq!(w.to_json()["wait_histogram_us"]["<=5000"], 3000);
        // Buckets in another order (a JSON map without preserved order).
        let shuffled = CLOSED.replace("\"<=1\":725,\"<=2\":106,", "\"<=2\":106,\"<=1\":725,");
        assert_eq!(BatchStats::from_log(&shuffled).expect("shuffled"), s);
        // Without colours, as when the log goes through a filter.
        let plain = strip_ansi(CLOSED);
        assert!(plain.contains("audit log closed batches={"));
        assert_eq!(BatchStats::from_log(&plain).expect("plain"), s);
    }

    #[test]
    fn a_missing_or_broken_line_is_an_error_not_a_panic() {
        let e = BatchStats::from_log("INFO portcullis: listening\nINFO portcullis: stopped\n")
            .expect_err("no line");
        assert!(
            format!("{e:#}").contains("no \"audit log closed\" line"),
            "{e:#}"
        );
        assert!(BatchStats::from_log("").is_err());
        for broken in [
            "INFO portcullis::audit: audit log closed",
            "INFO portcullis::audit: audit log closed batches=",
            "INFO portcullis::audit: audit log closed batches={\"batches\":3",
            "INFO portcullis::audit: audit log closed batches={\"batches\":3}",
            "INFO portcullis::audit: audit log closed batches=null",
        ] {
            assert!(BatchStats::from_log(broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn config_carries_the_audit_section() {
        let dir = std::env::temp_dir().join(format!("pc-bench-cfg-{}", std::process::id()));
        let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        for (audit, yaml) in [
            (Audit::Off, "audit: {enabled: false}\n"),
            (Audit::Full, "audit: {}\n"),
            (Audit::Normal, "audit: {sync: normal}\n"),
        ] {
            let mode = Mode { auth: false, audit };
            let path = write_config(&dir, 1, up, mode).expect("written");
            let text = std::fs::read_to_string(path).expect("read");
            assert!(text.contains(yaml), "{text}");
            assert!(text.contains("auth: {mode: off}"), "{text}");
            let cfg = portcullis_config::Config::from_yaml(&text, "bench.yaml")
                .expect("the gateway's config model accepts it");
            assert_eq!(cfg.audit.enabled, audit != Audit::Off);
            let sync = if audit == Audit::Normal {
                portcullis_config::AuditSync::Normal
            } else {
                portcullis_config::AuditSync::Full
            };
            assert_eq!(cfg.audit.sync, sync);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
