//! `portcullis-bench revocation`: how long a revoked token keeps working.
//!
//! Against a spawned gateway with authentication on, each round issues a fresh
//! personal access token with the CLI, waits until the gateway accepts it,
//! then revokes it — with `portcullis token revoke <id>` (another process
//! writing the store; the gateway learns of it from the change feed it polls)
//! or with `DELETE /api/v1/tokens/{id}` on the gateway's admin API — while one
//! connection sends `tools/call` with that token back to back, and records when
//! the first refusal arrives.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use crate::authcli::{Cli, Issued, BENCH_USER};
use crate::client::{Conn, Endpoint, Era, McpClient};
use crate::gateway;
use crate::upstream::Upstream;
use crate::TmpDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `portcullis token revoke <id>` only.
    Cli,
    /// `DELETE /api/v1/tokens/{id}` only.
    AdminApi,
    /// Both, the admin API only if the gateway serves it.
    All,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tokens revoked per method.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// How to revoke.
    #[arg(long, value_enum, default_value_t = Via::All)]
    via: Via,
    /// Gateway binary (default: `portcullis` next to this executable, else ./target/release/portcullis).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Revocations are issued at delays spread over this many ms after the
    /// token was first accepted (which happens just after a change-feed poll),
    /// so that they land at every phase of the gateway's 100 ms poll.
    #[arg(long, default_value_t = 100)]
    spread_ms: u64,
    /// Longest a revoked token may keep working before the round fails, in ms.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (gateway config, data and log).
    #[arg(long)]
    keep_tmp: bool,
}

/// One revocation, times in ms relative to the revocation's end.
#[derive(Debug, Clone)]
struct Sample {
    /// Revocation start (process spawn / request sent) to first refusal.
    from_start_ms: f64,
    /// Revocation end (process exit / response read) to first refusal.
    /// Negative when the gateway refused before the command had returned.
    from_end_ms: f64,
    /// Duration of the revoking command or request.
    command_ms: f64,
    /// Calls still accepted that were sent after the revocation ended.
    accepted_after_end: u64,
    /// Calls made while polling (all of them).
    probes: u64,
    /// Token creation (CLI returned) to first acceptance by the gateway.
    acceptance_ms: f64,
    status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Cli,
    AdminApi,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Cli => "portcullis token revoke (CLI, another process)",
            Way::AdminApi => "DELETE /api/v1/tokens/{id} (admin API)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Way::Cli => "cli",
            Way::AdminApi => "admin_api",
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    if !(1..=1000).contains(&args.rounds) {
        bail!("--rounds must be in [1, 1000]");
    }
    if !(100..=60_000).contains(&args.deadline_ms) {
        bail!("--deadline-ms must be in [100, 60000]");
    }
    let upstream = Upstream::start(0)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = TmpDir::create(args.keep_tmp)?;
    let bin = gateway::locate_binary(args.gateway_bin.as_deref())?;
    // The gateway's default audit (on), as before the option existed.
    let mode = gateway::Mode {
        auth: true,
        audit: gateway::Audit::Full,
    };
    let mut started = gateway::start(&rt, &bin, &tmp.path.join("gw"), upstream.addr, mode, None)?;
    let cli = started.cli.clone().context("no CLI for the gateway")?;
    let base = Endpoint::new(started.gateway.addr, "/mcp/bench");
    println!(
        "portcullis-bench revocation: gateway {} (pid {}), {} rounds per method, change feed polled every 100 ms",
        base,
        started.gateway.pid(),
        args.rounds
    );

