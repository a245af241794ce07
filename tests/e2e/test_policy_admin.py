"""Managing policies against the real binary: the admin API's policy routes (stored
documents validated as a whole set, located errors, applied before the answer, what-if
tests, approvals, usage) and the `portcullis policy` CLI (check with file:line errors,
suites that gate CI, stored documents shared with the API).

The gateway runs with authentication on and a policy directory; the administrator and
their token come from the CLI, the callers from the admin API."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from auth_util import auth_config, create_token, create_user, mcp_call, mcp_init
from gateway import BINARY, ROOT, Gateway, running_gateway

API = "/api/v1"

BASE = """// alice may read her pid; nothing else is permitted by this file.
@id("alice-pid")
permit(principal, action == Action::"call_tool", resource == Tool::"alpha/pid")
when { principal.username == "alice" };
"""

ECHO = """@id("eng-echo")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"alpha/echo")
when { context.args.text like "hello*" };
"""

# The third line names an attribute Tool does not have.
BROKEN = """@id("broken")
permit(principal, action == Action::"call_tool", resource)
when { resource.risk_teir > 2 };
"""


class Env:
    def __init__(self, gw: Gateway, admin: str, alice: str):
        self.gw, self.admin, self.alice = gw, admin, alice

    def api(self, method: str, path: str, body: dict | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.gw.base}{API}{path}", json=body, headers=headers,
                             timeout=30, **kw)

    def put_text(self, name: str, text: str) -> httpx.Response:
        return self.api("PUT", f"/policies/{name}", content=text.encode(),
                        headers={"Content-Type": "text/plain"})

    def call(self, tool: str, args: dict) -> dict:
        r = mcp_init(self.gw, "alpha", self.alice)
        assert r.status_code == 200, r.text
        r = mcp_call(self.gw, "alpha", self.alice, r.headers["mcp-session-id"], "tools/call",
                     {"name": tool, "arguments": args})
        assert r.status_code == 200, r.text
        return answer(r)


def answer(r: httpx.Response) -> dict:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        # Skip data-less events (stream priming) before the answer.
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        events = [json.loads(d) for d in data if d]
        return [e for e in events if "id" in e][-1]
    return r.json()


def portcullis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BINARY), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "0"})


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="pc-policy-admin-") as tmp:
        policy_dir = Path(tmp)
        (policy_dir / "base.cedar").write_text(BASE)
        config = auth_config([{"name": "alpha", "upstreams": [{"upstream": "tiny", "prefix": ""}]}])
        config["policy"] = {"dir": str(policy_dir), "reload_interval_ms": 200}
        with running_gateway(config) as gw:
            create_user(gw, "root")
            admin = create_token(gw, "root", "admin", name="root-admin")
            h = {"Authorization": f"Bearer {admin}"}
            r = httpx.post(f"{gw.base}{API}/users", json={"username": "alice"}, headers=h, timeout=30)
            assert r.status_code == 201, r.text
            r = httpx.post(f"{gw.base}{API}/groups", json={"display_name": "eng", "members": [r.json()["id"]]},
                           headers=h, timeout=30)
            assert r.status_code == 201, r.text
            yield Env(gw, admin, create_token(gw, "alice", "vs:alpha", name="alice-pat"))


def echo_case(expect: str | None = None) -> dict:
    case = {"name": "alice echoes", "principal": {"user": "alice", "groups": ["eng"]},
            "virtual_server": "alpha", "tool": "echo", "server": "tiny", "args": {"text": "hello there"}}
    return {**case, "expect": expect} if expect else case


def test_invalid_document_is_refused_with_its_line_and_nothing_changes(env: Env):
    before = env.api("GET", "/policies").json()
    r = env.put_text("broken", BROKEN)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_policy"
    first = body["errors"][0]
    assert (first["origin"], first["line"]) == ("api:broken", 3), body
    assert "risk_teir" in first["message"]
    assert "api:broken:3:" in body["error_description"]
    after = env.api("GET", "/policies").json()
    assert after["version"] == before["version"]
    assert [p["id"] for p in after["policies"]] == ["alice-pid"]
    assert env.api("GET", "/policies/broken").status_code == 404
    r = env.put_text("bad name", ECHO)
    assert r.status_code in (400, 404), r.text


def test_valid_document_applies_before_the_answer(env: Env):
    denied = env.call("echo", {"text": "hello"})
    assert "denied by policy" in denied["error"]["message"], denied
    r = env.api("PUT", "/policies/eng-echo", {"text": ECHO})
    assert r.status_code == 200, r.text
    change = r.json()
    assert change["applied"] is True
    # No waiting for the directory watcher: the very next call is decided by it.
    allowed = env.call("echo", {"text": "hello"})
    assert allowed["result"]["content"][0]["text"] == "hello", allowed
    listing = env.api("GET", "/policies").json()
    assert listing["version"] == change["version"]
    ours = [p for p in listing["policies"] if p["id"] == "eng-echo"]
    assert ours and ours[0]["origin"] == "api:eng-echo" and ours[0]["line"] == 1, listing
    assert [d["name"] for d in listing["documents"]] == ["eng-echo"]
    assert listing["documents"][0]["updated_by"] == "root"
    assert env.api("GET", "/policies/eng-echo").json()["text"] == ECHO

    r = env.api("POST", "/policies/test", {"cases": [echo_case("allow"), {**echo_case("deny"), "name": "wrong"}]})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["passed"], report["failed"]) == (1, 1), report
    assert report["cases"][0]["policies"] == ["eng-echo"]

    # The CLI reads the same store: it lists the document the API stored.
    out = portcullis("policy", "list", "--config", str(env.gw.config_path))
    assert out.returncode == 0, out.stderr
    assert "eng-echo" in out.stdout and "api:eng-echo:1" in out.stdout, out.stdout

    r = env.api("DELETE", "/policies/eng-echo")
    assert r.status_code == 200, r.text
    assert r.json()["version"] > change["version"]
    denied = env.call("echo", {"text": "hello"})
    assert "denied by policy" in denied["error"]["message"], denied
    assert env.api("DELETE", "/policies/eng-echo").status_code == 404


def test_approvals_and_usage_routes(env: Env):
    r = env.api("GET", "/approvals")
    assert r.status_code == 200 and r.json() == {"approvals": []}, r.text
    r = env.api("POST", "/approvals/apr_nope", {"approve": True})
    assert r.status_code == 404, r.text
    r = env.api("GET", "/usage?day=2001-02-03")
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == []
    assert env.api("GET", "/usage?day=tomorrow").status_code == 400


def test_cli_check_names_file_and_line(env: Env, tmp_path: Path):
    (tmp_path / "ok.cedar").write_text(BASE)
    (tmp_path / "bad.cedar").write_text(BROKEN)
    r = portcullis("policy", "check", "--config", str(env.gw.config_path), "--policies", str(tmp_path))
    assert r.returncode == 1, r
    assert f"{tmp_path / 'bad.cedar'}:3:" in r.stderr, r.stderr
    assert "risk_teir" in r.stderr
    (tmp_path / "bad.cedar").unlink()
    r = portcullis("policy", "check", "--config", str(env.gw.config_path), "--policies", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: "), r.stdout


EXAMPLE_CONFIG = ROOT / "examples" / "policy-config.yaml"
EXAMPLE_SUITE = ROOT / "examples" / "policy-tests.yaml"


def test_the_example_suite_gates_ci(tmp_path: Path):
    r = portcullis("policy", "test", "--config", str(EXAMPLE_CONFIG), "--suite", str(EXAMPLE_SUITE))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith("PASS") for line in lines) >= 12
    assert lines[-1].endswith("passed, 0 failed"), lines[-1]

    wrong = EXAMPLE_SUITE.read_text().replace("expect: allow", "expect: deny", 1)
    (tmp_path / "wrong.yaml").write_text(wrong)
    r = portcullis("policy", "test", "--config", str(EXAMPLE_CONFIG), "--suite", str(tmp_path / "wrong.yaml"))
    assert r.returncode == 1, r.stdout
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "expected deny, got allow" in fails[0], r.stdout
    assert "1 of " in r.stderr

    # One described request, with the decision as JSON.
    r = portcullis("policy", "test", "--config", str(EXAMPLE_CONFIG), "--user", "carl", "--group", "staff",
                   "--group", "contractors", "--group", "engineering", "--vs", "engineering",
                   "--tool", "gh_merge_pull_request", "--args", '{"repo": "acme/api"}', "--json")
    assert r.returncode == 0, r.stderr
    decision = json.loads(r.stdout)
    assert decision["allowed"] is False
    assert decision["policies"] == ["contractors-nothing-destructive"]
