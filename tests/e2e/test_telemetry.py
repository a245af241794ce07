"""Telemetry end to end: traces exported with OTLP/HTTP to a collector in this test
(protobuf, decoded here), the caller's trace context continued and the gateway's
passed to an HTTP upstream that records what it receives; Prometheus metrics after
successes, tool errors and policy denials (and who may scrape them); health and
readiness; a denial-spike alert delivered to a webhook and the log."""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from auth_util import auth_config, create_token, create_user, mcp_call, mcp_init
from e2e_util import wait_until
from gateway import free_port, initialize, post, rpc_result, running_gateway


# --- loopback servers -------------------------------------------------------------

class Recorder:
    """An HTTP server on loopback (in a thread) that records every POST."""

    def __init__(self, answer):
        self.seen: list[tuple[str, dict, bytes]] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
                with rec.lock:
                    rec.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, headers, data = answer(self.path, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.send_response(405)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_DELETE(self):
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[tuple[str, dict, bytes]]:
        with self.lock:
            return list(self.seen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def mcp_answer(path: str, body: bytes):
    """A minimal Streamable HTTP MCP server: tools `echo` and `fail` (a tool error)."""
    msg = json.loads(body or b"{}")
    if "id" not in msg:
        return 202, {}, b""
    method, params = msg.get("method"), msg.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "recorder", "version": "1"}}
    elif method == "tools/list":
        schema = {"type": "object"}
        result = {"tools": [{"name": "echo", "inputSchema": schema}, {"name": "fail", "inputSchema": schema}]}
    elif method == "tools/call":
        bad = params.get("name") == "fail"
        result = {"content": [{"type": "text", "text": "no" if bad else "ok"}], "isError": bad}
    elif method == "ping":
        result = {}
    else:
        result = None
    out = {"jsonrpc": "2.0", "id": msg["id"]}
    out.update({"result": result} if result is not None else {"error": {"code": -32601, "message": "no"}})
    return 200, {"content-type": "application/json", "mcp-session-id": "up-1"}, json.dumps(out).encode()


@pytest.fixture
def collector() -> Iterator[Recorder]:
    r = Recorder(lambda path, body: (200, {"content-type": "application/x-protobuf"}, b""))
    yield r
    r.close()


@pytest.fixture
def upstream() -> Iterator[Recorder]:
    r = Recorder(mcp_answer)
    yield r
    r.close()


# --- OTLP protobuf, decoded by hand (the few fields the test reads) ----------------

def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    out, i = [], 0

    def varint() -> int:
        nonlocal i
        shift = v = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v

    while i < len(buf):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out.append((num, varint()))
        elif wire == 1:
            out.append((num, int.from_bytes(buf[i:i + 8], "little")))
            i += 8
        elif wire == 2:
            n = varint()
            out.append((num, buf[i:i + n]))
            i += n
        elif wire == 5:
            out.append((num, int.from_bytes(buf[i:i + 4], "little")))
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def any_value(buf: bytes):
    for num, v in fields(buf):
        if num == 1:
            return v.decode()
        if num in (2, 3):
            return v
    return None


def decode_spans(body: bytes) -> list[dict]:
    """ExportTraceServiceRequest → [{trace_id, span_id, parent, name, kind, attrs, status, links}]."""
    spans = []
    for n1, rs in fields(body):
        if n1 != 1:
            continue
        for n2, ss in fields(rs):
            if n2 != 2:
                continue
            for n3, sp in fields(ss):
                if n3 != 2:
                    continue
                s: dict = {"attrs": {}, "status": 0, "parent": "", "links": []}
                for num, v in fields(sp):
                    if num == 1:
                        s["trace_id"] = v.hex()
                    elif num == 2:
                        s["span_id"] = v.hex()
                    elif num == 4:
                        s["parent"] = v.hex()
                    elif num == 5:
                        s["name"] = v.decode()
                    elif num == 6:
                        s["kind"] = v
                    elif num == 9:
                        kv = dict(fields(v))
                        s["attrs"][kv[1].decode()] = any_value(kv.get(2, b""))
                    elif num == 13:
                        s["links"].append({k: x.hex() for k, x in fields(v) if k in (1, 2)})
                    elif num == 15:
                        s["status"] = dict(fields(v)).get(3, 0)
                spans.append(s)
    return spans


SERVER, CLIENT = 2, 3
STATUS_ERROR = 2


