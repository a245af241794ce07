"""A slow upstream does not hold a client's initialize: past `limits.initialize_wait_ms`
the session starts with the upstreams that are up, and when the slow one arrives the
client is told to list again and finds its tools."""

from __future__ import annotations

from pathlib import Path

from conftest import PYTHON
from gateway import initialize, post, rpc_result, running_gateway
from test_notifications import open_stream, wait_for

TINY = Path(__file__).resolve().parent / "servers" / "tiny_stdio.py"


def test_late_upstream_joins_the_session() -> None:
    config = {
        "limits": {"initialize_wait_ms": 500},
        "upstreams": [
            {"name": "fast", "transport": "stdio", "command": PYTHON, "args": [str(TINY), "fast-marker"]},
            # Starts only after three seconds: well past the half-second budget.
            {"name": "slow", "transport": "stdio", "command": "/bin/sh",
             "args": ["-c", f"sleep 3; exec {PYTHON} {TINY} slow-marker"]},
        ],
        "virtual_servers": [{"name": "v", "upstreams": [{"upstream": "fast"}, {"upstream": "slow"}]}],
    }
    with running_gateway(config) as gw:
        url = gw.url("v")
        sid = initialize(url)
        q = open_stream(url, sid)
        assert q.get(timeout=10) == ("status", 200)
        wait_for(q, lambda m: m.get("method") == "notifications/tools/list_changed", timeout=30)
        tools = rpc_result(post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, session=sid))
        names = {t["name"] for t in tools["result"]["tools"]}
        assert {"fast_echo", "slow_echo"} <= names, names
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "slow_echo", "arguments": {"text": "late"}}}
        result = rpc_result(post(url, body, session=sid))
        assert result["result"]["content"][0]["text"] == "late", result
        assert "late upstream joined the session" in gw.log()
