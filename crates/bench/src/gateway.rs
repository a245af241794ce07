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

/// Writes `<dir>/bench.yaml` (data in `<dir>/data`): one upstream, one virtual
/// server `bench`, authentication required or off.
pub fn write_config(dir: &Path, port: u16, upstream: SocketAddr, auth: bool) -> Result<PathBuf> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = format!(
        "listen: 127.0.0.1:{port}\n\
         data_dir: {data}\n\
         auth: {{mode: {mode}}}\n\
         upstreams:\n  - name: fast\n    transport: streamable_http\n    url: http://{upstream}/mcp\n\
         virtual_servers:\n  - name: bench\n    upstreams: [{{upstream: fast, prefix: \"\"}}]\n",
        data = data_dir.display(),
        mode = if auth { "required" } else { "off" },
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

/// Writes a config in `dir` and starts a gateway on it. With `auth`, the
/// config requires tokens and, before the gateway starts, the CLI creates the
/// user `bench` and a personal access token for `vs:bench` in its store.
/// Must be called from the main thread (see [`Gateway::spawn`]).
pub fn start(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    upstream: SocketAddr,
    auth: bool,
    cores: Option<Cores>,
) -> Result<Started> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = free_port()?;
    let config = write_config(dir, port, upstream, auth)?;
    let mut token = None;
    let mut cli = None;
    if auth {
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
            // Expected with `auth: {mode: off}`.
            .filter(|l| !l.contains("authentication is OFF"))
            .collect();
        (
            bad.len(),
            bad.iter().take(5).map(|s| s.to_string()).collect(),
        )
    }

    /// SIGTERM, up to 3 s of grace, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscall on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
