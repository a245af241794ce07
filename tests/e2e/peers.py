"""Helpers for tests that put real third-party MCP servers behind the gateway and drive it
with the real PyPI `mcp` client.

- upstream config dicts for npm `server-everything` (stdio) and `server-filesystem` (stdio);
- `running_everything_http()`: server-everything's Streamable HTTP transport on a free
  loopback port (a preload keeps it off other interfaces);
- `client(...)`: an `mcp.Client` for a gateway URL or transport in a given mode;
- recording sampling / elicitation callbacks and small result helpers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
from conftest import EVERYTHING_JS, FILESYSTEM_JS, ROOT
from gateway import Gateway, free_port, running_gateway, stop
from mcp import Client

NODE = os.environ.get("NODE22") or shutil.which("node") or "node"
LOOPBACK_PRELOAD = Path(__file__).resolve().parent / "loopback_only.cjs"
MODES = ["legacy", "2026-07-28"]
TIMEOUT = 60  # guard against hangs only; never asserted on


def everything_stdio(name: str = "everything") -> dict:
    return {"name": name, "transport": "stdio", "command": NODE, "args": [EVERYTHING_JS, "stdio"]}


def filesystem_stdio(root: Path, name: str = "filesystem") -> dict:
    return {"name": name, "transport": "stdio", "command": NODE, "args": [FILESYSTEM_JS, str(root)]}


def http_upstream(name: str, url: str) -> dict:
    return {"name": name, "transport": "streamable_http", "url": url}


def one_server(upstream: dict, vs: str = "v", **member: Any) -> dict:
    """A config with one upstream as the only member of virtual server `vs`."""
    return {"upstreams": [upstream],
            "virtual_servers": [{"name": vs, "upstreams": [{"upstream": upstream["name"], **member}]}]}


@contextmanager
def live_gateway(config: dict) -> Iterator[Gateway]:
    """`running_gateway`, failing at teardown if the gateway died while in use."""
    with running_gateway(config) as gw:
        yield gw
        if gw.proc.poll() is not None:
            raise AssertionError(f"the gateway exited early with {gw.proc.returncode}:\n{gw.log()}")


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing accepted connections on 127.0.0.1:{port}")


@contextmanager
def running_everything_http() -> Iterator[str]:
    """server-everything over Streamable HTTP; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [NODE, "-r", str(LOOPBACK_PRELOAD), EVERYTHING_JS, "streamableHttp"],
        cwd=ROOT, env={**os.environ, "PORT": str(port)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc, grace=5)


def client(server: Any, mode: str, **kw: Any) -> Client:
    return Client(server, mode=mode, read_timeout_seconds=TIMEOUT, **kw)


class Sampler:
    """A sampling callback that answers with `answer` and records what it was asked."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.requests: list[types.CreateMessageRequestParams] = []

    async def __call__(self, ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.requests.append(params)
        return types.CreateMessageResult(role="assistant", model="e2e-model", stop_reason="endTurn",
                                         content=types.TextContent(type="text", text=self.answer))


class Eliciter:
    """An elicitation callback giving a fixed action (and content when accepting)."""

    def __init__(self, action: str, content: dict | None = None) -> None:
        self.action = action
        self.content = content
        self.messages: list[str] = []

    async def __call__(self, ctx: Any, params: Any) -> types.ElicitResult:
        self.messages.append(params.message)
        return types.ElicitResult(action=self.action, content=self.content if self.action == "accept" else None)


def text_of(result: Any) -> str:
    """All text content of a tool result or prompt/resource contents, joined by newlines."""
    items = getattr(result, "content", None)
    if items is None:
        items = getattr(result, "contents", None) or [m.content for m in result.messages]
    return "\n".join(getattr(c, "text", "") or "" for c in items)
