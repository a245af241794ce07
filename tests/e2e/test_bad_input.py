"""Bad input at the HTTP edge and broken upstreams: each case gets a precise HTTP status
and JSON-RPC error, and afterwards the gateway is healthy and a session opened before
the bad input still calls tools."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from e2e_util import assert_still_serving, call_tool, error_of, rpc, tiny_upstream, tool_text, wait_until
from gateway import Gateway, free_port, initialize, post, rpc_result, running_gateway

MAX_BODY = 65536
GLOBAL_TIMEOUT_MS = 3000
MODERN = "2026-07-28"
META_PV = "io.modelcontextprotocol/protocolVersion"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"


@dataclass
class Env:
    gw: Gateway
    sid: str  # a session on "main", opened before any bad input
    marker: str

    @property
    def url(self) -> str:
        return self.gw.url("main")

    def healthy(self) -> None:
        assert_still_serving(self.gw, "main", self.sid)


@pytest.fixture
def env() -> Iterator[Env]:
    marker = f"pc-e2e-bad-{uuid.uuid4().hex[:12]}"
    dead_url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    config = {
        "limits": {"max_body_bytes": MAX_BODY, "request_timeout_ms": GLOBAL_TIMEOUT_MS},
        "upstreams": [
            tiny_upstream("tiny", marker),
            tiny_upstream("slow", marker + "-slow", timeouts={"request_ms": 1000}),
            tiny_upstream("slow2", marker + "-slow2"),  # only the global limit applies
            {"name": "dead_http", "transport": "streamable_http", "url": dead_url},
            {"name": "nocmd", "transport": "stdio", "command": f"/nonexistent/{marker}/no-such-server"},
        ],
        "virtual_servers": [
            {"name": "main", "upstreams": [{"upstream": "tiny"}]},
            {"name": "slow", "upstreams": [{"upstream": "slow"}]},
            {"name": "slow2", "upstreams": [{"upstream": "slow2"}]},
            {"name": "dead", "upstreams": [{"upstream": "dead_http", "prefix": "dead"}]},
            {"name": "nocmd", "upstreams": [{"upstream": "nocmd"}]},
            {"name": "mixed", "upstreams": [{"upstream": "tiny"}, {"upstream": "dead_http", "prefix": "dead"}]},
        ],
    }
    with running_gateway(config) as gw:
        sid = initialize(gw.url("main"))
        assert tool_text(call_tool(gw.url("main"), sid, "tiny_echo", {"text": "warm"})) == "warm"
        yield Env(gw, sid, marker)


# ---- malformed messages -------------------------------------------------------------

def test_malformed_json_is_parse_error(env: Env) -> None:
    r = post(env.url, '{"jsonrpc": "2.0", "id": 1, "method": ', session=env.sid)
    error_of(r, 400, -32700, "parse error")
    assert r.json()["id"] is None, r.text
    env.healthy()


SHAPES = {
    "batch": ('[{"jsonrpc":"2.0","id":1,"method":"ping"}]', "batch"),
    "jsonrpc_missing": ('{"id":1,"method":"ping"}', "jsonrpc"),
    "jsonrpc_1_0": ('{"jsonrpc":"1.0","id":1,"method":"ping"}', "jsonrpc"),
    "id_null": ('{"jsonrpc":"2.0","id":null,"method":"ping"}', "id"),
    "id_float": ('{"jsonrpc":"2.0","id":1.5,"method":"ping"}', "id"),
    "method_not_string": ('{"jsonrpc":"2.0","id":1,"method":42}', "method"),
    "params_array": ('{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1,2]}', "params"),
    "result_and_error": ('{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}', "exactly one"),
    "not_an_object": ('"hello"', "object"),
}


@pytest.mark.parametrize("case", SHAPES)
def test_wrong_shape_is_invalid_request(env: Env, case: str) -> None:
    body, fragment = SHAPES[case]
    r = post(env.url, body, session=env.sid)
    error_of(r, 400, -32600, fragment)
    env.healthy()


BAD_JSON = {
    "empty": b"",
    "invalid_utf8": b'\xff\xfe{"jsonrpc"',
    "deep_nesting": b"[" * 5000 + b"]" * 5000,
    "trailing_garbage": b'{"jsonrpc":"2.0","id":1,"method":"ping"} {}',
}


@pytest.mark.parametrize("case", BAD_JSON)
def test_unparseable_body_is_parse_error(env: Env, case: str) -> None:
    error_of(post(env.url, BAD_JSON[case], session=env.sid), 400, -32700, "parse error")
    env.healthy()


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "text/event-stream"])
def test_wrong_content_type_is_415(env: Env, ctype: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    r = post(env.url, body, session=env.sid, headers={"Content-Type": ctype})
    error_of(r, 415, -32600, "Content-Type")
    env.healthy()


def test_body_over_limit_is_413(env: Env) -> None:
    text = "x" * (70 * 1024)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "tiny_echo", "arguments": {"text": text}}})
    assert len(body) > MAX_BODY
    r = post(env.url, body, session=env.sid)
    error_of(r, 413, -31003, str(MAX_BODY))
    # Just under the limit is served in full.
    fits = "y" * (MAX_BODY - 1024)
    assert tool_text(call_tool(env.url, env.sid, "tiny_echo", {"text": fits})) == fits
    env.healthy()


def test_chunked_body_over_limit_is_413(env: Env) -> None:
    """No Content-Length: the limit still applies while the body streams in."""
    def chunks() -> Iterator[bytes]:
        yield b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tiny_echo","arguments":{"text":"'
        for _ in range(70):
            yield b"z" * 1024
        yield b'"}}}'
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Mcp-Session-Id": env.sid, "MCP-Protocol-Version": "2025-11-25"}
    r = httpx.post(env.url, content=chunks(), headers=h, timeout=30)
    error_of(r, 413, -31003, str(MAX_BODY))
    env.healthy()


# ---- endpoints and sessions ---------------------------------------------------------

def test_unknown_virtual_server_is_404(env: Env) -> None:
    r = post(env.gw.url("no-such-vs"), {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}})
    error_of(r, 404, -32600, "no-such-vs")
    assert "mcp-session-id" not in r.headers
    r = rpc(env.gw.url("no-such-vs"), env.sid, "tools/list")
    error_of(r, 404, -32600, "unknown virtual server")
    env.healthy()


def test_missing_session_id_is_400(env: Env) -> None:
    r = rpc(env.url, None, "tools/list")
    error_of(r, 400, -32600, "Mcp-Session-Id")
    env.healthy()


def test_unknown_session_id_is_404(env: Env) -> None:
    r = rpc(env.url, "0" * 64, "tools/list")
    error_of(r, 404, -32600, "session not found")
    # A real session of one virtual server is unknown on another.
    r = rpc(env.gw.url("slow"), env.sid, "tools/list")
    error_of(r, 404, -32600, "session not found")
    env.healthy()


def test_deleted_session_is_404(env: Env) -> None:
    other = initialize(env.url)
    h = {"Mcp-Session-Id": other, "MCP-Protocol-Version": "2025-11-25"}
    assert httpx.delete(env.url, headers=h, timeout=30).status_code == 200
    error_of(rpc(env.url, other, "tools/list"), 404, -32600, "session not found")
    r = httpx.get(env.url, headers={**h, "Accept": "text/event-stream"}, timeout=10)
    error_of(r, 404, -32600, "session not found")
    error_of(httpx.delete(env.url, headers=h, timeout=10), 404, -32600, "session not found")
    env.healthy()


def test_session_header_and_method_rules(env: Env) -> None:
    h = {"Mcp-Session-Id": env.sid, "MCP-Protocol-Version": "2025-11-25"}
    # An unsupported protocol version header on a legacy session.
    r = rpc(env.url, env.sid, "tools/list", headers={"MCP-Protocol-Version": "1999-01-01"})
    error_of(r, 400, -32600, "1999-01-01")
    # initialize sent as a notification.
    r = post(env.url, {"jsonrpc": "2.0", "method": "initialize", "params": {"protocolVersion": "2025-11-25"}})
    error_of(r, 400, -32600, "initialize must be a request")
    assert "mcp-session-id" not in r.headers
    # initialize carrying a session id is refused; the session is untouched.
    r = rpc(env.url, env.sid, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
    error_of(r, 400, -32600, "without Mcp-Session-Id")
    assert "mcp-session-id" not in r.headers
    # DELETE and GET without a session id.
    error_of(httpx.delete(env.url, timeout=10), 405, -32600, "Mcp-Session-Id")
    r = httpx.get(env.url, headers={"Accept": "text/event-stream"}, timeout=10)
    error_of(r, 405, -32600, "GET")
    assert r.headers.get("allow") == "POST"
    # GET without Accept: text/event-stream; a second GET stream while one is open.
    error_of(httpx.get(env.url, headers={**h, "Accept": "application/json"}, timeout=10), 406, -32600, "Accept")
    with httpx.stream("GET", env.url, headers={**h, "Accept": "text/event-stream"}, timeout=10) as first:
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
        second = httpx.get(env.url, headers={**h, "Accept": "text/event-stream"}, timeout=10)
        error_of(second, 409, -32600, "already has an open GET stream")
        env.healthy()  # POSTs are served while the GET stream is open
    # A notification is accepted with 202 and no body.
    r = post(env.url, {"jsonrpc": "2.0", "method": "notifications/whatever"}, session=env.sid)
    assert r.status_code == 202 and r.content == b"", r.text
    env.healthy()


def test_bad_params(env: Env) -> None:
    r = rpc(env.url, env.sid, "tools/call", {"arguments": {}})
    assert rpc_result(r)["error"]["code"] == -32602 and "params.name" in rpc_result(r)["error"]["message"], r.text
    r = rpc(env.url, env.sid, "tools/list", {"cursor": "not-a-cursor"})
    assert rpc_result(r)["error"]["code"] == -32602 and "cursor" in rpc_result(r)["error"]["message"], r.text
    # A method nobody handles, on a virtual server with two upstreams, is not routable.
    mixed = env.gw.url("mixed")
    msid = initialize(mixed)
    r = rpc(mixed, msid, "vendor/unknownMethod", {})
    err = rpc_result(r)["error"]
    assert err["code"] == -32601 and "vendor/unknownMethod" in err["message"], err
    env.healthy()


def test_delete_during_a_call_answers_that_call(env: Env) -> None:
    """Ending a session with a request in flight: the pending POST still gets a
    JSON-RPC error carrying its own id (a null id cannot be matched by the client)."""
    other = initialize(env.url)
    body = {"jsonrpc": "2.0", "id": 4242, "method": "tools/call",
            "params": {"name": "tiny_sleep", "arguments": {"seconds": 6}}}
    box: list = []
    t = threading.Thread(target=lambda: box.append(post(env.url, body, session=other)), daemon=True)
    t.start()
    time.sleep(1)  # let the call reach the upstream
    h = {"Mcp-Session-Id": other, "MCP-Protocol-Version": "2025-11-25"}
    assert httpx.delete(env.url, headers=h, timeout=30).status_code == 200
    t.join(20)
    assert box, "the in-flight POST never completed"
    msg = rpc_result(box[0])
    assert "error" in msg and msg.get("id") == 4242, msg
    env.healthy()


def test_unknown_tool_is_invalid_params(env: Env) -> None:
    r = rpc(env.url, env.sid, "tools/call", {"name": "no_such_tool", "arguments": {}})
    assert r.status_code == 200, r.text
    err = rpc_result(r)["error"]
    assert err["code"] == -32602 and "no_such_tool" in err["message"], err
    env.healthy()


# ---- broken upstreams ---------------------------------------------------------------

def test_dead_http_upstream(env: Env) -> None:
    url = env.gw.url("dead")
    sid = initialize(url)  # initialize answers although the only upstream is down
    # A list whose every upstream is down is an error that says why, not an empty list.
    r = rpc(url, sid, "tools/list")
    assert r.status_code == 200, r.text
    listed = rpc_result(r)
    assert listed.get("error", {}).get("code") == -31001 and "dead_http" in listed["error"]["message"], listed
    msg = call_tool(url, sid, "dead_anything")
    assert msg.get("error", {}).get("code") == -31001, msg
    assert "dead_http" in msg["error"]["message"], msg
    # A virtual server mixing a live and a dead upstream still serves the live one.
    mixed = env.gw.url("mixed")
    msid = initialize(mixed)
    names = [t["name"] for t in rpc_result(rpc(mixed, msid, "tools/list"))["result"]["tools"]]
    assert names == ["tiny_echo", "tiny_pid", "tiny_sleep"], names
    assert tool_text(call_tool(mixed, msid, "tiny_echo", {"text": "m"})) == "m"
    env.healthy()


def test_stdio_command_missing(env: Env) -> None:
    url = env.gw.url("nocmd")
    sid = initialize(url)
    listed = rpc_result(rpc(url, sid, "tools/list"))
    assert listed.get("error", {}).get("code") == -31001 and "nocmd" in listed["error"]["message"], listed
    msg = call_tool(url, sid, "nocmd_anything")
    assert msg.get("error", {}).get("code") == -31001, msg
    assert "nocmd" in msg["error"]["message"], msg
    assert wait_until(lambda: "cannot start" in env.gw.log(), 5), env.gw.log()
    env.healthy()


def test_slow_upstream_times_out(env: Env) -> None:
    url = env.gw.url("slow")
    sid = initialize(url)
    started = time.monotonic()
    msg = call_tool(url, sid, "slow_sleep", {"seconds": 8})
    elapsed = time.monotonic() - started
    assert msg.get("error", {}).get("code") == -31002, msg
    assert "1000 ms" in msg["error"]["message"], msg
    assert elapsed < 7, f"the timeout did not cut the call short ({elapsed:.1f} s)"
    # The upstream is told the request was abandoned, and the same session goes on.
    assert wait_until(lambda: f"{env.marker}-slow CANCELLED" in env.gw.log(), 10), env.gw.log()
    assert tool_text(call_tool(url, sid, "slow_echo", {"text": "after"})) == "after"
    env.healthy()


def test_global_request_timeout_applies(env: Env) -> None:
    url = env.gw.url("slow2")
    sid = initialize(url)
    msg = call_tool(url, sid, "slow2_sleep", {"seconds": 10})
    assert msg.get("error", {}).get("code") == -31002, msg
    assert f"{GLOBAL_TIMEOUT_MS} ms" in msg["error"]["message"], msg
    assert tool_text(call_tool(url, sid, "slow2_echo", {"text": "after"})) == "after"
    env.healthy()


def test_session_limit_is_503() -> None:
    marker = f"pc-e2e-bad-{uuid.uuid4().hex[:12]}"
    config = {"limits": {"max_sessions": 2}, "upstreams": [tiny_upstream("tiny", marker)],
              "virtual_servers": [{"name": "main", "upstreams": [{"upstream": "tiny"}]}]}
    with running_gateway(config) as gw:
        url = gw.url("main")
        first, second = initialize(url), initialize(url)
        r = post(url, {"jsonrpc": "2.0", "id": 5, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e", "version": "1"}}})
        error_of(r, 503, -31003, "session limit")
        assert r.json()["id"] == 5 and "mcp-session-id" not in r.headers
        h = {"Mcp-Session-Id": second, "MCP-Protocol-Version": "2025-11-25"}
        assert httpx.delete(url, headers=h, timeout=30).status_code == 200
        third = initialize(url)  # a freed slot can be used again
        for sid in (first, third):
            assert_still_serving(gw, "main", sid)


# ---- DNS rebinding ------------------------------------------------------------------

def test_foreign_host_is_403(env: Env) -> None:
    r = rpc(env.url, env.sid, "tools/list", headers={"Host": "evil.example.com"})
    error_of(r, 403, -32600, "Host")
    r = post(env.url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e", "version": "1"}}},
        headers={"Host": "evil.example.com:80"})
    error_of(r, 403, -32600, "Host")
    assert "mcp-session-id" not in r.headers
    env.healthy()


def test_foreign_origin_is_403(env: Env) -> None:
    r = rpc(env.url, env.sid, "tools/list", headers={"Origin": "http://evil.example.com"})
    error_of(r, 403, -32600, "Origin")
    r = httpx.get(env.url, headers={"Mcp-Session-Id": env.sid, "Accept": "text/event-stream",
                                    "Origin": "http://evil.example.com"}, timeout=10)
    error_of(r, 403, -32600, "Origin")
    # A loopback origin is fine.
    r = rpc(env.url, env.sid, "tools/list", headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 200 and "result" in rpc_result(r), r.text
    env.healthy()


# ---- 2026-07-28 requests ------------------------------------------------------------

def modern(url: str, method: str, params: dict, *, header_version: str = MODERN,
           header_method: str | None = None) -> httpx.Response:
    h = {"MCP-Protocol-Version": header_version, "Mcp-Method": header_method or method}
    return post(url, {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, headers=h)


def test_modern_missing_meta_version(env: Env) -> None:
    r = modern(env.url, "tools/list", {"_meta": {META_CAPS: {}}})
    error_of(r, 400, -32602, META_PV)
    assert r.json()["id"] == 7, r.text
    env.healthy()


def test_modern_method_header_mismatch(env: Env) -> None:
    r = modern(env.url, "tools/list", {"_meta": {META_PV: MODERN, META_CAPS: {}}}, header_method="tools/call")
    error_of(r, 400, -32020, "Mcp-Method")
    # The same request with matching headers is served.
    ok = modern(env.url, "tools/list", {"_meta": {META_PV: MODERN, META_CAPS: {}}})
    assert ok.status_code == 200 and "result" in rpc_result(ok), ok.text
    env.healthy()


def test_modern_unsupported_version(env: Env) -> None:
    r = modern(env.url, "tools/list", {"_meta": {META_PV: "2099-01-01", META_CAPS: {}}}, header_version="2099-01-01")
    err = error_of(r, 400, -32022, "2099-01-01")
    supported = err.get("data", {}).get("supported")
    assert isinstance(supported, list) and MODERN in supported and "2025-11-25" in supported, err
    env.healthy()
