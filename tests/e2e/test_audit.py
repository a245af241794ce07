"""The audit log end to end: one correct record per request for every outcome,
written before the response is released; secrets in arguments never stored;
`portcullis audit verify` on an untouched log and after direct SQLite edits,
inserts and deletes; `kill -9` under load loses no answered call; a log that
cannot be written refuses calls (fail closed); search from the CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from auth_util import auth_config, create_token, create_user, mcp_call, mcp_init
from e2e_util import call_tool, rpc, tiny_upstream, wait_until
from gateway import BINARY, ROOT, Gateway, initialize, post, rpc_result, running_gateway, stop

POLICIES = """
@id("echo-for-all")
permit(principal, action == Action::"call_tool", resource == Tool::"alpha/echo");

@id("sleep-for-all")
permit(principal, action == Action::"call_tool", resource == Tool::"alpha/sleep");

@id("never-pid")
forbid(principal, action == Action::"call_tool", resource == Tool::"alpha/pid");
"""

SECRETS = ["S3cret-Pa55word-QQ", "ghp_Zx81kLmN0pQrStUvWxYz0123456789abcd", "SuperSecretValue-9911"]


class Env:
    def __init__(self, gw: Gateway, token: str):
        self.gw, self.token = gw, token
        self.sink: Path | None = None
        r = mcp_init(gw, "alpha", token)
        assert r.status_code == 200, r.text
        self.sid = r.headers["mcp-session-id"]

    def call(self, tool: str, args: dict) -> dict:
        r = mcp_call(self.gw, "alpha", self.token, self.sid, "tools/call", {"name": tool, "arguments": args})
        assert r.status_code == 200, r.text
        return rpc_result(r)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.gw.data_dir / 'audit.db'}?mode=ro", uri=True)

    def records_with(self, marker: str) -> list[dict]:
        with self.db() as c:
            rows = c.execute("SELECT body FROM audit_records WHERE body LIKE ? ORDER BY seq",
                             (f"%{marker}%",)).fetchall()
        return [json.loads(r[0]) for r in rows]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="pc-audit-") as tmp:
        policy_dir = Path(tmp)
        (policy_dir / "main.cedar").write_text(POLICIES)
        config = auth_config([{"name": "alpha", "upstreams": [{"upstream": "tiny", "prefix": ""}]}])
        config["policy"] = {"dir": str(policy_dir)}
        config["upstreams"][0]["catalog"] = {"owner": "platform-team", "risk_tier": 2}
        sink_file = Path(tmp) / "siem" / "audit.jsonl"
        config["audit"] = {"mask_arguments": ["customer_ssn"],
                           "sinks": [{"name": "siem-file", "type": "file", "path": str(sink_file)}]}
        with running_gateway(config) as gw:
            create_user(gw, "alice")
            e = Env(gw, create_token(gw, "alice", "vs:alpha", name="alice-pat"))
            e.sink = sink_file
            yield e


def one(records: list[dict]) -> dict:
    assert len(records) == 1, f"expected exactly one record, got {len(records)}: {records}"
    return records[0]


def test_each_outcome_is_recorded_exactly_once_before_the_answer(env: Env) -> None:
    m = uuid.uuid4().hex
    cases = [
        ("echo", {"text": f"ok-{m}"}, "success", "allow", ["echo-for-all"], None),
        ("echo", {"text": f"toolerr-{m}", "fail": True}, "tool_error", "allow", ["echo-for-all"], None),
        ("pid", {"marker": f"denied-{m}"}, "denied", "deny", ["never-pid"], -31010),
        ("nope", {"marker": f"unknown-{m}"}, "protocol_error", "none", [], -32602),
    ]
    for tool, args, status, decision, policies, code in cases:
        answer = env.call(tool, args)
        # Read right after the answer: the record must already be durable.
        marker = next(v for v in args.values() if isinstance(v, str))
        rec = one(env.records_with(marker))
        assert rec["schema"] == "portcullis.audit/1" and rec["event_type"] == "mcp.request", rec
        assert rec["outcome"]["status"] == status, (tool, rec, answer)
        assert rec["decision"]["result"] == decision, rec
        assert rec["decision"].get("policies", []) == policies, rec
        assert rec["outcome"].get("error_code") == code, rec
        actor = rec["actor"]
        assert actor["username"] == "alice" and actor["kind"] == "user", actor
        assert actor["auth_method"] == "api_token" and actor["token_id"], actor
        assert actor["client_name"] == "e2e" and actor["ip"] == "127.0.0.1", actor
        req = rec["request"]
        assert req["method"] == "tools/call" and req["session_id"] == env.sid, req
        assert req["protocol_version"] == "2025-11-25" and req["bytes_in"] > 0, req
        assert req["arguments_digest"].startswith("hmac-sha256:"), req
        assert rec["target"]["virtual_server"] == "alpha" and rec["target"]["tool"] == tool, rec
        if status != "protocol_error":
            assert rec["target"]["upstream"] == "tiny", rec
        assert rec["outcome"]["bytes_out"] > 0 and "latency_us" in rec["outcome"], rec
        assert rec["replica"] and rec["time"].endswith("Z"), rec


def test_cancelled_call_is_recorded_as_cancelled(env: Env) -> None:
    m = uuid.uuid4().hex
    h = {"Authorization": f"Bearer {env.token}"}
    body = {"jsonrpc": "2.0", "id": f"slow-{m}", "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 20, "marker": f"cancel-{m}"}}}
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(
        rpc_result(post(env.gw.url("alpha"), body, session=env.sid, headers=h, timeout=60))))
    t.start()
    time.sleep(0.5)  # let the call reach the upstream; not an assertion
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": f"slow-{m}"}}
    assert post(env.gw.url("alpha"), cancel, session=env.sid, headers=h).status_code == 202
    t.join(60)
    rec = one(env.records_with(f"cancel-{m}"))
    assert rec["outcome"]["status"] == "cancelled", (rec, out)


def test_secrets_in_arguments_never_reach_the_store(env: Env) -> None:
    m = uuid.uuid4().hex
    args = {"text": f"secret-test-{m}", "password": SECRETS[0], "note": f"push with {SECRETS[1]}",
            "query": f"api_key={SECRETS[2]}", "customer_ssn": "078-05-1120"}
    assert "result" in env.call("echo", args)
    rec = one(env.records_with(f"secret-test-{m}"))
    stored = rec["request"]["arguments"]
    assert stored["password"] == "[masked]" and stored["customer_ssn"] == "[masked]", stored
    assert "[masked:github_token]" in stored["note"] and "[masked:assignment]" in stored["query"], stored
    raw = b""
    for f in env.gw.data_dir.iterdir():
        if f.name.startswith("audit"):
            raw += f.read_bytes() if f.is_file() else b""
    for s in [*SECRETS, "078-05-1120"]:
        assert s.encode() not in raw, f"{s} is in the audit files"
        assert s not in env.gw.log(), f"{s} is in the gateway log"
    # The SIEM copy (a file sink fed from the durable log) gets the record, masked.
    sink = env.sink
    assert sink is not None
    assert wait_until(lambda: sink.exists() and f"secret-test-{m}" in sink.read_text(), timeout=30), \
        "the file sink never received the record"
    shipped = sink.read_bytes()
    for s in [*SECRETS, "078-05-1120"]:
        assert s.encode() not in shipped, f"{s} reached the SIEM sink"


def test_cli_search_filters_by_user_tool_and_outcome(env: Env) -> None:
    env.call("pid", {"marker": "search"})
    out = env.gw.cli("audit", "search", "--user", "alice", "--tool", "pid", "--outcome", "denied",
                     "--since", "1h", "--json")
    found = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert found and all(r["target"]["tool"] == "pid" and r["outcome"]["status"] == "denied"
                         and r["actor"]["username"] == "alice" for r in found), found
    assert all("integrity" in r for r in found)
    none = env.gw.cli("audit", "search", "--user", "nobody-here", "--json")
    assert none.strip() == ""
    # Reading the log is itself recorded.
    with env.db() as c:
        reads = c.execute("SELECT COUNT(*) FROM audit_records WHERE event_type = 'audit.read'").fetchone()[0]
    assert reads >= 2


def test_control_plane_report(env: Env) -> None:
    env.call("echo", {"text": "report-1"})
    env.call("pid", {"marker": "report-2"})
    report = json.loads(env.gw.cli("report", "--since", "1h", "--json"))
    assert report["servers"] == {"total": 1, "with_owner_pct": 100.0, "with_risk_tier_pct": 100.0,
                                 "with_owner_and_risk_tier_pct": 100.0, "without_owner": []}, report
    calls = report["calls"]
    assert calls["total"] >= 2, calls
    # Every call alice made was decided by a named policy or by default deny (unknown tools: undecided).
    assert calls["decided_by_explicit_policy_pct"] > 50, calls
    assert 0 < calls["denial_rate_pct"] < 100, calls
    team = report["teams"]["(no group)"]
    tools = [row["tool"] for row in team["by_calls"]]
    assert "alpha/echo" in tools and "alpha/pid" in tools, team


def verify_copy(gw: Gateway, tmp: Path, edit: str | None, params: tuple = ()) -> subprocess.CompletedProcess:
    """Snapshot the live log, apply `edit` to the copy with sqlite3, verify the copy."""
    work = tmp / uuid.uuid4().hex
    work.mkdir()
    src = sqlite3.connect(gw.data_dir / "audit.db")
    dst = sqlite3.connect(work / "audit.db")
    src.backup(dst)
    src.close()
    if edit:
        dst.execute(edit, params)
        dst.commit()
    dst.close()
    shutil.copy(gw.data_dir / "audit-signing.key.pub", work / "audit-signing.key.pub")
    cfg = work / "portcullis.yaml"
    cfg.write_text(json.dumps({"data_dir": str(work), "audit": {"path": str(work / "audit.db")}}))
    return subprocess.run([str(BINARY), "audit", "verify", "--config", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_verify_passes_untouched_and_names_edited_inserted_deleted_records(env: Env, tmp_path: Path) -> None:
    for i in range(5):
        env.call("echo", {"text": f"chain-{i}"})
    ok = verify_copy(env.gw, tmp_path, None)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout + ok.stderr
    with env.db() as c:
        seqs = [r[0] for r in c.execute("SELECT seq FROM audit_records ORDER BY seq").fetchall()]
        target = c.execute("SELECT seq FROM audit_records WHERE body LIKE '%chain-2%'").fetchone()[0]

    edited = verify_copy(env.gw, tmp_path, "UPDATE audit_records SET body = replace(body, 'alice', 'mallory') "
                                           "WHERE seq = ?", (target,))
    assert edited.returncode == 1 and f"FAILED at record {target}:" in edited.stdout, edited.stdout

    column = verify_copy(env.gw, tmp_path, "UPDATE audit_records SET outcome = 'denied' WHERE seq = ?", (target,))
    assert column.returncode == 1 and f"FAILED at record {target}:" in column.stdout, column.stdout

    deleted = verify_copy(env.gw, tmp_path, "DELETE FROM audit_records WHERE seq = ?", (target,))
    assert deleted.returncode == 1 and f"FAILED at record {target + 1}:" in deleted.stdout, deleted.stdout
    assert "missing" in deleted.stdout

    inserted = verify_copy(
        env.gw, tmp_path,
        "INSERT INTO audit_records (seq, event_id, time_us, event_type, replica, username, virtual_server, "
        "upstream, tool, method, outcome, body, prev_hash, hash) SELECT ?, event_id || 'x', time_us, event_type, "
        "replica, username, virtual_server, upstream, tool, method, outcome, body, prev_hash, hash "
        "FROM audit_records WHERE seq = ?", (seqs[-1] + 1, target))
    assert inserted.returncode == 1 and f"FAILED at record {seqs[-1] + 1}:" in inserted.stdout, inserted.stdout


def test_log_that_cannot_be_written_refuses_calls_and_recovers() -> None:
    config = {"upstreams": [tiny_upstream("tiny", f"audit-lock-{uuid.uuid4().hex[:8]}")],
              "virtual_servers": [{"name": "v", "upstreams": [{"upstream": "tiny", "prefix": ""}]}],
              "audit": {"write_timeout_ms": 300}}
    with running_gateway(config) as gw:
        sid = initialize(gw.url("v"))
        assert "result" in call_tool(gw.url("v"), sid, "echo", {"text": "before"})
        lock = sqlite3.connect(gw.data_dir / "audit.db", timeout=10, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            withheld = call_tool(gw.url("v"), sid, "echo", {"text": "while-locked"})
            assert withheld.get("error", {}).get("code") == -31013, withheld
            assert "withheld" in withheld["error"]["message"], withheld
            refused = call_tool(gw.url("v"), sid, "echo", {"text": "still-locked"})
            assert refused.get("error", {}).get("code") == -31013, refused
            assert "refused" in refused["error"]["message"], refused
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        after = call_tool(gw.url("v"), sid, "echo", {"text": "after"})
        assert after["result"]["content"][0]["text"] == "after", after
        with sqlite3.connect(gw.data_dir / "audit.db") as c:
            bodies = [r[0] for r in c.execute("SELECT body FROM audit_records").fetchall()]
        assert any("before" in b for b in bodies) and any('"after"' in b for b in bodies)
        assert not any("while-locked" in b or "still-locked" in b for b in bodies)


def test_kill_9_under_load_loses_no_answered_call() -> None:
    config = {"upstreams": [tiny_upstream("tiny", f"audit-crash-{uuid.uuid4().hex[:8]}")],
              "virtual_servers": [{"name": "v", "upstreams": [{"upstream": "tiny", "prefix": ""}]}]}
    answered: list[str] = []
    lock = threading.Lock()
    stop_flag = threading.Event()
    with running_gateway(config) as gw:
        sessions = [initialize(gw.url("v")) for _ in range(6)]

        def load(sid: str, n: int) -> None:
            i = 0
            while not stop_flag.is_set():
                marker = f"crash-{n}-{i}-{uuid.uuid4().hex[:6]}"
                i += 1
                try:
                    r = rpc(gw.url("v"), sid, "tools/call", {"name": "echo", "arguments": {"text": marker}}, timeout=10)
                    msg = rpc_result(r)
                except Exception:
                    return  # the gateway is gone
                if msg.get("result", {}).get("content", [{}])[0].get("text") == marker:
                    with lock:
                        answered.append(marker)

        threads = [threading.Thread(target=load, args=(s, n)) for n, s in enumerate(sessions)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(answered) >= 300, timeout=60), len(answered)
        gw.proc.kill()  # SIGKILL, mid-load
        gw.proc.wait()
        stop_flag.set()
        for t in threads:
            t.join(30)
        with lock:
            got = list(answered)
        # Restart on the same data: the chain continues and verifies.
        again = subprocess.Popen([str(BINARY), "serve", "--config", str(gw.config_path)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PORTCULLIS_LOG": "warn"})
        try:
            assert wait_until(lambda: _healthy(gw.base), timeout=30)
        finally:
            stop(again)
        assert again.returncode == 0, f"the restarted gateway did not stop cleanly: {again.returncode}"
        # A clean stop copies the WAL into the database: the file alone holds the whole log.
        with tempfile.TemporaryDirectory() as alone:
            copy = Path(alone) / "audit.db"
            shutil.copyfile(gw.data_dir / "audit.db", copy)
            with sqlite3.connect(copy) as c:
                alone_last = c.execute("SELECT max(seq) FROM audit_records").fetchone()[0]
            with sqlite3.connect(gw.data_dir / "audit.db") as c:
                last = c.execute("SELECT max(seq) FROM audit_records").fetchone()[0]
            assert alone_last == last, f"without its WAL the audit database ends at {alone_last}, not {last}"
        with sqlite3.connect(gw.data_dir / "audit.db") as c:
            bodies = "\n".join(r[0] for r in c.execute(
                "SELECT body FROM audit_records WHERE event_type = 'mcp.request'").fetchall())
        missing = [m for m in got if m not in bodies]
        assert not missing, f"{len(missing)} of {len(got)} answered calls have no record: {missing[:5]}"
        v = subprocess.run([str(BINARY), "audit", "verify", "--config", str(gw.config_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert v.returncode == 0, v.stdout + v.stderr


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