def spans_of(collector: Recorder, trace_id: str, count: int = 2) -> list[dict]:
    def found():
        got = [s for path, _, body in collector.bodies() if path == "/v1/traces"
               for s in decode_spans(body) if s.get("trace_id") == trace_id]
        return got if len(got) >= count else None
    spans = wait_until(found, timeout=15)
    assert spans, f"no spans of trace {trace_id} reached the collector: {collector.bodies()!r}"[:2000]
    return spans


def upstream_call(upstream: Recorder, marker: str) -> tuple[dict, dict]:
    """(headers, message) of the tools/call whose arguments carry `marker`."""
    for _, headers, body in upstream.bodies():
        msg = json.loads(body or b"{}")
        if msg.get("method") == "tools/call" and (msg["params"].get("arguments") or {}).get("m") == marker:
            return headers, msg
    raise AssertionError(f"the upstream never received call {marker}")


def traceparent() -> tuple[str, str, str]:
    t, s = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{t}-{s}-01", t, s


# --- traces --------------------------------------------------------------------------

def trace_config(upstream: Recorder, collector: Recorder | None) -> dict:
    cfg = {
        "upstreams": [{"name": "rec", "transport": "streamable_http", "url": f"{upstream.url}/mcp"}],
        "virtual_servers": [{"name": "t", "upstreams": [{"upstream": "rec", "prefix": ""}]}],
        "telemetry": {"alerts": {"enabled": False}},
    }
    if collector:
        cfg["telemetry"]["traces"] = {"endpoint": f"{collector.url}/v1/traces", "batch_delay_ms": 100,
                                      "service_name": "pc-e2e"}
    return cfg


def call(url: str, sid: str, tool: str, marker: str, *, headers: dict | None = None,
         meta: dict | None = None) -> dict:
    params: dict = {"name": tool, "arguments": {"m": marker}}
    if meta:
        params["_meta"] = meta
    r = post(url, {"jsonrpc": "2.0", "id": f"req-{marker}", "method": "tools/call", "params": params},
             session=sid, headers=headers)
    assert r.status_code == 200, r.text
    return rpc_result(r)


def check_trace(spans: list[dict], trace_id: str, client_span: str, received: str, sid: str,
                marker: str, tool: str = "echo") -> dict:
    server = [s for s in spans if s["kind"] == SERVER]
    client = [s for s in spans if s["kind"] == CLIENT]
    assert len(server) == 1 and len(client) == 1, spans
    server, client = server[0], client[0]
    assert server["parent"] == client_span, "the SERVER span continues the caller's span"
    assert client["parent"] == server["span_id"], "the CLIENT span is the SERVER span's child"
    assert received == f"00-{trace_id}-{client['span_id']}-01", \
        "the upstream received the gateway's CLIENT span in the same trace"
    assert server["name"] == f"tools/call {tool}", server
    a = server["attrs"]
    assert a["mcp.method.name"] == "tools/call", a
    assert a["gen_ai.tool.name"] == tool, a
    assert a["gen_ai.operation.name"] == "execute_tool", a
    assert a["jsonrpc.request.id"] == f"req-{marker}", a
    assert a["mcp.session.id"] == sid, a
    assert a["portcullis.virtual_server"] == "t" and a["portcullis.upstream"] == "rec", a
    return server


