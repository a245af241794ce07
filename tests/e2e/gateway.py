"""Start the real `portcullis` binary for end-to-end tests.

`running_gateway(config)` writes the config dict as YAML (JSON is valid YAML), picks a
free loopback port, starts `target/release/portcullis serve`, waits for /healthz and
yields a `Gateway` handle. The process is stopped with SIGTERM (then SIGKILL) and its
log is kept for assertion messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PORTCULLIS_BIN", ROOT / "target" / "release" / "portcullis"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    base: str
    proc: subprocess.Popen
    data_dir: Path
    log_lines: list[str] = field(default_factory=list)
    config_path: Path | None = None

    def url(self, vs: str) -> str:
        return f"{self.base}/mcp/{vs}"

    def cli(self, *args: str, env: dict | None = None, input: str | None = None) -> str:
        """Run `portcullis <args> --config <this gateway's config>`; returns stdout."""
        r = subprocess.run([str(BINARY), *args, "--config", str(self.config_path)], cwd=ROOT,
                           capture_output=True, text=True, input=input, timeout=60,
                           env={**os.environ, "NO_COLOR": "1", **(env or {})})
        assert r.returncode == 0, f"portcullis {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def log(self) -> str:
        return "".join(self.log_lines[-200:])


@contextmanager
def running_gateway(config: dict, *, timeout: float = 30.0, env: dict | None = None,
                    port: int | None = None) -> Iterator[Gateway]:
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="pc-e2e-") as tmp:
        data_dir = Path(tmp) / "data"
        # Tests of the data plane run without authentication unless they ask for it.
        cfg = {"listen": f"127.0.0.1:{port}", "data_dir": str(data_dir), "auth": {"mode": "off"}, **config}
        cfg_path = Path(tmp) / "portcullis.yaml"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        proc = subprocess.Popen(
            [str(BINARY), "serve", "--config", str(cfg_path)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PORTCULLIS_LOG": "info", "NO_COLOR": "1", **(env or {})},
        )
        gw = Gateway(base=f"http://127.0.0.1:{port}", proc=proc, data_dir=data_dir, config_path=cfg_path)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                gw.log_lines.append(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gw.log()}")
            try:
                if httpx.get(f"{gw.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"gateway did not become healthy:\n{gw.log()}")
            time.sleep(0.05)
        try:
            yield gw
        finally:
            stop(proc)


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(url: str, body: dict | str | bytes, *, session: str | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> httpx.Response:
    """POST one JSON-RPC message the way a Streamable HTTP client does."""
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if session:
        h["Mcp-Session-Id"] = session
        h["MCP-Protocol-Version"] = "2025-11-25"
    h.update(headers or {})
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(url, content=content, headers=h, timeout=timeout)


def rpc_result(resp: httpx.Response) -> dict:
    """The JSON-RPC message in a JSON or SSE response (the last one carrying an id)."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        msgs = [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        finals = [m for m in msgs if "id" in m and "method" not in m]
        return finals[-1]
    return resp.json()


def initialize(url: str, capabilities: dict | None = None) -> str:
    r = post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": capabilities or {},
        "clientInfo": {"name": "e2e", "version": "1"}}})
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session=sid)
    return sid
