"""Server-initiated notifications reach the client: list changes and resource updates
travel from the upstream to the session's GET stream, with resource URIs translated
into the virtual server's namespace; client cancellations reach the upstream."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx
from fixture_helpers import running_fixture
from gateway import initialize, post, rpc_result, running_gateway


def open_stream(url: str, sid: str) -> queue.Queue:
    """Read the session's GET stream in the background; JSON messages land in the queue."""
    q: queue.Queue = queue.Queue()
    q.seen = []  # type: ignore[attr-defined]  # messages already taken off the queue

    def reader() -> None:
        headers = {"Accept": "text/event-stream", "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=60)) as r:
            q.put(("status", r.status_code))
            for line in r.iter_lines():
                if line.startswith("data:") and line[5:].strip():
                    q.put(("msg", json.loads(line[5:])))

    threading.Thread(target=reader, daemon=True).start()
    return q


def wait_for(q: queue.Queue, predicate, timeout: float = 20.0) -> dict:
    """The first message, already seen or arriving within `timeout`, that matches."""
    seen = q.seen  # type: ignore[attr-defined]
    for m in seen:
        if predicate(m):
            return m
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kind, item = q.get(timeout=0.5)
        except queue.Empty:
            continue
        if kind == "msg":
            seen.append(item)
            if predicate(item):
                return item
    raise AssertionError(f"no matching message on the stream; saw {seen}")


def call(url: str, sid: str, name: str, rid: int, q: queue.Queue) -> dict:
    """Call a tool; messages that precede the response on its own stream join the queue
    too (an upstream may send a notification on the request's stream: stream affinity)."""
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    r = post(url, body, session=sid)
    for line in r.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            m = json.loads(line[5:])
            if "method" in m:
                q.put(("msg", m))
    return rpc_result(r)


def test_list_changes_and_resource_updates_reach_the_session_stream() -> None:
    with running_fixture("http") as fx_url:
        config = {
            "upstreams": [{"name": "fx", "transport": "streamable_http", "url": fx_url}],
            "virtual_servers": [{"name": "v", "upstreams": [{"upstream": "fx"}]}],
        }
        with running_gateway(config) as gw:
            url = gw.url("v")
            sid = initialize(url)
            q = open_stream(url, sid)
            assert q.get(timeout=10) == ("status", 200)
            sub = post(url, {"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe",
                             "params": {"uri": "fx+test://watched-resource"}}, session=sid)
            assert "result" in rpc_result(sub), sub.text
            assert "result" in call(url, sid, "fx_test_trigger_tool_change", 2, q)
            wait_for(q, lambda m: m.get("method") == "notifications/tools/list_changed")
            assert "result" in call(url, sid, "fx_test_trigger_resource_change", 3, q)
            updated = wait_for(q, lambda m: m.get("method") == "notifications/resources/updated")
            assert updated["params"]["uri"] == "fx+test://watched-resource", updated
            wait_for(q, lambda m: m.get("method") == "notifications/resources/list_changed")
            # After a list change the next list is fetched afresh and still complete.
            tools = rpc_result(post(url, {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, session=sid))
            assert "fx_test_simple_text" in {t["name"] for t in tools["result"]["tools"]}
