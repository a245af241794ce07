"""stdio upstream lifecycle, observed through /proc: one child per session, started on
initialize, stopped and reaped on DELETE, idle expiry and gateway shutdown, process
limits, restart after a crash, and child stderr in the gateway log.

Children are found by a unique marker argument passed to servers/tiny_stdio.py. The
bounded polls below are waits for an asynchronous event, not timing assertions."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import PYTHON
from e2e_util import (call_tool, children_of, describe, pids_with_marker, proc_stat, rpc, tiny_upstream,
                      tool_text, wait_until)
from gateway import Gateway, initialize, post, rpc_result, running_gateway

MODERN = "2026-07-28"


@pytest.fixture
def marker() -> str:
    return f"pc-e2e-proc-{uuid.uuid4().hex[:12]}"


@contextmanager
def tiny_gateway(marker: str, *modes: str, limits: dict | None = None, gw_env: dict | None = None,
                 **upstream: object) -> Iterator[Gateway]:
    cfg: dict = {"upstreams": [tiny_upstream("tiny", marker, *modes, **upstream)],
                 "virtual_servers": [{"name": "vs", "upstreams": [{"upstream": "tiny"}]}]}
    if limits:
        cfg["limits"] = limits
    try:
        with running_gateway(cfg, env=gw_env) as gw:
            yield gw
    finally:
        # If the gateway failed to stop them, leave none of our tiny servers behind.
        for p in pids_with_marker(marker) + pids_with_marker(f"{marker}-grandchild"):
            os.kill(p, signal.SIGKILL)


def delete(url: str, sid: str) -> int:
    return httpx.delete(url, headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"},
                        timeout=30).status_code


def child_pid(url: str, sid: str) -> int:
    return int(tool_text(call_tool(url, sid, "tiny_pid")))


def reaped(pid: int, timeout: float = 15) -> bool:
    """Wait until `pid` has no /proc entry at all: exited and reaped (not a zombie)."""
    return bool(wait_until(lambda: proc_stat(pid) is None, timeout))


def dead(pid: int) -> bool:
    st = proc_stat(pid)
    return st is None or st[0] == "Z"


def assert_no_zombies(gw: Gateway) -> None:
    zombies = wait_until(lambda: not [p for p, s in children_of(gw.proc.pid) if s == "Z"], 5)
    assert zombies, f"zombie children of the gateway: {children_of(gw.proc.pid)}\n{gw.log()}"


def test_one_child_per_session_stopped_on_delete(marker: str) -> None:
    with tiny_gateway(marker, "grandchild") as gw:
        url = gw.url("vs")
        assert pids_with_marker(marker) == []
        a = initialize(url)
        (pid_a,) = pids_with_marker(marker)
        state, ppid, pgid = proc_stat(pid_a)
        assert ppid == gw.proc.pid, describe([pid_a])
        assert pgid == pid_a != os.getpgid(gw.proc.pid), "the child must lead its own process group"
        assert child_pid(url, a) == pid_a
        grandchild = wait_until(lambda: pids_with_marker(f"{marker}-grandchild"), 10)
        assert grandchild and len(grandchild) == 1 and proc_stat(grandchild[0])[2] == pid_a

        b = initialize(url)
        pid_b = child_pid(url, b)
        assert pid_b != pid_a and sorted(pids_with_marker(marker)) == sorted([pid_a, pid_b])

        assert delete(url, a) == 200
        assert reaped(pid_a), f"child of the deleted session still there: {describe([pid_a])}"
        assert wait_until(lambda: dead(grandchild[0]), 15), f"grandchild survived: {describe(grandchild)}"
        assert pids_with_marker(marker) == [pid_b]
        assert child_pid(url, b) == pid_b  # the other session keeps its own child
        assert_no_zombies(gw)
        assert "stopped after stdin closed" in gw.log(), gw.log()


def test_sigterm_to_gateway_stops_and_reaps_every_child(marker: str) -> None:
    with tiny_gateway(marker, "grandchild") as gw:
        url = gw.url("vs")
        sids = [initialize(url) for _ in range(2)]
        children = pids_with_marker(marker)
        assert len(children) == 2 and {child_pid(url, s) for s in sids} == set(children)
        grandchildren = wait_until(lambda: (g := pids_with_marker(f"{marker}-grandchild")) and len(g) == 2 and g, 10)
        assert grandchildren, describe(children)
        gw.proc.send_signal(signal.SIGTERM)
        rc = gw.proc.wait(timeout=30)
        assert rc == 0, f"gateway exit status {rc}:\n{gw.log()}"
        assert pids_with_marker(marker) == [], describe(pids_with_marker(marker))
        assert all(proc_stat(p) is None for p in children), describe(children)
        assert wait_until(lambda: all(dead(g) for g in grandchildren), 10), describe(grandchildren)
        assert wait_until(lambda: gw.log().count("stopped after stdin closed") == 2, 5), gw.log()


def test_sigterm_with_an_open_session_stream(marker: str) -> None:
    """A client holding the GET stream open must not keep the gateway (and its
    children) alive after SIGTERM: shutdown ends the stream and stops the children."""
    with tiny_gateway(marker) as gw:
        url = gw.url("vs")
        sid = initialize(url)
        (pid,) = pids_with_marker(marker)
        opened = threading.Event()

        def hold_stream() -> None:
            h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25", "Accept": "text/event-stream"}
            try:
                with httpx.stream("GET", url, headers=h, timeout=60) as r:
                    opened.set()
                    for _ in r.iter_bytes():
                        pass
            except httpx.HTTPError:
                pass

        threading.Thread(target=hold_stream, daemon=True).start()
        assert opened.wait(10), "GET stream did not open"
        gw.proc.send_signal(signal.SIGTERM)
        try:
            rc = gw.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, f"gateway still running 20 s after SIGTERM (rc={rc}); child alive: {not dead(pid)}\n{gw.log()}"
        assert proc_stat(pid) is None, describe([pid])


def test_stubborn_child_is_killed_and_reaped(marker: str) -> None:
    with tiny_gateway(marker, "stubborn") as gw:
        url = gw.url("vs")
        sid = initialize(url)
        (pid,) = pids_with_marker(marker)
        assert delete(url, sid) == 200
        assert reaped(pid, 20), f"a child ignoring stdin EOF and SIGTERM survived: {describe([pid])}"
        # The gateway logs the kill after reaping the child, so the line can
        # trail the child's disappearance from /proc by a moment.
        assert wait_until(lambda: "stdio upstream killed" in gw.log(), 10), gw.log()
        assert_no_zombies(gw)


def test_max_processes_refuses_the_third_session(marker: str) -> None:
    """The third concurrent session cannot start a process; each of its calls says so
    (-31003, "process limit"). Being at the limit is not an upstream failure, so it
    must not be answered with restart backoff ("restarting after a failure")."""
    with tiny_gateway(marker, max_processes=2) as gw:
        url = gw.url("vs")
        a, b = initialize(url), initialize(url)
        assert len(pids_with_marker(marker)) == 2
        c = initialize(url)  # answers, without the upstream
        assert len(pids_with_marker(marker)) == 2, describe(pids_with_marker(marker))
        for sid in (a, b):
            assert tool_text(call_tool(url, sid, "tiny_echo", {"text": "ok"})) == "ok"
        listed = rpc_result(rpc(url, c, "tools/list"))
        assert listed.get("error", {}).get("code") == -31003, listed
        assert len(pids_with_marker(marker)) == 2
        for attempt in (1, 2):
            msg = call_tool(url, c, "tiny_echo", {"text": "c"})
            err = msg.get("error") or {}
            assert err.get("code") == -31003 and "process limit (2)" in err.get("message", ""), \
                f"call {attempt} of the third session: {msg}\n{gw.log()}"
        assert len(pids_with_marker(marker)) == 2


def test_freed_process_slot_goes_to_a_waiting_session(marker: str) -> None:
    with tiny_gateway(marker, max_processes=1) as gw:
        url = gw.url("vs")
        a, b = initialize(url), initialize(url)
        assert "error" in call_tool(url, b, "tiny_echo", {"text": "b"})
        pid_a = child_pid(url, a)
        assert delete(url, a) == 200 and reaped(pid_a)
        # Retried in a bounded loop: right after a refusal the upstream may be in backoff.
        ok = wait_until(lambda: "result" in (m := call_tool(url, b, "tiny_echo", {"text": "b"})) and m, 20, 0.5)
        assert ok and tool_text(ok) == "b", gw.log()
        assert len(pids_with_marker(marker)) == 1


def test_killed_child_is_restarted(marker: str) -> None:
    with tiny_gateway(marker) as gw:
        url = gw.url("vs")
        a = initialize(url)
        old = child_pid(url, a)
        os.kill(old, signal.SIGKILL)
        assert reaped(old), f"the killed child was not reaped: {describe([old])}"
        assert wait_until(lambda: "stdio upstream exited" in gw.log(), 10), gw.log()

        def works(sid: str) -> dict | None:
            msg = call_tool(url, sid, "tiny_pid")
            if "error" in msg:  # e.g. restart backoff right after the death
                assert msg["error"]["code"] == -31001, msg
                return None
            return msg

        b = initialize(url)
        got = wait_until(lambda: works(b), 15, 0.5)
        assert got, gw.log()
        assert int(tool_text(got)) != old and int(tool_text(got)) in pids_with_marker(marker)
        # The session whose child died gets a fresh child on next use as well.
        again = wait_until(lambda: works(a), 15, 0.5)
        assert again, gw.log()
        assert int(tool_text(again)) not in (old, int(tool_text(got)))
        assert len(pids_with_marker(marker)) == 2
        assert_no_zombies(gw)


def test_child_stderr_reaches_the_gateway_log(marker: str) -> None:
    with tiny_gateway(marker) as gw:
        initialize(gw.url("vs"))
        (pid,) = pids_with_marker(marker)
        line = f"TINY-STDERR {marker} pid={pid} started"
        assert wait_until(lambda: line in gw.log(), 10), gw.log()
        logged = next(x for x in gw.log_lines if line in x)
        assert "tiny" in logged.replace(line, ""), f"the line does not name its upstream: {logged!r}"


def test_child_environment_is_scrubbed(marker: str) -> None:
    """Gateway secrets never reach a child; configured variables and PATH do."""
    secret = f"s3cret-{marker}"
    with tiny_gateway(marker, gw_env={"PORTCULLIS_E2E_SECRET": secret}, env={"TINY_SETTING": "on"}) as gw:
        initialize(gw.url("vs"))
        (pid,) = pids_with_marker(marker)
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        env = dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)
        assert secret not in raw, "a gateway environment variable leaked into the child"
        assert env.get("TINY_SETTING") == "on" and "PATH" in env, sorted(env)


def test_idle_session_is_closed_with_its_child(marker: str) -> None:
    with tiny_gateway(marker, limits={"session_idle_timeout_secs": 1}) as gw:
        url = gw.url("vs")
        sid = initialize(url)
        (pid,) = pids_with_marker(marker)
        assert reaped(pid, 20), f"idle session's child still running: {describe([pid])}\n{gw.log()}"
        r = rpc(url, sid, "tools/list")
        assert r.status_code == 404, r.text
        assert "closing idle session" in gw.log()
        assert_no_zombies(gw)


def test_session_with_a_call_in_flight_is_not_idle(marker: str) -> None:
    """The idle reaper must not close a session while one of its requests is running."""
    with tiny_gateway(marker, limits={"session_idle_timeout_secs": 1}) as gw:
        url = gw.url("vs")
        sid = initialize(url)
        (pid,) = pids_with_marker(marker)
        msg = call_tool(url, sid, "tiny_sleep", {"seconds": 7})  # spans at least one reaper pass
        assert msg.get("result", {}).get("content", [{}])[0].get("text") == "slept", f"{msg}\n{gw.log()}"


def modern_call(url: str, tool: str) -> dict:
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    r = post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": tool, "arguments": {}, "_meta": meta}},
             headers={"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool})
    assert r.status_code == 200, r.text
    return rpc_result(r)


def test_stateless_calls_share_one_child_until_idle(marker: str) -> None:
    with tiny_gateway(marker, limits={"session_idle_timeout_secs": 1}) as gw:
        url = gw.url("vs")
        pids = {int(tool_text(modern_call(url, "tiny_pid"))) for _ in range(3)}
        assert len(pids) == 1 and pids_with_marker(marker) == sorted(pids), describe(pids_with_marker(marker))
        (pid,) = pids
        assert reaped(pid, 20), f"idle stateless child still running: {describe([pid])}"
        assert_no_zombies(gw)


def test_crashing_child_is_reaped_and_restarts_are_throttled(marker: str) -> None:
    """A program that exits at once: every start is reaped, calls fail with -31001, and
    restart backoff keeps rapid retries from spawning a process per call."""
    crash = {"name": "crash", "transport": "stdio", "command": PYTHON,
             "args": ["-c", "import sys; print('CRASHING', sys.argv[1], file=sys.stderr); sys.exit(3)", marker]}
    cfg = {"upstreams": [crash], "virtual_servers": [{"name": "vs", "upstreams": [{"upstream": "crash"}]}]}
    with running_gateway(cfg) as gw:
        url = gw.url("vs")
        sid = initialize(url)
        codes = set()
        for _ in range(20):
            msg = call_tool(url, sid, "crash_anything")
            codes.add(msg.get("error", {}).get("code"))
        assert codes == {-31001}, codes
        starts = gw.log().count("started stdio upstream")
        assert 1 <= starts <= 5, f"{starts} process starts for 21 attempts within a second:\n{gw.log()}"
        assert wait_until(lambda: f"CRASHING {marker}" in gw.log(), 10), gw.log()
        assert pids_with_marker(marker) == []
        assert_no_zombies(gw)