def test_trace_context_is_continued_and_propagated(upstream: Recorder, collector: Recorder) -> None:
    with running_gateway(trace_config(upstream, collector)) as gw:
        url = gw.url("t")
        sid = initialize(url)

        # 1. The caller's context in the HTTP traceparent header.
        tp, trace_id, span_id = traceparent()
        resp = call(url, sid, "echo", "h", headers={"traceparent": tp})
        assert resp["result"]["content"][0]["text"] == "ok", resp
        headers, msg = upstream_call(upstream, "h")
        received = msg["params"]["_meta"]["traceparent"]
        assert received.split("-")[1] == trace_id and received.split("-")[2] != span_id, received
        assert headers.get("traceparent") == received, "HTTP upstreams get the header too"
        server = check_trace(spans_of(collector, trace_id), trace_id, span_id, received, sid, "h")
        assert server["status"] != STATUS_ERROR and "error.type" not in server["attrs"], server

        # 2. The caller's context in params._meta (MCP, SEP-414), with tracestate kept.
        tp, trace_id, span_id = traceparent()
        resp = call(url, sid, "echo", "m", meta={"traceparent": tp, "tracestate": "vendor=1", "progressToken": 7})
        assert resp["result"]["content"][0]["text"] == "ok", resp
        headers, msg = upstream_call(upstream, "m")
        meta = msg["params"]["_meta"]
        assert meta["tracestate"] == "vendor=1" and meta["progressToken"] is not None, meta
        check_trace(spans_of(collector, trace_id), trace_id, span_id, meta["traceparent"], sid, "m")

        # 3. A tool error: the spans say so.
        tp, trace_id, span_id = traceparent()
        resp = call(url, sid, "fail", "f", headers={"traceparent": tp})
        assert resp["result"]["isError"] is True, resp
        _, msg = upstream_call(upstream, "f")
        server = check_trace(spans_of(collector, trace_id), trace_id, span_id,
                             msg["params"]["_meta"]["traceparent"], sid, "f", tool="fail")
        assert server["status"] == STATUS_ERROR and server["attrs"]["error.type"] == "tool_error", server

        # 4. No context from the caller: a new trace, still propagated.
        call(url, sid, "echo", "n")
        _, msg = upstream_call(upstream, "n")
        new_trace = msg["params"]["_meta"]["traceparent"].split("-")[1]
        spans = spans_of(collector, new_trace)
        assert [s["parent"] for s in spans if s["kind"] == SERVER] == [""], "a root SERVER span"

        # 5. An invalid traceparent is ignored (a new trace, not a crash or an echo).
        bad = "00-" + "0" * 32 + "-" + secrets.token_hex(8) + "-01"
        call(url, sid, "echo", "x", headers={"traceparent": bad})
        _, msg = upstream_call(upstream, "x")
        assert msg["params"]["_meta"]["traceparent"].split("-")[1] != "0" * 32


def test_without_an_exporter_the_callers_context_passes_untouched(upstream: Recorder) -> None:
    with running_gateway(trace_config(upstream, None)) as gw:
        url = gw.url("t")
        sid = initialize(url)
        tp, _, _ = traceparent()
        call(url, sid, "echo", "u", meta={"traceparent": tp})
        headers, msg = upstream_call(upstream, "u")
        assert msg["params"]["_meta"]["traceparent"] == tp
        assert headers.get("traceparent") == tp


# --- metrics, health, alerts ---------------------------------------------------------

