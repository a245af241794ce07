//! stdio upstreams: a supervised child process speaking newline-delimited JSON-RPC.
//!
//! The program is executed directly (never through a shell) in its own process
//! group, with a scrubbed environment. stderr goes to the log. Shutdown closes stdin,
//! then sends SIGTERM to the group, then SIGKILL, and the child is always reaped.

use crate::duplex::Duplex;
use crate::{EventSink, UpstreamError};
use futures_util::StreamExt;
use portcullis_config::Upstream;
use serde_json::Value;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// Variables passed through from the gateway's environment; everything else a child
/// sees comes from its `env` configuration, so gateway secrets never leak into it.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];
/// Longest stdout line (one JSON-RPC message) accepted from a child.
const MAX_LINE: usize = 64 * 1024 * 1024;
const GRACE_AFTER_STDIN_CLOSE: Duration = Duration::from_secs(2);
const GRACE_AFTER_SIGTERM: Duration = Duration::from_secs(3);

/// Keeps the child alive; dropping it starts the shutdown sequence.
pub(crate) struct StdioGuard {
    stop: Option<oneshot::Sender<()>>,
    exited: Option<oneshot::Receiver<()>>,
    pub(crate) pid: Option<u32>,
}

impl StdioGuard {
    /// Stop the child and wait until it has been reaped.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(exited) = self.exited.take() {
            let _ = exited.await;
        }
    }
}

impl Drop for StdioGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) fn spawn(
    spec: &Upstream,
    events: EventSink,
    permit: OwnedSemaphorePermit,
) -> Result<(Arc<Duplex>, StdioGuard), UpstreamError> {
    let name = spec.name.clone();
    let program = spec.command.as_deref().unwrap_or_default();
    let mut cmd = Command::new(program);
    cmd.args(&spec.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for key in INHERITED_ENV {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(&spec.env);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| {
        UpstreamError::Unreachable(name.clone(), format!("cannot start {program}: {e}"))
    })?;
    let pid = child.id();
    tracing::info!(upstream = %name, pid, command = %program, "started stdio upstream");

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out_tx, mut out_rx) = mpsc::channel::<Value>(256);
    let duplex = Arc::new(Duplex::new(name.clone(), out_tx, events));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (close_stdin_tx, mut close_stdin_rx) = oneshot::channel::<()>();
    let (exited_tx, exited_rx) = oneshot::channel::<()>();

    // Writer: one JSON message per line. Ends (closing stdin) on request or when
    // every sender is gone.
    if let Some(mut stdin) = stdin {
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut close_stdin_rx => break,
                    msg = out_rx.recv() => {
                        let Some(msg) = msg else { break };
                        let mut line = match serde_json::to_vec(&msg) {
                            Ok(l) => l,
                            Err(_) => continue,
                        };
                        line.push(b'\n');
                        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                            tracing::debug!(upstream = %name, "stdin closed");
                            break;
                        }
                    }
                }
            }
        });
    }

    if let Some(stdout) = stdout {
        let duplex = duplex.clone();
        tokio::spawn(async move {
            // Lines are capped so a misbehaving server cannot exhaust memory; an
            // overlong one is skipped whole and reported.
            let codec = LinesCodec::new_with_max_length(MAX_LINE);
            let mut lines = FramedRead::with_capacity(stdout, codec, 64 * 1024);
            while let Some(next) = lines.next().await {
                let line = match next {
                    Ok(line) => line,
                    Err(LinesCodecError::MaxLineLengthExceeded) => {
                        tracing::warn!(upstream = %duplex.name, "stdout line over {MAX_LINE} bytes skipped");
                        continue;
                    }
                    Err(LinesCodecError::Io(_)) => break,
                };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(&line) {
                    Ok(msg) if msg.is_object() => duplex.dispatch(msg),
                    _ => tracing::warn!(upstream = %duplex.name,
                        "non-JSON-RPC line on stdout ignored ({} bytes)", line.len()),
                }
            }
            duplex.mark_dead();
        });
    }

    if let Some(stderr) = stderr {
        let name = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let shown: String = line.chars().take(2_000).collect();
                tracing::info!(target: "upstream_stderr", upstream = %name, "{shown}");
            }
        });
    }

    let supervised = duplex.clone();
    tokio::spawn(async move {
        supervise(child, name, stop_rx, close_stdin_tx).await;
        supervised.mark_dead();
        drop(permit);
        let _ = exited_tx.send(());
    });

    Ok((
        duplex,
        StdioGuard {
            stop: Some(stop_tx),
            exited: Some(exited_rx),
            pid,
        },
    ))
}

async fn supervise(
    mut child: Child,
    name: String,
    stop: oneshot::Receiver<()>,
    close_stdin: oneshot::Sender<()>,
) {
    let pid = child.id();
    tokio::select! {
        status = child.wait() => {
            tracing::warn!(upstream = %name, ?status, "stdio upstream exited");
            kill_group(pid, libc::SIGKILL);
            return;
        }
        _ = stop => {}
    }
    let _ = close_stdin.send(());
    if let Ok(status) = tokio::time::timeout(GRACE_AFTER_STDIN_CLOSE, child.wait()).await {
        tracing::info!(upstream = %name, ?status, "stdio upstream stopped after stdin closed");
        kill_group(pid, libc::SIGKILL);
        return;
    }
    kill_group(pid, libc::SIGTERM);
    if let Ok(status) = tokio::time::timeout(GRACE_AFTER_SIGTERM, child.wait()).await {
        tracing::info!(upstream = %name, ?status, "stdio upstream stopped by SIGTERM");
        kill_group(pid, libc::SIGKILL);
        return;
    }
    kill_group(pid, libc::SIGKILL);
    let status = child.wait().await;
    tracing::warn!(upstream = %name, ?status, "stdio upstream killed");
}

/// Signal the child's whole process group (launchers such as npx fork grandchildren).
fn kill_group(pid: Option<u32>, signal: i32) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-(pid as i32), signal);
        }
    }
}
