//! Portcullis benchmark: `tools/call` directly against an in-process upstream
//! and through the gateway, for both MCP protocol eras, in the same run.
//!
//! See docs/performance.md for what each figure means.

mod auditreport;
mod authcli;
mod authreport;
mod client;
mod compare;
mod gateway;
mod load;
mod micro;
mod policy;
mod report;
mod revoke;
mod stats;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use client::{Endpoint, Era};
use gateway::Gateway;
use report::EraReport;
use upstream::Upstream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EraArg {
    Legacy,
    Modern,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthArg {
    /// `auth: {mode: off}` (no token).
    Off,
    /// `auth: {mode: required}`; the client presents a personal access token.
    On,
    /// Two gateways, off and on, measured back to back (see --rounds).
    Compare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuditArg {
    /// `audit: {enabled: false}`.
    Off,
    /// `audit: {}`: the gateway's default, one fsync per group commit.
    On,
    /// `audit: {sync: normal}`: no fsync per group commit.
    Normal,
    /// Three gateways, off, on and normal, measured back to back (see --rounds).
    Compare,
}

impl AuditArg {
    /// The audit section(s) of the spawned gateways.
    fn modes(self) -> &'static [gateway::Audit] {
        use gateway::Audit;
        match self {
            AuditArg::Off => &[Audit::Off],
            AuditArg::On => &[Audit::Full],
            AuditArg::Normal => &[Audit::Normal],
            AuditArg::Compare => &Audit::ALL,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Micro-benchmark of token validation (`Identity::authenticate`), in process.
    Validate(micro::Args),
    /// Revocation-to-denial time against a running gateway with authentication on.
    Revocation(revoke::Args),
    /// Micro-benchmark of policy decisions (`PolicyEngine::decide`), in process.
    Policy(policy::Args),
}

/// Benchmarks MCP tools/call directly against an upstream and through Portcullis.
#[derive(Debug, Parser)]
#[command(name = "portcullis-bench", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Sequential calls for the 1-connection latency phase.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Warm-up calls before the latency phase.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Concurrent connections for the saturation phase.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Duration of the saturation phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Which protocol era(s) to benchmark.
    #[arg(long, value_enum, default_value_t = EraArg::Both)]
    era: EraArg,
    /// Gateway binary (default: `portcullis` next to this executable, else ./target/release/portcullis).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Benchmark an already running gateway at this MCP URL (loopback only) instead of spawning one.
    #[arg(long, conflicts_with = "gateway_bin")]
    gateway_url: Option<String>,
    /// Pid of the gateway given by --gateway-url, to measure its CPU.
    #[arg(long, requires = "gateway_url")]
    gateway_pid: Option<u32>,
    /// Only benchmark the in-process upstream (no gateway).
    #[arg(long, conflicts_with_all = ["gateway_bin", "gateway_url"])]
    direct_only: bool,
    /// Run only the built-in upstream for --seconds seconds, then exit (no
    /// load): for pointing a manually started gateway at it while debugging.
    #[arg(long, conflicts_with_all = ["gateway_bin", "gateway_url", "direct_only"])]
    serve_upstream: bool,
    /// Port of the in-process upstream (default: ephemeral); useful with --gateway-url.
    #[arg(long, default_value_t = 0)]
    upstream_port: u16,
    /// Per-request timeout, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (gateway config, data and log).
    #[arg(long)]
    keep_tmp: bool,
    /// Authentication on the spawned gateway: off, on (a personal access token
    /// on every request), or compare (both gateways, back to back).
    #[arg(long, value_enum, default_value_t = AuthArg::Off,
          conflicts_with_all = ["gateway_url", "direct_only"])]
    auth: AuthArg,
    /// Durable audit on the spawned gateway: off, on (the default: fsync per
    /// group commit), normal (`sync: normal`), or compare (all three, back to back).
    #[arg(long, value_enum, default_value_t = AuditArg::On,
          conflicts_with_all = ["gateway_url", "direct_only"])]
    audit: AuditArg,
    /// With --auth compare or --audit compare: rounds per era, the order of the
    /// gateways alternating (A, B, … then …, B, A).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Pin the bench (load generator + upstream) to core 0 and spawned gateways
    /// to the other cores (less scheduling noise; a gateway then runs as many
    /// workers as it has cores).
    #[arg(long, conflicts_with_all = ["gateway_url", "direct_only"])]
    pin: bool,
    /// Bearer token to present to the gateway given by --gateway-url.
    #[arg(long, requires = "gateway_url")]
    token: Option<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Temporary directory removed on drop unless kept.
struct TmpDir {
    path: PathBuf,
    keep: bool,
}