POLICIES = """
@id("echo-for-all")
permit(principal, action == Action::"call_tool", resource == Tool::"alpha/echo");
"""


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert m, f"not exposition format: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Env:
    def __init__(self, gw, admin: str, user: str, metrics_port: int, hook: Recorder):
        self.gw, self.admin, self.user, self.metrics_port, self.hook = gw, admin, user, metrics_port, hook
        r = mcp_init(gw, "alpha", user)
        assert r.status_code == 200, r.text
        self.sid = r.headers["mcp-session-id"]

    def call(self, tool: str, args: dict | None = None) -> dict:
        r = mcp_call(self.gw, "alpha", self.user, self.sid, "tools/call", {"name": tool, "arguments": args or {}})
        assert r.status_code == 200, r.text
        return rpc_result(r)

    def metrics(self) -> dict:
        r = httpx.get(f"{self.gw.base}/metrics", headers={"Authorization": f"Bearer {self.admin}"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
        return parse_metrics(r.text)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    hook = Recorder(lambda path, body: (200, {}, b""))
    with tempfile.TemporaryDirectory(prefix="pc-telemetry-") as tmp:
        (Path(tmp) / "main.cedar").write_text(POLICIES)
        metrics_port = free_port()
        config = auth_config([{"name": "alpha", "upstreams": [{"upstream": "tiny", "prefix": ""}]}])
        config["policy"] = {"dir": tmp, "reload_interval_ms": 200}
        config["telemetry"] = {
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "alerts": {"interval_secs": 1, "webhook": f"{hook.url}/alerts",
                       "denials": {"threshold": 4, "factor": 2.0}},
        }
        with running_gateway(config) as gw:
            create_user(gw, "root")
            admin = create_token(gw, "root", "admin", name="root-admin")
            user = create_token(gw, "root", "vs:alpha", name="root-mcp")
            yield Env(gw, admin, user, metrics_port, hook)
    hook.close()


def sample(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_calls_errors_and_denials(env: Env) -> None:
    before = env.metrics()
    assert env.call("echo", {"text": "hi"})["result"]["isError"] is False
    assert env.call("echo", {"text": "hi", "fail": True})["result"]["isError"] is True
    denied = env.call("pid")
    assert denied["error"]["code"] == -31010, denied
    after = env.metrics()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    call = {"virtual_server": "alpha", "upstream": "tiny", "method": "tools/call"}
    assert delta("portcullis_requests_total", **call, tool="echo", outcome="success") == 1
    assert delta("portcullis_requests_total", **call, tool="echo", outcome="tool_error") == 1
    assert delta("portcullis_requests_total", **call, tool="pid", outcome="denied") == 1
    assert delta("portcullis_denials_total", virtual_server="alpha", upstream="tiny", tool="pid",
                 reason="policy") == 1
    assert delta("portcullis_request_duration_seconds_count", **call, tool="echo") == 2
    assert sample(after, "portcullis_request_duration_seconds_bucket", **call, tool="echo", le="+Inf") \
        == sample(after, "portcullis_request_duration_seconds_count", **call, tool="echo")
    assert delta("mcp_server_operation_duration_seconds_count", mcp_method_name="tools/call",
                 gen_ai_tool_name="echo", gen_ai_prompt_name="") == 2
    assert sample(after, "portcullis_upstream_up", upstream="tiny") == 1
    assert sample(after, "portcullis_upstream_errors_total", upstream="tiny") == 0
    # Each call's record is durable (and counted) before its answer is sent.
    assert delta("portcullis_audit_wait_seconds_count") >= 3
    assert delta("portcullis_audit_batch_size_sum") >= 3
    assert sample(after, "portcullis_audit_wait_seconds_bucket", le="+Inf") \
        == sample(after, "portcullis_audit_wait_seconds_count")
    assert sample(after, "portcullis_audit_wait_seconds_sum") > 0
    assert sample(after, "portcullis_audit_healthy") == 1


def test_metrics_need_an_admin_token_on_the_main_listener(env: Env) -> None:
    url = f"{env.gw.base}/metrics"
    r = httpx.get(url, timeout=10)
    assert r.status_code == 401 and "bearer" in r.headers.get("www-authenticate", "").lower(), r
    r = httpx.get(url, headers={"Authorization": f"Bearer {env.user}"}, timeout=10)
    assert r.status_code in (401, 403), "an MCP token is not an admin token"
    r = httpx.get(url, headers={"Authorization": "Bearer pcp_not-a-token"}, timeout=10)
    assert r.status_code == 401
    # The internal listener serves the same metrics without a token.
    r = httpx.get(f"http://127.0.0.1:{env.metrics_port}/metrics", timeout=10)
    assert r.status_code == 200 and "portcullis_requests_total" in r.text, r.text[:500]


def test_health_and_readiness(env: Env) -> None:
    for base in (env.gw.base, f"http://127.0.0.1:{env.metrics_port}"):
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        r = httpx.get(f"{base}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ready"] is True and body["checks"]["store"] == "ok", body


def test_denial_spike_alert_reaches_the_webhook_and_the_log(env: Env) -> None:
    def alerted():
        for _ in range(6):
            assert env.call("pid")["error"]["code"] == -31010
        for path, _, body in env.hook.bodies():
            event = json.loads(body)
            if path == "/alerts" and event["rule"] == "denial_spike" and event["state"] == "firing":
                return event
        return None

    event = wait_until(alerted, timeout=30, interval=0.2)
    assert event, f"no alert reached the webhook:\n{env.gw.log()[-3000:]}"
    assert event["virtual_server"] == "alpha" and event["upstream"] == "tiny", event
    assert event["value"] >= 4 and event["threshold"] >= 4, event
    assert "denial_spike" in event["text"] and event["source"] == "portcullis", event
    assert wait_until(lambda: re.search(r"WARN portcullis::alert: .*denial_spike.*alpha", env.gw.log()), timeout=5), \
        env.gw.log()[-3000:]
    m = env.metrics()
    firing = sample(m, "portcullis_alerts_firing", rule="denial_spike", virtual_server="alpha", upstream="tiny")
    resolved = any(json.loads(b)["state"] == "resolved" for _, _, b in env.hook.bodies())
    assert firing == 1 or resolved, "the firing alert shows in the metrics until it clears"
