"""Shared helpers for the bad-input and process-lifecycle end-to-end tests.

The tiny stdio server (servers/tiny_stdio.py) takes a unique marker argument, so its
processes can be found in /proc by command line, and prints that marker on stderr.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from conftest import PYTHON
from gateway import Gateway, post, rpc_result

TINY = Path(__file__).resolve().parent / "servers" / "tiny_stdio.py"
_ids = itertools.count(1)
T = TypeVar("T")


def tiny_upstream(name: str, marker: str, *modes: str, **extra) -> dict:
    """A stdio upstream running the tiny server, tagged with `marker`."""
    return {"name": name, "transport": "stdio", "command": PYTHON, "args": [str(TINY), marker, *modes], **extra}


def rpc(url: str, sid: str | None, method: str, params: dict | None = None, *,
        headers: dict | None = None, timeout: float = 30.0) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
    if params is not None:
        body["params"] = params
    return post(url, body, session=sid, headers=headers, timeout=timeout)


def call_tool(url: str, sid: str, name: str, args: dict | None = None, timeout: float = 30.0) -> dict:
    """tools/call on a legacy session; the JSON-RPC message (result or error)."""
    r = rpc(url, sid, "tools/call", {"name": name, "arguments": args or {}}, timeout=timeout)
    assert r.status_code == 200, f"HTTP {r.status_code}: {r.text}"
    return rpc_result(r)


def tool_text(msg: dict) -> str:
    assert "result" in msg, f"expected a result, got {msg}"
    return msg["result"]["content"][0]["text"]


def error_of(resp: httpx.Response, status: int, code: int, fragment: str = "") -> dict:
    """Assert the HTTP status and the JSON-RPC error code/message; return the error."""
    assert resp.status_code == status, f"expected HTTP {status}, got {resp.status_code}: {resp.text[:500]}"
    msg = rpc_result(resp) if resp.content else {}
    err = msg.get("error")
    assert err, f"expected a JSON-RPC error, got {msg}"
    assert err["code"] == code, f"expected code {code}, got {err}"
    assert fragment.lower() in err["message"].lower(), f"{fragment!r} not in {err['message']!r}"
    return err


def assert_still_serving(gw: Gateway, vs: str, sid: str, tool: str = "tiny_echo") -> None:
    """The gateway is healthy and an already-open session still calls tools."""
    assert gw.proc.poll() is None, f"gateway exited with {gw.proc.returncode}:\n{gw.log()}"
    assert httpx.get(f"{gw.base}/healthz", timeout=5).status_code == 200
    text = f"still-here-{next(_ids)}"
    msg = call_tool(gw.url(vs), sid, tool, {"text": text})
    assert tool_text(msg) == text, msg


def wait_until(pred: Callable[[], T], timeout: float, interval: float = 0.1) -> T | None:
    """Poll `pred` until it is truthy (returned) or the deadline passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


# ---- /proc -------------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None when /proc has no entry (reaped)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_with_marker(marker: str) -> list[int]:
    """Live (non-zombie) processes with `marker` as one of their arguments."""
    return sorted(p for p in all_pids() if marker in argv(p) and (proc_stat(p) or ("Z",))[0] != "Z")


def children_of(ppid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is `ppid`, zombies included."""
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st[1] == ppid:
            out.append((p, st[0]))
    return out


def describe(pids: list[int]) -> str:
    return json.dumps({p: [proc_stat(p), argv(p)] for p in pids})
