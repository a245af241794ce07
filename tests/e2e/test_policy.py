"""Policy enforcement end to end: real principals from the identity layer (local
users, groups through the admin API, personal access tokens), Cedar policies in a
watched directory, the tiny stdio server upstream, and the PyPI `mcp` client
answering the human checkpoint in both protocol eras."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Iterator

import httpx
import mcp_types as types
import pytest
from auth_util import auth_config, create_token, create_user, mcp_call, mcp_init
from e2e_util import wait_until
from gateway import Gateway, running_gateway
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

POLICIES = """
// Engineers may echo greetings only, and read their pid.
@id("eng-echo")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"alpha/echo")
when { context.args.text like "hello*" };

@id("eng-pid")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"alpha/pid");

// Sleeping is high-impact here: engineers confirm it themselves.
@id("eng-sleep")
@checkpoint("user")
permit(principal in Group::"eng", action == Action::"call_tool", resource == Tool::"alpha/sleep");

// Interns need an approver for pid.
@id("interns-pid")
@checkpoint("approver")
permit(principal in Group::"interns", action == Action::"call_tool", resource == Tool::"alpha/pid");

@id("ops-all")
permit(principal in Group::"ops", action, resource in VirtualServer::"alpha");

@id("contractors-never-sleep")
forbid(principal in Group::"contractors", action == Action::"call_tool", resource == Tool::"alpha/sleep");
"""

USERS = {"alice": ["eng"], "bob": ["sales"], "carol": ["ops", "contractors"], "erin": ["interns"]}


class Env:
    def __init__(self, gw: Gateway, policy_dir: Path, admin: str, tokens: dict[str, str]):
        self.gw, self.policy_dir, self.admin, self.tokens = gw, policy_dir, admin, tokens
        self.sessions: dict[str, str] = {}

    def api(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(method, f"{self.gw.base}/api/v1{path}", json=body,
                             headers={"Authorization": f"Bearer {self.admin}"}, timeout=30)

    def session(self, user: str) -> str:
        # One session per user: each legacy session owns a stdio child upstream.
        if user not in self.sessions:
            r = mcp_init(self.gw, "alpha", self.tokens[user])
            assert r.status_code == 200, r.text
            self.sessions[user] = r.headers["mcp-session-id"]
        return self.sessions[user]

    def rpc(self, user: str, method: str, params: dict | None = None) -> dict:
        sid = self.session(user)
        r = mcp_call(self.gw, "alpha", self.tokens[user], sid, method, params)
        assert r.status_code == 200, r.text
        return sse_or_json(r)

    def tools(self, user: str) -> list[str]:
        resp = self.rpc(user, "tools/list")
        assert "result" in resp, resp
        return sorted(t["name"] for t in resp["result"]["tools"])

    def call(self, user: str, tool: str, args: dict | None = None) -> dict:
        return self.rpc(user, "tools/call", {"name": tool, "arguments": args or {}})


def sse_or_json(r: httpx.Response) -> dict:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[5:]) for line in r.text.splitlines()
                  if line.startswith("data:") and line[5:].strip()]
        return [e for e in events if "id" in e][-1]
    return r.json()


def setup_people(gw: Gateway, admin: str) -> dict[str, str]:
    h = {"Authorization": f"Bearer {admin}"}
    ids: dict[str, str] = {}
    for user in USERS:
        r = httpx.post(f"{gw.base}/api/v1/users", json={"username": user}, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        ids[user] = r.json()["id"]
    groups = sorted({g for gs in USERS.values() for g in gs})
    for g in groups:
        members = [ids[u] for u, gs in USERS.items() if g in gs]
        r = httpx.post(f"{gw.base}/api/v1/groups", json={"display_name": g, "members": members}, headers=h, timeout=30)
        assert r.status_code == 201, r.text
    return {u: create_token(gw, u, "vs:alpha", name=f"{u}-pat") for u in USERS}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="pc-policy-") as tmp:
        policy_dir = Path(tmp)
        (policy_dir / "main.cedar").write_text(POLICIES)
        config = auth_config([{"name": "alpha", "upstreams": [{"upstream": "tiny", "prefix": ""}]}])
        config["policy"] = {
            "dir": str(policy_dir),
            "reload_interval_ms": 200,
            "checkpoint": {"timeout_secs": 20},
            "rate_limits": [{"name": "ops-pid", "per": "user", "group": "ops", "tool": "pid",
                             "requests_per_minute": 2}],
        }
        with running_gateway(config) as gw:
            create_user(gw, "root")
            admin = create_token(gw, "root", "admin", name="root-admin")
            yield Env(gw, policy_dir, admin, setup_people(gw, admin))


def error_of(resp: dict) -> dict:
    assert "error" in resp, resp
    return resp["error"]


def test_group_sees_and_calls_only_what_policy_permits(env: Env) -> None:
    assert env.tools("alice") == ["echo", "pid", "sleep"]
    assert env.tools("bob") == [], "no policy permits sales anything"
    ok = env.call("alice", "echo", {"text": "hello world"})
    assert ok["result"]["content"][0]["text"] == "hello world", ok
    denied = error_of(env.call("bob", "echo", {"text": "hello"}))
    assert denied["code"] == -31010 and "denied by policy" in denied["message"], denied
    assert denied["data"]["policies"] == [], "default deny names no policy"


def test_argument_outside_the_pattern_is_denied(env: Env) -> None:
    err = error_of(env.call("alice", "echo", {"text": "goodbye"}))
    assert err["code"] == -31010, err
    err = error_of(env.call("alice", "echo", {}))
    assert err["code"] == -31010, "a missing argument does not satisfy the pattern"


def test_forbid_overrides_permit(env: Env) -> None:
    assert env.call("carol", "echo", {"text": "anything"})["result"]["content"][0]["text"] == "anything"
    err = error_of(env.call("carol", "sleep", {"seconds": 0}))
    assert err["code"] == -31010 and err["data"]["policies"] == ["contractors-never-sleep"], err
    assert "sleep" not in env.tools("carol"), "an unconditional forbid hides the tool"


def test_rate_limit_refuses_with_a_clear_error(env: Env) -> None:
    sid = env.session("carol")
    answers = [sse_or_json(mcp_call(env.gw, "alpha", env.tokens["carol"], sid, "tools/call",
                                    {"name": "pid", "arguments": {}})) for _ in range(3)]
    assert all("result" in a for a in answers[:2]), answers
    err = error_of(answers[2])
    assert err["code"] == -31011 and "ops-pid" in err["message"], err
    assert err["data"]["retryAfterSeconds"] >= 1, err
    assert "result" in env.call("alice", "pid"), "other users have their own bucket"


def test_policy_change_applies_without_restart_and_invalid_keeps_old_set(env: Env) -> None:
    extra = env.policy_dir / "sales.cedar"
    try:
        extra.write_text('@id("sales-pid")\npermit(principal in Group::"sales", action == Action::"call_tool", '
                         'resource == Tool::"alpha/pid");\n')
        assert wait_until(lambda: "result" in env.call("bob", "pid"), timeout=10), \
            (env.call("bob", "pid"), env.gw.log()[-3000:])
        assert env.tools("bob") == ["pid"]
        bad = env.policy_dir / "zz-bad.cedar"
        bad.write_text('permit(principal, action, resource);\n\npermit(principal, action == Action::"call_tool", '
                       'resource)\nwhen { resource.risk_teir > 1 };\n')
        assert wait_until(lambda: "zz-bad.cedar:4" in env.gw.log(), timeout=10), env.gw.log()[-2000:]
        assert "previous set stays in force" in env.gw.log()
        listed = env.api("GET", "/policies").json()
        assert any(e["origin"] == "zz-bad.cedar" and e["line"] == 4 for e in listed["last_error"]), listed
        assert env.tools("bob") == ["pid"], "the invalid file must not replace the valid set"
        assert error_of(env.call("bob", "echo", {"text": "hello"}))["code"] == -31010, \
            "nor must its allow-all first policy take effect"
        bad.unlink()
    finally:
        extra.unlink(missing_ok=True)
        (env.policy_dir / "zz-bad.cedar").unlink(missing_ok=True)
    assert wait_until(lambda: "error" in env.call("bob", "pid"), timeout=10)


def test_approver_checkpoint_through_the_admin_api(env: Env) -> None:
    for approve in (True, False):
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(env.call("erin", "pid")))
        t.start()
        pending = wait_until(lambda: env.api("GET", "/approvals").json()["approvals"] or None, timeout=10)
        assert pending and pending[0]["user"] == "erin" and pending[0]["tool"] == "pid", pending
        assert env.api("POST", f"/approvals/{pending[0]['id']}", {"approve": approve}).status_code == 200
        t.join(timeout=20)
        if approve:
            assert "result" in out, out
        else:
            assert error_of(out)["code"] == -31012 and "root" in error_of(out)["message"], out
    assert env.api("POST", "/approvals/apr_nope", {"approve": True}).status_code == 404


@asynccontextmanager
async def mcp_client(env: Env, user: str, mode: str, answer: str, asked: list[str]):
    async def elicit(ctx, params):
        asked.append(params.message)
        if answer == "accept":
            return types.ElicitResult(action="accept", content={"confirm": True})
        return types.ElicitResult(action=answer)

    headers = {"Authorization": f"Bearer {env.tokens[user]}"}
    async with create_mcp_http_client(headers=headers) as http:
        transport = streamable_http_client(env.gw.url("alpha"), http_client=http)
        async with Client(transport, mode=mode, elicitation_callback=elicit) as client:
            yield client


@pytest.mark.anyio
@pytest.mark.parametrize("mode,version", [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
@pytest.mark.parametrize("answer", ["accept", "decline"])
async def test_user_checkpoint_with_the_mcp_client(env: Env, mode: str, version: str, answer: str) -> None:
    asked: list[str] = []
    async with mcp_client(env, "alice", mode, answer, asked) as client:
        assert client.protocol_version == version
        if answer == "accept":
            result = await client.call_tool("sleep", {"seconds": 0})
            assert not result.is_error, result
        else:
            with pytest.raises(Exception) as err:
                result = await client.call_tool("sleep", {"seconds": 0})
                if result.is_error:
                    raise RuntimeError(str(result.content))
            assert "declined" in str(err.value), err.value
        assert len(asked) == 1 and '"sleep"' in asked[0] and "seconds" in asked[0], asked
        # Calls without a checkpoint never ask.
        await client.call_tool("pid", {})
        assert len(asked) == 1


def test_hide_mode_answers_like_an_unknown_tool() -> None:
    with tempfile.TemporaryDirectory(prefix="pc-policy-") as tmp:
        Path(tmp, "p.cedar").write_text(
            '@id("only-echo") permit(principal, action == Action::"call_tool", resource == Tool::"alpha/echo");')
        config = auth_config([{"name": "alpha", "upstreams": [{"upstream": "tiny", "prefix": ""}]}])
        config["policy"] = {"dir": tmp, "on_deny": "hide"}
        with running_gateway(config) as gw:
            create_user(gw, "root")
            token = create_token(gw, "root", "vs:alpha")
            sid = mcp_init(gw, "alpha", token).headers["mcp-session-id"]
            hidden = sse_or_json(mcp_call(gw, "alpha", token, sid, "tools/call", {"name": "pid", "arguments": {}}))
            unknown = sse_or_json(mcp_call(gw, "alpha", token, sid, "tools/call", {"name": "nope", "arguments": {}}))
            assert hidden["error"]["code"] == unknown["error"]["code"] == -32602
            assert hidden["error"]["message"] == "unknown tool: pid"
            assert unknown["error"]["message"] == "unknown tool: nope"
            listed = sse_or_json(mcp_call(gw, "alpha", token, sid, "tools/list"))
            assert [t["name"] for t in listed["result"]["tools"]] == ["echo"]