    let mut methods = Vec::new();
    if args.via != Via::AdminApi {
        methods.push((Way::Cli, None));
    }
    if args.via != Via::Cli {
        let admin = cli.create_token(BENCH_USER, "bench-admin", "admin")?;
        let auth = bearer(&admin.secret)?;
        // The gateway learns of the new token from the change feed: wait for it.
        let t0 = Instant::now();
        let status = loop {
            let s = rt.block_on(admin_api_status(base.addr, &auth))?;
            if s != StatusCode::UNAUTHORIZED || t0.elapsed() > Duration::from_secs(3) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match status {
            StatusCode::OK => methods.push((Way::AdminApi, Some(auth))),
            s if args.via == Via::AdminApi => {
                bail!("GET /api/v1/tokens answered {s}: no admin API to revoke with")
            }
            s => println!("  GET /api/v1/tokens answered {s}: admin API not measured"),
        }
    }

    let mut results = Vec::new();
    let mut failed = false;
    for (method, admin) in &methods {
        eprintln!("  revoking via {} ...", method.key());
        let ctx = Ctx {
            cli: cli.clone(),
            way: *method,
            admin: admin.clone(),
            deadline: Duration::from_millis(args.deadline_ms),
        };
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        for i in 0..args.rounds {
            let name = format!("revoke-{}-{i}", method.key());
            let r = (|| -> Result<Sample> {
                let issued = cli.create_token(BENCH_USER, &name, "vs:bench")?;
                let created = Instant::now();
                let ep = base.clone().with_bearer(&issued.secret)?;
                let delay = Duration::from_secs_f64(args.spread_ms as f64 / 1e3 * spread(i));
                rt.block_on(round(&ctx, &ep, &issued, created, delay))
            })();
            match r {
                Ok(s) => samples.push(s),
                Err(e) => {
                    failed = true;
                    errors.push(format!("round {}: {e:#}", i + 1));
                    if errors.len() >= 3 {
                        break;
                    }
                }
            }
        }
        print!("{}", render(*method, &samples, &errors));
        results.push((*method, samples, errors));
    }
    if let Some(status) = started.gateway.exited() {
        failed = true;
        println!(
            "the gateway exited during the run ({status}); its output:\n{}",
            started.gateway.log_tail(40)
        );
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "date": crate::utc_date(),
            "commit": crate::git_commit(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "rounds": args.rounds,
            "methods": results.iter().map(|(m, s, e)| method_json(*m, s, e)).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    started.gateway.stop();
    drop(started);
    drop(tmp);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bearer(token: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// What `GET /api/v1/tokens` answers with an admin token (200: the admin API is served).
async fn admin_api_status(addr: std::net::SocketAddr, auth: &HeaderValue) -> Result<StatusCode> {
    let mut conn = Conn::connect(addr, Duration::from_secs(5)).await?;
    let resp = conn
        .send(
            Method::GET,
            "/api/v1/tokens",
            &[("authorization", auth.clone())],
            Bytes::new(),
        )
        .await?;
    Ok(resp.status)
}

/// `DELETE /api/v1/tokens/{id}` on its own thread and runtime: (start, end).
fn api_revoke(
    addr: std::net::SocketAddr,
    auth: HeaderValue,
    id: String,
) -> Result<(Instant, Instant)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut conn = Conn::connect(addr, Duration::from_secs(5)).await?;
        let start = Instant::now();
        let resp = conn
            .send(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                &[("authorization", auth)],
                Bytes::new(),
            )
            .await?;
        let end = Instant::now();
        if !resp.status.is_success() {
            bail!(
                "DELETE /api/v1/tokens/{id} answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        Ok((start, end))
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Signed `a - b` in ms.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a - b)
    } else {
        -ms(b - a)
    }
}

/// What every round of one method shares.
struct Ctx {
    cli: Cli,
    way: Way,
    admin: Option<HeaderValue>,
    deadline: Duration,
}

/// The `i`-th of a low-discrepancy sequence in [0, 1) (golden ratio).
fn spread(i: usize) -> f64 {
    (i as f64 * 0.618_033_988_749_895).fract()
}

async fn round(
    ctx: &Ctx,
    ep: &Endpoint,
    issued: &Issued,
    created: Instant,
    delay: Duration,
) -> Result<Sample> {
    let deadline = ctx.deadline;
    // The gateway learns of the new token from the change feed as well.
    let timeout = Duration::from_secs(5);
    let mut client = loop {
        match McpClient::open(ep, Era::Modern, timeout).await {
            Ok(c) => break c,
            Err(e) if created.elapsed() > deadline => {
                return Err(e.context("the new token was never accepted"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    let acceptance_ms = ms(created.elapsed());
    for _ in 0..3 {
        client
            .call_echo()
            .await
            .context("a call with the new token")?;
    }
    tokio::time::sleep(delay).await;
    let revoker = match (ctx.way, &ctx.admin) {
        (Way::Cli, _) => {
            let (cli, id) = (ctx.cli.clone(), issued.id.clone());
            std::thread::spawn(move || cli.revoke_token(&id))
        }
        (Way::AdminApi, Some(auth)) => {
            let (addr, auth, id) = (ep.addr, auth.clone(), issued.id.clone());
            std::thread::spawn(move || api_revoke(addr, auth, id))
        }
        (Way::AdminApi, None) => bail!("no admin token"),
    };
    let began = Instant::now();
    let mut accepted = Vec::new();
    let mut probes = 0u64;
    let (denied_at, status) = loop {
        if began.elapsed() > deadline {
            let _ = revoker.join();
            bail!(
                "the revoked token still worked {} ms after the revocation began",
                deadline.as_millis()
            );
        }
        let sent = Instant::now();
        let (id, resp) = client.send_echo().await?;
        let got = Instant::now();
        probes += 1;
        match resp.status {
            StatusCode::OK => {
                client.check_echo(id, &resp)?;
                accepted.push(sent);
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => break (got, resp.status),
            other => bail!(
                "unexpected answer {other} while polling: {}",
                String::from_utf8_lossy(&resp.body)
            ),
        }
    };
    let (start, end) = revoker
        .join()
        .map_err(|_| anyhow::anyhow!("the revoking thread panicked"))??;
    Ok(Sample {
        from_start_ms: signed_ms(denied_at, start),
        from_end_ms: signed_ms(denied_at, end),
        command_ms: ms(end - start),
        accepted_after_end: accepted.iter().filter(|&&t| t > end).count() as u64,
        probes,
        acceptance_ms,
        status: status.as_u16(),
    })
}

/// Nearest-rank percentile of unsorted values.
fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

fn col(samples: &[Sample], f: fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(f).collect()
}

type Column = (&'static str, &'static str, fn(&Sample) -> f64);

const COLUMNS: [Column; 5] = [
    ("revocation end -> first 401 (ms)", "from_end_ms", |s| {
        s.from_end_ms
    }),
    ("revocation start -> first 401 (ms)", "from_start_ms", |s| {
        s.from_start_ms
    }),
    ("revoking command itself (ms)", "command_ms", |s| {
        s.command_ms
    }),
    ("calls accepted after the end", "accepted_after_end", |s| {
        s.accepted_after_end as f64
    }),
    (
        "new token: creation -> accepted (ms)",
        "acceptance_ms",
        |s| s.acceptance_ms,
    ),
];

fn render(method: Way, samples: &[Sample], errors: &[String]) -> String {
    let mut out = format!(
        "\n== revocation to denial: {} ({} rounds) ==\n  {:<40}{:>9}{:>9}{:>9}{:>9}\n",
        method.name(),
        samples.len(),
        "",
        "min",
        "p50",
        "p99",
        "max"
    );
    // Adding 0.0 turns -0.0 into 0.0; tiny negatives round to 0.0 too.
    let f = |v: Option<f64>| {
        v.map(|x| if x.abs() < 0.05 { 0.0 } else { x } + 0.0)
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "n/a".into())
    };
    for (label, _, get) in COLUMNS {
        let v = col(samples, get);
        out.push_str(&format!(
            "  {label:<40}{:>9}{:>9}{:>9}{:>9}\n",
            f(pct(&v, 0.0)),
            f(pct(&v, 50.0)),
            f(pct(&v, 99.0)),
            f(pct(&v, 100.0))
        ));
    }
    let probes: u64 = samples.iter().map(|s| s.probes).sum();
    let statuses: Vec<u16> = samples.iter().map(|s| s.status).collect();
    out.push_str(&format!(
        "  {probes} polling calls in all; refusals answered {:?}\n",
        statuses.iter().collect::<std::collections::BTreeSet<_>>()
    ));
    for e in errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}

fn method_json(method: Way, samples: &[Sample], errors: &[String]) -> Value {
    let mut figures = serde_json::Map::new();
    for (_, key, get) in COLUMNS {
        let v = col(samples, get);
        figures.insert(
            key.into(),
            json!({"min": pct(&v, 0.0), "p50": pct(&v, 50.0), "p99": pct(&v, 99.0), "max": pct(&v, 100.0), "all": v}),
        );
    }
    json!({
        "method": method.key(),
        "rounds_ok": samples.len(),
        "errors": errors,
        "figures": figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), Some(10.0));
        assert_eq!(pct(&v, 99.0), Some(20.0));
        assert_eq!(pct(&v, 0.0), Some(1.0));
        assert_eq!(pct(&[], 50.0), None);
    }
}