impl TmpDir {
    fn create(keep: bool) -> Result<TmpDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("portcullis-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TmpDir { path, keep })
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Parses a loopback `http://host:port/path` URL (path defaults to /mcp/bench).
fn parse_gateway_url(url: &str) -> Result<Endpoint> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid --gateway-url {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--gateway-url must be an http:// URL");
    }
    let host = uri.host().context("--gateway-url has no host")?;
    let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse()
            .with_context(|| format!("--gateway-url host {h:?} is not an IP address"))?,
    };
    if !ip.is_loopback() {
        bail!("--gateway-url must point at a loopback address (got {ip})");
    }
    let path = match uri.path() {
        "" | "/" => "/mcp/bench".to_string(),
        p => p.to_string(),
    };
    Ok(Endpoint::new(
        SocketAddr::new(ip, uri.port_u16().unwrap_or(80)),
        path,
    ))
}

/// Today's date (UTC) as YYYY-MM-DD, without a date crate.
fn utc_date() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    portcullis_policy::day_label(days)
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn validate(args: &Args) -> Result<()> {
    if args.calls == 0 || args.connections == 0 {
        bail!("--calls and --connections must be at least 1");
    }
    if args.connections > 1024 {
        bail!("--connections is capped at 1024");
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    if args.calls > 10_000_000 || args.warmup > 10_000_000 {
        bail!("--calls and --warmup are capped at 10,000,000");
    }
    if !(100..=60_000).contains(&args.timeout_ms) {
        bail!("--timeout-ms must be in [100, 60000]");
    }
    if !(1..=20).contains(&args.rounds) {
        bail!("--rounds must be in [1, 20]");
    }
    let comparing = args.auth == AuthArg::Compare || args.audit == AuditArg::Compare;
    if args.rounds > 1 && !comparing {
        bail!("--rounds needs --auth compare or --audit compare");
    }
    if args.auth == AuthArg::Compare && args.audit == AuditArg::Compare {
        bail!("--auth compare and --audit compare cannot be combined: compare one at a time");
    }
    Ok(())
}

/// A gateway being measured: where, which process, how it is configured.
struct UnderTest {
    endpoint: Endpoint,
    pid: Option<u32>,
    label: String,
    /// `auth off, audit on` (spawned gateways) or `external`.
    mode: String,
}

fn run(args: Args) -> Result<ExitCode> {
    validate(&args)?;
    match &args.command {
        Some(Sub::Validate(a)) => return micro::run(a).map(|()| ExitCode::SUCCESS),
        Some(Sub::Revocation(a)) => return revoke::run(a),
        Some(Sub::Policy(a)) => return policy::run(a).map(|()| ExitCode::SUCCESS),
        None => {}
    }
    let eras: &[Era] = match args.era {
        EraArg::Legacy => &[Era::Legacy],
        EraArg::Modern => &[Era::Modern],
        EraArg::Both => &[Era::Legacy, Era::Modern],
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let gateway_cores = if args.pin {
        if cores < 2 {
            bail!("--pin needs at least 2 cores");
        }
        // Before any thread is started: every bench thread inherits core 0.
        gateway::Cores::range(0..1)
            .apply()
            .context("pinning the bench to core 0")?;
        Some(gateway::Cores::range(1..cores))
    } else {
        None
    };
    let upstream = Upstream::start(args.upstream_port)?;
    if args.serve_upstream {
        println!(
            "upstream serving http://{}/mcp for {} s",
            upstream.addr, args.seconds
        );
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        println!("upstream served: {:?}", upstream.counts());
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the load-generator runtime")?;

    // Declared before the gateways so that the gateways are stopped first.
    let mut tmp: Option<TmpDir> = None;
    let mut gateways: Vec<(gateway::Mode, Gateway)> = Vec::new();
    let mut under_test: Vec<UnderTest> = Vec::new();
    if let Some(url) = &args.gateway_url {
        let mut ep = parse_gateway_url(url)?;
        if let Some(t) = &args.token {
            ep = ep.with_bearer(t)?;
        }
        under_test.push(UnderTest {
            label: format!("external {ep}"),
            endpoint: ep,
            pid: args.gateway_pid,
            mode: "external".into(),
        });
    } else if !args.direct_only {
        let bin = gateway::locate_binary(args.gateway_bin.as_deref())?;
        let dir = tmp.insert(TmpDir::create(args.keep_tmp)?);
        let auths: &[bool] = match args.auth {
            AuthArg::Off => &[false],
            AuthArg::On => &[true],
            AuthArg::Compare => &[false, true],
        };
        // At most one of the two lists has more than one entry (see validate).
        for &auth in auths {
            for &audit in args.audit.modes() {
                let mode = gateway::Mode { auth, audit };
                let sub = dir.path.join(mode.dir_name());
                let started = gateway::start(&rt, &bin, &sub, upstream.addr, mode, gateway_cores)?;
                let pid = started.gateway.pid();
                under_test.push(UnderTest {
                    label: format!("{} (pid {pid}, {})", bin.display(), mode.label()),
                    endpoint: started.endpoint,
                    pid: Some(pid),
                    mode: mode.label(),
                });
                gateways.push((mode, started.gateway));
            }
        }
    }
    let direct_ep = Endpoint::new(upstream.addr, "/mcp");
    let gw_label = if under_test.is_empty() {
        "none (--direct-only)".to_string()
    } else {
        under_test
            .iter()
            .map(|u| u.label.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!(
        "portcullis-bench: upstream {direct_ep}, gateway {}, {gw_label}",
        under_test
            .first()
            .map(|u| u.endpoint.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  {} warm-up + {} sequential calls at 1 connection; {} connections for {} s; {} cores",
        args.warmup,
        args.calls,
        args.connections,
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let bench_cpu_start = stats::self_cpu()?;
    let mut reports = Vec::new();
    let mut auth_reports = Vec::new();
    let mut audit_reports = Vec::new();
    for &era in eras {
        let measure = |endpoint: &Endpoint, pid: Option<u32>, label: &str| -> report::Outcome {
            eprintln!("  running {} / {label} ...", era.name());
            let target = load::Target {
                endpoint: endpoint.clone(),
                era,
                timeout,
                gateway_pid: pid,
            };
            let before = upstream.counts();
            let mut run = rt
                .block_on(load::run(
                    &target,
                    args.warmup,
                    args.calls,
                    args.connections,
                    args.seconds,
                ))
                .map_err(|e| format!("{e:#}"))?;
            run.upstream = upstream.counts().since(before);
            Ok(run)
        };
        let first_pid = under_test.first().and_then(|u| u.pid);
        let direct = measure(&direct_ep, first_pid, "direct");
        let gw = match under_test.as_slice() {
            [] => None,
            [one] => Some(measure(&one.endpoint, one.pid, "gateway")),
            many => {
                let n = many.len();
                let measure_k = |k: usize, i: usize| {
                    let u = &many[k];
                    let label = format!("gateway, {}, round {}", u.mode, i + 1);
                    measure(&u.endpoint, u.pid, &label)
                };
                if args.auth == AuthArg::Compare {
                    let target = |u: &UnderTest| load::Target {
                        endpoint: u.endpoint.clone(),
                        era,
                        timeout,
                        gateway_pid: u.pid,
                    };
                    // The interleaved phase: one connection to each gateway,
                    // the first measured first.
                    let interleaved = |order: &[usize], i: usize| {
                        eprintln!(
                            "  running {} / interleaved, auth off and on, round {} ...",
                            era.name(),
                            i + 1
                        );
                        let (first, second) = (order[0], order[1]);
                        rt.block_on(load::interleaved(
                            &target(&many[first]),
                            &target(&many[second]),
                            args.warmup,
                            args.calls,
                        ))
                        .map(|(phases, errors)| {
                            let [a, b] = phases;
                            let (off, on) = if first == 0 { (a, b) } else { (b, a) };
                            authreport::Interleaved { off, on, errors }
                        })
                        .map_err(|e| format!("{e:#}"))
                    };
                    let rounds = compare::run_rounds(n, args.rounds, measure_k, interleaved);
                    let c = compare::Comparison::new(era, "auth", &authreport::NAMES, rounds);
                    let base = c.first_base();
                    auth_reports.push(c);
                    Some(base)
                } else {
                    let rounds = compare::run_rounds(n, args.rounds, measure_k, |_, _| ());
                    let c = compare::Comparison::new(era, "audit", &auditreport::NAMES, rounds);
                    let base = c.first_base();
                    audit_reports.push(c);
                    Some(base)
                }
            }
        };
        let r = EraReport {
            era,
            direct,
            gateway: gw,
        };
        print!("{}", report::render(&r, args.connections));
        if let Some(a) = auth_reports.last().filter(|a| a.era == era) {
            print!("{}", authreport::render(a, args.connections));
        }
        if let Some(a) = audit_reports.last().filter(|a| a.era == era) {
            print!("{}", auditreport::render(a, args.connections));
        }
        reports.push(r);
    }
    let bench_cpu = stats::self_cpu()?.since(bench_cpu_start);
    println!(
        "\nbench process CPU over all phases: {:.2} s",
        bench_cpu.as_secs_f64()
    );

    let mut failed = reports.iter().any(|r| r.error_count() > 0)
        || auth_reports.iter().any(|r| r.error_count() > 0)
        || audit_reports.iter().any(|r| r.error_count() > 0);
    let mut gateway_notes = Vec::new();
    let mut batches = Vec::new();
    for (mode, gw) in gateways.iter_mut() {
        if let Some(status) = gw.exited() {
            failed = true;
            let note = format!("the gateway exited during the run ({status})");
            println!("{note}; its output:\n{}", gw.log_tail(40));
            gateway_notes.push(note);
        }
        let (n, samples) = gw.log_problems();
        if n > 0 {
            println!("gateway log: {n} WARN/ERROR lines, first ones:");
            for s in &samples {
                println!("  {s}");
            }
            gateway_notes.extend(samples);
        }
        // A clean stop (its own shutdown deadline is 10 s) writes the audit
        // log's closing line, with the group-commit sizes.
        let clean = gw.shutdown(SHUTDOWN_GRACE);
        if mode.audit != gateway::Audit::Off {
            let stats = if clean {
                gw.audit_batches().map_err(|e| format!("{e:#}"))
            } else {
                Err(format!(
                    "the gateway did not stop within {SHUTDOWN_GRACE:?} of SIGTERM and was killed"
                ))
            };
            batches.push(auditreport::Batches {
                label: mode.label(),
                audit: mode.audit,
                stats,
            });
        }
    }
    print!("{}", auditreport::render_batches(&batches));

    if let Some(path) = &args.json {
        let run = RunInfo {
            gw_label: &gw_label,
            bench_cpu,
            gateway_notes: &gateway_notes,
            auth: &auth_reports,
            audit: &audit_reports,
            batches: &batches,
        };
        write_json(path, &args, &reports, &run)?;
    }
    drop(gateways);
    drop(tmp);
    if failed {
        eprintln!("portcullis-bench: some calls failed (see the error samples above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a gateway may take to stop after SIGTERM before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

struct RunInfo<'a> {
    gw_label: &'a str,
    bench_cpu: Duration,
    gateway_notes: &'a [String],
    auth: &'a [authreport::AuthReport],
    audit: &'a [auditreport::AuditReport],
    batches: &'a [auditreport::Batches],
}

fn write_json(path: &Path, args: &Args, reports: &[EraReport], run: &RunInfo) -> Result<()> {
    let doc = json!({
        "date": utc_date(),
        "commit": git_commit(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "gateway": run.gw_label,
        "settings": {
            "warmup": args.warmup, "calls": args.calls,
            "connections": args.connections, "seconds": args.seconds,
            "auth": format!("{:?}", args.auth).to_lowercase(),
            "audit": format!("{:?}", args.audit).to_lowercase(), "rounds": args.rounds,
            "pin": args.pin,
            "gateway_worker_threads_env": std::env::var("PORTCULLIS_WORKER_THREADS").ok(),
        },
        "targets": {
            "gateway_cpu_us_per_call_max": report::TARGET_CPU_US,
            "added_p50_us_max": report::TARGET_ADDED_P50_US,
            "added_p99_us_max": report::TARGET_ADDED_P99_US,
            "auth_added_p99_us_max": authreport::TARGET_AUTH_ADDED_P99_US,
            "auth_throughput_ratio_min": authreport::TARGET_AUTH_THROUGHPUT_RATIO,
            "audit_throughput_ratio_min": auditreport::TARGET_AUDIT_THROUGHPUT_RATIO,
        },
        "eras": reports.iter().map(report::era_json).collect::<Vec<_>>(),
        "auth_comparison": run.auth.iter().map(authreport::auth_json).collect::<Vec<_>>(),
        "audit_comparison": run.audit.iter().map(auditreport::audit_json).collect::<Vec<_>>(),
        "audit_batches": auditreport::batches_json(run.batches),
        "bench_cpu_s": run.bench_cpu.as_secs_f64(),
        "gateway_notes": run.gateway_notes,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_url_must_be_loopback_http() {
        let ep = parse_gateway_url("http://127.0.0.1:8080/mcp/x").expect("ok");
        assert_eq!(
            ep.addr,
            "127.0.0.1:8080".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(ep.path, "/mcp/x");
        let ep = parse_gateway_url("http://localhost:9000").expect("ok");
        assert_eq!(ep.path, "/mcp/bench");
        assert!(parse_gateway_url("http://[::1]:9000/mcp/bench").is_ok());
        assert!(parse_gateway_url("http://192.168.1.2:9000/mcp").is_err());
        assert!(parse_gateway_url("https://127.0.0.1:9000/mcp").is_err());
        assert!(parse_gateway_url("http://example.com/mcp").is_err());
    }

    #[test]
    fn utc_date_is_well_formed() {
        let d = utc_date();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
